//! The swarm: annexfs nodes serve the content they can vouch for to each other, with no
//! tracker.
//!
//! - [`server`]: the HTTP server of a node (`annexfs serve`, mount option `serve=`).
//! - [`Peers`]: the peers a node knows (from `.annexfs.toml`'s `[[peer]]`, `--peer`, and from
//!   each other: every round a node asks each peer for the peers it knows and, when it serves,
//!   announces itself to those that do not list it). A round also starts as soon as the
//!   node's server listens ([`Peers::kick`]). An address becomes a peer (a source, and listed to others)
//!   only once it answered `GET /v1/hello` as a node of the same repository ([`identity`]);
//!   the table of addresses is bounded ([`table`]: silent candidates go first), and so are the
//!   checks running at once. A peer that fails [`DROP_AFTER`] rounds in a row is dropped and
//!   tried again after [`RETRY_AFTER`].
//! - [`PeerSource`]: a peer as a source of the fetcher, for exactly the pieces its have-map
//!   lists (refreshed every [`HAVE_TTL`]); its bytes are checked, struck and banned like any
//!   other source's.
//!
//! Protocol (all under `/v1`, keys percent-encoded in the path):
//!
//! | request | answer |
//! |---|---|
//! | `GET`/`HEAD /v1/keys/KEY` with one `Range` | 206 with the bytes (416 for a range outside the key or several ranges; 404 for what the node cannot vouch for) |
//! | `GET /v1/keys/KEY/have` | [`HaveMap`] as JSON |
//! | `GET /v1/keys/KEY/manifest` | the key's piece manifest, if the node has one |
//! | `GET /v1/hello` | [`identity::Hello`]: the node's repository UUID and the repositories it knows |
//! | `GET /v1/peers` | `{"peers": [URL...]}`: the peers that answered |
//! | `POST /v1/announce` | body `{"url": URL, "uuid": UUID}`: a node nominating itself (202; checked before it is listed; 429 beyond the rate per address) |
//! | `GET /v1/keep` | [`keep::KeepReport`]: what the node keeps for the swarm (404 when it keeps nothing) |
//!
//! With a token (`ANNEXFS_SWARM_TOKEN`), every request needs `Authorization: Bearer TOKEN`.

pub mod budget;
pub mod identity;
pub mod keep;
mod peer_source;
pub mod placement;
pub mod priority;
pub mod rules;
pub mod server;
pub mod table;
mod watched;

pub use identity::{Hello, Identity, Verdict};
pub use peer_source::PeerSource;
use table::{Added, Table};
pub use table::{DROP_AFTER, MAX_PEERS, RETRY_AFTER, TableCounts};

use crate::annex::Key;
use crate::source::remote::RangeSource;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Rounds of peer exchange.
pub const EXCHANGE_EVERY: Duration = Duration::from_secs(10);
/// Hello checks running at once, at most.
const MAX_CHECKS: usize = 8;
/// Candidates checked per round, at most.
const CHECKS_PER_ROUND: usize = 64;
/// Addresses taken from one peer's list per round, at most: one peer cannot crowd out the
/// candidates others name (nor the table).
const LEARN_PER_PEER: usize = 16;
/// Bytes of a peer list read at most.
const MAX_PEERS_BYTES: usize = 1 << 20;
/// A have-map is asked again after this.
pub const HAVE_TTL: Duration = Duration::from_secs(2);
/// How long a peer may take to answer a have-map or peer request.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// The environment variable holding the swarm's bearer token.
pub const TOKEN_ENV: &str = "ANNEXFS_SWARM_TOKEN";

/// Which byte ranges of a key a node holds verified.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HaveMap {
    pub size: u64,
    /// Half-open byte ranges `[start, end)`, sorted, disjoint.
    pub ranges: Vec<(u64, u64)>,
}

