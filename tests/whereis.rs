//! `annexfs sources` agrees with `git annex whereis --json` on real repositories built with
//! the git-annex CLI: journal-only facts, facts only on a fetched-but-unmerged remote
//! git-annex branch, dead / untrusted / private remotes, chunked and legacy-chunked directory
//! remotes, an encrypted remote, a bare remote, web URLs with spaces. It also checks that
//! every readable location really holds the content, byte for byte, and that annexfs leaves
//! the repository untouched.

mod common;

use common::{Sandbox, json_lines, pseudo_random, tree_fingerprint};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct World {
    sb: Sandbox,
    r: PathBuf,
    /// file → original content
    files: BTreeMap<String, Vec<u8>>,
}

fn key_of(sb: &Sandbox, repo: &Path, file: &str) -> String {
    sb.annex(repo, &["lookupkey", file]).trim().to_string()
}

fn uuid_of_remote(sb: &Sandbox, repo: &Path, name: &str) -> String {
    sb.git(repo, &["config", &format!("remote.{name}.annex-uuid")]).trim().to_string()
}

fn build_world() -> World {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "origin repo");
    sb.git(&r, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let mut files = BTreeMap::new();
    for (name, content) in [
        ("a.txt", b"hello a\n".to_vec()),
        ("sub/my file.txt", b"in a subdirectory with a space\n".to_vec()),
        ("sub/deeper/ü nïcode.bin", pseudo_random(1, 5000)),
        ("big.bin", pseudo_random(2, 100_000)),
        ("empty.txt", Vec::new()),
        ("worm.txt", b"worm content\n".to_vec()),
    ] {
        sb.write(&r.join(name), &content);
        files.insert(name.to_string(), content);
    }
    sb.annex(&r, &["add", "-q", "--backend=WORM", "worm.txt"]);
    sb.annex(&r, &["add", "-q", "."]);
    sb.git(&r, &["commit", "-q", "-m", "add files"]);

    for (name, extra) in [
        ("dplain", vec![]),
        ("dchunk", vec!["chunk=30KiB"]),
        ("dlegacy", vec!["chunksize=25000"]),
        ("denc", vec!["chunk=40000"]),
        ("ddead", vec![]),
    ] {
        let dir = sb.path(&format!("dirs/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "initremote".to_string(),
            "-q".into(),
            name.into(),
            "type=directory".into(),
            format!("directory={}", dir.display()),
        ];
        args.push(if name == "denc" { "encryption=shared".into() } else { "encryption=none".into() });
        args.extend(extra.iter().map(|s| s.to_string()));
        sb.annex(&r, &args);
    }
    for remote in ["dplain", "dchunk", "dlegacy", "denc"] {
        sb.annex(&r, &["copy", "-q", "--to", remote, "big.bin", "sub/deeper/ü nïcode.bin"]);
    }
    sb.annex(&r, &["copy", "-q", "--to", "ddead", "a.txt"]);
    sb.annex(&r, &["dead", "-q", "ddead"]);
    sb.annex(&r, &["untrust", "-q", "dlegacy"]);

    // A private remote: its facts exist only in .git/annex/journal-private.
    let dpriv = sb.path("dirs/dpriv");
    std::fs::create_dir_all(&dpriv).unwrap();
    sb.annex(
        &r,
        &[
            "initremote",
            "-q",
            "dpriv",
            "--private",
            "type=directory",
            &format!("directory={}", dpriv.display()),
            "encryption=none",
        ],
    );
    sb.annex(&r, &["copy", "-q", "--to", "dpriv", "a.txt"]);

    // A bare remote (lower hash directories first).
    let b = sb.path("b.git");
    sb.git(sb.dir.path(), &["clone", "-q", "--bare", r.to_str().unwrap(), b.to_str().unwrap()]);
    sb.annex(&b, &["init", "-q", "bare remote"]);
    sb.git(&r, &["remote", "add", "b", "../b.git"]);
    sb.annex(&r, &["copy", "-q", "--to", "b", "sub/my file.txt"]);

    // Web URLs, one with spaces; a URL-only file.
    let akey = key_of(&sb, &r, "a.txt");
    sb.annex(&r, &["registerurl", &akey, "http://127.0.0.1:9/with space/a.txt"]);
    sb.annex(&r, &["registerurl", &akey, "https://mirror.example.net/a.txt"]);
    sb.annex(
        &r,
        &["addurl", "-q", "--relaxed", "http://example.com/dir/some file.txt?x=1&y=2", "--file", "urlfile.txt"],
    );
    sb.git(&r, &["commit", "-q", "-m", "urls"]);

    // Content only on remotes.
    sb.annex(&r, &["drop", "-q", "--force", "big.bin", "sub/deeper/ü nïcode.bin"]);

    // A clone that gets a.txt and is then fetched, not merged: its location log line exists
    // only on refs/remotes/c/git-annex.
    let c = sb.path("c");
    sb.git(sb.dir.path(), &["clone", "-q", r.to_str().unwrap(), c.to_str().unwrap()]);
    sb.annex(&c, &["init", "-q", "clone c"]);
    sb.annex(&c, &["get", "-q", "a.txt"]);
    sb.git(&r, &["remote", "add", "c", "../c"]);
    sb.git(&r, &["config", "remote.c.annex-trustlevel", "untrusted"]);

    // A fact only in the journal (never committed).
    let wkey = key_of(&sb, &r, "worm.txt");
    let buuid = uuid_of_remote(&sb, &r, "b");
    sb.git(&r, &["-c", "annex.alwayscommit=false", "annex", "setpresentkey", &wkey, &buuid, "1"]);
    assert!(std::fs::read_dir(r.join(".git/annex/journal")).unwrap().next().is_some(), "journal should hold a fact");

    // Fetch c with plain git: no git-annex command runs in r after this, so nothing merges.
    sb.git(&r, &["fetch", "-q", "c"]);
    sb.git(&r, &["config", "remote.c.annex-uuid", sb.git(&c, &["config", "annex.uuid"]).trim()]);
    World { sb, r, files }
}

/// The holder UUIDs and URLs git-annex reports for each file.
fn whereis(sb: &Sandbox, repo: &Path, files: &[&str]) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut args = vec!["whereis", "--json"];
    args.extend(files);
    let out = sb.cmd("git", repo).arg("annex").args(&args).output().unwrap();
    let mut m = BTreeMap::new();
    for v in json_lines(&out.stdout) {
        let mut uuids = BTreeSet::new();
        let mut urls = BTreeSet::new();
        for list in ["whereis", "untrusted"] {
            for e in v[list].as_array().unwrap() {
                uuids.insert(e["uuid"].as_str().unwrap().to_string());
                for u in e["urls"].as_array().unwrap() {
                    urls.insert(u.as_str().unwrap().to_string());
                }
            }
        }
        m.insert(v["file"].as_str().unwrap().to_string(), (uuids, urls));
    }
    m
}

