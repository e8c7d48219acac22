//! Reading a spread key: stripes from their pieces, checked against the manifest, decoded
//! when pieces are lost.
//!
//! For each stripe the reader wants some data pieces (those a range touches). It reads them
//! in place when their stores are alive and not busier than the others; otherwise, or when a
//! read fails or a piece fails its hash, it reads the least busy other shards until it holds
//! any `k` checked pieces and decodes. "Busy" is the number of piece reads in flight on the
//! store, shared by every key of the remote: under concurrent reads (the mount's fetcher asks
//! for many ranges at once) parity stores take work off loaded data stores, so every store's
//! bandwidth is used.
//!
//! A shard whose store is unreachable or which is missing or short is marked dead for the rest
//! of this key (not asked again); a piece failing its hash is dropped for that stripe only.
//!
//! **Whole stripes, read ahead.** A sequential reader (the mount's fetcher asks for runs of
//! 256 KiB pieces, two requests at a time, far less than one stripe over `k + m` stores) is
//! served from whole stripes: each is read once, shared by every request that needs it
//! ([`Slot`]: a cell awaited by all), and the [`READ_AHEAD`] stripes after the one asked for are
//! started at once, so that every store has pieces in flight while the fetcher consumes the
//! first. Started together, later stripes find the data stores busier than the parity ones and
//! take parity pieces instead: the reader uses all `k + m` stores. A request that does not
//! follow the previous ones reads only the data pieces it touches. Hashing and decoding run
//! on blocking threads, never on the async ones that drive the stores' requests.

use super::SpreadError;
use super::code;
use super::layout::{Manifest, piece_hash, to_usize};
use super::remote::Spread;
use super::store::StoreError;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

/// What happened to one shard while reading a key.
#[derive(Debug, Default, Clone)]
struct ShardNote {
    dead: Option<String>,
    bad_pieces: u64,
    rebuilt: u64,
}

/// One key being read.
pub struct KeyReader {
    spread: Arc<Spread>,
    pub manifest: Manifest,
    dir: String,
    /// The store index of each shard (`None`: its store is no longer configured).
    store_of: Vec<Option<usize>>,
    /// Leaf lock: never held across an await.
    notes: Mutex<Vec<ShardNote>>,
    /// Data pieces read lately, checked or rebuilt: the fetcher's requests are smaller than a
    /// piece at first and do not start on piece boundaries, so neighbours share pieces. Leaf
    /// lock, never held across an await.
    cache: Mutex<PieceCache>,
    /// Whole stripes, by stripe. Leaf lock, never held across an await.
    slots: Mutex<lru::LruCache<u64, Arc<Slot>>>,
    /// One past the furthest stripe a request asked for (0: none yet).
    next_stripe: std::sync::atomic::AtomicU64,
}

/// Checked data pieces by (stripe, shard).
type PieceCache = lru::LruCache<(u64, usize), Arc<Vec<u8>>>;

/// Pieces a [`KeyReader`] keeps for non-sequential reads (16 MiB of 1 MiB pieces).
const CACHED_PIECES: usize = 16;

/// Stripes read ahead of a sequential reader: with `k + m` stores, `2 (k + m) / k` stripes give
/// every store two pieces in flight; six cover codes up to 4 + 8, and keep a store busy
/// while another is slow with a piece.
pub const READ_AHEAD: u64 = 6;

/// Whole stripes kept (read or being read): the ones read ahead, the ones being handed over,
/// and room for the fetcher's requests to arrive out of order: at least this many, or
/// [`KEPT_BYTES`] of them (three times [`READ_AHEAD`]).
const KEPT_STRIPES: usize = 18;
const KEPT_BYTES: u64 = 64 << 20;
/// Slots the read ahead leaves to the stripes requests ask for.
const ROOM: usize = 4;

/// A request starting at most this far past the furthest byte asked for so far continues a
/// sequential read: the fetcher splits its runs (up to 32 MiB) between requests, and a
/// request may take the back half of another's before the front is asked for.
const SEQUENTIAL_GAP: u64 = 32 << 20;

