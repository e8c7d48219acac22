//! The files of a repository as a tree of entries: directories, annexed files (key and size
//! from the key), plain files and symlinks.
//!
//! Two views:
//! - [`Namespace::from_tree`]: the tree of any commit (a `--ref`, or a bare repository's
//!   HEAD), read with git2; every mtime is the commit's.
//! - [`Namespace::from_index`]: the working tree of a non-bare repository, as git knows it: the
//!   entries of the index (so unlocked files are recognised by their staged pointer whether or
//!   not their content is present), with mtimes and plain-file sizes from the working tree.
//!
//! Classifying an entry needs its blob (symlink target or pointer file), so results are
//! memoised per blob id in a [`BlobClassifier`]: blobs never change, and a rebuilt namespace
//! (seeded with the previous one's, [`BlobClassifier::seeded`]) reads only the new blobs.
//!
//! Scale (a million files): a node is small (its name boxed, its children a sorted `Vec` of
//! ids, an annexed key shared by `Arc` with the classifier and the filesystem's inodes); in
//! the working-tree view the symlinks' blobs (locked files, most of a large annex) are not
//! read while the namespace is built: [`Namespace::kind`] reads one when first asked for,
//! and [`Namespace::classify_all`] reads the rest on all cores (the mount runs it in the
//! background). A symlink's mtime is the one its index entry records, so the build makes no
//! system call per link.
//!
//! Names that git's fsck only warns about (`.`, `..`, `.git` and its case/NTFS/HFS look-alikes,
//! names with `/` or NUL, empty names) are dropped, with one warning per build naming them.

mod classify;

use super::key::Key;
pub use classify::BlobClassifier;
use classify::{Classified, classified_kind, classify_blob};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// Index of a node in a [`Namespace`]; the root is [`ROOT`].
pub type NodeId = usize;
pub const ROOT: NodeId = 0;

/// Where a plain file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainContent {
    /// A git blob (ref view, or a file missing from the working tree).
    Blob(git2::Oid),
    /// A file of the working tree.
    Worktree(PathBuf),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// An annexed file (locked or unlocked). The key is shared with the blob classifier and
    /// the filesystem's inode table, which would otherwise hold copies of it per file.
    Annexed(Arc<Key>),
    /// A plain file stored in git.
    Plain {
        size: u64,
        content: PlainContent,
    },
    /// A symlink that is not an annex link; the target is never followed.
    Symlink(Vec<u8>),
}

/// One entry of a [`Namespace`]. Kept small: a namespace has a node per file.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: Box<OsStr>,
    pub parent: NodeId,
    /// What the entry is ([`Namespace::kind`]): set when built, or, for a symlink of the
    /// working-tree view, when first asked for (its blob read then).
    kind: OnceLock<EntryKind>,
    pub exec: bool,
    /// A symlink in git (mode 120000): its blob is a link target, not a file's content.
    pub link: bool,
    pub mtime: SystemTime,
    /// The blob the entry was classified from (zero for directories): a rebuild reuses the
    /// classification of an unchanged entry.
    pub blob: git2::Oid,
    /// Children of a directory, sorted by name (see [`Namespace::child`]).
    pub children: Vec<NodeId>,
}

/// A repository's tree of entries.
#[derive(Debug)]
pub struct Namespace {
    nodes: Vec<Node>,
    /// Where the blobs of symlinks not classified yet are read.
    lazy: Option<Lazy>,
    /// Names dropped by the safety rules, as full paths (for tests and the warning).
    pub dropped: Vec<Vec<u8>>,
    /// Gitlinks (submodules, DataLad subdatasets), shown as directories: path → the commit
    /// the tree records.
    gitlinks: BTreeMap<Vec<u8>, git2::Oid>,
}

/// The repository the blobs of a namespace's unclassified symlinks are read from.
struct Lazy {
    gitdir: PathBuf,
    repo: Mutex<git2::Repository>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lazy({})", self.gitdir.display())
    }
}

