//! Spread remotes at the command level: the special remote program
//! (`git-annex-remote-annexfs`, [`program`]), `annexfs spread repair REMOTE`, and the maker
//! that lets a mount read `externaltype=annexfs` remotes from their stores in place.

pub mod codec;
pub mod program;

use crate::annex::Annex;
use crate::annex::remotes::RemoteKind;
use crate::annex::remotes::external::ExternalLocation;
use crate::annex::settings::Limits;
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

/// A spread remote's limits apply to each of its stores (separate accounts or disks, each
/// with its own rate, as a web limit applies to each web server). Moves the limits of the
/// spread remotes of `annex` out of `limits` (by remote name) into the map returned (the
/// limits of each store), and leaves in `limits` what the remote as a whole may take: the
/// sum over its stores.
pub fn split_limits(annex: &Annex, limits: &mut std::collections::HashMap<String, Limits>) -> BTreeMap<String, Limits> {
    let mut per_store = BTreeMap::new();
    let Ok(meta) = annex.meta() else { return per_store };
    for r in &meta.remotes {
        let RemoteKind::External(ext) = &r.kind else { continue };
        if ext.externaltype.as_deref() != Some(EXTERNALTYPE) {
            continue;
        }
        let Some(l) = limits.get(&r.name).copied() else { continue };
        let stores = ext.config.get("stores").map_or(0, |s| s.split(',').filter(|s| !s.trim().is_empty()).count());
        let n = u32::try_from(stores.max(1)).unwrap_or(u32::MAX);
        limits.insert(r.name.clone(), whole_of(l, n));
        per_store.insert(r.name.clone(), l);
    }
    per_store
}

/// What `n` stores of limits `l` give together.
fn whole_of(l: Limits, n: u32) -> Limits {
    Limits {
        bwlimit: l.bwlimit.map(|b| b.saturating_mul(u64::from(n))),
        maxconnections: l.maxconnections.map(|c| c.saturating_mul(n)),
    }
}

/// The maker a mount installs for `externaltype=annexfs`: one [`Spread`] per remote (so the
/// stores' load figures are shared by every key read), made on first use and kept in
/// `remotes`; `store_limits` (by remote name) limit each of its stores.
pub fn mount_maker(remotes: Registry, store_limits: BTreeMap<String, Limits>) -> ExternalMaker {
    Arc::new(move |loc: &ExternalLocation, key: &crate::annex::Key| {
        let size = key.size().ok_or("the key has no size to read ranges of")?;
        let spread = {
            let mut r = remotes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match r.get(&loc.remote) {
                Some(s) => s.clone(),
                None => {
                    let s = from_fields(&loc.config).map_err(|e| format!("spread remote: {e}"))?;
                    let l = store_limits.get(&loc.remote).copied().unwrap_or_default();
                    let s = Arc::new(s.with_store_limits(l));
                    r.insert(loc.remote.clone(), s.clone());
                    s
                }
            }
        };
        let src: Arc<dyn RangeSource> = Arc::new(SpreadSource::new(&loc.remote, spread, &key.to_string_lossy(), size));
        Ok(src)
    })
}

/// For `annexfs sources`: each store of a spread holder and the shard of `key` it holds;
/// `None` when `loc` is not a spread remote.
pub fn places(loc: &ExternalLocation, key: &crate::annex::Key) -> Option<Vec<crate::spread::remote::StorePlace>> {
    if loc.externaltype != EXTERNALTYPE {
        return None;
    }
    let spread = match from_fields(&loc.config) {
        Ok(s) => s,
        Err(e) => {
            let state = format!("the remote's configuration: {e}");
            return Some(vec![crate::spread::remote::StorePlace {
                store: "-".into(),
                shard: None,
                parity: false,
                state,
            }]);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    Some(rt.block_on(spread.places(&key.to_string_lossy())))
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut failed = 0;
    let keys = if keys.is_empty() {
        // Every key with a manifest on any store; a store that cannot be listed may hold
        // keys the others lost entirely, so it is a failure, after the rest is repaired.
        let (found, unlisted) = rt.block_on(spread.stored_keys());
        for why in &unlisted {
            eprintln!("annexfs: cannot list store {why}");
        }
        failed += unlisted.len();
        found
    } else {
        keys.to_vec()
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_takes_the_sum_of_its_stores_limits() {
        let l = Limits { bwlimit: Some(25 << 20), maxconnections: Some(3) };
        assert_eq!(whole_of(l, 6), Limits { bwlimit: Some(150 << 20), maxconnections: Some(18) });
        assert_eq!(whole_of(Limits::default(), 6), Limits::default());
    }
}
