//! Running the system `ssh`: its arguments (as git-annex builds them, plus batch mode and
//! timeouts), the remote `git-annex-shell` command line, ssh's stderr kept for error
//! messages, and the private directory of the control sockets, removed (with its masters
//! stopped) when the process ends.

use crate::annex::remotes::ssh::SshAccess;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// ssh gives up connecting after this many seconds.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// A master connection stays this long after its last session closed.
pub const CONTROL_PERSIST_SECS: u64 = 120;
/// Keepalives on the connection: a server gone silent is noticed after three of them.
const SERVER_ALIVE_SECS: u64 = 15;
/// Bytes of a process's stderr kept (the end).
const STDERR_KEEP: usize = 8 * 1024;

/// The arguments of `ssh` before the remote command: batch mode first (nothing may ever
/// prompt), the connection sharing of `annex.sshcaching` when `control` is given (which the
/// remote's options cannot turn off), then `annex-ssh-options` (which win over the timeouts
/// after them: ssh keeps the first value of an option), the port, no tty, the destination.
pub fn ssh_args(how: &SshAccess, control: Option<&Path>) -> Vec<String> {
    let mut a: Vec<String> = vec!["-o".into(), "BatchMode=yes".into()];
    if let Some(path) = control {
        // ssh expands %-sequences in ControlPath.
        let path = path.display().to_string().replace('%', "%%");
        a.extend(["-o".into(), "ControlMaster=auto".into(), "-o".into(), format!("ControlPath={path}")]);
        a.extend(["-o".into(), format!("ControlPersist={CONTROL_PERSIST_SECS}")]);
    }
    a.extend(how.ssh_options.iter().cloned());
    a.extend(["-o".into(), format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}")]);
    a.extend(["-o".into(), format!("ServerAliveInterval={SERVER_ALIVE_SECS}")]);
    if let Some(p) = how.target.port {
        a.extend(["-p".into(), p.to_string()]);
    }
    a.push("-T".into());
    a.push(how.target.destination());
    a
}

/// The remote command git-annex runs for a P2P session: `git-annex-shell 'p2pstdio' 'PATH'
/// 'CLIENT-UUID' --uuid REMOTE-UUID` (the shell is `annex-shell`, taken as written).
pub fn p2pstdio_command(shell: &str, path: &str, client_uuid: &str, remote_uuid: &str) -> String {
    format!("{shell} 'p2pstdio' {} {} '--uuid' {}", quote(path), quote(client_uuid), quote(remote_uuid))
}

/// Quotes for a POSIX shell, as git-annex's `shellEscape` does.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// `ssh ARGS`, killed when dropped. Descriptors other than the standard ones are marked
/// close-on-exec first, so that a master connection left running in the background holds
/// nothing of this process (the FUSE device above all).
pub fn command(args: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ssh");
    c.args(args).kill_on_drop(true);
    // SAFETY: the closure only makes one system call, which is async-signal-safe, and keeps
    // no lock or allocation of the parent.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    c
}

/// The end of a child's stderr, collected as it comes.
#[derive(Clone)]
pub struct StderrTail {
    buf: Arc<Mutex<Vec<u8>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl StderrTail {
    /// Starts collecting `stderr` (nothing when the child has none).
    pub fn capture(stderr: Option<tokio::process::ChildStderr>) -> StderrTail {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = tokio::sync::watch::channel(false);
        if let Some(mut err) = stderr {
            let buf = buf.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = err.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > STDERR_KEEP {
                        let cut = b.len() - STDERR_KEEP;
                        b.drain(..cut);
                    }
                }
                let _ = tx.send(true);
            });
        } else {
            let _ = tx.send(true);
        }
        StderrTail { buf, done }
    }

    /// What was written so far, waiting up to `wait` for the end of the stream (a master
    /// connection gone to the background may keep it open).
    pub async fn text(&self, wait: Duration) -> String {
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// The private (0700) directory of this process's control sockets. Dropping it, or the
/// process ending, stops the masters whose sockets are in it and removes it.
pub struct RuntimeDir {
    path: PathBuf,
}

/// Control socket paths must stay well under the 108 bytes of a Unix socket address (ssh
/// adds a 17-byte suffix while it sets one up).
const MAX_DIR_LEN: usize = 80;

impl RuntimeDir {
    /// A new directory in `$XDG_RUNTIME_DIR`, else in the temporary directory, else in /tmp.
    pub fn create() -> std::io::Result<RuntimeDir> {
        let mut bases: Vec<PathBuf> = Vec::new();
        if let Some(x) =
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute() && p.is_dir())
        {
            bases.push(x);
        }
        bases.push(std::env::temp_dir());
        bases.push(PathBuf::from("/tmp"));
        let mut last = std::io::Error::other("no directory for ssh control sockets");
        for base in bases {
            let s = base.display().to_string();
            if s.len() > MAX_DIR_LEN - 24 || s.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'') {
                continue;
            }
            use std::os::unix::fs::PermissionsExt;
            let made = tempfile::Builder::new()
                .prefix("annexfs-ssh-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir_in(&base);
            match made {
                Ok(d) => {
                    let path = d.keep();
                    cleanup::register(&path);
                    return Ok(RuntimeDir { path });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        cleanup::remove(&self.path);
    }
}

/// Stopping masters and removing socket directories: when a [`RuntimeDir`] is dropped, and
/// for those still there when the process exits (a mount's daemon never drops its own).
mod cleanup {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Directories to clean at exit, with the process that made them (a forked child must not
    /// clean its parent's).
    static DIRS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

    extern "C" fn at_exit() {
        let dirs: Vec<PathBuf> = {
            let Ok(mut d) = DIRS.try_lock() else { return };
            let me = std::process::id();
            let (mine, others): (Vec<_>, Vec<_>) = d.drain(..).partition(|(pid, _)| *pid == me);
            *d = others;
            mine.into_iter().map(|(_, p)| p).collect()
        };
        for d in dirs {
            stop_and_remove(&d);
        }
    }

    pub fn register(path: &Path) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: at_exit is a plain function that only touches this module's state.
        ONCE.call_once(|| unsafe {
            libc::atexit(at_exit);
        });
        DIRS.lock().unwrap_or_else(|p| p.into_inner()).push((std::process::id(), path.to_path_buf()));
    }

    pub fn remove(path: &Path) {
        DIRS.lock().unwrap_or_else(|p| p.into_inner()).retain(|(_, p)| p != path);
        stop_and_remove(path);
    }

    /// `ssh -O exit` for every control socket in `dir`, then removes it.
    fn stop_and_remove(dir: &Path) {
        use std::os::unix::fs::FileTypeExt;
        let sockets: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_socket())).map(|e| e.path()).collect())
            .unwrap_or_default();
        for s in sockets {
            let path = s.display().to_string().replace('%', "%%");
            let child = std::process::Command::new("ssh")
                .args(["-F", "/dev/null", "-o", &format!("ControlPath={path}"), "-O", "exit", "annexfs-ssh-master"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            if let Ok(mut child) = child {
                let start = Instant::now();
                while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annex::remotes::ssh::{SshTarget, parse_url};

    fn how(url: &str, opts: &[&str]) -> SshAccess {
        let target: SshTarget = parse_url(url).unwrap();
        SshAccess {
            target,
            ssh_options: opts.iter().map(|s| s.to_string()).collect(),
            caching: true,
            shell: "git-annex-shell".into(),
            client_uuid: "c".into(),
        }
    }

    #[test]
    fn arguments_put_batch_mode_first_and_the_remote_options_before_the_timeouts() {
        let a = ssh_args(&how("ssh://u@h:2222/r", &["-F", "/cfg"]), Some(Path::new("/run/x/h0")));
        let s = a.join(" ");
        assert_eq!(
            s,
            "-o BatchMode=yes -o ControlMaster=auto -o ControlPath=/run/x/h0 -o ControlPersist=120 -F /cfg \
             -o ConnectTimeout=10 -o ServerAliveInterval=15 -p 2222 -T u@h"
        );
        let a = ssh_args(&how("h:r", &[]), None);
        assert_eq!(a.join(" "), "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 -T h");
    }

    #[test]
    fn the_remote_command_is_quoted_as_git_annex_quotes_it() {
        assert_eq!(
            p2pstdio_command("git-annex-shell", "/~/it's here", "c-uuid", "r-uuid"),
            "git-annex-shell 'p2pstdio' '/~/it'\"'\"'s here' 'c-uuid' '--uuid' 'r-uuid'"
        );
    }

    #[test]
    fn runtime_directories_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let d = RuntimeDir::create().unwrap();
        let p = d.path().to_path_buf();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::write(p.join("x"), b"").unwrap();
        drop(d);
        assert!(!p.exists());
    }
}
