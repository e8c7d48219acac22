//! What reaching network holders needs, shared by every key of a mount (or command): the
//! HTTP client with its address policy, the ssh connections, the external special remote
//! programs. Made once by the command; handed to [`super::discover::discover`].

use super::external::Programs;
use super::http::HttpClient;
use super::ssh::Connections;

/// The means to reach network holders.
pub struct Reach {
    pub http: HttpClient,
    /// ssh connections, one master per host.
    pub ssh: Connections,
    /// Running external special remote programs.
    pub external: Programs,
}

impl Reach {
    /// Reaching holders with `http` and nothing started yet.
    pub fn new(http: HttpClient) -> Reach {
        Reach { http, ssh: Connections::default(), external: Programs::default() }
    }
}
