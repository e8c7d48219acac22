//! The one place that assembles, per key, what it is read from: local copies, network
//! sources (remotes and web URLs from the git-annex branch, then the swarm's peers) and its
//! piece manifest (the cache, then the repository, then peers for BLAKE3 keys). The
//! fetcher, fs and the commands get a key's parts from here; none of them climbs back up.
//!
//! [`Network`] is the mount's (or a command's) network side: piece cache, fetcher, HTTP
//! client and peers. [`MountHolders`] hands it to fs as an [`fs::Holders`](crate::fs::Holders).
//!
//! Keys whose name has no size (URL keys, `addurl --relaxed`, old WORM keys): their size is
//! learnt from their web URLs ([`HttpClient::learn_size`]: `HEAD`, else a `Range: bytes=0-0`
//! `GET`), at most [`LEARN_SIZE_WAIT`] per lookup, and kept in [`Network::sizes`] for the
//! life of the mount (a failure for [`super::sizes::UNKNOWN_SIZE_RETRY`], then asked again). A learnt size
//! makes the key fetchable like any other: the fetcher and the piece cache get the key with
//! that size written in (`-sN`), the sources are made for that size, and the whole key is
//! checked as far as its backend allows (a URL key has no hash: the fetcher says so once).
//! A size no header tells is learnt by downloading the object once, to its end
//! ([`crate::source::sizeless`], [`Network::downloads`]): a look-up waits for that briefly,
//! readers of the file are served from the download while it runs (direct I/O, read to the
//! real end), and once it ended the finished file is a local source of the sized key.

