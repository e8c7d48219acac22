//! The HTTP server of a swarm node (hyper, HTTP/1.1). It serves only what the node can vouch
//! for: the repository's own annex objects, and from the piece cache the pieces of keys
//! verified whole, or pieces that match the key's piece manifest (checked again as they are
//! served). Read-only; keys are never listed.
//!
//! Bounds: at most `max_connections` connections and `per_peer` per client address (more are
//! closed at once); request headers must arrive within [`HEADER_TIMEOUT`]; a connection that
//! moves no byte either way for `idle_timeout` (an idle keep-alive, or a client that stopped
//! reading) is closed and its resources freed; uploads are paced under `bwlimit`;
//! announcements are taken at most [`ANNOUNCE_BURST`] at once and [`ANNOUNCE_PER_SEC`] a second
//! per client address (429 beyond; the addresses counted are bounded too). Responses a client
//! marks as background work yield to readers' responses ([`super::priority`]).

use super::priority::{self, Foreground};
use super::watched::Watched;
use super::{HaveMap, Peers, TOKEN_ENV};
use crate::annex::{Annex, Key};
use crate::fetch::limits::Limiter;
use crate::manifest::Manifest;
use crate::pieces::{CachedKey, PieceStore};
use crate::source::{LocalFile, RangeRead};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Request headers must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits after a failed accept (descriptors or memory exhausted).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Keys longer than this are refused (git-annex keys are far shorter).
const MAX_KEY_BYTES: usize = 1024;
/// Bytes read from disk per step of a response.
const STEP: usize = 256 << 10;
/// Announcements taken from one client address at once.
pub const ANNOUNCE_BURST: f64 = 10.0;
/// Announcements taken from one client address per second, after the burst. Honest nodes
/// announce themselves once per exchange round each.
pub const ANNOUNCE_PER_SEC: f64 = 1.0;
/// Client addresses whose announcements are counted (least recent forgotten).
const ANNOUNCERS: usize = 4096;

/// Per-address token buckets for announcements.
struct AnnounceRate(Mutex<lru::LruCache<IpAddr, (f64, Instant)>>);

impl AnnounceRate {
    fn new() -> AnnounceRate {
        AnnounceRate(Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(ANNOUNCERS).unwrap_or(std::num::NonZeroUsize::MIN),
        )))
    }

    /// Takes one announcement from `ip`, if its bucket has one.
    fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let mut m = lock(&self.0);
        let (tokens, at) = m.get(&ip).copied().unwrap_or((ANNOUNCE_BURST, now));
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * ANNOUNCE_PER_SEC).min(ANNOUNCE_BURST);
        let ok = tokens >= 1.0;
        m.put(ip, (if ok { tokens - 1.0 } else { tokens }, now));
        ok
    }
}

/// How a node serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub per_peer: usize,
    pub idle_timeout: Duration,
    /// Upload bytes per second, all connections together.
    pub bwlimit: Option<u64>,
}

impl ServeConfig {
    pub fn new(listen: SocketAddr) -> ServeConfig {
        ServeConfig { listen, max_connections: 64, per_peer: 8, idle_timeout: Duration::from_secs(30), bwlimit: None }
    }
}

/// Counters of a serving node.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub refused: AtomicU64,
}

struct Node {
    annex: Arc<Annex>,
    store: Option<Arc<PieceStore>>,
    peers: Arc<Peers>,
    token: Option<String>,
    pace: Option<Arc<Limiter>>,
    stats: Arc<ServeStats>,
    announces: AnnounceRate,
    /// Manifests read from the cache, regrouped and checked: every request for a piece of a
    /// key needs its key's, and a large key's is large.
    manifests: Mutex<lru::LruCache<Vec<u8>, Arc<Manifest>>>,
    /// Readers' responses, which background ones yield to.
    foreground: Arc<Foreground>,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// What a node can serve of a key.
enum Holding {
    /// The whole content in the repository's annex.
    Local(Arc<LocalFile>),
    /// Pieces in the cache: all of them verified (the key matched), or checked against the
    /// manifest when served (the trusted one, else one a peer vouched for: a reader checks
    /// them again against its own and the whole key).
    Cache { cache: Arc<CachedKey>, manifest: Option<Arc<Manifest>> },
}

impl Node {
    fn holding(&self, key: &Key) -> Option<Holding> {
        if let Some(p) = self.annex.present_object(key)
            && let Ok(f) = LocalFile::open(&p, key.size())
        {
            return Some(Holding::Local(Arc::new(f)));
        }
        let store = self.store.as_ref()?;
        let cache = store.open_existing(key).ok()??;
        if cache.poisoned().is_some() {
            return None;
        }
        let manifest = self.cached_manifest(store, key, cache.piece_size);
        (cache.is_verified() || manifest.is_some()).then_some(Holding::Cache { cache, manifest })
    }

