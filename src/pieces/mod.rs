//! The persistent piece cache: content of keys that are not local, fetched by ranges.
//!
//! Layout under the cache root (default `$XDG_CACHE_HOME/annexfs`): `v1/keys/XX/H.data` is a
//! sparse file of the key's size, `H.rec` its [`record::Record`], `H.lock` a lock file, where
//! `H` is a hash of the key (no text from the repository ends up in a path; the key itself is
//! in the record and compared on open). `v1/quarantine/` keeps data that failed verification.
//!
//! Invariants:
//! - **A piece is claimed only when its bytes are on disk.** A piece's bytes are written (and,
//!   before the record is rewritten, fdatasync'ed) before the record names it; the record is
//!   replaced atomically (temp, fsync, rename). After a crash at any moment the record claims
//!   only pieces whose bytes are in the data file.
//! - **Bytes served from the cache match the record**: each piece's hash is kept in the record
//!   and checked the first time the piece is read by this process; a mismatch drops the piece
//!   (it is fetched again), it is never served.
//! - **Several processes share the cache.** A process fetching a piece holds an OFD write lock
//!   on that piece's byte of `H.lock`, so no piece is fetched twice at once across mounts; a
//!   record rewrite holds the lock on a byte past all pieces and merges the record on disk with
//!   its own view, so no process loses another's pieces. Each process that has a key open holds
//!   a shared `flock` on `H.lock`, which eviction respects.
//! - **The repository's own annex is never touched.**
//!
//! Lock order: `PieceStore::inner` → `CachedKey::state`.

pub mod record;

use crate::annex::Key;
use record::{FLAG_VERIFIED, PieceHash, Record, piece_count, piece_hash};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Smallest piece: the unit of bookkeeping and verification (requests cover runs of pieces).
pub const MIN_PIECE_SIZE: u64 = 256 * 1024;
/// Pieces grow for huge keys so that a record stays under about this many pieces.
const TARGET_MAX_PIECES: u64 = 16_384;
/// Default bound of the cache.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// Landed pieces are made durable in the record at least this often.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// … or after this many new pieces.
const PERSIST_PIECES: usize = 64;
/// The byte of `H.lock` locked while the record is rewritten (past any piece index).
const RECORD_LOCK_BYTE: i64 = 1 << 40;

/// Piece size for a key of `size` bytes: a power of two, so pieces align with BLAKE3 subtrees.
pub fn piece_size_for(size: u64) -> u64 {
    let want = size.div_ceil(TARGET_MAX_PIECES).max(MIN_PIECE_SIZE);
    want.checked_next_power_of_two().unwrap_or(MIN_PIECE_SIZE)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// OFD byte-range lock on `file` at `byte`: `Ok(true)` if taken (or released), `Ok(false)` if
/// another open file description holds it.
fn ofd_lock(file: &File, byte: i64, kind: libc::c_int, wait: bool) -> io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value, and every used field is set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // F_RDLCK/F_WRLCK/F_UNLCK and SEEK_SET are small constants that fit a short.
    #[allow(clippy::cast_possible_truncation)]
    {
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
    }
    fl.l_start = byte;
    fl.l_len = 1;
    let cmd = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    // SAFETY: a valid descriptor and a pointer to an initialised flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

fn flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: a valid descriptor.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

/// A claim on one piece: no other process fetches it while this lives.
pub struct PieceClaim {
    key: Arc<CachedKey>,
    piece: usize,
}

impl Drop for PieceClaim {
    fn drop(&mut self) {
        let _ = ofd_lock(&self.key.lockfile, self.piece as i64, libc::F_UNLCK, false);
    }
}

struct KeyState {
    pieces: Vec<Option<PieceHash>>,
    /// Pieces whose state this process knows first-hand: written here, or read and checked
    /// against their hash (or found damaged). Pieces learnt from the record are unchecked.
    checked: Vec<bool>,
    /// Pieces landed since the record was last written.
    unpersisted: usize,
    /// Pieces the record on disk named when this process last wrote or read it.
    durable: Vec<bool>,
    last_persist: Instant,
    flags: u32,
    /// Set when the whole key failed verification: nothing is served any more.
    poisoned: Option<String>,
}

/// One key in the cache, open in this process.
pub struct CachedKey {
    pub key: Key,
    pub size: u64,
    pub piece_size: u64,
    data: File,
    lockfile: File,
    data_path: PathBuf,
    rec_path: PathBuf,
    quarantine: PathBuf,
    state: Mutex<KeyState>,
    /// Serialises record rewrites within this process (the OFD lock only excludes other
    /// processes: every thread here shares one open file description).
    persisting: Mutex<()>,
    /// (mtime, length, inode) of the record file when last read or written here.
    record_seen: Mutex<Option<RecordStamp>>,
    /// Inode of the data file this process has open: if the path names another file (the
    /// cache was cleared and refilled meanwhile), records there are not about this data.
    data_ino: u64,
}

type RecordStamp = (Option<std::time::SystemTime>, u64, u64);

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cache is full ({used} of {limit} bytes in use by open keys)")]
    Full { used: u64, limit: u64 },
    #[error("{0}")]
    Poisoned(String),
    #[error("key {0} has no known size; only keys with a size can be cached")]
    NoSize(String),
    #[error("cache directory {path} is not safe to use: {why}")]
    Insecure { path: PathBuf, why: String },
}

