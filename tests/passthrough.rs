//! Content held whole by another repository on a local disk (a non-bare clone, a bare
//! repository, an unchunked directory remote) is read by the kernel through passthrough, like
//! the repository's own objects: the daemon reads none of its bytes. Chunked copies are read
//! through annexfs. Every file is compared byte for byte, by `read` and by `mmap`.

mod common;

use common::mnt::mount;
use common::{Sandbox, mount_status, pseudo_random};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Bytes the process `pid` has read so far (files, sockets, /dev/fuse).
fn rchar(pid: u64) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).unwrap()
}

/// The whole file read through a shared read-only mapping.
fn mmap_read(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    assert!(len > 0);
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file; it is only read
    // within its length and unmapped before returning.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(p, libc::MAP_FAILED, "mmap {}: {}", path.display(), std::io::Error::last_os_error());
        let got = std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec();
        libc::munmap(p, len);
        got
    }
}

#[test]
fn local_holders_are_read_by_the_kernel_and_mmap_is_byte_exact() {
    if !common::require("kernel passthrough (root)", common::is_root()) {
        return;
    }
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "main repo");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("own.bin", pseudo_random(1, 300_000)),
        ("in-clone.bin", pseudo_random(2, 400_000)),
        ("in-bare.bin", pseudo_random(3, 500_000)),
        ("in-dir.bin", pseudo_random(4, 600_000)),
        ("in-chunked.bin", pseudo_random(5, 700_000)),
    ];
    for (name, data) in &files {
        sb.write(&r.join(name), data);
    }
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);
    let c = sb.path("c");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), c.to_str().unwrap()]);
    sb.annex(&c, &["init", "-q", "clone"]);
    sb.git(&r, &["remote", "add", "c", "../c"]);
    sb.annex(&r, &["copy", "-q", "--to", "c", "in-clone.bin"]);
    let b = sb.path("b.git");
    sb.git(sb.dir.path(), &["clone", "-q", "--bare", r.to_str().unwrap(), b.to_str().unwrap()]);
    sb.annex(&b, &["init", "-q", "bare"]);
    sb.git(&r, &["remote", "add", "b", "../b.git"]);
    sb.annex(&r, &["copy", "-q", "--to", "b", "in-bare.bin"]);
    for (remote, chunk, file) in [("dplain", None, "in-dir.bin"), ("dchunk", Some("chunk=64KiB"), "in-chunked.bin")] {
        let dir = sb.path(&format!("dirs/{remote}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["initremote".to_string(), "-q".into(), remote.into(), "type=directory".into()];
        args.push(format!("directory={}", dir.display()));
        args.push("encryption=none".into());
        args.extend(chunk.map(String::from));
        sb.annex(&r, &args);
        sb.annex(&r, &["copy", "-q", "--to", remote, file]);
    }
    sb.annex(&r, &["drop", "-q", "--force", "in-clone.bin", "in-bare.bin", "in-dir.bin", "in-chunked.bin"]);

    let m = mount(&sb, &r, "mnt", &[]);
    let pid = mount_status(&m.mp)["pid"].as_u64().expect("daemon pid in the status");
    if m.log().contains("passthrough unavailable") {
        assert!(!common::real_required(), "kernel passthrough unavailable: {}", m.log());
        eprintln!("SKIP: kernel passthrough unavailable here");
        return;
    }
    for (name, data) in &files {
        let before = rchar(pid);
        let got = std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("read {name}: {e}\nlog: {}", m.log()));
        let read_by_daemon = rchar(pid) - before;
        assert!(got == *data, "content of {name} differs ({} bytes, {} expected)", got.len(), data.len());
        let mapped = mmap_read(&m.p(name));
        assert!(mapped == *data, "mmap of {name} differs");
        if *name == "in-chunked.bin" {
            // Chunks are no single file: annexfs reads them itself.
            assert!(read_by_daemon >= data.len() as u64, "{name}: the daemon read {read_by_daemon} bytes");
        } else {
            // Requests (lookup, open, release) are a few hundred bytes; the content is not read.
            assert!(read_by_daemon < data.len() as u64 / 4, "{name}: the daemon read {read_by_daemon} bytes");
        }
    }
    // A copy whose size is not the key's is refused for passthrough and for reads alike.
    let obj = |repo: &Path, name: &str| {
        let key = sb.annex(&r, &["lookupkey", name]).trim().to_string();
        let rel = sb.annex(repo, &["examinekey", "--format=${objectpath}", &key]).trim().to_string();
        repo.join(rel)
    };
    let clone_obj = obj(&c, "in-clone.bin");
    assert!(clone_obj.is_file(), "{}", clone_obj.display());
    drop(m);
    let mut perms = std::fs::metadata(clone_obj.parent().unwrap()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(clone_obj.parent().unwrap(), perms).unwrap();
    std::fs::set_permissions(&clone_obj, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new().append(true).open(&clone_obj).unwrap().set_len(1000).unwrap();
    let m = mount(&sb, &r, "mnt2", &[]);
    let err = std::fs::read(m.p("in-clone.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}