    /// The cache's manifest of `key` in pieces of `piece_size`, read once per key (a key
    /// without one is looked at again: a manifest may arrive later).
    fn cached_manifest(&self, store: &PieceStore, key: &Key, piece_size: u64) -> Option<Arc<Manifest>> {
        let kb = key.to_bytes();
        if let Some(m) = lock(&self.manifests).get(&kb) {
            return Some(m.clone());
        }
        let m = crate::manifest::cached::load(store, key)
            .and_then(|m| m.regroup(piece_size).ok())
            .filter(|m| m.trust().is_ok())
            .map(Arc::new);
        if let Some(m) = &m {
            lock(&self.manifests).put(kb, m.clone());
            return Some(m.clone());
        }
        // A manifest a peer vouched for (stream mode): this node's pieces were checked
        // against it as they arrived, and are checked again as they are served; read each
        // time (it may be proven wrong and dropped), never handed on as a manifest.
        crate::manifest::cached::load_vouched(store, key).and_then(|m| m.regroup(piece_size).ok()).map(Arc::new)
    }

    fn have(&self, key: &Key) -> HaveMap {
        let size = key.size().unwrap_or(0);
        match self.holding(key) {
            Some(Holding::Local(_)) => HaveMap { size, ranges: if size > 0 { vec![(0, size)] } else { vec![] } },
            Some(Holding::Cache { cache, .. }) => {
                HaveMap::from_pieces(size, cache.piece_size, (0..cache.piece_count()).map(|i| cache.has(i)))
            }
            None => HaveMap { size, ranges: vec![] },
        }
    }

    fn manifest(&self, key: &Key) -> Option<Vec<u8>> {
        if let Some(m) = self.store.as_ref().and_then(|s| crate::manifest::cached::load(s, key)) {
            return Some(m.to_bytes());
        }
        // The repository's own content: its manifest is made on demand.
        let p = self.annex.present_object(key)?;
        let f = LocalFile::open(&p, key.size()).ok()?;
        let m = Manifest::from_file(key, f.file(), crate::pieces::piece_size_for(f.len())).ok()?;
        if let Some(s) = &self.store
            && let Err(e) = crate::manifest::cached::save(s, &m)
        {
            tracing::warn!("{key}: keep its piece manifest in the cache: {e}");
        }
        Some(m.to_bytes())
    }
}

/// Reads `[a, b)` of a holding, checking cache pieces as it goes.
fn read_checked(h: &Holding, a: u64, buf: &mut [u8]) -> std::io::Result<()> {
    match h {
        Holding::Local(f) => {
            let mut at = 0;
            while at < buf.len() {
                let n = f.read_at(&mut buf[at..], a + at as u64)?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short object"));
                }
                at += n;
            }
            Ok(())
        }
        Holding::Cache { cache, manifest } => {
            let end = a + buf.len() as u64;
            let ps = cache.piece_size;
            let first = usize::try_from(a / ps).unwrap_or(usize::MAX);
            let last = usize::try_from((end - 1) / ps).unwrap_or(usize::MAX);
            for i in first..=last {
                let (pa, pb) = cache.piece_range(i);
                let mut piece = vec![0u8; usize::try_from(pb - pa).unwrap_or(0)];
                cache.read(pa, &mut piece).map_err(std::io::Error::other)?;
                if !cache.is_verified() && !manifest.as_ref().is_some_and(|m| m.check_piece(i, &piece)) {
                    tracing::warn!("swarm: cached piece {i} of {} fails its manifest hash; not served", cache.key);
                    let _ = cache.drop_piece(i);
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "piece fails its check"));
                }
                let from = a.max(pa);
                let to = end.min(pb);
                let dst = &mut buf[usize::try_from(from - a).unwrap_or(0)..usize::try_from(to - a).unwrap_or(0)];
                dst.copy_from_slice(
                    &piece[usize::try_from(from - pa).unwrap_or(0)..usize::try_from(to - pa).unwrap_or(0)],
                );
            }
            Ok(())
        }
    }
}

