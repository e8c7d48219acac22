//! Whole-key verification: when the last piece of a key lands, the cache's record is made
//! durable and the data file hashed with the key's backend
//! (`crate::manifest::whole::verify_file_with_manifest`, which makes the key's piece manifest
//! in the same pass).
//!
//! - A match marks the key verified (strict readers without a manifest are served from then
//!   on) and, when the key had no manifest, keeps and publishes the one just made.
//! - A manifest a peer vouched for is settled here (`vouched.rs`): confirmed, or its peer
//!   banned.
//! - A mismatch with a manifest means the manifest itself is wrong; without one, blame
//!   compares pieces across sources (`blame.rs`), replaces the bad ones and strikes their
//!   senders. What cannot be resolved is quarantined: every later read fails.
//! - Anything else (the record cannot be persisted, the data cannot be read, the task
//!   panicked) is a [`VerifyError`]: logged with the key, kept in the state, and readers
//!   waiting for the verification are woken to fail with it at once rather than at their
//!   deadline. A later read that needs it starts it again.
//!
//! The verification runs on its own task; a second task awaits it, so that even a panic is
//! seen. It runs once per process and key (`State::verify`).

use super::blame::{self, Witnesses};
use super::error::{ResolveError, VerifyError};
use super::piece::{Piece, PieceIndex};
use super::stats::SourceId;
use super::{KeyFetch, State, lock};
use crate::annex::backend::Outcome;
use crate::manifest::Manifest;
use crate::pieces::CacheError;
use crate::pieces::record::PieceHash;
use crate::source::remote::{FetchError, RangeSource};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl KeyFetch {
    /// Starts the whole-key verification, once.
    pub(super) fn maybe_verify(self: &Arc<Self>, st: &mut State) {
        if st.verify.started || self.cache.is_verified() {
            return;
        }
        st.verify.started = true;
        st.verify.failed = None;
        let had_manifest = st.manifest.is_some();
        let this = self.clone();
        self.watch_verify(self.rt.spawn(async move { this.verify_whole(had_manifest).await }));
    }

    /// Awaits the verification task on a task of its own, so that its end is seen however it
    /// ends, a panic included.
    fn watch_verify(self: &Arc<Self>, task: tokio::task::JoinHandle<Result<(), VerifyError>>) {
        let this = self.clone();
        self.rt.spawn(async move { this.verify_ended(task.await) });
    }

    /// The verification task ended: readers waiting on it learn how.
    fn verify_ended(&self, ended: Result<Result<(), VerifyError>, tokio::task::JoinError>) {
        let failed = match ended {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(VerifyError::Task(e)),
        };
        if let Some(e) = failed {
            // Not verifiable (a backend without a hash) was logged where found, as news, not
            // as an error.
            if !matches!(e, VerifyError::Unverifiable(_)) {
                tracing::error!("{}: {e}", self.key);
            }
            lock(&self.state).verify.failed = Some(Arc::new(e));
        }
        self.landed.notify_waiters();
    }

    /// Verifies the complete key; without a manifest, a mismatch is resolved by comparing
    /// pieces across sources, and a match makes the key's manifest.
    async fn verify_whole(self: &Arc<Self>, had_manifest: bool) -> Result<(), VerifyError> {
        let this = self.clone();
        let (outcome, manifest) = tokio::task::spawn_blocking(move || {
            this.cache.persist().map_err(VerifyError::Persist)?;
            Ok(crate::manifest::whole::verify_file_with_manifest(
                &this.key,
                this.cache.data_file(),
                this.cache.piece_size,
            ))
        })
        .await
        .map_err(VerifyError::Task)??;
        match outcome {
            Outcome::Match => {
                // A manifest a peer vouched for is settled by the content; the one made from
                // it is then kept as the key's manifest.
                let vouched = self.settle_vouched(manifest.as_ref());
                self.verified(manifest, had_manifest && !vouched).await
            }
            Outcome::Unverifiable(why) => {
                tracing::info!("{}: complete; not verifiable ({why})", self.key);
                Err(VerifyError::Unverifiable(why))
            }
            Outcome::Io(e) => Err(VerifyError::Io(e)),
            Outcome::Mismatch(got) => {
                self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                // A manifest a peer vouched for is proven wrong: its peer is banned and the
                // pieces are settled across the other sources, as without a manifest.
                let resolved = if had_manifest && !self.vouched_wrong() {
                    Err(ResolveError::ManifestWrong)
                } else {
                    self.resolve().await
                };
                match resolved {
                    Ok(m) => {
                        tracing::warn!("{}: bad pieces replaced; content now matches its key", self.key);
                        self.settle_vouched(Some(&m));
                        self.verified(Some(m), false).await
                    }
                    Err(why) => {
                        self.quarantine(&format!("hash {got}; {why}"));
                        Ok(())
                    }
                }
            }
        }
    }

    /// Settles a mismatch with `blame::resolve`, then strikes the senders of bad pieces and
    /// marks the replaced pieces present.
    async fn resolve(self: &Arc<Self>) -> Result<Manifest, ResolveError> {
        let origin = lock(&self.state).origin.clone();
        tracing::warn!("{}: content does not match its key; comparing every piece across sources", self.key);
        let r = blame::resolve(&**self, &self.rep, &origin).await?;
        for (s, i) in r.blamed {
            let who = self.source(s).src.identity().to_string();
            if self.rep.strike(&who, &format!("sent a bad piece {i} of {}", self.key)) {
                lock(&self.source(s).stats).dead = Some(FetchError::Banned(who));
            }
            self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = lock(&self.state);
        for i in st.pieces.indices() {
            if !st.pieces.is(i, Piece::Present) && self.cache.has(i.0) {
                st.pieces.set(i, Piece::Present);
            }
        }
        Ok(r.manifest)
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

    async fn verified(self: &Arc<Self>, manifest: Option<Manifest>, had_manifest: bool) -> Result<(), VerifyError> {
        self.stats.verified.fetch_add(1, Ordering::Relaxed);
        let recorded = self.cache.mark_verified();
        tracing::info!("{}: complete and verified", self.key);
        if let Some(m) = manifest.filter(|_| !had_manifest) {
            let this = self.clone();
            let kept = tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::manifest::cached::save(&this.store, &m) {
                    tracing::warn!("{}: keep its piece manifest in the cache: {e}", this.key);
                }
                if let Some(hook) = &this.cfg.on_verified {
                    (hook.0)(&m);
                }
                this.set_manifest(m);
            })
            .await;
            if let Err(e) = kept {
                tracing::warn!("{}: keep and publish its piece manifest: {e}", self.key);
            }
        }
        // Verified in memory either way (readers are served); a record that could not say so
        // means the next process verifies again.
        if let Err(e) = recorded {
            tracing::warn!("{}: {}", self.key, VerifyError::Record(e));
        }
        Ok(())
    }
}

