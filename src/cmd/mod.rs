//! The commands behind the command line. Errors are reported here (anyhow at this edge).

pub mod annex_get;
pub mod assemble;
pub mod datasets;
pub mod generate;
pub mod get;
pub mod index;
pub mod keep;
pub mod ls;
pub mod mount;
pub mod serve;
pub mod sizes;
pub mod sources;
pub mod spread;
pub mod status;

use crate::cli::{Cli, Command};

pub(crate) use assemble::{FetchOptions, Network, SwarmOptions};

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
        Command::Spread(args) => spread::run(&args),
    }
}
