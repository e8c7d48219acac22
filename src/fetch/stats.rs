//! Figures: per source of a key ([`SourceStats`]: throughput, time to first byte, failures,
//! backoff and giving up), the fetcher's counters ([`Stats`], for `status`), the landing rate
//! of a key, and the reports built from them.
//!
//! A source is named two ways: [`SourceId`], its index among the sources of one key's fetch
//! (what the scheduler and the piece bookkeeping speak of), and its identity string
//! ([`RangeSource::identity`](crate::source::remote::RangeSource::identity)), which is who
//! answers for its bytes across keys: limits and reputation are kept per identity.
//!
//! Lock order: `SourceSlot::stats` is taken after `KeyFetch::state` (never the other way) and
//! before nothing but the `CachedKey` state and the reputation map.

use super::config::{MAX_FAILS, MIN_MEASURED, RATE_WINDOW};
use super::{KeyFetch, blame, lock};
use crate::source::remote::FetchError;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// The index of a source among the sources of one key's fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub usize);

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Counters of the whole fetcher, for `status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_fetched: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub stalls: AtomicU64,
    pub steals: AtomicU64,
    pub hedges: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Cold seeks served directly: their bytes read exactly, or their piece in parts
    /// (`direct.rs`).
    pub direct_reads: AtomicU64,
    /// Pieces dropped from a full cache to make room.
    pub evicted_pieces: AtomicU64,
    pub verified: AtomicU64,
    pub verify_failures: AtomicU64,
    /// Pieces refused or replaced because they failed a check (manifest or comparison).
    pub bad_pieces: AtomicU64,
}

/// What one source of a key has done.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub inflight: u32,
    /// Measured throughput (bytes/s), exponentially averaged; 0 until measured.
    pub bps: f64,
    pub fails_in_row: u32,
    pub backoff_until: Option<Instant>,
    pub dead: Option<FetchError>,
    pub last_error: Option<FetchError>,
    pub bytes: u64,
    pub requests: u64,
    /// When a source far slower than the best was last given a request (a probe).
    pub last_probe: Option<Instant>,
    /// Time to the first byte of a request, exponentially averaged (ms); 0 until measured.
    pub ttfb_ms: f64,
}

/// How a request ended, as far as its source's figures go.
pub struct RequestEnd<'a> {
    pub result: &'a Result<(), FetchError>,
    /// The cache failed to store a piece (not the source's fault).
    pub store_failed: bool,
    /// Bytes of complete pieces received.
    pub received: u64,
    /// Every byte that arrived.
    pub arrived: u64,
    pub elapsed: Duration,
    /// When the first byte arrived, if one did.
    pub first_byte: Option<Duration>,
}

/// What became of a source after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Failed; backs off, and is tried again.
    BackingOff,
    /// Given up for this key.
    GaveUp,
}

impl SourceStats {
    /// The first byte of a request came `ms` after it started.
    pub fn first_byte(&mut self, ms: f64) {
        self.ttfb_ms = if self.ttfb_ms == 0.0 { ms } else { 0.7 * self.ttfb_ms + 0.3 * ms };
    }

    /// Accounts for a finished request: throughput, failures in a row, backoff, giving up.
    pub fn request_ended(&mut self, end: &RequestEnd<'_>, now: Instant) -> Verdict {
        self.inflight = self.inflight.saturating_sub(1);
        self.bytes += end.received;
        // Speed from every byte that arrived, complete pieces or not (a source that drips
        // never completes one, and must still be measured as slow); a failed request's speed
        // counts only for what it delivered whole.
        let arrived = match end.result {
            Ok(()) | Err(FetchError::TooSlow(_)) => end.arrived,
            Err(_) => end.received,
        };
        // Throughput from the first byte on: the wait before it (opening a session, a slow
        // first answer) is latency, measured apart (`ttfb_ms`). Counted in, it would make a
        // source that takes long to start but then streams fast look slow, and a slow-looking
        // source gets short runs, each again mostly latency: it would never be measured right.
        let streaming = end.elapsed.saturating_sub(end.first_byte.unwrap_or_default());
        // A request that streamed for less than [`MIN_MEASURED`] is timed as if it took that
        // long: a lower bound, never an overestimate. The first piece of a fresh connection
        // passes a shaper's burst and the socket buffers at memory speed (256 KiB in 1 ms
        // from a 24 MiB/s mirror); taken at face value it sized the next runs at the longest
        // (32 MiB), which then held that source's pieces for seconds while readers waited
        // on them. Underestimated, runs grow by ~10× a request until they are timed right.
        let secs = streaming.as_secs_f64().max(MIN_MEASURED.as_secs_f64());
        if arrived > 0 || secs > 1.0 {
            let rate = arrived as f64 / secs;
            self.bps = if self.bps == 0.0 { rate } else { 0.7 * self.bps + 0.3 * rate };
        }
        match end.result {
            Ok(()) if end.store_failed => Verdict::Fine,
            Ok(()) => {
                self.fails_in_row = 0;
                self.backoff_until = None;
                Verdict::Fine
            }
            // Lying is dealt with by strikes (a ban), not by backing off: the source is not
            // asked for the pieces it got wrong, and may serve others meanwhile.
            Err(e @ FetchError::Corrupt(_)) => {
                self.last_error = Some(e.clone());
                Verdict::Fine
            }
            // A server that ignores Range answered a request not starting at 0 (asked before
            // its first answer told): not a failure, it is asked from the start from now on.
            Err(e @ FetchError::NoRanges) => {
                self.last_error = Some(e.clone());
                Verdict::Fine
            }
            Err(e) => {
                self.fails_in_row += 1;
                self.last_error = Some(e.clone());
                self.backoff_until = Some(now + Duration::from_millis(250u64 << self.fails_in_row.min(6)));
                if e.is_permanent() || self.fails_in_row >= MAX_FAILS {
                    self.dead = Some(e.clone());
                    Verdict::GaveUp
                } else {
                    Verdict::BackingOff
                }
            }
        }
    }
}

/// Bytes landed recently, for a key's rate.
#[derive(Debug, Default)]
pub struct Landings(VecDeque<(Instant, u64)>);

impl Landings {
    pub fn push(&mut self, now: Instant, bytes: u64) {
        self.0.push_back((now, bytes));
        while self.0.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            self.0.pop_front();
        }
    }

    /// Bytes per second over [`RATE_WINDOW`] before `now`.
    pub fn rate(&self, now: Instant) -> f64 {
        let sum: u64 = self.0.iter().filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW).map(|(_, n)| n).sum();
        sum as f64 / RATE_WINDOW.as_secs_f64()
    }
}

/// A snapshot of a source's figures (for `status` and tests).
#[derive(Debug, Clone)]
pub struct SourceReport {
    pub name: String,
    pub bytes: u64,
    pub requests: u64,
    pub bps: f64,
    pub dead: Option<String>,
    /// Who answers for the source's bytes, its strikes, and whether it is banned.
    pub identity: String,
    pub strikes: u32,
    pub banned: bool,
    /// Time to first byte, averaged (ms; 0 until measured).
    pub ttfb_ms: f64,
}

impl KeyFetch {
    pub fn source_reports(&self) -> Vec<SourceReport> {
        self.sources
            .iter()
            .map(|s| {
                let st = lock(&s.stats);
                SourceReport {
                    name: s.src.name().to_string(),
                    bytes: st.bytes,
                    requests: st.requests,
                    bps: st.bps,
                    dead: st.dead.as_ref().map(ToString::to_string),
                    identity: s.src.identity().to_string(),
                    strikes: self.rep.strikes(s.src.identity()),
                    banned: self.rep.is_banned(s.src.identity()),
                    ttfb_ms: st.ttfb_ms,
                }
            })
            .collect()
    }

    /// Bytes per second landed over the last few seconds.
    pub fn rate(&self) -> f64 {
        lock(&self.landings).rate(Instant::now())
    }

    /// What each source did, for error messages.
    pub(super) fn sources_report(&self) -> String {
        if self.sources.is_empty() {
            return "no source serves byte ranges of it".into();
        }
        self.sources
            .iter()
            .map(|s| {
                let st = lock(&s.stats);
                let what = match (&st.dead, &st.last_error) {
                    (Some(e), _) => format!("gave up: {e}"),
                    (None, Some(e)) => format!("{} bytes, last error: {e}", st.bytes),
                    (None, None) => format!("{} bytes", st.bytes),
                };
                let rec = self.rep.snapshot().into_iter().find(|(id, _)| id == s.src.identity()).map(|(_, r)| r);
                format!("{} ({what}{})", s.src.name(), blame::describe(rec.as_ref()))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(result: &Result<(), FetchError>) -> RequestEnd<'_> {
        RequestEnd {
            result,
            store_failed: false,
            received: 0,
            arrived: 0,
            elapsed: Duration::from_millis(10),
            first_byte: None,
        }
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let now = Instant::now();
        let mut s = SourceStats { inflight: MAX_FAILS, ..Default::default() };
        let err = Err(FetchError::Stalled(Duration::from_secs(1)));
        for n in 1..MAX_FAILS {
            assert_eq!(s.request_ended(&end(&err), now), Verdict::BackingOff);
            assert_eq!(s.fails_in_row, n);
            assert!(s.backoff_until.is_some_and(|t| t > now));
        }
        assert_eq!(s.request_ended(&end(&err), now), Verdict::GaveUp);
        assert!(s.dead.is_some());
        assert_eq!(s.inflight, 0);
    }

    #[test]
    fn success_clears_the_failures_and_measures() {
        let now = Instant::now();
        let mut s = SourceStats { inflight: 2, fails_in_row: 3, backoff_until: Some(now), ..Default::default() };
        let ok = Ok(());
        let e = RequestEnd { received: 1_000_000, arrived: 1_000_000, elapsed: Duration::from_secs(1), ..end(&ok) };
        assert_eq!(s.request_ended(&e, now), Verdict::Fine);
        assert_eq!((s.fails_in_row, s.backoff_until, s.inflight), (0, None, 1));
        assert!((s.bps - 1e6).abs() < 1.0, "{}", s.bps);
    }

    #[test]
    fn throughput_is_measured_from_the_first_byte() {
        let now = Instant::now();
        let mut s = SourceStats { inflight: 1, ..Default::default() };
        let ok = Ok(());
        // 0.5 s to start (a new ssh session), then 1 MB in 0.1 s: 10 MB/s, not 1.7.
        let e = RequestEnd {
            received: 1_000_000,
            arrived: 1_000_000,
            elapsed: Duration::from_millis(600),
            first_byte: Some(Duration::from_millis(500)),
            ..end(&ok)
        };
        assert_eq!(s.request_ended(&e, now), Verdict::Fine);
        assert!((s.bps - 1e7).abs() < 1e3, "{}", s.bps);
    }

    #[test]
    fn a_request_too_short_to_time_is_measured_as_a_lower_bound() {
        let now = Instant::now();
        let mut s = SourceStats { inflight: 1, ..Default::default() };
        let ok = Ok(());
        // One 256 KiB piece through a shaper's burst in 1 ms: not 256 MiB/s, at most what
        // it would be had it taken MIN_MEASURED.
        let e = RequestEnd {
            received: 256 << 10,
            arrived: 256 << 10,
            elapsed: Duration::from_millis(1),
            first_byte: Some(Duration::ZERO),
            ..end(&ok)
        };
        assert_eq!(s.request_ended(&e, now), Verdict::Fine);
        let bound = f64::from(256u32 << 10) / MIN_MEASURED.as_secs_f64();
        assert!((s.bps - bound).abs() < 1.0, "{} vs {bound}", s.bps);
    }

    #[test]
    fn a_lie_is_not_a_failure() {
        let now = Instant::now();
        let mut s = SourceStats { inflight: 1, ..Default::default() };
        assert_eq!(s.request_ended(&end(&Err(FetchError::Corrupt(3))), now), Verdict::Fine);
        assert_eq!((s.fails_in_row, s.dead.is_none()), (0, true));
    }
}
