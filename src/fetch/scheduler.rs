//! The scheduler, pure: from the pieces' states, the requests running, the sources' figures
//! and the time (a [`Board`]) to a list of [`Action`]s. No I/O, no locks, no clock: the
//! fetcher builds the board under its state lock and carries the actions out
//! (`request.rs`); tests build boards by hand.
//!
//! Which pieces are wanted, in order ([`wanted`]): pieces readers are blocked on (`demand`),
//! lowest first; then the readahead windows, one per stream of reads (`read.rs`), sequential
//! streams before a lone seek's (every piece when a strict reader waits for the whole key);
//! last the **background** pieces (a swarm node keeping its share, see
//! `crate::swarm::keep`). Background pieces come after readers, never ahead of them: one is
//! asked for only while no reader of the key is blocked, only of a source with
//! [`BACKGROUND_RESERVE`] requests of room left under its limiter (the room readers of any key
//! may still need) and fewer than [`MAX_INFLIGHT`] requests, and one piece per request (a reader
//! arriving waits for at most one piece on that source).
//!
//! Sources choose fastest first. Each source that is not dead, not backing off, under its
//! limiter's room and under [`MAX_INFLIGHT`] requests (plus [`DEMAND_EXTRA`] while a reader is
//! blocked) gets, in turn:
//! - the first wanted missing piece it may be asked for, and a run after it sized to its
//!   measured throughput ([`TARGET_REQUEST_SECS`], or [`START_COST_RUNS`] times its wait for
//!   a first byte where starting a request is slow; one piece while unmeasured, for a fast
//!   first byte). Demanded pieces are **spread**: a run takes at most its share of the
//!   demanded pieces still missing, and starting one **preempts** the source's readahead
//!   requests (they finish the piece they receive and give the rest back). Near the end of
//!   what is wanted a run takes at most its share of what is missing (the **end game**), so
//!   the last pieces are asked of several sources rather than left in one long run;
//! - a source whose starts are costly (`costly_start`: an ssh remote, a session and a GET
//!   per new range, a transfer going on past its range for free) instead takes long runs
//!   from the first request on (the longest while unmeasured, at least [`COSTLY_RUN_SECS`]
//!   of its speed after), from the back of the readers' window while a quick source reads
//!   its front, each where one of its transfers stands when it can; it leaves demanded
//!   pieces and stretches shorter than [`COSTLY_MIN_RUN_BYTES`] to quick sources while
//!   those could take them, and its runs are never preempted;
//! - when nothing is missing: a **steal** of the back half of the largest unstarted remainder
//!   of another source's request that would take longer than [`STEAL_IF_LEFT_SECS`](super::config::STEAL_IF_LEFT_SECS) there,
//!   or, from a source whose starts are costly (its transfer parks when cut), whenever an
//!   idle thief would receive its half sooner than the victim the whole (`scheduler_steal.rs`);
//! - a **hedge** of a demanded piece whose request stopped delivering (silent for
//!   [`SILENT_HEDGE_AFTER`](super::config::SILENT_HEDGE_AFTER), or quiet for [`HEDGE_AFTER`](super::config::HEDGE_AFTER), or dripping far slower than this
//!   source could): a second request for it, whichever copy lands first is kept. A reader
//!   stuck that way comes before readahead.
//!
//! A source [`SLOW_FACTOR`] times slower than the best working one is only probed, once per
//! [`PROBE_EVERY`]: it would hold pieces readers soon wait on.
//!
//! A source that does not serve ranges (`ranges == false`: a web server that answers every
//! request with the whole object) streams the key from its start. It gets **one** request at a
//! time: a run from the first missing piece it may serve (the request reads from byte 0 and
//! skips what comes before, `request.rs`) to the end of the key, however far that is and
//! whatever is wanted now: asking again from 0 would repeat the whole download. It neither
//! steals nor hedges (either would restart the stream); range-capable sources steal the back
//! of its run as of any other, which closes its stream at the split. Its request claims
//! missing pieces beyond its run as the stream reaches them (`request.rs`).
//!
//! The plan assumes every claim succeeds; the fetcher stops carrying it out where one does
//! not (the piece is held by another process, or landed there) and plans again.

