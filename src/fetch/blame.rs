//! Blame: who sent bytes that failed a check, strikes, and bans.
//!
//! - With a manifest, a piece that fails its hash is refused before it is stored; the source
//!   that sent it gets a strike and is not asked for that piece again.
//! - Without one, only the whole key can be checked. On a mismatch [`KeyFetch::resolve`] asks
//!   another source for every piece and compares; where they differ a third source decides
//!   (two against one), the disagreeing copy is replaced and its sender struck. When only two
//!   sources exist, the other copy is taken and the whole key checked again.
//!
//! [`STRIKES_TO_BAN`] strikes ban an identity ([`RangeSource::identity`]) for the life of the
//! fetcher (the mount): it is asked for nothing more, for any key.
//!
//! Lock order: `Reputation::map` is a leaf (taken alone or last).

use super::{KeyFetch, Piece, lock};
use crate::manifest::Manifest;
use crate::pieces::record::piece_hash;
use crate::source::remote::{FetchError, RangeSource};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// Strikes that ban a source.
pub const STRIKES_TO_BAN: u32 = 3;

/// What one source identity has done wrong.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Record {
    pub strikes: u32,
    pub banned: bool,
    /// The latest reasons (a few).
    pub reasons: Vec<String>,
}

/// Strikes and bans of every source identity, shared by every key of a fetcher.
#[derive(Debug, Default)]
pub struct Reputation {
    map: Mutex<HashMap<String, Record>>,
}

impl Reputation {
    /// Counts a strike against `who`; returns whether it is banned now.
    pub fn strike(&self, who: &str, why: &str) -> bool {
        let mut map = lock(&self.map);
        let r = map.entry(who.to_string()).or_default();
        r.strikes += 1;
        if r.reasons.len() >= 5 {
            r.reasons.remove(0);
        }
        r.reasons.push(why.to_string());
        if r.strikes >= STRIKES_TO_BAN && !r.banned {
            r.banned = true;
            tracing::error!("banning {who} for the life of this mount after {} strikes; last: {why}", r.strikes);
        } else {
            tracing::warn!("strike {} against {who}: {why}", r.strikes);
        }
        r.banned
    }

    pub fn is_banned(&self, who: &str) -> bool {
        lock(&self.map).get(who).is_some_and(|r| r.banned)
    }

    pub fn strikes(&self, who: &str) -> u32 {
        lock(&self.map).get(who).map_or(0, |r| r.strikes)
    }

