//! Direct reads: the bytes of a cold seek asked exactly of two sources, before its pieces.
//!
//! A request delivers its pieces from their first byte. A cold read at a random offset waits
//! for every byte of its piece before its own (a 256 KiB piece at 25 MB/s: up to 10 ms before
//! a 64 KiB read at the back of it is served), and on a source already busy with readahead
//! it shares the bandwidth with it. So a seek whose bytes are neither cached nor arriving is
//! also asked directly: a range request for exactly `offset..end` on each of the two usable
//! sources with the fewest requests in flight (then the quickest first byte; a source whose
//! starts are costly, an ssh remote, only when no other may be asked), and the reader takes
//! whichever comes first, those bytes or its pieces (`read.rs`). A piece in flight far
//! back in a long readahead request counts as not arriving: it could take the rest of the
//! request to come. Its pieces are asked only when the direct read fails or has not answered
//! within [`DIRECT_FIRST`] (then the reader takes whichever comes first): fetched at once
//! into the cache, a lone seek's pieces (a few hundred KiB for a 64 KiB read) spent the
//! links the next seeks' bytes needed, and those waited behind them (seeks of a player or a
//! notebook come every few milliseconds). A read that continues from it is no seek and
//! demands its pieces as usual; a read of the same bytes again is again a direct read. At
//! the head of a file (where sequential readers start) the pieces are asked at once, and
//! the direct read after them.
//!
//! Only where bytes may be served before they are verified anyway ([`KeyFetch`]'s partial
//! serving: stream mode without a manifest): the bytes carry the same trust as the arrived
//! prefix of a piece in flight, and the whole key is verified once all its pieces are in.
//!
//! With a manifest a byte is served only from a checked piece, so the seek's whole piece is
//! needed; the piece's own request delivers it at one source's speed. So the piece is also
//! asked **in parts** of the other idle sources at once ([`KeyFetch::split_piece`]), like a
//! hedge: the parts are put together, checked against the manifest and landed if the
//! request has not landed it first (which then stops, `request.rs`). A piece that fails its
//! check this way is not landed and blames no one (its parts came from several sources);
//! its own request still delivers it and is checked as usual.
//!
//! A piece nobody has asked for yet is asked in parts **first** ([`KeyFetch::parts_first`]),
//! of every idle source, and only after [`PARTS_FIRST`] also whole: asked whole of one
//! source beside its parts, it spent that source's link on bytes the parts had brought, and
//! the next seeks waited behind them.
//!
//! A direct read or a part that fails, comes short or stalls is dropped quietly (the reader
//! still waits for its pieces); it never blames the source, whose requests for pieces are
//! judged as before.

use super::piece::{Piece, PieceIndex};
use super::stats::SourceId;
use super::{KeyFetch, State, lock};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How long a cold seek's direct read runs alone before its pieces are asked too: a 64 KiB
/// answer takes 3 ms from a loopback mirror at 200 Mbit/s, ten behind a busy one.
pub(super) const DIRECT_FIRST: std::time::Duration = std::time::Duration::from_millis(20);
/// Longest read served directly: larger reads are not seeks of a player or a notebook.
pub(super) const MAX_DIRECT_BYTES: u64 = 1 << 20;
/// How many sources a direct read asks at once. A source busy with readahead answers after
/// the bytes already queued before it on its link (a server's send queue holds megabytes:
/// tens of milliseconds at 200 Mbit/s): two copies make the slower queue the one not waited
/// on, for 64 KiB more per seek.
const DIRECT_COPIES: usize = 2;
/// How long a cold seek's pieces asked in parts first ([`KeyFetch::parts_first`]) are waited
/// for before they are also asked whole: several times what the parts of a 256 KiB piece
/// take from loopback mirrors at 200 Mbit/s.
const PARTS_FIRST: std::time::Duration = std::time::Duration::from_millis(30);
/// Most sources a piece is split over.
const MAX_PARTS: usize = 4;
/// Parts are multiples of this (and at least this long).
const PART_ALIGN: u64 = 16 * 1024;

