//! The persisted record of a cached key: which pieces are present, with a hash of each.
//!
//! Layout (little-endian), written to a temporary file, fsynced and renamed over the old one:
//!
//! ```text
//! magic "AFSREC1\0" | key_len u32 | key bytes | size u64 | piece_size u64 | flags u32
//! | npieces u32 | bitmap (ceil(npieces/8) bytes) | hash (16 bytes) per piece | blake3 (32 bytes)
//! ```
//!
//! The trailing BLAKE3 covers everything before it; a record that does not parse, does not
//! match its checksum, or names another key or size is discarded (the key starts empty),
//! never repaired into trust.

use crate::annex::Key;

const MAGIC: &[u8; 8] = b"AFSREC1\0";
/// Bytes of the per-piece hash kept in the record (a truncated BLAKE3 of the piece's bytes).
pub const PIECE_HASH_LEN: usize = 16;
/// Flag: the whole key was verified against its backend hash.
pub const FLAG_VERIFIED: u32 = 1;

pub type PieceHash = [u8; PIECE_HASH_LEN];

/// The hash of a piece's bytes as kept in the record.
pub fn piece_hash(data: &[u8]) -> PieceHash {
    let full = blake3::hash(data);
    let mut out = [0u8; PIECE_HASH_LEN];
    out.copy_from_slice(&full.as_bytes()[..PIECE_HASH_LEN]);
    out
}

/// The in-memory form of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub size: u64,
    pub piece_size: u64,
    pub flags: u32,
    /// `Some(hash)` for present pieces.
    pub pieces: Vec<Option<PieceHash>>,
}

impl Record {
    pub fn empty(key: &Key, size: u64, piece_size: u64) -> Record {
        let n = piece_count(size, piece_size);
        Record { key: key.to_bytes(), size, piece_size, flags: 0, pieces: vec![None; n] }
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = self.pieces.len();
        let mut out = Vec::with_capacity(64 + self.key.len() + n / 8 + n * PIECE_HASH_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(self.key.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.piece_size.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (i, p) in self.pieces.iter().enumerate() {
            if p.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for p in &self.pieces {
            out.extend_from_slice(&p.unwrap_or([0; PIECE_HASH_LEN]));
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parses a record; `None` for anything damaged or inconsistent.
    pub fn decode(b: &[u8]) -> Option<Record> {
        if b.len() < MAGIC.len() + 32 {
            return None;
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let mut r = Reader { b: body };
        if r.take(8)? != MAGIC {
            return None;
        }
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?.to_vec();
        let size = r.u64()?;
        let piece_size = r.u64()?;
        let flags = r.u32()?;
        let n = r.u32()? as usize;
        if piece_size == 0 || n != piece_count(size, piece_size) {
            return None;
        }
        let bitmap = r.take(n.div_ceil(8))?.to_vec();
        let mut pieces = Vec::with_capacity(n);
        for i in 0..n {
            let h = r.take(PIECE_HASH_LEN)?;
            let present = bitmap[i / 8] & (1 << (i % 8)) != 0;
            pieces.push(present.then(|| h.try_into().expect("take returned PIECE_HASH_LEN bytes")));
        }
        if !r.b.is_empty() {
            return None;
        }
        Some(Record { key, size, piece_size, flags, pieces })
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Number of pieces of a key of `size` bytes (at least one, so empty keys have a record).
pub fn piece_count(size: u64, piece_size: u64) -> usize {
    usize::try_from(size.div_ceil(piece_size).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_damage() {
        let key = Key::parse_str("SHA256E-s1000000--abc.bin").unwrap();
        let mut r = Record::empty(&key, 1_000_000, 262_144);
        assert_eq!(r.pieces.len(), 4);
        r.pieces[2] = Some(piece_hash(b"x"));
        let enc = r.encode();
        assert_eq!(Record::decode(&enc), Some(r.clone()));
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x40;
            assert_eq!(Record::decode(&bad), None, "flipped byte {i} must be detected");
        }
        assert_eq!(Record::decode(&enc[..enc.len() - 1]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(&b);
        }
    }
}
