use clap::Parser;

/// Called as `mount.annexfs` or `mount.fuse.annexfs` (symlinks to this binary), annexfs is a
/// mount(8) helper: `SPEC DIR [-sfnv] [-o OPTS]`.
fn helper() -> Option<annexfs::cli::Cli> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0).file_name()?.to_string_lossy().into_owned();
    if name != "mount.annexfs" && name != "mount.fuse.annexfs" {
        return None;
    }
    let rest: Vec<std::ffi::OsString> = args.collect();
    match annexfs::cmd::mount::helper_args(&rest) {
        Ok(Some(m)) => Some(annexfs::cli::Cli { verbose: false, command: annexfs::cli::Command::Mount(m) }),
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(1);
        }
    }
}

/// glibc's malloc gives each thread that allocates while others do an arena of its own, up to
/// eight per core, and keeps what each arena freed. The daemon's threads (its runtime, FUSE,
/// blocking tasks persisting pieces) then held 310-340 MB with 64 readers at once, against
/// 170 MB with one arena per core; throughput was the same. A `MALLOC_ARENA_MAX` set by the
/// user wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arenas_per_core() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let n = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets a tunable of the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn arenas_per_core() {}

fn main() {
    arenas_per_core();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == annexfs::cmd::spread::PROGRAM) {
        std::process::exit(annexfs::cmd::spread::program::run());
    }
    let cli = helper().unwrap_or_else(annexfs::cli::Cli::parse);
    use std::io::IsTerminal;
    let (daemon, background) = match &cli.command {
        annexfs::cli::Command::Mount(m) => (true, !m.foreground),
        _ => (false, false),
    };
    // A background daemon's stderr becomes its log file: no colour codes there.
    let ansi = std::io::stderr().is_terminal() && !background;
    annexfs::logging::init(cli.verbose, daemon, ansi);
    let code = match annexfs::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("annexfs: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
