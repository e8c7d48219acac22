//! ssh git remotes against a real sshd (Debian's openssh-server) on a loopback port, with a
//! generated host key and client keys, serving a bare repository through the real
//! `git-annex-shell` (Debian's, and the current one from target/tools/venv when there). The
//! clone's only holder of the content is the ssh remote `ssh://root@127.0.0.1:PORT/…`.
//!
//! Checked: bytes exact; ranges asked in parallel sessions on one master connection (sshd's
//! log: one connection, sessions with ids above 0 on it; git-annex-shell's input: GETs at
//! several offsets); `annexfs sources --json` agreeing with `git annex whereis --json`;
//! `annexfs status`; the master stopped when the mount ends; `annex.sshcaching=false`; an
//! unknown host key and a refused login failing fast (EIO, the log line naming the remote
//! and ssh's message, the same in `annexfs status`).
//!
//! git-annex-shell is reached through a wrapper first on the session's PATH (sshd's
//! `SetEnv`), which logs each session's arguments and every line the client sends it.

mod common;

use common::mnt::{Mount, mount};
use common::nginx::Nginx;
use common::{Sandbox, json_lines, pseudo_random};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's git-annex-shell.
const DEBIAN_SHELL: &str = "/usr/bin/git-annex-shell";

/// The current git-annex-shell from PyPI (scripts/install-deps), if installed.
fn venv_shell() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/git-annex-shell");
    p.exists().then_some(p)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "annexfs-test", "-f"]).arg(path));
}

/// Client configurations (`ssh -F`), each a way the server sees us.
#[derive(Clone, Copy)]
enum Client {
    /// The authorized key and the server's host key in known_hosts.
    Good,
    /// known_hosts without the server's key.
    UnknownHost,
    /// A key the server does not accept (it would accept a password, if ssh could ask).
    Refused,
}

struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
    user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// sshd on a free loopback port, its sessions running `shell` as git-annex-shell.
    fn start(sb: &Sandbox, shell: &Path) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "sshd is required for this test (scripts/deps/ssh.sh installs openssh-server)");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root { "root".to_string() } else { std::env::var("USER").expect("USER") };
        if root {
            // sshd's privilege separation directory.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let dir = sb.path("sshd");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for k in ["host_key", "client_key", "stranger_key"] {
            keygen(&dir.join(k));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // The wrapper becomes git-annex-shell (exec), its input copied to the log by a tee
        // that holds none of the session's output: the session ends when git-annex-shell does.
        let wrapper = dir.join("bin/git-annex-shell");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nlog={d}/shell.log\necho \"start $$ $*\" >> \"$log\"\n\
                 fifo={d}/fifo.$$\nmkfifo \"$fifo\"\nexec 3<&0\n\
                 tee -a \"$log\" <&3 >\"$fifo\" 2>/dev/null 3<&- &\n\
                 exec 3<&-\nexec {shell} \"$@\" <\"$fifo\"\n",
                d = dir.display(),
                shell = shell.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let port = common::free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPermitRootLogin yes\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nLogLevel VERBOSE\n\
             MaxStartups 100\nSetEnv PATH={d}/bin:/usr/bin:/bin\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let s = Sshd { child, port, dir, user };
        common::wait_until(Duration::from_secs(60), "sshd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        // The client side: known_hosts with and without the server's key, and ssh configs.
        let host_key = std::fs::read_to_string(s.dir.join("host_key.pub")).unwrap();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        std::fs::write(s.dir.join("known_hosts"), format!("[127.0.0.1]:{port} {}\n", host_key.join(" "))).unwrap();
        std::fs::write(s.dir.join("empty_known_hosts"), "").unwrap();
        for (c, key, known) in [
            (Client::Good, "client_key", "known_hosts"),
            (Client::UnknownHost, "client_key", "empty_known_hosts"),
            (Client::Refused, "stranger_key", "known_hosts"),
        ] {
            std::fs::write(
                s.config(c),
                format!(
                    "Host *\n  IdentityFile {d}/{key}\n  IdentitiesOnly yes\n  IdentityAgent none\n\
                     UserKnownHostsFile {d}/{known}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n",
                    d = s.dir.display()
                ),
            )
            .unwrap();
        }
        s
    }

    fn config(&self, c: Client) -> PathBuf {
        self.dir.join(match c {
            Client::Good => "ssh_config",
            Client::UnknownHost => "ssh_config_unknown_host",
            Client::Refused => "ssh_config_refused",
        })
    }

    /// `remote.NAME.annex-ssh-options` for a client configuration.
    fn options(&self, c: Client) -> String {
        format!("-F {}", self.config(c).display())
    }

    fn url(&self, path: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", self.user, self.port, path.display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Each git-annex-shell session's arguments, and every line the clients sent them.
    fn shell_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shell.log")).unwrap_or_default()
    }
}

