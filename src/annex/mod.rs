//! Pure git-annex knowledge: keys, pointer files, the git-annex branch and its logs, remotes,
//! and the namespace of a repository. No FUSE, no network, no cache.
//!
//! [`Annex`] is the facade the rest of annexfs uses: it opens a repository read-only and
//! answers "which files are there", "which key is this file" and "who holds this key, and
//! where can its bytes be read". Everything derived from the git-annex branch is cached per
//! branch snapshot ([`branch::Branch`]) and recomputed when refs or the journal change.
//!
//! Lock order: `Annex::meta` is never held while the branch is read (the branch has its own
//! locks, see [`branch`]).

pub mod backend;
pub mod branch;
pub mod gitmodules;
pub mod key;
pub mod logs;
pub mod namespace;
pub mod pointer;
pub mod policy;
pub mod remotes;
pub mod repo;
pub mod settings;

pub use key::{Key, KeyError};
pub use repo::RepoError;

use logs::Trust;
use policy::AddressPolicy;
use remotes::{Access, KeyFacts, Location, Remote, WEB_UUID};
use repo::{GitConfig, ObjectLayout};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Facts from the top-level logs of the git-annex branch, for one branch snapshot.
#[derive(Debug, Default)]
pub struct Meta {
    pub generation: u64,
    /// uuid.log: UUID → description.
    pub descriptions: HashMap<String, String>,
    /// trust.log, with `remote.<name>.annex-trustlevel` overrides applied.
    pub trust: HashMap<String, Trust>,
    /// remote.log: UUID → decoded config.
    pub remote_log: BTreeMap<String, BTreeMap<String, String>>,
    pub remotes: Vec<Remote>,
    /// `annex.tune.branchhash1`: per-key logs sit under one level of hash directories.
    pub branch_hash1: bool,
    pub numcopies: Option<u64>,
    /// group.log: UUID → its git-annex groups.
    pub groups: HashMap<String, Vec<String>>,
}

impl Meta {
    pub fn trust_of(&self, uuid: &str) -> Trust {
        self.trust.get(uuid).copied().unwrap_or(Trust::SemiTrusted)
    }
}

/// One repository that holds a key, and how annexfs can read it from there.
#[derive(Debug, Clone)]
pub struct Holder {
    pub uuid: String,
    pub description: String,
    /// The remote annexfs would read through (the first readable one), if any.
    pub remote: Option<String>,
    /// This is the repository itself.
    pub here: bool,
    pub trust: Trust,
    pub readable: Result<(), remotes::Unreadable>,
    pub cost: u32,
    /// Where the bytes are, in the order to try.
    pub locations: Vec<Location>,
}

/// A git-annex repository opened read-only.
pub struct Annex {
    /// The (common) git directory, where `annex/` lives.
    pub gitdir: PathBuf,
    /// The working tree of a non-bare repository.
    pub workdir: Option<PathBuf>,
    pub bare: bool,
    pub config: GitConfig,
    /// This repository's UUID (absent in a clone that was never `git annex init`-ed).
    pub uuid: Option<String>,
    pub layout: ObjectLayout,
    pub policy: AddressPolicy,
    pub branch: branch::Branch,
    meta: Mutex<Option<Arc<Meta>>>,
    /// What was learnt about http git remotes from their `config` (remote name → uuid, bare).
    learned: Mutex<HashMap<String, Learned>>,
    /// p2phttp URLs learnt from http git remotes' `config` (`annex.url`): remote name → URL.
    learned_annex_urls: Mutex<HashMap<String, String>>,
}

/// What an http git remote's `config` said: its UUID and whether it is bare.
type Learned = (Option<String>, Option<bool>);

fn uuid_from_bytes(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?;
    (!s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())).then(|| s.to_string())
}

impl Annex {
    /// Opens the repository containing `path` (as git does from a working directory).
    pub fn open(path: &Path) -> Result<Annex, RepoError> {
        Annex::open_inner(path, true)
    }

    /// Like [`Annex::open`], but a plain git repository (no annex: a git submodule) is opened
    /// too, with no holders for anything.
    pub fn open_plain(path: &Path) -> Result<Annex, RepoError> {
        Annex::open_inner(path, false)
    }

