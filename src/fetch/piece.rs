//! The state of each piece of a key in this process: the piece state machine.
//!
//! ```text
//!            claim held here, request r             landed (by r or a hedge)
//!   Missing ───────────────────────────▶ InFlight(r) ─────────────────────────▶ Present
//!    │ ▲ ▲   r failed, stolen or preempted    │                                   │
//!    │ │ └────────────────────────────────────┘                                   │
//!    │ └──────────── evicted, failed its check in the cache ─────────────────────┘
//!    │  claim held by another process           landed there (record reloaded)
//!    └───────────────────────────▶ Elsewhere ─────────────────────────────────▶ Present
//!                      (claim freed, not landed: back to Missing)
//! ```
//!
//! The allowed transitions, and only these ([`allowed`], checked by `debug_assert!` in
//! [`PieceTable::set`]):
//! - `Missing → InFlight(r)`: request `r` owns the piece (this process holds its claim).
//! - `Missing → Elsewhere`: another process holds its claim.
//! - `Missing → Present`: a copy landed with no request owning the piece (a hedge whose
//!   original request had failed), or the record shows another process landed it.
//! - `InFlight(r) → Missing`: `r` failed, or gave the piece up (a steal, a preemption).
//! - `InFlight(r) → Present`: landed, by `r` or by a hedge.
//! - `Elsewhere → Missing` (the other process let go) and `Elsewhere → Present`.
//! - `Present → Missing`: dropped from the cache (evicted to make room, or failed a check).
//!
//! Never `InFlight(r) → InFlight(r')` (a steal returns pieces to `Missing` first), never into
//! `Elsewhere` from anything but `Missing`, never from `Present` to anything but `Missing`,
//! and never a state to itself (a caller doing so has lost track of the piece).
//!
//! Invariants, checked in debug builds on every change: `present` counts the `Present`
//! pieces (so completeness is O(1)), and a piece marked checked against the manifest is
//! `Present`.

/// The index of a piece within its key (piece `i` covers `[i × piece_size, (i+1) × piece_size)`
/// clamped to the key's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceIndex(pub usize);

impl PieceIndex {
    /// The pieces `from..to`.
    pub fn range(from: PieceIndex, to: PieceIndex) -> impl DoubleEndedIterator<Item = PieceIndex> {
        (from.0..to.0).map(PieceIndex)
    }

    pub fn next(self) -> PieceIndex {
        PieceIndex(self.0 + 1)
    }
}

impl std::fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of a request of one key's fetch (never reused within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Missing,
    InFlight(RequestId),
    /// Claimed by another process; looked at again on the next tick.
    Elsewhere,
    Present,
}

/// Whether a piece may go from `old` to `new` (see the module doc).
pub fn allowed(old: Piece, new: Piece) -> bool {
    use Piece::{Elsewhere, InFlight, Missing, Present};
    matches!(
        (old, new),
        (Missing, InFlight(_) | Elsewhere | Present)
            | (InFlight(_) | Elsewhere, Missing | Present)
            | (Present, Missing)
    )
}

/// The pieces of a key, their states and which were checked against the manifest.
#[derive(Debug)]
pub struct PieceTable {
    states: Vec<Piece>,
    /// How many pieces are `Present`.
    present: usize,
    /// Pieces checked against the manifest (landed since it was known, or read and checked).
    checked: Vec<bool>,
}

