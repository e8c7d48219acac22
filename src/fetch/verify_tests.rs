//! A whole-key verification that cannot conclude wakes the strict readers waiting for it
//! with an error at once, instead of leaving them to their deadline.

use super::super::{FetchConfig, Fetcher, KeyFetch, ReadError, VerifyError, VerifyMode};
use super::*;
use crate::pieces::PieceStore;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

struct Rig {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    _fetcher: Fetcher,
    kf: Arc<KeyFetch>,
}

/// A strict fetch of a key with no source, every piece already in the cache but not verified.
fn rig() -> Rig {
    use sha2::Digest;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
    let cfg = FetchConfig { verify: VerifyMode::Strict, read_deadline: DEADLINE, ..Default::default() };
    let fetcher = Fetcher::new(store, rt.handle().clone(), cfg);
    let data: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
    let hex: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    let key = crate::annex::Key::parse_str(&format!("SHA256E-s{}--{hex}", data.len())).unwrap();
    let kf = fetcher.key(&key, Vec::new(), None).unwrap();
    {
        let mut st = lock(&kf.state);
        for i in st.pieces.indices() {
            let (a, b) = kf.piece_range(i);
            let piece = &data[usize::try_from(a).unwrap()..usize::try_from(b).unwrap()];
            kf.cache.write_at(a, piece).unwrap();
            kf.cache.commit_piece(i.0, piece).unwrap();
            st.pieces.set(i, Piece::Present);
        }
    }
    Rig { dir, rt, _fetcher: fetcher, kf }
}

/// Starts a read and lets it block on the verification.
fn blocked_read(r: &Rig) -> tokio::task::JoinHandle<Result<Vec<u8>, ReadError>> {
    let kf = r.kf.clone();
    let reader = r.rt.spawn(async move { kf.read(0, 1000).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!reader.is_finished(), "the strict reader waits for the verification");
    reader
}

fn failed_fast(r: &Rig, reader: tokio::task::JoinHandle<Result<Vec<u8>, ReadError>>) -> Arc<VerifyError> {
    let t = Instant::now();
    let res = r.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), reader).await });
    let res = res.expect("the reader is woken long before its deadline").unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    match res {
        Err(ReadError::Verify { source, .. }) => source,
        other => panic!("expected a verification error, got {other:?}"),
    }
}

#[test]
fn a_panicked_verification_fails_waiting_readers_at_once() {
    let r = rig();
    // A verification in progress (the real one is not started) ...
    lock(&r.kf.state).verify.started = true;
    let reader = blocked_read(&r);
    // ... that panics.
    r.kf.watch_verify(r.rt.spawn(async { panic!("hashing blew up") }));
    let e = failed_fast(&r, reader);
    assert!(matches!(*e, VerifyError::Task(_)), "{e}");
    assert!(!r.kf.is_verified());
}

#[test]
fn a_failed_persist_fails_waiting_readers_at_once() {
    let r = rig();
    // The data file removed under the open key: its record can no longer be persisted.
    let mut removed = 0;
    for entry in walk(r.dir.path()) {
        if entry.extension().is_some_and(|e| e == "data") {
            std::fs::remove_file(&entry).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 1);
    let kf = r.kf.clone();
    let reader = r.rt.spawn(async move { kf.read(0, 1000).await });
    let e = failed_fast(&r, reader);
    assert!(matches!(*e, VerifyError::Persist(_)), "{e}");
    assert!(!r.kf.is_verified());
}

#[test]
fn a_verification_that_runs_serves_the_reader() {
    let r = rig();
    let kf = r.kf.clone();
    let got = r.rt.block_on(async move { kf.read(0, 1000).await }).unwrap();
    assert_eq!(got.len(), 1000);
    assert!(r.kf.is_verified());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
