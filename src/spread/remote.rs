//! A configured spread remote ([`Spread`]: its stores and code) and the whole-key operations
//! of the special remote: store, check, remove, where, repair. Retrieval is in
//! [`super::reader`].
//!
//! Names in a store: `<hashdirlower><keyfile>/shard-<i>` and `…/manifest`. A key counts as
//! stored on a store only once its manifest is there, and the manifests are written only
//! after every shard of every store is in place: a STORE that fails part-way leaves no
//! manifest, and removes the shards it wrote.

use super::layout::{self, Code, Layout, MAX_MANIFEST, Manifest};
use super::store::{Store, StoreError, parse_spec};
use super::{SpreadError, code};
use crate::annex::Key;
use crate::annex::settings::Limits;
use std::io::Read;
use std::sync::atomic::AtomicU64;

/// Figures of one store, shared by every key read through it.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Piece reads in flight now.
    pub inflight: AtomicU64,
    pub reads: AtomicU64,
    pub bytes: AtomicU64,
    pub failures: AtomicU64,
}

/// One store of the remote.
pub struct StoreEntry {
    pub spec: String,
    pub store: Store,
    pub stats: StoreStats,
    /// Limits of the reader's requests to this store.
    pub limiter: super::pace::StoreLimiter,
}

/// A spread remote: its stores, in the order of `stores=`, and its code.
pub struct Spread {
    pub stores: Vec<StoreEntry>,
    pub code: Code,
    /// Pieces rebuilt from parity so far (any key).
    pub decoded: AtomicU64,
}

/// The state of one shard of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    Intact,
    Missing,
    /// This many pieces fail their hash or could not be read.
    Damaged(u64),
    Unreachable(String),
}

/// Whether a key is on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
    /// Too many stores could not be asked to tell.
    Unknown(String),
}

impl Spread {
    /// A remote from its configuration: `stores=` (comma-separated specs), `data=`,
    /// `parity=` (defaults: [`Code::default_parity`] parity pieces, the rest data).
    pub fn from_config(stores: &str, data: Option<&str>, parity: Option<&str>) -> Result<Spread, SpreadError> {
        let specs: Vec<String> =
            stores.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if specs.is_empty() {
            return Err(SpreadError::Config("stores= lists no store".into()));
        }
        let n = specs.len();
        let num = |v: &str, name: &str| {
            v.trim().parse::<usize>().map_err(|_| SpreadError::Config(format!("{name}={v} is not a number")))
        };
        let (k, m) = match (data, parity) {
            (Some(d), Some(p)) => (num(d, "data")?, num(p, "parity")?),
            (Some(d), None) => {
                let k = num(d, "data")?;
                (k, n.saturating_sub(k))
            }
            (None, Some(p)) => {
                let m = num(p, "parity")?;
                (n.saturating_sub(m), m)
            }
            (None, None) => (n.saturating_sub(Code::default_parity(n)), Code::default_parity(n)),
        };
        let code = Code::new(k, m, n)?;
        let mut entries = Vec::new();
        for spec in specs {
            if entries.iter().any(|e: &StoreEntry| e.spec == spec) {
                return Err(SpreadError::Config(format!("store {spec} is listed twice")));
            }
            let store = parse_spec(&spec).map_err(SpreadError::Config)?;
            let limiter = super::pace::StoreLimiter::new(Limits::default());
            entries.push(StoreEntry { spec, store, stats: StoreStats::default(), limiter });
        }
        Ok(Spread { stores: entries, code, decoded: AtomicU64::new(0) })
    }

    /// Every store limited to `limits` (each on its own, not together).
    pub fn with_store_limits(mut self, limits: Limits) -> Spread {
        for e in &mut self.stores {
            e.limiter = super::pace::StoreLimiter::new(limits);
        }
        self
    }

    /// The directory of `key`'s objects in every store.
    pub fn key_dir(key: &str) -> Result<String, SpreadError> {
        let k = Key::parse_str(key).map_err(|e| SpreadError::Config(format!("key {key}: {e}")))?;
        let file = String::from_utf8(k.key_file()).map_err(|_| SpreadError::Config(format!("key {key}: not UTF-8")))?;
        Ok(format!("{}{file}/", k.hashdir_lower(false)))
    }

