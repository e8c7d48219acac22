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

mod cached;
mod locks;
pub mod record;
mod store;

pub use cached::{CachedKey, PieceClaim};
pub use store::PieceStore;

use crate::annex::Key;
use record::Record;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest piece: the unit of bookkeeping and verification (requests cover runs of pieces).
pub const MIN_PIECE_SIZE: u64 = 256 * 1024;
/// Pieces grow for huge keys so that a record stays under about this many pieces.
const TARGET_MAX_PIECES: u64 = 16_384;
/// Default bound of the cache.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// Landed pieces are made durable in the record at least this often.
pub(crate) const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// … or after this many new pieces.
pub(crate) const PERSIST_PIECES: usize = 64;
/// The byte of `H.lock` locked while the record is rewritten (past any piece index).
pub(crate) const RECORD_LOCK_BYTE: i64 = 1 << 40;

/// Piece size for a key of `size` bytes: a power of two, so pieces align with BLAKE3 subtrees.
pub fn piece_size_for(size: u64) -> u64 {
    let want = size.div_ceil(TARGET_MAX_PIECES).max(MIN_PIECE_SIZE);
    want.checked_next_power_of_two().unwrap_or(MIN_PIECE_SIZE)
}

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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// Creates `dir` (and its parents) private to this user, or checks that an existing one is
/// owned by this user and writable by nobody else: another user who could write in the cache
/// could plant pieces and records that annexfs would serve.
pub(crate) fn private_dir(dir: &Path) -> Result<(), CacheError> {
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

pub(crate) fn read_record(path: &Path, key: &Key, size: u64, piece_size: u64) -> Option<Record> {
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

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
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

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

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
