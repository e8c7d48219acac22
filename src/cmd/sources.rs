//! `annexfs sources`: for each file, its key and every holder of its content, in the order
//! annexfs would try them.
//!
//! Paths are resolved through the index of a non-bare repository (so unlocked files are found
//! whether or not their content is present) or the HEAD tree of a bare one. Each bad path gets
//! one line on stderr and a non-zero exit; the other paths are still reported.

use crate::annex::namespace::BlobClassifier;
use crate::annex::{Annex, Holder, Key};
use crate::cli::SourcesArgs;
use crate::fs::View;
use anyhow::Context;
use serde::Serialize;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

#[derive(Serialize)]
struct JsonHolder<'a> {
    uuid: &'a str,
    description: &'a str,
    remote: Option<&'a str>,
    here: bool,
    trust: &'static str,
    readable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    cost: u32,
    locations: Vec<String>,
    /// A spread remote's stores and the shards of the key they hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stores: Vec<JsonStore>,
}

#[derive(Serialize)]
struct JsonStore {
    store: String,
    shard: Option<usize>,
    parity: bool,
    state: String,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    file: &'a str,
    key: String,
    size: Option<u64>,
    holders: Vec<JsonHolder<'a>>,
}

/// A path in the repository and its key, if annexed.
type Found = (Vec<u8>, Option<Key>);

/// Where annexed files are looked up.
enum Lookup {
    Index(git2::Index),
    Tree(git2::Oid),
    Empty,
}

struct Resolver {
    repo: git2::Repository,
    lookup: Lookup,
    classifier: BlobClassifier,
    /// Canonical working tree, for non-bare repositories.
    workdir: Option<PathBuf>,
}

/// Removes `.` and resolves `..` lexically, then canonicalizes the parent directory so that
/// the final component (often a symlink: a locked file) is not followed.
fn absolute_unfollowed(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    match (out.parent(), out.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(p) => p.join(name),
            Err(_) => out,
        },
        _ => out.canonicalize().unwrap_or(out),
    }
}

impl Resolver {
    /// Paths of `annex` as shown in `view`: the index of a working tree, or a commit's tree.
    fn for_view(annex: &Annex, view: &crate::fs::View) -> anyhow::Result<Resolver> {
        let crate::fs::View::Ref(rev) = view else { return Resolver::new(annex) };
        let repo = git2::Repository::open(&annex.gitdir).with_context(|| format!("open {}", annex.gitdir.display()))?;
        let tree =
            repo.revparse_single(rev).and_then(|o| o.peel_to_tree()).with_context(|| format!("read {rev}"))?.id();
        Ok(Resolver { lookup: Lookup::Tree(tree), repo, classifier: BlobClassifier::default(), workdir: None })
    }

    fn new(annex: &Annex) -> anyhow::Result<Resolver> {
        let repo = git2::Repository::open(&annex.gitdir).with_context(|| format!("open {}", annex.gitdir.display()))?;
        let workdir = annex.workdir.as_ref().map(|w| w.canonicalize().unwrap_or_else(|_| w.clone()));
        let lookup = if workdir.is_some() {
            Lookup::Index(repo.index().context("read the git index")?)
        } else {
            match repo.head().and_then(|h| h.peel_to_tree()) {
                Ok(t) => Lookup::Tree(t.id()),
                Err(_) => Lookup::Empty,
            }
        };
        Ok(Resolver { repo, lookup, classifier: BlobClassifier::default(), workdir })
    }

    /// Whether the repository records any gitlink (submodule) where paths are looked up.
    fn has_gitlinks(&self) -> bool {
        const GITLINK: u32 = 0o160000;
        match &self.lookup {
            Lookup::Empty => false,
            Lookup::Index(index) => index.iter().any(|e| e.mode == GITLINK),
            Lookup::Tree(id) => {
                let Ok(tree) = self.repo.find_tree(*id) else { return false };
                let mut found = false;
                let _ = tree.walk(git2::TreeWalkMode::PreOrder, |_, e| {
                    if e.filemode() as u32 == GITLINK {
                        found = true;
                        return git2::TreeWalkResult::Abort;
                    }
                    git2::TreeWalkResult::Ok
                });
                found
            }
        }
    }

