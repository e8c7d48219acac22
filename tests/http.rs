//! Mount tests with real HTTP servers (nginx on loopback): web URLs on several mirrors, an
//! http git remote that is not bare (its UUID learnt from `<url>/config`) and a bare one,
//! compared byte for byte; the piece cache survives a remount; loopback addresses are refused
//! unless `annex.security.allowed-ip-addresses` allows them.

mod common;

use common::mnt::{mount, xattr};
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random};

struct World {
    sb: Sandbox,
    r: std::path::PathBuf,
    nginx: Nginx,
    web: Vec<u8>,
    nonbare: Vec<u8>,
    bare: Vec<u8>,
}

fn world(allow_loopback: bool) -> World {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "main");
    if allow_loopback {
        sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    }
    let web = pseudo_random(31, 9_000_000);
    let nonbare = pseudo_random(32, 2_500_000);
    let bare = pseudo_random(33, 700_000);
    sb.write(&r.join("media/web.bin"), &web);
    sb.write(&r.join("media/nonbare.bin"), &nonbare);
    sb.write(&r.join("bare.bin"), &bare);
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);

    // What the web server serves: plain copies for web URLs, and two repositories.
    let www = sb.path("www");
    sb.write(&www.join("files/web.bin"), &web);
    let served = www.join("served");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), served.to_str().unwrap()]);
    sb.annex(&served, &["init", "-q", "served over http"]);
    sb.git(&r, &["remote", "add", "served", served.to_str().unwrap()]);
    sb.annex(&r, &["copy", "-q", "--to", "served", "media/nonbare.bin"]);
    let bare_repo = www.join("b.git");
    sb.git(sb.dir.path(), &["clone", "-q", "--bare", r.to_str().unwrap(), bare_repo.to_str().unwrap()]);
    sb.annex(&bare_repo, &["init", "-q", "bare over http"]);
    sb.git(&r, &["remote", "add", "b", bare_repo.to_str().unwrap()]);
    sb.annex(&r, &["copy", "-q", "--to", "b", "bare.bin"]);

    let nginx = Nginx::start(&www, &sb.path("nginx"), 3, None);
    let web_key = sb.annex(&r, &["lookupkey", "media/web.bin"]).trim().to_string();
    for m in 0..3 {
        sb.annex(&r, &["registerurl", &web_key, &nginx.url(m, "files/web.bin")]);
    }
    // The remotes are now reached over HTTP. The non-bare one's UUID and bareness are
    // forgotten from .git/config, so annexfs must learn them from <url>/config.
    sb.git(&r, &["config", "remote.served.url", &nginx.url(0, "served/.git")]);
    sb.git(&r, &["config", "--unset", "remote.served.annex-uuid"]);
    let _ = sb.cmd("git", &r).args(["config", "--unset", "remote.served.annex-bare"]).output();
    sb.git(&r, &["config", "remote.b.url", &nginx.url(1, "b.git")]);
    sb.annex(&r, &["drop", "-q", "--force", "media/web.bin", "media/nonbare.bin", "bare.bin"]);
    World { sb, r, nginx, web, nonbare, bare }
}

fn count_206(log: &str) -> usize {
    log.lines().filter(|l| l.contains("\" 206 ")).count()
}

