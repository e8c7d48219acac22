//! `annexfs get`: fetch files completely into the piece cache from all their sources at once,
//! with a progress bar on a terminal; `--into-annex` then hands verified content to git-annex
//! with `git annex reinject`, so that it becomes present in the repository through
//! git-annex's own rules (annexfs never writes the repository itself).

use super::Network;
use super::mount::parse_size;
use super::sources::{annexed_files, open_base};
use crate::annex::Key;
use crate::cli::GetArgs;
use crate::fetch::KeyFetch;
use crate::pieces::{DEFAULT_CACHE_SIZE, PieceStore};
use crate::source::discover::LocalSource;
use crate::source::remote::RangeSource;
use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Bytes asked of the fetcher at a time (sequential, so its readahead grows).
const STEP: u64 = 8 << 20;

pub fn run(args: &GetArgs) -> anyhow::Result<i32> {
    let (base, annex) = open_base(args.repo.as_deref())?;
    let mut failed = false;
    let mut fail = |msg: String| {
        eprintln!("annexfs get: {msg}");
        failed = true;
    };
    let files = annexed_files(&annex, &base, &args.paths, &mut fail)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the I/O runtime")?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(PieceStore::default_dir);
    let cache_size = match &args.cache_size {
        Some(s) => parse_size(s)?,
        None => annex.settings().cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
    };
    let opts = super::FetchOptions { verify: args.verify.verify, publish: !args.verify.no_publish };
    let swarm = super::SwarmOptions { peers: args.swarm.peers.clone(), ..Default::default() };
    let net = super::assemble::network(&annex, &cache_dir, cache_size, &rt, opts, &swarm)?;
    let tty = std::io::stderr().is_terminal();
    let annex_gets = args.annex_get.then(super::annex_get::AnnexGets::default);

    for (file, key) in files {
        if annex.present_object(&key).is_some() {
            eprintln!("{file}: already present in the repository");
            continue;
        }
        if let Some(gets) = &annex_gets
            && rt.block_on(net.parts(&annex, &key)).is_ok_and(|p| p.local.is_empty() && p.remote.is_empty())
        {
            // Nothing annexfs can read holds it: git-annex gets it into the annex itself.
            match rt.block_on(gets.get(&annex, &key)) {
                Ok(_) => eprintln!("{file}: present in the repository (git annex get)"),
                Err(e) => fail(format!("{file}: {e}")),
            }
            continue;
        }
        match get_one(&rt, &net, &annex, &file, &key, tty) {
            Ok(kf) => {
                if args.into_annex
                    && let Err(e) = reinject(&base, &cache_dir, &file, &kf)
                {
                    fail(format!("{file}: hand to git-annex: {e:#}"));
                }
            }
            Err(e) => fail(format!("{file}: {e:#}")),
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn get_one(
    rt: &tokio::runtime::Runtime,
    net: &Network,
    annex: &crate::annex::Annex,
    file: &str,
    key: &Key,
    tty: bool,
) -> anyhow::Result<Arc<KeyFetch>> {
    // A key without a size is fetched under its size learnt from its URLs.
    let (fetch_key, size) = match key.size() {
        Some(n) => (key.clone(), n),
        None => rt.block_on(net.sized(annex, key)).ok_or_else(|| {
            anyhow!("the size of {key} is not recorded and its URLs do not tell it; read it through a mount")
        })?,
    };
    let (found, manifest) =
        rt.block_on(async { (net.parts_sized(annex, key, Some(size)).await, net.manifest(annex, &fetch_key).await) });
    let found = found?;
    let key = &fetch_key;
    let mut sources: Vec<Arc<dyn RangeSource>> = Vec::new();
    let mut why = found.unusable;
    // Local copies join the same scheduler as network sources.
    for (name, loc) in &found.local {
        match LocalSource::open(name, loc, Some(size)) {
            Ok(s) => sources.push(Arc::new(s)),
            Err(e) => why.push(format!("{name}: {e}")),
        }
    }
    sources.extend(found.remote);
    let kf = net.fetcher.key(key, sources, manifest).map_err(|e| anyhow!("{e}"))?;
    let pb = if tty {
        ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:30!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} ETA {eta}")
            .map_err(|e| anyhow!("{e}"))?,
    );
    pb.set_message(file.to_string());
    let mut off = 0;
    while off < size {
        let got = rt.block_on(kf.read(off, STEP)).map_err(|e| {
            let extra = if why.is_empty() { String::new() } else { format!(" (also unusable: {})", why.join("; ")) };
            anyhow!("{e}{extra}")
        })?;
        if got.is_empty() {
            break;
        }
        off += got.len() as u64;
        pb.set_position(off);
    }
    pb.finish_and_clear();
    // Only a backend with a hash is verified: waiting for the others would wait for nothing.
    if crate::annex::backend::hasher_for(key.variety()).is_none() {
        eprintln!("{file}: {size} bytes (its backend has no hash to verify)");
        return Ok(kf);
    }
    let verified = rt.block_on(kf.wait_verified(Duration::from_secs(600)));
    if let Some(p) = kf.poisoned() {
        return Err(anyhow!(p));
    }
    if !verified {
        return Err(anyhow!("{key}: complete but not verified"));
    }
    eprintln!("{file}: {size} bytes, verified");
    Ok(kf)
}

/// Copies the cached content next to the cache and lets `git annex reinject` move it into
/// the annex (git-annex checks it and records the new location itself).
fn reinject(base: &Path, cache_dir: &Path, file: &str, kf: &KeyFetch) -> anyhow::Result<()> {
    let tmp_dir = cache_dir.join("v1").join("tmp");
    std::fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(format!("reinject-{}", std::process::id()));
    {
        let mut out = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        kf.copy_to(&mut out).context("copy the content out of the cache")?;
        out.sync_all()?;
    }
    let out = std::process::Command::new("git")
        .args(["annex", "reinject"])
        .arg(&tmp)
        .arg(file)
        .current_dir(base)
        .output()
        .context("run git annex reinject")?;
    let _ = std::fs::remove_file(&tmp);
    if !out.status.success() {
        return Err(anyhow!("git annex reinject: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    eprintln!("{file}: now present in the repository");
    Ok(())
}
