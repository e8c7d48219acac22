//! Whole-content verification that also makes the content's piece manifest, in one pass.

use super::Manifest;
use crate::annex::Key;
use crate::annex::backend::{Outcome, expected_hash, hasher_for, hex};
use std::fs::File;

/// Verifies a file holding a key's whole content and, when it matches, makes its piece
/// manifest in the same pass (pieces of `piece_size`).
pub fn verify_file_with_manifest(key: &Key, file: &File, piece_size: u64) -> (Outcome, Option<Manifest>) {
    use std::os::unix::fs::FileExt;
    let Some(mut h) = hasher_for(key.variety()) else {
        let why = format!("backend {} has no content hash", String::from_utf8_lossy(key.variety()));
        return (Outcome::Unverifiable(why), None);
    };
    let Some(expected) = expected_hash(key) else {
        return (Outcome::Unverifiable("the key's name is not a hash".into()), None);
    };
    let size = match key.size() {
        Some(s) => s,
        None => match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return (Outcome::Io(e), None),
        },
    };
    let built = Manifest::build(key, size, piece_size, |off, buf| {
        file.read_exact_at(buf, off)?;
        h.update(buf);
        Ok(())
    });
    let manifest = match built {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return (Outcome::Mismatch(format!("fewer than {size} bytes")), None);
        }
        Err(e) => return (Outcome::Io(e), None),
    };
    // The whole file, not only the key's size, is the content.
    if file.metadata().is_ok_and(|m| m.len() != size) {
        return (Outcome::Mismatch(format!("file is not {size} bytes")), None);
    }
    let got = h.finish();
    if got == expected { (Outcome::Match, Some(manifest)) } else { (Outcome::Mismatch(hex(&got)), None) }
}