    pub fn shard_name(dir: &str, shard: usize) -> String {
        format!("{dir}shard-{shard}")
    }

    pub fn manifest_name(dir: &str) -> String {
        format!("{dir}manifest")
    }

    /// The index in `stores` of the store with `spec`.
    pub fn store_index(&self, spec: &str) -> Option<usize> {
        self.stores.iter().position(|e| e.spec == spec)
    }

    /// The key's manifest, from the first store that has a valid one; else why none, and how
    /// many stores could not be asked.
    pub async fn manifest(&self, key: &str) -> Result<Manifest, (SpreadError, usize, usize)> {
        let dir = Self::key_dir(key).map_err(|e| (e, 0, 0))?;
        let name = Self::manifest_name(&dir);
        let mut whys = Vec::new();
        let (mut unreachable, mut without) = (0, 0);
        for e in &self.stores {
            match e.store.get_all(&name, MAX_MANIFEST).await {
                Ok(b) => match Manifest::parse(&b, key) {
                    Ok(m) => return Ok(m),
                    Err(err) => {
                        without += 1;
                        whys.push(format!("{}: {err}", e.spec));
                    }
                },
                Err(StoreError::NotFound) => without += 1,
                Err(err @ StoreError::Unreachable(_)) => {
                    unreachable += 1;
                    whys.push(format!("{}: {err}", e.spec));
                }
                Err(err) => {
                    unreachable += 1;
                    whys.push(format!("{}: {err}", e.spec));
                }
            }
        }
        let why = if whys.is_empty() { "not stored".to_string() } else { whys.join("; ") };
        Err((SpreadError::NoManifest(why), unreachable, without))
    }

    /// Encodes the file at `path` (the content of `key`) onto every store. `progress` gets the
    /// bytes read so far. Nothing is claimed unless every shard and every manifest landed.
    pub async fn store_key(
        &self,
        key: &str,
        path: &std::path::Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), SpreadError> {
        let dir = Self::key_dir(key)?;
        let r = self.store_inner(key, &dir, path, progress).await;
        if r.is_err() {
            // Take back whatever landed: no manifest, no shard of a failed STORE stays.
            for e in &self.stores {
                let _ = e.store.delete(&Self::manifest_name(&dir)).await;
                for s in 0..self.code.shards() {
                    let _ = e.store.delete(&Self::shard_name(&dir, s)).await;
                }
            }
        }
        r
    }

