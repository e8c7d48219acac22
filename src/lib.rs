//! annexfs: a FUSE filesystem for git-annex repositories.
//!
//! Layers, dependencies pointing down (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! cli / cmd    command line, wiring
//!   annex      pure git-annex knowledge: keys, branch logs, remotes, namespace
//! ```
//!
//! The repository is only ever read: nothing in annexfs writes to it.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::cast_possible_truncation)]

pub mod annex;
pub mod cli;
pub mod cmd;
pub mod logging;
