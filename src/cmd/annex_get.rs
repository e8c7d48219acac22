//! The opt-in `annex_get` fallback: when no holder annexfs can read has a key, but one that
//! git-annex itself can read does (an encrypted special remote, a type annexfs does not
//! speak), `git annex get --key KEY` fetches the whole key into the repository's annex —
//! the one case where annexfs makes the repository change, which is why it is off unless
//! asked for (`-o annex_get=yes`, `--annex-get`).
//!
//! Invariants: at most one `git annex get` per key at a time in a process (later readers of
//! the key wait for the first and then find the object present); each is bounded by
//! [`TIMEOUT`] and killed when it runs over; afterwards the object is used only if it is a
//! regular file of the key's size ([`Annex::present_object`]).

use crate::annex::{Annex, Key};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a `git annex get` may run.
pub const TIMEOUT: Duration = Duration::from_secs(3600);

/// Why git-annex could not get a key.
#[derive(Debug, thiserror::Error)]
pub enum AnnexGetError {
    #[error("no holder of the key can be read by git-annex either")]
    NoHolder,
    #[error("read the git-annex branch: {0}")]
    Branch(#[from] crate::annex::branch::BranchError),
    #[error("start git annex get: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git annex get --key {key} failed ({status}): {stderr}")]
    Failed { key: String, status: String, stderr: String },
    #[error("git annex get --key {key} ran longer than {}s and was stopped", TIMEOUT.as_secs())]
    Timeout { key: String },
    #[error("git annex get --key {key} succeeded but the object is not in the annex")]
    Missing { key: String },
}

/// One `git annex get` per key at a time.
#[derive(Default)]
pub struct AnnexGets {
    running: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// Whether some holder of `key` is unreadable by annexfs only for a reason git-annex handles.
pub fn git_annex_can_get(annex: &Annex, key: &Key) -> Result<bool, AnnexGetError> {
    Ok(annex.holders(key)?.iter().any(|h| h.readable.as_ref().err().is_some_and(|e| e.git_annex_can_get())))
}

impl AnnexGets {
    /// Has git-annex get `key` into the annex of `annex`; returns the object's path.
    pub async fn get(&self, annex: &Annex, key: &Key) -> Result<PathBuf, AnnexGetError> {
        let lock = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.entry(key.clone()).or_default().clone()
        };
        let got = {
            let _one = lock.lock().await;
            self.get_locked(annex, key).await
        };
        // The last one out forgets the key (the map would otherwise keep every key asked for).
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            running.remove(key);
        }
        got
    }

    async fn get_locked(&self, annex: &Annex, key: &Key) -> Result<PathBuf, AnnexGetError> {
        if let Some(p) = annex.present_object(key) {
            return Ok(p);
        }
        if !git_annex_can_get(annex, key)? {
            return Err(AnnexGetError::NoHolder);
        }
        let k = key.to_string_lossy();
        tracing::info!("{k}: asking git annex get --key (annex_get is on): this writes the repository's annex");
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C")
            .arg(annex.base_dir())
            .args(["annex", "get", "--quiet", "--key"])
            .arg(&k)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // Its own process group: `git annex` runs git-annex as a child, and a timeout must
            // stop both (a surviving git-annex would go on writing the annex).
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(AnnexGetError::Spawn)?;
        let group = child.id().and_then(|p| i32::try_from(p).ok());
        let out = match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
            Err(_) => {
                if let Some(g) = group {
                    // SAFETY: killpg(2) on the group this call started.
                    unsafe { libc::killpg(g, libc::SIGKILL) };
                }
                return Err(AnnexGetError::Timeout { key: k });
            }
            Ok(r) => r.map_err(AnnexGetError::Spawn)?,
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr: String = stderr.trim().chars().take(2000).collect();
            return Err(AnnexGetError::Failed { key: k, status: out.status.to_string(), stderr });
        }
        annex.present_object(key).ok_or(AnnexGetError::Missing { key: k })
    }
}
