//! Per-store limits of a spread remote: requests at once and bytes per second, for every key
//! read through the store by one process.
//!
//! In a mount, a spread remote's limits (`remote.NAME.annexfs-bwlimit`, `[remote.NAME]` in
//! `.annexfs.toml`) are applied to **each** store, as a web limit is to each web server: the
//! stores are separate accounts or disks, each with its own rate. (The special remote program
//! that git-annex runs reads no annexfs settings: its RETRIEVE and a repair have only the
//! default below.) Without a request limit, [`DEFAULT_READS`] reads at once. A piece read waits for a
//! request slot of its store, then for its bytes to fit under the store's rate (reserved
//! before the read: a piece is at most 1 MiB, so the pacing is even at the scale of a
//! piece), so a store's reads together stay under its limit.

use crate::annex::settings::Limits;
use std::time::Duration;

/// A little credit, so that a store's first pieces are not paced one by one.
const BURST: Duration = Duration::from_millis(50);
/// Reads at once on a store without a request limit of its own. The reader asks for the
/// pieces of several stripes at once (its read ahead): all on the wire together, each
/// store's bandwidth was split between them and the stripe a reader waits on came with the
/// last (230 ms to the first byte of a mount's read). Queued here instead, in the order they
/// were asked, the first stripe's pieces go first and two keep the store's link busy.
const DEFAULT_READS: u32 = 2;

/// The live limits of one store.
#[derive(Debug)]
pub struct StoreLimiter {
    pub limits: Limits,
    slots: tokio::sync::Semaphore,
    /// When the bytes reserved so far will have been paid for.
    paid_until: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// A read's place under its store's limits, held while the read runs.
pub struct Permit<'a>(#[allow(dead_code)] Option<tokio::sync::SemaphorePermit<'a>>);

impl StoreLimiter {
    pub fn new(limits: Limits) -> StoreLimiter {
        let reads = limits.maxconnections.unwrap_or(DEFAULT_READS).max(1);
        let slots = tokio::sync::Semaphore::new(reads as usize);
        StoreLimiter { limits, slots, paid_until: tokio::sync::Mutex::new(None) }
    }

    /// Waits for a request slot, then until `bytes` more fit under the rate.
    pub async fn admit(&self, bytes: u64) -> Permit<'_> {
        // (Never closed: the error cannot come.)
        let permit = self.slots.acquire().await.ok();
        if let Some(rate) = self.limits.bwlimit.filter(|&r| r > 0) {
            let start = {
                let mut paid = self.paid_until.lock().await;
                let now = tokio::time::Instant::now();
                let from = now.checked_sub(BURST).unwrap_or(now);
                let start = paid.map_or(from, |p| p.max(from));
                *paid = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
                start
            };
            tokio::time::sleep_until(start).await;
        }
        Permit(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_are_paced_and_slots_bounded() {
        let l = StoreLimiter::new(Limits { bwlimit: Some(10 << 20), maxconnections: Some(2) });
        let t0 = std::time::Instant::now();
        // Five pieces of 1 MiB at 10 MiB/s: the fifth starts about 0.4 s in (less the burst).
        for _ in 0..5 {
            drop(l.admit(1 << 20).await);
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(340), "{took:?}");
        // Two slots: a third read waits until one is given back.
        let a = l.admit(0).await;
        let _b = l.admit(0).await;
        assert!(tokio::time::timeout(Duration::from_millis(50), l.admit(0)).await.is_err());
        drop(a);
        assert!(tokio::time::timeout(Duration::from_secs(5), l.admit(0)).await.is_ok());
        // No limits: nothing waits.
        let free = StoreLimiter::new(Limits::default());
        let t1 = std::time::Instant::now();
        for _ in 0..100 {
            drop(free.admit(1 << 30).await);
        }
        assert!(t1.elapsed() < Duration::from_millis(200));
        // ... but at most DEFAULT_READS at once, the next in the order they came.
        let held: Vec<_> = futures_util::future::join_all((0..DEFAULT_READS).map(|_| free.admit(0))).await;
        assert!(tokio::time::timeout(Duration::from_millis(50), free.admit(0)).await.is_err());
        drop(held);
        assert!(tokio::time::timeout(Duration::from_secs(5), free.admit(0)).await.is_ok());
    }
}
