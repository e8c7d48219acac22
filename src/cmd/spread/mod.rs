//! Spread remotes at the command level: the special remote program
//! (`git-annex-remote-annexfs`, [`program`]), `annexfs spread repair REMOTE`, and the maker
//! that lets a mount read `externaltype=annexfs` remotes from their stores in place.

pub mod codec;
pub mod program;

use crate::annex::Annex;
use crate::annex::remotes::RemoteKind;
use crate::annex::remotes::external::ExternalLocation;
use crate::cli::{SpreadArgs, SpreadCommand};
use crate::source::reach::ExternalMaker;
use crate::source::remote::RangeSource;
use crate::spread::Spread;
use crate::spread::source::SpreadSource;
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The externaltype of spread remotes.
pub const EXTERNALTYPE: &str = "annexfs";

/// The program's name (argv[0]) that runs the special remote.
pub const PROGRAM: &str = "git-annex-remote-annexfs";

/// A spread remote from its remote.log fields.
fn from_fields(fields: &BTreeMap<String, String>) -> Result<Spread, crate::spread::SpreadError> {
    let stores = fields.get("stores").map(String::as_str).unwrap_or_default();
    Spread::from_config(stores, fields.get("data").map(String::as_str), fields.get("parity").map(String::as_str))
}

/// The spread remotes a mount reads, by remote name.
pub type Registry = Arc<Mutex<BTreeMap<String, Arc<Spread>>>>;

/// The maker a mount installs for `externaltype=annexfs`: one [`Spread`] per remote (so the
/// stores' load figures are shared by every key read), made on first use and kept in
/// `remotes`.
pub fn mount_maker(remotes: Registry) -> ExternalMaker {
    Arc::new(move |loc: &ExternalLocation, key: &crate::annex::Key| {
        let size = key.size().ok_or("the key has no size to read ranges of")?;
        let spread = {
            let mut r = remotes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match r.get(&loc.remote) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(from_fields(&loc.config).map_err(|e| format!("spread remote: {e}"))?);
                    r.insert(loc.remote.clone(), s.clone());
                    s
                }
            }
        };
        let src: Arc<dyn RangeSource> = Arc::new(SpreadSource::new(&loc.remote, spread, &key.to_string_lossy(), size));
        Ok(src)
    })
}

/// The figures of every spread remote in `reg`, for `annexfs status`.
pub fn statuses(reg: &Registry) -> Vec<super::status::SpreadStatus> {
    use std::sync::atomic::Ordering::Relaxed;
    let reg = reg.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    reg.iter()
        .map(|(name, s)| super::status::SpreadStatus {
            remote: name.clone(),
            data: s.code.k,
            parity: s.code.m,
            decoded_pieces: s.decoded.load(Relaxed),
            stores: s
                .stores
                .iter()
                .map(|e| super::status::SpreadStoreStatus {
                    store: e.spec.clone(),
                    reads: e.stats.reads.load(Relaxed),
                    bytes: e.stats.bytes.load(Relaxed),
                    failures: e.stats.failures.load(Relaxed),
                    in_flight: e.stats.inflight.load(Relaxed),
                })
                .collect(),
        })
        .collect()
}

/// `annexfs spread …`.
pub fn run(args: &SpreadArgs) -> anyhow::Result<i32> {
    match &args.command {
        SpreadCommand::Repair { remote, repo, keys } => repair(remote, repo.as_deref(), keys),
        SpreadCommand::Codec { data, parity, mib, decode } => codec::run(*data, *parity, *mib, *decode),
    }
}

fn repair(remote: &str, repo: Option<&std::path::Path>, keys: &[String]) -> anyhow::Result<i32> {
    let repo = repo.unwrap_or(std::path::Path::new("."));
    let annex = Annex::open(repo).with_context(|| format!("open {}", repo.display()))?;
    let meta = annex.meta().context("read the git-annex branch")?;
    let r = meta.remotes.iter().find(|r| r.name == remote).ok_or_else(|| anyhow!("no remote named {remote}"))?;
    let RemoteKind::External(ext) = &r.kind else { bail!("{remote} is not an external special remote") };
    if ext.externaltype.as_deref() != Some(EXTERNALTYPE) {
        bail!("{remote} is not a spread remote (externaltype={EXTERNALTYPE})");
    }
    let spread = Arc::new(from_fields(&ext.config)?);
    let keys = if keys.is_empty() { stored_keys(&spread) } else { keys.to_vec() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut failed = 0;
    for key in &keys {
        match rt.block_on(spread.repair(key)) {
            Ok(lost) if lost.is_empty() => println!("{key}: intact"),
            Ok(lost) => println!("{key}: rewrote shards {lost:?}"),
            Err(e) => {
                eprintln!("annexfs: {key}: {e}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The keys with a manifest on any directory store (`HASH/HASH/KEYFILE/manifest`).
fn stored_keys(spread: &Spread) -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for e in &spread.stores {
        let root = std::path::Path::new(&e.spec);
        if !root.is_absolute() {
            continue;
        }
        let level = |p: &std::path::Path| -> Vec<std::path::PathBuf> {
            std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                .unwrap_or_default()
        };
        for a in level(root) {
            for b in level(&a) {
                for k in level(&b) {
                    if !k.join("manifest").is_file() {
                        continue;
                    }
                    let Some(name) = k.file_name() else { continue };
                    use std::os::unix::ffi::OsStrExt;
                    if let Ok(key) = crate::annex::Key::from_key_file(name.as_bytes()) {
                        keys.insert(key.to_string_lossy());
                    }
                }
            }
        }
    }
    keys.into_iter().collect()
}
