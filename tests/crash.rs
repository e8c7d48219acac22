//! Crashes: the daemon is killed with SIGKILL while a fetch is provably in flight (its status
//! socket shows the key's bytes strictly between none and all of them), the dead mount is
//! cleared and the daemon started again. Every cycle: the bytes read before the kill are
//! exact; every piece the cache's record claims after the kill is on disk with the right
//! bytes; after the restart the key reads whole, byte-exact, from what survived plus what is
//! fetched again, and verifies.
//!
//! `ANNEXFS_CRASH_CYCLES` sets the number of cycles (default 3; the reliability report runs
//! 100). A kill that comes after the fetch has finished does not count: the cycle is tried
//! again, and fails after a few such misses. With `ANNEXFS_REPORT` set, a JSON line with what
//! was measured is appended to that file.

mod common;

use annexfs::annex::Key;
use annexfs::pieces::PieceStore;
use common::mnt::mount;
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random, wait_until};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const FILES: usize = 3;
const SIZE: usize = 6_000_000;
/// Kills in a row that may come after the fetch finished before a cycle fails.
const MISSES: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `path` until the end or an error; returns what arrived.
fn read_until_error(path: PathBuf) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(mut f) = std::fs::File::open(path) else { return out };
    let mut buf = vec![0u8; 256 << 10];
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The open file of `key` in the status of the mount `m`: (pid, present bytes, verified);
/// `None` while the status does not list it. The status socket may appear a moment after
/// `annexfs mount` returns, so a status that fails counts as not yet.
fn open_file(m: &common::mnt::Mount, key: &str) -> Option<(i32, u64, bool)> {
    let st = common::try_mount_status(&m.mp).ok()?;
    let pid = i32::try_from(st["pid"].as_u64()?).ok()?;
    let f = st["open_files"].as_array()?.iter().find(|f| f["key"] == key)?.clone();
    Some((pid, f["present_bytes"].as_u64()?, f["verified"].as_bool()?))
}

#[derive(Default)]
struct Measured {
    cut_mid_fetch: usize,
    missed: usize,
    bytes_at_kill: Vec<u64>,
    pieces_checked: usize,
    bytes_claimed_at_kill: u64,
    bytes_verified_after_restart: u64,
    keys_verified: usize,
    wrong_bytes: usize,
}

