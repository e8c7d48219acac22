//! A swarm peer as a range source of one key: the pieces its have-map says it holds (asked
//! again in the background once older than [`HAVE_TTL`]), by range requests; requests no
//! reader waits for are marked background ([`super::priority`]).

use super::{HAVE_TTL, HaveMap, Peers, priority};
use crate::annex::Key;
use crate::source::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A peer serving one key, for the pieces it holds.
pub struct PeerSource {
    pub(super) name: String,
    pub(super) peer: String,
    pub(super) url: String,
    pub(super) key: Key,
    pub(super) size: u64,
    pub(super) have: Arc<RwLock<(HaveMap, Instant)>>,
    pub(super) refreshing: Arc<AtomicBool>,
    pub(super) peers: Arc<Peers>,
}

impl PeerSource {
    /// Asks the peer again for its have-map when it is older than [`HAVE_TTL`], in the
    /// background (the scheduler asks [`RangeSource::has_range`] under its locks).
    fn refresh_if_stale(&self) {
        let stale = self.have.read().map(|h| h.1.elapsed() > HAVE_TTL).unwrap_or(true);
        if !stale || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (peers, peer, key, flag) =
            (self.peers.clone(), self.peer.clone(), self.key.clone(), self.refreshing.clone());
        let target = Arc::downgrade(&self.have);
        self.peers.rt.spawn(async move {
            if let Some(h) = peers.have(&peer, &key).await
                && let Some(t) = target.upgrade()
            {
                *t.write().unwrap_or_else(|p| p.into_inner()) = (h, Instant::now());
            }
            flag.store(false, Ordering::Release);
        });
    }
}

impl RangeSource for PeerSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn has_range(&self, offset: u64, len: u64) -> bool {
        self.refresh_if_stale();
        self.have.read().map(|h| h.0.covers(offset, len)).unwrap_or(false)
    }

    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        self.get_with(offset, len, false)
    }

    fn get_background(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        self.get_with(offset, len, true)
    }
}

impl PeerSource {
    /// A range of the key; `background` asks the peer to serve readers first
    /// ([`priority`]).
    fn get_with(&self, offset: u64, len: u64, background: bool) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        Box::pin(async move {
            let end = offset + len - 1;
            let mut req = self
                .peers
                .request(reqwest::Method::GET, &self.url)
                .timeout(Duration::from_secs(3600))
                .header(reqwest::header::RANGE, format!("bytes={offset}-{end}"));
            if background {
                req = req.header(priority::PRIORITY_HEADER, priority::BACKGROUND);
            }
            let r = req.send().await.map_err(|e| FetchError::Transport(e.to_string()))?;
            match r.status().as_u16() {
                206 => {}
                404 => return Err(FetchError::NotFound),
                s => return Err(FetchError::Status(s)),
            }
            let want = format!("bytes {offset}-{end}/{}", self.size);
            let cr = r.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if cr != want {
                return Err(FetchError::BadRange(format!("Content-Range {cr:?} for {want}")));
            }
            let mut got = 0u64;
            let s = r.bytes_stream().map(move |c| {
                let c = c.map_err(|e| FetchError::Transport(e.to_string()))?;
                got += c.len() as u64;
                if got > len {
                    return Err(FetchError::LongBody(len));
                }
                Ok(c)
            });
            Ok(Box::pin(s) as ByteStream)
        })
    }
}
