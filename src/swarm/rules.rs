//! The swarm's rules: which files the swarm keeps, in how many copies, with what limits per
//! node or group. They live in the `[swarm]` section of the committed `.annexfs.toml`:
//!
//! ```toml
//! [swarm]
//! copies = 2                    # copies of each wanted piece among the live nodes
//! include = ["*.bin", "data/*"] # git-annex preferred-content terms where they fit:
//! exclude = ["*.tmp"]           #   globs on the path (`*` also crosses `/`),
//! largerthan = "1M"             #   sizes,
//! smallerthan = "10G"
//! metadata = ["tag=keep"]       #   metadata field=glob (every term must hold)
//! [swarm.node."UUID"]           # one node (its repository UUID)
//! keep = "20G"                  #   at most this much kept for the swarm
//! bwlimit = "10MiB"             #   fetched per second for the swarm
//! [swarm.group.lan]             # every node in a git-annex group
//! keep = "100G"
//! ```
//!
//! Everything is wanted by default. A node obeys the rules only from a commit that
//! `git verify-commit` accepts (git's own verification as the node's git config sets it up:
//! ssh signatures with `gpg.ssh.allowedSignersFile`, or gpg with its keyring), and when
//! `git config annexfs.signers` names signers, only from one of those. Walking back from HEAD
//! over the commits that change `[swarm]`, the newest accepted one gives the rules; every newer
//! change is refused, with a log line and a status entry saying why ([`RulesState`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Commits changing `.annexfs.toml` looked at, newest first, at most.
const HISTORY: usize = 200;
/// The git config naming the signers whose rules a node obeys (space or comma separated).
pub const SIGNERS_CONFIG: &str = "annexfs.signers";

/// Limits of a node (or of each node of a group) in the swarm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLimits {
    /// Bytes kept for the swarm, at most.
    pub keep: Option<u64>,
    /// Bytes per second fetched for the swarm.
    pub bwlimit: Option<u64>,
}

/// The rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub copies: u32,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub largerthan: Option<u64>,
    pub smallerthan: Option<u64>,
    /// `field=glob` terms.
    pub metadata: Vec<(String, String)>,
    pub nodes: BTreeMap<String, NodeLimits>,
    pub groups: BTreeMap<String, NodeLimits>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            copies: 1,
            include: Vec::new(),
            exclude: Vec::new(),
            largerthan: None,
            smallerthan: None,
            metadata: Vec::new(),
            nodes: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }
}

