//! `annex.security.allowed-ip-addresses`, as git-annex applies it to HTTP: public addresses
//! are allowed; loopback, private, link-local and unspecified addresses only when listed (or
//! when the setting is `all`).
//!
//! Here only literal addresses (and `localhost`) can be judged; a host name is judged again on
//! the addresses it resolves to when a connection is made.

use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow_all: bool,
    allowed: Vec<IpAddr>,
}

impl AddressPolicy {
    /// Parses the config value: `all`, or addresses separated by spaces (IPv6 optionally in
    /// brackets).
    pub fn from_config(value: Option<&str>) -> AddressPolicy {
        let Some(v) = value else { return AddressPolicy::default() };
        if v.trim() == "all" {
            return AddressPolicy { allow_all: true, allowed: Vec::new() };
        }
        let allowed = v
            .split_whitespace()
            .filter_map(|a| a.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok())
            .collect();
        AddressPolicy { allow_all: false, allowed }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_all || self.allowed.contains(&canonical(ip)) || !is_restricted(ip)
    }

    /// Checks the host of an http(s) URL.
    pub fn check_url(&self, url: &str) -> Result<(), PolicyError> {
        let lower = url.to_ascii_lowercase();
        let rest = if let Some(r) = lower.strip_prefix("http://") {
            r
        } else if let Some(r) = lower.strip_prefix("https://") {
            r
        } else {
            return Err(PolicyError::Scheme(url.to_string()));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let host = if let Some(h) = hostport.strip_prefix('[') {
            h.split(']').next().unwrap_or("")
        } else {
            hostport.split(':').next().unwrap_or("")
        };
        if host.is_empty() {
            return Err(PolicyError::NoHost(url.to_string()));
        }
        let ips: Vec<IpAddr> = if host == "localhost" || host.ends_with(".localhost") {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            vec![ip]
        } else {
            return Ok(());
        };
        match ips.into_iter().find(|ip| !self.allows(*ip)) {
            None => Ok(()),
            Some(ip) => Err(PolicyError::Address { url: url.to_string(), ip }),
        }
    }
}

/// Why a URL may not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}: only http and https URLs can be read")]
    Scheme(String),
    #[error("{0}: no host")]
    NoHost(String),
    #[error("{url}: address {ip} is not allowed by annex.security.allowed-ip-addresses")]
    Address { url: String, ip: IpAddr },
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private, link-local, unique-local, unspecified and multicast addresses.
pub fn is_restricted(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link local fe80::/10
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_refuses_private() {
        let p = AddressPolicy::from_config(None);
        assert!(p.check_url("http://127.0.0.1:8080/x").is_err());
        assert!(p.check_url("http://localhost/x").is_err());
        assert!(p.check_url("http://[::1]/x").is_err());
        assert!(p.check_url("http://10.1.2.3/x").is_err());
        assert!(p.check_url("http://192.168.1.1/x").is_err());
        assert!(p.check_url("http://[fe80::1]/x").is_err());
        assert!(p.check_url("http://user@[::ffff:127.0.0.1]:80/x").is_err());
        assert!(p.check_url("http://93.184.216.34/x").is_ok());
        assert!(p.check_url("https://example.com/x").is_ok());
        assert!(p.check_url("ftp://example.com/x").is_err());
    }

    #[test]
    fn allowed_lists() {
        let p = AddressPolicy::from_config(Some("127.0.0.1 [::1]"));
        assert!(p.check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(p.check_url("http://[::1]/x").is_ok());
        assert!(p.check_url("http://10.0.0.1/x").is_err());
        let all = AddressPolicy::from_config(Some("all"));
        assert!(all.check_url("http://10.0.0.1/x").is_ok());
    }
}
