//! Piece manifests: a BLAKE3 hash per piece of a key, so that a piece can be checked the
//! moment it arrives instead of only when the whole key is in.
//!
//! Each entry is the BLAKE3 *chaining value* of the piece as a subtree of the whole content
//! (pieces are power-of-two multiples of BLAKE3's 1 KiB chunk and aligned, so each is a
//! subtree of the content's BLAKE3 tree); a key of one piece has the plain BLAKE3 hash of its
//! content as its single entry. Two consequences:
//! - for a `BLAKE3_256` key the entries merge up to the root, which must be the key's own hash:
//!   such a manifest needs no trust, wherever it came from ([`Manifest::trust`]);
//! - entries merge into coarser pieces ([`Manifest::regroup`]), so a manifest made with small
//!   pieces serves a cache that uses larger ones.
//!
//! For every other backend a manifest is as trustworthy as its origin: annexfs makes one only
//! from content verified against its key, and takes one only from the repository's git-annex
//! branch (see [`publish`]), where it is itself an annexed object checked against its key.
//!
//! Text format (UTF-8 lines, `\n`):
//!
//! ```text
//! annexfs-manifest 1
//! key SHA256E-s1048576--….bin
//! size 1048576
//! piece-size 262144
//! <64 hex digits>        one line per piece, in order
//! ```

pub mod cached;
pub mod publish;
pub mod whole;

use crate::annex::Key;
use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const MAGIC: &str = "annexfs-manifest 1";
/// The largest manifest annexfs reads (about 1.6 million pieces).
pub const MAX_MANIFEST_BYTES: u64 = 100 << 20;

/// A hash per piece of one key's content. Only [`Manifest::build`], [`Manifest::parse`] and
/// [`Manifest::regroup`] make one, so a manifest always has a valid piece size and exactly
/// one entry per piece of its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    key: Key,
    size: u64,
    piece_size: u64,
    hashes: Vec<[u8; 32]>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not an annexfs manifest: {0}")]
    Malformed(String),
    #[error("manifest is for {found}, not {want}")]
    OtherKey { want: String, found: String },
    #[error("manifest pieces do not hash to the key {0}")]
    RootMismatch(String),
    #[error("manifest piece size {have} cannot serve pieces of {want}")]
    PieceSize { have: u64, want: u64 },
}

/// How far a manifest can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// A BLAKE3 key, and the pieces hash to it: true whatever its origin.
    SelfVerified,
    /// Another backend: as good as the place it came from.
    FromOrigin,
}

