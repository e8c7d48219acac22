//! The fetcher: turns "a reader needs bytes [a, b) of key K" into pieces in the cache, fetched
//! by ranges from every source of K at once, the bytes a reader waits on first.
//!
//! A [`Fetcher`] keeps one [`KeyFetch`] per key being read in this process. A `KeyFetch`
//! keeps each piece in a state of the piece state machine (`piece.rs`), the requests running,
//! and per source its figures (`stats.rs`). The files, one job each:
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | [`FetchConfig`], [`VerifyMode`], the constants |
//! | `error.rs` | [`ReadError`] and the errors of verification and blame |
//! | `piece.rs` | the piece state machine, [`PieceIndex`] |
//! | `stats.rs` | per-source figures, [`SourceId`], [`Stats`], reports |
//! | `scheduler.rs` | pure: from pieces, requests and source figures to actions |
//! | `request.rs` | carrying the actions out; the request tasks |
//! | `land.rs` | storing what arrived; making room in a full cache |
//! | `read.rs` | [`KeyFetch::read`]: demand, readahead window, waiting, serving |
//! | `direct.rs` | a cold seek's bytes asked of one source exactly, beside its pieces |
//! | `streams.rs` | the readers' streams through a key, each with its readahead window |
//! | `verify.rs` | whole-key verification, quarantine, the manifest made on a match |
//! | `blame.rs` | strikes and bans; settling a whole-key mismatch across sources |
//! | `vouched.rs` | a manifest a peer vouched for (stream mode): doubted, confirmed or proven wrong by the key |
//! | `limits.rs` | per-identity limits shared by every key |
//!
//! Scheduling runs whenever something changes and every [`TICK`](config::TICK): the state
//! lock is taken, a board is built, `scheduler::plan` decides, and the actions are carried
//! out under the same lock. A failed request returns its pieces to `Missing`; the source
//! backs off and is given up for this key after [`MAX_FAILS`] failures in a row or a permanent
//! error. Readers fail (EIO) only when no source is left, when nothing lands for
//! [`READ_DEADLINE`], or when the cache or the whole-key verification they wait for fails.
//!
//! Memory: a request holds one piece in memory at a time; requests are bounded by sources ×
//! ([`MAX_INFLIGHT`] + [`DEMAND_EXTRA`]), so memory does not grow with the file size.
//!
//! When the last piece lands the whole key is verified with its backend hash; on a mismatch
//! the cached data is quarantined and every later read fails.
//!
//! Lock order: `KeyFetch::state` → `SourceSlot::stats` → `CachedKey` state (`crate::pieces`);
//! `landings` and `Reputation`'s map are leaves. No lock is held across an `.await`.

pub mod blame;
mod config;
mod direct;
mod error;
mod land;
pub mod limits;
mod piece;
mod read;
mod request;
mod scheduler;
mod stats;
mod streams;
mod verify;
mod vouched;

pub use blame::Reputation;
pub use config::{
    CROWDED, DEMAND_EXTRA, FetchConfig, INITIAL_WINDOW_BYTES, MAX_FAILS, MAX_INFLIGHT, MAX_WINDOW_BYTES, OnVerified,
    READ_DEADLINE, VerifyMode,
};
pub use error::{Doubt, ReadError, ResolveError, StrictRefusal, UnknownVerifyMode, VerifyError};
pub use piece::{PieceIndex, RequestId};
pub use stats::{SourceId, SourceReport, Stats};

use crate::annex::Key;
use crate::manifest::Manifest;
use crate::pieces::{CacheError, CachedKey, PieceClaim, PieceStore};
use crate::source::remote::RangeSource;
use piece::{Piece, PieceTable};
use stats::{Landings, SourceStats};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

struct SourceSlot {
    src: Arc<dyn RangeSource>,
    /// Shared with every key reading from the same identity: its limits (if any), and its
    /// requests in flight, every key's together (see [`CROWDED`]).
    limiter: Arc<limits::Limiter>,
    stats: Mutex<SourceStats>,
}

