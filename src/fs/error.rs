//! Errors of filesystem operations and their one errno mapping.

use crate::fetch::ReadError;
use crate::source::SourceError;

/// An error answered to a filesystem request.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("inode {0} is unknown or no longer in the namespace")]
    StaleInode(u64),
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symlink")]
    NotSymlink,
    #[error("the filesystem is read-only")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttr,
    /// An extended attribute namespace annexfs does not have (security.*, system.*, …).
    #[error("attribute namespace not supported")]
    XattrNamespace,
    #[error("attribute value does not fit the buffer")]
    Range,
    /// No holder of the content could be read; the log line names them.
    #[error("content of {key} is not available: {why}")]
    Unavailable { key: String, why: String },
    #[error("read {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading through the piece cache failed (the fetcher's log lines say what each source
    /// did).
    #[error("read {what}: {source}")]
    Fetch {
        what: String,
        #[source]
        source: ReadError,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl FsError {
    /// The errno answered to the kernel. Exhaustive on purpose: a new variant must choose.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::StaleInode(_) => libc::ENOENT,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotSymlink => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttr => libc::ENODATA,
            // EOPNOTSUPP (not ENODATA) lets tools like ls remember, per filesystem, that there
            // are no ACLs or security labels, instead of asking for every file.
            FsError::XattrNamespace => libc::EOPNOTSUPP,
            FsError::Range => libc::ERANGE,
            FsError::Unavailable { .. } => libc::EIO,
            FsError::Io { .. } => libc::EIO,
            // A full cache disk is the one fetch failure the reader can act on.
            FsError::Fetch { source, .. } if source.is_no_space() => libc::ENOSPC,
            FsError::Fetch { .. } => libc::EIO,
            FsError::Source(_) => libc::EIO,
            FsError::Git(_) => libc::EIO,
        }
    }
}