fn is_blake3(key: &Key) -> bool {
    matches!(key.variety(), b"BLAKE3_256" | b"BLAKE3_256E")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `piece_size` can be a manifest's piece size (a power of two of at least a chunk).
fn valid_piece_size(p: u64) -> bool {
    p.is_power_of_two() && p >= blake3::CHUNK_LEN as u64
}

/// The manifest entry of piece `i` (bytes `data`, starting at `offset`) of content in `count`
/// pieces.
pub fn piece_entry(offset: u64, data: &[u8], count: usize) -> [u8; 32] {
    if count <= 1 {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    // Pieces are multi-threaded hashed only when large enough to gain from it.
    h.update(data);
    h.finalize_non_root()
}

/// Merges the chaining values of consecutive subtrees `cvs` (all but the last of the same
/// power-of-two size) into the chaining value of their parent subtree (non-root).
fn merge_range(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = largest_power_of_two_below(cvs.len());
    merge_subtrees_non_root(&merge_range(&cvs[..left]), &merge_range(&cvs[left..]), Mode::Hash)
}

/// The largest power of two strictly less than `n` (n ≥ 2).
fn largest_power_of_two_below(n: usize) -> usize {
    let p = n.next_power_of_two();
    if p == n { n / 2 } else { p / 2 }
}

impl Manifest {
    /// Number of pieces of `size` bytes in pieces of `piece_size`.
    pub fn count_for(size: u64, piece_size: u64) -> usize {
        usize::try_from(size.div_ceil(piece_size)).unwrap_or(usize::MAX)
    }

    /// Builds the manifest of `key` from content read with `read_at` (which fills the buffer
    /// from the given offset).
    pub fn build(
        key: &Key,
        size: u64,
        piece_size: u64,
        mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<Manifest> {
        if !valid_piece_size(piece_size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("piece size {piece_size}")));
        }
        let count = Self::count_for(size, piece_size);
        let mut hashes = Vec::with_capacity(count);
        let mut buf = vec![0u8; usize::try_from(piece_size.min(size)).unwrap_or(0)];
        for i in 0..count {
            let a = i as u64 * piece_size;
            let b = (a + piece_size).min(size);
            let part = &mut buf[..usize::try_from(b - a).unwrap_or(0)];
            read_at(a, part)?;
            hashes.push(piece_entry(a, part, count));
        }
        Ok(Manifest { key: key.clone(), size, piece_size, hashes })
    }

    /// Builds the manifest of `key` from a file holding its whole content.
    pub fn from_file(key: &Key, file: &File, piece_size: u64) -> io::Result<Manifest> {
        let size = key
            .size()
            .map_or_else(|| file.metadata().map(|m| m.len()), Ok)
            .map_err(|e| io::Error::new(e.kind(), format!("size of {}: {e}", key.to_string_lossy())))?;
        Self::build(key, size, piece_size, |off, buf| file.read_exact_at(buf, off))
    }

    /// The key whose content this describes.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The content's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size of every piece but the last.
    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    /// The entry of each piece, in order.
    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// The BLAKE3 hash of the whole content, from the entries.
    pub fn root(&self) -> [u8; 32] {
        match self.hashes.len() {
            0 => *blake3::hash(&[]).as_bytes(),
            1 => self.hashes[0],
            n => {
                let left = largest_power_of_two_below(n);
                let l = merge_range(&self.hashes[..left]);
                let r = merge_range(&self.hashes[left..]);
                *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
            }
        }
    }

    /// Checks the manifest against its key: a BLAKE3 key must be the root of the entries.
    pub fn trust(&self) -> Result<Trust, ManifestError> {
        if !is_blake3(&self.key) {
            return Ok(Trust::FromOrigin);
        }
        let want = crate::annex::backend::expected_hash(&self.key);
        if want.as_deref() == Some(&self.root()[..]) {
            Ok(Trust::SelfVerified)
        } else {
            Err(ManifestError::RootMismatch(self.key.to_string_lossy()))
        }
    }

    /// Whether `data` is piece `i` (the piece starting at `i * piece_size`).
    pub fn check_piece(&self, i: usize, data: &[u8]) -> bool {
        let Some(want) = self.hashes.get(i) else { return false };
        piece_entry(i as u64 * self.piece_size, data, self.hashes.len()) == *want
    }

    /// The same manifest with pieces of `piece_size` (a multiple of the current one).
    pub fn regroup(&self, piece_size: u64) -> Result<Manifest, ManifestError> {
        let err = || ManifestError::PieceSize { have: self.piece_size, want: piece_size };
        if piece_size == self.piece_size {
            return Ok(self.clone());
        }
        if !valid_piece_size(piece_size) || piece_size < self.piece_size {
            return Err(err());
        }
        let per = usize::try_from(piece_size / self.piece_size).map_err(|_| err())?;
        let count = Self::count_for(self.size, piece_size);
        let hashes = if count <= 1 { vec![self.root()] } else { self.hashes.chunks(per).map(merge_range).collect() };
        Ok(Manifest { key: self.key.clone(), size: self.size, piece_size, hashes })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(100 + self.hashes.len() * 65);
        out.extend_from_slice(MAGIC.as_bytes());
        out.extend_from_slice(b"\nkey ");
        out.extend_from_slice(&self.key.to_bytes());
        out.extend_from_slice(format!("\nsize {}\npiece-size {}\n", self.size, self.piece_size).as_bytes());
        for h in &self.hashes {
            out.extend_from_slice(hex(h).as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Parses a manifest, which must be for `want` (and, for a BLAKE3 key, hash to it).
    pub fn parse(bytes: &[u8], want: &Key) -> Result<Manifest, ManifestError> {
        let bad = |m: &str| ManifestError::Malformed(m.to_string());
        let mut lines = bytes.split(|&b| b == b'\n');
        if lines.next() != Some(MAGIC.as_bytes()) {
            return Err(bad("first line"));
        }
        let key_line = lines.next().and_then(|l| l.strip_prefix(b"key ")).ok_or_else(|| bad("key line"))?;
        let key = Key::parse(key_line).map_err(|e| bad(&format!("key: {e}")))?;
        if key.to_bytes() != want.to_bytes() {
            return Err(ManifestError::OtherKey { want: want.to_string_lossy(), found: key.to_string_lossy() });
        }
        let mut number = |prefix: &str| -> Result<u64, ManifestError> {
            let l = lines.next().ok_or_else(|| bad(prefix))?;
            let t = std::str::from_utf8(l).map_err(|_| bad(prefix))?;
            t.strip_prefix(prefix).and_then(|v| v.parse().ok()).ok_or_else(|| bad(prefix))
        };
        let size = number("size ")?;
        let piece_size = number("piece-size ")?;
        if want.size().is_some_and(|s| s != size) {
            return Err(bad("size differs from the key's"));
        }
        if !valid_piece_size(piece_size) {
            return Err(bad("piece size"));
        }
        let count = Self::count_for(size, piece_size);
        let mut hashes = Vec::with_capacity(count.min(1 << 20));
        for l in lines {
            if l.is_empty() {
                continue;
            }
            let h = std::str::from_utf8(l).ok().and_then(unhex32).ok_or_else(|| bad("piece hash"))?;
            hashes.push(h);
            if hashes.len() > count {
                return Err(bad("more piece hashes than pieces"));
            }
        }
        if hashes.len() != count {
            return Err(bad(&format!("{} piece hashes for {count} pieces", hashes.len())));
        }
        let m = Manifest { key, size, piece_size, hashes };
        m.trust()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u64)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(u64::from(seed)) >> 13).to_le_bytes()[0])
            .collect()
    }

    fn blake3_key(data: &[u8]) -> Key {
        Key::parse_str(&format!("BLAKE3_256E-s{}--{}.bin", data.len(), blake3::hash(data).to_hex())).unwrap()
    }

    fn manifest_of(data: &[u8], key: &Key, piece: u64) -> Manifest {
        Manifest::build(key, data.len() as u64, piece, |off, buf| {
            let a = usize::try_from(off).unwrap();
            buf.copy_from_slice(&data[a..a + buf.len()]);
            Ok(())
        })
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The pieces of any content merge to its BLAKE3 hash, at every grouping, and each
        /// piece checks, while a changed byte fails its piece only.
        #[test]
        fn pieces_merge_to_the_key(len in 0usize..40_000, seed in any::<u32>(), flip in any::<usize>()) {
            let data = content(len, seed);
            let key = blake3_key(&data);
            let m = manifest_of(&data, &key, 1024);
            prop_assert_eq!(m.root(), *blake3::hash(&data).as_bytes());
            prop_assert_eq!(m.trust(), Ok(Trust::SelfVerified));
            for p in [2048u64, 4096, 16384, 65536] {
                let g = m.regroup(p).unwrap();
                prop_assert_eq!(&g, &manifest_of(&data, &key, p));
                prop_assert_eq!(g.root(), m.root());
            }
            if len > 0 {
                let mut bad = data.clone();
                let at = flip % len;
                bad[at] ^= 0x40;
                for i in 0..m.count() {
                    let a = i * 1024;
                    let b = (a + 1024).min(len);
                    prop_assert!(m.check_piece(i, &data[a..b]));
                    prop_assert_eq!(m.check_piece(i, &bad[a..b]), !(a..b).contains(&at));
                }
            }
            let text = m.to_bytes();
            prop_assert_eq!(Manifest::parse(&text, &key), Ok(m));
        }
    }

    #[test]
    fn a_blake3_manifest_that_lies_is_refused() {
        let data = content(10_000, 7);
        let key = blake3_key(&data);
        let mut m = manifest_of(&data, &key, 1024);
        m.hashes[3][0] ^= 1;
        assert!(matches!(Manifest::parse(&m.to_bytes(), &key), Err(ManifestError::RootMismatch(_))));
        let other = blake3_key(b"other");
        assert!(matches!(Manifest::parse(&m.to_bytes(), &other), Err(ManifestError::OtherKey { .. })));
    }

    #[test]
    fn other_backends_are_trusted_by_origin_and_parsed_strictly() {
        let data = content(5000, 1);
        let key = Key::parse_str("SHA256E-s5000--00.bin").unwrap();
        let m = manifest_of(&data, &key, 1024);
        assert_eq!(m.trust(), Ok(Trust::FromOrigin));
        let text = m.to_bytes();
        assert_eq!(Manifest::parse(&text, &key).unwrap(), m);
        let mut short = text.clone();
        short.truncate(text.len() - 65);
        assert!(Manifest::parse(&short, &key).is_err());
        let mut extra = text.clone();
        extra.extend_from_slice(&text[text.len() - 65..]);
        assert!(Manifest::parse(&extra, &key).is_err());
        assert!(Manifest::parse(b"garbage", &key).is_err());
        let odd = String::from_utf8(text).unwrap().replace("piece-size 1024", "piece-size 1000");
        assert!(Manifest::parse(odd.as_bytes(), &key).is_err());
        assert!(m.regroup(512).is_err());
    }
}
