//! annexfs's own settings of a repository: a committed `.annexfs.toml` at the repository's
//! root (shared by every clone) and `remote.<name>.annexfs-*` in git config (this clone).
//!
//! ```toml
//! [cache]
//! size = "50G"              # default bound of the piece cache (a mount option wins)
//!
//! [remote.web]              # limits of one remote, by name ("web": each web server)
//! bwlimit = "20MiB"         # bytes per second, all of annexfs's requests together
//! maxconnections = 4        # requests at once
//!
//! [group.archive]           # limits of every remote in a git-annex group
//! bwlimit = "5MiB"
//!
//! [[peer]]                  # swarm peers (see the swarm)
//! url = "http://192.0.2.7:7420"
//! group = "lan"
//! bwlimit = "20MiB"
//! ```
//!
//! A remote's limits: git config first (`remote.<name>.annexfs-bwlimit`,
//! `remote.<name>.annexfs-maxconnections`), then `[remote.<name>]`, then the tightest of the
//! `[group.<g>]` sections of its groups. A file that does not parse is reported and ignored.

use super::remotes::parse_byte_size;

/// A size as people write it in options and settings: `50G` and `500M` are binary (GiB, MiB),
/// as are `50GiB`; `50GB` is decimal, as git-annex reads it.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let with_unit = match v.chars().last() {
        Some(c) if "kKmMgGtT".contains(c) => format!("{v}iB"),
        _ => v.to_string(),
    };
    parse_byte_size(&with_unit)
}
use serde::Deserialize;
use std::collections::BTreeMap;

/// The name of the settings file at the repository's root.
pub const FILE: &str = ".annexfs.toml";

/// Limits on what annexfs asks of one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes per second.
    pub bwlimit: Option<u64>,
    /// Requests at once.
    pub maxconnections: Option<u32>,
}

impl Limits {
    /// Each field from `self`, else from `other`.
    fn or(self, other: Limits) -> Limits {
        Limits { bwlimit: self.bwlimit.or(other.bwlimit), maxconnections: self.maxconnections.or(other.maxconnections) }
    }

    /// The tighter of each field.
    fn tightest(self, other: Limits) -> Limits {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        Limits {
            bwlimit: min(self.bwlimit, other.bwlimit),
            maxconnections: min(self.maxconnections.map(u64::from), other.maxconnections.map(u64::from))
                .and_then(|v| u32::try_from(v).ok()),
        }
    }

    pub fn is_none(&self) -> bool {
        self.bwlimit.is_none() && self.maxconnections.is_none()
    }
}

/// A peer of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub url: String,
    pub group: Option<String>,
    pub bwlimit: Option<u64>,
}

/// What `.annexfs.toml` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub cache_size: Option<u64>,
    pub remotes: BTreeMap<String, Limits>,
    pub groups: BTreeMap<String, Limits>,
    pub peers: Vec<Peer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    bwlimit: Option<Size>,
    maxconnections: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    size: Option<Size>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    url: String,
    group: Option<String>,
    bwlimit: Option<Size>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    cache: Option<RawCache>,
    #[serde(default)]
    remote: BTreeMap<String, RawLimits>,
    #[serde(default)]
    group: BTreeMap<String, RawLimits>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    /// The swarm's rules: read by the swarm, from signed commits only.
    #[serde(default, rename = "swarm")]
    _swarm: Option<toml::Value>,
}

/// Why `.annexfs.toml` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("{what}: not a size: {text:?}")]
    NotASize { what: String, text: String },
}

fn size(s: Option<Size>, what: &str) -> Result<Option<u64>, SettingsError> {
    match s {
        None => Ok(None),
        Some(Size::Number(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => {
            parse_size(&t).map(Some).ok_or_else(|| SettingsError::NotASize { what: what.to_string(), text: t })
        }
    }
}

fn limits(r: RawLimits, what: &str) -> Result<Limits, SettingsError> {
    Ok(Limits { bwlimit: size(r.bwlimit, what)?, maxconnections: r.maxconnections })
}

impl Settings {
    /// Parses `.annexfs.toml`.
    pub fn parse(text: &str) -> Result<Settings, SettingsError> {
        let raw: Raw = toml::from_str(text)?;
        let mut s = Settings { cache_size: size(raw.cache.and_then(|c| c.size), "cache.size")?, ..Default::default() };
        for (name, r) in raw.remote {
            let l = limits(r, &format!("remote.{name}"))?;
            s.remotes.insert(name, l);
        }
        for (name, r) in raw.group {
            let l = limits(r, &format!("group.{name}"))?;
            s.groups.insert(name, l);
        }
        for p in raw.peer {
            let bwlimit = size(p.bwlimit, "peer.bwlimit")?;
            s.peers.push(Peer { url: p.url, group: p.group, bwlimit });
        }
        Ok(s)
    }

    /// The limits of remote `name` in groups `groups`, with `config` (this clone's git config
    /// values) first.
    pub fn limits_for(&self, name: &str, groups: &[String], config: Limits) -> Limits {
        let by_group = groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .fold(Limits::default(), |acc, l| if acc.is_none() { *l } else { acc.tightest(*l) });
        config.or(self.remotes.get(name).copied().unwrap_or_default()).or(by_group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_ranks_limits() {
        let s = Settings::parse(
            r#"
[cache]
size = "50G"
[remote.web]
bwlimit = "20MiB"
[remote.origin]
maxconnections = 2
[group.archive]
bwlimit = "5MiB"
maxconnections = 8
[group.slow]
bwlimit = 1000
[[peer]]
url = "http://192.0.2.7:7420"
group = "lan"
bwlimit = "20MiB"
"#,
        )
        .unwrap();
        assert_eq!(s.cache_size, Some(50 << 30));
        assert_eq!(s.peers[0].bwlimit, Some(20 << 20));
        let none = Limits::default();
        assert_eq!(s.limits_for("web", &[], none), Limits { bwlimit: Some(20 << 20), maxconnections: None });
        let groups = vec!["archive".to_string(), "slow".to_string()];
        assert_eq!(s.limits_for("origin", &groups, none), Limits { bwlimit: Some(1000), maxconnections: Some(2) });
        let cfg = Limits { bwlimit: Some(7), maxconnections: None };
        assert_eq!(s.limits_for("origin", &groups, cfg), Limits { bwlimit: Some(7), maxconnections: Some(2) });
        assert!(Settings::parse("[remote.x]\nbwlimit = \"lots\"\n").is_err());
        assert!(Settings::parse("[remote.x]\nspeed = 1\n").is_err(), "unknown keys are refused");
    }
}
