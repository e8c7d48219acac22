//! Clones of nested repositories in the state directory: one `git clone --bare` (or fetch)
//! per directory at a time, at most [`MAX_CLONES`] at once, failures remembered for a while.
//! See [`super`] for where they go and what is cloned.
//!
//! Lock order: `flights` and `running` are never held together, nor while git runs.

use super::clone_plan;
use crate::annex::Annex;
use crate::fs::{Gitlink, View};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Clones running at once, per mount.
pub(crate) const MAX_CLONES: usize = 4;
/// A repository that could not be had is tried again after this.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(30);
/// One `git clone` or `git fetch` is given up after this.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// What is happening to one clone directory.
enum Flight {
    Running,
    Failed(Instant),
}

/// `git` without prompts (a daemon has no terminal); the user's config and credential helpers
/// still apply.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0").env("GIT_ASKPASS", "true").stdin(Stdio::null());
    // The URLs come from the repository (untrusted): never a command as a transport, whatever
    // the user's config says.
    c.args(["-c", "protocol.ext.allow=never"]);
    c
}

/// Runs `cmd`; `Err` with the last line of its error output, or a timeout.
fn run(mut cmd: Command) -> Result<(), String> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| format!("run git: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > GIT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no result within {GIT_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait for git: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let last = err.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("").to_string();
    Err(if last.is_empty() { format!("git {status}") } else { last })
}

