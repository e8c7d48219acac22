//! The peer table: every address a node knows, bounded, in two kinds.
//!
//! - **Candidates** (learnt from an announcement or a peer's list, or given by the user) have
//!   not answered a hello as a node of this repository yet: they are never read from and never
//!   passed on. A learnt candidate whose check fails is forgotten at once (it comes back only if
//!   someone names it again); one the user gave is tried again after [`RETRY_AFTER`].
//! - **Peers** answered: they are sources, they are listed to others. One that fails
//!   [`DROP_AFTER`] rounds in a row is dropped until [`RETRY_AFTER`] (not forgotten).
//!
//! The table holds at most its capacity. When it is full, a new address takes the place of
//! the oldest learnt candidate, else of a learnt peer that is dropped now; when there is
//! neither (every entry answered lately, or was given by the user), the new address is refused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Failed rounds in a row after which a peer is dropped.
pub const DROP_AFTER: u32 = 3;
/// A dropped peer (or a given address that did not answer) is tried again after this.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Entries a node's table holds at most.
pub const MAX_PEERS: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    fails: u32,
    retry_at: Option<Instant>,
    /// The UUID it answered with; `None` while a candidate.
    answered: Option<String>,
    /// The space it offers the swarm, as it last said.
    offered: u64,
    /// The UUID it was announced with (by itself or another node), if any: its hello must say
    /// the same.
    claimed: Option<String>,
    /// Given by the user (settings, command line): never evicted, retried when silent.
    given: bool,
    added: Instant,
    /// When it last answered (a hello or a round of exchange).
    answered_at: Option<Instant>,
}

/// What adding an address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    Known,
    /// The table is full of entries that may not be replaced.
    Full,
}

/// Counts of the table, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableCounts {
    /// Peers that answered and are not dropped.
    pub live: usize,
    /// Addresses waiting for their first answer.
    pub candidates: usize,
    /// Peers dropped for now.
    pub dropped: usize,
    pub capacity: usize,
}

pub(crate) struct Table {
    map: BTreeMap<String, Entry>,
    cap: usize,
}

impl Table {
    pub fn new(cap: usize) -> Table {
        Table { map: BTreeMap::new(), cap: cap.max(1) }
    }

    #[cfg(test)]
    pub fn contains(&self, url: &str) -> bool {
        self.map.contains_key(url)
    }

    /// Adds `url` as a candidate. A `claimed` UUID given for a known candidate replaces none
    /// (the first claim stands until the check).
    pub fn add(&mut self, url: &str, claimed: Option<String>, given: bool, now: Instant) -> Added {
        if let Some(e) = self.map.get_mut(url) {
            e.given |= given;
            return Added::Known;
        }
        if self.map.len() >= self.cap && !self.evict_one(now) {
            return Added::Full;
        }
        let e = Entry {
            fails: 0,
            retry_at: None,
            answered: None,
            offered: 0,
            claimed,
            given,
            added: now,
            answered_at: None,
        };
        self.map.insert(url.to_string(), e);
        Added::New
    }

    /// Makes room for one entry: the oldest learnt candidate, else a learnt peer dropped now.
    fn evict_one(&mut self, now: Instant) -> bool {
        let candidate = self
            .map
            .iter()
            .filter(|(_, e)| !e.given && e.answered.is_none())
            .min_by_key(|(_, e)| e.added)
            .map(|(u, _)| u.clone());
        let victim = candidate.or_else(|| {
            self.map
                .iter()
                .filter(|(_, e)| !e.given && e.retry_at.is_some_and(|t| t > now))
                .min_by_key(|(_, e)| e.added)
                .map(|(u, _)| u.clone())
        });
        match victim {
            Some(u) => {
                tracing::debug!("swarm: peer table full; forgetting {u}");
                self.map.remove(&u);
                true
            }
            None => false,
        }
    }

    /// Live peers as nodes of the swarm: (address, UUID, space offered).
    pub fn nodes(&self, now: Instant) -> Vec<(String, String, u64)> {
        self.nodes_seen(now).into_iter().map(|(u, id, o, _)| (u, id, o)).collect()
    }

    /// Live peers as nodes of the swarm, with when each last answered: a peer that stopped
    /// answering stays live until [`DROP_AFTER`] failed rounds, but the time it has been
    /// silent counts from its last answer.
    pub fn nodes_seen(&self, now: Instant) -> Vec<(String, String, u64, Instant)> {
        self.map
            .iter()
            .filter(|(_, e)| e.retry_at.is_none_or(|t| t <= now))
            .filter_map(|(u, e)| Some((u.clone(), e.answered.clone()?, e.offered, e.answered_at.unwrap_or(e.added))))
            .collect()
    }

    /// Whether `url` waits to be tried again (a dropped peer, or a given address that did not
    /// answer yet).
    pub fn is_waiting(&self, url: &str, now: Instant) -> bool {
        self.map.get(url).is_some_and(|e| e.retry_at.is_some_and(|t| t > now))
    }

