//! How fs reaches the bytes of annexed content.
//!
//! fs decides nothing about where content lives. The mount hands it a [`Holders`] that it
//! assembled above this layer (the repository's own annex, its remotes, the swarm's peers,
//! piece manifests); fs opens through it and reads what it returns. [`LocalHolders`] is the
//! plain case: local copies only, read in place.
//!
//! An [`Opened`] reader is either a local copy (a blocking `pread`, cheap and bounded by the
//! disk), a fetch through the piece cache (awaited: it may wait on the network), or, for a key
//! whose size is not known yet, its download, read to the object's real end. Both are
//! read from [`crate::fs::AnnexFs::read`], which runs inside the one async boundary in
//! `crate::fuse` (a request on the blocking pool).

use super::FsError;
use crate::annex::{Annex, Key};
use crate::fetch::KeyFetch;
use crate::source::discover::discover;
use crate::source::remote::BoxFuture;
use crate::source::sizeless::WholeStream;
use crate::source::{RangeRead, open_location};
use std::sync::Arc;

/// A readable copy of one key's content.
#[derive(Clone)]
pub enum Opened {
    /// A copy read in place from a local disk.
    Local(Arc<dyn RangeRead>),
    /// The piece cache, filled by the fetcher from the key's holders.
    Fetched {
        kf: Arc<KeyFetch>,
        /// For log lines and to skip it when it failed.
        what: String,
    },
    /// A key of unknown size, read from its download to its end.
    Stream(Arc<WholeStream>),
}

impl Opened {
    /// Where the bytes come from.
    pub fn describe(&self) -> String {
        match self {
            Opened::Local(r) => r.describe(),
            Opened::Fetched { what, .. } => what.clone(),
            Opened::Stream(w) => w.describe(),
        }
    }

    /// Reads up to `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        match self {
            Opened::Local(r) => {
                let mut buf = vec![0u8; len as usize];
                let n = r.read_at(&mut buf, offset).map_err(|source| FsError::Io { what: r.describe(), source })?;
                buf.truncate(n);
                Ok(buf)
            }
            Opened::Fetched { kf, what } => {
                kf.read(offset, u64::from(len)).await.map_err(|source| FsError::Fetch { what: what.clone(), source })
            }
            Opened::Stream(w) => w
                .read(offset, len)
                .await
                .map_err(|e| FsError::Unavailable { key: w.key().to_string(), why: e.to_string() }),
        }
    }
}

/// The holders of annexed content, as the mount assembled them.
pub trait Holders: Send + Sync {
    /// A readable copy of `key` (the content of `file`), skipping the readers described in
    /// `skip` (they failed for this handle already). `Unavailable` names every holder and why.
    fn open<'a>(&'a self, file: &'a str, key: &'a Key, skip: &'a [String]) -> BoxFuture<'a, Result<Opened, FsError>>;

    /// Whether the kernel may keep `key`'s pages across opens: not while its bytes may still
    /// be repaired (served before they were verified).
    fn keep_cache(&self, _key: &Key) -> bool {
        true
    }

    /// Bytes of `key` held in a cache beside the repository (for `user.annexfs.present`).
    fn cached_bytes(&self, _key: &Key) -> u64 {
        0
    }

    /// The size of a key whose name has none (URL keys, `addurl --relaxed`, old WORM keys),
    /// learnt from its holders if it can be; may wait on the network, but only briefly
    /// (bounded, and cached by the implementation).
    fn learn_size(&self, _key: &Key) -> Option<u64> {
        None
    }

    /// The size of such a key if already learnt; never waits.
    fn known_size(&self, _key: &Key) -> Option<u64> {
        None
    }

    /// For such a key whose size is not known yet: the bytes of it received so far (a lower
    /// bound `stat` shows rather than 0); never waits.
    fn size_so_far(&self, _key: &Key) -> u64 {
        0
    }
}

/// Local copies only: the repository's own annex, local clones and bare repositories,
/// directory special remotes; network holders are reported as not read.
pub struct LocalHolders {
    pub annex: Arc<Annex>,
}

/// Opens the first local copy of `key` not in `skip`; `tried` collects why the others failed.
pub fn open_local(
    locals: &[(String, crate::annex::remotes::Location)],
    key: &Key,
    skip: &[String],
    tried: &mut Vec<String>,
) -> Option<Arc<dyn RangeRead>> {
    for (name, loc) in locals {
        match open_location(loc, key.size()) {
            Ok(r) if skip.contains(&r.describe()) => {}
            Ok(r) => return Some(Arc::from(r)),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    None
}

/// The error for content no holder could serve, logged once with every holder and why.
pub fn unavailable(file: &str, key: &Key, mut tried: Vec<String>, any_holder: bool) -> FsError {
    if !any_holder {
        tried.push("no repository is known to hold it".into());
    }
    let why = tried.join("; ");
    tracing::error!("{file}: cannot read {key}: {why}");
    FsError::Unavailable { key: key.to_string_lossy(), why }
}

impl Holders for LocalHolders {
    fn open<'a>(&'a self, file: &'a str, key: &'a Key, skip: &'a [String]) -> BoxFuture<'a, Result<Opened, FsError>> {
        Box::pin(async move {
            let found = discover(&self.annex, key, None)
                .map_err(|e| FsError::Unavailable { key: key.to_string_lossy(), why: e.to_string() })?;
            let mut tried = found.unusable;
            match open_local(&found.local, key, skip, &mut tried) {
                Some(r) => Ok(Opened::Local(r)),
                None => Err(unavailable(file, key, tried, found.any_holder)),
            }
        })
    }
}