    async fn store_inner(
        &self,
        key: &str,
        dir: &str,
        path: &std::path::Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), SpreadError> {
        let io = |e: std::io::Error| SpreadError::Io(format!("{}: {e}", path.display()));
        let st = |spec: &str, e: StoreError| SpreadError::Store(format!("store {spec}: {e}"));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let layout = Layout::for_size(size, self.code);
        let n = self.stores.len();
        let rot = layout::rotation(key, n);
        let order: Vec<usize> = (0..n).map(|i| (i + rot) % n).collect();
        let mut writers = Vec::new();
        for (s, &o) in order.iter().enumerate() {
            let e = &self.stores[o];
            writers.push(e.store.writer(&Self::shard_name(dir, s)).map_err(|x| st(&e.spec, x))?);
        }
        let piece = layout::to_usize(layout.piece);
        let k = self.code.k;
        // One thread per shard hashes and writes its pieces while this one reads and encodes
        // the next stripes: the hashing (every piece, parity included) and the writing of
        // `k + m` shards are most of a STORE's work, and they overlap this way.
        type Piece = (std::sync::Arc<Vec<u8>>, std::ops::Range<usize>);
        let (writers, hashes) = std::thread::scope(|scope| -> Result<_, SpreadError> {
            let mut txs = Vec::new();
            let mut handles = Vec::new();
            for mut w in writers {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(2);
                txs.push(tx);
                handles.push(scope.spawn(move || {
                    let mut hs = Vec::new();
                    for (buf, r) in rx {
                        let p = buf.get(r).unwrap_or_default();
                        hs.push(layout::piece_hash(p));
                        w.write(p)?;
                    }
                    Ok::<_, StoreError>((w, hs))
                }));
            }
            let mut done = 0u64;
            let mut fed = Ok(());
            'feed: for _ in 0..layout.stripes {
                let want = layout::to_usize(layout.stripe_bytes().min(size - done));
                let mut stripe = vec![0u8; piece * k];
                file.read_exact(&mut stripe[..want]).map_err(io)?;
                done += want as u64;
                let data: Vec<&[u8]> = stripe.chunks(piece).collect();
                let parity = code::encode(self.code, &data)?;
                let stripe = std::sync::Arc::new(stripe);
                let all = (0..k)
                    .map(|s| (stripe.clone(), s * piece..(s + 1) * piece))
                    .chain(parity.into_iter().map(|p| (0..p.len(), std::sync::Arc::new(p))).map(|(r, p)| (p, r)));
                for (tx, p) in txs.iter().zip(all) {
                    if tx.send(p).is_err() {
                        // That shard's writer stopped: its error is reported below.
                        fed = Err(());
                        break 'feed;
                    }
                }
                progress(done);
            }
            drop(txs);
            let mut writers = Vec::new();
            let mut hashes = Vec::new();
            for (s, h) in handles.into_iter().enumerate() {
                let spec = &self.stores[order[s]].spec;
                let (w, hs) = h
                    .join()
                    .map_err(|_| SpreadError::Io(format!("the writer of shard {s} panicked")))?
                    .map_err(|x| st(spec, x))?;
                writers.push(w);
                hashes.push(hs);
            }
            fed.map_err(|()| SpreadError::Io("a shard writer stopped".into()))?;
            Ok((writers, hashes))
        })?;
        let commits = writers.into_iter().enumerate().map(|(s, w)| {
            let e = &self.stores[order[s]];
            async move { e.store.commit(w).await.map_err(|x| st(&e.spec, x)) }
        });
        for r in futures_util::future::join_all(commits).await {
            r?;
        }
        let manifest = Manifest {
            key: key.to_string(),
            layout,
            stores: order.iter().map(|&o| self.stores[o].spec.clone()).collect(),
            hashes,
        };
        let text = manifest.to_text().into_bytes();
        let puts = self.stores.iter().map(|e| {
            let text = text.clone();
            async move { e.store.put(&Self::manifest_name(dir), text).await.map_err(|x| st(&e.spec, x)) }
        });
        for r in futures_util::future::join_all(puts).await {
            r?;
        }
        Ok(())
    }

    /// Every shard's state, each piece read and checked against the manifest.
    pub async fn shard_states(&self, m: &Manifest) -> Vec<ShardState> {
        let dir = match Self::key_dir(&m.key) {
            Ok(d) => d,
            Err(e) => return vec![ShardState::Unreachable(e.to_string()); m.stores.len()],
        };
        let checks = m.stores.iter().enumerate().map(|(s, spec)| {
            let dir = dir.clone();
            async move { self.shard_state(m, &dir, s, spec).await }
        });
        futures_util::future::join_all(checks).await
    }

    async fn shard_state(&self, m: &Manifest, dir: &str, s: usize, spec: &str) -> ShardState {
        let Some(idx) = self.store_index(spec) else {
            return ShardState::Unreachable(format!("store {spec} is not in stores= any more"));
        };
        let store = &self.stores[idx].store;
        let name = Self::shard_name(dir, s);
        match store.size(&name).await {
            Ok(sz) if sz == m.layout.shard_bytes() => {}
            Ok(_) => return ShardState::Damaged(m.layout.stripes),
            Err(StoreError::NotFound) => return ShardState::Missing,
            Err(e) => return ShardState::Unreachable(e.to_string()),
        }
        let mut bad = 0;
        for stripe in 0..m.layout.stripes {
            let ok = match store.read(&name, stripe * m.layout.piece, m.layout.piece).await {
                Ok(b) => layout::piece_hash(&b) == m.hashes[s][layout::to_usize(stripe)],
                Err(_) => false,
            };
            if !ok {
                bad += 1;
            }
        }
        if bad == 0 { ShardState::Intact } else { ShardState::Damaged(bad) }
    }

    /// CHECKPRESENT: present only when at least `k` shards are there and intact.
    pub async fn check(&self, key: &str) -> Presence {
        let m = match self.manifest(key).await {
            Ok(m) => m,
            Err((e, unreachable, without)) => {
                // Every store gets the manifest: more than m stores without one leave fewer
                // than k that could hold the key.
                return if without > self.code.m || unreachable == 0 {
                    Presence::Absent
                } else {
                    Presence::Unknown(e.to_string())
                };
            }
        };
        let states = self.shard_states(&m).await;
        let intact = states.iter().filter(|s| **s == ShardState::Intact).count();
        let unknown = states.iter().filter(|s| matches!(s, ShardState::Unreachable(_))).count();
        if intact >= m.layout.code.k {
            Presence::Present
        } else if intact + unknown >= m.layout.code.k {
            Presence::Unknown(describe(&m, &states))
        } else {
            Presence::Absent
        }
    }

    /// REMOVE: every shard and manifest deleted. Succeeds when fewer than `k` shards may be
    /// left (on stores that could not be reached), so the key can no longer be read.
    pub async fn remove(&self, key: &str) -> Result<(), SpreadError> {
        let dir = Self::key_dir(key)?;
        let k = self.code.k;
        let mut left = Vec::new();
        for e in &self.stores {
            let mut failed = None;
            for s in 0..self.code.shards() {
                if let Err(x) = e.store.delete(&Self::shard_name(&dir, s)).await {
                    failed = Some(x);
                }
            }
            match failed {
                None => {
                    if let Err(x) = e.store.delete(&Self::manifest_name(&dir)).await {
                        left.push(format!("{}: {x}", e.spec));
                    }
                }
                Some(x) => left.push(format!("{}: {x}", e.spec)),
            }
        }
        if left.len() >= k {
            return Err(SpreadError::Store(format!(
                "{} stores may still hold shards ({}), enough to read the key",
                left.len(),
                left.join("; ")
            )));
        }
        Ok(())
    }

    /// WHEREIS: which store holds which shard, and its state.
    pub async fn whereis(&self, key: &str) -> Result<String, SpreadError> {
        let m = self.manifest(key).await.map_err(|e| e.0)?;
        let states = self.shard_states(&m).await;
        Ok(describe(&m, &states))
    }

    /// Rewrites every missing or damaged shard of `key` (rebuilt from any `k` others) onto
    /// the store that lost it. Returns the shards rewritten.
    pub async fn repair(self: &std::sync::Arc<Self>, key: &str) -> Result<Vec<usize>, SpreadError> {
        let m = self.manifest(key).await.map_err(|e| e.0)?;
        let dir = Self::key_dir(key)?;
        let states = self.shard_states(&m).await;
        let lost: Vec<usize> =
            (0..states.len()).filter(|&s| matches!(states[s], ShardState::Missing | ShardState::Damaged(_))).collect();
        if lost.is_empty() {
            return self.put_manifests(&m, &dir).await.map(|_| lost);
        }
        let reader = super::reader::KeyReader::new(self, m.clone());
        let mut writers = Vec::new();
        for &s in &lost {
            let e = self.store_entry(&m.stores[s])?;
            let w = e.store.writer(&Self::shard_name(&dir, s)).map_err(|x| SpreadError::Store(x.to_string()))?;
            writers.push(w);
        }
        for stripe in 0..m.layout.stripes {
            let pieces = reader.whole_stripe(stripe, &lost).await?;
            for (w, &s) in writers.iter_mut().zip(&lost) {
                w.write(&pieces[s]).map_err(|x| SpreadError::Store(x.to_string()))?;
            }
        }
        for (w, &s) in writers.into_iter().zip(&lost) {
            let e = self.store_entry(&m.stores[s])?;
            e.store.commit(w).await.map_err(|x| SpreadError::Store(format!("{}: {x}", e.spec)))?;
        }
        self.put_manifests(&m, &dir).await?;
        Ok(lost)
    }

    /// The keys with a manifest on any store (listing every store, S3 included), and the
    /// stores that could not be listed.
    pub async fn stored_keys(&self) -> (Vec<String>, Vec<String>) {
        let mut keys = std::collections::BTreeSet::new();
        let mut failed = Vec::new();
        let lists = self.stores.iter().map(|e| async move { (e, e.store.list("/manifest").await) });
        for (e, r) in futures_util::future::join_all(lists).await {
            match r {
                Ok(names) => {
                    for n in names {
                        // HASH/HASH/KEYFILE/manifest
                        let Some(dir) = n.strip_suffix("/manifest") else { continue };
                        let file = dir.rsplit('/').next().unwrap_or(dir);
                        if let Ok(key) = Key::from_key_file(file.as_bytes()) {
                            keys.insert(key.to_string_lossy());
                        }
                    }
                }
                Err(x) => failed.push(format!("{}: {x}", e.spec)),
            }
        }
        (keys.into_iter().collect(), failed)
    }

    fn store_entry(&self, spec: &str) -> Result<&StoreEntry, SpreadError> {
        self.store_index(spec)
            .map(|i| &self.stores[i])
            .ok_or_else(|| SpreadError::Config(format!("store {spec} is not in stores=")))
    }

    /// The manifest written again to every store of the key that lacks it.
    async fn put_manifests(&self, m: &Manifest, dir: &str) -> Result<(), SpreadError> {
        let text = m.to_text().into_bytes();
        for spec in &m.stores {
            let e = self.store_entry(spec)?;
            let name = Self::manifest_name(dir);
            if e.store.get_all(&name, MAX_MANIFEST).await.is_ok_and(|b| b == text) {
                continue;
            }
            e.store.put(&name, text.clone()).await.map_err(|x| SpreadError::Store(format!("{spec}: {x}")))?;
        }
        Ok(())
    }
}

