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

use super::Network;
use crate::annex::Annex;
use crate::annex::repo::clean_path;
use crate::cli::{MountArgs, UmountArgs};
use crate::fs::{AnnexFs, FsConfig, View};
use crate::fuse::FuseAdapter;
use anyhow::{Context, anyhow, bail};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the daemon looks for changes in the repository (index, refs, journal).
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// FUSE request threads; reads are handed to a separate pool, so these only do metadata.
const FUSE_THREADS: usize = 4;

/// Who may use the mount besides the mounting user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Owner,
    Root,
    All,
}

/// Everything `mount` needs, checked.
#[derive(Debug, Clone)]
pub struct MountPlan {
    repo: PathBuf,
    mountpoint: PathBuf,
    rev: Option<String>,
    access: Access,
    default_permissions: bool,
    auto_unmount: bool,
    extra: Vec<fuser::MountOption>,
    fsname: Option<String>,
    passthrough: bool,
    cache_dir: PathBuf,
    cache_size: u64,
    verify: crate::fetch::VerifyMode,
    publish: bool,
    /// Mount over a directory that is not empty.
    nonempty: bool,
    /// Whether the cache size was given (else `.annexfs.toml` may set it).
    cache_size_given: bool,
    /// Swarm peers given here, and where to serve.
    peers: Vec<String>,
    serve: Option<std::net::SocketAddr>,
    serve_bwlimit: Option<u64>,
}

