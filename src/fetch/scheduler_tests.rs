//! Deterministic tests of the scheduler: boards built by hand, the time passed in.

use super::super::config::{HEDGE_AFTER, SILENT_HEDGE_AFTER};
use super::*;
use std::time::Duration;

const PS: u64 = 256 * 1024;
const MB: f64 = 1e6;

fn source(bps: f64) -> SourceView {
    SourceView {
        bps,
        ttfb: 0.0,
        inflight: 0,
        dead: false,
        backoff_until: None,
        fails_in_row: 0,
        last_probe: None,
        room: None,
        ranges: true,
        costly_start: false,
        resume: Vec::new(),
    }
}

struct Fixture {
    pieces: PieceTable,
    demand: BTreeSet<PieceIndex>,
    hedged: BTreeSet<PieceIndex>,
    refused: HashMap<PieceIndex, Vec<SourceId>>,
    window: (usize, usize),
    /// Windows of further streams, after `window`.
    more_windows: Vec<(usize, usize)>,
    sources: Vec<SourceView>,
    requests: Vec<RequestView>,
    next_id: u64,
    background: BTreeSet<PieceIndex>,
}

impl Fixture {
    /// `n` missing pieces, no readahead window.
    fn new(n: usize, sources: Vec<SourceView>) -> Fixture {
        Fixture {
            pieces: PieceTable::new(vec![Piece::Missing; n]),
            demand: BTreeSet::new(),
            hedged: BTreeSet::new(),
            refused: HashMap::new(),
            window: (n, 0),
            more_windows: Vec::new(),
            sources,
            requests: Vec::new(),
            next_id: 1,
            background: BTreeSet::new(),
        }
    }

    fn demand(mut self, pieces: impl IntoIterator<Item = usize>) -> Fixture {
        self.demand.extend(pieces.into_iter().map(PieceIndex));
        self
    }

    fn background(mut self, pieces: impl IntoIterator<Item = usize>) -> Fixture {
        self.background.extend(pieces.into_iter().map(PieceIndex));
        self
    }

    fn window(mut self, from: usize, len: usize) -> Fixture {
        self.window = (from, len);
        self
    }

    fn present(mut self, pieces: std::ops::Range<usize>) -> Fixture {
        for i in pieces {
            self.pieces.set(PieceIndex(i), Piece::Present);
        }
        self
    }

    /// A request on `source` for `from..to`, started at `started`, that got `got` bytes, the
    /// last of them at `last`.
    fn request(
        &mut self,
        source: usize,
        from: usize,
        to: usize,
        started: Instant,
        got: u64,
        last: Instant,
    ) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        for i in from..to {
            self.pieces.set(PieceIndex(i), Piece::InFlight(id));
        }
        self.sources[source].inflight += 1;
        self.requests.push(RequestView {
            id,
            source: SourceId(source),
            next: PieceIndex(from),
            end: PieceIndex(to),
            started,
            hedge: false,
            got,
            last_progress: last,
        });
        id
    }

    fn board<'a>(&'a self, holds: &'a dyn Fn(SourceId, PieceIndex) -> bool) -> Board<'a> {
        let mut windows = vec![(PieceIndex(self.window.0), self.window.1)];
        windows.extend(self.more_windows.iter().map(|&(f, l)| (PieceIndex(f), l)));
        Board {
            pieces: &self.pieces,
            piece_size: PS,
            demand: &self.demand,
            hedged: &self.hedged,
            refused: &self.refused,
            windows,
            want_all: false,
            background: &self.background,
            sources: self.sources.clone(),
            requests: self.requests.clone(),
            next_id: RequestId(self.next_id),
            holds,
        }
    }

    fn plan(&self, now: Instant) -> Vec<Action> {
        let holds = |_: SourceId, _: PieceIndex| true;
        plan(&self.board(&holds), now)
    }
}

