//! Partial content in the swarm, for a key whose backend cannot check a manifest (SHA256E) and
//! with no manifest in the repository. A serves the file whole; B knows A and reads the first
//! half through its mount; C knows only B. In `stream` mode, B and C take the manifest A
//! vouches for (A holds the key verified), C checks B's pieces against it, fetches B's half
//! from B, and the key confirms the manifest at the end. In `strict` mode C takes no peer's
//! manifest: it is served only once the whole key is verified, still byte-exact. A node D
//! whose first peer hands out a wrong manifest bans that peer (the key proves it wrong)
//! without striking the honest peer whose pieces failed it, and reads exact bytes.

mod common;

use common::mnt::Mount;
use common::swarm::{get, hello, key_path, mount_debug, serve};
use common::{Sandbox, free_port, pseudo_random};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const SIZE: usize = 64 << 20;

struct Swarm {
    sb: Sandbox,
    data: Vec<u8>,
    key: String,
    origin_uuid: String,
    c: PathBuf,
    d: PathBuf,
    url_a: String,
    url_b: String,
    pb: u16,
    _a: common::swarm::Served,
    mb: Mount,
}

/// A serving the key whole, B holding its first half and serving it.
fn swarm() -> Swarm {
    let sb = Sandbox::new();
    let o = sb.init_repo("o", "origin");
    let data = pseudo_random(17, SIZE);
    sb.write(&o.join("f.bin"), &data);
    sb.annex(&o, &["add", "-q", "f.bin"]);
    sb.git(&o, &["commit", "-q", "-m", "f"]);
    let key = sb.annex(&o, &["lookupkey", "f.bin"]).trim().to_string();
    assert!(key.starts_with("SHA256E-"), "{key}");
    let origin_uuid = sb.git(&o, &["config", "annex.uuid"]).trim().to_string();
    let clone = |name: &str| {
        let p = sb.path(name);
        sb.git(sb.dir.path(), &["clone", "-q", o.to_str().unwrap(), p.to_str().unwrap()]);
        sb.annex(&p, &["init", "-q", name]);
        sb.git(&p, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
        p
    };
    let a = clone("a");
    sb.annex(&a, &["get", "-q", "f.bin"]);
    let (b, c, d) = (clone("b"), clone("c"), clone("d"));
    for r in [&b, &c, &d] {
        sb.git(r, &["remote", "remove", "origin"]);
    }
    let (pa, pb) = (free_port(), free_port());
    let node_a = serve(&sb, &a, pa, &["--bwlimit", "40MiB"]);
    let url_a = format!("http://127.0.0.1:{pa}");
    let url_b = format!("http://127.0.0.1:{pb}");
    let mb = mount_debug(
        &sb,
        &b,
        "mb",
        &[
            "--peer",
            &url_a,
            "--serve",
            &format!("127.0.0.1:{pb}"),
            "--no-publish",
            "--cache-size",
            "48M",
            "--cache-dir",
            sb.path("cb").to_str().unwrap(),
        ],
    );
    {
        let mut f = std::fs::File::open(mb.p("f.bin")).unwrap();
        let mut half = vec![0u8; SIZE / 2];
        f.read_exact(&mut half).unwrap_or_else(|e| panic!("B reads: {e}\n{}", mb.log()));
        assert!(half == data[..SIZE / 2], "B's first half");
    }
    assert!(mb.log().contains(&format!("the manifest peer {url_a} vouches for")), "B took A's manifest: {}", mb.log());
    common::wait_until(Duration::from_secs(60), "B's have-map to show the half it read", || {
        held(&have(pb, &key)) >= (SIZE / 2) as u64
    });
    Swarm { sb, data, key, origin_uuid, c, d, url_a, url_b, pb, _a: node_a, mb }
}

fn have(port: u16, key: &str) -> Vec<(u64, u64)> {
    let (st, _, body) = get(port, &format!("{}/have", key_path(key)), None);
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["ranges"].as_array().unwrap().iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap())).collect()
}

fn held(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(a, b)| b - a).sum()
}

