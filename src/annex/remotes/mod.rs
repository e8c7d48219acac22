//! Remotes of a repository, from `.git/config` and the git-annex branch's `remote.log`
//! (reference §5), and how annexfs can read a key from each.
//!
//! A [`Remote`] is what the configuration says; [`Remote::access`] turns it, for one key, into
//! an [`Access`]: readable or not (with the reason), and where (paths, URLs), in the order to
//! try them. Nothing here touches the network; local paths are checked with `stat` only.

pub mod external;
pub mod p2phttp;
pub mod s3;
pub mod ssh;

use super::key::Key;
use super::logs::Trust;
use super::policy::{AddressPolicy, PolicyError};
use super::repo::{GitConfig, HashDirKind, ObjectLayout, clean_path, resolve_gitdir};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The UUID of git-annex's built-in web special remote.
pub const WEB_UUID: &str = "00000000-0000-0000-0000-000000000001";
/// The UUID of git-annex's built-in bittorrent special remote.
pub const BITTORRENT_UUID: &str = "00000000-0000-0000-0000-000000000002";

/// Default costs (git-annex `Config/Cost.hs`): lower is tried first.
pub mod cost {
    pub const HERE: u32 = 0;
    pub const CHEAP: u32 = 100;
    pub const EXPENSIVE: u32 = 200;
    /// Added for encrypted remotes.
    pub const ENCRYPTED_EXTRA: u32 = 50;
}

/// How a directory special remote stores a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunking {
    /// Not chunked, or chunk size not configured.
    None,
    /// `chunk=SIZE`: new-style chunk keys of exactly SIZE bytes (the last one shorter).
    Chunk(u64),
    /// `chunksize=SIZE` (deprecated): `KEY.chunkN` files of varying sizes.
    Legacy(u64),
}

/// What kind of remote, with what annexfs needs to read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteKind {
    /// A git remote on a local path (worktree, `.git`, bare repository or `file://`).
    GitLocal { path: PathBuf },
    /// A git remote over http(s).
    GitHttp { url: String, bare: Option<bool>, annex_url: Option<String> },
    /// A git remote over ssh (`ssh://…`, `user@host:path`), read with `git-annex-shell
    /// p2pstdio`.
    GitSsh(ssh::SshRemote),
    /// A git remote served by `git annex p2phttp` (`annex+http(s)://…`).
    P2pHttp(p2phttp::P2pHttpRemote),
    /// A git remote reached some other way (`git://`, …): not readable by annexfs.
    GitOther { url: String },
    /// A directory special remote.
    Directory { dir: Option<PathBuf>, chunking: Chunking, encrypted: bool },
    /// An httpalso special remote.
    HttpAlso { url: Option<String>, encrypted: bool },
    /// The built-in web remote.
    Web,
    /// The built-in bittorrent remote.
    BitTorrent,
    /// An S3 special remote without encryption.
    S3(s3::S3Remote),
    /// An external special remote (`type=external`) without encryption.
    External(external::ExternalRemote),
    /// Any other special remote type (rsync, gcrypt, …), and encrypted S3 or external ones.
    Special { type_: String, encrypted: bool },
}

/// A remote as configured.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    /// The UUID under which its content is logged (`annex-uuid`).
    pub uuid: Option<String>,
    pub kind: RemoteKind,
    pub cost: u32,
    /// `annex-ignore`: git-annex does not use it for content.
    pub ignore: bool,
    pub trust_override: Option<Trust>,
}

