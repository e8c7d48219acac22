//! The fetcher: turns "a reader needs bytes [a, b) of key K" into pieces in the cache, fetched
//! by ranges from every source of K at once, the bytes a reader waits on first.
//!
//! Per key, a [`KeyFetch`] keeps each piece in one of the states
//! `Missing → InFlight(request) → Present` (or `Elsewhere` while another process holds the
//! piece's claim in the shared cache). Which pieces are wanted, in order:
//! 1. pieces readers are blocked on (`demand`), lowest first;
//! 2. the readahead window after the last read, which doubles while reading is sequential (up
//!    to [`MAX_WINDOW_BYTES`]) and shrinks back to [`INITIAL_WINDOW_BYTES`] on a seek.
//!
//! Scheduling (`schedule`, run whenever something changes and every [`TICK`]): each source
//! that is not dead, not backing off and has fewer than [`MAX_INFLIGHT`] requests gets the
//! first wanted missing run, of a length sized to its measured throughput (one piece for a
//! source not yet measured, for a fast first byte). An idle source with nothing missing to
//! take **steals** the back half of the largest unstarted remainder of another source's
//! request, and, when nothing is left to steal, **hedges** a demanded piece that has been in
//! flight for long (end game): whichever copy lands first is kept. A failed request returns
//! its pieces to `Missing`; the source backs off exponentially and is given up for this key
//! after [`MAX_FAILS`] failures in a row or a permanent error. Readers fail (EIO) only when no
//! source is left, or when nothing lands for [`READ_DEADLINE`].
//!
//! Memory: a request holds one piece in memory at a time; requests are bounded by sources ×
//! [`MAX_INFLIGHT`], so memory does not grow with the file size.
//!
//! When the last piece lands the whole key is verified with its backend hash
//! ([`verify`]); on a mismatch the cached data is quarantined and every later read fails.
//!
//! Lock order: `KeyFetch::state` → `SourceSlot::stats` → `CachedKey` state (`crate::pieces`).

pub mod blame;
pub mod limits;

pub use blame::Reputation;

use crate::annex::Key;
use crate::manifest::Manifest;
use crate::pieces::{CacheError, CachedKey, PieceClaim, PieceStore};
use crate::source::remote::{FetchError, RangeSource};
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Readahead when reading starts or after a seek.
pub const INITIAL_WINDOW_BYTES: u64 = 1 << 20;
/// How far before the last read position a read may start and still count as sequential.
const SEQUENTIAL_SLACK: u64 = 2 << 20;
/// Largest readahead window.
pub const MAX_WINDOW_BYTES: u64 = 256 << 20;
/// Requests per source at once.
pub const MAX_INFLIGHT: u32 = 2;
/// Extra requests per source for pieces readers are blocked on.
pub const DEMAND_EXTRA: u32 = 2;
/// A request should take about this long at the source's measured speed.
const TARGET_REQUEST_SECS: f64 = 0.5;
/// Longest run of pieces in one request.
const MAX_RUN_BYTES: u64 = 32 << 20;
/// Failures in a row before a source is given up for a key.
pub const MAX_FAILS: u32 = 5;
/// An idle source steals only work that would take longer than this at its current source.
const STEAL_IF_LEFT_SECS: f64 = 0.25;
/// A piece whose source has not sent a byte yet may be hedged after this.
const SILENT_HEDGE_AFTER: Duration = Duration::from_millis(250);
/// A demanded piece in flight longer than this may be hedged on an idle source.
const HEDGE_AFTER: Duration = Duration::from_millis(500);
/// A source this many times slower than the best is only probed now and then.
const SLOW_FACTOR: f64 = 16.0;
/// How often such a source is probed.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A request slower than this (bytes/s) holding a demanded piece is hedged.
const DRIP_BPS: f64 = 256.0 * 1024.0;
/// Housekeeping interval: backoffs, hedges, pieces fetched by other processes.
const TICK: Duration = Duration::from_millis(100);
/// How long fetching pauses when the cache is at its bound and nothing can be evicted yet.
const CACHE_FULL_PAUSE: Duration = Duration::from_millis(100);
/// A reader waits at most this long without any piece of the key landing.
pub const READ_DEADLINE: Duration = Duration::from_secs(60);

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stream" => Ok(VerifyMode::Stream),
            "strict" => Ok(VerifyMode::Strict),
            _ => Err(format!("verify mode {s:?}: expected stream or strict")),
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
    /// Pieces dropped from a full cache to make room.
    pub evicted_pieces: AtomicU64,
    pub verified: AtomicU64,
    pub verify_failures: AtomicU64,
    /// Pieces refused or replaced because they failed a check (manifest or comparison).
    pub bad_pieces: AtomicU64,
}

/// Errors a reader sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("no source could serve {key}: {why}")]
    NoSource { key: String, why: String },
    #[error("nothing of {key} arrived for {secs} s (sources: {why})")]
    Deadline { key: String, secs: u64, why: String },
    #[error("cache: {0}")]
    Cache(String),
    #[error("{0}")]
    Poisoned(String),
    #[error("{key} cannot be served in strict mode: {why}")]
    Strict { key: String, why: String },
}

