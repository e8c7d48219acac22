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
    /// Mount a repository read-only: every file an ordinary file with its real size.
    /// Returns once the mount answers (the daemon goes on in the background).
    Mount(MountArgs),
    /// Unmount an annexfs mount (also clears a mount left by a crashed daemon).
    Umount(UmountArgs),
    /// Fetch files completely into the piece cache (all sources at once), with progress;
    /// `--into-annex` then hands verified content to git-annex.
    Get(GetArgs),
    /// Make and publish piece manifests for files whose content is present locally, so that
    /// other clones check every piece they fetch the moment it arrives.
    Index(IndexArgs),
    /// Show what each annexfs mount is doing: open files and their progress, sources, cache
    /// use, bans and recent errors.
    Status(StatusArgs),
    /// Serve this repository's content and the verified pieces of the piece cache to other
    /// annexfs nodes (the swarm), in the foreground.
    Serve(ServeArgs),
    /// Spread remotes (`type=external externaltype=annexfs`): repair lost shards.
    Spread(SpreadArgs),
    /// The mount(8) helper (`mount.annexfs REPO DIR [-sfnv] [-o OPTIONS]`).
    #[command(hide = true)]
    MountHelper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Write man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct SpreadArgs {
    #[command(subcommand)]
    pub command: SpreadCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SpreadCommand {
    /// Rewrite missing or damaged shards of a spread remote's keys (rebuilt from any `data=`
    /// intact shards) onto the stores that lost them.
    Repair {
        /// The git remote's name.
        remote: String,
        /// The repository (default: the current directory).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
        /// Only these keys (default: every key with a manifest on a directory store).
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
    },
    /// The erasure code's speed on one core (for the benchmarks): one JSON line.
    #[command(hide = true)]
    Codec {
        #[arg(long, default_value_t = 4)]
        data: usize,
        #[arg(long, default_value_t = 2)]
        parity: usize,
        /// Data to encode or decode, MiB.
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        /// Rebuild `parity` lost data pieces of every stripe instead of encoding.
        #[arg(long)]
        decode: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// `man` (one page per command) or `completions` (bash, zsh, fish).
    #[arg(value_parser = ["man", "completions"])]
    pub what: String,
    /// Where to write them.
    pub dir: PathBuf,
}

/// Taking part in the swarm.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SwarmArgs {
    /// A swarm peer to fetch from (and learn other peers from); repeatable. Peers are also
    /// read from `[[peer]]` in `.annexfs.toml`.
    #[arg(long = "peer", value_name = "URL")]
    pub peers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The repository (default: the current directory).
    #[arg(value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// Address to listen on (default 127.0.0.1:7420; give another address explicitly to serve
    /// beyond this machine).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7420")]
    pub listen: std::net::SocketAddr,

    /// The URL other nodes reach this one at (default: http:// + the listening address).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,

    /// Upload limit, all connections together, e.g. 20MiB (per second).
    #[arg(long, value_name = "SIZE")]
    pub bwlimit: Option<String>,

    /// Connections at once (more are closed).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections: usize,

    /// Connections from one address at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub per_peer: usize,

    /// A connection that moves no byte for this many seconds is closed.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// The piece cache whose verified pieces are served too.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Space this node offers the swarm for keeping pieces by the repository's signed rules
    /// (e.g. 20G); shown to the other nodes, which divide the wanted pieces by it.
    #[arg(long, value_name = "SIZE")]
    pub keep: Option<String>,

    /// Seconds a node may be silent before the others take over the pieces it keeps.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub keep_grace: u64,

    /// Seconds between the keeper's rounds (placement, copies, fetching its share).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub keep_every: u64,

    /// Record this node's URL for every key present in the repository with `git annex
    /// registerurl`, so that plain `git annex get` can download from it as a web URL.
    #[arg(long)]
    pub register_urls: bool,

    #[command(flatten)]
    pub swarm: SwarmArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this mount (default: every annexfs mount).
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// One JSON document: {"version": 1, "mounts": [...]} (see docs/STATUS.md).
    #[arg(long)]
    pub json: bool,

    /// Refresh every second until interrupted.
    #[arg(short, long)]
    pub watch: bool,
}

/// How fetched bytes are verified before they are served.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// `stream` (default): serve bytes as they arrive when no piece manifest exists, and
    /// verify the whole key at the end; `strict`: serve nothing not verified (per piece with
    /// a manifest, else only once the whole key is). With a manifest both check every piece.
    #[arg(long, value_name = "MODE", default_value = "stream")]
    pub verify: crate::fetch::VerifyMode,

    /// Do not publish the piece manifests of keys verified whole (they are published with
    /// `git annex setkey` and `git annex metadata` by default).
    #[arg(long)]
    pub no_publish: bool,
}

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Run as if started in this directory (like `git -C`).
    #[arg(short = 'C', value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// Files or directories (directories are searched recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Run as if started in this directory (like `git -C`).
    #[arg(short = 'C', value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// Hand the verified content to git-annex (`git annex reinject`), so that it becomes
    /// present in the repository.
    #[arg(long)]
    pub into_annex: bool,

    /// For keys that only remotes annexfs cannot read hold (encrypted, unsupported types),
    /// let git-annex get them (`git annex get --key`): this writes the repository's annex.
    #[arg(long)]
    pub annex_get: bool,

    /// The piece cache (default: $XDG_CACHE_HOME/annexfs).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bound of the piece cache (default 10 GiB).
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,

    #[command(flatten)]
    pub verify: VerifyArgs,

    #[command(flatten)]
    pub swarm: SwarmArgs,

    /// Files or directories (directories are searched recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// The git-annex repository (worktree, or a bare repository). Given alone, it is the
    /// mountpoint of an annexfs line in /etc/fstab, whose repository and options are used.
    #[arg(value_name = "REPO")]
    pub repo: PathBuf,

    /// Where to mount it.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// The fstab read when only a mountpoint is given.
    #[arg(long, value_name = "FILE", hide = true)]
    pub fstab: Option<PathBuf>,

    /// Mount the tree of this commit, branch or tag (default: the working tree, followed
    /// live; a bare repository shows HEAD).
    #[arg(long = "ref", value_name = "REV")]
    pub rev: Option<String>,

    /// Stay in the foreground and log to stderr.
    #[arg(short, long)]
    pub foreground: bool,

    /// Mount options, comma-separated (allow_other, allow_root, default_permissions,
    /// auto_unmount, fsname=NAME, ref=REV, cache_dir=DIR, cache_size=SIZE, verify=MODE,
    /// publish=no, annex_get=yes; ro and fstab-only options are accepted).
    #[arg(short = 'o', value_name = "OPT[,OPT...]", action = clap::ArgAction::Append)]
    pub options: Vec<String>,

    /// Let git-annex itself fetch (`git annex get --key`) keys that only remotes annexfs
    /// cannot read hold (encrypted, unsupported types), when nothing else can serve them.
    /// Off by default: it writes the repository's annex (-o annex_get=yes).
    #[arg(long)]
    pub annex_get: bool,

    /// Never use kernel FUSE passthrough for local content.
    #[arg(long)]
    pub no_passthrough: bool,

    /// Never send entries' attributes with directory listings (READDIRPLUS; by default sent
    /// to the programs that stat what they list, such as ls -l, du and rsync)
    /// (-o readdirplus=no).
    #[arg(long)]
    pub no_readdirplus: bool,

    /// The piece cache (default: $XDG_CACHE_HOME/annexfs, shared by every mount of the user).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bound of the piece cache, e.g. 50G or 500MiB (default 10 GiB).
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,

    /// Log file of the background daemon (default: $XDG_STATE_HOME/annexfs/annexfs.log).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Serve what this node holds verified to swarm peers on ADDR while mounted (-o serve=ADDR).
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub swarm: SwarmArgs,

    #[command(flatten)]
    pub verify: VerifyArgs,
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mountpoint.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Detach now even if files are open (they are closed when their users close them).
    #[arg(short = 'z', long)]
    pub lazy: bool,
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

    /// Where mounts keep their state (default: $XDG_CACHE_HOME/annexfs): paths inside
    /// subdatasets a mount cloned are answered from those clones.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Files or directories (directories are searched recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}
