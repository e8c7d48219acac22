//! Keeping copies. An origin node serves five files whose manifests the repository publishes;
//! the rules (`copies = 2`, signed by Alice, a key the nodes' allowed signers list) want all
//! of them. Five nodes offer space (`serve --keep`) with a short grace period; a sixth node
//! offers space too but lies (it claims every piece and sends wrong bytes). Then:
//! - every piece reaches 2 copies among the five honest nodes, each holding only its share
//!   (the bytes held are exactly twice the files'), and every node banned the liar;
//! - with the origin and one node stopped, a reader whose only sources are the other four
//!   reads every file byte-exact;
//! - within a bounded time every piece is back at 2 copies among the four, moving no more
//!   than 1.1 times what the stopped node held;
//! - when the stopped node returns, the others release their surplus (their assignment is
//!   back to what it was) and every piece still has 2 copies.

mod common;

use common::swarm::{Served, get, key_path, mount_debug, serve};
use common::{Sandbox, free_port, pseudo_random, require};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SIZES: [usize; 5] = [6 << 20, (5 << 20) + 12_345, 4 << 20, (3 << 20) + 1, 3 << 20];
const NODES: usize = 5;

fn keygen(sb: &Sandbox, name: &str) -> String {
    let out = sb
        .cmd("ssh-keygen", sb.dir.path())
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(sb.path(name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(sb.path(&format!("{name}.pub"))).unwrap().trim().to_string()
}

fn trust_alice(sb: &Sandbox, r: &Path) {
    sb.git(r, &["config", "gpg.format", "ssh"]);
    sb.git(r, &["config", "gpg.ssh.allowedSignersFile", sb.path("allowed_signers").to_str().unwrap()]);
}

/// A node that answers as a node of the repository offering space and claims every piece of
/// every key; it sends wrong bytes (`wrong`) or answers 404 (it never fetched them).
fn liar(rt: &tokio::runtime::Runtime, origin_uuid: &str, wrong: bool) -> u16 {
    use tokio::io::AsyncWriteExt;
    let uuid = if wrong { "00000000-0000-4000-8000-00000000beef" } else { "00000000-0000-4000-8000-00000000fa11" };
    let hello = format!("{{\"annexfs\":1,\"uuid\":\"{uuid}\",\"known\":[\"{origin_uuid}\"],\"offered\":67108864}}");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let hello = hello.clone();
            tokio::spawn(async move {
                let Some(text) = common::hostile::read_head(&mut sock).await else { return };
                let path = text.split_whitespace().nth(1).unwrap_or("").replace("%2D", "-");
                let size: usize = path
                    .split("-s")
                    .nth(1)
                    .and_then(|r| r.split("--").next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let reply = |status: &str, extra: &str, body: &[u8]| {
                    let mut v = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                        body.len()
                    )
                    .into_bytes();
                    v.extend_from_slice(body);
                    v
                };
                let range =
                    text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string));
                let out = if path.ends_with("/have") {
                    reply("200 OK", "", format!("{{\"size\":{size},\"ranges\":[[0,{size}]]}}").as_bytes())
                } else if path.starts_with("/v1/hello") {
                    reply("200 OK", "", hello.as_bytes())
                } else if path.starts_with("/v1/peers") {
                    reply("200 OK", "", b"{\"peers\":[]}")
                } else if path.starts_with("/v1/announce") {
                    reply("202 Accepted", "", b"")
                } else if let Some(r) = range.filter(|_| wrong) {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    reply(
                        "206 Partial Content",
                        &format!("Content-Range: bytes {a}-{b}/{size}\r\n"),
                        &vec![0x21; b + 1 - a],
                    )
                } else {
                    reply("404 Not Found", "", b"")
                };
                let _ = sock.write_all(&out).await;
            });
        }
    });
    port
}

struct Swarm {
    sb: Sandbox,
    files: Vec<(String, String, Vec<u8>)>,
    repos: Vec<PathBuf>,
    ports: Vec<u16>,
    urls: Vec<String>,
    url_o: String,
    url_liars: [String; 2],
}