/// Parses a single `bytes=A-B` (or `A-`, `-N`) range against `size`. `Err(())`: unsatisfiable,
/// malformed or several ranges.
fn parse_range(v: &str, size: u64) -> Result<(u64, u64), ()> {
    let spec = v.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') || size == 0 {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, false) => (a.parse::<u64>().map_err(|_| ())?, b.parse::<u64>().map_err(|_| ())?.min(size - 1)),
        (false, true) => (a.parse::<u64>().map_err(|_| ())?, size - 1),
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (true, true) => return Err(()),
    };
    if start > end || start >= size {
        return Err(());
    }
    Ok((start, end + 1))
}

/// The key named by a path segment. A key is never used as a path (the cache's paths are
/// hashes of it, the annex's are escaped by `key_file`), so a `/` inside it (URL keys have them)
/// is harmless; NUL and over-long keys are refused outright.
fn parse_key(seg: &str) -> Option<Key> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
    if bytes.is_empty() || bytes.len() > MAX_KEY_BYTES || bytes.contains(&0) {
        return None;
    }
    Key::parse(&bytes).ok()
}

async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
    client: IpAddr,
    queue: &Arc<priority::ConnQueue>,
) -> Response<Body> {
    node.stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(t) = &node.token {
        use subtle::ConstantTimeEq;
        let given = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let want = format!("Bearer {t}");
        if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
            node.stats.refused.fetch_add(1, Ordering::Relaxed);
            return full(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
        }
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["v1", "peers"]) => {
            let mut peers = node.peers.live();
            if let Some(own) = &node.peers.own_url {
                peers.push(own.clone());
            }
            full(StatusCode::OK, serde_json::json!({ "peers": peers }).to_string())
        }
        (Method::GET, ["v1", "keep"]) => match node.peers.keep_report() {
            Some(r) => full(StatusCode::OK, serde_json::to_string(&r).unwrap_or_default()),
            None => full(StatusCode::NOT_FOUND, "this node keeps nothing for the swarm\n"),
        },
        (Method::GET, ["v1", "hello"]) => {
            full(StatusCode::OK, serde_json::to_string(&node.peers.identity().hello()).unwrap_or_default())
        }
        (Method::POST, ["v1", "announce"]) => {
            if !node.announces.take(client, Instant::now()) {
                node.stats.refused.fetch_add(1, Ordering::Relaxed);
                return full(StatusCode::TOO_MANY_REQUESTS, "too many announcements from this address\n");
            }
            let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return full(StatusCode::PAYLOAD_TOO_LARGE, "announce bodies are small\n"),
            };
            let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
            let url = v.as_ref().and_then(|v| v["url"].as_str().map(str::to_string));
            let uuid = v.as_ref().and_then(|v| v["uuid"].as_str().map(str::to_string));
            match url {
                Some(u) => {
                    // Listed only once the address answers as a node of this repository.
                    node.peers.announced(&u, uuid);
                    full(StatusCode::ACCEPTED, "")
                }
                None => full(StatusCode::BAD_REQUEST, "expected {\"url\": ...}\n"),
            }
        }
        (Method::GET, ["v1", "keys", seg, "have"]) => match parse_key(seg) {
            Some(k) if k.size().is_some() => {
                let node2 = node.clone();
                let have = tokio::task::spawn_blocking(move || node2.have(&k)).await.unwrap_or_default();
                full(StatusCode::OK, serde_json::to_string(&have).unwrap_or_default())
            }
            _ => full(StatusCode::BAD_REQUEST, "not a key\n"),
        },
        (Method::GET, ["v1", "keys", seg, "manifest"]) => match parse_key(seg) {
            Some(k) => {
                let node2 = node.clone();
                match tokio::task::spawn_blocking(move || node2.manifest(&k)).await.ok().flatten() {
                    Some(m) => full(StatusCode::OK, m),
                    None => full(StatusCode::NOT_FOUND, "no manifest here\n"),
                }
            }
            None => full(StatusCode::BAD_REQUEST, "not a key\n"),
        },
        (Method::GET | Method::HEAD, ["v1", "keys", seg]) => {
            let Some(key) = parse_key(seg) else { return full(StatusCode::BAD_REQUEST, "not a key\n") };
            let Some(size) = key.size() else { return full(StatusCode::BAD_REQUEST, "the key has no size\n") };
            let node2 = node.clone();
            let k2 = key.clone();
            let Some(holding) = tokio::task::spawn_blocking(move || node2.holding(&k2)).await.ok().flatten() else {
                return full(StatusCode::NOT_FOUND, "not held here\n");
            };
            let range = req.headers().get(hyper::header::RANGE).map(|v| v.to_str().unwrap_or("").to_string());
            let (a, b) = match &range {
                Some(r) => match parse_range(r, size) {
                    Ok(x) => x,
                    Err(()) => {
                        let mut resp = full(StatusCode::RANGE_NOT_SATISFIABLE, "one satisfiable byte range, please\n");
                        if let Ok(v) = format!("bytes */{size}").parse() {
                            resp.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
                        }
                        return resp;
                    }
                },
                None => (0, size),
            };
            // Only pieces held (and, for the cache, verifiable) are served.
            if let Holding::Cache { cache, .. } = &holding {
                let ps = cache.piece_size;
                let idx = |o: u64| usize::try_from(o / ps).unwrap_or(usize::MAX);
                let (first, last) = (idx(a), idx(b.saturating_sub(1)));
                if b > a && !(first..=last).all(|i| cache.has(i)) {
                    return full(StatusCode::NOT_FOUND, "those pieces are not held here\n");
                }
            }
            let mut resp = if method == Method::HEAD {
                full(if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK }, Bytes::new())
            } else {
                let background = req
                    .headers()
                    .get(priority::PRIORITY_HEADER)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(priority::BACKGROUND.as_bytes()));
                tracing::debug!("swarm: serving {key} bytes {a}-{b}{}", if background { " (background)" } else { "" });
                queue.serving(background);
                let lane = if background {
                    // Background work takes one of the node's turns before its first byte.
                    Lane::Background { _turn: Arc::new(node.foreground.background_turn(queue.clone()).await) }
                } else {
                    Lane::Reader(Arc::new(node.foreground.begin(Some(queue.clone()))))
                };
                let stream = body_stream(node.clone(), Arc::new(holding), a, b, lane);
                let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
                *r.status_mut() = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
                r
            };
            let h = resp.headers_mut();
            if let Ok(v) = (b - a).to_string().parse() {
                h.insert(hyper::header::CONTENT_LENGTH, v);
            }
            if let Ok(v) = "bytes".parse() {
                h.insert(hyper::header::ACCEPT_RANGES, v);
            }
            if range.is_some()
                && let Ok(v) = format!("bytes {a}-{}/{size}", b - 1).parse()
            {
                h.insert(hyper::header::CONTENT_RANGE, v);
            }
            resp
        }
        _ => full(StatusCode::NOT_FOUND, "no such thing\n"),
    }
}