/// Whether git's fsck would warn about this path component; such names are never shown.
pub fn is_unsafe_name(name: &[u8]) -> bool {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return true;
    }
    // NTFS: trailing dots and spaces are ignored, and "git~1" is the short name of ".git".
    let trimmed: &[u8] = {
        let mut end = name.len();
        while end > 0 && matches!(name[end - 1], b'.' | b' ') {
            end -= 1;
        }
        &name[..end]
    };
    if trimmed.eq_ignore_ascii_case(b".git") || trimmed.eq_ignore_ascii_case(b"git~1") {
        return true;
    }
    if name.len() >= 5 && name[..5].eq_ignore_ascii_case(b".git:")
        || name.eq_ignore_ascii_case(b".git::$index_allocation")
    {
        return true;
    }
    // HFS+: ignorable Unicode code points are dropped when comparing names. An ASCII name
    // has none (and ".git" itself is refused above): no folded copy for each of them.
    if name.is_ascii() {
        return false;
    }
    if let Ok(s) = std::str::from_utf8(name) {
        let folded: String = s
            .chars()
            .filter(|c| !matches!(*c as u32, 0x200C..=0x200F | 0x202A..=0x202E | 0x206A..=0x206F | 0xFEFF))
            .collect();
        if folded.eq_ignore_ascii_case(".git") {
            return true;
        }
    }
    false
}

const ZERO: git2::Oid = git2::Oid::ZERO_SHA1;

fn dir_node(name: &OsStr, parent: NodeId, mtime: SystemTime) -> Node {
    Node {
        name: name.into(),
        parent,
        kind: OnceLock::from(EntryKind::Dir),
        exec: true,
        link: false,
        mtime,
        blob: ZERO,
        children: Vec::new(),
    }
}

fn warn_dropped(dropped: &[Vec<u8>]) {
    if dropped.is_empty() {
        return;
    }
    let shown: Vec<String> = dropped.iter().take(5).map(|n| format!("{:?}", String::from_utf8_lossy(n))).collect();
    tracing::warn!(
        count = dropped.len(),
        "not showing {} entr{} with names git considers unsafe: {}{}",
        dropped.len(),
        if dropped.len() == 1 { "y" } else { "ies" },
        shown.join(", "),
        if dropped.len() > 5 { ", …" } else { "" }
    );
}

const MODE_TREE: i32 = 0o040000;
const MODE_LINK: i32 = 0o120000;
const MODE_COMMIT: i32 = 0o160000;
const MODE_EXEC: i32 = 0o100755;

impl Namespace {
    /// A namespace with only an empty root directory.
    pub fn empty(root_mtime: SystemTime) -> Namespace {
        Namespace {
            nodes: vec![dir_node(OsStr::new(""), ROOT, root_mtime)],
            lazy: None,
            dropped: Vec::new(),
            gitlinks: BTreeMap::new(),
        }
    }

    /// The commit recorded for the gitlink at `path`, if that directory is one.
    pub fn gitlink(&self, path: &[u8]) -> Option<git2::Oid> {
        self.gitlinks.get(path).copied()
    }

    /// Every gitlink: (path, recorded commit), in path order.
    pub fn gitlinks(&self) -> impl Iterator<Item = (&[u8], git2::Oid)> {
        self.gitlinks.iter().map(|(p, o)| (p.as_slice(), *o))
    }

    /// Records a gitlink inserted as a directory at `path`.
    fn note_gitlink(&mut self, inserted: bool, path: &[u8], mode: i32, oid: git2::Oid) {
        if inserted && mode == MODE_COMMIT {
            self.gitlinks.insert(path.to_vec(), oid);
        }
    }

