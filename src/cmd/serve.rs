//! `annexfs serve`: a swarm node without a mount. It serves the repository's own annex
//! content and the verified pieces of the piece cache (see [`crate::swarm::server`]), takes
//! part in peer exchange, and runs in the foreground until SIGINT or SIGTERM.

use crate::annex::Annex;
use crate::cli::ServeArgs;
use crate::pieces::PieceStore;
use anyhow::Context;
use std::sync::Arc;

pub fn run(args: &ServeArgs) -> anyhow::Result<i32> {
    let repo = match &args.repo {
        Some(r) => super::mount::absolute(r)?,
        None => std::env::current_dir().context("find the current directory")?,
    };
    let annex = Arc::new(Annex::open(&repo)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the I/O runtime")?;
    let mut cfg = crate::swarm::server::ServeConfig::new(args.listen);
    cfg.max_connections = args.max_connections.max(1);
    cfg.per_peer = args.per_peer.max(1);
    cfg.idle_timeout = std::time::Duration::from_secs(args.idle_timeout.max(1));
    cfg.bwlimit = match &args.bwlimit {
        Some(b) => Some(super::mount::parse_size(b)?),
        None => None,
    };
    let cache_dir = args.cache_dir.clone().unwrap_or_else(PieceStore::default_dir);
    let swarm = super::SwarmOptions {
        peers: args.swarm.peers.clone(),
        serve: Some(cfg.clone()),
        advertise: args.advertise.clone(),
        keep: match &args.keep {
            Some(k) => Some(super::mount::parse_size(k)?),
            None => None,
        },
    };
    let opts = super::FetchOptions { verify: crate::fetch::VerifyMode::Stream, publish: false };
    let parts = super::assemble::network(&annex, &cache_dir, crate::pieces::DEFAULT_CACHE_SIZE, &rt, opts, &swarm)?;
    let server = crate::swarm::server::start(
        cfg,
        annex.clone(),
        Some(parts.fetcher.store().clone()),
        parts.peers.clone(),
        rt.handle(),
    )?;
    // A node offering space keeps its share of the pieces the signed rules want.
    if let Some(offered) = swarm.keep.filter(|&k| k > 0) {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        super::keep::start(
            annex.clone(),
            parts.clone(),
            offered,
            secs(args.keep_grace),
            secs(args.keep_every),
            rt.handle(),
        );
    }
    eprintln!("annexfs: serving {} on http://{}", repo.display(), server.addr);
    if args.register_urls {
        let base = args.advertise.clone().unwrap_or_else(|| format!("http://{}", server.addr));
        match register_urls(&repo, base.trim_end_matches('/')) {
            Ok(n) => eprintln!("annexfs: registered {n} URLs of this node with git-annex"),
            Err(e) => eprintln!("annexfs: register URLs: {e:#}"),
        }
    }
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]).context("install signal handlers")?;
    if let Some(s) = signals.forever().next() {
        tracing::info!("signal {s}: stopping");
    }
    Ok(0)
}

/// `git annex registerurl` for every key present here, at `base/v1/keys/KEY`.
fn register_urls(repo: &std::path::Path, base: &str) -> anyhow::Result<usize> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let found = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["annex", "find", "--format=${key}\\n"])
        .output()
        .context("run git annex find")?;
    anyhow::ensure!(found.status.success(), "git annex find: {}", String::from_utf8_lossy(&found.stderr).trim());
    let mut batch = String::new();
    let mut n = 0;
    for line in String::from_utf8_lossy(&found.stdout).lines() {
        let Ok(key) = crate::annex::Key::parse_str(line.trim()) else { continue };
        batch.push_str(&format!("{} {base}/v1/keys/{}\n", key, crate::swarm::key_segment(&key)));
        n += 1;
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["annex", "registerurl", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("run git annex registerurl")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(batch.as_bytes())?;
    }
    anyhow::ensure!(child.wait()?.success(), "git annex registerurl failed");
    Ok(n)
}
