//! HTTP(S) range sources: web URLs, http git remotes, httpalso remotes.
//!
//! One [`HttpClient`] (reqwest with rustls) is shared by every source of a process, so
//! connections to a mirror are reused. Every response is checked before a byte of it is
//! used:
//! - `206` must carry `Content-Range: bytes A-B/TOTAL` for exactly the range asked (and the
//!   key's size), and the body must be exactly that long: a short body, a longer body, or a
//!   stall (no byte for [`STALL_TIMEOUT`]) is an error;
//! - `200` is a whole-object answer (a server that ignores `Range`, e.g. Python's
//!   `http.server`): it marks the source as not serving ranges. For a range starting at 0 the
//!   stream carries **the whole object**, checked to be exactly the key's size, even when
//!   fewer bytes were asked: the fetcher goes on with it as its whole-object run instead of
//!   asking again from 0 (`crate::fetch`, `request.rs`); at any other offset it is
//!   [`FetchError::NoRanges`], which the fetcher does not count as a failure;
//! - `404`/`410` moves to the next candidate URL (git remotes and httpalso have several layouts);
//! - `Content-Encoding` other than identity is refused (no decoding is ever done);
//! - redirects are followed at most [`MAX_REDIRECTS`] times, each hop checked against
//!   `annex.security.allowed-ip-addresses`; host names are checked on the addresses they
//!   resolve to, by the client's resolver.

use super::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use crate::annex::policy::AddressPolicy;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// No byte for this long: the request is dropped and its pieces go to other sources.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting (TCP and TLS) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response headers must arrive within this after the request is sent.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_REDIRECTS: usize = 5;

/// Resolves host names and keeps only the addresses the policy allows.
struct PolicyResolver {
    policy: AddressPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() {
                let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves to {} which annex.security.allowed-ip-addresses does not allow",
                    shown.join(", ")
                )
                .into());
            }
            let it: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(it)
        })
    }
}

/// The HTTP client shared by all sources of a process.
#[derive(Clone)]
pub struct HttpClient {
    pub(crate) client: reqwest::Client,
    policy: AddressPolicy,
}

impl HttpClient {
    pub fn new(policy: AddressPolicy) -> Result<HttpClient, FetchError> {
        let redirect_policy = policy.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(PolicyResolver { policy: policy.clone() }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error("too many redirects");
                }
                match redirect_policy.check_url(attempt.url().as_str()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            }))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("annexfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport(format!("build the HTTP client: {e}")))?;
        Ok(HttpClient { client, policy })
    }

    /// Whether `annex.security.allowed-ip-addresses` lets `url` be asked (host names are
    /// checked again on the addresses they resolve to).
    pub fn check_url(&self, url: &str) -> Result<(), FetchError> {
        self.policy.check_url(url).map_err(FetchError::Policy)
    }

    /// Fetches a small document whole (e.g. a git remote's `config`), at most `limit` bytes.
    pub async fn get_small(&self, url: &str, limit: usize) -> Result<Vec<u8>, FetchError> {
        self.policy.check_url(url).map_err(FetchError::Policy)?;
        let resp = tokio::time::timeout(HEADER_TIMEOUT, self.client.get(url).send())
            .await
            .map_err(|_| FetchError::Stalled(HEADER_TIMEOUT))?
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let mut out = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.map_err(transport)?);
            if out.len() > limit {
                return Err(FetchError::LongBody(limit as u64));
            }
        }
        Ok(out)
    }
}

