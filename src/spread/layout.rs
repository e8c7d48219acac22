//! Where every byte of a spread key lives, and the per-key manifest that says so.
//!
//! A key of `size` bytes is cut into stripes of `k` pieces of `piece` bytes (the last stripe
//! zero-padded); each stripe gets `m` parity pieces. Shard `i` is piece `i` of every stripe,
//! concatenated: shards `0..k` hold the data in place, shards `k..k+m` the parity. Shard `i`
//! goes to store `order[i]`; the order is the stores' list rotated by a hash of the key, so
//! that the first data shard of different keys lands on different stores.
//!
//! The [`Manifest`] is self-describing: code, piece size, key size, the store of every shard
//! (by its spec, so a reordered `stores=` list still finds them) and a 16-byte BLAKE3 hash of
//! every piece of every shard. It ends with a BLAKE3 of its own text, so a damaged manifest is
//! refused as a whole, never half-believed. The same manifest is written to every store.

use super::SpreadError;

/// Largest piece: a stripe of 4 data pieces is then 4 MiB, a request's worth for a store.
pub const MAX_PIECE: u64 = 1 << 20;
/// Most stores one remote may spread over.
pub const MAX_STORES: usize = 64;
/// Bytes of a piece hash (BLAKE3, truncated as the piece cache's records do).
pub const HASH_LEN: usize = 16;

/// The erasure code: `k` data pieces and `m` parity pieces per stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub k: usize,
    pub m: usize,
}

impl Code {
    /// Checks the limits: at least one data and one parity piece, at most [`MAX_STORES`] in
    /// all, and exactly one store per shard.
    pub fn new(k: usize, m: usize, stores: usize) -> Result<Code, SpreadError> {
        let bad = |why: String| Err(SpreadError::Config(why));
        if k == 0 {
            return bad("data= must be at least 1".into());
        }
        if m == 0 {
            return bad("parity= must be at least 1 (without parity a lost store loses every key)".into());
        }
        if k + m > MAX_STORES {
            return bad(format!("data= + parity= is {}, more than {MAX_STORES}", k + m));
        }
        if k + m != stores {
            return bad(format!(
                "data={k} + parity={m} needs {} stores (one per shard), and stores= lists {stores}",
                k + m
            ));
        }
        Ok(Code { k, m })
    }

    /// The default split of `n` stores: two parity pieces from four stores on, else one.
    pub fn default_parity(n: usize) -> usize {
        if n >= 4 { 2 } else { 1 }
    }

    pub fn shards(&self) -> usize {
        self.k + self.m
    }
}

/// The geometry of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub code: Code,
    /// Bytes per piece: even (the code works on 2-byte symbols), at most [`MAX_PIECE`].
    pub piece: u64,
    pub stripes: u64,
}

impl Layout {
    /// The layout annexfs writes for a key of `size` bytes: pieces of [`MAX_PIECE`], smaller
    /// for a small key so that padding stays under one stripe of 2-byte pieces.
    pub fn for_size(size: u64, code: Code) -> Layout {
        let k = code.k as u64;
        let want = size.div_ceil(k).max(2);
        let piece = (want + (want & 1)).min(MAX_PIECE);
        Layout::with_piece(size, code, piece)
    }

    fn with_piece(size: u64, code: Code, piece: u64) -> Layout {
        let stripe = piece * code.k as u64;
        Layout { size, code, piece, stripes: size.div_ceil(stripe) }
    }

    /// Data bytes per stripe.
    pub fn stripe_bytes(&self) -> u64 {
        self.piece * self.code.k as u64
    }

    /// Bytes of every shard.
    pub fn shard_bytes(&self) -> u64 {
        self.piece * self.stripes
    }

    /// Where key byte `offset` is: (stripe, data shard, offset within the piece).
    pub fn locate(&self, offset: u64) -> (u64, usize, u64) {
        let stripe = offset / self.stripe_bytes();
        let within = offset % self.stripe_bytes();
        (stripe, to_usize(within / self.piece), within % self.piece)
    }

    /// The key bytes data piece (`stripe`, `shard`) holds (`shard < k`): (offset, length);
    /// the length is 0 for padding past the key's end.
    pub fn data_span(&self, stripe: u64, shard: usize) -> (u64, u64) {
        let start = stripe * self.stripe_bytes() + shard as u64 * self.piece;
        let end = (start + self.piece).min(self.size);
        (start, end.saturating_sub(start))
    }
}

/// `x` as an index or length in memory. Every such value here is bounded by a piece (≤ 1 MiB),
/// a stripe count or a store count; on a 32-bit target a larger one saturates and fails the
/// bounds check it feeds, never wraps to a wrong index.
pub fn to_usize(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// The rotation of the stores for `key`: shard `i` goes to store `(i + r) % n`.
pub fn rotation(key: &str, n: usize) -> usize {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    to_usize(u64::from_le_bytes(b) % n as u64)
}

/// The hash of one piece (padded to the piece size).
pub fn piece_hash(bytes: &[u8]) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..HASH_LEN]);
    out
}

/// A key's manifest: its layout, where each shard is, and every piece's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub key: String,
    pub layout: Layout,
    /// The spec of the store holding shard `i`.
    pub stores: Vec<String>,
    /// `hashes[shard][stripe]`.
    pub hashes: Vec<Vec<[u8; HASH_LEN]>>,
}

