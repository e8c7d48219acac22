//! Sources: something that can read byte ranges of a key's content.
//!
//! This layer knows how to read from a [`Location`] found by the annex layer: a whole object
//! file on a local path (the repository's own annex, a git remote on a local disk, an unchunked
//! directory special remote) or the chunk files of a chunked directory remote. Every source is
//! read in place by ranges (`pread`), never copied whole first.
//!
//! A source is checked when it is opened: a whole object must have the key's size and the
//! chunks must add up to it, so a truncated or foreign file is refused instead of served.
//! Network sources (HTTP, peers) implement the same [`RangeRead`] trait in later layers.

pub mod credential;
pub mod discover;
pub mod external;
pub mod http;
pub mod p2phttp;
pub mod reach;
pub mod remote;
pub mod s3;
pub mod sizeless;
pub mod ssh;

use crate::annex::remotes::Location;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a location cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {actual} bytes, but the key says {expected}")]
    SizeMismatch { path: PathBuf, expected: u64, actual: u64 },
    #[error("{0}: network locations are not read by this layer")]
    Remote(String),
}

/// Reads byte ranges of one key's content.
pub trait RangeRead: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 only at the end of the content.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Length of the content.
    fn len(&self) -> u64;
    /// Whether the content is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Where the bytes come from, for logs and `status`.
    fn describe(&self) -> String;
    /// The single local file holding the whole content, if that is what this is (for kernel
    /// passthrough).
    fn whole_file(&self) -> Option<&Path> {
        None
    }
}

/// Opens a regular file for reading without following a symlink in its last component.
/// Anything else (a FIFO planted in a remote, a device) is refused instead of blocking a
/// reader forever: the open itself is non-blocking, and the type is checked.
pub fn open_readonly(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    let f = opts.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

/// A whole object in one local file.
pub struct LocalFile {
    file: File,
    len: u64,
    path: PathBuf,
}

impl LocalFile {
    /// Opens `path`, checking its size against the key's when the key has one.
    pub fn open(path: &Path, expected: Option<u64>) -> Result<LocalFile, SourceError> {
        let file = open_readonly(path).map_err(|source| SourceError::Open { path: path.into(), source })?;
        let len = file.metadata().map_err(|source| SourceError::Open { path: path.into(), source })?.len();
        if let Some(expected) = expected
            && expected != len
        {
            return Err(SourceError::SizeMismatch { path: path.into(), expected, actual: len });
        }
        Ok(LocalFile { file, len, path: path.into() })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl RangeRead for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        read_full_at(&self.file, buf, offset, self.len)
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn whole_file(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// Reads until `buf` is full or the end (`len`) is reached, retrying short reads.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64, len: u64) -> io::Result<usize> {
    let want = usize::try_from(len.saturating_sub(offset)).unwrap_or(usize::MAX).min(buf.len());
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..want], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than when it was opened"));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// How many chunk files of one key are kept open at once.
const OPEN_CHUNKS: usize = 8;

/// A key stored as consecutive chunk files (directory special remote, new-style or legacy).
pub struct Chunked {
    /// (path, offset of the chunk in the key, length)
    chunks: Vec<(PathBuf, u64, u64)>,
    len: u64,
    open: Mutex<lru::LruCache<usize, std::sync::Arc<File>>>,
}

impl Chunked {
    /// Checks that the chunks exist with the lengths the layout says and add up to the key.
    pub fn open(chunks: &[(PathBuf, u64)], expected: Option<u64>) -> Result<Chunked, SourceError> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut offset = 0u64;
        for (path, len) in chunks {
            let md = std::fs::metadata(path).map_err(|source| SourceError::Open { path: path.clone(), source })?;
            if md.len() != *len {
                return Err(SourceError::SizeMismatch { path: path.clone(), expected: *len, actual: md.len() });
            }
            out.push((path.clone(), offset, *len));
            offset += len;
        }
        if let Some(expected) = expected
            && expected != offset
        {
            let path = chunks.first().map(|c| c.0.clone()).unwrap_or_default();
            return Err(SourceError::SizeMismatch { path, expected, actual: offset });
        }
        let cap = std::num::NonZeroUsize::new(OPEN_CHUNKS).expect("non-zero constant");
        Ok(Chunked { chunks: out, len: offset, open: Mutex::new(lru::LruCache::new(cap)) })
    }

    fn file(&self, idx: usize) -> io::Result<std::sync::Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&idx) {
            return Ok(f.clone());
        }
        let f = std::sync::Arc::new(open_readonly(&self.chunks[idx].0)?);
        open.put(idx, f.clone());
        Ok(f)
    }
}