/// A running request, shared with its task through atomics (the task advances `next`; a
/// steal or a preemption lowers `end`).
struct Request {
    source: SourceId,
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

/// The whole-key verification of this process.
#[derive(Default)]
struct Verification {
    started: bool,
    /// Why it could not conclude (readers waiting for it fail with this; a new read tries
    /// again).
    failed: Option<Arc<VerifyError>>,
}

/// What a key's fetch knows, under one lock.
struct State {
    pieces: PieceTable,
    /// Pieces readers are blocked on.
    demand: BTreeSet<PieceIndex>,
    /// The readers' streams and their readahead windows.
    streams: streams::Streams,
    requests: BTreeMap<RequestId, Request>,
    next_req: RequestId,
    hedged: BTreeSet<PieceIndex>,
    claims: HashMap<PieceIndex, PieceClaim>,
    /// Pieces a reader is reading now (count of readers).
    pins: HashMap<PieceIndex, u32>,
    /// Why the cache could not store a piece (e.g. a full disk), until one is stored again.
    cache_error: Option<Arc<CacheError>>,
    /// No new requests before this (the cache is at its bound with nothing to evict yet).
    paused_until: Option<Instant>,
    /// Bytes at the start of an in-flight piece already in the data file (stream mode: a
    /// reader blocked on them is served before the whole piece is in).
    partial: HashMap<PieceIndex, u64>,
    last_landing: Instant,
    verify: Verification,
    /// The piece manifest (regrouped to the cache's piece size), when one is known.
    manifest: Option<Arc<Manifest>>,
    /// A reader waits for the whole key (strict mode without a manifest): every piece is
    /// wanted.
    want_all: bool,
    /// Pieces wanted in the background (a swarm node keeping its share), after readers.
    background: BTreeSet<PieceIndex>,
    /// Which source sent each piece landed by this process (for blame).
    origin: HashMap<PieceIndex, SourceId>,
    /// Sources that sent a piece that failed its check, per piece: not asked for it again.
    refused: HashMap<PieceIndex, Vec<SourceId>>,
    /// The manifest in force (or set aside) when a peer vouched for it.
    vouched: Option<vouched::Vouched>,
}

impl State {
    /// Whether pieces `from..to` are wanted in the background only: no reader waits for any
    /// of them or reads ahead into them (a request for them asks to be served after readers).
    fn only_background(&self, from: PieceIndex, to: PieceIndex) -> bool {
        if self.want_all || self.background.is_empty() {
            return false;
        }
        let windows = self.streams.windows(true);
        let read_ahead = |i: PieceIndex| windows.iter().any(|&(w, n)| i >= w && i.0 - w.0 < n);
        PieceIndex::range(from, to).all(|i| self.background.contains(&i) && !self.demand.contains(&i) && !read_ahead(i))
    }

    fn new(pieces: Vec<Piece>, piece_size: u64, window_pieces: usize) -> State {
        State {
            pieces: PieceTable::new(pieces),
            demand: BTreeSet::new(),
            streams: streams::Streams::new(piece_size, window_pieces),
            requests: BTreeMap::new(),
            next_req: RequestId(1),
            hedged: BTreeSet::new(),
            claims: HashMap::new(),
            pins: HashMap::new(),
            cache_error: None,
            paused_until: None,
            partial: HashMap::new(),
            last_landing: Instant::now(),
            verify: Verification::default(),
            manifest: None,
            want_all: false,
            background: BTreeSet::new(),
            origin: HashMap::new(),
            refused: HashMap::new(),
            vouched: None,
        }
    }

