//! ssh git remotes (`ssh://…`, `user@host:path`): the repository behind `git-annex-shell p2pstdio`.

use super::{Access, KeyFacts, Remote, Unreadable};
use crate::annex::repo::GitConfig;
#[allow(unused_imports)]
use std::collections::BTreeMap;

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRemote {
    pub url: String,
}

impl SshRemote {
    /// From the remote's git config and its `remote.log` fields.
    pub fn from_config(_name: &str, url: &str, _cfg: &GitConfig) -> SshRemote {
        SshRemote { url: url.to_string() }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, _remote: &Remote, _facts: &KeyFacts<'_>, acc: &mut Access) {
        acc.readable = Err(Unreadable::UnsupportedGitUrl(self.url.clone()));
    }
}

/// Where one key is, on such a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLocation {
    pub url: String,
}

impl SshLocation {
    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        vec![self.url.clone()]
    }
}
