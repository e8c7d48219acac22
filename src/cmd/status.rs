//! `annexfs status`: what each mount is doing, asked of its daemon over a Unix socket.
//!
//! Every daemon listens on `<runtime dir>/annexfs/<hash of the mountpoint>.sock` (the runtime
//! dir is `$XDG_RUNTIME_DIR`, else `/tmp/annexfs-<uid>`; the directory is 0700, so only the
//! mounting user can ask). A client connects and reads one JSON document, the mount's
//! [`MountStatus`], then the daemon closes the connection. `status --json` prints
//! `{"version": 1, "mounts": [MountStatus...]}`; the fields below are the stable interface
//! (new fields may be added, none removed or renamed within a version).

use crate::cli::StatusArgs;
use crate::fs::MountFs;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Version of the JSON document.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub mounts: Vec<MountStatus>,
}

/// One mount.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MountStatus {
    pub mountpoint: String,
    pub repo: String,
    pub pid: u32,
    /// `stream` or `strict`.
    pub verify: String,
    pub cache: CacheStatus,
    pub open_files: Vec<OpenFile>,
    pub sources: Vec<SourceStatus>,
    pub counters: Counters,
    /// Latest warnings and errors, oldest first.
    pub recent_errors: Vec<RecentError>,
    /// Swarm peers known and not dropped.
    #[serde(default)]
    pub peers: Vec<String>,
    /// How full the peer table is (peers, candidates not yet answered, dropped, bound).
    #[serde(default)]
    pub peer_table: crate::swarm::TableCounts,
    /// The live nodes of the swarm, this one first, with the space each offers.
    #[serde(default)]
    pub swarm_nodes: Vec<SwarmNode>,
    /// What this node keeps for the swarm (when it offers space): wanted keys and pieces,
    /// pieces below their copies, the nodes with offered and used space, repair progress.
    #[serde(default)]
    pub swarm_keep: Option<crate::swarm::keep::KeepReport>,
    /// The swarm's rules in force (from a signed commit) and the changes refused.
    #[serde(default)]
    pub swarm_rules: crate::swarm::rules::RulesState,
    /// What this node serves to the swarm, when it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Serving>,
    /// Spread remotes read from their stores: pieces decoded, each store's figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<SpreadStatus>,
    /// Nested repositories (subdatasets) opened so far: their path in the mount and the
    /// repository serving them (a checkout, or a clone in the state directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nested: Vec<NestedRepo>,
    /// ssh hosts connected to: master connection, sessions open, idle, parked and running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<crate::source::ssh::HostReport>,
    /// Set when the daemon could not be asked (then the other fields are empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SwarmNode {
    /// Its address (empty for this node when it does not serve).
    pub url: String,
    pub uuid: String,
    /// Bytes it offers the swarm for keeping pieces.
    pub offered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NestedRepo {
    /// Its path from the mount's root.
    pub path: String,
    /// The repository serving it.
    pub repo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Serving {
    /// The listening address.
    pub listen: String,
    pub requests: u64,
    /// Bytes sent to peers.
    pub bytes: u64,
    /// Connections or requests refused (bounds, token).
    pub refused: u64,
}

/// A spread remote as the mount reads it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SpreadStatus {
    pub remote: String,
    pub data: usize,
    pub parity: usize,
    /// Data pieces rebuilt from parity (a store missing, busy or wrong).
    pub decoded_pieces: u64,
    pub stores: Vec<SpreadStoreStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SpreadStoreStatus {
    pub store: String,
    /// Piece reads, bytes of pieces that passed their hash, failed reads.
    pub reads: u64,
    pub bytes: u64,
    pub failures: u64,
    pub in_flight: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CacheStatus {
    pub dir: String,
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OpenFile {
    pub file: String,
    pub key: String,
    pub size: u64,
    /// Bytes readable without fetching (in the repository or in the cache).
    pub present_bytes: u64,
    /// Bytes per second landing now (0 when nothing is being fetched).
    pub rate_bps: f64,
    /// Seconds until complete at the current rate (absent when not fetching).
    pub eta_secs: Option<f64>,
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SourceStatus {
    /// Who answers for the bytes (strikes and bans count per identity).
    pub identity: String,
    pub bytes: u64,
    pub rate_bps: f64,
    /// Time to first byte, averaged over its requests (absent until measured).
    pub latency_ms: Option<f64>,
    pub strikes: u32,
    pub banned: bool,
    /// Why it was given up for some open key, if it was.
    pub gave_up: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Counters {
    pub bytes_fetched: u64,
    pub requests: u64,
    pub failures: u64,
    pub stalls: u64,
    pub steals: u64,
    pub hedges: u64,
    pub cache_hits: u64,
    pub evicted_pieces: u64,
    pub verified: u64,
    pub verify_failures: u64,
    pub bad_pieces: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RecentError {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub level: String,
    pub message: String,
}

/// The directories a status socket of this user may be in: `$XDG_RUNTIME_DIR/annexfs` when
/// set, and `/tmp/annexfs-<uid>` (a daemon started by mount(8) or at boot has no
/// `XDG_RUNTIME_DIR`, while the user asking later usually has one).
fn runtime_dirs() -> Vec<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let fallback = std::env::temp_dir().join(format!("annexfs-{}", unsafe { libc::geteuid() }));
    let mut v: Vec<PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .map(|p| p.join("annexfs"))
        .into_iter()
        .collect();
    v.push(fallback);
    v
}

fn socket_name(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(mountpoint.as_os_str().as_bytes()).to_hex();
    format!("{}.sock", &h.as_str()[..24])
}

/// Where the daemon of the mount at `mountpoint` (absolute, canonical) puts its socket.
fn socket_for_serving(mountpoint: &Path) -> PathBuf {
    runtime_dirs().remove(0).join(socket_name(mountpoint))
}

/// The status socket of the mount at `mountpoint`, if one exists.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let name = socket_name(mountpoint);
    let dirs = runtime_dirs();
    dirs.iter().map(|d| d.join(&name)).find(|p| p.exists()).unwrap_or_else(|| dirs[0].join(&name))
}

/// What the daemon of one mount knows, now.
pub(crate) fn snapshot(
    fs: &MountFs,
    net: &super::Network,
    mountpoint: &Path,
    repo: &Path,
    verify: &str,
    cache_dir: &Path,
) -> MountStatus {
    let mut st = MountStatus {
        mountpoint: mountpoint.display().to_string(),
        repo: repo.display().to_string(),
        pid: std::process::id(),
        verify: verify.to_string(),
        cache: CacheStatus { dir: cache_dir.display().to_string(), ..Default::default() },
        recent_errors: crate::logging::recent()
            .into_iter()
            .map(|r| RecentError { time: r.time, level: r.level, message: r.message })
            .collect(),
        ..Default::default()
    };
    let parts = net;
    st.peers = parts.peers.live();
    st.peer_table = parts.peers.counts();
    st.swarm_nodes =
        parts.peers.nodes().into_iter().map(|(url, uuid, offered)| SwarmNode { url, uuid, offered }).collect();
    st.swarm_rules = (*parts.rules(&fs.annex())).clone();
    st.swarm_keep = parts.peers.keep_report();
    st.serving = parts.serving.get().map(|s| {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Serving {
            listen: s.addr.to_string(),
            requests: g(&s.stats.requests),
            bytes: g(&s.stats.bytes),
            refused: g(&s.stats.refused),
        }
    });
    let store = parts.fetcher.store();
    st.cache.used_bytes = store.used();
    st.cache.limit_bytes = store.limit();
    let fetches = parts.fetcher.open_keys();
    st.nested = fs
        .nested()
        .into_iter()
        .map(|(path, annex)| NestedRepo { path, repo: annex.base_dir().display().to_string() })
        .collect();
    for (file, key, annex) in fs.open_files() {
        let size = key.size().unwrap_or(0);
        let local = annex.present_object(&key).is_some();
        let kf = fetches.iter().find(|k| k.key.to_bytes() == key.to_bytes());
        let (present, rate, verified) = match (local, kf) {
            (true, _) => (size, 0.0, true),
            (false, Some(k)) => (k.present_bytes(), k.rate(), k.is_verified()),
            (false, None) => (store.present_bytes(&key), 0.0, false),
        };
        let eta = (rate > 0.0 && present < size).then(|| (size - present) as f64 / rate);
        st.open_files.push(OpenFile {
            file,
            key: key.to_string(),
            size,
            present_bytes: present,
            rate_bps: rate,
            eta_secs: eta,
            verified,
        });
    }
    // Sources across every open key, by identity.
    let mut by_id: Vec<SourceStatus> = Vec::new();
    for k in &fetches {
        for r in k.source_reports() {
            let i = match by_id.iter().position(|s| s.identity == r.identity) {
                Some(i) => i,
                None => {
                    by_id.push(SourceStatus { identity: r.identity.clone(), ..Default::default() });
                    by_id.len() - 1
                }
            };
            let s = &mut by_id[i];
            s.bytes += r.bytes;
            s.rate_bps += r.bps;
            if r.ttfb_ms > 0.0 {
                s.latency_ms = Some(s.latency_ms.map_or(r.ttfb_ms, |l| l.min(r.ttfb_ms)));
            }
            s.strikes = r.strikes;
            s.banned = r.banned;
            if s.gave_up.is_none() {
                s.gave_up = r.dead;
            }
        }
    }
    // Banned or struck identities stay listed after their keys are closed.
    for (id, rec) in parts.fetcher.reputation.snapshot() {
        if !by_id.iter().any(|s| s.identity == id) {
            by_id.push(SourceStatus { identity: id, strikes: rec.strikes, banned: rec.banned, ..Default::default() });
        }
    }
    st.sources = by_id;
    st.spread = super::spread::statuses(&parts.spreads);
    st.ssh = parts.reach.ssh.report();
    let c = &parts.fetcher.stats;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    st.counters = Counters {
        bytes_fetched: g(&c.bytes_fetched),
        requests: g(&c.requests),
        failures: g(&c.failures),
        stalls: g(&c.stalls),
        steals: g(&c.steals),
        hedges: g(&c.hedges),
        cache_hits: g(&c.cache_hits),
        evicted_pieces: g(&c.evicted_pieces),
        verified: g(&c.verified),
        verify_failures: g(&c.verify_failures),
        bad_pieces: g(&c.bad_pieces),
    };
    st
}

/// Serves status on the mount's socket until the process ends. Returns the socket path (for
/// removal at unmount).
pub fn serve(mountpoint: &Path, make: Arc<dyn Fn() -> MountStatus + Send + Sync>) -> anyhow::Result<PathBuf> {
    let path = socket_for_serving(mountpoint);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("make {} private", dir.display()))?;
    // A socket left by a daemon that was killed.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("listen on {}", path.display()))?;
    std::thread::Builder::new().name("annexfs-status".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
            let body = serde_json::to_vec(&make()).unwrap_or_default();
            let _ = c.write_all(&body);
        }
    })?;
    Ok(path)
}

/// Asks the daemon of the mount at `mountpoint`.
fn ask(mountpoint: &Path) -> MountStatus {
    let fail = |why: String| MountStatus {
        mountpoint: mountpoint.display().to_string(),
        error: Some(why),
        ..Default::default()
    };
    let path = socket_path(mountpoint);
    let mut c = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "its daemon does not answer ({e}): another user's mount, or a stale one (`annexfs umount {}` clears it)",
                mountpoint.display()
            ));
        }
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut body = Vec::new();
    if let Err(e) = c.read_to_end(&mut body) {
        return fail(format!("reading its status: {e}"));
    }
    serde_json::from_slice(&body).unwrap_or_else(|e| fail(format!("its status does not parse: {e}")))
}

