//! Reading keys from external special remotes (see [`crate::annex::remotes::external`]):
//! the remote's program retrieves the whole key (or its chunks, in order) into a private
//! file, which is checked against the key's hash before its bytes are served.
//!
//! Design: an [`ExternalSource`] serves one key. Its first `get` starts one transfer task
//! (shared by every later `get` of the source): TRANSFER RETRIEVE of the key — or of each
//! chunk key, appended in order — through the remote's [`Programs`] pool. The task publishes
//! its state (a `watch`): running, done (the whole key landed and matched its hash), or
//! failed; each `get` stream waits for it, then reads the file by `pread`. The bytes are
//! held back until the hash matched because a program is untrusted and, without a piece
//! manifest, the fetcher's stream mode would serve them before its own whole-key check. Every range of the key is served from that one
//! transfer (a range ahead of it waits for its bytes), so the source says it serves ranges;
//! the fetcher verifies what it gets like any other source's bytes.
//!
//! Invariants: no byte past the key's size is ever served, and none before the whole key
//! matched its hash (keys without a hash: its exact length); a transfer that ends with a file of the wrong length, or a
//! program that crashes, stalls or talks nonsense fails every stream with an error naming
//! the remote (and a log line), never with made-up bytes. Dropping the source aborts the
//! transfer (killing its program) and removes its files.

mod pool;
mod program;
pub mod protocol;

pub use pool::Programs;

use super::http::HttpSource;
use super::reach::Reach;
use super::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use crate::annex::Key;
use crate::annex::backend::Outcome;
use crate::annex::remotes::external::{ExternalLocation, Layout};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Bytes read from the landed file per step.
const STEP: u64 = 1 << 20;
/// How often a stream waiting for its transfer says it is alive (well under the fetcher's
/// stall timeout).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why an external remote could not serve a key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("remote {remote}: start {}: {source}", program.display())]
    Spawn {
        remote: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remote {remote}: its program exited ({why})")]
    Exited { remote: String, why: String },
    #[error("remote {remote}: its program said nothing for {secs}s")]
    Stalled { remote: String, secs: u64 },
    #[error("remote {remote}: {error}")]
    Protocol {
        remote: String,
        #[source]
        error: protocol::ProtocolError,
    },
    #[error("remote {remote}: speaks protocol version {version}, not 1")]
    Version { remote: String, version: String },
    #[error("remote {remote}: PREPARE failed: {why}")]
    Prepare { remote: String, why: String },
    #[error("remote {remote}: ERROR {why}")]
    Remote { remote: String, why: String },
    #[error("remote {remote}: retrieving {key} failed: {why}")]
    Transfer { remote: String, key: String, why: String },
    #[error("remote {remote}: retrieved {got} bytes for {key}, which has {want}")]
    WrongLength { remote: String, key: String, got: u64, want: u64 },
    #[error("remote {remote}: sent content for {key} that hashes to {got}, not to the key")]
    Corrupt { remote: String, key: String, got: String },
    #[error("remote {remote}: its program failed; next start in {secs}s")]
    Backoff { remote: String, secs: u64 },
    #[error("remote {remote}: {what}: {source}")]
    Io {
        remote: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no private directory for retrieved files: {0}")]
    TempDir(String),
}

impl Error {
    /// Whether the program itself misbehaved (it is then killed and restarted with backoff),
    /// rather than answering that it cannot do it.
    fn is_program_fault(&self) -> bool {
        !matches!(self, Error::Transfer { .. } | Error::Backoff { .. } | Error::TempDir(_))
    }
}

/// How far a transfer is.
#[derive(Debug, Clone)]
enum State {
    /// The key is being retrieved (nothing may be served yet).
    Running,
    Done,
    Failed(FetchError),
}

/// The one transfer of a source.
struct Transfer {
    state: watch::Receiver<State>,
    task: tokio::task::AbortHandle,
}

/// One key on one external remote.
pub struct ExternalSource {
    name: String,
    remote: String,
    key: Key,
    size: u64,
    layouts: Vec<Layout>,
    pool: Arc<pool::Pool>,
    /// Where the key lands.
    file: PathBuf,
    transfer: Mutex<Option<Arc<Transfer>>>,
}

/// Distinguishes the files of sources of one process.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The http(s) URLs the program of `loc` names for `key` when asked `WHEREIS` (the answer is
/// text for people; words that are http(s) URLs are taken): each becomes a range source
/// beside the program, checked like any web mirror, so a remote that knows where its bytes
/// are public is read by ranges instead of whole. A program that cannot say gives none.
pub async fn whereis_sources(loc: &ExternalLocation, key: &Key, size: u64, reach: &Reach) -> Vec<Arc<dyn RangeSource>> {
    let timeout = loc.timeout.unwrap_or(pool::DEFAULT_TIMEOUT);
    let pool = reach.external.pool(loc, timeout);
    let mut lease = match pool.lease().await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("remote {}: not asked where {key} is: {e}", loc.remote);
            return Vec::new();
        }
    };
    let asked = lease.program.whereis(key).await;
    let text = match &asked {
        Ok(t) => t.clone(),
        Err(e) => {
            tracing::warn!("remote {}: WHEREIS {key}: {e}", loc.remote);
            None
        }
    };
    lease.done(&asked);
    urls_in(text.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|u| reach.http.check_url(u).is_ok())
        .map(|u| {
            let label = format!("{} {u}", loc.remote);
            Arc::new(HttpSource::new(label.clone(), reach.http.clone(), vec![u], size).with_identity(label))
                as Arc<dyn RangeSource>
        })
        .collect()
}

