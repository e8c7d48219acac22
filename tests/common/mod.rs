//! Helpers for tests that build real git-annex repositories with the git-annex CLI.
//!
//! Every command runs with a private `HOME` (no user or system git config leaks in), fixed
//! identities, and fails the test loudly with its stderr when it fails.

#![allow(dead_code)]

pub mod hostile;
pub mod mnt;
pub mod moto;
pub mod nginx;
pub mod slowfs;
pub mod swarm;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temporary directory holding repositories, with its own HOME.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        assert!(
            Command::new("git").args(["annex", "version", "--raw"]).output().is_ok_and(|o| o.status.success()),
            "git-annex is required for this test (the README's test command installs it)"
        );
        let dir = tempfile::Builder::new().prefix("annexfs-test-").tempdir().expect("create temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn cmd(&self, program: &str, cwd: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(cwd)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "annexfs test")
            .env("GIT_AUTHOR_EMAIL", "test@annexfs.invalid")
            .env("GIT_COMMITTER_NAME", "annexfs test")
            .env("GIT_COMMITTER_EMAIL", "test@annexfs.invalid")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null());
        c
    }

    /// Runs `git ARGS` in `cwd`; panics with stderr on failure; returns stdout.
    pub fn git<S: AsRef<OsStr>>(&self, cwd: &Path, args: &[S]) -> String {
        let out = self.cmd("git", cwd).args(args).output().expect("run git");
        check(&out, "git", args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `git annex ARGS`.
    pub fn annex<S: AsRef<OsStr>>(&self, cwd: &Path, args: &[S]) -> String {
        let mut all: Vec<&OsStr> = vec![OsStr::new("annex")];
        all.extend(args.iter().map(AsRef::as_ref));
        self.git(cwd, &all)
    }

    /// Runs the annexfs binary; returns the whole output.
    pub fn annexfs<S: AsRef<OsStr>>(&self, cwd: &Path, args: &[S]) -> Output {
        self.cmd(env!("CARGO_BIN_EXE_annexfs"), cwd).args(args).output().expect("run annexfs")
    }

    /// Creates a file (and its parent directories).
    pub fn write(&self, path: &Path, content: &[u8]) {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(path, content).unwrap();
    }

    /// `git init` + `git annex init DESC` in a new directory.
    pub fn init_repo(&self, rel: &str, desc: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        self.git(&p, &["init", "-q", "-b", "main"]);
        self.annex(&p, &["init", "-q", desc]);
        p
    }
}

fn check<S: AsRef<OsStr>>(out: &Output, prog: &str, args: &[S]) {
    if !out.status.success() {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        panic!(
            "{prog} {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Deterministic pseudo-random bytes (xorshift), so content is reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A fingerprint of every file under `dir` (path, size, mtime, content hash), to prove a
/// command left a repository untouched.
pub fn tree_fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, u64)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
                out.insert(p, (0, md.mtime_nsec() + md.mtime() * 1_000_000_000, 0));
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                if md.is_file() {
                    std::fs::read(&p).unwrap_or_default().hash(&mut h);
                } else if md.file_type().is_symlink() {
                    std::fs::read_link(&p).unwrap().hash(&mut h);
                }
                out.insert(p, (md.len(), md.mtime_nsec() + md.mtime() * 1_000_000_000, h.finish()));
            }
        }
    }
    out
}

/// Parses JSON lines.
pub fn json_lines(s: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(s)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Appends a JSON line to the file named by `ANNEXFS_REPORT`, if set (for the reliability
/// report, `scripts/reliability`).
pub fn report(line: serde_json::Value) {
    use std::io::Write;
    if let Ok(path) = std::env::var("ANNEXFS_REPORT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

/// Bytes of `got` that differ from `want` (or are missing from it).
pub fn wrong_bytes(got: &[u8], want: &[u8]) -> usize {
    got.iter().zip(want).filter(|(a, b)| a != b).count() + got.len().saturating_sub(want.len())
}

/// The SHA256E key of `data` (extension `.bin`).
pub fn sha256_key(data: &[u8]) -> annexfs::annex::Key {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    annexfs::annex::Key::parse_str(&format!("SHA256E-s{}--{hex}.bin", data.len())).unwrap()
}

/// The piece manifest of `data` under `key`, with the cache's piece size.
pub fn manifest_of(key: &annexfs::annex::Key, data: &[u8]) -> annexfs::manifest::Manifest {
    let size = data.len() as u64;
    annexfs::manifest::Manifest::build(key, size, annexfs::pieces::piece_size_for(size), |off, buf| {
        let a = usize::try_from(off).unwrap();
        buf.copy_from_slice(&data[a..a + buf.len()]);
        Ok(())
    })
    .unwrap()
}

/// Whether tests must run their real checks: `ANNEXFS_REQUIRE_REAL=1` (set by CI, `.ci/run`).
pub fn real_required() -> bool {
    std::env::var("ANNEXFS_REQUIRE_REAL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether a test can run its real check that needs `what`. When it cannot: under
/// `ANNEXFS_REQUIRE_REAL=1` the test fails; otherwise it prints why it is skipped and the
/// caller returns. Use as `if !common::require("root", is_root()) { return; }`.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    assert!(!real_required(), "{what} is required (ANNEXFS_REQUIRE_REAL is set; scripts/install-deps installs it)");
    eprintln!("skipped: needs {what} (set ANNEXFS_REQUIRE_REAL=1 to make this a failure)");
    false
}

/// A loopback port free now (for a server a test starts), never the same twice in a test
/// binary. Not one the kernel picks (ports from `ip_local_port_range`, 32768 up by default):
/// the local end of some connection could take such a port between this look and the
/// server's bind (a swarm mount once failed with "Address already in use" so). Below the
/// ports bench/run uses (17500–18999) neither.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    let kernel_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let span = kernel_low.saturating_sub(FIRST).max(1_000);
    // Test binaries run one after another; a start of their own keeps them apart anyway.
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + n) % span).unwrap_or(0);
        if port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + span);
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program ARG` runs and succeeds (e.g. `--version`, to find a tool cheaply).
pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdin(Stdio::null()).output().is_ok_and(|o| o.status.success())
}

/// Polls `cond` (every 20 ms) until it holds; panics naming `what` after `timeout`. Tests wait
/// for conditions with this, generously, instead of sleeping a fixed time.
pub fn wait_until(timeout: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `annexfs status --json` document of the mount at `mp`: its one mount's status.
pub fn mount_status(mp: &Path) -> serde_json::Value {
    try_mount_status(mp).unwrap_or_else(|e| panic!("{e}"))
}

/// `mount_status`, or why `annexfs status` failed.
pub fn try_mount_status(mp: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_annexfs"))
        .args(["status", "--json"])
        .arg(mp)
        .stdin(Stdio::null())
        .output()
        .expect("run annexfs status");
    if !out.status.success() {
        return Err(format!("annexfs status: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    Ok(doc["mounts"][0].clone())
}
