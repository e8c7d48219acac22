//! The mount plan: `-o` options and their fstab relatives parsed, the repository, the
//! mountpoint, /dev/fuse and fusermount3 checked, so that each common mistake gets one clear
//! line before anything is mounted.

use crate::annex::Annex;
use crate::annex::repo::clean_path;
use crate::cli::MountArgs;
use anyhow::{Context, anyhow, bail};
use std::path::{Path, PathBuf};

#[allow(unused_imports)]
use super::*;

/// Who may use the mount besides the mounting user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Owner,
    Root,
    All,
}

/// Everything `mount` needs, checked.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub(super) repo: PathBuf,
    pub(super) mountpoint: PathBuf,
    pub(super) rev: Option<String>,
    pub(super) access: Access,
    pub(super) default_permissions: bool,
    pub(super) auto_unmount: bool,
    pub(super) extra: Vec<fuser::MountOption>,
    pub(super) fsname: Option<String>,
    pub(super) passthrough: bool,
    pub(super) cache_dir: PathBuf,
    pub(super) cache_size: u64,
    pub(super) verify: crate::fetch::VerifyMode,
    pub(super) publish: bool,
    /// Mount over a directory that is not empty.
    pub(super) nonempty: bool,
    /// Whether the cache size was given (else `.annexfs.toml` may set it).
    pub(super) cache_size_given: bool,
    /// Swarm peers given here, and where to serve.
    pub(super) peers: Vec<String>,
    pub(super) serve: Option<std::net::SocketAddr>,
    pub(super) serve_bwlimit: Option<u64>,
    /// Space offered to the swarm (`keep=SIZE`).
    pub(super) keep: Option<u64>,
    /// Let git-annex get keys annexfs cannot read (writes the repository's annex).
    pub(super) annex_get: bool,
    /// Listings carry the entries' attributes for the programs that stat what they list
    /// (READDIRPLUS; see `crate::fuse`), else never.
    pub(super) readdirplus: bool,
}

impl MountPlan {
    /// A plan with defaults only (for checking options on their own).
    pub(super) fn empty() -> MountPlan {
        MountPlan {
            repo: PathBuf::new(),
            mountpoint: PathBuf::new(),
            rev: None,
            access: Access::Owner,
            default_permissions: false,
            auto_unmount: false,
            extra: Vec::new(),
            fsname: None,
            passthrough: false,
            readdirplus: true,
            cache_dir: PathBuf::new(),
            cache_size: 0,
            verify: crate::fetch::VerifyMode::Stream,
            publish: true,
            nonempty: false,
            cache_size_given: false,
            peers: Vec::new(),
            serve: None,
            serve_bwlimit: None,
            keep: None,
            annex_get: false,
        }
    }
}

pub(super) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Parses `-o` options (and their fstab relatives) into the plan.
pub(super) fn parse_options(plan: &mut MountPlan, opts: &[String]) -> anyhow::Result<()> {
    use fuser::MountOption as M;
    for opt in opts.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            (
                "ro" | "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner" | "_netdev" | "nofail",
                _,
            ) => {}
            (n, _) if n.starts_with("x-") || n == "comment" => {}
            ("rw", _) => bail!("annexfs mounts are read-only: remove the `rw` option"),
            ("allow_other", None) => plan.access = Access::All,
            ("allow_root", None) => plan.access = Access::Root,
            ("default_permissions", None) => plan.default_permissions = true,
            ("auto_unmount", None) => plan.auto_unmount = true,
            ("nodev", None) => plan.extra.push(M::NoDev),
            ("nosuid", None) => plan.extra.push(M::NoSuid),
            ("dev", None) => plan.extra.push(M::Dev),
            ("suid", None) => plan.extra.push(M::Suid),
            ("exec", None) => plan.extra.push(M::Exec),
            ("noexec", None) => plan.extra.push(M::NoExec),
            ("atime" | "noatime" | "relatime" | "strictatime" | "async", None) => {}
            ("fsname", Some(v)) => plan.fsname = Some(v.to_string()),
            ("subtype", Some(_)) => {}
            ("ref", Some(v)) => plan.rev = Some(v.to_string()),
            ("cache_dir", Some(v)) => plan.cache_dir = absolute(Path::new(v))?,
            ("cache_size", Some(v)) => {
                plan.cache_size = parse_size(v)?;
                plan.cache_size_given = true;
            }
            ("verify", Some(v)) => plan.verify = v.parse::<crate::fetch::VerifyMode>()?,
            ("publish", Some("yes" | "true" | "1")) => plan.publish = true,
            ("publish", Some("no" | "false" | "0")) => plan.publish = false,
            ("nonempty", None) => plan.nonempty = true,
            ("annex_get", None | Some("yes" | "true" | "1")) => plan.annex_get = true,
            ("annex_get", Some("no" | "false" | "0")) => plan.annex_get = false,
            ("readdirplus", None | Some("yes" | "true" | "1")) => plan.readdirplus = true,
            ("readdirplus", Some("no" | "false" | "0")) => plan.readdirplus = false,
            ("serve", Some(v)) => {
                plan.serve = Some(v.parse().map_err(|_| anyhow!("serve={v}: expected ADDRESS:PORT"))?);
            }
            ("peer", Some(v)) => plan.peers.push(v.to_string()),
            ("serve_bwlimit", Some(v)) => plan.serve_bwlimit = Some(parse_size(v)?),
            ("keep", Some(v)) => plan.keep = Some(parse_size(v)?),
            _ => bail!("unknown mount option `{opt}`"),
        }
    }
    // Letting other users in requires the kernel to check permissions, or they could read
    // what the mode bits forbid.
    if plan.access != Access::Owner {
        plan.default_permissions = true;
    }
    Ok(())
}

