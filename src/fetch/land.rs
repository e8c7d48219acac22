//! Storing a piece that arrived ("landing" it), and making room for it in a full cache.
//!
//! A piece lands once: the first copy (of its request or of a hedge) is written and committed
//! under the state lock, and later copies are dropped. The record names the piece only after
//! its bytes are in the data file (`crate::pieces`); this process keeps the piece's claim until
//! the record on disk names it, so no other process fetches it meanwhile.
//!
//! A cache at its bound first evicts whole keys no process holds (`PieceStore::reserve`);
//! failing that, this key drops its own pieces far from its readers ([`KeyFetch::evict_pieces`]),
//! never one a reader waits on, reads now, or the readahead window holds.

use super::config::MAX_RUN_BYTES;
use super::piece::{Piece, PieceIndex};
use super::stats::SourceId;
use super::{KeyFetch, lock};
use crate::pieces::CacheError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl KeyFetch {
    /// Stores a piece that arrived (unless another copy landed first) and wakes readers.
    /// `written`: the bytes are already in the data file (written as they arrived); `s`: the
    /// source that sent it; `checked`: it matched the manifest.
    pub(super) fn land(
        self: &Arc<Self>,
        i: PieceIndex,
        data: &[u8],
        written: bool,
        s: SourceId,
        checked: bool,
    ) -> Result<(), CacheError> {
        if lock(&self.state).pieces.is(i, Piece::Present) {
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
            if st.pieces.is(i, Piece::Present) {
                // Another copy landed meanwhile: the room reserved for this one is not used.
                self.store.released(need);
                return Ok(());
            }
            // The partial bytes of this piece are this request's only if it still owns it.
            let own_partial = written && matches!(st.pieces.get(i), Piece::InFlight(_)) && st.partial.contains_key(&i);
            if !own_partial {
                let (start, _) = self.piece_range(i);
                self.cache.write_at(start, data)?;
            }
            let due = self.cache.commit_piece(i.0, data)?;
            st.pieces.set(i, Piece::Present);
            st.origin.insert(i, s);
            if checked {
                st.pieces.mark_checked(i);
            }
            st.partial.remove(&i);
            st.last_landing = Instant::now();
            st.cache_error = None;
            due
        };
        self.stats.bytes_fetched.fetch_add(need, Ordering::Relaxed);
        lock(&self.landings).push(Instant::now(), need);
        if persist_due {
            self.persist_later();
        }
        self.landed.notify_waiters();
        Ok(())
    }

    /// Makes the landed pieces durable (`CachedKey::persist`: fdatasync, then the record) on
    /// a blocking thread, one persist at a time per key, and then releases their claims (a
    /// claim is kept until the record names the piece: released earlier, another process could
    /// claim a piece that is on disk but not yet in the record). Never in a request's path:
    /// the fdatasync waits for every dirty page of the key (tens of MiB behind a fast read),
    /// and a request blocked in it stopped reading its socket, its source's link idle
    /// meanwhile (about 5% of four sources' sum over a 256 MiB read). A persist that fails
    /// fails the key's readers, as a piece that cannot be stored does.
    pub(super) fn persist_later(self: &Arc<Self>) {
        if self.persisting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        // Detached: its end is seen through `persisting` and the state.
        self.rt.spawn_blocking(move || {
            loop {
                let failed = this.cache.persist().err();
                this.release_landed_claims(&mut lock(&this.state));
                this.persisting.store(false, Ordering::Release);
                if let Some(e) = failed {
                    // Not tried again here: the next landing or tick does.
                    tracing::error!("{}: persist the cache record: {e}", this.key);
                    lock(&this.state).cache_error = Some(Arc::new(e));
                    break;
                }
                // Pieces that landed while this ran and found it running: theirs too.
                if this.cache.unpersisted() == 0 || this.persisting.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Frees room in a full cache from this key itself: drops present pieces no reader waits
    /// on, not pinned for the swarm and outside the readahead window, farthest from piece `near` first. Returns whether
    /// anything was freed. (Keys not open anywhere are evicted whole by the store first.)
    fn evict_pieces(&self, near: PieceIndex, want: u64) -> bool {
        let mut st = lock(&self.state);
        let windows = st.streams.windows(true);
        let mut victims: Vec<PieceIndex> = st
            .pieces
            .indices()
            .filter(|&i| {
                st.pieces.is(i, Piece::Present)
                    && !st.demand.contains(&i)
                    && !st.pins.contains_key(&i)
                    && !self.store.is_pinned(&self.key, i.0)
                    && !windows.iter().any(|&(from, len)| i >= from && i.0 < from.0.saturating_add(len))
                    && i != near
            })
            .collect();
        victims.sort_by_key(|&i| std::cmp::Reverse(i.0.abs_diff(near.0)));
        let mut freed = 0u64;
        for i in victims {
            if freed >= want {
                break;
            }
            if self.cache.drop_piece(i.0).is_ok() {
                st.pieces.set(i, Piece::Missing);
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
}
