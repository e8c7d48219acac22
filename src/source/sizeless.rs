//! Reading a key whose size could not be learnt from headers (a URL key from `addurl
//! --relaxed` on a server that sends no length: chunked bodies, no `Content-Range`): the
//! object is downloaded from its start, over HTTP, to its real end — as git-annex itself
//! must — and its size is what arrived.
//!
//! Design: **one download per key per mount** ([`Downloads`]), into a private file of the
//! mount's under the cache directory. The download starts on the first look-up that needs the
//! size (which waits for it a little: a small object's size is then known at once) or the
//! first open; it serves every reader of the key while it runs (a read waits until its bytes
//! arrived, then reads them from the file, so a read behind another never restarts anything);
//! while it runs `stat` shows the bytes received so far, never 0 once any came. When it ends,
//! the total is handed to `on_end` (the mount's size book), so that `stat` shows the real size
//! and later opens fetch the key like any sized one — with the finished file as a local
//! source, so that its bytes land in the piece cache without a second download.
//!
//! Untrusted input: a body that declares a length must have exactly it (`HttpClient::
//! get_whole`); a stall ends the download with an error (the client's read timeout); a body
//! larger than the bound ([`Downloads::new`]) is cut and refused; a download that failed is
//! started again only after [`RETRY_AFTER`]. Nothing is ever served beyond what arrived.
//!
//! Lock order: `Downloads::map` (a std mutex, never held across an await) is a leaf; a
//! download's progress is a `watch` channel.

use super::http::HttpClient;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A failed download is started again (by a look-up or an open) only after this.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Why bytes of an object of unknown size could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SizelessError {
    /// No URL answered with the object: each URL and what it did.
    #[error("{}", if .0.is_empty() { "no URL is recorded for it".to_string() } else { .0.join("; ") })]
    NoAnswer(Vec<String>),
    #[error("download broke at byte {at}: {why}")]
    Broken { at: u64, why: String },
    #[error("larger than {0} bytes, the most a download of unknown size may take in the cache")]
    TooLarge(u64),
    #[error("cannot keep the download: {0}")]
    Disk(String),
}

/// Called with the key and the object's size once a download reached its end.
pub type OnEnd = Arc<dyn Fn(&[u8], u64) + Send + Sync>;

/// Where a download is.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Bytes received and written to the file.
    pub got: u64,
    /// The end: the object's size, or why the download failed.
    pub end: Option<Result<u64, SizelessError>>,
}

/// One key's download.
pub struct Download {
    key: String,
    first_url: String,
    path: PathBuf,
    progress: watch::Receiver<Progress>,
    started: Instant,
}

impl Download {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// The object's size, waiting for the download's end at most `wait`.
    pub async fn size_within(&self, wait: Duration) -> Option<u64> {
        let mut rx = self.progress.clone();
        let ended = tokio::time::timeout(wait, rx.wait_for(|p| p.end.is_some())).await;
        match ended {
            Ok(Ok(p)) => p.end.clone().and_then(Result::ok),
            _ => None,
        }
    }

    /// The finished file and the object's size, once the download ended well.
    pub fn finished(&self) -> Option<(PathBuf, u64)> {
        match self.progress.borrow().end {
            Some(Ok(n)) => Some((self.path.clone(), n)),
            _ => None,
        }
    }

    fn failed_long_ago(&self) -> bool {
        matches!(self.progress.borrow().end, Some(Err(_))) && self.started.elapsed() >= RETRY_AFTER
    }
}

/// Downloads of keys of unknown size, for one mount; their files are removed with it.
pub struct Downloads {
    parent: PathBuf,
    /// Made on the first download, private (0700) like the rest of the cache.
    dir: std::sync::OnceLock<tempfile::TempDir>,
    client: HttpClient,
    max_bytes: u64,
    on_end: OnEnd,
    map: Mutex<HashMap<Vec<u8>, Arc<Download>>>,
    attempts: std::sync::atomic::AtomicU64,
}