use super::config::{
    DEMAND_EXTRA, MAX_INFLIGHT, MAX_RUN_BYTES, PROBE_EVERY, SLOW_FACTOR, START_COST_RUNS, TARGET_REQUEST_SECS,
};
use super::piece::{Piece, PieceIndex, PieceTable, RequestId};
use super::stats::SourceId;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// A run on a source whose starts are costly takes at least this long at its measured speed:
/// its first measurements are low (a run timed at [`super::config::MIN_MEASURED`]), and runs
/// sized by them would each need a new start. Steals share out what is left of a long run
/// at the end of a read ([`Planner::steal_pays`]).
pub const COSTLY_RUN_SECS: f64 = 2.0;

/// A source whose starts are costly takes no readahead run shorter than this while quick
/// sources are there to read the window (see `Planner::one`).
pub const COSTLY_MIN_RUN_BYTES: u64 = 8 << 20;

/// Requests of a limited source's room that background pieces leave to readers.
pub const BACKGROUND_RESERVE: u32 = 1;

/// A source as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct SourceView {
    /// Measured throughput (bytes/s); 0 until measured.
    pub bps: f64,
    /// Measured wait for a request's first byte (seconds); 0 until measured.
    pub ttfb: f64,
    pub inflight: u32,
    /// Given up for this key, or banned.
    pub dead: bool,
    pub backoff_until: Option<Instant>,
    pub fails_in_row: u32,
    pub last_probe: Option<Instant>,
    /// How many more requests its limiter lets start (`None`: no limit).
    pub room: Option<u32>,
    /// It serves byte ranges (else it streams the key from byte 0: one whole-object run).
    pub ranges: bool,
    /// Starting a request is costly, going on past one is free (`RangeSource::costly_start`):
    /// it starts slowly ([`Planner::starts_slowly`]) before it is measured.
    pub costly_start: bool,
    /// Pieces where a transfer of it already under way stands (a parked ssh session): a run
    /// starting there costs no new start (`RangeSource::resumes_at`).
    pub resume: Vec<PieceIndex>,
}

/// A running request as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub id: RequestId,
    pub source: SourceId,
    /// The piece it is receiving now.
    pub next: PieceIndex,
    /// One past the last piece it may deliver.
    pub end: PieceIndex,
    pub started: Instant,
    pub hedge: bool,
    /// Bytes received so far.
    pub got: u64,
    /// When bytes last arrived (`started` before any did).
    pub last_progress: Instant,
}

/// Everything a scheduling decision depends on.
pub struct Board<'a> {
    pub pieces: &'a PieceTable,
    pub piece_size: u64,
    pub demand: &'a BTreeSet<PieceIndex>,
    pub hedged: &'a BTreeSet<PieceIndex>,
    /// Sources that sent a piece that failed its check: not asked for that piece again.
    pub refused: &'a HashMap<PieceIndex, Vec<SourceId>>,
    /// The readahead windows (first piece, length) of the readers' streams, by priority.
    pub windows: Vec<(PieceIndex, usize)>,
    /// Every piece is wanted (a strict reader waits for the whole key).
    pub want_all: bool,
    /// Pieces wanted in the background, after readers (see the module doc).
    pub background: &'a BTreeSet<PieceIndex>,
    pub sources: Vec<SourceView>,
    /// In order of their ids.
    pub requests: Vec<RequestView>,
    /// The id the next request will get.
    pub next_id: RequestId,
    /// Whether a source holds a piece (a peer may hold only some ranges).
    pub holds: &'a dyn Fn(SourceId, PieceIndex) -> bool,
}

