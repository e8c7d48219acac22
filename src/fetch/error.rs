//! The fetcher's errors: what a reader sees ([`ReadError`]), why a whole-key verification
//! could not conclude ([`VerifyError`]), why blame could not settle a mismatch
//! ([`ResolveError`]), and a verify mode that is not one.
//!
//! Errors of the layers below are carried, not flattened to text: a cache error stays a
//! [`CacheError`] (so a full disk is recognised by its kind, [`ReadError::is_no_space`]), a
//! source's stays a [`FetchError`]. `ReadError` is `Clone` (one failure answers every reader
//! waiting on it), hence the `Arc`s around errors that are not.

use crate::pieces::CacheError;
use crate::source::remote::FetchError;
use std::sync::Arc;

/// Errors a reader sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// `why`: what each source did (a report for the log, not an error of its own).
    #[error("no source could serve {key}: {why}")]
    NoSource { key: String, why: String },
    #[error("nothing of {key} arrived for {secs} s (sources: {why})")]
    Deadline { key: String, secs: u64, why: String },
    #[error("cache: {0}")]
    Cache(Arc<CacheError>),
    #[error("cache: pieces of {key} keep failing their check in the cache")]
    CacheKeepsFailing { key: String },
    /// The key's content was quarantined: the reason recorded when it was.
    #[error("{0}")]
    Poisoned(String),
    #[error("{key} cannot be served in strict mode: {why}")]
    Strict { key: String, why: StrictRefusal },
    /// The whole-key verification a strict reader waits for could not run to its end.
    #[error("{key}: {source}")]
    Verify { key: String, source: Arc<VerifyError> },
}

impl ReadError {
    /// Whether the cache's disk is full (the reader gets ENOSPC rather than EIO).
    pub fn is_no_space(&self) -> bool {
        matches!(self, ReadError::Cache(e) if e.is_no_space())
            || matches!(self, ReadError::Verify { source, .. } if source.is_no_space())
    }
}

impl From<CacheError> for ReadError {
    fn from(e: CacheError) -> ReadError {
        ReadError::Cache(Arc::new(e))
    }
}

/// Why strict mode cannot serve a key that has no piece manifest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StrictRefusal {
    #[error("its backend {backend} has no hash to verify it with, and it has no piece manifest")]
    NoHash { backend: String },
    #[error(
        "without a piece manifest the whole key ({size} bytes) must be in the cache first, and the cache \
         holds {limit} bytes (raise cache_size, or publish a manifest with `annexfs index`)"
    )]
    TooLarge { size: u64, limit: u64 },
}

/// Why a whole-key verification did not conclude (neither a match nor a mismatch).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("whole-key verification: write the cache record first: {0}")]
    Persist(#[source] CacheError),
    #[error("whole-key verification: read the cached content: {0}")]
    Io(#[source] std::io::Error),
    #[error("whole-key verification: not verifiable: {0}")]
    Unverifiable(String),
    #[error("whole-key verification: record that it matched: {0}")]
    Record(#[source] CacheError),
    #[error("whole-key verification stopped: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl VerifyError {
    pub fn is_no_space(&self) -> bool {
        match self {
            VerifyError::Persist(e) | VerifyError::Record(e) => e.is_no_space(),
            VerifyError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            VerifyError::Unverifiable(_) | VerifyError::Task(_) => false,
        }
    }
}

/// Why a whole-key mismatch was not resolved by comparing pieces across sources.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("every piece matched the piece manifest, so the manifest itself is wrong")]
    ManifestWrong,
    #[error("{replaced} pieces replaced, still no match{}", fmt_doubts(.doubts))]
    NoMatch { replaced: usize, doubts: Vec<Doubt> },
    #[error("piece {piece}: {source}")]
    Fetch { piece: usize, source: FetchError },
    #[error("piece {piece}: {source}")]
    Cache { piece: usize, source: CacheError },
    #[error("persist the cache before checking: {0}")]
    Persist(#[source] CacheError),
    #[error("checking the whole key stopped: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A piece blame could not settle.
#[derive(Debug, thiserror::Error)]
pub enum Doubt {
    #[error("piece {0}: no other source answered")]
    NoOtherSource(usize),
    #[error("piece {piece}: {a} and {b} disagree with each other")]
    Disagree { piece: usize, a: String, b: String },
    #[error("piece {piece}: {source}")]
    Cache { piece: usize, source: CacheError },
}

fn fmt_doubts(d: &[Doubt]) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!("; {}", d.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    }
}

/// A verify mode other than `stream` or `strict`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verify mode {0:?}: expected stream or strict")]
pub struct UnknownVerifyMode(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_is_recognised_by_kind_not_text() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e: ReadError = CacheError::Io { path: "/c".into(), source: full }.into();
        assert!(e.is_no_space());
        assert!(ReadError::from(CacheError::Full { used: 2, limit: 1 }).is_no_space());
        // Text that merely mentions a full disk is not one.
        let other = std::io::Error::other("No space left on device");
        assert!(!ReadError::from(CacheError::Io { path: "/c".into(), source: other }).is_no_space());
        assert!(!ReadError::Poisoned("No space".into()).is_no_space());
        let v = VerifyError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(ReadError::Verify { key: "k".into(), source: Arc::new(v) }.is_no_space());
    }
}