    /// Path of `given` inside the repository, as `/`-separated bytes ("" for the top).
    fn relative(&self, base: &Path, given: &Path) -> Result<Vec<u8>, String> {
        let Some(workdir) = &self.workdir else {
            // A bare repository has no working tree: paths are tree paths.
            let s = given.as_os_str().as_bytes();
            let s = s.strip_prefix(b"./").unwrap_or(s);
            return Ok(s.strip_suffix(b"/").unwrap_or(s).to_vec());
        };
        let abs = absolute_unfollowed(&base.join(given));
        match abs.strip_prefix(workdir) {
            Ok(rel) => Ok(rel.as_os_str().as_bytes().to_vec()),
            Err(_) => Err(format!("not in the repository at {}", workdir.display())),
        }
    }

    /// Every (relative path, key) at or under `rel`; `Ok(None)` when nothing is there.
    fn resolve(&mut self, rel: &[u8]) -> Result<Option<Vec<Found>>, git2::Error> {
        let odb = self.repo.odb()?;
        let mut out = Vec::new();
        match &self.lookup {
            Lookup::Empty => return Ok(None),
            Lookup::Index(index) => {
                if !rel.is_empty()
                    && let Some(e) = index.get_path(Path::new(OsStr::from_bytes(rel)), 0)
                {
                    let key = self.classifier.annexed_key(&odb, e.id, e.mode)?;
                    return Ok(Some(vec![(rel.to_vec(), key)]));
                }
                let mut prefix = rel.to_vec();
                if !prefix.is_empty() {
                    prefix.push(b'/');
                }
                let start =
                    if prefix.is_empty() { Ok(0) } else { index.find_prefix(Path::new(OsStr::from_bytes(&prefix))) };
                if let Ok(start) = start {
                    for i in start..index.len() {
                        let Some(e) = index.get(i) else { break };
                        if !e.path.starts_with(&prefix) {
                            break;
                        }
                        // Conflict stages 1-3 (bits 12-13 of the flags) are skipped.
                        if (e.flags >> 12) & 3 != 0 {
                            continue;
                        }
                        let key = self.classifier.annexed_key(&odb, e.id, e.mode)?;
                        out.push((e.path.clone(), key));
                    }
                }
            }
            Lookup::Tree(tree_id) => {
                let tree = self.repo.find_tree(*tree_id)?;
                let target = if rel.is_empty() {
                    None
                } else {
                    match tree.get_path(Path::new(OsStr::from_bytes(rel))) {
                        Ok(e) => Some(e),
                        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    }
                };
                let subtree = match &target {
                    Some(e) if e.kind() == Some(git2::ObjectType::Tree) => self.repo.find_tree(e.id())?,
                    Some(e) => {
                        let key = self.classifier.annexed_key(&odb, e.id(), e.filemode() as u32)?;
                        return Ok(Some(vec![(rel.to_vec(), key)]));
                    }
                    None => tree,
                };
                let mut entries = Vec::new();
                subtree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
                    if e.kind() == Some(git2::ObjectType::Blob) {
                        let mut p = rel.to_vec();
                        if !p.is_empty() {
                            p.push(b'/');
                        }
                        p.extend_from_slice(dir.as_bytes());
                        p.extend_from_slice(e.name_bytes());
                        entries.push((p, e.id(), e.filemode() as u32));
                    }
                    git2::TreeWalkResult::Ok
                })?;
                for (p, id, mode) in entries {
                    out.push((p, self.classifier.annexed_key(&odb, id, mode)?));
                }
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// The stores of a spread holder, looked at now (empty for other holders).
fn spread_places(h: &Holder, key: &Key) -> Vec<crate::spread::remote::StorePlace> {
    h.locations
        .iter()
        .find_map(|l| match l {
            crate::annex::remotes::Location::External(e) => super::spread::places(e, key),
            _ => None,
        })
        .unwrap_or_default()
}

fn holder_json<'a>(h: &'a Holder, key: &Key) -> JsonHolder<'a> {
    JsonHolder {
        uuid: &h.uuid,
        description: &h.description,
        remote: h.remote.as_deref(),
        here: h.here,
        trust: h.trust.as_str(),
        readable: h.readable.is_ok(),
        reason: h.readable.as_ref().err().map(ToString::to_string),
        cost: h.cost,
        locations: h.locations.iter().flat_map(|l| l.strings()).collect(),
        stores: spread_places(h, key)
            .into_iter()
            .map(|p| JsonStore { store: p.store, shard: p.shard, parity: p.parity, state: p.state })
            .collect(),
    }
}

