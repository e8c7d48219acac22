//! The sessions a host keeps, and the choice of where a range's bytes come from.
//!
//! A GET streams the content from its offset to the end and cannot be stopped, while opening
//! a session costs a process on the server and a round trip or two. So a range is served, in
//! this order of preference, by:
//!
//! 1. a **parked** session of the same key, stopped at or a little before the range (its
//!    previous range ended there): it goes on, the bytes before the range thrown away;
//! 2. a **running** transfer of the same key that will stop at or a little before the range:
//!    the range waits for it and goes on from there (a reader going forward with two
//!    requests in flight is then served by one GET instead of one per request);
//! 3. a new GET, on an **idle** session of the repository or a new one.
//!
//! "A little" is what reaching the range that way costs against opening a new session: the
//! bytes to read before it (the waiting transfer's own range included), at the rate sessions
//! to this host read, must take less than opening a session takes (both measured), and the
//! bytes thrown away must be at most [`MAX_SKIP`] (they cost the server and the link).
//!
//! Generic over the session type, so that the choice is tested without ssh.

use super::host::RepoKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Never more than this is read and thrown away to reach a range.
pub const MAX_SKIP: u64 = 4 << 20;
/// What a session is assumed to read per second until measured.
const DEFAULT_RATE: f64 = 8e6;
/// What opening a session is assumed to take until measured.
const DEFAULT_STARTUP: f64 = 0.5;
/// Weight of a new measurement.
const EWMA: f64 = 0.3;

/// A session with nothing running, for the next GET of its repository.
pub struct Idle<S> {
    pub repo: RepoKey,
    pub session: S,
    pub since: Instant,
}

/// A session whose range ended before its DATA did, kept where it stopped.
pub struct Parked<S> {
    pub repo: RepoKey,
    pub key: Arc<[u8]>,
    /// The offset in the key of the next DATA byte.
    pub pos: u64,
    /// DATA bytes still to come.
    pub left: u64,
    pub session: S,
    pub since: Instant,
}

/// A transfer under way, which a range starting after it may wait for.
struct Running<S> {
    id: u64,
    repo: RepoKey,
    key: Arc<[u8]>,
    /// Where its range ends, and where it is.
    end: u64,
    pos: Arc<AtomicU64>,
    /// The range waiting to go on from it.
    next: Option<oneshot::Sender<Parked<S>>>,
}

/// Where a range's bytes will come from (before a new GET).
pub enum Continuation<S> {
    /// A parked session: skip to the range and go on.
    Parked(Parked<S>),
    /// A running transfer, handed over when its range is done.
    Wait(oneshot::Receiver<Parked<S>>),
    /// Neither: a new GET.
    Get,
}

/// A transfer's place in [`Pool`]: its id, and its position to update as bytes arrive.
pub struct RunningTicket {
    pub id: u64,
    pub pos: Arc<AtomicU64>,
}

pub struct Pool<S> {
    idle: Vec<Idle<S>>,
    parked: Vec<Parked<S>>,
    running: Vec<Running<S>>,
    next_id: u64,
    /// Bytes per second one session reads (0 until measured).
    rate: f64,
    /// Seconds opening a session takes (0 until measured).
    startup: f64,
}

impl<S> Default for Pool<S> {
    fn default() -> Self {
        Pool { idle: Vec::new(), parked: Vec::new(), running: Vec::new(), next_id: 0, rate: 0.0, startup: 0.0 }
    }
}

impl<S> Pool<S> {
    /// Whether reading `ahead` bytes to reach a range, `skip` of them thrown away, costs less
    /// than opening a session.
    fn worth(&self, ahead: u64, skip: u64) -> bool {
        let rate = if self.rate > 0.0 { self.rate } else { DEFAULT_RATE };
        let startup = if self.startup > 0.0 { self.startup } else { DEFAULT_STARTUP };
        skip <= MAX_SKIP && ahead as f64 / rate <= startup
    }

