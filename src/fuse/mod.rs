//! The fuser adapter: unpacks requests, calls [`MountFs`], replies. No policy lives here
//! except what is FUSE-specific: TTLs, open flags, kernel passthrough bookkeeping, and which
//! processes get attributes with their listings (`listers.rs`).
//!
//! Reads run on a blocking thread pool (the reply is sent from there), so a slow source never
//! holds a FUSE thread; metadata requests are answered from memory on the FUSE threads.
//!
//! Passthrough (Linux ≥ 6.9, needs CAP_SYS_ADMIN): content held whole in one local file (the
//! repository's own annex, a local clone or bare repository, an unchunked directory remote;
//! `AnnexFs::whole_local`) is handed to the kernel, which then reads that file directly. The kernel
//! allows one backing file per inode at a time and no mixing of passthrough and normal opens
//! on one inode, so `Passthrough::inodes` keeps one `BackingId` per inode while any passthrough
//! handle is open, and never uses passthrough for an inode with normal opens.
//!
//! Lock order: `Passthrough::inodes` → `Passthrough::by_fh`; the listers' lock is taken alone.

mod listers;

use crate::fs::{Attr, FsError, Kind, MountFs};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long the kernel may cache attributes: an inode's attributes never change (see
/// `crate::fs`), so this is long. Keys without a size are the exception: TTL 0.
pub const ATTR_TTL: Duration = Duration::from_secs(24 * 3600);
/// Entry TTL of a ref view, which never changes.
pub const STATIC_ENTRY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Entry TTL of the live working-tree view: names are re-checked this often, so changes in
/// the repository show within about this time.
pub const LIVE_ENTRY_TTL: Duration = Duration::from_secs(1);
/// Readahead asked of the kernel (it may grant less).
const MAX_READAHEAD: u32 = 1 << 20;

#[derive(Default)]
struct PtInode {
    backing: Weak<BackingId>,
    normal_opens: u32,
}

type OpenHandle = (u64, Option<Arc<BackingId>>);

#[derive(Default)]
struct Passthrough {
    enabled: AtomicBool,
    inodes: Mutex<HashMap<u64, PtInode>>,
    /// Open handle → (inode, its backing file if opened in passthrough mode).
    by_fh: Mutex<HashMap<u64, OpenHandle>>,
    failures: AtomicU64,
}

fn attr_ttl(a: &Attr, entry_ttl: Duration) -> Duration {
    // A directory's mtime follows the working tree; file attributes never change, except
    // the size of a key without one, which is learnt (asked again at every stat).
    if a.volatile {
        Duration::ZERO
    } else if a.kind == Kind::Dir {
        entry_ttl
    } else {
        ATTR_TTL
    }
}

/// The entry TTL of a name: none for a key without a size, so that every lookup sees its
/// size as learnt so far.
fn entry_ttl_of(a: &Attr, entry_ttl: Duration) -> Duration {
    if a.volatile { Duration::ZERO } else { entry_ttl }
}

/// Look-ups, answerable from any thread.
struct Lookups {
    fs: Arc<MountFs>,
    entry_ttl: Duration,
}

impl Lookups {
    /// Answers the look-up; whether it found a directory (`None`: nothing found).
    fn lookup_now(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) -> Option<bool> {
        match self.fs.lookup(parent.0, name) {
            Ok(a) => {
                reply.entry_with_ttls(
                    &attr_ttl(&a, self.entry_ttl),
                    &entry_ttl_of(&a, self.entry_ttl),
                    &file_attr(&a),
                    Generation(0),
                );
                Some(matches!(a.kind, Kind::Dir))
            }
            Err(e) => {
                reply.error(errno(&e));
                None
            }
        }
    }
}

