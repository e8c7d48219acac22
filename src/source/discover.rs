//! Where a key's bytes can be read, from the annex layer's holders: local copies (read in
//! place) and network sources (fetched by ranges), in the order annexfs tries them.

use super::http::HttpSource;
use super::reach::Reach;
use super::remote::{BoxFuture, ByteStream, FetchError, RangeSource};
use super::{RangeRead, SourceError, open_location};
use crate::annex::remotes::Location;
use crate::annex::{Annex, Key};
use bytes::Bytes;
use std::sync::Arc;

/// The places a key can be read from.
#[derive(Default)]
pub struct Discovered {
    /// Local copies in try order: (who, where). The repository's own annex comes first.
    pub local: Vec<(String, Location)>,
    /// Network sources (one per mirror or remote).
    pub remote: Vec<Arc<dyn RangeSource>>,
    /// Holders that cannot be used, and why.
    pub unusable: Vec<String>,
    /// Whether any repository is recorded as holding the key.
    pub any_holder: bool,
}

/// Why the holders of a key could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("read the git-annex branch: {0}")]
    Branch(#[source] crate::annex::branch::BranchError),
}

/// Finds every place `key` can be read from. Without the means to reach the network, network
/// holders are reported as unusable.
pub fn discover(annex: &Annex, key: &Key, reach: Option<&Reach>) -> Result<Discovered, DiscoverError> {
    discover_with_size(annex, key, key.size(), reach)
}

/// [`discover`] for a key whose name has no size but whose size was learnt (`size`): web URLs
/// are sources of that many bytes.
pub fn discover_with_size(
    annex: &Annex,
    key: &Key,
    size: Option<u64>,
    reach: Option<&Reach>,
) -> Result<Discovered, DiscoverError> {
    let http = reach.map(|r| &r.http);
    let mut d = Discovered::default();
    if let Some(p) = annex.local_object(key) {
        d.local.push(("this repository".into(), Location::Path(p)));
    }
    let holders = annex.holders(key).map_err(DiscoverError::Branch)?;
    d.any_holder = !holders.is_empty();
    for h in &holders {
        let name =
            if h.here { "this repository".to_string() } else { h.remote.clone().unwrap_or_else(|| h.uuid.clone()) };
        if let Err(why) = &h.readable {
            d.unusable.push(format!("{name} ({}): {why}", h.uuid));
            continue;
        }
        for loc in &h.locations {
            let made = match (loc, reach) {
                (Location::Ssh(l), Some(r)) => Some(super::ssh::source(l, key, r).map_err(|e| e.to_string())),
                (Location::P2pHttp(l), Some(r)) => Some(super::p2phttp::source(l, key, r).map_err(|e| e.to_string())),
                (Location::S3(l), Some(r)) => Some(super::s3::source(l, key, r).map_err(|e| e.to_string())),
                (Location::External(l), Some(r)) => match r.external_makers.get(&l.externaltype) {
                    Some(make) => Some(make(l, key)),
                    None => Some(super::external::source(l, key, r).map_err(|e| e.to_string())),
                },
                (Location::Ssh(_) | Location::P2pHttp(_) | Location::S3(_) | Location::External(_), None) => {
                    Some(Err("network remotes are not read here".to_string()))
                }
                _ => None,
            };
            match made {
                Some(Ok(src)) => {
                    d.remote.push(src);
                    continue;
                }
                Some(Err(why)) => {
                    d.unusable.push(format!("{name} ({}): {why}", h.uuid));
                    continue;
                }
                None => {}
            }
            let urls = match loc {
                Location::Url(u) => vec![u.clone()],
                Location::Urls(u) => u.clone(),
                local => {
                    if !(h.here && d.local.iter().any(|(_, l)| l == local)) {
                        d.local.push((name.clone(), local.clone()));
                    }
                    continue;
                }
            };
            match (http, size) {
                (Some(client), Some(size)) => {
                    let label = format!("{name} {}", urls[0]);
                    // A web URL answers for its server; a remote for itself.
                    let identity = if h.remote.is_none() || name == "web" {
                        format!("{name} {}", url_origin(&urls[0]))
                    } else {
                        name.clone()
                    };
                    d.remote.push(Arc::new(HttpSource::new(label, client.clone(), urls, size).with_identity(identity)));
                }
                (None, _) => d.unusable.push(format!("{name} ({}): network remotes are not read here", h.uuid)),
                (Some(_), None) => {
                    d.unusable.push(format!("{name} ({}): the key has no size to fetch ranges of", h.uuid))
                }
            }
        }
    }
    Ok(d)
}

/// `scheme://host:port` of a URL (the URL itself when it does not parse).
fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        Err(_) => url.to_string(),
    }
}

/// Bytes a local source hands over per step.
const LOCAL_STEP: usize = 1 << 20;

/// A local copy as a source of the fetcher (for `annexfs get`, which fills the cache).
pub struct LocalSource {
    name: String,
    reader: Arc<dyn RangeRead>,
}

impl LocalSource {
    pub fn open(name: &str, loc: &Location, size: Option<u64>) -> Result<LocalSource, SourceError> {
        let reader: Arc<dyn RangeRead> = Arc::from(open_location(loc, size)?);
        Ok(LocalSource { name: format!("{name} {}", reader.describe()), reader })
    }
}

impl RangeSource for LocalSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ByteStream, FetchError>> {
        let reader = self.reader.clone();
        Box::pin(async move {
            let end = offset + len;
            let s = futures_util::stream::unfold((reader, offset), move |(reader, pos)| async move {
                if pos >= end {
                    return None;
                }
                let n = usize::try_from(end - pos).unwrap_or(LOCAL_STEP).min(LOCAL_STEP);
                let r = reader.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    r.read_at(&mut buf, pos).map(|got| {
                        buf.truncate(got);
                        buf
                    })
                })
                .await;
                match res {
                    Ok(Ok(buf)) if buf.is_empty() => {
                        Some((Err(FetchError::ShortBody { got: pos - offset, want: len }), (reader, end)))
                    }
                    Ok(Ok(buf)) => {
                        let next = pos + buf.len() as u64;
                        Some((Ok(Bytes::from(buf)), (reader, next)))
                    }
                    Ok(Err(e)) => Some((Err(FetchError::Transport(e.to_string())), (reader, end))),
                    Err(e) => Some((Err(FetchError::Transport(e.to_string())), (reader, end))),
                }
            });
            let s: ByteStream = Box::pin(s);
            Ok(s)
        })
    }
}