/// Why annexfs cannot read a key from a holder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("annex-ignore is set for this remote")]
    Ignored,
    #[error("{} is not a reachable git repository", .0.display())]
    NotARepository(PathBuf),
    #[error("no object for the key under {}", .0.display())]
    NoObject(PathBuf),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("git remote {0} is not on a local path or http(s)")]
    UnsupportedGitUrl(String),
    #[error("ssh remote URL {url}: {why}")]
    BadSshUrl { url: String, why: String },
    #[error("ssh remote without remote.NAME.annex-uuid: git-annex-shell needs the repository's UUID")]
    NoSshUuid,
    #[error("no ssh client on PATH (install openssh-client)")]
    NoSshClient,
    #[error("encrypted special remote: its content cannot be read by ranges; readable with annex_get")]
    Encrypted,
    #[error("directory special remote without annex-directory in git config")]
    NoDirectory,
    #[error("no object or chunks for the key under {}", .0.display())]
    NoChunks(PathBuf),
    #[error("httpalso remote without url= in remote.log")]
    NoHttpAlsoUrl,
    #[error("no http(s) URL recorded for the key")]
    NoUrl,
    /// Every recorded URL was refused.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    UrlsRefused(Vec<PolicyError>),
    #[error("bittorrent content is not byte-range addressable; readable with annex_get")]
    BitTorrent,
    #[error("the key has no size to read ranges of")]
    NoSize,
    #[error("S3 remote config: {0}")]
    S3Config(String),
    #[error("S3 remote without bucket= in remote.log")]
    S3NoBucket,
    #[error(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `git annex enableremote` it (.git/annex/creds/{0}), or give it publicurl="
    )]
    S3NoCredentials(String),
    #[error("exporttree=yes without versioning=yes: annexfs reads exported S3 objects by their recorded version only")]
    S3ExportUnversioned,
    #[error("versioning=yes but no S3 version ID is recorded for the key (.log.rmet)")]
    S3NoVersionId,
    #[error("{0} special remotes are not supported yet; readable with annex_get")]
    UnsupportedType(String),
    #[error("external special remote without externaltype")]
    NoExternalType,
    #[error("{0} is not on PATH")]
    ProgramMissing(String),
    #[error("content is not present in this repository's annex")]
    NotHere,
    #[error("no remote in git config has this repository's UUID")]
    NoRemote,
    #[error("p2phttp URL refused: {0}")]
    P2pHttpUrl(p2phttp::UrlError),
    #[error("p2phttp remote without annex-uuid in git config or a UUID at the end of its URL")]
    P2pHttpNoUuid,
    /// Each remote with the holder's UUID, and why it cannot be read.
    #[error("{}", .0.iter().map(|(r, e)| if r.is_empty() { e.to_string() } else { format!("{r}: {e}") }).collect::<Vec<_>>().join("; "))]
    NoRemoteReadable(Vec<(String, Unreadable)>),
}

impl Unreadable {
    /// Whether git-annex itself can get the key from such a holder (`git annex get --key`),
    /// which annexfs does when `annex_get` is on and nothing else can serve the key.
    pub fn git_annex_can_get(&self) -> bool {
        match self {
            Unreadable::Encrypted | Unreadable::UnsupportedType(_) | Unreadable::BitTorrent => true,
            Unreadable::NoRemoteReadable(v) => v.iter().any(|(_, e)| e.git_annex_can_get()),
            _ => false,
        }
    }
}

/// For one key and one remote: can annexfs read it, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub remote: String,
    pub cost: u32,
    pub readable: Result<(), Unreadable>,
    pub locations: Vec<Location>,
}

/// A place holding (part of) a key's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A whole object file on a local path.
    Path(PathBuf),
    /// Chunk files on a local path, in order; each holds `len` bytes of the key.
    Chunks(Vec<(PathBuf, u64)>),
    /// An http(s) URL for the whole object (ranges may be asked): one mirror.
    Url(String),
    /// Candidate URLs of one source, tried in order until one is not 404 (the hash-directory
    /// layouts of an http git remote or an httpalso remote).
    Urls(Vec<String>),
    /// A repository behind ssh.
    Ssh(ssh::SshLocation),
    /// A p2phttp server.
    P2pHttp(p2phttp::P2pHttpLocation),
    /// Objects in an S3 bucket.
    S3(Box<s3::S3Location>),
    /// An external special remote program.
    External(external::ExternalLocation),
}

impl Location {
    /// Each path or URL as text (chunks expand to one entry each).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Location::Path(p) => vec![p.display().to_string()],
            Location::Chunks(c) => c.iter().map(|(p, _)| p.display().to_string()).collect(),
            Location::Url(u) => vec![u.clone()],
            Location::Urls(u) => u.clone(),
            Location::Ssh(l) => l.strings(),
            Location::P2pHttp(l) => l.strings(),
            Location::S3(l) => l.strings(),
            Location::External(l) => l.strings(),
        }
    }
}