    /// Invariants between the pieces and the requests, checked in debug builds whenever
    /// scheduling has run: a piece in flight belongs to a running request, and a hedge owns
    /// no piece.
    fn debug_check(&self) {
        if cfg!(debug_assertions) && self.pieces.len() <= 1 << 14 {
            for i in self.pieces.indices() {
                if let Piece::InFlight(r) = self.pieces.get(i) {
                    debug_assert!(
                        self.requests.get(&r).is_some_and(|r| !r.hedge),
                        "piece {i} in flight on request {r}, which is not a running request"
                    );
                }
            }
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
    /// Bytes landed recently, for the rate `status` shows.
    landings: Mutex<Landings>,
    /// A persist of the record runs in the background ([`KeyFetch::persist_later`]).
    persisting: std::sync::atomic::AtomicBool,
}

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
    limiters: Mutex<HashMap<String, Arc<limits::Limiter>>>,
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

    /// The limiter of source identity `id` (without limits it only counts its requests).
    fn limiter(&self, id: &str) -> Arc<limits::Limiter> {
        lock(&self.limiters)
            .entry(id.to_string())
            .or_insert_with(|| {
                let l = self.cfg.limits.as_ref().map(|f| (f.0)(id)).unwrap_or_default();
                if !l.is_none() {
                    tracing::debug!("{id}: limited to {l:?}");
                }
                Arc::new(limits::Limiter::new(l))
            })
            .clone()
    }

    /// The runtime its requests run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
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
        lock(&self.keys).get(&key.to_bytes()).and_then(Weak::upgrade).is_some_and(|k| k.has_manifest())
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
        let cache = self.store.open_key(key)?;
        let pieces: Vec<Piece> =
            (0..cache.piece_count()).map(|i| if cache.has(i) { Piece::Present } else { Piece::Missing }).collect();
        let window_pieces = usize::try_from(INITIAL_WINDOW_BYTES / cache.piece_size).unwrap_or(1).max(1);
        let piece_size = cache.piece_size;
        let kf = Arc::new(KeyFetch {
            key: key.clone(),
            cache,
            store: self.store.clone(),
            sources: sources
                .into_iter()
                .map(|src| SourceSlot {
                    limiter: self.limiter(src.identity()),
                    src,
                    stats: Mutex::new(SourceStats::default()),
                })
                .collect(),
            state: Mutex::new(State::new(pieces, piece_size, window_pieces)),
            landed: tokio::sync::Notify::new(),
            stats: self.stats.clone(),
            rep: self.reputation.clone(),
            landings: Mutex::new(Landings::default()),
            persisting: std::sync::atomic::AtomicBool::new(false),
            rt: self.rt.clone(),
            cfg: self.cfg.clone(),
        });
        let weak = Arc::downgrade(&kf);
        self.rt.spawn(async move {
            loop {
                tokio::time::sleep(config::TICK).await;
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

    fn piece_range(&self, i: PieceIndex) -> (u64, u64) {
        self.cache.piece_range(i.0)
    }

    fn piece_len(&self, i: PieceIndex) -> u64 {
        let (a, b) = self.piece_range(i);
        b - a
    }

    fn source(&self, s: SourceId) -> &SourceSlot {
        &self.sources[s.0]
    }

    fn source_ids(&self) -> impl Iterator<Item = SourceId> + use<> {
        (0..self.sources.len()).map(SourceId)
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

    /// Whether source `s` may be asked for anything (not given up, not banned).
    fn source_alive(&self, s: SourceId) -> bool {
        blame::usable(&self.rep, &*self.source(s).src) && lock(&self.source(s).stats).dead.is_none()
    }

    /// Whether source `s` holds piece `i`.
    fn holds(&self, s: SourceId, i: PieceIndex) -> bool {
        let (a, b) = self.piece_range(i);
        self.source(s).src.has_range(a, b - a)
    }

    /// Whether source `s` may be asked for piece `i` (not refused for it, not banned, not
    /// given up). A source without ranges may: it streams the key from the start.
    fn may_ask(&self, st: &State, s: SourceId, i: PieceIndex) -> bool {
        !st.refused.get(&i).is_some_and(|v| v.contains(&s)) && self.holds(s, i) && self.source_alive(s)
    }

    /// Drops the claims of pieces the record on disk names.
    fn release_landed_claims(&self, st: &mut State) {
        let pieces = &st.pieces;
        st.claims.retain(|&i, _| !(pieces.is(i, Piece::Present) && self.cache.is_durable(i.0)));
    }

    /// Housekeeping, every tick: persisting what landed, pieces of other processes, and
    /// scheduling (backoffs end, hedges fall due).
    fn tick(self: &Arc<Self>) {
        // Landed pieces are made durable and visible to other processes at least every tick
        // while anything waits on them.
        let holding = {
            let st = lock(&self.state);
            st.claims.keys().any(|&i| st.pieces.is(i, Piece::Present))
        };
        if holding && self.cache.unpersisted() > 0 {
            self.persist_later();
        } else if holding {
            self.release_landed_claims(&mut lock(&self.state));
        }
        // Pieces another process was fetching: landed (reload) or free to claim again.
        if lock(&self.state).pieces.any(Piece::Elsewhere) {
            self.cache.reload();
            let mut st = lock(&self.state);
            let mut landed = false;
            for i in st.pieces.indices() {
                if st.pieces.is(i, Piece::Elsewhere) {
                    let new = if self.cache.has(i.0) {
                        landed = true;
                        Piece::Present
                    } else {
                        Piece::Missing
                    };
                    st.pieces.set(i, new);
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

    /// Wants `pieces` in the background: fetched after readers (see `scheduler`), for as long
    /// as this fetch lives or until wanted otherwise. Returns how many of them are present.
    pub fn want_background(self: &Arc<Self>, pieces: &std::collections::BTreeSet<usize>) -> usize {
        let present = {
            let mut st = lock(&self.state);
            // No reader yet: no readahead either (a reader's first read sets its window).
            st.streams.no_head_window();
            st.background = pieces.iter().filter(|&&i| i < st.pieces.len()).map(|&i| PieceIndex(i)).collect();
            st.background.iter().filter(|&&i| st.pieces.is(i, Piece::Present)).count()
        };
        self.schedule();
        present
    }

    /// Whether any of `pieces` not in the cache yet is being fetched, or may be asked of a
    /// source (one not given up that holds it). False: this fetch cannot get them (its
    /// sources are the holders it was opened with); a fetch opened afresh might.
    pub fn can_progress(&self, pieces: &std::collections::BTreeSet<usize>) -> bool {
        let st = lock(&self.state);
        pieces.iter().filter(|&&i| i < st.pieces.len()).map(|&i| PieceIndex(i)).any(|i| {
            st.pieces.is(i, Piece::Elsewhere)
                || matches!(st.pieces.get(i), Piece::InFlight(_))
                || (st.pieces.is(i, Piece::Missing) && self.source_ids().any(|s| self.may_ask(&st, s, i)))
        })
    }

    /// Whether piece `i` is in the cache.
    pub fn has_piece(&self, i: usize) -> bool {
        self.cache.has(i)
    }

    /// Whether piece `i` is in flight behind other pieces of its request (a cold seek to it
    /// would wait for them: it is read directly, `direct.rs`).
    pub fn in_flight_behind_others(&self, i: usize) -> bool {
        self.far_in_flight(&lock(&self.state), PieceIndex(i))
    }

    /// The piece size of the key in the cache.
    pub fn piece_size(&self) -> u64 {
        self.cache.piece_size
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
