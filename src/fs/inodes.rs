//! Inode numbers for (path, identity) pairs; see the module doc of [`crate::fs`]. Numbers are
//! never reused, so an inode's attributes and bytes never change.

use super::ROOT_INO;
use crate::annex::Key;
use crate::annex::namespace::{EntryKind, PlainContent};
use std::collections::HashMap;
use std::time::SystemTime;

/// The identity of what is at a path; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Ident {
    Dir,
    Annexed(Key),
    Plain(PlainId),
    Symlink(Vec<u8>),
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
        EntryKind::Symlink(t) => Ident::Symlink(t.clone()),
    }
}

/// Inode numbers for (path, identity) pairs. Numbers are never reused.
pub(super) struct InodeTable {
    by_ident: HashMap<(Vec<u8>, Ident), u64>,
    pub(super) by_ino: HashMap<u64, (Vec<u8>, Ident)>,
    next: u64,
}

impl InodeTable {
    pub(super) fn new() -> InodeTable {
        let mut t = InodeTable { by_ident: HashMap::new(), by_ino: HashMap::new(), next: ROOT_INO + 1 };
        t.by_ident.insert((Vec::new(), Ident::Dir), ROOT_INO);
        t.by_ino.insert(ROOT_INO, (Vec::new(), Ident::Dir));
        t
    }

    pub(super) fn ino(&mut self, path: &[u8], ident: &Ident) -> u64 {
        if let Some(&ino) = self.by_ident.get(&(path.to_vec(), ident.clone())) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ident.insert((path.to_vec(), ident.clone()), ino);
        self.by_ino.insert(ino, (path.to_vec(), ident.clone()));
        ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_follow_identity() {
        let mut t = InodeTable::new();
        let k1 = Key::parse_str("SHA256E-s1--a").unwrap();
        let k2 = Key::parse_str("SHA256E-s2--b").unwrap();
        let a = t.ino(b"f", &Ident::Annexed(k1.clone()));
        assert_eq!(t.ino(b"f", &Ident::Annexed(k1)), a);
        let b = t.ino(b"f", &Ident::Annexed(k2));
        assert_ne!(a, b, "another key at the same path is another inode");
        assert_eq!(t.ino(b"", &Ident::Dir), ROOT_INO);
    }
}