impl ReadError {
    pub fn is_no_space(&self) -> bool {
        matches!(self, ReadError::Cache(m) if m.contains("No space") || m.contains("cache is full"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Missing,
    InFlight(u64),
    /// Claimed by another process; looked at again on the next tick.
    Elsewhere,
    Present,
}

struct SourceStats {
    inflight: u32,
    /// Measured throughput (bytes/s), exponentially averaged; 0 until measured.
    bps: f64,
    fails_in_row: u32,
    backoff_until: Option<Instant>,
    dead: Option<FetchError>,
    last_error: Option<FetchError>,
    bytes: u64,
    requests: u64,
    /// When a source far slower than the best was last given a request (a probe).
    last_probe: Option<Instant>,
    /// Time to the first byte of a request, exponentially averaged (ms); 0 until measured.
    ttfb_ms: f64,
}

struct SourceSlot {
    src: Arc<dyn RangeSource>,
    /// Shared with every key reading from the same identity.
    limiter: Option<Arc<limits::Limiter>>,
    stats: Mutex<SourceStats>,
}

struct Request {
    source: usize,
    /// Next piece this request will deliver.
    next: Arc<AtomicUsize>,
    /// One past the last piece it may deliver (lowered by stealing).
    end: Arc<AtomicUsize>,
    started: Instant,
    hedge: bool,
    /// Bytes received so far.
    got: Arc<AtomicU64>,
    /// Milliseconds after `started` when the last bytes arrived.
    progress_ms: Arc<AtomicU64>,
}

/// How far a running request got, shared with the scheduler.
struct Progress {
    got: Arc<AtomicU64>,
    progress_ms: Arc<AtomicU64>,
    started: Instant,
}

struct State {
    pieces: Vec<Piece>,
    /// How many pieces are `Present` (kept by [`State::set`], so completeness is O(1)).
    present: usize,
    demand: BTreeSet<usize>,
    window_start: usize,
    window_pieces: usize,
    last_read_end: u64,
    requests: HashMap<u64, Request>,
    next_req: u64,
    hedged: BTreeSet<usize>,
    claims: HashMap<usize, PieceClaim>,
    /// Pieces a reader is reading now (count of readers).
    pins: HashMap<usize, u32>,
    /// Why the cache could not store a piece (e.g. a full disk), until one is stored again.
    cache_error: Option<String>,
    /// No new requests before this (the cache is at its bound with nothing to evict yet).
    paused_until: Option<Instant>,
    /// Bytes at the start of an in-flight piece already in the data file (stream mode: a
    /// reader blocked on them is served before the whole piece is in).
    partial: HashMap<usize, u64>,
    last_landing: Instant,
    verify_started: bool,
    /// The piece manifest (regrouped to the cache's piece size), when one is known.
    manifest: Option<Arc<Manifest>>,
    /// Pieces checked against the manifest (landed since it was known, or read and checked).
    manifest_ok: Vec<bool>,
    /// A reader waits for the whole key (strict mode without a manifest): every piece is
    /// wanted.
    want_all: bool,
    /// Which source sent each piece landed by this process (for blame).
    origin: HashMap<usize, usize>,
    /// Sources that sent a piece that failed its check, per piece: not asked for it again.
    refused: HashMap<usize, Vec<usize>>,
}

impl State {
    /// Changes a piece's state, keeping the count of present pieces.
    fn set(&mut self, i: usize, new: Piece) {
        let old = std::mem::replace(&mut self.pieces[i], new);
        if new != Piece::Present {
            self.manifest_ok[i] = false;
        }
        match (old == Piece::Present, new == Piece::Present) {
            (false, true) => self.present += 1,
            (true, false) => self.present -= 1,
            _ => {}
        }
    }
}

/// One key being read, shared by every handle of this process.
pub struct KeyFetch {
    pub key: Key,
    cache: Arc<CachedKey>,
    store: Arc<PieceStore>,
    sources: Vec<SourceSlot>,
    state: Mutex<State>,
    landed: tokio::sync::Notify,
    stats: Arc<Stats>,
    rep: Arc<Reputation>,
    rt: tokio::runtime::Handle,
    cfg: FetchConfig,
    /// Bytes landed in the last [`RATE_WINDOW`], for the rate `status` shows.
    landings: Mutex<std::collections::VecDeque<(Instant, u64)>>,
}

/// The window of [`KeyFetch::rate`].
const RATE_WINDOW: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fetcher of a process: one [`KeyFetch`] per key being read.
pub struct Fetcher {
    store: Arc<PieceStore>,
    rt: tokio::runtime::Handle,
    keys: Mutex<HashMap<Vec<u8>, Weak<KeyFetch>>>,
    pub stats: Arc<Stats>,
    /// Strikes and bans of sources, for every key.
    pub reputation: Arc<Reputation>,
    cfg: FetchConfig,
    limiters: Mutex<HashMap<String, Option<Arc<limits::Limiter>>>>,
}

impl Fetcher {
    pub fn new(store: Arc<PieceStore>, rt: tokio::runtime::Handle, cfg: FetchConfig) -> Fetcher {
        Fetcher {
            store,
            rt,
            keys: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            reputation: Arc::new(Reputation::default()),
            cfg,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// The limiter of source identity `id`, if it has limits.
    fn limiter(&self, id: &str) -> Option<Arc<limits::Limiter>> {
        let f = self.cfg.limits.as_ref()?;
        lock(&self.limiters)
            .entry(id.to_string())
            .or_insert_with(|| {
                let l = (f.0)(id);
                (!l.is_none()).then(|| {
                    tracing::debug!("{id}: limited to {l:?}");
                    Arc::new(limits::Limiter::new(l))
                })
            })
            .clone()
    }

    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// The keys being read now.
    pub fn open_keys(&self) -> Vec<Arc<KeyFetch>> {
        lock(&self.keys).values().filter_map(Weak::upgrade).collect()
    }

    /// Whether the fetch of `key` running now knows a manifest.
    pub fn has_manifest(&self, key: &Key) -> bool {
        lock(&self.keys).get(&key.to_bytes()).and_then(Weak::upgrade).is_some_and(|k| lock(&k.state).manifest.is_some())
    }

    pub fn store(&self) -> &Arc<PieceStore> {
        &self.store
    }

    /// The fetch of `key` with these sources (the sources of a fetch already running are
    /// kept) and, when known, its piece manifest. Starts its housekeeping task.
    pub fn key(
        &self,
        key: &Key,
        sources: Vec<Arc<dyn RangeSource>>,
        manifest: Option<Manifest>,
    ) -> Result<Arc<KeyFetch>, ReadError> {
        let kb = key.to_bytes();
        let mut keys = lock(&self.keys);
        if let Some(k) = keys.get(&kb).and_then(Weak::upgrade) {
            if let Some(m) = manifest {
                k.set_manifest(m);
            }
            return Ok(k);
        }
        let cache = self.store.open_key(key).map_err(|e| ReadError::Cache(e.to_string()))?;
        let n = cache.piece_count();
        let pieces: Vec<Piece> = (0..n).map(|i| if cache.has(i) { Piece::Present } else { Piece::Missing }).collect();
        let window_pieces = usize::try_from(INITIAL_WINDOW_BYTES / cache.piece_size).unwrap_or(1).max(1);
        let kf = Arc::new(KeyFetch {
            key: key.clone(),
            cache,
            store: self.store.clone(),
            sources: sources
                .into_iter()
                .map(|src| SourceSlot {
                    limiter: self.limiter(src.identity()),
                    src,
                    stats: Mutex::new(SourceStats {
                        inflight: 0,
                        bps: 0.0,
                        fails_in_row: 0,
                        backoff_until: None,
                        dead: None,
                        last_error: None,
                        bytes: 0,
                        requests: 0,
                        last_probe: None,
                        ttfb_ms: 0.0,
                    }),
                })
                .collect(),
            state: Mutex::new(State {
                present: pieces.iter().filter(|p| **p == Piece::Present).count(),
                pieces,
                demand: BTreeSet::new(),
                window_start: 0,
                window_pieces,
                last_read_end: u64::MAX,
                requests: HashMap::new(),
                next_req: 1,
                hedged: BTreeSet::new(),
                claims: HashMap::new(),
                pins: HashMap::new(),
                cache_error: None,
                paused_until: None,
                partial: HashMap::new(),
                last_landing: Instant::now(),
                verify_started: false,
                manifest: None,
                manifest_ok: vec![false; n],
                origin: HashMap::new(),
                refused: HashMap::new(),
                want_all: false,
            }),
            landed: tokio::sync::Notify::new(),
            stats: self.stats.clone(),
            rep: self.reputation.clone(),
            landings: Mutex::new(std::collections::VecDeque::new()),
            rt: self.rt.clone(),
            cfg: self.cfg.clone(),
        });
        let weak = Arc::downgrade(&kf);
        self.rt.spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(kf) = weak.upgrade() else { break };
                kf.tick();
            }
        });
        keys.insert(kb, Arc::downgrade(&kf));
        keys.retain(|_, w| w.strong_count() > 0);
        drop(keys);
        // Callers find the manifest (the cache's copy first) with `manifest::publish::lookup`.
        if let Some(m) = manifest {
            kf.set_manifest(m);
        }
        Ok(kf)
    }
}

impl KeyFetch {
    pub fn size(&self) -> u64 {
        self.cache.size
    }

    /// Bytes of the key present in the cache.
    pub fn present_bytes(&self) -> u64 {
        self.cache.present().1
    }

    fn piece_len(&self, i: usize) -> u64 {
        let (a, b) = self.cache.piece_range(i);
        b - a
    }

    /// Uses `m` to check pieces from now on (regrouped to the cache's pieces). A manifest that
    /// does not fit is ignored with a log line.
    pub fn set_manifest(&self, m: Manifest) {
        let m = match m.regroup(self.cache.piece_size).and_then(|m| m.trust().map(|_| m)) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("{}: piece manifest not used: {e}", self.key);
                return;
            }
        };
        let mut st = lock(&self.state);
        if st.manifest.is_none() {
            tracing::debug!("{}: checking pieces against its manifest", self.key);
            st.manifest = Some(Arc::new(m));
        }
    }

