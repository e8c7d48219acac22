//! The I/O side of scheduling: building the scheduler's board from the live state, carrying
//! its actions out (claims, request tasks), and the request tasks themselves.
//!
//! A request task streams a run of pieces from one source, one piece in memory at a time. It
//! advances its `next` atomic as pieces complete and stops at its `end` atomic (lowered by a
//! steal or a preemption). Each complete piece is checked against the manifest when there is
//! one (a failure is refused and struck, [`KeyFetch::refuse`]) and landed (`land.rs`). In
//! stream mode without a manifest, bytes of a piece a reader waits on are written as they
//! arrive ([`KeyFetch::write_partial`]), under the state lock and only while the request
//! still owns the piece, so a copy landed by a hedge is never overwritten.
//!
//! A source that serves no ranges is asked for the whole key from byte 0; its task drops the
//! bytes before its run and, when its run ends, claims the next missing pieces as the stream
//! reaches them ([`KeyFetch::extend_whole`]), skipping (reading and dropping) pieces present or
//! in flight elsewhere. An HTTP server that ignored `Range` on a short first request sends the
//! whole key too (`crate::source::http`), so that first request goes on the same way.
//!
//! When a task ends, its source's figures are updated (`stats.rs`) and the pieces it still
//! owns go back to `Missing` (with their claims and partial bytes).

