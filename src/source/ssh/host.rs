//! One ssh host as reached with one set of options: its master connection (when
//! `annex.sshcaching` is on), the sessions open to it (at most [`MAX_SESSIONS`]; those kept
//! for reuse are in its [`Pool`]), and what recently went wrong (so that a host refusing us
//! fails every range at once instead of each trying again).

use super::command::{StderrTail, command, p2pstdio_command};
use super::error::{SshError, classify};
use super::pool::{Continuation, Idle, Parked, Pool, RunningTicket};
use super::session::Session;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sessions open at once to one host (sshd allows 10 per connection by default; one is left
/// for setting up the master).
pub const MAX_SESSIONS: usize = 8;
/// An idle session is closed after this long, unless it is one of the [`SPARES`].
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Idle sessions kept ready per repository, opened when the mount starts and again as
/// ranges are read: opening one (a process on the server, git-annex-shell starting) takes a
/// good part of a second, longer than a range. They are kept up to [`SPARE_IDLE_FOR`], so
/// that a read minutes after the mount or the last read starts at once too; each is an idle
/// `git-annex-shell p2pstdio` process on the server meanwhile. (Six, tried: the sessions
/// killed and opened again went past sshd's 10 per connection, and ssh opened a second one.)
const SPARES: usize = 2;
/// How long the [`SPARES`] are kept unused.
const SPARE_IDLE_FOR: Duration = Duration::from_secs(600);
/// A parked session nobody continued is given up after this long.
const PARK_FOR: Duration = Duration::from_secs(2);
/// How often kept sessions are looked at.
const REAP_EVERY: Duration = Duration::from_millis(500);
/// A parked session given up with at most this much DATA left is read to its end and kept.
const DRAIN_MAX: u64 = 1 << 20;
/// Setting up a master connection takes at most this.
const MASTER_TIMEOUT: Duration = Duration::from_secs(20);
/// A failure that asking again cannot mend (a refused key, an unknown host key) is answered
/// from memory for this long, then ssh is tried again.
const REMEMBER_PERMANENT: Duration = Duration::from_secs(30);
/// Other failures (a refused connection) are answered from memory this long.
const REMEMBER_TRANSIENT: Duration = Duration::from_secs(2);

/// A repository on the host, as git-annex-shell is asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoKey {
    pub path: String,
    pub remote_uuid: String,
    pub client_uuid: String,
    pub shell: String,
}

impl RepoKey {
    fn command(&self) -> String {
        p2pstdio_command(&self.shell, &self.path, &self.client_uuid, &self.remote_uuid)
    }
}

#[derive(Default)]
struct Master {
    /// The master answered once (its socket may have gone since: it is checked).
    up: bool,
    /// The options turned connection sharing off: no socket ever appears.
    no_mux: bool,
}

pub struct Host {
    /// `user@host port N`, for messages.
    pub dest: String,
    /// ssh's arguments up to the destination.
    args: Vec<String>,
    /// The master's control socket (connection sharing on).
    control: Option<PathBuf>,
    master: Arc<tokio::sync::Mutex<Master>>,
    /// Recent failures: the host's (`None`) and each repository's.
    failures: Mutex<HashMap<Option<RepoKey>, (Instant, SshError)>>,
    slots: Arc<Semaphore>,
    pool: Mutex<Pool<Session>>,
    reaping: AtomicBool,
    /// Spare sessions being opened, per repository.
    warming: Mutex<HashMap<RepoKey, usize>>,
}

