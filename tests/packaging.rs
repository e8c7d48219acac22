//! Packaging: `packaging/build-deb` builds a Debian package holding the binary, the mount
//! helpers, man pages, completions, the user unit and the example fstab (checked with
//! `dpkg-deb -c`, and lintian when installed); the systemd unit passes `systemd-analyze
//! verify`; the RPM spec and the PKGBUILD install only files the build makes.
//!
//! Needs cargo-deb, lintian, systemd-analyze and rpmspec (`scripts/install-deps` installs
//! them); a check whose tool is missing is skipped with a message, or fails under
//! `ANNEXFS_REQUIRE_REAL=1` (CI) or the older `ANNEXFS_REQUIRE_PACKAGING=1`.

mod common;

use common::have;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `common::require`, also failing under `ANNEXFS_REQUIRE_PACKAGING`.
fn require(what: &str, available: bool) -> bool {
    assert!(
        available || std::env::var_os("ANNEXFS_REQUIRE_PACKAGING").is_none(),
        "{what} is required (ANNEXFS_REQUIRE_PACKAGING is set; scripts/install-deps installs it)"
    );
    common::require(what, available)
}

#[test]
fn the_debian_package_holds_the_binary_helpers_man_pages_and_completions() {
    // `cargo deb --version` answers at once; a bare `cargo deb` would build a release.
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !require("cargo-deb (cargo install cargo-deb --locked)", cargo_deb) {
        return;
    }
    // The contents are what is checked here: an unoptimised build is packaged (quicker).
    let out =
        Command::new(root().join("packaging/build-deb")).env("PROFILE", "dev").current_dir(root()).output().unwrap();
    assert!(out.status.success(), "build-deb: {}", String::from_utf8_lossy(&out.stderr));
    let deb = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).is_file(), "{deb}");
    let list = Command::new("dpkg-deb").arg("-c").arg(&deb).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "./usr/bin/annexfs",
        "./usr/bin/git-annex-remote-annexfs -> annexfs",
        "./usr/sbin/mount.annexfs",
        "./usr/sbin/mount.fuse.annexfs",
        "./usr/share/man/man1/annexfs.1.gz",
        "./usr/share/man/man1/annexfs-mount.1.gz",
        "./usr/share/man/man1/annexfs-status.1.gz",
        "./usr/share/bash-completion/completions/annexfs",
        "./usr/share/zsh/vendor-completions/_annexfs",
        "./usr/share/fish/vendor_completions.d/annexfs.fish",
        "./usr/lib/systemd/user/annexfs@.service",
        "./usr/share/doc/annexfs/examples/fstab.example",
    ] {
        assert!(list.lines().any(|l| l.ends_with(want)), "{want} missing from the package:\n{list}");
    }
    let info = Command::new("dpkg-deb").arg("-I").arg(&deb).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Depends:") && info.contains("fuse3"), "{info}");
    // The packaged binary runs and its man page renders.
    let x = tempfile::tempdir().unwrap();
    assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()).status().unwrap().success());
    let v = Command::new(x.path().join("usr/bin/annexfs")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("annexfs "), "{v:?}");
    // The link runs the spread remote program, which greets git-annex with its version.
    let mut p = Command::new(x.path().join("usr/bin/git-annex-remote-annexfs"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    p.stdout.truncate(10);
    assert_eq!(String::from_utf8_lossy(&p.stdout), "VERSION 1\n", "{p:?}");
    if require("lintian", have("lintian", "--version")) {
        let l = Command::new("lintian").args(["--no-tag-display-limit"]).arg(&deb).output().unwrap();
        let text = String::from_utf8_lossy(&l.stdout);
        // Errors only: the project has not chosen a licence yet, which lintian warns about.
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:") && !l.contains("copyright")).collect();
        assert!(errors.is_empty(), "lintian: {errors:#?}");
    }
}

#[test]
fn the_user_unit_passes_systemd_analyze_verify() {
    if !require("systemd-analyze (Debian package systemd)", have("systemd-analyze", "--version")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root().join("packaging/systemd/annexfs@.service")).unwrap();
    // verify checks that the commands exist: point them at this build.
    let unit = unit.replace("/usr/bin/annexfs", env!("CARGO_BIN_EXE_annexfs"));
    let conf = dir.path().join("home/.config/annexfs");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("demo.conf"), "REPO=/srv/annex\nMOUNTPOINT=/srv/media\nOPTIONS=\n").unwrap();
    let path = dir.path().join("annexfs@demo.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("HOME", dir.path().join("home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Outside a booted systemd (a container), verify may only complain that it cannot reach
    // the manager; anything about the unit itself fails the test.
    let about_unit: Vec<&str> = err.lines().filter(|l| l.contains("annexfs@")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn rpm_spec_and_pkgbuild_install_only_what_the_build_makes() {
    let made = [
        "target/release/annexfs",
        "target/assets/man/*.1.gz",
        "target/assets/completions/annexfs.bash",
        "target/assets/completions/_annexfs",
        "target/assets/completions/annexfs.fish",
    ];
    for f in ["packaging/annexfs.spec", "packaging/PKGBUILD"] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        for line in text.lines().filter(|l| l.trim_start().starts_with("install ")) {
            for word in line
                .split_whitespace()
                .filter(|w| w.contains('/') && !w.contains('{') && !w.starts_with('"') && !w.starts_with('-'))
            {
                let src_ok = made.contains(&word) || root().join(word).exists();
                assert!(src_ok, "{f}: installs {word}, which neither the tree nor the build has");
            }
        }
        assert!(text.contains("packaging/make-assets"), "{f} makes the man pages and completions");
        assert!(text.contains("ln -s annexfs "), "{f} links git-annex-remote-annexfs to the binary");
        assert!(text.contains("/git-annex-remote-annexfs"), "{f} installs git-annex-remote-annexfs");
    }
    let pkgbuild = root().join("packaging/PKGBUILD");
    assert!(Command::new("bash").arg("-n").arg(&pkgbuild).status().unwrap().success(), "PKGBUILD is valid bash");
    if require("rpmspec (Debian package rpm)", have("rpmspec", "--version")) {
        let out = Command::new("rpmspec").arg("-P").arg(root().join("packaging/annexfs.spec")).output().unwrap();
        assert!(out.status.success(), "rpmspec: {}", String::from_utf8_lossy(&out.stderr));
    }
}
