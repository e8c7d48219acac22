//! The command line (clap). Parsing only; the commands live in [`crate::cmd`].

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "annexfs", version, about = "A FUSE filesystem for git-annex repositories")]
pub struct Cli {
    /// Log debug messages to stderr (or set ANNEXFS_LOG, e.g. ANNEXFS_LOG=annexfs=trace).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show, for each file, its key and every repository that holds its content, with
    /// whether and where annexfs can read it, in the order annexfs would try them.
    Sources(SourcesArgs),
    /// List the files of a repository as annexfs shows them: the working tree (from the
    /// index) or the tree of a ref, with sizes from the keys.
    Ls(LsArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Run as if started in this directory (like `git -C`).
    #[arg(short = 'C', value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// List the tree of this commit, branch or tag instead of the working tree.
    #[arg(long = "ref", value_name = "REV")]
    pub rev: Option<String>,

    /// Long format: kind, size, and the key of annexed files.
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Debug, clap::Args)]
pub struct SourcesArgs {
    /// Run as if started in this directory (like `git -C`).
    #[arg(short = 'C', value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// One JSON object per file and line: {"file","key","size","holders":[...]}.
    #[arg(long)]
    pub json: bool,

    /// Files or directories (directories are searched recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}