fn sources(sb: &Sandbox, repo: &Path, files: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec!["sources", "--json"];
    args.extend(files);
    let out = sb.annexfs(repo, &args);
    assert!(out.status.success(), "annexfs sources failed: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout).into_iter().map(|v| (v["file"].as_str().unwrap().to_string(), v)).collect()
}

fn holder<'a>(v: &'a Value, remote: &str) -> Option<&'a Value> {
    v["holders"].as_array().unwrap().iter().find(|h| h["remote"].as_str() == Some(remote))
}

/// Reads the content a holder's locations point at (whole file or chunks in order).
fn read_locations(h: &Value) -> Vec<u8> {
    let locs: Vec<&str> = h["locations"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let local: Vec<&str> = locs.iter().copied().filter(|l| l.starts_with('/')).collect();
    let first = std::fs::read(local[0]).unwrap();
    if local.len() == 1 {
        return first;
    }
    // Chunked: every entry is one chunk, in order.
    local.iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn sources_match_whereis_and_locations_hold_the_content() {
    let w = build_world();
    let sb = &w.sb;
    let mut names: Vec<&str> = w.files.keys().map(String::as_str).collect();
    names.push("urlfile.txt");

    let before = tree_fingerprint(&w.r);
    let ours = sources(sb, &w.r, &names);
    assert_eq!(tree_fingerprint(&w.r), before, "annexfs sources changed the repository");
    // Only now let git-annex run in r (it merges the fetched branch and commits the journal).
    let theirs = whereis(sb, &w.r, &names);

    for name in &names {
        let o = &ours[*name];
        let (uuids, urls) = &theirs[*name];
        let our_uuids: BTreeSet<String> =
            o["holders"].as_array().unwrap().iter().map(|h| h["uuid"].as_str().unwrap().to_string()).collect();
        assert_eq!(&our_uuids, uuids, "holders of {name}");
        let our_locs: BTreeSet<String> = o["holders"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|h| h["locations"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()))
            .collect();
        for u in urls {
            assert!(our_locs.contains(u), "URL {u} of {name} missing from {our_locs:?}");
        }
    }

    // Every readable local location holds exactly the content.
    for (name, content) in &w.files {
        for h in ours[name]["holders"].as_array().unwrap() {
            if h["readable"] == true && h["locations"][0].as_str().is_some_and(|l| l.starts_with('/')) {
                assert_eq!(&read_locations(h), content, "content of {name} at {}", h["locations"]);
            }
        }
    }

    let big = &ours["big.bin"];
    assert_eq!(
        holder(big, "dchunk").unwrap()["locations"].as_array().unwrap().len(),
        4,
        "100000 bytes in 30KiB chunks"
    );
    assert_eq!(holder(big, "dlegacy").unwrap()["locations"].as_array().unwrap().len(), 4, "legacy chunks");
    assert_eq!(holder(big, "dlegacy").unwrap()["trust"], "untrusted");
    let denc = holder(big, "denc").unwrap();
    assert_eq!(denc["readable"], false);
    assert!(denc["reason"].as_str().unwrap().contains("encrypted"));
    assert!(!big["holders"].as_array().unwrap().iter().any(|h| h["here"] == true), "big.bin was dropped here");
    // Try order: readable and cheapest first.
    let costs: Vec<(bool, u64)> = big["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["readable"] == false, h["cost"].as_u64().unwrap()))
        .collect();
    let mut sorted = costs.clone();
    sorted.sort();
    assert_eq!(costs, sorted);

    let a = &ours["a.txt"];
    assert_eq!(a["holders"][0]["here"], true, "content here is tried first");
    assert!(holder(a, "ddead").is_none(), "dead remote must not be listed");
    assert!(holder(a, "dpriv").is_some(), "private remote facts come from journal-private");
    let c = holder(a, "c").expect("a fact only on the unmerged c/git-annex");
    assert_eq!(c["trust"], "untrusted", "remote.c.annex-trustlevel overrides");
    assert_eq!(read_locations(c), w.files["a.txt"]);
    let web =
        a["holders"].as_array().unwrap().iter().find(|h| h["uuid"] == "00000000-0000-0000-0000-000000000001").unwrap();
    assert_eq!(web["description"], "web");
    let web_locs = web["locations"].as_array().unwrap();
    assert!(web_locs.iter().any(|l| l == "http://127.0.0.1:9/with space/a.txt"), "allowed loopback URL: {web_locs:?}");

    let worm = &ours["worm.txt"];
    let b = holder(worm, "b").expect("a fact only in the journal");
    assert_eq!(b["readable"], false, "b.git does not really have worm.txt");
    let myfile = &ours["sub/my file.txt"];
    assert_eq!(read_locations(holder(myfile, "b").unwrap()), w.files["sub/my file.txt"]);
    assert!(holder(myfile, "b").unwrap()["locations"][0].as_str().unwrap().contains("/b.git/annex/objects/"));

    let url = &ours["urlfile.txt"];
    assert_eq!(url["size"], Value::Null);
    // URL keys (VURL since git-annex 10.2025) carry the sanitised URL.
    assert!(url["key"].as_str().unwrap().contains("URL--http://example.com/dir/some,32file.txt"), "{}", url["key"]);
}

#[test]
fn errors_name_each_bad_path_and_report_the_rest() {
    let w = build_world();
    let sb = &w.sb;
    std::fs::write(w.r.join("untracked.txt"), b"x").unwrap();
    sb.write(&w.r.join("plain.txt"), b"plain");
    sb.git(&w.r, &["-c", "annex.largefiles=nothing", "add", "plain.txt"]);
    let outside = sb.path("outside.txt");
    std::fs::write(&outside, b"x").unwrap();
    let out = sb.annexfs(
        &w.r,
        &["sources", "--json", "missing.txt", "a.txt", "untracked.txt", "plain.txt", outside.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "one line per bad path: {stderr}");
    assert!(lines[0].contains("missing.txt") && lines[0].contains("no such file"));
    assert!(lines[1].contains("untracked.txt"));
    assert!(lines[2].contains("plain.txt") && lines[2].contains("not an annexed file"));
    assert!(lines[3].contains("outside.txt") && lines[3].contains("not in the repository"));
    let ours = json_lines(&out.stdout);
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["file"], "a.txt");

    let notrepo = sb.path("notrepo");
    std::fs::create_dir_all(&notrepo).unwrap();
    let out = sb.annexfs(&notrepo, &["sources", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a git repository"));
}

#[test]
fn works_in_a_clone_never_annex_inited_and_directories_recurse() {
    let w = build_world();
    let sb = &w.sb;
    let n = sb.path("n");
    sb.git(sb.dir.path(), &["clone", "-q", w.r.to_str().unwrap(), n.to_str().unwrap()]);
    assert!(sb.git(&n, &["branch", "--list", "git-annex"]).trim().is_empty());
    let before = tree_fingerprint(&n);
    let ours = sources(sb, &n, &["sub"]);
    assert_eq!(tree_fingerprint(&n), before, "annexfs changed the clone");
    assert_eq!(ours.keys().collect::<Vec<_>>(), vec!["sub/deeper/ü nïcode.bin", "sub/my file.txt"]);
    let theirs = whereis(sb, &n, &["sub/my file.txt", "sub/deeper/ü nïcode.bin"]);
    for (file, (uuids, _)) in theirs {
        let our: BTreeSet<String> = ours[&file]["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["uuid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(our, uuids, "{file}");
    }
}

#[test]
fn works_as_a_user_who_cannot_write_the_repository() {
    if !common::require("root (to run a command as another user)", common::is_root()) {
        return;
    }
    let w = build_world();
    let sb = &w.sb;
    std::fs::set_permissions(sb.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let as_root = sources(sb, &w.r, &["a.txt", "sub/my file.txt"]);
    let before = tree_fingerprint(&w.r);
    let out = sb
        .cmd("setpriv", &w.r)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_annexfs"))
        .args(["sources", "--json", "a.txt", "sub/my file.txt"])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "as nobody: {}", String::from_utf8_lossy(&out.stderr));
    let as_nobody: BTreeMap<String, Value> =
        json_lines(&out.stdout).into_iter().map(|v| (v["file"].as_str().unwrap().to_string(), v)).collect();
    assert_eq!(as_nobody, as_root);
    assert_eq!(tree_fingerprint(&w.r), before);
}
