//! A piece manifest that a peer vouched for: stream mode's answer to keys whose backend cannot
//! check a manifest (SHA256E and the rest), so that pieces from nodes holding only part of a
//! key can be checked as they arrive.
//!
//! - It checks pieces like any manifest while nothing contradicts it. A piece from another
//!   source that fails it puts the manifest in doubt rather than striking the sender (either
//!   may lie; the key decides): the manifest is set aside, the piece is fetched again, and
//!   from then on pieces are checked by the whole key only, as without a manifest.
//! - The whole key decides. A match: the manifest made from the content is compared with the
//!   vouched one; equal, it is confirmed (and kept as trusted); different, the peer that gave
//!   it is banned. A mismatch while the manifest was in force proves it wrong: its peer is
//!   banned, the manifest dropped, and every piece is compared across the other sources and
//!   fetched again where it differs (`blame`), as for a key without a manifest.
//! - A piece from the vouching peer itself that fails its own manifest is a strike as usual.
//!
//! Strict mode never takes one: a strict reader is served only what the key or the
//! repository vouches for.

use super::piece::PieceIndex;
use super::stats::SourceId;
use super::{KeyFetch, lock};
use crate::manifest::Manifest;
use crate::source::remote::FetchError;
use std::sync::Arc;

/// The manifest a peer vouched for, and whether it is still believed.
#[derive(Debug)]
pub(super) struct Vouched {
    /// The identity of the source that gave it (a peer's `peer URL`).
    pub by: String,
    pub manifest: Arc<Manifest>,
    /// Set aside after a piece from another source failed it.
    pub in_doubt: bool,
}

impl KeyFetch {
    /// Checks pieces against `m`, vouched for by source `by`, until the key says otherwise.
    /// Ignored when a manifest is known already.
    pub fn set_vouched_manifest(&self, m: Manifest, by: String) {
        let m = match m.regroup(self.cache.piece_size) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::warn!("{}: manifest from {by} not used: {e}", self.key);
                return;
            }
        };
        if self.rep.is_banned(&by) {
            return;
        }
        let mut st = lock(&self.state);
        if st.manifest.is_some() || st.vouched.is_some() {
            return;
        }
        tracing::info!(
            "{}: checking pieces against the manifest {by} vouches for (the key checks it at the end)",
            self.key
        );
        st.manifest = Some(m.clone());
        st.vouched = Some(Vouched { by, manifest: m, in_doubt: false });
    }

    /// Who vouched for the manifest in force, if a peer did.
    pub fn vouched_by(&self) -> Option<String> {
        let st = lock(&self.state);
        st.vouched.as_ref().filter(|v| !v.in_doubt).map(|v| v.by.clone())
    }

    /// Source `s` sent piece `i`, which fails the manifest a peer vouched for: unless `s` is
    /// that peer, the manifest is in doubt (set aside) and nobody is struck. Returns whether
    /// the failure was put on the manifest's account.
    pub(super) fn doubt_vouched(&self, s: SourceId, i: PieceIndex) -> bool {
        let sender = self.source(s).src.identity().to_string();
        let mut st = lock(&self.state);
        let Some(v) = st.vouched.as_mut() else { return false };
        if v.by == sender {
            return false;
        }
        if !v.in_doubt {
            v.in_doubt = true;
            tracing::warn!(
                "{}: piece {i} from {sender} fails the manifest {} vouched for; the manifest is in doubt, \
                 pieces are checked by the whole key",
                self.key,
                v.by
            );
            st.manifest = None;
        }
        true
    }

    /// The whole key does not match while a vouched manifest was in force: it is proven
    /// wrong. Bans its peer and drops it. Returns whether there was one.
    pub(super) fn vouched_wrong(&self) -> bool {
        let by = {
            let mut st = lock(&self.state);
            let Some(v) = st.vouched.as_mut().filter(|v| !v.in_doubt) else { return false };
            v.in_doubt = true;
            let by = v.by.clone();
            st.manifest = None;
            by
        };
        self.ban_voucher(&by, "its manifest is proven wrong by the key; its pieces are fetched again");
        true
    }

    /// The key matched and `made` is its manifest: a vouched manifest that differs was wrong
    /// (its peer is banned); one that agrees is confirmed. Returns whether the manifest in
    /// force was a vouched one (the made one is then kept as the trusted manifest).
    pub(super) fn settle_vouched(&self, made: Option<&Manifest>) -> bool {
        let (by, in_force, agrees) = {
            let mut st = lock(&self.state);
            let Some(v) = st.vouched.take() else { return false };
            let agrees =
                made.and_then(|m| m.regroup(self.cache.piece_size).ok()).map(|m| m.hashes() == v.manifest.hashes());
            let in_force = !v.in_doubt;
            if in_force && agrees != Some(true) {
                st.manifest = None;
            }
            (v.by, in_force, agrees)
        };
        crate::manifest::cached::forget_vouched(&self.store, &self.key);
        match agrees {
            Some(true) => tracing::info!("{}: the manifest {by} vouched for is confirmed by the key", self.key),
            Some(false) => self.ban_voucher(&by, "its manifest does not match the content verified against the key"),
            None => {}
        }
        in_force
    }

    fn ban_voucher(&self, by: &str, why: &str) {
        self.rep.ban(by, &format!("{why} ({})", self.key));
        for s in self.source_ids() {
            if self.source(s).src.identity() == by {
                lock(&self.source(s).stats).dead = Some(FetchError::Banned(by.to_string()));
            }
        }
        crate::manifest::cached::forget_vouched(&self.store, &self.key);
    }
}

impl super::Fetcher {
    /// Who vouched for the manifest in force for `key` in the fetch running now, if a peer
    /// did (pages read through it may still be replaced).
    pub fn vouched_by(&self, key: &crate::annex::Key) -> Option<String> {
        lock(&self.keys).get(&key.to_bytes()).and_then(std::sync::Weak::upgrade).and_then(|k| k.vouched_by())
    }

    /// Whether `who` is banned in this process.
    pub fn is_banned(&self, who: &str) -> bool {
        self.reputation.is_banned(who)
    }
}
