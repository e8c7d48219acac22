//! Keeping copies: the background keeper of a node that offers space to the swarm.
//!
//! Every round ([`KeepConfig::every`]) the keeper
//! 1. takes the rules in force (signed, see [`super::rules`]) and the keys they want, from its
//!    host (the command that runs it: it lists the repository's files);
//! 2. takes the nodes of the placement: this one and every peer that answered within the
//!    **grace period** ([`KeepConfig::grace`], counted from its last answer, not from when peer
//!    exchange dropped it) and is not banned, with the space each offers.
//!    A node gone longer drops out, so the others take over its share; when it answers again
//!    it comes back in and gets the same pieces back ([`super::placement`]);
//! 3. asks every live peer for its have-map of each wanted key, and counts the copies of each
//!    piece (this node's own pieces included);
//! 4. **pins** in the piece cache exactly the pieces placement assigns to this node (in key
//!    order, up to the space it offers): reading never evicts them. Pieces it kept before and
//!    no longer is assigned (a node came back) are unpinned: surplus, evictable again;
//! 5. wants the assigned pieces it lacks **in the background** (`fetch::scheduler`: after
//!    readers, with room their limits leave, one piece a request) from every source of the key
//!    (remotes, web, peers), checked against the key's manifest as they land. A key without a
//!    manifest (the repository's, or one a peer vouches for) is not kept: this node could not
//!    vouch for its pieces. A fetch's sources are the holders it was opened with; once none
//!    of them may be asked for a missing piece (given up, banned, or not holding it), the key
//!    is opened afresh in the next round (the pieces may be at peers that got them since).
//!    Under the rules' `bwlimit` for this node, a missing piece is wanted only once the byte
//!    budget pays for it ([`Budget`]).
//!
//! Only missing assigned pieces are fetched, so the bytes a repair moves are those placement
//! moved: the share of the node lost, each piece once. A node that just started fetches
//! nothing for one grace period: it is still learning the live nodes, and placement over a
//! partial view would fetch others' shares.
//!
//! Placement trusts what peers say they offer and hold, so every round the keeper **audits**
//! each placed peer it has not audited for [`AUDIT_EVERY`]: one piece the peer claims, of a
//! key whose trusted manifest this node has, fetched and checked. A peer that sends wrong
//! bytes (or none) for a piece it claims is banned here, which takes it out of this node's
//! placement: its share is re-assigned. (Each node audits for itself: a ban is not taken on
//! another node's word.)
//!
//! What it found is its [`KeepReport`] (status, `GET /v1/keep`).
//!
//! Lock order: `state` is a leaf; no lock is held across an `.await`.

use super::budget::Budget;
use super::placement::{self, Node};
use super::{HaveMap, Peers};
use crate::annex::Key;
use crate::fetch::KeyFetch;
use crate::pieces::{PieceStore, piece_size_for};
use crate::source::remote::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default time between rounds.
pub const KEEP_EVERY: Duration = Duration::from_secs(10);
/// Default grace period of a node that stopped answering.
pub const GRACE: Duration = Duration::from_secs(300);
/// A peer is audited again after this.
pub const AUDIT_EVERY: Duration = Duration::from_secs(60);
/// Rounds without a landed piece after which a key's fetch is let go and opened afresh (its
/// sources may all have been given up for it; a new fetch asks them, and new peers, again).
const STALL_ROUNDS: u32 = 5;
/// Keys fetched in the background at once, at most.
const ACTIVE_KEYS: usize = 4;

/// How a keeper runs.
#[derive(Debug, Clone, Copy)]
pub struct KeepConfig {
    /// Bytes this node offers (its weight in placement; the bound of what it pins).
    pub offered: u64,
    pub grace: Duration,
    pub every: Duration,
}

/// How this node holds a key, as its host sees it.
pub enum Opened {
    /// In the repository's annex, whole.
    Whole,
    /// A fetch into the piece cache.
    Fetch(Arc<KeyFetch>),
    /// Cannot be read now (why).
    Unavailable(String),
}

