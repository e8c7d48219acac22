//! The running programs of a mount (or command): one pool per external remote.
//!
//! A pool runs at most [`PER_REMOTE`] programs at once, each doing one request at a time; a
//! program that answered well goes back to the pool for the next request. A program that
//! failed by its own fault (exited, stalled, garbage, `ERROR`, a wrong length) is dropped —
//! and so killed — and the pool waits before starting another: 1 s, then doubling up to
//! [`MAX_BACKOFF`], reset by the next success. A request made during the wait fails at once
//! with [`Error::Backoff`] instead of queueing behind a broken program.
//!
//! Lock order: `Programs::inner.pools`, then a pool's `idle` or `health` (never both held;
//! none across an `.await`).

use super::Error;
use super::program::{Context, Program};
use crate::annex::Annex;
use crate::annex::remotes::external::ExternalLocation;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Programs of one remote running at once.
pub const PER_REMOTE: usize = 2;
/// The longest wait before restarting a failing program.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a program may stay silent, unless `remote.NAME.annexfs-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// External special remote programs started for a mount, one pool per remote.
#[derive(Default, Clone)]
pub struct Programs {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The repository the programs work for.
    repo: Option<PathBuf>,
    annex: OnceLock<Option<Arc<Annex>>>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Private directory (0700) the programs retrieve into.
    tmp: OnceLock<Result<tempfile::TempDir, String>>,
    /// Where that directory is made (else the system's temporary directory).
    tmp_root: Option<PathBuf>,
}

impl Programs {
    /// Programs working for the repository at `repo` (answers GETGITDIR, GETSTATE, …).
    pub fn for_repo(repo: PathBuf) -> Programs {
        Programs { inner: Arc::new(Inner { repo: Some(repo), ..Inner::default() }) }
    }

    /// The same, retrieving into a private directory under `root` (the piece cache's, so that
    /// whole keys land on the disk meant for content, not in a tmpfs `/tmp`).
    pub fn for_repo_in(repo: PathBuf, root: &std::path::Path) -> Programs {
        let inner = Inner { repo: Some(repo), tmp_root: Some(root.join("external")), ..Inner::default() };
        Programs { inner: Arc::new(inner) }
    }

    /// A private directory for retrieved files.
    pub(super) fn tmp_dir(&self) -> Result<PathBuf, Error> {
        let made = self.inner.tmp.get_or_init(|| match &self.inner.tmp_root {
            Some(root) => private_tmp_in(root),
            None => tempfile::Builder::new().prefix("annexfs-external-").tempdir().map_err(|e| e.to_string()),
        });
        match made {
            Ok(d) => Ok(d.path().to_path_buf()),
            Err(e) => Err(Error::TempDir(e.clone())),
        }
    }

    /// The pool of `loc`'s remote (made on first use).
    pub(super) fn pool(&self, loc: &ExternalLocation, timeout: Duration) -> Arc<Pool> {
        let annex = self
            .inner
            .annex
            .get_or_init(|| self.inner.repo.as_deref().and_then(|r| Annex::open(r).ok()).map(Arc::new))
            .clone();
        let mut pools = lock(&self.inner.pools);
        pools
            .entry(loc.remote.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    ctx: Arc::new(Context {
                        remote: loc.remote.clone(),
                        uuid: loc.uuid.clone(),
                        program: loc.program.clone(),
                        config: loc.config.clone(),
                        annex,
                        timeout,
                    }),
                    permits: Arc::new(Semaphore::new(PER_REMOTE)),
                    idle: Mutex::new(Vec::new()),
                    health: Mutex::new(Health::default()),
                })
            })
            .clone()
    }
}

#[derive(Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    /// No program is started before this.
    retry_at: Option<Instant>,
}

/// The programs of one remote.
pub struct Pool {
    pub(super) ctx: Arc<Context>,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Program>>,
    health: Mutex<Health>,
}

/// A program lent for one request, with its slot in the pool.
pub struct Lease {
    pub program: Program,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A program for one request: an idle one, or a new one (unless backing off).
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Backoff { remote: self.ctx.remote.clone(), secs: 0 })?;
        let idle = lock(&self.idle).pop();
        let program = match idle {
            Some(p) => p,
            None => {
                let wait = lock(&self.health).retry_at.map(|t| t.saturating_duration_since(Instant::now()));
                if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                    return Err(Error::Backoff { remote: self.ctx.remote.clone(), secs: wait.as_secs().max(1) });
                }
                match Program::start(self.ctx.clone()).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.failed(&e);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Lease { program, pool: self.clone(), _permit: permit })
    }

    /// Records a failure; a program's own fault delays the next start.
    fn failed(&self, e: &Error) {
        if !e.is_program_fault() {
            return;
        }
        let mut h = lock(&self.health);
        h.failures = h.failures.saturating_add(1);
        let backoff = Duration::from_secs(1u64 << h.failures.saturating_sub(1).min(6)).min(MAX_BACKOFF);
        h.retry_at = Some(Instant::now() + backoff);
        tracing::warn!("remote {}: {e}; next start in {}s", self.ctx.remote, backoff.as_secs());
    }
}

impl Lease {
    /// Gives the program back after `result`: kept when it did its job (or refused cleanly),
    /// dropped and killed when it failed by its own fault.
    pub fn done<T>(self, result: &Result<T, Error>) {
        match result {
            Ok(_) => {
                lock(&self.pool.health).failures = 0;
                lock(&self.pool.idle).push(self.program);
            }
            Err(e) if !e.is_program_fault() => lock(&self.pool.idle).push(self.program),
            Err(e) => self.pool.failed(e),
        }
    }
}

/// A private (0700) directory for this process's retrievals under `root` (made 0700 too), after
/// removing those of processes that no longer run (their pid is in the name).
fn private_tmp_in(root: &std::path::Path) -> Result<tempfile::TempDir, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(|e| e.to_string())?;
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("annexfs-external-")).and_then(|r| r.split('.').next());
            if pid
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("annexfs-external-{}.", std::process::id()))
        .tempdir_in(root)
        .map_err(|e| e.to_string())
}
