//! git-annex's hash backends: the content's hash under a key's backend, compared with the
//! hash in the key's name. Pure backend knowledge: no cache, no manifests.
//!
//! Backends with a hash: MD5, SHA1, SHA224/256/384/512, SHA3_224/256/384/512, SKEIN256/512,
//! BLAKE2B160/224/256/384/512, BLAKE2BP512, BLAKE2S160/224/256, BLAKE2SP224/256, BLAKE3_256,
//! each also with the `E` (extension) suffix. WORM, URL, VURL, external and unknown backends
//! carry no hash of the content and are reported as not verifiable.

use super::Key;
use super::key::variety_has_extension;
use std::fs::File;
use std::io::Read;

/// A running hash.
pub trait Hasher: Send {
    fn update(&mut self, data: &[u8]);
    fn finish(self: Box<Self>) -> Vec<u8>;
}

struct Digest<T>(T);

impl<T: digest::Digest + Send> Hasher for Digest<T> {
    fn update(&mut self, data: &[u8]) {
        digest::Digest::update(&mut self.0, data);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

/// The BLAKE2/BLAKE3 states share one shape: `update`, then `finalize()` to bytes.
macro_rules! hasher_for_state {
    ($($t:ty),*) => {$(
        impl Hasher for $t {
            fn update(&mut self, data: &[u8]) {
                <$t>::update(self, data);
            }
            fn finish(self: Box<Self>) -> Vec<u8> {
                self.finalize().as_bytes().to_vec()
            }
        }
    )*};
}

hasher_for_state!(
    blake2b_simd::State,
    blake2b_simd::blake2bp::State,
    blake2s_simd::State,
    blake2s_simd::blake2sp::State,
    blake3::Hasher
);

/// The hash backend of a key variety (without its `E`), if git-annex hashes content with it.
pub fn hasher_for(variety: &[u8]) -> Option<Box<dyn Hasher>> {
    let v = std::str::from_utf8(variety).ok()?;
    let base = if variety_has_extension(variety) { v.strip_suffix('E')? } else { v };
    let b2b = |n: usize| -> Box<dyn Hasher> { Box::new(blake2b_simd::Params::new().hash_length(n).to_state()) };
    let b2s = |n: usize| -> Box<dyn Hasher> { Box::new(blake2s_simd::Params::new().hash_length(n).to_state()) };
    Some(match base {
        "MD5" => Box::new(Digest(md5::Md5::default())),
        "SHA1" => Box::new(Digest(sha1::Sha1::default())),
        "SHA224" => Box::new(Digest(sha2::Sha224::default())),
        "SHA256" => Box::new(Digest(sha2::Sha256::default())),
        "SHA384" => Box::new(Digest(sha2::Sha384::default())),
        "SHA512" => Box::new(Digest(sha2::Sha512::default())),
        "SHA3_224" => Box::new(Digest(sha3::Sha3_224::default())),
        "SHA3_256" => Box::new(Digest(sha3::Sha3_256::default())),
        "SHA3_384" => Box::new(Digest(sha3::Sha3_384::default())),
        "SHA3_512" => Box::new(Digest(sha3::Sha3_512::default())),
        "SKEIN256" => Box::new(Digest(skein::Skein256_256::default())),
        "SKEIN512" => Box::new(Digest(skein::Skein512_512::default())),
        "BLAKE2B160" => b2b(20),
        "BLAKE2B224" => b2b(28),
        "BLAKE2B256" => b2b(32),
        "BLAKE2B384" => b2b(48),
        "BLAKE2B512" => b2b(64),
        "BLAKE2BP512" => Box::new(blake2b_simd::blake2bp::Params::new().hash_length(64).to_state()),
        "BLAKE2S160" => b2s(20),
        "BLAKE2S224" => b2s(28),
        "BLAKE2S256" => b2s(32),
        "BLAKE2SP224" => Box::new(blake2s_simd::blake2sp::Params::new().hash_length(28).to_state()),
        "BLAKE2SP256" => Box::new(blake2s_simd::blake2sp::Params::new().hash_length(32).to_state()),
        "BLAKE3_256" => Box::new(blake3::Hasher::new()),
        _ => return None,
    })
}

/// The hash a key's name carries (lowercase hex before the extension), decoded.
pub fn expected_hash(key: &Key) -> Option<Vec<u8>> {
    let name = key.name();
    let hex = if variety_has_extension(key.variety()) { &name[..name.len() - key.extension().len()] } else { name };
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Result of verifying content against its key.
#[derive(Debug)]
pub enum Outcome {
    Match,
    /// The content hashes to this (hex) instead.
    Mismatch(String),
    Unverifiable(String),
    Io(std::io::Error),
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hashes `size` bytes read from `r` and compares with the key.
pub fn verify_reader(key: &Key, mut r: impl Read) -> Outcome {
    let Some(mut h) = hasher_for(key.variety()) else {
        return Outcome::Unverifiable(format!(
            "backend {} has no content hash",
            String::from_utf8_lossy(key.variety())
        ));
    };
    let Some(expected) = expected_hash(key) else {
        return Outcome::Unverifiable("the key's name is not a hash".into());
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Outcome::Io(e),
        }
    }
    if key.size().is_some_and(|s| s != total) {
        return Outcome::Mismatch(format!("{total} bytes instead of {}", key.size().unwrap_or(0)));
    }
    let got = h.finish();
    if got == expected { Outcome::Match } else { Outcome::Mismatch(hex(&got)) }
}

/// Verifies a cache data file (read from its start, whatever the file position).
pub fn verify_file(key: &Key, file: &File) -> Outcome {
    use std::os::unix::fs::FileExt;
    struct At<'a>(&'a File, u64);
    impl Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read_at(buf, self.1)?;
            self.1 += n as u64;
            Ok(n)
        }
    }
    verify_reader(key, At(file, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        // "hello\n" under several backends, as git-annex names it.
        let data = b"hello\n";
        for (key, ok) in [
            ("SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt", true),
            ("SHA1-s6--f572d396fae9206628714fb2ce00f72e94f2258f", true),
            ("MD5-s6--b1946ac92492d2347c6235b4d2611184", true),
            ("SHA256-s6--0000000000000000000000000000000000000000000000000000000000000000", false),
        ] {
            let k = Key::parse_str(key).unwrap();
            let out = verify_reader(&k, &data[..]);
            assert_eq!(matches!(out, Outcome::Match), ok, "{key}: {out:?}");
        }
        let worm = Key::parse_str("WORM-s6-m1--hello").unwrap();
        assert!(matches!(verify_reader(&worm, &data[..]), Outcome::Unverifiable(_)));
        let short = Key::parse_str("SHA1-s7--f572d396fae9206628714fb2ce00f72e94f2258f").unwrap();
        assert!(matches!(verify_reader(&short, &data[..]), Outcome::Mismatch(_)), "size is checked too");
    }

    #[test]
    fn every_named_backend_has_a_hasher() {
        for v in [
            "MD5E",
            "SHA1",
            "SHA224E",
            "SHA256",
            "SHA384",
            "SHA512E",
            "SHA3_224",
            "SHA3_256E",
            "SHA3_384",
            "SHA3_512",
            "SKEIN256E",
            "SKEIN512",
            "BLAKE2B160",
            "BLAKE2B224",
            "BLAKE2B256E",
            "BLAKE2B384",
            "BLAKE2B512",
            "BLAKE2BP512",
            "BLAKE2S160",
            "BLAKE2S224",
            "BLAKE2S256",
            "BLAKE2SP224",
            "BLAKE2SP256",
            "BLAKE3_256E",
        ] {
            assert!(hasher_for(v.as_bytes()).is_some(), "{v}");
        }
        assert!(hasher_for(b"WORM").is_none());
        assert!(hasher_for(b"XFOOE").is_none());
    }
}
