//! Sources the fetcher reads ranges from: the [`RangeSource`] trait, its error type, and
//! in-process test doubles (content in memory, throttled, failing, stalling, lying).
//!
//! A source returns a stream of the bytes of one range; the fetcher checks that it gets
//! exactly the bytes asked for, in order, and nothing more.

use bytes::Bytes;
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A stream of the bytes of one requested range.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;
/// A boxed future (the trait must be object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What went wrong with a request to a source.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("not found (every URL answered 404)")]
    NotFound,
    #[error("answered with the wrong range: {0}")]
    BadRange(String),
    #[error("does not serve byte ranges")]
    NoRanges,
    #[error("body ended after {got} of {want} bytes")]
    ShortBody { got: u64, want: u64 },
    #[error("body longer than the {0} bytes asked for")]
    LongBody(u64),
    #[error("stalled: no data for {0:?}")]
    Stalled(Duration),
    #[error("content-encoding {0} refused (annexfs needs the raw bytes)")]
    Encoding(String),
    #[error("{0}")]
    Policy(#[from] crate::annex::policy::PolicyError),
    #[error("{0}")]
    Transport(String),
    #[error("sent piece {0}, which fails its check against the manifest")]
    Corrupt(usize),
    #[error("banned: {0}")]
    Banned(String),
    #[error("too slow ({0} bytes/s): its pieces were fetched elsewhere")]
    TooSlow(u64),
    #[error("not authorised: {0}")]
    Unauthorized(String),
    /// A whole-key source's one transfer of the key failed: asking again gives the same.
    #[error("{0}")]
    TransferFailed(String),
    /// The source cannot serve the key at all, and says why (an ssh host refusing our key or
    /// unknown to known_hosts, a repository without the content): asking again is pointless.
    #[error("{0}")]
    Refused(String),
}

impl FetchError {
    /// Whether asking this source again for this key is pointless.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            FetchError::NotFound
                | FetchError::BadRange(_)
                | FetchError::Encoding(_)
                | FetchError::Policy(_)
                | FetchError::Banned(_)
                | FetchError::Unauthorized(_)
                | FetchError::TransferFailed(_)
                | FetchError::Refused(_)
        )
    }
}