/// Parses a size like git-annex's `chunk=`: case-insensitive, `kB/MB/GB/TB` powers of 1000,
/// `KiB/MiB/GiB/TiB` powers of 1024, no unit is bytes, fractions allowed (`1.5MiB`).
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_u64.pow(2),
        "g" | "gb" => 1000_u64.pow(3),
        "t" | "tb" => 1000_u64.pow(4),
        "ki" | "kib" => 1024,
        "mi" | "mib" => 1024_u64.pow(2),
        "gi" | "gib" => 1024_u64.pow(3),
        "ti" | "tib" => 1024_u64.pow(4),
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    match num.split_once('.') {
        None => num.parse::<u64>().ok()?.checked_mul(mult),
        Some((int, frac)) => {
            let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
            if frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit()) || frac.len() > 18 {
                return None;
            }
            let denom = 10_u64.pow(u32::try_from(frac.len()).ok()?);
            let frac: u64 = frac.parse().ok()?;
            let whole = int.checked_mul(mult)?;
            let part = u64::try_from(u128::from(frac) * u128::from(mult) / u128::from(denom)).ok()?;
            whole.checked_add(part)
        }
    }
}

fn is_encrypted(cfg: &BTreeMap<String, String>) -> bool {
    cfg.get("encryption").is_some_and(|e| e != "none")
}

