//! External special remotes (`type=external`): a `git-annex-remote-NAME` program speaking git-annex's external special remote protocol.

use super::{Access, KeyFacts, Remote, Unreadable};
use crate::annex::repo::GitConfig;
#[allow(unused_imports)]
use std::collections::BTreeMap;

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRemote {
    pub config: BTreeMap<String, String>,
}

impl ExternalRemote {
    /// From the remote's git config and its `remote.log` fields.
    pub fn from_config(_name: &str, rcfg: &BTreeMap<String, String>, _cfg: &GitConfig) -> ExternalRemote {
        ExternalRemote { config: rcfg.clone() }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, _remote: &Remote, _facts: &KeyFacts<'_>, acc: &mut Access) {
        acc.readable = Err(Unreadable::UnsupportedType("external".into()));
    }
}

/// Where one key is, on such a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalLocation {
    pub config: BTreeMap<String, String>,
}

impl ExternalLocation {
    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        Vec::new()
    }
}
