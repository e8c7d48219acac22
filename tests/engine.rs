//! Engine tests of the fetcher and the piece cache, without FUSE: in-process sources that are
//! throttled, failing, cut short, stalled, dead or lying. Whatever the faults, the bytes a
//! reader gets equal the content (checked against the content itself, the reference model).

mod common;

use annexfs::fetch::{FetchConfig, Fetcher, ReadError};
use annexfs::pieces::PieceStore;
use annexfs::source::remote::{Faults, MemorySource, RangeSource};
use common::sha256_key;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn content(seed: u64, len: usize) -> Arc<Vec<u8>> {
    Arc::new(common::pseudo_random(seed, len))
}

fn fast_cfg() -> FetchConfig {
    FetchConfig {
        stall_timeout: Duration::from_millis(500),
        read_deadline: Duration::from_secs(20),
        ..Default::default()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    fetcher: Fetcher,
}

fn rig(rt: &tokio::runtime::Runtime) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PieceStore::open(dir.path(), 1 << 32).unwrap());
    Rig { fetcher: Fetcher::new(store, rt.handle().clone(), fast_cfg()), _dir: dir }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

fn src(name: &str, data: &Arc<Vec<u8>>, f: Faults) -> Arc<MemorySource> {
    Arc::new(MemorySource::new(name, data.clone(), f))
}

fn dyns(v: &[Arc<MemorySource>]) -> Vec<Arc<dyn RangeSource>> {
    v.iter().map(|s| s.clone() as Arc<dyn RangeSource>).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random reads, random faults: every byte returned equals the content.
    #[test]
    fn reads_equal_the_content_whatever_the_faults(
        len in 1usize..3_000_000,
        reads in proptest::collection::vec((0.0f64..1.0, 1usize..400_000), 1..12),
        fail_every in 0u64..4,
        cut_every in 0u64..4,
    ) {
        let rt = runtime();
        let r = rig(&rt);
        let data = content(len as u64, len);
        let key = sha256_key(&data);
        let sources = vec![
            src("flaky", &data, Faults { fail_every, cut_every, ..Faults::default() }),
            src("slow", &data, Faults { latency: Duration::from_millis(5), bytes_per_sec: Some(20 << 20), ..Faults::default() }),
            src("cut", &data, Faults { cut_every: 2, ..Faults::default() }),
        ];
        let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
        for (at, n) in reads {
            let off = ((len as f64) * at) as u64;
            let got = rt.block_on(kf.read(off, n as u64)).unwrap();
            let end = (off as usize + n).min(len);
            prop_assert_eq!(&got[..], &data[off as usize..end]);
        }
    }
}

#[test]
fn a_whole_read_uses_every_source_and_verifies_the_key() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(7, 24 << 20);
    let key = sha256_key(&data);
    let rate = Some(16 << 20);
    let sources: Vec<_> = (0..3)
        .map(|i| src(&format!("mirror{i}"), &data, Faults { bytes_per_sec: rate, ..Faults::default() }))
        .collect();
    let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
    let mut off = 0u64;
    let mut out = Vec::new();
    while off < data.len() as u64 {
        let got = rt.block_on(kf.read(off, 1 << 20)).unwrap();
        off += got.len() as u64;
        out.extend_from_slice(&got);
    }
    assert!(out == *data);
    // Throttled equally, the sources share the work (speed itself is for bench/run).
    for s in &sources {
        assert!(s.served() > (data.len() / 8) as u64, "{} served only {} bytes", s.name(), s.served());
    }
    let total: u64 = sources.iter().map(|s| s.served()).sum();
    assert!(total <= data.len() as u64 + (4 << 20), "little is fetched twice: {total} bytes for {}", data.len());
    assert!(rt.block_on(kf.wait_verified(Duration::from_secs(10))), "verified once complete");
}

#[test]
fn a_piece_is_never_fetched_twice_at_once_by_concurrent_readers() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(9, 8 << 20);
    let key = sha256_key(&data);
    let s = src("one", &data, Faults { bytes_per_sec: Some(64 << 20), ..Faults::default() });
    let kf = r.fetcher.key(&key, dyns(std::slice::from_ref(&s)), None).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let kf = kf.clone();
            rt.spawn(async move { kf.read(0, 8 << 20).await })
        })
        .collect();
    for h in handles {
        assert!(rt.block_on(h).unwrap().unwrap() == *data);
    }
    assert_eq!(s.served(), data.len() as u64, "each byte fetched once for eight readers");
}