impl MountPlan {
    /// A plan with defaults only (for checking options on their own).
    fn empty() -> MountPlan {
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
            cache_dir: PathBuf::new(),
            cache_size: 0,
            verify: crate::fetch::VerifyMode::Stream,
            publish: true,
            nonempty: false,
            cache_size_given: false,
            peers: Vec::new(),
            serve: None,
            serve_bwlimit: None,
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Parses `-o` options (and their fstab relatives) into the plan.
fn parse_options(plan: &mut MountPlan, opts: &[String]) -> anyhow::Result<()> {
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
            ("verify", Some(v)) => plan.verify = v.parse().map_err(|e: String| anyhow!("{e}"))?,
            ("publish", Some("yes" | "true" | "1")) => plan.publish = true,
            ("publish", Some("no" | "false" | "0")) => plan.publish = false,
            ("nonempty", None) => plan.nonempty = true,
            ("serve", Some(v)) => {
                plan.serve = Some(v.parse().map_err(|_| anyhow!("serve={v}: expected ADDRESS:PORT"))?);
            }
            ("peer", Some(v)) => plan.peers.push(v.to_string()),
            ("serve_bwlimit", Some(v)) => plan.serve_bwlimit = Some(parse_size(v)?),
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

/// Mount points of this process's mount namespace with their filesystem types.
pub fn mount_table() -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else { return Vec::new() };
    text.split(|&c| c == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
            let sep = fields.iter().position(|f| *f == b"-")?;
            let mp = unescape_mountinfo(fields.get(4)?);
            let fstype = String::from_utf8_lossy(fields.get(sep + 1)?).into_owned();
            Some((PathBuf::from(std::ffi::OsStr::from_bytes(&mp)), fstype))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 3 < f.len() && f[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((f[i + 1] - b'0') * 64 + (f[i + 2] - b'0') * 8 + (f[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
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
            if fstype == "fuse.annexfs" || super::status::socket_path(&canon).exists() {
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

/// An fstab entry for annexfs: the repository, the mountpoint and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub repo: PathBuf,
    pub mountpoint: PathBuf,
    pub options: String,
}

/// fstab escapes space, tab, newline and backslash as `\ooo`, as mountinfo does.
fn unescape_fstab(f: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(f.as_bytes())))
}

/// The annexfs entries of an fstab: type `annexfs`, `fuse.annexfs`, or `fuse` with an
/// `annexfs#REPO` source.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let (spec, mp, fstype) = (f.first()?, f.get(1)?, f.get(2)?);
            let spec = match *fstype {
                "annexfs" | "fuse.annexfs" => spec.strip_prefix("annexfs#").unwrap_or(spec),
                "fuse" | "fuse3" => spec.strip_prefix("annexfs#")?,
                _ => return None,
            };
            Some(FstabEntry {
                repo: unescape_fstab(spec),
                mountpoint: unescape_fstab(mp),
                options: f.get(3).map_or(String::new(), |o| (*o).to_string()),
            })
        })
        .collect()
}

/// Finds the fstab entry for mountpoint `mp`, as mount(8) does for `mount DIR`.
pub fn fstab_entry(fstab: &Path, mp: &Path) -> anyhow::Result<FstabEntry> {
    let text = std::fs::read_to_string(fstab).with_context(|| format!("read {}", fstab.display()))?;
    let want = absolute(mp)?;
    let canon = want.canonicalize().unwrap_or_else(|_| want.clone());
    parse_fstab(&text)
        .into_iter()
        .find(|e| e.mountpoint == want || e.mountpoint.canonicalize().is_ok_and(|c| c == canon))
        .ok_or_else(|| anyhow!("{} has no annexfs entry for {}", fstab.display(), want.display()))
}

/// Mount arguments from a mount helper's command line (`mount.annexfs SPEC DIR [-sfnv]
/// [-o OPTS] [-t TYPE]`, as mount(8) calls it). `None` for `-f` (a fake mount: nothing to do).
pub fn helper_args(args: &[std::ffi::OsString]) -> anyhow::Result<Option<MountArgs>> {
    let mut pos: Vec<PathBuf> = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut sloppy = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => options.push(it.next().ok_or_else(|| anyhow!("-o needs options"))?.to_string_lossy().into_owned()),
            "-t" => {
                it.next();
            }
            f if f.starts_with('-') && f.len() > 1 => {
                for c in f[1..].chars() {
                    match c {
                        'f' => fake = true,
                        's' => sloppy = true,
                        'n' | 'v' => {}
                        _ => bail!("unknown mount helper flag -{c}"),
                    }
                }
            }
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [spec, mp] =
        <[PathBuf; 2]>::try_from(pos).map_err(|_| anyhow!("usage: mount.annexfs REPO DIR [-o OPTIONS]"))?;
    let spec = match spec.to_str().and_then(|s| s.strip_prefix("annexfs#")) {
        Some(s) => PathBuf::from(s),
        None => spec,
    };
    if fake {
        return Ok(None);
    }
    // mount(8) says `rw` unless the line says `ro`: the mount is read-only whatever it says.
    options = options.iter().map(|o| o.split(',').filter(|x| *x != "rw").collect::<Vec<_>>().join(",")).collect();
    if sloppy {
        // Unknown options are dropped instead of refused.
        options = options
            .iter()
            .map(|o| {
                o.split(',')
                    .filter(|x| {
                        let mut p = MountPlan::empty();
                        parse_options(&mut p, &[x.to_string()]).is_ok()
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
    }
    Ok(Some(MountArgs {
        repo: spec,
        mountpoint: Some(mp),
        rev: None,
        foreground: false,
        options,
        no_passthrough: false,
        cache_dir: None,
        cache_size: None,
        log_file: None,
        fstab: None,
        serve: None,
        swarm: crate::cli::SwarmArgs::default(),
        verify: crate::cli::VerifyArgs { verify: crate::fetch::VerifyMode::Stream, no_publish: false },
    }))
}

fn which(program: &str) -> Option<PathBuf> {
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

fn default_log_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("annexfs").join("annexfs.log")
}

/// Forks; the parent waits for the child's word that the mount answers.
fn daemonize(plan: &MountPlan, log: &Path) -> anyhow::Result<i32> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log file {}", log.display()))?;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs in this process at this point (nothing before the mount
    // starts threads), so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid has no preconditions; it detaches from the controlling terminal.
            unsafe { libc::setsid() };
            redirect_stdio(&logfile);
            let code = match serve(plan, Some(std::fs::File::from(wr))) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            std::fs::File::from(rd).read_to_string(&mut msg).ok();
            match msg.as_str() {
                "OK" => Ok(0),
                "" => bail!("the annexfs daemon exited before the mount was ready; see {}", log.display()),
                m => bail!("{m}"),
            }
        }
    }
}

fn redirect_stdio(log: &std::fs::File) {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this (single-threaded) child.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
    let _ = std::env::set_current_dir("/");
}

enum Event {
    Signal(i32),
    Ended(std::io::Result<()>),
}

/// Mounts and serves until unmounted. `ready` is told "OK" once the mount answers, or why
/// the mount failed, and is closed either way.
pub fn serve(plan: &MountPlan, mut ready: Option<std::fs::File>) -> anyhow::Result<()> {
    let mounted = mount(plan);
    if let Some(mut r) = ready.take() {
        let msg = match &mounted {
            Ok(_) => "OK".to_string(),
            Err(e) => format!("{e:#}"),
        };
        r.write_all(msg.as_bytes()).context("tell the parent process")?;
    }
    let (fs, net, bg, rt) = mounted?;
    tracing::info!("mounted {} on {}", plan.repo.display(), plan.mountpoint.display());
    wait(plan, fs, net, bg, rt)
}

type Mounted = (Arc<AnnexFs>, Arc<Network>, fuser::BackgroundSession, tokio::runtime::Runtime);

/// Mounts, and checks that the mount answers.
fn mount(plan: &MountPlan) -> anyhow::Result<Mounted> {
    let annex = Arc::new(Annex::open(&plan.repo)?);
    let view = match (&plan.rev, &annex.workdir) {
        (Some(rev), _) => View::Ref(rev.clone()),
        (None, None) => View::Ref("HEAD".into()),
        (None, Some(_)) => View::Worktree,
    };
    let live = view == View::Worktree;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("annexfs-io")
        .enable_all()
        .build()
        .context("start the I/O thread pool")?;
    let net = super::assemble::network(
        &annex,
        &plan.cache_dir,
        plan.cache_size,
        &rt,
        super::FetchOptions { verify: plan.verify, publish: plan.publish },
        &super::SwarmOptions {
            peers: plan.peers.clone(),
            serve: plan.serve.map(|a| {
                let mut c = crate::swarm::server::ServeConfig::new(a);
                c.bwlimit = plan.serve_bwlimit;
                c
            }),
            advertise: None,
        },
    )?;
    // SAFETY: getuid/getgid have no preconditions.
    let cfg = FsConfig { uid: unsafe { libc::getuid() }, gid: unsafe { libc::getgid() } };
    let holders = Arc::new(super::assemble::MountHolders { annex: annex.clone(), net: net.clone() });
    let fs = Arc::new(AnnexFs::new(annex, view, cfg).context("read the repository's files")?.with_holders(holders));
    if let Some(addr) = plan.serve {
        let mut c = crate::swarm::server::ServeConfig::new(addr);
        c.bwlimit = plan.serve_bwlimit;
        let store = Some(net.store().clone());
        let server = crate::swarm::server::start(c, fs.annex().clone(), store, net.peers.clone(), rt.handle())
            .context("serve the swarm")?;
        let _ = net.serving.set(server);
    }
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone(), live, plan.passthrough);

    let mut config = fuser::Config::default();
    config.mount_options.push(fuser::MountOption::RO);
    config
        .mount_options
        .push(fuser::MountOption::FSName(plan.fsname.clone().unwrap_or_else(|| plan.repo.display().to_string())));
    config.mount_options.push(fuser::MountOption::Subtype("annexfs".into()));
    config.mount_options.push(fuser::MountOption::NoAtime);
    config.mount_options.extend(plan.extra.iter().cloned());
    if plan.default_permissions {
        config.mount_options.push(fuser::MountOption::DefaultPermissions);
    }
    if plan.auto_unmount {
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    config.acl = match plan.access {
        Access::Owner => fuser::SessionACL::Owner,
        Access::Root => fuser::SessionACL::RootAndOwner,
        Access::All => fuser::SessionACL::All,
    };
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;

    let session = fuser::Session::new(adapter, &plan.mountpoint, &config).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) if plan.access == Access::All => {
                " (allow_other needs `user_allow_other` in /etc/fuse.conf)"
            }
            Some(libc::ENOENT) => " (is fusermount3 installed?)",
            _ => "",
        };
        anyhow!("mount {} on {}: {e}{hint}", plan.repo.display(), plan.mountpoint.display())
    })?;
    let bg = session.spawn().context("start the FUSE session")?;