    /// Whether a piece manifest is known.
    pub fn has_manifest(&self) -> bool {
        lock(&self.state).manifest.is_some()
    }

    /// Whether bytes of a piece still arriving may be served (stream mode, no manifest).
    fn partial_serving(&self, st: &State) -> bool {
        self.cfg.verify == VerifyMode::Stream && st.manifest.is_none()
    }

    /// Whether nothing may be served before the whole key is verified (strict, no manifest).
    fn whole_key_first(&self, st: &State) -> bool {
        self.cfg.verify == VerifyMode::Strict && st.manifest.is_none()
    }

    /// Whether source `s` may be asked for piece `i` (not refused for it, not banned, not
    /// given up).
    fn may_ask(&self, st: &State, s: usize, i: usize) -> bool {
        let (a, b) = self.cache.piece_range(i);
        !st.refused.get(&i).is_some_and(|v| v.contains(&s))
            && self.sources[s].src.has_range(a, b - a)
            && blame::usable(&self.rep, &*self.sources[s].src)
            && lock(&self.sources[s].stats).dead.is_none()
            && (i == 0 || self.sources[s].src.supports_ranges())
    }

    /// What each source did, for error messages.
    fn sources_report(&self) -> String {
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

    /// Reads `len` bytes at `offset` (clamped to the key's size), fetching what is missing.
    #[tracing::instrument(level = "trace", skip(self), fields(key = %self.key))]
    pub async fn read(self: &Arc<Self>, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let size = self.cache.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let ps = self.cache.piece_size;
        let first = usize::try_from(offset / ps).unwrap_or(usize::MAX);
        let last = usize::try_from((end - 1) / ps).unwrap_or(usize::MAX);
        {
            let mut st = lock(&self.state);
            // Sequential reading grows the readahead window; a seek resets it.
            // Readahead never takes more than a quarter of the cache, so it cannot crowd out
            // the pieces being read (a cache smaller than the window would evict its own
            // readahead).
            let max_window = usize::try_from(MAX_WINDOW_BYTES.min(self.store.limit() / 4) / ps).unwrap_or(1).max(1);
            let initial = usize::try_from(INITIAL_WINDOW_BYTES / ps).unwrap_or(1).max(1);
            // The kernel sends several reads of one stream at once (async reads, readahead),
            // and they reach here out of order: a read near the last position still counts as
            // sequential, and the position never moves backwards within a stream.
            let window_bytes = st.window_pieces as u64 * ps;
            let sequential = st.last_read_end != u64::MAX
                && offset + SEQUENTIAL_SLACK >= st.last_read_end
                && offset <= st.last_read_end.saturating_add(window_bytes);
            if sequential {
                st.window_pieces = (st.window_pieces * 2).min(max_window);
                st.last_read_end = st.last_read_end.max(end);
            } else {
                st.window_pieces = initial;
                st.last_read_end = end;
            }
            st.window_start = usize::try_from(st.last_read_end.div_ceil(ps)).unwrap_or(usize::MAX).max(last + 1);
            // A new read tries the cache again (space may have been freed since).
            st.cache_error = None;
            // Pinned pieces are never dropped to make room while this read needs them.
            for i in first..=last {
                *st.pins.entry(i).or_insert(0) += 1;
            }
        }
        let result = self.read_pinned(offset, end, first, last).await;
        let mut st = lock(&self.state);
        for i in first..=last {
            if let Some(n) = st.pins.get_mut(&i) {
                *n -= 1;
                if *n == 0 {
                    st.pins.remove(&i);
                    st.demand.remove(&i);
                }
            }
        }
        result
    }

    async fn read_pinned(
        self: &Arc<Self>,
        offset: u64,
        end: u64,
        first: usize,
        last: usize,
    ) -> Result<Vec<u8>, ReadError> {
        let mut hit = true;
        let read_started = Instant::now();
        // A piece that fails its check in the cache is dropped and fetched again, a few times.
        for _attempt in 0..3 {
            loop {
                let notified = self.landed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut st = lock(&self.state);
                    if let Some(p) = self.cache.poisoned() {
                        return Err(ReadError::Poisoned(p));
                    }
                    let whole_first = self.whole_key_first(&st) && !self.cache.is_verified();
                    if whole_first {
                        self.strict_possible()?;
                        st.want_all = true;
                    }
                    if let Some(e) = &st.cache_error
                        && !(first..=last).all(|i| st.pieces[i] == Piece::Present)
                    {
                        return Err(ReadError::Cache(e.clone()));
                    }
                    let ps = self.cache.piece_size;
                    let partial_ok = self.partial_serving(&st);
                    // A piece still arriving serves a reader whose bytes are already in (stream
                    // mode without a manifest only).
                    let ready = |i: usize| {
                        st.pieces[i] == Piece::Present
                            || partial_ok
                                && st
                                    .partial
                                    .get(&i)
                                    .is_some_and(|&have| (end.min((i as u64 + 1) * ps)) - i as u64 * ps <= have)
                    };
                    let missing: Vec<usize> = (first..=last).filter(|&i| !ready(i)).collect();
                    if missing.is_empty() && !whole_first {
                        break;
                    }
                    if let Some(&i) = missing.iter().find(|&&i| {
                        st.pieces[i] == Piece::Missing && !(0..self.sources.len()).any(|s| self.may_ask(&st, s, i))
                    }) && !self.anything_in_flight_locked(&st)
                    {
                        return Err(ReadError::NoSource {
                            key: self.key.to_string_lossy(),
                            why: format!("no source left for piece {i}: {}", self.sources_report()),
                        });
                    }
                    hit = false;
                    st.demand.extend(missing.iter().copied());
                    if st.last_landing.max(read_started).elapsed() > self.cfg.read_deadline {
                        return Err(ReadError::Deadline {
                            key: self.key.to_string_lossy(),
                            secs: self.cfg.read_deadline.as_secs(),
                            why: self.sources_report(),
                        });
                    }
                }
                self.schedule();
                if self.all_sources_gone() && !self.anything_in_flight() {
                    return Err(ReadError::NoSource { key: self.key.to_string_lossy(), why: self.sources_report() });
                }
                let _ = tokio::time::timeout(TICK * 5, notified).await;
            }
            if hit {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            }
            // Schedule readahead even when this read was a hit.
            self.schedule();
            // Pieces cached before the manifest was known are checked against it once.
            if !self.check_against_manifest(first, last) {
                continue;
            }
            let mut buf = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
            let cache = self.cache.clone();
            let partial: Vec<usize> = {
                let st = lock(&self.state);
                (first..=last).filter(|&i| st.pieces[i] != Piece::Present).collect()
            };
            let res = tokio::task::block_in_place(|| {
                if partial.is_empty() {
                    return cache.read(offset, &mut buf);
                }
                // Piece by piece: checked pieces through the cache, arriving ones raw.
                let ps = cache.piece_size;
                for i in first..=last {
                    let a = offset.max(i as u64 * ps);
                    let b = end.min((i as u64 + 1) * ps);
                    let dst =
                        &mut buf[usize::try_from(a - offset).unwrap_or(0)..usize::try_from(b - offset).unwrap_or(0)];
                    if partial.contains(&i) { cache.read_raw(a, dst)? } else { cache.read(a, dst)? }
                }
                Ok(())
            });
            match res {
                Ok(()) => return Ok(buf),
                Err(e) => {
                    tracing::warn!("{}: {e}; fetching again", self.key);
                    let mut st = lock(&self.state);
                    for i in first..=last {
                        if !self.cache.has(i) && st.pieces[i] == Piece::Present {
                            st.set(i, Piece::Missing);
                        }
                    }
                }
            }
        }
        Err(ReadError::Cache(format!("pieces of {} keep failing their check in the cache", self.key)))
    }

