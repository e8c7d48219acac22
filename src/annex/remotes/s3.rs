//! S3 special remotes without encryption: where a key's objects are in a bucket, and with
//! which credentials they may be read (git-annex's `Remote/S3.hs`, `Creds.hs`).
//!
//! Design: everything git-annex decides from `remote.log` is decided here, once per remote
//! ([`S3Remote::from_config`]): the endpoint (host, port, protocol, `requeststyle=path`), the
//! region, the bucket (lowercased, as git-annex does), `fileprefix`, `mungekeys=ia`,
//! `signature`, `public`, `publicurl`, `exporttree`, `versioning`. A bad value makes the remote
//! unreadable with the reason, never a guess. Per key ([`S3Remote::access`]) the objects are
//! computed without touching the network:
//! - a key-storing remote holds `fileprefix + KEY` (flat), or, when the remote's `.log.cnk`
//!   says so, the chunk objects `fileprefix + KEY-S<size>-C<n>` in order;
//! - with `versioning=yes` the version recorded in the key's `.log.rmet` (field `V`,
//!   `<vid>#<object>`) is read, which is the only way to find an exported key
//!   (`exporttree=yes`): its object is `fileprefix + exported path`.
//!
//! Credentials are looked up as git-annex does: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (and `AWS_SESSION_TOKEN`), then `.git/annex/creds/<uuid>`, then `s3creds=` embedded in
//! `remote.log` (`embedcreds=yes`, base64 of the same two lines). Without credentials the
//! remote is read unsigned where it says so (`signature=anonymous`, `publicurl=`,
//! `public=yes`). Secrets are kept in [`Secret`], whose `Debug` never shows them.

use super::{Access, KeyFacts, Location, Remote, Unreadable};
use crate::annex::Key;
use crate::annex::repo::GitConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// git-annex's default S3 host (Amazon).
const AWS_HOST: &str = "s3.amazonaws.com";

/// A secret string: compared and cloned, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// An access key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret: Secret,
    pub session_token: Option<Secret>,
    /// Where they were found, for `annexfs sources` (never the secret).
    pub from: &'static str,
}

/// How requests are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Auth {
    /// Signed (SigV4) requests to the endpoint.
    Signed(S3Credentials),
    /// Unsigned requests to the endpoint (a public bucket).
    Anonymous,
    /// Unsigned requests to `publicurl` + object.
    Public(String),
}

/// `signature=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    Signed,
    Anonymous,
}

/// The remote as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Remote {
    /// `protocol://host:port` of the S3 API.
    pub endpoint: String,
    host: String,
    pub path_style: bool,
    pub region: String,
    pub bucket: Option<String>,
    fileprefix: String,
    ia_munge: bool,
    signature: Signature,
    public: bool,
    publicurl: Option<String>,
    pub exporttree: bool,
    pub versioning: bool,
    /// `s3creds=`, decoded (`embedcreds=yes`).
    embedded: Option<(String, Secret)>,
    /// A remote.log value annexfs cannot use, and why.
    bad: Option<String>,
}

