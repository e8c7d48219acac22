//! Verified streaming without FUSE: sources that send wrong bytes of the right size, piece
//! manifests, strict mode, blame and bans. Every read is compared with the content itself.

mod common;

use annexfs::annex::Key;
use annexfs::fetch::{FetchConfig, Fetcher, OnVerified, ReadError, VerifyMode};
use annexfs::manifest::Manifest;
use annexfs::pieces::PieceStore;
use annexfs::source::remote::{Faults, MemorySource, RangeSource};
use common::{manifest_of, sha256_key};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn content(seed: u64, len: usize) -> Arc<Vec<u8>> {
    Arc::new(common::pseudo_random(seed, len))
}

fn blake3_key(data: &[u8]) -> Key {
    Key::parse_str(&format!("BLAKE3_256E-s{}--{}.bin", data.len(), blake3::hash(data).to_hex())).unwrap()
}

struct Rig {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    fetcher: Fetcher,
    published: Arc<Mutex<Vec<Manifest>>>,
}

fn rig(mode: VerifyMode) -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
    let published = Arc::new(Mutex::new(Vec::new()));
    let p = published.clone();
    let cfg = FetchConfig {
        stall_timeout: Duration::from_millis(500),
        read_deadline: Duration::from_secs(20),
        verify: mode,
        on_verified: Some(OnVerified(Arc::new(move |m: &Manifest| p.lock().unwrap().push(m.clone())))),
        limits: None,
    };
    let fetcher = Fetcher::new(store, rt.handle().clone(), cfg);
    Rig { rt, _dir: dir, fetcher, published }
}

/// Four mirrors, one of which flips a byte in everything it sends.
fn mirrors(data: &Arc<Vec<u8>>) -> Vec<Arc<dyn RangeSource>> {
    let mut v: Vec<Arc<dyn RangeSource>> = Vec::new();
    for (name, corrupt) in [("good1", false), ("liar", true), ("good2", false), ("good3", false)] {
        let f = Faults { corrupt, bytes_per_sec: Some(16 << 20), ..Faults::default() };
        v.push(Arc::new(MemorySource::new(name, data.clone(), f)));
    }
    v
}

fn read_all(r: &Rig, kf: &Arc<annexfs::fetch::KeyFetch>, data: &[u8], step: usize) {
    let mut off = 0;
    while off < data.len() {
        let got = r.rt.block_on(kf.read(off as u64, step as u64)).unwrap();
        assert!(!got.is_empty());
        assert!(got[..] == data[off..off + got.len()], "bytes at {off}");
        off += got.len();
    }
}

fn liar_banned(kf: &annexfs::fetch::KeyFetch) {
    let reports = kf.source_reports();
    let liar = reports.iter().find(|r| r.name == "liar").unwrap();
    assert!(liar.banned, "the liar is banned: {reports:?}");
    for r in reports.iter().filter(|r| r.name != "liar") {
        assert!(!r.banned && r.strikes == 0, "honest sources keep a clean record: {r:?}");
    }
}

#[test]
fn strict_mode_without_a_manifest_serves_only_the_verified_key_and_bans_the_liar() {
    let r = rig(VerifyMode::Strict);
    let data = content(1, 6_000_000);
    let key = sha256_key(&data);
    let kf = r.fetcher.key(&key, mirrors(&data), None).unwrap();
    // Every read, the first included, is served only once the whole key is verified.
    read_all(&r, &kf, &data, 1 << 20);
    assert!(kf.is_complete());
    assert!(r.rt.block_on(kf.wait_verified(Duration::from_secs(10))));
    liar_banned(&kf);
    // The key verified whole, its manifest was made and handed to the publisher.
    let published = r.published.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0], manifest_of(&key, &data));
    assert_eq!(annexfs::manifest::cached::load(r.fetcher.store(), &key).unwrap(), published[0]);
}