impl HaveMap {
    /// Whether `[offset, offset + len)` is held.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.ranges.iter().any(|&(a, b)| a <= offset && end <= b)
    }

    pub fn held_bytes(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    /// Builds the map from a per-piece flag.
    pub fn from_pieces(size: u64, piece_size: u64, present: impl Iterator<Item = bool>) -> HaveMap {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (i, p) in present.enumerate() {
            if !p {
                continue;
            }
            let a = i as u64 * piece_size;
            let b = (a + piece_size).min(size);
            match ranges.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => ranges.push((a, b)),
            }
        }
        HaveMap { size, ranges }
    }
}

/// The body of `r`, if it is at most `max` bytes.
async fn read_bounded(r: reqwest::Response, max: usize) -> Option<bytes::Bytes> {
    if r.content_length().is_some_and(|n| n > max as u64) {
        return None;
    }
    let mut out = bytes::BytesMut::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        let c = c.ok()?;
        if out.len() + c.len() > max {
            return None;
        }
        out.extend_from_slice(&c);
    }
    Some(out.freeze())
}

/// The path segment of a key.
pub fn key_segment(key: &Key) -> String {
    percent_encoding::percent_encode(&key.to_bytes(), percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The peers a node knows.
pub struct Peers {
    /// This node's own URL when it serves (announced to others, never a peer of itself).
    pub own_url: Option<String>,
    identity: Identity,
    table: Mutex<Table>,
    client: reqwest::Client,
    token: Option<String>,
    rt: tokio::runtime::Handle,
    /// Hello checks running at most at once (announcements come from anyone).
    checks: Arc<tokio::sync::Semaphore>,
    /// Milliseconds between rounds of peer exchange ([`EXCHANGE_EVERY`] unless set).
    exchange_ms: std::sync::atomic::AtomicU64,
    /// The keeper's last report, when this node keeps pieces for the swarm.
    keep_report: Mutex<Option<keep::KeepReport>>,
    /// Wakes the exchange loop for a round now (the node started serving, the round time
    /// changed).
    kick: Arc<tokio::sync::Notify>,
}

fn normalise(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url.trim()).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.as_str().trim_end_matches('/').to_string())
}

