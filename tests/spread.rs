//! Spread remotes (`type=external externaltype=annexfs`) with real git-annex driving the real
//! program (the annexfs binary, linked as `git-annex-remote-annexfs` on PATH):
//!
//! - six directory stores, 4 + 2: `copy --to`, `fsck --from`, `get --from` byte-exact with
//!   0, 1 and 2 stores gone, a clear failure with 3 gone (nothing wrong served, the file not
//!   got); a flipped byte in a shard found, rebuilt, reported, then rewritten by
//!   `annexfs spread repair`; `drop --from` removes every shard and manifest;
//! - wrong `data=`/`parity=`, a relative or missing store at `initremote`: refused, no remote;
//! - a store that fills up during STORE (a 256 KiB tmpfs): the copy fails, nothing is
//!   recorded, no shard or manifest is left claimed on any store;
//! - an S3 store (moto on loopback) beside directories;
//! - through the mount: bytes exact with 0, 1, 2 stores gone; random reads; the log names the
//!   pieces rebuilt.

mod common;

use common::{Sandbox, pseudo_random};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct World {
    sb: Sandbox,
    r: PathBuf,
    bin: PathBuf,
    stores: Vec<PathBuf>,
}

fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(dirs).unwrap()
}

impl World {
    fn cmd(&self, program: &str) -> Command {
        let mut c = self.sb.cmd(program, &self.r);
        c.env("PATH", path_with(&self.bin));
        c
    }

    fn try_annex(&self, args: &[&str]) -> Output {
        self.cmd("git").arg("annex").args(args).output().unwrap()
    }

    fn annex(&self, args: &[&str]) -> String {
        let out = self.try_annex(args);
        assert!(
            out.status.success(),
            "git annex {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stores_arg(&self) -> String {
        let s: Vec<String> = self.stores.iter().map(|p| p.display().to_string()).collect();
        format!("stores={}", s.join(","))
    }

    /// Takes store `i` away (as an unmounted disk), or brings it back.
    fn hide(&self, i: usize, hidden: bool) {
        let away = self.stores[i].with_extension("away");
        if hidden {
            std::fs::rename(&self.stores[i], away).unwrap();
        } else {
            std::fs::rename(away, &self.stores[i]).unwrap();
        }
    }

    fn content(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.r.join(file)).unwrap_or_default()
    }

    /// Every file under the stores (shards, manifests, leftovers).
    fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() { walk(&p, out) } else { out.push(p) }
            }
        }
        for s in &self.stores {
            walk(s, &mut out);
        }
        out
    }
}

fn world(n: usize) -> World {
    let sb = Sandbox::new();
    let bin = sb.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_annexfs"), bin.join("git-annex-remote-annexfs")).unwrap();
    let r = sb.init_repo("r", "origin");
    let stores: Vec<PathBuf> = (0..n).map(|i| sb.path(&format!("store{i}"))).collect();
    for s in &stores {
        std::fs::create_dir_all(s).unwrap();
    }
    World { sb, r, bin, stores }
}

/// Files: small, several stripes with an odd tail, and empty.
const FILES: [(&str, u64, usize); 3] = [("small.txt", 1, 3000), ("big.bin", 2, 9_437_185), ("empty", 3, 0)];

fn add_files(w: &World) {
    for (name, seed, len) in FILES {
        w.sb.write(&w.r.join(name), &pseudo_random(seed, len));
    }
    w.annex(&["add", "-q", "."]);
    w.sb.git(&w.r, &["commit", "-q", "-m", "files"]);
}

fn want(name: &str) -> Vec<u8> {
    let (_, seed, len) = FILES.iter().find(|f| f.0 == name).copied().unwrap();
    pseudo_random(seed, len)
}

fn spread_world() -> World {
    let w = world(6);
    add_files(&w);
    w.annex(&[
        "initremote",
        "-q",
        "spread",
        "type=external",
        "externaltype=annexfs",
        "encryption=none",
        &w.stores_arg(),
        "data=4",
        "parity=2",
    ]);
    w.annex(&["copy", "-q", "--to", "spread", "."]);
    w
}