/// What a server says of an object's size.
fn declared_length(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    // A chunked body has no length, whatever else is sent.
    let chunked = headers
        .get(reqwest::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return None;
    }
    headers.get(reqwest::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The total of `Content-Range: bytes A-B/TOTAL` (none for `*`).
fn content_range_total(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim().strip_prefix("bytes ")?.split_once('/')?.1.trim().parse().ok()
}

impl HttpClient {
    /// The size of the object at `url`, for a key whose name has none: a `HEAD`'s
    /// `Content-Length`, else a `GET` of `Range: bytes=0-0`'s `Content-Range` total (or a
    /// `200`'s `Content-Length`; its body is not read). `Ok(None)`: the server does not tell
    /// (a chunked body); `Err`: it could not be asked, or answered an error (404…).
    pub async fn learn_size(&self, url: &str) -> Result<Option<u64>, FetchError> {
        self.policy.check_url(url).map_err(FetchError::Policy)?;
        let head = self.client.head(url).header(reqwest::header::ACCEPT_ENCODING, "identity");
        let resp = tokio::time::timeout(HEADER_TIMEOUT, head.send())
            .await
            .map_err(|_| FetchError::Stalled(HEADER_TIMEOUT))?
            .map_err(transport)?;
        match resp.status().as_u16() {
            404 | 410 => return Err(FetchError::NotFound),
            s if (200..300).contains(&s) => {
                if let Some(n) = declared_length(resp.headers()) {
                    return Ok(Some(n));
                }
            }
            // Some servers refuse HEAD: the GET below may still answer.
            _ => {}
        }
        let get = self
            .client
            .get(url)
            .header(reqwest::header::RANGE, "bytes=0-0")
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        let resp = tokio::time::timeout(HEADER_TIMEOUT, get.send())
            .await
            .map_err(|_| FetchError::Stalled(HEADER_TIMEOUT))?
            .map_err(transport)?;
        // The body is not read: dropping the response closes the connection.
        match resp.status().as_u16() {
            206 => Ok(content_range_total(resp.headers())),
            200 => Ok(declared_length(resp.headers())),
            404 | 410 => Err(FetchError::NotFound),
            s => Err(FetchError::Status(s)),
        }
    }

    /// The whole object at `url`, from its start, however long it is (a key whose size could
    /// not be learnt): `200` required, no content encoding; a body that declares a length
    /// must have exactly that length. Returns the body and the declared length.
    pub async fn get_whole(&self, url: &str) -> Result<(ByteStream, Option<u64>), FetchError> {
        self.policy.check_url(url).map_err(FetchError::Policy)?;
        let req = self.client.get(url).header(reqwest::header::ACCEPT_ENCODING, "identity");
        let resp = tokio::time::timeout(HEADER_TIMEOUT, req.send())
            .await
            .map_err(|_| FetchError::Stalled(HEADER_TIMEOUT))?
            .map_err(transport)?;
        match resp.status().as_u16() {
            200 => {}
            404 | 410 => return Err(FetchError::NotFound),
            s => return Err(FetchError::Status(s)),
        }
        if let Some(enc) = resp.headers().get(reqwest::header::CONTENT_ENCODING) {
            let enc = enc.to_str().unwrap_or("?").trim().to_ascii_lowercase();
            if enc != "identity" {
                return Err(FetchError::Encoding(enc));
            }
        }
        let declared = declared_length(resp.headers());
        let body: ByteStream = match declared {
            Some(n) => exact_body(resp, n, false),
            None => Box::pin(resp.bytes_stream().map(|c| c.map_err(transport))),
        };
        Ok((body, declared))
    }
}

/// Learns the UUID and bareness of http git remotes whose git config does not say, from
/// `<url>/config`, as git-annex does on first contact.
pub async fn learn_http_remotes(annex: &crate::annex::Annex, client: &HttpClient) {
    let Ok(meta) = annex.meta() else { return };
    for r in &meta.remotes {
        use crate::annex::remotes::RemoteKind;
        let (url, bare) = match &r.kind {
            RemoteKind::GitHttp { url, bare, .. } => (url, *bare),
            // A p2phttp remote reached through an http git remote: its UUID may be learnt
            // from the git remote's config.
            RemoteKind::P2pHttp(p) if r.uuid.is_none() => match &p.git_url {
                Some(u) => (u, Some(true)),
                None => continue,
            },
            _ => continue,
        };
        if r.ignore || (r.uuid.is_some() && bare.is_some()) {
            continue;
        }
        match client.get_small(&format!("{url}/config"), 64 * 1024).await {
            Ok(body) => {
                let text = String::from_utf8_lossy(&body);
                let cfg = crate::annex::repo::GitConfig::from_text(&text);
                if let Some(annex_url) = crate::annex::remotes::p2phttp::annex_url_in_config(&cfg) {
                    tracing::info!("remote {}: learnt p2phttp url {annex_url} from {url}/config", r.name);
                    annex.learn_annex_url(&r.name, annex_url);
                }
                let uuid = cfg.get("annex.uuid").filter(|u| !u.is_empty()).map(str::to_string);
                let bare = cfg.get_bool("core.bare");
                tracing::info!("remote {}: learnt uuid {uuid:?}, bare {bare:?} from {url}/config", r.name);
                annex.learn_remote(&r.name, uuid, bare);
            }
            Err(e) => tracing::warn!("remote {}: cannot read {url}/config: {e}", r.name),
        }
    }
}

pub(crate) fn transport(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Stalled(STALL_TIMEOUT);
    }
    // Never the URL's query: a presigned S3 URL carries its credential and signature there.
    let url = e.url().map(|u| {
        let mut u = u.clone();
        u.set_query(None);
        let _ = u.set_password(None);
        u
    });
    let e = e.without_url();
    // The error chain carries the interesting part (refused connection, policy, TLS).
    let mut msg = match url {
        Some(u) => format!("{e} ({u})"),
        None => e.to_string(),
    };
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    FetchError::Transport(msg)
}

/// One key's content at one or more candidate URLs (tried in order until one is not 404).
pub struct HttpSource {
    name: String,
    identity: String,
    client: HttpClient,
    candidates: Vec<String>,
    /// Index of the candidate that answered, once known.
    found: AtomicUsize,
    size: u64,
    ranges: AtomicBool,
}

impl HttpSource {
    /// `name` is for logs (remote name); `size` is the key's size.
    pub fn new(name: String, client: HttpClient, candidates: Vec<String>, size: u64) -> HttpSource {
        HttpSource {
            identity: name.clone(),
            name,
            client,
            candidates,
            found: AtomicUsize::new(0),
            size,
            ranges: AtomicBool::new(true),
        }
    }

    /// Sets who answers for this source's bytes (see [`RangeSource::identity`]).
    pub fn with_identity(mut self, identity: String) -> HttpSource {
        self.identity = identity;
        self
    }

    async fn fetch(&self, offset: u64, len: u64) -> Result<ByteStream, FetchError> {
        let first = self.found.load(Ordering::Relaxed);
        for i in first..self.candidates.len() {
            let answer = get_checked(&self.client, &self.candidates[i], offset, len, self.size, Whole::Keep).await;
            if matches!(answer, Ok(Answer::Gone)) {
                continue;
            }
            self.found.store(i, Ordering::Relaxed);
            return match answer {
                Ok(Answer::Range(s)) => Ok(s),
                Ok(Answer::Whole(s)) => {
                    self.ranges.store(false, Ordering::Relaxed);
                    Ok(s)
                }
                Err(FetchError::NoRanges) => {
                    self.ranges.store(false, Ordering::Relaxed);
                    Err(FetchError::NoRanges)
                }
                Err(e) => Err(e),
                Ok(Answer::Gone) => Err(FetchError::NotFound),
            };
        }
        Err(FetchError::NotFound)
    }
}

/// What one checked range request gave.
pub(crate) enum Answer {
    /// `206`: exactly the bytes asked.
    Range(ByteStream),
    /// `200` to a range starting at 0: the object's first `len` bytes (the server ignores
    /// ranges).
    Whole(ByteStream),
    /// `404`/`410`: not at this URL.
    Gone,
}

/// One GET of `[offset, offset + len)` of an object of `size` bytes at `url`, with every
/// check of this module (see the module docs); `Err(NoRanges)` for a `200` to a range not
/// starting at 0.
/// What a caller wants of a server that ignored Range and sent the whole object (200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whole {
    /// The range asked for, cut from the start of the object (one part of a longer stream).
    Cut,
    /// The whole object, checked to be exactly the key's size: the fetcher keeps such a
    /// source on one run from byte 0 and skips what it does not need.
    Keep,
}