pub(crate) fn parse_size(v: &str) -> anyhow::Result<u64> {
    // Also accept the short forms people write in fstab: 50G, 500M.
    let v = v.trim();
    crate::annex::settings::parse_size(v)
        .filter(|&n| n > 0)
        .ok_or_else(|| anyhow!("cache size `{v}` is not a size (e.g. 10G, 500MiB)"))
}

pub(crate) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(clean_path(&std::env::current_dir().context("find the current directory")?.join(p)))
}

/// Checks the mountpoint: it exists, is a directory, and nothing is mounted on it.
fn check_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::metadata(mp) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => bail!("mountpoint {} is not a directory", mp.display()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {} is a stale mount (its daemon died: Transport endpoint is not connected); clear it with `annexfs umount {}`",
            mp.display(),
            mp.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {} does not exist (create it with mkdir)", mp.display())
        }
        Err(e) => bail!("mountpoint {}: {e}", mp.display()),
    }
    let canon = mp.canonicalize().with_context(|| format!("resolve {}", mp.display()))?;
    if let Some((_, fstype)) = mount_table().into_iter().rev().find(|(p, _)| *p == canon) {
        bail!(
            "mountpoint {} is busy: a {fstype} filesystem is already mounted there (unmount it first{})",
            canon.display(),
            if fstype == "fuse.annexfs" || crate::cmd::status::socket_path(&canon).exists() {
                format!(", e.g. `annexfs umount {}`", canon.display())
            } else {
                String::new()
            }
        );
    }
    Ok(canon)
}

fn check_fuse_device() -> anyhow::Result<()> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        bail!(
            "/dev/fuse is missing: the kernel's FUSE module is not loaded (try `modprobe fuse`) or this container has no access to it"
        );
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        bail!("cannot open /dev/fuse: {e} (it is normally mode 0666; install fuse3 or ask an administrator)");
    }
    if euid() != 0 && which("fusermount3").is_none() {
        bail!("fusermount3 is not installed: install the fuse3 package (apt install fuse3)");
    }
    Ok(())
}

/// Whether /etc/fuse.conf lets ordinary users use allow_other.
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|t| t.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"))
}

