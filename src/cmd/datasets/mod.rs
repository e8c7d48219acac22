//! Nested repositories (git submodules, DataLad subdatasets) for a mount: the
//! [`Subtrees`](crate::fs::Subtrees) fs asks when a look-up enters a gitlink.
//!
//! - An installed submodule (a checkout at the gitlink's path of a working tree shown live) is
//!   served from there, like any repository, with its own annex and remotes.
//! - Otherwise the repository is cloned into annexfs's state directory,
//!   `<cache>/datasets/<datalad-id, else a hash of the candidates>`, never into the user's
//!   tree: `git clone --bare` with the system git (users' credentials, config and `insteadOf`
//!   apply), which brings every branch, the `git-annex` branch with them. Nothing is checked
//!   out: the clone is served from the tree of the commit the superdataset records, like a
//!   `--ref` mount. Candidates are tried in DataLad's order ([`crate::annex::gitmodules`]).
//!   A clone made for one mount is reused by the next; when it lacks the recorded commit it is
//!   fetched again from its candidates.
//! - At most [`clones::MAX_CLONES`] clones run at once; a look-up waits only for the clone of its own
//!   repository (one clone per directory, later callers wait for it). A clone that fails is
//!   logged with every candidate and why, shows as an empty directory, and is tried again
//!   once [`RETRY_AFTER`] has passed (`clones.rs`).
//! - A nested repository's content is fetched through the mount's fetcher and piece cache,
//!   from its own holders (its git-annex branch, its remotes resolved by its own config).
//!
//! Locks: see `clones.rs`; nothing here holds one.

mod clones;

use crate::annex::gitmodules::{self, Submodule};
use crate::annex::{Annex, policy::AddressPolicy};
use crate::cmd::Network;
use crate::cmd::assemble::MountHolders;
use crate::fs::{AnnexFs, FsConfig, Gitlink, Subtrees, View};
use crate::source::external::Programs;
use crate::source::http::learn_http_remotes;
use crate::source::reach::Reach;
use clones::{Clones, RETRY_AFTER, has_commit};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The mount's nested repositories.
pub(crate) struct Datasets {
    cache_dir: PathBuf,
    net: Arc<Network>,
    cfg: FsConfig,
    /// The mounted repository's address policy, for every nested repository (its clone's own
    /// config is annexfs's, not the user's).
    policy: AddressPolicy,
    rt: tokio::runtime::Handle,
    clones: Clones,
}

/// The `.gitmodules` text of the repository `annex` as shown in `view`.
fn gitmodules_text(annex: &Annex, view: &View) -> Option<String> {
    if let (View::Worktree, Some(w)) = (view, &annex.workdir)
        && let Ok(t) = std::fs::read_to_string(w.join(".gitmodules"))
    {
        return Some(t);
    }
    let repo = git2::Repository::open_bare(&annex.gitdir).ok()?;
    let tree = match view {
        View::Ref(rev) => repo.revparse_single(rev).ok()?.peel_to_tree().ok()?,
        View::Worktree => repo.head().ok()?.peel_to_tree().ok()?,
    };
    let entry = tree.get_path(Path::new(".gitmodules")).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    Some(String::from_utf8_lossy(blob.content()).into_owned())
}

/// The repository's remote URLs, `origin` first.
fn remote_urls(annex: &Annex) -> Vec<String> {
    let mut names = annex.config.remote_names();
    names.sort_by_key(|n| n != "origin");
    names.iter().filter_map(|n| annex.config.remote(n, "url").map(str::to_string)).collect()
}

/// Where the nested repository at `path` of `parent` (shown as `view`) is cloned from (the
/// candidates, best first) and to: `<datasets>/<datalad-id>` (the same dataset whatever the
/// URL), else a hash of the candidates.
pub(crate) fn clone_plan(datasets: &Path, parent: &Annex, view: &View, path: &[u8]) -> (Vec<String>, PathBuf) {
    let text = gitmodules_text(parent, view).unwrap_or_default();
    let path = String::from_utf8_lossy(path);
    let sub = gitmodules::parse(&text).into_iter().find(|s| s.path == path).unwrap_or_else(|| Submodule {
        name: path.to_string(),
        path: path.to_string(),
        ..Default::default()
    });
    // A bare repository's relative URLs are relative to the repository itself, as git has it.
    let own = Some(parent.base_dir().to_string_lossy().into_owned());
    let candidates = gitmodules::candidates(&sub, &remote_urls(parent), own.as_deref());
    let id = sub
        .datalad_id
        .as_deref()
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let name = match id {
        Some(id) => id.to_string(),
        None => blake3::hash(candidates.join("\n").as_bytes()).to_hex().as_str()[..32].to_string(),
    };
    (candidates, datasets.join(name))
}

/// The state directory's clones: `<cache>/datasets`.
pub(crate) fn datasets_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("datasets")
}

/// The repository a gitlink of `parent` (shown as `view`) leads to, if it is at hand without
/// cloning: an installed checkout (live views), else a clone with `commit` in the state
/// directory `datasets`.
pub(crate) fn at_hand(
    datasets: &Path,
    parent: &Annex,
    view: &View,
    path: &[u8],
    commit: git2::Oid,
) -> Option<(Annex, View)> {
    if let (View::Worktree, Some(w)) = (view, &parent.workdir) {
        let at = w.join(OsStr::from_bytes(path));
        if at.join(".git").exists() {
            return Annex::open_plain(&at).ok().map(|a| (a, View::Worktree));
        }
    }
    let (_, dir) = clone_plan(datasets, parent, view, path);
    if !has_commit(&dir, commit) {
        return None;
    }
    Annex::open_plain(&dir).ok().map(|a| (a, View::Ref(commit.to_string())))
}