/// What the fetcher is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A slow source is given a request now and then: remember when.
    Probe { source: SourceId },
    /// Request `id` on `source` for pieces `from..to` (all missing), claiming them first.
    Start { id: RequestId, source: SourceId, from: PieceIndex, to: PieceIndex },
    /// Request `victim` stops at `split`: pieces `split..end` go back to missing (a `Start`
    /// for the thief follows when it may take any).
    Steal { victim: RequestId, split: PieceIndex, end: PieceIndex },
    /// A source's readahead request finishes the piece it receives (`keep` is one past it) and
    /// gives `keep..end` back, for a read blocked on the same source.
    Preempt { request: RequestId, keep: PieceIndex, end: PieceIndex },
    /// Request `id` on `source` for demanded `piece`, already in flight on another source.
    Hedge { id: RequestId, source: SourceId, piece: PieceIndex },
}

/// Pieces wanted now, in priority order: demanded ones, the readahead windows in their order
/// (each piece once), then the background pieces.
pub fn wanted(b: &Board<'_>) -> Vec<PieceIndex> {
    let mut out = wanted_by_readers(b);
    let readers: BTreeSet<PieceIndex> = out.iter().copied().collect();
    out.extend(b.background.iter().copied().filter(|i| i.0 < b.pieces.len() && !readers.contains(i)));
    out
}

/// Pieces readers want now: demanded ones, then the readahead window.
fn wanted_by_readers(b: &Board<'_>) -> Vec<PieceIndex> {
    let n = b.pieces.len();
    let mut out: Vec<PieceIndex> = b.demand.iter().copied().collect();
    let all = [(PieceIndex(0), n)];
    let windows: Vec<(usize, usize)> = (if b.want_all { &all[..] } else { &b.windows[..] })
        .iter()
        .map(|&(start, len)| (start.0.min(n), start.0.min(n).saturating_add(len).min(n)))
        .collect();
    for (k, &(from, to)) in windows.iter().enumerate() {
        let earlier = &windows[..k];
        out.extend(
            (from..to)
                .filter(|i| !earlier.iter().any(|&(f, t)| (f..t).contains(i)))
                .map(PieceIndex)
                .filter(|i| !b.demand.contains(i)),
        );
    }
    out
}

/// The actions that hand work to idle sources (see the module doc).
pub fn plan(b: &Board<'_>, now: Instant) -> Vec<Action> {
    if b.pieces.complete() {
        return Vec::new();
    }
    let wanted = wanted(b);
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut p = Planner {
        b,
        now,
        readers_wanted: wanted_by_readers(b).into_iter().collect(),
        wanted_set: wanted.iter().copied().collect(),
        wanted,
        changed: HashMap::new(),
        hedged: BTreeSet::new(),
        // The best speed among sources that work now (a source that sends fast and then
        // fails is no yardstick).
        best_bps: b.sources.iter().filter(|v| !v.dead && v.fails_in_row == 0).map(|v| v.bps).fold(0.0, f64::max),
        sources: b.sources.clone(),
        requests: b.requests.clone(),
        next_id: b.next_id,
        actions: Vec::new(),
    };
    p.run();
    p.actions
}

struct Planner<'a, 'b> {
    b: &'a Board<'b>,
    now: Instant,
    wanted: Vec<PieceIndex>,
    wanted_set: BTreeSet<PieceIndex>,
    /// What readers want (the rest of `wanted` is background).
    readers_wanted: BTreeSet<PieceIndex>,
    /// Pieces whose state this plan changed.
    changed: HashMap<PieceIndex, Piece>,
    /// Pieces this plan hedged.
    hedged: BTreeSet<PieceIndex>,
    /// The best measured speed among the sources that work.
    best_bps: f64,
    sources: Vec<SourceView>,
    requests: Vec<RequestView>,
    next_id: RequestId,
    actions: Vec<Action>,
}

impl Planner<'_, '_> {
    fn piece(&self, i: PieceIndex) -> Piece {
        self.changed.get(&i).copied().unwrap_or_else(|| self.b.pieces.get(i))
    }

    fn missing(&self, i: PieceIndex) -> bool {
        self.piece(i) == Piece::Missing
    }

    fn refused(&self, s: SourceId, i: PieceIndex) -> bool {
        self.b.refused.get(&i).is_some_and(|v| v.contains(&s))
    }

