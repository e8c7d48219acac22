//! p2phttp git remotes, served by `git annex p2phttp` (git-annex ≥ 10.20240731).
//!
//! A git remote is read over p2phttp when git-annex would (`Types/GitConfig.hs`,
//! `Remote/Git.hs`):
//! - `remote.NAME.annexurl` is an `annex+http(s)://` URL (git-annex sets it from `annex.url`
//!   in an http remote's served `config`, which annexfs also learns, see
//!   [`annex_url_in_config`]);
//! - or `url.<base>.annexInsteadOf` rewrites `remote.NAME.url` into one;
//! - or `remote.NAME.url` is itself an `annex+http(s)://` URL.
//!
//! The URL `annex+http://host[:port]/[prefix/]git-annex/[UUID]` (port 9417 by default) names
//! the server `http://host:port/[prefix]`; every request goes to
//! `<server>/git-annex/<remote UUID>/v4/key/<key>` ([`P2pHttpLocation::key_url`]). The
//! remote's UUID is `remote.NAME.annex-uuid`, else the one the URL ends with.
//!
//! Nothing here touches the network: this module says where a key is, the source layer reads.

use super::{Access, KeyFacts, Location, Remote, Unreadable};
use crate::annex::Key;
use crate::annex::repo::GitConfig;

/// The default port of `git annex p2phttp` (git's is 9418).
pub const DEFAULT_PORT: u16 = 9417;

/// Why a p2phttp URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0}: not an annex+http(s):// URL")]
    Scheme(String),
    #[error("{0}: no host")]
    NoHost(String),
    #[error("{0}: bad port")]
    Port(String),
}

/// A parsed `annex+http(s)://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pHttpUrl {
    /// As configured (what `git credential` is asked about).
    pub original: String,
    /// `http(s)://host:port[/prefix]`, without a trailing slash: requests go to
    /// `<server>/git-annex/…`.
    pub server: String,
    /// The UUID the URL ends with, if any (a proxied or cluster repository).
    pub uuid: Option<String>,
}

/// Whether `s` is a well-formed UUID (8-4-4-4-12 hex digits), as git-annex checks before
/// taking the last path component of a URL as one.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl P2pHttpUrl {
    /// Parses an `annex+http(s)://` URL (git-annex's `parseP2PHttpUrl`).
    pub fn parse(s: &str) -> Result<P2pHttpUrl, UrlError> {
        let (scheme, rest) = if let Some(r) = s.strip_prefix("annex+http://") {
            ("http", r)
        } else if let Some(r) = s.strip_prefix("annex+https://") {
            ("https", r)
        } else {
            return Err(UrlError::Scheme(s.to_string()));
        };
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // Credentials in the URL are not used: git credential provides them.
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| UrlError::NoHost(s.to_string()))?;
                (format!("[{h}]"), after.strip_prefix(':'))
            }
            None => match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            },
        };
        if host.is_empty() || host == "[]" {
            return Err(UrlError::NoHost(s.to_string()));
        }
        let port: u16 = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| UrlError::Port(s.to_string()))?,
        };
        let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let uuid = match parts.last() {
            Some(last) if is_uuid(last) => {
                let u = last.to_string();
                parts.pop();
                Some(u)
            }
            _ => None,
        };
        // The client adds "/git-annex/" itself, so the URL's is dropped (it may be absent
        // when another server speaks the protocol under another path).
        if parts.last() == Some(&"git-annex") {
            parts.pop();
        }
        let mut server = format!("{scheme}://{host}:{port}");
        for p in parts {
            server.push('/');
            server.push_str(p);
        }
        Ok(P2pHttpUrl { original: s.to_string(), server, uuid })
    }

    /// The URL `git credential` is asked about: the configured one without a trailing UUID
    /// (git-annex's `p2pHttpUrlWithoutUUID`).
    pub fn credential_url(&self) -> String {
        match &self.uuid {
            Some(u) => {
                let s = self.original.trim_end_matches('/');
                s.strip_suffix(u.as_str()).unwrap_or(s).to_string()
            }
            None => self.original.clone(),
        }
    }
}