#[test]
fn files_read_byte_exact_from_web_mirrors_and_http_git_remotes() {
    let w = world(true);
    let cache = w.sb.path("cache");
    let cache_s = cache.to_str().unwrap();
    {
        let m = mount(&w.sb, &w.r, "mnt", &["--cache-dir", cache_s]);
        assert_eq!(xattr(&m.p("media/web.bin"), "user.annexfs.present").unwrap(), b"0");
        for (name, data) in [("media/web.bin", &w.web), ("media/nonbare.bin", &w.nonbare), ("bare.bin", &w.bare)] {
            let got = std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("read {name}: {e}\nlog: {}", m.log()));
            assert!(got == *data, "content of {name} ({} bytes read)", got.len());
        }
        // A range in the middle, with cmp against the original.
        let orig = w.sb.path("orig");
        std::fs::write(&orig, &w.web).unwrap();
        let st = std::process::Command::new("cmp").arg(&orig).arg(m.p("media/web.bin")).status().unwrap();
        assert!(st.success());
        assert_eq!(
            xattr(&m.p("media/web.bin"), "user.annexfs.present").unwrap(),
            w.web.len().to_string().as_bytes(),
            "the whole file is in the cache now"
        );
        // Ranges really were asked, and the web file came from more than one mirror.
        let logs: Vec<String> = (0..3).map(|i| w.nginx.access_log(i)).collect();
        let web_mirrors = logs.iter().filter(|l| l.contains("/files/web.bin") && count_206(l) > 0).count();
        assert!(web_mirrors >= 2, "web.bin came from {web_mirrors} mirror(s): {logs:?}");
        assert!(logs[0].contains("GET /served/.git/config"), "UUID learnt from <url>/config: {}", logs[0]);
        assert!(logs[0].contains("/served/.git/annex/objects/") && count_206(&logs[0]) > 0);
        assert!(logs[1].contains("/b.git/annex/objects/"), "bare remote read over http: {}", logs[1]);
        assert!(
            !logs.iter().any(|l| l.lines().any(|x| x.contains("/annex/objects/") && x.contains("\" 200 "))),
            "no whole-object answers: {logs:?}"
        );
    }
    // The cache survives a remount: no mirror is asked again.
    let before: Vec<usize> = (0..3).map(|i| w.nginx.access_log(i).lines().count()).collect();
    let m = mount(&w.sb, &w.r, "mnt2", &["--cache-dir", cache_s]);
    assert!(std::fs::read(m.p("media/web.bin")).unwrap() == w.web);
    let after: Vec<usize> = (0..3).map(|i| w.nginx.access_log(i).lines().count()).collect();
    let web_requests =
        |i: usize| w.nginx.access_log(i).lines().skip(before[i]).filter(|l| l.contains("/files/web.bin")).count();
    assert_eq!((0..3).map(web_requests).sum::<usize>(), 0, "served from the cache: {before:?} -> {after:?}");
}