/// What the rules in force want.
pub struct Wanted {
    /// Copies of each piece.
    pub copies: u32,
    /// The keys wanted (with sizes).
    pub keys: Vec<Key>,
    /// The space each node may keep for the swarm by the rules (`[swarm.node."UUID"]`,
    /// `[swarm.group.NAME]` `keep`), by UUID; nodes not named are bound by what they offer.
    pub limits: HashMap<String, u64>,
    /// Bytes per second this node may fetch for the swarm by the rules (`bwlimit` of its
    /// `[swarm.node."UUID"]` or group), if limited.
    pub bwlimit: Option<u64>,
}

/// What the keeper needs from the command running it.
pub trait KeepHost: Send + Sync {
    /// What the rules in force want; `None` without rules in force.
    fn wanted(&self) -> BoxFuture<'_, Option<Wanted>>;
    /// Whether the repository's annex holds `key` whole (no fetch needed).
    fn whole(&self, key: &Key) -> bool;
    /// The fetch of `key` from all its sources, with its manifest when there is one.
    fn open<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Opened>;
    /// Whether a source identity (`peer URL`) is banned.
    fn banned(&self, who: &str) -> bool;
    /// Bans a source identity (a peer that failed an audit).
    fn ban(&self, who: &str, why: &str);
    /// The trusted piece manifest of `key` this node keeps, if any (for audits).
    fn manifest(&self, key: &Key) -> Option<crate::manifest::Manifest>;
}

/// A node as the keeper sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeepNode {
    pub url: String,
    pub uuid: String,
    pub offered: u64,
    /// Bytes of wanted keys it holds (from its have-maps).
    pub used: u64,
    /// In the placement now (answered within the grace period, not banned, offers space).
    pub placed: bool,
    pub banned: bool,
}

/// What the keeper found in its last round.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeepReport {
    /// Rules are in force (else nothing is kept).
    pub rules: bool,
    pub copies: u32,
    pub offered: u64,
    pub wanted_keys: usize,
    pub wanted_pieces: u64,
    pub wanted_bytes: u64,
    /// Wanted pieces held by fewer than `copies` live nodes, as far as their have-maps tell.
    pub below_copies: u64,
    /// Pieces placement assigns to this node (within its offered space).
    pub assigned_pieces: u64,
    pub assigned_bytes: u64,
    /// Of those, held here (repair progress: `held / assigned`).
    pub held_pieces: u64,
    pub held_bytes: u64,
    /// Assigned bytes beyond the space offered: not kept.
    pub over_offered: u64,
    /// Pieces unpinned as surplus since the start.
    pub released_pieces: u64,
    /// Bytes fetched for keeping since the start.
    pub fetched_bytes: u64,
    /// Bytes per second this node may fetch for keeping, by the rules (`None`: no limit).
    #[serde(default)]
    pub bwlimit: Option<u64>,
    pub nodes: Vec<KeepNode>,
    /// Keys not kept, and why.
    pub not_kept: Vec<String>,
    /// Peers audited (one claimed piece fetched and checked) since the start, and banned for
    /// failing.
    pub audits: u64,
    pub audit_bans: u64,
    pub rounds: u64,
}

/// A key being fetched in the background.
struct Active {
    fetch: Arc<KeyFetch>,
    /// Assigned pieces still missing at the last look.
    missing: BTreeSet<usize>,
    /// Rounds in a row in which nothing landed.
    stalled: u32,
}

#[derive(Default)]
struct State {
    /// Nodes seen: UUID → (address, offered, when last seen live).
    seen: HashMap<String, (String, u64, Instant)>,
    active: BTreeMap<Vec<u8>, Active>,
    /// Keys with pinned pieces.
    pinned: BTreeSet<Vec<u8>>,
    /// When each peer (UUID) last passed an audit.
    audited: HashMap<String, Instant>,
    /// The bandwidth budget of the rules' `bwlimit`.
    bw: Budget,
    report: KeepReport,
}

