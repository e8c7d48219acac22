//! Steals and hedges of the scheduler (see the module doc of [`super`]): an idle source
//! taking the back of another's run, and a second request for a demanded piece whose
//! request stopped delivering.

use super::super::config::{DRIP_BPS, HEDGE_AFTER, SILENT_HEDGE_AFTER, STEAL_IF_LEFT_SECS};
use super::super::piece::{Piece, PieceIndex};
use super::super::stats::SourceId;
use super::{Action, Planner};
use std::time::Duration;

impl Planner<'_, '_> {
    /// Idle source `s` takes the back half of the largest unstarted remainder of another
    /// source's request that would take long where it is.
    pub(super) fn steal(&mut self, s: SourceId) -> bool {
        let ps = self.b.piece_size as f64;
        let now = self.now;
        let victim = self
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.source != s && !r.hedge)
            // The piece being received now stays with its request.
            .map(|(k, r)| (k, r, r.next.next(), r.end))
            .filter(|&(_, _, from, end)| end.0 > from.0 + 1)
            // Only work that would take long where it is: splitting a request about to finish
            // anyway wastes what its connection already has in flight.
            .filter(|&(_, r, from, end)| {
                let bps = self.sources[r.source.0].bps;
                let left = (end.0 - from.0) as f64 * ps;
                let slow_start = bps <= 0.0 && now.saturating_duration_since(r.started) > HEDGE_AFTER;
                slow_start || (bps > 0.0 && left / bps > STEAL_IF_LEFT_SECS) || self.steal_pays(s, r.source, left)
            })
            .map(|(k, _, from, end)| (k, from, end))
            .max_by_key(|&(_, from, end)| end.0 - from.0);
        let Some((k, from, end)) = victim else { return false };
        let split = PieceIndex(from.0 + (end.0 - from.0) / 2);
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

    /// Whether `thief`, idle, should take the back half of the `left` bytes still to come of
    /// a request on `victim`, a source whose starts are costly (an ssh session), even though
    /// they are below [`STEAL_IF_LEFT_SECS`]: the thief, quick to start, receives its half
    /// sooner than the victim would finish the whole. Such a victim's runs are long and at the
    /// back of the readahead (`far_start`), so the end of a read is where they end: the other
    /// sources would sit idle through its last fraction of a second. Cutting its run loses
    /// nothing fetched: its transfer parks where it stopped (`RangeSource::resumes_at`; the
    /// bytes under way stay in its session, on its own link), whereas a cut HTTP request drops
    /// what its connection has in flight, which is why other victims keep the plain bar. Only
    /// an idle thief: one with work of its own would receive its half later than it reckons.
    pub(super) fn steal_pays(&self, thief: SourceId, victim: SourceId, left: f64) -> bool {
        let (t, v) = (&self.sources[thief.0], &self.sources[victim.0]);
        v.costly_start
            && t.inflight == 0
            && !self.starts_slowly(thief)
            && t.bps > 0.0
            && v.bps > 0.0
            && t.ttfb + left / 2.0 / t.bps < left / v.bps
    }

    /// A demanded piece in flight on another source, not hedged yet, whose request stopped
    /// delivering: silent ones get less patience than ones that were sending; one sending far
    /// slower than `s` could (a mirror that drips) counts too.
    pub(super) fn overdue_demand(&self, s: SourceId) -> Option<PieceIndex> {
        let s_bps = self.sources[s.0].bps;
        let now = self.now;
        self.b.demand.iter().copied().find(|&i| {
            if self.b.hedged.contains(&i) || self.hedged.contains(&i) {
                return false;
            }
            let Piece::InFlight(id) = self.piece(i) else { return false };
            if self.refused(s, i) || !(self.b.holds)(s, i) {
                return false;
            }
            self.requests.iter().find(|r| r.id == id).is_some_and(|r| {
                let silent = r.got == 0;
                let age = now.saturating_duration_since(r.started);
                let rate = r.got as f64 / age.as_secs_f64().max(1e-3);
                // Against what `s` sends a request (measured): many readers at once share a
                // server, each request slow and none faster elsewhere, and a hedge there would
                // only send the piece twice. Unmeasured, against an absolute drip.
                let floor = if s_bps > 0.0 { s_bps / 4.0 } else { DRIP_BPS };
                // A source whose first bytes usually take long (a busy server's queue, an ssh
                // session) is given twice that before its silence counts, at most 2 s.
                let usual = Duration::from_secs_f64(self.sources[r.source.0].ttfb.clamp(0.0, 1.0) * 2.0);
                let dripping = age > SILENT_HEDGE_AFTER.max(usual) && rate < floor;
                let patience: Duration = if silent { SILENT_HEDGE_AFTER.max(usual) } else { HEDGE_AFTER };
                r.source != s && (dripping || now.saturating_duration_since(r.last_progress) > patience)
            })
        })
    }

    /// Duplicates an overdue demanded piece on `s`.
    pub(super) fn hedge(&mut self, s: SourceId) -> bool {
        let Some(i) = self.overdue_demand(s) else { return false };
        self.hedged.insert(i);
        let id = self.start(s, i, i.next(), true);
        self.actions.push(Action::Hedge { id, source: s, piece: i });
        true
    }
}
