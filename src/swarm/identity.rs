//! Who a node is, as it answers `GET /v1/hello`: its repository's UUID and the repositories its
//! git-annex branch knows (`uuid.log`).
//!
//! Two nodes belong to the same repository when those sets meet: clones of one repository know
//! at least the repository they were cloned from, whatever happened since. A node is listed as
//! a peer (and passed on to others) only once its address answered such a hello; an address
//! that answers with this node's own UUID is this node under another name. This is no
//! authentication (the UUIDs are no secret; the swarm token is the access control, and every
//! byte a peer sends is checked anyway): it keeps addresses that are not nodes of this
//! repository (made up, or someone else's) out of the peer tables.

use crate::annex::Annex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Known repositories a hello lists at most (and a hello read from a peer is cut at).
pub const MAX_KNOWN: usize = 4096;
/// Bytes of a hello read at most.
pub const MAX_HELLO_BYTES: usize = 512 << 10;

/// What `GET /v1/hello` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version.
    pub annexfs: u32,
    /// The node's repository UUID.
    pub uuid: String,
    /// The repositories the node's git-annex branch knows.
    #[serde(default)]
    pub known: Vec<String>,
    /// Bytes the node offers the swarm for keeping pieces (`--keep`).
    #[serde(default)]
    pub offered: u64,
}

/// What a hello says of the node that sent it, from this node's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A node of the same repository.
    Same,
    /// This node itself (another of its addresses).
    Itself,
    /// A node of another repository.
    Foreign,
}

/// This node's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uuid: String,
    known: BTreeSet<String>,
    /// Bytes offered to the swarm.
    pub offered: u64,
}

impl Identity {
    /// The identity of a node serving `annex`. A clone never `git annex init`-ed has no UUID:
    /// it goes by one made for this process (it still belongs by the repositories it knows).
    pub fn of(annex: &Annex) -> Identity {
        let known: BTreeSet<String> =
            annex.meta().map(|m| m.descriptions.keys().cloned().collect()).unwrap_or_default();
        let uuid = annex.uuid.clone().unwrap_or_else(|| {
            let seed = format!("{}-{:?}-{:?}", std::process::id(), std::time::SystemTime::now(), annex.gitdir);
            format!("annexfs-{}", &blake3::hash(seed.as_bytes()).to_hex()[..32])
        });
        Identity::new(uuid, known)
    }

    pub fn new(uuid: String, known: impl IntoIterator<Item = String>) -> Identity {
        let mut known: BTreeSet<String> = known.into_iter().collect();
        known.insert(uuid.clone());
        Identity { uuid, known, offered: 0 }
    }

    /// The same node offering `bytes` to the swarm.
    pub fn offering(mut self, bytes: u64) -> Identity {
        self.offered = bytes;
        self
    }

    pub fn hello(&self) -> Hello {
        // This node's own UUID first: a peer cutting the list keeps it.
        let mut known = vec![self.uuid.clone()];
        known.extend(self.known.iter().filter(|u| **u != self.uuid).take(MAX_KNOWN - 1).cloned());
        Hello { annexfs: 1, uuid: self.uuid.clone(), known, offered: self.offered }
    }

    /// What `hello` says of its sender.
    pub fn judge(&self, hello: &Hello) -> Verdict {
        if hello.uuid == self.uuid {
            return Verdict::Itself;
        }
        let theirs = std::iter::once(&hello.uuid).chain(hello.known.iter().take(MAX_KNOWN));
        if theirs.into_iter().any(|u| self.known.contains(u)) { Verdict::Same } else { Verdict::Foreign }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_meet_through_the_repositories_they_know() {
        let origin = "11111111-0000-0000-0000-000000000000".to_string();
        let b = Identity::new("b".into(), [origin.clone(), "b".into()]);
        let c = Identity::new("c".into(), [origin.clone(), "c".into()]);
        let other = Identity::new("x".into(), ["y".to_string()]);
        assert_eq!(b.judge(&c.hello()), Verdict::Same);
        assert_eq!(c.judge(&b.hello()), Verdict::Same);
        assert_eq!(b.judge(&b.hello()), Verdict::Itself);
        assert_eq!(b.judge(&other.hello()), Verdict::Foreign);
        // A node that only knows itself still meets a node that knows it.
        let lone = Identity::new(origin.clone(), []);
        assert_eq!(b.judge(&lone.hello()), Verdict::Same);
        assert_eq!(lone.hello().known, vec![origin]);
    }
}
