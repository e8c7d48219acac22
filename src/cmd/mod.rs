//! The commands behind the command line. Errors are reported here (anyhow at this edge).

pub mod get;
pub mod ls;
pub mod mount;
pub mod sources;

use crate::annex::Annex;
use crate::cli::{Cli, Command};
use crate::fetch::{FetchConfig, Fetcher};
use crate::fs::RemoteParts;
use crate::pieces::PieceStore;
use crate::source::http::{HttpClient, learn_http_remotes};
use anyhow::{Context, anyhow};
use std::path::Path;
use std::sync::Arc;

/// The piece cache, the fetcher and the HTTP client for `annex`, on runtime `rt`; http git
/// remotes whose UUID `.git/config` does not give are asked for it first.
pub(crate) fn remote_parts(
    annex: &Annex,
    cache_dir: &Path,
    cache_size: u64,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<RemoteParts> {
    let store = Arc::new(
        PieceStore::open(cache_dir, cache_size)
            .with_context(|| format!("open the piece cache in {}", cache_dir.display()))?,
    );
    let fetcher = Arc::new(Fetcher::new(store, rt.handle().clone(), FetchConfig::default()));
    let http = HttpClient::new(annex.policy.clone()).map_err(|e| anyhow!("{e}"))?;
    rt.block_on(learn_http_remotes(annex, &http));
    Ok(RemoteParts { fetcher, http, rt: rt.handle().clone() })
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Sources(args) => sources::run(&args),
        Command::Ls(args) => ls::run(&args),
        Command::Mount(args) => mount::run(&args),
        Command::Umount(args) => mount::umount(&args),
        Command::Get(args) => get::run(&args),
    }
}