/// One whole stripe's data pieces, read once for every request that needs them.
#[derive(Default)]
struct Slot {
    /// Set once its read started (by a reader or ahead).
    started: std::sync::atomic::AtomicBool,
    /// Bytes of it handed over so far: once all were, it is the first to go when room is
    /// needed, so that stripes read ahead are not pushed out by ones already used.
    served: AtomicU64,
    data: tokio::sync::OnceCell<Arc<Vec<Vec<u8>>>>,
}

impl KeyReader {
    pub fn new(spread: &Arc<Spread>, manifest: Manifest) -> KeyReader {
        let store_of: Vec<Option<usize>> = manifest.stores.iter().map(|s| spread.store_index(s)).collect();
        let mut notes = vec![ShardNote::default(); store_of.len()];
        for (n, s) in notes.iter_mut().zip(&store_of) {
            if s.is_none() {
                n.dead = Some("its store is not in stores= any more".into());
            }
        }
        let dir = Spread::key_dir(&manifest.key).unwrap_or_default();
        let cache = Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(CACHED_PIECES).unwrap_or(std::num::NonZeroUsize::MIN),
        ));
        let kept = KEPT_STRIPES.max(to_usize(KEPT_BYTES / manifest.layout.stripe_bytes().max(1)));
        let slots =
            Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(kept).unwrap_or(std::num::NonZeroUsize::MIN)));
        KeyReader {
            spread: spread.clone(),
            manifest,
            dir,
            store_of,
            notes: Mutex::new(notes),
            cache,
            slots,
            next_stripe: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, Vec<ShardNote>> {
        self.notes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alive(&self, s: usize) -> bool {
        self.notes()[s].dead.is_none()
    }

    fn load(&self, s: usize) -> u64 {
        self.store_of[s].map_or(u64::MAX, |i| self.spread.stores[i].stats.inflight.load(Relaxed))
    }

    /// Piece `s` of `stripe`, read and checked.
    async fn piece(&self, stripe: u64, s: usize) -> Result<Vec<u8>, ()> {
        let Some(i) = self.store_of[s] else { return Err(()) };
        let e = &self.spread.stores[i];
        let piece = self.manifest.layout.piece;
        // Counted busy while it waits for its store's limits too: a limited store hands
        // stripes to the others.
        e.stats.inflight.fetch_add(1, Relaxed);
        let permit = e.limiter.admit(piece).await;
        let r = e.store.read(&Spread::shard_name(&self.dir, s), stripe * piece, piece).await;
        drop(permit);
        e.stats.inflight.fetch_sub(1, Relaxed);
        e.stats.reads.fetch_add(1, Relaxed);
        // Hashed on a blocking thread: a piece is up to 1 MiB, and the async threads drive
        // every store's requests.
        let want = self.manifest.hashes[s][to_usize(stripe)];
        let r = match r {
            Ok(b) => tokio::task::spawn_blocking(move || (piece_hash(&b) == want, b))
                .await
                .map_err(|x| StoreError::Io(x.to_string())),
            Err(x) => Err(x),
        };
        match r {
            Ok((true, b)) => {
                e.stats.bytes.fetch_add(b.len() as u64, Relaxed);
                Ok(b)
            }
            Ok(_) => {
                e.stats.failures.fetch_add(1, Relaxed);
                self.notes()[s].bad_pieces += 1;
                tracing::warn!(key = %self.manifest.key, store = %e.spec, shard = s, stripe, "spread piece fails its hash");
                Err(())
            }
            Err(err) => {
                e.stats.failures.fetch_add(1, Relaxed);
                let mut n = self.notes();
                match err {
                    StoreError::Io(_) => n[s].bad_pieces += 1,
                    _ => {
                        if n[s].dead.is_none() {
                            tracing::info!(key = %self.manifest.key, store = %e.spec, shard = s, "spread shard unavailable: {err}");
                        }
                        n[s].dead.get_or_insert(err.to_string());
                    }
                }
                Err(())
            }
        }
    }

    /// The pieces of `stripe`: on success every shard in `want` (data shards) is `Some`, and
    /// at least `min` pieces are. `skip` are shards not to read (being rewritten by a repair).
    pub async fn stripe(
        &self,
        stripe: u64,
        want: &[usize],
        skip: &[usize],
        min: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, SpreadError> {
        self.stripe_with(stripe, want, skip, min, true).await
    }

    /// [`KeyReader::stripe`]; `keep`: the data pieces go to the piece cache (not when the
    /// caller keeps the whole stripe itself).
    async fn stripe_with(
        &self,
        stripe: u64,
        want: &[usize],
        skip: &[usize],
        min: usize,
        keep: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, SpreadError> {
        let code = self.manifest.layout.code;
        let n = code.shards();
        let mut pieces: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut tried = vec![false; n];
        for &s in skip {
            tried[s] = true;
        }
        if skip.is_empty() {
            let mut cache = self.cache();
            for &s in want {
                if let Some(p) = cache.get(&(stripe, s)) {
                    pieces[s] = Some(p.as_ref().clone());
                    tried[s] = true;
                }
            }
        }
        let complete = |pieces: &[Option<Vec<u8>>]| {
            want.iter().all(|&s| pieces[s].is_some()) && pieces.iter().filter(|p| p.is_some()).count() >= min
        };
        if complete(&pieces) {
            return Ok(pieces);
        }
        // In place when every wanted store is alive and not busier than the idlest other.
        let todo: Vec<usize> = want.iter().copied().filter(|&s| pieces[s].is_none()).collect();
        let others_min =
            (0..n).filter(|s| !want.contains(s) && !tried[*s] && self.alive(*s)).map(|s| self.load(s)).min();
        let in_place = todo.iter().all(|&s| !tried[s] && self.alive(s))
            && todo.iter().all(|&s| others_min.is_none_or(|m| self.load(s) <= m + 1));
        if in_place {
            let reads = todo.iter().map(|&s| self.piece(stripe, s));
            for (&s, r) in todo.iter().zip(futures_util::future::join_all(reads).await) {
                tried[s] = true;
                pieces[s] = r.ok();
            }
            if complete(&pieces) {
                if keep {
                    self.keep(stripe, &pieces);
                }
                return Ok(pieces);
            }
        }
        loop {
            let have = pieces.iter().filter(|p| p.is_some()).count();
            if have >= code.k {
                break;
            }
            let mut cands: Vec<usize> = (0..n).filter(|&s| !tried[s] && self.alive(s)).collect();
            if cands.is_empty() {
                return Err(SpreadError::TooFew { have, need: code.k });
            }
            cands.sort_by_key(|&s| (self.load(s), s >= code.k, s));
            cands.truncate(code.k - have);
            let reads = cands.iter().map(|&s| self.piece(stripe, s));
            for (&s, r) in cands.iter().zip(futures_util::future::join_all(reads).await) {
                tried[s] = true;
                pieces[s] = r.ok();
            }
        }
        let missing: Vec<usize> = (0..code.k).filter(|&s| pieces[s].is_none()).collect();
        let (rebuilt, pieces) = if missing.is_empty() {
            (0, pieces)
        } else {
            // Decoded on a blocking thread (a stripe is up to k MiB).
            let r = tokio::task::spawn_blocking(move || (code::decode(code, &mut pieces), pieces)).await;
            let (r, pieces) = r.map_err(|e| SpreadError::Code(e.to_string()))?;
            (r?, pieces)
        };
        if rebuilt > 0 {
            self.spread.decoded.fetch_add(rebuilt as u64, Relaxed);
            let mut notes = self.notes();
            for s in missing {
                notes[s].rebuilt += 1;
            }
        }
        if keep {
            self.keep(stripe, &pieces);
        }
        Ok(pieces)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PieceCache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the checked (or rebuilt) data pieces of `stripe` for the next ranges in them.
    fn keep(&self, stripe: u64, pieces: &[Option<Vec<u8>>]) {
        let mut cache = self.cache();
        for (s, p) in pieces.iter().enumerate().take(self.manifest.layout.code.k) {
            if let Some(p) = p {
                cache.put((stripe, s), Arc::new(p.clone()));
            }
        }
    }

    /// Every piece of `stripe`, parity included (re-encoded), for rewriting the shards `lost`.
    pub async fn whole_stripe(&self, stripe: u64, lost: &[usize]) -> Result<Vec<Vec<u8>>, SpreadError> {
        let code = self.manifest.layout.code;
        let want: Vec<usize> = (0..code.k).filter(|s| !lost.contains(s)).collect();
        let pieces = self.stripe(stripe, &want, lost, code.k).await?;
        let mut pieces = pieces;
        code::decode(code, &mut pieces)?;
        let data: Vec<Vec<u8>> = pieces.into_iter().take(code.k).map(Option::unwrap_or_default).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let parity = code::encode(code, &refs)?;
        let all: Vec<Vec<u8>> = data.into_iter().chain(parity).collect();
        for &s in lost {
            if piece_hash(&all[s]) != self.manifest.hashes[s][to_usize(stripe)] {
                return Err(SpreadError::Code(format!("rebuilt piece {s} of stripe {stripe} fails its hash")));
            }
        }
        Ok(all)
    }

    fn slot(&self, stripe: u64) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.get_or_insert(stripe, || Arc::new(Slot::default())).clone()
    }

    /// Counts `n` bytes of `stripe` handed over; drops the stripe once all were.
    fn served(&self, stripe: u64, n: u64) {
        let l = &self.manifest.layout;
        let len = l.size.saturating_sub(stripe * l.stripe_bytes()).min(l.stripe_bytes());
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.peek(&stripe)
            && slot.served.fetch_add(n, Relaxed) + n >= len
        {
            // First to go when room is needed, but kept meanwhile: a request the fetcher
            // cut short asks for its rest again.
            slots.demote(&stripe);
        }
    }

    /// Whether stripe `stripe` is being read whole or was lately.
    fn has_slot(&self, stripe: u64) -> bool {
        let slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.peek(&stripe).is_some_and(|s| s.started.load(Relaxed))
    }

    /// The data pieces of `stripe` (the last one's padding included), read once for every
    /// request that needs them.
    async fn whole(&self, stripe: u64) -> Result<Arc<Vec<Vec<u8>>>, SpreadError> {
        let slot = self.slot(stripe);
        slot.started.store(true, Relaxed);
        slot.data.get_or_try_init(|| self.read_whole(stripe)).await.cloned()
    }

    async fn read_whole(&self, stripe: u64) -> Result<Arc<Vec<Vec<u8>>>, SpreadError> {
        tracing::debug!(key = %self.manifest.key, stripe, "spread stripe read whole");
        let k = self.manifest.layout.code.k;
        let want: Vec<usize> = (0..k).collect();
        let pieces = self.stripe_with(stripe, &want, &[], 0, false).await?;
        Ok(Arc::new(pieces.into_iter().take(k).map(Option::unwrap_or_default).collect()))
    }

    /// Starts reading whole the stripes `from..to` (within the key) not started yet. A read
    /// ahead that fails is left to the request that needs the stripe (it tries again and
    /// reports).
    fn read_ahead(self: &Arc<Self>, from: u64, to: u64) {
        for stripe in from..to.min(self.manifest.layout.stripes) {
            let slot = {
                let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match slots.peek(&stripe) {
                    Some(s) => s.clone(),
                    // No room unless the oldest was used: a new slot would push out one read
                    // ahead before it is used, and the stripes requests ask for need room too.
                    None => {
                        if slots.len() + ROOM >= slots.cap().get() {
                            let l = &self.manifest.layout;
                            let used = |(k, s): (&u64, &Arc<Slot>)| {
                                s.served.load(Relaxed)
                                    >= l.size.saturating_sub(k * l.stripe_bytes()).min(l.stripe_bytes())
                            };
                            if !slots.peek_lru().is_some_and(used) {
                                return;
                            }
                            slots.pop_lru();
                        }
                        slots.get_or_insert(stripe, || Arc::new(Slot::default())).clone()
                    }
                }
            };
            if slot.started.swap(true, Relaxed) {
                continue;
            }
            let r = self.clone();
            tokio::spawn(async move {
                let _ = slot.data.get_or_try_init(|| r.read_whole(stripe)).await;
            });
        }
    }

    /// The key's bytes `[offset, offset + len)` (within the key). A request that continues
    /// the previous ones is served from whole stripes and reads [`READ_AHEAD`] stripes
    /// ahead; another reads only the data pieces it touches.
    pub async fn read(self: &Arc<Self>, offset: u64, len: u64) -> Result<Vec<u8>, SpreadError> {
        let l = &self.manifest.layout;
        let end = (offset + len).min(l.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let (first, last) = (offset / l.stripe_bytes(), (end - 1) / l.stripe_bytes());
        let next = self.next_stripe.fetch_max(last + 1, Relaxed);
        let kept = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).cap().get() as u64;
        let gap = SEQUENTIAL_GAP.div_ceil(l.stripe_bytes().max(1)).min(kept / 2);
        let sequential = first <= next + gap && first + kept >= next;
        tracing::debug!(key = %self.manifest.key, offset, len, first, last, next, sequential, "spread read");
        if sequential {
            // From the furthest stripe asked for before: the ones behind it were asked for
            // already (and may be used and gone).
            self.read_ahead(first.max(next), last + 1 + READ_AHEAD);
        }
        let mut out = Vec::with_capacity(to_usize(end - offset));
        let mut pos = offset;
        while pos < end {
            let (stripe, first, _) = l.locate(pos);
            let stripe_end = ((stripe + 1) * l.stripe_bytes()).min(end);
            let (_, last, _) = l.locate(stripe_end - 1);
            let want: Vec<usize> = (first..=last).collect();
            if sequential || self.has_slot(stripe) {
                let whole = self.whole(stripe).await?;
                copy_out(l, stripe, &want, pos, stripe_end, |s| whole.get(s).map(Vec::as_slice), &mut out)?;
                self.served(stripe, stripe_end - pos);
            } else {
                let pieces = self.stripe(stripe, &want, &[], 0).await?;
                copy_out(l, stripe, &want, pos, stripe_end, |s| pieces.get(s).and_then(Option::as_deref), &mut out)?;
            }
            pos = stripe_end;
        }
        Ok(out)
    }

    /// Writes the whole key to `out`; `progress` gets the bytes written so far. Stripes are
    /// read whole, [`READ_AHEAD`] ahead of the one written.
    pub async fn retrieve(
        self: &Arc<Self>,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), SpreadError> {
        let l = self.manifest.layout.clone();
        let mut done = 0;
        for stripe in 0..l.stripes {
            self.read_ahead(stripe, stripe + 1 + READ_AHEAD);
            let pieces = self.whole(stripe).await?;
            for (s, p) in pieces.iter().enumerate() {
                let (_, n) = l.data_span(stripe, s);
                let p = p.get(..to_usize(n)).ok_or_else(|| SpreadError::Code("a data piece is short".into()))?;
                out.write_all(p).map_err(|e| SpreadError::Io(e.to_string()))?;
                done += n;
            }
            progress(done);
        }
        Ok(())
    }

    /// What was lost and rebuilt, for a log line: empty when no shard was gone or damaged.
    pub fn report(&self) -> String {
        let notes = self.notes();
        let mut parts = Vec::new();
        for (s, n) in notes.iter().enumerate() {
            let spec = &self.manifest.stores[s];
            // Pieces decoded because their store was busier than the parity ones are not
            // news: only a shard gone or damaged is reported.
            if n.bad_pieces == 0 && n.dead.is_none() {
                continue;
            }
            let mut p = format!("shard {s} on {spec}:");
            if let Some(d) = &n.dead {
                p.push_str(&format!(" {d};"));
            }
            if n.bad_pieces > 0 {
                p.push_str(&format!(" {} pieces failed their hash;", n.bad_pieces));
            }
            if n.rebuilt > 0 {
                p.push_str(&format!(" {} pieces rebuilt from parity", n.rebuilt));
            }
            parts.push(p.trim_end_matches(';').to_string());
        }
        parts.join("; ")
    }
}

/// Appends the key bytes `[pos, stripe_end)` of `stripe` held by the data pieces `want`
/// (`piece(s)`: data piece `s`, checked) to `out`.
fn copy_out<'a>(
    l: &super::Layout,
    stripe: u64,
    want: &[usize],
    mut pos: u64,
    stripe_end: u64,
    piece: impl Fn(usize) -> Option<&'a [u8]>,
    out: &mut Vec<u8>,
) -> Result<(), SpreadError> {
    for &s in want {
        let (start, n) = l.data_span(stripe, s);
        let from = pos.max(start);
        let to = stripe_end.min(start + n);
        if from < to {
            let bytes = piece(s)
                .and_then(|p| p.get(to_usize(from - start)..to_usize(to - start)))
                .ok_or_else(|| SpreadError::Code(format!("data piece {s} of stripe {stripe} is short")))?;
            out.extend_from_slice(bytes);
        }
        pos = pos.max(to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251).to_le_bytes()[0]).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_data_stores_hand_work_to_parity_and_bytes_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let specs: Vec<String> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("s{i}"));
                std::fs::create_dir(&p).unwrap();
                p.display().to_string()
            })
            .collect();
        let spread = Arc::new(Spread::from_config(&specs.join(","), Some("2"), Some("1")).unwrap());
        let data = content(3_000_001);
        let file = dir.path().join("f");
        std::fs::write(&file, &data).unwrap();
        let key = "SHA256E-s3000001--00.bin";
        spread.store_key(key, &file, &mut |_| {}).await.unwrap();
        let m = spread.manifest(key).await.map_err(|e| e.0).unwrap();
        let store_of = |shard: usize| spread.store_index(&m.stores[shard]).unwrap();
        let reads = |shard: usize| spread.stores[store_of(shard)].stats.reads.load(Relaxed);

        // Idle stores: data in place, nothing decoded, parity untouched.
        let r = Arc::new(KeyReader::new(&spread, m.clone()));
        assert!(r.read(0, data.len() as u64).await.unwrap() == data);
        assert_eq!(spread.decoded.load(Relaxed), 0);
        assert_eq!(reads(2), 0);

        // Data shard 0's store is busy: its stripes come from shard 1 and parity, decoded.
        spread.stores[store_of(0)].stats.inflight.store(5, Relaxed);
        let r = Arc::new(KeyReader::new(&spread, m.clone()));
        let (a, b) = (1_000_000u64, 1_500_000u64);
        assert!(r.read(a, b).await.unwrap() == data[to_usize(a)..to_usize(a + b)]);
        assert!(reads(2) > 0, "parity was not read");
        assert!(spread.decoded.load(Relaxed) > 0);
        spread.stores[store_of(0)].stats.inflight.store(0, Relaxed);

        // A piece flipped on disk: an erasure, rebuilt, reported.
        let shard1 = dir.path().join(format!("s{}", store_of(1))).join(Spread::key_dir(key).unwrap()).join("shard-1");
        let mut bytes = std::fs::read(&shard1).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&shard1, bytes).unwrap();
        let r = Arc::new(KeyReader::new(&spread, m));
        assert!(r.read(0, data.len() as u64).await.unwrap() == data);
        assert!(r.report().contains("1 pieces failed their hash"), "{}", r.report());
    }
}
