//! The cache shared by every key of every mount of the user: paths from a hash of the key,
//! opening keys (one `CachedKey` per key per process), usage accounting, eviction by least
//! recent open that skips keys any process holds, kept manifests (as bytes), and **pins**:
//! pieces this process keeps for the swarm (`crate::swarm::keep`), which eviction skips (a
//! pinned key is never evicted whole, a pinned piece never dropped to make room for reading).
//! Pins live in this process only: the keeper sets them again at every start, bounded by the
//! space its node offers.
//!
//! Lock order: `inner` → `CachedKey::state`; `pins` is a leaf.

use super::cached::{CachedKey, KeyState};
use super::locks::{flock, lock, ofd_lock};
use super::record::Record;
use super::{CacheError, RECORD_LOCK_BYTE, io_err, piece_size_for, private_dir, read_record, write_atomic};
use crate::annex::Key;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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
    /// Pinned pieces per key (key bytes → piece indices), with the key's file stem.
    pins: Mutex<HashMap<Vec<u8>, Pinned>>,
}

/// The pinned pieces of a key, with the key's file stem (what eviction sees).
type Pinned = (PathBuf, std::collections::BTreeSet<usize>);

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
            pins: Mutex::new(HashMap::new()),
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

    /// Pins exactly `pieces` of `key` (none: unpinned, evictable again).
    pub fn pin(&self, key: &Key, pieces: std::collections::BTreeSet<usize>) {
        let mut pins = lock(&self.pins);
        if pieces.is_empty() {
            pins.remove(&key.to_bytes());
        } else {
            let (dir, h) = self.paths(key);
            pins.insert(key.to_bytes(), (dir.join(h), pieces));
        }
    }

    /// Whether piece `i` of `key` is pinned.
    pub fn is_pinned(&self, key: &Key, i: usize) -> bool {
        lock(&self.pins).get(&key.to_bytes()).is_some_and(|(_, p)| p.contains(&i))
    }

    /// The pinned pieces of `key`.
    pub fn pinned(&self, key: &Key) -> std::collections::BTreeSet<usize> {
        lock(&self.pins).get(&key.to_bytes()).map(|(_, p)| p.clone()).unwrap_or_default()
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

    /// Where a manifest of `key` that a peer vouched for (not checked against the key yet) is
    /// kept, apart from the trusted one.
    fn vouched_path(&self, key: &Key) -> PathBuf {
        let (dir, h) = self.paths(key);
        dir.join(format!("{h}.vouched"))
    }

    /// Keeps a manifest a peer vouched for (see [`PieceStore::save_manifest_bytes`]).
    pub fn save_vouched_manifest_bytes(&self, key: &Key, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.vouched_path(key);
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        write_atomic(&path, bytes)
    }

    /// The kept manifest bytes a peer vouched for (at most `max` read), and where they are.
    pub fn load_vouched_manifest_bytes(&self, key: &Key, max: u64) -> Option<(Vec<u8>, PathBuf)> {
        let path = self.vouched_path(key);
        let f = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, max), &mut bytes).ok()?;
        Some((bytes, path))
    }

    /// Forgets the manifest a peer vouched for (proven wrong, or replaced by a trusted one).
    pub fn remove_vouched_manifest(&self, key: &Key) {
        let _ = std::fs::remove_file(self.vouched_path(key));
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
        // Without the shared lock, eviction by another process could delete this key while it
        // is open here: refuse to open it instead.
        flock(&lockfile, libc::LOCK_SH).map_err(io_err(&lock_path))?;
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
        if !flock(&lf, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err(&lock_path))? {
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
        let pinned: std::collections::HashSet<PathBuf> = lock(&self.pins).values().map(|(s, _)| s.clone()).collect();
        for e in entries {
            if used + need <= self.limit {
                break;
            }
            if pinned.contains(&e.stem) {
                continue;
            }
            let lock_path = e.stem.with_extension("lock");
            let Ok(lf) = OpenOptions::new().read(true).write(true).open(&lock_path) else { continue };
            // Any process with the key open holds a shared flock: skip it (and a key whose
            // lock cannot be taken at all is left alone too).
            match flock(&lf, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    tracing::warn!("cache: cannot lock {}: {err}; not evicted", lock_path.display());
                    continue;
                }
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
