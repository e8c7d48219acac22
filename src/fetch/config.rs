//! The fetcher's tunables: [`FetchConfig`] (what callers and tests set), [`VerifyMode`], and
//! the constants of the scheduler and of readers (fixed; their values are the design, see the
//! module doc of [`super`]).

use super::error::UnknownVerifyMode;
use super::limits;
use crate::manifest::Manifest;
use std::sync::Arc;
use std::time::Duration;

/// Readahead when reading starts or after a seek.
pub const INITIAL_WINDOW_BYTES: u64 = 1 << 20;
/// How far before the last read position a read may start and still count as sequential.
pub(super) const SEQUENTIAL_SLACK: u64 = 2 << 20;
/// Largest readahead window.
pub const MAX_WINDOW_BYTES: u64 = 256 << 20;
/// Requests per source at once.
pub const MAX_INFLIGHT: u32 = 2;
/// Requests in flight on one source identity, every key's together, from which a key that
/// has one there gets no more (many readers at once: see `request.rs`, `board`).
pub const CROWDED: u32 = 8;
/// Extra requests per source for pieces readers are blocked on.
pub const DEMAND_EXTRA: u32 = 2;
/// A request should take about this long at the source's measured speed.
pub(super) const TARGET_REQUEST_SECS: f64 = 0.5;
/// A request that streamed for less than this is measured as if it took this long (its
/// speed a lower bound: see `SourceStats::request_ended`).
pub(super) const MIN_MEASURED: Duration = Duration::from_millis(50);
/// A request should take at least this many times the source's wait for a first byte: a
/// source slow to start one (an ssh session: a process on the server, git-annex-shell
/// starting) is asked for fewer, longer runs, so that starting them is a small part of its
/// time.
pub(super) const START_COST_RUNS: f64 = 4.0;
/// Longest run of pieces in one request.
pub(super) const MAX_RUN_BYTES: u64 = 32 << 20;
/// Failures in a row before a source is given up for a key.
pub const MAX_FAILS: u32 = 5;
/// An idle source steals only work that would take longer than this at its current source.
pub(super) const STEAL_IF_LEFT_SECS: f64 = 0.25;
/// A piece whose source has not sent a byte yet may be hedged after this.
pub(super) const SILENT_HEDGE_AFTER: Duration = Duration::from_millis(250);
/// A demanded piece in flight longer than this may be hedged on an idle source.
pub(super) const HEDGE_AFTER: Duration = Duration::from_millis(500);
/// A source this many times slower than the best is only probed now and then.
pub(super) const SLOW_FACTOR: f64 = 16.0;
/// How often such a source is probed.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A request slower than this (bytes/s) holding a demanded piece is hedged.
pub(super) const DRIP_BPS: f64 = 256.0 * 1024.0;
/// A request whose pieces all landed elsewhere while it sent slower than this (bytes/s,
/// from its first byte) failed: its source is backed off. Far below [`DRIP_BPS`]: a request
/// among hundreds sharing a server (many readers at once) sends slowly and is no drip.
pub(super) const STARVED_BPS: f64 = 32.0 * 1024.0;
/// How long a background request may wait for bytes before it counts as stalled: a swarm
/// node sends background work only while none of its readers' responses is moving
/// (see the swarm's server).
pub(super) const BACKGROUND_STALL: Duration = Duration::from_secs(60);
/// Housekeeping interval: backoffs, hedges, pieces fetched by other processes.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// How long fetching pauses when the cache is at its bound and nothing can be evicted yet.
pub(super) const CACHE_FULL_PAUSE: Duration = Duration::from_millis(100);
/// A reader waits at most this long without any piece of the key landing.
pub const READ_DEADLINE: Duration = Duration::from_secs(60);
/// The window of [`super::KeyFetch::rate`].
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(5);

/// When bytes fetched from sources may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// As they arrive when no manifest exists (the whole key is verified at the end); piece
    /// by piece once verified when one does.
    #[default]
    Stream,
    /// Never before they are verified: per piece with a manifest, else after the whole key.
    Strict,
}

impl std::str::FromStr for VerifyMode {
    type Err = UnknownVerifyMode;
    fn from_str(s: &str) -> Result<Self, UnknownVerifyMode> {
        VerifyMode::parse(s)
    }
}

impl VerifyMode {
    /// `stream` or `strict`.
    pub fn parse(s: &str) -> Result<VerifyMode, UnknownVerifyMode> {
        match s {
            "stream" => Ok(VerifyMode::Stream),
            "strict" => Ok(VerifyMode::Strict),
            _ => Err(UnknownVerifyMode(s.to_string())),
        }
    }
}

/// Called with the manifest of each key this fetcher verified whole and had no manifest for
/// (to store and publish it).
#[derive(Clone)]
pub struct OnVerified(pub Arc<dyn Fn(&Manifest) + Send + Sync>);

impl std::fmt::Debug for OnVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnVerified")
    }
}

/// Tunables of the fetcher (tests shorten the timeouts).
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// A request that delivers no byte for this long is dropped (its pieces go elsewhere).
    pub stall_timeout: Duration,
    /// A reader fails when nothing of its key lands for this long.
    pub read_deadline: Duration,
    pub verify: VerifyMode,
    pub on_verified: Option<OnVerified>,
    /// Limits per source identity (requests at once, bytes per second).
    pub limits: Option<limits::LimitsFn>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            stall_timeout: crate::source::http::STALL_TIMEOUT,
            read_deadline: READ_DEADLINE,
            verify: VerifyMode::Stream,
            on_verified: None,
            limits: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_parse() {
        assert_eq!(VerifyMode::parse("stream").ok(), Some(VerifyMode::Stream));
        assert_eq!("strict".parse::<VerifyMode>().ok(), Some(VerifyMode::Strict));
        let e = VerifyMode::parse("paranoid").unwrap_err();
        assert_eq!(e, UnknownVerifyMode("paranoid".into()));
        assert!(e.to_string().contains("expected stream or strict"), "{e}");
    }
}
