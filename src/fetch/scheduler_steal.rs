//! Steals: an idle source takes the back of another source's request (see the module doc
//! of `scheduler.rs`). A child of the scheduler's module, for its planner's fields.

use super::{Action, Planner, RequestView};
use crate::fetch::config::{HEDGE_AFTER, STEAL_IF_LEFT_SECS};

/// What a streaming request's source has likely sent beyond the piece it is receiving:
/// this long at its rate, at least [`IN_FLIGHT_MIN_BYTES`].
const IN_FLIGHT_SECS: f64 = 0.05;
const IN_FLIGHT_MIN_BYTES: u64 = 1 << 20;
use crate::fetch::piece::PieceIndex;
use crate::fetch::stats::SourceId;

impl Planner<'_, '_> {
    /// Idle source `s` takes the back of the largest unstarted remainder of another source's
    /// request that would take long where it is.
    pub(super) fn steal(&mut self, s: SourceId) -> bool {
        self.steal_over(s, STEAL_IF_LEFT_SECS)
    }

    /// Steals from the request whose remainder would take longest where it is, if that is over
    /// `min_left_secs`; the split leaves the victim the part it would finish as `s` finishes
    /// the rest (each at its measured rate and after its wait for a first byte; halves while
    /// either is unmeasured), and never less than what its source has likely sent already
    /// (`IN_FLIGHT_SECS`: those bytes would travel twice). A request that has not sent a byte
    /// yet counts its source's usual wait still ahead of it, and its first piece may go too
    /// (none of it is under way).
    fn steal_over(&mut self, s: SourceId, min_left_secs: f64) -> bool {
        let ps = self.b.piece_size as f64;
        let now = self.now;
        // Seconds until request `r` has its first byte (0 once it has one).
        let wait = |r: &RequestView| {
            let age = now.saturating_duration_since(r.started).as_secs_f64();
            if r.got == 0 { (self.sources[r.source.0].ttfb - age).max(0.0) } else { 0.0 }
        };
        // Pieces of a streaming request its source has likely sent already (in socket buffers
        // and on the way): the victim keeps them, or they would travel twice.
        let in_flight = |r: &RequestView| {
            if r.got == 0 {
                return 0;
            }
            let bytes = (self.sources[r.source.0].bps * IN_FLIGHT_SECS).max(IN_FLIGHT_MIN_BYTES as f64);
            // A float of pieces, clamped: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let pieces = (bytes / ps).ceil().min(1e6) as usize;
            pieces
        };
        let victim = self
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.source != s && !r.hedge)
            // The piece being received now stays with its request.
            .map(|(k, r)| (k, r, if r.got == 0 { r.next } else { r.next.next() }, r.end))
            .filter(|&(_, r, from, end)| end.0 > from.0 + 1 + in_flight(r))
            // Only work that would take long where it is: splitting a request about to finish
            // anyway wastes what its connection already has in flight.
            .filter(|&(_, r, from, end)| {
                let bps = self.sources[r.source.0].bps;
                let left = (end.0 - from.0) as f64 * ps;
                let slow_start = bps <= 0.0 && now.saturating_duration_since(r.started) > HEDGE_AFTER;
                slow_start || (bps > 0.0 && wait(r) + left / bps > min_left_secs)
            })
            .map(|(k, r, from, end)| (k, r.source, wait(r), in_flight(r), from, end))
            .max_by_key(|&(_, _, _, _, from, end)| end.0 - from.0);
        let Some((k, vs, wait_v, sent, from, end)) = victim else { return false };
        let n = end.0 - from.0;
        let (bv, bt) = (self.sources[vs.0].bps, self.sources[s.0].bps);
        // Both done at once: wait_v + k·ps/bv = ttfb_t + (n − k)·ps/bt.
        let even = if bv > 0.0 && bt > 0.0 {
            (self.sources[s.0].ttfb - wait_v + n as f64 * ps / bt) / (ps / bv + ps / bt)
        } else {
            n as f64 / 2.0
        };
        // A float clamped to 1..n-1: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let kept = (even.round().clamp(1.0, (n - 1) as f64) as usize).max(sent);
        let split = PieceIndex(from.0 + kept);
        let victim = self.requests[k].id;
        self.requests[k].end = split;
        self.give_back(victim, split, end);
        self.actions.push(Action::Steal { victim, split, end });
        let mut to = split;
        while to < end && self.missing(to) && self.may_ask(s, to) {
            to = to.next();
        }
        if to == split {
            return false;
        }
        let id = self.start(s, split, to, false);
        self.actions.push(Action::Start { id, source: s, from: split, to });
        true
    }
}