impl S3Remote {
    /// From the remote's `remote.log` fields (git config holds nothing S3-specific).
    pub fn from_config(_name: &str, rcfg: &BTreeMap<String, String>, _cfg: &GitConfig) -> S3Remote {
        let get = |k: &str| rcfg.get(k).map(String::as_str);
        let yes = |k: &str| get(k).is_some_and(|v| v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("true"));
        let mut bad = None;
        let host = get("host").unwrap_or(AWS_HOST).to_string();
        let datacenter = get("datacenter").unwrap_or("US");
        let proto_cfg = match get("protocol") {
            None => None,
            Some("http") => Some("http"),
            Some("https") => Some("https"),
            Some(p) => {
                bad = Some(format!("bad protocol={p}"));
                None
            }
        };
        // git-annex: port 80 with protocol=https means 443; no port means the protocol's.
        let port: u16 = match get("port").map(|p| p.trim().parse::<u16>()) {
            None => {
                if proto_cfg == Some("https") {
                    443
                } else {
                    80
                }
            }
            Some(Ok(80)) if proto_cfg == Some("https") => 443,
            Some(Ok(p)) => p,
            Some(Err(_)) => {
                bad = Some(format!("bad port={}", get("port").unwrap_or_default()));
                80
            }
        };
        let proto = proto_cfg.unwrap_or(if port == 443 { "https" } else { "http" });
        // The default host means Amazon's endpoint for the datacenter.
        let api_host = if host == AWS_HOST {
            match datacenter {
                "US" => AWS_HOST.to_string(),
                "EU" => "s3-eu-west-1.amazonaws.com".to_string(),
                r => format!("s3-{r}.amazonaws.com"),
            }
        } else {
            host.clone()
        };
        let path_style = match get("requeststyle") {
            None => false,
            Some("path") => true,
            Some(s) => {
                bad = Some(format!("bad requeststyle={s}"));
                false
            }
        };
        let region = match get("region") {
            Some(r) => r.to_string(),
            None => match datacenter {
                "US" => "us-east-1".to_string(),
                "EU" => "eu-west-1".to_string(),
                r => r.to_string(),
            },
        };
        let signature = match get("signature") {
            Some("anonymous") => Signature::Anonymous,
            // v2 and v4 remotes alike are read with SigV4, which every S3 server speaks.
            _ => Signature::Signed,
        };
        let embedded = get("s3creds").and_then(decode_embedded);
        let bracket = |h: &str| if h.contains(':') && !h.starts_with('[') { format!("[{h}]") } else { h.to_string() };
        S3Remote {
            endpoint: format!("{proto}://{}:{port}", bracket(&api_host)),
            host,
            path_style,
            region,
            bucket: get("bucket").map(str::to_lowercase),
            fileprefix: get("fileprefix").unwrap_or_default().to_string(),
            ia_munge: get("mungekeys") == Some("ia"),
            signature,
            public: yes("public"),
            publicurl: get("publicurl").filter(|u| !u.is_empty()).map(str::to_string),
            exporttree: yes("exporttree"),
            versioning: yes("versioning"),
            embedded,
            bad,
        }
    }

    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, remote: &Remote, facts: &KeyFacts<'_>, acc: &mut Access) {
        match self.location(remote, facts) {
            Ok(loc) => acc.locations.push(Location::S3(Box::new(loc))),
            Err(why) => acc.readable = Err(why),
        }
    }

    fn location(&self, remote: &Remote, facts: &KeyFacts<'_>) -> Result<S3Location, Unreadable> {
        if let Some(bad) = &self.bad {
            return Err(Unreadable::S3Config(bad.clone()));
        }
        let bucket = self.bucket.clone().ok_or(Unreadable::S3NoBucket)?;
        let key = facts.key;
        let size = key.size().ok_or(Unreadable::NoSize)?;
        let uuid = remote.uuid.as_deref().unwrap_or_default();
        let auth = if self.signature == Signature::Anonymous {
            match &self.publicurl {
                Some(u) => S3Auth::Public(u.clone()),
                None => S3Auth::Anonymous,
            }
        } else if let Some(c) = credentials(facts.gitdir, uuid, self.embedded.as_ref()) {
            S3Auth::Signed(c)
        } else if let Some(u) = &self.publicurl {
            S3Auth::Public(u.clone())
        } else if self.public {
            S3Auth::Anonymous
        } else {
            return Err(Unreadable::S3NoCredentials(uuid.to_string()));
        };
        // The version ids recorded for the key: `<vid>#<object>`; git-annex uses the first.
        let versions: Vec<(String, String)> = if self.versioning {
            let field = format!("{uuid}:v").into_bytes();
            (facts.remote_meta)()
                .get(&field)
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    let v = std::str::from_utf8(v).ok()?;
                    let (vid, obj) = v.split_once('#')?;
                    (!vid.is_empty() && !obj.is_empty()).then(|| (vid.to_string(), obj.to_string()))
                })
                .collect()
        } else {
            Vec::new()
        };
        let parts = if self.exporttree {
            if !self.versioning {
                return Err(Unreadable::S3ExportUnversioned);
            }
            let (vid, obj) = versions.first().ok_or(Unreadable::S3NoVersionId)?;
            vec![S3Part { object: obj.clone(), len: size, version: Some(vid.clone()) }]
        } else if let Some(&(chunk, count)) = facts.chunk_log.get(uuid.as_bytes()).and_then(|l| l.first()) {
            // Every chunk holds `chunk` bytes but the last, which holds the rest (1..=chunk).
            let before = chunk.checked_mul(count.saturating_sub(1));
            let last =
                before.and_then(|b| size.checked_sub(b)).filter(|&l| count > 0 && l <= chunk && (l > 0 || size == 0));
            let Some(last) = last else {
                return Err(Unreadable::S3Config(format!("chunk log says {count} chunks of {chunk} for {size} bytes")));
            };
            let parts: Vec<S3Part> = (1..=count)
                .map(|n| S3Part {
                    object: self.object(&key.chunk(chunk, n)),
                    len: if n == count { last } else { chunk },
                    version: None,
                })
                .collect();
            parts
        } else {
            let (object, version) = match versions.first() {
                Some((vid, obj)) => (obj.clone(), Some(vid.clone())),
                None => (self.object(key), None),
            };
            vec![S3Part { object, len: size, version }]
        };
        let loc = S3Location {
            remote: remote.name.clone(),
            endpoint: self.endpoint.clone(),
            path_style: self.path_style,
            bucket,
            region: self.region.clone(),
            auth,
            parts,
            public_urls: self.public_urls(key, &versions),
        };
        for u in loc.read_urls() {
            facts.policy.check_url(&u)?;
        }
        Ok(loc)
    }

    /// The bucket object of a (chunk) key.
    fn object(&self, key: &Key) -> String {
        let name = format!("{}{}", self.fileprefix, key);
        if self.ia_munge { ia_munge(&name) } else { name }
    }

    /// The URLs `git annex whereis` shows for the key (git-annex's `getPublicWebUrls`).
    fn public_urls(&self, key: &Key, versions: &[(String, String)]) -> Vec<String> {
        let bucket = self.bucket.clone().unwrap_or_default();
        let base = match &self.publicurl {
            Some(u) => Some(u.clone()),
            None if self.host == AWS_HOST => Some(format!("https://{bucket}.s3.amazonaws.com/")),
            None if self.host.to_ascii_lowercase().ends_with(".archive.org") && !self.exporttree => {
                Some(format!("http://archive.org/download/{bucket}/"))
            }
            None => None,
        };
        let Some(base) = base else { return Vec::new() };
        if self.exporttree {
            if !self.versioning {
                return Vec::new();
            }
            versions.iter().map(|(vid, obj)| format!("{}?versionId={vid}", public_url(&base, obj))).collect()
        } else {
            vec![public_url(&base, &self.object(key))]
        }
    }
}