type Chunks = Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>;

/// What a response holds while it streams: a reader's is counted active (until its bytes
/// have reached the client: hyper drops a body once its length is sent, without asking for
/// its end, so the wait is in [`priority::Active`]'s drop); background work holds one of the
/// node's turns and waits for its turn before each step.
#[derive(Clone)]
enum Lane {
    Reader(Arc<priority::Active>),
    /// The turn is held (given back when dropped), not read.
    Background {
        _turn: Arc<priority::BackgroundTurn>,
    },
}

/// The bytes `[a, b)`, read (and checked) a step at a time, paced under the upload limit, in
/// `lane`.
fn body_stream(node: Arc<Node>, h: Arc<Holding>, a: u64, b: u64, lane: Lane) -> Chunks {
    Box::pin(futures_util::stream::unfold(a, move |pos| {
        let (node, h, lane) = (node.clone(), h.clone(), lane.clone());
        async move {
            if pos >= b {
                return None;
            }
            match &lane {
                Lane::Reader(a) => a.progress(),
                Lane::Background { .. } => node.foreground.wait_turn().await,
            }
            let n = usize::try_from((b - pos).min(STEP as u64)).unwrap_or(STEP);
            let h2 = h.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                read_checked(&h2, pos, &mut buf).map(|()| buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match read {
                Ok(buf) => {
                    if let Some(p) = &node.pace {
                        p.pace(buf.len()).await;
                    }
                    node.stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    Some((Ok(Frame::data(Bytes::from(buf))), pos + n as u64))
                }
                // The connection is cut: the client sees a short body, never wrong bytes.
                Err(e) => Some((Err(e), b)),
            }
        }
    }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<ServeStats>,
}

/// Binds and serves on runtime `rt` until the process ends.
pub fn start(
    cfg: ServeConfig,
    annex: Arc<Annex>,
    store: Option<Arc<PieceStore>>,
    peers: Arc<Peers>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Server> {
    let listener = {
        let _guard = rt.enter();
        let std =
            std::net::TcpListener::bind(cfg.listen).map_err(|e| anyhow::anyhow!("listen on {}: {e}", cfg.listen))?;
        std.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(std)?
    };
    let addr = listener.local_addr()?;
    let stats = Arc::new(ServeStats::default());
    let node = Arc::new(Node {
        annex,
        store,
        peers,
        token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        pace: cfg
            .bwlimit
            .map(|r| Arc::new(Limiter::new(crate::annex::settings::Limits { bwlimit: Some(r), maxconnections: None }))),
        stats: stats.clone(),
        announces: AnnounceRate::new(),
        manifests: Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(64).unwrap_or(std::num::NonZeroUsize::MIN),
        )),
        foreground: Arc::new(Foreground::default()),
    });
    let conns = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    tracing::info!("swarm: serving on http://{addr}");
    // Bound (connections wait in the backlog): peers can check this node now.
    node.peers.kick();
    rt.spawn(async move {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: accepting again at once
                    // would fail again and spin a core. Wait for connections to close.
                    tracing::warn!("swarm: accept on {addr}: {e}; pausing {ACCEPT_PAUSE:?}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                node.stats.refused.fetch_add(1, Ordering::Relaxed);
                drop(sock);
                continue;
            };
            {
                let mut m = lock(&per_ip);
                let n = m.entry(peer.ip()).or_insert(0);
                if *n >= cfg.per_peer {
                    node.stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(sock);
                    continue;
                }
                *n += 1;
            }
            let (node, per_ip) = (node.clone(), per_ip.clone());
            let idle = cfg.idle_timeout;
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let queue = Arc::new(priority::ConnQueue::new(&sock));
                let last = Arc::new(AtomicU64::new(0));
                let io = Watched { inner: sock, last: last.clone(), epoch: Instant::now() };
                let epoch = io.epoch;
                let svc = hyper::service::service_fn(move |req| {
                    let (node, queue) = (node.clone(), queue.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(node, req, peer.ip(), &queue).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                let watchdog = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let since = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                        if since > idle {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = conn => {}
                    () = watchdog => tracing::debug!("swarm: closing a connection from {peer} idle for {idle:?}"),
                }
                let mut m = lock(&per_ip);
                if let Some(n) = m.get_mut(&peer.ip()) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(&peer.ip());
                    }
                }
                drop(permit);
            });
        }
    });
    Ok(Server { addr, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Ok((0, 1)));
        assert_eq!(parse_range("bytes=9-9", 10), Ok((9, 10)));
        assert_eq!(parse_range("bytes=5-", 10), Ok((5, 10)));
        assert_eq!(parse_range("bytes=-3", 10), Ok((7, 10)));
        assert_eq!(parse_range("bytes=0-99", 10), Ok((0, 10)));
        assert_eq!(parse_range("bytes=10-12", 10), Err(()));
        assert_eq!(parse_range("bytes=3-2", 10), Err(()));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Err(()));
        assert_eq!(parse_range("bytes=x-1", 10), Err(()));
        assert_eq!(parse_range("items=0-1", 10), Err(()));
        assert_eq!(parse_range("bytes=-0", 10), Err(()));
        assert_eq!(parse_range("bytes=0-0", 0), Err(()));
    }

    #[test]
    fn announcements_are_rate_limited_per_address() {
        let r = AnnounceRate::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        let burst = (0..100).filter(|_| r.take(a, t)).count();
        assert_eq!(burst as f64, ANNOUNCE_BURST);
        assert!(r.take(b, t), "another address has its own bucket");
        assert!(!r.take(a, t + Duration::from_millis(100)));
        assert!(r.take(a, t + Duration::from_secs_f64(1.5 / ANNOUNCE_PER_SEC)), "refilled");
    }

    #[test]
    fn keys_in_paths() {
        assert!(parse_key("SHA256E-s5--abc.txt").is_some());
        assert!(parse_key("..%2F..%2Fsecret").is_none(), "not a key");
        assert!(parse_key("URL-s5--http%3A%2F%2Fexample.org%2Fa").is_some(), "URL keys have slashes");
        assert!(parse_key("SHA256E-s5--a%00b").is_none(), "no NUL");
        assert!(parse_key(&format!("SHA256E-s5--{}", "a".repeat(2000))).is_none(), "not too long");
        assert!(parse_key("..").is_none());
    }
}
