//! Reading keys from p2phttp holders (see [`crate::annex::remotes::p2phttp`]).

use super::reach::Reach;
use super::remote::RangeSource;
use crate::annex::Key;
use crate::annex::remotes::p2phttp::P2pHttpLocation;
use std::sync::Arc;

/// Why a p2phttp location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not read by annexfs yet")]
    NotYet,
}

/// A source reading `key` at `loc`.
pub fn source(_loc: &P2pHttpLocation, _key: &Key, _reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    Err(Error::NotYet)
}
