//! A mount of repositories nested in one another: the mounted repository and the repositories
//! its gitlinks record (git submodules, DataLad subdatasets), and theirs, at any depth.
//!
//! Design:
//! - Each repository is served by its own [`AnnexFs`] (namespace snapshot, inode table,
//!   holders). [`MountFs`], in front of them, routes every request: the top bits of an inode
//!   number or a file handle name the repository (its index in the mount's registry, 0 for the
//!   mounted one), the low [`SHIFT`] bits the repository's own number. Numbers so stay unique
//!   across repositories without the cores knowing of each other, and the mounted repository's
//!   numbers are its own (a mount without gitlinks is served exactly as before).
//! - A gitlink directory of one repository stands for the root of the next: its attributes
//!   come from the repository recording it; a look-up or a listing inside it goes to the nested
//!   repository's root. The nested repository is opened through [`Subtrees`], which the
//!   command implements (an installed checkout, else a clone in annexfs's state directory):
//!   fs knows nothing of remotes, `.gitmodules` or cloning.
//! - A nested repository is registered per (recording repository, gitlink path, recorded
//!   commit): when the recorded commit changes (a live view after `git pull`), the directory
//!   leads to that commit's repository, while inodes already handed out inside the old one go
//!   on answering from it (an inode's attributes and bytes never change).
//! - Opening may wait (a clone). Only requests inside that gitlink wait for it;
//!   [`MountFs::would_wait`] lets the adapter take them off the FUSE threads. A repository that
//!   cannot be opened shows as an empty directory; [`Subtrees`] logs why and tries again later.
//!
//! Lock order: `reg` is held only to read or add registry entries, never across a call into a
//! core or into [`Subtrees::open`].

use super::{AnnexFs, Attr, FsError, ROOT_INO, View};
use crate::annex::{Annex, Key};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, RwLock};

/// Bits of an inode number or handle that belong to the repository's own numbering.
pub const SHIFT: u32 = 40;
const LOCAL: u64 = (1 << SHIFT) - 1;

/// A gitlink to open as a repository.
#[derive(Clone)]
pub struct Gitlink {
    /// The repository recording it.
    pub parent: Arc<Annex>,
    /// How the recording repository is shown (its working tree, or the tree of a commit).
    pub parent_view: View,
    /// Its path in the recording repository.
    pub path: Vec<u8>,
    /// Its path from the mount's root, for log lines.
    pub shown: String,
    /// The commit the recording repository's tree gives for it.
    pub commit: git2::Oid,
}

/// Opens the repositories gitlinks stand for; implemented above fs (by the mount).
pub trait Subtrees: Send + Sync {
    /// The repository at `link`, ready to be served, waiting for it to be installed (a clone)
    /// if it must. `None` when it cannot be had now: the implementation has logged why, and
    /// tries again on a later call once some time has passed.
    fn open(&self, link: &Gitlink) -> Option<Arc<AnnexFs>>;
}

struct Repo {
    fs: Arc<AnnexFs>,
    /// Its path from the mount's root ("" for the mounted repository).
    prefix: Vec<u8>,
    /// The inode number of the gitlink directory that stands for its root.
    root_ino: u64,
}

#[derive(Default)]
struct Registry {
    repos: Vec<Repo>,
    by_link: HashMap<(usize, Vec<u8>, git2::Oid), usize>,
}

/// The filesystem of a mount: the mounted repository and the repositories nested in it.
pub struct MountFs {
    reg: RwLock<Registry>,
    subtrees: Option<Arc<dyn Subtrees>>,
}

/// A directory as routed: (repository id, its core, the core's inode number).
type Routed = (usize, Arc<AnnexFs>, u64);

fn join_path(prefix: &[u8], path: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(path);
    p
}

impl MountFs {
    /// Serves `root`; gitlinks are opened through `subtrees` (without it they stay empty
    /// directories).
    pub fn new(root: Arc<AnnexFs>, subtrees: Option<Arc<dyn Subtrees>>) -> MountFs {
        let reg = Registry {
            repos: vec![Repo { fs: root, prefix: Vec::new(), root_ino: ROOT_INO }],
            by_link: HashMap::new(),
        };
        MountFs { reg: RwLock::new(reg), subtrees }
    }