impl CacheError {
    pub fn is_no_space(&self) -> bool {
        matches!(self, CacheError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
            || matches!(self, CacheError::Full { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// Creates `dir` (and its parents) private to this user, or checks that an existing one is
/// owned by this user and writable by nobody else: another user who could write in the cache
/// could plant pieces and records that annexfs would serve.
fn private_dir(dir: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    let md = std::fs::metadata(dir).map_err(io_err(dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let insecure = |why: String| Err(CacheError::Insecure { path: dir.to_path_buf(), why });
    if !md.is_dir() {
        return insecure("not a directory".into());
    }
    if md.uid() != me {
        return insecure(format!(
            "owned by uid {}, not by you (uid {me}); use a cache directory of your own",
            md.uid()
        ));
    }
    if md.mode() & 0o022 != 0 {
        return insecure(format!(
            "group- or world-writable (mode {:o}); `chmod 700 {}` or use another cache directory",
            md.mode() & 0o7777,
            dir.display()
        ));
    }
    Ok(())
}

impl CachedKey {
    pub fn piece_count(&self) -> usize {
        piece_count(self.size, self.piece_size)
    }

    /// Byte range of piece `i`.
    pub fn piece_range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.piece_size;
        (start, (start + self.piece_size).min(self.size))
    }

    /// Whether piece `i` is present (landed here or recorded by any process).
    pub fn has(&self, i: usize) -> bool {
        lock(&self.state).pieces.get(i).is_some_and(Option::is_some)
    }

    /// Present pieces and bytes.
    pub fn present(&self) -> (usize, u64) {
        let st = lock(&self.state);
        let n = st.pieces.iter().filter(|p| p.is_some()).count();
        let bytes = (0..st.pieces.len())
            .filter(|&i| st.pieces[i].is_some())
            .map(|i| {
                let (a, b) = self.piece_range(i);
                b - a
            })
            .sum();
        (n, bytes)
    }

    pub fn is_complete(&self) -> bool {
        lock(&self.state).pieces.iter().all(Option::is_some)
    }

    pub fn is_verified(&self) -> bool {
        lock(&self.state).flags & FLAG_VERIFIED != 0
    }

    pub fn poisoned(&self) -> Option<String> {
        lock(&self.state).poisoned.clone()
    }

    /// Tries to claim piece `i` for fetching (across processes).
    pub fn claim(self: &Arc<Self>, i: usize) -> io::Result<Option<PieceClaim>> {
        if ofd_lock(&self.lockfile, i as i64, libc::F_WRLCK, false)? {
            Ok(Some(PieceClaim { key: self.clone(), piece: i }))
        } else {
            Ok(None)
        }
    }

    /// Stores piece `i`. The bytes must be exactly the piece's length. Returns whether the
    /// record was rewritten (every landed piece is then durable and visible to other
    /// processes).
    pub fn write_piece(&self, i: usize, data: &[u8]) -> Result<bool, CacheError> {
        let (start, _) = self.piece_range(i);
        self.write_at(start, data)?;
        let persist = self.commit_piece(i, data)?;
        if persist {
            self.persist()?;
        }
        Ok(persist)
    }

    /// Writes bytes of the data file (part of a piece still arriving, or a whole piece) without
    /// claiming anything: nothing is present until [`CachedKey::commit_piece`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), CacheError> {
        if let Some(p) = self.poisoned() {
            return Err(CacheError::Poisoned(p));
        }
        if offset + data.len() as u64 > self.size {
            return Err(CacheError::Io {
                path: self.data_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "write past the end of the key"),
            });
        }
        self.data.write_all_at(data, offset).map_err(io_err(&self.data_path))
    }

    /// Marks piece `i` present once its bytes (`data`, exactly the piece) are in the data file.
    /// Returns whether the record is due to be rewritten (call [`CachedKey::persist`]).
    pub fn commit_piece(&self, i: usize, data: &[u8]) -> Result<bool, CacheError> {
        let (start, end) = self.piece_range(i);
        if data.len() as u64 != end - start {
            return Err(CacheError::Io {
                path: self.data_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "piece of the wrong length"),
            });
        }
        let h = piece_hash(data);
        let mut st = lock(&self.state);
        if st.pieces[i].is_none() {
            st.pieces[i] = Some(h);
            st.checked[i] = true;
            st.unpersisted += 1;
        }
        Ok(st.unpersisted >= PERSIST_PIECES || st.last_persist.elapsed() >= PERSIST_EVERY)
    }

    /// Replaces piece `i` (present or not) with `data`: a copy found bad is overwritten by one
    /// found good. The record names the new hash on the next persist.
    pub fn replace_piece(&self, i: usize, data: &[u8]) -> Result<(), CacheError> {
        let (start, end) = self.piece_range(i);
        if data.len() as u64 != end - start {
            return Err(CacheError::Io {
                path: self.data_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "piece of the wrong length"),
            });
        }
        let mut st = lock(&self.state);
        self.data.write_all_at(data, start).map_err(io_err(&self.data_path))?;
        st.pieces[i] = Some(piece_hash(data));
        st.checked[i] = true;
        st.unpersisted += 1;
        Ok(())
    }

    /// The hash the record holds for piece `i`, if present.
    pub fn recorded_hash(&self, i: usize) -> Option<PieceHash> {
        lock(&self.state).pieces.get(i).copied().flatten()
    }

    /// Reads bytes of the data file with no check: only for bytes of a piece still arriving,
    /// which this process wrote itself moments ago (stream mode).
    pub fn read_raw(&self, offset: u64, buf: &mut [u8]) -> Result<(), CacheError> {
        self.data.read_exact_at(buf, offset).map_err(io_err(&self.data_path))
    }

    /// Pieces landed here that the record on disk does not name yet.
    pub fn unpersisted(&self) -> usize {
        lock(&self.state).unpersisted
    }

    /// Reads `buf.len()` bytes at `offset`, all of which must be in present pieces. Each piece
    /// is checked against its recorded hash the first time this process reads it.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), CacheError> {
        if let Some(p) = self.poisoned() {
            return Err(CacheError::Poisoned(p));
        }
        let end = offset + buf.len() as u64;
        let first = usize::try_from(offset / self.piece_size).unwrap_or(usize::MAX);
        let last = usize::try_from(end.saturating_sub(1) / self.piece_size).unwrap_or(usize::MAX);
        for i in first..=last.min(self.piece_count().saturating_sub(1)) {
            self.check_piece(i)?;
        }
        self.data.read_exact_at(buf, offset).map_err(io_err(&self.data_path))
    }

    fn check_piece(&self, i: usize) -> Result<(), CacheError> {
        let expected = {
            let st = lock(&self.state);
            match st.pieces.get(i) {
                Some(Some(h)) if !st.checked[i] => *h,
                Some(Some(_)) => return Ok(()),
                _ => {
                    return Err(CacheError::Io {
                        path: self.data_path.clone(),
                        source: io::Error::new(io::ErrorKind::NotFound, format!("piece {i} is not cached")),
                    });
                }
            }
        };
        let (a, b) = self.piece_range(i);
        let mut buf = vec![0u8; usize::try_from(b - a).unwrap_or(0)];
        self.data.read_exact_at(&mut buf, a).map_err(io_err(&self.data_path))?;
        let mut st = lock(&self.state);
        if piece_hash(&buf) == expected {
            st.checked[i] = true;
            Ok(())
        } else {
            tracing::warn!("cached piece {i} of {} does not match its record; dropping it", self.key);
            st.pieces[i] = None;
            // Known bad here: a merge with the record on disk must not bring it back.
            st.checked[i] = true;
            st.unpersisted += 1;
            Err(CacheError::Io {
                path: self.data_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("piece {i} failed its check")),
            })
        }
    }

