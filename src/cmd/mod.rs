//! The commands behind the command line. Errors are reported here (anyhow at this edge).

pub mod generate;
pub mod get;
pub mod index;
pub mod ls;
pub mod mount;
pub mod serve;
pub mod sources;
pub mod status;

use crate::annex::Annex;
use crate::cli::{Cli, Command};
use crate::fetch::{FetchConfig, Fetcher, OnVerified, VerifyMode};
use crate::fs::RemoteParts;
use crate::pieces::PieceStore;
use crate::source::http::{HttpClient, learn_http_remotes};
use anyhow::{Context, anyhow};
use std::path::Path;
use std::sync::Arc;

/// How a command's fetcher verifies and publishes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchOptions {
    pub verify: VerifyMode,
    /// Publish the manifests of keys verified whole (see [`crate::manifest::publish`]).
    pub publish: bool,
}

/// The swarm side of a command: peers given on the command line, and whether (and how) this
/// node serves.
#[derive(Debug, Clone, Default)]
pub(crate) struct SwarmOptions {
    pub peers: Vec<String>,
    pub serve: Option<crate::swarm::server::ServeConfig>,
    /// The URL other nodes reach this one at (default: `http://` + the listening address).
    pub advertise: Option<String>,
}

/// The piece cache, the fetcher and the HTTP client for `annex`, on runtime `rt`; http git
/// remotes whose UUID `.git/config` does not give are asked for it first.
pub(crate) fn remote_parts(
    annex: &Annex,
    cache_dir: &Path,
    cache_size: u64,
    rt: &tokio::runtime::Runtime,
    opts: FetchOptions,
    swarm: &SwarmOptions,
) -> anyhow::Result<RemoteParts> {
    let store = Arc::new(
        PieceStore::open(cache_dir, cache_size)
            .with_context(|| format!("open the piece cache in {}", cache_dir.display()))?,
    );
    let mut cfg = FetchConfig { verify: opts.verify, ..FetchConfig::default() };
    // Limits per remote, from git config and .annexfs.toml, looked up by the source's remote.
    let settings = annex.settings();
    let mut names: Vec<String> =
        annex.meta().map(|m| m.remotes.iter().map(|r| r.name.clone()).collect()).unwrap_or_default();
    names.push("web".into());
    let limits: std::collections::HashMap<String, crate::annex::settings::Limits> = names
        .into_iter()
        .map(|n| {
            let l = annex.remote_limits(&n, &settings);
            (n, l)
        })
        .filter(|(_, l)| !l.is_none())
        .collect();
    // Peers: by URL, from `[[peer]]`.
    let peer_limits: std::collections::HashMap<String, u64> =
        settings.peers.iter().filter_map(|p| Some((p.url.trim_end_matches('/').to_string(), p.bwlimit?))).collect();
    if !limits.is_empty() || !peer_limits.is_empty() {
        cfg.limits = Some(crate::fetch::limits::LimitsFn(Arc::new(move |id: &str| {
            if let Some(url) = id.strip_prefix("peer ") {
                let bwlimit = peer_limits.get(url.trim_end_matches('/')).copied();
                return crate::annex::settings::Limits { bwlimit, maxconnections: None };
            }
            limits.get(crate::fetch::limits::remote_of(id)).copied().unwrap_or_default()
        })));
    }
    if opts.publish {
        let base = annex.base_dir().to_path_buf();
        cfg.on_verified = Some(OnVerified(Arc::new(move |m| {
            // A fresh view of the repository: the mount's may be a snapshot of a ref.
            match Annex::open(&base).map_err(|e| e.to_string()).and_then(|a| crate::manifest::publish::publish(&a, m)) {
                Ok(k) => tracing::info!("{}: piece manifest published as {k}", m.key),
                Err(e) => tracing::info!("{}: piece manifest not published: {e}", m.key),
            }
        })));
    }
    let fetcher = Arc::new(Fetcher::new(store, rt.handle().clone(), cfg));
    let http = HttpClient::new(annex.policy.clone()).map_err(|e| anyhow!("{e}"))?;
    rt.block_on(learn_http_remotes(annex, &http));
    let mut urls: Vec<String> = settings.peers.iter().map(|p| p.url.clone()).collect();
    urls.extend(swarm.peers.iter().cloned());
    let own = swarm.serve.as_ref().map(|s| swarm.advertise.clone().unwrap_or_else(|| format!("http://{}", s.listen)));
    let peers = crate::swarm::Peers::new(&urls, own, http.client.clone(), rt.handle().clone());
    if !urls.is_empty() || swarm.serve.is_some() {
        // A first round now, so that the peers' peers are known before the first read.
        let _ = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), peers.exchange()).await });
        peers.start();
    }
    Ok(RemoteParts { fetcher, http, rt: rt.handle().clone(), peers, serving: Default::default() })
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Sources(args) => sources::run(&args),
        Command::Ls(args) => ls::run(&args),
        Command::Mount(args) => mount::run(&args),
        Command::Umount(args) => mount::umount(&args),
        Command::Get(args) => get::run(&args),
        Command::Index(args) => index::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::MountHelper { args } => match mount::helper_args(&args)? {
            Some(m) => mount::run(&m),
            None => Ok(0),
        },
        Command::Generate(args) => generate::run(&args),
    }
}