use super::sizes::{LEARN_SIZE_WAIT, SizeBook, web_urls, with_size};
use crate::annex::remotes::Location;
use crate::annex::{Annex, Key};
use crate::fetch::{FetchConfig, Fetcher, OnVerified, VerifyMode};
use crate::fs::FsError;
use crate::fs::holders::{Holders, Opened, open_local, unavailable, whole_local_file};
use crate::manifest::Manifest;
use crate::manifest::publish::MoreHolders;
use crate::pieces::PieceStore;
use crate::source::LocalFile;
use crate::source::discover::{discover, discover_with_size};
use crate::source::external::Programs;
use crate::source::http::{HttpClient, learn_http_remotes};
use crate::source::reach::Reach;
use crate::source::remote::{BoxFuture, RangeSource};
use crate::swarm::Peers;
use anyhow::{Context, anyhow};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long opening a key waits for an external remote to say where the key is.
const WHEREIS_WAIT: Duration = Duration::from_secs(1);
/// The external remotes holding `key` that annexfs reads (readable holders only).
fn external_locations(annex: &Annex, key: &Key) -> Vec<crate::annex::remotes::external::ExternalLocation> {
    let Ok(holders) = annex.holders(key) else { return Vec::new() };
    holders
        .iter()
        .filter(|h| h.readable.is_ok())
        .flat_map(|h| h.locations.iter())
        .filter_map(|l| match l {
            Location::External(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// How a command's fetcher verifies and publishes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchOptions {
    pub verify: VerifyMode,
    /// Publish the manifests of keys verified whole (see [`crate::manifest::publish`]).
    pub publish: bool,
}

/// The swarm side of a command: peers given on the command line, and whether (and how) this
/// node serves.
#[derive(Debug, Clone, Default)]
pub(crate) struct SwarmOptions {
    pub peers: Vec<String>,
    pub serve: Option<crate::swarm::server::ServeConfig>,
    /// The URL other nodes reach this one at (default: `http://` + the listening address).
    pub advertise: Option<String>,
    /// Space offered to the swarm for keeping pieces (`--keep`, `-o keep=`).
    pub keep: Option<u64>,
}

/// What reading from network sources needs.
pub(crate) struct Network {
    pub fetcher: Arc<Fetcher>,
    /// The means to reach network holders (HTTP, ssh, external programs).
    pub reach: Arc<Reach>,
    /// Swarm peers: sources for the pieces they hold.
    pub peers: Arc<Peers>,
    /// This node's swarm server, once it serves.
    pub serving: OnceLock<crate::swarm::server::Server>,
    /// Sizes learnt for keys whose name has none.
    pub sizes: Arc<SizeBook>,
    /// Downloads of keys whose size no header tells (they learn it); shared with the
    /// networks of nested repositories.
    pub downloads: Arc<crate::source::sizeless::Downloads>,
    /// The swarm's rules in force (from signed commits), with the HEAD they were read at.
    pub rules: Mutex<(Option<String>, Arc<crate::swarm::rules::RulesState>)>,
    /// Spread remotes read in place, by remote name (their stores' figures for status).
    pub spreads: super::spread::Registry,
}

/// Every place one key can be read from, assembled.
pub(crate) struct KeyParts {
    /// Local copies in try order: (who, where).
    pub local: Vec<(String, Location)>,
    /// Network sources: remotes, web URLs, then peers (only when no local copy exists).
    pub remote: Vec<Arc<dyn RangeSource>>,
    /// Holders that cannot be used, and why.
    pub unusable: Vec<String>,
    pub any_holder: bool,
}

/// The swarm's peers as extra holders of a manifest object.
struct PeerHolders<'a>(&'a Arc<Peers>);

impl MoreHolders for PeerHolders<'_> {
    fn sources<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Vec<Arc<dyn RangeSource>>> {
        Box::pin(self.0.sources(key))
    }
}

impl Network {
    /// The piece cache.
    pub fn store(&self) -> &Arc<PieceStore> {
        self.fetcher.store()
    }

    /// Every place `key` can be read from.
    pub async fn parts(&self, annex: &Annex, key: &Key) -> Result<KeyParts, FsError> {
        self.parts_sized(annex, key, key.size()).await
    }

    /// [`Network::parts`] of a key whose size is `size` (learnt when its name has none).
    pub async fn parts_sized(&self, annex: &Annex, key: &Key, size: Option<u64>) -> Result<KeyParts, FsError> {
        let found = if size == key.size() {
            discover(annex, key, Some(&self.reach))
        } else {
            discover_with_size(annex, key, size, Some(&self.reach))
        }
        .map_err(|e| FsError::Unavailable { key: key.to_string_lossy(), why: e.to_string() })?;
        let mut parts = KeyParts {
            local: found.local,
            remote: found.remote,
            unusable: found.unusable,
            any_holder: found.any_holder,
        };
        // An external remote may say where its bytes are public (WHEREIS): more range sources.
        // Not asked for a key the cache holds whole, and never waited on for long (its
        // programs may all be busy retrieving).
        if parts.local.is_empty()
            && let Some(n) = size
            && self.store().present_bytes(key) < n
        {
            // Remotes read by a maker (spread remotes) have no URLs to tell; their program
            // is not run.
            let asked_ones = external_locations(annex, key)
                .into_iter()
                .filter(|l| !self.reach.external_makers.contains_key(&l.externaltype));
            for loc in asked_ones {
                let asked = crate::source::external::whereis_sources(&loc, key, n, &self.reach);
                if let Ok(found) = tokio::time::timeout(WHEREIS_WAIT, asked).await {
                    parts.remote.extend(found);
                }
            }
        }
        // Peers are asked only when no disk here has the content.
        if parts.local.is_empty()
            && let Some(peer_key) =
                size.and_then(|n| if key.size().is_some() { Some(key.clone()) } else { with_size(key, n) })
        {
            parts.remote.extend(self.peers.sources(&peer_key).await);
        }
        Ok(parts)
    }

    /// Asks `urls` (the web URLs of `key`) for its size, at most [`LEARN_SIZE_WAIT`].
    pub async fn ask_size(&self, key: &Key, urls: Vec<String>) -> Option<u64> {
        let asked = tokio::time::timeout(LEARN_SIZE_WAIT, async {
            let mut why = Vec::new();
            for url in &urls {
                match self.reach.http.learn_size(url).await {
                    Ok(Some(n)) => return (Some(n), why),
                    Ok(None) => why.push(format!("{url}: no length given")),
                    Err(e) => why.push(format!("{url}: {e}")),
                }
            }
            (None, why)
        })
        .await;
        let (size, why) = asked.unwrap_or_else(|_| (None, vec![format!("no answer within {LEARN_SIZE_WAIT:?}")]));
        match size {
            Some(n) => tracing::info!("{key}: size learnt from its URL: {n} bytes"),
            None => tracing::info!("{key}: size unknown ({}); read to its end when opened", why.join("; ")),
        }
        size
    }

    /// A key without a size, with its size learnt from its URLs and written into its name
    /// (what the fetcher and the piece cache know it by); `None` when no URL tells it.
    pub async fn sized(&self, annex: &Annex, key: &Key) -> Option<(Key, u64)> {
        let n = match self.sizes.known(key) {
            Some(n) => n,
            None => {
                let n = self.ask_size(key, web_urls(annex, key)).await;
                self.sizes.set(key, n);
                n?
            }
        };
        Some((with_size(key, n)?, n))
    }

    /// The swarm's rules in force, read again when HEAD moved (see [`crate::swarm::rules`]).
    pub fn rules(&self, annex: &Annex) -> Arc<crate::swarm::rules::RulesState> {
        let head = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&annex.gitdir)
            .args(["rev-parse", "-q", "--verify", "HEAD"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let mut r = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        if r.0.is_some() && r.0 == head {
            return r.1.clone();
        }
        let signers = crate::swarm::rules::signers_from(annex.config.get(crate::swarm::rules::SIGNERS_CONFIG));
        let st = Arc::new(crate::swarm::rules::load(&annex.gitdir, &signers));
        if let (Some(rules), Some(c)) = (&st.rules, &st.commit) {
            tracing::info!(
                "swarm rules from commit {c} (signed by {}): {} copies",
                st.signer.as_deref().unwrap_or("?"),
                rules.copies
            );
        }
        *r = (head, st.clone());
        st
    }

    /// Whether the cache holds `key` verified whole.
    fn verified_whole(&self, key: &Key) -> bool {
        self.store().open_existing(key).ok().flatten().is_some_and(|c| c.is_verified())
    }

    /// The manifest of `key` a peer (not banned) vouches for, and who: in stream mode, for a
    /// key some peer holds and without a manifest, pieces are checked against it as they come
    /// and the key checks it in the end (`fetch::vouched`); it is kept apart in the cache so
    /// that this node can serve the pieces it checked against it.
    async fn vouched_for(&self, key: &Key) -> Option<(Manifest, String)> {
        let f = &self.fetcher;
        self.peers.vouched_manifest(key, |who| f.is_banned(who)).await
    }

    /// Has `kf` check pieces against `m`, which `by` vouched for (see [`Network::vouched_for`]).
    fn apply_vouched(&self, kf: &crate::fetch::KeyFetch, key: &Key, m: Manifest, by: String) {
        if let Err(e) = crate::manifest::cached::save_vouched(self.store(), &m) {
            tracing::warn!("{key}: keep the manifest {by} vouched for in the cache: {e}");
        }
        kf.set_vouched_manifest(m, by);
    }

    /// The manifest of `key` for a fetch: the one kept in the cache, else the published one,
    /// else (for BLAKE3 keys, whose manifests need no trust) one from a peer; kept in the
    /// cache once found. Problems are logged, never fatal: without a manifest the key is
    /// verified whole.
    pub async fn manifest(&self, annex: &Annex, key: &Key) -> Option<Manifest> {
        if let Some(m) = crate::manifest::cached::load(self.store(), key) {
            return Some(m);
        }
        let found =
            crate::manifest::publish::find(annex, key, Some(&self.reach), Some(&PeerHolders(&self.peers))).await;
        let m = match found {
            Ok(Some(m)) => m,
            Ok(None) => self.peers.manifest(key).await?,
            Err(e) => {
                tracing::warn!("{key}: published piece manifest not usable: {e}");
                return None;
            }
        };
        if let Err(e) = crate::manifest::cached::save(self.store(), &m) {
            tracing::warn!("{key}: keep its manifest in the cache: {e}");
        }
        Some(m)
    }
}

/// The piece cache, the fetcher, the HTTP client and the peers for `annex`, on runtime `rt`;
/// http git remotes whose UUID `.git/config` does not give are asked for it first.
pub(crate) fn network(
    annex: &Annex,
    cache_dir: &Path,
    cache_size: u64,
    rt: &tokio::runtime::Runtime,
    opts: FetchOptions,
    swarm: &SwarmOptions,
) -> anyhow::Result<Arc<Network>> {
    let store = Arc::new(
        PieceStore::open(cache_dir, cache_size)
            .with_context(|| format!("open the piece cache in {}", cache_dir.display()))?,
    );
    let mut cfg = FetchConfig { verify: opts.verify, ..FetchConfig::default() };
    // Limits per remote, from git config and .annexfs.toml, looked up by the source's remote.
    let settings = annex.settings();
    let mut names: Vec<String> =
        annex.meta().map(|m| m.remotes.iter().map(|r| r.name.clone()).collect()).unwrap_or_default();
    names.push("web".into());
    let mut limits: std::collections::HashMap<String, crate::annex::settings::Limits> = names
        .into_iter()
        .map(|n| {
            let l = annex.remote_limits(&n, &settings);
            (n, l)
        })
        .filter(|(_, l)| !l.is_none())
        .collect();
    let spread_limits = super::spread::split_limits(annex, &mut limits);
    // Peers: by URL, from `[[peer]]`.
    let peer_limits: std::collections::HashMap<String, u64> =
        settings.peers.iter().filter_map(|p| Some((p.url.trim_end_matches('/').to_string(), p.bwlimit?))).collect();
    if !limits.is_empty() || !peer_limits.is_empty() {
        cfg.limits = Some(crate::fetch::limits::LimitsFn(Arc::new(move |id: &str| {
            if let Some(url) = id.strip_prefix("peer ") {
                let bwlimit = peer_limits.get(url.trim_end_matches('/')).copied();
                return crate::annex::settings::Limits { bwlimit, maxconnections: None };
            }
            limits.get(crate::fetch::limits::remote_of(id)).copied().unwrap_or_default()
        })));
    }
    if opts.publish {
        let base = annex.base_dir().to_path_buf();
        cfg.on_verified = Some(OnVerified(Arc::new(move |m| {
            // A fresh view of the repository: the mount's may be a snapshot of a ref.
            let published = Annex::open(&base).map_err(anyhow::Error::from).and_then(|a| {
                // A key the repository does not know (a key without a size is fetched under a
                // name with the size written in): nothing of it is written to the repository.
                if a.holders(m.key()).map_or(true, |h| h.is_empty()) {
                    return Ok(None);
                }
                crate::manifest::publish::publish(&a, m).map(Some).map_err(anyhow::Error::from)
            });
            match published {
                Ok(Some(k)) => tracing::info!("{}: piece manifest published as {k}", m.key()),
                Ok(None) => {
                    tracing::debug!("{}: not a key of the repository; manifest kept in the cache only", m.key())
                }
                Err(e) => tracing::info!("{}: piece manifest not published: {e:#}", m.key()),
            }
        })));
    }
    let fetcher = Arc::new(Fetcher::new(store, rt.handle().clone(), cfg));
    let http = HttpClient::new(annex.policy.clone()).map_err(|e| anyhow!("{e}"))?;
    rt.block_on(learn_http_remotes(annex, &http));
    let mut urls: Vec<String> = settings.peers.iter().map(|p| p.url.clone()).collect();
    urls.extend(swarm.peers.iter().cloned());
    let own = swarm.serve.as_ref().map(|s| swarm.advertise.clone().unwrap_or_else(|| format!("http://{}", s.listen)));
    let identity = crate::swarm::Identity::of(annex).offering(swarm.keep.unwrap_or(0));
    let peers = Peers::new(&urls, own, identity, http.client.clone(), rt.handle().clone());
    if !urls.is_empty() || swarm.serve.is_some() {
        // A first round now, so that the peers' peers are known before the first read.
        let _ = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), peers.exchange()).await });
        peers.start();
    }
    let mut reach = Reach {
        external: Programs::for_repo_in(annex.base_dir().to_path_buf(), cache_dir),
        ..Reach::new(http).for_repository(annex.uuid.clone(), annex.base_dir())
    };
    // ssh hosts are connected to ahead of the first read (as a warm master connection
    // sharing its sessions): connecting takes longer than most ranges.
    let meta = annex.meta().ok();
    for r in meta.iter().flat_map(|m| m.remotes.iter()).filter(|r| !r.ignore && r.uuid.is_some()) {
        if let crate::annex::remotes::RemoteKind::GitSsh(ssh) = &r.kind
            && let Ok(how) = &ssh.access
            && let Some(uuid) = &r.uuid
        {
            reach.ssh.warm(how, &r.name, uuid.as_str(), rt.handle());
        }
    }
    let sizes: Arc<SizeBook> = Arc::default();
    let learnt = sizes.clone();
    let on_end: crate::source::sizeless::OnEnd = Arc::new(move |key, n| learnt.set_bytes(key, Some(n)));
    // A download of unknown size may take at most half the cache's bound on disk.
    let downloads = crate::source::sizeless::Downloads::new(cache_dir, reach.http.clone(), cache_size / 2, on_end)
        .with_context(|| format!("a private directory for downloads in {}", cache_dir.display()))?;
    let spreads = super::spread::Registry::default();
    reach
        .external_makers
        .insert(super::spread::EXTERNALTYPE.to_string(), super::spread::mount_maker(spreads.clone(), spread_limits));
    let net = Network {
        fetcher,
        reach: Arc::new(reach),
        peers,
        serving: OnceLock::new(),
        sizes,
        downloads: Arc::new(downloads),
        rules: Mutex::new((None, Arc::default())),
        spreads,
    };
    if !urls.is_empty() || swarm.serve.is_some() {
        net.rules(annex);
    }
    Ok(Arc::new(net))
}

