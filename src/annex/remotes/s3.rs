//! S3 special remotes without encryption: objects named `fileprefix` + key in a bucket.

use super::{Access, KeyFacts, Remote, Unreadable};
use crate::annex::repo::GitConfig;
#[allow(unused_imports)]
use std::collections::BTreeMap;

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Remote {
    pub config: BTreeMap<String, String>,
}

impl S3Remote {
    /// From the remote's git config and its `remote.log` fields.
    pub fn from_config(_name: &str, rcfg: &BTreeMap<String, String>, _cfg: &GitConfig) -> S3Remote {
        S3Remote { config: rcfg.clone() }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, _remote: &Remote, _facts: &KeyFacts<'_>, acc: &mut Access) {
        acc.readable = Err(Unreadable::UnsupportedType("S3".into()));
    }
}

/// Where one key is, on such a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub config: BTreeMap<String, String>,
}

impl S3Location {
    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        Vec::new()
    }
}
