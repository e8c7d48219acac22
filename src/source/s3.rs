//! Reading keys from S3 special remotes (see [`crate::annex::remotes::s3`] for where the
//! objects are and which credentials apply).
//!
//! Each range request is one GET per object it touches, made through the process's shared
//! [`HttpClient`] (address policy, timeouts, connection reuse) and checked exactly as HTTP
//! mirrors are ([`super::http::get_checked`]: status, `Content-Range` against the object's
//! size, exact body length, stalls). Signed requests carry a SigV4 presigned URL made by
//! rusty-s3 for that one request (so nothing expires while it waits in a queue); whatever
//! signature version git-annex used to store, SigV4 reads it. A range spanning chunk
//! objects is several GETs in order, one at a time, in one stream; the next GET starts only
//! when the previous body is done, and the stream ends at the first error.
//!
//! Identity for limits and bans: the remote. Secrets never reach a log line or a name: the
//! source's name shows the URL without signature.

use super::http::{Answer, HttpClient, Whole, get_checked};
use super::reach::Reach;
use super::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use crate::annex::Key;
use crate::annex::remotes::s3::{S3Auth, S3Location, public_url};
use futures_util::StreamExt;
use rusty_s3::S3Action;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a presigned URL is valid: it is made just before its request is sent.
const PRESIGN_FOR: Duration = Duration::from_secs(15 * 60);

/// Why an S3 location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("S3 endpoint {endpoint} for bucket {bucket}: {why}")]
    Bucket { endpoint: String, bucket: String, why: String },
    #[error("the key has no size to read ranges of")]
    NoSize,
    #[error("the key's objects hold {parts} bytes, not the key's {size}")]
    PartsSize { parts: u64, size: u64 },
}

/// One object: where in the key it starts, how long it is.
struct Part {
    object: String,
    version: Option<String>,
    start: u64,
    len: u64,
}

struct Inner {
    name: String,
    identity: String,
    client: HttpClient,
    bucket: rusty_s3::Bucket,
    creds: Option<rusty_s3::Credentials>,
    /// `publicurl=`: unsigned URLs under it instead of the endpoint.
    public_base: Option<String>,
    parts: Vec<Part>,
    ranges: AtomicBool,
}

/// An S3 remote's objects for one key.
pub struct S3Source {
    inner: Arc<Inner>,
}

/// A source reading `key` at `loc`.
pub fn source(loc: &S3Location, key: &Key, reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    let size = key.size().ok_or(Error::NoSize)?;
    let total: u64 = loc.parts.iter().map(|p| p.len).sum();
    if total != size {
        return Err(Error::PartsSize { parts: total, size });
    }
    let bad = |why: String| Error::Bucket { endpoint: loc.endpoint.clone(), bucket: loc.bucket.clone(), why };
    let endpoint: reqwest::Url = loc.endpoint.parse().map_err(|e| bad(format!("{e}")))?;
    let style = if loc.path_style { rusty_s3::UrlStyle::Path } else { rusty_s3::UrlStyle::VirtualHost };
    let bucket = rusty_s3::Bucket::new(endpoint, style, loc.bucket.clone(), loc.region.clone())
        .map_err(|e| bad(format!("{e:?}")))?;
    let (creds, public_base) = match &loc.auth {
        S3Auth::Signed(c) => {
            let creds = match &c.session_token {
                Some(t) => rusty_s3::Credentials::new_with_token(
                    c.access_key.clone(),
                    c.secret.expose().to_string(),
                    t.expose().to_string(),
                ),
                None => rusty_s3::Credentials::new(c.access_key.clone(), c.secret.expose().to_string()),
            };
            (Some(creds), None)
        }
        S3Auth::Anonymous => (None, None),
        S3Auth::Public(base) => (None, Some(base.clone())),
    };
    let mut start = 0;
    let parts = loc
        .parts
        .iter()
        .map(|p| {
            let part = Part { object: p.object.clone(), version: p.version.clone(), start, len: p.len };
            start += p.len;
            part
        })
        .collect();
    let first = loc.read_urls().into_iter().next().unwrap_or_default();
    let name = format!("{} {first} ({})", loc.remote, loc.auth_text());
    Ok(Arc::new(S3Source {
        inner: Arc::new(Inner {
            name,
            identity: loc.remote.clone(),
            client: reach.http.clone(),
            bucket,
            creds,
            public_base,
            parts,
            ranges: AtomicBool::new(true),
        }),
    }))
}