    fn reg(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.reg.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The mounted repository's core.
    pub fn root(&self) -> Arc<AnnexFs> {
        self.reg().repos[0].fs.clone()
    }

    /// The mounted repository.
    pub fn annex(&self) -> Arc<Annex> {
        self.root().annex().clone()
    }

    /// The view of the mounted repository.
    pub fn view(&self) -> View {
        self.root().view().clone()
    }

    /// How many repositories are open (the mounted one included).
    pub fn repositories(&self) -> usize {
        self.reg().repos.len()
    }

    /// (repository id, its core, its own number) of a mount-wide inode number or handle.
    fn split(&self, n: u64) -> Result<Routed, FsError> {
        let id = usize::try_from(n >> SHIFT).map_err(|_| FsError::StaleInode(n))?;
        let fs = self.reg().repos.get(id).ok_or(FsError::StaleInode(n))?.fs.clone();
        Ok((id, fs, n & LOCAL))
    }

    /// The mount-wide number of repository `id`'s inode `local`.
    fn global(&self, id: usize, local: u64) -> u64 {
        if id != 0 && local == ROOT_INO {
            return self.reg().repos.get(id).map_or(local, |r| r.root_ino);
        }
        ((id as u64) << SHIFT) | (local & LOCAL)
    }

    fn out(&self, id: usize, mut a: Attr) -> Attr {
        a.ino = self.global(id, a.ino);
        a
    }

    fn registered(&self, id: usize, path: &[u8], commit: git2::Oid) -> Option<usize> {
        self.reg().by_link.get(&(id, path.to_vec(), commit)).copied()
    }

    /// Whether a request on directory `ino` may wait for a nested repository to be opened.
    pub fn would_wait(&self, ino: u64) -> bool {
        let Ok((id, fs, local)) = self.split(ino) else { return false };
        match fs.gitlink(local) {
            Some((path, commit)) => self.subtrees.is_some() && self.registered(id, &path, commit).is_none(),
            None => false,
        }
    }

    /// Directory `ino` as routed: a gitlink leads to the root of the nested repository (opened
    /// now if it must be). `None`: a gitlink whose repository cannot be had now.
    fn dir(&self, ino: u64) -> Result<Option<Routed>, FsError> {
        let (id, fs, local) = self.split(ino)?;
        let Some((path, commit)) = fs.gitlink(local) else { return Ok(Some((id, fs, local))) };
        if let Some(c) = self.registered(id, &path, commit) {
            let child = self.reg().repos[c].fs.clone();
            return Ok(Some((c, child, ROOT_INO)));
        }
        let Some(subtrees) = &self.subtrees else { return Ok(None) };
        let prefix = join_path(&self.reg().repos[id].prefix, &path);
        let link = Gitlink {
            parent: fs.annex().clone(),
            parent_view: fs.view().clone(),
            path: path.clone(),
            shown: String::from_utf8_lossy(&prefix).into_owned(),
            commit,
        };
        let Some(child) = subtrees.open(&link) else { return Ok(None) };
        let mut reg = self.reg.write().unwrap_or_else(|p| p.into_inner());
        let key = (id, path, commit);
        let c = match reg.by_link.get(&key) {
            // Another request opened it meanwhile: one registration, the first.
            Some(&c) => c,
            None => {
                let c = reg.repos.len();
                if (c as u64) >= (1u64 << (64 - SHIFT)) {
                    return Err(FsError::NotFound);
                }
                reg.repos.push(Repo { fs: child, prefix, root_ino: ino });
                reg.by_link.insert(key, c);
                c
            }
        };
        Ok(Some((c, reg.repos[c].fs.clone(), ROOT_INO)))
    }

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        match self.dir(parent)? {
            Some((id, fs, local)) => fs.lookup(local, name).map(|a| self.out(id, a)),
            None => Err(FsError::NotFound),
        }
    }

