//! annexfs: a FUSE filesystem for git-annex repositories.
//!
//! Layers, dependencies pointing down (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! cli / cmd    command line, wiring, mounting and daemonizing
//!   fuse       thin fuser adapter
//!   fs         filesystem semantics without FUSE: inodes, attributes, handles, reads
//!   fetch      parallel range fetching into the piece cache, whole-key verification
//!   pieces     the on-disk piece cache
//!   source     byte-range readers and sources (local files, chunks, HTTP)
//!   annex      pure git-annex knowledge: keys, branch logs, remotes, namespace
//! ```
//!
//! The repository is only ever read: nothing in annexfs writes to it.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::cast_possible_truncation)]

pub mod annex;
pub mod cli;
pub mod cmd;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod logging;
pub mod manifest;
pub mod pieces;
pub mod source;
pub mod spread;
pub mod swarm;