impl KeyFetch {
    /// The source a direct read of `offset..end` would ask, if the read may be made directly.
    pub(super) fn direct_sources(&self, st: &State, offset: u64, end: u64) -> Vec<SourceId> {
        if !self.partial_serving(st) || end - offset > MAX_DIRECT_BYTES {
            return Vec::new();
        }
        let mut v = self.idle_sources(offset, end);
        // A source whose starts are costly only when no other may be asked: the direct read
        // would take a session its runs need, killed whenever the other copy wins.
        if v.iter().any(|&s| !self.source(s).src.costly_start()) {
            v.retain(|&s| !self.source(s).src.costly_start());
        }
        v.truncate(DIRECT_COPIES);
        v
    }

    /// Reads `offset..end` directly from each of `sources` at once: the first whole answer
    /// is taken and the others are dropped (their connections close). `None` when none
    /// answers whole.
    pub(super) async fn direct_race(self: Arc<Self>, sources: Vec<SourceId>, offset: u64, end: u64) -> Option<Vec<u8>> {
        let mut racing: futures_util::stream::FuturesUnordered<_> =
            sources.into_iter().map(|s| self.direct_read(s, offset, end)).collect();
        while let Some(got) = racing.next().await {
            if got.is_some() {
                return got;
            }
        }
        None
    }

    /// Sources that may be asked for `offset..end` now (serving ranges, holding it, alive,
    /// not backing off, with room under their limits), least busy first: fewest requests in
    /// flight, then the quickest first byte (unmeasured last among equals), then the fastest;
    /// sources whose starts are costly last (a new ssh session takes most of a second).
    fn idle_sources(&self, offset: u64, end: u64) -> Vec<SourceId> {
        let now = Instant::now();
        let mut v: Vec<(SourceId, bool, u32, f64, f64)> = self
            .source_ids()
            .filter(|&s| {
                let slot = self.source(s);
                slot.src.supports_ranges()
                    && slot.src.has_range(offset, end - offset)
                    && slot.limiter.room() != Some(0)
                    && self.source_alive(s)
            })
            .filter_map(|s| {
                let ss = lock(&self.source(s).stats);
                if ss.backoff_until.is_some_and(|t| t > now) || ss.fails_in_row > 0 {
                    return None;
                }
                let ttfb = if ss.ttfb_ms > 0.0 { ss.ttfb_ms } else { f64::MAX };
                Some((s, self.source(s).src.costly_start(), ss.inflight, ttfb, ss.bps))
            })
            .collect();
        v.sort_by(|a, b| {
            a.1.cmp(&b.1)
                .then(a.2.cmp(&b.2))
                .then(a.3.partial_cmp(&b.3).unwrap_or(std::cmp::Ordering::Equal))
                .then(b.4.partial_cmp(&a.4).unwrap_or(std::cmp::Ordering::Equal))
        });
        v.into_iter().map(|(s, ..)| s).collect()
    }

    /// The piece a cold seek reading piece `i` should have split over idle sources, if
    /// pieces are checked (a manifest), it is in flight on one request of this process, and
    /// other sources are idle.
    pub(super) fn split_candidate(&self, st: &State, i: PieceIndex) -> Option<PieceIndex> {
        st.manifest.as_ref()?;
        let Piece::InFlight(id) = st.pieces.get(i) else { return None };
        st.requests.get(&id)?;
        Some(i)
    }