impl Inner {
    /// The URL to GET part `i` at, signed now when the remote is signed.
    fn url(&self, i: usize) -> String {
        let p = &self.parts[i];
        if let Some(base) = &self.public_base {
            let url = public_url(base, &p.object);
            return match &p.version {
                Some(v) => format!("{url}?versionId={v}"),
                None => url,
            };
        }
        let mut get = rusty_s3::actions::GetObject::new(&self.bucket, self.creds.as_ref(), &p.object);
        if let Some(v) = &p.version {
            get.query_mut().insert("versionId", v.clone());
        }
        get.sign(PRESIGN_FOR).to_string()
    }

    /// `len` bytes at `offset` within part `i`.
    async fn part(self: Arc<Self>, i: usize, offset: u64, len: u64) -> Result<ByteStream, FetchError> {
        let url = self.url(i);
        match get_checked(&self.client, &url, offset, len, self.parts[i].len, Whole::Cut).await? {
            Answer::Range(s) => Ok(s),
            Answer::Whole(s) => {
                self.ranges.store(false, Ordering::Relaxed);
                Ok(s)
            }
            Answer::Gone => Err(FetchError::NotFound),
        }
        .inspect_err(|e| {
            if *e == FetchError::NoRanges {
                self.ranges.store(false, Ordering::Relaxed);
            }
        })
    }
}

/// The (part, offset in it, length) requests covering `[offset, offset + len)`, in order.
fn pieces(parts: &[Part], offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
    let end = offset.saturating_add(len);
    parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.len > 0 && p.start < end && offset < p.start + p.len)
        .map(|(i, p)| {
            let from = offset.max(p.start);
            let to = end.min(p.start + p.len);
            (i, from - p.start, to - from)
        })
        .collect()
}

impl RangeSource for S3Source {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn identity(&self) -> &str {
        &self.inner.identity
    }
    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let pieces = pieces(&inner.parts, offset, len);
            let covered: u64 = pieces.iter().map(|p| p.2).sum();
            if covered != len {
                return Err(FetchError::BadRange(format!("bytes {offset}+{len} are not all in the key's objects")));
            }
            let mut rest = pieces.into_iter();
            let Some((i, o, n)) = rest.next() else {
                return Ok(Box::pin(futures_util::stream::empty()) as ByteStream);
            };
            // The first GET is answered before the stream is handed over, so a refusal is
            // an error of the request, not of its body.
            let first = inner.clone().part(i, o, n).await?;
            let later = futures_util::stream::iter(rest).then(move |(i, o, n)| inner.clone().part(i, o, n)).flat_map(
                |r| match r {
                    Ok(s) => s,
                    Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
                },
            );
            // Nothing after the first error: a failed part must not be followed by the next.
            let s = first.chain(later).scan(false, |failed, item| {
                let out = if *failed { None } else { Some(item) };
                if out.as_ref().is_some_and(Result::is_err) {
                    *failed = true;
                }
                futures_util::future::ready(out)
            });
            Ok(Box::pin(s) as ByteStream)
        })
    }
    fn supports_ranges(&self) -> bool {
        self.inner.ranges.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_over_chunk_objects() {
        let parts: Vec<Part> = [(0, 10), (10, 10), (20, 5)]
            .iter()
            .map(|&(start, len)| Part { object: String::new(), version: None, start, len })
            .collect();
        assert_eq!(pieces(&parts, 0, 25), vec![(0, 0, 10), (1, 0, 10), (2, 0, 5)]);
        assert_eq!(pieces(&parts, 8, 4), vec![(0, 8, 2), (1, 0, 2)]);
        assert_eq!(pieces(&parts, 20, 5), vec![(2, 0, 5)]);
        assert_eq!(pieces(&parts, 12, 3), vec![(1, 2, 3)]);
        // Past the end: not covered, which `get` refuses.
        assert_eq!(pieces(&parts, 24, 5).iter().map(|p| p.2).sum::<u64>(), 1);
    }
}
