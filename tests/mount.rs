//! Mount tests: real git-annex repositories built with the git-annex CLI, mounted with FUSE by
//! the annexfs binary, read with `std::fs` and with `cat`/`cmp`, and compared byte for byte
//! with the original content.
//!
//! They need root (or a usable /dev/fuse) and fuse3, which the README's test command
//! installs; CI runs them as root.

mod common;

use common::mnt::{Mount, is_mounted, mount, xattr};
use common::{Sandbox, pseudo_random};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A repository whose content is spread over itself, a non-bare clone, a bare repository and
/// three directory remotes (plain, chunked, legacy-chunked), plus one file nobody has.
struct World {
    sb: Sandbox,
    r: PathBuf,
    content: BTreeMap<&'static str, Vec<u8>>,
}

fn world() -> World {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "main repo");
    let mut content: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    let locked: &[(&'static str, Vec<u8>)] = &[
        ("a.txt", b"hello from a\n".to_vec()),
        ("dir one/nested/deep file \u{fc}.bin", pseudo_random(10, 200_000)),
        ("empty.dat", Vec::new()),
        ("spread/in-clone.bin", pseudo_random(11, 70_000)),
        ("spread/in-bare.bin", pseudo_random(12, 50_000)),
        ("spread/in-dir.bin", pseudo_random(13, 40_000)),
        ("spread/in-chunked.bin", pseudo_random(14, 1_000_000)),
        ("spread/in-legacy.bin", pseudo_random(15, 100_000)),
        ("spread/nowhere.bin", pseudo_random(16, 1000)),
    ];
    for (name, data) in locked {
        sb.write(&r.join(name), data);
        content.insert(name, data.clone());
    }
    sb.annex(&r, &["add", "-q", "."]);
    for (name, data) in [
        ("unlocked/present.txt", b"unlocked and present\n".to_vec()),
        ("unlocked/tool.sh", b"#!/bin/sh\necho tool\n".to_vec()),
        ("unlocked/absent.bin", pseudo_random(17, 30_000)),
    ] {
        sb.write(&r.join(name), &data);
        content.insert(name, data);
    }
    std::fs::set_permissions(r.join("unlocked/tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.git(&r, &["-c", "annex.addunlocked=true", "annex", "add", "-q", "unlocked"]);
    for (name, data) in
        [("README.plain", b"a plain git file\n".to_vec()), ("run.sh", b"#!/bin/sh\necho run\n".to_vec())]
    {
        sb.write(&r.join(name), &data);
        content.insert(name, data);
    }
    std::fs::set_permissions(r.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("README.plain", r.join("link-to-readme")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", r.join("dangling")).unwrap();
    sb.git(&r, &["-c", "annex.largefiles=nothing", "add", "README.plain", "run.sh", "link-to-readme", "dangling"]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);

    let c = sb.path("c");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), c.to_str().unwrap()]);
    sb.annex(&c, &["init", "-q", "clone"]);
    sb.git(&r, &["remote", "add", "c", "../c"]);
    sb.annex(&r, &["copy", "-q", "--to", "c", "spread/in-clone.bin", "unlocked/absent.bin"]);

    let b = sb.path("b.git");
    sb.git(sb.dir.path(), &["clone", "-q", "--bare", r.to_str().unwrap(), b.to_str().unwrap()]);
    sb.annex(&b, &["init", "-q", "bare"]);
    sb.git(&r, &["remote", "add", "b", "../b.git"]);
    sb.annex(&r, &["copy", "-q", "--to", "b", "spread/in-bare.bin", "a.txt"]);

    for (remote, opt, file) in [
        ("dplain", None, "spread/in-dir.bin"),
        ("dchunk", Some("chunk=64KiB"), "spread/in-chunked.bin"),
        ("dlegacy", Some("chunksize=25000"), "spread/in-legacy.bin"),
    ] {
        let dir = sb.path(&format!("dirs/{remote}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["initremote".to_string(), "-q".into(), remote.into(), "type=directory".into()];
        args.push(format!("directory={}", dir.display()));
        args.push("encryption=none".into());
        args.extend(opt.map(String::from));
        sb.annex(&r, &args);
        sb.annex(&r, &["copy", "-q", "--to", remote, file]);
    }
    sb.annex(
        &r,
        &[
            "drop",
            "-q",
            "--force",
            "spread/in-clone.bin",
            "spread/in-bare.bin",
            "spread/in-dir.bin",
            "spread/in-chunked.bin",
            "spread/in-legacy.bin",
            "spread/nowhere.bin",
            "unlocked/absent.bin",
        ],
    );
    World { sb, r, content }
}

#[test]
fn every_file_reads_byte_exact_from_wherever_its_content_is() {
    let w = world();
    let m = mount(&w.sb, &w.r, "mnt", &[]);

    for (name, data) in &w.content {
        if *name == "spread/nowhere.bin" {
            continue;
        }
        let got = std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("read {name}: {e}\nlog: {}", m.log()));
        assert!(got == *data, "content of {name} differs ({} bytes read, {} expected)", got.len(), data.len());
        let md = std::fs::metadata(m.p(name)).unwrap();
        assert!(md.is_file(), "{name} is a regular file");
        assert_eq!(md.len(), data.len() as u64, "size of {name}");
    }
    // Ordinary tools agree.
    for name in ["spread/in-chunked.bin", "spread/in-legacy.bin", "dir one/nested/deep file \u{fc}.bin"] {
        let orig = w.sb.path("orig.bin");
        std::fs::write(&orig, &w.content[name]).unwrap();
        let st = std::process::Command::new("cmp").arg(&orig).arg(m.p(name)).status().unwrap();
        assert!(st.success(), "cmp {name}");
        let cat = std::process::Command::new("cat").arg(m.p(name)).output().unwrap();
        assert_eq!(cat.stdout, w.content[name]);
    }

    // Modes: files 0444 (exec bit kept), directories 0555.
    let mode = |rel: &str| std::fs::metadata(m.p(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("a.txt"), 0o444);
    assert_eq!(mode("unlocked/tool.sh"), 0o555);
    assert_eq!(mode("run.sh"), 0o555);
    assert_eq!(mode("README.plain"), 0o444);
    assert_eq!(mode("dir one"), 0o555);
    assert_eq!(mode(""), 0o555);

    // Symlinks that are not annex links stay symlinks and are not followed.
    assert_eq!(std::fs::read_link(m.p("link-to-readme")).unwrap(), Path::new("README.plain"));
    assert_eq!(std::fs::read_link(m.p("dangling")).unwrap(), Path::new("/nonexistent/target"));
    assert!(std::fs::symlink_metadata(m.p("dangling")).unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(m.p("a.txt")).unwrap().is_file(), "annex links are shown as files");

    // .git is hidden.
    let names: Vec<String> =
        std::fs::read_dir(&m.mp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n == ".git"), "{names:?}");
    assert!(std::fs::symlink_metadata(m.p(".git")).is_err());
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["README.plain", "a.txt", "dangling", "dir one", "empty.dat", "link-to-readme", "run.sh", "spread", "unlocked"]
    );

    // mtime of the working-tree view comes from the file.
    let orig_mtime = std::fs::symlink_metadata(w.r.join("a.txt")).unwrap().modified().unwrap();
    let shown = std::fs::metadata(m.p("a.txt")).unwrap().modified().unwrap();
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(shown), secs(orig_mtime));

    // Extended attributes.
    let key = w.sb.annex(&w.r, &["lookupkey", "spread/in-dir.bin"]).trim().to_string();
    assert_eq!(xattr(&m.p("spread/in-dir.bin"), "user.annexfs.key").unwrap(), key.as_bytes());
    assert_eq!(xattr(&m.p("spread/in-dir.bin"), "user.annexfs.present").unwrap(), b"0");
    assert_eq!(xattr(&m.p("a.txt"), "user.annexfs.present").unwrap(), b"13");
    assert!(xattr(&m.p("README.plain"), "user.annexfs.key").is_none());
    // Namespaces annexfs has no attributes in say so, so ls and friends stop asking.
    assert!(xattr(&m.p("a.txt"), "security.selinux").is_none());
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EOPNOTSUPP));

    // Content nobody has: EIO within seconds, and a log line naming file, key and holders.
    let start = Instant::now();
    let err = std::fs::read(m.p("spread/nowhere.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let nkey = w.sb.annex(&w.r, &["lookupkey", "spread/nowhere.bin"]).trim().to_string();
    let log = m.log();
    assert!(log.lines().any(|l| l.contains("spread/nowhere.bin") && l.contains(&nkey)), "log: {log}");

    // Writes: EROFS.
    for err in [
        std::fs::OpenOptions::new().write(true).open(m.p("a.txt")).unwrap_err(),
        std::fs::File::create(m.p("new.txt")).unwrap_err(),
        std::fs::create_dir(m.p("newdir")).unwrap_err(),
        std::fs::remove_file(m.p("a.txt")).unwrap_err(),
        std::fs::rename(m.p("a.txt"), m.p("b.txt")).unwrap_err(),
    ] {
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
}

#[test]
fn mount_follows_the_repository_live() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "live");
    sb.write(&r.join("first.txt"), b"first\n");
    sb.write(&r.join("change.txt"), b"old content\n");
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "first"]);
    let c = sb.path("c");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), c.to_str().unwrap()]);
    sb.annex(&c, &["init", "-q", "clone"]);
    sb.annex(&c, &["get", "-q", "first.txt"]);
    sb.git(&r, &["remote", "add", "c", "../c"]);
    sb.git(&r, &["fetch", "-q", "c"]);
    sb.annex(&r, &["drop", "-q", "first.txt"]);
    let m = mount(&sb, &r, "mnt", &[]);
    assert_eq!(std::fs::read(m.p("first.txt")).unwrap(), b"first\n", "read from the clone");
    assert_eq!(xattr(&m.p("first.txt"), "user.annexfs.present").unwrap(), b"0");
    assert_eq!(std::fs::read(m.p("change.txt")).unwrap(), b"old content\n");

    // The mount shows a change about a second after it; waited for generously.
    let eventually = |what: &str, f: &dyn Fn() -> bool| {
        let what = format!("{what} to show in the mount (log: {})", m.log.display());
        common::wait_until(Duration::from_secs(60), &what, f);
    };
    // git annex get: the content is local now.
    sb.annex(&r, &["get", "-q", "first.txt"]);
    eventually("content after git annex get", &|| {
        xattr(&m.p("first.txt"), "user.annexfs.present").as_deref() == Some(b"6")
    });
    // git annex add: a new file appears.
    sb.write(&r.join("sub/added.txt"), b"added later\n");
    sb.annex(&r, &["add", "-q", "sub/added.txt"]);
    eventually("a newly added file", &|| std::fs::read(m.p("sub/added.txt")).is_ok_and(|b| b == b"added later\n"));
    // A pull that changes a file and removes another.
    sb.annex(&c, &["unlock", "change.txt"]);
    sb.write(&c.join("change.txt"), b"new content, longer than before\n");
    sb.annex(&c, &["add", "-q", "change.txt"]);
    sb.git(&c, &["rm", "-q", "first.txt"]);
    sb.git(&c, &["commit", "-q", "-m", "change"]);
    sb.git(&r, &["commit", "-q", "-m", "added"]);
    sb.git(&r, &["fetch", "-q", "c"]);
    sb.git(&r, &["merge", "-q", "--no-edit", "c/main"]);
    sb.annex(&r, &["get", "-q", "change.txt"]);
    eventually("the pulled change", &|| {
        std::fs::read(m.p("change.txt")).is_ok_and(|b| b == b"new content, longer than before\n")
    });
    eventually("the pulled removal", &|| std::fs::symlink_metadata(m.p("first.txt")).is_err());
}

