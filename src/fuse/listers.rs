//! Which processes stat what they list: they get every entry's attributes with their
//! listings (READDIRPLUS), the others plain listings.
//!
//! With READDIRPLUS the kernel makes an inode and a dentry for every entry listed, and it asks
//! for the attributes with the first listing of every directory (`READDIRPLUS_AUTO` only
//! decides for the listing's later parts). `find` over a million files never uses them: 3.4 s
//! with them, 2.2 s without. Without them a program that stats what it lists (`ls -l`, `du`,
//! `rsync`) asks a LOOKUP per entry, a round trip each: `ls -lR` of a million files 27-33 s
//! instead of 5 s. So the adapter answers the first part of a listing:
//!
//! - to a process that stats what it lists: with every entry and its attributes;
//! - to any other: with `.`, `..` (the kernel makes no inode for them) and the directories
//!   that come before the first other entry (a walk descends into them: their look-ups are
//!   saved), so that the kernel asks for the rest as a plain listing (`READDIRPLUS_AUTO`: no
//!   look-up in the directory came in between). A walk like `find` then pays about what
//!   plain listings cost it: one more round trip per directory of files, one look-up less
//!   per directory.
//!
//! A process stats what it lists once it has looked up an entry that is not a directory in
//! the directory it listed last (descending into subdirectories, as `find` does, is not
//! stating). Such a process pays plain listings for its first directory only. Processes are
//! told apart by the pid the kernel gives with each request; [`REMEMBERED`] are kept (least
//! recently seen forgotten), a pid used again by another program at worst costs it the
//! first directory's speed.
//!
//! One lock, held for a map operation.

use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Processes remembered.
const REMEMBERED: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
struct Lister {
    /// The directory it listed last.
    dir: u64,
    /// It looks up what it lists.
    stats: bool,
}

/// See the module doc.
pub(super) struct Listers(Mutex<lru::LruCache<u32, Lister>>);

impl Default for Listers {
    fn default() -> Listers {
        Listers(Mutex::new(lru::LruCache::new(NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN))))
    }
}

impl Listers {
    fn map(&self) -> std::sync::MutexGuard<'_, lru::LruCache<u32, Lister>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Process `pid` lists directory `dir`: whether it is to get the entries' attributes.
    pub(super) fn listing(&self, pid: u32, dir: u64) -> bool {
        let mut m = self.map();
        let l = m.get_or_insert_mut(pid, Lister::default);
        l.dir = dir;
        l.stats
    }

    /// Process `pid` looked up an entry of directory `parent` (`is_dir`: a directory).
    pub(super) fn looked_up(&self, pid: u32, parent: u64, is_dir: bool) {
        if is_dir {
            return;
        }
        if let Some(l) = self.map().get_mut(&pid)
            && l.dir == parent
        {
            l.stats = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_stats_what_it_lists_gets_attributes() {
        let l = Listers::default();
        // find: lists, descends into subdirectories.
        assert!(!l.listing(10, 1));
        l.looked_up(10, 1, true);
        assert!(!l.listing(10, 2));
        // ls -l: lists, then looks up the files it listed.
        assert!(!l.listing(20, 1));
        l.looked_up(20, 1, false);
        assert!(l.listing(20, 2));
        // A look-up elsewhere than in the directory listed last says nothing.
        assert!(!l.listing(30, 1));
        l.looked_up(30, 7, false);
        assert!(!l.listing(30, 2));
        // A process never seen listing: nothing to learn.
        l.looked_up(40, 1, false);
        assert!(!l.listing(40, 1));
    }
}
