//! Classifying blobs: what a blob means as a symlink target or as a file's content (an
//! annexed key, a plain file, a symlink), memoised per blob id: blobs never change, so a
//! rebuilt namespace reads only the blobs it has not seen (see the parent module's doc).

use super::{EntryKind, MODE_COMMIT, MODE_LINK, MODE_TREE, Namespace, PlainContent, ZERO};
use crate::annex::key::Key;
use crate::annex::pointer::{MAX_POINTER_FILE, parse_pointer_file, parse_symlink_target};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What a blob means as a file of a given mode.
#[derive(Debug, Clone)]
pub(super) enum Classified {
    Annexed(Arc<Key>),
    Plain(u64),
    Symlink(Vec<u8>),
}

/// Memoises the classification of blobs, which never change.
#[derive(Default)]
pub struct BlobClassifier {
    pub(super) files: HashMap<git2::Oid, Classified>,
    pub(super) links: HashMap<git2::Oid, Classified>,
}

impl BlobClassifier {
    /// A classifier that knows every blob of `ns` already (what a rebuild of it reads again).
    pub fn seeded(ns: &Namespace) -> BlobClassifier {
        let mut cls = BlobClassifier::default();
        for n in &ns.nodes {
            let Some(kind) = n.kind.get() else { continue };
            let c = match kind {
                EntryKind::Annexed(k) => Classified::Annexed(k.clone()),
                EntryKind::Symlink(t) => Classified::Symlink(t.clone()),
                EntryKind::Plain { size, content: PlainContent::Blob(_) } => Classified::Plain(*size),
                // A working-tree file's size is not its blob's.
                EntryKind::Plain { content: PlainContent::Worktree(_), .. } | EntryKind::Dir => continue,
            };
            if n.blob != ZERO {
                if n.link { &mut cls.links } else { &mut cls.files }.insert(n.blob, c);
            }
        }
        cls
    }

    /// The key of an entry with git file mode `mode` and blob `oid`, if it is annexed.
    pub fn annexed_key(&mut self, odb: &git2::Odb<'_>, oid: git2::Oid, mode: u32) -> Result<Option<Key>, git2::Error> {
        let mode = mode as i32;
        if mode == MODE_TREE || mode == MODE_COMMIT {
            return Ok(None);
        }
        Ok(match self.classify(odb, oid, mode == MODE_LINK)? {
            Classified::Annexed(k) => Some(Key::clone(&k)),
            _ => None,
        })
    }

    pub(super) fn classify(
        &mut self,
        odb: &git2::Odb<'_>,
        oid: git2::Oid,
        symlink: bool,
    ) -> Result<Classified, git2::Error> {
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
    pub(super) fn prefetch(&mut self, gitdir: &Path, items: &[(git2::Oid, bool)]) -> Result<(), git2::Error> {
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
pub(super) fn classify_blob(odb: &git2::Odb<'_>, oid: git2::Oid, symlink: bool) -> Result<Classified, git2::Error> {
    if symlink {
        let obj = odb.read(oid)?;
        return Ok(match parse_symlink_target(obj.data()) {
            Some(k) => Classified::Annexed(Arc::new(k)),
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
        Some(k) => Classified::Annexed(Arc::new(k)),
        None => Classified::Plain(size as u64),
    })
}

pub(super) fn classified_kind(c: Classified, oid: git2::Oid) -> EntryKind {
    match c {
        Classified::Annexed(k) => EntryKind::Annexed(k),
        Classified::Plain(size) => EntryKind::Plain { size, content: PlainContent::Blob(oid) },
        Classified::Symlink(t) => EntryKind::Symlink(t),
    }
}
