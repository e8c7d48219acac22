//! Mounting like any filesystem: an fstab line mounted by mount(8) through the
//! `mount.fuse.annexfs` helper, `annexfs mount DIR` looking DIR up in an fstab, and
//! `annexfs status --json` describing the mount; the errors people hit.

mod common;

use common::mnt::{Mount, is_mounted};
use common::{Sandbox, pseudo_random};
use std::path::{Path, PathBuf};

/// Installs `/sbin/NAME` as a symlink to the annexfs binary for the life of the value.
struct Helper(PathBuf);

impl Helper {
    /// `/sbin/NAME` → `target` (unless another helper of that name is installed).
    fn install(name: &str, target: &Path) -> Option<Helper> {
        let p = Path::new("/sbin").join(name);
        if p.symlink_metadata().is_ok() {
            return (std::fs::read_link(&p).ok()? == target).then(|| Helper(p));
        }
        std::os::unix::fs::symlink(target, &p).ok()?;
        Some(Helper(p))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn status_json(sb: &Sandbox, mp: &Path) -> serde_json::Value {
    let out = sb.annexfs(sb.dir.path(), &["status", "--json", mp.to_str().unwrap()]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_fstab_line_mounts_with_mount_t_and_status_describes_it() {
    if !common::require("root (mount(8) with a helper)", common::is_root()) {
        return;
    }
    // The shipped script for `fuse.annexfs` (told where this build is), the binary itself
    // under the helper's name for `annexfs`.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.fuse.annexfs");
    let (h1, h2) = (
        Helper::install("mount.fuse.annexfs", &script),
        Helper::install("mount.annexfs", Path::new(env!("CARGO_BIN_EXE_annexfs"))),
    );
    if !common::require("no other annexfs mount helpers installed in /sbin", h1.is_some() && h2.is_some()) {
        return;
    }
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    let data = pseudo_random(9, 3_000_000);
    sb.write(&r.join("dir/f.bin"), &data);
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let mp = sb.path("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let cache = sb.path("cache");
    let fstab = sb.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# an annexfs line\n{} {} fuse.annexfs cache_dir={},cache_size=1G,noauto,x-systemd.automount,nofail 0 0\n",
            r.display(),
            mp.display(),
            cache.display()
        ),
    )
    .unwrap();
    let out = sb
        .cmd("mount", sb.dir.path())
        .env("ANNEXFS", env!("CARGO_BIN_EXE_annexfs"))
        .arg("-T")
        .arg(&fstab)
        .arg(&mp)
        .output()
        .unwrap();
    let guard = Mount { mp: mp.clone(), log: sb.home().join(".local/state/annexfs/annexfs.log") };
    assert!(out.status.success(), "mount -T: {}\n{}", String::from_utf8_lossy(&out.stderr), guard.log());
    assert!(is_mounted(&mp));
    // Hold the file open while status is asked.
    let f = std::fs::File::open(mp.join("dir/f.bin")).unwrap();
    assert!(std::fs::read(mp.join("dir/f.bin")).unwrap() == data);
    let v = status_json(&sb, &mp);
    assert_eq!(v["version"], 1);
    let m = &v["mounts"][0];
    assert_eq!(m["mountpoint"], mp.canonicalize().unwrap().to_str().unwrap(), "{v}");
    assert_eq!(m["cache"]["dir"], cache.to_str().unwrap(), "{v}");
    assert_eq!(m["cache"]["limit_bytes"], 1u64 << 30, "{v}");
    assert!(m["cache"]["used_bytes"].is_u64(), "{v}");
    assert_eq!(m["verify"], "stream");
    let open = m["open_files"].as_array().unwrap();
    assert!(
        open.iter().any(|o| o["file"] == "dir/f.bin" && o["size"] == 3_000_000 && o["present_bytes"] == 3_000_000),
        "{v}"
    );
    drop(f);
    // The text form names the mount too.
    let out = sb.annexfs(sb.dir.path(), &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(mp.canonicalize().unwrap().to_str().unwrap()));
    let out = sb.cmd("umount", sb.dir.path()).arg(&mp).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&mp));
    // `mount -t annexfs REPO DIR -o OPTIONS`, through the binary as its own helper.
    let mp2 = sb.path("mnt2");
    std::fs::create_dir_all(&mp2).unwrap();
    let out = sb
        .cmd("mount", sb.dir.path())
        .args(["-t", "annexfs", "-o", &format!("cache_dir={},ref=main", cache.display())])
        .arg(&r)
        .arg(&mp2)
        .output()
        .unwrap();
    let _guard2 = Mount { mp: mp2.clone(), log: guard.log.clone() };
    assert!(out.status.success(), "mount -t annexfs: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(mp2.join("dir/f.bin")).unwrap() == data);
}

#[test]
fn annexfs_mount_dir_finds_its_fstab_line() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    sb.write(&r.join("a.txt"), b"from fstab\n");
    sb.annex(&r, &["add", "-q", "a.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "a"]);
    let mp = sb.path("my mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let fstab = sb.path("fstab");
    // Spaces are written \040 in fstab.
    let esc = |p: &Path| p.to_str().unwrap().replace(' ', "\\040");
    std::fs::write(
        &fstab,
        format!("/dev/sda1 / ext4 defaults 0 1\nannexfs#{} {} fuse ro,noauto 0 0\n", esc(&r), esc(&mp)),
    )
    .unwrap();
    let log = sb.path("log");
    let out = sb.annexfs(
        sb.dir.path(),
        &["mount", "--log-file", log.to_str().unwrap(), "--fstab", fstab.to_str().unwrap(), mp.to_str().unwrap()],
    );
    let _guard = Mount { mp: mp.clone(), log: log.clone() };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(mp.join("a.txt")).unwrap(), b"from fstab\n");
    // A directory fstab does not name: one clear line.
    let other = sb.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let out = sb.annexfs(sb.dir.path(), &["mount", "--fstab", fstab.to_str().unwrap(), other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no annexfs entry"), "{err}");
}

#[test]
fn a_mountpoint_that_is_not_empty_is_refused_with_what_to_do() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    let mp = sb.path("full");
    sb.write(&mp.join("x"), b"x");
    let out = sb.annexfs(sb.dir.path(), &["mount", r.to_str().unwrap(), mp.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not empty") && err.contains("nonempty"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