use super::config::{BACKGROUND_STALL, CACHE_FULL_PAUSE, CROWDED, SILENT_HEDGE_AFTER, STARVED_BPS};
use super::piece::{Piece, PieceIndex, RequestId};
use super::scheduler::{self, Action, Board, RequestView, SourceView};
use super::stats::{RequestEnd, SourceId, Verdict};
use super::{KeyFetch, Request, State, lock};
use crate::pieces::CacheError;
use crate::source::remote::FetchError;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Plans made and carried out in one scheduling pass at most (a plan is made again when a
/// claim finds a piece taken or landed by another process).
const MAX_PLANS: usize = 16;

/// How far a running request got, shared with the scheduler.
struct Progress {
    got: Arc<AtomicU64>,
    progress_ms: Arc<AtomicU64>,
    started: Instant,
}

/// Carrying out an action.
enum Done {
    Carried,
    /// Reality differed from the plan (a claim): plan again.
    Replan,
    /// A claim failed; the rest waits for the next pass.
    Stop,
}

impl KeyFetch {
    /// Hands work to idle sources: plans (`scheduler.rs`) and carries the plan out.
    pub(super) fn schedule(self: &Arc<Self>) {
        for _ in 0..MAX_PLANS {
            let mut st = lock(&self.state);
            if st.pieces.complete() {
                self.maybe_verify(&mut st);
                return;
            }
            let now = Instant::now();
            if st.paused_until.is_some_and(|t| t > now) {
                return;
            }
            let actions = {
                let holds = |s: SourceId, i: PieceIndex| self.holds(s, i);
                let board = self.board(&st, &holds);
                scheduler::plan(&board, now)
            };
            let mut replan = false;
            for a in actions {
                match self.carry_out(&mut st, a, now) {
                    Done::Carried => {}
                    Done::Replan => {
                        replan = true;
                        break;
                    }
                    Done::Stop => break,
                }
            }
            st.debug_check();
            if !replan {
                return;
            }
        }
    }

    /// The scheduler's view of the state. A source banned since the last pass is given up here.
    fn board<'a>(&self, st: &'a State, holds: &'a dyn Fn(SourceId, PieceIndex) -> bool) -> Board<'a> {
        let sources = self
            .source_ids()
            .map(|s| {
                let slot = self.source(s);
                let banned = !super::blame::usable(&self.rep, &*slot.src);
                let mut ss = lock(&slot.stats);
                if banned && ss.dead.is_none() {
                    ss.dead = Some(FetchError::Banned(slot.src.identity().to_string()));
                }
                SourceView {
                    bps: ss.bps,
                    ttfb: ss.ttfb_ms / 1e3,
                    inflight: ss.inflight,
                    dead: ss.dead.is_some(),
                    backoff_until: ss.backoff_until,
                    fails_in_row: ss.fails_in_row,
                    last_probe: ss.last_probe,
                    // A server crowded by many keys' requests (many readers at once): a key
                    // that has one request there asks for no more. Each extra request would
                    // only deepen the server's queue, its first byte coming later than the
                    // hedge delay, every piece then asked twice (64 readers: 10% of the bytes
                    // sent twice, 600 sockets, 370 MB of buffers).
                    // (Never more than the source's own limit lets start.)
                    room: {
                        let limited = slot.limiter.room();
                        if slot.limiter.inflight() >= CROWDED {
                            Some(limited.unwrap_or(u32::MAX).min(u32::from(ss.inflight == 0)))
                        } else {
                            limited
                        }
                    },
                    ranges: slot.src.supports_ranges(),
                    costly_start: slot.src.costly_start(),
                    resume: {
                        let ps = self.cache.piece_size.max(1);
                        let at = |o: u64| PieceIndex(usize::try_from(o.div_ceil(ps)).unwrap_or(usize::MAX));
                        slot.src.resumes_at().into_iter().map(at).collect()
                    },
                }
            })
            .collect();
        let requests = st
            .requests
            .iter()
            .map(|(&id, r)| RequestView {
                id,
                source: r.source,
                next: PieceIndex(r.next.load(Ordering::Relaxed)),
                end: PieceIndex(r.end.load(Ordering::Relaxed)),
                started: r.started,
                hedge: r.hedge,
                got: r.got.load(Ordering::Relaxed),
                last_progress: r.started + Duration::from_millis(r.progress_ms.load(Ordering::Relaxed)),
            })
            .collect();
        Board {
            pieces: &st.pieces,
            piece_size: self.cache.piece_size,
            demand: &st.demand,
            hedged: &st.hedged,
            refused: &st.refused,
            // A lone seek's readahead waits until no reader is blocked (`streams.rs`).
            windows: st.streams.windows(st.demand.iter().all(|&i| st.pieces.is(i, Piece::Present))),
            want_all: st.want_all,
            background: &st.background,
            sources,
            requests,
            next_id: st.next_req,
            holds,
        }
    }

    fn carry_out(self: &Arc<Self>, st: &mut State, action: Action, now: Instant) -> Done {
        match action {
            Action::Probe { source } => lock(&self.source(source).stats).last_probe = Some(now),
            Action::Start { id, source, from, to } => {
                debug_assert_eq!(id, st.next_req, "the plan's request ids follow the state's");
                let (end, done) = self.claim_run(st, from, to);
                if end > from {
                    self.start_request(st, source, from, end, false);
                }
                return done;
            }
            Action::Steal { victim, split, end } => {
                if let Some(r) = st.requests.get(&victim) {
                    r.end.store(split.0, Ordering::Relaxed);
                }
                self.give_back(st, victim, split, end);
                self.stats.steals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{}: pieces {split}..{end} of request {victim} stolen", self.key);
            }
            Action::Preempt { request, keep, end } => {
                let Some(r) = st.requests.get(&request) else { return Done::Carried };
                // The task may have moved on since the board was made: it keeps the piece it
                // is receiving now.
                let keep = keep.max(PieceIndex(r.next.load(Ordering::Relaxed) + 1));
                let end = end.min(PieceIndex(r.end.load(Ordering::Relaxed)));
                if keep < end {
                    r.end.store(keep.0, Ordering::Relaxed);
                    self.give_back(st, request, keep, end);
                }
            }
            Action::Hedge { id, source, piece } => {
                debug_assert_eq!(id, st.next_req, "the plan's request ids follow the state's");
                st.hedged.insert(piece);
                self.stats.hedges.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{}: hedging piece {piece} on {}", self.key, self.source(source).src.name());
                self.start_request(st, source, piece, piece.next(), true);
            }
        }
        Done::Carried
    }

    /// Pieces `from..to` still owned by request `id` go back to missing.
    fn give_back(&self, st: &mut State, id: RequestId, from: PieceIndex, to: PieceIndex) {
        for i in PieceIndex::range(from, to) {
            if st.pieces.is(i, Piece::InFlight(id)) {
                st.pieces.set(i, Piece::Missing);
            }
        }
    }

    /// Claims the missing pieces `from..to` (those this process does not hold already);
    /// returns how far it got, and what to do next if not to `to`.
    fn claim_run(&self, st: &mut State, from: PieceIndex, to: PieceIndex) -> (PieceIndex, Done) {
        let mut end = from;
        while end < to {
            if !st.pieces.is(end, Piece::Missing) {
                return (end, Done::Replan);
            }
            // This process may hold the claim already (pieces returned by a steal or a failed
            // request): claiming again would be a no-op, and replacing the held claim would
            // drop it, and dropping a claim unlocks the piece for everyone.
            if !st.claims.contains_key(&end) {
                match self.cache.claim(end.0) {
                    Ok(Some(c)) => {
                        // Another process may have landed the piece and released its claim
                        // since this one last read the record.
                        self.cache.reload_if_changed();
                        if self.cache.has(end.0) {
                            drop(c);
                            st.pieces.set(end, Piece::Present);
                            self.landed.notify_waiters();
                            return (end, Done::Replan);
                        }
                        st.claims.insert(end, c);
                    }
                    Ok(None) => {
                        st.pieces.set(end, Piece::Elsewhere);
                        return (end, Done::Replan);
                    }
                    Err(e) => {
                        tracing::warn!("claim piece {end} of {}: {e}", self.key);
                        return (end, Done::Stop);
                    }
                }
            }
            end = end.next();
        }
        (end, Done::Carried)
    }

    fn start_request(self: &Arc<Self>, st: &mut State, s: SourceId, from: PieceIndex, to: PieceIndex, hedge: bool) {
        let id = st.next_req;
        st.next_req = RequestId(id.0 + 1);
        if !hedge {
            for i in PieceIndex::range(from, to) {
                st.pieces.set(i, Piece::InFlight(id));
            }
        }
        let next = Arc::new(AtomicUsize::new(from.0));
        let end = Arc::new(AtomicUsize::new(to.0));
        let got = Arc::new(AtomicU64::new(0));
        let progress_ms = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let r = Request { source: s, next, end, started, hedge, got, progress_ms };
        let task = (
            r.next.clone(),
            r.end.clone(),
            Progress { got: r.got.clone(), progress_ms: r.progress_ms.clone(), started },
        );
        st.requests.insert(id, r);
        {
            let mut ss = lock(&self.source(s).stats);
            ss.inflight += 1;
            ss.requests += 1;
        }
        self.source(s).limiter.started();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let name = self.source(s).src.name();
        tracing::debug!(
            "{}: request {id}: pieces {from}..{to} from {name}{}",
            self.key,
            if hedge { " (hedge)" } else { "" }
        );
        let this = self.clone();
        let span = tracing::debug_span!("fetch", key = %self.key, source = %name, from = from.0, to = to.0, hedge);
        let (next, end, progress) = task;
        let background = !hedge && st.only_background(from, to);
        self.rt.spawn(tracing::Instrument::instrument(
            async move { this.run_request(id, s, next, end, progress, background).await },
            span,
        ));
    }

    async fn run_request(
        self: Arc<Self>,
        id: RequestId,
        s: SourceId,
        next: Arc<AtomicUsize>,
        end: Arc<AtomicUsize>,
        progress: Progress,
        background: bool,
    ) {
        let src = self.source(s).src.clone();
        let from = PieceIndex(next.load(Ordering::Relaxed));
        let to = PieceIndex(end.load(Ordering::Relaxed));
        let (off, _) = self.piece_range(from);
        let (_, stop) = self.piece_range(PieceIndex(to.0 - 1));
        // A source without ranges is asked for the whole key, from byte 0: what comes before
        // the run is read and dropped.
        let whole_from_start = !src.supports_ranges();
        let (ask_at, ask_len) = if whole_from_start { (0, self.size()) } else { (off, stop - off) };
        let started = Instant::now();
        let mut received = 0u64;
        let mut store_failed = false;
        // When the first byte came (after `started`): the source's throughput is measured
        // from then on, its latency apart.
        let mut first_byte: Option<Duration> = None;
        let (manifest, partial_ok) = {
            let st = lock(&self.state);
            (st.manifest.clone(), self.partial_serving(&st))
        };
        // The first piece this request sent that failed its manifest hash.
        let mut corrupt: Option<PieceIndex> = None;
        // A server may hold background work back while its readers keep it busy.
        let stall = if background { self.cfg.stall_timeout.max(BACKGROUND_STALL) } else { self.cfg.stall_timeout };
        let result: Result<(), FetchError> = async {
            let ask = if background { src.get_background(ask_at, ask_len) } else { src.get(ask_at, ask_len) };
            let mut stream = tokio::time::timeout(stall, ask).await.map_err(|_| FetchError::Stalled(stall))??;
            // Bytes still to be dropped before the current piece (a whole-object stream
            // skipping what is present or taken).
            let mut skip = off - ask_at;
            let mut piece = from;
            let mut buf: Vec<u8> = Vec::with_capacity(usize::try_from(self.cache.piece_size).unwrap_or(0));
            // Bytes of the current piece already written to the data file.
            let mut written = 0usize;
            loop {
                if piece.0 >= end.load(Ordering::Relaxed) {
                    // A stream from byte 0 of a source without ranges carries the whole key
                    // (an HTTP server that ignored Range sends it all even for a short first
                    // request): it goes on to the pieces still missing after its run.
                    if ask_at != 0 || src.supports_ranges() {
                        break;
                    }
                    let Some(at) = self.extend_whole(id, piece, &end) else { break };
                    let drop_bytes = self.piece_range(at).0 - self.piece_range(piece).0;
                    let from_buf = usize::try_from(drop_bytes).unwrap_or(usize::MAX).min(buf.len());
                    buf.drain(..from_buf);
                    skip = drop_bytes - from_buf as u64;
                    piece = at;
                    next.store(piece.0, Ordering::Relaxed);
                }
                let want = usize::try_from(self.piece_len(piece)).unwrap_or(0);
                while buf.len() < want {
                    let next_chunk =
                        tokio::time::timeout(stall, stream.next()).await.map_err(|_| FetchError::Stalled(stall))?;
                    if self.obsolete(piece, PieceIndex(end.load(Ordering::Relaxed))) {
                        // Every piece left was landed by other requests (hedges): stop
                        // receiving (the connection is dropped with the stream). A source
                        // this slow is backed off, not handed the next demanded piece.
                        // One whose first bytes come only now was slow to start (an ssh
                        // session opening, a server waking): its latency is measured, and it
                        // is not failed for it (backed off, it would sit out the seconds a
                        // read of a whole file takes).
                        if progress.got.load(Ordering::Relaxed) == 0
                            && matches!(&next_chunk, Some(Ok(c)) if !c.is_empty())
                        {
                            lock(&self.source(s).stats).first_byte(progress.started.elapsed().as_secs_f64() * 1e3);
                            first_byte = Some(started.elapsed());
                            return Ok(());
                        }
                        // Its rate from its first byte on: the wait before it (a server's queue
                        // under many readers) is latency, not dripping.
                        let secs = started.elapsed().saturating_sub(first_byte.unwrap_or_default()).as_secs_f64();
                        let rate = progress.got.load(Ordering::Relaxed) as f64 / secs.max(1e-3);
                        if secs > SILENT_HEDGE_AFTER.as_secs_f64() && rate < STARVED_BPS {
                            #[allow(clippy::cast_possible_truncation)]
                            return Err(FetchError::TooSlow(rate as u64));
                        }
                        return Ok(());
                    }
                    match next_chunk {
                        // A source that must fetch a whole key before its first byte (an
                        // external remote) says it is alive with empty chunks: they restart
                        // the stall timer and count as nothing else (no progress, no first
                        // byte), so readers still hedge onto other holders meanwhile.
                        Some(Ok(chunk)) if chunk.is_empty() => continue,
                        Some(Ok(mut chunk)) => {
                            self.source(s).limiter.pace(chunk.len()).await;
                            if progress.got.fetch_add(chunk.len() as u64, Ordering::Relaxed) == 0 {
                                lock(&self.source(s).stats).first_byte(progress.started.elapsed().as_secs_f64() * 1e3);
                                first_byte = Some(started.elapsed());
                            }
                            let ms = u64::try_from(progress.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                            progress.progress_ms.store(ms, Ordering::Relaxed);
                            if skip > 0 {
                                let n = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                                chunk = chunk.slice(n..);
                                skip -= n as u64;
                            }
                            buf.extend_from_slice(&chunk);
                        }
                        Some(Err(e)) => return Err(e),
                        None => {
                            let (at, _) = self.piece_range(piece);
                            return Err(FetchError::ShortBody { got: at + buf.len() as u64 - ask_at, want: ask_len });
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
                let checked = manifest.as_ref().map(|m| m.check_piece(piece.0, &buf));
                if checked == Some(false) {
                    // Refused, and the source is struck; the rest of its run is still checked
                    // piece by piece (each bad piece is a strike, good ones are kept).
                    self.refuse(s, piece);
                    corrupt.get_or_insert(piece);
                    if self.rep.is_banned(src.identity()) {
                        return Err(FetchError::Banned(src.identity().to_string()));
                    }
                } else if let Err(e) = self.land(piece, &buf, written == want, s, checked == Some(true)) {
                    // The cache, not the source, failed; the source is not blamed.
                    store_failed = true;
                    self.store_failed(piece, e);
                    return Ok(());
                }
                buf = rest;
                written = 0;
                piece = piece.next();
                next.store(piece.0, Ordering::Relaxed);
            }
            match corrupt {
                Some(p) => Err(FetchError::Corrupt(p.0)),
                None => Ok(()),
            }
        }
        .await;
        self.request_ended(
            id,
            s,
            from,
            &end,
            &RequestEnd {
                result: &result,
                store_failed,
                received,
                arrived: progress.got.load(Ordering::Relaxed),
                elapsed: started.elapsed(),
                first_byte,
            },
        );
    }

    /// A whole-object stream of request `id` reached `at`, past its run: claims the next run of
    /// missing pieces from `at` on for it (pieces present or taken by other requests are
    /// skipped) and returns where that run starts; `None` when nothing is missing ahead (the
    /// stream stops there). The run may be stolen from like any other.
    fn extend_whole(&self, id: RequestId, at: PieceIndex, end: &AtomicUsize) -> Option<PieceIndex> {
        let mut st = lock(&self.state);
        if !st.requests.contains_key(&id) {
            return None;
        }
        let n = PieceIndex(st.pieces.len());
        let mut p = at;
        loop {
            while p < n && !st.pieces.is(p, Piece::Missing) {
                p = p.next();
            }
            if p >= n {
                return None;
            }
            let mut to = p;
            while to < n && st.pieces.is(to, Piece::Missing) {
                to = to.next();
            }
            let (got, done) = self.claim_run(&mut st, p, to);
            if got > p {
                for i in PieceIndex::range(p, got) {
                    st.pieces.set(i, Piece::InFlight(id));
                }
                end.store(got.0, Ordering::Relaxed);
                tracing::debug!("{}: request {id} streams on: pieces {p}..{got}", self.key);
                return Some(p);
            }
            if matches!(done, Done::Stop) {
                return None;
            }
            // The piece was claimed by another process meanwhile (now `Elsewhere`): look on.
            p = p.next();
        }
    }

    /// The cache could not store piece `i`. At its bound with nothing evictable yet, fetching
    /// pauses briefly (readers move on and unpin pieces); a failing disk (ENOSPC, I/O) fails
    /// readers at once.
    fn store_failed(&self, i: PieceIndex, e: CacheError) {
        let mut st = lock(&self.state);
        if matches!(e, CacheError::Full { .. }) {
            tracing::debug!("{}: cache full; pausing fetches: {e}", self.key);
            st.paused_until = Some(Instant::now() + CACHE_FULL_PAUSE);
        } else {
            tracing::error!("{}: store piece {i} in the cache: {e}", self.key);
            st.cache_error = Some(Arc::new(e));
        }
    }

    /// A request's task ended: its source's figures, and its pieces back to `Missing`.
    fn request_ended(
        self: &Arc<Self>,
        id: RequestId,
        s: SourceId,
        from: PieceIndex,
        end: &AtomicUsize,
        e: &RequestEnd<'_>,
    ) {
        let src = &self.source(s).src;
        self.source(s).limiter.finished();
        let verdict = lock(&self.source(s).stats).request_ended(e, Instant::now());
        tracing::debug!(
            "{}: request {id} from {} ended: {} bytes in {:.1} ms, first byte after {}",
            self.key,
            src.name(),
            e.arrived,
            e.elapsed.as_secs_f64() * 1e3,
            e.first_byte.map_or("none".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        );
        if let Err(FetchError::NoRanges) = e.result {
            tracing::info!("{}: {} serves no byte ranges: it streams the key from its start", self.key, src.name());
        } else if let Err(err) = e.result
            && !matches!(err, FetchError::Corrupt(_))
        {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            if matches!(err, FetchError::Stalled(_)) {
                self.stats.stalls.fetch_add(1, Ordering::Relaxed);
            }
            match verdict {
                Verdict::GaveUp => tracing::warn!("{}: giving up on {} for this key: {err}", self.key, src.name()),
                _ => tracing::info!("{}: {} failed ({err}); retrying elsewhere", self.key, src.name()),
            }
        }
        {
            let mut st = lock(&self.state);
            st.requests.remove(&id);
            let last = PieceIndex(end.load(Ordering::Relaxed)).max(from);
            for i in PieceIndex::range(from, last) {
                if st.pieces.is(i, Piece::InFlight(id)) {
                    st.pieces.set(i, Piece::Missing);
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

    /// Writes bytes that arrived for piece `i` of request `id` at `at` within the piece, if a
    /// reader waits on that piece and the request still owns it. Returns whether it wrote.
    fn write_partial(&self, id: RequestId, i: PieceIndex, at: usize, bytes: &[u8]) -> bool {
        let mut st = lock(&self.state);
        if !st.pieces.is(i, Piece::InFlight(id)) || !st.demand.contains(&i) {
            return false;
        }
        let (start, _) = self.piece_range(i);
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
    fn obsolete(&self, from: PieceIndex, to: PieceIndex) -> bool {
        let st = lock(&self.state);
        PieceIndex::range(from, to).all(|i| st.pieces.is(i, Piece::Present))
    }

    /// Source `s` sent piece `i` and it failed its manifest hash: a strike, and `s` is not
    /// asked for that piece again.
    fn refuse(&self, s: SourceId, i: PieceIndex) {
        // Against a manifest a peer vouched for, the manifest may be the liar.
        if self.doubt_vouched(s, i) {
            return;
        }
        self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
        let src = &self.source(s).src;
        let why = format!("piece {i} of {} from {} fails its manifest hash", self.key, src.name());
        if self.rep.strike(src.identity(), &why) {
            lock(&self.source(s).stats).dead = Some(FetchError::Banned(src.identity().to_string()));
        }
        lock(&self.state).refused.entry(i).or_default().push(s);
    }
}