fn human(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} {}", units[u]) } else { format!("{v:.1} {}", units[u]) }
}

/// The keeper's report, in a few lines.
fn print_keep(k: &crate::swarm::keep::KeepReport, out: &mut impl Write) -> std::io::Result<()> {
    if !k.rules {
        return writeln!(out, "  swarm keep: no signed rules in force; nothing kept");
    }
    writeln!(
        out,
        "  swarm keep: {} keys, {} pieces wanted ({}), {} copies each; {} pieces below {} copies",
        k.wanted_keys,
        k.wanted_pieces,
        human(k.wanted_bytes as f64),
        k.copies,
        k.below_copies,
        k.copies
    )?;
    writeln!(
        out,
        "  swarm keep here: {} of {} assigned pieces held ({} of {}), {} fetched, {} pieces released",
        k.held_pieces,
        k.assigned_pieces,
        human(k.held_bytes as f64),
        human(k.assigned_bytes as f64),
        human(k.fetched_bytes as f64),
        k.released_pieces
    )?;
    for n in &k.nodes {
        let state = if n.banned {
            "banned"
        } else if n.placed {
            "placed"
        } else {
            "out"
        };
        let name = if n.url.is_empty() { "this node" } else { &n.url };
        writeln!(out, "    {name}: offers {}, uses {} ({state})", human(n.offered as f64), human(n.used as f64))?;
    }
    for why in &k.not_kept {
        writeln!(out, "    not kept: {why}")?;
    }
    Ok(())
}