/// The words of `text` that are http(s) URLs.
fn urls_in(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| {
            let l = w.to_ascii_lowercase();
            l.starts_with("http://") || l.starts_with("https://")
        })
        .map(str::to_string)
        .collect()
}

/// A source reading `key` at `loc`.
pub fn source(loc: &ExternalLocation, key: &Key, reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    let timeout = loc.timeout.unwrap_or(pool::DEFAULT_TIMEOUT);
    let pool = reach.external.pool(loc, timeout);
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    let file = reach.external.tmp_dir()?.join(format!("{}.{n}", std::process::id()));
    let size = loc.layouts.first().map_or(0, |l| l.iter().map(|(_, n)| n).sum());
    Ok(Arc::new(ExternalSource {
        name: format!("{} external:{}", loc.remote, loc.externaltype),
        remote: loc.remote.clone(),
        key: key.clone(),
        size,
        layouts: loc.layouts.clone(),
        pool,
        file,
        transfer: Mutex::new(None),
    }))
}

impl ExternalSource {
    /// The transfer, started on first use.
    fn transfer(&self) -> Arc<Transfer> {
        let mut t = self.transfer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*t {
            return t.clone();
        }
        let (tx, rx) = watch::channel(State::Running);
        let job = Job {
            pool: self.pool.clone(),
            key: self.key.clone(),
            size: self.size,
            layouts: self.layouts.clone(),
            file: self.file.clone(),
            tx,
            landed: AtomicU64::new(0),
        };
        let task = tokio::spawn(job.run()).abort_handle();
        let made = Arc::new(Transfer { state: rx, task });
        *t = Some(made.clone());
        made
    }
}

impl Drop for ExternalSource {
    fn drop(&mut self) {
        if let Some(t) = self.transfer.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            t.task.abort();
        }
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(part_of(&self.file));
    }
}

