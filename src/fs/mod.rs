//! Filesystem semantics, independent of fuser: inodes, lookup, attributes, directories,
//! open handles and reads. `crate::fuse` is a thin adapter over [`AnnexFs`].
//!
//! Design:
//! - The namespace (see [`crate::annex::namespace`]) is an immutable snapshot behind an `Arc`;
//!   a live working-tree view swaps in a new snapshot when the index changes.
//! - An inode stands for a path *with a given identity* (a directory, an annexed key, a plain
//!   file's content, a symlink target). When the file at a path changes (another key after
//!   `git pull`), it gets a new inode, and the old one answers ENOENT. So an inode's attributes
//!   and data never change, and long attribute TTLs and the kernel page cache
//!   (`FOPEN_KEEP_CACHE`) can never show stale bytes.
//! - Except for a key whose name has no size (URL keys, `addurl --relaxed`, old WORM keys):
//!   its size is learnt (a local copy, else [`Holders::learn_size`] on `lookup`/`getattr`,
//!   bounded in time; `readdir` uses only what is known) and may change from unknown to
//!   the real size, so its attributes are [`Attr::volatile`] (the adapter gives them TTL 0
//!   and never keeps its pages); while its size is unknown `stat` shows the bytes of it
//!   received so far ([`Holders::size_so_far`]) and it is opened with direct I/O and read to
//!   its real end ([`AnnexFs::size_unknown`]).
//! - Metadata operations never do I/O on content; `read` does, and is called by the adapter on
//!   a worker thread, so a slow disk never blocks other requests.
//!
//! Lock order: `ns` → `inodes` → `handles` → a handle's `reader`. `ns` is never held while a
//! new namespace is built.

pub mod error;
pub mod holders;
mod inodes;
pub mod nested;

pub use error::FsError;
pub use holders::{Holders, LocalHolders, Opened};
use inodes::{InodeTable, ident_of};
pub use nested::{Gitlink, MountFs, Subtrees};

use crate::annex::namespace::{BlobClassifier, EntryKind, Namespace, NodeId, PlainContent, ROOT};
use crate::annex::{Annex, Key};
use crate::source::{LocalFile, Memory};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// The root directory's inode number (FUSE's convention).
pub const ROOT_INO: u64 = 1;

/// Extended attribute: the annex key of a file.
pub const XATTR_KEY: &str = "user.annexfs.key";
/// Extended attribute: how many bytes of the content are available locally.
pub const XATTR_PRESENT: &str = "user.annexfs.present";

/// What the mount shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The working tree of a non-bare repository, followed live through its index.
    Worktree,
    /// The tree of a commit (`--ref`, or a bare repository's HEAD).
    Ref(String),
}

/// File types as the kernel sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// Attributes of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
    /// The attributes may change (a key without a size, whose size is learnt): not to be
    /// cached by the kernel.
    pub volatile: bool,
}

/// Where an open file's bytes come from.
enum Content {
    Annexed(Key),
    Plain(PlainContent),
}

/// An open file.
struct Handle {
    /// Path in the repository, for log lines.
    file: String,
    content: Content,
    reader: Mutex<Option<Opened>>,
}

/// Mount-wide settings of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
}

/// The filesystem core.
pub struct AnnexFs {
    annex: Arc<Annex>,
    view: View,
    /// Repository handle for the index and plain blobs (git2 handles are not `Sync`).
    repo: Mutex<git2::Repository>,
    index_path: PathBuf,
    index_stamp: Mutex<Option<(SystemTime, u64, u64)>>,
    ns: RwLock<Arc<Shown>>,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    cfg: FsConfig,
    /// Where annexed content is read from, as the mount assembled it.
    holders: Arc<dyn Holders>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic elsewhere does not make
    // the data unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The namespace shown, with the inode numbers its nodes were given so far (0: none yet), so
/// that listing a directory again does not look its entries up in the inode table (a hash
/// and a few cache misses each, most of what a warm `find` costs the daemon). A node's number
/// never changes within a namespace: its path and identity are the namespace's.
struct Shown {
    ns: Arc<Namespace>,
    inos: Box<[AtomicU64]>,
}

impl Shown {
    fn new(ns: Arc<Namespace>) -> Shown {
        let inos = (0..ns.len()).map(|_| AtomicU64::new(0)).collect();
        Shown { ns, inos }
    }
}

impl std::ops::Deref for Shown {
    type Target = Namespace;
    fn deref(&self) -> &Namespace {
        &self.ns
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len(), md.ino()))
}