    /// [`CachedKey::reload`] if the record file changed since this process last looked.
    pub fn reload_if_changed(&self) {
        let stamp = std::fs::metadata(&self.rec_path).ok().map(|m| (m.modified().ok(), m.len(), m.ino()));
        {
            let mut seen = lock(&self.record_seen);
            if *seen == stamp {
                return;
            }
            *seen = stamp;
        }
        self.reload();
    }

    /// Whether the data file at the key's path is still the one this process has open.
    fn same_data_file(&self) -> bool {
        std::fs::metadata(&self.data_path).is_ok_and(|m| m.ino() == self.data_ino)
    }

    /// Reads the record on disk and adds the pieces other processes landed.
    pub fn reload(&self) {
        if !self.same_data_file() {
            return;
        }
        let Some(rec) = read_record(&self.rec_path, &self.key, self.size, self.piece_size) else { return };
        let mut st = lock(&self.state);
        for (i, p) in rec.pieces.into_iter().enumerate() {
            if st.pieces[i].is_none() && p.is_some() && !st.checked[i] {
                st.pieces[i] = p;
            }
        }
        st.flags |= rec.flags & FLAG_VERIFIED;
    }

    /// Makes landed pieces durable: fdatasync the data, then merge and rewrite the record.
    pub fn persist(&self) -> Result<(), CacheError> {
        let _one_at_a_time = lock(&self.persisting);
        if !self.same_data_file() {
            // The cache was cleared under this process: its pieces are in a deleted file, and
            // a record written now would claim them for a file that does not have them.
            return Err(CacheError::Io {
                path: self.data_path.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "the cache was cleared while this key was open"),
            });
        }
        self.data.sync_data().map_err(io_err(&self.data_path))?;
        ofd_lock(&self.lockfile, RECORD_LOCK_BYTE, libc::F_WRLCK, true).map_err(io_err(&self.rec_path))?;
        let result = self.merge_and_write();
        let _ = ofd_lock(&self.lockfile, RECORD_LOCK_BYTE, libc::F_UNLCK, false);
        result
    }

    /// Merges the record on disk into this view and writes the result (record lock held).
    fn merge_and_write(&self) -> Result<(), CacheError> {
        let written: Vec<bool>;
        {
            let disk = read_record(&self.rec_path, &self.key, self.size, self.piece_size);
            let rec = {
                let mut st = lock(&self.state);
                if let Some(d) = disk {
                    for (i, p) in d.pieces.into_iter().enumerate() {
                        // Another process's pieces, unless this one found that piece damaged.
                        if st.pieces[i].is_none() && p.is_some() && !st.checked[i] {
                            st.pieces[i] = p;
                        }
                    }
                    st.flags |= d.flags & FLAG_VERIFIED;
                }
                st.unpersisted = 0;
                st.last_persist = Instant::now();
                Record {
                    key: self.key.to_bytes(),
                    size: self.size,
                    piece_size: self.piece_size,
                    flags: st.flags,
                    pieces: st.pieces.clone(),
                }
            };
            written = rec.pieces.iter().map(Option::is_some).collect();
            write_atomic(&self.rec_path, &rec.encode())?;
        }
        lock(&self.state).durable = written;
        Ok(())
    }

    /// Whether the record on disk names piece `i` (so other processes can see it).
    pub fn is_durable(&self, i: usize) -> bool {
        lock(&self.state).durable.get(i).copied().unwrap_or(false)
    }

    /// Drops piece `i` to free space: forgotten by the record first, then its bytes are
    /// punched out of the data file (so the record never names a hole).
    pub fn drop_piece(&self, i: usize) -> Result<(), CacheError> {
        {
            let mut st = lock(&self.state);
            if st.pieces.get(i).is_none_or(Option::is_none) {
                return Ok(());
            }
            st.pieces[i] = None;
            // Known absent here: a merge with the record on disk must not bring it back.
            st.checked[i] = true;
        }
        self.persist()?;
        let (a, b) = self.piece_range(i);
        let (off, len) = (i64::try_from(a).unwrap_or(i64::MAX), i64::try_from(b - a).unwrap_or(0));
        // SAFETY: a valid descriptor; punching a hole only frees blocks of this file.
        let r = unsafe {
            libc::fallocate(self.data.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len)
        };
        if r != 0 {
            tracing::debug!("punch piece {i} of {}: {}", self.key, io::Error::last_os_error());
        }
        Ok(())
    }

    /// Marks the key verified (whole-key hash matched) and persists that.
    pub fn mark_verified(&self) -> Result<(), CacheError> {
        lock(&self.state).flags |= FLAG_VERIFIED;
        self.persist()
    }

    /// Moves the key's data aside and refuses to serve it any more.
    pub fn quarantine(&self, why: &str) {
        lock(&self.state).poisoned = Some(why.to_string());
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let base = self.data_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = private_dir(&self.quarantine);
        let _ = std::fs::rename(&self.data_path, self.quarantine.join(format!("{base}.{stamp}.data")));
        let _ = std::fs::rename(&self.rec_path, self.quarantine.join(format!("{base}.{stamp}.rec")));
        let _ = std::fs::write(self.quarantine.join(format!("{base}.{stamp}.why")), format!("{}\n{why}\n", self.key));
    }

    /// Opens the data file for whole-key reading (verification).
    pub fn data_file(&self) -> &File {
        &self.data
    }
}