fn print_text(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    if r.mounts.is_empty() {
        writeln!(out, "no annexfs mounts")?;
    }
    for m in &r.mounts {
        writeln!(out, "{}", m.mountpoint)?;
        if let Some(e) = &m.error {
            writeln!(out, "  {e}")?;
            continue;
        }
        writeln!(out, "  repository {} (daemon {}, verify {})", m.repo, m.pid, m.verify)?;
        if m.cache.limit_bytes > 0 {
            writeln!(
                out,
                "  cache {} of {} in {}",
                human(m.cache.used_bytes as f64),
                human(m.cache.limit_bytes as f64),
                m.cache.dir
            )?;
        }
        if !m.nested.is_empty() {
            writeln!(out, "  {} nested repositories open", m.nested.len())?;
        }
        for f in &m.open_files {
            let eta = f.eta_secs.map(|s| format!(", ETA {s:.0} s")).unwrap_or_default();
            let rate = if f.rate_bps > 0.0 { format!(", {}/s", human(f.rate_bps)) } else { String::new() };
            writeln!(
                out,
                "  open {}: {} of {}{rate}{eta}{}",
                f.file,
                human(f.present_bytes as f64),
                human(f.size as f64),
                if f.verified { ", verified" } else { "" }
            )?;
        }
        for s in &m.sources {
            let lat = s.latency_ms.map(|l| format!(", {l:.0} ms to first byte")).unwrap_or_default();
            let mut flags = String::new();
            if s.strikes > 0 {
                flags.push_str(&format!(", {} strikes", s.strikes));
            }
            if s.banned {
                flags.push_str(", BANNED");
            } else if let Some(g) = &s.gave_up {
                flags.push_str(&format!(", given up: {g}"));
            }
            writeln!(out, "  source {}: {}, {}/s{lat}{flags}", s.identity, human(s.bytes as f64), human(s.rate_bps))?;
        }
        for h in &m.ssh {
            let master = if h.master { "master up" } else { "no master" };
            let (n, i, p, r) = (h.sessions, h.idle, h.parked, h.running);
            writeln!(out, "  ssh {}: {master}, {n} sessions ({i} idle, {p} parked, {r} transferring)", h.host)?;
            if let Some(e) = &h.error {
                writeln!(out, "    last error: {e}")?;
            }
        }
        for sp in &m.spread {
            writeln!(out, "  spread {} ({}+{}): {} pieces decoded", sp.remote, sp.data, sp.parity, sp.decoded_pieces)?;
            for st in &sp.stores {
                writeln!(
                    out,
                    "    store {}: {} reads, {}, {} failed, {} in flight",
                    st.store,
                    st.reads,
                    human(st.bytes as f64),
                    st.failures,
                    st.in_flight
                )?;
            }
        }
        if let Some(s) = &m.serving {
            writeln!(
                out,
                "  serving on {}: {} requests, {} sent, {} refused",
                s.listen,
                s.requests,
                human(s.bytes as f64),
                s.refused
            )?;
        }
        if !m.peers.is_empty() {
            writeln!(out, "  peers: {}", m.peers.join(", "))?;
        }
        let r = &m.swarm_rules;
        if let (Some(rules), Some(c)) = (&r.rules, &r.commit) {
            writeln!(
                out,
                "  swarm rules: {} copies, from commit {} signed by {}",
                rules.copies,
                &c[..c.len().min(12)],
                r.signer.as_deref().unwrap_or("?")
            )?;
        }
        for x in &r.refused {
            writeln!(out, "  swarm rules change refused: commit {}: {}", &x.commit[..x.commit.len().min(12)], x.why)?;
        }
        let offering: Vec<String> = m
            .swarm_nodes
            .iter()
            .filter(|n| n.offered > 0)
            .map(|n| format!("{} {}", if n.url.is_empty() { "this node" } else { &n.url }, human(n.offered as f64)))
            .collect();
        if !offering.is_empty() {
            writeln!(out, "  swarm space offered: {}", offering.join(", "))?;
        }
        if let Some(k) = &m.swarm_keep {
            print_keep(k, out)?;
        }
        let t = &m.peer_table;
        if t.candidates + t.dropped > 0 {
            writeln!(
                out,
                "  peer table: {} peers, {} not yet answered, {} dropped (of {})",
                t.live, t.candidates, t.dropped, t.capacity
            )?;
        }
        for e in m.recent_errors.iter().rev().take(5) {
            writeln!(out, "  {} {}", e.level, e.message)?;
        }
    }
    Ok(())
}