    /// Peers that answered and are not dropped now.
    pub fn live(&self, now: Instant) -> Vec<String> {
        self.map
            .iter()
            .filter(|(_, e)| e.answered.is_some() && e.retry_at.is_none_or(|t| t <= now))
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Candidates due for a check, oldest first, at most `n`: (address, claimed UUID).
    pub fn due(&self, now: Instant, n: usize) -> Vec<(String, Option<String>)> {
        let mut v: Vec<(&String, &Entry)> =
            self.map.iter().filter(|(_, e)| e.answered.is_none() && e.retry_at.is_none_or(|t| t <= now)).collect();
        v.sort_by_key(|(_, e)| e.added);
        v.into_iter().take(n).map(|(u, e)| (u.clone(), e.claimed.clone())).collect()
    }

    /// `url` answered as a node of this repository, with `uuid`. False if it is no longer in
    /// the table.
    pub fn answered(&mut self, url: &str, uuid: String, offered: u64) -> bool {
        let Some(e) = self.map.get_mut(url) else { return false };
        e.answered = Some(uuid);
        e.offered = offered;
        e.fails = 0;
        e.retry_at = None;
        e.answered_at = Some(Instant::now());
        true
    }

    /// A candidate's check failed: a learnt one is forgotten, a given one tried again later.
    pub fn check_failed(&mut self, url: &str, now: Instant) {
        let Some(e) = self.map.get_mut(url) else { return };
        if e.given {
            e.retry_at = Some(now + RETRY_AFTER);
        } else {
            self.map.remove(url);
        }
    }

    /// Forgets `url` whatever it is (it turned out to be this node, or lied about itself).
    pub fn forget(&mut self, url: &str) {
        self.map.remove(url);
    }

    /// The outcome of a round with a peer: [`DROP_AFTER`] failures in a row drop it until
    /// [`RETRY_AFTER`]. Returns true when this failure dropped it.
    pub fn record(&mut self, url: &str, ok: bool, now: Instant) -> bool {
        let Some(e) = self.map.get_mut(url) else { return false };
        if ok {
            e.fails = 0;
            e.retry_at = None;
            e.answered_at = Some(now);
            return false;
        }
        e.fails += 1;
        if e.fails >= DROP_AFTER {
            e.retry_at = Some(now + RETRY_AFTER);
            e.fails = 0;
            return true;
        }
        false
    }

    pub fn counts(&self, now: Instant) -> TableCounts {
        let mut c = TableCounts { capacity: self.cap, ..TableCounts::default() };
        for e in self.map.values() {
            match (&e.answered, e.retry_at.is_some_and(|t| t > now)) {
                (None, _) => c.candidates += 1,
                (Some(_), false) => c.live += 1,
                (Some(_), true) => c.dropped += 1,
            }
        }
        c
    }

    #[cfg(test)]
    pub fn set_retry(&mut self, url: &str, at: Instant) {
        if let Some(e) = self.map.get_mut(url) {
            e.retry_at = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_bounded_and_drops_silent_candidates_first() {
        let now = Instant::now();
        let mut t = Table::new(4);
        assert_eq!(t.add("http://given", None, true, now), Added::New);
        assert_eq!(t.add("http://honest", None, false, now), Added::New);
        assert!(t.answered("http://honest", "u1".into(), 0));
        for i in 0..100 {
            let at = now + Duration::from_millis(i);
            assert_ne!(t.add(&format!("http://junk{i}"), None, false, at), Added::Known);
            assert!(t.map.len() <= 4);
        }
        // The given address and the answered peer stayed; the newest junk took the rest.
        assert!(t.contains("http://given") && t.contains("http://honest"));
        assert!(t.contains("http://junk99") && t.contains("http://junk98"));
        assert_eq!(t.live(now), vec!["http://honest".to_string()], "candidates are not live");
        let c = t.counts(now);
        assert_eq!((c.live, c.candidates, c.dropped, c.capacity), (1, 3, 0, 4));
        // Full of entries that may not go: refused.
        let mut full = Table::new(2);
        full.add("http://a", None, true, now);
        full.add("http://b", None, false, now);
        full.answered("http://b", "u".into(), 0);
        assert_eq!(full.add("http://c", None, false, now), Added::Full);
        // A dropped learnt peer may go.
        for _ in 0..DROP_AFTER {
            full.record("http://b", false, now);
        }
        assert_eq!(full.counts(now).dropped, 1);
        assert_eq!(full.add("http://c", None, false, now), Added::New);
        assert!(!full.contains("http://b"));
    }

    #[test]
    fn failed_checks_forget_learnt_addresses_and_retry_given_ones() {
        let now = Instant::now();
        let mut t = Table::new(8);
        t.add("http://learnt", Some("u".into()), false, now);
        t.add("http://given", None, true, now);
        assert_eq!(t.due(now, 10).len(), 2);
        let due = t.due(now, 10);
        let learnt = due.iter().find(|(u, _)| u == "http://learnt").unwrap();
        assert_eq!(learnt.1.as_deref(), Some("u"), "the claim travels with the check");
        t.check_failed("http://learnt", now);
        t.check_failed("http://given", now);
        assert!(!t.contains("http://learnt") && t.contains("http://given"));
        assert!(t.due(now, 10).is_empty(), "the given one waits");
        assert_eq!(t.due(now + RETRY_AFTER, 10).len(), 1);
    }
}
