//! Manifests travel with the repository: a manifest is stored as a small annexed object
//! (`SHA256-s…--…`, with `git annex setkey`) and its key recorded in the content key's
//! git-annex metadata, field [`FIELD`] (with `git annex metadata`). Both go through
//! git-annex's own commands, so they sync with `git annex sync` like everything else, and the
//! manifest object is fetched like any object and checked against its own key.
//!
//! Publishing is the only place annexfs changes a repository, and only through git-annex;
//! `--no-publish` (mount option `publish=no`) turns it off. Manifest objects are referenced by
//! no file, so `git annex unused` lists them; dropping them only loses the manifests.

use super::{MAX_MANIFEST_BYTES, Manifest};
use crate::annex::backend as verify;
use crate::annex::{Annex, Key};
use crate::source::discover::discover;
use crate::source::http::HttpClient;
use crate::source::open_location;
use futures_util::StreamExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The metadata field naming a key's manifest.
pub const FIELD: &str = "annexfs-manifest";
/// How long fetching a manifest object may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The key of a manifest's bytes.
pub fn manifest_key(bytes: &[u8]) -> Key {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    // Built from a number and hex digits only: always a valid key.
    Key::parse_str(&format!("SHA256-s{}--{hex}", bytes.len())).unwrap_or_else(|_| unreachable!())
}

/// The manifest keys recorded for `key`.
pub fn recorded(annex: &Annex, key: &Key) -> Vec<Key> {
    let Ok(md) = annex.metadata(key) else { return Vec::new() };
    md.get(FIELD.as_bytes()).map(|vals| vals.iter().filter_map(|v| Key::parse(v).ok()).collect()).unwrap_or_default()
}

/// Reads the whole object of `mkey` from wherever it is (this repository, a local remote, a
/// network source, a swarm peer): the first copy that matches its key.
fn read_object(
    annex: &Annex,
    mkey: &Key,
    http: Option<&HttpClient>,
    peers: Option<&std::sync::Arc<crate::swarm::Peers>>,
    rt: &tokio::runtime::Handle,
) -> Result<Vec<u8>, String> {
    let size = mkey.size().ok_or("the manifest key has no size")?;
    if size > MAX_MANIFEST_BYTES {
        return Err(format!("manifest of {size} bytes is too large"));
    }
    let len = usize::try_from(size).map_err(|e| e.to_string())?;
    let mut found = discover(annex, mkey, http)?;
    if found.local.is_empty()
        && let Some(p) = peers
    {
        found.remote.extend(p.sources(mkey));
    }
    let mut tried = found.unusable;
    let matches = |b: &[u8]| matches!(verify::verify_reader(mkey, b), verify::Outcome::Match);
    for (name, loc) in &found.local {
        let read = open_location(loc, Some(size)).map_err(|e| e.to_string()).and_then(|r| {
            let mut buf = vec![0u8; len];
            let mut at = 0;
            while at < len {
                match r.read_at(&mut buf[at..], at as u64) {
                    Ok(0) => return Err("short object".to_string()),
                    Ok(n) => at += n,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(buf)
        });
        match read {
            Ok(b) if matches(&b) => return Ok(b),
            Ok(_) => tried.push(format!("{name}: the object does not match its key")),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    for src in &found.remote {
        let got = rt.block_on(async {
            tokio::time::timeout(FETCH_TIMEOUT, async {
                let mut stream = src.get(0, size).await.map_err(|e| e.to_string())?;
                let mut out = Vec::with_capacity(len);
                while let Some(c) = stream.next().await {
                    out.extend_from_slice(&c.map_err(|e| e.to_string())?);
                    if out.len() > len {
                        return Err("longer than its key".to_string());
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|_| "timed out".to_string())?
        });
        match got {
            Ok(b) if matches(&b) => return Ok(b),
            Ok(_) => tried.push(format!("{}: the object does not match its key", src.name())),
            Err(e) => tried.push(format!("{}: {e}", src.name())),
        }
    }
    if tried.is_empty() {
        tried.push("no repository holds it".into());
    }
    Err(tried.join("; "))
}

/// The published manifest of `key`, fetched and checked: its object against its own key, its
/// content against `key`. `Ok(None)` when none is published.
pub fn find(
    annex: &Annex,
    key: &Key,
    http: Option<&HttpClient>,
    peers: Option<&std::sync::Arc<crate::swarm::Peers>>,
    rt: &tokio::runtime::Handle,
) -> Result<Option<Manifest>, String> {
    let mut errors = Vec::new();
    for mkey in recorded(annex, key) {
        let bytes = match read_object(annex, &mkey, http, peers, rt) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{}: {e}", mkey.to_string_lossy()));
                continue;
            }
        };
        match Manifest::parse(&bytes, key) {
            Ok(m) => return Ok(Some(m)),
            Err(e) => errors.push(format!("{}: {e}", mkey.to_string_lossy())),
        }
    }
    if errors.is_empty() { Ok(None) } else { Err(errors.join("; ")) }
}

fn git_annex(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .arg("annex")
        .args(args)
        .arg("--quiet")
        .output()
        .map_err(|e| format!("run git annex: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("git annex {}: {}", args[0], String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Stores `m` in the repository at `annex` and records it for its key, unless a manifest is
/// recorded already. Returns the manifest's key.
pub fn publish(annex: &Annex, m: &Manifest) -> Result<Key, String> {
    if let Some(k) = recorded(annex, &m.key).into_iter().next() {
        return Ok(k);
    }
    let bytes = m.to_bytes();
    let mkey = manifest_key(&bytes);
    let dir = annex.base_dir();
    if annex.present_object(&mkey).is_none() {
        let tmp = tempfile::Builder::new()
            .prefix("annexfs-manifest")
            .tempfile()
            .map_err(|e| format!("temporary file: {e}"))?;
        std::fs::write(tmp.path(), &bytes).map_err(|e| format!("write {}: {e}", tmp.path().display()))?;
        let path = tmp.path().to_string_lossy().into_owned();
        // setkey moves the file into the annex (and checks it against the key).
        git_annex(dir, &["setkey", &mkey.to_string_lossy(), &path])?;
    }
    let key = format!("--key={}", m.key.to_string_lossy());
    let set = format!("{FIELD}={}", mkey.to_string_lossy());
    git_annex(dir, &["metadata", &key, "-s", &set])?;
    Ok(mkey)
}

/// The manifest of `key` for a fetch: the one kept in the cache, else the published one
/// (kept in the cache once found). Problems are logged, never fatal: without a manifest the
/// key is verified whole.
pub fn lookup(
    annex: &Annex,
    key: &Key,
    http: Option<&HttpClient>,
    peers: Option<&std::sync::Arc<crate::swarm::Peers>>,
    rt: &tokio::runtime::Handle,
    store: &crate::pieces::PieceStore,
) -> Option<Manifest> {
    if let Some(m) = super::cached::load(store, key) {
        return Some(m);
    }
    match find(annex, key, http, peers, rt) {
        Ok(Some(m)) => {
            if let Err(e) = super::cached::save(store, &m) {
                tracing::warn!("{key}: keep its manifest in the cache: {e}");
            }
            Some(m)
        }
        Ok(None) => {
            // A BLAKE3 key's manifest can come from any peer: it is checked against the key.
            let m = peers?.manifest(key)?;
            if let Err(e) = super::cached::save(store, &m) {
                tracing::warn!("{key}: keep its manifest in the cache: {e}");
            }
            Some(m)
        }
        Err(e) => {
            tracing::warn!("{key}: published piece manifest not usable: {e}");
            None
        }
    }
}