    fn all_sources_gone(&self) -> bool {
        self.sources.iter().all(|s| lock(&s.stats).dead.is_some() || !blame::usable(&self.rep, &*s.src))
    }

    fn anything_in_flight(&self) -> bool {
        self.anything_in_flight_locked(&lock(&self.state))
    }

    fn anything_in_flight_locked(&self, st: &State) -> bool {
        !st.requests.is_empty() || st.pieces.contains(&Piece::Elsewhere) || (st.verify_started && st.want_all)
    }

    /// Strict mode without a manifest serves a key only once it is whole and verified: that
    /// needs a backend with a hash and room for the whole key in the cache.
    fn strict_possible(&self) -> Result<(), ReadError> {
        let fail = |why: String| Err(ReadError::Strict { key: self.key.to_string_lossy(), why });
        if crate::annex::backend::hasher_for(self.key.variety()).is_none() {
            return fail(format!(
                "its backend {} has no hash to verify it with, and it has no piece manifest",
                String::from_utf8_lossy(self.key.variety())
            ));
        }
        if self.cache.size > self.store.limit() / 2 {
            return fail(format!(
                "without a piece manifest the whole key ({} bytes) must be in the cache first, and the cache \
                 holds {} bytes (raise cache_size, or publish a manifest with `annexfs index`)",
                self.cache.size,
                self.store.limit()
            ));
        }
        Ok(())
    }

    /// Checks the present pieces `first..=last` not yet checked against the manifest (pieces
    /// cached before it was known); drops those that fail. Returns whether all passed.
    fn check_against_manifest(&self, first: usize, last: usize) -> bool {
        let (m, todo) = {
            let st = lock(&self.state);
            let Some(m) = st.manifest.clone() else { return true };
            let todo: Vec<usize> =
                (first..=last).filter(|&i| st.pieces[i] == Piece::Present && !st.manifest_ok[i]).collect();
            (m, todo)
        };
        let mut all = true;
        for i in todo {
            let (a, b) = self.cache.piece_range(i);
            let mut buf = vec![0u8; usize::try_from(b - a).unwrap_or(0)];
            let ok = tokio::task::block_in_place(|| self.cache.read(a, &mut buf)).is_ok() && m.check_piece(i, &buf);
            let mut st = lock(&self.state);
            if ok {
                st.manifest_ok[i] = true;
            } else {
                tracing::warn!("{}: cached piece {i} fails its manifest hash; fetching it again", self.key);
                self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                let _ = self.cache.drop_piece(i);
                st.set(i, Piece::Missing);
                all = false;
            }
        }
        all
    }

    /// Drops the claims of pieces the record on disk names.
    fn release_landed_claims(&self, st: &mut State) {
        let pieces = &st.pieces;
        st.claims.retain(|&i, _| !(pieces[i] == Piece::Present && self.cache.is_durable(i)));
    }

    fn tick(self: &Arc<Self>) {
        // Landed pieces are made durable and visible to other processes at least every tick
        // while anything waits on them.
        let holding = {
            let st = lock(&self.state);
            st.claims.keys().any(|&i| st.pieces[i] == Piece::Present)
        };
        if holding && self.cache.unpersisted() > 0 {
            let cache = self.cache.clone();
            if let Err(e) = tokio::task::block_in_place(|| cache.persist()) {
                tracing::warn!("{}: persist the cache record: {e}", self.key);
            }
        }
        if holding {
            self.release_landed_claims(&mut lock(&self.state));
        }
        // Pieces another process was fetching: landed (reload) or free to claim again.
        let elsewhere = lock(&self.state).pieces.contains(&Piece::Elsewhere);
        if elsewhere {
            self.cache.reload();
            let mut st = lock(&self.state);
            let mut landed = false;
            for i in 0..st.pieces.len() {
                if st.pieces[i] == Piece::Elsewhere {
                    let new = if self.cache.has(i) {
                        landed = true;
                        Piece::Present
                    } else {
                        Piece::Missing
                    };
                    st.set(i, new);
                }
            }
            if landed {
                st.last_landing = Instant::now();
                drop(st);
                self.landed.notify_waiters();
            }
        }
        self.schedule();
    }

    /// Pieces wanted now, in priority order.
    fn wanted(st: &State) -> Vec<usize> {
        let n = st.pieces.len();
        let mut out: Vec<usize> = st.demand.iter().copied().collect();
        let (from, to) = if st.want_all {
            (0, n)
        } else {
            let from = st.window_start.min(n);
            (from, from.saturating_add(st.window_pieces).min(n))
        };
        out.extend((from..to).filter(|i| !st.demand.contains(i)));
        out
    }