/// Applies `url.<base>.annexInsteadOf` to `url` as git applies `insteadOf`: the longest
/// matching prefix is replaced by its base.
pub fn annex_instead_of(cfg: &GitConfig, url: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for (base, prefixes) in cfg.subsections_with("url", "annexinsteadof") {
        for prefix in prefixes {
            if !prefix.is_empty()
                && url.starts_with(prefix.as_str())
                && best.as_ref().is_none_or(|(len, _)| prefix.len() > *len)
            {
                best = Some((prefix.len(), format!("{base}{}", &url[prefix.len()..])));
            }
        }
    }
    best.map(|(_, u)| u)
}

/// The `annex.url` of a served git config, when it is a p2phttp URL (git-annex then
/// records it as `remote.NAME.annexurl`).
pub fn annex_url_in_config(cfg: &GitConfig) -> Option<String> {
    cfg.get("annex.url")
        .filter(|v| v.starts_with("annex+http://") || v.starts_with("annex+https://"))
        .map(str::to_string)
}

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pHttpRemote {
    /// The p2phttp URL as configured (`annexurl`, rewritten `url`, or `url`).
    pub url: String,
    /// The URL parsed, or why it does not parse.
    pub parsed: Result<P2pHttpUrl, UrlError>,
    /// The remote's git URL when it is an http(s) one.
    pub git_url: Option<String>,
}

impl P2pHttpRemote {
    /// A remote whose `url` is itself an `annex+http(s)://` URL.
    pub fn from_config(_name: &str, url: &str, _cfg: &GitConfig) -> P2pHttpRemote {
        P2pHttpRemote { url: url.to_string(), parsed: P2pHttpUrl::parse(url), git_url: None }
    }

    /// A git remote at `git_url` whose annex is served at the p2phttp URL `annex_url`.
    pub fn with_git_url(git_url: &str, annex_url: &str) -> P2pHttpRemote {
        let git_url = (git_url.starts_with("http://") || git_url.starts_with("https://")).then(|| git_url.to_string());
        P2pHttpRemote { url: annex_url.to_string(), parsed: P2pHttpUrl::parse(annex_url), git_url }
    }

    /// What `git credential` is asked about: the http git URL when it is on the same host as
    /// the p2phttp server (git-annex assumes one login for both, `isP2PHttpSameHost`), else
    /// the p2phttp URL without its UUID.
    pub fn credential_url(&self, parsed: &P2pHttpUrl) -> String {
        match &self.git_url {
            Some(g) if host_of(g).is_some_and(|h| Some(h) == host_of(&parsed.server)) => g.clone(),
            _ => parsed.credential_url(),
        }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, remote: &Remote, facts: &KeyFacts<'_>, acc: &mut Access) {
        let parsed = match &self.parsed {
            Ok(p) => p,
            Err(e) => {
                acc.readable = Err(Unreadable::P2pHttpUrl(e.clone()));
                return;
            }
        };
        let Some(uuid) = remote.uuid.clone().or_else(|| parsed.uuid.clone()) else {
            acc.readable = Err(Unreadable::P2pHttpNoUuid);
            return;
        };
        if let Err(e) = facts.policy.check_url(&parsed.server) {
            acc.readable = Err(e.into());
            return;
        }
        let credential_url = self.credential_url(parsed);
        acc.locations.push(Location::P2pHttp(P2pHttpLocation {
            remote: remote.name.clone(),
            server: parsed.server.clone(),
            server_uuid: uuid,
            credential_url,
            key: facts.key.clone(),
        }));
    }
}

/// The lowercased host of an http(s) URL.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => hostport.split(':').next()?,
    };
    Some(host.to_ascii_lowercase())
}

/// Where one key is, on such a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pHttpLocation {
    /// The remote's name (who answers for the bytes).
    pub remote: String,
    /// `http(s)://host:port[/prefix]`.
    pub server: String,
    /// The UUID of the repository served (the remote's).
    pub server_uuid: String,
    /// What `git credential` is asked about when the server wants a login.
    pub credential_url: String,
    pub key: Key,
}

/// A value as the protocol sends it in a path or query: plain when it is UTF-8 and not
/// `[…]`-shaped, else `[` + base64url + `]` (git-annex's `encodeB64Text`).
pub fn protocol_value(bytes: &[u8]) -> String {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(s) if !(s.starts_with('[') && s.ends_with(']')) => s.to_string(),
        _ => format!("[{}]", base64::engine::general_purpose::URL_SAFE.encode(bytes)),
    }
}

