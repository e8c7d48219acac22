//! Logging setup: `tracing` to stderr, filtered by `ANNEXFS_LOG` (or `RUST_LOG`), warnings and
//! errors by default. Warnings and errors are also kept in a small ring ([`recent`]) for
//! `annexfs status`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How many recent warnings and errors are kept.
const RECENT: usize = 20;

/// A warning or error, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub level: String,
    pub message: String,
}

static RING: Mutex<VecDeque<Recent>> = Mutex::new(VecDeque::new());

/// The latest warnings and errors, oldest first.
pub fn recent() -> Vec<Recent> {
    RING.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
}

/// Collects the message and fields of an event as one line.
struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

/// Keeps warnings and errors in the ring.
struct RingLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut line = Line(String::new());
        event.record(&mut line);
        let time = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= RECENT {
            ring.pop_front();
        }
        ring.push_back(Recent { time, level: level.to_string(), message: line.0 });
    }
}

/// Installs the global subscriber. The default level is `debug` with `verbose`, `info` for a
/// long-running daemon (`daemon`), else `warn`.
/// `ansi`: colour the output (only for a terminal that stays the log's destination).
pub fn init(verbose: bool, daemon: bool, ansi: bool) {
    let default = match (verbose, daemon) {
        (true, _) => "annexfs=debug,warn",
        (false, true) => "annexfs=info,warn",
        (false, false) => "warn",
    };
    let filter = std::env::var("ANNEXFS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(RingLayer).try_init();
}