struct World {
    sb: Sandbox,
    sshd: Sshd,
    /// The clone whose only holder is the ssh remote `origin`.
    c: PathBuf,
    origin_uuid: String,
    files: Vec<(&'static str, Vec<u8>)>,
}

impl World {
    fn data(&self, name: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn key(&self, name: &str) -> String {
        self.sb.annex(&self.c, &["lookupkey", name]).trim().to_string()
    }

    fn mount(&self, name: &str) -> Mount {
        let cache = self.sb.path(&format!("{name}-cache"));
        mount(&self.sb, &self.c, name, &["--cache-dir", cache.to_str().unwrap(), "-v"])
    }

    fn use_client(&self, c: Client) {
        self.sb.git(&self.c, &["config", "remote.origin.annex-ssh-options", &self.sshd.options(c)]);
    }
}

/// A repository with content, a bare copy of it (with the content) served by sshd, and a
/// clone that reaches the bare one only over ssh.
fn world(shell: &Path) -> World {
    let sb = Sandbox::new();
    let sshd = Sshd::start(&sb, shell);
    let r = sb.init_repo("r", "where the files were added");
    let files = vec![
        ("big.bin", pseudo_random(71, 12_000_000)),
        // Read by four readers at once, far enough apart not to wait for one another.
        ("media/other.bin", pseudo_random(72, 24_000_000)),
        ("small.txt", b"a small file, read in one range\n".to_vec()),
    ];
    for (name, data) in &files {
        sb.write(&r.join(name), data);
    }
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);
    let origin = sb.path("srv/origin.git");
    sb.git(sb.dir.path(), &["clone", "-q", "--bare", r.to_str().unwrap(), origin.to_str().unwrap()]);
    sb.annex(&origin, &["init", "-q", "origin over ssh"]);
    sb.git(&r, &["remote", "add", "origin", origin.to_str().unwrap()]);
    sb.annex(&r, &["copy", "-q", "--to", "origin", "."]);
    sb.annex(&r, &["drop", "-q", "."]);
    sb.annex(&r, &["sync", "-q", "--no-content", "origin"]);
    let origin_uuid = sb.git(&origin, &["config", "annex.uuid"]).trim().to_string();

    let c = sb.path("c");
    sb.git(sb.dir.path(), &["clone", "-q", origin.to_str().unwrap(), c.to_str().unwrap()]);
    sb.annex(&c, &["init", "-q", "the clone"]);
    sb.git(&c, &["config", "remote.origin.annex-uuid", &origin_uuid]);
    sb.git(&c, &["config", "remote.origin.url", &sshd.url(&origin)]);
    let w = World { sb, sshd, c, origin_uuid, files };
    w.use_client(Client::Good);
    // git-annex itself reaches the remote over ssh the same way (the fixture is sound).
    w.sb.annex(&w.c, &["fsck", "-q", "--fast", "--from", "origin", "small.txt"]);
    assert!(w.sshd.shell_log().contains("CHECKPRESENT"), "git-annex ran its session: {}", w.sshd.shell_log());
    std::fs::write(w.sshd.dir.join("shell.log"), "").unwrap();
    w
}

/// GET offsets the clients sent for `key`, in order.
fn get_offsets(shell_log: &str, key: &str) -> Vec<u64> {
    shell_log
        .lines()
        .filter_map(|l| l.strip_prefix("GET "))
        .filter(|l| l.ends_with(key))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

/// Reads `name` by four readers at once, each at its own quarter, and checks the bytes.
fn read_quarters(m: &Mount, name: &str, data: &[u8]) {
    let quarter = data.len() / 4;
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let p = m.p(name);
            std::thread::spawn(move || {
                let f = std::fs::File::open(p).unwrap();
                let mut buf = vec![0u8; quarter];
                f.read_exact_at(&mut buf, (i * quarter) as u64).map(|()| buf)
            })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let buf = r.join().unwrap().unwrap_or_else(|e| panic!("read a quarter of {name}: {e}\nlog: {}", m.log()));
        assert!(buf == data[i * quarter..(i + 1) * quarter], "quarter {i} of {name}");
    }
}

/// sshd log lines after the first `skip` bytes.
fn since(log: &str, skip: usize) -> &str {
    log.get(skip..).unwrap_or("")
}

/// The command lines of the ssh processes running now.
fn ssh_command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.starts_with("ssh\0") || c.starts_with("ssh: "))
        .collect()
}

