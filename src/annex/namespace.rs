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
//! after `git pull` reads only the new blobs.
//!
//! Names that git's fsck only warns about (`.`, `..`, `.git` and its case/NTFS/HFS look-alikes,
//! names with `/` or NUL, empty names) are dropped, with one warning per build naming them.

use super::key::Key;
use super::pointer::{MAX_POINTER_FILE, parse_pointer_file, parse_symlink_target};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
    /// An annexed file (locked or unlocked).
    Annexed(Key),
    /// A plain file stored in git.
    Plain {
        size: u64,
        content: PlainContent,
    },
    /// A symlink that is not an annex link; the target is never followed.
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: OsString,
    pub parent: NodeId,
    pub kind: EntryKind,
    pub exec: bool,
    pub mtime: SystemTime,
    /// Children of a directory, by name.
    pub children: BTreeMap<OsString, NodeId>,
}

/// A repository's tree of entries.
#[derive(Debug, Clone)]
pub struct Namespace {
    nodes: Vec<Node>,
    /// Names dropped by the safety rules, as full paths (for tests and the warning).
    pub dropped: Vec<Vec<u8>>,
    /// Gitlinks (submodules, DataLad subdatasets), shown as directories: path → the commit
    /// the tree records.
    gitlinks: BTreeMap<Vec<u8>, git2::Oid>,
}

/// What a blob means as a file of a given mode.
#[derive(Debug, Clone)]
enum Classified {
    Annexed(Key),
    Plain(u64),
    Symlink(Vec<u8>),
}

/// Memoises the classification of blobs, which never change.
#[derive(Default)]
pub struct BlobClassifier {
    files: HashMap<git2::Oid, Classified>,
    links: HashMap<git2::Oid, Classified>,
}

impl BlobClassifier {
    /// The key of an entry with git file mode `mode` and blob `oid`, if it is annexed.
    pub fn annexed_key(&mut self, odb: &git2::Odb<'_>, oid: git2::Oid, mode: u32) -> Result<Option<Key>, git2::Error> {
        let mode = mode as i32;
        if mode == MODE_TREE || mode == MODE_COMMIT {
            return Ok(None);
        }
        Ok(match self.classify(odb, oid, mode == MODE_LINK)? {
            Classified::Annexed(k) => Some(k),
            _ => None,
        })
    }

    fn classify(&mut self, odb: &git2::Odb<'_>, oid: git2::Oid, symlink: bool) -> Result<Classified, git2::Error> {
        let memo = if symlink { &mut self.links } else { &mut self.files };
        if let Some(c) = memo.get(&oid) {
            return Ok(c.clone());
        }
        let c = classify_blob(odb, oid, symlink)?;
        memo.insert(oid, c.clone());
        Ok(c)
    }

    /// Classifies, on several threads, the blobs not yet memoised. Inflating blobs dominates
    /// building a large namespace; each thread opens its own handle on the repository.
    fn prefetch(&mut self, gitdir: &Path, items: &[(git2::Oid, bool)]) -> Result<(), git2::Error> {
        let todo: Vec<(git2::Oid, bool)> = items
            .iter()
            .filter(|(oid, link)| !(if *link { &self.links } else { &self.files }).contains_key(oid))
            .copied()
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        // Below this, opening extra repository handles costs more than it saves.
        const PARALLEL_MIN: usize = 2048;
        if todo.len() < PARALLEL_MIN || threads < 2 {
            return Ok(());
        }
        let chunk = todo.len().div_ceil(threads);
        type Part = Result<Vec<(git2::Oid, bool, Classified)>, git2::Error>;
        let results: Vec<Part> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let repo = git2::Repository::open_bare(gitdir)?;
                        let odb = repo.odb()?;
                        part.iter()
                            .map(|&(oid, link)| classify_blob(&odb, oid, link).map(|c| (oid, link, c)))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(git2::Error::from_str("blob classification thread panicked"))))
                .collect()
        });
        for r in results {
            for (oid, link, c) in r? {
                if link { &mut self.links } else { &mut self.files }.insert(oid, c);
            }
        }
        Ok(())
    }
}

