//! HTTP mirrors that misbehave on purpose (see `common::hostile`), next to honest ones: every
//! response is checked, no wrong byte is served with a manifest or in strict mode, the liars
//! are struck, and when no honest mirror is left the read fails in time, naming every mirror
//! and what it did.

mod common;

use annexfs::annex::policy::AddressPolicy;
use annexfs::fetch::{FetchConfig, Fetcher, ReadError, VerifyMode};
use annexfs::pieces::PieceStore;
use annexfs::source::http::{HttpClient, HttpSource};
use annexfs::source::remote::RangeSource;
use common::hostile::{self, Mode};
use common::{manifest_of, sha256_key};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

fn fetcher(rt: &tokio::runtime::Runtime, dir: &std::path::Path, verify: VerifyMode, deadline: Duration) -> Fetcher {
    let store = Arc::new(PieceStore::open(dir, 1 << 30).unwrap());
    let cfg = FetchConfig {
        stall_timeout: Duration::from_millis(700),
        read_deadline: deadline,
        verify,
        on_verified: None,
        limits: None,
    };
    Fetcher::new(store, rt.handle().clone(), cfg)
}

fn source(client: &HttpClient, name: &str, m: &hostile::Mirror, size: usize) -> Arc<dyn RangeSource> {
    Arc::new(HttpSource::new(format!("{name} {}", m.url), client.clone(), vec![m.url.clone()], size as u64))
}

/// How a case is read: plain stream mode, strict mode, or stream mode with a manifest.
#[derive(Clone, Copy, Debug)]
enum Guard {
    Stream,
    Strict,
    Manifest,
}

fn run_case(mode: Mode, guard: Guard) {
    let rt = runtime();
    let data: Arc<Vec<u8>> = Arc::new(common::pseudo_random(mode as u64 + 1, 3_000_000));
    let key = sha256_key(&data);
    let dir = tempfile::tempdir().unwrap();
    let verify = if matches!(guard, Guard::Strict) { VerifyMode::Strict } else { VerifyMode::Stream };
    let f = fetcher(&rt, dir.path(), verify, Duration::from_secs(30));
    let client = HttpClient::new(AddressPolicy::from_config(Some("127.0.0.1"))).unwrap();
    let liar = hostile::start(&rt, data.clone(), mode, None);
    let honest = hostile::start(&rt, data.clone(), Mode::Honest, None);
    let sources = vec![source(&client, "liar", &liar, data.len()), source(&client, "honest", &honest, data.len())];
    let manifest = matches!(guard, Guard::Manifest).then(|| manifest_of(&key, &data));
    let kf = f.key(&key, sources, manifest).unwrap();
    // Random-ish reads first (ranges not at 0), then the rest.
    let mut wrong = 0;
    for (off, len) in [(1_234_567u64, 70_000u64), (0, 3_000_000)] {
        let got = rt.block_on(kf.read(off, len)).unwrap_or_else(|e| panic!("{mode:?} {guard:?}: {e}"));
        let end = (off + len).min(data.len() as u64) as usize;
        wrong += common::wrong_bytes(&got, &data[off as usize..end]);
        let exact = got[..] == data[off as usize..end];
        // Stream mode without a manifest may serve a liar's bytes before the whole-key
        // check; with a manifest or in strict mode never.
        if !(mode.lies_about_content() && matches!(guard, Guard::Stream)) {
            assert!(exact, "{mode:?} {guard:?}: wrong bytes served at {off}");
        }
    }
    assert!(rt.block_on(kf.wait_verified(Duration::from_secs(20))), "{mode:?} {guard:?}: the key verifies");
    let all = rt.block_on(kf.read(0, 3_000_000)).unwrap();
    assert!(all[..] == data[..], "{mode:?} {guard:?}: the cached key is exact");
    let reports = kf.source_reports();
    let l = reports.iter().find(|r| r.name.starts_with("liar")).unwrap();
    let h = reports.iter().find(|r| r.name.starts_with("honest")).unwrap();
    common::report(serde_json::json!({
        "kind": "hostile-case",
        "mode": format!("{mode:?}"),
        "guard": format!("{guard:?}"),
        "wrong_bytes_served": wrong,
        "liar_strikes": l.strikes,
        "liar_banned": l.banned,
        "liar_given_up": l.dead,
        "exact_after_verification": true,
    }));
    assert!(h.bytes > 0 && h.strikes == 0, "{mode:?} {guard:?}: {h:?}");
    if mode.lies_about_content() {
        // Served anything, it is struck for it.
        assert!(l.bytes == 0 || l.strikes > 0, "{mode:?} {guard:?}: liar {l:?}");
    } else {
        // Its answers never land: given up, or never delivered. Two misbehaviours are
        // harmless by construction: an endless body is read only as far as the range asked,
        // and a whole-object answer is used only for a range at 0.
        assert!(
            l.dead.is_some() || l.bytes == 0 || matches!(mode, Mode::IgnoresRange | Mode::Endless | Mode::Drip),
            "{mode:?} {guard:?}: liar {l:?}"
        );
    }
}

