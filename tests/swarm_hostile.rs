//! Hostile peers beside an honest swarm on loopback. A serves a file; B (no content) knows A;
//! C mounts knowing B and an impostor H, which answers `hello` as a node of the repository,
//! lists hundreds of made-up addresses as its peers, and announces an honest node E's
//! address as its own. While C reads the file, a client floods C's `/v1/announce` with 5 000
//! made-up addresses. C's bytes are exact, C reads from A, its peer table stays bounded and
//! lists (and passes on) only nodes that answered, the flood is mostly refused by the rate
//! limit, and E, announced under H's name, is refused.

mod common;

use common::swarm::{announce, get, hello, mount_debug, serve};
use common::{Sandbox, free_port, pseudo_random};
use std::sync::Arc;
use std::time::Duration;

const SIZE: usize = 16 << 20;

/// The impostor: answers `hello` as `uuid` of the repository, lists `junk` as its peers, holds
/// nothing.
fn impostor(rt: &tokio::runtime::Runtime, hello: String, junk: Arc<Vec<String>>) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (hello, junk) = (hello.clone(), junk.clone());
            tokio::spawn(async move {
                let Some(text) = common::hostile::read_head(&mut sock).await else { return };
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, body) = if path == "/v1/hello" {
                    ("200 OK", hello)
                } else if path == "/v1/peers" {
                    ("200 OK", serde_json::json!({ "peers": *junk }).to_string())
                } else if path == "/v1/announce" {
                    ("202 Accepted", String::new())
                } else {
                    ("404 Not Found", String::new())
                };
                let out =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(out.as_bytes()).await;
            });
        }
    });
    port
}

#[test]
fn flooding_and_impostors_leave_the_swarm_reading_exact_bytes_with_a_bounded_table() {
    let sb = Sandbox::new();
    let o = sb.init_repo("o", "origin");
    let data = pseudo_random(21, SIZE);
    sb.write(&o.join("f.bin"), &data);
    sb.annex(&o, &["add", "-q", "f.bin"]);
    sb.git(&o, &["commit", "-q", "-m", "f"]);
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
    let (b, c, e) = (clone("b"), clone("c"), clone("e"));
    for r in [&b, &c, &e] {
        sb.git(r, &["remote", "remove", "origin"]);
    }
    let e_uuid = sb.git(&e, &["config", "annex.uuid"]).trim().to_string();

    let (pa, pb, pc, pe) = (free_port(), free_port(), free_port(), free_port());
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let _node_a = serve(&sb, &a, pa, &[]);
    let node_b = serve(&sb, &b, pb, &["--peer", &url(pa)]);
    let node_e = serve(&sb, &e, pe, &[]);
    // Hundreds of made-up addresses (nothing of this repository answers there).
    let junk: Vec<String> = (1..=400).map(|i| format!("http://127.0.0.1:{i}/junk{i}")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ph = impostor(&rt, hello("impostor", &origin_uuid), Arc::new(junk.clone()));

    let mc = mount_debug(
        &sb,
        &c,
        "mc",
        &[
            "--peer",
            &url(pb),
            "--peer",
            &url(ph),
            "--serve",
            &format!("127.0.0.1:{pc}"),
            "--no-publish",
            "--cache-dir",
            sb.path("cc").to_str().unwrap(),
        ],
    );
    // H announces E's address as its own: C asks E, which answers as itself, not as H.
    assert_eq!(announce(pc, &url(pe), Some("impostor")), 202);
    // The flood, beside C's read.
    let flood = std::thread::spawn(move || {
        let mut codes = std::collections::BTreeMap::<u16, usize>::new();
        for i in 0..5000 {
            let made_up = format!("http://127.0.0.1:{}/flood{i}", 20000 + i % 20000);
            *codes.entry(announce(pc, &made_up, None)).or_default() += 1;
        }
        codes
    });
    let got = std::fs::read(mc.p("f.bin")).unwrap_or_else(|e| panic!("C reads: {e}\n{}", mc.log()));
    assert!(got == data, "C's bytes are exact");
    let codes = flood.join().unwrap();
    let refused = codes.get(&429).copied().unwrap_or(0);
    assert!(refused >= 4500, "the flood is rate-limited: {codes:?}");
    assert_eq!(refused + codes.get(&202).copied().unwrap_or(0), 5000, "{codes:?}");

    let log_c = mc.log();
    assert!(log_c.contains(&format!("learnt peer {}", url(pa))), "C learnt A from B: {log_c}");
    // Checked at once, or in the next round when the checks are all busy.
    let refusal = format!("{} was announced as impostor but answers as {e_uuid}", url(pe));
    common::wait_until(Duration::from_secs(30), "E, announced under H's name, to be refused", || {
        mc.log().contains(&refusal)
    });
    let is_junk = |u: &str| u.contains("/junk") || u.contains("/flood");
    assert!(!log_c.lines().any(|l| l.contains("learnt peer") && is_junk(l)), "no made-up address became a peer");
    // C's table: bounded, and its peers are the nodes that answered.
    let st = common::mount_status(&mc.mp);
    let t = &st["peer_table"];
    let total: u64 = ["live", "candidates", "dropped"].iter().map(|k| t[k].as_u64().unwrap()).sum();
    assert!(total <= t["capacity"].as_u64().unwrap() && t["capacity"].as_u64().unwrap() <= 256, "{st}");
    let peers: Vec<String> = st["peers"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    for want in [url(pa), url(pb)] {
        assert!(peers.contains(&want), "{want} is C's peer: {peers:?}");
    }
    assert!(peers.iter().all(|p| [url(pa), url(pb), url(ph)].contains(p)), "only answering nodes: {peers:?}");
    // What C passes on is the same.
    let (st, _, body) = get(pc, "/v1/peers", None);
    assert_eq!(st, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(!listed["peers"].as_array().unwrap().iter().any(|p| is_junk(p.as_str().unwrap())), "{listed}");
    // A made-up address's hello check never reached E or the honest servers' logs as a peer.
    assert!(!node_b.log().lines().any(|l| l.contains("learnt peer") && is_junk(l)));
    drop(node_e);
    // The flooder's addresses are forgotten once checked: the table is mostly empty of them.
    common::wait_until(Duration::from_secs(30), "C's candidates to be checked", || {
        common::mount_status(&mc.mp)["peer_table"]["candidates"].as_u64().unwrap_or(u64::MAX) <= 64
    });
}
