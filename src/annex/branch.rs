//! Read-only access to the git-annex branch, combined the way git-annex reads it in a
//! repository it cannot write to (reference §4.7):
//!
//! ```text
//! content(FILE) = refs/heads/git-annex:FILE
//!              ++ .git/annex/journal/<jname(FILE)>          (complete lines only)
//!              ++ .git/annex/journal-private/<jname(FILE)>  (complete lines only)
//!              ++ R:FILE for every other ref R ending in "/git-annex" that is not merged
//! ```
//!
//! The result is handed to the log parsers of [`super::logs`] as separate chunks; every log
//! kind compacts "newest wins", so concatenation gives the same answer as git-annex's union
//! merge. annexfs never merges and never writes.
//!
//! Caching: a [`Snapshot`] records the sibling refs (with their tree ids) and the journal
//! directories' listings; the file contents read under it are kept in an LRU cache. A
//! [`Branch::refresh`] that finds refs or journal files changed swaps in a new snapshot and
//! drops the cache, so no stale content is ever served after a refresh.
//!
//! Lock order: `Branch::repo` before `Branch::state`; neither is held while calling out.

use super::logs;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// How many branch files' contents are kept parsed-ready in memory.
const FILE_CACHE_ENTRIES: usize = 65_536;

/// The journal file name of a branch path: `_` → `__`, then `/` → `_`.
pub fn journal_name(path: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(path.len() + 4);
    for &c in path {
        match c {
            b'/' => o.push(b'_'),
            b'_' => o.extend_from_slice(b"__"),
            _ => o.push(c),
        }
    }
    o
}

/// One listed journal file: its name, size and mtime, to notice changes cheaply.
type JournalEntry = (OsString, u64, Option<SystemTime>);

/// What the branch view was computed from; equal fingerprints mean equal contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fingerprint {
    refs: Vec<(String, git2::Oid)>,
    journal: Vec<JournalEntry>,
    private: Vec<JournalEntry>,
}

/// An immutable view of the branch at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    fingerprint: Fingerprint,
    /// Trees to read, local branch first, then unmerged sibling refs (deduplicated).
    trees: Vec<git2::Oid>,
    journal: HashSet<OsString>,
    private: HashSet<OsString>,
    /// Increases with every snapshot that differs from the previous one.
    pub generation: u64,
}

impl Snapshot {
    /// Whether there is anything at all to read (a git-annex branch or a journal).
    pub fn is_empty(&self) -> bool {
        self.trees.is_empty() && self.journal.is_empty() && self.private.is_empty()
    }
}

struct State {
    snapshot: Arc<Snapshot>,
    checked: Instant,
    cache: lru::LruCache<Vec<u8>, Arc<Vec<Vec<u8>>>>,
}

/// The git-annex branch of one repository, read-only.
pub struct Branch {
    repo: Mutex<git2::Repository>,
    annex_dir: PathBuf,
    state: Mutex<State>,
}

/// Errors of branch reading. Missing files are not errors (they are empty logs).
#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error("read git-annex branch: {0}")]
    Git(#[from] git2::Error),
}