fn print_human(out: &mut impl Write, file: &str, key: &Key, holders: &[Holder]) -> std::io::Result<()> {
    let size = key.size().map_or_else(|| "size unknown".to_string(), |s| format!("{s} bytes"));
    writeln!(out, "{file}\n  key {key} ({size})")?;
    if holders.is_empty() {
        writeln!(out, "  no repository is known to hold this content")?;
    }
    for h in holders {
        let name = if h.here { "here".to_string() } else { h.remote.clone().unwrap_or_else(|| "-".into()) };
        let state = match &h.readable {
            Ok(()) => "readable".to_string(),
            Err(e) => format!("not readable: {e}"),
        };
        writeln!(out, "  {name} {} {:?} [{}] cost {}: {state}", h.uuid, h.description, h.trust.as_str(), h.cost)?;
        for l in h.locations.iter().flat_map(|l| l.strings()) {
            writeln!(out, "      {l}")?;
        }
        for p in spread_places(h, key) {
            let shard = match p.shard {
                Some(s) => format!("shard {s} ({})", if p.parity { "parity" } else { "data" }),
                None => "no shard".to_string(),
            };
            writeln!(out, "      store {}: {shard}: {}", p.store, p.state)?;
        }
    }
    Ok(())
}

/// The annexed files named by `paths` (directories searched recursively), as (the file as
/// shown to the user, its key), in the order given. Each bad path is reported through `fail`
/// with one line naming it, and skipped.
pub(crate) fn annexed_files(
    annex: &Annex,
    base: &Path,
    paths: &[PathBuf],
    fail: &mut dyn FnMut(String),
) -> anyhow::Result<Vec<(String, Key)>> {
    let mut resolver = Resolver::new(annex)?;
    let mut out = Vec::new();
    for given in paths {
        let shown = given.display().to_string();
        let rel = match resolver.relative(base, given) {
            Ok(r) => r,
            Err(e) => {
                fail(format!("{shown}: {e}"));
                continue;
            }
        };
        out.extend(files_at(&mut resolver, &rel, base, given, fail));
    }
    Ok(out)
}

/// The annexed files at or under `rel` (the path `given`, relative to `base`), as (the file as
/// shown to the user, its key); a bad path is reported through `fail`.
fn files_at(
    resolver: &mut Resolver,
    rel: &[u8],
    base: &Path,
    given: &Path,
    fail: &mut dyn FnMut(String),
) -> Vec<(String, Key)> {
    let shown = given.display().to_string();
    let mut out = Vec::new();
    let found = match resolver.resolve(rel) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let exists = std::fs::symlink_metadata(base.join(given)).is_ok();
            fail(format!("{shown}: {}", if exists { "not a file known to git" } else { "no such file or directory" }));
            return Vec::new();
        }
        Err(e) => {
            fail(format!("{shown}: {e}"));
            return Vec::new();
        }
    };
    let single = found.len() == 1 && found[0].0 == rel;
    for (path, key) in found {
        // `file` is the path as given, extended by the part below a given directory.
        let file = if single {
            shown.clone()
        } else {
            let below = &path[rel.len()..];
            let below = below.strip_prefix(b"/").unwrap_or(below);
            crate::annex::repo::clean_path(&given.join(OsStr::from_bytes(below))).display().to_string()
        };
        match key {
            Some(key) => out.push((file, key)),
            None if single => fail(format!("{file}: not an annexed file")),
            None => {}
        }
    }
    out
}

