//! Recognising annexed files: symlink targets of locked files and pointer files of unlocked
//! ones (reference §3.2, git-annex's `parseLinkTargetOrPointer`).
//!
//! Inputs are bounded before they are looked at: a symlink target longer than
//! [`MAX_LINK_TARGET`] or a pointer file longer than [`MAX_POINTER_FILE`] is never an annex
//! link, so callers read at most one byte more than the bound to decide.

use super::key::Key;

/// git-annex never writes a longer symlink target for an annexed file.
pub const MAX_LINK_TARGET: usize = 8192;
/// git-annex treats a larger file as content, never as a pointer file.
pub const MAX_POINTER_FILE: usize = 32768;

/// The part of a link target or pointer that marks it as pointing into the annex.
const OBJECTS_MARK: &[u8] = b"/annex/objects/";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Key of a line like `../.git/annex/objects/xx/yy/KEY/KEY` or `/annex/objects/KEY`.
fn parse_link_line(line: &[u8]) -> Option<Key> {
    if !contains(line, OBJECTS_MARK) {
        return None;
    }
    let base = match line.iter().rposition(|&c| c == b'/') {
        Some(i) => &line[i + 1..],
        None => line,
    };
    Key::from_key_file(base).ok()
}

/// The key a symlink target points at, if it is an annex link.
pub fn parse_symlink_target(target: &[u8]) -> Option<Key> {
    if target.len() > MAX_LINK_TARGET || target.contains(&b'\n') {
        return None;
    }
    parse_link_line(target)
}

/// The key of a pointer file's content, if it is one.
///
/// The first line (without a trailing `\r`) must point into the annex; any further non-empty
/// lines must each mention `/annex/` (git-annex tolerates such appended lines).
pub fn parse_pointer_file(content: &[u8]) -> Option<Key> {
    if content.len() > MAX_POINTER_FILE {
        return None;
    }
    let (first, rest) = match content.iter().position(|&c| c == b'\n') {
        Some(i) => (&content[..i], &content[i + 1..]),
        None => (content, &content[content.len()..]),
    };
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let key = parse_link_line(first)?;
    let rest_ok = rest.split(|&c| c == b'\n').filter(|l| !l.is_empty()).all(|l| contains(l, b"/annex/"));
    rest_ok.then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn symlinks() {
        let t = b"../.git/annex/objects/pX/QP/WORM-s3-m1795304740--sub%my,32file.txt/WORM-s3-m1795304740--sub%my,32file.txt";
        let key = parse_symlink_target(t).unwrap();
        assert_eq!(key.name(), b"sub/my,32file.txt");
        assert!(parse_symlink_target(b"../other/file").is_none());
        assert!(parse_symlink_target(b"/annex/objects/notakey").is_none());
        let long = [b"/annex/objects/".as_slice(), &vec![b'a'; MAX_LINK_TARGET], b"/SHA256E-s1--x"].concat();
        assert!(parse_symlink_target(&long).is_none());
    }

    #[test]
    fn pointers() {
        let k = parse_pointer_file(b"/annex/objects/SHA256E-s12--a948.txt\n").unwrap();
        assert_eq!(k.size(), Some(12));
        assert!(parse_pointer_file(b"/annex/objects/SHA256E-s12--a948.txt\r\n").is_some());
        assert!(parse_pointer_file(b"/annex/objects/SHA256E-s12--a948.txt").is_some());
        assert!(parse_pointer_file(b"/annex/objects/SHA256E-s12--a948.txt\nhello\n").is_none());
        assert!(parse_pointer_file(b"/annex/objects/SHA256E-s12--a948.txt\n/annex/x\n").is_some());
        assert!(parse_pointer_file(b"hello world\n").is_none());
        let mut big = b"/annex/objects/SHA256E-s12--a948.txt\n".to_vec();
        big.resize(MAX_POINTER_FILE + 1, b'\n');
        assert!(parse_pointer_file(&big).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_pointer_file(&bytes);
            let _ = parse_symlink_target(&bytes);
            let mut p = b"/annex/objects/".to_vec();
            p.extend_from_slice(&bytes);
            let _ = parse_pointer_file(&p);
        }
    }
}