/// What a blob means as a symlink target (`symlink`) or as a file's content.
fn classify_blob(odb: &git2::Odb<'_>, oid: git2::Oid, symlink: bool) -> Result<Classified, git2::Error> {
    if symlink {
        let obj = odb.read(oid)?;
        return Ok(match parse_symlink_target(obj.data()) {
            Some(k) => Classified::Annexed(k),
            None => Classified::Symlink(obj.data().to_vec()),
        });
    }
    let (size, _) = odb.read_header(oid)?;
    // Only small blobs can be pointer files; large ones are content.
    if size > MAX_POINTER_FILE {
        return Ok(Classified::Plain(size as u64));
    }
    let obj = odb.read(oid)?;
    Ok(match parse_pointer_file(obj.data()) {
        Some(k) => Classified::Annexed(k),
        None => Classified::Plain(size as u64),
    })
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
    // HFS+: ignorable Unicode code points are dropped when comparing names.
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

fn dir_node(name: OsString, parent: NodeId, mtime: SystemTime) -> Node {
    Node { name, parent, kind: EntryKind::Dir, exec: true, mtime, children: BTreeMap::new() }
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
            nodes: vec![dir_node(OsString::new(), ROOT, root_mtime)],
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

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        self.nodes.get(dir)?.children.get(name).copied()
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
            parts.push(n.name.clone());
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
            for (name, &child) in n.children.iter().rev() {
                let cp = p.join(name);
                if matches!(self.nodes[child].kind, EntryKind::Dir) {
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
        kind: EntryKind,
        exec: bool,
        mtime: SystemTime,
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
            let name = OsString::from(OsStr::from_bytes(comp));
            let last = i + 1 == comps.len();
            match self.nodes[cur].children.get(&name).copied() {
                Some(existing) if !last => {
                    if !matches!(self.nodes[existing].kind, EntryKind::Dir) {
                        return false;
                    }
                    cur = existing;
                }
                Some(_) => return false, // duplicate path (conflict stages): the first one stays
                None => {
                    let id = self.nodes.len();
                    let node = if last {
                        Node {
                            name: name.clone(),
                            parent: cur,
                            kind: kind.clone(),
                            exec,
                            mtime,
                            children: BTreeMap::new(),
                        }
                    } else {
                        dir_node(name.clone(), cur, dir_mtime(&path[..consumed]))
                    };
                    self.nodes.push(node);
                    self.nodes[cur].children.insert(name, id);
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
            let inserted = ns.insert(&path, kind, mode == MODE_EXEC, mtime, &|_| mtime);
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
        let mut index = repo.index()?;
        // The index may have changed on disk since the repository was opened.
        index.read(true)?;
        let lstat_mtime = |rel: &[u8]| -> Option<SystemTime> {
            std::fs::symlink_metadata(workdir.join(OsStr::from_bytes(rel))).ok()?.modified().ok()
        };
        let root_mtime = lstat_mtime(b"").unwrap_or(SystemTime::UNIX_EPOCH);
        let dir_mtime = |rel: &[u8]| lstat_mtime(rel).unwrap_or(root_mtime);
        let mut ns = Namespace::empty(root_mtime);
        let blobs: Vec<(git2::Oid, bool)> =
            index.iter().filter(|e| e.mode as i32 != MODE_COMMIT).map(|e| (e.id, e.mode as i32 == MODE_LINK)).collect();
        cls.prefetch(repo.path(), &blobs)?;
        for entry in index.iter() {
            let path = entry.path.as_slice();
            let mode = entry.mode as i32;
            let wt = workdir.join(OsStr::from_bytes(path));
            let md = std::fs::symlink_metadata(&wt).ok();
            let index_mtime = SystemTime::UNIX_EPOCH
                + std::time::Duration::new(u64::from(entry.mtime.seconds().max(0) as u32), entry.mtime.nanoseconds());
            let mtime = md.as_ref().and_then(|m| m.modified().ok()).unwrap_or(index_mtime);
            let kind = match mode {
                MODE_COMMIT => EntryKind::Dir,
                MODE_LINK => classified_kind(cls.classify(&odb, entry.id, true)?, entry.id),
                _ => match cls.classify(&odb, entry.id, false)? {
                    Classified::Annexed(k) => EntryKind::Annexed(k),
                    // A plain file is shown as it is in the working tree, if it is there.
                    Classified::Plain(size) => match md.as_ref().filter(|m| m.is_file()) {
                        Some(m) => EntryKind::Plain { size: m.len(), content: PlainContent::Worktree(wt) },
                        None => EntryKind::Plain { size, content: PlainContent::Blob(entry.id) },
                    },
                    Classified::Symlink(t) => EntryKind::Symlink(t),
                },
            };
            // git-annex records unlocked files as 100644 even when executable; the working
            // tree file's mode keeps the bit.
            let wt_exec = md.as_ref().is_some_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            });
            let inserted = ns.insert(path, kind, mode == MODE_EXEC || wt_exec, mtime, &dir_mtime);
            ns.note_gitlink(inserted, path, mode, entry.id);
        }
        warn_dropped(&ns.dropped);
        Ok(ns)
    }
}

fn classified_kind(c: Classified, oid: git2::Oid) -> EntryKind {
    match c {
        Classified::Annexed(k) => EntryKind::Annexed(k),
        Classified::Plain(size) => EntryKind::Plain { size, content: PlainContent::Blob(oid) },
        Classified::Symlink(t) => EntryKind::Symlink(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
