//! ssh git remotes (`ssh://…`, `user@host:path`): the repository behind `git-annex-shell
//! p2pstdio`.
//!
//! Everything git-annex reads to reach such a remote is read here, as git-annex reads it:
//! the URL (scp-like `[user@]host:path` becomes `ssh://[user@]host/~/path`, as
//! `Git.Remote.parseRemoteLocation` does; the path is percent-decoded like `Git.repoPath`),
//! `remote.NAME.annex-ssh-options` (split on whitespace), `remote.NAME.annex-shell`,
//! `annex.sshcaching` (on by default) and this repository's `annex.uuid` (the client's UUID,
//! given to `git-annex-shell p2pstdio`). Nothing here touches the network: whether the host
//! answers is found out by the source layer, when a range is asked.

use super::{Access, KeyFacts, Location, Remote, Unreadable};
use crate::annex::repo::GitConfig;

/// Where the repository is: the ssh destination and the path `git-annex-shell` is given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    pub user: Option<String>,
    /// The host name or address (an IPv6 address without its brackets).
    pub host: String,
    pub port: Option<u16>,
    /// The repository's path as git-annex passes it (`/~/…` is relative to the home
    /// directory; `git-annex-shell` expands it).
    pub path: String,
}

impl SshTarget {
    /// `[user@]host`, the destination argument of ssh.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// How this repository reaches an ssh remote (the part shared by every key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshAccess {
    pub target: SshTarget,
    /// `remote.NAME.annex-ssh-options`, in order.
    pub ssh_options: Vec<String>,
    /// `annex.sshcaching`: one master connection per host, shared by every session.
    pub caching: bool,
    /// `remote.NAME.annex-shell`, else `git-annex-shell`.
    pub shell: String,
    /// This repository's UUID (`annex.uuid`), given to `git-annex-shell p2pstdio`.
    pub client_uuid: String,
}

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRemote {
    pub url: String,
    /// How it is reached, or why its URL cannot be used.
    pub access: Result<SshAccess, String>,
}

impl SshRemote {
    /// From the remote's git config.
    pub fn from_config(name: &str, url: &str, cfg: &GitConfig) -> SshRemote {
        let access = parse_url(url).map(|target| SshAccess {
            target,
            ssh_options: cfg.remote(name, "annex-ssh-options").map(split_options).unwrap_or_default(),
            caching: cfg.bool_or("annex.sshcaching", true),
            shell: cfg
                .remote(name, "annex-shell")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("git-annex-shell")
                .to_string(),
            client_uuid: cfg.get("annex.uuid").unwrap_or_default().to_string(),
        });
        SshRemote { url: url.to_string(), access }
    }

    /// How annexfs can read `facts.key` from this remote: over ssh when its URL parses, an ssh
    /// client is installed and the remote's UUID is known (git-annex-shell is asked for the
    /// repository with that UUID).
    pub fn access(&self, remote: &Remote, _facts: &KeyFacts<'_>, acc: &mut Access) {
        let how = match &self.access {
            Ok(how) => how,
            Err(why) => {
                acc.readable = Err(Unreadable::BadSshUrl { url: self.url.clone(), why: why.clone() });
                return;
            }
        };
        let Some(uuid) = remote.uuid.clone() else {
            acc.readable = Err(Unreadable::NoSshUuid);
            return;
        };
        if !ssh_installed() {
            acc.readable = Err(Unreadable::NoSshClient);
            return;
        }
        acc.locations.push(Location::Ssh(SshLocation {
            remote: remote.name.clone(),
            url: self.url.clone(),
            remote_uuid: uuid,
            how: Box::new(how.clone()),
        }));
    }
}

/// Where one key is, on such a remote: the repository with `remote_uuid` behind `how`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLocation {
    /// The remote's name (who answers for the bytes, in logs and limits).
    pub remote: String,
    /// The remote's URL as configured.
    pub url: String,
    /// The repository's UUID (`remote.NAME.annex-uuid`): git-annex-shell must be serving it.
    pub remote_uuid: String,
    pub how: Box<SshAccess>,
}

impl SshLocation {
    /// The location as text, for `annexfs sources`.
    pub fn strings(&self) -> Vec<String> {
        vec![self.url.clone()]
    }
}