/// What blame sees of a key's fetch.
impl Witnesses for KeyFetch {
    fn piece_count(&self) -> usize {
        self.cache.piece_count()
    }

    fn source_count(&self) -> usize {
        self.sources.len()
    }

    fn source(&self, s: SourceId) -> &dyn RangeSource {
        &*KeyFetch::source(self, s).src
    }

    async fn fetch_piece(&self, s: SourceId, i: PieceIndex) -> Result<Vec<u8>, FetchError> {
        let (a, b) = self.piece_range(i);
        let src = &KeyFetch::source(self, s).src;
        let stall = self.cfg.stall_timeout;
        let mut stream =
            tokio::time::timeout(stall, src.get(a, b - a)).await.map_err(|_| FetchError::Stalled(stall))??;
        let want = usize::try_from(b - a).unwrap_or(0);
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            match tokio::time::timeout(stall, stream.next()).await.map_err(|_| FetchError::Stalled(stall))? {
                Some(Ok(c)) => out.extend_from_slice(&c),
                Some(Err(e)) => return Err(e),
                None => return Err(FetchError::ShortBody { got: out.len() as u64, want: want as u64 }),
            }
        }
        out.truncate(want);
        lock(&KeyFetch::source(self, s).stats).bytes += want as u64;
        Ok(out)
    }

    fn recorded_hash(&self, i: PieceIndex) -> Option<PieceHash> {
        self.cache.recorded_hash(i.0)
    }

    fn replace_piece(&self, i: PieceIndex, data: &[u8]) -> Result<(), CacheError> {
        self.cache.replace_piece(i.0, data)?;
        // Whoever sent the copy replaced is no longer its origin.
        lock(&self.state).origin.remove(&i);
        Ok(())
    }

    async fn whole_match(&self) -> Result<Option<Manifest>, ResolveError> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.persist())
            .await
            .map_err(ResolveError::Task)?
            .map_err(ResolveError::Persist)?;
        let key = self.key.clone();
        let cache = self.cache.clone();
        let (outcome, manifest) = tokio::task::spawn_blocking(move || {
            crate::manifest::whole::verify_file_with_manifest(&key, cache.data_file(), cache.piece_size)
        })
        .await
        .map_err(ResolveError::Task)?;
        Ok(manifest.filter(|_| matches!(outcome, Outcome::Match)))
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
