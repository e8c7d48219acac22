//! Spread remotes: a key's pieces erasure-coded over several stores (directories, S3
//! buckets), readable by range from all of them at once.
//!
//! - [`layout`]: stripes, shards, the per-key rotation of stores, the per-key [`Manifest`]
//!   (code, piece size, key size, store of each shard, BLAKE3 of every piece) replicated on
//!   every store, so a reader needs only the remote's `stores=` to find everything.
//! - [`code`]: the systematic Reed–Solomon code (reed-solomon-simd).
//! - [`store`], [`s3`]: directory and S3 stores; writes land under a temporary name first.
//! - [`remote`]: a configured remote ([`Spread`]) and the whole-key operations the special
//!   remote program needs: store, retrieve, check, remove, where, repair.
//! - [`reader`]: reading stripes — data pieces in place, any `k` of the `k + m` when a store
//!   is missing, busy or serves a piece that fails its hash; the pieces chosen by the load of
//!   each store so that a reader uses every store's bandwidth.
//! - [`pace`]: per-store limits (requests at once, bytes per second) for the reader.
//! - [`source`]: a spread key as a [`crate::source::remote::RangeSource`] for the mount.
//!
//! Invariant: no byte leaves this module unless its piece matched the manifest's hash or was
//! decoded from pieces that did; a piece failing its hash is an erasure, never data.
//!
//! Lock order: `KeyReader`'s `notes`, `cache` and `slots` are leaves (never held across an
//! await, never two at once); `StoreLimiter::paid_until` is held only to reserve bytes.

pub mod code;
pub mod layout;
pub mod pace;
pub mod reader;
pub mod remote;
pub mod s3;
pub mod source;
pub mod store;

pub use layout::{Code, Layout, Manifest};
pub use remote::Spread;

/// What went wrong in a spread remote.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpreadError {
    #[error("{0}")]
    Config(String),
    #[error("bad manifest: {0}")]
    BadManifest(String),
    #[error("erasure code: {0}")]
    Code(String),
    #[error("only {have} intact pieces of a stripe, {need} needed")]
    TooFew { have: usize, need: usize },
    #[error("no store holds a manifest of the key ({0})")]
    NoManifest(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Io(String),
}