/// Byte ranges `a-b` of the "serving" debug lines of a log.
fn served_ranges(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| l.split("swarm: serving ").nth(1))
        .filter_map(|rest| rest.split(" bytes ").nth(1))
        .filter_map(|r| {
            let (a, b) = r.trim().split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

fn read_through(s: &Swarm, verify: &str) -> Mount {
    let before = served_ranges(&s.mb.log()).len();
    let mc = mount_debug(
        &s.sb,
        &s.c,
        "mc",
        &["--peer", &s.url_b, "--verify", verify, "--no-publish", "--cache-dir", s.sb.path("cc").to_str().unwrap()],
    );
    let got = std::fs::read(mc.p("f.bin")).unwrap_or_else(|e| panic!("C reads: {e}\n{}", mc.log()));
    assert!(got == s.data, "C's bytes are exact ({verify})");
    // Every range B served lies in what B holds, and B never held the whole key.
    let b_ranges = have(s.pb, &s.key);
    assert!(held(&b_ranges) < SIZE as u64, "B never held it all: {b_ranges:?}");
    let served = served_ranges(&s.mb.log());
    for (x, y) in &served[before..] {
        assert!(b_ranges.iter().any(|(p, q)| p <= x && y <= q), "B served {x}-{y}, not held: {b_ranges:?}");
    }
    if verify == "stream" {
        assert!(served.len() > before, "B served C from its half: {}\n{}", s.mb.log(), mc.log());
    }
    mc
}

#[test]
fn in_stream_mode_a_reader_takes_a_vouched_manifest_and_fetches_a_partial_holders_pieces() {
    let s = swarm();
    let mc = read_through(&s, "stream");
    let log = mc.log();
    assert!(log.contains(&format!("learnt peer {}", s.url_a)), "C learnt A from B: {log}");
    assert!(log.contains("vouches for"), "C checked pieces against a peer's manifest: {log}");
    // The whole key is checked once the last piece is in, just after the read.
    common::wait_until(Duration::from_secs(60), "the key to confirm the vouched manifest", || {
        mc.log().contains("is confirmed by the key")
    });
    assert!(!mc.log().contains("banning"), "nobody banned: {}", mc.log());

    // D's first peer L hands out a wrong manifest (and holds nothing); A is honest.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let k = annexfs::annex::Key::parse_str(&s.key).unwrap();
    let mut wrong = s.data.clone();
    wrong[SIZE / 3] ^= 0x40;
    let lie = common::manifest_of(&k, &wrong).to_bytes();
    let pl = manifest_liar(&rt, hello("liar", &s.origin_uuid), Arc::new(lie), SIZE, &s.url_a);
    let url_l = format!("http://127.0.0.1:{pl}");
    let md = mount_debug(
        &s.sb,
        &s.d,
        "md",
        &["--peer", &url_l, "--peer", &s.url_a, "--no-publish", "--cache-dir", s.sb.path("cd").to_str().unwrap()],
    );
    let got = std::fs::read(md.p("f.bin")).unwrap_or_else(|e| panic!("D reads: {e}\n{}", md.log()));
    assert!(got == s.data, "D's bytes are exact");
    let log = md.log();
    assert!(log.contains(&format!("the manifest peer {url_l} vouches for")), "D took L's manifest first: {log}");
    assert!(log.contains("the manifest is in doubt"), "A's piece put it in doubt: {log}");
    common::wait_until(Duration::from_secs(60), "L to be banned", || {
        md.log().contains(&format!("banning peer {url_l}"))
    });
    assert!(!md.log().contains(&format!("against peer {}", s.url_a)), "A is not struck: {}", md.log());
}

#[test]
fn in_strict_mode_a_reader_takes_no_peers_manifest_and_still_reads_exact_bytes() {
    let s = swarm();
    let mc = read_through(&s, "strict");
    let log = mc.log();
    assert!(!log.contains("vouches for"), "no peer's manifest in strict mode: {log}");
    assert!(log.contains("complete and verified"), "served once the whole key verified: {log}");
}

/// A node of the repository (by its hello) that serves `manifest` for every key, holds
/// nothing, and sorts before `before` (so that it is asked first).
fn manifest_liar(
    rt: &tokio::runtime::Runtime,
    hello: String,
    manifest: Arc<Vec<u8>>,
    size: usize,
    before: &str,
) -> u16 {
    use tokio::io::AsyncWriteExt;
    // Below the ports `common::free_port` gives and bench/run uses; bound at once.
    let listener = (10_000u16..17_000)
        .filter(|p| format!("http://127.0.0.1:{p}").as_str() < before)
        .find_map(|p| rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", p))).ok())
        .expect("a port that sorts first");
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (hello, manifest) = (hello.clone(), manifest.clone());
            tokio::spawn(async move {
                let Some(text) = common::hostile::read_head(&mut sock).await else { return };
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, body): (&str, Vec<u8>) = if path == "/v1/hello" {
                    ("200 OK", hello.into_bytes())
                } else if path == "/v1/peers" {
                    ("200 OK", b"{\"peers\":[]}".to_vec())
                } else if path.ends_with("/manifest") {
                    ("200 OK", manifest.to_vec())
                } else if path.ends_with("/have") {
                    ("200 OK", format!("{{\"size\":{size},\"ranges\":[]}}").into_bytes())
                } else {
                    ("404 Not Found", Vec::new())
                };
                let mut out =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                        .into_bytes();
                out.extend_from_slice(&body);
                let _ = sock.write_all(&out).await;
            });
        }
    });
    port
}