fn list_journal(dir: &Path) -> Vec<JournalEntry> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<JournalEntry> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            md.is_file().then(|| (e.file_name(), md.len(), md.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

impl Branch {
    /// Opens the branch of the repository whose (common) git directory is `gitdir`.
    pub fn open(gitdir: &Path) -> Result<Branch, BranchError> {
        super::repo::init_git2();
        let repo = git2::Repository::open_bare(gitdir)?;
        let annex_dir = gitdir.join("annex");
        let fingerprint = Self::fingerprint(&repo, &annex_dir)?;
        let snapshot = Self::build(&repo, fingerprint, 1)?;
        let cap = NonZeroUsize::new(FILE_CACHE_ENTRIES).expect("cache size is a non-zero constant");
        Ok(Branch {
            repo: Mutex::new(repo),
            annex_dir,
            state: Mutex::new(State {
                snapshot: Arc::new(snapshot),
                checked: Instant::now(),
                cache: lru::LruCache::new(cap),
            }),
        })
    }

    fn fingerprint(repo: &git2::Repository, annex_dir: &Path) -> Result<Fingerprint, BranchError> {
        let mut refs = Vec::new();
        for r in repo.references()? {
            let Ok(r) = r else { continue };
            let Ok(name) = r.name() else { continue };
            if !(name == "refs/heads/git-annex" || name.ends_with("/git-annex")) {
                continue;
            }
            if let Ok(target) = r.resolve().and_then(|r| r.peel_to_commit()) {
                refs.push((name.to_string(), target.id()));
            }
        }
        refs.sort();
        Ok(Fingerprint {
            refs,
            journal: list_journal(&annex_dir.join("journal")),
            private: list_journal(&annex_dir.join("journal-private")),
        })
    }

    fn build(repo: &git2::Repository, fingerprint: Fingerprint, generation: u64) -> Result<Snapshot, BranchError> {
        let local = fingerprint.refs.iter().find(|(n, _)| n == "refs/heads/git-annex").map(|(_, o)| *o);
        // Refs recorded as merged by git-annex itself.
        let merged: HashSet<git2::Oid> = std::fs::read_to_string(repo.path().join("annex/mergedrefs"))
            .map(|s| s.lines().filter_map(|l| git2::Oid::from_str(l.split('\t').next()?).ok()).collect())
            .unwrap_or_default();
        let mut trees = Vec::new();
        let mut seen_commits = HashSet::new();
        let mut add = |commit: git2::Oid, trees: &mut Vec<git2::Oid>| -> Result<(), BranchError> {
            if !seen_commits.insert(commit) {
                return Ok(());
            }
            let tree = repo.find_commit(commit)?.tree_id();
            if !trees.contains(&tree) {
                trees.push(tree);
            }
            Ok(())
        };
        if let Some(l) = local {
            add(l, &mut trees)?;
        }
        for (name, oid) in &fingerprint.refs {
            if name == "refs/heads/git-annex" {
                continue;
            }
            if let Some(l) = local {
                // Already contained in the local branch: reading it again adds nothing.
                if *oid == l || merged.contains(oid) || repo.graph_descendant_of(l, *oid).unwrap_or(false) {
                    continue;
                }
            }
            add(*oid, &mut trees)?;
        }
        let journal = fingerprint.journal.iter().map(|(n, _, _)| n.clone()).collect();
        let private = fingerprint.private.iter().map(|(n, _, _)| n.clone()).collect();
        Ok(Snapshot { fingerprint, trees, journal, private, generation })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.lock_state().snapshot.clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent (each field is
        // replaced whole), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_repo(&self) -> std::sync::MutexGuard<'_, git2::Repository> {
        self.repo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads refs and journal listings; returns true if anything changed (the cache is
    /// dropped then).
    pub fn refresh(&self) -> Result<bool, BranchError> {
        let repo = self.lock_repo();
        let fp = Self::fingerprint(&repo, &self.annex_dir)?;
        let generation = {
            let mut st = self.lock_state();
            st.checked = Instant::now();
            if st.snapshot.fingerprint == fp {
                return Ok(false);
            }
            st.snapshot.generation + 1
        };
        let snap = Self::build(&repo, fp, generation)?;
        let mut st = self.lock_state();
        st.snapshot = Arc::new(snap);
        st.cache.clear();
        Ok(true)
    }

    /// Refreshes if the last check is older than `max_age`.
    pub fn refresh_if_older(&self, max_age: std::time::Duration) -> Result<bool, BranchError> {
        if self.lock_state().checked.elapsed() < max_age {
            return Ok(false);
        }
        self.refresh()
    }

    /// The chunks (branch, journal, private journal, sibling refs) of a branch file, each to
    /// be parsed as a log. A file that exists nowhere gives no chunks.
    pub fn file(&self, path: &[u8]) -> Result<Arc<Vec<Vec<u8>>>, BranchError> {
        let snap = {
            let mut st = self.lock_state();
            if let Some(hit) = st.cache.get(path) {
                return Ok(hit.clone());
            }
            st.snapshot.clone()
        };
        let chunks = Arc::new(self.read_uncached(&snap, path)?);
        let mut st = self.lock_state();
        // Only cache what was read under the snapshot that is still current.
        if Arc::ptr_eq(&st.snapshot, &snap) {
            st.cache.put(path.to_vec(), chunks.clone());
        }
        Ok(chunks)
    }

    fn read_uncached(&self, snap: &Snapshot, path: &[u8]) -> Result<Vec<Vec<u8>>, BranchError> {
        let mut chunks = Vec::new();
        let jname = OsString::from(OsStr::from_bytes(&journal_name(path)));
        let repo = self.lock_repo();
        let rel = Path::new(OsStr::from_bytes(path));
        for tree_id in &snap.trees {
            let tree = repo.find_tree(*tree_id)?;
            let entry = match tree.get_path(rel) {
                Ok(e) => e,
                Err(e) if e.code() == git2::ErrorCode::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if entry.kind() != Some(git2::ObjectType::Blob) {
                continue;
            }
            let blob = repo.find_blob(entry.id())?;
            chunks.push(blob.content().to_vec());
        }
        drop(repo);
        // Chunk order is irrelevant to compaction (every log kind compacts by timestamp).
        self.push_journal(snap, &jname, &mut chunks);
        Ok(chunks)
    }

    fn push_journal(&self, snap: &Snapshot, jname: &OsString, chunks: &mut Vec<Vec<u8>>) {
        for (set, dir) in [(&snap.journal, "journal"), (&snap.private, "journal-private")] {
            if set.contains(jname)
                && let Ok(c) = std::fs::read(self.annex_dir.join(dir).join(jname))
            {
                // A last line without its newline is still read, as git-annex's whereis does
                // (checked with 10.20230126 and 10.20261026).
                chunks.push(c);
            }
        }
    }

    /// Present UUIDs (or URLs) of a presence log file.
    pub fn present(&self, path: &[u8]) -> Result<Vec<Vec<u8>>, BranchError> {
        let chunks = self.file(path)?;
        Ok(logs::present_infos(chunks.iter().map(Vec::as_slice)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names() {
        assert_eq!(
            journal_name(b"243/97e/WORM-s2-m1795305441--a_b.txt.log"),
            b"243_97e_WORM-s2-m1795305441--a__b.txt.log".to_vec()
        );
    }
}
