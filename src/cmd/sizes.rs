//! Sizes of keys whose name has none (URL keys, `addurl --relaxed`, old WORM keys), as the
//! mount learns them: the [`SizeBook`] of what was learnt (or not, and when), and the key with
//! the learnt size written in, which the fetcher and the piece cache know it by. How sizes
//! are asked for is in [`super::assemble`] (headers) and [`crate::source::sizeless`] (a
//! download to the end).
//!
//! Lock order: the book's mutex is a leaf.

use crate::annex::remotes::Location;
use crate::annex::{Annex, Key};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup of a key without a size may wait for its size from the network.
pub(crate) const LEARN_SIZE_WAIT: Duration = Duration::from_secs(3);
/// A size that could not be learnt is asked again after this.
pub(crate) const UNKNOWN_SIZE_RETRY: Duration = Duration::from_secs(10);

/// Sizes learnt for keys whose name has none, by key: `Some` for good, `None` (not learnt)
/// with when it was asked.
#[derive(Default)]
pub(crate) struct SizeBook(Mutex<HashMap<Vec<u8>, Learnt>>);

/// A size learnt (or not, and when that was found).
type Learnt = (Option<u64>, Instant);

impl SizeBook {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Learnt>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The size learnt, if any; `Err(())` if asking again is not due yet.
    pub(crate) fn get(&self, key: &Key) -> Result<Option<u64>, ()> {
        match self.map().get(&key.to_bytes()) {
            Some(&(Some(n), _)) => Ok(Some(n)),
            Some(&(None, at)) if at.elapsed() < UNKNOWN_SIZE_RETRY => Err(()),
            _ => Ok(None),
        }
    }

    pub(crate) fn known(&self, key: &Key) -> Option<u64> {
        self.get(key).ok().flatten()
    }

    pub(crate) fn set(&self, key: &Key, size: Option<u64>) {
        self.set_bytes(&key.to_bytes(), size);
    }

    pub(crate) fn set_bytes(&self, key: &[u8], size: Option<u64>) {
        let mut m = self.map();
        // A size once learnt is kept (a later failure to ask does not forget it).
        if size.is_some() || !matches!(m.get(key), Some((Some(_), _))) {
            m.insert(key.to_vec(), (size, Instant::now()));
        }
    }
}

/// `key` with `size` written in (`-sN`): what the fetcher and the piece cache know a key
/// without a size by, once its size is learnt.
pub(crate) fn with_size(key: &Key, size: u64) -> Option<Key> {
    let bytes = key.to_bytes();
    let v = key.variety().len();
    let mut sized = bytes[..v].to_vec();
    sized.extend_from_slice(format!("-s{size}").as_bytes());
    sized.extend_from_slice(&bytes[v..]);
    Key::parse(&sized).ok().filter(|k| k.size() == Some(size))
}

/// The web URLs recorded for `key` (readable holders only).
pub(crate) fn web_urls(annex: &Annex, key: &Key) -> Vec<String> {
    let Ok(holders) = annex.holders(key) else { return Vec::new() };
    let mut urls = Vec::new();
    for h in holders.iter().filter(|h| h.readable.is_ok()) {
        for loc in &h.locations {
            match loc {
                Location::Url(u) => urls.push(u.clone()),
                Location::Urls(us) => urls.extend(us.iter().cloned()),
                _ => {}
            }
        }
    }
    urls.dedup();
    urls
}
