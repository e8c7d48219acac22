//! p2phttp git remotes (`annex+http(s)://…`), served by `git annex p2phttp`.

use super::{Access, KeyFacts, Remote, Unreadable};
use crate::annex::repo::GitConfig;
#[allow(unused_imports)]
use std::collections::BTreeMap;

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pHttpRemote {
    pub url: String,
}

impl P2pHttpRemote {
    /// From the remote's git config and its `remote.log` fields.
    pub fn from_config(_name: &str, url: &str, _cfg: &GitConfig) -> P2pHttpRemote {
        P2pHttpRemote { url: url.to_string() }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, _remote: &Remote, _facts: &KeyFacts<'_>, acc: &mut Access) {
        acc.readable = Err(Unreadable::UnsupportedGitUrl(self.url.clone()));
    }
}

/// Where one key is, on such a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pHttpLocation {
    pub url: String,
}

impl P2pHttpLocation {
    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        vec![self.url.clone()]
    }
}