#[test]
fn a_stalled_or_dead_source_does_not_fail_the_reader() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(11, 6 << 20);
    let key = sha256_key(&data);
    let sources = vec![
        src("stalled", &data, Faults { stall: true, ..Faults::default() }),
        src("dead", &data, Faults { dead: true, ..Faults::default() }),
        src("honest", &data, Faults { bytes_per_sec: Some(32 << 20), ..Faults::default() }),
    ];
    let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
    let start = Instant::now();
    let got = rt.block_on(kf.read(0, data.len() as u64)).unwrap();
    assert!(got == *data);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

#[test]
fn no_source_left_is_a_clear_error_naming_the_sources() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(13, 1 << 20);
    let key = sha256_key(&data);
    let sources = vec![
        src("deadA", &data, Faults { dead: true, ..Faults::default() }),
        src("deadB", &data, Faults { dead: true, ..Faults::default() }),
    ];
    let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
    let err = rt.block_on(kf.read(0, 100)).unwrap_err();
    let msg = err.to_string();
    // NoSource, not Deadline: it failed once no source was left, without waiting out the deadline.
    assert!(matches!(err, ReadError::NoSource { .. }), "{msg}");
    assert!(msg.contains("deadA") && msg.contains("deadB") && msg.contains("injected failure"), "{msg}");
}

#[test]
fn content_that_does_not_match_its_key_is_quarantined() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(15, 1 << 20);
    let key = sha256_key(&data);
    let lies = content(16, 1 << 20);
    let sources = vec![src("liar", &lies, Faults::default())];
    let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
    // Stream mode serves bytes as they arrive; the whole-key check then catches the lie.
    let _ = rt.block_on(kf.read(0, 1 << 20));
    assert!(!rt.block_on(kf.wait_verified(Duration::from_secs(10))));
    let err = rt.block_on(kf.read(0, 10)).unwrap_err();
    assert!(matches!(err, ReadError::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("liar"));
}

#[test]
fn pieces_survive_in_the_cache_for_the_next_fetcher() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let data = content(17, 3 << 20);
    let key = sha256_key(&data);
    {
        let store = Arc::new(PieceStore::open(dir.path(), 1 << 32).unwrap());
        let f = Fetcher::new(store, rt.handle().clone(), fast_cfg());
        let kf = f.key(&key, dyns(&[src("m", &data, Faults::default())]), None).unwrap();
        assert!(rt.block_on(kf.read(0, data.len() as u64)).unwrap() == *data);
        assert!(rt.block_on(kf.wait_verified(Duration::from_secs(10))));
    }
    let store = Arc::new(PieceStore::open(dir.path(), 1 << 32).unwrap());
    let f = Fetcher::new(store, rt.handle().clone(), fast_cfg());
    let none: Vec<Arc<dyn RangeSource>> = Vec::new();
    let kf = f.key(&key, none, None).unwrap();
    assert!(
        rt.block_on(kf.read(1000, 2 << 20)).unwrap() == data[1000..1000 + (2 << 20)],
        "served from the cache with no source"
    );
}

#[test]
fn a_key_larger_than_the_cache_streams_through_it() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // A 4 MiB cache and a 16 MiB key: pieces behind the reader make room for the ones ahead.
    let store = Arc::new(PieceStore::open(dir.path(), 4 << 20).unwrap());
    let f = Fetcher::new(store.clone(), rt.handle().clone(), fast_cfg());
    let data = content(19, 16 << 20);
    let key = sha256_key(&data);
    let kf = f.key(&key, dyns(&[src("m", &data, Faults::default())]), None).unwrap();
    let mut off = 0u64;
    while off < data.len() as u64 {
        let got = rt.block_on(kf.read(off, 256 << 10)).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        assert!(got[..] == data[off as usize..off as usize + got.len()], "bytes at {off}");
        off += got.len() as u64;
    }
    // Near: pieces still arriving are written as they come (stream mode) and counted when
    // they land, so a few pieces in flight may be on disk beyond the bound.
    assert!(store.used() <= (4 << 20) + (2 << 20), "the cache stays near its bound: {}", store.used());
    // Bytes read long ago were dropped and come back on demand, exact.
    assert!(rt.block_on(kf.read(0, 1 << 20)).unwrap() == data[..1 << 20]);
}

