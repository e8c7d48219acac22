//! `annexfs ls`: the files of a repository as the mount shows them.

use crate::annex::Annex;
use crate::annex::namespace::{BlobClassifier, EntryKind, Namespace};
use crate::cli::LsArgs;
use anyhow::Context;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

/// Builds the namespace the mount would show: `rev`'s tree, a bare repository's HEAD, or the
/// working tree of a non-bare repository.
pub fn namespace(annex: &Annex, rev: Option<&str>) -> anyhow::Result<Namespace> {
    let repo = git2::Repository::open(&annex.gitdir).with_context(|| format!("open {}", annex.gitdir.display()))?;
    let mut cls = BlobClassifier::default();
    match (rev, &annex.workdir) {
        (None, Some(workdir)) => {
            let ns = Namespace::from_index(&repo, workdir, &mut cls).context("read the git index")?;
            // Every entry is listed: the symlinks are read on all cores first.
            ns.classify_all(&|| false);
            Ok(ns)
        }
        (rev, _) => {
            let rev = rev.unwrap_or("HEAD");
            let commit = repo
                .revparse_single(rev)
                .and_then(|o| o.peel_to_commit())
                .with_context(|| format!("{rev}: not a commit in {}", annex.gitdir.display()))?;
            let secs = u64::try_from(commit.time().seconds()).unwrap_or(0);
            let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            Ok(Namespace::from_tree(&repo, commit.tree_id(), mtime, &mut cls)
                .with_context(|| format!("read the tree of {rev}"))?)
        }
    }
}

pub fn run(args: &LsArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().context("find the current directory")?;
    let base = args.repo.as_ref().map_or(cwd.clone(), |r| cwd.join(r));
    let annex = Annex::open(&base)?;
    let ns = namespace(&annex, args.rev.as_deref())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (path, id) in ns.files() {
        let Some(kind) = ns.kind(id) else { continue };
        let written = if args.long {
            let (kind, size, extra) = match kind {
                EntryKind::Annexed(k) => {
                    ("annexed", k.size().map_or("?".into(), |s| s.to_string()), k.to_string_lossy())
                }
                EntryKind::Plain { size, .. } => ("file", size.to_string(), String::new()),
                EntryKind::Symlink(t) => ("symlink", t.len().to_string(), String::from_utf8_lossy(t).into_owned()),
                EntryKind::Dir => ("dir", "0".into(), String::new()),
            };
            writeln!(out, "{kind}\t{size}\t{}\t{extra}", path.display())
        } else {
            out.write_all(path.as_os_str().as_bytes()).and_then(|()| out.write_all(b"\n"))
        };
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(e).context("write to standard output");
        }
    }
    out.flush().ok();
    Ok(0)
}
