//! `annexfs mount` and `annexfs umount`.
//!
//! `mount` checks everything it can before mounting (repository, ref, mountpoint, /dev/fuse,
//! fusermount3), so that each common mistake gets one clear line and nothing is left
//! half-mounted. Then, unless `--foreground`, it forks: the child mounts and serves, and tells
//! the parent through a pipe once the mount answers requests (or why it could not); the
//! parent exits 0 only then. The daemon's stderr (its log) goes to a log file.
//!
//! The daemon unmounts itself on SIGTERM, SIGINT or SIGHUP, and exits when the filesystem is
//! unmounted from outside (`annexfs umount`, `fusermount3 -u`, `umount`).

mod daemon;
mod fstab;
mod plan;

pub use daemon::serve;
use daemon::{daemonize, default_log_file};
pub use fstab::{FstabEntry, fstab_entry, helper_args, mount_table, parse_fstab};
use plan::{Access, euid, parse_options};
pub use plan::{MountPlan, plan};
pub(crate) use plan::{absolute, parse_size};

use crate::cli::{MountArgs, UmountArgs};
use anyhow::{Context, bail};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the daemon looks for changes in the repository (index, refs, journal).
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// FUSE request threads; reads are handed to a separate pool, so these only do metadata.
const FUSE_THREADS: usize = 4;

pub fn run(args: &MountArgs) -> anyhow::Result<i32> {
    // `annexfs mount DIR`: the rest comes from fstab, as with mount(8).
    let from_fstab;
    let args = match &args.mountpoint {
        Some(_) => args,
        None => {
            let fstab = args.fstab.clone().unwrap_or_else(|| PathBuf::from("/etc/fstab"));
            let e = fstab_entry(&fstab, &args.repo)?;
            let mut a = args.clone();
            a.repo = e.repo;
            a.mountpoint = Some(e.mountpoint);
            if !e.options.is_empty() {
                a.options.insert(0, e.options);
            }
            from_fstab = a;
            &from_fstab
        }
    };
    let plan = plan(args)?;
    if args.foreground {
        serve(&plan, None)?;
        return Ok(0);
    }
    let log = match &args.log_file {
        Some(f) => absolute(f)?,
        None => default_log_file(),
    };
    daemonize(&plan, &log)
}

/// Unmounts `mp`: umount2 as root, else fusermount3.
pub(super) fn unmount(mp: &Path, lazy: bool) -> anyhow::Result<()> {
    if euid() == 0 {
        let c = CString::new(mp.as_os_str().as_bytes()).context("mountpoint path contains NUL")?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) => bail!("{} is busy: files are open there (close them, or use --lazy)", mp.display()),
            Some(libc::EINVAL) => bail!("{} is not a mount point", mp.display()),
            _ => bail!("unmount {}: {e}", mp.display()),
        }
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(mp).output().context("run fusermount3 (install the fuse3 package)")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn umount(args: &UmountArgs) -> anyhow::Result<i32> {
    let mp = absolute(&args.mountpoint)?;
    // Compare with the mount table without touching the mountpoint: a stale mount answers
    // every stat with ENOTCONN.
    let canon = mp
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .map_or(mp.clone(), |p| p.join(mp.file_name().unwrap_or_default()));
    match mount_table().into_iter().rev().find(|(p, _)| *p == canon) {
        None => bail!("{} is not a mount point", mp.display()),
        // fuser's own mount(2) records the type as plain "fuse".
        Some((_, t)) if t != "fuse.annexfs" && t != "fuse" => bail!("{} is a {t} mount, not annexfs", mp.display()),
        Some(_) => {}
    }
    unmount(&canon, args.lazy)?;
    Ok(0)
}