/// Why a `[swarm]` section was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("[swarm]: {0}")]
    Toml(String),
    #[error("[swarm] {what}: not a size: {text:?}")]
    NotASize { what: String, text: String },
    #[error("[swarm] metadata term {0:?} is not field=glob")]
    Metadata(String),
    #[error("[swarm] copies must be at least 1")]
    Copies,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(v: Option<OneOrMany>) -> Vec<String> {
        match v {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    keep: Option<Size>,
    bwlimit: Option<Size>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    copies: Option<u32>,
    include: Option<OneOrMany>,
    exclude: Option<OneOrMany>,
    largerthan: Option<Size>,
    smallerthan: Option<Size>,
    metadata: Option<OneOrMany>,
    #[serde(default)]
    node: BTreeMap<String, RawLimits>,
    #[serde(default)]
    group: BTreeMap<String, RawLimits>,
}

fn size(s: Option<Size>, what: &str) -> Result<Option<u64>, RulesError> {
    match s {
        None => Ok(None),
        Some(Size::Number(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => crate::annex::settings::parse_size(&t)
            .map(Some)
            .ok_or_else(|| RulesError::NotASize { what: what.to_string(), text: t }),
    }
}

fn limits(r: RawLimits, what: &str) -> Result<NodeLimits, RulesError> {
    Ok(NodeLimits {
        keep: size(r.keep, &format!("{what}.keep"))?,
        bwlimit: size(r.bwlimit, &format!("{what}.bwlimit"))?,
    })
}

/// The `[swarm]` section of a `.annexfs.toml` text, as TOML (`None`: no such section).
fn section(text: &str) -> Result<Option<toml::Value>, RulesError> {
    let t: toml::Table = toml::from_str(text).map_err(|e| RulesError::Toml(e.to_string()))?;
    Ok(t.get("swarm").cloned())
}

impl Rules {
    /// The rules of a `[swarm]` section.
    fn from_section(v: toml::Value) -> Result<Rules, RulesError> {
        let raw: RawRules = v.try_into().map_err(|e: toml::de::Error| RulesError::Toml(e.to_string()))?;
        let copies = raw.copies.unwrap_or(1);
        if copies == 0 {
            return Err(RulesError::Copies);
        }
        let metadata = OneOrMany::list(raw.metadata)
            .into_iter()
            .map(|t| match t.split_once('=') {
                Some((f, g)) if !f.trim().is_empty() => Ok((f.trim().to_lowercase(), g.trim().to_string())),
                _ => Err(RulesError::Metadata(t)),
            })
            .collect::<Result<_, _>>()?;
        let mut r = Rules {
            copies,
            include: OneOrMany::list(raw.include),
            exclude: OneOrMany::list(raw.exclude),
            largerthan: size(raw.largerthan, "largerthan")?,
            smallerthan: size(raw.smallerthan, "smallerthan")?,
            metadata,
            ..Rules::default()
        };
        for (n, l) in raw.node {
            let l = limits(l, &format!("node.{n}"))?;
            r.nodes.insert(n, l);
        }
        for (g, l) in raw.group {
            let l = limits(l, &format!("group.{g}"))?;
            r.groups.insert(g, l);
        }
        Ok(r)
    }

    /// The rules in a `.annexfs.toml` text (`None`: it has no `[swarm]`).
    pub fn parse(text: &str) -> Result<Option<Rules>, RulesError> {
        section(text)?.map(Rules::from_section).transpose()
    }

    /// Whether the swarm keeps the file at `path` (relative to the repository's top) of
    /// `size` bytes with `metadata` (field, lowercased → values).
    pub fn wants(&self, path: &str, size: u64, metadata: &BTreeMap<String, Vec<String>>) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| glob(g, path)))
            && !self.exclude.iter().any(|g| glob(g, path))
            && self.largerthan.is_none_or(|n| size > n)
            && self.smallerthan.is_none_or(|n| size < n)
            && self.metadata.iter().all(|(f, g)| metadata.get(f).is_some_and(|vs| vs.iter().any(|v| glob(g, v))))
    }

    /// The limits of the node `uuid` in git-annex groups `groups`: its own section first,
    /// then the tightest of its groups'.
    pub fn limits_for(&self, uuid: &str, groups: &[String]) -> NodeLimits {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let by_group = groups.iter().filter_map(|g| self.groups.get(g)).fold(NodeLimits::default(), |acc, l| {
            NodeLimits { keep: min(acc.keep, l.keep), bwlimit: min(acc.bwlimit, l.bwlimit) }
        });
        let own = self.nodes.get(uuid).copied().unwrap_or_default();
        NodeLimits { keep: own.keep.or(by_group.keep), bwlimit: own.bwlimit.or(by_group.bwlimit) }
    }
}

/// git-annex's glob as preferred content uses it: `*` any run of characters (`/` included),
/// `?` one character; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A rules change that was not obeyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub commit: String,
    pub why: String,
}

/// The rules in force and the changes refused since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesState {
    /// `None`: no accepted commit gives rules (the swarm keeps nothing on its own).
    pub rules: Option<Rules>,
    /// The commit they come from, and who signed it.
    pub commit: Option<String>,
    pub signer: Option<String>,
    /// Newer changes of `[swarm]`, newest first, and why each was refused.
    pub refused: Vec<Refusal>,
}

fn git(gitdir: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("git").arg("--git-dir").arg(gitdir).args(args).stdin(std::process::Stdio::null()).output().ok()
}