pub(crate) async fn get_checked(
    client: &HttpClient,
    url: &str,
    offset: u64,
    len: u64,
    size: u64,
    whole: Whole,
) -> Result<Answer, FetchError> {
    let end = offset + len - 1;
    client.policy.check_url(url).map_err(FetchError::Policy)?;
    let req = client
        .client
        .get(url)
        .header(reqwest::header::RANGE, format!("bytes={offset}-{end}"))
        .header(reqwest::header::ACCEPT_ENCODING, "identity");
    let resp = tokio::time::timeout(HEADER_TIMEOUT, req.send())
        .await
        .map_err(|_| FetchError::Stalled(HEADER_TIMEOUT))?
        .map_err(transport)?;
    let status = resp.status().as_u16();
    if status == 404 || status == 410 {
        return Ok(Answer::Gone);
    }
    if let Some(enc) = resp.headers().get(reqwest::header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("?").trim().to_ascii_lowercase();
        if enc != "identity" {
            return Err(FetchError::Encoding(enc));
        }
    }
    let declared = resp.content_length();
    let content_range = resp.headers().get(reqwest::header::CONTENT_RANGE).map(|v| v.to_str().unwrap_or("?"));
    // A 200 that carries a Content-Range sent the range with the wrong status (as `rclone
    // serve s3` up to 1.75 does): it is a range answer, held to every check of a 206.
    let ranged = status == 206 || (status == 200 && content_range.is_some());
    match status {
        _ if ranged => {
            let cr = content_range.ok_or_else(|| FetchError::BadRange("206 without Content-Range".into()))?;
            check_content_range(cr, offset, end, size)?;
            if declared.is_some_and(|l| l != len) {
                return Err(FetchError::BadRange(format!("Content-Length {declared:?} for {len} bytes")));
            }
            Ok(Answer::Range(exact_body(resp, len, false)))
        }
        200 => {
            if offset != 0 {
                return Err(FetchError::NoRanges);
            }
            if declared.is_some_and(|l| l != size) {
                return Err(FetchError::BadRange(format!(
                    "whole object of {} bytes for a key of {size}",
                    declared.unwrap_or(0)
                )));
            }
            Ok(Answer::Whole(match whole {
                Whole::Cut => exact_body(resp, len, true),
                Whole::Keep => {
                    if len < size {
                        tracing::debug!("{url}: ignores Range; streaming the whole object");
                    }
                    exact_body(resp, size, false)
                }
            }))
        }
        416 => Err(FetchError::BadRange(format!("416 for bytes {offset}-{end} of {size}"))),
        s => Err(FetchError::Status(s)),
    }
}