/// Reads the remotes from git config and the compacted `remote.log` (UUID → config).
pub fn load_remotes(cfg: &GitConfig, remote_log: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Remote> {
    let mut out = Vec::new();
    for name in cfg.remote_names() {
        let get = |var: &str| cfg.remote(&name, var);
        let uuid = get("annex-uuid").map(str::to_string);
        let config_uuid = get("annex-config-uuid").map(str::to_string).or_else(|| uuid.clone());
        // The special remote config; a sameas remote inherits the data-related fields of the
        // remote it shares storage with.
        let mut rcfg = config_uuid.as_ref().and_then(|u| remote_log.get(u)).cloned().unwrap_or_default();
        if let Some(parent) = rcfg.get("sameas-uuid").and_then(|p| remote_log.get(p)) {
            for field in ["encryption", "mac", "cipher", "cipherkeys", "pubkeys", "chunksize", "chunk"] {
                match parent.get(field) {
                    Some(v) => rcfg.insert(field.to_string(), v.clone()),
                    None => rcfg.remove(field),
                };
            }
        }
        let encrypted = is_encrypted(&rcfg);
        let url = get("url").map(str::to_string);
        let type_ = rcfg.get("type").cloned();
        let kind = if get("annex-directory").is_some() || type_.as_deref() == Some("directory") {
            let chunking = if let Some(c) = rcfg.get("chunk").and_then(|c| parse_byte_size(c)).filter(|&c| c > 0) {
                Chunking::Chunk(c)
            } else if let Some(c) = rcfg.get("chunksize").and_then(|c| parse_byte_size(c)).filter(|&c| c > 0) {
                Chunking::Legacy(c)
            } else {
                Chunking::None
            };
            RemoteKind::Directory { dir: get("annex-directory").map(PathBuf::from), chunking, encrypted }
        } else if cfg.remote(&name, "annex-httpalso").is_some() || type_.as_deref() == Some("httpalso") {
            RemoteKind::HttpAlso { url: rcfg.get("url").cloned(), encrypted }
        } else if type_.as_deref() == Some("web") || uuid.as_deref() == Some(WEB_UUID) {
            RemoteKind::Web
        } else if type_.as_deref() == Some("bittorrent") || uuid.as_deref() == Some(BITTORRENT_UUID) {
            RemoteKind::BitTorrent
        } else if type_.as_deref() == Some("S3") && !encrypted {
            RemoteKind::S3(s3::S3Remote::from_config(&name, &rcfg, cfg))
        } else if type_.as_deref() == Some("external") && !encrypted {
            RemoteKind::External(external::ExternalRemote::from_config(&name, &rcfg, cfg))
        } else if let Some(t) = type_.filter(|t| t != "git") {
            RemoteKind::Special { type_: t, encrypted }
        } else if let Some(url) = url {
            git_kind(&name, &url, cfg)
        } else {
            continue;
        };
        let default_cost = match &kind {
            RemoteKind::GitLocal { .. } | RemoteKind::Directory { .. } => cost::CHEAP,
            _ => cost::EXPENSIVE,
        } + if encrypted { cost::ENCRYPTED_EXTRA } else { 0 };
        let cost = get("annex-cost")
            .and_then(|c| c.trim().parse::<f64>().ok())
            .or_else(|| rcfg.get("cost").and_then(|c| c.trim().parse::<f64>().ok()))
            .filter(|c| c.is_finite() && *c >= 0.0)
            // Clamped to u32's range first, so the cast cannot truncate.
            .map_or(default_cost, |c| {
                #[allow(clippy::cast_possible_truncation)]
                let c = c.min(f64::from(u32::MAX)).round() as u32;
                c
            });
        out.push(Remote {
            ignore: cfg.get_bool(&format!("remote.{name}.annex-ignore")).unwrap_or(false),
            trust_override: cfg.remote_trust(&name),
            name,
            uuid,
            kind,
            cost,
        });
    }
    out
}

fn git_kind(name: &str, url: &str, cfg: &GitConfig) -> RemoteKind {
    let lower = url.to_ascii_lowercase();
    // git-annex reads a git remote over p2phttp when `annexurl` or an `annexInsteadOf`
    // rewrite of its url is an annex+http(s) URL (Types/GitConfig.hs).
    let annex_url = cfg
        .remote(name, "annexurl")
        .map(str::to_string)
        .or_else(|| p2phttp::annex_instead_of(cfg, url))
        .filter(|u| is_p2phttp_url(u));
    if let Some(annex_url) = annex_url {
        return RemoteKind::P2pHttp(p2phttp::P2pHttpRemote::with_git_url(url, &annex_url));
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return RemoteKind::GitHttp {
            url: url.trim_end_matches('/').to_string(),
            bare: cfg.get_bool(&format!("remote.{name}.annex-bare")),
            annex_url: cfg.remote(name, "annexurl").map(str::to_string),
        };
    }
    if let Some(path) = url.strip_prefix("file://") {
        let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
        return RemoteKind::GitLocal { path: PathBuf::from(std::ffi::OsStr::from_bytes(&decoded)) };
    }
    // scp-like syntax "host:path" has a colon before any slash; a local path does not.
    let colon = url.find(':');
    let slash = url.find('/');
    let is_scp = matches!((colon, slash), (Some(c), Some(s)) if c < s) || (colon.is_some() && slash.is_none());
    if is_p2phttp_url(url) {
        return RemoteKind::P2pHttp(p2phttp::P2pHttpRemote::from_config(name, url, cfg));
    }
    if lower.starts_with("ssh://") || lower.starts_with("git+ssh://") || lower.starts_with("ssh+git://") || is_scp {
        return RemoteKind::GitSsh(ssh::SshRemote::from_config(name, url, cfg));
    }
    if url.contains("://") {
        return RemoteKind::GitOther { url: url.to_string() };
    }
    RemoteKind::GitLocal { path: PathBuf::from(url) }
}

/// Whether `url` is an `annex+http(s)://` URL (git-annex's `isP2PHttpProtocolUrl`).
pub fn is_p2phttp_url(url: &str) -> bool {
    url.starts_with("annex+http://") || url.starts_with("annex+https://")
}

/// Percent-encodes a keyFile for a URL path: everything but `A-Za-z0-9-._~` and `/`.
pub fn url_escape_key_file(kf: &[u8]) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');
    percent_encoding::percent_encode(kf, SET).to_string()
}