    /// Attributes of an inode (a gitlink directory's are the recording repository's).
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let (id, fs, local) = self.split(ino)?;
        fs.getattr(local).map(|a| self.out(id, a))
    }

    /// Lists directory `ino`; see [`AnnexFs::readdir`]. A gitlink whose repository cannot be
    /// had now lists as empty.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        attrs: bool,
        mut add: impl FnMut(&OsStr, &Attr, u64) -> bool,
    ) -> Result<(), FsError> {
        match self.dir(ino)? {
            Some((id, fs, local)) => {
                fs.readdir(local, offset, attrs, |name, a, next| add(name, &self.out(id, a.clone()), next))
            }
            None => {
                let a = self.getattr(ino)?;
                if offset == 0 && add(OsStr::new("."), &a, 1) {
                    return Ok(());
                }
                if offset <= 1 {
                    add(OsStr::new(".."), &a, 2);
                }
                Ok(())
            }
        }
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (_, fs, local) = self.split(ino)?;
        fs.readlink(local)
    }

    /// Opens a file; see [`AnnexFs::open`].
    pub fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        let (id, fs, local) = self.split(ino)?;
        let fh = fs.open(local, write)?;
        Ok(((id as u64) << SHIFT) | (fh & LOCAL))
    }

    /// See [`AnnexFs::whole_local`] (for kernel passthrough).
    pub fn whole_local(&self, ino: u64) -> Option<crate::source::LocalFile> {
        let (_, fs, local) = self.split(ino).ok()?;
        fs.whole_local(local)
    }

    /// See [`AnnexFs::size_unknown`].
    pub fn size_unknown(&self, ino: u64) -> bool {
        self.split(ino).is_ok_and(|(_, fs, local)| fs.size_unknown(local))
    }

    /// See [`AnnexFs::keep_cache`].
    pub fn keep_cache(&self, ino: u64) -> bool {
        self.split(ino).map_or(true, |(_, fs, local)| fs.keep_cache(local))
    }

    /// Reads from an open handle; see [`AnnexFs::read`].
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let (_, fs, local) = self.split(fh).map_err(|_| FsError::BadHandle(fh))?;
        fs.read(local, offset, size).await
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        if let Ok((_, fs, local)) = self.split(fh) {
            fs.release(local);
        }
    }

    /// An extended attribute's value.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let (_, fs, local) = self.split(ino)?;
        fs.getxattr(local, name)
    }

    /// The names of the extended attributes.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (_, fs, local) = self.split(ino)?;
        fs.listxattr(local)
    }

    /// Number of entries across the open repositories (for statfs).
    pub fn entry_count(&self) -> u64 {
        let cores: Vec<Arc<AnnexFs>> = self.reg().repos.iter().map(|r| r.fs.clone()).collect();
        cores.iter().map(|f| f.entry_count()).sum()
    }

    /// Follows every open repository (see [`AnnexFs::refresh`]); true if a namespace changed.
    pub fn refresh(&self) -> Result<bool, FsError> {
        let repos: Vec<(Arc<AnnexFs>, Vec<u8>)> =
            self.reg().repos.iter().map(|r| (r.fs.clone(), r.prefix.clone())).collect();
        let mut changed = false;
        for (i, (fs, prefix)) in repos.iter().enumerate() {
            match fs.refresh() {
                Ok(c) => changed |= c,
                Err(e) if i == 0 => return Err(e),
                Err(e) => tracing::warn!("follow the repository at {}: {e}", String::from_utf8_lossy(prefix)),
            }
        }
        Ok(changed)
    }

    /// The annexed files open now, across repositories: (path from the mount's root, key, the
    /// repository it belongs to).
    pub fn open_files(&self) -> Vec<(String, Key, Arc<Annex>)> {
        let repos: Vec<(Arc<AnnexFs>, Vec<u8>)> =
            self.reg().repos.iter().map(|r| (r.fs.clone(), r.prefix.clone())).collect();
        let mut out = Vec::new();
        for (fs, prefix) in repos {
            let prefix = String::from_utf8_lossy(&prefix).into_owned();
            for (file, key) in fs.open_files() {
                let shown = if prefix.is_empty() { file } else { format!("{prefix}/{file}") };
                out.push((shown, key, fs.annex().clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The nested repositories open now: (path from the mount's root, repository).
    pub fn nested(&self) -> Vec<(String, Arc<Annex>)> {
        self.reg()
            .repos
            .iter()
            .skip(1)
            .map(|r| (String::from_utf8_lossy(&r.prefix).into_owned(), r.fs.annex().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsConfig;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A repository at `dir` with one commit of `files` and `gitlinks` (name → commit).
    fn repo(dir: &Path, files: &[(&str, &[u8])], gitlinks: &[(&str, git2::Oid)]) -> git2::Oid {
        let r = git2::Repository::init(dir).unwrap();
        let mut tb = r.treebuilder(None).unwrap();
        for (name, data) in files {
            tb.insert(name, r.blob(data).unwrap(), 0o100644).unwrap();
        }
        for (name, commit) in gitlinks {
            tb.insert(name, *commit, 0o160000).unwrap();
        }
        let tree = r.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@annexfs.invalid").unwrap();
        r.commit(Some("HEAD"), &sig, &sig, "c", &tree, &[]).unwrap()
    }

    fn core(dir: &Path, rev: &str) -> Arc<AnnexFs> {
        let annex = Arc::new(Annex::open_plain(dir).unwrap());
        Arc::new(AnnexFs::new(annex, View::Ref(rev.into()), FsConfig { uid: 0, gid: 0 }).unwrap())
    }

    /// Opens the one nested repository it knows, or fails; counts the calls.
    struct Fake {
        sub: Option<Arc<AnnexFs>>,
        calls: AtomicUsize,
    }

    impl Subtrees for Fake {
        fn open(&self, link: &Gitlink) -> Option<Arc<AnnexFs>> {
            assert_eq!(link.path, b"sub");
            assert_eq!(link.shown, "sub");
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sub.clone()
        }
    }

    fn names(fs: &MountFs, ino: u64) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        fs.readdir(ino, 0, false, |n, a, _| {
            v.push((n.to_string_lossy().into_owned(), a.ino));
            false
        })
        .unwrap();
        v
    }

    #[test]
    fn gitlinks_lead_to_nested_repositories_opened_on_first_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let sub_commit = repo(&tmp.path().join("b"), &[("g", b"nested bytes")], &[]);
        repo(&tmp.path().join("a"), &[("f", b"top")], &[("sub", sub_commit)]);
        let fake = Arc::new(Fake { sub: Some(core(&tmp.path().join("b"), &sub_commit.to_string())), calls: 0.into() });
        let fs = MountFs::new(core(&tmp.path().join("a"), "HEAD"), Some(fake.clone()));

        // Listing and looking up the gitlink itself opens nothing.
        let top = names(&fs, ROOT_INO);
        assert_eq!(top.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec![".", "..", "f", "sub"]);
        let sub = fs.lookup(ROOT_INO, OsStr::new("sub")).unwrap();
        assert_eq!(sub.kind, crate::fs::Kind::Dir);
        assert!(fs.would_wait(sub.ino));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);

        // Entering it opens the nested repository once; its numbers are its own.
        let g = fs.lookup(sub.ino, OsStr::new("g")).unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        assert!(!fs.would_wait(sub.ino));
        assert_eq!(g.ino >> SHIFT, 1);
        assert_eq!(g.size, 12);
        let listed = names(&fs, sub.ino);
        assert_eq!(listed[0], (".".to_string(), sub.ino), "the nested root is the gitlink's inode");
        assert_eq!(listed[2], ("g".to_string(), g.ino));
        assert_eq!(fs.getattr(g.ino).unwrap(), g);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

        let fh = fs.open(g.ino, false).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(fs.read(fh, 0, 100)).unwrap(), b"nested bytes");
        fs.release(fh);
        assert_eq!(fs.repositories(), 2);
        assert_eq!(fs.nested()[0].0, "sub");
    }

    #[test]
    fn a_gitlink_that_cannot_be_opened_is_an_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let sub_commit = repo(&tmp.path().join("b"), &[("g", b"x")], &[]);
        repo(&tmp.path().join("a"), &[], &[("sub", sub_commit)]);
        let fake = Arc::new(Fake { sub: None, calls: 0.into() });
        let fs = MountFs::new(core(&tmp.path().join("a"), "HEAD"), Some(fake.clone()));
        let sub = fs.lookup(ROOT_INO, OsStr::new("sub")).unwrap();
        assert_eq!(names(&fs, sub.ino).len(), 2, "only . and ..");
        assert!(matches!(fs.lookup(sub.ino, OsStr::new("g")), Err(FsError::NotFound)));
        // Asked again each time: the implementation decides when to retry.
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        assert!(fs.would_wait(sub.ino));
    }
}
