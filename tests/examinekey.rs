//! annexfs's key parsing, serialization, hash directories and keyFile agree with
//! `git annex examinekey` on hundreds of generated keys, odd ones included.

mod common;

use annexfs::annex::Key;
use annexfs::annex::repo::{GitConfig, ObjectLayout};
use common::Sandbox;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

const VARIETIES: &[&str] = &[
    "SHA256E",
    "SHA256",
    "SHA1",
    "MD5E",
    "MD5",
    "WORM",
    "URL",
    "XFOOE",
    "XBAR",
    "BLAKE2B256E",
    "SHA3_256E",
    "SHA512E",
    "sha256e",
    "GITBUNDLE",
    "VURL",
    "SKEIN256E",
    "ODDE",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn digits(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => format!("00{}", rng.below(1000)),
        1 => "9".repeat(20 + rng.below(10) as usize), // beyond u64
        2 => "0".into(),
        _ => rng.below(u64::MAX / 2).to_string(),
    }
}

fn name(rng: &mut Rng, with_ext: bool) -> Vec<u8> {
    // No ASCII space: `examinekey` (unlike lookupkey and every log) cuts its argument at the
    // first space, so such keys cannot be compared through it.
    const ALPHA: &[u8] = b"abcXYZ019_-.,/%&:~+=@";
    let len = rng.below(40) as usize;
    let mut out = Vec::new();
    for _ in 0..len {
        match rng.below(10) {
            0 => out.push(0x80 + rng.below(0x80) as u8),
            1 => out.extend_from_slice(b"--"),
            _ => out.push(ALPHA[rng.below(ALPHA.len() as u64) as usize]),
        }
    }
    if with_ext {
        let ext_len = rng.below(8) as usize;
        out.push(b'.');
        out.extend((0..ext_len).map(|_| b'a' + rng.below(26) as u8));
    }
    // Keep the extension of E backends within git-annex's 64-byte limit.
    if let Some(dot) = out.iter().position(|&c| c == b'.')
        && out.len() - dot > 60
    {
        out.truncate(dot + 60);
    }
    out
}

fn generate(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut keys = Vec::new();
    for _ in 0..count {
        let v = VARIETIES[rng.below(VARIETIES.len() as u64) as usize];
        let mut k = v.as_bytes().to_vec();
        if rng.below(4) != 0 {
            k.extend_from_slice(format!("-s{}", digits(&mut rng)).as_bytes());
        }
        if v == "WORM" || rng.below(8) == 0 {
            k.extend_from_slice(format!("-m{}", digits(&mut rng)).as_bytes());
        }
        if rng.below(5) == 0 {
            k.extend_from_slice(format!("-S{}-C{}", digits(&mut rng), digits(&mut rng)).as_bytes());
        }
        k.extend_from_slice(b"--");
        let with_ext = rng.below(2) == 0;
        k.extend_from_slice(&name(&mut rng, with_ext));
        keys.push(k);
    }
    // Hand-picked odd ones.
    for odd in [
        &b"SHA256E-s007--lead0"[..],
        b"SHA256E-s5--",
        b"WORM-s12-m1700000000--some--name-with--dashes",
        b"WORM-s3-m1795304740--sub/my,32file.txt",
        b"URL--http://example.com/a%20b,38c:d",
        b"URL--http://example.com/dir/some,32file.txt,63x,611,38y,612",
        b"SHA256E-s99999999999999999999999--x.bin",
        b"SHA256E-s1048576-S262144-C2--abcdef.bin",
        b"MD5-s3--acbd18db4cc2f85cedef654fccc4a4d8",
        b"SHA256E-s7--c002.\xc3\x84\xc3\x96",
        b"SHA256E-s1--a&&cb.x",
    ] {
        keys.push(odd.to_vec());
    }
    keys
}

#[test]
fn agrees_with_examinekey_on_generated_keys() {
    let sb = Sandbox::new();
    let repo = sb.init_repo("r", "keys");
    let keys: Vec<Vec<u8>> = generate(600).into_iter().filter(|k| Key::parse(k).is_ok()).collect();
    assert!(keys.len() > 500, "the generator should mostly make valid keys, made {}", keys.len());

    let mut child = sb
        .cmd("git", &repo)
        .args(["annex", "examinekey", "--batch", "--format=${key}\t${hashdirlower}\t${hashdirmixed}\t${objectpath}\n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for k in &keys {
            stdin.write_all(k).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "examinekey rejected a key annexfs accepts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&[u8]> = out.stdout.split(|&c| c == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), keys.len());

    let layout = ObjectLayout::for_repo(Path::new(".git"), false, &GitConfig::default());
    for (input, line) in keys.iter().zip(lines) {
        let f: Vec<&[u8]> = line.split(|&c| c == b'\t').collect();
        let key = Key::parse(input).unwrap();
        let shown = String::from_utf8_lossy(input);
        assert_eq!(key.to_bytes(), f[0], "serialization of {shown}");
        assert_eq!(key.hashdir_lower(false).as_bytes(), f[1], "hashdirlower of {shown}");
        assert_eq!(key.hashdir_mixed(false).as_bytes(), f[2], "hashdirmixed of {shown}");
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(layout.candidates(&key)[0].as_os_str().as_bytes(), f[3], "objectpath of {shown}");
        // keyFile is the object's file name; fileKey inverts it.
        let kf = f[3].rsplit(|&c| c == b'/').next().unwrap();
        assert_eq!(key.key_file(), kf, "keyFile of {shown}");
        // A wrapped, negative mtime serializes as "-m-N", which neither git-annex nor annexfs
        // parses back.
        if key.mtime().is_none_or(|m| m >= 0) {
            assert_eq!(Key::from_key_file(kf).unwrap(), key);
        }
    }
}

#[test]
fn rejects_what_examinekey_rejects() {
    let sb = Sandbox::new();
    let repo = sb.init_repo("r", "keys");
    let long_ext = format!("SHA256E-s5--h.{}", "e".repeat(70));
    let bad = [
        "SHA256E-m1-s2--x",
        "SHA256E-s10-C3-S4--x",
        "SHA256E-sX--x",
        "SHA256E-s-5--x",
        "SHA256E-x5--x",
        "SHA256E-s5-m--x",
        "SHA256E-s5",
        "-s5--x",
        long_ext.as_str(),
    ];
    for k in bad {
        assert!(Key::parse_str(k).is_err(), "annexfs accepted {k}");
        let out = sb.cmd("git", &repo).args(["annex", "examinekey", k]).output().unwrap();
        assert!(!out.status.success(), "git-annex accepted {k}, annexfs rejects it");
    }
    // And the same long extension is fine without an E backend, for both.
    let ok = long_ext.replacen("SHA256E", "SHA256", 1);
    assert!(Key::parse_str(&ok).is_ok());
    sb.annex(&repo, &["examinekey", ok.as_str()]);
}