impl Drop for CachedKey {
    fn drop(&mut self) {
        let unpersisted = lock(&self.state).unpersisted;
        if unpersisted > 0 && self.poisoned().is_none() {
            let _ = self.persist();
        }
    }
}

fn read_record(path: &Path, key: &Key, size: u64, piece_size: u64) -> Option<Record> {
    let bytes = std::fs::read(path).ok()?;
    let rec = Record::decode(&bytes);
    match rec {
        Some(r) if r.key == key.to_bytes() && r.size == size && r.piece_size == piece_size => Some(r),
        _ => {
            tracing::warn!("cache record {} is damaged or not for {key}; ignoring it", path.display());
            None
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("rec.tmp{}-{n}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CacheError::Io { path: path.to_path_buf(), source: e }
    })
}

struct StoreInner {
    open: HashMap<Vec<u8>, Weak<CachedKey>>,
}

/// The cache shared by every key of every mount of the user.
pub struct PieceStore {
    root: PathBuf,
    limit: u64,
    inner: Mutex<StoreInner>,
    /// Bytes in use as last counted, plus what this process added since.
    used: std::sync::atomic::AtomicU64,
    /// When the cache directory was last counted (other processes write to it too).
    counted: Mutex<Instant>,
}

/// How often the use of the cache is counted again from the directory.
const RECOUNT_EVERY: Duration = Duration::from_secs(30);

impl PieceStore {
    /// Opens (creating) the cache at `root` (the version directory is added), bounded by
    /// `limit` bytes.
    pub fn open(root: &Path, limit: u64) -> Result<PieceStore, CacheError> {
        let root = root.join("v1");
        let top = root.parent().unwrap_or(&root).to_path_buf();
        private_dir(&top)?;
        private_dir(&root)?;
        private_dir(&root.join("keys"))?;
        let store = PieceStore {
            root,
            limit,
            inner: Mutex::new(StoreInner { open: HashMap::new() }),
            used: Default::default(),
            counted: Mutex::new(Instant::now()),
        };
        store.used.store(store.used(), std::sync::atomic::Ordering::Relaxed);
        Ok(store)
    }

    /// The default cache directory: `$XDG_CACHE_HOME/annexfs`, else `~/.cache/annexfs`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("annexfs")
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn paths(&self, key: &Key) -> (PathBuf, String) {
        let h = blake3::hash(&key.to_bytes()).to_hex();
        let h = &h.as_str()[..40];
        (self.root.join("keys").join(&h[..2]), h.to_string())
    }

    /// Where the piece manifest of `key` is kept.
    fn manifest_path(&self, key: &Key) -> PathBuf {
        let (dir, h) = self.paths(key);
        dir.join(format!("{h}.manifest"))
    }

    /// Keeps the manifest of a key, as the manifest layer serialised it (the store does not
    /// interpret it: whoever loads it parses and checks it against the key).
    pub fn save_manifest_bytes(&self, key: &Key, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.manifest_path(key);
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        write_atomic(&path, bytes)
    }

    /// Whether a manifest of `key` is kept.
    pub fn has_manifest(&self, key: &Key) -> bool {
        self.manifest_path(key).is_file()
    }

    /// The kept manifest bytes of `key` (at most `max` bytes read), and where they are kept.
    pub fn load_manifest_bytes(&self, key: &Key, max: u64) -> Option<(Vec<u8>, PathBuf)> {
        let path = self.manifest_path(key);
        let f = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, max), &mut bytes).ok()?;
        Some((bytes, path))
    }

    /// Opens `key` only if the cache has a record of it (never creates files: for serving).
    pub fn open_existing(&self, key: &Key) -> Result<Option<Arc<CachedKey>>, CacheError> {
        let (_, rec) = self.files_of(key);
        if !rec.is_file() {
            return Ok(None);
        }
        self.open_key(key).map(Some)
    }

    /// Opens `key` in the cache (creating its files), shared with every other opener.
    pub fn open_key(&self, key: &Key) -> Result<Arc<CachedKey>, CacheError> {
        let size = key.size().ok_or_else(|| CacheError::NoSize(key.to_string_lossy()))?;
        let kb = key.to_bytes();
        let mut inner = lock(&self.inner);
        if let Some(k) = inner.open.get(&kb).and_then(Weak::upgrade) {
            return Ok(k);
        }
        let (dir, h) = self.paths(key);
        private_dir(&dir)?;
        let data_path = dir.join(format!("{h}.data"));
        let rec_path = dir.join(format!("{h}.rec"));
        let lock_path = dir.join(format!("{h}.lock"));
        let lockfile = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        flock(&lockfile, libc::LOCK_SH);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&data_path)
            .map_err(io_err(&data_path))?;
        let piece_size = piece_size_for(size);
        let rec = read_record(&rec_path, key, size, piece_size).unwrap_or_else(|| Record::empty(key, size, piece_size));
        // A data file of another length belongs to nothing this record can vouch for.
        let len = data.metadata().map_err(io_err(&data_path))?.len();
        let rec = if len != size {
            data.set_len(0).and_then(|()| data.set_len(size)).map_err(io_err(&data_path))?;
            // The record on disk goes too: merged back later, it would name pieces the reset
            // data file no longer has.
            let empty = Record::empty(key, size, piece_size);
            ofd_lock(&lockfile, RECORD_LOCK_BYTE, libc::F_WRLCK, true).map_err(io_err(&rec_path))?;
            let written = write_atomic(&rec_path, &empty.encode());
            let _ = ofd_lock(&lockfile, RECORD_LOCK_BYTE, libc::F_UNLCK, false);
            written?;
            empty
        } else {
            rec
        };
        let data_ino = data.metadata().map_err(io_err(&data_path))?.ino();
        let n = rec.pieces.len();
        let rec_durable: Vec<bool> = rec.pieces.iter().map(Option::is_some).collect();
        // Touch the record: the cache evicts least recently opened keys first.
        let _ = File::open(&rec_path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        let ck = Arc::new(CachedKey {
            key: key.clone(),
            size,
            piece_size,
            data,
            lockfile,
            data_path,
            rec_path,
            quarantine: self.root.join("quarantine"),
            state: Mutex::new(KeyState {
                pieces: rec.pieces,
                checked: vec![false; n],
                durable: rec_durable,
                unpersisted: 0,
                last_persist: Instant::now(),
                flags: rec.flags,
                poisoned: None,
            }),
            persisting: Mutex::new(()),
            record_seen: Mutex::new(None),
            data_ino,
        });
        inner.open.insert(kb, Arc::downgrade(&ck));
        inner.open.retain(|_, w| w.strong_count() > 0);
        Ok(ck)
    }

    /// Bytes of `key` present in the cache, from its record (without opening or creating
    /// anything).
    pub fn present_bytes(&self, key: &Key) -> u64 {
        if let Some(k) = lock(&self.inner).open.get(&key.to_bytes()).and_then(Weak::upgrade) {
            return k.present().1;
        }
        let Some(size) = key.size() else { return 0 };
        let (dir, h) = self.paths(key);
        let path = dir.join(format!("{h}.rec"));
        if !path.exists() {
            return 0;
        }
        let ps = piece_size_for(size);
        read_record(&path, key, size, ps).map_or(0, |r| {
            (0..r.pieces.len())
                .filter(|&i| r.pieces[i].is_some())
                .map(|i| {
                    let start = i as u64 * ps;
                    (start + ps).min(size) - start
                })
                .sum()
        })
    }

    /// Bytes the cache uses on disk.
    pub fn used(&self) -> u64 {
        self.entries().iter().map(|e| e.bytes).sum()
    }

    fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.root.join("keys")) else { return out };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else { continue };
            let mut by_stem: HashMap<String, Entry> = HashMap::new();
            for f in files.flatten() {
                let p = f.path();
                let (Some(stem), Some(ext)) = (p.file_stem(), p.extension()) else { continue };
                let Ok(md) = f.metadata() else { continue };
                let e = by_stem.entry(stem.to_string_lossy().into_owned()).or_insert_with(|| Entry {
                    stem: d.path().join(stem),
                    bytes: 0,
                    used: std::time::SystemTime::UNIX_EPOCH,
                });
                e.bytes += md.blocks() * 512;
                if ext == "rec" {
                    e.used = md.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                }
            }
            out.extend(by_stem.into_values());
        }
        out
    }

    /// Notes that `bytes` were freed by dropping pieces of an open key.
    pub fn released(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.used.fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// Accounts for `need` more bytes about to be written, evicting if the cache would grow
    /// past its limit. Cheap while there is room; counts the directory again now and then.
    pub fn reserve(&self, need: u64) -> Result<(), CacheError> {
        use std::sync::atomic::Ordering::Relaxed;
        let used = self.used.load(Relaxed);
        if used + need <= self.limit && lock(&self.counted).elapsed() < RECOUNT_EVERY {
            self.used.fetch_add(need, Relaxed);
            return Ok(());
        }
        let after = self.make_room(need)?;
        *lock(&self.counted) = Instant::now();
        self.used.store(after + need, Relaxed);
        Ok(())
    }

    /// Makes room for `need` more bytes: evicts least recently opened keys that no process has
    /// open. Fails if the keys in use alone exceed the limit. Returns the bytes in use after.
    /// The data and record files of `key` (for tools and tests that inspect the cache).
    pub fn files_of(&self, key: &Key) -> (PathBuf, PathBuf) {
        let (dir, h) = self.paths(key);
        (dir.join(format!("{h}.data")), dir.join(format!("{h}.rec")))
    }

    /// Removes `key` from the cache, unless a process has it open (its manifest is kept).
    pub fn remove_key(&self, key: &Key) -> Result<bool, CacheError> {
        let (dir, h) = self.paths(key);
        let stem = dir.join(&h);
        let lock_path = stem.with_extension("lock");
        let Ok(lf) = OpenOptions::new().read(true).write(true).open(&lock_path) else { return Ok(false) };
        if !flock(&lf, libc::LOCK_EX | libc::LOCK_NB) {
            return Ok(false);
        }
        for ext in ["rec", "data", "lock"] {
            let p = stem.with_extension(ext);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::Io { path: p, source: e }),
            }
        }
        Ok(true)
    }

    pub fn make_room(&self, need: u64) -> Result<u64, CacheError> {
        let mut entries = self.entries();
        let mut used: u64 = entries.iter().map(|e| e.bytes).sum();
        if used + need <= self.limit {
            return Ok(used);
        }
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if used + need <= self.limit {
                break;
            }
            let lock_path = e.stem.with_extension("lock");
            let Ok(lf) = OpenOptions::new().read(true).write(true).open(&lock_path) else { continue };
            // Any process with the key open holds a shared flock: skip it.
            if !flock(&lf, libc::LOCK_EX | libc::LOCK_NB) {
                continue;
            }
            for ext in ["rec", "data", "lock"] {
                let _ = std::fs::remove_file(e.stem.with_extension(ext));
            }
            tracing::info!("cache: evicted {} ({} bytes)", e.stem.display(), e.bytes);
            used = used.saturating_sub(e.bytes);
        }
        if used + need > self.limit {
            return Err(CacheError::Full { used, limit: self.limit });
        }
        Ok(used)
    }
}