impl PieceTable {
    pub fn new(states: Vec<Piece>) -> PieceTable {
        let present = states.iter().filter(|p| **p == Piece::Present).count();
        let checked = vec![false; states.len()];
        PieceTable { states, present, checked }
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn end(&self) -> PieceIndex {
        PieceIndex(self.states.len())
    }

    pub fn get(&self, i: PieceIndex) -> Piece {
        self.states[i.0]
    }

    pub fn is(&self, i: PieceIndex, p: Piece) -> bool {
        self.states[i.0] == p
    }

    /// Whether every piece is present.
    pub fn complete(&self) -> bool {
        self.present == self.states.len()
    }

    /// Whether any piece is in state `p`.
    pub fn any(&self, p: Piece) -> bool {
        self.states.contains(&p)
    }

    /// Every piece index.
    pub fn indices(&self) -> impl DoubleEndedIterator<Item = PieceIndex> + use<> {
        PieceIndex::range(PieceIndex(0), self.end())
    }

    /// Changes a piece's state along an allowed transition, keeping the counts.
    pub fn set(&mut self, i: PieceIndex, new: Piece) {
        let old = std::mem::replace(&mut self.states[i.0], new);
        debug_assert!(allowed(old, new), "piece {i}: {old:?} → {new:?} is not a transition of the piece state machine");
        if new != Piece::Present {
            self.checked[i.0] = false;
        }
        match (old == Piece::Present, new == Piece::Present) {
            (false, true) => self.present += 1,
            (true, false) => self.present -= 1,
            _ => {}
        }
        self.debug_check();
    }

    /// Whether piece `i` was checked against the manifest.
    pub fn checked(&self, i: PieceIndex) -> bool {
        self.checked[i.0]
    }

    /// Piece `i`, present, matched the manifest.
    pub fn mark_checked(&mut self, i: PieceIndex) {
        debug_assert_eq!(self.states[i.0], Piece::Present, "piece {i} checked but not present");
        self.checked[i.0] = true;
    }

    /// The invariants of the module doc (debug builds; a full count only for tables small
    /// enough that checking on every change stays cheap).
    fn debug_check(&self) {
        if cfg!(debug_assertions) && self.states.len() <= 1 << 14 {
            let present = self.states.iter().filter(|p| **p == Piece::Present).count();
            debug_assert_eq!(self.present, present, "count of present pieces out of step");
            debug_assert!(
                self.states.iter().zip(&self.checked).all(|(p, &c)| !c || *p == Piece::Present),
                "a piece marked checked is not present"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Piece; 5] = [
        Piece::Missing,
        Piece::InFlight(RequestId(1)),
        Piece::InFlight(RequestId(2)),
        Piece::Elsewhere,
        Piece::Present,
    ];

    #[test]
    fn transitions_are_those_written_down() {
        use Piece::{Elsewhere, InFlight, Missing, Present};
        let ok: Vec<(Piece, Piece)> =
            ALL.iter().flat_map(|&a| ALL.iter().map(move |&b| (a, b))).filter(|&(a, b)| allowed(a, b)).collect();
        let r = |n| InFlight(RequestId(n));
        let expected = vec![
            (Missing, r(1)),
            (Missing, r(2)),
            (Missing, Elsewhere),
            (Missing, Present),
            (r(1), Missing),
            (r(1), Present),
            (r(2), Missing),
            (r(2), Present),
            (Elsewhere, Missing),
            (Elsewhere, Present),
            (Present, Missing),
        ];
        assert_eq!(ok, expected);
    }

    #[test]
    fn counts_follow_the_states() {
        let mut t = PieceTable::new(vec![Piece::Missing, Piece::Present, Piece::Missing]);
        assert!(!t.complete());
        t.set(PieceIndex(0), Piece::InFlight(RequestId(7)));
        t.set(PieceIndex(0), Piece::Present);
        t.mark_checked(PieceIndex(0));
        assert!(t.checked(PieceIndex(0)));
        t.set(PieceIndex(2), Piece::Elsewhere);
        t.set(PieceIndex(2), Piece::Present);
        assert!(t.complete());
        t.set(PieceIndex(0), Piece::Missing);
        assert!(!t.checked(PieceIndex(0)), "a dropped piece is no longer checked");
        assert!(!t.complete());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not a transition")]
    fn a_request_cannot_take_a_piece_from_another() {
        let mut t = PieceTable::new(vec![Piece::Missing]);
        t.set(PieceIndex(0), Piece::InFlight(RequestId(1)));
        t.set(PieceIndex(0), Piece::InFlight(RequestId(2)));
    }
}