    fn open_inner(path: &Path, annex_only: bool) -> Result<Annex, RepoError> {
        repo::init_git2();
        let repo = git2::Repository::discover(path).map_err(|e| match e.code() {
            git2::ErrorCode::NotFound => RepoError::NotGit { path: path.to_path_buf() },
            _ => RepoError::Git { path: path.to_path_buf(), source: e },
        })?;
        let gitdir = repo.commondir().to_path_buf();
        let workdir = repo.workdir().map(Path::to_path_buf);
        let bare = repo.is_bare();
        let config = repo
            .config()
            .and_then(|mut c| c.snapshot())
            .map(|c| GitConfig::from_git2(&c))
            .map_err(|e| RepoError::Git { path: gitdir.clone(), source: e })?;
        let branch = branch::Branch::open(&gitdir).map_err(|e| match e {
            branch::BranchError::Git(source) => RepoError::Git { path: gitdir.clone(), source },
        })?;
        let uuid = config.get("annex.uuid").and_then(|u| uuid_from_bytes(u.as_bytes()));
        if annex_only && uuid.is_none() && branch.snapshot().is_empty() {
            return Err(RepoError::NotAnnex { path: workdir.clone().unwrap_or(gitdir) });
        }
        let layout = ObjectLayout::for_repo(&gitdir, bare, &config);
        let policy = AddressPolicy::from_config(config.get("annex.security.allowed-ip-addresses"));
        Ok(Annex {
            gitdir,
            workdir,
            bare,
            config,
            uuid,
            layout,
            policy,
            branch,
            meta: Mutex::new(None),
            learned: Mutex::new(HashMap::new()),
            learned_annex_urls: Mutex::new(HashMap::new()),
        })
    }

