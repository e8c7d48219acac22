//! Reading keys from ssh git remotes (see [`crate::annex::remotes::ssh`]) with the P2P
//! protocol of `git-annex-shell p2pstdio`, over the system `ssh` (so `~/.ssh/config`, agents,
//! known_hosts and ProxyJump work as they do for git-annex).
//!
//! - A range `[a, b)` is a `GET a` whose DATA is read for `b - a` bytes. A GET cannot be
//!   stopped, so the session is then parked where it stopped, and a range of the same key a
//!   little after `b` (a reader going on) continues it without a new GET (see [`pool`]). One
//!   nobody continues is read to its end when little is left (and kept for another GET),
//!   else killed. A range the fetcher cuts short (a steal) parks where it stopped the same way.
//! - Ranges at different places run at once, each in its own session; with
//!   `annex.sshcaching` (on by default) the sessions share one master connection per host
//!   (`ControlMaster=auto`, `ControlPersist`), its socket in a private directory removed when
//!   the process ends. Idle sessions are kept a while for the next range.
//! - ssh runs in batch mode: a host that wants a password, or whose host key is unknown,
//!   fails at once with ssh's message (the error is permanent for the key, remembered a while
//!   for the host, and logged once with the remote's name).
//! - Every byte goes through the fetcher like any mirror's: scheduler, piece cache,
//!   verification, per-remote limits (the source's identity is the remote's name).

mod command;
mod error;
mod host;
pub use host::HostReport;
mod pool;
mod session;

pub use error::SshError;

use super::reach::Reach;
use super::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use crate::annex::Key;
use crate::annex::remotes::ssh::{SshAccess, SshLocation};
use bytes::Bytes;
use command::RuntimeDir;
use host::{Host, RepoKey};
use pool::{Continuation, Parked};
use session::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes read from a session at a time.
const CHUNK: usize = 128 * 1024;
/// A range waits at most this long for the transfer it is to go on from.
const CHAIN_WAIT: Duration = Duration::from_secs(5);

/// ssh connections shared by the sources of a mount: one master connection per host (and set
/// of ssh options), its sessions, and the directory of the control sockets.
#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    hosts: HashMap<HostKey, Arc<Host>>,
    /// Made on first use, when connection sharing is on.
    dir: Option<RuntimeDir>,
}

/// What makes two remotes share a host: where, as whom, and how ssh is run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostKey {
    user: Option<String>,
    host: String,
    port: Option<u16>,
    options: Vec<String>,
    caching: bool,
}

impl Connections {
    fn host(&self, how: &SshAccess) -> Result<Arc<Host>, Error> {
        let t = &how.target;
        let key = HostKey {
            user: t.user.clone(),
            host: t.host.clone(),
            port: t.port,
            options: how.ssh_options.clone(),
            caching: how.caching,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = inner.hosts.get(&key) {
            return Ok(h.clone());
        }
        let control = if how.caching {
            if inner.dir.is_none() {
                inner.dir = Some(RuntimeDir::create().map_err(Error::RuntimeDir)?);
            }
            let dir = inner.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default();
            Some(dir.join(format!("h{}", inner.hosts.len())))
        } else {
            None
        };
        let dest = match t.port {
            Some(p) => format!("{} port {p}", t.destination()),
            None => t.destination(),
        };
        let args = command::ssh_args(how, control.as_deref());
        let h = Arc::new(Host::new(dest, args, control));
        inner.hosts.insert(key, h.clone());
        Ok(h)
    }
}

impl Connections {
    /// Every host connected to, for `annexfs status`.
    pub fn report(&self) -> Vec<host::HostReport> {
        let hosts: Vec<Arc<Host>> =
            self.inner.lock().unwrap_or_else(|p| p.into_inner()).hosts.values().cloned().collect();
        let mut r: Vec<_> = hosts.iter().map(|h| h.report()).collect();
        r.sort_by(|a, b| a.host.cmp(&b.host));
        r
    }

