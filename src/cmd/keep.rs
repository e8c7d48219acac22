//! The host of a node's keeper (`crate::swarm::keep`): the repository's files the signed rules
//! want, and a fetch of a key from every source a read would use.

use super::Network;
use crate::annex::{Annex, Key};
use crate::swarm::keep::{KeepConfig, KeepHost, Keeper, Opened, Wanted};
use crate::swarm::rules::Rules;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of a blob read as a possible pointer file, at most.
const MAX_POINTER: usize = 8192;

pub(crate) struct Host {
    pub annex: Arc<Annex>,
    pub net: Arc<Network>,
}

/// The annexed files of HEAD: (path, key).
fn annexed_files(annex: &Annex) -> Result<Vec<(String, Key)>, git2::Error> {
    let repo = git2::Repository::open(&annex.gitdir)?;
    let tree = repo.head()?.peel_to_tree()?;
    let mut out = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
        let (Ok(name), Some(git2::ObjectType::Blob)) = (e.name(), e.kind()) else { return git2::TreeWalkResult::Ok };
        let Ok(blob) = repo.find_blob(e.id()) else { return git2::TreeWalkResult::Ok };
        let content = blob.content();
        let key = if e.filemode() == 0o120000 {
            crate::annex::pointer::parse_symlink_target(content)
        } else if content.len() <= MAX_POINTER {
            crate::annex::pointer::parse_pointer_file(content)
        } else {
            None
        };
        if let Some(k) = key {
            out.push((format!("{dir}{name}"), k));
        }
        git2::TreeWalkResult::Ok
    })?;
    Ok(out)
}

/// The keys `rules` want among `files` (with a size), each once.
fn wanted_keys(annex: &Annex, rules: &Rules, files: Vec<(String, Key)>) -> Vec<Key> {
    let mut out: BTreeMap<Vec<u8>, Key> = BTreeMap::new();
    for (path, key) in files {
        let Some(size) = key.size() else { continue };
        let metadata: BTreeMap<String, Vec<String>> = if rules.metadata.is_empty() {
            BTreeMap::new()
        } else {
            annex
                .metadata(&key)
                .map(|m| {
                    m.into_iter()
                        .map(|(f, vs)| {
                            (
                                String::from_utf8_lossy(&f).to_lowercase(),
                                vs.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        if rules.wants(&path, size, &metadata) {
            out.insert(key.to_bytes(), key);
        }
    }
    out.into_values().collect()
}

impl KeepHost for Host {
    fn wanted(&self) -> crate::source::remote::BoxFuture<'_, Option<Wanted>> {
        Box::pin(async move {
            let state = self.net.rules(&self.annex);
            let rules = state.rules.clone()?;
            let copies = rules.copies;
            // Limits by UUID: the nodes the rules name, and every node of a group they name.
            let groups = self.annex.meta().map(|m| m.groups.clone()).unwrap_or_default();
            let mut uuids: Vec<String> = rules.nodes.keys().cloned().collect();
            uuids.extend(groups.keys().cloned());
            let me = self.annex.uuid.clone().unwrap_or_default();
            let own_groups = groups.get(&me).map_or(&[][..], Vec::as_slice);
            let bwlimit = rules.limits_for(&me, own_groups).bwlimit.filter(|&b| b > 0);
            let limits = uuids
                .into_iter()
                .filter_map(|u| {
                    let l = rules.limits_for(&u, groups.get(&u).map_or(&[][..], Vec::as_slice)).keep?;
                    Some((u, l))
                })
                .collect();
            let annex = self.annex.clone();
            let keys = tokio::task::spawn_blocking(move || match annexed_files(&annex) {
                Ok(files) => wanted_keys(&annex, &rules, files),
                Err(e) => {
                    tracing::warn!("swarm keep: list the repository's files: {e}");
                    Vec::new()
                }
            })
            .await
            .unwrap_or_default();
            Some(Wanted { copies, keys, limits, bwlimit })
        })
    }

    fn whole(&self, key: &Key) -> bool {
        self.annex.present_object(key).is_some()
    }

    fn open<'a>(&'a self, key: &'a Key) -> crate::source::remote::BoxFuture<'a, Opened> {
        Box::pin(async move {
            let parts = match self.net.parts(&self.annex, key).await {
                Ok(p) => p,
                Err(e) => return Opened::Unavailable(e.to_string()),
            };
            if !parts.local.is_empty() {
                return Opened::Whole;
            }
            if parts.remote.is_empty() {
                return Opened::Unavailable("no source holds it now".into());
            }
            // Only a trusted manifest (the repository's, or one made from content verified
            // against the key): a peer's vouched manifest falls into doubt when any source
            // lies, and pieces kept unchecked could not be served.
            let Some(manifest) = self.net.manifest(&self.annex, key).await else {
                return Opened::Unavailable("no trusted piece manifest to check its pieces against".into());
            };
            match self.net.fetcher.key(key, parts.remote, Some(manifest)) {
                Ok(kf) => Opened::Fetch(kf),
                Err(e) => Opened::Unavailable(e.to_string()),
            }
        })
    }

    fn banned(&self, who: &str) -> bool {
        self.net.fetcher.reputation.is_banned(who)
    }

    fn ban(&self, who: &str, why: &str) {
        self.net.fetcher.reputation.ban(who, why);
    }

    fn manifest(&self, key: &Key) -> Option<crate::manifest::Manifest> {
        crate::manifest::cached::load(self.net.store(), key).filter(|m| m.trust().is_ok())
    }
}

/// Starts the keeper of a node offering `offered` bytes (grace period and round time as given).
pub(crate) fn start(
    annex: Arc<Annex>,
    net: Arc<Network>,
    offered: u64,
    grace: Duration,
    every: Duration,
    rt: &tokio::runtime::Handle,
) -> Arc<Keeper> {
    // News of a node gone must come well within the grace period.
    let exchange = crate::swarm::EXCHANGE_EVERY.min(grace / (crate::swarm::DROP_AFTER + 1));
    net.peers.set_exchange_every(exchange);
    let host = Arc::new(Host { annex, net: net.clone() });
    let keeper = Keeper::new(net.peers.clone(), host, net.store().clone(), KeepConfig { offered, grace, every });
    keeper.start(rt);
    keeper
}
