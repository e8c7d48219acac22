//! The swarm's rules come only from commits `git verify-commit` accepts (ssh signatures with
//! `gpg.ssh.allowedSignersFile` here). Alice's signed rules are obeyed; an unsigned change and
//! one signed by Mallory (a key the allowed signers do not list) are refused and Alice's rules
//! hold; a commit that leaves `[swarm]` alone is no rules change; `annexfs.signers` narrows the
//! signers; a mount's status shows the rules in force and the refusals, and the nodes with the
//! space each offers the swarm.

mod common;

use annexfs::swarm::rules::{self, RulesState};
use common::{Sandbox, have, require};
use std::path::Path;

fn keygen(sb: &Sandbox, name: &str) -> String {
    let key = sb.path(name);
    sb.git(sb.dir.path(), &["--version"]);
    let out = sb
        .cmd("ssh-keygen", sb.dir.path())
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(sb.path(&format!("{name}.pub"))).unwrap().trim().to_string()
}

fn commit(sb: &Sandbox, r: &Path, text: &str, signer: Option<&str>, msg: &str) -> String {
    sb.write(&r.join(".annexfs.toml"), text.as_bytes());
    sb.git(r, &["add", ".annexfs.toml"]);
    match signer {
        Some(k) => {
            let key = sb.path(&format!("{k}.pub"));
            sb.git(r, &["-c", &format!("user.signingkey={}", key.display()), "commit", "-q", "-S", "-m", msg])
        }
        None => sb.git(r, &["commit", "-q", "-m", msg]),
    };
    sb.git(r, &["rev-parse", "HEAD"]).trim().to_string()
}

fn load(r: &Path, signers: &[&str]) -> RulesState {
    let signers: Vec<String> = signers.iter().map(|s| s.to_string()).collect();
    rules::load(&r.join(".git"), &signers)
}

#[test]
fn rules_are_obeyed_only_from_commits_git_verifies() {
    if !require("ssh-keygen", have("ssh-keygen", "-V") || Path::new("/usr/bin/ssh-keygen").exists()) {
        return;
    }
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    let alice = keygen(&sb, "alice");
    keygen(&sb, "mallory");
    let allowed = sb.path("allowed_signers");
    std::fs::write(&allowed, format!("alice@annexfs.invalid namespaces=\"git\" {alice}\n")).unwrap();
    sb.git(&r, &["config", "gpg.format", "ssh"]);
    sb.git(&r, &["config", "gpg.ssh.allowedSignersFile", allowed.to_str().unwrap()]);

    let c1 = commit(&sb, &r, "[swarm]\ncopies = 2\ninclude = \"*.bin\"\n", Some("alice"), "rules");
    let st = load(&r, &[]);
    assert_eq!(st.commit.as_deref(), Some(c1.as_str()));
    assert_eq!(st.signer.as_deref(), Some("alice@annexfs.invalid"));
    assert_eq!(st.rules.as_ref().unwrap().copies, 2);
    assert!(st.refused.is_empty());

    let c2 = commit(&sb, &r, "[swarm]\ncopies = 5\n", None, "unsigned rules");
    let c3 = commit(&sb, &r, "[swarm]\ncopies = 7\n", Some("mallory"), "rules by mallory");
    // A change of another section only, unsigned: not a rules change.
    commit(&sb, &r, "[cache]\nsize = \"1G\"\n[swarm]\ncopies = 7\n", None, "cache");
    let st = load(&r, &[]);
    assert_eq!(st.commit.as_deref(), Some(c1.as_str()), "Alice's rules hold: {st:?}");
    assert_eq!(st.rules.as_ref().unwrap().copies, 2);
    assert_eq!(st.refused.len(), 2, "{st:?}");
    assert_eq!(st.refused[0].commit, c3);
    assert!(st.refused[0].why.contains("git verify-commit refuses its signature"), "{st:?}");
    assert_eq!(st.refused[1].commit, c2);
    assert_eq!(st.refused[1].why, "not signed");

    // Narrowed to Bob: Alice's commit is refused too, and no rules are in force.
    let st = load(&r, &["bob@annexfs.invalid"]);
    assert!(st.rules.is_none() && st.commit.is_none(), "{st:?}");
    assert_eq!(st.refused.len(), 3);
    assert!(st.refused[2].why.contains("not among annexfs.signers"), "{st:?}");

    // A mount shows them (its git config narrows nothing).
    let m = common::mnt::mount(&sb, &r, "m", &["--cache-dir", sb.path("cache").to_str().unwrap()]);
    let status = common::mount_status(&m.mp);
    let rs = &status["swarm_rules"];
    assert_eq!(rs["commit"], c1.as_str(), "{status}");
    assert_eq!(rs["rules"]["copies"], 2, "{status}");
    assert_eq!(rs["refused"].as_array().unwrap().len(), 2, "{status}");
    let text = sb.annexfs(sb.dir.path(), &["status", m.mp.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("swarm rules change refused") && text.contains("not signed"), "{text}");
    assert!(m.log().contains("is refused: not signed"), "logged: {}", m.log());
}

#[test]
fn nodes_show_the_space_they_offer_the_swarm() {
    let sb = Sandbox::new();
    let o = sb.init_repo("o", "origin");
    sb.write(&o.join("f.txt"), b"x\n");
    sb.annex(&o, &["add", "-q", "f.txt"]);
    sb.git(&o, &["commit", "-q", "-m", "f"]);
    let b = sb.path("b");
    sb.git(sb.dir.path(), &["clone", "-q", o.to_str().unwrap(), b.to_str().unwrap()]);
    sb.annex(&b, &["init", "-q", "b"]);
    sb.git(&b, &["config", "annex.security.allowed-ip-addresses", "127.0.0.1"]);
    let pa = common::free_port();
    let _a = common::swarm::serve(&sb, &o, pa, &["--keep", "1G"]);
    let url_a = format!("http://127.0.0.1:{pa}");
    let m = common::mnt::mount(
        &sb,
        &b,
        "m",
        &["-o", &format!("keep=512M,peer={url_a}"), "--cache-dir", sb.path("cache").to_str().unwrap()],
    );
    let st = common::mount_status(&m.mp);
    let nodes = st["swarm_nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["offered"], 512u64 << 20, "this node first: {st}");
    let a = nodes.iter().find(|n| n["url"] == url_a.as_str()).unwrap_or_else(|| panic!("A is a node: {st}"));
    assert_eq!(a["offered"], 1u64 << 30, "{st}");
    let origin_uuid = sb.git(&o, &["config", "annex.uuid"]).trim().to_string();
    assert_eq!(a["uuid"], origin_uuid.as_str());
    // The keeper of a node offering space reports, and keeps nothing without signed rules.
    common::wait_until(std::time::Duration::from_secs(30), "the keeper's first round", || {
        common::mount_status(&m.mp)["swarm_keep"]["rounds"].as_u64().unwrap_or(0) > 0
    });
    let st = common::mount_status(&m.mp);
    assert!(st["swarm_keep"]["rules"] == false && st["swarm_keep"]["offered"] == 512u64 << 20, "{st}");
    assert_eq!(st["swarm_keep"]["assigned_pieces"], 0, "{st}");
    let text = sb.annexfs(sb.dir.path(), &["status", m.mp.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("swarm space offered") && text.contains(&url_a), "{text}");
    assert!(text.contains("swarm keep: no signed rules in force"), "{text}");
}