    /// Sets up the master connection to the host of `how` (connection sharing on) in the
    /// background on `rt`, then the spare sessions of the repository of `remote` (whose
    /// UUID is `remote_uuid`), so that the first range read from it waits neither for ssh
    /// to connect nor for `git-annex-shell` to start (together most of a second on a busy
    /// machine, longer than most ranges take). A failure is remembered and reported as on
    /// first use.
    pub fn warm(&self, how: &SshAccess, remote: &str, remote_uuid: &str, rt: &tokio::runtime::Handle) {
        if !how.caching {
            return;
        }
        let Ok(host) = self.host(how) else { return };
        let remote = remote.to_string();
        let repo = RepoKey {
            path: how.target.path.clone(),
            remote_uuid: remote_uuid.to_string(),
            client_uuid: how.client_uuid.clone(),
            shell: how.shell.clone(),
        };
        rt.spawn(async move {
            match host.ready(&remote).await {
                Ok(()) => host.keep_spares(&repo, &remote),
                Err(e) => tracing::debug!("ssh {}: no master connection ahead of use: {e}", host.dest),
            }
        });
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        // Sessions first (idle ones die with their host), then the masters and the directory.
        inner.hosts.clear();
        inner.dir = None;
    }
}

/// Why a ssh location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the key has no size to fetch ranges of")]
    NoSize,
    #[error("no private directory for ssh control sockets: {0}")]
    RuntimeDir(#[source] std::io::Error),
}

/// A source reading `key` at `loc`.
pub fn source(loc: &SshLocation, key: &Key, reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    let size = key.size().ok_or(Error::NoSize)?;
    let host = reach.ssh.host(&loc.how)?;
    Ok(Arc::new(SshSource {
        name: format!("{} {}", loc.remote, loc.url),
        remote: loc.remote.clone(),
        host,
        repo: RepoKey {
            path: loc.how.target.path.clone(),
            remote_uuid: loc.remote_uuid.clone(),
            client_uuid: loc.how.client_uuid.clone(),
            shell: loc.how.shell.clone(),
        },
        key: key.to_bytes().into(),
        size,
    }))
}

/// One key in one repository behind ssh.
pub struct SshSource {
    name: String,
    /// The remote's name: its identity for limits, strikes and bans.
    remote: String,
    host: Arc<Host>,
    repo: RepoKey,
    key: Arc<[u8]>,
    size: u64,
}

impl SshSource {
    async fn fetch(&self, offset: u64, len: u64) -> Result<ByteStream, FetchError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(FetchError::BadRange(format!("{len} bytes at {offset} of a {}-byte key", self.size)));
        }
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let want = self.size - offset;
        // Registered first, so that the range after this one may wait to go on from it.
        let ticket = self.host.start_running(self.repo.clone(), self.key.clone(), offset, offset + len);
        let running = RunningGuard { host: self.host.clone(), id: ticket.id };
        self.host.keep_spares(&self.repo, &self.remote);
        let asked = Instant::now();
        let (session, how) = match self.continuation(offset).await {
            Some(s) => (s, "went on from an earlier transfer"),
            None => (self.start_get(offset, want).await?, "new GET"),
        };
        tracing::debug!("ssh {}: {len} bytes at {offset}: {how}, ready after {:?}", self.remote, asked.elapsed());
        let t = Transfer {
            session: Some(session),
            host: self.host.clone(),
            repo: self.repo.clone(),
            key: self.key.clone(),
            running,
            shown: ticket.pos,
            pos: offset,
            end: offset + len,
            size: self.size,
            started: None,
        };
        let s = futures_util::stream::unfold(t, |mut t| async move {
            let chunk = t.next().await?;
            Some((chunk, t))
        });
        Ok(Box::pin(s))
    }

    /// A session already streaming this key, brought to `offset`: a parked one, or a running
    /// one once its range is done (the bytes before `offset` are thrown away).
    async fn continuation(&self, offset: u64) -> Option<Session> {
        let mut p = match self.host.continuation(&self.repo, &self.key, offset) {
            Continuation::Parked(p) => p,
            Continuation::Wait(rx) => tokio::time::timeout(CHAIN_WAIT, rx).await.ok()?.ok()?,
            Continuation::Get => return None,
        };
        if offset > p.pos {
            p.session.skip(offset - p.pos).await.ok()?;
        }
        Some(p.session)
    }

    /// A session (idle or new) that was sent `GET offset` and answered with all the content
    /// from there (`want` bytes).
    async fn start_get(&self, offset: u64, want: u64) -> Result<Session, FetchError> {
        // A session that was idle may have been closed by the server: try again, afresh.
        let mut tries = 0;
        let (mut session, data) = loop {
            tries += 1;
            let t = Instant::now();
            let (mut session, reused) = self.host.session(&self.repo, &self.remote).await?;
            // A spare taken is replaced at once, not at the next range: a new session takes
            // most of a second, and the next range may need one sooner.
            if reused {
                self.host.keep_spares(&self.repo, &self.remote);
            }
            tracing::debug!(
                "ssh {}: session ({}) after {:?}",
                self.remote,
                if reused { "idle" } else { "new" },
                t.elapsed()
            );
            match session.get(offset, &self.key).await {
                Ok(n) => break (session, n),
                Err(SshError::Lost { .. }) if reused && tries < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if data == want {
            return Ok(session);
        }
        if data == 0 && session.finish().await == Ok(false) {
            self.host.keep_idle(self.repo.clone(), session);
            return Err(SshError::NotPresent { dest: self.host.dest.clone() }.into());
        }
        Err(SshError::WrongLength { dest: self.host.dest.clone(), offset, got: data, want }.into())
    }
}

/// One GET's DATA being read for a range.
struct Transfer {
    /// `None` once the range is read (or failed).
    session: Option<Session>,
    host: Arc<Host>,
    repo: RepoKey,
    key: Arc<[u8]>,
    /// Its entry among the host's running transfers, and the position shown there.
    running: RunningGuard,
    shown: Arc<AtomicU64>,
    /// The offset in the key of the next byte, where the range ends, the key's size (where
    /// the DATA ends).
    pos: u64,
    end: u64,
    size: u64,
    /// When the first byte came, and from where.
    started: Option<(Instant, u64)>,
}

impl Transfer {
    async fn next(&mut self) -> Option<Result<Bytes, FetchError>> {
        let session = self.session.as_mut()?;
        let n = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(CHUNK);
        let mut buf = vec![0u8; n];
        let got = match session.read(&mut buf).await {
            Ok(k) => k,
            Err(e) => {
                self.session = None;
                return Some(Err(e.into()));
            }
        };
        buf.truncate(got);
        self.started.get_or_insert((Instant::now(), self.pos));
        self.pos += got as u64;
        self.shown.store(self.pos, Ordering::Relaxed);
        if self.pos == self.end {
            if let Some((at, from)) = self.started {
                self.host.measured_rate(self.pos - from, at.elapsed().as_secs_f64());
            }
            // The range is whole. The fetcher may not ask for more: the session is dealt with
            // now, before the last bytes are handed over.
            let mut session = self.session.take()?;
            if self.pos == self.size {
                match session.finish().await {
                    Ok(true) => self.host.keep_idle(self.repo.clone(), session),
                    Ok(false) => {
                        return Some(Err(FetchError::Transport(format!(
                            "git-annex-shell on {} reports the content changed while it was sent (INVALID)",
                            self.host.dest
                        ))));
                    }
                    Err(e) => tracing::debug!("after a whole range: {e}"),
                }
            } else {
                self.park(session);
            }
        }
        Some(Ok(Bytes::from(buf)))
    }

    /// Hands `session`, standing at `pos`, to the range waiting to go on from there, else
    /// parks it (see [`pool`]).
    fn park(&self, session: Session) {
        self.host.end_running(
            self.running.id,
            Parked {
                repo: self.repo.clone(),
                key: self.key.clone(),
                pos: self.pos,
                left: self.size - self.pos,
                session,
                since: Instant::now(),
            },
        );
    }
}

/// A transfer dropped before its range was whole (the fetcher cut the range short: a steal,
/// a preemption, the file closed) parks its session where it stopped, as a whole range
/// does: the bytes under way stay in it for a range going on from there, or it is read to
/// its end or killed as any parked session (`pool`). One that failed has no session left.
/// Outside a runtime (the process ending) the session is simply killed.
impl Drop for Transfer {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        if self.pos >= self.size || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.park(session);
    }
}

/// A transfer's entry among the host's running ones, removed when the transfer ends
/// however it ends (a range waiting to go on from it then makes its own GET).
struct RunningGuard {
    host: Arc<Host>,
    id: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.host.drop_running(self.id);
    }
}

impl RangeSource for SshSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> &str {
        &self.remote
    }
    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        Box::pin(self.fetch(offset, len))
    }
    fn costly_start(&self) -> bool {
        true
    }
    fn resumes_at(&self) -> Vec<u64> {
        self.host.parked_at(&self.repo, &self.key)
    }
}