    pub fn root(&self) -> NodeId {
        ROOT
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// What node `id` is; a symlink not classified yet has its blob read now.
    pub fn kind(&self, id: NodeId) -> Option<&EntryKind> {
        let n = self.nodes.get(id)?;
        Some(n.kind.get_or_init(|| self.classify_link(id, n.blob, None)))
    }

    /// Whether some symlinks are still to be classified.
    pub fn has_unclassified(&self) -> bool {
        self.lazy.is_some() && self.nodes.iter().any(|n| n.kind.get().is_none())
    }

    /// The kind of the symlink `id` with blob `oid`, read with `odb` or the namespace's own
    /// repository. A blob that cannot be read (a damaged repository) shows as a symlink
    /// without a target, with a warning.
    fn classify_link(&self, id: NodeId, oid: git2::Oid, odb: Option<&git2::Odb<'_>>) -> EntryKind {
        let read = |odb: &git2::Odb<'_>| classify_blob(odb, oid, true);
        let got = match (odb, &self.lazy) {
            (Some(odb), _) => read(odb),
            (None, Some(lazy)) => {
                let repo = lazy.repo.lock().unwrap_or_else(|p| p.into_inner());
                repo.odb().and_then(|odb| read(&odb))
            }
            (None, None) => Err(git2::Error::from_str("no repository to read it from")),
        };
        match got {
            Ok(c) => classified_kind(c, oid),
            Err(e) => {
                tracing::warn!("{}: cannot read its symlink blob {oid}: {e}", self.path_of(id).display());
                EntryKind::Symlink(Vec::new())
            }
        }
    }

    /// Classifies every symlink not classified yet, on all cores (each thread with its own
    /// repository handle), until `stop` says so (checked every few thousand entries).
    pub fn classify_all(&self, stop: &(dyn Fn() -> bool + Sync)) {
        let Some(lazy) = &self.lazy else { return };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        std::thread::scope(|scope| {
            for t in 0..threads {
                scope.spawn(move || {
                    let repo = git2::Repository::open_bare(&lazy.gitdir).ok();
                    let odb = repo.as_ref().and_then(|r| r.odb().ok());
                    for (i, n) in self.nodes.iter().enumerate().skip(t).step_by(threads) {
                        if i % 4096 < threads && stop() {
                            return;
                        }
                        if n.kind.get().is_none() {
                            let _ = n.kind.set(self.classify_link(i, n.blob, odb.as_ref()));
                        }
                    }
                });
            }
        });
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        let children = &self.nodes.get(dir)?.children;
        self.position(children, name).ok().map(|i| children[i])
    }

    /// Where `name` is (or would go) among `children`, sorted by name.
    fn position(&self, children: &[NodeId], name: &OsStr) -> Result<usize, usize> {
        // Entries are inserted in path order: the name is nearly always the last child (a
        // directory met again) or goes after it.
        if let Some(&last) = children.last() {
            match self.nodes[last].name.as_bytes().cmp(name.as_bytes()) {
                std::cmp::Ordering::Equal => return Ok(children.len() - 1),
                std::cmp::Ordering::Less => return Err(children.len()),
                std::cmp::Ordering::Greater => {}
            }
        }
        children.binary_search_by(|&c| self.nodes[c].name.as_bytes().cmp(name.as_bytes()))
    }

    /// The children of directory `dir` with their names, in name order.
    pub fn children(&self, dir: NodeId) -> impl Iterator<Item = (&OsStr, NodeId)> {
        self.nodes.get(dir).into_iter().flat_map(|n| n.children.iter().map(|&c| (&*self.nodes[c].name, c)))
    }

    /// The children of directory `dir` from the `skip`-th on, each with its position among
    /// them (the ones skipped are not read).
    pub fn children_from(&self, dir: NodeId, skip: usize) -> impl Iterator<Item = (usize, (&OsStr, NodeId))> {
        let children = self.nodes.get(dir).map_or(&[][..], |n| &n.children[..]);
        children.iter().enumerate().skip(skip).map(|(i, &c)| (i, (&*self.nodes[c].name, c)))
    }

    /// Looks up a `/`-separated path relative to the root.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = ROOT;
        for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".") {
            cur = self.child(cur, OsStr::from_bytes(comp))?;
        }
        Some(cur)
    }

    /// The path of a node relative to the root.
    pub fn path_of(&self, id: NodeId) -> PathBuf {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let Some(n) = self.nodes.get(cur) else { break };
            parts.push(&*n.name);
            cur = n.parent;
        }
        parts.iter().rev().collect()
    }

    /// Every node that is not a directory, with its path, in path order.
    pub fn files(&self) -> Vec<(PathBuf, NodeId)> {
        let mut out = Vec::new();
        let mut stack = vec![(PathBuf::new(), ROOT)];
        while let Some((p, id)) = stack.pop() {
            let Some(n) = self.nodes.get(id) else { continue };
            for &child in n.children.iter().rev() {
                let cp = p.join(&*self.nodes[child].name);
                // Not `kind`: an entry not classified yet is a symlink, never a directory.
                if matches!(self.nodes[child].kind.get(), Some(EntryKind::Dir)) {
                    stack.push((cp, child));
                } else {
                    out.push((cp, child));
                }
            }
        }
        out.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
        out
    }

    /// Inserts an entry at `path`, creating directories on the way. Returns false (and records
    /// the path as dropped) if a component is unsafe or a file is in the way.
    fn insert(
        &mut self,
        path: &[u8],
        kind: Option<EntryKind>,
        exec: bool,
        mtime: SystemTime,
        blob: (git2::Oid, bool),
        dir_mtime: &dyn Fn(&[u8]) -> SystemTime,
    ) -> bool {
        let comps: Vec<&[u8]> = path.split(|&c| c == b'/').collect();
        if comps.iter().any(|c| is_unsafe_name(c)) {
            self.dropped.push(path.to_vec());
            return false;
        }
        let mut cur = ROOT;
        let mut consumed = 0usize;
        for (i, comp) in comps.iter().enumerate() {
            consumed += comp.len() + usize::from(i > 0);
            let name = OsStr::from_bytes(comp);
            let last = i + 1 == comps.len();
            let at = self.position(&self.nodes[cur].children, name);
            match at.map(|i| self.nodes[cur].children[i]) {
                Ok(existing) if !last => {
                    if !matches!(self.nodes[existing].kind.get(), Some(EntryKind::Dir)) {
                        return false;
                    }
                    cur = existing;
                }
                Ok(_) => return false, // duplicate path (conflict stages): the first one stays
                Err(pos) => {
                    let id = self.nodes.len();
                    let node = if last {
                        let (blob, link) = blob;
                        let kind = kind.clone().map_or_else(OnceLock::new, OnceLock::from);
                        Node { name: name.into(), parent: cur, kind, exec, link, mtime, blob, children: Vec::new() }
                    } else {
                        dir_node(name, cur, dir_mtime(&path[..consumed]))
                    };
                    self.nodes.push(node);
                    // Entries come in path order, so this is nearly always an append.
                    self.nodes[cur].children.insert(pos, id);
                    cur = id;
                }
            }
        }
        true
    }

    /// The namespace of a git tree; every entry gets `mtime`.
    pub fn from_tree(
        repo: &git2::Repository,
        tree: git2::Oid,
        mtime: SystemTime,
        cls: &mut BlobClassifier,
    ) -> Result<Namespace, git2::Error> {
        let odb = repo.odb()?;
        let mut ns = Namespace::empty(mtime);
        // First walk the trees (cheap), then classify the blobs (in parallel), then insert.
        let mut entries: Vec<(Vec<u8>, i32, git2::Oid)> = Vec::new();
        let mut stack: Vec<(Vec<u8>, git2::Oid)> = vec![(Vec::new(), tree)];
        while let Some((prefix, tid)) = stack.pop() {
            let tree = repo.find_tree(tid)?;
            for e in tree.iter() {
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(e.name_bytes());
                if is_unsafe_name(e.name_bytes()) {
                    ns.dropped.push(path);
                    continue;
                }
                if e.filemode() == MODE_TREE {
                    stack.push((path.clone(), e.id()));
                }
                entries.push((path, e.filemode(), e.id()));
            }
        }
        let blobs: Vec<(git2::Oid, bool)> = entries
            .iter()
            .filter(|(_, mode, _)| *mode != MODE_TREE && *mode != MODE_COMMIT)
            .map(|(_, mode, oid)| (*oid, *mode == MODE_LINK))
            .collect();
        cls.prefetch(repo.path(), &blobs)?;
        for (path, mode, oid) in entries {
            let kind = match mode {
                MODE_TREE | MODE_COMMIT => EntryKind::Dir, // a submodule shows as an empty directory
                MODE_LINK => classified_kind(cls.classify(&odb, oid, true)?, oid),
                _ => classified_kind(cls.classify(&odb, oid, false)?, oid),
            };
            let blob = if mode == MODE_TREE || mode == MODE_COMMIT { ZERO } else { oid };
            let inserted =
                ns.insert(&path, Some(kind), mode == MODE_EXEC, mtime, (blob, mode == MODE_LINK), &|_| mtime);
            ns.note_gitlink(inserted, &path, mode, oid);
        }
        warn_dropped(&ns.dropped);
        Ok(ns)
    }

    /// The namespace of the working tree of a non-bare repository, from its index.
    pub fn from_index(
        repo: &git2::Repository,
        workdir: &Path,
        cls: &mut BlobClassifier,
    ) -> Result<Namespace, git2::Error> {
        let odb = repo.odb()?;
        // The index read on its own, not the repository's cached one: a million entries would
        // stay in memory with the repository handle. Opening it reads it (once: a second
        // `read` would hash and map every entry again).
        let index = git2::Index::open(&repo.path().join("index"))?;
        let lstat_mtime = |rel: &[u8]| -> Option<SystemTime> {
            std::fs::symlink_metadata(workdir.join(OsStr::from_bytes(rel))).ok()?.modified().ok()
        };
        let root_mtime = lstat_mtime(b"").unwrap_or(SystemTime::UNIX_EPOCH);
        let dir_mtime = |rel: &[u8]| lstat_mtime(rel).unwrap_or(root_mtime);
        let mut ns = Namespace::empty(root_mtime);
        // Symlinks (most of a large annex: locked files) are classified when first asked for
        // or by `classify_all`, so that the namespace is served as soon as its names are
        // known; other files are read now, beside their working-tree state.
        ns.lazy = Some(Lazy {
            gitdir: repo.path().to_path_buf(),
            repo: Mutex::new(git2::Repository::open_bare(repo.path())?),
        });
        let blobs: Vec<(git2::Oid, bool)> = index
            .iter()
            .filter(|e| e.mode as i32 != MODE_COMMIT && e.mode as i32 != MODE_LINK)
            .map(|e| (e.id, false))
            .collect();
        cls.prefetch(repo.path(), &blobs)?;
        for entry in index.iter() {
            let path = entry.path.as_slice();
            let mode = entry.mode as i32;
            let wt = || workdir.join(OsStr::from_bytes(path));
            let index_mtime = SystemTime::UNIX_EPOCH
                + std::time::Duration::new(u64::from(entry.mtime.seconds().max(0) as u32), entry.mtime.nanoseconds());
            // A symlink is shown as staged (its target is the blob's), and its entry records
            // the link's lstat as git last saw it: no system call per link, which is most of
            // a large annex. An entry staged without stat data (mtime 0, as
            // `git update-index --index-info` leaves it) is looked at.
            let md = if mode == MODE_LINK && entry.mtime.seconds() > 0 {
                None
            } else {
                std::fs::symlink_metadata(wt()).ok()
            };
            let mtime = md.as_ref().and_then(|m| m.modified().ok()).unwrap_or(index_mtime);
            let kind = match mode {
                MODE_COMMIT => Some(EntryKind::Dir),
                MODE_LINK => cls.links.get(&entry.id).map(|c| classified_kind(c.clone(), entry.id)),
                _ => Some(match cls.classify(&odb, entry.id, false)? {
                    Classified::Annexed(k) => EntryKind::Annexed(k),
                    // A plain file is shown as it is in the working tree, if it is there.
                    Classified::Plain(size) => match md.as_ref().filter(|m| m.is_file()) {
                        Some(m) => EntryKind::Plain { size: m.len(), content: PlainContent::Worktree(wt()) },
                        None => EntryKind::Plain { size, content: PlainContent::Blob(entry.id) },
                    },
                    Classified::Symlink(t) => EntryKind::Symlink(t),
                }),
            };
            // git-annex records unlocked files as 100644 even when executable; the working
            // tree file's mode keeps the bit.
            let wt_exec = md.as_ref().is_some_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            });
            let blob = if mode == MODE_COMMIT { ZERO } else { entry.id };
            let inserted =
                ns.insert(path, kind, mode == MODE_EXEC || wt_exec, mtime, (blob, mode == MODE_LINK), &dir_mtime);
            ns.note_gitlink(inserted, path, mode, entry.id);
        }
        warn_dropped(&ns.dropped);
        Ok(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "SHA256E-s5--2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824.txt";

    /// A non-bare repository whose index stages (without a commit): an annex link, a plain
    /// file, a symlink that is no annex link, and names whose path order is not name order.
    fn staged_repo() -> (tempfile::TempDir, git2::Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let link = format!("../.git/annex/objects/xx/yy/{KEY}/{KEY}");
        let stage = |path: &str, mode: u32, data: &[u8]| {
            let oid = repo.blob(data).unwrap();
            let mut index = repo.index().unwrap();
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(1_700_000_000, 0),
                dev: 0,
                ino: 0,
                mode,
                uid: 0,
                gid: 0,
                file_size: u32::try_from(data.len()).unwrap(),
                id: oid,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).unwrap();
            index.write().unwrap();
        };
        stage("a.txt", 0o100644, b"plain\n");
        stage("a/link.txt", 0o120000, link.as_bytes());
        stage("a/other", 0o120000, b"../a.txt");
        stage("a-b/x", 0o100644, b"x\n");
        (dir, repo)
    }

    #[test]
    fn working_tree_symlinks_are_classified_when_asked_for() {
        let (dir, repo) = staged_repo();
        let ns = Namespace::from_index(&repo, dir.path(), &mut BlobClassifier::default()).unwrap();
        let names: Vec<String> = ns.files().iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["a-b/x", "a.txt", "a/link.txt", "a/other"]);
        let root: Vec<&OsStr> = ns.children(ROOT).map(|(n, _)| n).collect();
        assert_eq!(root, ["a", "a-b", "a.txt"], "children in name order");
        let link = ns.lookup(b"a/link.txt").unwrap();
        assert!(ns.has_unclassified(), "the links are not read while building");
        assert!(matches!(ns.kind(link), Some(EntryKind::Annexed(k)) if k.to_string_lossy() == KEY));
        assert!(ns.has_unclassified(), "a/other is still to be read");
        ns.classify_all(&|| false);
        assert!(!ns.has_unclassified());
        let other = ns.lookup(b"a/other").unwrap();
        assert_eq!(ns.kind(other), Some(&EntryKind::Symlink(b"../a.txt".to_vec())));
        let mtime = ns.node(link).unwrap().mtime;
        assert_eq!(mtime, SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000), "the index's mtime");
        assert!(matches!(ns.kind(ns.lookup(b"a.txt").unwrap()), Some(EntryKind::Plain { size: 6, .. })));
    }

    #[test]
    fn a_rebuild_reuses_what_the_previous_namespace_classified() {
        let (dir, repo) = staged_repo();
        let first = Namespace::from_index(&repo, dir.path(), &mut BlobClassifier::default()).unwrap();
        first.classify_all(&|| false);
        let mut cls = BlobClassifier::seeded(&first);
        let second = Namespace::from_index(&repo, dir.path(), &mut cls).unwrap();
        assert!(!second.has_unclassified(), "every link known from the first namespace");
        let id = second.lookup(b"a/link.txt").unwrap();
        let (Some(EntryKind::Annexed(a)), Some(EntryKind::Annexed(b))) =
            (first.kind(first.lookup(b"a/link.txt").unwrap()), second.kind(id))
        else {
            panic!("not annexed")
        };
        assert!(Arc::ptr_eq(a, b), "the key is shared, not copied");
    }

    #[test]
    fn classify_all_stops_when_told() {
        let (dir, repo) = staged_repo();
        let ns = Namespace::from_index(&repo, dir.path(), &mut BlobClassifier::default()).unwrap();
        ns.classify_all(&|| true);
        assert!(ns.has_unclassified());
    }

    #[test]
    fn unsafe_names() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b".git",
            b".GIT",
            b".git.",
            b".git  ",
            b"git~1",
            b"GIT~1",
            b"a/b",
            b"a\0b",
            ".g\u{200c}it".as_bytes(),
            b".git::$INDEX_ALLOCATION",
        ] {
            assert!(is_unsafe_name(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [&b".gitignore"[..], b".gitattributes", b"git", b"..a", b"x.git", b"\xff\xfe"] {
            assert!(!is_unsafe_name(good), "{:?}", String::from_utf8_lossy(good));
        }
    }
}
