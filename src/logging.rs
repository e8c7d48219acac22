//! Logging setup: `tracing` to stderr, filtered by `ANNEXFS_LOG` (or `RUST_LOG`), warnings and
//! errors by default.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. The default level is `debug` with `verbose`, `info` for a
/// long-running daemon (`daemon`), else `warn`.
/// `ansi`: colour the output (only for a terminal that stays the log's destination).
pub fn init(verbose: bool, daemon: bool, ansi: bool) {
    let default = match (verbose, daemon) {
        (true, _) => "annexfs=debug,warn",
        (false, true) => "annexfs=info,warn",
        (false, false) => "warn",
    };
    let filter = std::env::var("ANNEXFS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}