/// Checks `bytes A-B/TOTAL` against the range asked and the key's size.
fn check_content_range(v: &str, start: u64, end: u64, size: u64) -> Result<(), FetchError> {
    let bad = || FetchError::BadRange(format!("Content-Range {v:?} for bytes {start}-{end}/{size}"));
    let rest = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a != start || b != end {
        return Err(bad());
    }
    if total.trim() != "*" && total.trim().parse::<u64>().map_err(|_| bad())? != size {
        return Err(bad());
    }
    Ok(())
}

/// The response body, cut or checked to be exactly `len` bytes: with `truncate_ok` it is cut
/// after `len`; else a body that sends more is an error.
fn exact_body(resp: reqwest::Response, len: u64, truncate_ok: bool) -> ByteStream {
    let body = resp.bytes_stream();
    let s = futures_util::stream::unfold((body, 0u64, false), move |(mut body, got, done)| async move {
        if done {
            return None;
        }
        match body.next().await {
            Some(Ok(chunk)) => {
                let n = chunk.len() as u64;
                if got + n > len {
                    if truncate_ok {
                        let keep = usize::try_from(len - got).unwrap_or(0);
                        return Some((Ok(chunk.slice(..keep)), (body, len, true)));
                    }
                    return Some((Err(FetchError::LongBody(len)), (body, got, true)));
                }
                let done = got + n == len && truncate_ok;
                Some((Ok(chunk), (body, got + n, done)))
            }
            Some(Err(e)) => Some((Err(transport(e)), (body, got, true))),
            None if got < len => Some((Err(FetchError::ShortBody { got, want: len }), (body, got, true))),
            None => None,
        }
    });
    Box::pin(s)
}

impl RangeSource for HttpSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> &str {
        &self.identity
    }
    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        Box::pin(self.fetch(offset, len))
    }
    fn supports_ranges(&self) -> bool {
        self.ranges.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_checks() {
        assert!(check_content_range("bytes 0-9/100", 0, 9, 100).is_ok());
        assert!(check_content_range("bytes 0-9/*", 0, 9, 100).is_ok());
        assert!(check_content_range("bytes 1-9/100", 0, 9, 100).is_err());
        assert!(check_content_range("bytes 0-9/101", 0, 9, 100).is_err());
        assert!(check_content_range("items 0-9/100", 0, 9, 100).is_err());
        assert!(check_content_range("bytes 0-x/100", 0, 9, 100).is_err());
    }
}
