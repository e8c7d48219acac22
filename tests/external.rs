//! External special remotes and the annex_get fallback, with real programs and real mounts.
//!
//! - A directory-style external remote (tests/data/git-annex-remote-annexfstest, a shell
//!   script speaking the protocol, written like git-annex's example) filled by `git annex
//!   copy --to`: files read through the mount are byte-exact, whole and chunked.
//! - The same program misbehaving (hangs, crashes, talks garbage, lies with shifted bytes or a
//!   short file): reads fail with EIO within seconds, the log names the remote, and no read
//!   ever returns wrong bytes.
//! - An encrypted directory remote as the only holder: EIO and "readable with annex_get"
//!   without the option; byte-exact with `-o annex_get=yes` (git-annex got it into the annex).
//! - `annexfs sources --json` lists the same holders as `git annex whereis --json`.
//! - A program that answers WHEREIS with an http URL (on nginx) and refuses every retrieval:
//!   the key is read by ranges from that URL.

mod common;

use common::mnt::Mount;
use common::{Sandbox, json_lines, pseudo_random};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A PATH with the test remote's directory first.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(dirs).unwrap()
}

struct World {
    sb: Sandbox,
    r: PathBuf,
    bin: PathBuf,
    /// The external remote's directory (its MODE file steers the program).
    store: PathBuf,
}

impl World {
    fn cmd(&self, program: &str) -> Command {
        let mut c = self.sb.cmd(program, &self.r);
        c.env("PATH", path_with(&self.bin));
        c
    }

    fn annex(&self, args: &[&str]) -> String {
        let out = self.cmd("git").arg("annex").args(args).output().unwrap();
        assert!(out.status.success(), "git annex {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn mount(&self, name: &str, extra: &[&str]) -> Mount {
        let mp = self.sb.path(name);
        std::fs::create_dir_all(&mp).unwrap();
        let log = self.sb.path(&format!("{name}.log"));
        let out = self
            .cmd(env!("CARGO_BIN_EXE_annexfs"))
            .arg("mount")
            .arg("--log-file")
            .arg(&log)
            .args(extra)
            .arg(&self.r)
            .arg(&mp)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Mount { mp, log }
    }

    fn sources(&self, file: &str) -> serde_json::Value {
        let out = self.cmd(env!("CARGO_BIN_EXE_annexfs")).args(["sources", "--json", file]).output().unwrap();
        json_lines(&out.stdout).into_iter().next().unwrap_or_default()
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.store.join("MODE"), mode).unwrap();
    }
}

fn world() -> World {
    let sb = Sandbox::new();
    let bin = sb.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("git-annex-remote-annexfstest");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/git-annex-remote-annexfstest"), &script)
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = sb.init_repo("r", "origin repo");
    let store = sb.path("store");
    let w = World { sb, r, bin, store };
    for (name, seed, len) in [("small.txt", 1, 3000), ("big.bin", 2, 700_000), ("chunked.bin", 3, 250_000)] {
        w.sb.write(&w.r.join(name), &pseudo_random(seed, len));
    }
    w.annex(&["add", "-q", "."]);
    w.sb.git(&w.r, &["commit", "-q", "-m", "files"]);
    let dir = format!("directory={}", w.store.display());
    w.annex(&["initremote", "-q", "ext", "type=external", "externaltype=annexfstest", "encryption=none", &dir]);
    let cdir = format!("directory={}", w.sb.path("cstore").display());
    w.annex(&[
        "initremote",
        "-q",
        "extc",
        "type=external",
        "externaltype=annexfstest",
        "encryption=none",
        "chunk=64KiB",
        &cdir,
    ]);
    w.annex(&["copy", "-q", "--to", "ext", "small.txt", "big.bin"]);
    w.annex(&["copy", "-q", "--to", "extc", "chunked.bin"]);
    w.annex(&["drop", "-q", "."]);
    w.sb.git(&w.r, &["config", "remote.ext.annexfs-timeout", "2"]);
    w
}

fn content(name: &str) -> Vec<u8> {
    match name {
        "small.txt" => pseudo_random(1, 3000),
        "big.bin" => pseudo_random(2, 700_000),
        _ => pseudo_random(3, 250_000),
    }
}

fn fuse_ok() -> bool {
    common::require("/dev/fuse", Path::new("/dev/fuse").exists())
}

