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
use crate::source::open_location;
use crate::source::reach::Reach;
use crate::source::remote::{BoxFuture, RangeSource};
use futures_util::StreamExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
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

/// Why a published manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("the manifest key {0} has no size")]
    NoSize(String),
    #[error("manifest {0} of {1} bytes is too large")]
    TooLarge(String, u64),
    #[error(transparent)]
    Discover(#[from] crate::source::discover::DiscoverError),
    /// Every holder of the manifest object was tried: what went wrong with each.
    #[error("{}", tried_text(.0))]
    NoGoodCopy(Vec<String>),
    #[error("{0}: {1}")]
    Invalid(String, super::ManifestError),
    /// Several recorded manifests, none usable.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    All(Vec<FindError>),
}

fn tried_text(tried: &[String]) -> String {
    if tried.is_empty() { "no repository holds it".into() } else { tried.join("; ") }
}

/// Why publishing a manifest failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("run git annex: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git annex {command}: {stderr}")]
    GitAnnex { command: String, stderr: String },
    #[error("temporary file: {0}")]
    Temp(#[source] std::io::Error),
}

/// Holders of an object that the repository does not record (the swarm's peers), supplied by
/// whoever assembles a key's look-up; this layer knows nothing of them.
pub trait MoreHolders: Sync {
    fn sources<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Vec<Arc<dyn RangeSource>>>;
}

/// Why one copy of a manifest object could not be read.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Fetch(#[from] crate::source::remote::FetchError),
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("shorter than its key")]
    Short,
    #[error("longer than its key")]
    Long,
    #[error("timed out")]
    TimedOut,
}

/// Reads a whole small object from one network source, bounded in size and time.
async fn fetch_whole(src: &dyn RangeSource, size: u64, len: usize) -> Result<Vec<u8>, CopyError> {
    tokio::time::timeout(FETCH_TIMEOUT, async {
        let mut stream = src.get(0, size).await?;
        let mut out = Vec::with_capacity(len);
        while let Some(c) = stream.next().await {
            out.extend_from_slice(&c?);
            if out.len() > len {
                return Err(CopyError::Long);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|_| CopyError::TimedOut)?
}

/// Reads a whole small object from a local location.
fn read_local(loc: &crate::annex::remotes::Location, size: u64, len: usize) -> Result<Vec<u8>, CopyError> {
    let r = open_location(loc, Some(size))?;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match r.read_at(&mut buf[at..], at as u64)? {
            0 => return Err(CopyError::Short),
            n => at += n,
        }
    }
    Ok(buf)
}

/// Reads the whole object of `mkey` from wherever it is (this repository, a local remote, a
/// network source, `more` holders): the first copy that matches its key.
async fn read_object(
    annex: &Annex,
    mkey: &Key,
    reach: Option<&Reach>,
    more: Option<&dyn MoreHolders>,
) -> Result<Vec<u8>, FindError> {
    let name = mkey.to_string_lossy();
    let size = mkey.size().ok_or_else(|| FindError::NoSize(name.clone()))?;
    if size > MAX_MANIFEST_BYTES {
        return Err(FindError::TooLarge(name, size));
    }
    let len = usize::try_from(size).map_err(|_| FindError::TooLarge(name, size))?;
    let mut found = discover(annex, mkey, reach)?;
    if found.local.is_empty()
        && let Some(m) = more
    {
        found.remote.extend(m.sources(mkey).await);
    }
    let mut tried = found.unusable;
    let matches = |b: &[u8]| matches!(verify::verify_reader(mkey, b), verify::Outcome::Match);
    for (who, loc) in &found.local {
        match read_local(loc, size, len) {
            Ok(b) if matches(&b) => return Ok(b),
            Ok(_) => tried.push(format!("{who}: the object does not match its key")),
            Err(e) => tried.push(format!("{who}: {e}")),
        }
    }
    for src in &found.remote {
        // A peer's have-map says what it holds: one without the object is not asked (on a
        // busy node each answer waits behind the bytes it is sending).
        if !src.has_range(0, size) {
            tried.push(format!("{}: does not hold it", src.name()));
            continue;
        }
        match fetch_whole(src.as_ref(), size, len).await {
            Ok(b) if matches(&b) => return Ok(b),
            Ok(_) => tried.push(format!("{}: the object does not match its key", src.name())),
            Err(e) => tried.push(format!("{}: {e}", src.name())),
        }
    }
    Err(FindError::NoGoodCopy(tried))
}

/// The published manifest of `key`, fetched and checked: its object against its own key, its
/// content against `key`. `Ok(None)` when none is published.
pub async fn find(
    annex: &Annex,
    key: &Key,
    reach: Option<&Reach>,
    more: Option<&dyn MoreHolders>,
) -> Result<Option<Manifest>, FindError> {
    let mut errors = Vec::new();
    for mkey in recorded(annex, key) {
        let bytes = match read_object(annex, &mkey, reach, more).await {
            Ok(b) => b,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match Manifest::parse(&bytes, key) {
            Ok(m) => return Ok(Some(m)),
            Err(e) => errors.push(FindError::Invalid(mkey.to_string_lossy(), e)),
        }
    }
    match errors.len() {
        0 => Ok(None),
        1 => Err(errors.remove(0)),
        _ => Err(FindError::All(errors)),
    }
}

fn git_annex(dir: &Path, args: &[&str]) -> Result<(), PublishError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .arg("annex")
        .args(args)
        .arg("--quiet")
        .output()
        .map_err(PublishError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PublishError::GitAnnex {
            command: args.first().copied().unwrap_or_default().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Stores `m` in the repository at `annex` and records it for its key, unless a manifest is
/// recorded already. Returns the manifest's key.
pub fn publish(annex: &Annex, m: &Manifest) -> Result<Key, PublishError> {
    if let Some(k) = recorded(annex, &m.key).into_iter().next() {
        return Ok(k);
    }
    let bytes = m.to_bytes();
    let mkey = manifest_key(&bytes);
    let dir = annex.base_dir();
    if annex.present_object(&mkey).is_none() {
        let tmp = tempfile::Builder::new().prefix("annexfs-manifest").tempfile().map_err(PublishError::Temp)?;
        std::fs::write(tmp.path(), &bytes).map_err(PublishError::Temp)?;
        let path = tmp.path().to_string_lossy().into_owned();
        // setkey moves the file into the annex (and checks it against the key).
        git_annex(dir, &["setkey", &mkey.to_string_lossy(), &path])?;
    }
    let key = format!("--key={}", m.key.to_string_lossy());
    let set = format!("{FIELD}={}", mkey.to_string_lossy());
    git_annex(dir, &["metadata", &key, "-s", &set])?;
    Ok(mkey)
}