/// Splits `annex-ssh-options` as git-annex does (Haskell's `words`).
fn split_options(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Whether an `ssh` program is on `PATH` (looked up once per process).
fn ssh_installed() -> bool {
    use std::os::unix::fs::PermissionsExt;
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .any(|d| std::fs::metadata(d.join("ssh")).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// Parses an ssh git URL: `ssh://`, `git+ssh://`, `ssh+git://` URLs and scp-like
/// `[user@]host:path`.
pub fn parse_url(url: &str) -> Result<SshTarget, String> {
    let lower = url.to_ascii_lowercase();
    let rest = ["ssh://", "git+ssh://", "ssh+git://"].iter().find(|p| lower.starts_with(*p)).map(|p| &url[p.len()..]);
    let Some(rest) = rest else { return parse_scp(url) };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, hostport) = match authority.rfind('@') {
        Some(i) => (Some(decode(&authority[..i])?), &authority[i + 1..]),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        let port = match after {
            "" | ":" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the host")?),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, "")) => (h.to_string(), None),
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port =
        port.map(|p| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("bad port {p:?}"))).transpose()?;
    let host = decode(&host)?;
    check_host(&host)?;
    check_user(user.as_deref())?;
    let path = decode(path)?;
    Ok(SshTarget {
        user: user.filter(|u| !u.is_empty()),
        host,
        port,
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// `[user@]host:dir` → the target of `ssh://[user@]host/~/dir` (or `/dir` when absolute).
fn parse_scp(url: &str) -> Result<SshTarget, String> {
    let (hostpart, dir) = if url.starts_with('[') {
        let (h, rest) = url.split_once(']').ok_or("unclosed [ in the host")?;
        (format!("{h}]"), rest.strip_prefix(':').unwrap_or(rest).to_string())
    } else {
        let (h, d) = url.split_once(':').ok_or("neither an ssh:// URL nor host:path")?;
        (h.to_string(), d.to_string())
    };
    let (user, host) = match hostpart.rfind('@') {
        Some(i) => (Some(hostpart[..i].to_string()), hostpart[i + 1..].to_string()),
        None => (None, hostpart),
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).map(str::to_string).unwrap_or(host);
    check_host(&host)?;
    check_user(user.as_deref())?;
    let path = if dir.starts_with('/') {
        dir
    } else if dir.starts_with('~') {
        format!("/{dir}")
    } else {
        format!("/~/{dir}")
    };
    Ok(SshTarget { user: user.filter(|u| !u.is_empty()), host, port: None, path })
}

/// A host that ssh could take for an option, or that holds no host at all, is refused.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("host {host:?} cannot be given to ssh"));
    }
    Ok(())
}

/// A user name that would make the destination an option is refused.
fn check_user(user: Option<&str>) -> Result<(), String> {
    match user {
        Some(u) if u.starts_with('-') || u.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err(format!("user {u:?} cannot be given to ssh"))
        }
        _ => Ok(()),
    }
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> SshTarget {
        SshTarget { user: user.map(str::to_string), host: host.into(), port, path: path.into() }
    }

    #[test]
    fn urls_parse_as_git_annex_reads_them() {
        assert_eq!(
            parse_url("ssh://root@127.0.0.1:2222/srv/r.git"),
            Ok(t(Some("root"), "127.0.0.1", Some(2222), "/srv/r.git"))
        );
        assert_eq!(parse_url("ssh://host/~/r"), Ok(t(None, "host", None, "/~/r")));
        assert_eq!(parse_url("git+ssh://u@h/a%20b"), Ok(t(Some("u"), "h", None, "/a b")));
        assert_eq!(parse_url("ssh+git://h:22/x"), Ok(t(None, "h", Some(22), "/x")));
        assert_eq!(parse_url("SSH://[::1]:99/x"), Ok(t(None, "::1", Some(99), "/x")));
        assert_eq!(parse_url("ssh://u@[fe80::1]/x"), Ok(t(Some("u"), "fe80::1", None, "/x")));
        // scp-like: relative to the home directory unless absolute or ~user.
        assert_eq!(parse_url("host:repo"), Ok(t(None, "host", None, "/~/repo")));
        assert_eq!(parse_url("me@host:/srv/repo"), Ok(t(Some("me"), "host", None, "/srv/repo")));
        assert_eq!(parse_url("host:~joe/r"), Ok(t(None, "host", None, "/~joe/r")));
        assert_eq!(parse_url("host:"), Ok(t(None, "host", None, "/~/")));
        assert_eq!(parse_url("[::1]:r"), Ok(t(None, "::1", None, "/~/r")));
        assert!(parse_url("ssh://h:0/x").is_err());
        assert!(parse_url("ssh://h:99999/x").is_err());
        assert!(parse_url("ssh://-oProxyCommand=x/r").is_err(), "a host that is an option is refused");
        assert!(parse_url("-oProxyCommand=x:r").is_err());
        assert!(parse_url("ssh:///r").is_err());
        assert!(parse_url("-oX@h:r").is_err(), "a user that is an option is refused");
    }

    #[test]
    fn config_is_read_as_git_annex_reads_it() {
        let cfg = GitConfig::from_pairs([
            ("annex.uuid", "me-uuid"),
            ("annex.sshcaching", "false"),
            ("remote.o.url", "ssh://u@h:2/r"),
            ("remote.o.annex-ssh-options", " -F /tmp/cfg  -i key "),
            ("remote.o.annex-shell", "/opt/bin/git-annex-shell"),
        ]);
        let r = SshRemote::from_config("o", "ssh://u@h:2/r", &cfg);
        let a = r.access.unwrap();
        assert_eq!(a.ssh_options, ["-F", "/tmp/cfg", "-i", "key"]);
        assert!(!a.caching);
        assert_eq!(a.shell, "/opt/bin/git-annex-shell");
        assert_eq!(a.client_uuid, "me-uuid");
        assert_eq!(a.target.destination(), "u@h");
        let d = SshRemote::from_config("p", "h:r", &GitConfig::default()).access.unwrap();
        assert!(d.caching && d.shell == "git-annex-shell" && d.ssh_options.is_empty());
        assert!(SshRemote::from_config("q", "ssh://h:x/r", &GitConfig::default()).access.is_err());
    }
}