    /// Where the range of `key` at `offset` should come from (see the module doc).
    pub fn continuation(&mut self, repo: &RepoKey, key: &[u8], offset: u64) -> Continuation<S> {
        let best = self
            .parked
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                &p.repo == repo && &*p.key == key && p.pos <= offset && self.worth(offset - p.pos, offset - p.pos)
            })
            .max_by_key(|(_, p)| p.pos)
            .map(|(i, _)| i);
        if let Some(i) = best {
            return Continuation::Parked(self.parked.remove(i));
        }
        let rate_ok = |r: &Running<S>| {
            let pos = r.pos.load(Ordering::Relaxed);
            r.end <= offset && pos <= offset && self.worth(offset - pos, offset - r.end)
        };
        let best = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, r)| &r.repo == repo && &*r.key == key && r.next.as_ref().is_none_or(|n| n.is_closed()))
            .filter(|(_, r)| rate_ok(r))
            .max_by_key(|(_, r)| r.end)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let (tx, rx) = oneshot::channel();
            self.running[i].next = Some(tx);
            return Continuation::Wait(rx);
        }
        Continuation::Get
    }

    /// A transfer of `key` starting at `pos`, to stop at `end`.
    pub fn start_running(&mut self, repo: RepoKey, key: Arc<[u8]>, pos: u64, end: u64) -> RunningTicket {
        self.next_id += 1;
        let pos = Arc::new(AtomicU64::new(pos));
        self.running.push(Running { id: self.next_id, repo, key, end, pos: pos.clone(), next: None });
        RunningTicket { id: self.next_id, pos }
    }

    /// The transfer `id` stopped where its range ended: its session goes to the range waiting
    /// for it, or is returned, to be parked.
    pub fn end_running(&mut self, id: u64, parked: Parked<S>) -> Option<Parked<S>> {
        let Some(i) = self.running.iter().position(|r| r.id == id) else { return Some(parked) };
        match self.running.swap_remove(i).next {
            Some(tx) => tx.send(parked).err(),
            None => Some(parked),
        }
    }

    /// The transfer `id` is over without a session to hand on (whole, failed or dropped); a
    /// range waiting for it learns so and makes its own GET.
    pub fn drop_running(&mut self, id: u64) {
        self.running.retain(|r| r.id != id);
    }

    pub fn push_idle(&mut self, i: Idle<S>) {
        self.idle.push(i);
    }

    pub fn push_parked(&mut self, p: Parked<S>) {
        self.parked.push(p);
    }

    /// An idle session of `repo` that `alive` says still runs (the most recent first).
    pub fn take_idle(&mut self, repo: &RepoKey, alive: &mut dyn FnMut(&mut S) -> bool) -> Option<S> {
        let i = self.idle.iter_mut().rposition(|i| &i.repo == repo && alive(&mut i.session))?;
        Some(self.idle.remove(i).session)
    }

    /// Where the parked sessions of `key` stand: a range starting there needs no new GET.
    pub fn parked_at(&self, repo: &RepoKey, key: &[u8]) -> Vec<u64> {
        self.parked.iter().filter(|p| &p.repo == repo && &*p.key == key).map(|p| p.pos).collect()
    }

    /// Idle sessions of `repo`.
    pub fn idle_count(&self, repo: &RepoKey) -> usize {
        self.idle.iter().filter(|i| &i.repo == repo).count()
    }

    /// Sessions kept: (idle, parked), and transfers running.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.idle.len(), self.parked.len(), self.running.len())
    }

    /// Drops dead idle sessions, and those kept longer than `idle_for`, except the most recent
    /// `spares.0` of each repository, kept up to `spares.1`; returns the parked ones kept
    /// longer than `park_for` (for the caller to finish or drop).
    pub fn expire(
        &mut self,
        idle_for: Duration,
        spares: (usize, Duration),
        park_for: Duration,
        alive: &mut dyn FnMut(&mut S) -> bool,
    ) -> Vec<Parked<S>> {
        self.idle.retain_mut(|i| i.since.elapsed() < spares.1 && alive(&mut i.session));
        // Counted from the most recent, per repository.
        let mut counts: std::collections::HashMap<RepoKey, usize> = Default::default();
        let mut keep: Vec<bool> = (self.idle.iter().rev())
            .map(|i| {
                let n = counts.entry(i.repo.clone()).or_default();
                *n += 1;
                *n <= spares.0 || i.since.elapsed() < idle_for
            })
            .collect();
        keep.reverse();
        let mut keep = keep.into_iter();
        self.idle.retain(|_| keep.next().unwrap_or(true));
        let (expired, kept) = std::mem::take(&mut self.parked).into_iter().partition(|p| p.since.elapsed() >= park_for);
        self.parked = kept;
        expired
    }

    /// Whether any session is kept (idle or parked).
    pub fn keeps_any(&self) -> bool {
        !self.idle.is_empty() || !self.parked.is_empty()
    }

    /// Takes the oldest kept session, parked ones first (to make room for a new one).
    pub fn evict_one(&mut self) -> Option<S> {
        if !self.parked.is_empty() {
            return Some(self.parked.remove(0).session);
        }
        (!self.idle.is_empty()).then(|| self.idle.remove(0).session)
    }

    /// A session read `bytes` in `secs`.
    pub fn measured_rate(&mut self, bytes: u64, secs: f64) {
        if secs > 0.01 && bytes > 0 {
            let r = bytes as f64 / secs;
            self.rate = if self.rate == 0.0 { r } else { (1.0 - EWMA) * self.rate + EWMA * r };
        }
    }

    /// Opening a session took `secs`.
    pub fn measured_startup(&mut self, secs: f64) {
        self.startup = if self.startup == 0.0 { secs } else { (1.0 - EWMA) * self.startup + EWMA * secs };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoKey {
        RepoKey { path: "/r".into(), remote_uuid: "u".into(), client_uuid: "c".into(), shell: "s".into() }
    }

    fn parked(key: &[u8], pos: u64, session: u32) -> Parked<u32> {
        Parked { repo: repo(), key: key.into(), pos, left: 1000, session, since: Instant::now() }
    }

    #[test]
    fn a_parked_session_goes_on_when_reaching_the_range_is_cheap() {
        let mut p: Pool<u32> = Pool::default();
        p.push_parked(parked(b"k", 1_000_000, 1));
        p.push_parked(parked(b"k", 3_000_000, 2));
        p.push_parked(parked(b"other", 3_000_000, 3));
        // Closest from before: the one at 3 MB.
        assert!(matches!(p.continuation(&repo(), b"k", 3_500_000), Continuation::Parked(x) if x.session == 2));
        // Nothing of the key before 500 kB.
        assert!(matches!(p.continuation(&repo(), b"k", 500_000), Continuation::Get));
        // 8 MB/s and 0.5 s to open a session (the defaults): 4 MB ahead is worth it, 5 MB not.
        assert!(matches!(p.continuation(&repo(), b"k", 5_000_001), Continuation::Get));
        assert!(matches!(p.continuation(&repo(), b"k", 5_000_000), Continuation::Parked(x) if x.session == 1));
        // Measured: fast sessions, slow to open: further ahead is worth it, but never more
        // than MAX_SKIP thrown away.
        p.measured_rate(400_000_000, 1.0);
        p.measured_startup(0.3);
        p.push_parked(parked(b"k", 0, 4));
        assert!(matches!(p.continuation(&repo(), b"k", MAX_SKIP + 1), Continuation::Get));
        assert!(matches!(p.continuation(&repo(), b"k", MAX_SKIP), Continuation::Parked(x) if x.session == 4));
    }

    #[test]
    fn a_range_waits_for_the_transfer_ending_where_it_starts() {
        let mut p: Pool<u32> = Pool::default();
        let a = p.start_running(repo(), b"k".as_slice().into(), 0, 1_000_000);
        let Continuation::Wait(mut rx) = p.continuation(&repo(), b"k", 1_000_000) else { panic!("waits") };
        // One range waits per transfer.
        assert!(matches!(p.continuation(&repo(), b"k", 1_000_000), Continuation::Get));
        a.pos.store(1_000_000, Ordering::Relaxed);
        assert!(p.end_running(a.id, parked(b"k", 1_000_000, 7)).is_none(), "handed over");
        assert_eq!(rx.try_recv().unwrap().session, 7);
        // Gone waiting: the session comes back, to be parked.
        let b = p.start_running(repo(), b"k".as_slice().into(), 0, 2_000_000);
        drop(p.continuation(&repo(), b"k", 2_000_000));
        assert!(p.end_running(b.id, parked(b"k", 2_000_000, 8)).is_some());
        // A transfer dropped: the waiting range learns it.
        let c = p.start_running(repo(), b"k".as_slice().into(), 0, 3_000_000);
        let Continuation::Wait(mut rx) = p.continuation(&repo(), b"k", 3_000_000) else { panic!("waits") };
        p.drop_running(c.id);
        assert!(rx.try_recv().is_err());
        // A transfer ending after the range, or too far before it, is no help.
        let _d = p.start_running(repo(), b"k".as_slice().into(), 0, 3_000_000);
        assert!(matches!(p.continuation(&repo(), b"k", 2_999_999), Continuation::Get));
        assert!(matches!(p.continuation(&repo(), b"k", 9_000_000), Continuation::Get));
        // Nor one whose own range takes longer than opening a session (4 MB at 8 MB/s is
        // 0.5 s: just worth it).
        let _e = p.start_running(repo(), b"k".as_slice().into(), 10_000_000, 14_000_001);
        assert!(matches!(p.continuation(&repo(), b"k", 14_000_001), Continuation::Get));
        let _f = p.start_running(repo(), b"k".as_slice().into(), 20_000_000, 24_000_000);
        assert!(matches!(p.continuation(&repo(), b"k", 24_000_000), Continuation::Wait(_)));
    }

    #[test]
    fn idle_sessions_are_per_repository_and_expire() {
        let mut p: Pool<u32> = Pool::default();
        let other = RepoKey { path: "/elsewhere".into(), ..repo() };
        p.push_idle(Idle { repo: repo(), session: 1, since: Instant::now() });
        p.push_idle(Idle { repo: other.clone(), session: 2, since: Instant::now() });
        assert_eq!(p.take_idle(&other, &mut |_| true), Some(2));
        assert_eq!(p.take_idle(&other, &mut |_| true), None);
        assert_eq!(p.take_idle(&repo(), &mut |_| false), None, "a dead session is not handed out");
        p.push_parked(parked(b"k", 0, 3));
        assert!(p.keeps_any());
        let expired = p.expire(Duration::ZERO, (1, Duration::ZERO), Duration::ZERO, &mut |_| true);
        assert_eq!(expired.len(), 1);
        assert!(!p.keeps_any());
        // Spares: the most recent of each repository outlive the short idle time.
        for n in 10..13 {
            p.push_idle(Idle { repo: repo(), session: n, since: Instant::now() });
        }
        p.push_idle(Idle { repo: other.clone(), session: 20, since: Instant::now() });
        let long = Duration::from_secs(600);
        p.expire(Duration::ZERO, (2, long), Duration::ZERO, &mut |_| true);
        assert_eq!(p.counts().0, 3, "two spares of one repository, one of the other");
        assert_eq!(p.take_idle(&repo(), &mut |_| true), Some(12));
        assert_eq!(p.take_idle(&repo(), &mut |_| true), Some(11));
        assert_eq!(p.take_idle(&other, &mut |_| true), Some(20));
        p.push_idle(Idle { repo: repo(), session: 30, since: Instant::now() });
        p.expire(Duration::ZERO, (2, Duration::ZERO), Duration::ZERO, &mut |_| true);
        assert!(!p.keeps_any(), "spares too go after the long idle time");
        p.push_idle(Idle { repo: repo(), session: 4, since: Instant::now() });
        p.push_parked(parked(b"k", 0, 5));
        assert_eq!(p.evict_one(), Some(5), "parked sessions make room first");
        assert_eq!(p.evict_one(), Some(4));
        assert_eq!(p.evict_one(), None);
    }
}
