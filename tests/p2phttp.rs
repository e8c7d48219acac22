//! Mount tests against real `git annex p2phttp` servers on loopback: the content is only on
//! the server, read through the mount byte for byte and by ranges at several offsets at once;
//! a server started with `--unauth-readonly` is read without a login, one started with
//! `--authenv-http` with the login `git credential fill` gives (a `store` helper in the
//! sandbox's HOME); a wrong password is a clear error and EIO, not a hang. `annexfs sources
//! --json` agrees with `git annex whereis --json` about the holders.

mod common;

use common::free_port;
use common::mnt::mount;
use common::{Sandbox, json_lines, pseudo_random};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `git annex p2phttp`, killed when dropped: its whole process group, since `git`
/// runs git-annex as a child of its own (killing `git` alone left the server running after
/// the tests).
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(sb: &Sandbox, repo: &Path, auth: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut cmd = sb.cmd("git", repo);
    cmd.args(["annex", "p2phttp", "-J2", "--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(auth)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A process group of its own, for Drop to end all of it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("start git annex p2phttp");
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git annex p2phttp did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn p2phttp_available(sb: &Sandbox) -> bool {
    sb.cmd("git", sb.dir.path()).args(["annex", "p2phttp", "--help"]).output().is_ok_and(|o| o.status.success())
}

struct World {
    sb: Sandbox,
    r: PathBuf,
    srv: PathBuf,
    big: Vec<u8>,
    small: Vec<u8>,
}

/// `r` with two files whose content is only in `srv`, a clone reached over p2phttp.
fn world() -> World {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "client");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "all"]);
    let big = pseudo_random(41, 6_000_000);
    let small = pseudo_random(42, 70_000);
    sb.write(&r.join("big.bin"), &big);
    sb.write(&r.join("small.bin"), &small);
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);
    let srv = sb.path("srv");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), srv.to_str().unwrap()]);
    sb.annex(&srv, &["init", "-q", "p2phttp server"]);
    sb.git(&r, &["remote", "add", "srv", srv.to_str().unwrap()]);
    sb.annex(&r, &["copy", "-q", "--to", "srv", "."]);
    sb.annex(&r, &["drop", "-q", "--force", "."]);
    World { sb, r, srv, big, small }
}

/// Points remote `srv` at the p2phttp server: a git URL on `git_host` with `annexurl`.
fn point_at(w: &World, server: &Server, git_host: &str) {
    w.sb.git(&w.r, &["config", "remote.srv.url", &format!("http://{git_host}:1/srv.git")]);
    w.sb.git(&w.r, &["config", "remote.srv.annexurl", &format!("annex+http://127.0.0.1:{}/git-annex/", server.port)]);
}

fn parallel_ranges(m: &common::mnt::Mount, file: &str, want: &[u8]) {
    let path = &m.p(file);
    let offsets = [0usize, 1, 65_535, 1_048_576, 2_500_001, 4_194_304, want.len() - 70_000, want.len() - 1];
    std::thread::scope(|s| {
        for &off in &offsets {
            s.spawn(move || {
                let f = std::fs::File::open(path).unwrap();
                let len = 70_000.min(want.len() - off);
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, off as u64)
                    .unwrap_or_else(|e| panic!("range at {off}: {e}\nlog: {}", m.log()));
                assert!(buf == want[off..off + len], "bytes at {off}");
            });
        }
    });
}