    /// Whether source `s` may be asked for piece `i` (a source without ranges too: its
    /// request streams from the start and skips to `i`).
    fn may_ask(&self, s: SourceId, i: PieceIndex) -> bool {
        !self.refused(s, i) && (self.b.holds)(s, i) && !self.sources[s.0].dead
    }

    fn run(&mut self) {
        let now = self.now;
        // Faster sources choose first.
        let mut order: Vec<SourceId> = (0..self.sources.len()).map(SourceId).collect();
        order.sort_by(|a, b| {
            self.sources[b.0].bps.partial_cmp(&self.sources[a.0].bps).unwrap_or(std::cmp::Ordering::Equal)
        });
        // A source that can go on where its transfer stands chooses before the others take
        // the piece it would go on with (see `continuation`).
        order.sort_by_cached_key(|&s| self.continuation(s).is_none());
        let best_bps = self.best_bps;
        let usable = self.sources.iter().filter(|v| !v.dead && v.backoff_until.is_none_or(|t| t <= now)).count().max(1);
        for s in order {
            let v = &mut self.sources[s.0];
            if v.bps > 0.0 && v.bps * SLOW_FACTOR < best_bps {
                if v.inflight > 0 || v.last_probe.is_some_and(|t| now.duration_since(t) < PROBE_EVERY) {
                    continue;
                }
                v.last_probe = Some(now);
                self.actions.push(Action::Probe { source: s });
            }
            while self.one(s, usable) {}
        }
    }

    /// Gives source `s` one piece of work; returns whether it did.
    fn one(&mut self, s: SourceId, usable: usize) -> bool {
        // A piece a reader waits on may use a source beyond its usual number of requests: it
        // must not queue behind long readahead runs.
        let demand_missing = self.b.demand.iter().filter(|&&i| self.missing(i)).count();
        let stuck = self.overdue_demand(s).is_some();
        // A source whose starts are costly leaves pieces readers wait on to the quick ones
        // (unless its transfer stands right there): its first byte may take most of a
        // second, and each such short run spends a session its long runs need.
        let leave_demand = self.sources[s.0].costly_start
            && self.reads_from_the_back(s)
            && self.quick_can_take(s, demand_missing as f64 * self.b.piece_size as f64, TARGET_REQUEST_SECS);
        let limit =
            if (demand_missing > 0 && !leave_demand) || stuck { MAX_INFLIGHT + DEMAND_EXTRA } else { MAX_INFLIGHT };
        let v = &self.sources[s.0];
        let backing_off = v.backoff_until.is_some_and(|t| t > self.now);
        if v.dead || backing_off || v.inflight >= limit || v.room == Some(0) {
            return false;
        }
        if !v.ranges {
            return self.whole_object_run(s);
        }
        let busy = v.inflight >= MAX_INFLIGHT;
        let resume = if leave_demand { self.continuation(s) } else { None };
        let start = self.wanted.iter().copied().find(|&i| {
            self.missing(i)
                && self.may_ask(s, i)
                && !(leave_demand && self.b.demand.contains(&i) && resume != Some(i) && self.quick_could_start(s, i))
        });
        match start {
            Some(p) if !self.readers_wanted.contains(&p) => {
                // Background: only with room readers do not use, one piece at a time.
                if stuck {
                    return self.hedge(s);
                }
                let spare = self.sources[s.0].room.is_none_or(|r| r > BACKGROUND_RESERVE);
                if busy || demand_missing > 0 || !spare {
                    return false;
                }
                // A reader's long run elsewhere still comes first.
                if self.steal(s) {
                    return true;
                }
                self.assign_run(s, p, 1);
                true
            }
            Some(p) if self.b.demand.contains(&p) => {
                // Spread the demanded pieces over the sources, for the earliest finish.
                self.assign_run(s, p, demand_missing.div_ceil(usable).max(1));
                // Not where starts are costly: a cut run's session is gone, and its next run
                // a new start; the demand runs beside it.
                if !self.sources[s.0].costly_start {
                    self.preempt_readahead(s);
                }
                true
            }
            // The extra requests are only for pieces readers wait on.
            _ if busy => stuck && self.hedge(s),
            // A reader stuck on a piece held by a silent source comes before readahead.
            _ if stuck => self.hedge(s),
            Some(p) => {
                // The end game: near the end of what is wanted, split it over every source.
                let missing = self.wanted.iter().filter(|&&i| self.missing(i)).count();
                let cap = missing.div_ceil(usable).max(1);
                let p = if let Some(c) = self.continuation(s) {
                    c
                } else if self.reads_from_the_back(s) {
                    let max_run = self.max_run(s);
                    let from = self.far_start(s, max_run.min(cap)).unwrap_or(p);
                    // A short run (a read just begun, its window still growing; a stretch
                    // between others' runs) is the quick sources' work: a start there would
                    // spend a session on little, and the long runs at the back would then
                    // wait most of a second for a new one.
                    let ps = self.b.piece_size.max(1);
                    let want = usize::try_from(COSTLY_MIN_RUN_BYTES / ps).unwrap_or(1).clamp(1, max_run);
                    let for_readers =
                        self.wanted.iter().filter(|&&i| self.missing(i) && self.readers_wanted.contains(&i));
                    if self.sources[s.0].costly_start
                        && self.run_len(s, from, want) < want
                        && self.quick_can_take(s, for_readers.count() as f64 * ps as f64, COSTLY_RUN_SECS)
                    {
                        return false;
                    }
                    from
                } else {
                    p
                };
                self.assign_run(s, p, cap);
                true
            }
            None => self.steal(s) || self.hedge(s),
        }
    }