#[test]
fn ref_and_bare_mounts_show_a_commit_tree() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "refs");
    sb.write(&r.join("v.txt"), b"version one\n");
    sb.annex(&r, &["add", "-q", "v.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "one"]);
    sb.git(&r, &["tag", "v1"]);
    sb.git(&r, &["rm", "-q", "v.txt"]);
    sb.write(&r.join("w.txt"), b"version two\n");
    sb.annex(&r, &["add", "-q", "w.txt"]);
    // A directory larger than one readdir buffer.
    let names: Vec<String> = (0..1500).map(|i| format!("entry-{i:04}.txt")).collect();
    for n in &names {
        sb.write(&r.join("big-dir").join(n), n.as_bytes());
    }
    sb.git(&r, &["-c", "annex.largefiles=nothing", "add", "big-dir"]);
    sb.git(&r, &["commit", "-q", "-m", "two"]);

    let head = mount(&sb, &r, "mnt-head", &["--ref", "HEAD"]);
    let mut listed: Vec<String> =
        std::fs::read_dir(head.p("big-dir")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, names, "every entry of a large directory, once");
    assert_eq!(std::fs::read(head.p("big-dir/entry-1234.txt")).unwrap(), b"entry-1234.txt");
    // ls -l: a total line and 1500 entries, each of 14 bytes (its name); twice, so that the
    // second time ls gets the attributes with the listing (a process that stats what it
    // lists), and with plain listings only (-o readdirplus=no).
    let plain = mount(&sb, &r, "mnt-plain", &["--ref", "HEAD", "-o", "readdirplus=no"]);
    for m in [&head, &head, &plain] {
        let ls = std::process::Command::new("ls").arg("-ln").arg(m.p("big-dir")).output().unwrap();
        let out = String::from_utf8_lossy(&ls.stdout);
        assert_eq!(out.lines().count(), 1501, "ls -l: total line and 1500 entries");
        assert!(out.lines().skip(1).all(|l| l.split_whitespace().nth(4) == Some("14")), "{out}");
    }
    drop(plain);

    let m = mount(&sb, &r, "mnt-ref", &["--ref", "v1"]);
    assert_eq!(std::fs::read(m.p("v.txt")).unwrap(), b"version one\n");
    assert!(std::fs::metadata(m.p("w.txt")).is_err());
    let commit_time: u64 = sb.git(&r, &["log", "-1", "--format=%ct", "v1"]).trim().parse().unwrap();
    let mtime = std::fs::metadata(m.p("v.txt")).unwrap().modified().unwrap();
    assert_eq!(mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), commit_time);

    let b = sb.path("b.git");
    sb.git(sb.dir.path(), &["clone", "-q", "--bare", r.to_str().unwrap(), b.to_str().unwrap()]);
    sb.annex(&b, &["init", "-q", "bare"]);
    sb.git(&r, &["remote", "add", "b", "../b.git"]);
    sb.annex(&r, &["copy", "-q", "--to", "b", "w.txt"]);
    let mb = mount(&sb, &b, "mnt-bare", &[]);
    assert_eq!(std::fs::read(mb.p("w.txt")).unwrap(), b"version two\n", "content in the bare repo's own annex");
    assert!(std::fs::metadata(mb.p("v.txt")).is_err());
}

