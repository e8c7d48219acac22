//! git-annex keys: parsing, serialization, hash directories and the `keyFile` escaping.
//!
//! A key is `VARIETY[-sSIZE][-mMTIME][-SCHUNKSIZE][-CCHUNKNUM]--NAME` (reference §1.1). It is
//! parsed once at the edge into [`Key`] and used everywhere else as that newtype.
//!
//! Invariants of a [`Key`]:
//! - the numeric fields hold normalised decimal digits (no leading zeros, `"0"` for zero), so
//!   two keys that git-annex considers equal compare equal and serialize identically, and hash
//!   directories are computed from the normalised form exactly as git-annex does;
//! - numbers are kept as digit strings of any length, because git-annex accepts arbitrary
//!   precision; [`Key::size`] reports a size that does not fit `u64` as unknown;
//! - the name is raw bytes (not necessarily UTF-8) and may contain `-`, `--` and `/`.

use md5::{Digest, Md5};
use std::fmt;

/// Longest extension an `E` backend key may carry (git-annex rejects longer ones as `bad key`).
pub const MAX_EXTENSION_LEN: usize = 64;

/// Why a byte string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key has no backend name before the first '-'")]
    NoVariety,
    #[error("key has no '--' separating its fields from its name")]
    NoSeparator,
    #[error("key field is malformed or out of order (fields are -s, -m, -S, -C in that order)")]
    BadField,
    #[error("extension is {0} bytes long; git-annex allows at most {MAX_EXTENSION_LEN}")]
    ExtensionTooLong(usize),
}

/// A parsed, normalised git-annex key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    variety: Box<[u8]>,
    size: Option<Box<[u8]>>,
    /// git-annex keeps the mtime as a 64-bit `CTime`, so larger values wrap around (and
    /// serialize negative): kept the same way to produce the same key text and hash dirs.
    mtime: Option<i64>,
    chunk_size: Option<Box<[u8]>>,
    chunk_num: Option<Box<[u8]>>,
    name: Box<[u8]>,
}

/// Varieties that never carry an extension although some of them end in `E`.
fn never_has_extension(variety: &[u8]) -> bool {
    matches!(variety, b"WORM" | b"URL" | b"VURL" | b"GITBUNDLE" | b"GITMANIFEST")
}

/// Whether keys of this variety carry the file's extension at the end of their name.
///
/// Builtin hash backends ending in `E`, external `X…E` backends and unknown varieties ending in
/// an uppercase `E` do (reference §1.2); the comparison is case-sensitive as in git-annex.
pub fn variety_has_extension(variety: &[u8]) -> bool {
    !never_has_extension(variety) && variety.last() == Some(&b'E')
}

/// Strips leading zeros from a non-empty run of ASCII digits.
fn normalise_digits(d: &[u8]) -> Box<[u8]> {
    let first_nonzero = d.iter().position(|&c| c != b'0').unwrap_or(d.len().saturating_sub(1));
    d[first_nonzero..].into()
}

/// Digits to a 64-bit integer with two's-complement wrap-around, as Haskell's `fromInteger`
/// into `Int64` does.
fn wrap_i64(d: &[u8]) -> i64 {
    let v = d.iter().fold(0u64, |acc, c| acc.wrapping_mul(10).wrapping_add(u64::from(c - b'0')));
    v as i64
}