impl Swarm {
    fn start_node(&self, i: usize) -> Served {
        let mut args: Vec<String> = [
            "--keep",
            "64M",
            "--keep-grace",
            "6",
            "--keep-every",
            "1",
            // Every node connects from 127.0.0.1: one address for the whole swarm.
            "--per-peer",
            "64",
            "--peer",
            &self.url_o,
            "--peer",
            &self.url_liars[0],
            "--peer",
            &self.url_liars[1],
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for u in &self.urls {
            args.extend(["--peer".to_string(), u.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serve(&self.sb, &self.repos[i], self.ports[i], &args)
    }

    /// Per file, per piece: how many of the nodes `up` hold it.
    fn copies(&self, up: &[usize]) -> Vec<Vec<usize>> {
        self.files
            .iter()
            .map(|(_, key, data)| {
                let size = data.len() as u64;
                let ps = annexfs::pieces::piece_size_for(size);
                let maps: Vec<Vec<(u64, u64)>> = up.iter().map(|&i| have(self.ports[i], key)).collect();
                (0..size.div_ceil(ps))
                    .map(|p| {
                        let (a, b) = (p * ps, ((p + 1) * ps).min(size));
                        maps.iter().filter(|m| m.iter().any(|&(x, y)| x <= a && b <= y)).count()
                    })
                    .collect()
            })
            .collect()
    }

    fn held(&self, i: usize) -> u64 {
        self.files.iter().map(|(_, k, _)| have(self.ports[i], k).iter().map(|(a, b)| b - a).sum::<u64>()).sum()
    }

    fn all_at(&self, up: &[usize], n: usize) -> bool {
        self.copies(up).iter().all(|f| f.iter().all(|&c| c >= n))
    }
}

fn have(port: u16, key: &str) -> Vec<(u64, u64)> {
    let (st, _, body) = get(port, &format!("{}/have", key_path(key)), None);
    if st != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["ranges"]
        .as_array()
        .map(|a| a.iter().map(|r| (r[0].as_u64().unwrap_or(0), r[1].as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

fn report(port: u16) -> serde_json::Value {
    let (st, _, body) = get(port, "/v1/keep", None);
    if st != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&body).unwrap_or_default()
}

fn n(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

#[test]
fn five_nodes_keep_two_copies_repair_a_loss_and_release_the_surplus() {
    if !require("ssh-keygen", have_keygen()) {
        return;
    }
    let sb = Sandbox::new();
    let o = sb.init_repo("o", "origin");
    let alice = keygen(&sb, "alice");
    std::fs::write(sb.path("allowed_signers"), format!("alice@annexfs.invalid namespaces=\"git\" {alice}\n")).unwrap();
    trust_alice(&sb, &o);
    let mut names = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let name = format!("f{i}.bin");
        sb.write(&o.join(&name), &pseudo_random(100 + i as u64, size));
        names.push(name);
    }
    let mut add = vec!["add", "-q"];
    add.extend(names.iter().map(String::as_str));
    sb.annex(&o, &add);
    sb.git(&o, &["commit", "-q", "-m", "files"]);
    let mut index = vec!["index"];
    index.extend(names.iter().map(String::as_str));
    let out = sb.annexfs(&o, &index);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<(String, String, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let k = sb.annex(&o, &["lookupkey", n]).trim().to_string();
            (n.clone(), k, std::fs::read(o.join(n)).unwrap())
        })
        .collect();
    let origin_uuid = sb.git(&o, &["config", "annex.uuid"]).trim().to_string();
    let clone = |name: &str| {
        let p = sb.path(name);
        sb.git(sb.dir.path(), &["clone", "-q", o.to_str().unwrap(), p.to_str().unwrap()]);
        sb.annex(&p, &["init", "-q", name]);
        sb.git(&p, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
        sb.git(&p, &["remote", "remove", "origin"]);
        trust_alice(&sb, &p);
        p
    };
    let repos: Vec<PathBuf> = (0..NODES).map(|i| clone(&format!("k{i}"))).collect();
    let reader = clone("reader");
    // The rules come once every node knows the others (a node with a partial view of the
    // swarm would fetch others' shares): signed by Alice, pulled by each node.
    sb.write(&o.join(".annexfs.toml"), b"[swarm]\ncopies = 2\n");
    sb.git(&o, &["add", ".annexfs.toml"]);
    let key = sb.path("alice.pub");
    sb.git(&o, &["-c", &format!("user.signingkey={}", key.display()), "commit", "-q", "-S", "-m", "rules"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let liar_ports = [liar(&rt, &origin_uuid, true), liar(&rt, &origin_uuid, false)];
    let po = free_port();
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let s = Swarm {
        sb,
        files,
        repos,
        ports,
        urls,
        url_o: format!("http://127.0.0.1:{po}"),
        url_liars: liar_ports.map(|p| format!("http://127.0.0.1:{p}")),
    };
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("swarm_keep: {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let node_o = serve(&s.sb, &o, po, &["--per-peer", "64"]);
    let mut nodes: Vec<Option<Served>> = (0..NODES).map(|i| Some(s.start_node(i))).collect();
    if !wait(Duration::from_secs(60), || {
        s.ports.iter().all(|&p| {
            let r = report(p);
            r["rules"] == false
                && r["nodes"].as_array().is_some_and(|a| a.iter().filter(|n| n["offered"] != 0).count() == NODES + 2)
        })
    }) {
        panic!("the nodes know each other: {:?}", s.ports.iter().map(|&p| report(p)).collect::<Vec<_>>());
    }
    phase("the nodes know each other");
    for r in &s.repos {
        s.sb.git(r, &["pull", "-q", "--ff-only", o.to_str().unwrap(), "HEAD"]);
    }

    let logs = |nodes: &[Option<Served>]| -> String {
        nodes
            .iter()
            .flatten()
            .map(|n| {
                let log = n.log();
                let keep: Vec<&str> =
                    log.lines().filter(|l| !l.contains("DEBUG") || l.contains("swarm keep")).collect();
                keep[keep.len().saturating_sub(30)..].join("\n") + "\n----\n"
            })
            .collect()
    };
    let all: Vec<usize> = (0..NODES).collect();
    let total: u64 = SIZES.iter().map(|&n| n as u64).sum();

    // Every piece at 2 copies among the honest nodes, each holding only its share.
    let diag = |nodes: &[Option<Served>]| -> String {
        let reports: Vec<String> = s.ports.iter().map(|&p| report(p).to_string()).collect();
        format!("copies {:?}\nreports {reports:#?}\n{}", s.copies(&all), logs(nodes))
    };
    if !wait(Duration::from_secs(120), || s.all_at(&all, 2)) {
        panic!("every piece at 2 copies: {}", diag(&nodes));
    }
    phase("every piece at 2 copies");
    // The keepers asked for their shares as background work (served after readers).
    assert!(node_o.log().contains(" (background)"), "no keeper asked the origin for background work");
    common::wait_until(Duration::from_secs(30), "every node to have kept its whole share", || {
        all.iter().all(|&i| {
            let r = report(s.ports[i]);
            n(&r, "assigned_pieces") > 0 && n(&r, "held_pieces") == n(&r, "assigned_pieces")
        })
    });
    let before: Vec<serde_json::Value> = all.iter().map(|&i| report(s.ports[i])).collect();
    let assigned: Vec<u64> = before.iter().map(|r| n(r, "assigned_bytes")).collect();
    assert_eq!(assigned.iter().sum::<u64>(), 2 * total, "placement gives every piece 2 nodes: {assigned:?}");
    // What each holds is its share (plus, at most, the few pieces fetched while the liar was
    // still placed: released since).
    let held: Vec<u64> = all.iter().map(|&i| s.held(i)).collect();
    assert!(
        held.iter().sum::<u64>() as f64 <= 2.5 * total as f64,
        "each node keeps about its share: {held:?}\n{}",
        logs(&nodes)
    );
    for r in &before {
        assert!(r["rules"] == true && n(r, "copies") == 2 && n(r, "wanted_keys") == SIZES.len() as u64, "{r}");
        for url in &s.url_liars {
            let liar = r["nodes"].as_array().unwrap().iter().find(|x| x["url"] == url.as_str());
            assert!(liar.is_some_and(|l| l["banned"] == true && l["placed"] == false), "{url} is banned: {r}");
        }
    }

    phase("every node kept its share");
    // The origin and node 2 stop; a reader with only the other four reads every file.
    drop(node_o);
    let gone = 2;
    let gone_held = assigned[gone];
    nodes[gone] = None;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != gone).collect();
    let mut peer_args: Vec<String> = Vec::new();
    for &i in &rest {
        peer_args.extend(["--peer".to_string(), s.urls[i].clone()]);
    }
    // Strict: nothing is served before the key is verified whole (the liar is still listed
    // by the nodes' peer exchange; each node bans it for itself).
    peer_args.extend(
        ["--verify", "strict", "--no-publish", "--cache-dir", s.sb.path("reader-cache").to_str().unwrap()]
            .map(String::from),
    );
    let peer_args: Vec<&str> = peer_args.iter().map(String::as_str).collect();
    {
        let m = mount_debug(&s.sb, &reader, "mr", &peer_args);
        for (name, _, data) in &s.files {
            let got = std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("read {name}: {e}\n{}", m.log()));
            let first = got.iter().zip(data.iter()).position(|(a, b)| a != b);
            assert!(
                got == *data,
                "{name} byte-exact with a node and the origin gone: {} bytes for {}, first wrong at {first:?}\n{}",
                got.len(),
                data.len(),
                m.log().lines().filter(|l| !l.contains("DEBUG")).collect::<Vec<_>>().join("\n")
            );
        }
    }

    phase("the reader read every file");
    // Repair: every piece back at 2 copies among the four, moving at most about what node 2
    // held.
    let fetched_before: u64 = rest.iter().map(|&i| n(&before[i], "fetched_bytes")).sum();
    common::wait_until(Duration::from_secs(90), "every piece back at 2 copies", || s.all_at(&rest, 2));
    phase("every piece back at 2 copies");
    let mut after = Vec::new();
    if !wait(Duration::from_secs(30), || {
        after = rest.iter().map(|&i| report(s.ports[i])).collect();
        after.iter().map(|r| n(r, "assigned_bytes")).sum::<u64>() == 2 * total
            && after.iter().all(|r| n(r, "held_pieces") == n(r, "assigned_pieces"))
    }) {
        panic!("the four took over node 2's share: {after:?}");
    }
    // Counted once the keepers saw the pieces land (the round that found its share whole),
    // beside what the have-maps show newly held.
    let moved = after.iter().map(|r| n(r, "fetched_bytes")).sum::<u64>() - fetched_before;
    let newly_held = rest.iter().map(|&i| s.held(i)).sum::<u64>() - rest.iter().map(|&i| held[i]).sum::<u64>();
    assert!(
        // (Less when surplus copies from the rounds the liars were still placed cover some.)
        moved > 0 && newly_held <= moved && moved as f64 <= 1.1 * gone_held as f64,
        "repair moved {moved} bytes ({newly_held} newly held) for {gone_held} lost\n{}",
        logs(&nodes)
    );
    phase("the four took over");
    // Node 2 returns (its cache kept): the others release what they took over.
    nodes[gone] = Some(s.start_node(gone));
    common::wait_until(Duration::from_secs(60), "the assignment as before node 2 left", || {
        all.iter().all(|&i| n(&report(s.ports[i]), "assigned_pieces") == n(&before[i], "assigned_pieces"))
    });
    let released: u64 = rest.iter().map(|&i| n(&report(s.ports[i]), "released_pieces")).sum();
    assert!(released > 0, "surplus released\n{}", logs(&nodes));
    phase("surplus released");
    assert!(s.all_at(&all, 2), "2 copies still");
    drop(rt);
}

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    false
}

fn have_keygen() -> bool {
    common::have("ssh-keygen", "-V") || Path::new("/usr/bin/ssh-keygen").exists()
}