    // The mount must answer before the caller is told it is ready.
    if let Err(e) = std::fs::metadata(&plan.mountpoint) {
        let _ = unmount(&plan.mountpoint, true);
        bail!("the new mount on {} does not answer: {e}", plan.mountpoint.display());
    }
    Ok((fs, net, bg, rt))
}

/// Serves until the filesystem is unmounted; unmounts on SIGTERM, SIGINT and SIGHUP.
fn wait(
    plan: &MountPlan,
    fs: Arc<AnnexFs>,
    net: Arc<Network>,
    bg: fuser::BackgroundSession,
    rt: tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::Builder::new().name("annexfs-refresh".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(REFRESH_EVERY);
                match fs.refresh() {
                    Ok(true) => tracing::debug!("the repository changed; namespace rebuilt"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("follow the repository: {e}"),
                }
            }
        })?
    };

    let (tx, rx) = std::sync::mpsc::channel();
    {
        let tx = tx.clone();
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .context("install signal handlers")?;
        std::thread::Builder::new().name("annexfs-signals".into()).spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })?;
    }
    std::thread::Builder::new().name("annexfs-session".into()).spawn(move || {
        let _ = tx.send(Event::Ended(bg.join()));
    })?;
    let socket = {
        let (fs, mp, repo, cache) = (fs.clone(), plan.mountpoint.clone(), plan.repo.clone(), plan.cache_dir.clone());
        let verify = match plan.verify {
            crate::fetch::VerifyMode::Stream => "stream",
            crate::fetch::VerifyMode::Strict => "strict",
        };
        let make = Arc::new(move || super::status::snapshot(&fs, &net, &mp, &repo, verify, &cache));
        match super::status::serve(&plan.mountpoint, make) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("no status socket: {e:#}");
                None
            }
        }
    };
    loop {
        match rx.recv() {
            Ok(Event::Signal(s)) => {
                tracing::info!("signal {s}: unmounting {}", plan.mountpoint.display());
                if let Err(e) = unmount(&plan.mountpoint, true) {
                    tracing::error!("unmount {}: {e:#}", plan.mountpoint.display());
                }
            }
            Ok(Event::Ended(r)) => {
                stop.store(true, Ordering::Relaxed);
                let _ = refresher.join();
                if let Err(e) = r {
                    tracing::warn!("FUSE session ended: {e}");
                }
                tracing::info!("unmounted {}", plan.mountpoint.display());
                if let Some(p) = &socket {
                    let _ = std::fs::remove_file(p);
                }
                rt.shutdown_timeout(Duration::from_secs(2));
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Unmounts `mp`: umount2 as root, else fusermount3.
fn unmount(mp: &Path, lazy: bool) -> anyhow::Result<()> {
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
    fn fstab_lines() {
        let text = "# comment\n/dev/sda1 / ext4 defaults 0 1\n/srv/annex /mnt/a\\040b fuse.annexfs cache_size=5G,noauto 0 0\n\
                    annexfs#/r2 /m2 fuse ro 0 0\nsshfs#h:/ /m3 fuse defaults 0 0\n/r4 /m4 annexfs\n";
        let e = parse_fstab(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0].repo, Path::new("/srv/annex"));
        assert_eq!(e[0].mountpoint, Path::new("/mnt/a b"));
        assert_eq!(e[0].options, "cache_size=5G,noauto");
        assert_eq!((e[1].repo.as_path(), e[1].options.as_str()), (Path::new("/r2"), "ro"));
        assert_eq!((e[2].repo.as_path(), e[2].options.as_str()), (Path::new("/r4"), ""));
    }

    #[test]
    fn helper_command_lines() {
        let a = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let m = helper_args(&a(&["annexfs#/r", "/m", "-o", "rw,noauto,cache_size=1G"])).unwrap().unwrap();
        assert_eq!((m.repo.as_path(), m.mountpoint.as_deref()), (Path::new("/r"), Some(Path::new("/m"))));
        assert_eq!(m.options, vec!["noauto,cache_size=1G".to_string()]);
        assert!(helper_args(&a(&["/r", "/m", "-f"])).unwrap().is_none(), "a fake mount does nothing");
        let m = helper_args(&a(&["/r", "/m", "-sv", "-o", "bogus,allow_other"])).unwrap().unwrap();
        assert_eq!(m.options, vec!["allow_other".to_string()], "sloppy drops unknown options");
        assert!(helper_args(&a(&["/r"])).is_err());
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
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/x\04"), b"/x\\04");
    }
}
