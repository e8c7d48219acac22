//! Per-node limits of the signed rules, enforced by the keepers. Rules `copies = 2` over two
//! keeping nodes want every piece on both; they limit node A to `bwlimit = "1MiB"` (bytes a
//! second fetched for keeping) and node B to `keep = "2MiB"`:
//! - A keeps every piece, byte-exact, but never faster than its limit allows: at every look,
//!   what it fetched is at most the rate times the time since it started plus the two rounds
//!   it may save up, so the whole set takes it at least (total - burst) / rate;
//! - B keeps no more than 2 MiB (the rest shows as beyond what it may keep), and A sees B's
//!   weight in placement bounded to 2 MiB.

mod common;

use common::swarm::{get, key_path, serve};
use common::{Sandbox, free_port, pseudo_random, require};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [(2 << 20) + 4321, 2 << 20, (1 << 20) + 77];
const RATE: u64 = 1 << 20;
const KEEP_B: u64 = 2 << 20;
/// Rounds of its rate a node may save up (the keeper's burst).
const BURST_ROUNDS: u64 = 2;

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

#[test]
fn keepers_obey_the_rules_bwlimit_and_keep_per_node() {
    if !require("ssh-keygen", common::have("ssh-keygen", "-V") || Path::new("/usr/bin/ssh-keygen").exists()) {
        return;
    }
    let sb = Sandbox::new();
    let o = sb.init_repo("o", "origin");
    let alice = keygen(&sb, "alice");
    std::fs::write(sb.path("allowed_signers"), format!("alice@annexfs.invalid namespaces=\"git\" {alice}\n")).unwrap();
    trust_alice(&sb, &o);
    let names: Vec<String> = (0..SIZES.len()).map(|i| format!("f{i}.bin")).collect();
    for (i, name) in names.iter().enumerate() {
        sb.write(&o.join(name), &pseudo_random(300 + i as u64, SIZES[i]));
    }
    let mut add = vec!["add", "-q"];
    add.extend(names.iter().map(String::as_str));
    sb.annex(&o, &add);
    sb.git(&o, &["commit", "-q", "-m", "files"]);
    let mut index = vec!["index"];
    index.extend(names.iter().map(String::as_str));
    let out = sb.annexfs(&o, &index);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (sb.annex(&o, &["lookupkey", n]).trim().to_string(), std::fs::read(o.join(n)).unwrap()))
        .collect();
    let total: u64 = SIZES.iter().map(|&s| s as u64).sum();
    let clone = |name: &str| -> (PathBuf, String) {
        let p = sb.path(name);
        sb.git(sb.dir.path(), &["clone", "-q", o.to_str().unwrap(), p.to_str().unwrap()]);
        sb.annex(&p, &["init", "-q", name]);
        sb.git(&p, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
        sb.git(&p, &["remote", "remove", "origin"]);
        trust_alice(&sb, &p);
        let uuid = sb.git(&p, &["config", "annex.uuid"]).trim().to_string();
        (p, uuid)
    };
    let (a, uuid_a) = clone("a");
    let (b, uuid_b) = clone("b");
    let rules = format!(
        "[swarm]\ncopies = 2\n[swarm.node.\"{uuid_a}\"]\nbwlimit = \"1MiB\"\n[swarm.node.\"{uuid_b}\"]\nkeep = \"2MiB\"\n"
    );
    sb.write(&o.join(".annexfs.toml"), rules.as_bytes());
    sb.git(&o, &["add", ".annexfs.toml"]);
    let key = sb.path("alice.pub");
    sb.git(&o, &["-c", &format!("user.signingkey={}", key.display()), "commit", "-q", "-S", "-m", "rules"]);
    for r in [&a, &b] {
        sb.git(r, &["pull", "-q", "--ff-only", o.to_str().unwrap(), "HEAD"]);
    }

    let (po, pa, pb) = (free_port(), free_port(), free_port());
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let _node_o = serve(&sb, &o, po, &["--per-peer", "64"]);
    let node = |r: &Path, port: u16, other: u16| {
        let (uo, ux) = (url(po), url(other));
        serve(
            &sb,
            r,
            port,
            &[
                "--keep",
                "64M",
                "--keep-grace",
                "2",
                "--keep-every",
                "1",
                "--per-peer",
                "64",
                "--peer",
                &uo,
                "--peer",
                &ux,
            ],
        )
    };
    let started = Instant::now();
    let node_a = node(&a, pa, pb);
    let node_b = node(&b, pb, pa);

    // A: never ahead of its rate (plus what it may save up), until it holds everything.
    let burst = BURST_ROUNDS * RATE;
    let mut done_after = None;
    let mut looks = 0;
    while started.elapsed() < Duration::from_secs(90) {
        let r = report(pa);
        let t = started.elapsed().as_secs_f64();
        // What it says it fetched, and what its have-maps show it holds.
        let fetched = n(&r, "fetched_bytes");
        let held: u64 = files.iter().map(|(k, _)| have(pa, k).iter().map(|(x, y)| y - x).sum::<u64>()).sum();
        #[allow(clippy::cast_precision_loss)]
        let allowed = RATE as f64 * t + burst as f64;
        assert!(
            fetched.max(held) as f64 <= allowed,
            "A fetched {fetched} bytes (holds {held}) in {t:.1}s under a 1 MiB/s limit\n{}",
            node_a.log()
        );
        looks += 1;
        if r["rules"] == true && n(&r, "assigned_bytes") == total && n(&r, "held_bytes") == total {
            done_after = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let Some(done_after) = done_after else {
        panic!("A kept everything: {}\n{}", report(pa), node_a.log());
    };
    assert_eq!(report(pa)["bwlimit"].as_u64(), Some(RATE), "A reports its limit");
    #[allow(clippy::cast_precision_loss)]
    let least = (total - burst) as f64 / RATE as f64;
    assert!(done_after >= least, "A kept {total} bytes in {done_after:.1}s: faster than 1 MiB/s ({looks} looks)");
    // Byte-exact, served from A's pinned pieces.
    for (k, data) in &files {
        let (st, _, body) = get(pa, &key_path(k), Some(&format!("bytes=0-{}", data.len() - 1)));
        assert!(st == 206 && body == *data, "A serves {k} byte-exact: status {st}, {} bytes", body.len());
    }

    // B: at most its keep, the rest beyond what it may keep; A weighs B by that bound.
    common::wait_until(Duration::from_secs(30), "B to keep what it may", || {
        let r = report(pb);
        r["rules"] == true && n(&r, "assigned_bytes") > 0 && n(&r, "held_bytes") == n(&r, "assigned_bytes")
    });
    let r = report(pb);
    assert!(n(&r, "assigned_bytes") <= KEEP_B && n(&r, "over_offered") > 0, "B within keep = 2MiB: {r}");
    let held: u64 = files.iter().map(|(k, _)| have(pb, k).iter().map(|(x, y)| y - x).sum::<u64>()).sum();
    assert!(held <= KEEP_B, "B holds {held} bytes, keep = 2MiB\n{}", node_b.log());
    let ra = report(pa);
    let b_in_a = ra["nodes"].as_array().and_then(|v| v.iter().find(|x| x["uuid"] == uuid_b.as_str()).cloned());
    assert_eq!(b_in_a.map(|x| n(&x, "offered")), Some(KEEP_B), "A weighs B by its keep: {ra}");
}
