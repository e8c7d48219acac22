//! Reading a key whose size could not be learnt (a URL key from `addurl --relaxed` on a
//! server that sends no length: chunked bodies, no `Content-Range`): the object is streamed
//! from its start, over HTTP, to its real end. No pieces, no cache: pieces need a size.
//!
//! fs opens such a file with direct I/O (`crate::fuse`), so every read reaches here and the
//! kernel never cuts a read at the size `stat` showed. One stream per open file: reads in
//! order continue it; a read before its position starts a new one from byte 0 (as git-annex
//! downloads, a server without ranges can do nothing else). When the stream ends, the total is
//! handed to `on_end`, so that `stat` shows the real size from then on and later opens fetch
//! the key like any sized one.
//!
//! Untrusted input: a body that declares a length must have exactly it (`HttpClient::
//! get_whole`); a stall ends the read with an error (the client's read timeout); nothing read
//! is ever served twice or out of place.
//!
//! Lock order: `state` (a tokio mutex, held across the awaits of one read) is a leaf.

use super::http::HttpClient;
use super::remote::ByteStream;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

/// Why bytes of an object of unknown size could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SizelessError {
    /// No URL answered with the object: each URL and what it did.
    #[error("{}", if .0.is_empty() { "no URL is recorded for it".to_string() } else { .0.join("; ") })]
    NoAnswer(Vec<String>),
    #[error("stream broke at byte {at}: {source}")]
    Broken {
        at: u64,
        #[source]
        source: super::remote::FetchError,
    },
}

/// Called with the object's size once a stream reached its end.
pub type OnEnd = Arc<dyn Fn(u64) + Send + Sync>;

struct State {
    stream: Option<ByteStream>,
    /// Offset in the object of the next byte not handed out (the first of `pending`).
    pos: u64,
    /// Bytes received, not handed out yet.
    pending: Bytes,
    /// The object's size, once a stream reached its end.
    end: Option<u64>,
}

/// One open file of unknown size, streamed from its URLs (tried in order).
pub struct WholeStream {
    key: String,
    urls: Vec<String>,
    client: HttpClient,
    on_end: OnEnd,
    state: tokio::sync::Mutex<State>,
}

impl WholeStream {
    pub fn new(key: String, urls: Vec<String>, client: HttpClient, on_end: OnEnd) -> WholeStream {
        WholeStream {
            key,
            urls,
            client,
            on_end,
            state: tokio::sync::Mutex::new(State { stream: None, pos: 0, pending: Bytes::new(), end: None }),
        }
    }

    /// The key, for error messages.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn describe(&self) -> String {
        format!("stream of {} (size unknown)", self.urls.first().map_or("", String::as_str))
    }

    /// A new stream from byte 0, from the first URL that answers.
    async fn open(&self) -> Result<ByteStream, SizelessError> {
        let mut tried = Vec::new();
        for url in &self.urls {
            match self.client.get_whole(url).await {
                Ok((body, declared)) => {
                    if let Some(n) = declared {
                        // The length came with the body after all: known from now on.
                        (self.on_end)(n);
                    }
                    return Ok(body);
                }
                Err(e) => tried.push(format!("{url}: {e}")),
            }
        }
        Err(SizelessError::NoAnswer(tried))
    }

    /// The next bytes of the stream; empty at its end.
    async fn next_bytes(&self, st: &mut State) -> Result<Bytes, SizelessError> {
        if !st.pending.is_empty() {
            return Ok(std::mem::take(&mut st.pending));
        }
        let Some(stream) = st.stream.as_mut() else { return Ok(Bytes::new()) };
        match stream.next().await {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => {
                st.stream = None;
                Err(SizelessError::Broken { at: st.pos, source: e })
            }
            None => {
                st.stream = None;
                st.end = Some(st.pos);
                tracing::info!("{}: size learnt from the end of its stream: {} bytes", self.key, st.pos);
                (self.on_end)(st.pos);
                Ok(Bytes::new())
            }
        }
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the object).
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, SizelessError> {
        let mut st = self.state.lock().await;
        if st.end.is_some_and(|e| offset >= e) {
            return Ok(Vec::new());
        }
        if st.stream.is_none() && st.pending.is_empty() || offset < st.pos {
            st.stream = Some(self.open().await?);
            st.pos = 0;
            st.pending = Bytes::new();
        }
        // Skip to `offset`.
        while st.pos < offset {
            let mut b = self.next_bytes(&mut st).await?;
            if b.is_empty() {
                return Ok(Vec::new());
            }
            let n = usize::try_from(offset - st.pos).unwrap_or(usize::MAX).min(b.len());
            let _ = b.split_to(n);
            st.pos += n as u64;
            st.pending = b;
        }
        let mut out = Vec::with_capacity(len as usize);
        while out.len() < len as usize {
            let mut b = self.next_bytes(&mut st).await?;
            if b.is_empty() {
                break;
            }
            let n = (len as usize - out.len()).min(b.len());
            out.extend_from_slice(&b.split_to(n));
            st.pos += n as u64;
            st.pending = b;
        }
        Ok(out)
    }
}
