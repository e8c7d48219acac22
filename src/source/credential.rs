//! Logins for HTTP servers from `git credential`, as git-annex gets them (`Git/Credential.hs`):
//! `fill` with `url=…` when a server answers 401, `approve` once a login worked, `reject`
//! when it was refused.
//!
//! Design: one [`Credentials`] per mount (in [`super::reach::Reach`]), holding per credential
//! URL the outcome of the one `fill` asked for it, for the mount's life. Concurrent requests
//! that meet a 401 at once wait on that URL's async mutex, so `git credential fill` (which
//! may run a helper that prompts) runs once per URL, never once per range. A refused login is
//! remembered as refused: the server is not asked again with it, and no new `fill` is run.
//!
//! `git` runs in the repository (so its `credential.helper` config applies), with terminal
//! prompts disabled and stdin a pipe (a mount has no terminal to ask on), and is killed after
//! [`FILL_TIMEOUT`]: a helper that hangs gives an error, not a hung read.
//!
//! Lock order: the map's std mutex is held only to find or insert a URL's entry; the entry's
//! tokio mutex is then held across the `fill`, by a task of its own (so that a caller that
//! stops waiting does not abandon the answer).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `git credential` must answer within this.
pub const FILL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why no login could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("git credential {action}: {why}")]
    Git { action: &'static str, why: String },
    #[error("git credential fill for {0} gave no username and password")]
    Incomplete(String),
    #[error("the login git credential gave for {0} was refused by the server")]
    Refused(String),
}

/// A username and password, with every field `git credential fill` answered (handed back to
/// `approve`/`reject` as is, as git expects).
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
    fields: Vec<(String, String)>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({:?}, <password>)", self.username)
    }
}

/// What is known about one credential URL.
#[derive(Default)]
enum State {
    /// No login asked for yet.
    #[default]
    None,
    Have(Arc<Login>),
    /// A login was refused, or none could be had: the error is repeated.
    Failed(CredentialError),
}

/// Logins per credential URL, for one mount.
#[derive(Default)]
pub struct Credentials {
    /// Where `git credential` runs (the repository); `None`: the current directory.
    dir: Option<PathBuf>,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<State>>>>,
}

impl Credentials {
    /// Logins asked from `git credential` run in `dir`.
    pub fn new(dir: Option<PathBuf>) -> Credentials {
        Credentials { dir, entries: Mutex::default() }
    }

    fn entry(&self, url: &str) -> Arc<tokio::sync::Mutex<State>> {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(url.to_string()).or_default().clone()
    }

    /// The login known for `url`, if any (without asking).
    pub async fn known(&self, url: &str) -> Result<Option<Arc<Login>>, CredentialError> {
        match &*self.entry(url).lock().await {
            State::None => Ok(None),
            State::Have(l) => Ok(Some(l.clone())),
            State::Failed(e) => Err(e.clone()),
        }
    }