struct Entry {
    stem: PathBuf,
    bytes: u64,
    used: std::time::SystemTime,
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        Key::parse_str(&format!("SHA256E-s{n}--{:064x}.bin", n)).unwrap()
    }

    #[test]
    fn pieces_land_persist_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(600_000);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        {
            let store = PieceStore::open(dir.path(), 1 << 30).unwrap();
            let ck = store.open_key(&k).unwrap();
            assert_eq!(ck.piece_count(), 3);
            let (a, b) = ck.piece_range(1);
            ck.write_piece(1, &data[a as usize..b as usize]).unwrap();
            assert!(ck.has(1) && !ck.has(0));
            let mut buf = vec![0u8; 1000];
            ck.read(a + 5, &mut buf).unwrap();
            assert_eq!(buf, data[a as usize + 5..a as usize + 1005]);
            assert!(ck.read(0, &mut buf).is_err(), "piece 0 is not cached");
        }
        let store = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let ck = store.open_key(&k).unwrap();
        assert!(ck.has(1), "the record survives reopening");
        assert!(!ck.has(0));
    }

    #[test]
    fn a_damaged_piece_is_detected_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(300_000);
        let data = vec![7u8; 300_000];
        {
            let store = PieceStore::open(dir.path(), 1 << 30).unwrap();
            let ck = store.open_key(&k).unwrap();
            ck.write_piece(0, &data[..262_144]).unwrap();
            ck.persist().unwrap();
            // Flip a byte behind the cache's back.
            ck.data_file().write_all_at(&[8], 100).unwrap();
        }
        let store = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let ck = store.open_key(&k).unwrap();
        let mut buf = vec![0u8; 10];
        assert!(ck.read(95, &mut buf).is_err(), "a flipped byte is never served");
        assert!(!ck.has(0), "the damaged piece is dropped for refetching");
    }

    #[test]
    fn claims_exclude_other_openers() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1000);
        // Two stores stand for two processes: OFD locks are per open file description.
        let s1 = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let s2 = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let k1 = s1.open_key(&k).unwrap();
        let k2 = s2.open_key(&k).unwrap();
        let c = k1.claim(0).unwrap().expect("first claim");
        assert!(k2.claim(0).unwrap().is_none(), "claimed elsewhere");
        drop(c);
        assert!(k2.claim(0).unwrap().is_some());
        k2.write_piece(0, &vec![1u8; 1000]).unwrap();
        k2.persist().unwrap();
        k1.reload();
        assert!(k1.has(0), "pieces landed by another process are seen after reload");
    }

    #[test]
    fn concurrent_persists_in_one_process_never_fail() {
        // Regression: threads share one open file description, so the record lock did not
        // exclude them and two renames of the same temporary file raced (ENOENT).
        let dir = tempfile::tempdir().unwrap();
        let store = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let k = key(64 * 1024 * 8);
        let ck = store.open_key(&k).unwrap();
        std::thread::scope(|s| {
            for t in 0..8usize {
                let ck = ck.clone();
                s.spawn(move || {
                    for _ in 0..20 {
                        ck.persist().unwrap();
                    }
                    let (a, b) = ck.piece_range(t % ck.piece_count());
                    ck.write_piece(t % ck.piece_count(), &vec![t as u8; (b - a) as usize]).unwrap();
                    ck.persist().unwrap();
                });
            }
        });
    }

    #[test]
    fn a_process_whose_cache_was_cleared_never_writes_records_into_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(300_000);
        let old = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let old_key = old.open_key(&k).unwrap();
        old_key.write_piece(0, &vec![5u8; 262_144]).unwrap();
        std::fs::remove_dir_all(dir.path().join("v1")).unwrap();
        let new = PieceStore::open(dir.path(), 1 << 30).unwrap();
        let new_key = new.open_key(&k).unwrap();
        assert!(old_key.persist().is_err(), "the old process refuses to write a record");
        new_key.reload();
        assert!(!new_key.has(0), "nothing claimed for the new, empty data file");
    }

    #[test]
    fn eviction_skips_open_keys_and_frees_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = PieceStore::open(dir.path(), 4 * MIN_PIECE_SIZE).unwrap();
        let (ka, kb) = (key(MIN_PIECE_SIZE), key(MIN_PIECE_SIZE + 1));
        {
            let a = store.open_key(&ka).unwrap();
            a.write_piece(0, &vec![1u8; MIN_PIECE_SIZE as usize]).unwrap();
        }
        let b = store.open_key(&kb).unwrap();
        b.write_piece(0, &vec![2u8; MIN_PIECE_SIZE as usize]).unwrap();
        b.persist().unwrap();
        store.make_room(2 * MIN_PIECE_SIZE).unwrap();
        assert!(b.has(0));
        let a = store.open_key(&ka).unwrap();
        assert!(!a.has(0), "the closed key was evicted");
        drop(a);
        assert!(store.make_room(100 * MIN_PIECE_SIZE).is_err(), "an open key is never evicted");
    }
}
