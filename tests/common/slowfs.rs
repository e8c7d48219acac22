//! A fault-injecting FUSE filesystem for tests: it mirrors a real directory read-only and
//! holds every `read` at a gate until the test opens it, to stand in for slow storage (a
//! sleeping USB disk, a slow NAS) under a directory special remote. The test sees how many
//! reads wait at the gate, so it knows, without guessing a time, that a read is stuck.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where reads wait until the test lets them through.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A mounted gated filesystem; dropping it opens the gate (even when a test panics), then
/// unmounts.
pub struct SlowMount {
    gate: Arc<Gate>,
    _session: fuser::BackgroundSession,
}

impl SlowMount {
    /// Reads waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.gate.waiting.load(Ordering::SeqCst)
    }
    /// Lets every read through, now and from now on.
    pub fn open(&self) {
        *self.gate.open.lock().unwrap() = true;
        self.gate.cv.notify_all();
    }
}

impl Drop for SlowMount {
    fn drop(&mut self) {
        self.open();
    }
}

struct SlowFs {
    gate: Arc<Gate>,
    inodes: Mutex<(Vec<PathBuf>, HashMap<PathBuf, u64>)>,
}

impl SlowFs {
    fn path(&self, ino: INodeNo) -> Option<PathBuf> {
        self.inodes.lock().unwrap().0.get(ino.0 as usize - 1).cloned()
    }
    fn ino(&self, p: &Path) -> u64 {
        let mut t = self.inodes.lock().unwrap();
        if let Some(&i) = t.1.get(p) {
            return i;
        }
        t.0.push(p.to_path_buf());
        let i = t.0.len() as u64;
        t.1.insert(p.to_path_buf(), i);
        i
    }
    fn attr(&self, p: &Path) -> std::io::Result<FileAttr> {
        let md = std::fs::symlink_metadata(p)?;
        let t = md.modified()?;
        Ok(FileAttr {
            ino: INodeNo(self.ino(p)),
            size: md.len(),
            blocks: md.blocks(),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if md.is_dir() { FileType::Directory } else { FileType::RegularFile },
            perm: (md.mode() & 0o7777) as u16,
            nlink: 1,
            uid: md.uid(),
            gid: md.gid(),
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }
}

impl Filesystem for SlowFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.path(parent) else { return reply.error(Errno::ENOENT) };
        match self.attr(&p.join(name)) {
            Ok(a) => reply.entry(&Duration::from_secs(60), &a, Generation(0)),
            Err(_) => reply.error(Errno::ENOENT),
        }
    }
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).map(|p| self.attr(&p)) {
            Some(Ok(a)) => reply.attr(&Duration::from_secs(60), &a),
            _ => reply.error(Errno::ENOENT),
        }
    }
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(p) = self.path(ino) else { return reply.error(Errno::ENOENT) };
        let gate = self.gate.clone();
        std::thread::spawn(move || {
            gate.pass();
            let f = match std::fs::File::open(&p) {
                Ok(f) => f,
                Err(_) => return reply.error(Errno::EIO),
            };
            let mut buf = vec![0u8; size as usize];
            match f.read_at(&mut buf, offset) {
                Ok(n) => reply.data(&buf[..n]),
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }
}

/// Mounts `root` at `mountpoint` with every read held at a closed gate; unmounted when dropped.
pub fn mount_gated(root: &Path, mountpoint: &Path) -> SlowMount {
    let gate = Arc::new(Gate::default());
    let fs = SlowFs { gate: gate.clone(), inodes: Mutex::new((vec![root.to_path_buf()], HashMap::new())) };
    fs.inodes.lock().unwrap().1.insert(root.to_path_buf(), 1);
    let mut cfg = fuser::Config::default();
    cfg.mount_options.push(fuser::MountOption::RO);
    cfg.mount_options.push(fuser::MountOption::FSName("slowfs".into()));
    cfg.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, mountpoint, &cfg).expect("mount the slow test filesystem");
    SlowMount { gate, _session: session }
}