/// The holders fs reads annexed content from: local copies in place, then the piece cache
/// filled from the network parts.
pub(crate) struct MountHolders {
    pub annex: Arc<Annex>,
    pub net: Arc<Network>,
    /// When set, keys only git-annex can read are fetched with `git annex get` (see
    /// [`super::annex_get`]).
    pub annex_get: Option<super::annex_get::AnnexGets>,
}

impl MountHolders {
    /// Holders reading `annex` through `net`; `annex_get` lets git-annex fetch what annexfs
    /// cannot read (it writes the repository's annex).
    pub fn new(annex: Arc<Annex>, net: Arc<Network>, annex_get: bool) -> MountHolders {
        MountHolders { annex, net, annex_get: annex_get.then(Default::default) }
    }
}

impl MountHolders {
    /// Asks the web URLs of `key` for its size; where none tells it, downloads the object
    /// (once) to learn it. Waits at most [`LEARN_SIZE_WAIT`] in all: a large object's
    /// download goes on, and its size is known when it ends.
    fn ask_size(&self, key: &Key) -> Option<u64> {
        let urls = web_urls(&self.annex, key);
        if urls.is_empty() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (net, key) = (self.net.clone(), key.clone());
        // Run on the fetcher's runtime and waited for here: lookups come from FUSE threads,
        // outside any runtime.
        let rt = self.net.fetcher.runtime().clone();
        let started = Instant::now();
        self.net.fetcher.runtime().spawn(async move {
            let size = match net.ask_size(&key, urls.clone()).await {
                Some(n) => Some(n),
                None => {
                    let d = net.downloads.start(&key.to_bytes(), &key.to_string_lossy(), &urls, &rt);
                    d.size_within(LEARN_SIZE_WAIT.saturating_sub(started.elapsed())).await
                }
            };
            let _ = tx.send(size);
        });
        rx.recv_timeout(LEARN_SIZE_WAIT + Duration::from_millis(500)).ok().flatten()
    }

