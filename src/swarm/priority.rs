//! Readers first on a serving node: a response a client marks as background work (a swarm
//! node fetching its share to keep, [`PRIORITY_HEADER`]) sends its next step only while no
//! reader's response is moving.
//!
//! A node's upload link is shared by everyone it serves. Keeping is background work: a node
//! repairing copies after a loss would otherwise take most of the survivors' links from a
//! reader that opens a file meanwhile (each keeper keeps several requests streaming, the
//! reader has to share every link with them). Background responses therefore yield:
//!
//! - A foreground response counts as **active** from its first step to its last; each step
//!   it sends marks the moment of foreground progress.
//! - A background response waits before each step while a foreground one is active and has
//!   progressed within [`STALLED`] (a foreground response whose client stopped reading does
//!   not hold background work back), or while the last foreground progress is more recent
//!   than [`QUIET`] (the gap between one reader request and the next).
//! - The socket's unsent queue is kept short ([`NOTSENT_LOWAT`], set on every accepted
//!   connection): what a background response already handed to the kernel when a reader
//!   arrives is what delays the reader.
//!
//! Lock-free: two atomics, polled by waiting background responses every [`POLL`]. Time is
//! tokio's (the tests pause it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The request header that marks a request as background work, and its one value.
pub const PRIORITY_HEADER: &str = "x-annexfs-priority";
pub const BACKGROUND: &str = "background";
/// Background waits this long after the last foreground progress.
pub const QUIET: Duration = Duration::from_millis(100);
/// A foreground response that has not progressed for this long no longer holds background
/// work back.
pub const STALLED: Duration = Duration::from_millis(500);
/// How often a waiting background response looks again.
const POLL: Duration = Duration::from_millis(10);
/// Unsent bytes a connection's socket holds at most before it stops taking more.
pub const NOTSENT_LOWAT: u32 = 128 << 10;

/// What the node's foreground responses are doing.
#[derive(Debug)]
pub struct Foreground {
    epoch: Instant,
    active: AtomicUsize,
    /// Milliseconds since `epoch` of the last foreground progress, plus one (0: never).
    last_ms: AtomicU64,
}

impl Default for Foreground {
    fn default() -> Foreground {
        Foreground { epoch: Instant::now(), active: AtomicUsize::new(0), last_ms: AtomicU64::new(0) }
    }
}

/// A foreground response, active while it lives.
pub struct Active(Arc<Foreground>);

impl Active {
    /// Marks a step sent.
    pub fn progress(&self) {
        self.0.touch();
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Foreground {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A foreground response begins.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Active(self.clone())
    }

    /// Whether background work waits now.
    pub fn busy(&self) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let since = Duration::from_millis(self.now_ms().saturating_sub(last));
        since < QUIET || (self.active.load(Ordering::Relaxed) > 0 && since < STALLED)
    }

    /// Waits until background work may send a step.
    pub async fn wait_turn(&self) {
        while self.busy() {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Keeps `sock`'s unsent queue short (see the module doc); a kernel without the option
/// keeps its default.
pub fn short_send_queue(sock: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = libc::c_int::try_from(NOTSENT_LOWAT).unwrap_or(libc::c_int::MAX);
    // The size of a c_int (4) fits any socklen_t.
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: a valid socket descriptor, owned by `sock` for the call; the value is a c_int
    // of the size given.
    let _ = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            len,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn background_waits_for_moving_readers_only() {
        let fg = Arc::new(Foreground::default());
        assert!(!fg.busy(), "no reader yet");
        let a = fg.begin();
        assert!(fg.busy());
        // A reader that keeps moving holds background work back.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(200)).await;
            a.progress();
            assert!(fg.busy());
        }
        // One that stopped moving does not, for ever.
        tokio::time::advance(STALLED).await;
        assert!(!fg.busy());
        // Between a reader's requests: quiet for a moment, then free.
        a.progress();
        drop(a);
        assert!(fg.busy());
        let t = tokio::time::Instant::now();
        fg.wait_turn().await;
        let waited = t.elapsed();
        assert!(waited >= QUIET && waited < QUIET + 2 * POLL, "{waited:?}");
    }
}