/// git-annex's `genericPublicUrl`: base `</>` object, escaped but for `/` and unreserved.
pub fn public_url(base: &str, object: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');
    let sep = if base.ends_with('/') { "" } else { "/" };
    format!("{base}{sep}{}", percent_encoding::utf8_percent_encode(object, SET))
}

/// git-annex's `iaMunge` (archive.org object names): ASCII letters, digits and `_-."` as they
/// are, whitespace dropped, anything else as `&<code>;`.
fn ia_munge(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "_-.\"".contains(c) {
            o.push(c);
        } else if !c.is_whitespace() {
            o.push_str(&format!("&{};", u32::from(c)));
        }
    }
    o
}

/// Two lines, key id and secret (git-annex's `decodeCredPair`: exactly two lines).
fn decode_pair(text: &str) -> Option<(String, Secret)> {
    let lines: Vec<&str> = text.lines().collect();
    match lines.as_slice() {
        [id, secret] if !id.is_empty() && !secret.is_empty() => Some((id.to_string(), Secret(secret.to_string()))),
        _ => None,
    }
}

fn decode_embedded(b64: &str) -> Option<(String, Secret)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    decode_pair(std::str::from_utf8(&raw).ok()?)
}

/// The credentials git-annex would use for the remote with `uuid`, in its order.
fn credentials(gitdir: &Path, uuid: &str, embedded: Option<&(String, Secret)>) -> Option<S3Credentials> {
    let token = std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret);
    if let (Ok(id), Ok(secret)) = (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        return Some(S3Credentials {
            access_key: id,
            secret: Secret(secret),
            session_token: token,
            from: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        });
    }
    let file = (!uuid.is_empty() && !uuid.contains('/')).then(|| gitdir.join("annex/creds").join(uuid));
    if let Some((id, secret)) = file.and_then(|f| std::fs::read_to_string(f).ok()).and_then(|t| decode_pair(&t)) {
        return Some(S3Credentials { access_key: id, secret, session_token: token, from: ".git/annex/creds" });
    }
    embedded.map(|(id, secret)| S3Credentials {
        access_key: id.clone(),
        secret: secret.clone(),
        session_token: token,
        from: "remote.log (embedcreds)",
    })
}

