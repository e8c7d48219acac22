//! Bad input gets git-annex's answer or a clear error, never a panic: garbage and CRLF log
//! lines, truncated journal appends, equal timestamps, huge sizes, and trees with names git's
//! fsck warns about.

mod common;

use annexfs::annex::namespace::{BlobClassifier, EntryKind, Namespace};
use common::{Sandbox, json_lines};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

fn holders(v: &Value) -> BTreeSet<String> {
    v["holders"].as_array().unwrap().iter().map(|h| h["uuid"].as_str().unwrap().to_string()).collect()
}

fn whereis_uuids(sb: &Sandbox, repo: &Path, file: &str) -> BTreeSet<String> {
    let out = sb.cmd("git", repo).args(["annex", "whereis", "--json", file]).output().unwrap();
    let v = &json_lines(&out.stdout)[0];
    ["whereis", "untrusted"]
        .iter()
        .flat_map(|l| v[l].as_array().unwrap().iter().map(|e| e["uuid"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn hand_written_journal_with_garbage_ties_crlf_and_a_truncated_append() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    sb.write(&r.join("f.txt"), b"content\n");
    sb.annex(&r, &["add", "-q", "f.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let key = sb.annex(&r, &["lookupkey", "f.txt"]).trim().to_string();
    let hashdir = sb.annex(&r, &["examinekey", "--format=${hashdirlower}", &key]);
    let branch_path = format!("{hashdir}{key}.log");
    let jname = branch_path.replace('_', "__").replace('/', "_");
    let own = sb.git(&r, &["config", "annex.uuid"]).trim().to_string();
    let u = |n: u32| format!("aaaaaaaa-0000-0000-0000-{n:012}");
    // The journal replaces the branch's file for git-annex: copy the branch's lines first.
    let mut log = sb.git(&r, &["show", &format!("git-annex:{branch_path}")]);
    log.push_str(&format!(
        "1795300000s 1 {u1}\n1795300000s 0 {u1}\n1795300000s 0 {u2}\n1795300000s 1 {u2}\n\
         1795300001.5 1 {u3}\n1795300001 0 {u3}\ngarbage line\n\n\r\n1795300002s 1 {u4}\r\n\
         1795300003.000000000001s 0 {u5}\n1795300003s 1 {u5}\n\
         notatime 1 {u6}\n1795300004s 7 {u6}\n1795300004s 1\n\
         1795300009s 1 {u7}",
        u1 = u(1),
        u2 = u(2),
        u3 = u(3),
        u4 = u(4),
        u5 = u(5),
        u6 = u(6),
        u7 = u(7),
    ));
    std::fs::create_dir_all(r.join(".git/annex/journal")).unwrap();
    std::fs::write(r.join(".git/annex/journal").join(&jname), log).unwrap();

    let out = sb.annexfs(&r, &["sources", "--json", "f.txt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours = holders(&json_lines(&out.stdout)[0]);
    // An unterminated last line still counts: git-annex's whereis reads it too.
    let expected: BTreeSet<String> = [own.clone(), u(1), u(3), u(4), u(7)].into_iter().collect();
    assert_eq!(ours, expected, "the tie, CRLF, garbage and truncation rules");
    assert_eq!(ours, whereis_uuids(&sb, &r, "f.txt"), "and git-annex agrees");
}

#[test]
fn garbage_top_level_logs_and_huge_sizes() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    // A pointer to a key whose size does not fit 64 bits, and logs full of junk.
    sb.write(&r.join("huge.bin"), b"/annex/objects/SHA256E-s99999999999999999999999--abc.bin\n");
    sb.git(&r, &["add", "huge.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "huge"]);
    let junk: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    for f in ["uuid.log", "trust.log", "remote.log", "numcopies.log"] {
        std::fs::create_dir_all(r.join(".git/annex/journal")).unwrap();
        let branch = sb.cmd("git", &r).args(["show", &format!("git-annex:{f}")]).output().unwrap();
        let mut content = if branch.status.success() { branch.stdout } else { Vec::new() };
        content.extend_from_slice(&junk);
        content.extend_from_slice(b"\n");
        std::fs::write(r.join(".git/annex/journal").join(f), content).unwrap();
    }
    let out = sb.annexfs(&r, &["sources", "--json", "huge.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = &json_lines(&out.stdout)[0];
    assert_eq!(v["key"], "SHA256E-s99999999999999999999999--abc.bin");
    assert_eq!(v["size"], Value::Null, "a size beyond u64 is unknown");
    assert!(holders(v).is_empty());
    assert_eq!(holders(v), whereis_uuids(&sb, &r, "huge.bin"));
}

/// Writes a raw tree object with the given (mode, name, oid) entries, bypassing git's checks.
fn raw_tree(sb: &Sandbox, repo: &Path, entries: &[(&str, &[u8], &str)]) -> String {
    let mut data = Vec::new();
    for (mode, name, oid) in entries {
        data.extend_from_slice(mode.as_bytes());
        data.push(b' ');
        data.extend_from_slice(name);
        data.push(0);
        let hex = oid.as_bytes();
        for i in (0..40).step_by(2) {
            data.push(u8::from_str_radix(std::str::from_utf8(&hex[i..i + 2]).unwrap(), 16).unwrap());
        }
    }
    let mut child = sb
        .cmd("git", repo)
        .args(["hash-object", "-t", "tree", "--literally", "-w", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn malicious_names_in_trees_are_dropped_not_followed() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    sb.write(&r.join("ok.txt"), b"fine\n");
    sb.annex(&r, &["add", "-q", "ok.txt"]);
    sb.git(&r, &["commit", "-q", "-m", "ok"]);
    let link = sb.git(&r, &["rev-parse", "HEAD:ok.txt"]).trim().to_string();
    let blob = sb.git(&r, &["hash-object", "-w", "--stdin"]); // empty blob
    let blob = blob.trim();
    let inner = raw_tree(&sb, &r, &[("100644", b"config", blob)]);
    // Entries must be sorted by name for git; libgit2 reads them in any order.
    let tree = raw_tree(
        &sb,
        &r,
        &[
            ("40000", b".", &inner),
            ("40000", b"..", &inner),
            ("40000", b".GIT", &inner),
            ("40000", b".git", &inner),
            ("100644", b".git.", blob),
            ("100644", b"GIT~1", blob),
            ("100644", ".g\u{200c}it".as_bytes(), blob),
            ("40000", b"good", &inner),
            ("120000", b"ok.txt", &link),
            ("100644", b"plain", blob),
        ],
    );
    let repo = git2::Repository::open(&r).unwrap();
    let oid = git2::Oid::from_str(&tree).unwrap();
    let ns = Namespace::from_tree(&repo, oid, std::time::SystemTime::UNIX_EPOCH, &mut BlobClassifier::default())
        .expect("a tree with odd names is read, not refused");
    let names: Vec<String> = ns.files().iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(names, vec!["good/config", "ok.txt", "plain"]);
    assert_eq!(ns.dropped.len(), 7, "dropped: {:?}", ns.dropped);
    let ok = ns.lookup(b"ok.txt").unwrap();
    assert!(matches!(ns.kind(ok), Some(EntryKind::Annexed(_))));
    assert!(ns.lookup(b".git").is_none());
}