    /// A key without a size, whose size is not known yet: read from its download.
    fn open_stream(&self, file: &str, key: &Key, skip: &[String], tried: Vec<String>) -> Result<Opened, FsError> {
        let urls = web_urls(&self.annex, key);
        if urls.is_empty() {
            return Err(unavailable(file, key, tried, false));
        }
        let rt = self.net.fetcher.runtime();
        let d = self.net.downloads.start(&key.to_bytes(), &key.to_string_lossy(), &urls, rt);
        let w = crate::source::sizeless::WholeStream::new(d);
        if skip.contains(&w.describe()) {
            return Err(unavailable(file, key, tried, true));
        }
        tracing::info!("{file}: size of {key} unknown: read from its download, to its end");
        Ok(Opened::Stream(Arc::new(w)))
    }
}

impl Holders for MountHolders {
    fn open<'a>(&'a self, file: &'a str, key: &'a Key, skip: &'a [String]) -> BoxFuture<'a, Result<Opened, FsError>> {
        Box::pin(async move {
            // A key without a size is fetched by the size learnt, under the key with it.
            let learnt = if key.size().is_some() { None } else { self.net.sizes.known(key) };
            let fetch_key = match learnt {
                Some(n) => with_size(key, n),
                None => None,
            };
            let mut parts = self.net.parts_sized(&self.annex, key, key.size().or(learnt)).await?;
            // A finished download that taught the size is the content: the sized key is
            // read from it alone (into the piece cache), nothing is downloaded again.
            if let Some(n) = learnt
                && parts.local.is_empty()
                && let Some((path, got)) = self.net.downloads.get(&key.to_bytes()).and_then(|d| d.finished())
                && got == n
            {
                match crate::source::discover::LocalSource::open("download", &Location::Path(path), Some(n)) {
                    Ok(s) => parts.remote = vec![Arc::new(s)],
                    Err(e) => tracing::debug!("{key}: its finished download cannot be read: {e}"),
                }
            }
            let mut tried = parts.unusable;
            if let Some(r) = open_local(&parts.local, key, skip, &mut tried) {
                return Ok(Opened::Local(r));
            }
            if key.size().is_none() && fetch_key.is_none() {
                return self.open_stream(file, key, skip, tried);
            }
            // The key as the repository names it (for git-annex), and as the cache knows it.
            let (named, key) = (key, fetch_key.as_ref().unwrap_or(key));
            // Network holders go through the fetcher and the piece cache (which may also
            // hold the key already, from an earlier mount).
            let fetcher = &self.net.fetcher;
            if key.size().is_some() && (!parts.remote.is_empty() || self.net.store().present_bytes(key) > 0) {
                let names: Vec<&str> = parts.remote.iter().map(|s| s.name()).collect();
                let what = format!(
                    "piece cache of {key} (sources: {})",
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                );
                if !skip.contains(&what) {
                    let known = fetcher.has_manifest(key);
                    // Stream mode, a key peers hold: the manifest a peer vouches for is asked
                    // beside the published one (each look-up is a round trip to busy nodes),
                    // and used only without a published one.
                    let peer_held = parts.remote.iter().any(|s| s.name().starts_with("peer "));
                    let ask_peers = peer_held && !known && fetcher.config().verify == VerifyMode::Stream;
                    let (manifest, vouched) = futures_util::join!(
                        async { if known { None } else { self.net.manifest(&self.annex, key).await } },
                        async {
                            // Not for a key already verified whole in the cache.
                            let done = || {
                                self.net.store().present_bytes(key) >= key.size().unwrap_or(0)
                                    && self.net.verified_whole(key)
                            };
                            if ask_peers && !done() { self.net.vouched_for(key).await } else { None }
                        },
                    );
                    let kf = fetcher
                        .key(key, parts.remote, manifest)
                        .map_err(|e| FsError::Unavailable { key: key.to_string_lossy(), why: e.to_string() })?;
                    if !kf.has_manifest()
                        && let Some((m, by)) = vouched
                    {
                        self.net.apply_vouched(&kf, key, m, by);
                    }
                    return Ok(Opened::Fetched { kf, what });
                }
            }
            // Last resort, when asked for: git-annex gets the key into the annex itself.
            if let Some(gets) = &self.annex_get
                && parts.any_holder
            {
                match gets.get(&self.annex, named).await {
                    Ok(path) => {
                        let local = [("this repository (git annex get)".to_string(), Location::Path(path))];
                        if let Some(r) = open_local(&local, named, skip, &mut tried) {
                            return Ok(Opened::Local(r));
                        }
                    }
                    Err(e) => tried.push(format!("annex_get: {e}")),
                }
            }
            Err(unavailable(file, named, tried, parts.any_holder))
        })
    }

