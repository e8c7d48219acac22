//! The commands behind the command line. Errors are reported here (anyhow at this edge).

pub mod get;
pub mod ls;
pub mod mount;
pub mod sources;

use crate::cli::{Cli, Command};

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
