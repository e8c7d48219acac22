//! Direct reads: the bytes of a cold seek asked of one source exactly, beside the pieces.
//!
//! A request delivers its pieces from their first byte. A cold read at a random offset waits
//! for every byte of its piece before its own (a 256 KiB piece at 25 MB/s: up to 10 ms before
//! a 64 KiB read at the back of it is served), and on a source already busy with readahead
//! it shares the bandwidth with it. So a seek whose bytes are neither cached nor arriving is
//! also asked directly: one range request for exactly `offset..end`, on the usable source
//! with the fewest requests in flight (then the quickest first byte), and the reader takes
//! whichever comes first, those bytes or its pieces (`read.rs`). Its pieces are demanded and
//! fetched into the cache as usual, so a later read of them is a cache hit.
//!
//! Only where bytes may be served before they are verified anyway ([`KeyFetch`]'s partial
//! serving: stream mode without a manifest): the bytes carry the same trust as the arrived
//! prefix of a piece in flight, and the whole key is verified once all its pieces are in.
//! With a manifest or in strict mode a byte is served only from a checked piece, and no
//! direct read is made. A direct read that fails, comes short or stalls is dropped quietly
//! (the reader still waits for its pieces); it never blames the source, whose requests for
//! pieces are judged as before.

use super::stats::SourceId;
use super::{KeyFetch, State, lock};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Longest read served directly: larger reads are not seeks of a player or a notebook.
pub(super) const MAX_DIRECT_BYTES: u64 = 1 << 20;

impl KeyFetch {
    /// The source a direct read of `offset..end` would ask, if the read may be made directly.
    pub(super) fn direct_source(&self, st: &State, offset: u64, end: u64) -> Option<SourceId> {
        if !self.partial_serving(st) || end - offset > MAX_DIRECT_BYTES {
            return None;
        }
        self.source_ids()
            .filter(|&s| {
                let slot = self.source(s);
                slot.src.supports_ranges()
                    && slot.src.has_range(offset, end - offset)
                    && slot.limiter.as_ref().is_none_or(|l| l.room() != Some(0))
                    && self.source_alive(s)
            })
            .filter_map(|s| {
                let ss = lock(&self.source(s).stats);
                let now = Instant::now();
                if ss.backoff_until.is_some_and(|t| t > now) || ss.fails_in_row > 0 {
                    return None;
                }
                // Fewest requests in flight, then the quickest first byte (unmeasured last
                // among equals), then the fastest.
                let ttfb = if ss.ttfb_ms > 0.0 { ss.ttfb_ms } else { f64::MAX };
                Some((s, ss.inflight, ttfb, ss.bps))
            })
            .min_by(|a, b| {
                a.1.cmp(&b.1)
                    .then(a.2.partial_cmp(&b.2).unwrap_or(std::cmp::Ordering::Equal))
                    .then(b.3.partial_cmp(&a.3).unwrap_or(std::cmp::Ordering::Equal))
            })
            .map(|(s, ..)| s)
    }

    /// Reads `offset..end` directly from source `s`; `None` unless exactly those bytes came.
    pub(super) async fn direct_read(self: &Arc<Self>, s: SourceId, offset: u64, end: u64) -> Option<Vec<u8>> {
        let slot = self.source(s);
        let want = usize::try_from(end - offset).ok()?;
        let stall = self.cfg.stall_timeout;
        let started = Instant::now();
        if let Some(l) = &slot.limiter {
            l.started();
        }
        let got = async {
            let mut stream = tokio::time::timeout(stall, slot.src.get(offset, end - offset)).await.ok()?.ok()?;
            let mut buf: Vec<u8> = Vec::with_capacity(want);
            while buf.len() < want {
                let chunk = tokio::time::timeout(stall, stream.next()).await.ok()??.ok()?;
                if let Some(l) = &slot.limiter {
                    l.pace(chunk.len()).await;
                }
                buf.extend_from_slice(&chunk);
            }
            (buf.len() == want).then_some(buf)
        }
        .await;
        if let Some(l) = &slot.limiter {
            l.finished();
        }
        match &got {
            Some(_) => {
                self.stats.direct_reads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "{}: {} bytes at {offset} read directly from {} in {:.1} ms",
                    self.key,
                    want,
                    slot.src.name(),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            None => tracing::debug!("{}: direct read at {offset} from {} failed", self.key, slot.src.name()),
        }
        got
    }
}
