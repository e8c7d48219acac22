//! Reading keys from p2phttp holders (see [`crate::annex::remotes::p2phttp`]).
//!
//! A range `[a, a+len)` is `GET <server>/git-annex/<uuid>/v4/key/<key>?clientuuid=U&offset=a`
//! (the server ignores `Range`): the body runs from `a` to the end of the object and its
//! length is announced in `X-git-annex-data-length`; annexfs reads `len` bytes and drops the
//! connection. Every answer is checked before a byte of it is used:
//! - the announced length must be exactly `size − a` (0 when the server does not have the
//!   key: reported as not found);
//! - the body must bring the `len` bytes asked; a body that ends one byte before the announced
//!   end is the server saying its content is invalid, which is an error, never served;
//! - `Content-Encoding` other than identity is refused; headers must come within
//!   [`HEADER_TIMEOUT`], and the client's read timeout ends a stalled body;
//! - `404` means the server does not speak this version: v4, v3, v2, v1 are tried in turn
//!   (v0 announces no length and is not used), the one that answers is remembered;
//! - `401` asks [`Credentials`] for a login (`git credential fill`, once per server for the
//!   mount), then retries; a login refused again is rejected and the source fails for good.
//!
//! Limits and bans apply to the remote (its name is the source's identity).

use super::credential::{CredentialError, Login};
use super::http::HttpClient;
use super::reach::Reach;
use super::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use crate::annex::Key;
use crate::annex::remotes::p2phttp::{P2pHttpLocation, protocol_value};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Response headers must arrive within this after the request is sent.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Protocol versions with a data length header, newest first.
const VERSIONS: [&str; 4] = ["v4", "v3", "v2", "v1"];
const DATA_LENGTH: &str = "x-git-annex-data-length";

/// Why a p2phttp location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this repository has no annex.uuid, which p2phttp servers require of clients")]
    NoClientUuid,
    #[error("the key has no size to fetch ranges of")]
    NoSize,
}

/// What p2phttp sources of one mount share: who this repository is, and the logins.
pub struct Shared {
    /// This repository's annex.uuid (sent as `clientuuid`).
    pub client_uuid: Option<String>,
    pub credentials: super::credential::Credentials,
}

impl Shared {
    /// For the repository with `client_uuid`, whose `git credential` runs in `dir`.
    pub fn new(client_uuid: Option<String>, dir: Option<PathBuf>) -> Shared {
        Shared { client_uuid, credentials: super::credential::Credentials::new(dir) }
    }
}

/// A source reading `key` at `loc`.
pub fn source(loc: &P2pHttpLocation, key: &Key, reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    let client_uuid = reach.p2phttp.client_uuid.clone().ok_or(Error::NoClientUuid)?;
    let size = key.size().ok_or(Error::NoSize)?;
    Ok(Arc::new(P2pHttpSource {
        name: format!("{} {}", loc.remote, loc.server),
        loc: loc.clone(),
        client: reach.http.clone(),
        shared: reach.p2phttp.clone(),
        client_uuid,
        size,
        version: AtomicUsize::new(0),
    }))
}

/// One key on one p2phttp server.
pub struct P2pHttpSource {
    name: String,
    loc: P2pHttpLocation,
    client: HttpClient,
    shared: Arc<Shared>,
    client_uuid: String,
    size: u64,
    /// Index in [`VERSIONS`] of the version the server answered.
    version: AtomicUsize,
}

fn auth_error(e: CredentialError) -> FetchError {
    FetchError::Unauthorized(e.to_string())
}

