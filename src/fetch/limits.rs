//! Per-source limits shared by every key of a fetcher: requests at once, and bytes per second
//! (paced as bytes arrive, so a source's connections together stay under the limit). Every
//! source identity has a [`Limiter`], limited or not: it also counts the identity's requests
//! in flight over all keys (a server crowded by many readers, `request.rs`).
//!
//! A source's limits come from [`FetchConfig::limits`](super::FetchConfig), asked once per
//! source identity; remotes are looked up by name (a web server's identity `web <origin>` by
//! `web`: each server gets the web limit).

use crate::annex::settings::Limits;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Resolves a source identity to its limits.
#[derive(Clone)]
pub struct LimitsFn(pub Arc<dyn Fn(&str) -> Limits + Send + Sync>);

impl std::fmt::Debug for LimitsFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitsFn")
    }
}

/// The remote name an identity is limited by.
pub fn remote_of(identity: &str) -> &str {
    identity.split(' ').next().unwrap_or(identity)
}

/// The live limiter of one source identity.
#[derive(Debug)]
pub struct Limiter {
    pub limits: Limits,
    inflight: AtomicU32,
    /// When the bytes let through so far will have been paid for.
    paid_until: tokio::sync::Mutex<tokio::time::Instant>,
}

/// A request counted by a [`Limiter`] while it lives (see [`Limiter::start`]).
#[derive(Debug)]
pub struct Started<'a>(&'a Limiter);

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// A little credit, so that short bursts are not paced byte by byte.
const BURST: Duration = Duration::from_millis(50);

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            inflight: AtomicU32::new(0),
            paid_until: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Whether another request may start.
    pub fn may_start(&self) -> bool {
        self.limits.maxconnections.is_none_or(|m| self.inflight.load(Ordering::Relaxed) < m.max(1))
    }

    /// How many more requests may start now (`None`: no limit).
    pub fn room(&self) -> Option<u32> {
        let m = self.limits.maxconnections?.max(1);
        Some(m.saturating_sub(self.inflight.load(Ordering::Relaxed)))
    }

    /// Requests in flight now, every key's together.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn started(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finished(&self) {
        let _ = self.inflight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// Counts a request that may be dropped half-way (a direct read losing its race): it is
    /// finished when the returned guard goes, however it goes.
    pub fn start(&self) -> Started<'_> {
        self.started();
        Started(self)
    }

    /// Waits until `n` more bytes fit under the bandwidth limit.
    pub async fn pace(&self, n: usize) {
        let Some(rate) = self.limits.bwlimit.filter(|&r| r > 0) else { return };
        let wait = {
            let mut paid = self.paid_until.lock().await;
            let now = tokio::time::Instant::now();
            let start = (*paid).max(now.checked_sub(BURST).unwrap_or(now));
            *paid = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *paid
        };
        tokio::time::sleep_until(wait).await;
    }
}