#[test]
fn a_small_read_is_served_before_its_whole_piece_arrives() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(21, 4 << 20);
    let key = sha256_key(&data);
    // 128 KiB/s for the whole source: a whole piece takes seconds, its first 16 KiB a tenth.
    let s = src("slow", &data, Faults { bytes_per_sec: Some(128 << 10), ..Faults::default() });
    let kf = r.fetcher.key(&key, dyns(std::slice::from_ref(&s)), None).unwrap();
    let got = rt.block_on(kf.read(1 << 20, 16 << 10)).unwrap();
    // The only source had sent less than a piece, all requests together, when the read
    // returned: the piece holding the read cannot have arrived whole.
    let served = s.served();
    let piece = annexfs::pieces::piece_size_for(data.len() as u64);
    assert!(got[..] == data[1 << 20..(1 << 20) + (16 << 10)]);
    assert!(served < piece, "the read waited for {served} bytes, a whole piece is {piece}");
}

/// Damage done to the cache between two processes.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipDataByte,
    TruncateData,
    FlipRecordByte,
    TruncateRecord,
}

#[test]
fn a_damaged_cache_is_detected_and_refetched_never_served() {
    for damage in [Damage::FlipDataByte, Damage::TruncateData, Damage::FlipRecordByte, Damage::TruncateRecord] {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let data = content(11, 3_000_000);
        let key = sha256_key(&data);
        {
            // A process of its own (a runtime shut down after), so that nothing of it can
            // still write the record once the damage is done.
            let rt1 = runtime();
            let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
            let f = Fetcher::new(store, rt1.handle().clone(), fast_cfg());
            let kf = f.key(&key, dyns(&[src("m", &data, Faults::default())]), None).unwrap();
            assert!(rt1.block_on(kf.read(0, 3_000_000)).unwrap() == *data);
            assert!(rt1.block_on(kf.wait_verified(Duration::from_secs(10))));
            drop((kf, f));
            rt1.shutdown_timeout(Duration::from_secs(10));
        }
        let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
        let (data_file, rec_file) = store.files_of(&key);
        match damage {
            Damage::FlipDataByte => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&data_file).unwrap();
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, 1_500_000).unwrap();
                f.write_all_at(&[b[0] ^ 1], 1_500_000).unwrap();
            }
            Damage::TruncateData => {
                std::fs::OpenOptions::new().write(true).open(&data_file).unwrap().set_len(1_000_000).unwrap();
            }
            Damage::FlipRecordByte => {
                let mut r = std::fs::read(&rec_file).unwrap();
                let at = r.len() / 2;
                r[at] ^= 0x80;
                std::fs::write(&rec_file, r).unwrap();
            }
            Damage::TruncateRecord => {
                let r = std::fs::read(&rec_file).unwrap();
                std::fs::write(&rec_file, &r[..r.len() / 3]).unwrap();
            }
        }
        let f = Fetcher::new(store, rt.handle().clone(), fast_cfg());
        let s = src("m", &data, Faults::default());
        let kf = f.key(&key, dyns(std::slice::from_ref(&s)), None).unwrap();
        // Reads all over, then the whole: exact every time, the damage fetched again.
        for (off, len) in [(1_400_000u64, 300_000u64), (0, 3_000_000)] {
            let got = rt.block_on(kf.read(off, len)).unwrap_or_else(|e| panic!("{damage:?}: {e}"));
            assert!(got[..] == data[off as usize..(off + len) as usize], "{damage:?}: bytes at {off}");
        }
        assert!(s.requests() > 0, "{damage:?}: the damaged part was fetched again");
    }
}

