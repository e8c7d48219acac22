//! Readers first on a serving node: a response a client marks as background work (a swarm
//! node fetching its share to keep, [`PRIORITY_HEADER`]) sends its next step only while no
//! reader's response is moving.
//!
//! A node's upload link is shared by everyone it serves. Keeping is background work: a node
//! repairing copies after a loss would otherwise take most of the survivors' links from a
//! reader that opens a file meanwhile (each keeper keeps several requests streaming, the
//! reader has to share every link with them). Background responses therefore yield:
//!
//! - A foreground response counts as **active** from its first step until its last byte has
//!   reached the client (the connection's unacknowledged bytes, `TIOCOUTQ`, drained: a
//!   response handed to the kernel at once would otherwise leave background work the link
//!   while its bytes are still on their way); each step it sends, and each drop of the
//!   unacknowledged bytes, marks the moment of foreground progress.
//! - A background response waits before each step while a foreground one is active and has
//!   progressed within [`STALLED`] (a foreground response whose client stopped reading does
//!   not hold background work back), or while the last foreground progress is more recent
//!   than [`QUIET`] (the gap between one reader request and the next).
//! - What a background response has handed to the kernel when a reader arrives is sent
//!   before the reader's bytes (and before any small answer: a have-map, a 404 to a manifest
//!   look-up), since a shaped link queues all of a node's packets in one queue. So every
//!   connection's unsent queue is kept short ([`NOTSENT_LOWAT`]), and a connection serving
//!   a background response has a small send buffer ([`BACKGROUND_SNDBUF`]: by default the
//!   kernel lets a socket queue megabytes, most of a second of a 40 Mbit/s link), made large
//!   again ([`FOREGROUND_SNDBUF`]) when it serves a reader next ([`ConnQueue`]).
//! - At most [`BACKGROUND_STREAMS`] background responses are under way at once, each from
//!   its first byte until its bytes have reached the client ([`BackgroundTurn`]): three
//!   keepers with a few keys each would otherwise have dozens, each with its send buffer
//!   full (a node's small answers waited most of a second behind them).
//!
//! Two atomics, polled by waiting background responses every [`POLL`], and a semaphore for
//! the background turns. Time is tokio's (the tests pause it).

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
/// How often a foreground response's end looks at the bytes still on their way.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Unsent bytes a connection's socket holds at most before it stops taking more.
pub const NOTSENT_LOWAT: u32 = 128 << 10;
/// The send buffer of a connection serving background work (the kernel doubles it): a
/// background response has at most this much queued ahead of a reader's bytes.
pub const BACKGROUND_SNDBUF: u32 = 64 << 10;
/// The send buffer of such a connection once it serves a reader again (capped by the
/// kernel's `net.core.wmem_max`).
pub const FOREGROUND_SNDBUF: u32 = 4 << 20;
/// Background responses under way at once, per node.
pub const BACKGROUND_STREAMS: usize = 4;

/// What the node's foreground responses are doing.
#[derive(Debug)]
pub struct Foreground {
    epoch: Instant,
    active: AtomicUsize,
    /// Milliseconds since `epoch` of the last foreground progress, plus one (0: never).
    last_ms: AtomicU64,
    /// The background responses' turns.
    turns: Arc<tokio::sync::Semaphore>,
}

impl Default for Foreground {
    fn default() -> Foreground {
        Foreground {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            turns: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_STREAMS)),
        }
    }
}

/// A background response's turn: held from before its first byte until its connection's
/// bytes have reached the client (or stopped moving).
pub struct BackgroundTurn {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    queue: Arc<ConnQueue>,
}

impl Drop for BackgroundTurn {
    fn drop(&mut self) {
        let (Some(permit), Ok(rt)) = (self.permit.take(), tokio::runtime::Handle::try_current()) else { return };
        let queue = self.queue.clone();
        rt.spawn(async move {
            queue.drained(None).await;
            drop(permit);
        });
    }
}

/// A foreground response, active while it lives and then until its connection's bytes have
/// reached the client (see [`ConnQueue::drained`]).
pub struct Active {
    fg: Arc<Foreground>,
    queue: Option<Arc<ConnQueue>>,
}

impl Active {
    /// Marks a step sent.
    pub fn progress(&self) {
        self.fg.touch();
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let fg = self.fg.clone();
        match (self.queue.take(), tokio::runtime::Handle::try_current()) {
            (Some(q), Ok(rt)) => {
                rt.spawn(async move {
                    q.drained(Some(&fg)).await;
                    fg.end();
                });
            }
            _ => fg.end(),
        }
    }
}