    fn keep_cache(&self, key: &Key) -> bool {
        let f = &self.net.fetcher;
        // Pages checked only against a manifest a peer vouched for may still be replaced.
        if f.vouched_by(key).is_some() {
            return false;
        }
        if f.config().verify == VerifyMode::Strict || f.has_manifest(key) || f.store().has_manifest(key) {
            return true;
        }
        // A copy on a local disk is read in place and trusted as git-annex trusts it: its
        // bytes are never repaired, so its pages may stay (only bytes fetched before they
        // could be verified may be replaced later).
        discover(&self.annex, key, None).is_ok_and(|d| !d.local.is_empty())
    }

    fn whole_local(&self, key: &Key) -> Option<LocalFile> {
        // Only the annex layer's local holders: no network, no peers, no waiting.
        whole_local_file(&discover(&self.annex, key, None).ok()?.local, key)
    }

    fn cached_bytes(&self, key: &Key) -> u64 {
        match (key.size(), self.net.sizes.known(key)) {
            (None, Some(n)) => with_size(key, n).map_or(0, |k| self.net.store().present_bytes(&k)),
            _ => self.net.store().present_bytes(key),
        }
    }

    fn learn_size(&self, key: &Key) -> Option<u64> {
        if key.size().is_some() {
            return key.size();
        }
        match self.net.sizes.get(key) {
            Ok(Some(n)) => return Some(n),
            Err(()) => return None,
            Ok(None) => {}
        }
        // A download under way was waited for by the look-up that started it; later ones
        // answer at once (stat shows what arrived so far).
        if self.net.downloads.get(&key.to_bytes()).is_some_and(|d| d.progress().end.is_none()) {
            return None;
        }
        let size = self.ask_size(key);
        self.net.sizes.set(key, size);
        size
    }

    fn known_size(&self, key: &Key) -> Option<u64> {
        key.size().or_else(|| self.net.sizes.known(key))
    }

    fn size_so_far(&self, key: &Key) -> u64 {
        self.net.downloads.get(&key.to_bytes()).map_or(0, |d| d.progress().got)
    }
}