#[test]
fn per_source_limits_cap_connections_and_bandwidth() {
    use annexfs::annex::settings::Limits;
    use annexfs::fetch::limits::LimitsFn;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
    let mut cfg = fast_cfg();
    cfg.limits = Some(LimitsFn(Arc::new(|id: &str| {
        if id == "limited" { Limits { bwlimit: Some(4 << 20), maxconnections: Some(1) } } else { Limits::default() }
    })));
    let f = Fetcher::new(store, rt.handle().clone(), cfg);
    let data = content(23, 4 << 20);
    let key = sha256_key(&data);
    let s = src("limited", &data, Faults::default());
    let kf = f.key(&key, dyns(std::slice::from_ref(&s)), None).unwrap();
    let t = Instant::now();
    assert!(rt.block_on(kf.read(0, 4 << 20)).unwrap() == *data);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(s.peak_concurrency(), 1, "one request at a time");
    assert!(secs >= 0.85, "4 MiB at 4 MiB/s took only {secs:.2} s");
    // Without limits the same source is asked several times at once.
    let f2 = Fetcher::new(
        Arc::new(PieceStore::open(&dir.path().join("2"), 1 << 30).unwrap()),
        rt.handle().clone(),
        fast_cfg(),
    );
    // (Throttled, so that its streams last long enough to overlap.)
    let s2 = src("free", &data, Faults { bytes_per_sec: Some(32 << 20), ..Faults::default() });
    let kf2 = f2.key(&key, dyns(std::slice::from_ref(&s2)), None).unwrap();
    assert!(rt.block_on(kf2.read(0, 4 << 20)).unwrap() == *data);
    assert!(s2.peak_concurrency() > 1, "the control uses parallel requests");
}

