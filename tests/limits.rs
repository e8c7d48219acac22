//! Per-remote limits from a committed `.annexfs.toml` and from git config, applied by a real
//! mount reading from an unthrottled nginx mirror: the read cannot be faster than the limit.
//! (A lower bound on time only: the test cannot fail because a machine is slow.)

mod common;

use common::mnt::mount;
use common::nginx::Nginx;
use common::{Sandbox, pseudo_random};
use std::time::Instant;

const SIZE: usize = 4 << 20;

fn repo_on_a_mirror(sb: &Sandbox) -> (std::path::PathBuf, Nginx, Vec<u8>) {
    let r = sb.init_repo("r", "r");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let data = pseudo_random(61, SIZE);
    sb.write(&r.join("f.bin"), &data);
    sb.annex(&r, &["add", "-q", "f.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let www = sb.path("www");
    sb.write(&www.join("f.bin"), &data);
    let nginx = Nginx::start(&www, &sb.path("nginx"), 1, None);
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    sb.annex(&r, &["registerurl", &key, &nginx.url(0, "f.bin")]);
    sb.annex(&r, &["drop", "-q", "--force", "f.bin"]);
    (r, nginx, data)
}

fn timed_read(sb: &Sandbox, r: &std::path::Path, name: &str) -> (f64, Vec<u8>) {
    let m = mount(sb, r, name, &["--cache-dir", sb.path(&format!("{name}-cache")).to_str().unwrap(), "--no-publish"]);
    let t = Instant::now();
    let got = std::fs::read(m.p("f.bin")).unwrap_or_else(|e| panic!("{e}: {}", m.log()));
    (t.elapsed().as_secs_f64(), got)
}

#[test]
fn a_committed_annexfs_toml_limits_the_web_remote() {
    let sb = Sandbox::new();
    let (r, _nginx, data) = repo_on_a_mirror(&sb);
    sb.write(&r.join(".annexfs.toml"), b"[remote.web]\nbwlimit = \"2MiB\"\nmaxconnections = 1\n");
    sb.git(&r, &["add", ".annexfs.toml"]);
    sb.git(&r, &["commit", "-q", "-m", "limits"]);
    let (secs, got) = timed_read(&sb, &r, "mnt");
    assert!(got == data);
    assert!(secs >= 1.6, "4 MiB under a 2 MiB/s limit took {secs:.2} s");
}

#[test]
fn git_config_limits_a_remote_in_this_clone() {
    let sb = Sandbox::new();
    let (r, _nginx, data) = repo_on_a_mirror(&sb);
    sb.git(&r, &["config", "remote.web.annexfs-bwlimit", "2MiB"]);
    let (secs, got) = timed_read(&sb, &r, "mnt");
    assert!(got == data);
    assert!(secs >= 1.6, "4 MiB under a 2 MiB/s limit took {secs:.2} s");
}