    /// Fetches piece `i` in parts from the idle sources other than the one its request runs
    /// on (every idle source when no request has it yet), checks it against the manifest and
    /// lands it (see the module doc).
    pub(super) async fn split_piece(self: Arc<Self>, i: PieceIndex) {
        let (a, b) = self.piece_range(i);
        let (manifest, busy, refused) = {
            let st = lock(&self.state);
            let Some(m) = st.manifest.clone() else { return };
            let busy = match st.pieces.get(i) {
                Piece::InFlight(id) => st.requests.get(&id).map(|r| r.source),
                Piece::Missing => None,
                _ => return,
            };
            (m, busy, st.refused.get(&i).cloned().unwrap_or_default())
        };
        let sources: Vec<SourceId> = self
            .idle_sources(a, b)
            .into_iter()
            .filter(|s| Some(*s) != busy && !refused.contains(s))
            .take(MAX_PARTS)
            .collect();
        if sources.is_empty() {
            return;
        }
        // Equal parts, aligned, the last one taking the rest.
        let n = u64::try_from(sources.len()).unwrap_or(1);
        let part = ((b - a) / n).div_ceil(PART_ALIGN).max(1) * PART_ALIGN;
        let mut ranges = Vec::new();
        let mut at = a;
        for _ in 0..n {
            if at >= b {
                break;
            }
            let to = (at + part).min(b);
            ranges.push((at, to));
            at = to;
        }
        if let Some(last) = ranges.last_mut() {
            last.1 = b;
        }
        let started = Instant::now();
        let parts =
            futures_util::future::join_all(ranges.iter().zip(&sources).map(|(&(x, y), &s)| self.get_exact(s, x, y)))
                .await;
        let mut buf = Vec::with_capacity(usize::try_from(b - a).unwrap_or(0));
        for p in parts {
            match p {
                Some(bytes) => buf.extend_from_slice(&bytes),
                None => return,
            }
        }
        if lock(&self.state).pieces.is(i, Piece::Present) {
            return;
        }
        if !manifest.check_piece(i.0, &buf) {
            tracing::info!(
                "{}: piece {i} put together from {} parts fails its manifest hash; not used",
                self.key,
                ranges.len()
            );
            return;
        }
        // Counted before landing: the landing wakes the readers, which must not see a
        // piece from parts that the count does not have yet.
        self.stats.direct_reads.fetch_add(1, Ordering::Relaxed);
        match self.land(i, &buf, false, sources[0], true) {
            Ok(()) => {
                tracing::debug!(
                    "{}: piece {i} landed from {} parts in {:.1} ms",
                    self.key,
                    ranges.len(),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => {
                self.stats.direct_reads.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!("{}: piece {i} from parts not stored: {e}", self.key)
            }
        }
    }

    /// A read's pieces that no request has yet (`unasked`, with a manifest), asked in parts
    /// of every idle source at once **before** any request for the whole piece: waits
    /// until they land or [`PARTS_FIRST`] passes (the caller then reads as usual, the parts
    /// still coming). Asked of one source whole beside its parts, a piece put that source's
    /// link (and a shaper's burst) to a quarter megabyte the parts had already brought, and
    /// the next seeks waited behind it (p99 of a cold 64 KiB read: 35-40 ms against a median
    /// of 4).
    pub(super) async fn parts_first(self: &Arc<Self>, unasked: Vec<PieceIndex>) {
        let (Some(&first), Some(&last)) = (unasked.first(), unasked.last()) else { return };
        let (a, _) = self.piece_range(first);
        let (_, b) = self.piece_range(last);
        if self.idle_sources(a, b).len() < 2 {
            return;
        }
        let parts: Vec<_> = unasked.into_iter().map(|i| self.rt.spawn(self.clone().split_piece(i))).collect();
        let _ = tokio::time::timeout(PARTS_FIRST, futures_util::future::join_all(parts)).await;
    }

    /// Reads `offset..end` directly from source `s`; `None` unless exactly those bytes came.
    pub(super) async fn direct_read(self: &Arc<Self>, s: SourceId, offset: u64, end: u64) -> Option<Vec<u8>> {
        let started = Instant::now();
        let got = self.get_exact(s, offset, end).await;
        let slot = self.source(s);
        match &got {
            Some(_) => {
                self.stats.direct_reads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "{}: {} bytes at {offset} read directly from {} in {:.1} ms",
                    self.key,
                    end - offset,
                    slot.src.name(),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            None => tracing::debug!("{}: direct read at {offset} from {} failed", self.key, slot.src.name()),
        }
        got
    }

    /// Exactly the bytes `offset..end` from source `s`, counted by its limiter.
    async fn get_exact(&self, s: SourceId, offset: u64, end: u64) -> Option<Vec<u8>> {
        let slot = self.source(s);
        let want = usize::try_from(end - offset).ok()?;
        let stall = self.cfg.stall_timeout;
        // Counted until this future ends or is dropped (the other copy won the race).
        let _counted = slot.limiter.start();
        async {
            let mut stream = tokio::time::timeout(stall, slot.src.get(offset, end - offset)).await.ok()?.ok()?;
            let mut buf: Vec<u8> = Vec::with_capacity(want);
            while buf.len() < want {
                let chunk = tokio::time::timeout(stall, stream.next()).await.ok()??.ok()?;
                slot.limiter.pace(chunk.len()).await;
                buf.extend_from_slice(&chunk);
            }
            (buf.len() == want).then_some(buf)
        }
        .await
    }
}