/// One object holding part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Part {
    pub object: String,
    /// Bytes of the key it holds (its whole size).
    pub len: u64,
    /// The S3 version to read (`versioning=yes`).
    pub version: Option<String>,
}

/// Where one key is, on such a remote: its objects in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The remote's name (who answers for the bytes).
    pub remote: String,
    pub endpoint: String,
    pub path_style: bool,
    pub bucket: String,
    pub region: String,
    pub auth: S3Auth,
    pub parts: Vec<S3Part>,
    /// What `git annex whereis` shows for the key.
    pub public_urls: Vec<String>,
}

impl S3Location {
    /// The unsigned URL of each part, as read.
    pub fn read_urls(&self) -> Vec<String> {
        self.parts
            .iter()
            .map(|p| {
                let url = match &self.auth {
                    S3Auth::Public(base) => public_url(base, &p.object),
                    S3Auth::Signed(_) | S3Auth::Anonymous => {
                        let obj = public_url("", &p.object);
                        if self.path_style {
                            format!("{}/{}{obj}", self.endpoint, self.bucket)
                        } else {
                            let (proto, rest) = self.endpoint.split_once("://").unwrap_or(("https", &self.endpoint));
                            format!("{proto}://{}.{rest}{obj}", self.bucket)
                        }
                    }
                };
                match &p.version {
                    Some(v) => format!("{url}?versionId={v}"),
                    None => url,
                }
            })
            .collect()
    }