    /// Plans request `id` on `s` for `from..to` (hedge: one piece, left in flight elsewhere).
    fn start(&mut self, s: SourceId, from: PieceIndex, to: PieceIndex, hedge: bool) -> RequestId {
        let id = self.next_id;
        self.next_id = RequestId(id.0 + 1);
        if !hedge {
            for i in PieceIndex::range(from, to) {
                self.changed.insert(i, Piece::InFlight(id));
            }
        }
        let v = &mut self.sources[s.0];
        v.inflight += 1;
        if let Some(r) = &mut v.room {
            *r = r.saturating_sub(1);
        }
        let now = self.now;
        self.requests.push(RequestView {
            id,
            source: s,
            next: from,
            end: to,
            started: now,
            hedge,
            got: 0,
            last_progress: now,
        });
        id
    }

    /// Source `s`, which serves no ranges, gets its one request: from the first wanted piece
    /// missing to the end of the key, or as far as the pieces stay missing.
    fn whole_object_run(&mut self, s: SourceId) -> bool {
        if self.sources[s.0].inflight > 0 {
            return false;
        }
        // Background pieces are not streamed from the start of a key: that run would hold the
        // source for the whole key, ahead of readers.
        let Some(p) = self
            .wanted
            .iter()
            .copied()
            .find(|&i| self.readers_wanted.contains(&i) && self.missing(i) && self.may_ask(s, i))
        else {
            return false;
        };
        let mut end = p;
        while end.0 < self.b.pieces.len() && self.missing(end) && self.may_ask(s, end) {
            end = end.next();
        }
        let id = self.start(s, p, end, false);
        self.actions.push(Action::Start { id, source: s, from: p, to: end });
        true
    }

    /// Whether starting a request on `s` takes long against a request's usual length (see
    /// [`START_COST_RUNS`]): measured, and its runs sized by that rather than by
    /// [`TARGET_REQUEST_SECS`]; or known to by its kind (`costly_start`). Its early runs
    /// measured at a few tens of milliseconds (a spare ssh session ready) would otherwise
    /// make it a quick starter: short runs from the front, each a new session, while its
    /// transfers that could go on are killed.
    fn starts_slowly(&self, s: SourceId) -> bool {
        let v = &self.sources[s.0];
        v.costly_start || (v.bps > 0.0 && v.ttfb * START_COST_RUNS > TARGET_REQUEST_SECS)
    }