#[test]
fn unauthenticated_readonly_server_is_read_by_ranges() {
    let w = world();
    if !common::require("git annex p2phttp (a current git-annex first on PATH)", p2phttp_available(&w.sb)) {
        return;
    }
    let server = start_server(&w.sb, &w.srv, &["--unauth-readonly"], &[]);
    point_at(&w, &server, "127.0.0.1");

    // annexfs sources agrees with git-annex about the holders, and says how it reads them.
    let out = w.sb.annexfs(&w.r, &["sources", "--json", "big.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours = json_lines(&out.stdout).remove(0);
    let whereis = json_lines(w.sb.annex(&w.r, &["whereis", "--json", "big.bin"]).as_bytes()).remove(0);
    let uuids = |v: &serde_json::Value, f: &str, u: &str| -> Vec<String> {
        let mut x: Vec<String> = v[f].as_array().unwrap().iter().map(|h| h[u].as_str().unwrap().to_string()).collect();
        x.sort();
        x
    };
    assert_eq!(uuids(&ours, "holders", "uuid"), uuids(&whereis, "whereis", "uuid"));
    let h = &ours["holders"][0];
    assert_eq!(h["readable"], true, "{h}");
    let loc = h["locations"][0].as_str().unwrap();
    assert!(
        loc.starts_with(&format!("http://127.0.0.1:{}/git-annex/", server.port)) && loc.contains("/v4/key/"),
        "{loc}"
    );

    let m = mount(&w.sb, &w.r, "mnt", &["--cache-dir", w.sb.path("cache").to_str().unwrap()]);
    parallel_ranges(&m, "big.bin", &w.big);
    let got = std::fs::read(m.p("small.bin")).unwrap_or_else(|e| panic!("read: {e}\nlog: {}", m.log()));
    assert!(got == w.small, "content of small.bin");
    let got = std::fs::read(m.p("big.bin")).unwrap();
    assert!(got == w.big, "content of big.bin");
}

#[test]
fn login_comes_from_git_credential_and_a_wrong_one_is_eio() {
    let w = world();
    if !common::require("git annex p2phttp (a current git-annex first on PATH)", p2phttp_available(&w.sb)) {
        return;
    }
    let server = start_server(
        &w.sb,
        &w.srv,
        &["--authenv-http"],
        &[("GIT_ANNEX_P2PHTTP_PASSWORD_alice", "sekrit"), ("GIT_ANNEX_P2PHTTP_PASSWORD_bob", "other")],
    );
    // The git URL is on another host name, so git-annex (and annexfs) ask git credential
    // about the p2phttp URL itself.
    point_at(&w, &server, "localhost");
    let store = w.sb.path("home/creds");
    std::fs::write(&store, format!("annex+http://alice:sekrit@127.0.0.1:{}/git-annex\n", server.port)).unwrap();
    w.sb.git(
        w.sb.dir.path(),
        &["config", "--global", "credential.helper", &format!("store --file={}", store.display())],
    );

    let m = mount(&w.sb, &w.r, "mnt", &["--cache-dir", w.sb.path("cache").to_str().unwrap()]);
    parallel_ranges(&m, "big.bin", &w.big);
    let got = std::fs::read(m.p("small.bin")).unwrap_or_else(|e| panic!("read: {e}\nlog: {}", m.log()));
    assert!(got == w.small, "content of small.bin");
    drop(m);

    // git-annex itself reads with the same login (the test's setup is the real one).
    w.sb.annex(&w.r, &["get", "-q", "small.bin"]);
    w.sb.annex(&w.r, &["drop", "-q", "--force", "small.bin"]);

    // A wrong password: EIO quickly, the reason in the log, and the login rejected.
    std::fs::write(&store, format!("annex+http://alice:wrong@127.0.0.1:{}/git-annex\n", server.port)).unwrap();
    let m = mount(&w.sb, &w.r, "mnt2", &["--cache-dir", w.sb.path("cache2").to_str().unwrap()]);
    let t = Instant::now();
    let err = std::fs::read(m.p("small.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    let log = m.log();
    assert!(log.contains("refused") && log.contains("srv"), "log: {log}");
    // The request that met the refusal rejects the login; another one meeting it at the same
    // time may end the read first.
    common::wait_until(Duration::from_secs(10), "the refused login to be rejected", || {
        !std::fs::read_to_string(&store).unwrap_or_default().contains("wrong")
    });
}
