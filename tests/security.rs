//! Security: the mount is the owner's alone unless `allow_other`; the piece cache is private
//! and refused when others could write to it; symlinks planted in the object store are not
//! followed; crafted keys and names never make annexfs read outside the repository's objects
//! and its cache.

mod common;

use common::mnt::mount;
use common::{Sandbox, pseudo_random};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn chown(p: &Path, uid: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, uid) }, 0);
}

fn repo_with_a_file(sb: &Sandbox) -> (std::path::PathBuf, Vec<u8>) {
    let r = sb.init_repo("r", "r");
    let data = pseudo_random(5, 200_000);
    sb.write(&r.join("f.bin"), &data);
    sb.annex(&r, &["add", "-q", "f.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    (r, data)
}

#[test]
fn an_unsafe_cache_directory_is_refused_and_a_new_one_is_private() {
    let sb = Sandbox::new();
    let (r, data) = repo_with_a_file(&sb);
    // Group- or world-writable: refused with a line that says what to do.
    let open = sb.path("open-cache");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mnt = sb.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.to_str().unwrap();
    let out = sb.annexfs(&r, &["mount", "--cache-dir", open.to_str().unwrap(), r.to_str().unwrap(), mnt]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not safe") && err.contains("chmod 700"), "{err}");
    if common::require("root (a cache owned by another user)", common::is_root()) {
        let theirs = sb.path("their-cache");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&theirs, 65534);
        let out = sb.annexfs(&r, &["mount", "--cache-dir", theirs.to_str().unwrap(), r.to_str().unwrap(), mnt]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("owned by uid 65534"), "{err}");
    }
    // A new cache: directories 0700, files 0600, after content went through it.
    let cache = sb.path("cache");
    let www = sb.path("www");
    sb.write(&www.join("f.bin"), &data);
    let nginx = common::nginx::Nginx::start(&www, &sb.path("nginx"), 1, None);
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    sb.annex(&r, &["registerurl", &key, &nginx.url(0, "f.bin")]);
    sb.annex(&r, &["drop", "-q", "--force", "f.bin"]);
    {
        let m = mount(&sb, &r, "mnt2", &["--cache-dir", cache.to_str().unwrap()]);
        assert!(std::fs::read(m.p("f.bin")).unwrap() == data);
    }
    let mut files = 0;
    for e in walk(&cache) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        let mode = md.mode() & 0o777;
        if md.is_dir() {
            assert_eq!(mode, 0o700, "{}", e.display());
        } else {
            assert_eq!(mode, 0o600, "{}", e.display());
            files += 1;
        }
    }
    assert!(files >= 3, "data, record and lock files were made");
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

#[test]
fn a_symlink_planted_in_the_object_store_is_not_followed() {
    let sb = Sandbox::new();
    let (r, data) = repo_with_a_file(&sb);
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    let hashdir = sb.annex(&r, &["examinekey", "--format=${hashdirmixed}", &key]);
    let keydir = r.join(".git/annex/objects").join(hashdir.trim()).join(&key);
    // The real object goes; in its place a symlink to a directory holding another file
    // under the key's name.
    sb.annex(&r, &["drop", "-q", "--force", "f.bin"]);
    let decoy = sb.path("decoy");
    sb.write(&decoy.join(&key), &vec![b'X'; data.len()]);
    let _ = std::fs::remove_dir_all(&keydir);
    std::fs::create_dir_all(keydir.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&decoy, &keydir).unwrap();
    let m = mount(&sb, &r, "mnt", &[]);
    let err = std::fs::read(m.p("f.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // And a symlinked object file is refused the same way.
    std::fs::remove_file(&keydir).unwrap();
    std::fs::create_dir_all(&keydir).unwrap();
    std::os::unix::fs::symlink(decoy.join(&key), keydir.join(&key)).unwrap();
    let err = std::fs::read(m.p("f.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn crafted_keys_and_names_read_nothing_outside() {
    let sb = Sandbox::new();
    let (r, data) = repo_with_a_file(&sb);
    // Decoys where a careless path join could land.
    let secret = b"SECRET-SECRET";
    for p in [sb.path("secret"), r.join("secret"), r.join(".git/secret"), r.join(".git/annex/secret")] {
        sb.write(&p, secret);
    }
    let long = format!("SHA256E-s13--{}", "a".repeat(2000));
    let crafted: Vec<(&str, String)> = vec![
        ("dotdot", "SHA256E-s13--..%..%..%..%secret".to_string()),
        ("dotdot2", "SHA256E-s13--..".to_string()),
        ("absurd", "SHA256E-s99999999999999999999999999--abc".to_string()),
        ("huge", "SHA256E-s18446744073709551615--abc".to_string()),
        ("long", long),
    ];
    for (name, key) in &crafted {
        // Unlocked pointer files: any bytes git will store.
        sb.write(&r.join(format!("p-{name}")), format!("/annex/objects/{key}\n").as_bytes());
        // Locked symlinks (targets up to the kernel's limit).
        let target = format!(".git/annex/objects/aa/bb/{key}/{key}");
        if target.len() < 4000 {
            std::os::unix::fs::symlink(&target, r.join(format!("l-{name}"))).unwrap();
        }
    }
    sb.write(&r.join("p-nul"), b"/annex/objects/SHA256E-s13--a\0b\n");
    // Added to git directly: these are not files git-annex would make.
    sb.git(&r, &["add", "--", "."]);
    sb.git(&r, &["commit", "-q", "-m", "crafted"]);
    let m = mount(&sb, &r, "mnt", &[]);
    let names: Vec<String> =
        std::fs::read_dir(&m.mp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"f.bin".to_string()), "{names:?}");
    for n in names.iter().filter(|n| n.starts_with("p-") || n.starts_with("l-")) {
        let p = m.p(n);
        let _ = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {n}: {e}"));
        match std::fs::read(&p) {
            Ok(got) => assert!(
                !got.windows(secret.len()).any(|w| w == secret),
                "{n}: annexfs served a file from outside the annex"
            ),
            Err(e) => assert!(matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ENOENT)), "{n}: {e}"),
        }
    }
    // The mount is still well.
    assert!(std::fs::read(m.p("f.bin")).unwrap() == data);
}

#[test]
fn the_mount_is_the_owners_alone_unless_allow_other() {
    if !common::require("root (to switch users)", common::is_root()) {
        return;
    }
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (r, data) = repo_with_a_file(&sb);
    let as_nobody_cat = |p: &Path| {
        sb.cmd("setpriv", sb.dir.path())
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "cat"])
            .arg(p)
            .output()
            .unwrap()
    };
    {
        let m = mount(&sb, &r, "mnt", &[]);
        let out = as_nobody_cat(&m.p("f.bin"));
        assert!(!out.status.success(), "another user read an owner-only mount");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    }
    let m = mount(&sb, &r, "mnt-shared", &["-o", "allow_other"]);
    let out = as_nobody_cat(&m.p("f.bin"));
    assert!(out.status.success() && out.stdout == data, "{}", String::from_utf8_lossy(&out.stderr));
}