    /// Whether `s` should take its readahead from the back of the window ([`Self::far_start`]):
    /// it starts requests slowly and another source, quick to start, works from the front. (A
    /// source alone reads front to back: at the back, a sequential reader would find nothing
    /// read ahead of it.)
    fn reads_from_the_back(&self, s: SourceId) -> bool {
        self.starts_slowly(s)
            && (0..self.sources.len()).any(|o| {
                let v = &self.sources[o];
                o != s.0 && !v.dead && v.backoff_until.is_none_or(|t| t <= self.now) && !self.starts_slowly(SourceId(o))
            })
    }

    /// Whether source `o` is quick to start and may be given work now: serving ranges, alive,
    /// not backing off, not only probed (far slower than the best), with room for a request.
    fn quick_now(&self, o: SourceId) -> bool {
        let v = &self.sources[o.0];
        !v.dead
            && v.ranges
            && !self.starts_slowly(o)
            && v.backoff_until.is_none_or(|t| t <= self.now)
            && !(v.bps > 0.0 && v.bps * SLOW_FACTOR < self.best_bps)
            && v.room != Some(0)
            && v.inflight < MAX_INFLIGHT + DEMAND_EXTRA
    }

    /// Whether the sources other than `s` that are quick now ([`Self::quick_now`]) would
    /// receive `bytes` within `secs` at their summed measured speed (any of them unmeasured
    /// counts as yes: it is measured within its first request). A source whose starts are
    /// costly leaves short work to them only then: behind a slow mirror it takes its share.
    fn quick_can_take(&self, s: SourceId, bytes: f64, secs: f64) -> bool {
        let mut sum = 0.0;
        for o in (0..self.sources.len()).map(SourceId).filter(|&o| o != s && self.quick_now(o)) {
            let bps = self.sources[o.0].bps;
            if bps <= 0.0 {
                return true;
            }
            sum += bps;
        }
        sum * secs >= bytes
    }

    /// Whether a source other than `s` that is quick now may be asked for piece `i` (it holds
    /// it and has not sent it wrong): a demanded piece is left to one only then, never to no one.
    fn quick_could_start(&self, s: SourceId, i: PieceIndex) -> bool {
        (0..self.sources.len()).map(SourceId).any(|o| o != s && self.quick_now(o) && self.may_ask(o, i))
    }

    /// Where `s`, a source slow to start requests, can go on without a new start: the first
    /// piece readers want, missing, at which one of its transfers stands (parked) or where one
    /// of its requests in flight ends (a request starting there waits for that one and goes
    /// on from it). Such a source's transfer streams on past its run (an ssh GET goes to the
    /// end of the key), so its runs are best one after another: each new start costs it most
    /// of a second.
    fn continuation(&self, s: SourceId) -> Option<PieceIndex> {
        let v = &self.sources[s.0];
        if !self.starts_slowly(s) || v.dead || !v.ranges {
            return None;
        }
        let ends = self.requests.iter().filter(|r| r.source == s && !r.hedge).map(|r| r.end);
        v.resume
            .iter()
            .copied()
            .chain(ends)
            .filter(|&i| {
                i.0 < self.b.pieces.len() && self.readers_wanted.contains(&i) && self.missing(i) && self.may_ask(s, i)
            })
            .min()
    }

    /// Where a readahead run of `len` pieces on `s`, a source slow to start requests, should
    /// begin: at the back of the readers' wanted pieces (the last `len` of the last stretch
    /// still missing there), not at the first missing one. Such a source's request is one
    /// long transfer that is costly to start and to cut (an ssh GET streams to the end of the
    /// key): at the back, the quick-starting sources reach it last, and it runs whole instead
    /// of being overtaken, stolen from and started again.
    fn far_start(&self, s: SourceId, len: usize) -> Option<PieceIndex> {
        let ok = |i: PieceIndex| {
            self.readers_wanted.contains(&i) && self.missing(i) && self.may_ask(s, i) && (self.b.holds)(s, i)
        };
        let last = self.wanted.iter().rev().copied().find(|&i| ok(i))?;
        let mut from = last;
        while from.0 > 0 && last.0 - from.0 + 1 < len.max(1) && ok(PieceIndex(from.0 - 1)) {
            from = PieceIndex(from.0 - 1);
        }
        Some(from)
    }