/// Classifies a new namespace's symlinks in the background (a look-up classifies its own
/// entry at once if it comes first), so that a `find` or `ls -l` soon after a mount or a
/// rebuild finds them ready. Stops when the namespace has been replaced.
fn classify_in_background(ns: &Arc<Namespace>) {
    if !ns.has_unclassified() {
        return;
    }
    let ns = ns.clone();
    let spawned = std::thread::Builder::new().name("annexfs-classify".into()).spawn(move || {
        ns.classify_all(&|| Arc::strong_count(&ns) <= 1);
    });
    if let Err(e) = spawned {
        tracing::warn!("no background classification of the symlinks ({e}): each is read when first looked up");
    }
}

impl AnnexFs {
    /// Builds the filesystem for `annex` with the given view.
    pub fn new(annex: Arc<Annex>, view: View, cfg: FsConfig) -> Result<AnnexFs, FsError> {
        let repo = match (&view, &annex.workdir) {
            (View::Worktree, Some(w)) => git2::Repository::open(w)?,
            _ => git2::Repository::open_bare(&annex.gitdir)?,
        };
        let index_path = repo.path().join("index");
        let fs = AnnexFs {
            view,
            repo: Mutex::new(repo),
            index_stamp: Mutex::new(stamp_of(&index_path)),
            index_path,
            ns: RwLock::new(Arc::new(Shown::new(Arc::new(Namespace::empty(SystemTime::UNIX_EPOCH))))),
            inodes: Mutex::new(InodeTable::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cfg,
            holders: Arc::new(LocalHolders { annex: annex.clone() }),
            annex,
        };
        let ns = Arc::new(fs.build_namespace()?);
        classify_in_background(&ns);
        *fs.ns.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Shown::new(ns));
        Ok(fs)
    }

    /// Reads annexed content through `holders` (by default, local copies only).
    pub fn with_holders(mut self, holders: Arc<dyn Holders>) -> AnnexFs {
        self.holders = holders;
        self
    }

    /// The view this filesystem shows.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The repository.
    pub fn annex(&self) -> &Arc<Annex> {
        &self.annex
    }

    fn build_namespace(&self) -> Result<Namespace, FsError> {
        let repo = lock(&self.repo);
        // What the current namespace knows is not read again; the classifier goes with the
        // build (kept, it would hold an entry per file besides the namespace).
        let mut cls = BlobClassifier::seeded(&self.namespace());
        match &self.view {
            View::Worktree => {
                let workdir = self.annex.workdir.as_deref().ok_or(FsError::NotDir)?;
                Ok(Namespace::from_index(&repo, workdir, &mut cls)?)
            }
            View::Ref(rev) => {
                let commit = repo.revparse_single(rev)?.peel_to_commit()?;
                let secs = u64::try_from(commit.time().seconds()).unwrap_or(0);
                let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                Ok(Namespace::from_tree(&repo, commit.tree_id(), mtime, &mut cls)?)
            }
        }
    }