/// Like [`annexed_files`], following paths into nested repositories (installed submodules,
/// subdatasets a mount cloned into the state directory under `cache`): (file, key, the
/// repository that knows the key).
fn files_across_repositories(
    annex: &Arc<Annex>,
    base: &Path,
    paths: &[PathBuf],
    cache: &Path,
    fail: &mut dyn FnMut(String),
) -> anyhow::Result<Vec<(String, Key, Arc<Annex>)>> {
    let mut resolver = Resolver::new(annex)?;
    let nesting = resolver.has_gitlinks();
    let view = if annex.workdir.is_some() { View::Worktree } else { View::Ref("HEAD".into()) };
    let mut out = Vec::new();
    for given in paths {
        let shown = given.display().to_string();
        let rel = match resolver.relative(base, given) {
            Ok(r) => r,
            Err(e) => {
                fail(format!("{shown}: {e}"));
                continue;
            }
        };
        let nested = if nesting { crate::cmd::datasets::descend(cache, annex, view.clone(), &rel) } else { Ok(None) };
        match nested {
            Ok(None) => out.extend(
                files_at(&mut resolver, &rel, base, given, fail).into_iter().map(|(f, k)| (f, k, annex.clone())),
            ),
            Ok(Some((mut sub, sub_view, rest))) => {
                // The mounted repository's address policy, as a mount applies it.
                sub.policy = annex.policy.clone();
                let sub = Arc::new(sub);
                match Resolver::for_view(&sub, &sub_view) {
                    Ok(mut r) => out.extend(
                        files_at(&mut r, &rest, base, given, fail).into_iter().map(|(f, k)| (f, k, sub.clone())),
                    ),
                    Err(e) => fail(format!("{shown}: {e:#}")),
                }
            }
            Err(e) => fail(format!("{shown}: {e}")),
        }
    }
    Ok(out)
}

/// The repository to work on: `-C REPO` or the current directory; returns (base, annex).
pub(crate) fn open_base(repo: Option<&Path>) -> anyhow::Result<(PathBuf, Annex)> {
    let cwd = std::env::current_dir().context("find the current directory")?;
    let base = match repo {
        Some(r) => cwd.join(r),
        None => cwd,
    };
    let annex = Annex::open(&base)?;
    Ok((base, annex))
}

/// Runs the command; returns the exit code.
pub fn run(args: &SourcesArgs) -> anyhow::Result<i32> {
    let (base, annex) = open_base(args.repo.as_deref())?;
    let annex = Arc::new(annex);
    let mut failed = false;
    let mut fail = |msg: String| {
        eprintln!("annexfs sources: {msg}");
        failed = true;
    };
    let cache = args.cache_dir.clone().unwrap_or_else(crate::pieces::PieceStore::default_dir);
    let files = files_across_repositories(&annex, &base, &args.paths, &cache, &mut fail)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (file, key, annex) in files {
        let holders = match annex.holders(&key) {
            Ok(h) => h,
            Err(e) => {
                fail(format!("{file}: {e}"));
                continue;
            }
        };
        let written = if args.json {
            let j = JsonFile {
                file: &file,
                key: key.to_string_lossy(),
                size: key.size(),
                holders: holders.iter().map(|h| holder_json(h, &key)).collect(),
            };
            serde_json::to_writer(&mut out, &j).map_err(std::io::Error::other).and_then(|()| writeln!(out))
        } else {
            print_human(&mut out, &file, &key, &holders)
        };
        if let Err(e) = written {
            // Stdout closed (e.g. piped into `head`): stop quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(if failed { 1 } else { 0 });
            }
            return Err(e).context("write to standard output");
        }
    }
    out.flush().ok();
    Ok(if failed { 1 } else { 0 })
}