const MAGIC: &str = "annexfs-spread 1";
/// A manifest larger than this is refused unread (a 64 GiB key of 1 MiB pieces on 64 stores
/// is about 140 MiB of hashes; anything bigger is not ours).
pub const MAX_MANIFEST: u64 = 256 << 20;

impl Manifest {
    /// The text written to every store.
    pub fn to_text(&self) -> String {
        let l = &self.layout;
        let mut s = format!(
            "{MAGIC}\nkey {}\nsize {}\ndata {}\nparity {}\npiece {}\n",
            self.key, l.size, l.code.k, l.code.m, l.piece
        );
        for (i, (store, hashes)) in self.stores.iter().zip(&self.hashes).enumerate() {
            s.push_str(&format!("shard {i} {store}\n"));
            for h in hashes {
                for b in h {
                    s.push_str(&format!("{b:02x}"));
                }
                s.push('\n');
            }
        }
        let check = blake3::hash(s.as_bytes()).to_hex();
        s.push_str(&format!("check {check}\n"));
        s
    }

    /// Parses and checks a manifest read from a store: its own check, its fields' limits, and
    /// that it describes `key`.
    pub fn parse(text: &[u8], key: &str) -> Result<Manifest, SpreadError> {
        let bad = |why: &str| SpreadError::BadManifest(why.to_string());
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
        let body_end = text.rfind("check ").ok_or_else(|| bad("no check line"))?;
        let (body, check) = text.split_at(body_end);
        let want = blake3::hash(body.as_bytes()).to_hex();
        if check.trim_end() != format!("check {want}") {
            return Err(bad("its check does not match its text"));
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("not an annexfs spread manifest"));
        }
        let mut field = |name: &str| -> Result<String, SpreadError> {
            let l = lines.next().ok_or_else(|| bad("truncated"))?;
            l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).map(str::to_string).ok_or_else(|| bad(name))
        };
        let mkey = field("key")?;
        let num = |v: String, name: &str| v.parse::<u64>().map_err(|_| bad(name));
        let small = |v: String, name: &str| v.parse::<usize>().map_err(|_| bad(name));
        let size = num(field("size")?, "size")?;
        let k = small(field("data")?, "data")?;
        let m = small(field("parity")?, "parity")?;
        let piece = num(field("piece")?, "piece")?;
        if mkey != key {
            return Err(SpreadError::BadManifest(format!("describes key {mkey}")));
        }
        let code = Code::new(k, m, k.saturating_add(m)).map_err(|e| bad(&e.to_string()))?;
        if piece == 0 || piece % 2 == 1 || piece > MAX_PIECE {
            return Err(bad("piece size"));
        }
        let layout = Layout::with_piece(size, code, piece);
        let mut stores = Vec::new();
        let mut hashes = Vec::new();
        for i in 0..code.shards() {
            let l = lines.next().ok_or_else(|| bad("truncated"))?;
            let store = l.strip_prefix(&format!("shard {i} ")).ok_or_else(|| bad("shard line"))?;
            stores.push(store.to_string());
            let mut hs = Vec::new();
            for _ in 0..layout.stripes {
                let h = lines.next().ok_or_else(|| bad("truncated"))?;
                hs.push(parse_hash(h).ok_or_else(|| bad("piece hash"))?);
            }
            hashes.push(hs);
        }
        if lines.next().is_some() {
            return Err(bad("trailing lines"));
        }
        Ok(Manifest { key: mkey, layout, stores, hashes })
    }
}

fn parse_hash(s: &str) -> Option<[u8; HASH_LEN]> {
    if s.len() != HASH_LEN * 2 {
        return None;
    }
    let mut out = [0u8; HASH_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_limits() {
        assert!(Code::new(4, 2, 6).is_ok());
        assert!(Code::new(0, 2, 2).is_err());
        assert!(Code::new(4, 0, 4).is_err());
        assert!(Code::new(4, 2, 5).is_err());
        assert!(Code::new(60, 10, 70).is_err());
    }

    #[test]
    fn layout_small_and_large() {
        let c = Code { k: 4, m: 2 };
        let l = Layout::for_size(10, c);
        assert_eq!((l.piece, l.stripes), (4, 1));
        let l = Layout::for_size(0, c);
        assert_eq!(l.stripes, 0);
        let l = Layout::for_size(10 << 20, c);
        assert_eq!((l.piece, l.stripes), (MAX_PIECE, 3));
        assert_eq!(l.locate(5 << 20), (1, 1, 0));
        assert_eq!(l.data_span(2, 1), ((9 << 20), 1 << 20));
        assert_eq!(l.data_span(2, 2), ((10 << 20), 0));
    }

    #[test]
    fn manifest_round_trip_and_damage() {
        let c = Code { k: 2, m: 1 };
        let layout = Layout::for_size(9, c);
        let m = Manifest {
            key: "SHA256E-s9--ab.txt".into(),
            layout: layout.clone(),
            stores: vec!["/a".into(), "/b c".into(), "s3://x/y".into()],
            hashes: vec![vec![piece_hash(b"1")]; 3],
        };
        let t = m.to_text();
        assert_eq!(Manifest::parse(t.as_bytes(), &m.key).unwrap(), m);
        assert!(Manifest::parse(t.as_bytes(), "other").is_err());
        let mut bad = t.clone().into_bytes();
        bad[40] ^= 1;
        assert!(Manifest::parse(&bad, &m.key).is_err());
        assert!(Manifest::parse(&t.as_bytes()[..t.len() - 3], &m.key).is_err());
    }
}