    /// The longest run `s` is given: one piece while unmeasured, else what it sends in
    /// [`TARGET_REQUEST_SECS`] (or [`START_COST_RUNS`] times its wait for a first byte, and at
    /// least [`COSTLY_RUN_SECS`] where starts are costly), at most [`MAX_RUN_BYTES`]. A
    /// source whose starts are costly gets that most from the
    /// start: its first readahead run is taken from the back, and a short one would leave its
    /// transfer at the end of the window, nothing to go on with, every next run a new start.
    fn max_run(&self, s: SourceId) -> usize {
        let ps = self.b.piece_size.max(1);
        let bps = self.sources[s.0].bps;
        let longest = usize::try_from(MAX_RUN_BYTES / ps).unwrap_or(1).max(1);
        if bps <= 0.0 && self.sources[s.0].costly_start {
            longest
        } else if bps <= 0.0 {
            // Not measured yet: one piece, so that the first bytes come soonest and the source
            // is measured before it is given more.
            1
        } else {
            // Long enough that starting it is a small part of it (see START_COST_RUNS).
            let mut secs = TARGET_REQUEST_SECS.max(self.sources[s.0].ttfb * START_COST_RUNS);
            if self.sources[s.0].costly_start {
                secs = secs.max(COSTLY_RUN_SECS);
            }
            // A float of pieces, clamped just below: the cast saturates, nothing is lost.
            #[allow(clippy::cast_possible_truncation)]
            let by_speed = (bps * secs / ps as f64).min(1e9) as usize;
            by_speed.clamp(1, longest)
        }
    }

    /// How many pieces from `p` (at most `cap`) a run on `s` would take: wanted, missing,
    /// held by `s` and not refused by it.
    fn run_len(&self, s: SourceId, p: PieceIndex, cap: usize) -> usize {
        let mut end = p;
        while end.0 < self.b.pieces.len()
            && end.0 - p.0 < cap
            && self.missing(end)
            && self.wanted_set.contains(&end)
            && !self.refused(s, end)
            && (self.b.holds)(s, end)
        {
            end = end.next();
        }
        end.0 - p.0
    }

    /// A request on `s` for a run of wanted missing pieces from `p`, at most `cap` long.
    fn assign_run(&mut self, s: SourceId, p: PieceIndex, cap: usize) {
        let end = PieceIndex(p.0 + self.run_len(s, p, self.max_run(s).min(cap)));
        let id = self.start(s, p, end, false);
        self.actions.push(Action::Start { id, source: s, from: p, to: end });
    }

    /// Source `s` starts a demand request: its readahead requests give back what they have
    /// not begun receiving.
    fn preempt_readahead(&mut self, s: SourceId) {
        for k in 0..self.requests.len() {
            let r = &self.requests[k];
            if r.source != s || r.hedge {
                continue;
            }
            // Requests for pieces readers wait on keep going.
            if PieceIndex::range(r.next, r.end).any(|i| self.b.demand.contains(&i)) {
                continue;
            }
            let (id, keep, end) = (r.id, r.next.next(), r.end);
            if end <= keep {
                continue;
            }
            self.requests[k].end = keep;
            self.give_back(id, keep, end);
            self.actions.push(Action::Preempt { request: id, keep, end });
        }
    }

    /// Pieces `from..to` still owned by request `id` go back to missing.
    fn give_back(&mut self, id: RequestId, from: PieceIndex, to: PieceIndex) {
        for i in PieceIndex::range(from, to) {
            if self.piece(i) == Piece::InFlight(id) {
                self.changed.insert(i, Piece::Missing);
            }
        }
    }
}

#[path = "scheduler_steal.rs"]
mod steal;

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