/// Runs the command; returns the exit code.
pub fn run(args: &StatusArgs) -> anyhow::Result<i32> {
    let wanted = match &args.mountpoint {
        Some(m) => Some(super::mount::absolute(m)?.canonicalize().unwrap_or_else(|_| m.clone())),
        None => None,
    };
    loop {
        let mounts: Vec<PathBuf> = super::mount::mount_table()
            .into_iter()
            // Mounted by root directly, a FUSE filesystem shows as plain `fuse`: such a mount
            // is annexfs's when it has an annexfs status socket.
            .filter(|(p, t)| t == "fuse.annexfs" || (t == "fuse" && socket_path(p).exists()))
            .map(|(p, _)| p)
            .filter(|p| wanted.as_ref().is_none_or(|w| w == p))
            .collect();
        if let Some(w) = &wanted
            && mounts.is_empty()
        {
            anyhow::bail!("{} is not an annexfs mount", w.display());
        }
        let report = Report { version: VERSION, mounts: mounts.iter().map(|m| ask(m)).collect() };
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer(&mut out, &report)?;
            writeln!(out)?;
        } else {
            if args.watch {
                // Clear the screen between updates.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            print_text(&report, &mut out)?;
        }
        out.flush()?;
        if !args.watch {
            return Ok(if report.mounts.iter().any(|m| m.error.is_some()) { 1 } else { 0 });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