pub(super) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Builds and checks the plan; every error is one line for the user.
pub fn plan(args: &MountArgs) -> anyhow::Result<MountPlan> {
    let mut plan = MountPlan {
        repo: absolute(&args.repo)?,
        mountpoint: absolute(args.mountpoint.as_deref().ok_or_else(|| anyhow!("no mountpoint given"))?)?,
        rev: args.rev.clone(),
        passthrough: !args.no_passthrough && euid() == 0,
        cache_dir: match &args.cache_dir {
            Some(d) => absolute(d)?,
            None => crate::pieces::PieceStore::default_dir(),
        },
        cache_size: match &args.cache_size {
            Some(s) => parse_size(s)?,
            None => crate::pieces::DEFAULT_CACHE_SIZE,
        },
        verify: args.verify.verify,
        publish: !args.verify.no_publish,
        cache_size_given: args.cache_size.is_some(),
        peers: args.swarm.peers.clone(),
        serve: args.serve,
        annex_get: args.annex_get,
        readdirplus: !args.no_readdirplus,
        ..MountPlan::empty()
    };
    parse_options(&mut plan, &args.options)?;
    if !plan.repo.exists() {
        bail!("{}: no such repository", plan.repo.display());
    }
    let annex = Annex::open(&plan.repo)?;
    if !plan.cache_size_given
        && let Some(size) = annex.settings().cache_size
    {
        plan.cache_size = size;
    }
    if let Some(rev) = &plan.rev {
        let repo = git2::Repository::open_bare(&annex.gitdir)?;
        repo.revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| anyhow!("--ref {rev}: not a commit in {}: {}", plan.repo.display(), e.message()))?;
    } else if annex.workdir.is_none() {
        let repo = git2::Repository::open_bare(&annex.gitdir)?;
        if repo.head().and_then(|h| h.peel_to_commit()).is_err() {
            bail!("{}: bare repository without a HEAD commit to show", plan.repo.display());
        }
    }
    plan.mountpoint = check_mountpoint(&plan.mountpoint)?;
    if !plan.nonempty && std::fs::read_dir(&plan.mountpoint).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "mountpoint {} is not empty: its files would be hidden while mounted (use an empty directory, or -o nonempty)",
            plan.mountpoint.display()
        );
    }
    if plan.access == Access::All && euid() != 0 && !user_allow_other() {
        bail!(
            "allow_other needs `user_allow_other` in /etc/fuse.conf for mounts by ordinary users (as root: echo user_allow_other >> /etc/fuse.conf)"
        );
    }
    if plan.mountpoint.starts_with(annex.gitdir.canonicalize().unwrap_or_else(|_| annex.gitdir.clone())) {
        bail!("mountpoint {} is inside the repository's git directory", plan.mountpoint.display());
    }
    check_fuse_device()?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MountPlan {
        MountPlan {
            repo: "/r".into(),
            mountpoint: "/m".into(),
            cache_dir: "/c".into(),
            cache_size: 1,
            ..MountPlan::empty()
        }
    }

    #[test]
    fn options() {
        let mut p = base();
        parse_options(&mut p, &["ro,noauto,x-systemd.automount,allow_other".into(), "ref=v1".into()]).unwrap();
        assert_eq!(p.access, Access::All);
        assert!(p.default_permissions, "allow_other forces default_permissions");
        assert_eq!(p.rev.as_deref(), Some("v1"));
        assert!(parse_options(&mut base(), &["rw".into()]).is_err());
        assert!(parse_options(&mut base(), &["bogus".into()]).is_err());
        let mut p = base();
        parse_options(&mut p, &["cache_size=50G,cache_dir=/var/cache/x".into()]).unwrap();
        assert_eq!(p.cache_size, 50 << 30);
        assert_eq!(p.cache_dir, Path::new("/var/cache/x"));
        assert!(parse_options(&mut base(), &["cache_size=lots".into()]).is_err());
        let mut p = base();
        parse_options(&mut p, &["verify=strict,publish=no".into()]).unwrap();
        assert_eq!((p.verify, p.publish), (crate::fetch::VerifyMode::Strict, false));
        assert!(parse_options(&mut base(), &["verify=maybe".into()]).is_err());
        let mut p = base();
        parse_options(&mut p, &["annex_get=yes".into()]).unwrap();
        assert!(p.annex_get);
        parse_options(&mut p, &["annex_get=no".into()]).unwrap();
        assert!(!p.annex_get);
        assert!(parse_options(&mut base(), &["annex_get=maybe".into()]).is_err());
        let mut p = base();
        assert!(p.readdirplus, "on by default");
        parse_options(&mut p, &["readdirplus=no".into()]).unwrap();
        assert!(!p.readdirplus);
        parse_options(&mut p, &["readdirplus".into()]).unwrap();
        assert!(p.readdirplus);
    }
}
