//! Crashes: the daemon is killed with SIGKILL at random moments while it fetches, the mount is
//! cleared and made again, and every time every read must have been byte-exact and every piece
//! the cache's record claims must be on disk with the bytes its hash says.
//!
//! `ANNEXFS_CRASH_CYCLES` sets the number of cycles (default 8; the reliability report runs
//! 100). With `ANNEXFS_REPORT` set, a JSON line with the outcome is appended to that file.

mod common;

use annexfs::annex::Key;
use annexfs::pieces::PieceStore;
use common::mnt::mount;
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random};
use std::io::Read;
use std::time::{Duration, Instant};

const FILES: usize = 3;
const SIZE: usize = 6_000_000;

/// The daemon of the mount at `mp`.
fn daemon_pid(mp: &std::path::Path) -> Option<i32> {
    let out =
        std::process::Command::new("pgrep").arg("-f").arg(format!("annexfs mount .*{}", mp.display())).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()
}

/// Reads `path` until the end or an error; returns what arrived.
fn read_until_error(path: std::path::PathBuf) -> Vec<u8> {
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

#[test]
fn killing_the_daemon_at_random_moments_never_loses_or_corrupts_a_piece() {
    let cycles: usize = std::env::var("ANNEXFS_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
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
    // 2 MB/s per connection, two mirrors: a file takes about a second and a half.
    let nginx = Nginx::start(&www, &sb.path("nginx"), 2, Some(2_000_000));
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
    let (mut pieces_checked, mut partial_reads) = (0usize, 0usize);
    for cycle in 0..cycles {
        let f = (next() as usize) % FILES;
        let (name, data) = &files[f];
        let m = mount(&sb, &r, &format!("mnt{cycle}"), &["--cache-dir", c, "--no-publish"]);
        let p = m.p(name);
        let reader = std::thread::spawn(move || read_until_error(p));
        // Anywhere from at once to after the file would be complete.
        std::thread::sleep(Duration::from_millis(next() % 1800));
        let pid = daemon_pid(&m.mp).expect("the daemon is running");
        // SAFETY: sending a signal to a process of this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let got = reader.join().unwrap();
        assert!(got[..] == data[..got.len()], "cycle {cycle}: the bytes read before the kill are exact");
        if got.len() < data.len() {
            partial_reads += 1;
        }
        drop(m); // clears the dead mount
        // Every piece the record claims is on disk with the bytes its hash says.
        let store = PieceStore::open(&cache, 1 << 30).unwrap();
        let ck = store.open_key(&keys[f]).unwrap();
        let mut claimed = 0;
        for i in 0..ck.piece_count() {
            if ck.has(i) {
                let (a, b) = ck.piece_range(i);
                let mut buf = vec![0u8; (b - a) as usize];
                ck.read(a, &mut buf).unwrap_or_else(|e| panic!("cycle {cycle}: claimed piece {i} is not on disk: {e}"));
                assert!(buf == data[a as usize..b as usize], "cycle {cycle}: piece {i}");
                claimed += 1;
            }
        }
        pieces_checked += claimed;
        // A complete key is dropped from the cache, so that later cycles fetch again.
        if claimed == ck.piece_count() {
            drop(ck);
            store.remove_key(&keys[f]).unwrap();
        }
    }
    // A last mount reads every file whole from what survived.
    let m = mount(&sb, &r, "mnt-final", &["--cache-dir", c]);
    for (name, data) in &files {
        assert!(std::fs::read(m.p(name)).unwrap() == *data, "{name}");
    }
    assert!(partial_reads > 0 || cycles < 4, "some kills came in the middle of a read");
    common::report(serde_json::json!({
        "kind": "crash",
        "cycles": cycles,
        "passed": cycles,
        "interrupted_reads": partial_reads,
        "pieces_checked": pieces_checked,
        "secs": started.elapsed().as_secs_f64(),
    }));
}
