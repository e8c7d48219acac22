//! External special remotes (`type=external`): a `git-annex-remote-NAME` program speaking
//! git-annex's external special remote protocol.
//!
//! This module only knows the configuration: which program (`externaltype`, from
//! `remote.NAME.annex-externaltype` or `remote.log`), the remote's `remote.log` fields (the
//! answers to the program's GETCONFIG), and how a key is stored there — whole, or as chunk
//! keys when `.log.cnk` or `chunk=` says so. Running the program is the source layer's job
//! ([`crate::source::external`]). The only look at the system is whether the program is on
//! `PATH` (a `stat`), so that `annexfs sources` can say so.
//!
//! Encrypted external remotes never get here: [`super::load_remotes`] makes them
//! [`super::RemoteKind::Special`], readable only through git-annex (annex_get).

use super::{Access, KeyFacts, Location, Remote, Unreadable};
use crate::annex::key::Key;
use crate::annex::repo::GitConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRemote {
    /// `externaltype`: the program is `git-annex-remote-<externaltype>`.
    pub externaltype: Option<String>,
    /// The remote's `remote.log` fields, as the program's GETCONFIG sees them.
    pub config: BTreeMap<String, String>,
    /// `remote.NAME.annexfs-timeout`: seconds the program may stay silent.
    pub timeout_secs: Option<u64>,
}

impl ExternalRemote {
    /// From the remote's git config and its `remote.log` fields.
    pub fn from_config(name: &str, rcfg: &BTreeMap<String, String>, cfg: &GitConfig) -> ExternalRemote {
        let externaltype = cfg
            .remote(name, "annex-externaltype")
            .map(str::to_string)
            .or_else(|| rcfg.get("externaltype").cloned())
            .filter(|t| valid_externaltype(t));
        let timeout_secs = cfg.remote(name, "annexfs-timeout").and_then(|t| t.trim().parse().ok()).filter(|&t| t > 0);
        ExternalRemote { externaltype, config: rcfg.clone(), timeout_secs }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, remote: &Remote, facts: &KeyFacts<'_>, acc: &mut Access) {
        let Some(externaltype) = &self.externaltype else {
            acc.readable = Err(Unreadable::NoExternalType);
            return;
        };
        let program_name = program_name(externaltype);
        // A spread remote's program is annexfs itself (its link may be missing when annexfs
        // was installed without the packages).
        let own = || (externaltype == "annexfs").then(|| std::env::current_exe().ok()).flatten();
        let Some(program) = find_on_path(&program_name).or_else(own) else {
            acc.readable = Err(Unreadable::ProgramMissing(program_name));
            return;
        };
        let uuid = remote.uuid.clone().unwrap_or_default();
        let logged = facts.chunk_log.get(uuid.as_bytes()).map(Vec::as_slice).unwrap_or(&[]);
        let configured = self.config.get("chunk").and_then(|c| super::parse_byte_size(c)).filter(|&c| c > 0);
        let layouts = layouts(facts.key, logged, configured);
        if layouts.is_empty() {
            acc.readable = Err(Unreadable::NoSize);
            return;
        }
        acc.locations.push(Location::External(ExternalLocation {
            remote: remote.name.clone(),
            uuid,
            externaltype: externaltype.clone(),
            program,
            config: self.config.clone(),
            layouts,
            timeout: self.timeout_secs.map(std::time::Duration::from_secs),
        }));
    }
}

/// `git-annex-remote-<externaltype>`.
pub fn program_name(externaltype: &str) -> String {
    format!("git-annex-remote-{externaltype}")
}

/// An externaltype names a program on PATH: no path separators, no leading dot or dash.
fn valid_externaltype(t: &str) -> bool {
    !t.is_empty()
        && !t.starts_with(['.', '-'])
        && t.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'+'))
}

/// The first executable regular file called `program` in a directory of `PATH`.
fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// One way a key may be stored on the remote: the keys to TRANSFER RETRIEVE, in order, each
/// with the number of bytes of the key it holds.
pub type Layout = Vec<(Key, u64)>;

/// The ways `key` may be stored, in git-annex's order (`chunkKeys`): each chunking logged for
/// the remote, then the whole key, then the configured chunking if it was not logged.
fn layouts(key: &Key, logged: &[(u64, u64)], configured: Option<u64>) -> Vec<Layout> {
    let mut out = Vec::new();
    let chunked = |size: u64, chunk: u64, count: u64| -> Option<Layout> {
        if chunk == 0 || count == 0 || count != size.div_ceil(chunk).max(1) {
            return None;
        }
        let last = size.checked_sub(chunk.checked_mul(count - 1)?)?;
        Some((1..=count).map(|n| (key.chunk(chunk, n), if n == count { last } else { chunk })).collect())
    };
    let Some(size) = key.size() else {
        // Without a size nothing can be checked or fetched by ranges.
        return out;
    };
    for &(chunk, count) in logged {
        if let Some(l) = chunked(size, chunk, count) {
            out.push(l);
        }
    }
    out.push(vec![(key.clone(), size)]);
    if let Some(chunk) = configured
        && !logged.iter().any(|&(c, _)| c == chunk)
        && let Some(l) = chunked(size, chunk, size.div_ceil(chunk).max(1))
    {
        out.push(l);
    }
    out
}

/// Where one key is, on such a remote: the program to ask and the layouts to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalLocation {
    /// The git remote name (GETGITREMOTENAME; limits and bans apply to it).
    pub remote: String,
    /// The remote's UUID (GETUUID; its state log and creds are under it).
    pub uuid: String,
    pub externaltype: String,
    /// The program found on PATH.
    pub program: PathBuf,
    /// `remote.log` fields (GETCONFIG).
    pub config: BTreeMap<String, String>,
    /// Ways the key may be stored, in the order to try; never empty.
    pub layouts: Vec<Layout>,
    /// How long the program may stay silent (else the source layer's default).
    pub timeout: Option<std::time::Duration>,
}

impl ExternalLocation {
    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        vec![format!("external:{} ({})", self.externaltype, self.program.display())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn externaltype_names() {
        assert!(valid_externaltype("rclone"));
        assert!(valid_externaltype("my-remote_2"));
        assert!(!valid_externaltype("../evil"));
        assert!(!valid_externaltype("-x"));
        assert!(!valid_externaltype(""));
    }

    #[test]
    fn chunk_layouts() {
        let key = Key::parse_str("SHA256E-s100--abc.bin").unwrap();
        let l = layouts(&key, &[(30, 4)], Some(30));
        assert_eq!(l.len(), 2, "logged chunking, then whole; configured = logged");
        assert_eq!(l[0].iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![30, 30, 30, 10]);
        assert_eq!(l[0][3].0.to_string_lossy(), "SHA256E-s100-S30-C4--abc.bin");
        assert_eq!(l[1], vec![(key.clone(), 100)]);
        // A logged count that does not fit the size is ignored.
        assert_eq!(layouts(&key, &[(30, 9)], None).len(), 1);
        assert_eq!(layouts(&key, &[], Some(50)).len(), 2);
        assert!(layouts(&Key::parse_str("WORM--x").unwrap(), &[], None).is_empty());
    }
}