#[test]
fn external_remote_reads_byte_exact_and_agrees_with_whereis() {
    if !fuse_ok() {
        return;
    }
    let w = world();
    for file in ["small.txt", "big.bin", "chunked.bin"] {
        let s = w.sources(file);
        let h = &s["holders"][0];
        assert_eq!(h["readable"], true, "{s}");
        assert!(h["locations"][0].as_str().unwrap().starts_with("external:annexfstest"), "{s}");
        // The same holders as git-annex says.
        let wi: serde_json::Value =
            serde_json::from_str(w.annex(&["whereis", "--json", file]).lines().next().unwrap()).unwrap();
        let theirs: BTreeSet<String> =
            wi["whereis"].as_array().unwrap().iter().map(|e| e["uuid"].as_str().unwrap().to_string()).collect();
        let ours: BTreeSet<String> =
            s["holders"].as_array().unwrap().iter().map(|e| e["uuid"].as_str().unwrap().to_string()).collect();
        assert_eq!(ours, theirs, "{file}");
    }
    let m = w.mount("mnt", &[]);
    for file in ["small.txt", "big.bin", "chunked.bin"] {
        let got = std::fs::read(m.p(file)).unwrap_or_else(|e| panic!("{file}: {e}\n{}", m.log()));
        assert!(got == content(file), "{file}: wrong bytes");
    }
}

#[test]
fn misbehaving_remote_gives_eio_quickly_never_wrong_bytes() {
    if !fuse_ok() {
        return;
    }
    let w = world();
    for (i, mode) in ["crash", "garbage", "short", "lie", "hang"].into_iter().enumerate() {
        w.set_mode(mode);
        let m = w.mount(&format!("mnt{i}"), &[]);
        let start = Instant::now();
        let got = std::fs::read(m.p("small.txt"));
        let took = start.elapsed();
        eprintln!("{mode}: failed after {took:?}");
        match got {
            Ok(bytes) => panic!("{mode}: read {} bytes, equal: {}", bytes.len(), bytes == content("small.txt")),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{mode}: {e}"),
        }
        assert!(took < Duration::from_secs(20), "{mode}: took {took:?}");
        let log = m.log();
        assert!(log.contains("remote ext"), "{mode}: the log names the remote:\n{log}");
        drop(m);
    }
}

#[test]
fn urls_the_remote_names_in_whereis_are_read_by_ranges() {
    if !fuse_ok() || !common::require("nginx", Path::new("/usr/sbin/nginx").exists()) {
        return;
    }
    let w = world();
    let www = w.sb.path("www");
    w.sb.write(&www.join("big.bin"), &content("big.bin"));
    let nginx = common::nginx::Nginx::start(&www, &w.sb.path("nginx"), 1, None);
    w.sb.git(&w.r, &["config", "annex.security.allowed-ip-addresses", "all"]);
    std::fs::write(w.store.join("WHEREIS"), nginx.url(0, "big.bin")).unwrap();
    w.set_mode("refuse");
    let m = w.mount("mnt-whereis", &[]);
    let got = std::fs::read(m.p("big.bin")).unwrap_or_else(|e| panic!("read: {e}\n{}", m.log()));
    assert!(got == content("big.bin"), "big.bin byte-exact ({} bytes)\n{}", got.len(), m.log());
    let access = nginx.access_log(0);
    assert!(access.contains("\" 206 "), "the URL from WHEREIS was read by ranges: {access}");
}

#[test]
fn annex_get_reads_from_an_encrypted_remote() {
    if !fuse_ok() {
        return;
    }
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "origin repo");
    let data = pseudo_random(9, 200_000);
    sb.write(&r.join("secret.bin"), &data);
    sb.annex(&r, &["add", "-q", "secret.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "secret"]);
    let dir = sb.path("enc");
    std::fs::create_dir_all(&dir).unwrap();
    let d = format!("directory={}", dir.display());
    sb.annex(&r, &["initremote", "-q", "denc", "type=directory", "encryption=shared", &d]);
    sb.annex(&r, &["copy", "-q", "--to", "denc", "secret.bin"]);
    sb.annex(&r, &["drop", "-q", "secret.bin"]);

    let out = sb.annexfs(&r, &["sources", "--json", "secret.bin"]);
    let s = json_lines(&out.stdout).into_iter().next().unwrap();
    let h = &s["holders"][0];
    assert_eq!(h["readable"], false, "{s}");
    assert!(h["reason"].as_str().unwrap().contains("readable with annex_get"), "{s}");

    let m = common::mnt::mount(&sb, &r, "plain", &[]);
    let e = std::fs::read(m.p("secret.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(m);

    let m = common::mnt::mount(&sb, &r, "withget", &["-o", "annex_get=yes"]);
    let got = std::fs::read(m.p("secret.bin")).unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert!(got == data, "wrong bytes");
    let wi = sb.annex(&r, &["whereis", "--json", "secret.bin"]);
    let here = sb.git(&r, &["config", "annex.uuid"]);
    assert!(wi.contains(here.trim()), "git-annex got it into the annex: {wi}");
}
