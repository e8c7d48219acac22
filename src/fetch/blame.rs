//! Blame: who sent bytes that failed a check, strikes, and bans.
//!
//! - With a manifest, a piece that fails its hash is refused before it is stored; the source
//!   that sent it gets a strike and is not asked for that piece again.
//! - Without one, only the whole key can be checked. On a mismatch [`resolve`] asks another
//!   source for every piece and compares; where they differ a third source decides (two
//!   against one), the disagreeing copy is replaced. When only two sources exist, the other
//!   copy is taken and the whole key checked again. Once the whole key matches, the senders
//!   of the copies that had to go are returned to be struck.
//!
//! [`resolve`] sees the key's fetch only through [`Witnesses`]: its sources, a piece from a
//! source, the cached piece's hash, replacing a cached piece, checking the whole key. It
//! neither reads nor changes the fetcher's state; the caller strikes and updates it.
//!
//! [`STRIKES_TO_BAN`] strikes ban an identity ([`RangeSource::identity`]) for the life of the
//! fetcher (the mount): it is asked for nothing more, for any key.
//!
//! Lock order: `Reputation::map` is a leaf (taken alone or last).

use super::error::{Doubt, ResolveError};
use super::lock;
use super::piece::PieceIndex;
use super::stats::SourceId;
use crate::manifest::Manifest;
use crate::pieces::CacheError;
use crate::pieces::record::{PieceHash, piece_hash};
use crate::source::remote::{FetchError, RangeSource};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

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

    /// Bans `who` at once (it vouched for something the key proved wrong).
    pub fn ban(&self, who: &str, why: &str) {
        let mut map = lock(&self.map);
        let r = map.entry(who.to_string()).or_default();
        r.strikes += 1;
        if r.reasons.len() >= 5 {
            r.reasons.remove(0);
        }
        r.reasons.push(why.to_string());
        if !r.banned {
            r.banned = true;
            tracing::error!("banning {who} for the life of this mount: {why}");
        }
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

/// What resolving a whole-key mismatch needs from the fetch of a key.
pub trait Witnesses: Sync {
    fn piece_count(&self) -> usize;
    fn source_count(&self) -> usize;
    fn source(&self, s: SourceId) -> &dyn RangeSource;
    /// Piece `i` read whole from source `s`.
    fn fetch_piece(&self, s: SourceId, i: PieceIndex) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
    /// The hash the cache's record holds for piece `i`.
    fn recorded_hash(&self, i: PieceIndex) -> Option<PieceHash>;
    /// Replaces the cached copy of piece `i`.
    fn replace_piece(&self, i: PieceIndex, data: &[u8]) -> Result<(), CacheError>;
    /// Checks the whole cached key; on a match, its manifest (made in the same pass).
    fn whole_match(&self) -> impl Future<Output = Result<Option<Manifest>, ResolveError>> + Send;
}

/// A resolved mismatch: the manifest of the content that now matches, and who sent which
/// bad piece (to be struck).
#[derive(Debug)]
pub struct Resolution {
    pub manifest: Manifest,
    pub blamed: Vec<(SourceId, PieceIndex)>,
}

/// What resolving one piece found.
enum Verdict {
    /// Another source sent the same bytes.
    Agreed,
    /// The cached copy was replaced; `Some(source)` sent the bad one (when known).
    Replaced(Option<SourceId>),
    /// The cached copy stands; this source sent a different one.
    OtherLied(SourceId),
    /// Two copies differ and no third source can decide.
    TwoWay { origin: Option<SourceId>, other: SourceId },
    /// No other source could be asked, or all disagree.
    Unresolved(Doubt),
}

/// A piece in dispute between two sources: `(piece, origin, other)`.
type Dispute = (PieceIndex, Option<SourceId>, SourceId);

/// Sources that may be asked for piece `i`, other than those in `not`, fewest strikes first.
fn candidates<W: Witnesses>(w: &W, rep: &Reputation, i: PieceIndex, not: &[SourceId]) -> Vec<SourceId> {
    let n = w.source_count();
    let mut v: Vec<SourceId> = (0..n)
        .map(SourceId)
        .filter(|s| !not.contains(s))
        .filter(|&s| !rep.is_banned(w.source(s).identity()))
        .filter(|&s| w.source(s).supports_ranges() || i.0 == 0)
        .collect();
    // Spread the pieces over the sources, the least suspect first.
    v.sort_by_key(|&s| (rep.strikes(w.source(s).identity()), (s.0 + i.0) % n.max(1)));
    v
}

/// Asks the first source of `cands` that answers for piece `i`.
async fn second_opinion<W: Witnesses>(w: &W, i: PieceIndex, cands: &[SourceId]) -> Option<(SourceId, Vec<u8>)> {
    for &t in cands {
        match w.fetch_piece(t, i).await {
            Ok(d) => return Some((t, d)),
            Err(e) => tracing::debug!("piece {i} from {}: {e}", w.source(t).name()),
        }
    }
    None
}

async fn resolve_piece<W: Witnesses>(w: &W, rep: &Reputation, i: PieceIndex, origin: Option<SourceId>) -> Verdict {
    let current = w.recorded_hash(i);
    let not: Vec<SourceId> = origin.into_iter().collect();
    let Some((t, dt)) = second_opinion(w, i, &candidates(w, rep, i, &not)).await else {
        return Verdict::Unresolved(Doubt::NoOtherSource(i.0));
    };
    let ht = piece_hash(&dt);
    if Some(ht) == current {
        return Verdict::Agreed;
    }
    let mut not3 = not.clone();
    not3.push(t);
    match second_opinion(w, i, &candidates(w, rep, i, &not3)).await {
        Some((u, du)) => {
            let hu = piece_hash(&du);
            if hu == ht {
                match w.replace_piece(i, &dt) {
                    Ok(()) => Verdict::Replaced(origin),
                    Err(source) => Verdict::Unresolved(Doubt::Cache { piece: i.0, source }),
                }
            } else if Some(hu) == current {
                Verdict::OtherLied(t)
            } else {
                let [a, b] = [t, u].map(|s| w.source(s).name().to_string());
                Verdict::Unresolved(Doubt::Disagree { piece: i.0, a, b })
            }
        }
        // Two sources only: the whole-key check decides (see `settle_two_way`).
        None => Verdict::TwoWay { origin, other: t },
    }
}

/// Piece `i` from source `s`, into the cache.
async fn take_copy<W: Witnesses>(w: &W, s: SourceId, i: PieceIndex) -> Result<(), ResolveError> {
    let d = w.fetch_piece(s, i).await.map_err(|source| ResolveError::Fetch { piece: i.0, source })?;
    w.replace_piece(i, &d).map_err(|source| ResolveError::Cache { piece: i.0, source })
}

/// Disputed pieces with no third opinion: for each source involved in turn, takes the other
/// side's copy of every disputed piece and checks the whole key; the source whose copies had
/// to go is the liar. Returns it, with the manifest of the content that matched.
async fn settle_two_way<W: Witnesses>(
    w: &W,
    disputes: &[Dispute],
) -> Result<Option<(SourceId, Manifest)>, ResolveError> {
    let mut suspects: Vec<SourceId> = disputes.iter().flat_map(|d| d.1.into_iter().chain([d.2])).collect();
    suspects.sort_unstable();
    suspects.dedup();
    for &x in &suspects {
        // The copy to keep for each piece: not the suspect's.
        let mut changed = Vec::new();
        for &(i, origin, other) in disputes {
            if origin == Some(x) || (origin.is_none() && other != x) {
                take_copy(w, other, i).await?;
                changed.push((i, origin));
            }
        }
        if let Some(m) = w.whole_match().await? {
            return Ok(Some((x, m)));
        }
        // Put the suspect's copies back before trying the next suspect.
        for (i, origin) in changed {
            if let Some(o) = origin {
                take_copy(w, o, i).await?;
            }
        }
    }
    Ok(None)
}

/// After a whole-key mismatch without a manifest: finds the pieces that differ between
/// sources and the sources that sent them (`origin`: who sent each cached piece, when known),
/// replaces them, and once the whole key matches returns its manifest and whom to strike.
pub async fn resolve<W: Witnesses>(
    w: &W,
    rep: &Reputation,
    origin: &HashMap<PieceIndex, SourceId>,
) -> Result<Resolution, ResolveError> {
    let n = w.piece_count();
    let verdicts: Vec<(PieceIndex, Verdict)> = futures_util::stream::iter((0..n).map(PieceIndex))
        .map(|i| {
            let o = origin.get(&i).copied();
            async move { (i, resolve_piece(w, rep, i, o).await) }
        })
        .buffer_unordered(RESOLVE_PARALLEL)
        .collect()
        .await;
    let mut doubts = Vec::new();
    let mut blamed: Vec<(SourceId, PieceIndex)> = Vec::new();
    let mut replaced = 0usize;
    let mut two_way: Vec<Dispute> = Vec::new();
    for (i, v) in verdicts {
        match v {
            Verdict::TwoWay { origin, other } => two_way.push((i, origin, other)),
            Verdict::Agreed => {}
            Verdict::Replaced(o) => {
                replaced += 1;
                blamed.extend(o.map(|s| (s, i)));
            }
            Verdict::OtherLied(t) => blamed.push((t, i)),
            Verdict::Unresolved(why) => doubts.push(why),
        }
    }
    let matched = if two_way.is_empty() {
        w.whole_match().await?
    } else {
        match settle_two_way(w, &two_way).await? {
            Some((liar, m)) => {
                blamed.extend(two_way.iter().filter(|d| d.1 == Some(liar) || d.2 == liar).map(|d| (liar, d.0)));
                Some(m)
            }
            None => None,
        }
    };
    match matched {
        Some(manifest) => Ok(Resolution { manifest, blamed }),
        None => Err(ResolveError::NoMatch { replaced, doubts }),
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