    /// The directory relative remote paths are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.workdir.as_deref().unwrap_or(&self.gitdir)
    }

    /// Facts from the top-level logs for the current branch snapshot.
    pub fn meta(&self) -> Result<Arc<Meta>, branch::BranchError> {
        let generation = self.branch.snapshot().generation;
        if let Some(m) = self.meta.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && m.generation == generation
        {
            return Ok(m.clone());
        }
        let m = Arc::new(self.load_meta(generation)?);
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        Ok(m)
    }

    fn load_meta(&self, generation: u64) -> Result<Meta, branch::BranchError> {
        let chunks = |p: &str| self.branch.file(p.as_bytes());
        let uuid_log = chunks("uuid.log")?;
        let descriptions = logs::compact_uuid_log(uuid_log.iter().map(Vec::as_slice))
            .into_iter()
            .filter_map(|(u, (_, d))| Some((uuid_from_bytes(&u)?, String::from_utf8_lossy(&d).into_owned())))
            .collect();
        let trust_log = chunks("trust.log")?;
        let mut trust: HashMap<String, Trust> = logs::compact_uuid_log(trust_log.iter().map(Vec::as_slice))
            .into_iter()
            .filter_map(|(u, (_, v))| Some((uuid_from_bytes(&u)?, Trust::from_log_value(&v))))
            .collect();
        let remote_log_chunks = chunks("remote.log")?;
        let remote_log: BTreeMap<String, BTreeMap<String, String>> =
            logs::compact_uuid_log(remote_log_chunks.iter().map(Vec::as_slice))
                .into_iter()
                .filter_map(|(u, (_, v))| Some((uuid_from_bytes(&u)?, logs::parse_remote_config(&v))))
                .collect();
        let mut remotes = remotes::load_remotes(&self.config, &remote_log);
        for r in &mut remotes {
            let learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            let Some((uuid, bare_learned)) = learned.get(&r.name) else { continue };
            if r.uuid.is_none() {
                r.uuid = uuid.clone();
            }
            if let remotes::RemoteKind::GitHttp { bare, .. } = &mut r.kind
                && bare.is_none()
            {
                *bare = *bare_learned;
            }
        }
        for r in &mut remotes {
            let urls = self.learned_annex_urls.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(annex_url), remotes::RemoteKind::GitHttp { url, .. }) = (urls.get(&r.name), &r.kind) {
                r.kind = remotes::RemoteKind::P2pHttp(remotes::p2phttp::P2pHttpRemote::with_git_url(url, annex_url));
            }
        }
        for r in &remotes {
            if let (Some(u), Some(t)) = (&r.uuid, r.trust_override) {
                trust.insert(u.clone(), t);
            }
        }
        let difference = chunks("difference.log")?;
        let branch_hash1 = self.config.bool_or("annex.tune.branchhash1", false)
            || difference.iter().any(|c| c.windows(18).any(|w| w == b"OneLevelBranchHash"));
        let numcopies = logs::single_value_u64(chunks("numcopies.log")?.iter().map(Vec::as_slice));
        let groups = logs::compact_uuid_log(chunks("group.log")?.iter().map(Vec::as_slice))
            .into_iter()
            .filter_map(|(u, (_, v))| {
                let g = String::from_utf8_lossy(&v).split_whitespace().map(str::to_string).collect();
                Some((uuid_from_bytes(&u)?, g))
            })
            .collect();
        Ok(Meta { generation, descriptions, trust, remote_log, remotes, branch_hash1, numcopies, groups })
    }

    /// Records what an http git remote's `config` says (its UUID and bareness), as git-annex
    /// caches it in `.git/config`; annexfs keeps it in memory only.
    pub fn learn_remote(&self, name: &str, uuid: Option<String>, bare: Option<bool>) {
        self.learned.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), (uuid, bare));
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records the p2phttp URL an http git remote's `config` gives as `annex.url`, as
    /// git-annex caches it in `remote.NAME.annexurl`; annexfs keeps it in memory only.
    pub fn learn_annex_url(&self, name: &str, url: String) {
        self.learned_annex_urls.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), url);
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The branch path of a per-key log, e.g. `e7d/d01/<keyFile>.log`.
    pub fn key_log_path(&self, meta: &Meta, key: &Key, ext: &str) -> Vec<u8> {
        let key = key.non_chunk();
        let mut p = key.hashdir_lower(meta.branch_hash1).into_bytes();
        p.extend_from_slice(&key.key_file());
        p.extend_from_slice(ext.as_bytes());
        p
    }

    /// UUIDs whose location log says they hold `key`, dead repositories excluded.
    pub fn locations(&self, key: &Key) -> Result<Vec<String>, branch::BranchError> {
        let meta = self.meta()?;
        let present = self.branch.present(&self.key_log_path(&meta, key, ".log"))?;
        Ok(present.iter().filter_map(|u| uuid_from_bytes(u)).filter(|u| meta.trust_of(u) != Trust::Dead).collect())
    }

    /// URLs recorded for `key` in `.log.web`, as stored (downloader prefixes included).
    pub fn urls(&self, key: &Key) -> Result<Vec<String>, branch::BranchError> {
        let meta = self.meta()?;
        let present = self.branch.present(&self.key_log_path(&meta, key, ".log.web"))?;
        Ok(present.iter().map(|u| String::from_utf8_lossy(u).into_owned()).collect())
    }

    /// Chunkings logged in `.log.cnk`, per UUID.
    pub fn chunk_log(&self, key: &Key) -> Result<logs::ChunkLog, branch::BranchError> {
        let meta = self.meta()?;
        let chunks = self.branch.file(&self.key_log_path(&meta, key, ".log.cnk"))?;
        Ok(logs::parse_chunk_log(chunks.iter().map(Vec::as_slice)))
    }

    /// annexfs's settings: `.annexfs.toml` from the working tree, else from HEAD (a bare
    /// repository). A file that does not parse is logged and ignored.
    pub fn settings(&self) -> settings::Settings {
        let text = match &self.workdir {
            Some(w) => std::fs::read_to_string(w.join(settings::FILE)).ok(),
            None => git2::Repository::open_bare(&self.gitdir).ok().and_then(|r| {
                let tree = r.head().ok()?.peel_to_tree().ok()?;
                let entry = tree.get_name(settings::FILE)?;
                let blob = r.find_blob(entry.id()).ok()?;
                Some(String::from_utf8_lossy(blob.content()).into_owned())
            }),
        };
        let Some(text) = text else { return settings::Settings::default() };
        settings::Settings::parse(&text).unwrap_or_else(|e| {
            tracing::warn!("{}: ignored: {e}", settings::FILE);
            settings::Settings::default()
        })
    }

    /// The limits on remote `name`: git config, `.annexfs.toml`'s `[remote.NAME]`, then its
    /// groups' (see [`settings`]).
    pub fn remote_limits(&self, name: &str, settings: &settings::Settings) -> settings::Limits {
        let get = |k: &str| self.config.get(&format!("remote.{name}.annexfs-{k}"));
        let config = settings::Limits {
            bwlimit: get("bwlimit").and_then(settings::parse_size),
            maxconnections: get("maxconnections").and_then(|v| v.trim().parse().ok()),
        };
        let groups = self
            .meta()
            .ok()
            .and_then(|m| {
                let uuid = m.remotes.iter().find(|r| r.name == name)?.uuid.clone()?;
                m.groups.get(&uuid).cloned()
            })
            .unwrap_or_default();
        settings.limits_for(name, &groups, config)
    }

    /// Metadata of `key` (`.log.met`), fields lowercased.
    pub fn metadata(&self, key: &Key) -> Result<logs::MetaData, branch::BranchError> {
        let meta = self.meta()?;
        let chunks = self.branch.file(&self.key_log_path(&meta, key, ".log.met"))?;
        Ok(logs::parse_metadata_log(chunks.iter().map(Vec::as_slice)))
    }

    /// Per-remote metadata of `key` (`.log.rmet`), fields `<uuid>:<field>` lowercased.
    pub fn remote_metadata(&self, key: &Key) -> Result<logs::MetaData, branch::BranchError> {
        let meta = self.meta()?;
        let chunks = self.branch.file(&self.key_log_path(&meta, key, ".log.rmet"))?;
        Ok(logs::parse_metadata_log(chunks.iter().map(Vec::as_slice)))
    }

    /// The object file of `key` in this repository, if its content is present.
    pub fn local_object(&self, key: &Key) -> Option<PathBuf> {
        self.layout.find(key)
    }

    /// The object file of `key` in this repository if it is a regular file of the key's size
    /// (an object of another size is not the content, whatever its name).
    pub fn present_object(&self, key: &Key) -> Option<PathBuf> {
        self.local_object(key)
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && key.size().is_none_or(|s| m.len() == s)))
    }

    /// Every repository holding `key`, with how annexfs can read from it, in the order annexfs
    /// tries them: this repository, then readable holders by cost, then the rest.
    pub fn holders(&self, key: &Key) -> Result<Vec<Holder>, branch::BranchError> {
        let meta = self.meta()?;
        let uuids = self.locations(key)?;
        let urls = self.urls(key)?;
        let web_urls: Vec<String> = urls
            .iter()
            .filter(|u| {
                let l = u.to_ascii_lowercase();
                l.starts_with("http://") || l.starts_with("https://") || l.starts_with("ftp://")
            })
            .cloned()
            .collect();
        let chunk_log = self.chunk_log(key)?;
        let remote_meta = || self.remote_metadata(key).unwrap_or_default();
        let facts = KeyFacts {
            key,
            chunk_log: &chunk_log,
            web_urls: &web_urls,
            policy: &self.policy,
            base: self.base_dir(),
            gitdir: &self.gitdir,
            remote_meta: &remote_meta,
        };
        let mut out = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            let here = self.uuid.as_deref() == Some(uuid.as_str());
            let mut accesses: Vec<Access> = Vec::new();
            if here {
                let mut acc =
                    Access { remote: String::new(), cost: remotes::cost::HERE, readable: Ok(()), locations: vec![] };
                match self.local_object(key) {
                    Some(p) => acc.locations.push(Location::Path(p)),
                    None => acc.readable = Err(remotes::Unreadable::NotHere),
                }
                accesses.push(acc);
            }
            for r in meta.remotes.iter().filter(|r| r.uuid.as_deref() == Some(uuid.as_str())) {
                accesses.push(r.access(&facts));
            }
            if uuid == WEB_UUID && !meta.remotes.iter().any(|r| r.uuid.as_deref() == Some(WEB_UUID)) {
                let web = Remote {
                    name: "web".into(),
                    uuid: Some(WEB_UUID.into()),
                    kind: remotes::RemoteKind::Web,
                    cost: remotes::cost::EXPENSIVE,
                    ignore: false,
                    trust_override: None,
                };
                accesses.push(web.access(&facts));
            }
            accesses.sort_by_key(|a| (a.readable.is_err(), a.cost));
            let description = match meta.descriptions.get(&uuid) {
                Some(d) => d.clone(),
                // The built-in special remotes are not in uuid.log; git-annex names them so.
                None if uuid == WEB_UUID => "web".into(),
                None if uuid == remotes::BITTORRENT_UUID => "bittorrent".into(),
                None => String::new(),
            };
            let trust = meta.trust_of(&uuid);
            let holder = match accesses.iter().find(|a| a.readable.is_ok()) {
                Some(first) => Holder {
                    uuid,
                    description,
                    remote: (!here).then(|| first.remote.clone()),
                    here,
                    trust,
                    readable: Ok(()),
                    cost: first.cost,
                    locations: accesses
                        .iter()
                        .filter(|a| a.readable.is_ok())
                        .flat_map(|a| a.locations.clone())
                        .collect(),
                },
                None => {
                    let why = match accesses.as_slice() {
                        [] => remotes::Unreadable::NoRemote,
                        // One remote: its own reason, as it is.
                        [a] if a.remote.is_empty() => a.readable.clone().err().unwrap_or(remotes::Unreadable::NoRemote),
                        _ => remotes::Unreadable::NoRemoteReadable(
                            accesses
                                .iter()
                                .filter_map(|a| Some((a.remote.clone(), a.readable.clone().err()?)))
                                .collect(),
                        ),
                    };
                    Holder {
                        uuid,
                        description,
                        remote: accesses.iter().find(|a| !a.remote.is_empty()).map(|a| a.remote.clone()),
                        here,
                        trust,
                        readable: Err(why),
                        cost: accesses.first().map_or(u32::MAX, |a| a.cost),
                        locations: Vec::new(),
                    }
                }
            };
            out.push(holder);
        }
        out.sort_by(|a, b| {
            (!a.here, a.readable.is_err(), a.cost, &a.remote, &a.uuid).cmp(&(
                !b.here,
                b.readable.is_err(),
                b.cost,
                &b.remote,
                &b.uuid,
            ))
        });
        Ok(out)
    }
}