    /// Hands work to idle sources; see the module doc.
    fn schedule(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        if st.present == st.pieces.len() {
            self.maybe_verify(&mut st);
            return;
        }
        let wanted = Self::wanted(&st);
        let now = Instant::now();
        if wanted.is_empty() || st.paused_until.is_some_and(|t| t > now) {
            return;
        }
        // Faster sources choose first.
        let mut order: Vec<usize> = (0..self.sources.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (lock(&self.sources[a].stats).bps, lock(&self.sources[b].stats).bps);
            y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal)
        });
        // The best speed among sources that work now (a source that sends fast and then
        // fails is no yardstick).
        let best_bps = order
            .iter()
            .map(|&s| lock(&self.sources[s].stats))
            .filter(|ss| ss.dead.is_none() && ss.fails_in_row == 0)
            .map(|ss| ss.bps)
            .fold(0.0, f64::max);
        let usable = order
            .iter()
            .filter(|&&s| {
                let ss = lock(&self.sources[s].stats);
                ss.dead.is_none() && ss.backoff_until.is_none_or(|t| t <= now)
            })
            .count()
            .max(1);
        for s in order {
            {
                // A source far slower than the best (one that drips) would only hold pieces
                // readers soon wait on: it is asked once per PROBE_EVERY, to notice if it
                // recovers.
                let mut ss = lock(&self.sources[s].stats);
                if ss.bps > 0.0 && ss.bps * SLOW_FACTOR < best_bps {
                    if ss.inflight > 0 || ss.last_probe.is_some_and(|t| now.duration_since(t) < PROBE_EVERY) {
                        continue;
                    }
                    ss.last_probe = Some(now);
                }
            }
            loop {
                // A piece a reader waits on may use a source beyond its usual number of
                // requests: it must not queue behind long readahead runs.
                let demand_missing = st.demand.iter().filter(|&&i| st.pieces[i] == Piece::Missing).count();
                let stuck = self.overdue_demand(&st, s, now).is_some();
                let limit = if demand_missing > 0 || stuck { MAX_INFLIGHT + DEMAND_EXTRA } else { MAX_INFLIGHT };
                let banned = !blame::usable(&self.rep, &*self.sources[s].src);
                let (eligible, bps, busy) = {
                    let mut ss = lock(&self.sources[s].stats);
                    if banned && ss.dead.is_none() {
                        ss.dead = Some(FetchError::Banned(self.sources[s].src.identity().to_string()));
                    }
                    let backing_off = ss.backoff_until.is_some_and(|t| t > now);
                    let capped = self.sources[s].limiter.as_ref().is_some_and(|l| !l.may_start());
                    (
                        ss.dead.is_none() && !backing_off && ss.inflight < limit && !capped,
                        ss.bps,
                        ss.inflight >= MAX_INFLIGHT,
                    )
                };
                if !eligible {
                    break;
                }
                let start = wanted.iter().copied().find(|&i| st.pieces[i] == Piece::Missing && self.may_ask(&st, s, i));
                let assigned = match start {
                    Some(p) if st.demand.contains(&p) => {
                        // Spread the demanded pieces over the sources, for the earliest finish.
                        let share = demand_missing.div_ceil(usable).max(1);
                        let started = self.assign_run(&mut st, s, p, bps, &wanted, Some(share));
                        if started {
                            self.preempt_readahead(&mut st, s);
                        }
                        started
                    }
                    // The extra requests are only for pieces readers wait on.
                    _ if busy => stuck && self.hedge(&mut st, s, now),
                    // A reader stuck on a piece held by a silent source comes before readahead.
                    _ if stuck => self.hedge(&mut st, s, now),
                    Some(p) => {
                        // Near the end of what is wanted, split it over every source instead of
                        // leaving one long run to one of them (the end game).
                        let missing = wanted.iter().filter(|&&i| st.pieces[i] == Piece::Missing).count();
                        let share = missing.div_ceil(usable).max(1);
                        self.assign_run(&mut st, s, p, bps, &wanted, Some(share))
                    }
                    None => self.steal(&mut st, s) || self.hedge(&mut st, s, now),
                };
                if !assigned {
                    break;
                }
            }
        }
    }

    /// Starts a request on source `s` for a run of wanted missing pieces from `p`.
    fn assign_run(
        self: &Arc<Self>,
        st: &mut State,
        s: usize,
        p: usize,
        bps: f64,
        wanted: &[usize],
        cap: Option<usize>,
    ) -> bool {
        let ps = self.cache.piece_size;
        let max_run = if bps <= 0.0 {
            // Not measured yet: one piece, so that the first bytes come soonest and the source
            // is measured before it is given more (longer first runs measured slower here).
            1
        } else {
            // A float of pieces, clamped just below: the cast saturates, nothing is lost.
            #[allow(clippy::cast_possible_truncation)]
            let by_speed = (bps * TARGET_REQUEST_SECS / ps as f64).min(1e9) as usize;
            by_speed.clamp(1, usize::try_from(MAX_RUN_BYTES / ps).unwrap_or(1).max(1))
        };
        let max_run = cap.map_or(max_run, |c| max_run.min(c));
        let wanted_set: BTreeSet<usize> = wanted.iter().copied().collect();
        let mut end = p;
        while end < st.pieces.len()
            && end - p < max_run
            && st.pieces[end] == Piece::Missing
            && wanted_set.contains(&end)
            && !st.refused.get(&end).is_some_and(|v| v.contains(&s))
            && {
                let (a, b) = self.cache.piece_range(end);
                self.sources[s].src.has_range(a, b - a)
            }
        {
            // This process may hold the claim already (pieces returned by a steal or a failed
            // request): claiming again would be a no-op, and replacing the held claim would
            // drop it, and dropping a claim unlocks the piece for everyone.
            if !st.claims.contains_key(&end) {
                match self.cache.claim(end) {
                    Ok(Some(c)) => {
                        // Another process may have landed the piece and released its claim
                        // since this one last read the record.
                        self.cache.reload_if_changed();
                        if self.cache.has(end) {
                            drop(c);
                            st.set(end, Piece::Present);
                            self.landed.notify_waiters();
                            if end == p {
                                return true;
                            }
                            break;
                        }
                        st.claims.insert(end, c);
                    }
                    Ok(None) => {
                        st.set(end, Piece::Elsewhere);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("claim piece {end} of {}: {e}", self.key);
                        break;
                    }
                }
            }
            end += 1;
        }
        if end == p {
            // The first piece was taken elsewhere: try the next wanted piece.
            return st.pieces[p] == Piece::Elsewhere;
        }
        self.start_request(st, s, p, end, false);
        true
    }

    fn start_request(self: &Arc<Self>, st: &mut State, s: usize, from: usize, to: usize, hedge: bool) {
        let id = st.next_req;
        st.next_req += 1;
        if !hedge {
            for i in from..to {
                st.set(i, Piece::InFlight(id));
            }
        }
        let next = Arc::new(AtomicUsize::new(from));
        let end = Arc::new(AtomicUsize::new(to));
        let got = Arc::new(AtomicU64::new(0));
        let progress_ms = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        st.requests.insert(
            id,
            Request {
                source: s,
                next: next.clone(),
                end: end.clone(),
                started,
                hedge,
                got: got.clone(),
                progress_ms: progress_ms.clone(),
            },
        );
        {
            let mut ss = lock(&self.sources[s].stats);
            ss.inflight += 1;
            ss.requests += 1;
        }
        if let Some(l) = &self.sources[s].limiter {
            l.started();
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "{}: request {id}: pieces {from}..{to} from {}{}",
            self.key,
            self.sources[s].src.name(),
            if hedge { " (hedge)" } else { "" }
        );
        let this = self.clone();
        let span =
            tracing::debug_span!("fetch", key = %self.key, source = %self.sources[s].src.name(), from, to, hedge);
        let progress = Progress { got, progress_ms, started };
        self.rt.spawn(tracing::Instrument::instrument(
            async move { this.run_request(id, s, next, end, progress).await },
            span,
        ));
    }

    /// A reader blocked on a piece from source `s` gets its bandwidth: the readahead requests
    /// on `s` finish the piece they are receiving and give the rest back (it is requested again
    /// later), instead of sharing the source's link with the blocked read.
    fn preempt_readahead(&self, st: &mut State, s: usize) {
        let ids: Vec<u64> = st
            .requests
            .iter()
            .filter(|(_, r)| r.source == s && !r.hedge)
            .filter(|(_, r)| {
                let next = r.next.load(Ordering::Relaxed);
                // Requests for pieces readers wait on keep going.
                !(next..r.end.load(Ordering::Relaxed)).any(|i| st.demand.contains(&i))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let Some(r) = st.requests.get(&id) else { continue };
            let keep = r.next.load(Ordering::Relaxed) + 1;
            let end = r.end.load(Ordering::Relaxed);
            if end <= keep {
                continue;
            }
            r.end.store(keep, Ordering::Relaxed);
            for i in keep..end {
                if st.pieces[i] == Piece::InFlight(id) {
                    st.set(i, Piece::Missing);
                }
            }
        }
    }

    /// Idle source `s` takes the back half of the largest unstarted remainder of another
    /// source's request.
    fn steal(self: &Arc<Self>, st: &mut State, s: usize) -> bool {
        let ps = self.cache.piece_size as f64;
        let now = Instant::now();
        let victim = st
            .requests
            .iter()
            .filter(|(_, r)| r.source != s && !r.hedge)
            .map(|(&id, r)| {
                let next = r.next.load(Ordering::Relaxed);
                let end = r.end.load(Ordering::Relaxed);
                // The piece being received now stays with its request.
                (id, r, next + 1, end)
            })
            .filter(|&(_, _, from, end)| end > from + 1)
            // Only work that would take long where it is: splitting a request that is about to
            // finish anyway wastes what its connection already has in flight.
            .filter(|&(_, r, from, end)| {
                let bps = lock(&self.sources[r.source].stats).bps;
                let left = (end - from) as f64 * ps;
                let slow_start = bps <= 0.0 && now.duration_since(r.started) > HEDGE_AFTER;
                slow_start || (bps > 0.0 && left / bps > STEAL_IF_LEFT_SECS)
            })
            .map(|(id, _, from, end)| (id, from, end))
            .max_by_key(|&(_, from, end)| end - from);
        let Some((id, from, end)) = victim else { return false };
        let split = from + (end - from) / 2;
        if let Some(r) = st.requests.get(&id) {
            r.end.store(split, Ordering::Relaxed);
        }
        for i in split..end {
            if st.pieces[i] == Piece::InFlight(id) {
                st.set(i, Piece::Missing);
            }
        }
        self.stats.steals.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("{}: {} steals pieces {split}..{end}", self.key, self.sources[s].src.name());
        let mut to = split;
        while to < end && st.pieces[to] == Piece::Missing && self.may_ask(st, s, to) {
            to += 1;
        }
        if to == split {
            return false;
        }
        // Claims are per process and already held by this process for these pieces.
        self.start_request(st, s, split, to, false);
        true
    }

    /// A demanded piece in flight on another source for too long, not yet hedged: a request
    /// that has not delivered a byte (maybe a mirror that accepts connections and never
    /// answers) gets less patience than one that is sending; one that is sending far slower
    /// than source `s` could (a mirror that drips) is hedged too.
    fn overdue_demand(&self, st: &State, s: usize, now: Instant) -> Option<usize> {
        let s_bps = lock(&self.sources[s].stats).bps;
        st.demand.iter().copied().find(|&i| {
            if st.hedged.contains(&i) {
                return false;
            }
            let Piece::InFlight(id) = st.pieces[i] else { return false };
            let (a, b) = self.cache.piece_range(i);
            if st.refused.get(&i).is_some_and(|v| v.contains(&s)) || !self.sources[s].src.has_range(a, b - a) {
                return false;
            }
            // Only a request that stopped delivering: one that is sending, however slowly, is
            // relieved by stealing instead.
            st.requests.get(&id).is_some_and(|r| {
                let last = r.started + Duration::from_millis(r.progress_ms.load(Ordering::Relaxed));
                let got = r.got.load(Ordering::Relaxed);
                let silent = got == 0;
                let age = now.saturating_duration_since(r.started);
                let rate = got as f64 / age.as_secs_f64().max(1e-3);
                let dripping = age > SILENT_HEDGE_AFTER && rate < (s_bps / 4.0).max(DRIP_BPS);
                r.source != s
                    && (dripping
                        || now.saturating_duration_since(last) > if silent { SILENT_HEDGE_AFTER } else { HEDGE_AFTER })
            })
        })
    }

    /// End game: duplicate a demanded piece that has been in flight for long on another source.
    fn hedge(self: &Arc<Self>, st: &mut State, s: usize, now: Instant) -> bool {
        let candidate = self.overdue_demand(st, s, now);
        let Some(i) = candidate else { return false };
        st.hedged.insert(i);
        self.stats.hedges.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("{}: hedging piece {i} on {}", self.key, self.sources[s].src.name());
        self.start_request(st, s, i, i + 1, true);
        true
    }

    async fn run_request(
        self: Arc<Self>,
        id: u64,
        s: usize,
        next: Arc<AtomicUsize>,
        end: Arc<AtomicUsize>,
        progress: Progress,
    ) {
        let src = self.sources[s].src.clone();
        let from = next.load(Ordering::Relaxed);
        let to = end.load(Ordering::Relaxed);
        let (off, _) = self.cache.piece_range(from);
        let (_, stop) = self.cache.piece_range(to - 1);
        let started = Instant::now();
        let mut received = 0u64;
        let mut store_failed = false;
        let (manifest, partial_ok) = {
            let st = lock(&self.state);
            (st.manifest.clone(), self.partial_serving(&st))
        };
        // The first piece this request sent that failed its manifest hash.
        let mut corrupt: Option<usize> = None;
        let result: Result<(), FetchError> = async {
            let mut stream = tokio::time::timeout(self.cfg.stall_timeout, src.get(off, stop - off))
                .await
                .map_err(|_| FetchError::Stalled(self.cfg.stall_timeout))??;
            let mut piece = from;
            let mut buf: Vec<u8> = Vec::with_capacity(usize::try_from(self.cache.piece_size).unwrap_or(0));
            // Bytes of the current piece already written to the data file.
            let mut written = 0usize;
            while piece < end.load(Ordering::Relaxed) {
                let want = usize::try_from(self.piece_len(piece)).unwrap_or(0);
                while buf.len() < want {
                    let next_chunk = tokio::time::timeout(self.cfg.stall_timeout, stream.next())
                        .await
                        .map_err(|_| FetchError::Stalled(self.cfg.stall_timeout))?;
                    if self.obsolete(piece, end.load(Ordering::Relaxed)) {
                        // Every piece left was landed by other requests (hedges): stop
                        // receiving (the connection is dropped with the stream). A source
                        // this slow is backed off, not handed the next demanded piece.
                        let secs = progress.started.elapsed().as_secs_f64();
                        let rate = progress.got.load(Ordering::Relaxed) as f64 / secs.max(1e-3);
                        if secs > SILENT_HEDGE_AFTER.as_secs_f64() && rate < DRIP_BPS {
                            #[allow(clippy::cast_possible_truncation)]
                            return Err(FetchError::TooSlow(rate as u64));
                        }
                        return Ok(());
                    }
                    match next_chunk {
                        Some(Ok(chunk)) => {
                            if let Some(l) = &self.sources[s].limiter {
                                l.pace(chunk.len()).await;
                            }
                            if progress.got.fetch_add(chunk.len() as u64, Ordering::Relaxed) == 0 {
                                let ms = progress.started.elapsed().as_secs_f64() * 1e3;
                                let mut ss = lock(&self.sources[s].stats);
                                ss.ttfb_ms = if ss.ttfb_ms == 0.0 { ms } else { 0.7 * ss.ttfb_ms + 0.3 * ms };
                            }
                            let ms = u64::try_from(progress.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                            progress.progress_ms.store(ms, Ordering::Relaxed);
                            buf.extend_from_slice(&chunk);
                        }
                        Some(Err(e)) => return Err(e),
                        None => {
                            return Err(FetchError::ShortBody { got: received + buf.len() as u64, want: stop - off });
                        }
                    }
                    let upto = buf.len().min(want);
                    if partial_ok && upto > written && self.write_partial(id, piece, written, &buf[written..upto]) {
                        written = upto;
                    }
                }
                // A chunk may straddle pieces: keep what belongs to the next one.
                let rest = buf.split_off(want);
                received += want as u64;
                if let Some(m) = &manifest
                    && !m.check_piece(piece, &buf)
                {
                    // Refused, and the source is struck; the rest of its run is still checked
                    // piece by piece (each bad piece is a strike, good ones are kept).
                    self.refuse(s, piece);
                    corrupt.get_or_insert(piece);
                    if self.rep.is_banned(src.identity()) {
                        return Err(FetchError::Banned(src.identity().to_string()));
                    }
                    buf = rest;
                    written = 0;
                    piece += 1;
                    next.store(piece, Ordering::Relaxed);
                    continue;
                }
                if let Err(e) = self.land(piece, &buf, written == want, s, manifest.is_some()) {
                    // The cache, not the source, failed; the source is not blamed. At its
                    // bound with nothing evictable yet, fetching pauses briefly (readers move
                    // on and unpin pieces); a failing disk (ENOSPC, I/O) fails readers at once.
                    store_failed = true;
                    let mut st = lock(&self.state);
                    if matches!(e, CacheError::Full { .. }) {
                        tracing::debug!("{}: cache full; pausing fetches: {e}", self.key);
                        st.paused_until = Some(Instant::now() + CACHE_FULL_PAUSE);
                    } else {
                        tracing::error!("{}: store piece {piece} in the cache: {e}", self.key);
                        st.cache_error = Some(e.to_string());
                    }
                    return Ok(());
                }
                buf = rest;
                written = 0;
                piece += 1;
                next.store(piece, Ordering::Relaxed);
            }
            match corrupt {
                Some(p) => Err(FetchError::Corrupt(p)),
                None => Ok(()),
            }
        }
        .await;
        let elapsed = started.elapsed().as_secs_f64().max(1e-3);
        if let Some(l) = &self.sources[s].limiter {
            l.finished();
        }
        {
            let mut ss = lock(&self.sources[s].stats);
            ss.inflight = ss.inflight.saturating_sub(1);
            ss.bytes += received;
            // Speed from every byte that arrived, complete pieces or not (a source that
            // drips never completes one, and must still be measured as slow).
            let arrived = match &result {
                Ok(()) | Err(FetchError::TooSlow(_)) => progress.got.load(Ordering::Relaxed),
                // A failed request's speed counts only for what it delivered whole.
                Err(_) => received,
            };
            if arrived > 0 || elapsed > 1.0 {
                let rate = arrived as f64 / elapsed;
                ss.bps = if ss.bps == 0.0 { rate } else { 0.7 * ss.bps + 0.3 * rate };
            }
            match &result {
                Ok(()) if store_failed => {}
                Ok(()) => {
                    ss.fails_in_row = 0;
                    ss.backoff_until = None;
                }
                // Lying is dealt with by strikes (a ban), not by backing off: the source is
                // not asked for the pieces it got wrong, and may serve others meanwhile.
                Err(e @ FetchError::Corrupt(_)) => ss.last_error = Some(e.clone()),
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, FetchError::Stalled(_)) {
                        self.stats.stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    ss.fails_in_row += 1;
                    ss.last_error = Some(e.clone());
                    let backoff = Duration::from_millis(250u64 << ss.fails_in_row.min(6));
                    ss.backoff_until = Some(Instant::now() + backoff);
                    if e.is_permanent()
                        || ss.fails_in_row >= MAX_FAILS
                        || matches!(e, FetchError::NoRanges) && from != 0
                    {
                        tracing::warn!("{}: giving up on {} for this key: {e}", self.key, src.name());
                        ss.dead = Some(e.clone());
                    } else {
                        tracing::info!("{}: {} failed ({e}); retrying elsewhere", self.key, src.name());
                    }
                }
            }
        }
        {
            let mut st = lock(&self.state);
            st.requests.remove(&id);
            let last = end.load(Ordering::Relaxed);
            for i in from..last.max(from) {
                if st.pieces[i] == Piece::InFlight(id) {
                    st.set(i, Piece::Missing);
                    st.claims.remove(&i);
                    // What had arrived of it is no longer vouched for by a running request.
                    st.partial.remove(&i);
                }
            }
        }
        // Wake readers so that they notice a source that gave up.
        self.landed.notify_waiters();
        self.schedule();
    }

    /// Stores a piece that arrived (unless another copy landed first) and wakes readers.
    /// Writes bytes that arrived for piece `i` of request `id` at `at` within the piece, if a
    /// reader waits on that piece and the request still owns it. Returns whether it wrote.
    fn write_partial(&self, id: u64, i: usize, at: usize, bytes: &[u8]) -> bool {
        let mut st = lock(&self.state);
        if st.pieces[i] != Piece::InFlight(id) || !st.demand.contains(&i) {
            return false;
        }
        let (start, _) = self.cache.piece_range(i);
        // Written under the state lock, so a copy landing from another request (a hedge)
        // can never be overwritten after it is committed.
        if self.cache.write_at(start + at as u64, bytes).is_err() {
            return false;
        }
        st.partial.insert(i, (at + bytes.len()) as u64);
        drop(st);
        self.landed.notify_waiters();
        true
    }

    /// Whether every piece of `from..to` is present already.
    fn obsolete(&self, from: usize, to: usize) -> bool {
        let st = lock(&self.state);
        (from..to).all(|i| st.pieces[i] == Piece::Present)
    }

    /// Source `s` sent piece `i` and it failed its manifest hash: a strike, and `s` is not
    /// asked for that piece again.
    fn refuse(&self, s: usize, i: usize) {
        self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
        let src = &self.sources[s].src;
        let why = format!("piece {i} of {} from {} fails its manifest hash", self.key, src.name());
        if self.rep.strike(src.identity(), &why) {
            lock(&self.sources[s].stats).dead = Some(FetchError::Banned(src.identity().to_string()));
        }
        lock(&self.state).refused.entry(i).or_default().push(s);
    }

    /// Stores a piece that arrived (unless another copy landed first) and wakes readers.
    /// `written`: the bytes are already in the data file (written as they arrived); `s`: the
    /// source that sent it; `checked`: it matched the manifest.
    fn land(&self, i: usize, data: &[u8], written: bool, s: usize, checked: bool) -> Result<(), CacheError> {
        if lock(&self.state).pieces[i] == Piece::Present {
            return Ok(());
        }
        let need = data.len() as u64;
        tokio::task::block_in_place(|| {
            if let Err(e) = self.store.reserve(need) {
                if !e.is_no_space() || !self.evict_pieces(i, need.max(MAX_RUN_BYTES)) {
                    return Err(e);
                }
                self.store.reserve(need)?;
            }
            Ok(())
        })?;
        let persist_due = {
            let mut st = lock(&self.state);
            if st.pieces[i] == Piece::Present {
                // Another copy landed meanwhile: the room reserved for this one is not used.
                self.store.released(need);
                return Ok(());
            }
            // The partial bytes of this piece are this request's only if it still owns it.
            let own_partial = written && matches!(st.pieces[i], Piece::InFlight(_)) && st.partial.contains_key(&i);
            if !own_partial {
                let (start, _) = self.cache.piece_range(i);
                self.cache.write_at(start, data)?;
            }
            let due = self.cache.commit_piece(i, data)?;
            st.set(i, Piece::Present);
            st.origin.insert(i, s);
            if checked {
                st.manifest_ok[i] = true;
            }
            st.partial.remove(&i);
            st.last_landing = Instant::now();
            st.cache_error = None;
            due
        };
        self.stats.bytes_fetched.fetch_add(need, Ordering::Relaxed);
        {
            let mut l = lock(&self.landings);
            let now = Instant::now();
            l.push_back((now, need));
            while l.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
                l.pop_front();
            }
        }
        if persist_due {
            tokio::task::block_in_place(|| self.cache.persist())?;
            // A claim is kept until the record names the piece: released earlier, another
            // process could claim a piece that is on disk but not yet in the record.
            self.release_landed_claims(&mut lock(&self.state));
        }
        self.landed.notify_waiters();
        Ok(())
    }

    /// Frees room in a full cache from this key itself: drops present pieces no reader waits
    /// on and outside the readahead window, farthest from piece `near` first. Returns whether
    /// anything was freed. (Keys not open anywhere are evicted whole by the store first.)
    fn evict_pieces(&self, near: usize, want: u64) -> bool {
        let mut st = lock(&self.state);
        let from = st.window_start;
        let to = from.saturating_add(st.window_pieces);
        let mut victims: Vec<usize> = (0..st.pieces.len())
            .filter(|&i| {
                st.pieces[i] == Piece::Present
                    && !st.demand.contains(&i)
                    && !st.pins.contains_key(&i)
                    && !(from..to).contains(&i)
                    && i != near
            })
            .collect();
        victims.sort_by_key(|&i| std::cmp::Reverse(i.abs_diff(near)));
        let mut freed = 0u64;
        for i in victims {
            if freed >= want {
                break;
            }
            if self.cache.drop_piece(i).is_ok() {
                st.set(i, Piece::Missing);
                freed += self.piece_len(i);
                self.stats.evicted_pieces.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(st);
        if freed > 0 {
            self.store.released(freed);
            tracing::debug!("{}: cache full; dropped {freed} bytes of pieces far from the readers", self.key);
        }
        freed > 0
    }

    fn maybe_verify(self: &Arc<Self>, st: &mut State) {
        if st.verify_started || self.cache.is_verified() {
            return;
        }
        st.verify_started = true;
        let had_manifest = st.manifest.is_some();
        let this = self.clone();
        self.rt.spawn(async move {
            this.verify_whole(had_manifest).await;
            this.landed.notify_waiters();
        });
    }

    /// Verifies the complete key; without a manifest, a mismatch is resolved by comparing
    /// pieces across sources ([`blame`]), and a match makes the key's manifest.
    async fn verify_whole(self: &Arc<Self>, had_manifest: bool) {
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            let _ = this.cache.persist();
            crate::manifest::whole::verify_file_with_manifest(&this.key, this.cache.data_file(), this.cache.piece_size)
        })
        .await;
        let Ok((outcome, manifest)) = res else { return };
        match outcome {
            crate::annex::backend::Outcome::Match => self.verified(manifest, had_manifest).await,
            crate::annex::backend::Outcome::Unverifiable(why) => {
                tracing::info!("{}: complete; not verifiable ({why})", self.key);
            }
            crate::annex::backend::Outcome::Mismatch(got) => {
                self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                let resolved = if had_manifest {
                    Err("every piece matched the piece manifest, so the manifest itself is wrong".to_string())
                } else {
                    self.resolve().await
                };
                match resolved {
                    Ok(m) => {
                        tracing::warn!("{}: bad pieces replaced; content now matches its key", self.key);
                        self.verified(Some(m), false).await;
                    }
                    Err(why) => self.quarantine(&format!("hash {got}; {why}")),
                }
            }
            crate::annex::backend::Outcome::Io(e) => tracing::warn!("{}: verify: {e}", self.key),
        }
    }

    fn quarantine(&self, why: &str) {
        let why = format!(
            "content of {} does not match its key ({why}); sources: {}; quarantined",
            self.key,
            self.sources_report()
        );
        tracing::error!("{why}");
        self.cache.quarantine(&why);
    }

    async fn verified(self: &Arc<Self>, manifest: Option<Manifest>, had_manifest: bool) {
        self.stats.verified.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.cache.mark_verified() {
            tracing::warn!("{}: record the verification: {e}", self.key);
        }
        tracing::info!("{}: complete and verified", self.key);
        let Some(m) = manifest.filter(|_| !had_manifest) else { return };
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::manifest::cached::save(&this.store, &m) {
                tracing::warn!("{}: keep its piece manifest in the cache: {e}", this.key);
            }
            if let Some(hook) = &this.cfg.on_verified {
                (hook.0)(&m);
            }
            this.set_manifest(m);
        })
        .await;
    }
}