impl P2pHttpSource {
    async fn fetch(&self, offset: u64, len: u64) -> Result<ByteStream, FetchError> {
        let creds = &self.shared.credentials;
        let cred_url = &self.loc.credential_url;
        let mut login: Option<Arc<Login>> = creds.known(cred_url).await.map_err(auth_error)?;
        let mut fresh = false;
        let mut v = self.version.load(Ordering::Relaxed);
        loop {
            let Some(version) = VERSIONS.get(v) else { return Err(FetchError::NotFound) };
            let mut url = self.loc.key_url(version);
            self.client.check_url(&url)?;
            let cu = protocol_value(self.client_uuid.as_bytes());
            url.push_str("?clientuuid=");
            url.extend(percent_encoding::utf8_percent_encode(&cu, percent_encoding::NON_ALPHANUMERIC));
            if offset > 0 {
                url.push_str(&format!("&offset={offset}"));
            }
            let mut req = self
                .client
                .client
                .get(&url)
                .header(reqwest::header::ACCEPT, "application/octet-stream")
                .header(reqwest::header::ACCEPT_ENCODING, "identity");
            if let Some(l) = &login {
                req = req.basic_auth(&l.username, Some(&l.password));
            }
            let resp = tokio::time::timeout(HEADER_TIMEOUT, req.send())
                .await
                .map_err(|_| FetchError::Stalled(HEADER_TIMEOUT))?
                .map_err(super::http::transport)?;
            match resp.status().as_u16() {
                200 => {}
                // Refused with a login: forbidden, not a wrong password (as git, only a 401
                // makes a login rejected in the user's credential store).
                403 if login.is_some() => {
                    return Err(FetchError::Unauthorized(format!("{cred_url}: 403 Forbidden for this login")));
                }
                401 | 403 => {
                    let www = resp.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|h| h.to_str().ok());
                    login = Some(creds.after_401(cred_url, login.as_ref(), www).await.map_err(auth_error)?);
                    fresh = true;
                    continue;
                }
                404 => {
                    v += 1;
                    continue;
                }
                s => return Err(FetchError::Status(s)),
            }
            self.version.store(v, Ordering::Relaxed);
            if fresh && let Some(l) = &login {
                creds.approve(l).await;
            }
            if let Some(enc) = resp.headers().get(reqwest::header::CONTENT_ENCODING) {
                let enc = enc.to_str().unwrap_or("?").trim().to_ascii_lowercase();
                if enc != "identity" {
                    return Err(FetchError::Encoding(enc));
                }
            }
            let announced: u64 = resp
                .headers()
                .get(DATA_LENGTH)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.trim().parse().ok())
                .ok_or_else(|| FetchError::BadRange(format!("no valid {DATA_LENGTH} header")))?;
            let rest = self.size.saturating_sub(offset);
            if announced == 0 && rest > 0 {
                return Err(FetchError::NotFound);
            }
            if announced != rest {
                return Err(FetchError::BadRange(format!(
                    "{announced} bytes announced from offset {offset} of a key of {}",
                    self.size
                )));
            }
            return Ok(bounded_body(resp, len, announced));
        }
    }
}

/// The first `len` bytes of a body that announced `announced` bytes. Ending one byte before
/// the announced end is the server's "content invalid"; ending elsewhere early is a short body.
fn bounded_body(resp: reqwest::Response, len: u64, announced: u64) -> ByteStream {
    let body = resp.bytes_stream();
    let s = futures_util::stream::unfold((body, 0u64, false), move |(mut body, got, done)| async move {
        if done || got >= len {
            return None;
        }
        match body.next().await {
            Some(Ok(chunk)) => {
                let n = chunk.len() as u64;
                if got + n > announced {
                    return Some((Err(FetchError::LongBody(announced)), (body, got, true)));
                }
                let keep = n.min(len - got);
                let chunk = chunk.slice(..usize::try_from(keep).unwrap_or(0));
                Some((Ok(chunk), (body, got + keep, false)))
            }
            Some(Err(e)) => Some((Err(super::http::transport(e)), (body, got, true))),
            None if got + 1 == announced => Some((
                Err(FetchError::Transport("the server says its content of the key is invalid".into())),
                (body, got, true),
            )),
            None => Some((Err(FetchError::ShortBody { got, want: len }), (body, got, true))),
        }
    });
    Box::pin(s)
}

impl RangeSource for P2pHttpSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> &str {
        &self.loc.remote
    }
    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        Box::pin(self.fetch(offset, len))
    }
}