/// Something that serves byte ranges of one key's content.
pub trait RangeSource: Send + Sync {
    /// Short name for logs and status: the remote and URL or path.
    fn name(&self) -> &str;
    /// Who answers for the bytes, across keys: strikes and bans are counted per identity
    /// (a remote, or the origin of a web URL).
    fn identity(&self) -> &str {
        self.name()
    }
    /// Starts reading `len` bytes at `offset`.
    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>>;
    /// The same, for work no reader waits for (a swarm node fetching its share to keep): a
    /// source whose server tells the two apart asks to be served after readers.
    fn get_background(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        self.get(offset, len)
    }
    /// Whether starting a range is costly here while a transfer under way goes on past its
    /// range for free (an ssh session: a process on the server and a GET for each new range,
    /// the content streamed to the end of the key): the scheduler gives such a source long
    /// runs from the back of what readers want, and goes on where its transfers stand
    /// (`crate::fetch::scheduler`), from the first request, before any measurement says so.
    fn costly_start(&self) -> bool {
        false
    }
    /// Offsets of this key where a transfer already under way stands (an ssh session whose
    /// GET streams on past the range it was asked for): a range starting there costs no new
    /// start. Asked under the fetcher's state lock: quick, no I/O.
    fn resumes_at(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Whether this source holds `[offset, offset + len)` (a swarm peer holds some pieces
    /// only).
    fn has_range(&self, _offset: u64, _len: u64) -> bool {
        true
    }
    /// Whether ranges not starting at 0 can be asked (false once a server ignored Range).
    fn supports_ranges(&self) -> bool {
        true
    }
}

/// How a [`MemorySource`] misbehaves (for engine tests).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Delay before the first byte of every request.
    pub latency: Duration,
    /// Throughput limit for this source, all requests together (bytes per second).
    pub bytes_per_sec: Option<u64>,
    /// Every n-th request fails at once (0: never).
    pub fail_every: u64,
    /// Every n-th request stops after half its bytes (0: never).
    pub cut_every: u64,
    /// The source accepts requests and never sends a byte.
    pub stall: bool,
    /// The source always fails.
    pub dead: bool,
    /// Every chunk sent has its first byte flipped (a mirror with damaged content).
    pub corrupt: bool,
}

/// A source serving content held in memory, with injected faults.
pub struct MemorySource {
    name: String,
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    content: Arc<Vec<u8>>,
    faults: Faults,
    requests: std::sync::atomic::AtomicU64,
    /// The moment up to which the shared throughput budget is spent.
    budget: tokio::sync::Mutex<tokio::time::Instant>,
    served: std::sync::atomic::AtomicU64,
    /// Requests being answered now, and the most at once.
    active: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

/// Counts a request as active while its stream lives.
struct Active(Arc<MemoryInner>);

impl Active {
    fn new(inner: Arc<MemoryInner>) -> Active {
        use std::sync::atomic::Ordering::Relaxed;
        let now = inner.active.fetch_add(1, Relaxed) + 1;
        inner.peak.fetch_max(now, Relaxed);
        Active(inner)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl MemorySource {
    pub fn new(name: &str, content: Arc<Vec<u8>>, faults: Faults) -> MemorySource {
        MemorySource {
            name: name.to_string(),
            inner: Arc::new(MemoryInner {
                content,
                faults,
                requests: Default::default(),
                budget: tokio::sync::Mutex::new(tokio::time::Instant::now()),
                served: Default::default(),
                active: Default::default(),
                peak: Default::default(),
            }),
        }
    }

    /// Bytes sent so far, all requests together.
    pub fn served(&self) -> u64 {
        self.inner.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most requests it answered at once.
    pub fn peak_concurrency(&self) -> u64 {
        self.inner.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests started so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Bytes a memory source sends at a time.
const MEMORY_SOURCE_CHUNK: usize = 16 * 1024;

impl RangeSource for MemorySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = self.inner.clone();
        let n = inner.requests.fetch_add(1, Relaxed) + 1;
        Box::pin(async move {
            let f = &inner.faults;
            if f.dead || (f.fail_every > 0 && n.is_multiple_of(f.fail_every)) {
                return Err(FetchError::Transport("injected failure".into()));
            }
            if !f.latency.is_zero() {
                tokio::time::sleep(f.latency).await;
            }
            let content = &inner.content;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
            let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX).min(content.len());
            let mut stop = end;
            if f.cut_every > 0 && n.is_multiple_of(f.cut_every) {
                stop = start + (end - start) / 2;
            }
            let guard = Arc::new(Active::new(inner.clone()));
            let s = futures_util::stream::unfold(
                (inner.clone(), start, stop, guard),
                |(inner, pos, stop, guard)| async move {
                    if inner.faults.stall {
                        std::future::pending::<()>().await;
                    }
                    if pos >= stop {
                        return None;
                    }
                    let next = (pos + MEMORY_SOURCE_CHUNK).min(stop);
                    let mut chunk = inner.content[pos..next].to_vec();
                    if inner.faults.corrupt {
                        chunk[0] ^= 0xff;
                    }
                    let chunk = Bytes::from(chunk);
                    if let Some(rate) = inner.faults.bytes_per_sec {
                        let wait = {
                            let mut b = inner.budget.lock().await;
                            let now = tokio::time::Instant::now();
                            let at = (*b).max(now) + Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                            *b = at;
                            at
                        };
                        tokio::time::sleep_until(wait).await;
                    }
                    inner.served.fetch_add(chunk.len() as u64, Relaxed);
                    Some((Ok(chunk), (inner, next, stop, guard)))
                },
            );
            let s: ByteStream = Box::pin(s);
            Ok(s)
        })
    }
}
