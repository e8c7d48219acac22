//! Logging setup: `tracing` to stderr, filtered by `ANNEXFS_LOG` (or `RUST_LOG`), warnings and
//! errors by default.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `verbose` raises the default level to `debug`.
pub fn init(verbose: bool) {
    let default = if verbose { "annexfs=debug" } else { "warn" };
    let filter = std::env::var("ANNEXFS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