/// The context needed to decide access: the repository's own base path (for relative remote
/// paths), the address policy and the branch facts about the key.
pub struct KeyFacts<'a> {
    pub key: &'a Key,
    /// Chunkings logged in `.log.cnk` for each UUID: UUID → [(size, count)].
    pub chunk_log: &'a super::logs::ChunkLog,
    /// Present plain URLs of `.log.web`.
    pub web_urls: &'a [String],
    pub policy: &'a AddressPolicy,
    /// Directory that relative remote paths are relative to (the worktree or bare repo).
    pub base: &'a Path,
    /// The repository's (common) git directory (`annex/creds/` is in it).
    pub gitdir: &'a Path,
    /// The key's remote metadata (`.log.rmet`, fields `<uuid>:<field>` lowercased), read
    /// only when a remote asks for it.
    pub remote_meta: &'a dyn Fn() -> super::logs::MetaData,
}

impl Remote {
    /// How annexfs can read `facts.key` from this remote.
    pub fn access(&self, facts: &KeyFacts<'_>) -> Access {
        let mut acc = Access { remote: self.name.clone(), cost: self.cost, readable: Ok(()), locations: Vec::new() };
        if self.ignore {
            acc.readable = Err(Unreadable::Ignored);
            return acc;
        }
        let key = facts.key;
        match &self.kind {
            RemoteKind::GitLocal { path } => {
                let path = clean_path(&facts.base.join(path));
                match resolve_gitdir(&path) {
                    None => acc.readable = Err(Unreadable::NotARepository(path)),
                    Some((gitdir, bare)) => {
                        let cfg = GitConfig::from_file(&gitdir.join("config"));
                        let layout = ObjectLayout::for_repo(&gitdir, bare, &cfg);
                        match layout.find(key) {
                            Some(p) => acc.locations.push(Location::Path(p)),
                            None => acc.readable = Err(Unreadable::NoObject(layout.objects_dir.clone())),
                        }
                    }
                }
            }
            RemoteKind::GitHttp { url, bare, annex_url } => {
                if let Err(e) = facts.policy.check_url(url) {
                    acc.readable = Err(e.into());
                    return acc;
                }
                // A p2phttp annexurl makes the remote a P2pHttp one (see `git_kind`); any
                // other annexurl is not read, the plain layout is.
                let _ = annex_url;
                let order = if *bare == Some(false) {
                    [HashDirKind::Mixed, HashDirKind::Lower]
                } else {
                    [HashDirKind::Lower, HashDirKind::Mixed]
                };
                let kf = url_escape_key_file(&key.key_file());
                let urls = order
                    .iter()
                    .map(|&kind| format!("{url}/annex/objects/{}{kf}/{kf}", hashdir(key, kind, false)))
                    .collect();
                acc.locations.push(Location::Urls(urls));
            }
            RemoteKind::GitSsh(r) => r.access(self, facts, &mut acc),
            RemoteKind::P2pHttp(r) => r.access(self, facts, &mut acc),
            RemoteKind::S3(r) => r.access(self, facts, &mut acc),
            RemoteKind::External(r) => r.access(self, facts, &mut acc),
            RemoteKind::GitOther { url } => {
                acc.readable = Err(Unreadable::UnsupportedGitUrl(url.clone()));
            }
            RemoteKind::Directory { encrypted: true, .. }
            | RemoteKind::HttpAlso { encrypted: true, .. }
            | RemoteKind::Special { encrypted: true, .. } => {
                acc.readable = Err(Unreadable::Encrypted);
            }
            RemoteKind::Directory { dir: None, .. } => {
                acc.readable = Err(Unreadable::NoDirectory);
            }
            RemoteKind::Directory { dir: Some(dir), chunking, encrypted: false } => {
                let dir = clean_path(&facts.base.join(dir));
                let uuid = self.uuid.as_deref().unwrap_or_default().as_bytes();
                match directory_location(
                    &dir,
                    key,
                    chunking,
                    facts.chunk_log.get(uuid).map(Vec::as_slice).unwrap_or(&[]),
                ) {
                    Some(loc) => acc.locations.push(loc),
                    None => acc.readable = Err(Unreadable::NoChunks(dir)),
                }
            }
            RemoteKind::HttpAlso { url: None, .. } => {
                acc.readable = Err(Unreadable::NoHttpAlsoUrl);
            }
            RemoteKind::HttpAlso { url: Some(url), encrypted: false } => {
                if let Err(e) = facts.policy.check_url(url) {
                    acc.readable = Err(e.into());
                    return acc;
                }
                acc.locations.push(Location::Urls(httpalso_urls(url, key)));
            }
            RemoteKind::Web => {
                let mut why = Vec::new();
                for u in facts.web_urls {
                    match facts.policy.check_url(u) {
                        Ok(()) => acc.locations.push(Location::Url(u.clone())),
                        Err(e) => why.push(e),
                    }
                }
                if acc.locations.is_empty() {
                    acc.readable = Err(if why.is_empty() { Unreadable::NoUrl } else { Unreadable::UrlsRefused(why) });
                }
            }
            RemoteKind::BitTorrent => {
                acc.readable = Err(Unreadable::BitTorrent);
            }
            RemoteKind::Special { type_, encrypted: false } => {
                acc.readable = Err(Unreadable::UnsupportedType(type_.clone()));
            }
        }
        acc
    }
}