#[test]
fn mount_errors_are_one_clear_line_and_leave_nothing_mounted() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "errors");
    sb.write(&r.join("f.txt"), b"f\n");
    sb.annex(&r, &["add", "-q", "f.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let plain = sb.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    sb.git(&plain, &["init", "-q"]);
    let mp = sb.path("mp");
    std::fs::create_dir_all(&mp).unwrap();
    let file_mp = sb.path("file-mp");
    std::fs::write(&file_mp, b"").unwrap();

    let run = |args: &[&str]| {
        let out = sb.annexfs(sb.dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    let r_s = r.to_str().unwrap();
    let mp_s = mp.to_str().unwrap();
    for (args, expect) in [
        (vec!["mount", r_s, sb.path("missing").to_str().unwrap()], "does not exist"),
        (vec!["mount", r_s, file_mp.to_str().unwrap()], "not a directory"),
        (vec!["mount", plain.to_str().unwrap(), mp_s], "not a git-annex repository"),
        (vec!["mount", sb.path("nope").to_str().unwrap(), mp_s], "no such repository"),
        (vec!["mount", "--ref", "no-such-ref", r_s, mp_s], "not a commit"),
        (vec!["mount", "-o", "rw", r_s, mp_s], "read-only"),
    ] {
        let (ok, stderr) = run(&args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(stderr.trim().lines().count(), 1, "one line for {args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!is_mounted(&mp), "nothing mounted after {args:?}");
    }
    // Busy: something is mounted there already.
    let m = mount(&sb, &r, "mp", &[]);
    let (ok, stderr) = run(&["mount", r_s, mp_s]);
    assert!(!ok);
    assert!(stderr.contains("busy"), "{stderr}");
    assert_eq!(std::fs::read(m.p("f.txt")).unwrap(), b"f\n", "the first mount is untouched");
    // Clean unmount, and it is gone.
    let (ok, stderr) = run(&["umount", mp_s]);
    assert!(ok, "{stderr}");
    assert!(!is_mounted(&mp));
    let (ok, stderr) = run(&["umount", mp_s]);
    assert!(!ok && stderr.contains("not a mount point"), "{stderr}");
}

#[test]
fn fusermount3_unmounts_and_the_daemon_exits() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "fusermount");
    sb.write(&r.join("f.txt"), b"f\n");
    sb.annex(&r, &["add", "-q", "f.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let m = mount(&sb, &r, "mp", &[]);
    assert!(is_mounted(&m.mp));
    let st = std::process::Command::new("fusermount3").arg("-u").arg(&m.mp).status().unwrap();
    assert!(st.success());
    assert!(!is_mounted(&m.mp));
    // The daemon notices and exits: its log says so.
    common::wait_until(Duration::from_secs(60), &format!("the daemon to log its exit in {}", m.log.display()), || {
        m.log().contains("unmounted")
    });
}

#[test]
fn a_read_waiting_on_slow_storage_blocks_nothing_else() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "slow");
    sb.write(&r.join("slow.bin"), &pseudo_random(20, 3000));
    sb.write(&r.join("fast.txt"), b"fast\n");
    sb.write(&r.join("d/other.txt"), b"other\n");
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let real = sb.path("dirs/dslow");
    std::fs::create_dir_all(&real).unwrap();
    sb.annex(
        &r,
        &["initremote", "-q", "dslow", "type=directory", &format!("directory={}", real.display()), "encryption=none"],
    );
    sb.annex(&r, &["copy", "-q", "--to", "dslow", "slow.bin"]);
    sb.annex(&r, &["drop", "-q", "slow.bin"]);
    // The remote's directory is now seen through a filesystem whose reads wait until the test
    // lets them through.
    let slow_mp = sb.path("slowmnt");
    std::fs::create_dir_all(&slow_mp).unwrap();
    let slow = common::slowfs::mount_gated(&real, &slow_mp);
    sb.git(&r, &["config", "remote.dslow.annex-directory", slow_mp.to_str().unwrap()]);
    let m = mount(&sb, &r, "mnt", &[]);

    let slow_path = m.p("slow.bin");
    let reader = std::thread::spawn(move || std::fs::read(&slow_path));
    common::wait_until(Duration::from_secs(60), "the read of slow.bin to wait on the slow storage", || {
        slow.waiting() > 0
    });
    // Everything else is answered while that read waits: it waits until the gate opens, so
    // a blocked operation would never finish.
    let mp = m.mp.clone();
    let others = std::thread::spawn(move || {
        (
            std::fs::read(mp.join("fast.txt")).unwrap(),
            std::fs::read(mp.join("d/other.txt")).unwrap(),
            std::fs::read_dir(&mp).unwrap().count(),
            std::fs::metadata(mp.join("slow.bin")).unwrap().len(),
        )
    });
    common::wait_until(Duration::from_secs(60), "other operations to be answered while a read waits", || {
        others.is_finished()
    });
    assert!(slow.waiting() > 0 && !reader.is_finished(), "the slow read was still waiting meanwhile");
    assert_eq!(others.join().unwrap(), (b"fast\n".to_vec(), b"other\n".to_vec(), 3, 3000));
    slow.open();
    assert_eq!(reader.join().unwrap().unwrap(), pseudo_random(20, 3000), "the slow read completes byte-exact");
}

#[test]
fn an_ordinary_user_can_mount_and_unmount() {
    if !common::require("root (to set up /dev/fuse and switch users)", common::is_root()) {
        return;
    }
    // /dev/fuse is 0600 on these machines; distributions ship it 0666.
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = sb.init_repo("r", "user");
    sb.write(&r.join("f.txt"), b"for an ordinary user\n");
    sb.annex(&r, &["add", "-q", "f.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let mp = sb.path("usermnt");
    std::fs::create_dir_all(&mp).unwrap();
    let home = sb.path("nobody-home");
    std::fs::create_dir_all(&home).unwrap();
    for p in [&mp, &home] {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path; 65534 is nobody.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    }
    let as_nobody = |args: &[&std::ffi::OsStr]| {
        sb.cmd("setpriv", sb.dir.path())
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .env("HOME", &home)
            .output()
            .unwrap()
    };
    let bin = std::ffi::OsStr::new(env!("CARGO_BIN_EXE_annexfs"));
    let out = as_nobody(&[bin, "mount".as_ref(), r.as_os_str(), mp.as_os_str()]);
    let guard = Mount { mp: mp.clone(), log: home.join(".local/state/annexfs/annexfs.log") };
    assert!(out.status.success(), "mount as nobody: {}\n{}", String::from_utf8_lossy(&out.stderr), guard.log());
    let cat = as_nobody(&["cat".as_ref(), mp.join("f.txt").as_os_str()]);
    assert_eq!(cat.stdout, b"for an ordinary user\n", "{}", String::from_utf8_lossy(&cat.stderr));
    let out = as_nobody(&[bin, "umount".as_ref(), mp.as_os_str()]);
    assert!(out.status.success(), "umount as nobody: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&mp));
}