impl Datasets {
    pub fn new(
        cache_dir: &Path,
        net: Arc<Network>,
        cfg: FsConfig,
        policy: AddressPolicy,
        rt: tokio::runtime::Handle,
    ) -> Datasets {
        Datasets {
            cache_dir: cache_dir.to_path_buf(),
            net,
            cfg,
            policy,
            rt,
            clones: Clones::new(datasets_dir(cache_dir), RETRY_AFTER),
        }
    }

    /// The installed checkout of `link`, if its parent is a working tree shown live and the
    /// submodule is checked out there.
    fn installed(&self, link: &Gitlink) -> Option<(Annex, View)> {
        let (View::Worktree, Some(w)) = (&link.parent_view, &link.parent.workdir) else { return None };
        let at = w.join(OsStr::from_bytes(&link.path));
        if !at.join(".git").exists() {
            return None;
        }
        match Annex::open_plain(&at) {
            Ok(a) => Some((a, View::Worktree)),
            Err(e) => {
                tracing::warn!("{}: installed submodule not readable ({e}); cloning it instead", link.shown);
                None
            }
        }
    }

    /// The network side of a nested repository: the mount's fetcher, cache, peers and HTTP
    /// client, with this repository's own way of reaching its remotes.
    fn network_for(&self, annex: &Annex) -> Arc<Network> {
        let http = self.net.reach.http.clone();
        self.rt.block_on(learn_http_remotes(annex, &http));
        let mut reach = Reach {
            external: Programs::for_repo_in(annex.base_dir().to_path_buf(), &self.cache_dir),
            ..Reach::new(http).for_repository(annex.uuid.clone(), annex.base_dir())
        };
        // Spread remotes are read in place in nested repositories too.
        reach.external_makers = self.net.reach.external_makers.clone();
        Arc::new(Network {
            fetcher: self.net.fetcher.clone(),
            reach: Arc::new(reach),
            peers: self.net.peers.clone(),
            serving: OnceLock::new(),
            sizes: self.net.sizes.clone(),
            downloads: self.net.downloads.clone(),
            // The swarm's rules are the mounted repository's.
            rules: Mutex::new((None, Arc::default())),
            spreads: self.net.spreads.clone(),
        })
    }
}

impl Subtrees for Datasets {
    fn open(&self, link: &Gitlink) -> Option<Arc<AnnexFs>> {
        let (mut annex, view) = match self.installed(link) {
            Some(x) => x,
            None => self.clones.cloned(link)?,
        };
        annex.policy = self.policy.clone();
        let annex = Arc::new(annex);
        let net = self.network_for(&annex);
        let holders = Arc::new(MountHolders::new(annex.clone(), net, false));
        match AnnexFs::new(annex, view, self.cfg.clone()) {
            Ok(fs) => Some(Arc::new(fs.with_holders(holders))),
            Err(e) => {
                tracing::error!("{}: read the nested repository's files: {e}", link.shown);
                None
            }
        }
    }
}

/// The gitlink that `rel` (a `/`-separated path in the repository `annex` shown as `view`)
/// lies strictly below, if any: (its length in `rel`, the recorded commit).
fn gitlink_above(annex: &Annex, view: &View, rel: &[u8]) -> Option<(usize, git2::Oid)> {
    let repo = git2::Repository::open_bare(&annex.gitdir).ok()?;
    let ends: Vec<usize> = rel.iter().enumerate().filter(|(_, c)| **c == b'/').map(|(i, _)| i).collect();
    const GITLINK: u32 = 0o160000;
    match view {
        View::Worktree => {
            let mut index = git2::Repository::open(annex.workdir.as_ref()?).ok()?.index().ok()?;
            index.read(false).ok()?;
            ends.into_iter().find_map(|end| {
                let e = index.get_path(Path::new(OsStr::from_bytes(&rel[..end])), 0)?;
                (e.mode == GITLINK).then_some((end, e.id))
            })
        }
        View::Ref(rev) => {
            let tree = repo.revparse_single(rev).ok()?.peel_to_tree().ok()?;
            ends.into_iter().find_map(|end| {
                let e = tree.get_path(Path::new(OsStr::from_bytes(&rel[..end]))).ok()?;
                (e.filemode() as u32 == GITLINK).then_some((end, e.id()))
            })
        }
    }
}

/// The innermost repository holding `rel` (a path in `annex`, shown as `view`), following
/// gitlinks into installed checkouts and clones in the state directory under `cache_dir`:
/// `None` when `rel` is in `top` itself. `Err` names a nested repository that
/// is not at hand (not installed, not cloned yet).
pub(crate) fn descend(cache_dir: &Path, top: &Annex, view: View, rel: &[u8]) -> Result<Option<Nested>, String> {
    let datasets = datasets_dir(cache_dir);
    let mut shown: Vec<u8> = Vec::new();
    let mut cur: Option<Nested> = None;
    loop {
        let (annex, view, rel) = match &cur {
            Some((a, v, r)) => (a, v, r.as_slice()),
            None => (top, &view, rel),
        };
        let Some((end, commit)) = gitlink_above(annex, view, rel) else { return Ok(cur) };
        if !shown.is_empty() {
            shown.push(b'/');
        }
        shown.extend_from_slice(&rel[..end]);
        let Some((a, v)) = at_hand(&datasets, annex, view, &rel[..end], commit) else {
            return Err(format!(
                "inside {}, a nested repository neither installed nor cloned yet in {} (a mount clones it when it is entered)",
                String::from_utf8_lossy(&shown),
                datasets.display()
            ));
        };
        let rest = rel[end + 1..].to_vec();
        cur = Some((a, v, rest));
    }
}

/// A nested repository, how it is shown, and a path in it.
pub(crate) type Nested = (Annex, View, Vec<u8>);
