//! Web servers that ignore `Range` (they answer every GET with 200 and the whole body): a file
//! whose only URL is on such a server (Python's `http.server`) reads byte-exact through the
//! mount and through `annexfs get`; beside a range-capable nginx mirror both serve, and the
//! bytes are exact.

mod common;
#[path = "common/pyhttp.rs"]
mod pyhttp;

use common::mnt::mount;
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random};
use pyhttp::PyHttp;
use std::path::{Path, PathBuf};

const SIZE: usize = 6_000_000;

/// A repository with `f.bin` added by `git annex addurl` from `url` (a hashed key with a size,
/// the URL recorded), its content dropped.
fn repo_from_url(sb: &Sandbox, url: &str) -> PathBuf {
    let r = sb.init_repo("r", "main");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "all"]);
    sb.annex(&r, &["addurl", "-q", "--file", "f.bin", url]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    sb.annex(&r, &["drop", "-q", "--force", "f.bin"]);
    r
}

fn www(sb: &Sandbox, data: &[u8]) -> PathBuf {
    let www = sb.path("www");
    sb.write(&www.join("f.bin"), data);
    www
}

fn gets(log: &str) -> usize {
    log.lines().filter(|l| l.contains("GET /f.bin")).count()
}

#[test]
fn a_file_only_on_a_server_that_ignores_range_reads_exact() {
    if !common::require("python3", pyhttp::available()) {
        return;
    }
    let sb = Sandbox::new();
    let data = pseudo_random(71, SIZE);
    let py = PyHttp::plain(&www(&sb, &data), &sb.path("py.log"));
    let r = repo_from_url(&sb, &py.url("f.bin"));
    let before = gets(&py.log());

    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    let got = std::fs::read(m.p("f.bin")).unwrap_or_else(|e| panic!("read: {e}\n{}", m.log()));
    assert!(got == data, "bytes exact through the mount\n{}", m.log());
    // One whole-object stream (and at most the few short requests sent before the server's
    // first answer told it ignores Range), not one download per piece.
    let streams = gets(&py.log()) - before;
    assert!(streams <= 4, "{streams} GETs for one file:\n{}", py.log());
    drop(m);

    let out = sb.annexfs(&r, &["get", "--cache-dir", sb.path("cache2").to_str().unwrap(), "f.bin"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "annexfs get: {stderr}");
    assert!(stderr.contains(&format!("f.bin: {SIZE} bytes, verified")), "{stderr}");
    let out = sb.annexfs(&r, &["get", "--into-annex", "--cache-dir", sb.path("cache2").to_str().unwrap(), "f.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(r.join("f.bin")).unwrap() == data, "bytes exact through annexfs get");
}

/// The bytes each source identity sent, from `annexfs status --json`.
fn source_bytes(sb: &Sandbox, mp: &Path) -> Vec<(String, u64)> {
    let out = sb.annexfs(sb.dir.path(), &["status", "--json", mp.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    v["mounts"][0]["sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s["identity"].as_str().unwrap_or("").to_string(), s["bytes"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn beside_a_range_mirror_both_serve_and_the_bytes_are_exact() {
    if !common::require("python3", pyhttp::available())
        || !common::require("nginx", Path::new("/usr/sbin/nginx").exists())
    {
        return;
    }
    let sb = Sandbox::new();
    let data = pseudo_random(72, SIZE);
    let www = www(&sb, &data);
    // The whole-object server is slow, so the mirror has pieces left to take ahead of it.
    let py = PyHttp::slow(&www, &sb.path("py.log"), 2_000_000);
    let nginx = Nginx::start(&www, &sb.path("nginx"), 1, Some(3_000_000));
    let fast = PyHttp::plain(&www, &sb.path("add.log"));
    let r = repo_from_url(&sb, &fast.url("f.bin"));
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    sb.annex(&r, &["rmurl", "f.bin", &fast.url("f.bin")]);
    sb.annex(&r, &["registerurl", &key, &py.url("f.bin")]);
    sb.annex(&r, &["registerurl", &key, &nginx.url(0, "f.bin")]);

    let m = mount(&sb, &r, "mnt", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    // Kept open while the sources' figures are read: they are those of the keys open now.
    let mut f = std::fs::File::open(m.p("f.bin")).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut got).unwrap_or_else(|e| panic!("read: {e}\n{}", m.log()));
    assert!(got == data, "bytes exact\n{}", m.log());
    let sources = source_bytes(&sb, &m.mp);
    let sent =
        |port: u16| sources.iter().filter(|(id, _)| id.contains(&format!(":{port}"))).map(|(_, b)| b).sum::<u64>();
    assert!(sent(py.port) > 0, "the whole-object server served: {sources:?}\n{}", m.log());
    assert!(sent(nginx.ports[0]) > 0, "the range mirror served: {sources:?}\n{}", m.log());
    assert!(nginx.access_log(0).contains("\" 206 "), "the mirror was asked for ranges");
}