fn hashdir(key: &Key, kind: HashDirKind, one_level: bool) -> String {
    match kind {
        HashDirKind::Lower => key.hashdir_lower(one_level),
        HashDirKind::Mixed => key.hashdir_mixed(one_level),
    }
}

/// The URLs httpalso tries, in order (reference §5.6).
pub fn httpalso_urls(base: &str, key: &Key) -> Vec<String> {
    let base = base.trim_end_matches('/');
    let kf = url_escape_key_file(&key.key_file());
    let (l2, m2) = (key.hashdir_lower(false), key.hashdir_mixed(false));
    let (l1, m1) = (key.hashdir_lower(true), key.hashdir_mixed(true));
    vec![
        format!("{base}/{l2}{kf}/{kf}"),
        format!("{base}/{m2}{kf}/{kf}"),
        format!("{base}/{kf}"),
        format!("{base}/{l2}{kf}"),
        format!("{base}/{m2}{kf}"),
        format!("{base}/{l1}{kf}/{kf}"),
        format!("{base}/{m1}{kf}/{kf}"),
    ]
}

fn key_dir(dir: &Path, key_for_hash: &Key, kf_key: &Key, kind: HashDirKind) -> PathBuf {
    let kf = kf_key.key_file();
    dir.join(hashdir(key_for_hash, kind, false)).join(std::ffi::OsStr::from_bytes(&kf))
}

/// Finds how a directory special remote holds `key`: the chunkings logged for the remote,
/// then the unchunked object, then the configured chunking (git-annex's `chunkKeys`).
pub fn directory_location(dir: &Path, key: &Key, chunking: &Chunking, logged: &[(u64, u64)]) -> Option<Location> {
    let size = key.size();
    let new_style = |chunk_size: u64, count: u64| -> Option<Location> {
        let size = size?;
        let mut files = Vec::new();
        for n in 1..=count {
            let ck = key.chunk(chunk_size, n);
            let len = if n == count { size - chunk_size.checked_mul(count - 1)? } else { chunk_size };
            let path = [HashDirKind::Lower, HashDirKind::Mixed].iter().map(|&k| {
                let d = key_dir(dir, key, &ck, k);
                d.join(std::ffi::OsStr::from_bytes(&ck.key_file()))
            });
            let found = path.into_iter().find(|p| p.is_file())?;
            files.push((found, len));
        }
        Some(Location::Chunks(files))
    };
    for &(s, c) in logged {
        if let Some(loc) = new_style(s, c) {
            return Some(loc);
        }
    }
    for kind in [HashDirKind::Lower, HashDirKind::Mixed] {
        let d = key_dir(dir, key, key, kind);
        let whole = d.join(std::ffi::OsStr::from_bytes(&key.key_file()));
        if whole.is_file() {
            return Some(Location::Path(whole));
        }
        // Legacy chunks: KEY.chunk1…N next to a KEY.chunkcount file, sizes from the files.
        if let Some(loc) = legacy_chunks(&d, key) {
            return Some(loc);
        }
    }
    if let (Chunking::Chunk(s), Some(size)) = (chunking, size) {
        let count = size.div_ceil(*s).max(1);
        if !logged.iter().any(|&(ls, _)| ls == *s) {
            return new_style(*s, count);
        }
    }
    None
}

