//! Reading keys from s3 holders (see [`crate::annex::remotes::s3`]).

use super::reach::Reach;
use super::remote::RangeSource;
use crate::annex::Key;
use crate::annex::remotes::s3::S3Location;
use std::sync::Arc;

/// Why a s3 location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not read by annexfs yet")]
    NotYet,
}

/// A source reading `key` at `loc`.
pub fn source(_loc: &S3Location, _key: &Key, _reach: &Reach) -> Result<Arc<dyn RangeSource>, Error> {
    Err(Error::NotYet)
}