/// The `fuser::Filesystem` of annexfs.
pub struct FuseAdapter {
    fs: Arc<MountFs>,
    pool: tokio::runtime::Handle,
    entry_ttl: Duration,
    want_passthrough: bool,
    /// Ask the kernel for READDIRPLUS (see `init`).
    want_readdirplus: bool,
    /// Which processes get attributes with their listings (`listers.rs`).
    listers: listers::Listers,
    pt: Passthrough,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: &crate::fs::FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
            Kind::Symlink => FileType::Symlink,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        flags: 0,
        blksize: 1 << 16,
    }
}

/// How the adapter serves.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The view follows the repository (short entry TTL).
    pub live: bool,
    /// Try kernel passthrough for local content.
    pub passthrough: bool,
    /// Ask the kernel for READDIRPLUS, for the processes that stat what they list
    /// (`listers.rs`); else plain listings only.
    pub readdirplus: bool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<MountFs>, pool: tokio::runtime::Handle, o: Options) -> FuseAdapter {
        FuseAdapter {
            fs,
            pool,
            entry_ttl: if o.live { LIVE_ENTRY_TTL } else { STATIC_ENTRY_TTL },
            want_passthrough: o.passthrough,
            want_readdirplus: o.readdirplus,
            listers: listers::Listers::default(),
            pt: Passthrough::default(),
        }
    }

    /// Runs `f` (an answer about `ino`) here, or on the blocking pool when `ino` is inside a
    /// nested repository not opened yet (a clone): then only this request waits for it.
    fn here_or_on_pool(&self, ino: INodeNo, f: impl FnOnce() + Send + 'static) {
        if self.fs.would_wait(ino.0) {
            self.pool.spawn_blocking(f);
        } else {
            f();
        }
    }

    /// What answering a look-up needs, detached from the adapter (to move to another thread).
    fn detached(&self) -> Lookups {
        Lookups { fs: self.fs.clone(), entry_ttl: self.entry_ttl }
    }

    fn ttl(&self, a: &Attr) -> Duration {
        attr_ttl(a, self.entry_ttl)
    }

    /// Opens `ino` in passthrough mode if possible; `None` means use a normal open. The
    /// backing file is the one local file holding the whole content (the repository's own
    /// object, or a local clone's, a bare repository's, an unchunked directory remote's).
    fn try_passthrough(&self, ino: u64, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        if !self.pt.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut inodes = lock(&self.pt.inodes);
        let st = inodes.entry(ino).or_default();
        if st.normal_opens > 0 {
            return None;
        }
        // While a passthrough handle is open, every open of the inode must share its backing
        // file (even if the object was dropped meanwhile: the kernel still holds it open).
        if let Some(id) = st.backing.upgrade() {
            return Some(id);
        }
        let local = self.fs.whole_local(ino)?;
        match reply.open_backing(local.file()) {
            Ok(id) => {
                let id = Arc::new(id);
                st.backing = Arc::downgrade(&id);
                Some(id)
            }
            Err(e) => {
                // EPERM: no CAP_SYS_ADMIN or a stacked filesystem; normal reads still work.
                if self.pt.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::info!(
                        "kernel passthrough unavailable for {} ({e}); reading through annexfs",
                        crate::source::RangeRead::describe(&local)
                    );
                }
                None
            }
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Optional capabilities: each is skipped if the kernel lacks it.
        for flag in [InitFlags::FUSE_PARALLEL_DIROPS, InitFlags::FUSE_CACHE_SYMLINKS] {
            let _ = config.add_capabilities(flag);
        }
        // READDIRPLUS, answered in full only to processes that stat what they list
        // (`listers.rs`; AUTO lets the others' listings go on as plain ones).
        if self.want_readdirplus {
            for flag in [InitFlags::FUSE_DO_READDIRPLUS, InitFlags::FUSE_READDIRPLUS_AUTO] {
                let _ = config.add_capabilities(flag);
            }
        }
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.pt.enabled.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // Inside a nested repository not opened yet (a clone): answered from the blocking
        // pool, so that only this request waits for it.
        if self.fs.would_wait(parent.0) {
            let this = self.detached();
            let name = name.to_os_string();
            self.pool.spawn_blocking(move || {
                this.lookup_now(parent, &name, reply);
            });
            return;
        }
        if let Some(is_dir) = self.detached().lookup_now(parent, name, reply) {
            self.listers.looked_up(req.pid(), parent.0, is_dir);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let fh = match self.fs.open(ino.0, write) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(&e)),
        };
        let backing = self.try_passthrough(ino.0, &reply);
        match &backing {
            Some(_) => {}
            None => lock(&self.pt.inodes).entry(ino.0).or_default().normal_opens += 1,
        }
        lock(&self.pt.by_fh).insert(fh, (ino.0, backing.clone()));
        // Content at an inode never changes, so the page cache is kept across opens. Not with
        // passthrough: the kernel then uses the backing file's cache, and FOPEN_KEEP_CACHE
        // together with passthrough makes every read fail with EIO (seen on Linux 6.18).
        // Content of unknown size is read with direct I/O: the kernel would cut reads at the
        // size it was shown (0), and the read must reach the content's real end.
        match backing {
            Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            None if self.fs.size_unknown(ino.0) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            None if self.fs.keep_cache(ino.0) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            None => reply.opened(FileHandle(fh), FopenFlags::empty()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let rt = self.pool.clone();
        // The one async boundary: a read may wait on the network, so it leaves the FUSE
        // threads for the blocking pool and runs the filesystem's read there to completion.
        self.pool.spawn_blocking(move || match rt.block_on(fs.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        });
    }

    /// Every close(2) flushes. Nothing is ever written, so there is nothing to flush; answering
    /// (instead of fuser's default ENOSYS) keeps a warning per close out of the log.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        let mut inodes = lock(&self.pt.inodes);
        if let Some((ino, backing)) = lock(&self.pt.by_fh).remove(&fh.0) {
            if backing.is_none()
                && let Some(st) = inodes.get_mut(&ino)
            {
                st.normal_opens = st.normal_opens.saturating_sub(1);
            }
            // Dropping the last strong reference closes the kernel's backing file.
            drop(backing);
            if let Some(st) = inodes.get(&ino)
                && st.normal_opens == 0
                && st.backing.strong_count() == 0
            {
                inodes.remove(&ino);
            }
        }
        reply.ok();
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if offset == 0 {
            self.listers.listing(req.pid(), ino.0);
        }
        let fs = self.fs.clone();
        let list = move || {
            let listed = fs.readdir(ino.0, offset, false, |name, attr, next| {
                reply.add(INodeNo(attr.ino), next, file_attr(attr).kind, name)
            });
            match listed {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        };
        self.here_or_on_pool(ino, list);
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        // The first part of a listing: every entry with its attributes only for a process
        // that stats what it lists; for the others `.`, `..` and the directories before the
        // first other entry (they are descended into: their look-ups are saved), and the
        // kernel asks the rest as a plain listing (`listers.rs`).
        let full = offset != 0 || self.listers.listing(req.pid(), ino.0);
        let (fs, entry_ttl) = (self.fs.clone(), self.entry_ttl);
        let list = move || {
            let listed = fs.readdir(ino.0, offset, true, |name, attr, next| {
                if !full && next > 2 && !matches!(attr.kind, Kind::Dir) {
                    return true;
                }
                // `.` and `..` must not create dentries.
                let ttl = if next <= 2 || attr.volatile { Duration::ZERO } else { entry_ttl };
                reply.add(INodeNo(attr.ino), next, name, &ttl, &file_attr(attr), Generation(0))
            });
            match listed {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        };
        self.here_or_on_pool(ino, list);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.fs.entry_count();
        reply.statfs(0, 0, 0, files, 0, 1 << 16, 255, 1 << 16);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(errno(&FsError::Range)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(errno(&FsError::Range)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.bits() & libc::W_OK != 0 {
            return reply.error(errno(&FsError::ReadOnly));
        }
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