/// The keeper of one node.
pub struct Keeper {
    peers: Arc<Peers>,
    host: Arc<dyn KeepHost>,
    store: Arc<PieceStore>,
    cfg: KeepConfig,
    state: Mutex<State>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The byte range of piece `i` of a key of `size` bytes in pieces of `ps`.
pub(super) fn piece_range(size: u64, ps: u64, i: u64) -> (u64, u64) {
    let a = i * ps;
    (a, (a + ps).min(size))
}

impl Keeper {
    pub fn new(peers: Arc<Peers>, host: Arc<dyn KeepHost>, store: Arc<PieceStore>, cfg: KeepConfig) -> Arc<Keeper> {
        Arc::new(Keeper { peers, host, store, cfg, state: Mutex::new(State::default()), started: Instant::now() })
    }

    /// The last round's report.
    pub fn report(&self) -> KeepReport {
        lock(&self.state).report.clone()
    }

    /// The nodes of the placement now (this one first), after noting who is live.
    /// A node's weight is the space it offers, bounded by what the rules let it keep (every
    /// node reads the same signed rules, so all weigh alike).
    fn placement(&self, now: Instant, limits: &HashMap<String, u64>) -> (Vec<Node>, Vec<KeepNode>) {
        let me = self.peers.identity().uuid.clone();
        // A peer counts as seen when it last answered, not while it merely stays listed (it
        // is listed until it failed several rounds of exchange): the grace period runs from
        // its last answer.
        let live = self.peers.nodes_seen();
        let mut st = lock(&self.state);
        for (url, uuid, offered, at) in live {
            st.seen.insert(uuid, (url, offered, at.min(now)));
        }
        st.seen.insert(me.clone(), (self.peers.own_url.clone().unwrap_or_default(), self.cfg.offered, now));
        let mut nodes = Vec::new();
        let mut shown = Vec::new();
        for (uuid, (url, offered, at)) in &st.seen {
            let banned = *uuid != me && self.host.banned(&format!("peer {url}"));
            let offered = limits.get(uuid).map_or(*offered, |&l| l.min(*offered));
            let placed = !banned && offered > 0 && now.duration_since(*at) <= self.cfg.grace;
            if placed {
                nodes.push(Node { id: uuid.clone(), offered });
            }
            shown.push(KeepNode { url: url.clone(), uuid: uuid.clone(), offered, used: 0, placed, banned });
        }
        // Gone for good after twice the grace period: forgotten.
        let grace = self.cfg.grace;
        st.seen.retain(|_, (_, _, at)| now.duration_since(*at) <= grace * 2);
        shown.sort_by_key(|n| (n.uuid != me, n.uuid.clone()));
        (nodes, shown)
    }