impl RangeRead for Chunked {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let want = usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX).min(buf.len());
        let mut done = 0usize;
        // First chunk that ends after `offset`.
        let mut idx = self.chunks.partition_point(|(_, start, len)| start + len <= offset);
        while done < want && idx < self.chunks.len() {
            let (_, start, len) = self.chunks[idx];
            let pos = offset + done as u64;
            let in_chunk = pos - start;
            let n = usize::try_from(len - in_chunk).unwrap_or(usize::MAX).min(want - done);
            let file = self.file(idx)?;
            read_full_at(&file, &mut buf[done..done + n], in_chunk, len)?;
            done += n;
            idx += 1;
        }
        Ok(done)
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn describe(&self) -> String {
        match self.chunks.first() {
            Some((p, _, _)) => format!("{} chunks from {}", self.chunks.len(), p.display()),
            None => "no chunks".into(),
        }
    }
}

/// Opens a location as a range source.
pub fn open_location(loc: &Location, expected: Option<u64>) -> Result<Box<dyn RangeRead>, SourceError> {
    match loc {
        Location::Path(p) => Ok(Box::new(LocalFile::open(p, expected)?)),
        Location::Chunks(c) => Ok(Box::new(Chunked::open(c, expected)?)),
        Location::Url(u) => Err(SourceError::Remote(u.clone())),
        Location::Urls(u) => Err(SourceError::Remote(u.join(" "))),
        Location::Ssh(_) | Location::P2pHttp(_) | Location::S3(_) | Location::External(_) => {
            Err(SourceError::Remote(loc.strings().join(" ")))
        }
    }
}

/// Bytes held in memory (a plain file's git blob).
pub struct Memory {
    pub bytes: Vec<u8>,
    pub what: String,
}

impl RangeRead for Memory {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251).to_le_bytes()[0]).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn chunked_reads_equal_the_content(
            total in 0usize..5000,
            chunk in 1usize..700,
            reads in proptest::collection::vec((0usize..5200, 0usize..1500), 1..20),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let data = content(total);
            let mut chunks = Vec::new();
            for (i, part) in data.chunks(chunk).enumerate() {
                let p = dir.path().join(format!("c{i}"));
                std::fs::write(&p, part).unwrap();
                chunks.push((p, part.len() as u64));
            }
            if chunks.is_empty() {
                let p = dir.path().join("c0");
                std::fs::write(&p, b"").unwrap();
                chunks.push((p, 0));
            }
            let src = Chunked::open(&chunks, Some(total as u64)).unwrap();
            for (off, len) in reads {
                let mut buf = vec![0u8; len];
                let n = src.read_at(&mut buf, off as u64).unwrap();
                let expect = &data[off.min(total)..(off + len).min(total)];
                prop_assert_eq!(&buf[..n], expect);
            }
        }
    }

    #[test]
    fn size_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert!(LocalFile::open(&p, Some(5)).is_ok());
        assert!(matches!(LocalFile::open(&p, Some(6)), Err(SourceError::SizeMismatch { .. })));
        assert!(Chunked::open(&[(p.clone(), 4)], None).is_err());
        assert!(Chunked::open(&[(p.clone(), 5)], Some(9)).is_err());
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(LocalFile::open(&link, None).is_err(), "symlinks are not followed");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(LocalFile::open(&fifo, Some(0)).is_err(), "a FIFO is refused, not waited on");
    }
}