fn legacy_chunks(keydir: &Path, key: &Key) -> Option<Location> {
    let kf = key.key_file();
    let mut countfile = kf.clone();
    countfile.extend_from_slice(b".chunkcount");
    let count: u64 =
        std::fs::read_to_string(keydir.join(std::ffi::OsStr::from_bytes(&countfile))).ok()?.trim().parse().ok()?;
    // A chunk count larger than this would mean a corrupt count file, not a real object.
    if count == 0 || count > 1_000_000 {
        return None;
    }
    let mut files = Vec::new();
    for n in 1..=count {
        let mut name = kf.clone();
        name.extend_from_slice(format!(".chunk{n}").as_bytes());
        let p = keydir.join(std::ffi::OsStr::from_bytes(&name));
        let len = std::fs::metadata(&p).ok()?.len();
        files.push((p, len));
    }
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    if key.size().is_some_and(|s| s != total) {
        return None;
    }
    Some(Location::Chunks(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("30KiB"), Some(30720));
        assert_eq!(parse_byte_size("30kib"), Some(30720));
        assert_eq!(parse_byte_size("1MB"), Some(1_000_000));
        assert_eq!(parse_byte_size("1Mb"), Some(1_000_000));
        assert_eq!(parse_byte_size("1.5MiB"), Some(1_572_864));
        assert_eq!(parse_byte_size("40000"), Some(40000));
        assert_eq!(parse_byte_size("lots"), None);
        assert_eq!(parse_byte_size(""), None);
        assert_eq!(parse_byte_size("99999999999TiB"), None);
    }

    #[test]
    fn url_escaping() {
        assert_eq!(
            url_escape_key_file(b"WORM-s3-m1795304740--sub%my,32file.txt"),
            "WORM-s3-m1795304740--sub%25my%2C32file.txt"
        );
    }

    #[test]
    fn remotes_from_config() {
        let cfg = GitConfig::from_pairs([
            ("remote.origin.url", "/srv/annex/r1"),
            ("remote.origin.annex-uuid", "u-origin"),
            ("remote.origin.annex-cost", "150"),
            ("remote.web1.url", "http://127.0.0.1:8765/r1/.git"),
            ("remote.web1.annex-bare", "false"),
            ("remote.web1.annex-uuid", "u-http"),
            ("remote.ssh.url", "host:repo"),
            ("remote.dplain.annex-directory", "/srv/dsr"),
            ("remote.dplain.annex-uuid", "u-dir"),
            ("remote.denc.annex-directory", "/srv/enc"),
            ("remote.denc.annex-uuid", "u-enc"),
            ("remote.dead.url", "/nonexistent"),
            ("remote.dead.annex-ignore", "true"),
        ]);
        let mut rl = BTreeMap::new();
        rl.insert(
            "u-dir".to_string(),
            super::super::logs::parse_remote_config(b"chunk=30KiB type=directory encryption=none"),
        );
        rl.insert("u-enc".to_string(), super::super::logs::parse_remote_config(b"type=directory encryption=shared"));
        let rs = load_remotes(&cfg, &rl);
        let by = |n: &str| rs.iter().find(|r| r.name == n).unwrap();
        assert_eq!(by("origin").cost, 150);
        assert!(matches!(by("origin").kind, RemoteKind::GitLocal { .. }));
        assert!(matches!(by("web1").kind, RemoteKind::GitHttp { bare: Some(false), .. }));
        assert!(matches!(by("ssh").kind, RemoteKind::GitSsh(_)));
        assert_eq!(
            by("dplain").kind,
            RemoteKind::Directory { dir: Some("/srv/dsr".into()), chunking: Chunking::Chunk(30720), encrypted: false }
        );
        assert_eq!(by("denc").cost, 150);
        assert!(by("dead").ignore);
    }
}