/// Whether the repository at `gitdir` has `commit`.
pub(super) fn has_commit(gitdir: &Path, commit: git2::Oid) -> bool {
    git2::Repository::open_bare(gitdir).is_ok_and(|r| r.find_commit(commit).is_ok())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The clones of one mount.
pub(super) struct Clones {
    /// `<cache>/datasets`.
    dir: PathBuf,
    /// A clone that failed is tried again after this.
    retry_after: Duration,
    flights: Mutex<HashMap<PathBuf, Flight>>,
    landed: Condvar,
    running: Mutex<usize>,
    slot_free: Condvar,
}

impl Clones {
    pub(super) fn new(dir: PathBuf, retry_after: Duration) -> Clones {
        Clones {
            dir,
            retry_after,
            flights: Mutex::new(HashMap::new()),
            landed: Condvar::new(),
            running: Mutex::new(0),
            slot_free: Condvar::new(),
        }
    }

    /// Waits for a free clone slot; the slot is freed when the guard drops.
    fn slot(&self) -> SlotGuard<'_> {
        let mut n = lock(&self.running);
        while *n >= MAX_CLONES {
            n = self.slot_free.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        SlotGuard(self)
    }

    /// Makes sure `dir` is a clone with `commit`: clones or fetches from `candidates`. `Err`
    /// names each candidate and why it failed.
    fn ensure(&self, dir: &Path, commit: git2::Oid, candidates: &[String]) -> Result<(), String> {
        if has_commit(dir, commit) {
            return Ok(());
        }
        let _slot = self.slot();
        let mut why = Vec::new();
        if dir.exists() {
            // A clone from an earlier mount, made before the superdataset recorded this commit.
            for url in candidates {
                let mut c = git();
                c.arg("-C").arg(dir).args(["fetch", "--quiet", "--no-tags", url, "+refs/heads/*:refs/heads/*"]);
                match run(c) {
                    Ok(()) if has_commit(dir, commit) => return Ok(()),
                    Ok(()) => why.push(format!("{url}: fetched, but it has no commit {commit}")),
                    Err(e) => why.push(format!("{url}: {e}")),
                }
            }
            return Err(why.join("; "));
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            // Private, like the rest of the cache.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| format!("create {}: {e}", self.dir.display()))?;
        }
        for url in candidates {
            let tmp = self.dir.join(format!(
                ".{}.{}.tmp",
                dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&tmp);
            let mut c = git();
            c.args(["clone", "--bare", "--quiet", "--no-hardlinks", "--", url]).arg(&tmp);
            match run(c) {
                Ok(()) if has_commit(&tmp, commit) => {
                    // Another mount may have landed the same clone meanwhile: either serves.
                    if std::fs::rename(&tmp, dir).is_err() {
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                    if has_commit(dir, commit) {
                        return Ok(());
                    }
                    why.push(format!("{url}: cloned, but {} is in the way", dir.display()));
                }
                Ok(()) => {
                    why.push(format!("{url}: cloned, but it has no commit {commit}"));
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                Err(e) => {
                    why.push(format!("{url}: {e}"));
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
        }
        if candidates.is_empty() {
            why.push("no candidate URL (no .gitmodules entry and no remote)".into());
        }
        Err(why.join("; "))
    }

    /// The clone of `link`, made or brought up to date now if it must be; one at a time per
    /// directory, failures remembered for `retry_after`.
    pub(super) fn cloned(&self, link: &Gitlink) -> Option<(Annex, View)> {
        let (candidates, dir) = clone_plan(&self.dir, &link.parent, &link.parent_view, &link.path);
        {
            let mut flights = lock(&self.flights);
            loop {
                match flights.get(&dir) {
                    Some(Flight::Running) => {
                        flights = self.landed.wait(flights).unwrap_or_else(|p| p.into_inner());
                    }
                    Some(Flight::Failed(at)) if at.elapsed() < self.retry_after => return None,
                    _ => break,
                }
            }
            flights.insert(dir.clone(), Flight::Running);
        }
        let started = Instant::now();
        let result = self.ensure(&dir, link.commit, &candidates);
        {
            let mut flights = lock(&self.flights);
            match &result {
                Ok(()) => flights.remove(&dir),
                Err(_) => flights.insert(dir.clone(), Flight::Failed(Instant::now())),
            };
            self.landed.notify_all();
        }
        if let Err(why) = result {
            tracing::error!(
                "{}: cannot install the nested repository (commit {}); shown empty, tried again in {:?}; candidates tried: {why}",
                link.shown,
                link.commit,
                self.retry_after
            );
            return None;
        }
        tracing::debug!("{}: {} ready in {:?}", link.shown, dir.display(), started.elapsed());
        match Annex::open_plain(&dir) {
            Ok(a) => Some((a, View::Ref(link.commit.to_string()))),
            Err(e) => {
                tracing::error!("{}: open the clone {}: {e}", link.shown, dir.display());
                None
            }
        }
    }
}

struct SlotGuard<'a>(&'a Clones);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.running) -= 1;
        self.0.slot_free.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A repository at `dir` with one commit of `files` and `gitlinks` (name → commit).
    fn repo(dir: &Path, files: &[(&str, &[u8])], gitlinks: &[(&str, git2::Oid)]) -> git2::Oid {
        let r = git2::Repository::init(dir).unwrap();
        let mut tb = r.treebuilder(None).unwrap();
        for (name, data) in files {
            tb.insert(name, r.blob(data).unwrap(), 0o100644).unwrap();
        }
        for (name, commit) in gitlinks {
            tb.insert(name, *commit, 0o160000).unwrap();
        }
        let tree = r.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@annexfs.invalid").unwrap();
        r.commit(Some("HEAD"), &sig, &sig, "c", &tree, &[]).unwrap()
    }

    #[test]
    fn a_failed_clone_is_tried_again_only_after_a_while() {
        let tmp = tempfile::tempdir().unwrap();
        let (real, served) = (tmp.path().join("b-real"), tmp.path().join("b"));
        let commit = repo(&real, &[("g", b"x")], &[]);
        let modules =
            format!("[submodule \"sub\"]\n\tpath = sub\n\turl = {}\n\tdatalad-id = abc-1\n", served.display());
        repo(&tmp.path().join("a"), &[(".gitmodules", modules.as_bytes())], &[("sub", commit)]);
        let link = Gitlink {
            parent: Arc::new(Annex::open_plain(&tmp.path().join("a")).unwrap()),
            parent_view: View::Ref("HEAD".into()),
            path: b"sub".to_vec(),
            shown: "sub".into(),
            commit,
        };
        let clones = Clones::new(tmp.path().join("datasets"), Duration::from_millis(300));
        assert!(clones.cloned(&link).is_none(), "nothing is served at the URL yet");

        // The URL now works, but the failure is remembered: no attempt until it is due.
        std::fs::rename(&real, &served).unwrap();
        assert!(clones.cloned(&link).is_none());
        assert!(!tmp.path().join("datasets/abc-1").exists());

        std::thread::sleep(Duration::from_millis(350));
        let (annex, view) = clones.cloned(&link).expect("tried again");
        assert_eq!(view, View::Ref(commit.to_string()));
        assert!(annex.bare && annex.gitdir.ends_with("datasets/abc-1"), "{}", annex.gitdir.display());
        assert!(has_commit(&tmp.path().join("datasets/abc-1"), commit));
        // Several callers at once: one clone, all served.
        let clones = Arc::new(clones);
        let link = Arc::new(link);
        let all: Vec<_> = (0..4)
            .map(|_| {
                let (c, l) = (clones.clone(), link.clone());
                std::thread::spawn(move || c.cloned(&l).is_some())
            })
            .collect();
        assert!(all.into_iter().all(|t| t.join().unwrap()));
    }
}
