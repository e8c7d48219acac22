//! The streams of reads of one key, each with its own readahead window.
//!
//! Several readers may read one key at once: a player streaming a film while it seeks, a
//! sequential copy beside random reads. One shared readahead window would be moved by every
//! read: a random read elsewhere would reset the stream's window, and the stream's next read
//! would then count as a seek and reset it again, so the stream would run without readahead
//! (and, under load, stall behind the random reads). Instead each read joins the stream it
//! continues, or starts a new one:
//!
//! - A read continues a stream when it starts no more than [`SEQUENTIAL_SLACK`] before the
//!   stream's end and no more than [`FORWARD_SLACK`] past it (the kernel sends the reads of
//!   one stream out of order, several at once, within its readahead). Its window then
//!   doubles, up to the maximum, and the stream's end never moves backwards. Not the whole
//!   window past it: a random read tens of megabytes ahead of a stream (inside its window)
//!   would move the stream's end there, and the stream's own next read would then be a seek
//!   that restarts it without readahead.
//! - Otherwise it starts a new stream. A stream is read ahead only once it is **established**:
//!   it has read [`ESTABLISHED_BYTES`] (a seek makes the kernel read a little past it, so a
//!   few reads after a seek are no stream yet). Readahead after a lone seek would take the
//!   bandwidth the next seek's first bytes need, for bytes nobody may read. When a new stream
//!   starts, the streams not established are dropped; at most [`MAX_STREAMS`] are kept
//!   (least recently read dropped first).
//! - Before any read, the head of the key is read ahead (a reader that opens a file usually
//!   reads its head first), but only while no reader waits for anything; a stream that starts
//!   at the head is established at once.
//!
//! Windows are wanted in order, most recently read first. This is pure bookkeeping under the
//! fetch state lock; tests below.

use super::config::SEQUENTIAL_SLACK;
use super::piece::PieceIndex;

/// Streams kept per key.
pub(super) const MAX_STREAMS: usize = 8;
/// A stream is read ahead once it has read this much.
pub(super) const ESTABLISHED_BYTES: u64 = 1 << 20;
/// How far past a stream's end a read may start and still continue it: the kernel's
/// readahead (1 MiB asked, `crate::fuse`) with several reads in flight.
pub(super) const FORWARD_SLACK: u64 = 4 << 20;

/// One stream of reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// One past the furthest byte read.
    end: u64,
    window_pieces: usize,
    /// Reads that continued it (0: a lone seek so far).
    continued: u64,
    /// Bytes its reads covered.
    bytes: u64,
    /// When it was last read (a counter, higher is later).
    used: u64,
}

impl Stream {
    fn established(&self) -> bool {
        self.bytes >= ESTABLISHED_BYTES
    }
}

/// The streams of one key.
#[derive(Debug, Clone)]
pub(super) struct Streams {
    streams: Vec<Stream>,
    clock: u64,
    piece_size: u64,
}

impl Streams {
    /// No stream yet, but a speculative window at the start of the key (a reader that opens
    /// a file usually reads its head first).
    pub fn new(piece_size: u64, initial_pieces: usize) -> Streams {
        let first = Stream { end: 0, window_pieces: initial_pieces, continued: 0, bytes: 0, used: 0 };
        Streams { streams: vec![first], clock: 0, piece_size: piece_size.max(1) }
    }

    /// A read of `offset..end` (`end > offset`): joins or starts a stream and moves its
    /// window. Returns whether it continued a stream (false: a seek).
    pub fn read(&mut self, offset: u64, end: u64, initial_pieces: usize, max_pieces: usize) -> bool {
        self.clock += 1;
        let ps = self.piece_size;
        // Streams share the largest window: readahead stays within its bound however many.
        let share = max_pieces / self.streams.iter().filter(|s| s.established()).count().max(1);
        let found = self
            .streams
            .iter()
            .position(|s| {
                s.used > 0
                    && offset.saturating_add(SEQUENTIAL_SLACK) >= s.end
                    && offset
                        <= s.end.saturating_add(FORWARD_SLACK.min((s.window_pieces as u64 * ps).max(SEQUENTIAL_SLACK)))
            })
            // The initial speculative window counts as a stream at 0 for a read of the head.
            .or_else(|| self.streams.iter().position(|s| s.used == 0 && offset < SEQUENTIAL_SLACK));
        match found {
            Some(k) => {
                let s = &mut self.streams[k];
                if s.used > 0 {
                    if s.established() {
                        s.window_pieces = (s.window_pieces * 2).min(share).max(1);
                    }
                    s.continued += 1;
                    s.end = s.end.max(end);
                } else {
                    // Reading from the head is how sequential readers start (players, copies):
                    // read ahead at once, as the head was before any read.
                    s.window_pieces = initial_pieces.max(1);
                    s.end = end;
                    s.bytes = ESTABLISHED_BYTES;
                }
                s.bytes += end - offset;
                s.used = self.clock;
                s.continued > 0
            }
            None => {
                self.streams.retain(Stream::established);
                if self.streams.len() >= MAX_STREAMS
                    && let Some(k) = self.streams.iter().enumerate().min_by_key(|(_, s)| s.used).map(|(k, _)| k)
                {
                    self.streams.remove(k);
                }
                self.streams.push(Stream {
                    end,
                    window_pieces: initial_pieces.max(1),
                    continued: 0,
                    bytes: end - offset,
                    used: self.clock,
                });
                false
            }
        }
    }