    /// One round (see the module doc).
    pub async fn round(&self) {
        let wanted = self.host.wanted().await;
        let no_limits = HashMap::new();
        let limits = wanted.as_ref().map_or(&no_limits, |w| &w.limits);
        let (nodes, mut shown) = self.placement(Instant::now(), limits);
        let me = self.peers.identity().uuid.clone();
        let Some(Wanted { copies, keys, limits, bwlimit }) = wanted else {
            let pinned = std::mem::take(&mut lock(&self.state).pinned);
            for kb in pinned {
                if let Ok(k) = Key::parse(&kb) {
                    self.store.pin(&k, BTreeSet::new());
                }
            }
            let mut st = lock(&self.state);
            st.active.clear();
            st.report = KeepReport {
                offered: self.cfg.offered,
                rounds: st.report.rounds + 1,
                nodes: shown,
                released_pieces: st.report.released_pieces,
                fetched_bytes: st.report.fetched_bytes,
                ..KeepReport::default()
            };
            return;
        };
        let copies_n = usize::try_from(copies.max(1)).unwrap_or(1);
        let mut r = KeepReport {
            rules: true,
            copies,
            offered: self.cfg.offered,
            wanted_keys: keys.len(),
            ..KeepReport::default()
        };
        let mut budget = limits.get(&me).map_or(self.cfg.offered, |&l| l.min(self.cfg.offered));
        let mut want_fetch: Vec<(Key, BTreeSet<usize>)> = Vec::new();
        let mut pinned_now: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut used: HashMap<String, u64> = HashMap::new();
        let now = Instant::now();
        let mut to_audit: HashMap<String, (String, Key, u64, crate::manifest::Manifest)> = HashMap::new();
        let due: BTreeSet<String> = {
            let st = lock(&self.state);
            shown
                .iter()
                .filter(|n| n.placed && n.uuid != me && !n.url.is_empty())
                .filter(|n| st.audited.get(&n.uuid).is_none_or(|t| now.duration_since(*t) > AUDIT_EVERY))
                .map(|n| n.uuid.clone())
                .collect()
        };
        for key in &keys {
            let Some(size) = key.size() else { continue };
            let ps = piece_size_for(size);
            let n = size.div_ceil(ps);
            r.wanted_pieces += n;
            r.wanted_bytes += size;
            // Have-maps of the live peers that are not banned, by UUID.
            let maps: Vec<(String, HaveMap)> = futures_util::future::join_all(
                shown.iter().filter(|s| s.uuid != me && !s.banned).map(|s| async move {
                    let h = if s.url.is_empty() { None } else { self.peers.have(&s.url, key).await };
                    (s.uuid.clone(), h)
                }),
            )
            .await
            .into_iter()
            .filter_map(|(u, h)| Some((u, h?)))
            .collect();
            for (u, h) in &maps {
                *used.entry(u.clone()).or_default() += h.held_bytes();
            }
            // One claimed piece per peer due for an audit, of a key whose manifest is known.
            let auditable: Vec<&(String, HaveMap)> = maps
                .iter()
                .filter(|(u, h)| due.contains(u) && !to_audit.contains_key(u) && h.held_bytes() > 0)
                .collect();
            if !auditable.is_empty()
                && let Some(m) = self.host.manifest(key).and_then(|m| m.regroup(ps).ok())
            {
                for (u, h) in auditable {
                    let claimed: Vec<u64> = (0..n)
                        .filter(|&i| {
                            let (a, b) = piece_range(size, ps, i);
                            h.covers(a, b - a)
                        })
                        .collect();
                    let pick = blake3::hash(format!("{u}{}", lock(&self.state).report.rounds).as_bytes());
                    let mut x = [0u8; 8];
                    x.copy_from_slice(&pick.as_bytes()[..8]);
                    if let Some(&i) =
                        claimed.get(usize::try_from(u64::from_le_bytes(x) % claimed.len().max(1) as u64).unwrap_or(0))
                        && let Some(s) = shown.iter().find(|s| &s.uuid == u)
                    {
                        to_audit.insert(u.clone(), (s.url.clone(), key.clone(), i, m.clone()));
                    }
                }
            }
            let whole = self.host.whole(key);
            let cached = if whole { None } else { self.store.open_existing(key).ok().flatten() };
            let mine = |i: u64| whole || cached.as_ref().is_some_and(|c| usize::try_from(i).is_ok_and(|i| c.has(i)));
            let kb = key.to_bytes();
            let mut assigned = BTreeSet::new();
            let mut missing = BTreeSet::new();
            for i in 0..n {
                let (a, b) = piece_range(size, ps, i);
                let held_here = mine(i);
                if held_here {
                    *used.entry(me.clone()).or_default() += b - a;
                }
                let copies_seen = usize::from(held_here) + maps.iter().filter(|(_, h)| h.covers(a, b - a)).count();
                if copies_seen < copies_n {
                    r.below_copies += 1;
                }
                if !placement::keeps(&nodes, &me, &kb, i, copies_n) {
                    continue;
                }
                if budget < b - a {
                    r.over_offered += b - a;
                    continue;
                }
                budget -= b - a;
                r.assigned_pieces += 1;
                r.assigned_bytes += b - a;
                let idx = usize::try_from(i).unwrap_or(usize::MAX);
                assigned.insert(idx);
                if held_here {
                    r.held_pieces += 1;
                    r.held_bytes += b - a;
                } else {
                    missing.insert(idx);
                }
            }
            // Pins follow the assignment: surplus pieces are released.
            if !whole {
                let before = self.store.pinned(key);
                r.released_pieces += before.difference(&assigned).count() as u64;
                if !assigned.is_empty() {
                    pinned_now.insert(kb.clone());
                }
                self.store.pin(key, assigned);
            }
            if !missing.is_empty() && !whole {
                want_fetch.push((key.clone(), missing));
            }
        }
        for s in &mut shown {
            s.used = used.get(&s.uuid).copied().unwrap_or(0);
        }
        r.nodes = shown;
        // Keys pinned before and not wanted now: released whole.
        let dropped: Vec<Vec<u8>> = {
            let mut st = lock(&self.state);
            let old = std::mem::replace(&mut st.pinned, pinned_now.clone());
            old.difference(&pinned_now).cloned().collect()
        };
        for kb in dropped {
            if let Ok(k) = Key::parse(&kb) {
                r.released_pieces += self.store.pinned(&k).len() as u64;
                self.store.pin(&k, BTreeSet::new());
            }
        }
        self.audit(to_audit, &mut r).await;
        // A node just started learns the live nodes for a grace period before it fetches:
        // with a partial view it would fetch pieces that are others' share.
        if self.started.elapsed() >= self.cfg.grace {
            let want_fetch = lock(&self.state).bw.grant(want_fetch, bwlimit, self.cfg.every, Instant::now());
            r.bwlimit = bwlimit;
            self.fetch(want_fetch, &mut r).await;
        }
        let mut st = lock(&self.state);
        r.audits += st.report.audits;
        r.audit_bans += st.report.audit_bans;
        r.released_pieces += st.report.released_pieces;
        r.fetched_bytes += st.report.fetched_bytes;
        r.rounds = st.report.rounds + 1;
        st.report = r;
    }