#[test]
fn loopback_mirrors_are_refused_unless_allowed() {
    let w = world(false);
    let m = mount(&w.sb, &w.r, "mnt", &["--cache-dir", w.sb.path("cache").to_str().unwrap()]);
    let err = std::fs::read(m.p("media/web.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = m.log();
    assert!(log.contains("media/web.bin") && log.contains("allowed-ip-addresses"), "log: {log}");
    assert!((0..3).all(|i| !w.nginx.access_log(i).contains("web.bin")), "no request left the machine's policy");
}

#[test]
fn annexfs_get_fills_the_cache_and_hands_content_to_git_annex() {
    let w = world(true);
    let cache = w.sb.path("cache");
    let out = w.sb.annexfs(&w.r, &["get", "--cache-dir", cache.to_str().unwrap(), "media/web.bin", "bare.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("media/web.bin: 9000000 bytes, verified"), "{stderr}");
    assert!(!stderr.contains('\r'), "no progress bar when stderr is not a terminal");
    // The repository is untouched by a plain get; a mount now reads without any request.
    assert!(w.sb.annex(&w.r, &["find", "--format=${file}\n"]).trim().is_empty(), "nothing present in the annex");
    let before = w.nginx.access_log(2).lines().count();
    let m = mount(&w.sb, &w.r, "mnt", &["--cache-dir", cache.to_str().unwrap()]);
    assert!(std::fs::read(m.p("bare.bin")).unwrap() == w.bare);
    assert_eq!(w.nginx.access_log(2).lines().count(), before);
    drop(m);

    let out = w.sb.annexfs(&w.r, &["get", "--into-annex", "--cache-dir", cache.to_str().unwrap(), "media/nonbare.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(w.r.join("media/nonbare.bin")).unwrap() == w.nonbare, "content present in the repository");
    w.sb.annex(&w.r, &["fsck", "-q", "media/nonbare.bin"]);
    let found = w.sb.annex(&w.r, &["find", "--format=${file}\n"]);
    assert_eq!(found.trim(), "media/nonbare.bin");
}

#[test]
fn two_mounts_sharing_a_cache_download_each_byte_once() {
    let w = world(true);
    let cache = w.sb.path("cache");
    let c = cache.to_str().unwrap();
    let m1 = mount(&w.sb, &w.r, "mnt1", &["--cache-dir", c]);
    let m2 = mount(&w.sb, &w.r, "mnt2", &["--cache-dir", c]);
    let (p1, p2) = (m1.p("media/web.bin"), m2.p("media/web.bin"));
    let t1 = std::thread::spawn(move || std::fs::read(p1).unwrap());
    let t2 = std::thread::spawn(move || std::fs::read(p2).unwrap());
    let (a, b) = (t1.join().unwrap(), t2.join().unwrap());
    assert!(a == w.web && b == w.web, "both mounts read the exact bytes");
    let sent: u64 = (0..3)
        .flat_map(|i| w.nginx.access_log(i).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.contains("/files/web.bin"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    let size = w.web.len() as u64;
    // Hedged duplicates may fetch a few pieces twice; a second download would double it.
    let logs: Vec<String> = (0..3).map(|i| w.nginx.access_log(i)).collect();
    assert!(
        sent < size + size / 4,
        "{sent} bytes sent for a {size}-byte file read by two mounts: {logs:#?}\n{}\n{}",
        m1.log(),
        m2.log()
    );
}

#[test]
fn an_httpalso_remote_serves_a_directory_remote_over_http() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "main");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let data = pseudo_random(41, 700_000);
    sb.write(&r.join("h.bin"), &data);
    sb.annex(&r, &["add", "-q", "h.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "h"]);
    let www = sb.path("www");
    let dir = www.join("dsr");
    std::fs::create_dir_all(&dir).unwrap();
    sb.annex(
        &r,
        &["initremote", "-q", "dsr", "type=directory", &format!("directory={}", dir.display()), "encryption=none"],
    );
    sb.annex(&r, &["copy", "-q", "--to", "dsr", "h.bin"]);
    sb.annex(&r, &["drop", "-q", "h.bin"]);
    let nginx = Nginx::start(&www, &sb.path("nginx"), 1, None);
    sb.annex(
        &r,
        &["initremote", "-q", "dsrhttp", "--sameas=dsr", "type=httpalso", &format!("url={}", nginx.url(0, "dsr"))],
    );
    // The directory itself is not usable from here: only its HTTP face is.
    sb.git(&r, &["config", "remote.dsr.annex-ignore", "true"]);
    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    let got = std::fs::read(m.p("h.bin")).unwrap_or_else(|e| panic!("{e}\nlog: {}", m.log()));
    assert!(got == data, "content through httpalso");
    let log = nginx.access_log(0);
    assert!(log.contains("GET /dsr/") && count_206(&log) > 0, "{log}");
}

#[test]
fn a_full_cache_disk_fails_the_read_with_eio_and_serves_no_wrong_byte() {
    if !common::require("root (to mount a small tmpfs)", common::is_root()) {
        return;
    }
    let w = world(true);
    // A 2 MiB filesystem for the cache; the cache's own bound is much larger.
    let cache = w.sb.path("tiny");
    std::fs::create_dir_all(&cache).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(cache.clone());
    let m = mount(&w.sb, &w.r, "mnt", &["--cache-dir", cache.to_str().unwrap(), "--cache-size", "1G"]);
    let mut f = std::fs::File::open(m.p("media/web.bin")).unwrap();
    let mut got = Vec::new();
    let err = std::io::Read::read_to_end(&mut f, &mut got).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(got.len() < w.web.len());
    assert!(got[..] == w.web[..got.len()], "every byte served before the error is right");
    let log = m.log();
    assert!(log.contains("media/web.bin") && log.contains("No space left on device"), "log: {log}");
}