/// The `Start`s of a plan, as (source, from, to).
fn starts(actions: &[Action]) -> Vec<(usize, usize, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { source, from, to, .. } => Some((source.0, from.0, to.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_blocked_read_goes_first_and_is_spread() {
    let f = Fixture::new(64, vec![source(10.0 * MB), source(10.0 * MB)]).window(0, 32).demand(40..44);
    let actions = f.plan(Instant::now());
    let s = starts(&actions);
    assert!(s.len() >= 4, "{actions:?}");
    // Every demanded piece is asked for before any readahead piece.
    let first_readahead = s.iter().position(|&(_, from, _)| from < 40).expect("readahead planned too");
    let demanded: Vec<usize> = s[..first_readahead].iter().flat_map(|&(_, a, b)| a..b).collect();
    assert_eq!(demanded, vec![40, 41, 42, 43], "{actions:?}");
    // Spread: no request takes more than its share (4 pieces over 2 sources).
    assert!(s[..first_readahead].len() >= 2 && s[..first_readahead].iter().all(|&(_, a, b)| b - a <= 2), "{s:?}");
}

#[test]
fn an_idle_fast_source_steals_from_a_slow_one() {
    let t0 = Instant::now();
    let mut f = Fixture::new(40, vec![source(0.5 * MB), source(10.0 * MB)]).window(0, 40);
    let slow = f.request(0, 0, 40, t0, 300_000, t0 + Duration::from_millis(900));
    let actions = f.plan(t0 + Duration::from_secs(1));
    // The piece being received (0) stays; the back half of the rest moves to the fast source.
    assert_eq!(
        actions[..2],
        [
            Action::Steal { victim: slow, split: PieceIndex(20), end: PieceIndex(40) },
            Action::Start { id: RequestId(2), source: SourceId(1), from: PieceIndex(20), to: PieceIndex(40) },
        ],
        "{actions:?}"
    );
}

#[test]
fn the_end_of_a_slow_starters_run_is_shared_out() {
    let t0 = Instant::now();
    // 0.16 s left on the ssh-like source (below the plain bar): an HTTP-like source, idle,
    // quick to start, would be done with half of it in 0.09 s.
    let slow = SourceView { ttfb: 0.4, costly_start: true, ..source(25.0 * MB) };
    let quick = SourceView { ttfb: 0.01, ..source(25.0 * MB) };
    let mut f = Fixture::new(40, vec![slow.clone(), quick.clone()]).window(0, 40).present(0..24);
    let victim = f.request(0, 24, 40, t0, 0, t0);
    // Once, by the idle thief: with a run of its own it steals no more.
    assert_eq!(
        f.plan(t0 + Duration::from_millis(10)),
        vec![
            Action::Steal { victim, split: PieceIndex(32), end: PieceIndex(40) },
            Action::Start { id: RequestId(2), source: SourceId(1), from: PieceIndex(32), to: PieceIndex(40) },
        ]
    );
    // The same run on a source quick to start is left alone (a cut HTTP request wastes what
    // is in flight); and a few pieces left are not worth a thief's start.
    let mut f = Fixture::new(40, vec![quick.clone(), quick.clone()]).window(0, 40).present(0..24);
    f.request(0, 24, 40, t0, 0, t0);
    assert_eq!(f.plan(t0 + Duration::from_millis(10)), vec![]);
    let thief = SourceView { ttfb: 0.05, ..source(25.0 * MB) };
    let mut f = Fixture::new(40, vec![slow, thief]).window(0, 40).present(0..37);
    f.request(0, 37, 40, t0, 0, t0);
    assert_eq!(f.plan(t0 + Duration::from_millis(10)), vec![]);
}

#[test]
fn nothing_is_stolen_that_is_about_to_finish() {
    let t0 = Instant::now();
    let mut f = Fixture::new(4, vec![source(100.0 * MB), source(100.0 * MB)]).window(0, 4);
    f.request(0, 0, 4, t0, 0, t0);
    assert_eq!(f.plan(t0 + Duration::from_millis(10)), vec![]);
}

#[test]
fn a_stalled_demand_request_is_hedged_after_the_delay() {
    let t0 = Instant::now();
    let mut f = Fixture::new(8, vec![source(MB), source(MB)]).demand([5]);
    f.request(0, 5, 6, t0, 0, t0);
    // Silent for less than the hedge delay: patience.
    assert_eq!(f.plan(t0 + SILENT_HEDGE_AFTER / 2), vec![]);
    assert_eq!(
        f.plan(t0 + SILENT_HEDGE_AFTER + Duration::from_millis(50)),
        vec![Action::Hedge { id: RequestId(2), source: SourceId(1), piece: PieceIndex(5) }]
    );
    // Hedged once only.
    f.hedged.insert(PieceIndex(5));
    assert_eq!(f.plan(t0 + Duration::from_secs(2)), vec![]);
}

#[test]
fn a_request_that_was_sending_gets_the_longer_delay() {
    let t0 = Instant::now();
    let mut f = Fixture::new(8, vec![source(MB), source(MB)]).demand([5]);
    let last = t0 + Duration::from_millis(50);
    f.request(0, 5, 6, t0, 1 << 20, last);
    assert_eq!(f.plan(last + HEDGE_AFTER - Duration::from_millis(100)), vec![]);
    let actions = f.plan(last + HEDGE_AFTER + Duration::from_millis(100));
    assert_eq!(actions, vec![Action::Hedge { id: RequestId(2), source: SourceId(1), piece: PieceIndex(5) }]);
}

#[test]
fn the_end_game_asks_a_second_source_for_the_last_pieces() {
    let f = Fixture::new(16, vec![source(100.0 * MB), source(50.0 * MB)]).present(0..12).window(12, 4);
    let s = starts(&f.plan(Instant::now()));
    // The fast source alone would take all four in one run; the last ones go to the other.
    assert!(s.iter().all(|&(_, a, b)| b - a <= 2), "{s:?}");
    assert!(s.iter().any(|&(src, ..)| src == 1), "{s:?}");
    let covered: BTreeSet<usize> = s.iter().flat_map(|&(_, a, b)| a..b).collect();
    assert_eq!(covered, (12..16).collect());
}

#[test]
fn a_demand_read_preempts_the_sources_readahead() {
    let t0 = Instant::now();
    let mut f = Fixture::new(64, vec![source(10.0 * MB)]).window(10, 20).demand([2]);
    let readahead = f.request(0, 10, 30, t0, 1000, t0);
    let actions = f.plan(t0 + Duration::from_millis(20));
    assert_eq!(
        actions,
        vec![
            Action::Start { id: RequestId(2), source: SourceId(0), from: PieceIndex(2), to: PieceIndex(3) },
            Action::Preempt { request: readahead, keep: PieceIndex(11), end: PieceIndex(30) },
        ]
    );
}

#[test]
fn a_far_slower_source_is_only_probed() {
    let t0 = Instant::now();
    let mut f = Fixture::new(64, vec![source(100.0 * MB), source(MB)]).window(0, 64);
    let actions = f.plan(t0);
    assert!(actions.contains(&Action::Probe { source: SourceId(1) }), "{actions:?}");
    f.sources[1].last_probe = Some(t0);
    let later = f.plan(t0 + PROBE_EVERY / 2);
    assert!(starts(&later).iter().all(|&(s, ..)| s == 0), "{later:?}");
}

#[test]
fn dead_backing_off_or_capped_sources_get_nothing() {
    let now = Instant::now();
    let mut f = Fixture::new(8, vec![source(MB), source(MB), source(MB)]).window(0, 8);
    f.sources[0].dead = true;
    f.sources[1].backoff_until = Some(now + Duration::from_secs(1));
    f.sources[2].room = Some(0);
    assert_eq!(f.plan(now), vec![]);
    f.sources[2].room = Some(1);
    assert_eq!(starts(&f.plan(now)), vec![(2, 0, 1)], "one request, unmeasured: one piece");
}

#[test]
fn a_refused_source_is_not_asked_for_that_piece() {
    let mut f = Fixture::new(4, vec![source(MB)]).demand([0]);
    f.refused.insert(PieceIndex(0), vec![SourceId(0)]);
    assert_eq!(f.plan(Instant::now()), vec![]);
}

fn whole_object_source(bps: f64) -> SourceView {
    SourceView { ranges: false, ..source(bps) }
}

#[test]
fn a_source_without_ranges_gets_one_run_to_the_end_of_the_key() {
    // Only the first megabyte is wanted; the stream goes on to the end all the same.
    let mut f = Fixture::new(40, vec![whole_object_source(0.0)]).window(0, 4);
    let actions = f.plan(Instant::now());
    assert_eq!(starts(&actions), vec![(0, 0, 40)], "{actions:?}");
    // While it runs, it is given nothing more (another request would start from 0 again).
    let t0 = Instant::now();
    f.request(0, 0, 40, t0, 0, t0);
    f.demand.insert(PieceIndex(30));
    assert_eq!(f.plan(t0 + Duration::from_secs(2)), vec![]);
}

#[test]
fn a_range_source_beside_it_takes_the_tail() {
    let t0 = Instant::now();
    let mut f = Fixture::new(40, vec![whole_object_source(MB), source(10.0 * MB)]).window(0, 8);
    let whole = f.request(0, 0, 40, t0, 300_000, t0 + Duration::from_millis(300));
    let actions = f.plan(t0 + Duration::from_millis(400));
    assert_eq!(
        actions[..2],
        [
            Action::Steal { victim: whole, split: PieceIndex(20), end: PieceIndex(40) },
            Action::Start { id: RequestId(2), source: SourceId(1), from: PieceIndex(20), to: PieceIndex(40) },
        ],
        "{actions:?}"
    );
}

#[test]
fn a_source_without_ranges_alone_finishes_the_key() {
    // The range source that took the tail died; the whole-object source, idle again, is
    // asked for what is missing (its stream skips the pieces present).
    let mut f = Fixture::new(40, vec![whole_object_source(MB), source(MB)]).present(0..25).window(25, 4);
    f.sources[1].dead = true;
    assert_eq!(starts(&f.plan(Instant::now())), vec![(0, 25, 40)]);
    // A hole in the middle: the run stops where the pieces stop being missing.
    let f = Fixture::new(40, vec![whole_object_source(MB)]).present(10..12).window(0, 40);
    assert_eq!(starts(&f.plan(Instant::now())), vec![(0, 0, 10)]);
}

#[test]
fn a_source_without_ranges_neither_steals_nor_hedges() {
    let t0 = Instant::now();
    let mut f = Fixture::new(40, vec![source(0.5 * MB), whole_object_source(100.0 * MB)]).window(0, 40).demand([3]);
    f.request(0, 0, 40, t0, 0, t0);
    assert_eq!(f.plan(t0 + Duration::from_secs(5)), vec![]);
}

#[test]
fn every_streams_window_is_wanted_once_after_the_demand() {
    let mut f = Fixture::new(64, vec![source(10.0 * MB)]).window(10, 4).demand([30, 11]);
    // A second stream whose window overlaps the first one's, and a third far away.
    f.more_windows = vec![(12, 4), (40, 2)];
    let holds = |_: SourceId, _: PieceIndex| true;
    let w: Vec<usize> = wanted(&f.board(&holds)).into_iter().map(|i| i.0).collect();
    assert_eq!(w, vec![11, 30, 10, 12, 13, 14, 15, 40, 41]);
}

#[test]
fn background_pieces_come_after_readers_one_at_a_time_with_spare_room() {
    // Nothing read: idle sources fetch background pieces, one piece per request.
    let f = Fixture::new(64, vec![source(10.0 * MB), source(10.0 * MB)]).background(10..20);
    let s = starts(&f.plan(Instant::now()));
    assert!(!s.is_empty(), "idle sources keep background pieces");
    assert!(s.iter().all(|&(_, a, b)| b == a + 1 && (10..20).contains(&a)), "{s:?}");

    // A blocked reader: its pieces first, and no background request while it waits.
    let f = Fixture::new(64, vec![source(10.0 * MB)]).window(0, 8).demand(40..44).background(10..20);
    let s = starts(&f.plan(Instant::now()));
    assert!(!s.is_empty() && s.iter().all(|&(_, a, _)| !(8..40).contains(&a)), "{s:?}");
    assert!(s.iter().all(|&(_, a, _)| !(10..20).contains(&a)), "background while a reader waits: {s:?}");

    // Readahead before background on the same source.
    let f = Fixture::new(64, vec![source(10.0 * MB)]).window(30, 4).background(0..4);
    let s = starts(&f.plan(Instant::now()));
    assert_eq!(s.first().map(|t| t.1), Some(30), "{s:?}");

    // A limited source with only the room readers may need gets no background request.
    let mut f = Fixture::new(64, vec![source(10.0 * MB)]).background(0..8);
    f.sources[0].room = Some(BACKGROUND_RESERVE);
    assert!(starts(&f.plan(Instant::now())).is_empty());
    f.sources[0].room = Some(BACKGROUND_RESERVE + 1);
    assert_eq!(starts(&f.plan(Instant::now())), vec![(0, 0, 1)]);

    // A source that serves no ranges never streams a key for background pieces.
    let mut f = Fixture::new(64, vec![source(10.0 * MB)]).background(0..8);
    f.sources[0].ranges = false;
    assert!(starts(&f.plan(Instant::now())).is_empty());
}

#[test]
fn a_source_slow_to_start_a_request_gets_longer_runs() {
    // Two sources of the same speed (10 MB/s: 0.5 s of it is 19 pieces of 256 KiB); the
    // second takes 0.4 s before a request's first byte (an ssh session opening).
    let slow_start = SourceView { ttfb: 0.4, ..source(10.0 * MB) };
    let f = Fixture::new(1000, vec![source(10.0 * MB), slow_start]).window(0, 1000);
    let s = starts(&f.plan(Instant::now()));
    let run = |src: usize| s.iter().find(|&&(x, ..)| x == src).map(|&(_, a, b)| b - a).expect("a run each");
    assert_eq!(run(0), 19, "{s:?}");
    // 4 × 0.4 s = 1.6 s of it, at the back of the window: its one long transfer is not
    // overtaken by the quick source (then stolen from, cut and started again).
    assert_eq!(run(1), 61, "{s:?}");
    assert!(s.contains(&(1, 939, 1000)), "{s:?}");
    assert!(s.contains(&(0, 0, 19)), "the quick source starts at the front: {s:?}");
}

#[test]
fn a_source_slow_to_start_alone_reads_from_the_front() {
    let slow_start = SourceView { ttfb: 0.4, ..source(10.0 * MB) };
    let f = Fixture::new(1000, vec![slow_start]).window(0, 1000);
    let s = starts(&f.plan(Instant::now()));
    assert_eq!(s.first(), Some(&(0, 0, 61)), "{s:?}");
}

#[test]
fn a_source_slow_to_start_goes_on_where_its_transfer_stands() {
    // The slow-starting source has a run in flight at the back (1000..1061): its next run
    // starts where that one ends, so that it waits for it and goes on with the same
    // transfer, and it chooses before the quick source could take that piece.
    let slow_start = SourceView { ttfb: 0.4, ..source(10.0 * MB) };
    let mut f = Fixture::new(2000, vec![source(10.0 * MB), slow_start]).window(0, 2000);
    let now = Instant::now();
    f.request(1, 1000, 1061, now, 0, now);
    let s = starts(&f.plan(now));
    assert!(s.contains(&(1, 1061, 1122)), "{s:?}");
    assert!(s.contains(&(0, 0, 19)), "the quick source starts at the front: {s:?}");

    // A parked transfer of it (its run ended, nobody went on yet) comes first.
    let mut f = Fixture::new(2000, vec![source(10.0 * MB), slow_start_at(&[500])]).window(0, 2000);
    f.request(1, 1000, 1061, now, 0, now);
    let s = starts(&f.plan(now));
    assert!(s.contains(&(1, 500, 561)), "{s:?}");

    // Where that piece is not missing, or not wanted, it reads from the back as before.
    let f = Fixture::new(2000, vec![source(10.0 * MB), slow_start_at(&[500])]).window(0, 2000).present(500..501);
    let s = starts(&f.plan(now));
    assert!(s.contains(&(1, 1939, 2000)), "{s:?}");
}

fn slow_start_at(resume: &[usize]) -> SourceView {
    SourceView { ttfb: 0.4, resume: resume.iter().map(|&i| PieceIndex(i)).collect(), ..source(10.0 * MB) }
}

/// A source like an ssh remote: each start costly, a transfer going on for free.
fn costly(bps: f64) -> SourceView {
    SourceView { costly_start: true, ..source(bps) }
}

#[test]
fn a_costly_source_leaves_short_work_to_quick_ones_and_takes_long_runs_at_the_back() {
    let now = Instant::now();
    // A read just begun: demanded pieces and a short window. The quick source takes them;
    // the costly one, unmeasured, starts nothing there.
    let f = Fixture::new(1000, vec![costly(0.0), source(0.0)]).window(0, 8).demand(0..2);
    let s = starts(&f.plan(now));
    assert!(!s.is_empty() && s.iter().all(|&(src, ..)| src == 1), "{s:?}");
    // A long window: the costly source's first run is long (unmeasured: the longest) and at
    // the back.
    let f = Fixture::new(1000, vec![costly(0.0), source(0.0)]).window(0, 1000).demand(0..2);
    let s = starts(&f.plan(now));
    let longest = (MAX_RUN_BYTES / PS) as usize;
    assert!(s.contains(&(0, 1000 - longest, 1000)), "{s:?}");
    // Behind a mirror far too slow to serve the reader, it takes its share of the short
    // window.
    let f = Fixture::new(1000, vec![costly(0.0), source(100_000.0)]).window(0, 8).demand(0..4);
    let s = starts(&f.plan(now));
    assert!(s.iter().any(|&(src, from, _)| src == 0 && from < 8), "{s:?}");
    // A demanded piece no quick source may be asked for now is never left to no one: a
    // fast mirror without room, one only probed (far slower than the costly source), one
    // that sent that piece wrong.
    let mut f = Fixture::new(1000, vec![costly(0.0), source(50.0 * MB)]).window(0, 8).demand(0..4);
    f.sources[1].room = Some(0);
    let s = starts(&f.plan(now));
    assert!(s.iter().any(|&(src, from, _)| src == 0 && from == 0), "no room: {s:?}");
    let f = Fixture::new(1000, vec![costly(40.0 * MB), source(2.0 * MB)]).window(0, 8).demand(0..4);
    let s = starts(&f.plan(now));
    assert!(s.iter().any(|&(src, from, _)| src == 0 && from == 0), "probed only: {s:?}");
    let mut f = Fixture::new(1000, vec![costly(0.0), source(50.0 * MB)]).window(0, 8).demand(0..1);
    f.refused.insert(PieceIndex(0), vec![SourceId(1)]);
    let s = starts(&f.plan(now));
    assert!(s.contains(&(0, 0, 1)), "refused by the quick one: {s:?}");
}