/// `.annexfs.toml` at `rev`, if it has one.
fn file_at(gitdir: &Path, rev: &str) -> Option<String> {
    let out = git(gitdir, &["cat-file", "blob", &format!("{rev}:{}", crate::annex::settings::FILE)])?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn swarm_at(gitdir: &Path, rev: &str) -> Option<toml::Value> {
    file_at(gitdir, rev).and_then(|t| section(&t).ok().flatten())
}

/// Whether `commit` is accepted, and who signed it; `Err(why)` when it is not.
fn accepted(gitdir: &Path, commit: &str, signers: &[String]) -> Result<String, String> {
    let fmt = git(gitdir, &["log", "-1", "--format=%G?%x00%GS", commit]).ok_or("git log did not run")?;
    let text = String::from_utf8_lossy(&fmt.stdout).trim().to_string();
    let (status, signer) = text.split_once('\0').unwrap_or((text.as_str(), ""));
    let verify = git(gitdir, &["verify-commit", commit]).ok_or("git verify-commit did not run")?;
    if !verify.status.success() {
        let said = String::from_utf8_lossy(&verify.stderr);
        let said = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(match status {
            "N" => "not signed".to_string(),
            _ if said.is_empty() => format!("git verify-commit refuses its signature ({status})"),
            _ => format!("git verify-commit refuses its signature: {said}"),
        });
    }
    if !signers.is_empty() && !signers.iter().any(|s| s == signer) {
        return Err(format!("signed by {signer:?}, who is not among {SIGNERS_CONFIG} ({})", signers.join(", ")));
    }
    Ok(signer.to_string())
}

/// The signers named by `annexfs.signers` in git config `value`.
pub fn signers_from(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The rules in force in the repository at `gitdir` as of `HEAD` (see the module docs).
pub fn load(gitdir: &Path, signers: &[String]) -> RulesState {
    let mut st = RulesState::default();
    let n = HISTORY.to_string();
    let Some(out) = git(gitdir, &["log", "--format=%H", "-n", &n, "HEAD", "--", crate::annex::settings::FILE]) else {
        return st;
    };
    for commit in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|c| !c.is_empty()) {
        let now = swarm_at(gitdir, commit);
        if now == swarm_at(gitdir, &format!("{commit}^")) {
            continue;
        }
        match accepted(gitdir, commit, signers) {
            Ok(signer) => match now.map(Rules::from_section).transpose() {
                Ok(rules) => {
                    st.rules = rules;
                    st.commit = Some(commit.to_string());
                    st.signer = Some(signer);
                    return st;
                }
                Err(e) => refuse(&mut st, commit, e.to_string()),
            },
            Err(why) => refuse(&mut st, commit, why),
        }
    }
    st
}

fn refuse(st: &mut RulesState, commit: &str, why: String) {
    tracing::warn!(
        "swarm rules: the change of [swarm] in commit {commit} is refused: {why}; earlier rules stay in force"
    );
    st.refused.push(Refusal { commit: commit.to_string(), why });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_git_annex_has_them() {
        assert!(glob("*.bin", "a/b/c.bin"));
        assert!(glob("data/*", "data/x/y"));
        assert!(glob("?.txt", "a.txt") && !glob("?.txt", "ab.txt"));
        assert!(!glob("*.bin", "a.bin.tmp"));
        assert!(glob("*", "") && glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXbY"));
    }

    #[test]
    fn parses_and_applies_rules() {
        let r = Rules::parse(
            r#"
[cache]
size = "1G"
[swarm]
copies = 2
include = ["*.bin", "data/*"]
exclude = "*.tmp.bin"
largerthan = "1K"
smallerthan = 1000000
metadata = ["tag=keep*"]
[swarm.node.U1]
keep = "20G"
[swarm.group.lan]
keep = "100G"
bwlimit = "10MiB"
[swarm.group.slow]
bwlimit = "1MiB"
"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.copies, 2);
        let tagged: BTreeMap<String, Vec<String>> = [("tag".to_string(), vec!["keeper".to_string()])].into();
        let none = BTreeMap::new();
        assert!(r.wants("x/a.bin", 5000, &tagged));
        assert!(!r.wants("x/a.bin", 5000, &none), "metadata term");
        assert!(!r.wants("x/a.tmp.bin", 5000, &tagged), "excluded");
        assert!(!r.wants("x/a.txt", 5000, &tagged), "not included");
        assert!(!r.wants("x/a.bin", 100, &tagged) && !r.wants("x/a.bin", 2_000_000, &tagged), "sizes");
        let groups = vec!["lan".to_string(), "slow".to_string()];
        assert_eq!(r.limits_for("U1", &groups), NodeLimits { keep: Some(20 << 30), bwlimit: Some(1 << 20) });
        assert_eq!(r.limits_for("U2", &[]), NodeLimits::default());
        assert_eq!(Rules::parse("[cache]\nsize = 1\n"), Ok(None));
        assert!(Rules::parse("[swarm]\ncopies = 0\n").is_err());
        assert!(Rules::parse("[swarm]\nspeed = 1\n").is_err(), "unknown terms are refused");
        assert!(Rules::parse("[swarm]\nmetadata = \"x\"\n").is_err());
        let all = Rules::parse("[swarm]\n").unwrap().unwrap();
        assert!(all.wants("anything", 0, &none), "everything by default");
    }
}
