//! `annexfs index`: makes the piece manifest of each given file whose content is present in
//! this repository, verifying the content against its key in the same pass, and publishes it
//! (see [`crate::manifest::publish`]). Content that does not match its key is reported and
//! never indexed; keys without a content hash (WORM, URL) are indexed from the local copy as
//! it is, as git-annex trusts it.

use super::sources::{annexed_files, open_base};
use crate::annex::backend::Outcome;
use crate::cli::IndexArgs;
use crate::manifest::Manifest;
use crate::manifest::publish::{publish, recorded};
use crate::manifest::whole::verify_file_with_manifest;
use crate::pieces::piece_size_for;
use crate::source::{LocalFile, RangeRead};

pub fn run(args: &IndexArgs) -> anyhow::Result<i32> {
    let (base, annex) = open_base(args.repo.as_deref())?;
    let mut failed = false;
    let mut fail = |msg: String| {
        eprintln!("annexfs index: {msg}");
        failed = true;
    };
    let files = annexed_files(&annex, &base, &args.paths, &mut fail)?;
    for (file, key) in files {
        if let Some(m) = recorded(&annex, &key).first() {
            println!("{file}: already indexed ({m})");
            continue;
        }
        let Some(path) = annex.present_object(&key) else {
            fail(format!("{file}: content not present here ({key}); `git annex get` it first"));
            continue;
        };
        // Opened as annexfs opens objects: no symlink followed, regular files only.
        let local = match LocalFile::open(&path, key.size()) {
            Ok(f) => f,
            Err(e) => {
                fail(format!("{file}: {e}"));
                continue;
            }
        };
        let size = local.len();
        let piece = piece_size_for(size);
        let manifest = match verify_file_with_manifest(&key, local.file(), piece) {
            (Outcome::Match, Some(m)) => m,
            (Outcome::Unverifiable(_), _) => match Manifest::from_file(&key, local.file(), piece) {
                Ok(m) => m,
                Err(e) => {
                    fail(format!("{file}: read {}: {e}", path.display()));
                    continue;
                }
            },
            (Outcome::Mismatch(got), _) => {
                fail(format!("{file}: content does not match its key {key} (hash {got}); not indexed"));
                continue;
            }
            (Outcome::Io(e), _) => {
                fail(format!("{file}: read {}: {e}", path.display()));
                continue;
            }
            (Outcome::Match, None) => continue,
        };
        match publish(&annex, &manifest) {
            Ok(mkey) => println!("{file}: indexed, {} pieces ({mkey})", manifest.count()),
            Err(e) => fail(format!("{file}: publish the manifest: {e}")),
        }
    }
    Ok(if failed { 1 } else { 0 })
}