impl Downloads {
    /// Downloads into a private directory made in `parent` (the cache directory), each at
    /// most `max_bytes`; `on_end` learns each size.
    /// Directories left by processes that are gone (killed before removing theirs) are
    /// removed first; those of live processes sharing the cache are theirs. This process's
    /// own is made on the first download.
    pub fn new(parent: &std::path::Path, client: HttpClient, max_bytes: u64, on_end: OnEnd) -> std::io::Result<Self> {
        for e in std::fs::read_dir(parent)?.flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("sizeless-")?.split('-').next()?.parse::<u32>().ok());
            if let Some(pid) = pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Downloads {
            parent: parent.to_path_buf(),
            dir: std::sync::OnceLock::new(),
            client,
            max_bytes,
            on_end,
            map: Mutex::default(),
            attempts: Default::default(),
        })
    }

    /// This process's directory of downloads, made on first use.
    fn dir(&self) -> Result<&std::path::Path, SizelessError> {
        if let Some(d) = self.dir.get() {
            return Ok(d.path());
        }
        use std::os::unix::fs::PermissionsExt;
        let made = tempfile::Builder::new()
            .prefix(&format!("sizeless-{}-", std::process::id()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.parent)
            .map_err(|e| SizelessError::Disk(e.to_string()))?;
        Ok(self.dir.get_or_init(|| made).path())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<Download>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The download of `key`, if one was started.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Download>> {
        self.map().get(key).cloned()
    }

    /// The download of `key` (`name` for log lines) from `urls`, tried in order: the running
    /// or finished one, else a new one on `rt` (also when the last failed long enough ago).
    pub fn start(&self, key: &[u8], name: &str, urls: &[String], rt: &tokio::runtime::Handle) -> Arc<Download> {
        let mut map = self.map();
        if let Some(d) = map.get(key)
            && !d.failed_long_ago()
        {
            return d.clone();
        }
        let (dir, made) = match self.dir() {
            Ok(d) => (d.to_path_buf(), Ok(())),
            Err(e) => (PathBuf::new(), Err(e)),
        };
        // A file per attempt: readers of a failed one may still read the bytes it got.
        let attempt = self.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{}-{attempt}.part", blake3::hash(key).to_hex()));
        let (tx, rx) = watch::channel(Progress { got: 0, end: made.clone().err().map(Err) });
        let d = Arc::new(Download {
            key: name.to_string(),
            first_url: urls.first().cloned().unwrap_or_default(),
            path: path.clone(),
            progress: rx,
            started: Instant::now(),
        });
        map.insert(key.to_vec(), d.clone());
        let (client, urls, max, on_end, name, key) =
            (self.client.clone(), urls.to_vec(), self.max_bytes, self.on_end.clone(), name.to_string(), key.to_vec());
        if made.is_err() {
            return d;
        }
        rt.spawn(async move {
            let end = download(&client, &urls, &path, max, &tx).await;
            // The download is marked finished before the size is told: an open that finds the
            // size then always finds the finished file too (and reads the key from it rather
            // than asking the server again).
            tx.send_modify(|p| p.end = Some(end.clone()));
            match &end {
                Ok(n) => {
                    tracing::info!("{name}: size learnt from the end of its download: {n} bytes");
                    on_end(&key, *n);
                }
                Err(e) => tracing::warn!("{name}: download of unknown size failed: {e}"),
            }
        });
        d
    }
}

/// Downloads the first of `urls` that answers into `path`; the object's size.
async fn download(
    client: &HttpClient,
    urls: &[String],
    path: &std::path::Path,
    max: u64,
    tx: &watch::Sender<Progress>,
) -> Result<u64, SizelessError> {
    let mut tried = Vec::new();
    for url in urls {
        let (mut body, _declared) = match client.get_whole(url).await {
            Ok(b) => b,
            Err(e) => {
                tried.push(format!("{url}: {e}"));
                continue;
            }
        };
        let disk = |e: std::io::Error| SizelessError::Disk(e.to_string());
        use std::os::unix::fs::OpenOptionsExt;
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(disk)?;
        let mut got = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| SizelessError::Broken { at: got, why: e.to_string() })?;
            got += chunk.len() as u64;
            if got > max {
                return Err(SizelessError::TooLarge(max));
            }
            // Small appends to a private file: the page cache takes them.
            file.write_all(&chunk).map_err(disk)?;
            tx.send_modify(|p| p.got = got);
        }
        return Ok(got);
    }
    Err(SizelessError::NoAnswer(tried))
}

/// One open file of unknown size: reads served from its key's download.
pub struct WholeStream {
    download: Arc<Download>,
}

impl WholeStream {
    pub fn new(download: Arc<Download>) -> WholeStream {
        WholeStream { download }
    }

    /// The key, for error messages.
    pub fn key(&self) -> &str {
        &self.download.key
    }

    pub fn describe(&self) -> String {
        format!("download of {} (size unknown)", self.download.first_url)
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the object), once they arrived.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, SizelessError> {
        let want = offset.saturating_add(u64::from(len));
        let mut rx = self.download.progress.clone();
        let p = rx
            .wait_for(|p| p.got >= want || p.end.is_some())
            .await
            .map_err(|_| SizelessError::Broken { at: offset, why: "the download was dropped".into() })?
            .clone();
        let upto = match p.end {
            Some(Err(e)) if p.got < want => return Err(e),
            Some(Ok(n)) => n.min(want),
            _ => p.got.min(want),
        };
        if upto <= offset {
            return Ok(Vec::new());
        }
        let path = self.download.path.clone();
        let n = usize::try_from(upto - offset).unwrap_or(usize::MAX);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; n];
            let mut done = 0;
            while done < n {
                match file.read_at(&mut buf[done..], offset + done as u64)? {
                    0 => break,
                    k => done += k,
                }
            }
            buf.truncate(done);
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| SizelessError::Disk(e.to_string()))?
        .map_err(|e| SizelessError::Disk(e.to_string()))
    }
}