impl Foreground {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A foreground response begins, on connection `queue`.
    pub fn begin(self: &Arc<Self>, queue: Option<Arc<ConnQueue>>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Active { fg: self.clone(), queue }
    }

    fn end(&self) {
        self.touch();
        self.active.fetch_sub(1, Ordering::Relaxed);
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

    /// Waits for a background response's turn on connection `queue` (see the module doc).
    pub async fn background_turn(&self, queue: Arc<ConnQueue>) -> BackgroundTurn {
        let permit = self.turns.clone().acquire_owned().await.ok();
        BackgroundTurn { permit, queue }
    }
}

/// Sets an integer socket option on `fd`; a kernel without the option keeps its default.
fn set_int(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int, value: u32) {
    let v: libc::c_int = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // The size of a c_int (4) fits any socklen_t.
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `fd` is an open socket descriptor (a `ConnQueue`'s own); the value is a c_int
    // of the size given.
    let _ = unsafe { libc::setsockopt(fd, level, name, (&v as *const libc::c_int).cast(), len) };
}

/// The send queue of one served connection, sized for what it serves (see the module doc).
/// It holds its own descriptor of the socket (a dup), so that a response's end may still look
/// at the bytes on their way after the connection let go of it.
pub struct ConnQueue {
    fd: Option<std::os::fd::OwnedFd>,
    /// Whether the send buffer is the small one now.
    small: std::sync::atomic::AtomicBool,
}

impl ConnQueue {
    /// The queue of `sock`, its unsent part kept short.
    pub fn new(sock: &tokio::net::TcpStream) -> ConnQueue {
        use std::os::fd::AsFd;
        // Without a descriptor of its own (none left) the queue is left as the kernel has it.
        let fd = sock.as_fd().try_clone_to_owned().ok();
        let q = ConnQueue { fd, small: std::sync::atomic::AtomicBool::new(false) };
        q.set(libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, NOTSENT_LOWAT);
        q
    }

    fn set(&self, level: libc::c_int, name: libc::c_int, value: u32) {
        use std::os::fd::AsRawFd;
        if let Some(fd) = &self.fd {
            set_int(fd.as_raw_fd(), level, name, value);
        }
    }

    /// Bytes written to the connection and not yet acknowledged by the client (`None`: the
    /// kernel does not say).
    fn outstanding(&self) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_ref()?.as_raw_fd();
        let mut n: libc::c_int = 0;
        // SAFETY: `fd` is this queue's own open descriptor of the socket; TIOCOUTQ writes
        // one c_int.
        let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
        (r == 0).then(|| u64::try_from(n).unwrap_or(0))
    }

    /// Waits until the connection's bytes have reached the client, or have stopped moving
    /// for [`STALLED`] (a client that stopped reading), marking foreground progress (of a
    /// reader's response) as they go.
    async fn drained(&self, fg: Option<&Foreground>) {
        let mut last = None;
        let mut moved = Instant::now();
        while let Some(n) = self.outstanding() {
            if n == 0 {
                return;
            }
            if last != Some(n) {
                last = Some(n);
                moved = Instant::now();
                if let Some(fg) = fg {
                    fg.touch();
                }
            } else if moved.elapsed() >= STALLED {
                return;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Before a response: a small send buffer for background work, a large one again for a
    /// reader after background work.
    pub fn serving(&self, background: bool) {
        if self.small.swap(background, Ordering::Relaxed) != background {
            self.set(libc::SOL_SOCKET, libc::SO_SNDBUF, if background { BACKGROUND_SNDBUF } else { FOREGROUND_SNDBUF });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn background_waits_for_moving_readers_only() {
        let fg = Arc::new(Foreground::default());
        assert!(!fg.busy(), "no reader yet");
        let a = fg.begin(None);
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

    #[tokio::test]
    async fn background_responses_take_turns() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        let q = Arc::new(ConnQueue::new(&served));
        let fg = Foreground::default();
        let mut turns = Vec::new();
        for _ in 0..BACKGROUND_STREAMS {
            turns.push(fg.background_turn(q.clone()).await);
        }
        let more = tokio::time::timeout(Duration::from_millis(50), fg.background_turn(q.clone())).await;
        assert!(more.is_err(), "a turn beyond the bound");
        // A turn ends once its connection's bytes are through (none here): the next one goes.
        drop(turns.pop());
        let next = tokio::time::timeout(Duration::from_secs(5), fg.background_turn(q.clone())).await;
        assert!(next.is_ok(), "the turn given back");
        drop(client);
    }
}