    /// Fetches one claimed piece of each peer due for an audit and checks it: a peer that
    /// fails is banned (out of the placement from the next round).
    async fn audit(&self, due: HashMap<String, (String, Key, u64, crate::manifest::Manifest)>, r: &mut KeepReport) {
        let checks = due.into_iter().map(|(uuid, (url, key, i, m))| async move {
            let size = m.size();
            let (a, b) = piece_range(size, m.piece_size(), i);
            // `None`: no answer (it may be going away); `Some(None)`: it answered without the
            // piece it claims (a status other than 206, or a body cut short).
            let got: Option<Option<bytes::Bytes>> = async {
                let resp = self
                    .peers
                    .request(reqwest::Method::GET, &format!("{url}/v1/keys/{}", super::key_segment(&key)))
                    .timeout(Duration::from_secs(30))
                    .header(reqwest::header::RANGE, format!("bytes={a}-{}", b - 1))
                    .send()
                    .await
                    .ok()?;
                if resp.status().as_u16() != 206 {
                    return Some(None);
                }
                let max = usize::try_from(b - a).ok()?;
                Some(super::read_bounded(resp, max).await)
            }
            .await;
            let ok = got
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|d| d.len() as u64 == b - a && usize::try_from(i).is_ok_and(|i| m.check_piece(i, d)));
            let sent = got.as_ref().is_some_and(Option::is_some);
            (uuid, url, key, i, got.is_some(), sent, ok)
        });
        for (uuid, url, key, i, answered, sent, ok) in futures_util::future::join_all(checks).await {
            r.audits += 1;
            if ok {
                lock(&self.state).audited.insert(uuid, Instant::now());
                continue;
            }
            let why = if sent {
                format!("sent bytes of piece {i} of {key} that do not match its manifest")
            } else if answered {
                format!("answered without piece {i} of {key}, which its have-map claims")
            } else {
                format!("did not answer for piece {i} of {key}, which its have-map claims")
            };
            tracing::warn!("swarm keep: audit of {url}: {why}");
            // A peer that did not answer may be going away: that is the grace period's job.
            if answered {
                self.host.ban(&format!("peer {url}"), &why);
                r.audit_bans += 1;
            }
        }
    }

