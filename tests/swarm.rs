//! The swarm on loopback: node A serves a key it holds whole (`annexfs serve`); B, which knows
//! A, reads the first half through its own mount and serves what it holds; C, which knows only
//! B (and a lying node D), reads the whole file: the bytes are exact, C learnt A from B, A and
//! B both served C, B served only pieces it held verified, and D is banned. Then the server's
//! edges: ranges, paths that try to escape, slow readers and idle connections.

mod common;

use common::free_port;
use common::mnt::Mount;
use common::swarm::{Served, get, http, key_path, mount_debug, serve, wait_port};
use common::{Sandbox, pseudo_random};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SIZE: usize = 64 << 20;

/// A node that claims every piece of every key and sends corrupted bytes; it answers `hello`
/// with `hello` (as a node of the repository: nothing keeps a liar from saying so).
fn lying_node(rt: &tokio::runtime::Runtime, data: std::sync::Arc<Vec<u8>>, hello: String) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (data, hello) = (data.clone(), hello.clone());
            tokio::spawn(async move {
                let Some(text) = common::hostile::read_head(&mut sock).await else { return };
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let size = path
                    .split("-s")
                    .nth(1)
                    .and_then(|r| r.split("--").next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(data.len());
                let reply = |status: &str, extra: &str, body: &[u8]| {
                    let mut v = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                        body.len()
                    )
                    .into_bytes();
                    v.extend_from_slice(body);
                    v
                };
                let out = if path.ends_with("/have") {
                    reply("200 OK", "", format!("{{\"size\":{size},\"ranges\":[[0,{size}]]}}").as_bytes())
                } else if path.starts_with("/v1/hello") {
                    reply("200 OK", "", hello.as_bytes())
                } else if path.starts_with("/v1/peers") {
                    reply("200 OK", "", b"{\"peers\":[]}")
                } else if path.starts_with("/v1/announce") {
                    reply("204 No Content", "", b"")
                } else if let Some(r) =
                    text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string))
                {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    let body: Vec<u8> = (a..=b).map(|i| data.get(i).copied().unwrap_or(0) ^ 0x21).collect();
                    reply("206 Partial Content", &format!("Content-Range: bytes {a}-{b}/{size}\r\n"), &body)
                } else {
                    reply("404 Not Found", "", b"")
                };
                let _ = sock.write_all(&out).await;
            });
        }
    });
    port
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