impl P2pHttpLocation {
    /// The URL of a versioned GET of the key (without the query), e.g. `v4`.
    pub fn key_url(&self, version: &str) -> String {
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~')
            .remove(b'[')
            .remove(b']')
            .remove(b'=');
        let enc = |b: &[u8]| percent_encoding::utf8_percent_encode(&protocol_value(b), SEGMENT).to_string();
        format!(
            "{}/git-annex/{}/{version}/key/{}",
            self.server,
            enc(self.server_uuid.as_bytes()),
            enc(&self.key.to_bytes())
        )
    }

    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        vec![self.key_url("v4")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_git_annex() {
        let u = P2pHttpUrl::parse("annex+http://example.com/git-annex/").unwrap();
        assert_eq!(u.server, "http://example.com:9417");
        assert_eq!(u.uuid, None);
        assert_eq!(u.credential_url(), "annex+http://example.com/git-annex/");
        let u = P2pHttpUrl::parse("annex+https://h:8443/sub/git-annex/ecbcd7e4-3c42-4a10-9f7e-5c3f5e0b6e1a").unwrap();
        assert_eq!(u.server, "https://h:8443/sub");
        assert_eq!(u.uuid.as_deref(), Some("ecbcd7e4-3c42-4a10-9f7e-5c3f5e0b6e1a"));
        assert_eq!(u.credential_url(), "annex+https://h:8443/sub/git-annex/");
        let u = P2pHttpUrl::parse("annex+http://[::1]:19417").unwrap();
        assert_eq!(u.server, "http://[::1]:19417");
        assert!(P2pHttpUrl::parse("http://h/git-annex/").is_err());
        assert!(P2pHttpUrl::parse("annex+http://h:port/").is_err());
        assert!(P2pHttpUrl::parse("annex+http:///git-annex/").is_err());
    }

    #[test]
    fn instead_of_takes_the_longest_prefix() {
        let cfg = GitConfig::from_pairs([
            ("url.annex+http://a:1/git-annex/.annexInsteadOf", "http://a/"),
            ("url.annex+http://b:2/git-annex/.annexInsteadOf", "http://a/repo"),
        ]);
        assert_eq!(annex_instead_of(&cfg, "http://a/repo.git").as_deref(), Some("annex+http://b:2/git-annex/.git"));
        assert_eq!(annex_instead_of(&cfg, "http://a/other").as_deref(), Some("annex+http://a:1/git-annex/other"));
        assert_eq!(annex_instead_of(&cfg, "http://c/"), None);
    }

    #[test]
    fn served_config_annex_url() {
        let t = "[core]\n\tbare = false\n[annex]\n\tuuid = x\n\turl = annex+http://h:9417/git-annex/\n";
        assert_eq!(annex_url_in_config(&GitConfig::from_text(t)).as_deref(), Some("annex+http://h:9417/git-annex/"));
        assert_eq!(annex_url_in_config(&GitConfig::from_text("[annex]\nurl = ssh://h/x\n")), None);
    }

    #[test]
    fn values_are_wrapped_when_not_plain() {
        assert_eq!(protocol_value(b"SHA256E-s1--ab.bin"), "SHA256E-s1--ab.bin");
        assert_eq!(protocol_value(b"[x]"), "[W3hd]");
        assert_eq!(protocol_value(&[0xff, 0xfe]), "[__4=]");
    }

    #[test]
    fn same_host_git_url_is_the_credential_url() {
        let r = P2pHttpRemote::with_git_url("http://127.0.0.1:8080/r.git", "annex+http://127.0.0.1:19417/git-annex/");
        let p = r.parsed.clone().unwrap();
        assert_eq!(r.credential_url(&p), "http://127.0.0.1:8080/r.git");
        let r = P2pHttpRemote::with_git_url("http://localhost/r.git", "annex+http://127.0.0.1/git-annex/");
        let p = r.parsed.clone().unwrap();
        assert_eq!(r.credential_url(&p), "annex+http://127.0.0.1/git-annex/");
    }
}