/// A cold read at the back of a piece is also asked of a source directly: it returns before
/// the front of its piece could have arrived.
#[test]
fn a_cold_seek_does_not_wait_for_the_front_of_its_piece() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(31, 8 << 20);
    let key = sha256_key(&data);
    let piece = annexfs::pieces::piece_size_for(data.len() as u64);
    // 512 KiB/s for the whole source, all requests together.
    let s = src("slow", &data, Faults { bytes_per_sec: Some(512 << 10), ..Faults::default() });
    let kf = r.fetcher.key(&key, dyns(std::slice::from_ref(&s)), None).unwrap();
    let at = 20 * piece + piece - (16 << 10);
    let got = rt.block_on(kf.read(at, 16 << 10)).unwrap();
    let served = s.served();
    assert!(got[..] == data[at as usize..(at + (16 << 10)) as usize]);
    // The piece's own request sends its front first: without the direct read, the reader
    // would have waited for all of it.
    assert!(served < piece - (16 << 10), "the read waited for {served} bytes; the front of its piece is longer");
    assert_eq!(r.fetcher.stats.direct_reads.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The direct read was late (16 KiB at 512 KiB/s: 31 ms, more than the 20 ms it runs
    // alone), so the piece was asked too and lands in the cache: a later read of it gets the
    // same bytes.
    let again = rt.block_on(kf.read(20 * piece, piece)).unwrap();
    assert!(again[..] == data[(20 * piece) as usize..(21 * piece) as usize]);
}

/// A lone seek answered directly in time asks for no piece: fetched at once, a seek's pieces
/// held the links the next seeks needed. One answered late asks for its pieces too.
#[test]
fn a_seek_answered_directly_asks_for_no_piece_unless_late() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(35, 8 << 20);
    let key = sha256_key(&data);
    let sources = vec![src("a", &data, Faults::default()), src("b", &data, Faults::default())];
    let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
    let at = (5 << 20) + 1000;
    let got = rt.block_on(kf.read(at, 64 << 10)).unwrap();
    assert!(got[..] == data[at as usize..at as usize + (64 << 10)]);
    std::thread::sleep(Duration::from_millis(200));
    let served: u64 = sources.iter().map(|s| s.served()).sum();
    assert!(served <= 2 * (64 << 10), "only the direct copies were sent: {served} bytes");
    assert_eq!(r.fetcher.stats.direct_reads.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Each answer 50 ms late: the pieces are asked beside the direct read.
    let r = rig(&rt);
    let slow = src("late", &data, Faults { latency: Duration::from_millis(50), ..Faults::default() });
    let kf = r.fetcher.key(&key, dyns(std::slice::from_ref(&slow)), None).unwrap();
    let got = rt.block_on(kf.read(at, 64 << 10)).unwrap();
    assert!(got[..] == data[at as usize..at as usize + (64 << 10)]);
    assert!(slow.requests() >= 2, "the direct read and the piece: {} requests", slow.requests());
}

/// A seek into pieces that a long readahead request will deliver only after many others is
/// also read directly: it does not wait for the request to get there.
#[test]
fn a_seek_into_the_back_of_a_readahead_run_does_not_wait_for_the_run() {
    let rt = runtime();
    let r = rig(&rt);
    let len = 64usize << 20;
    let data = content(34, len);
    let key = sha256_key(&data);
    // 64 MiB/s for the source, all its requests together: once measured, readahead runs are
    // half a second long (over 8 MiB), two at a time.
    let s = src("m", &data, Faults { bytes_per_sec: Some(64 << 20), ..Faults::default() });
    let kf = r.fetcher.key(&key, dyns(std::slice::from_ref(&s)), None).unwrap();
    let mut at = 0u64;
    // Long enough a stream for the source to be measured (its first, short requests are
    // timed as lower bounds).
    while at < 16 << 20 {
        let got = rt.block_on(kf.read(at, 256 << 10)).unwrap();
        assert!(got[..] == data[at as usize..at as usize + got.len()]);
        at += got.len() as u64;
    }
    // Over 4 MiB past the stream (beyond what continues it: a seek), a piece its readahead
    // asked for behind others of the same request.
    let ps = kf.piece_size();
    let far = |at: u64| {
        ((at + (4 << 20)) / ps + 1..(at + (48 << 20)).min(len as u64) / ps)
            .find(|&i| kf.in_flight_behind_others(i as usize))
            .map(|i| i * ps)
    };
    // (On a loaded machine the readahead may not be there yet: the stream reads on a little.)
    let mut seek = far(at);
    while seek.is_none() && at < 32 << 20 {
        let got = rt.block_on(kf.read(at, 256 << 10)).unwrap();
        assert!(got[..] == data[at as usize..at as usize + got.len()]);
        at += got.len() as u64;
        seek = far(at);
    }
    let seek = seek.expect("the test needs a piece in flight behind others");
    let direct_before = r.fetcher.stats.direct_reads.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    let got = rt.block_on(kf.read(seek, 64 << 10)).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(got[..] == data[seek as usize..seek as usize + (64 << 10)]);
    // Its run would deliver it after megabytes at 32-64 MiB/s: tens of ms.
    assert!(ms < 100.0, "the seek took {ms:.0} ms");
    assert!(r.fetcher.stats.direct_reads.load(std::sync::atomic::Ordering::Relaxed) > direct_before);
}

/// Random reads far ahead of a sequential reader do not take its readahead away: the stream
/// keeps going while they run.
#[test]
fn a_stream_keeps_going_while_random_reads_run() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let rt = runtime();
    let r = rig(&rt);
    let len = 64 << 20;
    let data = content(32, len);
    let key = sha256_key(&data);
    let fault = || Faults { bytes_per_sec: Some(4 << 20), ..Faults::default() };
    let sources: Vec<_> = (0..4).map(|k| src(&format!("m{k}"), &data, fault())).collect();
    let kf = r.fetcher.key(&key, dyns(&sources), None).unwrap();
    let pos = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (kf, pos, stop, data) = (kf.clone(), pos.clone(), stop.clone(), data.clone());
        let h = rt.handle().clone();
        std::thread::spawn(move || {
            let mut at = 0u64;
            while !stop.load(Ordering::Relaxed) && at < len as u64 {
                let got = h.block_on(kf.read(at, 128 << 10)).unwrap();
                assert!(got[..] == data[at as usize..at as usize + got.len()], "stream bytes at {at}");
                at += got.len() as u64;
                pos.store(at, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    while pos.load(Ordering::Relaxed) < 2 << 20 {
        assert!(start.elapsed() < Duration::from_secs(20), "the stream did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = pos.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut x = 7u64;
    for _ in 0..20 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let lo = pos.load(Ordering::Relaxed) + (16 << 20);
        if lo + (64 << 10) >= len as u64 {
            break;
        }
        let off = lo + (x >> 11) % (len as u64 - lo - (64 << 10));
        let got = rt.block_on(kf.read(off, 64 << 10)).unwrap();
        assert!(got[..] == data[off as usize..off as usize + (64 << 10)], "random bytes at {off}");
    }
    let moved = pos.load(Ordering::Relaxed) - before;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap();
    // 16 MiB/s in all; the stream gets 6 MiB/s of it on a quiet machine (each random read
    // also fetches its pieces and a small readahead). Stalled or starved, it would not move
    // at all: the bound is an eighth, so that a busy machine does not fail it (the rates
    // themselves are measured in bench/run, net section).
    eprintln!("the stream read {moved} bytes in {secs:.2} s of random reads");
    assert!(moved as f64 >= secs * (2 << 20) as f64, "the stream read {moved} bytes in {secs:.2} s of random reads");
}

/// With a manifest a seek's whole piece is needed (it is checked before a byte is served): it
/// is also asked in parts of the other sources at once, checked whole and landed.
#[test]
fn with_a_manifest_a_cold_seeks_piece_is_split_over_the_idle_sources() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(33, 8 << 20);
    let key = sha256_key(&data);
    let piece = annexfs::pieces::piece_size_for(data.len() as u64);
    // A piece takes a second from one source, a third of it from three at once.
    let fault = || Faults { bytes_per_sec: Some(256 << 10), ..Faults::default() };
    let sources: Vec<_> = (0..4).map(|k| src(&format!("m{k}"), &data, fault())).collect();
    let kf = r.fetcher.key(&key, dyns(&sources), Some(common::manifest_of(&key, &data))).unwrap();
    let at = 20 * piece + piece - (16 << 10);
    let got = rt.block_on(kf.read(at, 16 << 10)).unwrap();
    assert!(got[..] == data[at as usize..(at + (16 << 10)) as usize]);
    // One source alone would have sent the whole piece before the read returned.
    let most = sources.iter().map(|s| s.served()).max().unwrap();
    assert!(most < piece * 3 / 4, "one source sent {most} bytes; the piece is {piece}");
    assert_eq!(r.fetcher.stats.direct_reads.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// With a manifest a read whose piece nobody has asked for yet (here the first read of a
/// key, which counts as the start of a stream, not a seek) gets it in parts of every source
/// first, not whole from one of them beside its parts.
#[test]
fn with_a_manifest_a_piece_nobody_asked_for_comes_in_parts_first() {
    let rt = runtime();
    let r = rig(&rt);
    let data = content(35, 8 << 20);
    let key = sha256_key(&data);
    let piece = annexfs::pieces::piece_size_for(data.len() as u64);
    let fault = || Faults { bytes_per_sec: Some(1 << 20), ..Faults::default() };
    let sources: Vec<_> = (0..4).map(|k| src(&format!("m{k}"), &data, fault())).collect();
    let kf = r.fetcher.key(&key, dyns(&sources), Some(common::manifest_of(&key, &data))).unwrap();
    let got = rt.block_on(kf.read(0, 16 << 10)).unwrap();
    assert!(got[..] == data[..16 << 10]);
    // Parts of a quarter each; one source asked for the whole piece would send it all.
    let most = sources.iter().map(|s| s.served()).max().unwrap();
    assert!(most < piece * 3 / 4, "one source sent {most} bytes; the piece is {piece}");
    assert_eq!(r.fetcher.stats.direct_reads.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Many keys read at once from one server (many readers): once the server has
/// [`annexfs::fetch::CROWDED`] requests in flight, a key that has one there asks for
/// no more, instead of each key's usual several (which only deepen the server's queue).
#[test]
fn many_keys_from_one_server_ask_it_once_each() {
    let rt = runtime();
    let r = rig(&rt);
    let keys = 24;
    let mut sources = Vec::new();
    let mut reads = Vec::new();
    for k in 0..keys {
        let data = content(100 + k, 2 << 20);
        // One identity for all: the same server. Throttled so that requests overlap.
        let s = src("mirror", &data, Faults { bytes_per_sec: Some(2 << 20), ..Faults::default() });
        let kf = r.fetcher.key(&sha256_key(&data), dyns(std::slice::from_ref(&s)), None).unwrap();
        sources.push(s);
        reads.push(rt.spawn(async move { (kf.read(0, 2 << 20).await, data) }));
    }
    for h in reads {
        let (got, data) = rt.block_on(h).unwrap();
        assert!(got.unwrap() == *data);
    }
    let peaks: u64 = sources.iter().map(|s| s.peak_concurrency()).sum();
    // One each, and a few CROWDED more asked before the server counted as crowded (keys plan
    // at once, each before the others' requests are counted; more so on a loaded machine).
    // Without the rule: four each (96).
    let most = keys + 4 * u64::from(annexfs::fetch::CROWDED);
    assert!(peaks <= most, "{peaks} requests at once over {keys} keys (at most {most})");
}
