//! S3 special remotes against a real S3 server on loopback (moto's `moto_server`, installed
//! by scripts/deps/s3.sh), populated by git-annex itself: a signed bucket, a chunked bucket
//! with embedded credentials, a versioned export, a public-read bucket read through
//! `publicurl=` and one read anonymously at the endpoint. A clone reads every file through
//! the mount from each remote alone and from all at once, byte for byte; `annexfs sources
//! --json` agrees with `git annex whereis --json` and says why a remote cannot be used;
//! an object missing from its bucket gives an error, never wrong bytes.

mod common;

use common::mnt::Mount;
use common::{Sandbox, json_lines, pseudo_random};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const KEY_ID: &str = "annexfs-test-key";
const SECRET: &str = "annexfs-test-secret-do-not-show";

/// `git annex ARGS` with the given AWS credentials (or none).
fn annex(sb: &Sandbox, cwd: &Path, creds: bool, args: &[&str]) -> String {
    let mut c = sb.cmd("git", cwd);
    c.arg("annex").args(args).env_remove("AWS_SESSION_TOKEN");
    if creds {
        c.env("AWS_ACCESS_KEY_ID", KEY_ID).env("AWS_SECRET_ACCESS_KEY", SECRET);
    } else {
        c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "git annex {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Populates a bucket with `git annex copy --to NAME .`. moto's server once answered one of
/// git-annex's requests with an HTML page (git-annex: "ParseError ... DOCTYPE"), and the same
/// test passed when run again: the copy, which only sends what is not there yet, is run
/// again, up to three times in all. This sets up the fixture; what the test checks is what
/// annexfs then reads.
fn copy_to(sb: &Sandbox, cwd: &Path, name: &str, moto_log: &Path) {
    let mut last = String::new();
    for _ in 0..3 {
        let mut c = sb.cmd("git", cwd);
        c.args(["annex", "copy", "-q", "--to", name, "."]).env_remove("AWS_SESSION_TOKEN");
        c.env("AWS_ACCESS_KEY_ID", KEY_ID).env("AWS_SECRET_ACCESS_KEY", SECRET);
        let out = c.output().unwrap();
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("git annex copy --to {name} failed, trying again: {last}");
    }
    let log = std::fs::read_to_string(moto_log).unwrap_or_default();
    let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    panic!("git annex copy --to {name} failed three times: {last}\nmoto's log ends:\n{tail}");
}

/// `annexfs ARGS` with the environment given (credentials removed unless set here).
fn annexfs(sb: &Sandbox, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = sb.cmd(env!("CARGO_BIN_EXE_annexfs"), cwd);
    c.args(args).env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env_remove("AWS_SESSION_TOKEN");
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn mount_env(sb: &Sandbox, repo: &Path, name: &str, env: &[(&str, &str)]) -> Mount {
    let mp = sb.path(name);
    std::fs::create_dir_all(&mp).unwrap();
    let log = sb.path(&format!("{name}.log"));
    let cache = sb.path(&format!("{name}.cache"));
    let out = annexfs(
        sb,
        sb.dir.path(),
        env,
        &[
            "mount",
            "--log-file",
            log.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            repo.to_str().unwrap(),
            mp.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "annexfs mount: {}\nlog: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Mount { mp, log }
}

const REMOTES: [&str; 5] = ["s3", "s3c", "s3x", "s3p", "s3a"];

/// Makes only `only` usable in the clone (the others annex-ignore'd); `None`: all of them.
fn only(sb: &Sandbox, c: &Path, only: Option<&str>) {
    for r in REMOTES {
        let ignore = only.is_some_and(|o| o != r);
        sb.git(c, &["config", &format!("remote.{r}.annex-ignore"), if ignore { "true" } else { "false" }]);
    }
}

fn sources(sb: &Sandbox, c: &Path, env: &[(&str, &str)], files: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let mut args = vec!["sources", "--json"];
    args.extend_from_slice(files);
    let out = annexfs(sb, c, env, &args);
    assert!(out.status.success(), "annexfs sources: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET), "secret shown");
    json_lines(&out.stdout).into_iter().map(|v| (v["file"].as_str().unwrap().to_string(), v)).collect()
}

fn holder<'a>(v: &'a serde_json::Value, remote: &str) -> &'a serde_json::Value {
    v["holders"].as_array().unwrap().iter().find(|h| h["remote"] == remote).unwrap_or_else(|| panic!("{remote} in {v}"))
}

#[test]
fn clone_reads_every_kind_of_s3_remote_through_the_mount() {
    let Some(bin) = common::moto::binary() else {
        common::require("moto_server (moto[server] from PyPI)", false);
        return;
    };
    let sb = Sandbox::new();
    let moto = common::moto::start(&bin, &sb.path("moto.log"));
    let port = moto.port.to_string();
    let r = sb.init_repo("r", "origin");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "all"]);
    let mut files: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    files.insert("big.bin", pseudo_random(71, 2_700_000));
    files.insert("small.txt", b"small S3 object\n".to_vec());
    files.insert("sub dir/a+b c.bin", pseudo_random(72, 300_000));
    for (name, data) in &files {
        sb.write(&r.join(name), data);
    }
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "files"]);

    let common = ["type=S3", "host=127.0.0.1", "protocol=http", "requeststyle=path", "encryption=none"];
    let publicurl = format!("publicurl=http://127.0.0.1:{port}/pubb/");
    let port_arg = format!("port={port}");
    let remotes: [(&str, Vec<&str>); 5] = [
        ("s3", vec!["bucket=signedb"]),
        ("s3c", vec!["bucket=chunkb", "chunk=1MiB", "embedcreds=yes"]),
        ("s3x", vec!["bucket=exportb", "exporttree=yes", "versioning=yes"]),
        ("s3p", vec!["bucket=pubb", "public=yes", &publicurl]),
        ("s3a", vec!["bucket=anonb", "public=yes"]),
    ];
    for (name, extra) in &remotes {
        let mut args = vec!["initremote", "-q", name, &port_arg];
        args.extend_from_slice(&common);
        args.extend(extra.iter().copied());
        annex(&sb, &r, true, &args);
    }
    for name in ["s3", "s3c", "s3p", "s3a"] {
        copy_to(&sb, &r, name, &sb.path("moto.log"));
    }
    annex(&sb, &r, true, &["export", "-q", "HEAD", "--to", "s3x"]);

    // A clone that knows the remotes; its content only in the buckets.
    let c = sb.path("c");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), c.to_str().unwrap()]);
    annex(&sb, &c, false, &["init", "-q", "clone"]);
    sb.git(&c, &["config", "annex.security.allowed-ip-addresses", "all"]);
    for (name, _) in &remotes {
        annex(&sb, &c, true, &["enableremote", "-q", name]);
    }
    sb.git(&c, &["remote", "remove", "origin"]);
    // The public buckets are read without credentials; s3 and s3x with the cached ones.
    for name in ["s3p", "s3a", "s3c"] {
        let uuid = sb.git(&c, &["config", &format!("remote.{name}.annex-uuid")]).trim().to_string();
        let _ = std::fs::remove_file(c.join(".git/annex/creds").join(uuid));
    }
    let names: Vec<&str> = files.keys().copied().collect();

    // sources: every S3 remote readable, with whereis's holders and URLs.
    only(&sb, &c, None);
    let ours = sources(&sb, &c, &[], &names);
    let theirs = json_lines(
        annex(&sb, &c, false, &{
            let mut a = vec!["whereis", "--json"];
            a.extend_from_slice(&names);
            a
        })
        .as_bytes(),
    );
    for w in &theirs {
        let file = w["file"].as_str().unwrap();
        let o = &ours[file];
        let their_uuids: BTreeSet<&str> =
            w["whereis"].as_array().unwrap().iter().map(|h| h["uuid"].as_str().unwrap()).collect();
        let our_uuids: BTreeSet<&str> =
            o["holders"].as_array().unwrap().iter().map(|h| h["uuid"].as_str().unwrap()).collect();
        assert_eq!(our_uuids, their_uuids, "holders of {file}");
        let our_locs: BTreeSet<&str> = o["holders"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|h| h["locations"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()))
            .collect();
        for u in w["whereis"].as_array().unwrap().iter().flat_map(|h| h["urls"].as_array().unwrap()) {
            assert!(our_locs.contains(u.as_str().unwrap()), "whereis URL {u} of {file} missing: {our_locs:?}");
        }
        for name in REMOTES {
            assert_eq!(holder(o, name)["readable"], true, "{name} for {file}: {}", holder(o, name));
        }
    }
    let big = &ours["big.bin"];
    assert_eq!(holder(big, "s3c")["locations"].as_array().unwrap().len(), 3, "2.7 MB in 1 MiB chunks");
    assert!(holder(big, "s3x")["locations"][0].as_str().unwrap().contains("/exportb/big.bin?versionId="));

    // Each remote alone, then all of them at once, through the mount.
    for (i, alone) in REMOTES.iter().map(Some).chain([None]).enumerate() {
        only(&sb, &c, alone.copied());
        let m = mount_env(&sb, &c, &format!("mnt{i}"), &[]);
        for (name, data) in &files {
            let got = std::fs::read(m.p(name))
                .unwrap_or_else(|e| panic!("read {name} from {alone:?}: {e}\nlog: {}", m.log()));
            assert!(got == *data, "content of {name} from {alone:?} ({} bytes)", got.len());
        }
        // A range in the middle (spanning chunk objects of s3c).
        let f = std::fs::File::open(m.p("big.bin")).unwrap();
        let mut buf = vec![0u8; 200_000];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 1_000_000).unwrap();
        assert!(buf == files["big.bin"][1_000_000..1_200_000]);
        assert!(!m.log().contains(SECRET), "secret in the mount's log");
    }

    // Without the cached credentials s3 says why it cannot be read; with them in the
    // environment it is readable again.
    let s3_uuid = sb.git(&c, &["config", "remote.s3.annex-uuid"]).trim().to_string();
    std::fs::remove_file(c.join(".git/annex/creds").join(&s3_uuid)).unwrap();
    let why = sources(&sb, &c, &[], &["small.txt"]);
    let h = holder(&why["small.txt"], "s3");
    assert_eq!(h["readable"], false);
    assert!(h["reason"].as_str().unwrap().contains("no S3 credentials"), "{h}");
    let env = [("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET)];
    assert_eq!(holder(&sources(&sb, &c, &env, &["small.txt"])["small.txt"], "s3")["readable"], true);

    // The object gone from the bucket while the clone's location log still lists it: the
    // read fails with an error naming the remote, never wrong bytes, never a hang.
    annex(&sb, &r, true, &["drop", "-q", "--force", "--from", "s3", "small.txt"]);
    only(&sb, &c, Some("s3"));
    let m = mount_env(&sb, &c, "mntgone", &env);
    let started = Instant::now();
    let got = std::fs::read(m.p("small.txt"));
    assert!(got.is_err(), "read of a missing object gave {:?}", got.map(|g| g.len()));
    assert!(started.elapsed() < Duration::from_secs(30), "failing took {:?}", started.elapsed());
    assert!(m.log().contains("s3"), "log: {}", m.log());
    assert!(!m.log().contains(SECRET), "secret in the mount's log");
    drop(m);
    drop(moto);
}