#[test]
fn killing_the_daemon_mid_fetch_never_loses_or_corrupts_a_piece() {
    let cycles: usize = std::env::var("ANNEXFS_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "main");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let www = sb.path("www");
    let mut files = Vec::new();
    for f in 0..FILES {
        let data = pseudo_random(100 + f as u64, SIZE);
        let name = format!("f{f}.bin");
        sb.write(&r.join(&name), &data);
        sb.write(&www.join(&name), &data);
        files.push((name, data));
    }
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);
    // 300 kB/s per connection, two mirrors: even over many connections a fetch lasts
    // seconds, long enough to be caught by polling the status.
    let nginx = Nginx::start(&www, &sb.path("nginx"), 2, Some(300_000));
    let mut keys = Vec::new();
    for (name, _) in &files {
        let key = sb.annex(&r, &["lookupkey", name]).trim().to_string();
        for i in 0..2 {
            sb.annex(&r, &["registerurl", &key, &nginx.url(i, name)]);
        }
        keys.push(Key::parse_str(&key).unwrap());
    }
    sb.annex(&r, &["drop", "-q", "--force", "."]);
    let cache = sb.path("cache");
    let c = cache.to_str().unwrap();
    let started = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut m = Measured::default();
    let mut attempt = 0;
    for cycle in 0..cycles {
        let f = (next() as usize) % FILES;
        let (name, data) = &files[f];
        let key = keys[f].to_string();
        let mut misses = 0;
        // Kill the daemon once its status shows the key fetched past a random point, not whole.
        let at_kill = loop {
            attempt += 1;
            // Anywhere in the first three quarters: pieces land whole, so a point near the end
            // would often be passed only by the last piece.
            let target = 1 + next() % (SIZE as u64 * 3 / 4);
            let dead = mount(&sb, &r, &format!("mnt{attempt}"), &["--cache-dir", c, "--no-publish"]);
            let p = dead.p(name);
            let reader = std::thread::spawn(move || read_until_error(p));
            let mut seen = None;
            wait_until(TIMEOUT, &format!("cycle {cycle}: the fetch of {name} to pass {target} bytes"), || {
                seen = open_file(&dead, &key);
                reader.is_finished() || seen.is_some_and(|(_, present, _)| present >= target)
            });
            let cut = seen.filter(|&(_, present, _)| present > 0 && present < SIZE as u64);
            if let Some((pid, _, _)) = cut {
                // SAFETY: sending a signal to the daemon this test started.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill the daemon");
            }
            let got = reader.join().unwrap();
            let wrong = common::wrong_bytes(&got, &data[..got.len().min(SIZE)]);
            m.wrong_bytes += wrong;
            assert!(wrong == 0 && got.len() <= SIZE, "cycle {cycle}: the bytes read before the kill are exact");
            assert!(cut.is_some() || got.len() == SIZE, "cycle {cycle}: the read failed with no kill:\n{}", dead.log());
            drop(dead); // clears the dead mount
            // A read that got every byte was not cut, whatever the status said a moment before.
            if let (Some((_, present, _)), true) = (cut, got.len() < SIZE) {
                break present;
            }
            // The fetch finished before the kill: not a crash mid-fetch. Start over from nothing.
            misses += 1;
            m.missed += 1;
            assert!(misses < MISSES, "cycle {cycle}: {MISSES} fetches finished before the kill could cut them");
            let store = PieceStore::open(&cache, 1 << 30).unwrap();
            store.remove_key(&keys[f]).unwrap();
        };
        m.cut_mid_fetch += 1;
        m.bytes_at_kill.push(at_kill);
        // Every piece the record claims is on disk with the bytes its hash says.
        {
            let store = PieceStore::open(&cache, 1 << 30).unwrap();
            let ck = store.open_key(&keys[f]).unwrap();
            for i in 0..ck.piece_count() {
                if ck.has(i) {
                    let (a, b) = ck.piece_range(i);
                    let mut buf = vec![0u8; (b - a) as usize];
                    ck.read(a, &mut buf)
                        .unwrap_or_else(|e| panic!("cycle {cycle}: claimed piece {i} is not on disk: {e}"));
                    assert!(buf == data[a as usize..b as usize], "cycle {cycle}: piece {i}");
                    m.pieces_checked += 1;
                    m.bytes_claimed_at_kill += b - a;
                }
            }
        }
        // Restart: the key reads whole and exact, and verifies.
        {
            let alive = mount(&sb, &r, &format!("mnt{attempt}-restart"), &["--cache-dir", c, "--no-publish"]);
            let mut fh = std::fs::File::open(alive.p(name)).unwrap();
            let mut got = Vec::new();
            fh.read_to_end(&mut got)
                .unwrap_or_else(|e| panic!("cycle {cycle}: read after restart: {e}\n{}", alive.log()));
            let wrong = common::wrong_bytes(&got, data);
            m.wrong_bytes += wrong;
            assert!(wrong == 0 && got.len() == SIZE, "cycle {cycle}: the read after the restart is exact");
            m.bytes_verified_after_restart += got.len() as u64;
            wait_until(TIMEOUT, &format!("cycle {cycle}: {name} to verify after the restart"), || {
                open_file(&alive, &key).is_some_and(|(_, _, verified)| verified)
            });
            m.keys_verified += 1;
            drop(fh);
        }
        // The key is dropped from the cache, so that later cycles fetch again.
        let store = PieceStore::open(&cache, 1 << 30).unwrap();
        store.remove_key(&keys[f]).unwrap();
    }
    assert_eq!(m.cut_mid_fetch, cycles, "every cycle killed the daemon mid-fetch");
    assert_eq!(m.wrong_bytes, 0);
    let (lo, hi) = (m.bytes_at_kill.iter().min().copied(), m.bytes_at_kill.iter().max().copied());
    common::report(serde_json::json!({
        "kind": "crash",
        "size": SIZE,
        "cut_mid_fetch": m.cut_mid_fetch,
        "missed": m.missed,
        "bytes_at_kill_min": lo.unwrap_or(0),
        "bytes_at_kill_max": hi.unwrap_or(0),
        "bytes_at_kill_total": m.bytes_at_kill.iter().sum::<u64>(),
        "pieces_checked": m.pieces_checked,
        "bytes_claimed_at_kill": m.bytes_claimed_at_kill,
        "bytes_verified_after_restart": m.bytes_verified_after_restart,
        "keys_verified": m.keys_verified,
        "wrong_bytes": m.wrong_bytes,
        "secs": started.elapsed().as_secs_f64(),
    }));
}