impl Drop for KeyFetch {
    fn drop(&mut self) {
        for r in self.source_reports() {
            tracing::debug!(
                "{}: {} sent {} bytes in {} requests ({:.1} MB/s measured){}",
                self.key,
                r.name,
                r.bytes,
                r.requests,
                r.bps / 1e6,
                r.dead.map(|d| format!(", gave up: {d}")).unwrap_or_default()
            );
        }
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
        let l = lock(&self.landings);
        let now = Instant::now();
        let sum: u64 = l.iter().filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW).map(|(_, n)| n).sum();
        sum as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// Whether the whole key was verified.
    pub fn is_verified(&self) -> bool {
        self.cache.is_verified()
    }

    /// Whether every piece is in the cache.
    pub fn is_complete(&self) -> bool {
        self.cache.is_complete()
    }

    /// Waits until the whole-key verification (if any) has run.
    pub async fn wait_verified(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.cache.is_verified() || self.cache.poisoned().is_some() {
                return self.cache.is_verified();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn poisoned(&self) -> Option<String> {
        self.cache.poisoned()
    }

    /// Copies the complete content out of the cache (after verification).
    pub fn copy_to(&self, out: &mut impl std::io::Write) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < self.cache.size {
            let n = self.cache.data_file().read_at(&mut buf, off)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cache data file is short"));
            }
            let n = usize::try_from((self.cache.size - off).min(n as u64)).unwrap_or(n);
            out.write_all(&buf[..n])?;
            off += n as u64;
        }
        Ok(off)
    }
}