    /// A login for `url` after the server refused `tried` (None: no login was sent). If
    /// another request already got a newer one, that is returned; if `tried` was refused, it
    /// is rejected and remembered as refused.
    pub async fn after_401(
        &self,
        url: &str,
        tried: Option<&Arc<Login>>,
        www_authenticate: Option<&str>,
    ) -> Result<Arc<Login>, CredentialError> {
        let mut st = self.entry(url).lock_owned().await;
        match (&*st, tried) {
            (State::Failed(e), _) => return Err(e.clone()),
            (State::Have(l), Some(t)) if Arc::ptr_eq(l, t) => {
                let refused = l.clone();
                let err = CredentialError::Refused(url.to_string());
                *st = State::Failed(err.clone());
                drop(st);
                let dir = self.dir.clone();
                let _ = tokio::task::spawn_blocking(move || run(dir, "reject", &refused.fields)).await;
                return Err(err);
            }
            (State::Have(l), _) => return Ok(l.clone()),
            (State::None, _) => {}
        }
        let mut input = vec![("url".to_string(), url.to_string())];
        if let Some(w) = www_authenticate {
            input.push(("wwwauth[]".to_string(), w.to_string()));
        }
        let (dir, url) = (self.dir.clone(), url.to_string());
        // The fill runs in a task of its own that holds the URL's entry until the answer is
        // recorded: a request given up on meanwhile (its header wait timed out) does not
        // cancel it, and the next request waits for this answer instead of asking again.
        let filling = tokio::spawn(async move {
            let got = tokio::task::spawn_blocking(move || run(dir, "fill", &input))
                .await
                .map_err(|e| CredentialError::Git { action: "fill", why: e.to_string() })
                .and_then(|r| r);
            let login = got.and_then(|fields| {
                let get = |k: &str| fields.iter().rev().find(|(f, _)| f == k).map(|(_, v)| v.clone());
                match (get("username"), get("password")) {
                    (Some(username), Some(password)) => Ok(Arc::new(Login { username, password, fields })),
                    _ => Err(CredentialError::Incomplete(url.clone())),
                }
            });
            *st = match &login {
                Ok(l) => State::Have(l.clone()),
                Err(e) => State::Failed(e.clone()),
            };
            login
        });
        filling.await.map_err(|e| CredentialError::Git { action: "fill", why: e.to_string() })?
    }

    /// Tells git the login worked (once per login; it may store it).
    pub async fn approve(&self, login: &Arc<Login>) {
        let fields = login.fields.clone();
        let dir = self.dir.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || run(dir, "approve", &fields)).await {
            tracing::warn!("{e}");
        }
    }
}

/// Runs `git credential ACTION` with `input`; returns the fields it printed.
fn run(
    dir: Option<PathBuf>,
    action: &'static str,
    input: &[(String, String)],
) -> Result<Vec<(String, String)>, CredentialError> {
    let err = |why: String| CredentialError::Git { action, why };
    let mut cmd = Command::new("git");
    cmd.args(["credential", action])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = &dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| err(format!("cannot run git: {e}")))?;
    let mut text = String::new();
    for (k, v) in input {
        // A newline in a value would start another field: git refuses those too.
        if k.contains(['\n', '=']) || v.contains('\n') || v.contains('\0') {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("field {k} cannot be passed")));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    text.push('\n');
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is not an error here; its answer decides.
        let _ = stdin.write_all(text.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(1 << 20).read_to_end(&mut b);
        }
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(64 << 10).read_to_end(&mut b);
        }
        b
    });
    let deadline = Instant::now() + FILL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("no answer within {FILL_TIMEOUT:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(err(e.to_string())),
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let errtext = err_reader.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(&errtext);
        let msg = msg.trim();
        return Err(err(if msg.is_empty() { status.to_string() } else { msg.to_string() }));
    }
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fill slower than the request that asked for it is not run again by the next request:
    /// its answer is kept even though the first caller stopped waiting.
    #[test]
    fn a_fill_outlives_the_caller_that_gave_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let count = dir.path().join("count");
        let git = |args: &[&str]| {
            let ok = Command::new("git").args(args).current_dir(dir.path()).status().is_ok_and(|s| s.success());
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        let helper = format!(
            "!f() {{ test \"$1\" = get || exit 0; echo x >> '{}'; sleep 1; printf 'username=u\\npassword=p\\n'; }}; f",
            count.display()
        );
        git(&["config", "credential.helper", &helper]);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let creds = Credentials::new(Some(dir.path().to_path_buf()));
        let url = "http://example.invalid/";
        rt.block_on(async {
            let first = tokio::time::timeout(Duration::from_millis(200), creds.after_401(url, None, None)).await;
            assert!(first.is_err(), "the first caller gives up before the helper answers");
            let login = creds.after_401(url, None, None).await.expect("the fill's answer");
            assert_eq!((login.username.as_str(), login.password.as_str()), ("u", "p"));
        });
        let asked = std::fs::read_to_string(&count).expect("the helper ran");
        assert_eq!(asked.lines().count(), 1, "git credential fill ran once");
    }
}
