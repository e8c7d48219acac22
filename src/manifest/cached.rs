//! Manifests kept in the piece store. The store keeps bytes; this layer gives them meaning:
//! a kept manifest is parsed and checked against its key each time it is loaded.
//!
//! Two kinds are kept apart: the trusted manifest ([`save`], [`load`]: made from content
//! verified against its key, taken from the repository, or a BLAKE3 key's), and one a peer
//! vouched for ([`save_vouched`], [`load_vouched`]: stream mode, a key whose backend cannot
//! check a manifest), which a node checks its own pieces against before serving them but never
//! hands on as a manifest.

use super::{MAX_MANIFEST_BYTES, Manifest};
use crate::annex::Key;
use crate::pieces::{CacheError, PieceStore};

/// Keeps the manifest of a key (made from verified content, or checked on arrival).
pub fn save(store: &PieceStore, m: &Manifest) -> Result<(), CacheError> {
    store.save_manifest_bytes(&m.key, &m.to_bytes())
}

/// The kept manifest of `key`, if any; one that no longer parses is ignored with a warning.
pub fn load(store: &PieceStore, key: &Key) -> Option<Manifest> {
    let (bytes, path) = store.load_manifest_bytes(key, MAX_MANIFEST_BYTES)?;
    match Manifest::parse(&bytes, key) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("{}: ignoring {}: {e}", key.to_string_lossy(), path.display());
            None
        }
    }
}

/// Keeps a manifest a peer vouched for.
pub fn save_vouched(store: &PieceStore, m: &Manifest) -> Result<(), CacheError> {
    store.save_vouched_manifest_bytes(&m.key, &m.to_bytes())
}

/// The kept manifest of `key` a peer vouched for, if any.
pub fn load_vouched(store: &PieceStore, key: &Key) -> Option<Manifest> {
    let (bytes, path) = store.load_vouched_manifest_bytes(key, MAX_MANIFEST_BYTES)?;
    match Manifest::parse(&bytes, key) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("{}: ignoring {}: {e}", key.to_string_lossy(), path.display());
            None
        }
    }
}

/// Forgets the manifest of `key` a peer vouched for.
pub fn forget_vouched(store: &PieceStore, key: &Key) {
    store.remove_vouched_manifest(key);
}