/// One store of a remote as `annexfs sources` shows it for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePlace {
    pub store: String,
    /// The shard of the key it holds (by the manifest), if any.
    pub shard: Option<usize>,
    pub parity: bool,
    /// `present`, `missing`, `short`, `unreachable (why)`, `no manifest`.
    pub state: String,
}

impl Spread {
    /// Where `key`'s shards are, from a look at each store (the shards' sizes, not their
    /// bytes): every store of the remote, reachable or not.
    pub async fn places(&self, key: &str) -> Vec<StorePlace> {
        let place = |store: &str, shard: Option<usize>, parity: bool, state: String| StorePlace {
            store: store.to_string(),
            shard,
            parity,
            state,
        };
        let (m, dir) = match (self.manifest(key).await, Self::key_dir(key)) {
            (Ok(m), Ok(dir)) => (m, dir),
            (Err((e, _, _)), _) | (_, Err(e)) => {
                return self
                    .stores
                    .iter()
                    .map(|e2| place(&e2.spec, None, false, format!("no manifest: {e}")))
                    .collect();
            }
        };
        let looks = m.stores.iter().enumerate().map(|(s, spec)| {
            let name = Self::shard_name(&dir, s);
            let want = m.layout.shard_bytes();
            async move {
                let state = match self.store_index(spec) {
                    None => "its store is not in stores= any more".to_string(),
                    Some(i) => match self.stores[i].store.size(&name).await {
                        Ok(n) if n == want => "present".to_string(),
                        Ok(n) => format!("short ({n} of {want} bytes)"),
                        Err(StoreError::NotFound) => "missing".to_string(),
                        Err(StoreError::Unreachable(why)) => format!("unreachable ({why})"),
                        Err(e) => format!("unreachable ({e})"),
                    },
                };
                place(spec, Some(s), s >= m.layout.code.k, state)
            }
        });
        let mut out = futures_util::future::join_all(looks).await;
        for e in &self.stores {
            if !m.stores.contains(&e.spec) {
                out.push(place(&e.spec, None, false, "holds no shard of this key".into()));
            }
        }
        out
    }
}

/// `shard 0 on /a: intact; shard 1 on /b: missing; …`.
pub fn describe(m: &Manifest, states: &[ShardState]) -> String {
    let k = m.layout.code.k;
    m.stores
        .iter()
        .zip(states)
        .enumerate()
        .map(|(s, (spec, st))| {
            let kind = if s < k { "data" } else { "parity" };
            let st = match st {
                ShardState::Intact => "intact".to_string(),
                ShardState::Missing => "missing".to_string(),
                ShardState::Damaged(n) => format!("{n} damaged pieces"),
                ShardState::Unreachable(w) => format!("unreachable ({w})"),
            };
            format!("shard {s} ({kind}) on {spec}: {st}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}