    /// Follows the repository: rebuilds the working-tree namespace when the index changed, and
    /// refreshes the git-annex branch view. Returns true if the namespace changed.
    pub fn refresh(&self) -> Result<bool, FsError> {
        if let Err(e) = self.annex.branch.refresh() {
            tracing::warn!("refresh the git-annex branch: {e}");
        }
        if self.view != View::Worktree {
            return Ok(false);
        }
        let stamp = stamp_of(&self.index_path);
        if *lock(&self.index_stamp) == stamp {
            return Ok(false);
        }
        let ns = Arc::new(self.build_namespace()?);
        classify_in_background(&ns);
        *self.ns.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Shown::new(ns));
        *lock(&self.index_stamp) = stamp;
        Ok(true)
    }

    fn namespace(&self) -> Arc<Shown> {
        self.ns.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The node an inode stands for, if it still has the same identity.
    fn resolve(&self, ino: u64) -> Result<(Arc<Shown>, NodeId, Vec<u8>), FsError> {
        let ns = self.namespace();
        let (path, ident) = lock(&self.inodes).get(ino).ok_or(FsError::StaleInode(ino))?;
        let id = ns.lookup(&path).ok_or(FsError::StaleInode(ino))?;
        let node = ns.node(id).ok_or(FsError::StaleInode(ino))?;
        let kind = ns.kind(id).ok_or(FsError::StaleInode(ino))?;
        if ident_of(kind, node.mtime) != ident {
            return Err(FsError::StaleInode(ino));
        }
        Ok((ns, id, path))
    }

    /// The gitlink (nested repository) directory `ino` stands for, if it is one: its path and
    /// the commit recorded for it.
    pub fn gitlink(&self, ino: u64) -> Option<(Vec<u8>, git2::Oid)> {
        let (ns, _, path) = self.resolve(ino).ok()?;
        Some((path.clone(), ns.gitlink(&path)?))
    }

    /// The attributes of a node; `learn`: the size of a key without one may be asked of its
    /// holders (briefly), else only what is known is used.
    fn attr_of(&self, ns: &Shown, id: NodeId, path: &[u8], learn: bool) -> Result<Attr, FsError> {
        self.attr_in(ns, id, path, Some(learn))
    }

    /// [`Self::attr_of`]; `learn` `None`: only the number and the type, for a plain listing
    /// (a file's size, which may mean reading the key, is left at 0).
    fn attr_in(&self, ns: &Shown, id: NodeId, path: &[u8], learn: Option<bool>) -> Result<Attr, FsError> {
        let node = ns.node(id).ok_or(FsError::NotFound)?;
        let node_kind = ns.kind(id).ok_or(FsError::NotFound)?;
        let ino = match ns.inos.get(id).map(|s| s.load(Ordering::Relaxed)) {
            Some(ino) if ino != 0 => ino,
            _ if path.is_empty() => ROOT_INO,
            slot => {
                let ino = lock(&self.inodes).ino(path, &ident_of(node_kind, node.mtime));
                if slot.is_some() {
                    ns.inos[id].store(ino, Ordering::Relaxed);
                }
                ino
            }
        };
        let mut volatile = false;
        let (kind, size, perm, nlink) = match (node_kind, learn) {
            (EntryKind::Dir, _) => (Kind::Dir, 0, 0o555, 2),
            (EntryKind::Annexed(_) | EntryKind::Plain { .. }, None) => (Kind::File, 0, 0o444, 1),
            (EntryKind::Annexed(key), Some(learn)) => {
                // A size no file can have (beyond i64) is not believed: the kernel would
                // refuse the attributes, and with them the whole entry.
                let size = match key.size().filter(|&s| i64::try_from(s).is_ok()) {
                    Some(s) => s,
                    None => {
                        volatile = true;
                        self.size_of_sizeless(key, learn).unwrap_or_else(|| self.holders.size_so_far(key))
                    }
                };
                (Kind::File, size, if node.exec { 0o555 } else { 0o444 }, 1)
            }
            (EntryKind::Plain { size, .. }, Some(_)) => (Kind::File, *size, if node.exec { 0o555 } else { 0o444 }, 1),
            (EntryKind::Symlink(t), _) => (Kind::Symlink, t.len() as u64, 0o777, 1),
        };
        Ok(Attr { ino, kind, size, perm, nlink, mtime: node.mtime, uid: self.cfg.uid, gid: self.cfg.gid, volatile })
    }

    /// The size of a key whose name has none: a local copy's, else what its holders know
    /// (learnt now if `learn`).
    fn size_of_sizeless(&self, key: &Key, learn: bool) -> Option<u64> {
        let s = self
            .local_size(key)
            .or_else(|| if learn { self.holders.learn_size(key) } else { self.holders.known_size(key) });
        s.filter(|&s| i64::try_from(s).is_ok())
    }

    /// Whether `ino` is annexed content whose size is not known (yet): it is opened with
    /// direct I/O and read to its real end.
    pub fn size_unknown(&self, ino: u64) -> bool {
        let Ok((ns, id, _)) = self.resolve(ino) else { return false };
        let Some(EntryKind::Annexed(key)) = ns.kind(id) else { return false };
        key.size().is_none() && self.size_of_sizeless(key, false).is_none()
    }

    fn local_size(&self, key: &Key) -> Option<u64> {
        let p = self.annex.local_object(key)?;
        std::fs::metadata(p).ok().map(|m| m.len())
    }

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let (ns, dir, mut path) = self.resolve(parent)?;
        if !matches!(ns.kind(dir), Some(EntryKind::Dir)) {
            return Err(FsError::NotDir);
        }
        let child = ns.child(dir, name).ok_or(FsError::NotFound)?;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        self.attr_of(&ns, child, &path, true)
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let (ns, id, path) = self.resolve(ino)?;
        self.attr_of(&ns, id, &path, true)
    }

    /// Lists directory `ino` from position `offset` (0 is `.`, 1 is `..`, then the children
    /// in name order), calling `add(name, attributes, next offset)` until it returns true (the
    /// reply buffer is full). Attributes are computed only for the entries handed out, so
    /// listing a large directory in many buffers stays linear. `attrs` false: a plain listing,
    /// only each entry's number and type are meant (files' sizes are left at 0).
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        attrs: bool,
        mut add: impl FnMut(&OsStr, &Attr, u64) -> bool,
    ) -> Result<(), FsError> {
        let (ns, dir, path) = self.resolve(ino)?;
        if !matches!(ns.kind(dir), Some(EntryKind::Dir)) {
            return Err(FsError::NotDir);
        }
        if offset == 0 && add(OsStr::new("."), &self.attr_of(&ns, dir, &path, false)?, 1) {
            return Ok(());
        }
        if offset <= 1 {
            let ppath = match path.iter().rposition(|&c| c == b'/') {
                Some(i) => path[..i].to_vec(),
                None => Vec::new(),
            };
            let pid = ns.lookup(&ppath).unwrap_or(ROOT);
            if add(OsStr::new(".."), &self.attr_of(&ns, pid, &ppath, false)?, 2) {
                return Ok(());
            }
        }
        let skip = usize::try_from(offset.saturating_sub(2)).unwrap_or(usize::MAX);
        // One buffer for the children's paths (needed only for a child without a number yet).
        let mut cpath = path;
        if !cpath.is_empty() {
            cpath.push(b'/');
        }
        let base = cpath.len();
        let learn = attrs.then_some(false);
        for (i, (name, child)) in ns.children_from(dir, skip) {
            cpath.truncate(base);
            cpath.extend_from_slice(name.as_bytes());
            if add(name, &self.attr_in(&ns, child, &cpath, learn)?, i as u64 + 3) {
                break;
            }
        }
        Ok(())
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (ns, id, _) = self.resolve(ino)?;
        match ns.kind(id).ok_or(FsError::NotFound)? {
            EntryKind::Symlink(t) => Ok(t.clone()),
            _ => Err(FsError::NotSymlink),
        }
    }

    /// Opens a file for reading. Returns the handle.
    pub fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let (ns, id, path) = self.resolve(ino)?;
        let content = match ns.kind(id).ok_or(FsError::NotFound)? {
            EntryKind::Dir => return Err(FsError::IsDir),
            EntryKind::Symlink(_) => return Err(FsError::NotFound),
            EntryKind::Annexed(key) => Content::Annexed(Key::clone(key)),
            EntryKind::Plain { content, .. } => Content::Plain(content.clone()),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle { file: String::from_utf8_lossy(&path).into_owned(), content, reader: Mutex::new(None) };
        lock(&self.handles).insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// The one local file holding the whole content of annexed `ino`, opened and checked (a
    /// regular file of the key's size, not a symlink): the repository's own object, else a
    /// whole object of another local holder (a clone, a bare repository, an unchunked
    /// directory remote). For kernel passthrough, which then reads that file directly.
    pub fn whole_local(&self, ino: u64) -> Option<LocalFile> {
        let (ns, id, _) = self.resolve(ino).ok()?;
        let EntryKind::Annexed(key) = ns.kind(id)? else { return None };
        if let Some(p) = self.annex.present_object(key)
            && let Ok(f) = LocalFile::open(&p, key.size())
        {
            return Some(f);
        }
        self.holders.whole_local(key)
    }

    /// Whether the kernel may keep an inode's pages across opens. Not for content that may be
    /// served before it is verified (network content in stream mode without a manifest): the
    /// whole-key check may find a liar and repair the cache, and a later open must then read
    /// the repaired bytes.
    pub fn keep_cache(&self, ino: u64) -> bool {
        let Ok((ns, id, _)) = self.resolve(ino) else { return true };
        let Some(EntryKind::Annexed(key)) = ns.kind(id) else { return true };
        // A key without a size: its size (and so its pages) may change from one open to the next.
        if key.size().is_none() {
            return false;
        }
        self.annex.present_object(key).is_some() || self.holders.keep_cache(key)
    }

    /// The annexed files open now: (path, key), one entry per path.
    pub fn open_files(&self) -> Vec<(String, Key)> {
        let mut v: Vec<(String, Key)> = lock(&self.handles)
            .values()
            .filter_map(|h| match &h.content {
                Content::Annexed(k) => Some((h.file.clone(), k.clone())),
                Content::Plain(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// Reads up to `size` bytes at `offset`. It may wait on the network: the adapter calls it
    /// on the blocking pool, never on the FUSE threads.
    #[tracing::instrument(level = "trace", skip(self))]
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let handle = lock(&self.handles).get(&fh).cloned().ok_or(FsError::BadHandle(fh))?;
        let mut failed: Vec<String> = Vec::new();
        // A source can fail mid-read (a drop, a disk going away): the next holder is tried.
        loop {
            let reader = self.reader(&handle, &failed).await?;
            match reader.read(offset, size).await {
                Ok(data) => return Ok(data),
                Err(e) => {
                    let what = reader.describe();
                    tracing::warn!("{}: read at {offset} from {what} failed: {e}; trying other holders", handle.file);
                    *lock(&handle.reader) = None;
                    if matches!(handle.content, Content::Plain(_)) || failed.contains(&what) {
                        return Err(e);
                    }
                    failed.push(what);
                }
            }
        }
    }

    async fn reader(&self, handle: &Handle, skip: &[String]) -> Result<Opened, FsError> {
        if let Some(r) = lock(&handle.reader).as_ref() {
            return Ok(r.clone());
        }
        let r = match &handle.content {
            Content::Plain(PlainContent::Worktree(p)) => Opened::Local(Arc::new(LocalFile::open(p, None)?)),
            Content::Plain(PlainContent::Blob(oid)) => {
                let bytes = {
                    let repo = lock(&self.repo);
                    repo.find_blob(*oid)?.content().to_vec()
                };
                Opened::Local(Arc::new(Memory { bytes, what: format!("git blob {oid}") }))
            }
            Content::Annexed(key) => {
                let r = self.holders.open(&handle.file, key, skip).await?;
                tracing::debug!("{}: reading {key} from {}", handle.file, r.describe());
                r
            }
        };
        // Two reads racing to open keep the first reader, so that both use one.
        Ok(lock(&handle.reader).get_or_insert(r).clone())
    }

    /// An extended attribute's value.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        if !name.as_bytes().starts_with(b"user.") {
            return Err(FsError::XattrNamespace);
        }
        let (ns, id, _) = self.resolve(ino)?;
        let EntryKind::Annexed(key) = ns.kind(id).ok_or(FsError::NotFound)? else {
            return Err(FsError::NoAttr);
        };
        match name.to_str() {
            Some(XATTR_KEY) => Ok(key.to_bytes()),
            Some(XATTR_PRESENT) => {
                let cached = self.holders.cached_bytes(key);
                Ok(self.local_size(key).unwrap_or(cached).to_string().into_bytes())
            }
            _ => Err(FsError::NoAttr),
        }
    }

    /// The names of the extended attributes, NUL-terminated each.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (ns, id, _) = self.resolve(ino)?;
        Ok(match ns.kind(id) {
            Some(EntryKind::Annexed(_)) => format!("{XATTR_KEY}\0{XATTR_PRESENT}\0").into_bytes(),
            _ => Vec::new(),
        })
    }

    /// Number of inodes in the current namespace (for statfs).
    pub fn entry_count(&self) -> u64 {
        self.namespace().len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
        assert_eq!(FsError::Unavailable { key: "k".into(), why: "w".into() }.errno(), libc::EIO);
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
    }
}