fn digits_to_u64(d: &[u8]) -> Option<u64> {
    // `d` is normalised digits, so more than 20 digits can never fit.
    if d.is_empty() || d.len() > 20 {
        return None;
    }
    d.iter().try_fold(0u64, |n, &c| {
        let digit = c.checked_sub(b'0').filter(|&v| v <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

impl Key {
    /// Parses a serialized key, as git-annex's `deserializeKey` does.
    pub fn parse(s: &[u8]) -> Result<Key, KeyError> {
        let vend = s.iter().position(|&c| c == b'-').ok_or(KeyError::NoSeparator)?;
        if vend == 0 {
            return Err(KeyError::NoVariety);
        }
        let variety: Box<[u8]> = s[..vend].into();
        let mut rest = &s[vend..];
        let mut fields: [Option<Box<[u8]>>; 4] = [None, None, None, None];
        for (slot, tag) in fields.iter_mut().zip([b's', b'm', b'S', b'C']) {
            if rest.len() >= 3 && rest[0] == b'-' && rest[1] == tag && rest[2].is_ascii_digit() {
                let n = rest[2..].iter().take_while(|c| c.is_ascii_digit()).count();
                *slot = Some(normalise_digits(&rest[2..2 + n]));
                rest = &rest[2 + n..];
            }
        }
        let Some(name) = rest.strip_prefix(b"--") else {
            // Either trailing garbage after a field, a field out of order, or no "--" at all.
            return Err(if rest.is_empty() { KeyError::NoSeparator } else { KeyError::BadField });
        };
        let [size, mtime, chunk_size, chunk_num] = fields;
        let mtime = mtime.map(|d| wrap_i64(&d));
        let key = Key { variety, size, mtime, chunk_size, chunk_num, name: name.into() };
        if variety_has_extension(&key.variety) {
            let ext_len = key.extension().len();
            if ext_len > MAX_EXTENSION_LEN {
                return Err(KeyError::ExtensionTooLong(ext_len));
            }
        }
        Ok(key)
    }

    /// Parses a key from a `&str` (convenience for tests and command lines).
    pub fn parse_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s.as_bytes())
    }

    /// Serializes the key in its normalised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.variety.len() + self.name.len() + 32);
        out.extend_from_slice(&self.variety);
        let mtime = self.mtime.map(|m| m.to_string().into_bytes().into_boxed_slice());
        for (tag, v) in [(b's', &self.size), (b'm', &mtime), (b'S', &self.chunk_size), (b'C', &self.chunk_num)] {
            if let Some(v) = v {
                out.push(b'-');
                out.push(tag);
                out.extend_from_slice(v);
            }
        }
        out.extend_from_slice(b"--");
        out.extend_from_slice(&self.name);
        out
    }

    /// The key as text; non-UTF-8 bytes are replaced (for messages and JSON only).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.to_bytes()).into_owned()
    }

    /// Backend name, e.g. `SHA256E`.
    pub fn variety(&self) -> &[u8] {
        &self.variety
    }

    /// The name part after `--`.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Size of the content in bytes; `None` if the key has no size or it does not fit `u64`.
    pub fn size(&self) -> Option<u64> {
        self.size.as_deref().and_then(digits_to_u64)
    }

    /// Modification time recorded in WORM keys (seconds; wraps like git-annex's `CTime`).
    pub fn mtime(&self) -> Option<i64> {
        self.mtime
    }

    /// Chunk size of a chunk key.
    pub fn chunk_size(&self) -> Option<u64> {
        self.chunk_size.as_deref().and_then(digits_to_u64)
    }

    /// Chunk number (from 1) of a chunk key.
    pub fn chunk_num(&self) -> Option<u64> {
        self.chunk_num.as_deref().and_then(digits_to_u64)
    }

    /// Whether this is a chunk key (has `-S` or `-C`).
    pub fn is_chunk(&self) -> bool {
        self.chunk_size.is_some() || self.chunk_num.is_some()
    }

    /// The key without its chunk fields: the key the location log is about.
    pub fn non_chunk(&self) -> Key {
        Key { chunk_size: None, chunk_num: None, ..self.clone() }
    }

    /// Chunk `num` (from 1) of this key when stored in chunks of `chunk_size` bytes.
    pub fn chunk(&self, chunk_size: u64, num: u64) -> Key {
        Key {
            chunk_size: Some(chunk_size.to_string().into_bytes().into()),
            chunk_num: Some(num.to_string().into_bytes().into()),
            ..self.non_chunk()
        }
    }

    /// The extension (from the first `.` of the name) for varieties that carry one; else empty.
    pub fn extension(&self) -> &[u8] {
        if !variety_has_extension(&self.variety) {
            return &[];
        }
        match self.name.iter().position(|&c| c == b'.') {
            Some(i) => &self.name[i..],
            None => &[],
        }
    }

    fn md5(&self) -> [u8; 16] {
        let digest = Md5::digest(self.non_chunk().to_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest);
        out
    }

    /// `hashdirlower`: `abc/def/`, or `abc/` with one level (`annex.tune.objecthash1` /
    /// `branchhash1`). Computed from the normalised non-chunk key, as git-annex does.
    pub fn hashdir_lower(&self, one_level: bool) -> String {
        let d = self.md5();
        let hex: String = d.iter().take(3).map(|b| format!("{b:02x}")).collect();
        if one_level { format!("{}/", &hex[0..3]) } else { format!("{}/{}/", &hex[0..3], &hex[3..6]) }
    }

    /// `hashdirmixed`: `Xy/Zw/`, or `Xy/` with one level.
    pub fn hashdir_mixed(&self, one_level: bool) -> String {
        const CHARS: &[u8; 32] = b"0123456789zqjxkmvwgpfZQJXKMVWGPF";
        let d = self.md5();
        // git-annex reads the first 32-bit word little-endian and takes 5 bits every 6 bits.
        let w = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        let c = |x: u32| CHARS[((w >> (6 * x)) & 31) as usize] as char;
        if one_level { format!("{}{}/", c(1), c(0)) } else { format!("{}{}/{}{}/", c(1), c(0), c(3), c(2)) }
    }

    /// The key as a file name (`keyFile`): `&`→`&a`, `%`→`&s`, `:`→`&c`, `/`→`%`.
    pub fn key_file(&self) -> Vec<u8> {
        let s = self.to_bytes();
        if !s.iter().any(|c| matches!(c, b'&' | b'%' | b':' | b'/')) {
            return s;
        }
        let mut out = Vec::with_capacity(s.len() + 8);
        for &b in &s {
            match b {
                b'&' => out.extend_from_slice(b"&a"),
                b'%' => out.extend_from_slice(b"&s"),
                b':' => out.extend_from_slice(b"&c"),
                b'/' => out.push(b'%'),
                _ => out.push(b),
            }
        }
        out
    }

    /// The inverse of [`Key::key_file`] (`fileKey`), with git-annex's handling of odd input:
    /// the text is split on `%` (joined with `/`), each part split on `&`, and every segment
    /// after the first has its first byte unescaped (`c`→`:`, `s`→`%`, `a`→`&`, others kept).
    pub fn from_key_file(f: &[u8]) -> Result<Key, KeyError> {
        let mut out = Vec::with_capacity(f.len());
        for (pi, part) in f.split(|&c| c == b'%').enumerate() {
            if pi > 0 {
                out.push(b'/');
            }
            for (si, seg) in part.split(|&c| c == b'&').enumerate() {
                if si == 0 {
                    out.extend_from_slice(seg);
                    continue;
                }
                if let Some((&c, tail)) = seg.split_first() {
                    out.push(match c {
                        b'c' => b':',
                        b's' => b'%',
                        b'a' => b'&',
                        other => other,
                    });
                    out.extend_from_slice(tail);
                }
            }
        }
        Key::parse(&out)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.to_string_lossy())
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(s: &str) -> Key {
        Key::parse_str(s).unwrap()
    }

    #[test]
    fn parses_fields_in_order() {
        let key = k("WORM-s12-m1700000000--some--name-with--dashes");
        assert_eq!(key.variety(), b"WORM");
        assert_eq!(key.size(), Some(12));
        assert_eq!(key.mtime(), Some(1_700_000_000));
        assert_eq!(key.name(), b"some--name-with--dashes");
        for bad in [
            "SHA256E-m1-s2--x",
            "SHA256E-s10-C3-S4--x",
            "SHA256E-sX--x",
            "SHA256E-s-5--x",
            "SHA256E-s+5--x",
            "SHA256E-x5--x",
            "SHA256E-s5-m--x",
            "SHA256E-s5",
            "-s5--x",
            "",
            "SHA256E",
        ] {
            assert!(Key::parse_str(bad).is_err(), "{bad} should be a bad key");
        }
    }

    #[test]
    fn normalises_leading_zeros_and_hashes_normalised_form() {
        let key = k("SHA256E-s007--lead0");
        assert_eq!(key.to_bytes(), b"SHA256E-s7--lead0");
        assert_eq!(key.hashdir_lower(false), "3d8/2c9/");
        assert_eq!(key.hashdir_mixed(false), "8G/gX/");
        assert_eq!(k("SHA256E-s000--x").to_bytes(), b"SHA256E-s0--x");
    }

    #[test]
    fn huge_sizes_are_unknown_but_round_trip() {
        let key = k("SHA256E-s99999999999999999999999--x");
        assert_eq!(key.size(), None);
        assert_eq!(key.to_bytes(), b"SHA256E-s99999999999999999999999--x");
        assert_eq!(k("SHA256E-s18446744073709551615--x").size(), Some(u64::MAX));
        assert_eq!(k("SHA256E-s18446744073709551616--x").size(), None);
    }

    #[test]
    fn mtime_wraps_like_git_annex() {
        // Values from `git annex examinekey`.
        assert_eq!(k("WORM-s1-m9223372036854775808--x").to_bytes(), b"WORM-s1-m-9223372036854775808--x");
        assert_eq!(k("WORM-s1-m18446744073709551615--x").to_bytes(), b"WORM-s1-m-1--x");
        assert_eq!(k("WORM-s1-m99999999999999999999--x").to_bytes(), b"WORM-s1-m7766279631452241919--x");
    }

    #[test]
    fn empty_name_and_extensions() {
        assert_eq!(k("SHA256E-s5--").name(), b"");
        let long = format!("SHA256E-s5--h.{}", "e".repeat(70));
        assert_eq!(Key::parse_str(&long), Err(KeyError::ExtensionTooLong(71)));
        assert!(Key::parse_str(&long.replace("SHA256E", "SHA256")).is_ok());
        assert!(Key::parse_str(&long.replace("SHA256E", "GITBUNDLE")).is_ok());
        assert_eq!(k("SHA256E-s9--abc.tar.gz").extension(), b".tar.gz");
        assert_eq!(k("sha256e-s9--abc.tar.gz").extension(), b"");
    }

    #[test]
    fn hashdirs_match_git_annex() {
        // Values from `git annex examinekey` (reference §2).
        for (key, lower, mixed) in [
            ("WORM-s12-m1700000000--foo%bar", "bb4/681/", "MV/0f/"),
            ("MD5-s3--acbd18db4cc2f85cedef654fccc4a4d8", "248/ec2/", "X4/v8/"),
            ("SHA256E-s1048576-S262144-C2--abcdef.bin", "6ac/15b/", "5z/QW/"),
            ("SHA256E-s1048576--abcdef.bin", "6ac/15b/", "5z/QW/"),
            ("XFOOE-s1--bar.baz", "e89/588/", "J8/29/"),
        ] {
            let key = k(key);
            assert_eq!(key.hashdir_lower(false), lower, "{key}");
            assert_eq!(key.hashdir_mixed(false), mixed, "{key}");
            assert_eq!(key.hashdir_lower(true), lower[..4]);
            assert_eq!(key.hashdir_mixed(true), mixed[..3]);
        }
    }

    #[test]
    fn key_file_escaping() {
        let key = k("URL--http://example.com/a%20b,38c:d");
        assert_eq!(key.key_file(), b"URL--http&c%%example.com%a&s20b,38c&cd");
        assert_eq!(Key::from_key_file(&key.key_file()).unwrap(), key);
        let worm = k("WORM-s3-m1795304740--sub/my,32file.txt");
        assert_eq!(worm.key_file(), b"WORM-s3-m1795304740--sub%my,32file.txt");
        // git-annex's fileKey: an empty segment after '&' contributes nothing.
        assert_eq!(Key::from_key_file(b"WORM--a&&cb").unwrap().name(), b"a:b");
        assert_eq!(Key::from_key_file(b"WORM--a&").unwrap().name(), b"a");
        assert_eq!(Key::from_key_file(b"WORM--a&zb").unwrap().name(), b"azb");
    }

    #[test]
    fn chunk_keys() {
        let key = k("SHA256E-s100000--af18.bin");
        let c = key.chunk(30720, 2);
        assert_eq!(c.to_bytes(), b"SHA256E-s100000-S30720-C2--af18.bin");
        assert_eq!(c.non_chunk(), key);
        assert_eq!(c.hashdir_lower(false), key.hashdir_lower(false));
        assert!(c.is_chunk());
    }

    #[test]
    fn non_utf8_keys() {
        let mut raw = b"SHA256E-s7--c002.".to_vec();
        raw.extend_from_slice(&[0xc3, 0x84, 0xff]);
        let key = Key::parse(&raw).unwrap();
        assert_eq!(key.to_bytes(), raw);
        assert_eq!(Key::from_key_file(&key.key_file()).unwrap(), key);
    }

    fn arb_digits() -> impl Strategy<Value = String> {
        prop_oneof![(0u64..1_000_000).prop_map(|n| n.to_string()), "[0-9]{1,30}",]
    }

    fn arb_key_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![
                Just("SHA256E".to_string()),
                Just("SHA256".to_string()),
                Just("WORM".to_string()),
                Just("URL".to_string()),
                Just("MD5E".to_string()),
                Just("XFOOE".to_string()),
                "[A-Za-z0-9_]{1,12}",
            ],
            proptest::option::of(arb_digits()),
            proptest::option::of(arb_digits()),
            proptest::option::of((arb_digits(), arb_digits())),
            proptest::collection::vec(any::<u8>(), 0..80),
        )
            .prop_map(|(v, s, m, chunk, name)| {
                let mut out = v.into_bytes();
                if let Some(s) = s {
                    out.extend_from_slice(format!("-s{s}").as_bytes());
                }
                if let Some(m) = m {
                    out.extend_from_slice(format!("-m{m}").as_bytes());
                }
                if let Some((sz, n)) = chunk {
                    out.extend_from_slice(format!("-S{sz}-C{n}").as_bytes());
                }
                out.extend_from_slice(b"--");
                out.extend_from_slice(&name);
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Key::parse(&bytes);
            let _ = Key::from_key_file(&bytes);
        }

        #[test]
        fn serialize_parse_round_trip(raw in arb_key_bytes()) {
            if let Ok(key) = Key::parse(&raw).map_err(|_| ()).and_then(|k| if k.mtime().is_some_and(|m| m < 0) { Err(()) } else { Ok(k) }) {
                let ser = key.to_bytes();
                let again = Key::parse(&ser).unwrap();
                prop_assert_eq!(&again, &key);
                prop_assert_eq!(again.to_bytes(), ser);
            }
        }

        #[test]
        fn key_file_round_trip(raw in arb_key_bytes()) {
            if let Ok(key) = Key::parse(&raw).map_err(|_| ()).and_then(|k| if k.mtime().is_some_and(|m| m < 0) { Err(()) } else { Ok(k) }) {
                let kf = key.key_file();
                prop_assert!(!kf.contains(&b'/'));
                prop_assert!(!kf.contains(&b':'));
                prop_assert_eq!(Key::from_key_file(&kf).unwrap(), key);
            }
        }

        #[test]
        fn hashdir_shapes(raw in arb_key_bytes()) {
            if let Ok(key) = Key::parse(&raw) {
                let l = key.hashdir_lower(false);
                prop_assert_eq!(l.len(), 8);
                prop_assert!(l[0..3].bytes().all(|c| c.is_ascii_hexdigit()));
                prop_assert_eq!(key.hashdir_mixed(false).len(), 6);
                prop_assert_eq!(key.non_chunk().hashdir_lower(false), l);
            }
        }
    }
}
