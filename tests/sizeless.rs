//! Keys without a size (`git annex addurl --relaxed`: URL or VURL keys): `stat` through the mount
//! shows the real size and reads give the exact bytes, from nginx (HEAD and ranges), from
//! Python's `http.server` (HEAD, no ranges), and from a server that gives no length at all
//! (chunked: the object is downloaded once, which tells its size; `stat` shows what arrived
//! meanwhile); a URL that answers 404 is an EIO with a clear log line, never an empty file.

mod common;
#[path = "common/pyhttp.rs"]
mod pyhttp;

use common::mnt::{Mount, mount};
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random};
use pyhttp::PyHttp;
use std::path::{Path, PathBuf};

const SIZE: usize = 3_000_000;

/// A repository whose `name` is `git annex addurl --relaxed URL`: a URL key without a size.
fn relaxed_repo(sb: &Sandbox, files: &[(&str, String)]) -> PathBuf {
    let r = sb.init_repo("r", "main");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "all"]);
    for (name, url) in files {
        sb.annex(&r, &["addurl", "-q", "--relaxed", "--file", name, url]);
        let key = sb.annex(&r, &["lookupkey", name]).trim().to_string();
        // URL, or VURL with the current git-annex; no `-s` field either way.
        let fields = key.split("--").next().unwrap_or("");
        assert!(fields.ends_with("URL") && !fields.contains("-s"), "{name}: a URL key without a size: {key}");
    }
    sb.git(&r, &["commit", "-q", "-m", "urls"]);
    r
}

fn check_file(m: &Mount, name: &str, data: &[u8]) {
    let path = m.p(name);
    let size = std::fs::metadata(&path).unwrap_or_else(|e| panic!("stat {name}: {e}\n{}", m.log())).len();
    assert_eq!(size, data.len() as u64, "{name}: stat shows the real size\n{}", m.log());
    let got = std::fs::read(&path).unwrap_or_else(|e| panic!("read {name}: {e}\n{}", m.log()));
    assert!(got == data, "{name}: {} bytes read, exact: {}\n{}", got.len(), got == data, m.log());
}

#[test]
fn sizes_come_from_head_and_reads_are_exact_with_or_without_ranges() {
    if !common::require("python3", pyhttp::available())
        || !common::require("nginx", Path::new("/usr/sbin/nginx").exists())
    {
        return;
    }
    let sb = Sandbox::new();
    let www = sb.path("www");
    let a = pseudo_random(81, SIZE);
    let b = pseudo_random(82, SIZE + 17);
    sb.write(&www.join("a.bin"), &a);
    sb.write(&www.join("b.bin"), &b);
    let nginx = Nginx::start(&www, &sb.path("nginx"), 1, None);
    let py = PyHttp::plain(&www, &sb.path("py.log"));
    let r = relaxed_repo(&sb, &[("a.bin", nginx.url(0, "a.bin")), ("b.bin", py.url("b.bin"))]);
    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    check_file(&m, "a.bin", &a);
    check_file(&m, "b.bin", &b);
    assert!(nginx.access_log(0).contains("\" 206 "), "nginx served ranges");
    let log = m.log();
    assert!(log.contains("not verifiable"), "the log says a URL key cannot be verified: {log}");
    drop(m);
    // `annexfs get` learns the size the same way and fetches the whole key into the cache.
    let cache2 = sb.path("cache2");
    let out = sb.annexfs(&r, &["get", "--cache-dir", cache2.to_str().unwrap(), "a.bin", "b.bin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "annexfs get of keys without a size: {err}");
    assert!(err.contains(&format!("a.bin: {SIZE} bytes")), "{err}");
    assert!(err.contains(&format!("b.bin: {} bytes", SIZE + 17)), "{err}");
    let m2 = mount(&sb, &r, "mnt2", &["--cache-dir", cache2.to_str().unwrap()]);
    check_file(&m2, "a.bin", &a);
    check_file(&m2, "b.bin", &b);
}

#[test]
fn a_server_without_lengths_is_downloaded_once_and_stat_knows_before_the_read() {
    if !common::require("python3", pyhttp::available()) {
        return;
    }
    let sb = Sandbox::new();
    let www = sb.path("www");
    let c = pseudo_random(83, SIZE + 5);
    sb.write(&www.join("c.bin"), &c);
    let chunked = PyHttp::chunked(&www, &sb.path("chunked.log"));
    let r = relaxed_repo(&sb, &[("c.bin", chunked.url("c.bin"))]);
    let gets = |log: String| log.lines().filter(|l| l.starts_with("GET /c.bin")).count();
    // `git annex addurl` may have asked too.
    let before = gets(chunked.log());
    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    // The look-up downloads the object (no header tells its length) and waits for it.
    let size = std::fs::metadata(m.p("c.bin")).unwrap_or_else(|e| panic!("stat: {e}\n{}", m.log())).len();
    assert_eq!(size, c.len() as u64, "stat shows the real size before any read\n{}", m.log());
    check_file(&m, "c.bin", &c);
    // Read through the piece cache from the finished download: besides the first probe
    // for a length (a one-byte range, answered with the whole body and cut), one download.
    let n = gets(chunked.log()) - before;
    assert_eq!(n, 2, "a probe and one download of c.bin:\n{}\n{}", chunked.log(), m.log());
}

#[test]
fn a_long_download_shows_what_arrived_and_reads_to_the_real_end() {
    if !common::require("python3", pyhttp::available()) {
        return;
    }
    let sb = Sandbox::new();
    let www = sb.path("www");
    let c = pseudo_random(84, SIZE);
    sb.write(&www.join("slow.bin"), &c);
    // About 10 s for the whole body: longer than a look-up waits.
    let slow = PyHttp::chunked_slow(&www, &sb.path("slow.log"), 300_000);
    let r = relaxed_repo(&sb, &[("slow.bin", slow.url("slow.bin"))]);
    let gets = |log: String| log.lines().filter(|l| l.starts_with("GET /slow.bin")).count();
    let before = gets(slow.log());
    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    let early = std::fs::metadata(m.p("slow.bin")).unwrap_or_else(|e| panic!("stat: {e}\n{}", m.log())).len();
    assert!(early > 0 && early < c.len() as u64, "stat during the download shows what arrived: {early}\n{}", m.log());
    let got = std::fs::read(m.p("slow.bin")).unwrap_or_else(|e| panic!("read: {e}\n{}", m.log()));
    assert!(got == c, "{} bytes read of {}\n{}", got.len(), c.len(), m.log());
    let size = std::fs::metadata(m.p("slow.bin")).unwrap().len();
    assert_eq!(size, c.len() as u64, "stat after the download shows the real size\n{}", m.log());
    let n = gets(slow.log()) - before;
    assert_eq!(n, 2, "a probe, and the reader served from the look-up's download:\n{}", slow.log());
}

#[test]
fn a_url_that_answers_404_is_eio_with_a_log_line_not_an_empty_file() {
    if !common::require("python3", pyhttp::available()) {
        return;
    }
    let sb = Sandbox::new();
    let www = sb.path("www");
    sb.write(&www.join("gone.bin"), &pseudo_random(84, 1000));
    let py = PyHttp::plain(&www, &sb.path("py.log"));
    let r = relaxed_repo(&sb, &[("gone.bin", py.url("gone.bin"))]);
    std::fs::remove_file(www.join("gone.bin")).unwrap();
    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    let err = std::fs::read(m.p("gone.bin")).expect_err("reading a URL that answers 404 fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}\n{}", m.log());
    let log = m.log();
    assert!(log.contains("gone.bin") && log.contains("404"), "the log says why: {log}");
}