    /// Forgets the speculative window at the head while nothing was read (a fetch that only
    /// keeps pieces in the background reads nothing ahead); a later read of the head starts
    /// a stream as any read does.
    pub fn no_head_window(&mut self) {
        if self.streams.iter().all(|s| s.used == 0) {
            self.streams.clear();
        }
    }

    /// The readahead windows (first piece, length) of the established streams, most recently
    /// read first; each starts at the first piece after its stream's end (the pieces of a read
    /// are demanded, not read ahead). `idle`: no reader waits, and the head is read ahead if
    /// nothing was read yet.
    pub fn windows(&self, idle: bool) -> Vec<(PieceIndex, usize)> {
        let mut v: Vec<&Stream> = self.streams.iter().filter(|s| s.established() || (idle && s.used == 0)).collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.used));
        v.into_iter()
            .map(|s| {
                (PieceIndex(usize::try_from(s.end.div_ceil(self.piece_size)).unwrap_or(usize::MAX)), s.window_pieces)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 256 * 1024;
    const MIB: u64 = 1 << 20;

    #[test]
    fn a_stream_keeps_its_window_through_random_reads() {
        let mut s = Streams::new(PS, 4);
        // A stream from the head: its window grows.
        for k in 0..6 {
            s.read(k * MIB, (k + 1) * MIB, 4, 1024);
        }
        let stream_window = s.windows(true)[0];
        assert_eq!(stream_window.0, PieceIndex(24));
        assert!(stream_window.1 >= 64, "{stream_window:?}");
        // Random reads far ahead: each a seek; the stream's window stays first and the same.
        for k in 0..20 {
            assert!(!s.read(500 * MIB + k * 7 * MIB, 500 * MIB + k * 7 * MIB + 65536, 4, 1024));
            assert_eq!(s.windows(true), vec![stream_window], "a lone seek is not read ahead");
        }
        // The stream goes on, sequential.
        assert!(s.read(6 * MIB, 7 * MIB, 4, 1024));
        assert_eq!(s.windows(true)[0].0, PieceIndex(28));
    }

    #[test]
    fn a_read_inside_a_streams_window_but_far_ahead_is_a_seek() {
        let mut s = Streams::new(PS, 4);
        for k in 0..40 {
            s.read(k * MIB, (k + 1) * MIB, 4, 1024);
        }
        let window = s.windows(true)[0];
        assert_eq!(window, (PieceIndex(160), 1024), "a 256 MiB window");
        // 32 MiB ahead, inside the window: a seek, and the stream keeps its end and window.
        assert!(!s.read(72 * MIB, 72 * MIB + 65536, 4, 1024));
        assert_eq!(s.windows(true)[0], window);
        // The stream's own next read continues it.
        assert!(s.read(40 * MIB, 41 * MIB, 4, 1024));
        assert_eq!(s.windows(true)[0], (PieceIndex(164), 1024));
        // Out of order within the kernel's readahead: still the stream.
        assert!(s.read(43 * MIB, 44 * MIB, 4, 1024));
        assert_eq!(s.windows(true)[0].0, PieceIndex(176));
    }

    #[test]
    fn out_of_order_reads_of_one_stream_are_one_stream() {
        let mut s = Streams::new(PS, 4);
        let b = 10 * MIB;
        assert!(!s.read(b, b + 128 * 1024, 4, 1024));
        assert!(s.read(b + 256 * 1024, b + 384 * 1024, 4, 1024));
        assert!(s.read(b + 128 * 1024, b + 256 * 1024, 4, 1024), "a read just behind the end still continues");
        assert!(s.windows(true).is_empty(), "not read ahead before it read {ESTABLISHED_BYTES} bytes");
        assert!(s.read(b + 384 * 1024, b + MIB, 4, 1024));
        assert_eq!(s.windows(true), vec![(PieceIndex(44), 4)]);
        assert_eq!(s.windows(false), vec![(PieceIndex(44), 4)], "an established stream reads ahead always");
        // A stream from the head is read ahead from its first read.
        let mut h = Streams::new(PS, 4);
        h.read(0, 128 * 1024, 4, 1024);
        assert_eq!(h.windows(false), vec![(PieceIndex(1), 4)]);
    }

    #[test]
    fn the_head_is_read_ahead_before_any_read_and_streams_are_bounded() {
        let mut s = Streams::new(PS, 4);
        assert_eq!(s.windows(true), vec![(PieceIndex(0), 4)]);
        assert!(s.windows(false).is_empty(), "a guess waits while a reader is blocked");
        // A seek elsewhere first: the speculative head window goes.
        assert!(!s.read(100 * MIB, 100 * MIB + 4096, 4, 1024));
        // What the kernel reads after a seek is no stream yet.
        assert!(s.read(100 * MIB + 4096, 100 * MIB + 256 * 1024, 4, 1024));
        assert!(s.windows(true).is_empty());
        // Many continued streams: at most MAX_STREAMS kept.
        for k in 0..(MAX_STREAMS as u64 + 3) {
            let at = 1000 * MIB * (k + 1);
            s.read(at, at + MIB, 4, 1024);
            s.read(at + MIB, at + 2 * MIB, 4, 1024);
        }
        assert_eq!(s.windows(true).len(), MAX_STREAMS);
        assert!(!s.windows(true).iter().any(|&(from, _)| from == PieceIndex(0)));
    }
}