fn get_all_exact(w: &World, why: &str) {
    w.annex(&["drop", "-q", "--force", "."]);
    let out = w.try_annex(&["get", "--from", "spread", "."]);
    assert!(out.status.success(), "{why}: get: {}", String::from_utf8_lossy(&out.stderr));
    for (name, ..) in FILES {
        assert!(w.content(name) == want(name), "{why}: {name} differs");
    }
}

#[test]
fn git_annex_copy_get_fsck_drop_with_stores_gone() {
    let w = spread_world();
    // Each key's shards are spread over all six stores, the first data shard rotated.
    let shards =
        w.files().iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("shard-"))).count();
    assert_eq!(shards, 3 * 6);
    let manifests = w.files().iter().filter(|p| p.ends_with("manifest")).count();
    assert_eq!(manifests, 3 * 6);
    w.annex(&["fsck", "-q", "--from", "spread", "."]);
    let info = w.annex(&["info", "spread"]);
    assert!(info.contains("4 data + 2 parity"), "{info}");

    get_all_exact(&w, "every store up");
    w.hide(0, true);
    get_all_exact(&w, "store 0 gone");
    w.hide(3, true);
    get_all_exact(&w, "stores 0 and 3 gone");
    w.annex(&["fsck", "-q", "--from", "spread", "."]);
    w.hide(5, true);
    w.annex(&["drop", "-q", "--force", "."]);
    let out = w.try_annex(&["get", "--from", "spread", "big.bin"]);
    assert!(!out.status.success(), "got big.bin with three of six stores gone");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only") && err.contains("needed"), "the failure says why: {err}");
    assert!(!w.r.join("big.bin").exists() || w.content("big.bin").is_empty());
    for i in [0, 3, 5] {
        w.hide(i, false);
    }
    get_all_exact(&w, "every store back");
}

