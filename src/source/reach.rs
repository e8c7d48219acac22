//! What reaching network holders needs, shared by every key of a mount (or command): the
//! HTTP client with its address policy, the ssh connections, the external special remote
//! programs. Made once by the command; handed to [`super::discover::discover`].

use super::external::Programs;
use super::http::HttpClient;
use super::ssh::Connections;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Makes a range source for an external remote without running its program (a spread
/// remote's stores are read in place); installed per externaltype by the command.
pub type ExternalMaker = Arc<
    dyn Fn(
            &crate::annex::remotes::external::ExternalLocation,
            &crate::annex::Key,
        ) -> Result<Arc<dyn super::remote::RangeSource>, String>
        + Send
        + Sync,
>;

/// The means to reach network holders.
pub struct Reach {
    pub http: HttpClient,
    /// ssh connections, one master per host.
    pub ssh: Connections,
    /// Running external special remote programs.
    pub external: Programs,
    /// This repository's identity and the logins for p2phttp servers.
    pub p2phttp: Arc<super::p2phttp::Shared>,
    /// Sources for external remotes of these externaltypes are made by these, not the program.
    pub external_makers: BTreeMap<String, ExternalMaker>,
}

impl Reach {
    /// Reaching holders with `http` and nothing started yet.
    pub fn new(http: HttpClient) -> Reach {
        Reach {
            http,
            ssh: Connections::default(),
            external: Programs::default(),
            p2phttp: Arc::new(super::p2phttp::Shared::new(None, None)),
            external_makers: BTreeMap::new(),
        }
    }

    /// Reaching p2phttp servers as the repository with `uuid` at `dir` (whose git config
    /// gives the credential helpers).
    pub fn for_repository(mut self, uuid: Option<String>, dir: &std::path::Path) -> Reach {
        self.p2phttp = Arc::new(super::p2phttp::Shared::new(uuid, Some(dir.to_path_buf())));
        self
    }
}
