//! Reading keys from external holders (see [`crate::annex::remotes::external`]).

use super::reach::Reach;
use super::remote::RangeSource;
use crate::annex::Key;
use crate::annex::remotes::external::ExternalLocation;
use std::sync::Arc;

/// External special remote programs started for a mount, one pool per remote.
#[derive(Default)]
pub struct Programs {}

/// Why a external location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not read by annexfs yet")]
    NotYet,
}

/// A source reading `key` at `loc`.
pub fn source(_loc: &ExternalLocation, _key: &Key, _reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    Err(Error::NotYet)
}