#[test]
fn flipped_shard_byte_is_rebuilt_reported_and_repaired() {
    let w = spread_world();
    let big: Vec<PathBuf> = w
        .files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("s9437185") && p.file_name().is_some_and(|n| n == "shard-1"))
        .collect();
    assert_eq!(big.len(), 1, "{big:?}");
    let original = std::fs::read(&big[0]).unwrap();
    let mut bad = original.clone();
    bad[1_500_000] ^= 0x40;
    std::fs::write(&big[0], &bad).unwrap();

    // CHECKPRESENT still sees k intact shards; get rebuilds the damaged piece and says so.
    w.annex(&["drop", "-q", "--force", "big.bin"]);
    let out = w.try_annex(&["get", "--from", "spread", "big.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("failed their hash") && said.contains("rebuilt from parity"), "{said}");
    assert!(w.content("big.bin") == want("big.bin"));
    let whereis = w.annex(&["whereis", "big.bin"]);
    assert!(whereis.contains("1 damaged pieces"), "{whereis}");

    let out = w.cmd(env!("CARGO_BIN_EXE_annexfs")).args(["spread", "repair", "spread"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rewrote shards [1]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(std::fs::read(&big[0]).unwrap() == original, "the shard is whole again");

    // A lost shard file is rewritten too.
    std::fs::remove_file(&big[0]).unwrap();
    let out = w.cmd(env!("CARGO_BIN_EXE_annexfs")).args(["spread", "repair", "spread"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&big[0]).unwrap() == original);

    // drop --from removes every shard and manifest; git-annex no longer counts the remote.
    w.annex(&["drop", "-q", "--force", "--from", "spread", "."]);
    assert_eq!(w.files(), Vec::<PathBuf>::new());
    let whereis = w.annex(&["whereis", "big.bin"]);
    assert!(!whereis.contains("spread"), "{whereis}");
}

#[test]
fn initremote_refuses_bad_codes_and_stores() {
    let w = world(6);
    let stores = w.stores_arg();
    let init = |extra: &[&str]| {
        let mut args = vec!["initremote", "bad", "type=external", "externaltype=annexfs", "encryption=none"];
        args.extend(extra);
        w.try_annex(&args)
    };
    for (extra, says) in [
        (vec![stores.as_str(), "data=0", "parity=2"], "data= must be at least 1"),
        (vec![stores.as_str(), "data=4", "parity=0"], "parity= must be at least 1"),
        (vec![stores.as_str(), "data=4", "parity=3"], "needs 7 stores"),
        (vec![stores.as_str(), "data=four"], "not a number"),
        (vec!["stores=relative/dir,/tmp"], "absolute"),
        (vec!["stores=/nonexistent/annexfs-a,/nonexistent/annexfs-b"], "cannot be written"),
    ] {
        let out = init(&extra);
        assert!(!out.status.success(), "{extra:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    // Remotes are listed as "UUID -- NAME" (a random UUID may itself contain "bad").
    let remotes = w.annex(&["info", "--fast"]);
    assert!(!remotes.lines().any(|l| l.split(" -- ").nth(1).is_some_and(|n| n.starts_with("bad"))), "{remotes}");
    // Defaults: six stores are 4 + 2.
    w.annex(&["initremote", "-q", "ok", "type=external", "externaltype=annexfs", "encryption=none", &stores]);
    let info = w.annex(&["info", "ok"]);
    assert!(info.contains("4 data + 2 parity"), "{info}");
}

#[test]
fn a_store_filling_up_leaves_nothing_claimed() {
    if !common::require("root (to mount a small tmpfs)", common::is_root()) {
        return;
    }
    let w = world(3);
    let full = &w.stores[1];
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(full).status().unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(full.clone());
    w.sb.write(&w.r.join("big.bin"), &pseudo_random(9, 2_000_000));
    w.annex(&["add", "-q", "big.bin"]);
    w.annex(&[
        "initremote",
        "-q",
        "spread",
        "type=external",
        "externaltype=annexfs",
        "encryption=none",
        &w.stores_arg(),
    ]);
    let out = w.try_annex(&["copy", "--to", "spread", "big.bin"]);
    assert!(!out.status.success(), "copy onto a full store succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left") || err.contains("space"), "{err}");
    let whereis = w.annex(&["whereis", "big.bin"]);
    assert!(!whereis.contains("spread"), "{whereis}");
    assert_eq!(w.files(), Vec::<PathBuf>::new(), "nothing left on the stores");
    let out = w.try_annex(&["fsck", "--fast", "--from", "spread", "big.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A PUT of an empty bucket on moto (anonymous requests are accepted there).
fn create_bucket(port: u16, bucket: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"), "{resp}");
}

#[test]
fn an_s3_store_beside_directories() {
    let Some(moto) = common::moto::binary() else {
        common::require("moto_server (moto[server] from PyPI)", false);
        return;
    };
    let w = world(3);
    let moto = common::moto::start(&moto, &w.sb.path("moto.log"));
    let port = moto.port;
    create_bucket(port, "shards");
    add_files(&w);
    let s3 = format!("s3://shards/spread?endpoint=http://127.0.0.1:{port}");
    let stores = format!("stores={},{},{s3}", w.stores[0].display(), w.stores[1].display());
    let env = [("AWS_ACCESS_KEY_ID", "annexfs-test"), ("AWS_SECRET_ACCESS_KEY", "annexfs-test-secret")];
    let run = |args: &[&str]| {
        let out = w.cmd("git").arg("annex").args(args).envs(env).output().unwrap();
        assert!(out.status.success(), "git annex {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["initremote", "-q", "spread", "type=external", "externaltype=annexfs", "encryption=none", &stores]);
    run(&["copy", "-q", "--to", "spread", "."]);
    run(&["fsck", "-q", "--from", "spread", "."]);
    // `spread repair` with no key finds the keys by listing every store: with the
    // directories' manifests gone, only the S3 listing knows them; a lost shard and the
    // manifests come back as they were.
    let sorted = |mut v: Vec<PathBuf>| {
        v.sort();
        v
    };
    let before = sorted(w.files());
    for p in before.iter().filter(|p| p.file_name().is_some_and(|n| n == "manifest")) {
        std::fs::remove_file(p).unwrap();
    }
    let lost = before
        .iter()
        .find(|p| p.to_string_lossy().contains("s9437185") && p.to_string_lossy().contains("/shard-"))
        .unwrap();
    let shard = lost.to_string_lossy().rsplit("shard-").next().unwrap().to_string();
    std::fs::remove_file(lost).unwrap();
    let out = w.cmd(env!("CARGO_BIN_EXE_annexfs")).args(["spread", "repair", "spread"]).envs(env).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("s9437185") && said.contains(&format!("rewrote shards [{shard}]")), "{said}");
    assert_eq!(sorted(w.files()), before, "{said}");
    run(&["fsck", "-q", "--from", "spread", "."]);
    // Without the directory holding a data shard of some key, the S3 parity rebuilds it.
    w.hide(0, true);
    run(&["drop", "-q", "--force", "."]);
    run(&["get", "-q", "--from", "spread", "."]);
    for (name, ..) in FILES {
        assert!(w.content(name) == want(name), "{name} differs");
    }
    // The mount reads the S3 store too (signed with the same credentials), bytes exact.
    if fuse_ok() {
        run(&["drop", "-q", "--force", "."]);
        let m = mount_env(&w, "m-s3", &env);
        assert!(std::fs::read(m.mp.join("big.bin")).unwrap() == want("big.bin"), "big.bin through the mount");
        let status = common::mount_status(&m.mp);
        let s3 = status["spread"][0]["stores"].as_array().unwrap().iter().find(|s| s["store"] == s3.as_str()).cloned();
        assert!(s3.is_some_and(|s| s["bytes"].as_u64().unwrap() > 0), "the S3 store gave nothing: {status}");
        drop(m);
        run(&["get", "-q", "--from", "spread", "."]);
    }
    w.hide(0, false);
    run(&["drop", "-q", "--force", "--from", "spread", "."]);
    assert_eq!(w.files(), Vec::<PathBuf>::new());
}

/// `annexfs sources` lists a spread remote's stores with the shard of the key each holds,
/// reachable or not; a mount limits each store to the remote's limits on its own (the
/// remote as a whole takes their sum), and `annexfs status` shows each store's bytes.
#[test]
fn sources_list_stores_and_each_store_is_limited_on_its_own() {
    if !fuse_ok() {
        return;
    }
    let w = spread_world();
    w.annex(&["drop", "-q", "--force", "."]);
    w.hide(3, true);
    let out = w.cmd(env!("CARGO_BIN_EXE_annexfs")).args(["sources", "--json", "big.bin"]).output().unwrap();
    w.hide(3, false);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = j["holders"].as_array().unwrap().iter().find(|h| h["remote"] == "spread").cloned().unwrap();
    let stores = h["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 6, "{h}");
    let mut shards: Vec<u64> = stores.iter().map(|s| s["shard"].as_u64().unwrap()).collect();
    shards.sort();
    assert_eq!(shards, vec![0, 1, 2, 3, 4, 5], "{h}");
    for s in stores {
        let gone = s["store"] == w.stores[3].display().to_string().as_str();
        let state = s["state"].as_str().unwrap();
        assert!(if gone { state.starts_with("unreachable") } else { state == "present" }, "{h}");
        assert_eq!(s["parity"], s["shard"].as_u64().unwrap() >= 4, "{h}");
    }
    let human = w.cmd(env!("CARGO_BIN_EXE_annexfs")).args(["sources", "big.bin"]).output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains(&format!("store {}: shard", w.stores[0].display())), "{human}");

    // 1 MiB/s for each store: a store gives at most its rate over the read (plus the one
    // piece its first reservation lets through), and the read takes far less than the nine
    // seconds one store's rate would need for the 9 MiB.
    w.sb.git(&w.r, &["config", "remote.spread.annexfs-bwlimit", "1MiB"]);
    let m = mount(&w, "limited");
    let t = std::time::Instant::now();
    let got = std::fs::read(m.mp.join("big.bin")).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(got == want("big.bin"), "big.bin differs");
    let status = common::mount_status(&m.mp);
    let stores = status["spread"][0]["stores"].as_array().unwrap().clone();
    let mut total = 0;
    for s in &stores {
        let bytes = s["bytes"].as_u64().unwrap();
        total += bytes;
        assert!(bytes as f64 <= (secs + 1.1) * 1048576.0, "{bytes} bytes in {secs:.2} s over 1 MiB/s: {status}");
    }
    assert!(total >= got.len() as u64, "{status}");
    assert!(secs < 8.0, "9 MiB over six stores of 1 MiB/s took {secs:.2} s: {status}");
}

fn fuse_ok() -> bool {
    common::require("/dev/fuse", Path::new("/dev/fuse").exists())
}

struct Mounted {
    mp: PathBuf,
    log: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_annexfs")).args(["umount", "--lazy"]).arg(&self.mp).output();
    }
}

fn mount(w: &World, name: &str) -> Mounted {
    mount_env(w, name, &[])
}

fn mount_env(w: &World, name: &str, env: &[(&str, &str)]) -> Mounted {
    let mp = w.sb.path(name);
    std::fs::create_dir_all(&mp).unwrap();
    let log = w.sb.path(&format!("{name}.log"));
    let cache = w.sb.path(&format!("{name}.cache"));
    let out = w
        .cmd(env!("CARGO_BIN_EXE_annexfs"))
        .envs(env.iter().copied())
        .arg("mount")
        .arg("--log-file")
        .arg(&log)
        .arg("--cache-dir")
        .arg(&cache)
        .arg(&w.r)
        .arg(&mp)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    Mounted { mp, log }
}

fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

#[test]
fn mount_reads_spread_keys_with_stores_gone() {
    if !fuse_ok() {
        return;
    }
    let w = spread_world();
    w.annex(&["drop", "-q", "--force", "."]);
    let big = want("big.bin");
    for (gone, name) in [(vec![], "m0"), (vec![2], "m1"), (vec![1, 4], "m2")] {
        for &i in &gone {
            w.hide(i, true);
        }
        let m = mount(&w, name);
        // Random reads first, then the whole file.
        let mut x: u64 = 7;
        for _ in 0..20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let off = (x >> 20) % big.len() as u64;
            let len = ((x >> 8) % 300_000) as usize + 1;
            let got = read_at(&m.mp.join("big.bin"), off, len);
            let end = (off as usize + len).min(big.len());
            assert!(got == big[off as usize..end], "{name}: bytes {off}+{len} differ");
        }
        assert!(std::fs::read(m.mp.join("big.bin")).unwrap() == big, "{name}: big.bin differs");
        assert!(std::fs::read(m.mp.join("small.txt")).unwrap() == want("small.txt"), "{name}: small.txt");
        assert_eq!(std::fs::read(m.mp.join("empty")).unwrap(), Vec::<u8>::new());
        let status = common::mount_status(&m.mp);
        let spread = &status["spread"][0];
        assert_eq!(spread["remote"], "spread", "{status}");
        let decoded = spread["decoded_pieces"].as_u64().unwrap();
        let stores = spread["stores"].as_array().unwrap();
        assert_eq!(stores.len(), 6, "{status}");
        let bytes: u64 = stores.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
        assert!(bytes >= big.len() as u64, "{name}: the stores gave {bytes} bytes: {status}");
        for &i in &gone {
            assert_eq!(stores[i]["bytes"], 0, "{name}: store {i} is gone: {status}");
        }
        if !gone.is_empty() {
            assert!(decoded > 0, "{name}: no decoded pieces counted: {status}");
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            assert!(log.contains("spread shard unavailable"), "{log}");
        }
        drop(m);
        for &i in &gone {
            w.hide(i, false);
        }
    }
    // A flipped byte in a data shard: found by its hash, rebuilt, counted as a failure of
    // that store; the bytes read are exact.
    let shard = w
        .files()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("s9437185") && p.file_name().is_some_and(|n| n == "shard-0"))
        .unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let m = mount(&w, "flipped");
    assert!(std::fs::read(m.mp.join("big.bin")).unwrap() == big, "flipped: big.bin differs");
    let status = common::mount_status(&m.mp);
    let failures: u64 =
        status["spread"][0]["stores"].as_array().unwrap().iter().map(|s| s["failures"].as_u64().unwrap()).sum();
    assert!(failures >= 1, "{status}");
    assert!(status["spread"][0]["decoded_pieces"].as_u64().unwrap() >= 1, "{status}");
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(log.contains("spread piece fails its hash"), "{log}");
    drop(m);
    // m + 1 stores gone: EIO, never wrong bytes.
    for i in [0, 2, 4] {
        w.hide(i, true);
    }
    let m = mount(&w, "three-gone");
    let r = std::fs::read(m.mp.join("big.bin"));
    assert!(r.is_err(), "read big.bin with three of six stores gone");
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    drop(m);
    for i in [0, 2, 4] {
        w.hide(i, false);
    }
}
