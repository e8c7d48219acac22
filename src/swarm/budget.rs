//! The byte budget of a keeper under the rules' `bwlimit` for its node: which missing pieces
//! it may want from its sources this round.
//!
//! Bytes accrue at the rate since the last round, up to [`BUDGET_ROUNDS`] rounds' worth (or one
//! piece, when that is more); a piece is **granted** only when the budget covers it, and paid
//! once, when granted. A granted piece stays granted until it lands or is no longer wanted, so
//! the bytes asked for in `t` seconds are at most `rate * t` plus the cap, whatever the
//! sources' speed. Pure (the time is given): unit-tested here.

use super::keep::piece_range;
use crate::annex::Key;
use crate::pieces::piece_size_for;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What a node may fetch for the swarm under a `bwlimit`: bytes accrue at the rate, up to
/// [`BUDGET_ROUNDS`] rounds' worth (or one piece, if more); a missing piece is **granted**
/// (wanted from the sources) only when the budget covers it, and paid once, when granted.
/// So the bytes asked for in `t` seconds are at most `rate * t` plus that cap, whatever the
/// sources' speed; a piece granted stays granted until it lands (or is no longer wanted).
#[derive(Default)]
pub struct Budget {
    bytes: f64,
    at: Option<Instant>,
    /// Pieces granted and not landed: key → pieces.
    granted: BTreeMap<Vec<u8>, BTreeSet<usize>>,
}

/// Rounds of a `bwlimit` a node may save up (a burst after idle rounds).
pub const BUDGET_ROUNDS: f64 = 2.0;

impl Budget {
    /// Keeps of `want` what the budget grants at `rate` bytes per second, rounds of `every`.
    pub fn grant(
        &mut self,
        want: Vec<(Key, BTreeSet<usize>)>,
        rate: Option<u64>,
        every: Duration,
        now: Instant,
    ) -> Vec<(Key, BTreeSet<usize>)> {
        let Some(rate) = rate else {
            self.granted.clear();
            self.at = None;
            return want;
        };
        #[allow(clippy::cast_precision_loss)]
        let rate = rate as f64;
        let largest = want.iter().filter_map(|(k, _)| k.size()).map(piece_size_for).max().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let cap = (rate * every.as_secs_f64() * BUDGET_ROUNDS).max(largest as f64);
        let elapsed = self.at.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.bytes = (self.bytes + rate * elapsed).min(cap);
        self.at = Some(now);
        // Granted pieces no longer missing (landed) or no longer wanted are let go.
        let missing: BTreeMap<Vec<u8>, &BTreeSet<usize>> = want.iter().map(|(k, m)| (k.to_bytes(), m)).collect();
        self.granted.retain(|kb, g| {
            g.retain(|i| missing.get(kb).is_some_and(|m| m.contains(i)));
            !g.is_empty()
        });
        let mut out = Vec::new();
        for (key, pieces) in want {
            let Some(size) = key.size() else { continue };
            let ps = piece_size_for(size);
            let kb = key.to_bytes();
            let mut keep = BTreeSet::new();
            for i in pieces {
                if self.granted.get(&kb).is_some_and(|g| g.contains(&i)) {
                    keep.insert(i);
                    continue;
                }
                let (a, b) = piece_range(size, ps, i as u64);
                #[allow(clippy::cast_precision_loss)]
                let cost = (b - a) as f64;
                if self.bytes >= cost {
                    self.bytes -= cost;
                    self.granted.entry(kb.clone()).or_default().insert(i);
                    keep.insert(i);
                }
            }
            if !keep.is_empty() {
                out.push((key, keep));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grants_pieces_at_the_rate_and_pays_each_once() {
        let key = Key::parse(b"SHA256E-s4194304--0123456789abcdef.bin").unwrap();
        let ps = piece_size_for(4 << 20);
        let n = usize::try_from((4u64 << 20) / ps).unwrap();
        let all: BTreeSet<usize> = (0..n).collect();
        let want = || vec![(key.clone(), all.clone())];
        let (every, t0) = (Duration::from_secs(1), Instant::now());
        let mut b = Budget::default();
        // No limit: everything.
        assert_eq!(b.grant(want(), None, every, t0)[0].1, all);
        // A piece a second: nothing at first, then one piece per second, the same pieces
        // granted again without paying (they have not landed).
        let rate = Some(ps);
        assert!(b.grant(want(), rate, every, t0).is_empty());
        let one = b.grant(want(), rate, every, t0 + Duration::from_secs(1));
        assert_eq!(one[0].1.len(), 1);
        let two = b.grant(want(), rate, every, t0 + Duration::from_secs(2));
        assert_eq!(two[0].1.len(), 2);
        assert!(one[0].1.is_subset(&two[0].1));
        // Idle for long: at most two rounds saved up.
        let first = *two[0].1.iter().next().unwrap();
        let rest: BTreeSet<usize> = all.iter().copied().filter(|&i| i != first).collect();
        let later = b.grant(vec![(key.clone(), rest)], rate, every, t0 + Duration::from_secs(60));
        assert_eq!(later[0].1.len(), 1 + 2, "one granted before, two rounds saved up: {later:?}");
    }
}