/// A host as `annexfs status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HostReport {
    /// `user@host port N`.
    pub host: String,
    /// Its master connection is up (connection sharing).
    pub master: bool,
    /// Sessions open (`git-annex-shell p2pstdio` processes on the host).
    pub sessions: usize,
    /// Of those: ready for the next range, stopped in the middle of a key, transferring.
    pub idle: usize,
    pub parked: usize,
    pub running: usize,
    /// What went wrong last, while it is remembered.
    pub error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Host {
    pub fn new(dest: String, args: Vec<String>, control: Option<PathBuf>) -> Host {
        Host {
            dest,
            args,
            control,
            master: Default::default(),
            failures: Default::default(),
            slots: Arc::new(Semaphore::new(MAX_SESSIONS)),
            pool: Default::default(),
            reaping: AtomicBool::new(false),
            warming: Default::default(),
        }
    }

    /// A session to `repo`: an idle one, else a new one (the master set up first). `remote`
    /// names who asks, for the log. Returns whether the session was idle before (it may have
    /// been closed by the server meanwhile).
    pub async fn session(self: &Arc<Self>, repo: &RepoKey, remote: &str) -> Result<(Session, bool), SshError> {
        if let Some(s) = lock(&self.pool).take_idle(repo, &mut Session::alive) {
            return Ok((s, true));
        }
        if let Some(e) = self.remembered(None).or_else(|| self.remembered(Some(repo))) {
            return Err(e);
        }
        let slot = self.slot().await;
        self.open_new(repo, remote, slot).await.map(|s| (s, false))
    }

    /// A new session to `repo` in the place `slot` (the master set up first).
    async fn open_new(
        self: &Arc<Self>,
        repo: &RepoKey,
        remote: &str,
        slot: OwnedSemaphorePermit,
    ) -> Result<Session, SshError> {
        self.ready(remote).await?;
        let started = Instant::now();
        match Session::open(&self.args, &repo.command(), &repo.remote_uuid, &self.dest, slot).await {
            Ok(s) => {
                lock(&self.pool).measured_startup(started.elapsed().as_secs_f64());
                self.forget(None, remote);
                self.forget(Some(repo), remote);
                Ok(s)
            }
            Err(e) => {
                self.remember(if e.is_host_wide() { None } else { Some(repo) }, &e, remote);
                Err(e)
            }
        }
    }

    /// Keeps up to [`SPARES`] idle sessions of `repo` ready, opened in the background,
    /// so that the next ranges start at once (called when the mount starts and as ranges are
    /// asked for). A spare only takes a free place, never one a running range or a parked
    /// session holds, and one place is left free.
    pub fn keep_spares(self: &Arc<Self>, repo: &RepoKey, remote: &str) {
        if self.remembered(None).is_some() || self.remembered(Some(repo)).is_some() {
            return;
        }
        let idle = lock(&self.pool).idle_count(repo);
        let need = {
            let mut warming = lock(&self.warming);
            let n = warming.entry(repo.clone()).or_default();
            let need = SPARES.saturating_sub(idle + *n).min(self.slots.available_permits().saturating_sub(1));
            *n += need;
            need
        };
        for _ in 0..need {
            let (host, repo, remote) = (self.clone(), repo.clone(), remote.to_string());
            tokio::spawn(async move {
                let opened = match host.slots.clone().try_acquire_owned() {
                    Ok(slot) => host.open_new(&repo, &remote, slot).await.ok(),
                    Err(_) => None,
                };
                if let Some(n) = lock(&host.warming).get_mut(&repo) {
                    *n = n.saturating_sub(1);
                }
                if let Some(s) = opened {
                    host.keep_idle(repo, s);
                }
            });
        }
    }

    /// Where the range of `key` at `offset` should come from, before a new GET (see
    /// [`super::pool`]).
    pub fn continuation(&self, repo: &RepoKey, key: &[u8], offset: u64) -> Continuation<Session> {
        lock(&self.pool).continuation(repo, key, offset)
    }

    /// Where the parked sessions of `key` stand (see [`Pool::parked_at`]).
    pub fn parked_at(&self, repo: &RepoKey, key: &[u8]) -> Vec<u64> {
        lock(&self.pool).parked_at(repo, key)
    }

    /// A transfer of `key` from `pos` to `end` starts.
    pub fn start_running(&self, repo: RepoKey, key: Arc<[u8]>, pos: u64, end: u64) -> RunningTicket {
        lock(&self.pool).start_running(repo, key, pos, end)
    }

    /// A transfer stopped where its range ended: its session goes to the range waiting to
    /// go on from there, else is parked.
    pub fn end_running(self: &Arc<Self>, id: u64, parked: Parked<Session>) {
        let left = lock(&self.pool).end_running(id, parked);
        if let Some(p) = left {
            self.park(p);
        }
    }

    /// A transfer is over, its session finished or killed.
    pub fn drop_running(&self, id: u64) {
        lock(&self.pool).drop_running(id);
    }

    /// What the host has now, for `annexfs status`.
    pub fn report(&self) -> HostReport {
        let (idle, parked, running) = lock(&self.pool).counts();
        let master = self.control.is_some() && self.master.try_lock().is_ok_and(|m| m.up && !m.no_mux);
        HostReport {
            host: self.dest.clone(),
            master,
            sessions: MAX_SESSIONS - self.slots.available_permits(),
            idle,
            parked,
            running,
            error: self.remembered(None).map(|e| e.to_string()),
        }
    }

    /// A session read `bytes` in `secs`.
    pub fn measured_rate(&self, bytes: u64, secs: f64) {
        lock(&self.pool).measured_rate(bytes, secs);
    }

    /// Keeps a session that finished its GET cleanly, for the next range of `repo`.
    pub fn keep_idle(self: &Arc<Self>, repo: RepoKey, mut session: Session) {
        if session.alive() {
            lock(&self.pool).push_idle(Idle { repo, session, since: Instant::now() });
            self.reap_later();
        }
    }

    /// Keeps a session in the middle of its DATA, for a range that goes on from there.
    fn park(self: &Arc<Self>, mut p: Parked<Session>) {
        if p.session.alive() {
            p.since = Instant::now();
            lock(&self.pool).push_parked(p);
            self.reap_later();
        }
    }

    /// Closes what was kept too long: idle sessions, and parked ones (those with little left
    /// are read to the end and kept idle). Returns whether anything is still kept.
    fn reap(self: &Arc<Self>) -> bool {
        let (expired, kept) = {
            let mut pool = lock(&self.pool);
            let expired = pool.expire(IDLE_FOR, (SPARES, SPARE_IDLE_FOR), PARK_FOR, &mut Session::alive);
            (expired, pool.keeps_any())
        };
        for p in expired {
            self.finish_parked(p);
        }
        kept
    }

    /// A parked session nobody continued: read to the end and kept idle when little is left,
    /// else killed (dropped).
    fn finish_parked(self: &Arc<Self>, mut p: Parked<Session>) {
        if p.left > DRAIN_MAX {
            return;
        }
        let host = self.clone();
        tokio::spawn(async move {
            if p.session.skip(p.left).await.is_ok() && p.session.finish().await == Ok(true) {
                host.keep_idle(p.repo, p.session);
            }
        });
    }

    fn reap_later(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::SeqCst);
            return;
        };
        let host = self.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                if host.reap() {
                    continue;
                }
                host.reaping.store(false, Ordering::SeqCst);
                // A session kept since the reap saw `reaping` still set: go on for it.
                let kept = lock(&host.pool).keeps_any();
                if !kept || host.reaping.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }

    /// A place for one more session: a free one, else one taken from a parked session, else
    /// from an idle one, else the first to come free.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return p;
            }
            let evicted = lock(&self.pool).evict_one();
            match evicted {
                // Dropping a session kills it and frees its place.
                Some(s) => drop(s),
                None => break,
            }
        }
        self.slots.clone().acquire_owned().await.unwrap_or_else(|_| unreachable!("the semaphore is never closed"))
    }

    /// Makes sure the master connection is up (connection sharing on): once per host at a
    /// time, in a task of its own so that a request given up meanwhile does not cut it short.
    pub(super) async fn ready(self: &Arc<Self>, remote: &str) -> Result<(), SshError> {
        let Some(socket) = self.control.clone() else { return Ok(()) };
        let host = self.clone();
        let remote = remote.to_string();
        let task = tokio::spawn(async move {
            let mut m = host.master.clone().lock_owned().await;
            if m.no_mux || m.up && socket.exists() {
                return Ok(());
            }
            // Another request's setup may have failed while this one waited.
            if let Some(e) = host.remembered(None) {
                return Err(e);
            }
            match host.start_master().await {
                Ok(()) => {
                    m.up = true;
                    if !socket.exists() {
                        tracing::debug!(
                            "ssh {}: no control socket after connecting: sessions connect on their own",
                            host.dest
                        );
                        m.no_mux = true;
                    }
                    host.forget(None, &remote);
                    Ok(())
                }
                Err(e) => {
                    host.remember(None, &e, &remote);
                    Err(e)
                }
            }
        });
        task.await.unwrap_or_else(|e| Err(SshError::Spawn(format!("the ssh setup task failed: {e}"))))
    }

    /// `ssh … true` with connection sharing on, as git-annex does: the first ssh becomes the
    /// master and stays in the background for the sessions after it.
    async fn start_master(&self) -> Result<(), SshError> {
        let mut args = self.args.clone();
        args.push("true".into());
        let mut child = command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SshError::Spawn(e.to_string()))?;
        let stderr = StderrTail::capture(child.stderr.take());
        let status = match tokio::time::timeout(MASTER_TIMEOUT, child.wait()).await {
            Err(_) => {
                let _ = child.kill().await;
                return Err(SshError::Timeout { dest: self.dest.clone(), secs: MASTER_TIMEOUT.as_secs() });
            }
            Ok(Err(e)) => return Err(SshError::Spawn(e.to_string())),
            Ok(Ok(s)) => s,
        };
        if status.success() {
            tracing::debug!("ssh {}: master connection up", self.dest);
            return Ok(());
        }
        let text = stderr.text(Duration::from_millis(500)).await;
        Err(classify(&self.dest, status.code(), &text))
    }

    /// A failure remembered for the host (`None`) or a repository, still fresh.
    fn remembered(&self, repo: Option<&RepoKey>) -> Option<SshError> {
        let f = lock(&self.failures);
        let (at, e) = f.get(&repo.cloned())?;
        let keep = if e.is_permanent() { REMEMBER_PERMANENT } else { REMEMBER_TRANSIENT };
        (at.elapsed() < keep).then(|| e.clone())
    }

    /// Remembers a failure; the first of a run is logged (naming the remote and ssh's words).
    fn remember(&self, repo: Option<&RepoKey>, e: &SshError, remote: &str) {
        let mut f = lock(&self.failures);
        let new = f.get(&repo.cloned()).is_none_or(|(_, old)| old != e);
        if new {
            tracing::warn!("remote {remote}: {e}");
        }
        f.insert(repo.cloned(), (Instant::now(), e.clone()));
    }

    fn forget(&self, repo: Option<&RepoKey>, remote: &str) {
        if lock(&self.failures).remove(&repo.cloned()).is_some() {
            tracing::info!("remote {remote}: ssh {} answers again", self.dest);
        }
    }
}