    /// Counts what landed since the last round and wants what is missing now, for at most
    /// [`ACTIVE_KEYS`] keys at once.
    async fn fetch(&self, want: Vec<(Key, BTreeSet<usize>)>, r: &mut KeepReport) {
        let wanted: BTreeMap<Vec<u8>, (Key, BTreeSet<usize>)> =
            want.into_iter().map(|(k, m)| (k.to_bytes(), (k, m))).collect();
        // What landed for the keys being fetched (counted once); keys done or no longer
        // wanted are let go.
        let mut counted: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
        {
            let mut st = lock(&self.state);
            let mut done = Vec::new();
            for (kb, a) in st.active.iter_mut() {
                let size = a.fetch.size();
                let ps = a.fetch.piece_size();
                let now_here: BTreeSet<usize> = a.missing.iter().copied().filter(|&i| a.fetch.has_piece(i)).collect();
                for &i in &now_here {
                    let (x, y) = piece_range(size, ps, i as u64);
                    r.fetched_bytes += y - x;
                }
                let landed = !now_here.is_empty();
                a.stalled = if landed { 0 } else { a.stalled + 1 };
                match wanted.get(kb) {
                    // Its sources are the holders it was opened with, minus those it gave up:
                    // when none of them may be asked for a missing piece, it is opened afresh
                    // at once (the pieces may be at peers that got them since).
                    Some((_, m)) if !landed && !a.fetch.can_progress(m) => {
                        tracing::debug!(
                            "swarm keep: {}: no source left for its missing pieces; opened again",
                            a.fetch.key
                        );
                        done.push(kb.clone());
                    }
                    Some(_) if a.stalled >= STALL_ROUNDS => {
                        tracing::info!(
                            "swarm keep: {}: nothing landed for {STALL_ROUNDS} rounds; opened again",
                            a.fetch.key
                        );
                        done.push(kb.clone());
                    }
                    Some((_, m)) => a.missing = m.clone(),
                    None => done.push(kb.clone()),
                }
                // What is missing was looked at when the round began: pieces counted just now
                // may be in it, and must not be counted again.
                counted.insert(kb.clone(), now_here);
            }
            for kb in done {
                st.active.remove(&kb);
            }
        }
        for (kb, (key, missing)) in wanted {
            let known = lock(&self.state).active.get(&kb).map(|a| a.fetch.clone());
            let fetch = match known {
                Some(f) => f,
                None => {
                    if lock(&self.state).active.len() >= ACTIVE_KEYS {
                        continue;
                    }
                    match self.host.open(&key).await {
                        Opened::Fetch(f) if f.has_manifest() => f,
                        Opened::Fetch(_) => {
                            r.not_kept.push(format!("{key}: no piece manifest to check its pieces against"));
                            continue;
                        }
                        Opened::Whole => continue,
                        Opened::Unavailable(why) => {
                            r.not_kept.push(format!("{key}: {why}"));
                            continue;
                        }
                    }
                }
            };
            fetch.want_background(&missing);
            let mut st = lock(&self.state);
            let stalled = st.active.get(&kb).map_or(0, |a| a.stalled);
            let missing = match counted.get(&kb) {
                Some(c) => missing.difference(c).copied().collect(),
                None => missing,
            };
            st.active.insert(kb, Active { fetch, missing, stalled });
        }
    }

    /// Runs rounds every [`KeepConfig::every`] on `rt`, for as long as the runtime runs.
    pub fn start(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let k = self.clone();
        let every = self.cfg.every;
        rt.spawn(async move {
            loop {
                k.round().await;
                let r = k.report();
                k.peers.set_keep_report(r.clone());
                tracing::debug!(
                    "swarm keep: {} of {} assigned pieces held, {} below {} copies, {} nodes placed",
                    r.held_pieces,
                    r.assigned_pieces,
                    r.below_copies,
                    r.copies,
                    r.nodes.iter().filter(|n| n.placed).count()
                );
                tokio::time::sleep(every).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_ranges_end_at_the_size() {
        assert_eq!(piece_range(1000, 256, 0), (0, 256));
        assert_eq!(piece_range(1000, 256, 3), (768, 1000));
    }
}