#[test]
fn a_manifest_checks_every_piece_before_it_is_served_in_stream_mode() {
    let r = rig(VerifyMode::Stream);
    let data = content(2, 8_000_000);
    let key = sha256_key(&data);
    let kf = r.fetcher.key(&key, mirrors(&data), Some(manifest_of(&key, &data))).unwrap();
    // Small reads all over first: each piece is checked as it arrives.
    for off in [4_000_000usize, 100, 2_500_000, 1_000_000] {
        let got = r.rt.block_on(kf.read(off as u64, 70_000)).unwrap();
        assert!(got[..] == data[off..off + 70_000], "bytes at {off}");
    }
    read_all(&r, &kf, &data, 300_000);
    assert!(r.rt.block_on(kf.wait_verified(Duration::from_secs(10))));
    liar_banned(&kf);
    assert!(r.fetcher.stats.bad_pieces.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    // A manifest was known: nothing new to publish.
    assert!(r.published.lock().unwrap().is_empty());
}

#[test]
fn a_ban_lasts_for_every_key_of_the_fetcher() {
    let r = rig(VerifyMode::Stream);
    let data = content(3, 8_000_000);
    let key = sha256_key(&data);
    let kf = r.fetcher.key(&key, mirrors(&data), Some(manifest_of(&key, &data))).unwrap();
    read_all(&r, &kf, &data, 1 << 20);
    liar_banned(&kf);
    let other = content(4, 2_000_000);
    let okey = sha256_key(&other);
    let liar = Arc::new(MemorySource::new("liar", other.clone(), Faults::default()));
    let good = Arc::new(MemorySource::new("good1", other.clone(), Faults::default()));
    let kf2 = r.fetcher.key(&okey, vec![liar.clone(), good], None).unwrap();
    read_all(&r, &kf2, &other, 1 << 20);
    assert_eq!(liar.requests(), 0, "a banned source is asked for nothing");
}

#[test]
fn stream_mode_without_a_manifest_finds_the_liar_after_the_fact() {
    let r = rig(VerifyMode::Stream);
    let data = content(5, 4_000_000);
    let key = sha256_key(&data);
    let kf = r.fetcher.key(&key, mirrors(&data), None).unwrap();
    // Bytes are served as they arrive; the liar's may be among them (stream mode).
    let mut off = 0u64;
    while off < data.len() as u64 {
        off += r.rt.block_on(kf.read(off, 1 << 20)).unwrap().len() as u64;
    }
    assert!(r.rt.block_on(kf.wait_verified(Duration::from_secs(20))), "{:?}", kf.poisoned());
    liar_banned(&kf);
    // Once resolved, every byte is right.
    read_all(&r, &kf, &data, 1 << 20);
}

#[test]
fn with_two_sources_the_whole_key_check_decides() {
    let r = rig(VerifyMode::Strict);
    let data = content(6, 3_000_000);
    let key = sha256_key(&data);
    let liar = Arc::new(MemorySource::new("liar", data.clone(), Faults { corrupt: true, ..Faults::default() }));
    let good = Arc::new(MemorySource::new("good1", data.clone(), Faults::default()));
    let kf = r.fetcher.key(&key, vec![liar, good], None).unwrap();
    read_all(&r, &kf, &data, 1 << 20);
    let reports = kf.source_reports();
    let l = reports.iter().find(|x| x.name == "liar").unwrap();
    let g = reports.iter().find(|x| x.name == "good1").unwrap();
    assert!(l.strikes >= 1 && g.strikes == 0, "{reports:?}");
}

#[test]
fn when_every_source_lies_the_read_fails_naming_them() {
    let r = rig(VerifyMode::Stream);
    let data = content(7, 2_000_000);
    let key = sha256_key(&data);
    let sources: Vec<Arc<dyn RangeSource>> = (0..2)
        .map(|i| {
            let f = Faults { corrupt: true, ..Faults::default() };
            Arc::new(MemorySource::new(&format!("liar{i}"), data.clone(), f)) as Arc<dyn RangeSource>
        })
        .collect();
    let kf = r.fetcher.key(&key, sources, Some(manifest_of(&key, &data))).unwrap();
    let err = r.rt.block_on(kf.read(0, 1000)).unwrap_err();
    let msg = err.to_string();
    // NoSource, not Deadline: it fails without waiting out the deadline.
    assert!(matches!(err, ReadError::NoSource { .. }), "{msg}");
    assert!(msg.contains("liar0") && msg.contains("liar1"), "{msg}");
}

#[test]
fn strict_mode_refuses_what_it_cannot_verify() {
    let r = rig(VerifyMode::Strict);
    let data = content(8, 100_000);
    let key = Key::parse_str("WORM-s100000-m1--file.bin").unwrap();
    let good = Arc::new(MemorySource::new("good1", data.clone(), Faults::default()));
    let kf = r.fetcher.key(&key, vec![good.clone()], None).unwrap();
    let err = r.rt.block_on(kf.read(0, 10)).unwrap_err();
    assert!(matches!(err, ReadError::Strict { .. }), "{err}");
    // A request spawned before the refusal would show up a moment later.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(good.requests(), 0);
    // With a manifest (trusted by origin) the same key is served piece by piece.
    let key2 = Key::parse_str("WORM-s100000-m2--file.bin").unwrap();
    let kf2 = r.fetcher.key(&key2, vec![good], Some(manifest_of(&key2, &data))).unwrap();
    read_all(&r, &kf2, &data, 30_000);
}

#[test]
fn a_blake3_key_checks_a_manifest_from_anywhere() {
    let r = rig(VerifyMode::Strict);
    let data = content(9, 8_000_000);
    let key = blake3_key(&data);
    // The key's manifest made from other bytes: one piece differs.
    let mut other = data.to_vec();
    other[2 * annexfs::pieces::piece_size_for(data.len() as u64) as usize] ^= 1;
    let forged = manifest_of(&key, &other);
    let kf = r.fetcher.key(&key, mirrors(&data), Some(forged)).unwrap();
    assert!(!kf.has_manifest(), "a manifest that does not hash to the key is not used");
    kf.set_manifest(manifest_of(&key, &data));
    assert!(kf.has_manifest());
    read_all(&r, &kf, &data, 500_000);
    liar_banned(&kf);
}