    /// Every identity with a strike.
    pub fn snapshot(&self) -> Vec<(String, Record)> {
        let mut v: Vec<_> = lock(&self.map).iter().map(|(k, r)| (k.clone(), r.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Pieces compared at once while resolving a mismatch.
const RESOLVE_PARALLEL: usize = 12;

/// What resolving one piece found.
enum Verdict {
    /// Another source sent the same bytes.
    Agreed,
    /// The cached copy was replaced; `Some(source)` sent the bad one (when known).
    Replaced(Option<usize>),
    /// The cached copy stands; this source sent a different one.
    OtherLied(usize),
    /// Two copies differ and no third source can decide.
    TwoWay { origin: Option<usize>, other: usize },
    /// No other source could be asked, or all disagree.
    Unresolved(String),
}

impl KeyFetch {
    /// Reads piece `i` from source `s` whole.
    async fn fetch_piece(&self, s: usize, i: usize) -> Result<Vec<u8>, FetchError> {
        let (a, b) = self.cache.piece_range(i);
        let src = &self.sources[s].src;
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
        let mut ss = lock(&self.sources[s].stats);
        ss.bytes += want as u64;
        Ok(out)
    }

    /// Sources that may be asked for piece `i`, other than those in `not`, fewest strikes first.
    fn candidates(&self, i: usize, not: &[usize]) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.sources.len())
            .filter(|s| !not.contains(s))
            .filter(|&s| !self.rep.is_banned(self.sources[s].src.identity()))
            .filter(|&s| self.sources[s].src.supports_ranges() || i == 0)
            .collect();
        // Spread the pieces over the sources, the least suspect first.
        v.sort_by_key(|&s| (self.rep.strikes(self.sources[s].src.identity()), (s + i) % self.sources.len().max(1)));
        v
    }

    /// Asks the first source of `cands` that answers for piece `i`.
    async fn second_opinion(&self, i: usize, cands: &[usize]) -> Option<(usize, Vec<u8>)> {
        for &t in cands {
            match self.fetch_piece(t, i).await {
                Ok(d) => return Some((t, d)),
                Err(e) => tracing::debug!("{}: piece {i} from {}: {e}", self.key, self.sources[t].src.name()),
            }
        }
        None
    }

    async fn resolve_piece(&self, i: usize, origin: Option<usize>) -> Verdict {
        let current = self.cache.recorded_hash(i);
        let not: Vec<usize> = origin.into_iter().collect();
        let Some((t, dt)) = self.second_opinion(i, &self.candidates(i, &not)).await else {
            return Verdict::Unresolved(format!("piece {i}: no other source answered"));
        };
        let ht = piece_hash(&dt);
        if Some(ht) == current {
            return Verdict::Agreed;
        }
        let mut not3 = not.clone();
        not3.push(t);
        match self.second_opinion(i, &self.candidates(i, &not3)).await {
            Some((u, du)) => {
                let hu = piece_hash(&du);
                if hu == ht {
                    match self.replace_piece(i, &dt) {
                        Ok(()) => Verdict::Replaced(origin),
                        Err(e) => Verdict::Unresolved(format!("piece {i}: {e}")),
                    }
                } else if Some(hu) == current {
                    Verdict::OtherLied(t)
                } else {
                    let names = [t, u].map(|s| self.sources[s].src.name().to_string());
                    Verdict::Unresolved(format!("piece {i}: {} and {} disagree with each other", names[0], names[1]))
                }
            }
            // Two sources only: the whole-key check decides (see `settle_two_way`).
            None => Verdict::TwoWay { origin, other: t },
        }
    }

    /// Persists the cache and checks the whole key; on a match, the key's manifest (made in
    /// the same pass).
    async fn whole_match(&self) -> Result<Option<Manifest>, String> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.persist())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let key = self.key.clone();
        let cache = self.cache.clone();
        let (outcome, manifest) = tokio::task::spawn_blocking(move || {
            crate::manifest::whole::verify_file_with_manifest(&key, cache.data_file(), cache.piece_size)
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(manifest.filter(|_| matches!(outcome, crate::annex::backend::Outcome::Match)))
    }

    /// Disputed pieces `(piece, origin, other)` with no third opinion: for each source
    /// involved in turn, takes the other side's copy of every disputed piece and checks the
    /// whole key; the source whose copies had to go is the liar. Returns it, with the
    /// manifest of the content that matched.
    async fn settle_two_way(
        &self,
        disputes: &[(usize, Option<usize>, usize)],
    ) -> Result<Option<(usize, Manifest)>, String> {
        let mut suspects: Vec<usize> = disputes.iter().flat_map(|d| d.1.into_iter().chain([d.2])).collect();
        suspects.sort_unstable();
        suspects.dedup();
        for &x in &suspects {
            // The copy to keep for each piece: not the suspect's.
            let mut changed = Vec::new();
            for &(i, origin, other) in disputes {
                if origin == Some(x) || (origin.is_none() && other != x) {
                    let d = self.fetch_piece(other, i).await.map_err(|e| format!("piece {i}: {e}"))?;
                    self.replace_piece(i, &d).map_err(|e| e.to_string())?;
                    changed.push((i, origin));
                }
            }
            if let Some(m) = self.whole_match().await? {
                return Ok(Some((x, m)));
            }
            // Put the suspect's copies back before trying the next suspect.
            for (i, origin) in changed {
                if let Some(o) = origin {
                    let d = self.fetch_piece(o, i).await.map_err(|e| format!("piece {i}: {e}"))?;
                    self.replace_piece(i, &d).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(None)
    }

    fn replace_piece(&self, i: usize, data: &[u8]) -> Result<(), crate::pieces::CacheError> {
        self.cache.replace_piece(i, data)?;
        let mut st = lock(&self.state);
        st.origin.remove(&i);
        Ok(())
    }

    /// After a whole-key mismatch without a manifest: finds the pieces that differ between
    /// sources and the sources that sent them, replaces them, and strikes the senders once
    /// the whole key matches. Returns the manifest of the content that matched, or why nothing
    /// did.
    pub(super) async fn resolve(self: &Arc<Self>) -> Result<Manifest, String> {
        let n = self.cache.piece_count();
        let origin: HashMap<usize, usize> = lock(&self.state).origin.clone();
        tracing::warn!("{}: content does not match its key; comparing every piece across sources", self.key);
        let verdicts: Vec<(usize, Verdict)> = futures_util::stream::iter(0..n)
            .map(|i| {
                let o = origin.get(&i).copied();
                async move { (i, self.resolve_piece(i, o).await) }
            })
            .buffer_unordered(RESOLVE_PARALLEL)
            .collect()
            .await;
        let mut unresolved = Vec::new();
        let mut blamed: Vec<(usize, usize)> = Vec::new();
        let mut replaced = 0usize;
        let mut two_way: Vec<(usize, Option<usize>, usize)> = Vec::new();
        for (i, v) in verdicts {
            match v {
                Verdict::TwoWay { origin, other } => two_way.push((i, origin, other)),
                Verdict::Agreed => {}
                Verdict::Replaced(o) => {
                    replaced += 1;
                    if let Some(s) = o {
                        blamed.push((s, i));
                    }
                }
                Verdict::OtherLied(t) => blamed.push((t, i)),
                Verdict::Unresolved(why) => unresolved.push(why),
            }
        }
        let matched = if two_way.is_empty() {
            self.whole_match().await?
        } else {
            match self.settle_two_way(&two_way).await? {
                Some((liar, m)) => {
                    blamed.extend(two_way.iter().filter(|d| d.1 == Some(liar) || d.2 == liar).map(|d| (liar, d.0)));
                    Some(m)
                }
                None => None,
            }
        };
        let Some(manifest) = matched else {
            return Err(format!(
                "{replaced} pieces replaced, still no match{}",
                if unresolved.is_empty() { String::new() } else { format!("; {}", unresolved.join("; ")) }
            ));
        };
        for (s, i) in blamed {
            let who = self.sources[s].src.identity().to_string();
            let banned = self.rep.strike(&who, &format!("sent a bad piece {i} of {}", self.key));
            if banned {
                lock(&self.sources[s].stats).dead = Some(FetchError::Banned(who));
            }
            self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = lock(&self.state);
        for i in 0..n {
            if st.pieces[i] != Piece::Present && self.cache.has(i) {
                st.set(i, Piece::Present);
            }
        }
        Ok(manifest)
    }
}

/// Marks a source struck in a report.
pub(super) fn describe(rec: Option<&Record>) -> String {
    match rec {
        Some(r) if r.banned => format!(", banned after {} strikes", r.strikes),
        Some(r) if r.strikes > 0 => format!(", {} strikes", r.strikes),
        _ => String::new(),
    }
}

/// Used by the scheduler: whether source `src` may be asked for anything.
pub(super) fn usable(rep: &Reputation, src: &dyn RangeSource) -> bool {
    !rep.is_banned(src.identity())
}