#[test]
fn three_nodes_and_a_liar_share_a_key_without_a_tracker() {
    let sb = Sandbox::new();
    let o = sb.init_repo("o", "origin");
    let data = pseudo_random(7, SIZE);
    sb.write(&o.join("f.bin"), &data);
    sb.annex(&o, &["add", "-q", "f.bin"]);
    sb.git(&o, &["commit", "-q", "-m", "f"]);
    let key = sb.annex(&o, &["lookupkey", "f.bin"]).trim().to_string();
    let clone = |name: &str| {
        let p = sb.path(name);
        sb.git(sb.dir.path(), &["clone", "-q", o.to_str().unwrap(), p.to_str().unwrap()]);
        sb.annex(&p, &["init", "-q", name]);
        sb.git(&p, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
        p
    };
    // A holds the key and publishes its manifest; then only A has the content.
    let a = clone("a");
    sb.annex(&a, &["get", "-q", "f.bin"]);
    let out = sb.annexfs(&a, &["index", "f.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sb.annex(&a, &["sync", "-q", "--no-content", "origin"]);
    sb.annex(&o, &["drop", "-q", "--force", "f.bin"]);
    let b = clone("b");
    let c = clone("c");
    for r in [&b, &c] {
        sb.git(r, &["remote", "remove", "origin"]);
    }

    let (pa, pb) = (free_port(), free_port());
    let node_a = serve(&sb, &a, pa, &["--bwlimit", "40MiB"]);
    let url_a = format!("http://127.0.0.1:{pa}");
    let url_b = format!("http://127.0.0.1:{pb}");
    // B knows A, serves, and reads the first half (its readahead, a quarter of its 48 MiB
    // cache, does not reach the end).
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
    // B's have-map shows what it read once the pieces are recorded.
    let held = |have: &serde_json::Value| -> u64 {
        have["ranges"].as_array().unwrap().iter().map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap()).sum()
    };
    let mut have = serde_json::Value::Null;
    common::wait_until(Duration::from_secs(60), "B's have-map to show the half it read", || {
        let (st, _, body) = get(pb, &format!("{}/have", key_path(&key)), None);
        assert_eq!(st, 200);
        have = serde_json::from_slice(&body).unwrap();
        held(&have) >= (SIZE / 2) as u64
    });
    assert!(held(&have) < SIZE as u64, "B holds about half: {have}");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let origin_uuid = sb.git(&o, &["config", "annex.uuid"]).trim().to_string();
    let pd = lying_node(&rt, std::sync::Arc::new(data.clone()), common::swarm::hello("liar", &origin_uuid));
    let url_d = format!("http://127.0.0.1:{pd}");
    let a_before = served_ranges(&node_a.log()).len();
    // C knows only B and D.
    let mc = mount_debug(
        &sb,
        &c,
        "mc",
        &["--peer", &url_b, "--peer", &url_d, "--no-publish", "--cache-dir", sb.path("cc").to_str().unwrap()],
    );
    let got = std::fs::read(mc.p("f.bin")).unwrap_or_else(|e| panic!("C reads: {e}\n{}", mc.log()));
    assert!(got == data, "C's bytes are exact");
    let log_c = mc.log();
    assert!(log_c.contains(&format!("learnt peer {url_a}")), "C learnt A from B: {log_c}");
    assert!(log_c.contains(&format!("banning peer {url_d}")), "the lying node is banned: {log_c}");
    // status shows the swarm: C's peers include A, B served bytes.
    let status = |m: &Mount| -> serde_json::Value {
        let out = sb.annexfs(sb.dir.path(), &["status", "--json", m.mp.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let sc = status(&mc);
    assert!(sc["mounts"][0]["peers"].as_array().unwrap().iter().any(|p| p == url_a.as_str()), "{sc}");
    let sbv = status(&mb);
    assert!(sbv["mounts"][0]["serving"]["bytes"].as_u64().unwrap() > 0, "{sbv}");
    let a_after = served_ranges(&node_a.log()).len();
    assert!(a_after > a_before, "A served C");
    // What B holds now (its holdings only grow while it reads ahead): every range it served
    // lies within it, and B never held the whole key.
    let (_, _, body) = get(pb, &format!("{}/have", key_path(&key)), None);
    let have: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let b_ranges: Vec<(u64, u64)> =
        have["ranges"].as_array().unwrap().iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap())).collect();
    assert!(b_ranges.iter().map(|(x, y)| y - x).sum::<u64>() < SIZE as u64, "B never held it all: {have}");
    let b_served = served_ranges(&mb.log());
    assert!(!b_served.is_empty(), "B served C: {}", mb.log());
    for (x, y) in &b_served {
        assert!(
            b_ranges.iter().any(|(p, q)| p <= x && y <= q),
            "B served {x}-{y}, which it did not hold: {b_ranges:?}"
        );
    }
}

#[test]
fn the_server_answers_edges_and_bounds_its_connections() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    let data = pseudo_random(3, 8 << 20);
    sb.write(&r.join("f.bin"), &data);
    sb.annex(&r, &["add", "-q", "f.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    let secret = sb.path("secret");
    std::fs::write(&secret, b"SECRET").unwrap();
    let port = free_port();
    let node =
        serve(&sb, &r, port, &["--idle-timeout", "2", "--max-connections", "8", "--per-peer", "8", "--register-urls"]);
    let kp = key_path(&key);
    let size = data.len();
    // Ranges.
    let (st, head, body) = get(port, &kp, Some("bytes=0-0"));
    assert_eq!((st, body.as_slice()), (206, &data[..1]), "{head}");
    assert!(head.contains(&format!("bytes 0-0/{size}")), "{head}");
    let (st, _, body) = get(port, &kp, Some(&format!("bytes={}-{}", size - 1, size - 1)));
    assert_eq!((st, body.as_slice()), (206, &data[size - 1..]));
    let (st, _, body) = get(port, &kp, Some("bytes=1000-200999"));
    assert_eq!((st, body.len()), (206, 200_000));
    assert!(body == data[1000..201_000]);
    assert_eq!(get(port, &kp, Some(&format!("bytes={size}-{}", size + 10))).0, 416, "beyond the end");
    assert_eq!(get(port, &kp, Some("bytes=0-1,4-5")).0, 416, "several ranges");
    assert_eq!(get(port, &kp, Some("bytes=abc")).0, 416, "malformed");
    let (st, head, _) = http(port, &format!("HEAD {kp} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    assert!(st == 200 && head.to_ascii_lowercase().contains(&format!("content-length: {size}")), "{head}");
    // Paths that try to get out, and keys that are not keys.
    for path in [
        "/v1/keys/..%2F..%2F..%2Fsecret".to_string(),
        "/v1/keys/../../secret".to_string(),
        "/v1/keys/SHA256E-s6--x%00y".to_string(),
        format!("/v1/keys/SHA256E-s6--{}", "a".repeat(3000)),
        "/v1/keys/not-a-key".to_string(),
        "/v1/keys".to_string(),
        "/etc/passwd".to_string(),
    ] {
        let (st, _, body) = get(port, &path, Some("bytes=0-5"));
        assert!(matches!(st, 400 | 404), "{path}: {st}");
        assert!(!body.windows(6).any(|w| w == b"SECRET"), "{path}");
    }
    // A client that asks for everything and reads nothing is cut off after the idle timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(format!("GET {kp} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    // Idle connections beyond the bound are closed at once.
    let idle: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    // Closed: the read ends (or is reset); still open: it would block.
    let closed = |s: &TcpStream| {
        s.set_nonblocking(true).unwrap();
        match (&*s).read(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    // The node logs each connection it closes for idleness (before closing it); one closed
    // and never logged was refused when it came, beyond the bound.
    let idle_closed = |log: &str, s: &TcpStream| log.contains(&format!("from {} idle", s.local_addr().unwrap()));
    common::wait_until(Duration::from_secs(60), "4 connections beyond the bound to be refused", || {
        let now_closed: Vec<&TcpStream> = idle.iter().filter(|s| closed(s)).collect();
        let log = node.log();
        now_closed.iter().filter(|s| !idle_closed(&log, s)).count() >= 4
    });
    // The slow reader stopped reading: once no byte moves for the idle timeout, it is cut.
    common::wait_until(Duration::from_secs(60), "the node to close the slow reader's connection as idle", || {
        idle_closed(&node.log(), &slow)
    });
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let t = Instant::now();
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the slow connection was never closed");
    }
    assert!(total < size, "the slow reader got {total} bytes before being cut off, not the whole key");
    // The server still serves.
    assert_eq!(get(port, &kp, Some("bytes=0-9")).0, 206);
    // --register-urls: plain git-annex in another clone downloads from the node as a web URL.
    common::wait_until(Duration::from_secs(60), "the node's URL to be registered", || {
        sb.annex(&r, &["whereis", "f.bin"]).contains(&format!("127.0.0.1:{port}"))
    });
    let r2 = sb.path("r2");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), r2.to_str().unwrap()]);
    sb.annex(&r2, &["init", "-q", "r2"]);
    sb.git(&r2, &["remote", "remove", "origin"]);
    sb.git(&r2, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    sb.annex(&r2, &["get", "-q", "f.bin"]);
    assert!(std::fs::read(r2.join("f.bin")).unwrap() == data, "git annex get from the node");
}

#[test]
fn with_a_token_every_request_needs_it() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    sb.write(&r.join("f.txt"), b"tokened\n");
    sb.annex(&r, &["add", "-q", "f.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let key = sb.annex(&r, &["lookupkey", "f.txt"]).trim().to_string();
    let port = free_port();
    let log = sb.path("tok.log");
    let child = sb
        .cmd(env!("CARGO_BIN_EXE_annexfs"), &r)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--cache-dir"])
        .arg(sb.path("tok-cache"))
        .env("ANNEXFS_SWARM_TOKEN", "s3cret")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let _node = Served(child, log);
    wait_port(port);
    let kp = key_path(&key);
    for auth in ["", "Authorization: Bearer wrong\r\n", "Authorization: Bearer s3cre\r\n"] {
        let (st, _, body) =
            http(port, &format!("GET {kp} HTTP/1.1\r\nHost: x\r\n{auth}Range: bytes=0-7\r\nConnection: close\r\n\r\n"));
        assert_eq!(st, 401, "{auth:?}");
        assert!(!body.starts_with(b"tokened"));
    }
    let (st, _, body) = http(
        port,
        &format!(
            "GET {kp} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nRange: bytes=0-7\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!((st, body.as_slice()), (206, &b"tokened\n"[..]));
}

#[test]
fn a_blake3_keys_manifest_comes_from_a_peer_and_is_checked_against_the_key() {
    let sb = Sandbox::new();
    let a = sb.init_repo("a", "a");
    let data = pseudo_random(11, 6 << 20);
    let key = format!("BLAKE3_256E-s{}--{}.bin", data.len(), blake3::hash(&data).to_hex());
    // The key made by hand (any git-annex accepts it with fromkey), its object put in place.
    sb.annex(&a, &["fromkey", "--force", &key, "f.bin"]);
    sb.git(&a, &["commit", "-q", "-m", "f"]);
    let hashdir = sb.annex(&a, &["examinekey", "--format=${hashdirmixed}", &key]);
    sb.write(&a.join(".git/annex/objects").join(hashdir.trim()).join(&key).join(&key), &data);
    let b = sb.path("b");
    sb.git(sb.dir.path(), &["clone", "-q", a.to_str().unwrap(), b.to_str().unwrap()]);
    sb.annex(&b, &["init", "-q", "b"]);
    sb.git(&b, &["remote", "remove", "origin"]);
    sb.git(&b, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let pa = free_port();
    let _node = serve(&sb, &a, pa, &[]);
    let cache = sb.path("cb");
    let m = mount_debug(
        &sb,
        &b,
        "mb",
        &["--peer", &format!("http://127.0.0.1:{pa}"), "--no-publish", "--cache-dir", cache.to_str().unwrap()],
    );
    let got = std::fs::read(m.p("f.bin")).unwrap_or_else(|e| panic!("{e}: {}", m.log()));
    assert!(got == data);
    assert!(m.log().contains("piece manifest from peer"), "the manifest came from the peer: {}", m.log());
    let store = annexfs::pieces::PieceStore::open(&cache, 1 << 30).unwrap();
    let k = annexfs::annex::Key::parse_str(&key).unwrap();
    let kept = annexfs::manifest::cached::load(&store, &k).expect("kept in the cache");
    assert_eq!(kept.root(), *blake3::hash(&data).as_bytes());
}