#[test]
fn misbehaving_mirrors_are_refused_and_the_honest_one_serves() {
    let cases: Vec<(Mode, Guard)> = Mode::HOSTILE
        .iter()
        .flat_map(|&m| {
            if m.lies_about_content() {
                vec![(m, Guard::Strict), (m, Guard::Manifest), (m, Guard::Stream)]
            } else {
                vec![(m, Guard::Stream)]
            }
        })
        .collect();
    // Cases in parallel: several wait for stall timeouts.
    let handles: Vec<_> = cases.into_iter().map(|(m, g)| std::thread::spawn(move || run_case(m, g))).collect();
    let mut failed = Vec::new();
    for h in handles {
        if let Err(e) = h.join() {
            failed.push(e.downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A server that sends the range asked with status 200 and its Content-Range (as `rclone
/// serve s3` up to 1.75 does) is read by range, alone, at offsets other than 0.
#[test]
fn a_range_sent_with_status_200_and_its_content_range_is_read() {
    let rt = runtime();
    let data: Arc<Vec<u8>> = Arc::new(common::pseudo_random(77, 3_000_000));
    let key = sha256_key(&data);
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&rt, dir.path(), VerifyMode::Stream, Duration::from_secs(30));
    let client = HttpClient::new(AddressPolicy::from_config(Some("127.0.0.1"))).unwrap();
    let m = hostile::start(&rt, data.clone(), Mode::RangeAs200, None);
    let src = source(&client, "quirky", &m, data.len());
    let kf = f.key(&key, vec![src.clone()], None).unwrap();
    for (off, len) in [(1_234_567u64, 70_000u64), (2_500_000, 500_000), (0, 3_000_000)] {
        let got = rt.block_on(kf.read(off, len)).unwrap();
        assert!(got[..] == data[off as usize..(off + len) as usize], "bytes at {off}");
    }
    assert!(rt.block_on(kf.wait_verified(Duration::from_secs(20))));
    let r = &kf.source_reports()[0];
    assert!(r.bytes >= data.len() as u64 && r.strikes == 0 && r.dead.is_none(), "{r:?}");
    // Read by range, not taken for a server that streams every object from its start.
    assert!(src.supports_ranges(), "the 200 answers were not taken as ranges");
}

#[test]
fn with_no_honest_mirror_left_the_read_fails_in_time_naming_each() {
    let rt = runtime();
    let data: Arc<Vec<u8>> = Arc::new(common::pseudo_random(99, 2_000_000));
    let key = sha256_key(&data);
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&rt, dir.path(), VerifyMode::Stream, Duration::from_secs(5));
    let client = HttpClient::new(AddressPolicy::from_config(Some("127.0.0.1"))).unwrap();
    let modes = [Mode::Zeros, Mode::StallAfterHeaders, Mode::Drip, Mode::Short, Mode::RedirectDisallowed];
    let mirrors: Vec<_> = modes.iter().map(|&m| hostile::start(&rt, data.clone(), m, None)).collect();
    let sources: Vec<_> =
        modes.iter().zip(&mirrors).map(|(m, mi)| source(&client, &format!("{m:?}"), mi, data.len())).collect();
    let kf = f.key(&key, sources, Some(manifest_of(&key, &data))).unwrap();
    let t = Instant::now();
    let err = rt.block_on(kf.read(0, 100_000)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(15), "failed after {:?}", t.elapsed());
    assert!(matches!(err, ReadError::NoSource { .. } | ReadError::Deadline { .. }), "{err}");
    let msg = err.to_string();
    println!("{msg}");
    for m in modes {
        assert!(msg.contains(&format!("{m:?} http://")), "{m:?} named in: {msg}");
    }
}
