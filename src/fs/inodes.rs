//! Inode numbers for (path, identity) pairs; see the module doc of [`crate::fs`]. Numbers are
//! never reused, so an inode's attributes and bytes never change.
//!
//! Compact, because `find` over a mount hands out an inode per file: inode numbers are dense
//! (from [`ROOT_INO`] up), so an inode's path and identity sit in a `Vec` at its number, the
//! paths end to end in one byte arena (no allocation per inode), and the reverse look-up is a
//! map from a 64-bit hash of (path, identity) to the number, checked against the entry. The
//! rare pair whose hash another pair already has goes to a small map of its own.

use super::ROOT_INO;
use crate::annex::Key;
use crate::annex::namespace::{EntryKind, PlainContent};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

/// The identity of what is at a path; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Ident {
    Dir,
    /// Shares the key with the namespace.
    Annexed(Arc<Key>),
    Plain(PlainId),
    Symlink(Box<[u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum PlainId {
    Blob(git2::Oid),
    /// A working-tree file: its size and mtime stand for its content.
    Worktree(u64, SystemTime),
}

pub(super) fn ident_of(kind: &EntryKind, mtime: SystemTime) -> Ident {
    match kind {
        EntryKind::Dir => Ident::Dir,
        EntryKind::Annexed(k) => Ident::Annexed(k.clone()),
        EntryKind::Plain { content: PlainContent::Blob(oid), .. } => Ident::Plain(PlainId::Blob(*oid)),
        EntryKind::Plain { size, content: PlainContent::Worktree(_) } => Ident::Plain(PlainId::Worktree(*size, mtime)),
        EntryKind::Symlink(t) => Ident::Symlink(t.as_slice().into()),
    }
}

/// One inode: where its path is in the arena, and its identity.
struct Entry {
    off: usize,
    len: usize,
    ident: Ident,
}

/// A fixed hasher: the map's keys are already hashes.
type Identity = BuildHasherDefault<PassThrough>;

#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Inode numbers for (path, identity) pairs. Numbers are never reused.
pub(super) struct InodeTable {
    /// Every inode's path, end to end.
    paths: Vec<u8>,
    /// Inode `ROOT_INO + i` is `entries[i]`.
    entries: Vec<Entry>,
    /// Hash of (path, identity) → inode number.
    by_hash: HashMap<u64, u64, Identity>,
    /// Pairs whose hash an earlier pair has.
    collided: HashMap<(Box<[u8]>, Ident), u64>,
}

fn hash_of(path: &[u8], ident: &Ident) -> u64 {
    // SipHash with fixed keys: spread well, the same in every run.
    let mut h = std::hash::BuildHasherDefault::<DefaultHasher>::default().build_hasher();
    path.hash(&mut h);
    ident.hash(&mut h);
    h.finish()
}

impl InodeTable {
    pub(super) fn new() -> InodeTable {
        let mut t = InodeTable {
            paths: Vec::new(),
            entries: Vec::new(),
            by_hash: HashMap::default(),
            collided: HashMap::new(),
        };
        t.push(b"", Ident::Dir);
        t
    }

    fn push(&mut self, path: &[u8], ident: Ident) -> u64 {
        let ino = ROOT_INO + self.entries.len() as u64;
        let h = hash_of(path, &ident);
        let off = self.paths.len();
        self.paths.extend_from_slice(path);
        match self.by_hash.entry(h) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert((path.into(), ident.clone()), ino);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(ino);
            }
        }
        self.entries.push(Entry { off, len: path.len(), ident });
        ino
    }

    fn entry(&self, ino: u64) -> Option<&Entry> {
        self.entries.get(usize::try_from(ino.checked_sub(ROOT_INO)?).ok()?)
    }

    fn path(&self, e: &Entry) -> &[u8] {
        &self.paths[e.off..e.off + e.len]
    }

    /// The inode number of (path, identity), a new one the first time.
    pub(super) fn ino(&mut self, path: &[u8], ident: &Ident) -> u64 {
        if let Some(&ino) = self.by_hash.get(&hash_of(path, ident)) {
            if let Some(e) = self.entry(ino)
                && self.path(e) == path
                && &e.ident == ident
            {
                return ino;
            }
            if let Some(&ino) = self.collided.get(&(path.into(), ident.clone())) {
                return ino;
            }
        }
        self.push(path, ident.clone())
    }

    /// The path and identity inode `ino` stands for.
    pub(super) fn get(&self, ino: u64) -> Option<(Vec<u8>, Ident)> {
        let e = self.entry(ino)?;
        Some((self.path(e).to_vec(), e.ident.clone()))
    }

    /// How many inode numbers were handed out (the root included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_follow_identity() {
        let mut t = InodeTable::new();
        let k1 = Arc::new(Key::parse_str("SHA256E-s1--a").unwrap());
        let k2 = Arc::new(Key::parse_str("SHA256E-s2--b").unwrap());
        let a = t.ino(b"f", &Ident::Annexed(k1.clone()));
        assert_eq!(t.ino(b"f", &Ident::Annexed(k1.clone())), a);
        let b = t.ino(b"f", &Ident::Annexed(k2));
        assert_ne!(a, b, "another key at the same path is another inode");
        assert_eq!(t.ino(b"", &Ident::Dir), ROOT_INO);
        assert_eq!(t.get(a), Some((b"f".to_vec(), Ident::Annexed(k1))));
        assert_eq!(t.get(ROOT_INO), Some((Vec::new(), Ident::Dir)));
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(b + 1), None);
    }

    #[test]
    fn many_paths_keep_their_numbers() {
        let mut t = InodeTable::new();
        let inos: Vec<u64> = (0..10_000).map(|i| t.ino(format!("d/{i}").as_bytes(), &Ident::Dir)).collect();
        for (i, &ino) in inos.iter().enumerate() {
            assert_eq!(t.ino(format!("d/{i}").as_bytes(), &Ident::Dir), ino);
            assert_eq!(t.get(ino).map(|(p, _)| p), Some(format!("d/{i}").into_bytes()));
        }
        assert_eq!(t.len(), 10_001);
    }

    #[test]
    fn pairs_with_the_same_hash_get_their_own_numbers() {
        let mut t = InodeTable::new();
        let a = t.ino(b"a", &Ident::Dir);
        // Pretend "b" hashes like "a": its number is kept apart, and found again.
        let h = hash_of(b"a", &Ident::Dir);
        let ino = t.push(b"b", Ident::Dir);
        assert_eq!(t.by_hash.get(&h), Some(&a));
        assert_eq!(t.collided.get(&(b"b"[..].into(), Ident::Dir)), None, "b's own hash was free");
        // A real collision: insert under a's hash by hand.
        t.collided.insert((b"c"[..].into(), Ident::Dir), 99);
        t.by_hash.insert(hash_of(b"c", &Ident::Dir), a);
        assert_eq!(t.ino(b"c", &Ident::Dir), 99, "a hash hit on another entry falls back to the collided pairs");
        assert_eq!(t.ino(b"b", &Ident::Dir), ino);
    }
}
