//! The daemon: forking with a readiness pipe, mounting, and serving until unmounted (signals,
//! the refresher that follows the repository, the status socket).

use crate::annex::Annex;
use crate::cmd::Network;
use crate::fs::{AnnexFs, FsConfig, MountFs, View};
use crate::fuse::FuseAdapter;
use anyhow::{Context, anyhow, bail};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[allow(unused_imports)]
use super::*;

pub(super) fn default_log_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("annexfs").join("annexfs.log")
}

/// Forks; the parent waits for the child's word that the mount answers.
pub(super) fn daemonize(plan: &MountPlan, log: &Path) -> anyhow::Result<i32> {
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
    // The status socket answers before the caller is told the mount is ready, so that
    // `annexfs status` works as soon as `annexfs mount` returns.
    let mounted = mount(plan).map(|(fs, net, bg, rt)| {
        let socket = status_socket(plan, &fs, &net);
        (fs, bg, rt, socket)
    });
    if let Some(mut r) = ready.take() {
        let msg = match &mounted {
            Ok(_) => "OK".to_string(),
            Err(e) => format!("{e:#}"),
        };
        r.write_all(msg.as_bytes()).context("tell the parent process")?;
    }
    let (fs, bg, rt, socket) = mounted?;
    tracing::info!("mounted {} on {}", plan.repo.display(), plan.mountpoint.display());
    wait(plan, fs, bg, rt, socket)
}

type Mounted = (Arc<MountFs>, Arc<Network>, fuser::BackgroundSession, tokio::runtime::Runtime);

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
    let net = crate::cmd::assemble::network(
        &annex,
        &plan.cache_dir,
        plan.cache_size,
        &rt,
        crate::cmd::FetchOptions { verify: plan.verify, publish: plan.publish },
        &crate::cmd::SwarmOptions {
            peers: plan.peers.clone(),
            serve: plan.serve.map(|a| {
                let mut c = crate::swarm::server::ServeConfig::new(a);
                c.bwlimit = plan.serve_bwlimit;
                c
            }),
            advertise: None,
            keep: plan.keep,
        },
    )?;
    // SAFETY: getuid/getgid have no preconditions.
    let cfg = FsConfig { uid: unsafe { libc::getuid() }, gid: unsafe { libc::getgid() } };
    let holders = Arc::new(crate::cmd::assemble::MountHolders::new(annex.clone(), net.clone(), plan.annex_get));
    let root = AnnexFs::new(annex.clone(), view, cfg.clone()).context("read the repository's files")?;
    // Gitlinks (submodules, DataLad subdatasets) lead to their repositories, installed or
    // cloned into the state directory on the first look-up inside them.
    let datasets = crate::cmd::datasets::Datasets::new(
        &plan.cache_dir,
        net.clone(),
        cfg,
        annex.policy.clone(),
        rt.handle().clone(),
    );
    let fs = Arc::new(MountFs::new(Arc::new(root.with_holders(holders)), Some(Arc::new(datasets))));
    if let Some(addr) = plan.serve {
        let mut c = crate::swarm::server::ServeConfig::new(addr);
        c.bwlimit = plan.serve_bwlimit;
        let store = Some(net.store().clone());
        let server = crate::swarm::server::start(c, fs.annex(), store, net.peers.clone(), rt.handle())
            .context("serve the swarm")?;
        let _ = net.serving.set(server);
    }
    // A node offering space keeps its share of the pieces the signed rules want.
    if let Some(offered) = plan.keep.filter(|&k| k > 0) {
        use crate::swarm::keep::{GRACE, KEEP_EVERY};
        crate::cmd::keep::start(fs.annex().clone(), net.clone(), offered, GRACE, KEEP_EVERY, rt.handle());
    }
    let adapter = FuseAdapter::new(
        fs.clone(),
        rt.handle().clone(),
        crate::fuse::Options { live, passthrough: plan.passthrough, readdirplus: plan.readdirplus },
    );

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

/// Starts the mount's status socket (see [`crate::cmd::status`]); a mount without one still
/// works, with a warning.
fn status_socket(plan: &MountPlan, fs: &Arc<MountFs>, net: &Arc<Network>) -> Option<PathBuf> {
    let (fs, net) = (fs.clone(), net.clone());
    let (mp, repo, cache) = (plan.mountpoint.clone(), plan.repo.clone(), plan.cache_dir.clone());
    let verify = match plan.verify {
        crate::fetch::VerifyMode::Stream => "stream",
        crate::fetch::VerifyMode::Strict => "strict",
    };
    let make = Arc::new(move || crate::cmd::status::snapshot(&fs, &net, &mp, &repo, verify, &cache));
    match crate::cmd::status::serve(&plan.mountpoint, make) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("no status socket: {e:#}");
            None
        }
    }
}

/// Serves until the filesystem is unmounted; unmounts on SIGTERM, SIGINT and SIGHUP.
fn wait(
    plan: &MountPlan,
    fs: Arc<MountFs>,
    bg: fuser::BackgroundSession,
    rt: tokio::runtime::Runtime,
    socket: Option<PathBuf>,
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