fn part_of(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// The length of the file at `path` (0 when it is not there yet).
fn file_len(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map(|m| if m.is_file() { m.len() } else { 0 }).unwrap_or(0)
}

/// A transfer running in its own task.
struct Job {
    pool: Arc<pool::Pool>,
    key: Key,
    size: u64,
    layouts: Vec<Layout>,
    file: PathBuf,
    tx: watch::Sender<State>,
    /// Bytes of the key in the file so far (not served before the whole is verified).
    landed: AtomicU64,
}

impl Job {
    async fn run(self) {
        let state = match self.all_verified().await {
            Ok(()) => State::Done,
            Err(e) => {
                tracing::warn!("{}: {e}", self.key);
                State::Failed(FetchError::TransferFailed(e.to_string()))
            }
        };
        self.tx.send_replace(state);
    }

    /// Retrieves the key and checks it against its hash before a byte is served: the
    /// program's bytes are untrusted, and a reader must never see bytes the key disowns.
    async fn all_verified(&self) -> Result<(), Error> {
        self.all().await?;
        let (key, file) = (self.key.clone(), self.file.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            super::open_readonly(&file).map(|f| crate::annex::backend::verify_file(&key, &f))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let remote = || self.pool.ctx.remote.clone();
        match outcome {
            Ok(Outcome::Match | Outcome::Unverifiable(_)) => Ok(()),
            Ok(Outcome::Mismatch(got)) => {
                Err(Error::Corrupt { remote: remote(), key: self.key.to_string_lossy(), got })
            }
            Ok(Outcome::Io(source)) | Err(source) => Err(Error::Io { remote: remote(), what: "verify", source }),
        }
    }

    fn landed(&self) -> u64 {
        self.landed.load(Ordering::Relaxed)
    }

    /// Tries each layout until one works; once bytes landed, no other layout is tried.
    async fn all(&self) -> Result<(), Error> {
        let mut last = None;
        for layout in &self.layouts {
            match self.layout(layout).await {
                Ok(()) => return Ok(()),
                Err(e) if self.landed() > 0 || e.is_program_fault() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Transfer {
            remote: self.pool.ctx.remote.clone(),
            key: self.key.to_string_lossy(),
            why: "no way to retrieve it".into(),
        }))
    }

    async fn layout(&self, layout: &Layout) -> Result<(), Error> {
        match layout.as_slice() {
            [(k, len)] if !k.is_chunk() => {
                // The program writes the key's file itself: its growth is served as it lands.
                let _ = std::fs::remove_file(&self.file);
                let (file, size, landed) = (&self.file, (*len).min(self.size), &self.landed);
                let mut seen = 0;
                let mut grew = || {
                    let now = file_len(file).min(size);
                    if now > seen {
                        seen = now;
                        landed.store(now, Ordering::Relaxed);
                        return true;
                    }
                    false
                };
                self.one(k, *len, file, &mut grew).await
            }
            chunks => {
                let part = part_of(&self.file);
                let mut offset = 0;
                for (k, len) in chunks {
                    let mut seen = 0;
                    let mut grew = || {
                        let now = file_len(&part);
                        let g = now > seen;
                        seen = seen.max(now);
                        g
                    };
                    let _ = std::fs::remove_file(&part);
                    self.one(k, *len, &part, &mut grew).await?;
                    let (from, to) = (part.clone(), self.file.clone());
                    let appended = tokio::task::spawn_blocking(move || append(&from, &to, offset)).await;
                    appended.map_err(std::io::Error::other).and_then(|r| r).map_err(|source| Error::Io {
                        remote: self.pool.ctx.remote.clone(),
                        what: "copy a retrieved chunk",
                        source,
                    })?;
                    offset += len;
                    self.landed.store(offset, Ordering::Relaxed);
                }
                let _ = std::fs::remove_file(&part);
                Ok(())
            }
        }
    }

    /// Retrieves one key (or chunk key) of `len` bytes into `path`, with one program.
    async fn one(&self, k: &Key, len: u64, path: &Path, grew: &mut (dyn FnMut() -> bool + Send)) -> Result<(), Error> {
        let mut lease = self.pool.lease().await?;
        let mut r = lease.program.retrieve(k, path, grew).await;
        if r.is_ok() {
            let got = file_len(path);
            if got != len {
                r = Err(Error::WrongLength {
                    remote: self.pool.ctx.remote.clone(),
                    key: k.to_string_lossy(),
                    got,
                    want: len,
                });
            }
        }
        lease.done(&r);
        r
    }
}

/// Writes the file `from` into `to` at `offset`.
fn append(from: &Path, to: &Path, offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut src = super::open_readonly(from)?;
    let mut dst = std::fs::OpenOptions::new().write(true).create(true).truncate(offset == 0).open(to)?;
    dst.seek(SeekFrom::Start(offset))?;
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_data()
}

/// Reads `[pos, pos + n)` of the file at `path`.
fn read_at(path: &Path, pos: u64, n: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = super::open_readonly(path)?;
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
    f.read_exact_at(&mut buf, pos)?;
    Ok(buf)
}

impl RangeSource for ExternalSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn identity(&self) -> &str {
        &self.remote
    }

    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        Box::pin(async move {
            let end = offset
                .checked_add(len)
                .filter(|&e| e <= self.size)
                .ok_or_else(|| FetchError::BadRange(format!("bytes {offset}+{len} of a key of {} bytes", self.size)))?;
            let rx = self.transfer().state.clone();
            let path = self.file.clone();
            let s = futures_util::stream::unfold((rx, offset, false), move |(mut rx, pos, stop)| {
                let path = path.clone();
                async move {
                    if stop || pos >= end {
                        return None;
                    }
                    loop {
                        let state = rx.borrow_and_update().clone();
                        let avail = match state {
                            State::Failed(e) => return Some((Err(e), (rx, pos, true))),
                            State::Running => 0,
                            State::Done => end,
                        };
                        if pos < avail.min(end) {
                            let n = (avail.min(end) - pos).min(STEP);
                            let read = tokio::task::spawn_blocking(move || read_at(&path, pos, n)).await;
                            return Some(match read {
                                Ok(Ok(buf)) => (Ok(Bytes::from(buf)), (rx, pos + n, false)),
                                Ok(Err(e)) => (Err(FetchError::Transport(e.to_string())), (rx, pos, true)),
                                Err(e) => (Err(FetchError::Transport(e.to_string())), (rx, pos, true)),
                            });
                        }
                        match tokio::time::timeout(HEARTBEAT, rx.changed()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                let e = FetchError::Transport("the transfer ended without a result".into());
                                return Some((Err(e), (rx, pos, true)));
                            }
                            // Still retrieving: an empty chunk keeps the fetcher's stall timer
                            // from cutting a long transfer (the transfer fails by itself when
                            // the program goes quiet for its timeout).
                            Err(_) => return Some((Ok(Bytes::new()), (rx, pos, false))),
                        }
                    }
                }
            });
            let s: ByteStream = Box::pin(s);
            Ok(s)
        })
    }

    /// Any range is served from the one transfer once its bytes land (a range ahead of it
    /// waits), so the scheduler may spread pieces over this source and others.
    fn supports_ranges(&self) -> bool {
        true
    }
}
