//! A spread key as a [`RangeSource`] for the fetcher: ranges are read from every store of
//! the remote at once ([`KeyReader`]), checked piece by piece against the key's manifest, and
//! decoded where stores are missing, busy or wrong.
//!
//! The manifest is fetched on the first request (from any store) and must describe a key of
//! the size the fetcher reads; the stream yields one stripe's worth of bytes at a time.

use super::SpreadError;
use super::reader::KeyReader;
use super::remote::Spread;
use crate::source::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use futures_util::StreamExt;
use std::sync::Arc;

/// Stripes of one request read at once: with the fetcher's two requests per source, enough
/// piece reads in flight to keep every store of the remote busy.
const STRIPES_AT_ONCE: usize = 4;

/// One key of a spread remote.
pub struct SpreadSource {
    name: String,
    identity: String,
    spread: Arc<Spread>,
    key: String,
    size: u64,
    reader: tokio::sync::OnceCell<Arc<KeyReader>>,
}

impl SpreadSource {
    /// `remote`: the remote's name (the identity for limits and bans).
    pub fn new(remote: &str, spread: Arc<Spread>, key: &str, size: u64) -> SpreadSource {
        let specs: Vec<&str> = spread.stores.iter().map(|e| e.spec.as_str()).collect();
        SpreadSource {
            name: format!("{remote} (spread {}+{} over {})", spread.code.k, spread.code.m, specs.join(",")),
            identity: remote.to_string(),
            spread,
            key: key.to_string(),
            size,
            reader: tokio::sync::OnceCell::new(),
        }
    }

    async fn reader(&self) -> Result<Arc<KeyReader>, FetchError> {
        self.reader
            .get_or_try_init(|| async {
                let m = self.spread.manifest(&self.key).await.map_err(|e| FetchError::Refused(e.0.to_string()))?;
                if m.layout.size != self.size {
                    return Err(FetchError::Refused(format!(
                        "the spread manifest says {} bytes, the key {}",
                        m.layout.size, self.size
                    )));
                }
                Ok(Arc::new(KeyReader::new(&self.spread, m)))
            })
            .await
            .cloned()
    }
}

impl RangeSource for SpreadSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> &str {
        &self.identity
    }
    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        Box::pin(async move {
            if offset.saturating_add(len) > self.size {
                return Err(FetchError::BadRange(format!("bytes {offset}+{len} past the key's {}", self.size)));
            }
            let reader = self.reader().await?;
            let stripe = reader.manifest.layout.stripe_bytes().max(1);
            let end = offset + len;
            // One part per stripe, several stripes read at once, handed over in order.
            let mut parts = Vec::new();
            let mut pos = offset;
            while pos < end {
                let next = ((pos / stripe + 1) * stripe).min(end);
                parts.push((pos, next));
                pos = next;
            }
            let s = futures_util::stream::iter(parts)
                .map(move |(from, to)| {
                    let reader = reader.clone();
                    async move {
                        reader.read(from, to - from).await.map(bytes::Bytes::from).map_err(|e| {
                            let why = reader.report();
                            tracing::warn!(key = %reader.manifest.key, "spread read failed: {e} ({why})");
                            // Too few shards left is not cured by asking again soon.
                            match e {
                                SpreadError::TooFew { .. } => FetchError::Refused(format!("{e} ({why})")),
                                _ => FetchError::Transport(format!("{e} ({why})")),
                            }
                        })
                    }
                })
                .buffered(STRIPES_AT_ONCE)
                // Nothing after the first error.
                .scan(false, |failed, item| {
                    let out = if *failed { None } else { Some(item) };
                    if out.as_ref().is_some_and(Result::is_err) {
                        *failed = true;
                    }
                    futures_util::future::ready(out)
                });
            Ok(Box::pin(s) as ByteStream)
        })
    }
}