    /// The location as text, for `annexfs sources`: the object URLs read, then the public
    /// URLs git-annex shows if they differ. Never a secret.
    pub fn strings(&self) -> Vec<String> {
        let mut out = self.read_urls();
        for u in &self.public_urls {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }

    /// How requests are authenticated, for `annexfs sources`.
    pub fn auth_text(&self) -> String {
        match &self.auth {
            S3Auth::Signed(c) => format!("signed with credentials from {}", c.from),
            S3Auth::Anonymous => "unsigned (public bucket)".into(),
            S3Auth::Public(u) => format!("unsigned through publicurl {u}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(fields: &[(&str, &str)]) -> S3Remote {
        let m = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        S3Remote::from_config("s3", &m, &GitConfig::from_pairs([]))
    }

    #[test]
    fn endpoints() {
        let r = remote(&[("host", "127.0.0.1"), ("port", "9000"), ("protocol", "http"), ("requeststyle", "path")]);
        assert_eq!(r.endpoint, "http://127.0.0.1:9000");
        assert!(r.path_style);
        assert_eq!(r.region, "us-east-1");
        let r = remote(&[("host", "s3.amazonaws.com"), ("port", "80"), ("protocol", "https"), ("datacenter", "EU")]);
        assert_eq!(r.endpoint, "https://s3-eu-west-1.amazonaws.com:443");
        assert_eq!(r.region, "eu-west-1");
        let r = remote(&[("port", "443")]);
        assert_eq!(r.endpoint, "https://s3.amazonaws.com:443");
        assert!(remote(&[("requeststyle", "odd")]).bad.is_some());
        assert!(remote(&[("port", "x")]).bad.is_some());
        assert_eq!(remote(&[("bucket", "My-Bucket")]).bucket.as_deref(), Some("my-bucket"));
    }

    #[test]
    fn embedded_creds_and_secrecy() {
        let r = remote(&[("s3creds", "QUtJRAp0b3BzZWNyZXQK")]); // "AKID\ntopsecret\n"
        let (id, secret) = r.embedded.clone().unwrap();
        assert_eq!((id.as_str(), secret.expose()), ("AKID", "topsecret"));
        assert!(!format!("{r:?}").contains("topsecret"));
        assert!(decode_embedded("QUtJRAo=").is_none(), "one line is not a pair");
    }

    #[test]
    fn public_urls_and_munging() {
        assert_eq!(public_url("http://h/b", "a b+c/d"), "http://h/b/a%20b%2Bc/d");
        assert_eq!(public_url("http://h/b/", "x"), "http://h/b/x");
        assert_eq!(ia_munge("SHA256E-s1--ab c/é"), "SHA256E-s1--abc&47;&233;");
    }

    fn access(r: &S3Remote, key: &str, cnk: &[(u64, u64)], rmet: &[u8]) -> Access {
        let remote = Remote {
            name: "s3".into(),
            uuid: Some("u1".into()),
            kind: super::super::RemoteKind::S3(r.clone()),
            cost: 200,
            ignore: false,
            trust_override: None,
        };
        let key = Key::parse_str(key).unwrap();
        let mut chunk_log = crate::annex::logs::ChunkLog::new();
        if !cnk.is_empty() {
            chunk_log.insert(b"u1".to_vec(), cnk.to_vec());
        }
        let meta = || crate::annex::logs::parse_metadata_log([rmet]);
        let policy = crate::annex::policy::AddressPolicy::from_config(Some("all"));
        let facts = KeyFacts {
            key: &key,
            chunk_log: &chunk_log,
            web_urls: &[],
            policy: &policy,
            base: Path::new("/nonexistent"),
            gitdir: Path::new("/nonexistent/.git"),
            remote_meta: &meta,
        };
        remote.access(&facts)
    }

    #[test]
    fn chunked_and_exported_locations() {
        let base = [("host", "127.0.0.1"), ("port", "9"), ("requeststyle", "path"), ("bucket", "b")];
        let anon = |extra: &[(&'static str, &'static str)]| {
            remote(&[base.as_slice(), &[("signature", "anonymous")], extra].concat())
        };
        let a = access(&anon(&[("fileprefix", "p/")]), "SHA256E-s2500--ab.bin", &[(1000, 3)], b"");
        let Some(Location::S3(loc)) = a.locations.first() else { panic!("{a:?}") };
        let lens: Vec<u64> = loc.parts.iter().map(|p| p.len).collect();
        assert_eq!(lens, [1000, 1000, 500]);
        assert_eq!(loc.parts[2].object, "p/SHA256E-s2500-S1000-C3--ab.bin");
        assert_eq!(loc.strings()[0], "http://127.0.0.1:9/b/p/SHA256E-s2500-S1000-C1--ab.bin");
        // A chunk log that does not add up is a reason, not a guess.
        let a = access(&anon(&[]), "SHA256E-s2500--ab.bin", &[(1000, 5)], b"");
        assert!(matches!(a.readable, Err(Unreadable::S3Config(_))), "{a:?}");
        // Exports: only by the recorded version.
        let x = anon(&[("exporttree", "yes"), ("versioning", "yes")]);
        let a = access(&x, "SHA256E-s5--ab.bin", &[], b"1s u1:V +vid1#dir/f%20g.bin\n");
        let Some(Location::S3(loc)) = a.locations.first() else { panic!("{a:?}") };
        assert_eq!(loc.strings(), ["http://127.0.0.1:9/b/dir/f%2520g.bin?versionId=vid1"]);
        let a = access(&x, "SHA256E-s5--ab.bin", &[], b"");
        assert_eq!(a.readable, Err(Unreadable::S3NoVersionId));
        let a = access(&anon(&[("exporttree", "yes")]), "SHA256E-s5--ab.bin", &[], b"");
        assert_eq!(a.readable, Err(Unreadable::S3ExportUnversioned));
    }
}
