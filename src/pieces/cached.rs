//! One key in the cache, open in this process: writing pieces, committing them to the record,
//! checking them on first read, claims across processes, persisting (merge and rename),
//! dropping pieces, quarantine. See the invariants in [`crate::pieces`].
//!
//! Lock order: `state` → (none); `persisting` is taken before `state` by a record rewrite.

use super::locks::{lock, ofd_lock};
use super::record::{FLAG_VERIFIED, PieceHash, Record, piece_count, piece_hash};
use super::{
    CacheError, PERSIST_EVERY, PERSIST_PIECES, RECORD_LOCK_BYTE, io_err, private_dir, read_record, write_atomic,
};
use crate::annex::Key;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A claim on one piece: no other process fetches it while this lives.
pub struct PieceClaim {
    pub(super) key: Arc<CachedKey>,
    pub(super) piece: usize,
}

impl Drop for PieceClaim {
    fn drop(&mut self) {
        let _ = ofd_lock(&self.key.lockfile, self.piece as i64, libc::F_UNLCK, false);
    }
}

pub(super) struct KeyState {
    pub(super) pieces: Vec<Option<PieceHash>>,
    /// Pieces whose state this process knows first-hand: written here, or read and checked
    /// against their hash (or found damaged). Pieces learnt from the record are unchecked.
    pub(super) checked: Vec<bool>,
    /// Pieces landed since the record was last written.
    pub(super) unpersisted: usize,
    /// Pieces the record on disk named when this process last wrote or read it.
    pub(super) durable: Vec<bool>,
    pub(super) last_persist: Instant,
    pub(super) flags: u32,
    /// Set when the whole key failed verification: nothing is served any more.
    pub(super) poisoned: Option<String>,
}

/// One key in the cache, open in this process.
pub struct CachedKey {
    pub key: Key,
    pub size: u64,
    pub piece_size: u64,
    pub(super) data: File,
    pub(super) lockfile: File,
    pub(super) data_path: PathBuf,
    pub(super) rec_path: PathBuf,
    pub(super) quarantine: PathBuf,
    pub(super) state: Mutex<KeyState>,
    /// Serialises record rewrites within this process (the OFD lock only excludes other
    /// processes: every thread here shares one open file description).
    pub(super) persisting: Mutex<()>,
    /// (mtime, length, inode) of the record file when last read or written here.
    pub(super) record_seen: Mutex<Option<RecordStamp>>,
    /// Inode of the data file this process has open: if the path names another file (the
    /// cache was cleared and refilled meanwhile), records there are not about this data.
    pub(super) data_ino: u64,
}

pub(super) type RecordStamp = (Option<std::time::SystemTime>, u64, u64);

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