/// The control sockets of the ssh sessions to `port` running now.
fn control_paths(port: u16) -> BTreeSet<String> {
    let port = format!("\0-p\0{port}\0");
    ssh_command_lines()
        .iter()
        .filter(|c| c.contains(&port))
        .filter_map(|c| c.split('\0').find_map(|a| a.strip_prefix("ControlPath=")).map(str::to_string))
        .collect()
}

/// ssh processes using one of `paths`: sessions, and masters (whose command line ssh
/// rewrites to `ssh: PATH [mux]`).
fn ssh_processes(paths: &BTreeSet<String>) -> Vec<String> {
    ssh_command_lines().into_iter().filter(|c| paths.iter().any(|p| c.contains(p.as_str()))).collect()
}

fn status_json(sb: &Sandbox, m: &Mount) -> serde_json::Value {
    let out = sb.annexfs(sb.dir.path(), &["status", "--json", m.mp.to_str().unwrap()]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reads_by_ranges_over_one_master(shell: &Path) {
    let w = world(shell);
    let sb = &w.sb;
    let log_before = w.sshd.log().len();
    let m = w.mount("mnt");
    // Warmed at mount: the master connection and spare git-annex-shell sessions start before
    // anything is read, so that the first range waits for neither.
    common::wait_until(Duration::from_secs(30), "spare sessions started at mount", || {
        since(&w.sshd.log(), log_before).lines().filter(|l| l.contains("Starting session: command")).count() >= 2
    });

    // The big file, sequentially, through one open handle kept for `status`.
    let big = std::fs::File::open(m.p("big.bin")).unwrap();
    let mut got = vec![0u8; w.data("big.bin").len()];
    big.read_exact_at(&mut got, 0).unwrap_or_else(|e| panic!("read big.bin: {e}\nlog: {}", m.log()));
    assert!(got == w.data("big.bin"), "big.bin read byte for byte");
    // The other one by four readers at once, each at its own quarter.
    read_quarters(&m, "media/other.bin", w.data("media/other.bin"));
    assert_eq!(std::fs::read(m.p("small.txt")).unwrap(), w.data("small.txt"));
    let full = std::fs::read(m.p("media/other.bin")).unwrap();
    assert!(full == w.data("media/other.bin"), "other.bin whole");
    // The control socket, from the sessions kept for reuse now.
    let paths = control_paths(w.sshd.port);

    // `annexfs status`: the remote as a source, with the bytes it sent.
    let st = status_json(sb, &m);
    let sources = st["mounts"][0]["sources"].as_array().unwrap();
    let origin = sources.iter().find(|s| s["identity"] == "origin").unwrap_or_else(|| panic!("status: {st}"));
    assert!(origin["bytes"].as_u64().unwrap() > 0 && origin["gave_up"].is_null(), "status: {st}");
    // The host: its master up, the sessions open with what each does (spares kept idle).
    let hosts = st["mounts"][0]["ssh"].as_array().unwrap_or_else(|| panic!("status shows the ssh host: {st}"));
    assert_eq!(hosts.len(), 1, "status: {st}");
    let h = &hosts[0];
    assert!(h["host"].as_str().unwrap().contains(&format!("port {}", w.sshd.port)), "status: {st}");
    assert_eq!(h["master"], true, "status: {st}");
    let n = |f: &str| h[f].as_u64().unwrap();
    assert!(n("sessions") >= 1 && n("idle") + n("parked") <= n("sessions"), "status: {st}");
    assert!(h["error"].is_null(), "status: {st}");
    drop(big);

    // The server saw one connection, several sessions on it at once, GETs at many offsets.
    let log = w.sshd.log();
    let new = since(&log, log_before);
    let connections: Vec<&str> = new.lines().filter(|l| l.contains("Connection from 127.0.0.1")).collect();
    assert_eq!(connections.len(), 1, "one master connection for every session: {new}");
    let sessions: Vec<&str> = new.lines().filter(|l| l.contains("Starting session: command")).collect();
    let concurrent = sessions.iter().filter(|l| !l.trim_end().ends_with(" id 0")).count();
    assert!(concurrent > 0, "sessions run side by side on the master (ids above 0): {sessions:#?}");
    let shell_log = w.sshd.shell_log();
    let starts = shell_log.lines().filter(|l| l.starts_with("start ")).count();
    let big_gets: BTreeSet<u64> = get_offsets(&shell_log, &w.key("big.bin")).into_iter().collect();
    let other_gets: BTreeSet<u64> = get_offsets(&shell_log, &w.key("media/other.bin")).into_iter().collect();
    assert!(starts >= 2, "several p2pstdio sessions: {shell_log}");
    // A reader going forward is served by few GETs (each going on where the last range
    // stopped); readers at several places by a GET each, at once.
    assert!(big_gets.contains(&0), "big.bin from its start: {big_gets:?}");
    assert!(other_gets.len() >= 2, "other.bin asked at several offsets: {other_gets:?}");
    assert!(
        shell_log.lines().all(|l| !l.starts_with("AUTH")),
        "no AUTH is sent to p2pstdio (it authenticates nobody): {shell_log}"
    );
    assert!(
        shell_log.lines().any(|l| l.starts_with("start ") && l.contains(&format!("--uuid {}", w.origin_uuid))),
        "git-annex-shell is told which repository is expected: {shell_log}"
    );
    let log_text = m.log();
    assert!(!log_text.contains(" WARN ") && !log_text.contains(" ERROR "), "mount log: {log_text}");

    // `annexfs sources --json` agrees with `git annex whereis --json`.
    let names = ["big.bin", "media/other.bin", "small.txt"];
    let out = sb.annexfs(&w.c, &[&["sources", "--json"][..], &names[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours = json_lines(&out.stdout);
    let out = sb.cmd("git", &w.c).args([&["annex", "whereis", "--json"][..], &names[..]].concat()).output().unwrap();
    let theirs = json_lines(&out.stdout);
    for name in names {
        let o = ours.iter().find(|v| v["file"] == name).unwrap();
        let t = theirs.iter().find(|v| v["file"] == name).unwrap();
        let our_uuids: BTreeSet<&str> =
            o["holders"].as_array().unwrap().iter().map(|h| h["uuid"].as_str().unwrap()).collect();
        let their_uuids: BTreeSet<&str> = ["whereis", "untrusted"]
            .iter()
            .flat_map(|l| t[l].as_array().unwrap().iter().map(|e| e["uuid"].as_str().unwrap()))
            .collect();
        assert_eq!(our_uuids, their_uuids, "holders of {name}");
        let h = o["holders"].as_array().unwrap().iter().find(|h| h["remote"] == "origin").unwrap();
        assert_eq!(h["readable"], true, "{h}");
        assert_eq!(h["locations"][0], w.sshd.url(&w.sb.path("srv/origin.git")).as_str());
    }

    // The mount ends: its master connection is stopped, its socket directory removed.
    assert_eq!(paths.len(), 1, "one control socket: {paths:?}");
    let procs = ssh_processes(&paths);
    assert!(procs.iter().any(|c| c.starts_with("ssh: ") && c.contains("[mux]")), "a master runs: {procs:#?}");
    drop(m);
    common::wait_until(Duration::from_secs(60), "the mount's ssh processes to end", || {
        ssh_processes(&paths).is_empty()
    });
    let dir = Path::new(paths.first().unwrap()).parent().unwrap().to_path_buf();
    common::wait_until(Duration::from_secs(60), "the ssh socket directory to be removed", || !dir.exists());
}

#[test]
fn debian_git_annex_shell_serves_ranges_in_parallel_over_one_master() {
    reads_by_ranges_over_one_master(Path::new(DEBIAN_SHELL));
}

#[test]
fn the_current_git_annex_shell_serves_ranges_in_parallel_over_one_master() {
    let Some(shell) = venv_shell() else {
        common::require("a current git-annex in target/tools/venv (scripts/install-deps)", false);
        return;
    };
    reads_by_ranges_over_one_master(&shell);
}

/// How the clone is set up for one failure, and the words its log and status must show.
enum Failure {
    Client(Client),
    /// The remote's URL names a directory that is no repository.
    NoRepository,
    /// The server's repository dropped the content (the clone does not know yet).
    Dropped,
}

#[test]
fn unreachable_hosts_and_repositories_fail_fast_with_ssh_s_words() {
    let w = world(Path::new(DEBIAN_SHELL));
    let origin = w.sb.path("srv/origin.git");
    let cases = [
        (Failure::Client(Client::UnknownHost), "Host key verification failed"),
        (Failure::Client(Client::Refused), "Permission denied (publickey,password)"),
        (Failure::NoRepository, "git-annex-shell on"),
        (Failure::Dropped, "does not have the content of the key"),
    ];
    for (i, (failure, words)) in cases.into_iter().enumerate() {
        w.use_client(Client::Good);
        w.sb.git(&w.c, &["config", "remote.origin.url", &w.sshd.url(&origin)]);
        match failure {
            Failure::Client(c) => w.use_client(c),
            Failure::NoRepository => {
                let nowhere = w.sb.path("srv/nowhere");
                std::fs::create_dir_all(&nowhere).unwrap();
                w.sb.git(&w.c, &["config", "remote.origin.url", &w.sshd.url(&nowhere)]);
            }
            Failure::Dropped => {
                for name in ["small.txt", "big.bin"] {
                    let key = w.key(name);
                    w.sb.annex(&origin, &["drop", "-q", "--force", "--key", &key]);
                }
            }
        }
        let m = w.mount(&format!("mnt{i}"));
        for name in ["small.txt", "big.bin"] {
            let start = Instant::now();
            let err = std::fs::read(m.p(name)).expect_err("the remote cannot serve it");
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}: {err}");
            // Failing fast: well before the 60 s a read may wait for a source that stalls.
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} failed after {:?}: {}",
                start.elapsed(),
                m.log()
            );
        }
        let log = m.log();
        assert!(
            log.lines().any(|l| l.contains("small.txt") && l.contains("origin") && l.contains(words)),
            "the read's log line names the file, the remote and why ({words}): {log}"
        );
        let st = status_json(&w.sb, &m);
        let errors = st["mounts"][0]["recent_errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e["message"].as_str().unwrap().contains(words)),
            "status shows why the remote cannot be used: {st}"
        );
        if let Failure::Client(_) = failure {
            assert!(
                log.lines().any(|l| l.contains(" WARN ") && l.contains("remote origin: ssh") && l.contains(words)),
                "one warning names the remote and ssh's words: {log}"
            );
            assert!(
                w.sshd.shell_log().lines().all(|l| !l.starts_with("start")),
                "no session ever ran: {}",
                w.sshd.shell_log()
            );
        }
    }
}

#[test]
fn without_ssh_caching_every_session_connects_on_its_own() {
    let w = world(Path::new(DEBIAN_SHELL));
    w.sb.git(&w.c, &["config", "annex.sshcaching", "false"]);
    let before = w.sshd.log().len();
    let m = w.mount("mnt");
    read_quarters(&m, "media/other.bin", w.data("media/other.bin"));
    let got = std::fs::read(m.p("big.bin")).unwrap_or_else(|e| panic!("read: {e}\n{}", m.log()));
    assert!(got == w.data("big.bin"));
    let log = w.sshd.log();
    let connections = since(&log, before).lines().filter(|l| l.contains("Connection from 127.0.0.1")).count();
    assert!(connections >= 2, "one connection per session: {}", since(&log, before));
    assert!(control_paths(w.sshd.port).is_empty(), "no connection sharing");
}

#[test]
fn an_ssh_remote_and_a_web_mirror_share_the_ranges_of_a_key() {
    let w = world(Path::new(DEBIAN_SHELL));
    let www = w.sb.path("www");
    w.sb.write(&www.join("big.bin"), w.data("big.bin"));
    // A mirror slower than loopback ssh, so that neither does everything.
    let nginx = Nginx::start(&www, &w.sb.path("nginx"), 1, Some(500_000));
    w.sb.git(&w.c, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    w.sb.annex(&w.c, &["registerurl", &w.key("big.bin"), &nginx.url(0, "big.bin")]);
    let m = w.mount("mnt");
    let got = std::fs::read(m.p("big.bin")).unwrap_or_else(|e| panic!("read: {e}\n{}", m.log()));
    assert!(got == w.data("big.bin"), "big.bin read byte for byte from both");
    let web = nginx.access_log(0);
    let ranges = web.lines().filter(|l| l.contains("/big.bin") && l.contains("\" 206 ")).count();
    let gets = get_offsets(&w.sshd.shell_log(), &w.key("big.bin"));
    assert!(ranges > 0 && !gets.is_empty(), "both holders served ranges: web {web}\nssh {gets:?}\n{}", m.log());
}
