//! Reads: [`KeyFetch::read`] demands the pieces a read covers, moves the readahead window,
//! waits for the pieces (or, in stream mode without a manifest, for the arrived prefix of a
//! piece still in flight), and reads them from the cache. A cold seek without a manifest is
//! read directly from the sources first, its pieces demanded only when that fails or is
//! late (`direct.rs`).
//!
//! The readahead window starts at [`INITIAL_WINDOW_BYTES`] after the last read, doubles while
//! reading is sequential (up to [`MAX_WINDOW_BYTES`], and never more than a quarter of the
//! cache) and shrinks back on a seek.
//!
//! A reader waits on the `landed` notification, registered before it looks at the state, so
//! no wake-up is lost. It fails at once when the key is quarantined, the cache failed to store
//! a piece it needs, no source is left for a piece it needs, or (strict mode without a
//! manifest) the whole-key verification it waits for failed; and after the configured
//! deadline when nothing of the key lands. Pieces a read covers are pinned while it runs, so
//! a full cache never drops them under it.

use super::config::{INITIAL_WINDOW_BYTES, MAX_WINDOW_BYTES, SEQUENTIAL_SLACK, TICK};
use super::direct::DIRECT_FIRST;
use super::error::{ReadError, StrictRefusal};
use super::piece::{Piece, PieceIndex};
use super::{KeyFetch, State, lock};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl KeyFetch {
    /// Reads `len` bytes at `offset` (clamped to the key's size), fetching what is missing.
    #[tracing::instrument(level = "trace", skip(self), fields(key = %self.key))]
    pub async fn read(self: &Arc<Self>, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let size = self.cache.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let ps = self.cache.piece_size;
        let first = PieceIndex(usize::try_from(offset / ps).unwrap_or(usize::MAX));
        let last = PieceIndex(usize::try_from((end - 1) / ps).unwrap_or(usize::MAX));
        let seek;
        // With a manifest, the pieces of the read nobody has asked for yet (`direct.rs`).
        let unasked: Vec<PieceIndex>;
        {
            let mut st = lock(&self.state);
            // Sequential reading grows its stream's readahead window; a seek starts a stream
            // with a small one (`streams.rs`). Readahead never takes more than a quarter of
            // the cache, so it cannot crowd out the pieces being read (a cache smaller than
            // the window would evict its own readahead).
            let max_window = usize::try_from(MAX_WINDOW_BYTES.min(self.store.limit() / 4) / ps).unwrap_or(1).max(1);
            let initial = usize::try_from(INITIAL_WINDOW_BYTES / ps).unwrap_or(1).max(1);
            seek = !st.streams.read(offset, end, initial, max_window);
            // A new read tries the cache again (space may have been freed since), and a
            // verification that could not conclude when it waits for one.
            st.cache_error = None;
            if st.verify.failed.is_some() && self.whole_key_first(&st) {
                st.verify.failed = None;
                st.verify.started = false;
            }
            // Pinned pieces are never dropped to make room while this read needs them.
            for i in PieceIndex::range(first, last.next()) {
                *st.pins.entry(i).or_insert(0) += 1;
            }
            unasked = if st.manifest.is_some() {
                PieceIndex::range(first, last.next()).filter(|&i| st.pieces.is(i, Piece::Missing)).collect()
            } else {
                Vec::new()
            };
        }
        let result = self.read_pinned(offset, end, first, last, seek, unasked).await;
        let mut st = lock(&self.state);
        for i in PieceIndex::range(first, last.next()) {
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

    /// A pinned read: from its pieces; a cold seek directly first (`direct.rs`), its pieces
    /// only if that fails or is late, and then whichever comes first.
    async fn read_pinned(
        self: &Arc<Self>,
        offset: u64,
        end: u64,
        first: PieceIndex,
        last: PieceIndex,
        seek: bool,
        unasked: Vec<PieceIndex>,
    ) -> Result<Vec<u8>, ReadError> {
        // A strict read that can never be served asks no source for anything: refused
        // before the cold-seek path schedules its pieces.
        if self.whole_key_first(&lock(&self.state)) && !self.cache.is_verified() {
            self.strict_possible()?;
        }
        // Also for a read counted as continuing a stream: a read up to 2 MiB behind the last
        // one is (the kernel sends a stream's reads out of order) and its pieces may be asked
        // of no one yet.
        self.parts_first(unasked).await;
        let (cold, missing) = if seek {
            let st = lock(&self.state);
            let missing: Vec<PieceIndex> =
                PieceIndex::range(first, last.next()).filter(|&i| st.pieces.is(i, Piece::Missing)).collect();
            let cold = !missing.is_empty() || PieceIndex::range(first, last.next()).any(|i| self.far_in_flight(&st, i));
            (cold, missing)
        } else {
            (false, Vec::new())
        };
        if !cold {
            return self.read_pieces(offset, end, first, last).await;
        }
        // A cold seek that may be read directly is read so first (`direct.rs`): its pieces
        // are asked only when the direct read fails or is late. Not at the head, where
        // sequential readers start: their pieces are wanted at once, and the direct read goes
        // to the least busy source after them.
        let head = offset < SEQUENTIAL_SLACK;
        let mut late = None;
        if !head {
            let direct = self.direct_sources(&lock(&self.state), offset, end);
            if !direct.is_empty() {
                let mut race = Box::pin(self.clone().direct_race(direct, offset, end));
                match tokio::time::timeout(DIRECT_FIRST, race.as_mut()).await {
                    Ok(Some(bytes)) => return Ok(bytes),
                    Ok(None) => {}
                    Err(_) => late = Some(race),
                }
            }
        }
        lock(&self.state).demand.extend(missing);
        self.schedule();
        let split: Vec<PieceIndex> = {
            let st = lock(&self.state);
            PieceIndex::range(first, last.next()).filter_map(|i| self.split_candidate(&st, i)).collect()
        };
        // Pieces are checked (a manifest): each piece of the read is also asked in parts of
        // the idle sources (a read across two pieces waits for both), and the reader waits
        // for whichever copy lands first.
        for i in split {
            self.rt.spawn(self.clone().split_piece(i));
        }
        let direct = match late {
            Some(race) => race,
            None if head => {
                let direct = self.direct_sources(&lock(&self.state), offset, end);
                if direct.is_empty() {
                    return self.read_pieces(offset, end, first, last).await;
                }
                Box::pin(self.clone().direct_race(direct, offset, end))
            }
            None => return self.read_pieces(offset, end, first, last).await,
        };
        let pieces = self.read_pieces(offset, end, first, last);
        tokio::pin!(pieces);
        // The late direct read goes on beside the pieces; if it fails, the reader waits for
        // its pieces.
        tokio::select! {
            biased;
            r = &mut pieces => r,
            Some(bytes) = direct => Ok(bytes),
        }
    }

    async fn read_pieces(
        self: &Arc<Self>,
        offset: u64,
        end: u64,
        first: PieceIndex,
        last: PieceIndex,
    ) -> Result<Vec<u8>, ReadError> {
        let mut hit = true;
        let read_started = Instant::now();
        let pieces = || PieceIndex::range(first, last.next());
        // A piece that fails its check in the cache is dropped and fetched again, a few times.
        for _attempt in 0..3 {
            loop {
                let notified = self.landed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut st = lock(&self.state);
                    if !self.wait_for(&mut st, end, first, last, read_started)? {
                        break;
                    }
                    hit = false;
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
            let partial: Vec<PieceIndex> = {
                let st = lock(&self.state);
                pieces().filter(|&i| !st.pieces.is(i, Piece::Present)).collect()
            };
            let res = tokio::task::block_in_place(|| {
                if partial.is_empty() {
                    return cache.read(offset, &mut buf);
                }
                // Piece by piece: checked pieces through the cache, arriving ones raw.
                let ps = cache.piece_size;
                for i in pieces() {
                    let a = offset.max(i.0 as u64 * ps);
                    let b = end.min((i.0 as u64 + 1) * ps);
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
                    for i in pieces() {
                        if !self.cache.has(i.0) && st.pieces.is(i, Piece::Present) {
                            st.pieces.set(i, Piece::Missing);
                        }
                    }
                }
            }
        }
        Err(ReadError::CacheKeepsFailing { key: self.key.to_string_lossy() })
    }

    /// Looks at the state for a read ending at `end` (pieces `first..=last`): whether it must
    /// wait (its missing pieces are demanded then), or why it fails.
    fn wait_for(
        &self,
        st: &mut State,
        end: u64,
        first: PieceIndex,
        last: PieceIndex,
        read_started: Instant,
    ) -> Result<bool, ReadError> {
        if let Some(p) = self.cache.poisoned() {
            return Err(ReadError::Poisoned(p));
        }
        let pieces = || PieceIndex::range(first, last.next());
        let whole_first = self.whole_key_first(st) && !self.cache.is_verified();
        if whole_first {
            self.strict_possible()?;
            if let Some(e) = &st.verify.failed {
                return Err(ReadError::Verify { key: self.key.to_string_lossy(), source: e.clone() });
            }
            st.want_all = true;
        }
        if let Some(e) = &st.cache_error
            && !pieces().all(|i| st.pieces.is(i, Piece::Present))
        {
            return Err(ReadError::Cache(e.clone()));
        }
        let ps = self.cache.piece_size;
        let partial_ok = self.partial_serving(st);
        // A piece still arriving serves a reader whose bytes are already in (stream mode
        // without a manifest only).
        let ready = |i: PieceIndex| {
            let start = i.0 as u64 * ps;
            st.pieces.is(i, Piece::Present)
                || partial_ok && st.partial.get(&i).is_some_and(|&have| end.min(start + ps) - start <= have)
        };
        let missing: Vec<PieceIndex> = pieces().filter(|&i| !ready(i)).collect();
        if missing.is_empty() && !whole_first {
            return Ok(false);
        }
        if let Some(&i) = missing
            .iter()
            .find(|&&i| st.pieces.is(i, Piece::Missing) && !self.source_ids().any(|s| self.may_ask(st, s, i)))
            && !self.anything_in_flight_locked(st)
        {
            return Err(ReadError::NoSource {
                key: self.key.to_string_lossy(),
                why: format!("no source left for piece {i}: {}", self.sources_report()),
            });
        }
        st.demand.extend(missing.iter().copied());
        if st.last_landing.max(read_started).elapsed() > self.cfg.read_deadline {
            return Err(ReadError::Deadline {
                key: self.key.to_string_lossy(),
                secs: self.cfg.read_deadline.as_secs(),
                why: self.sources_report(),
            });
        }
        Ok(true)
    }

    fn all_sources_gone(&self) -> bool {
        !self.source_ids().any(|s| self.source_alive(s))
    }

    /// Whether piece `i` is in flight behind other pieces of its request: it comes only once
    /// those have, which for a long readahead run can be most of a second.
    pub(super) fn far_in_flight(&self, st: &State, i: PieceIndex) -> bool {
        let Piece::InFlight(id) = st.pieces.get(i) else { return false };
        st.requests.get(&id).is_some_and(|r| r.next.load(Ordering::Relaxed) < i.0)
    }

    fn anything_in_flight(&self) -> bool {
        self.anything_in_flight_locked(&lock(&self.state))
    }

    fn anything_in_flight_locked(&self, st: &State) -> bool {
        // A verification that failed counts until the reader sees its error (on its next look).
        !st.requests.is_empty() || st.pieces.any(Piece::Elsewhere) || (st.verify.started && st.want_all)
    }

    /// Strict mode without a manifest serves a key only once it is whole and verified: that
    /// needs a backend with a hash and room for the whole key in the cache.
    fn strict_possible(&self) -> Result<(), ReadError> {
        let refuse = |why| Err(ReadError::Strict { key: self.key.to_string_lossy(), why });
        if crate::annex::backend::hasher_for(self.key.variety()).is_none() {
            return refuse(StrictRefusal::NoHash { backend: String::from_utf8_lossy(self.key.variety()).into_owned() });
        }
        if self.cache.size > self.store.limit() / 2 {
            return refuse(StrictRefusal::TooLarge { size: self.cache.size, limit: self.store.limit() });
        }
        Ok(())
    }

    /// Checks the present pieces `first..=last` not yet checked against the manifest (pieces
    /// cached before it was known); drops those that fail. Returns whether all passed.
    fn check_against_manifest(&self, first: PieceIndex, last: PieceIndex) -> bool {
        let (m, todo) = {
            let st = lock(&self.state);
            let Some(m) = st.manifest.clone() else { return true };
            let todo: Vec<PieceIndex> = PieceIndex::range(first, last.next())
                .filter(|&i| st.pieces.is(i, Piece::Present) && !st.pieces.checked(i))
                .collect();
            (m, todo)
        };
        let mut all = true;
        for i in todo {
            let (a, b) = self.piece_range(i);
            let mut buf = vec![0u8; usize::try_from(b - a).unwrap_or(0)];
            let ok = tokio::task::block_in_place(|| self.cache.read(a, &mut buf)).is_ok() && m.check_piece(i.0, &buf);
            let mut st = lock(&self.state);
            if !st.pieces.is(i, Piece::Present) {
                // Dropped meanwhile (evicted): fetched again anyway.
                all = false;
            } else if ok {
                st.pieces.mark_checked(i);
            } else {
                tracing::warn!("{}: cached piece {i} fails its manifest hash; fetching it again", self.key);
                self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                let _ = self.cache.drop_piece(i.0);
                st.pieces.set(i, Piece::Missing);
                all = false;
            }
        }
        all
    }
}
