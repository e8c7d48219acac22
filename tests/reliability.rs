//! The measured part of the reliability report (`scripts/reliability`; ignored in the normal
//! test run, since it measures bandwidth): three honest mirrors and one hostile mirror of every
//! kind, all four throttled to the same rate (every byte a mirror sends counts against its
//! limit, whatever it sends). A reader reads the whole file sequentially; recorded per case:
//! wrong bytes served, the throughput against the sum of the honest mirrors' limits, and what
//! became of the hostile mirror.
//!
//! Every row is asserted: every byte read equals the content, no read fails, the key
//! verifies. A row that fails is reported as failed (no figure) and fails the test, after the
//! other rows have run.

mod common;

use annexfs::annex::Key;
use annexfs::annex::policy::AddressPolicy;
use annexfs::fetch::{FetchConfig, Fetcher, VerifyMode};
use annexfs::manifest::Manifest;
use annexfs::pieces::PieceStore;
use annexfs::source::http::{HttpClient, HttpSource};
use annexfs::source::remote::RangeSource;
use common::hostile::{self, Mode};
use common::{manifest_of, sha256_key};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: usize = 96 << 20;
const HONEST: usize = 3;
const HONEST_RATE: u64 = 8 << 20;

/// Runs one row; `Err` says why it failed.
fn one(
    mode: Mode,
    strict: bool,
    with_manifest: bool,
    data: &Arc<Vec<u8>>,
    key: &Key,
    manifest: &Manifest,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
    let cfg = FetchConfig {
        stall_timeout: Duration::from_secs(2),
        read_deadline: Duration::from_secs(60),
        verify: if strict { VerifyMode::Strict } else { VerifyMode::Stream },
        on_verified: None,
        limits: None,
    };
    let f = Fetcher::new(store, rt.handle().clone(), cfg);
    let client = HttpClient::new(AddressPolicy::from_config(Some("127.0.0.1"))).unwrap();
    let mut sources: Vec<Arc<dyn RangeSource>> = Vec::new();
    let mirror = hostile::start(&rt, data.clone(), mode, Some(HONEST_RATE));
    sources.push(Arc::new(HttpSource::new(
        format!("hostile {}", mirror.url),
        client.clone(),
        vec![mirror.url],
        SIZE as u64,
    )));
    for i in 0..HONEST {
        let m = hostile::start(&rt, data.clone(), Mode::Honest, Some(HONEST_RATE));
        sources.push(Arc::new(HttpSource::new(
            format!("honest{i} {}", m.url),
            client.clone(),
            vec![m.url],
            SIZE as u64,
        )));
    }
    let kf = f.key(key, sources, with_manifest.then(|| manifest.clone())).unwrap();
    let t = Instant::now();
    let (mut off, mut wrong, mut error) = (0usize, 0usize, None);
    while off < SIZE {
        match rt.block_on(kf.read(off as u64, 1 << 20)) {
            Ok(got) => {
                wrong += common::wrong_bytes(&got, &data[off..off + got.len()]);
                off += got.len();
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let verified = rt.block_on(kf.wait_verified(Duration::from_secs(60)));
    let mib_s = off as f64 / secs / f64::from(1 << 20);
    let limit = (HONEST as u64 * HONEST_RATE) as f64 / f64::from(1 << 20);
    let r = kf.source_reports().into_iter().find(|r| r.name.starts_with("hostile")).unwrap();
    let guard = match (strict, with_manifest) {
        (_, true) => "manifest",
        (true, false) => "strict",
        (false, false) => "stream",
    };
    let mut failures = Vec::new();
    if let Some(e) = &error {
        failures.push(format!("read failed at byte {off}: {e}"));
    } else if off != SIZE {
        failures.push(format!("read {off} of {SIZE} bytes"));
    }
    if wrong > 0 {
        failures.push(format!("{wrong} wrong bytes served"));
    }
    if !verified {
        failures.push("the key did not verify".into());
    }
    let failure = (!failures.is_empty()).then(|| failures.join("; "));
    println!(
        "{mode:?} {guard}: {mib_s:.1} MiB/s of {limit:.0} ({:.0}%), wrong {wrong}, {r:?}{}",
        100.0 * mib_s / limit,
        failure.as_deref().map(|f| format!(" FAILED: {f}")).unwrap_or_default()
    );
    common::report(serde_json::json!({
        "kind": "hostile-bandwidth",
        "mode": format!("{mode:?}"),
        "guard": guard,
        "bytes": off,
        "secs": secs,
        "mib_s": mib_s,
        "honest_limit_mib_s": limit,
        "ratio": mib_s / limit,
        "wrong_bytes_served": wrong,
        "verified": verified,
        "error": error,
        "hostile_strikes": r.strikes,
        "hostile_banned": r.banned,
        "hostile_given_up": r.dead,
        "failure": failure,
    }));
    match failure {
        None => Ok(()),
        Some(f) => Err(format!("{mode:?} {guard}: {f}")),
    }
}

#[test]
#[ignore = "measures bandwidth; run by scripts/reliability"]
fn hostile_mirrors_cost_little_bandwidth_and_serve_no_wrong_byte() {
    let data: Arc<Vec<u8>> = Arc::new(common::pseudo_random(2026, SIZE));
    let key = sha256_key(&data);
    let manifest = manifest_of(&key, &data);
    // The reference: honest mirrors only (the hostile one replaced by a fourth honest mirror
    // would change the sum; instead the hostile slot is an honest one here and not counted).
    let mut rows = vec![one(Mode::Honest, false, false, &data, &key, &manifest)];
    for mode in Mode::HOSTILE {
        rows.push(one(mode, false, true, &data, &key, &manifest));
        if mode.lies_about_content() {
            rows.push(one(mode, true, false, &data, &key, &manifest));
        } else {
            rows.push(one(mode, false, false, &data, &key, &manifest));
        }
    }
    let failed: Vec<String> = rows.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "rows failed: {failed:#?}");
}
