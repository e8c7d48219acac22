//! Verified streaming through real mounts: four nginx mirrors of a file, one of which serves
//! a corrupted copy of the right size. A strict mount and a stream mount with a published
//! manifest both read the file byte-exact and ban the corrupting mirror; manifests published
//! by one clone travel to another with `git annex sync`.

mod common;

use common::mnt::mount;
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random};
use std::path::PathBuf;
use std::time::Duration;

const SIZE: usize = 24 << 20;
/// The mirror serving bad bytes.
const LIAR: usize = 1;

struct World {
    sb: Sandbox,
    r: PathBuf,
    nginx: Nginx,
    data: Vec<u8>,
    key: String,
}

/// A repository whose `f.bin` is on four web mirrors only (mirror [`LIAR`] corrupted).
fn world() -> World {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "origin");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let data = pseudo_random(77, SIZE);
    sb.write(&r.join("f.bin"), &data);
    sb.annex(&r, &["add", "-q", "f.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let www = sb.path("www");
    sb.write(&www.join("good/f.bin"), &data);
    let mut bad = data.clone();
    for i in (1000..bad.len()).step_by(50_000) {
        bad[i] ^= 0x5a;
    }
    sb.write(&www.join("bad/f.bin"), &bad);
    // 20 MB/s per connection: the transfer takes long enough for every mirror to be used.
    let nginx = Nginx::start(&www, &sb.path("nginx"), 4, Some(20 << 20));
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    for m in 0..4 {
        let path = if m == LIAR { "bad/f.bin" } else { "good/f.bin" };
        sb.annex(&r, &["registerurl", &key, &nginx.url(m, path)]);
    }
    World { sb, r, nginx, data, key }
}

fn liar_identity(w: &World) -> String {
    format!("web http://127.0.0.1:{}", w.nginx.ports[LIAR])
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    common::wait_until(Duration::from_secs(60), what, f);
}

fn manifest_recorded(sb: &Sandbox, repo: &std::path::Path, key: &str) -> String {
    sb.annex(repo, &["metadata", "--key", key, "--get", "annexfs-manifest"]).trim().to_string()
}

#[test]
fn a_strict_mount_reads_exact_bytes_past_a_corrupting_mirror_and_bans_it() {
    let w = world();
    let clone = w.sb.path("c");
    w.sb.git(w.sb.dir.path(), &["clone", "-q", w.r.to_str().unwrap(), clone.to_str().unwrap()]);
    w.sb.annex(&clone, &["init", "-q", "reader"]);
    w.sb.git(&clone, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    // Only the web mirrors hold the content.
    w.sb.annex(&w.r, &["drop", "-q", "--force", "f.bin"]);
    w.sb.git(&clone, &["remote", "remove", "origin"]);
    let cache = w.sb.path("cache");
    let m = mount(&w.sb, &clone, "mnt", &["--verify", "strict", "--cache-dir", cache.to_str().unwrap()]);
    let got = std::fs::read(m.p("f.bin")).unwrap_or_else(|e| panic!("read: {e}\nlog: {}", m.log()));
    assert!(got == w.data, "strict mode serves the exact bytes");
    let log = m.log();
    assert!(log.contains(&format!("banning {}", liar_identity(&w))), "the liar is banned: {log}");
    for honest in (0..4).filter(|&i| i != LIAR) {
        let id = format!("web http://127.0.0.1:{} ", w.nginx.ports[honest]);
        assert!(!log.contains(&format!("against {id}")), "no strike against an honest mirror: {log}");
    }
    // `status` shows the ban.
    let out = w.sb.annexfs(&clone, &["status", "--json", m.mp.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let sources = v["mounts"][0]["sources"].as_array().unwrap();
    let liar = sources.iter().find(|s| s["identity"] == liar_identity(&w)).unwrap_or_else(|| panic!("{v}"));
    assert_eq!(liar["banned"], true, "{v}");
    assert!(liar["strikes"].as_u64().unwrap() >= 3, "{v}");
    // The key verified whole: its manifest is published in the clone, with git-annex.
    wait_for("the manifest to be published", || !manifest_recorded(&w.sb, &clone, &w.key).is_empty());
    let mkey = manifest_recorded(&w.sb, &clone, &w.key);
    w.sb.annex(&clone, &["fsck", "-q", "--key", &mkey]);
    let out = w.sb.annexfs(&clone, &["index", "f.bin"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already indexed"), "{out:?}");
}

#[test]
fn a_manifest_indexed_in_one_clone_guards_a_stream_mount_in_another() {
    let w = world();
    let c1 = w.sb.path("c1");
    let c2 = w.sb.path("c2");
    w.sb.git(w.sb.dir.path(), &["clone", "-q", w.r.to_str().unwrap(), c1.to_str().unwrap()]);
    w.sb.annex(&c1, &["init", "-q", "indexer"]);
    w.sb.annex(&c1, &["get", "-q", "--from", "origin", "f.bin"]);
    let out = w.sb.annexfs(&c1, &["index", "f.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("f.bin: indexed"), "{out:?}");
    // Nobody but the web mirrors keeps the content; c1 keeps the manifest object.
    w.sb.annex(&c1, &["drop", "-q", "--force", "f.bin"]);
    w.sb.annex(&w.r, &["drop", "-q", "--force", "f.bin"]);
    w.sb.git(w.sb.dir.path(), &["clone", "-q", w.r.to_str().unwrap(), c2.to_str().unwrap()]);
    w.sb.annex(&c2, &["init", "-q", "streamer"]);
    w.sb.git(&c2, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    w.sb.git(&c2, &["remote", "add", "c1", c1.to_str().unwrap()]);
    w.sb.annex(&c2, &["sync", "-q", "--no-content", "c1"]);
    assert!(!manifest_recorded(&w.sb, &c2, &w.key).is_empty(), "the manifest's key travelled with sync");

    let cache = w.sb.path("cache");
    let m = mount(&w.sb, &c2, "mnt", &["--verify", "stream", "--no-publish", "--cache-dir", cache.to_str().unwrap()]);
    // Read in small steps, as a player would: each piece is checked before it is served.
    let mut got = Vec::with_capacity(SIZE);
    {
        use std::io::Read;
        let mut f = std::fs::File::open(m.p("f.bin")).unwrap();
        let mut buf = vec![0u8; 128 << 10];
        loop {
            let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read: {e}\nlog: {}", m.log()));
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == w.data, "only correct bytes were served");
    let log = m.log();
    assert!(log.contains(&format!("banning {}", liar_identity(&w))), "the liar is banned: {log}");
    assert!(!log.contains("does not match its key"), "no whole-key mismatch: pieces were checked: {log}");
}