impl Peers {
    /// Peers starting from `urls` (given by the user), for a node that is `identity`, asked
    /// with `client` (which applies the address policy).
    pub fn new(
        urls: &[String],
        own_url: Option<String>,
        identity: Identity,
        client: reqwest::Client,
        rt: tokio::runtime::Handle,
    ) -> Arc<Peers> {
        let p = Arc::new(Peers {
            own_url: own_url.as_deref().and_then(normalise),
            identity,
            table: Mutex::new(Table::new(MAX_PEERS)),
            client,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            rt,
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_CHECKS)),
            exchange_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(EXCHANGE_EVERY.as_millis()).unwrap_or(u64::MAX),
            ),
            keep_report: Mutex::new(None),
            kick: Arc::new(tokio::sync::Notify::new()),
        });
        for u in urls {
            p.add_as(u, None, true);
        }
        p
    }

    /// Rounds of peer exchange every `every` (a short grace period needs quicker news of a
    /// node gone).
    pub fn set_exchange_every(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(100);
        self.exchange_ms.store(ms, Ordering::Relaxed);
        self.kick();
    }

    /// A round of exchange now rather than at the end of the current wait: the server now
    /// listens, so announcing this node can succeed (the rounds made while it was starting
    /// told peers an address that did not answer yet).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Notes the keeper's last report (served as `GET /v1/keep`, shown by status).
    pub fn set_keep_report(&self, r: keep::KeepReport) {
        *self.keep_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// The keeper's last report, when this node keeps pieces.
    pub fn keep_report(&self) -> Option<keep::KeepReport> {
        self.keep_report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's identity (what it answers to `GET /v1/hello`).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a candidate learnt from others (unless it is this node or known already); returns
    /// whether it was new. It becomes a peer once it answers a hello.
    pub fn add(&self, url: &str) -> bool {
        self.add_as(url, None, false)
    }

    fn add_as(&self, url: &str, claimed: Option<String>, given: bool) -> bool {
        let Some(u) = normalise(url) else { return false };
        if self.own_url.as_deref() == Some(u.as_str()) {
            return false;
        }
        match self.table().add(&u, claimed, given, Instant::now()) {
            Added::New => {
                tracing::debug!("swarm: candidate peer {u}");
                true
            }
            Added::Known => false,
            Added::Full => {
                tracing::debug!("swarm: peer table full of live peers; {u} not taken");
                false
            }
        }
    }

    /// An announcement of `url` (claiming `uuid`, when given): a candidate, checked now when a
    /// check is free, else in the next round.
    pub fn announced(self: &Arc<Self>, url: &str, uuid: Option<String>) -> bool {
        // An address waiting for its retry (a dropped peer, a given node not up yet) that
        // announces itself is checked now: a node that comes back is a peer again at once.
        let back = normalise(url).is_some_and(|u| self.table().is_waiting(&u, Instant::now()));
        if !self.add_as(url, uuid.clone(), false) && !back {
            return false;
        }
        let Ok(permit) = self.checks.clone().try_acquire_owned() else { return true };
        let (me, u) = (self.clone(), normalise(url).unwrap_or_default());
        self.rt.spawn(async move {
            me.check(&u, uuid.as_deref()).await;
            drop(permit);
        });
        true
    }

    /// Peers that answered and are not dropped now.
    pub fn live(&self) -> Vec<String> {
        self.table().live(Instant::now())
    }

    /// The live nodes of the swarm: this one, then each live peer (address, UUID, space offered).
    pub fn nodes(&self) -> Vec<(String, String, u64)> {
        let me = (self.own_url.clone().unwrap_or_default(), self.identity.uuid.clone(), self.identity.offered);
        std::iter::once(me).chain(self.table().nodes(Instant::now())).collect()
    }

    /// The live peers (not this node) with when each last answered.
    pub fn nodes_seen(&self) -> Vec<(String, String, u64, Instant)> {
        self.table().nodes_seen(Instant::now())
    }

    /// How full the peer table is.
    pub fn counts(&self) -> TableCounts {
        self.table().counts(Instant::now())
    }

    fn record(&self, url: &str, ok: bool) {
        if self.table().record(url, ok, Instant::now()) {
            tracing::info!("swarm: peer {url} does not answer; dropped, retried in {RETRY_AFTER:?}");
        }
    }

    /// Asks `url` who it is: listed as a peer only if it answers as a node of this repository
    /// (and as the node it was announced as, when a UUID was claimed for it).
    async fn check(&self, url: &str, claimed: Option<&str>) {
        let hello = async {
            let r = self.request(reqwest::Method::GET, &format!("{url}/v1/hello")).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let b = read_bounded(r, identity::MAX_HELLO_BYTES).await?;
            serde_json::from_slice::<Hello>(&b).ok()
        }
        .await;
        let now = Instant::now();
        let Some(h) = hello else {
            tracing::debug!("swarm: {url} does not answer as an annexfs node; not listed");
            self.table().check_failed(url, now);
            return;
        };
        match self.identity.judge(&h) {
            Verdict::Itself => {
                tracing::debug!("swarm: {url} is this node");
                self.table().forget(url);
            }
            Verdict::Foreign => {
                tracing::warn!("swarm: {url} is a node of another repository ({}); not listed", h.uuid);
                self.table().check_failed(url, now);
            }
            Verdict::Same if claimed.is_some_and(|c| c != h.uuid) => {
                tracing::warn!(
                    "swarm: {url} was announced as {} but answers as {}; not listed",
                    claimed.unwrap_or_default(),
                    h.uuid
                );
                self.table().forget(url);
            }
            Verdict::Same => {
                if self.table().answered(url, h.uuid.clone(), h.offered) {
                    tracing::info!("swarm: learnt peer {url} ({})", h.uuid);
                }
            }
        }
    }

    /// Checks the candidates due, [`MAX_CHECKS`] at a time, at most [`CHECKS_PER_ROUND`].
    async fn check_due(&self) {
        let due = self.table().due(Instant::now(), CHECKS_PER_ROUND);
        futures_util::stream::iter(due)
            .for_each_concurrent(MAX_CHECKS, |(u, claimed)| async move {
                let Ok(_permit) = self.checks.acquire().await else { return };
                self.check(&u, claimed.as_deref()).await;
            })
            .await;
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url).timeout(ASK_TIMEOUT);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// One round: check the candidates, announce this node to every live peer and learn the
    /// peers they know, and check those (so that peers learnt now are sources at once).
    pub async fn exchange(&self) {
        self.check_due().await;
        let peers = self.live();
        let rounds = peers.iter().map(|p| async move {
            let got = async {
                let r = self.request(reqwest::Method::GET, &format!("{p}/v1/peers")).send().await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                let bytes = read_bounded(r, MAX_PEERS_BYTES).await?;
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                Some(v["peers"].as_array()?.iter().filter_map(|u| u.as_str().map(str::to_string)).collect::<Vec<_>>())
            }
            .await;
            // Announced only to a peer that answers and does not list this node as its peer:
            // announcements are rate-limited per address, and nodes sharing one address
            // (a host, a NAT) announcing every round would use up each other's allowance.
            if let (Some(own), Some(list)) = (&self.own_url, &got)
                && !list.iter().any(|u| normalise(u).as_deref() == Some(own.as_str()))
            {
                let _ = self
                    .request(reqwest::Method::POST, &format!("{p}/v1/announce"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::json!({ "url": own, "uuid": self.identity.uuid }).to_string())
                    .send()
                    .await;
            }
            (p.clone(), got)
        });
        for (p, got) in futures_util::future::join_all(rounds).await {
            self.record(&p, got.is_some());
            let mut learnt = 0;
            for u in got.unwrap_or_default() {
                if learnt >= LEARN_PER_PEER {
                    break;
                }
                learnt += usize::from(self.add(&u));
            }
        }
        self.check_due().await;
    }

    /// Exchanges peers now and then every [`EXCHANGE_EVERY`], for as long as `self` lives.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.rt.spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                p.exchange().await;
                let every = Duration::from_millis(p.exchange_ms.load(Ordering::Relaxed));
                let kick = p.kick.clone();
                drop(p);
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = kick.notified() => {}
                }
            }
        });
    }

    /// The have-map of `key` at `peer`, if it answers.
    async fn have(&self, peer: &str, key: &Key) -> Option<HaveMap> {
        let url = format!("{peer}/v1/keys/{}/have", key_segment(key));
        let r = self.request(reqwest::Method::GET, &url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let body = r.bytes().await.ok()?;
        let h: HaveMap = serde_json::from_slice(&body).ok()?;
        (Some(h.size) == key.size()).then_some(h)
    }

    /// The piece manifest of a BLAKE3 key from the first peer that has one that hashes to the
    /// key (such a manifest needs no trust in the peer). `None` for other keys: their
    /// manifests are taken only from the repository.
    pub async fn manifest(&self, key: &Key) -> Option<crate::manifest::Manifest> {
        if !matches!(key.variety(), b"BLAKE3_256" | b"BLAKE3_256E") {
            return None;
        }
        for p in self.live() {
            let url = format!("{p}/v1/keys/{}/manifest", key_segment(key));
            let got = async {
                let r = self.request(reqwest::Method::GET, &url).send().await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                let b = r.bytes().await.ok()?;
                (b.len() as u64 <= crate::manifest::MAX_MANIFEST_BYTES).then_some(b)
            }
            .await;
            let Some(bytes) = got else { continue };
            match crate::manifest::Manifest::parse(&bytes, key) {
                Ok(m) if m.trust() == Ok(crate::manifest::Trust::SelfVerified) => {
                    tracing::debug!("{key}: piece manifest from peer {p}, checked against the key");
                    return Some(m);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{key}: manifest from peer {p} refused: {e}"),
            }
        }
        None
    }

    /// For stream mode: the piece manifest of a key whose backend cannot check one, from the
    /// first live peer (in the table's order, asked at once) that serves one and is not
    /// `refused`; with the peer's source identity (`peer URL`), which vouches for it. Nodes
    /// serve only manifests made from content verified against the key or taken from the
    /// repository; the key still decides at the end (see `fetch::vouched`).
    pub async fn vouched_manifest(
        &self,
        key: &Key,
        refused: impl Fn(&str) -> bool,
    ) -> Option<(crate::manifest::Manifest, String)> {
        key.size()?;
        let peers: Vec<String> = self.live().into_iter().filter(|p| !refused(&format!("peer {p}"))).collect();
        let asked = futures_util::future::join_all(peers.iter().map(|p| async move {
            let url = format!("{p}/v1/keys/{}/manifest", key_segment(key));
            let r = self.request(reqwest::Method::GET, &url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let max = usize::try_from(crate::manifest::MAX_MANIFEST_BYTES).unwrap_or(usize::MAX);
            let b = read_bounded(r, max).await?;
            match crate::manifest::Manifest::parse(&b, key) {
                Ok(m) if m.trust().is_ok() => Some(m),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!("{key}: manifest from peer {p} refused: {e}");
                    None
                }
            }
        }))
        .await;
        peers.into_iter().zip(asked).find_map(|(p, m)| Some((m?, format!("peer {p}"))))
    }

    /// A source for each live peer that answers for `key` (asked in parallel).
    pub async fn sources(self: &Arc<Self>, key: &Key) -> Vec<Arc<dyn RangeSource>> {
        let Some(size) = key.size() else { return Vec::new() };
        let peers = self.live();
        if peers.is_empty() {
            return Vec::new();
        }
        let maps =
            futures_util::future::join_all(peers.iter().map(|p| async move { (p.clone(), self.have(p, key).await) }))
                .await;
        maps.into_iter()
            .filter_map(|(p, h)| {
                let h = h?;
                Some(Arc::new(PeerSource {
                    name: format!("peer {p}"),
                    url: format!("{p}/v1/keys/{}", key_segment(key)),
                    peer: p,
                    key: key.clone(),
                    size,
                    have: Arc::new(RwLock::new((h, Instant::now()))),
                    refreshing: Arc::new(AtomicBool::new(false)),
                    peers: self.clone(),
                }) as Arc<dyn RangeSource>)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_does_not_answer_is_never_a_peer() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let me = Identity::new("me".into(), ["origin".to_string()]);
        let peers = Peers::new(std::slice::from_ref(&url), None, me, reqwest::Client::new(), rt.handle().clone());
        assert!(!peers.add(&url), "known already");
        assert!(!peers.add("ftp://x"), "not http");
        assert!(peers.add("http://127.0.0.1:1/"), "a learnt candidate");
        assert!(peers.live().is_empty(), "candidates are not peers");
        rt.block_on(peers.exchange());
        assert!(peers.live().is_empty());
        let c = peers.counts();
        assert_eq!((c.live, c.candidates), (0, 1), "the learnt one is forgotten, the given one waits: {c:?}");
        // Tried again once the retry time has come.
        peers.table().set_retry(&url, Instant::now());
        assert_eq!(peers.table().due(Instant::now(), 10).len(), 1);
    }

    #[test]
    fn have_maps() {
        let h = HaveMap::from_pieces(1000, 256, [true, true, false, true].into_iter());
        assert_eq!(h.ranges, vec![(0, 512), (768, 1000)]);
        assert!(h.covers(0, 512) && h.covers(800, 200) && !h.covers(500, 20) && !h.covers(768, 233));
        assert_eq!(h.held_bytes(), 744);
    }
}
