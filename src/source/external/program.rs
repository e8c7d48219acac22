//! One running `git-annex-remote-NAME` program: started, greeted (VERSION, EXTENSIONS,
//! PREPARE), then asked one thing at a time (TRANSFER RETRIEVE, WHEREIS).
//!
//! Invariants: every wait for the program is bounded (the remote's timeout; during a
//! transfer, growth of the file being written counts as life); a line longer than
//! [`MAX_LINE`], a message that does not fit the moment, an `ERROR` or the program's exit end
//! the program with an [`Error`] naming the remote. The program is killed when this is
//! dropped (`kill_on_drop`), so a cancelled request never leaves it running. The program's
//! requests are answered from the repository ([`Context`]) and never change it.

use super::Error;
use super::protocol::{self, FromRemote, Request};
use crate::annex::{Annex, Key};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The longest line accepted from a program.
const MAX_LINE: usize = 64 * 1024;
/// How often a transfer looks at the growing file.
const TICK: Duration = Duration::from_millis(100);

/// What a remote's programs need to know and answer with, shared by its pool.
pub struct Context {
    pub remote: String,
    pub uuid: String,
    pub program: PathBuf,
    /// `remote.log` fields (GETCONFIG).
    pub config: BTreeMap<String, String>,
    /// The repository (GETGITDIR, GETSTATE, GETURLS, creds), if it could be opened.
    pub annex: Option<Arc<Annex>>,
    /// The longest the program may stay silent.
    pub timeout: Duration,
}

impl Context {
    fn gitdir(&self) -> Option<&Path> {
        self.annex.as_deref().map(|a| a.gitdir.as_path())
    }

    /// The reply lines to `req` (none for the writes, which are dropped).
    fn reply(&self, req: &Request) -> Vec<String> {
        let value = |v: &str| format!("VALUE {}", protocol::one_line(v));
        let key = |k: &str| Key::parse_str(k).ok();
        match req {
            Request::GetConfig(k) => vec![value(self.config.get(k).map_or("", String::as_str))],
            Request::GetCreds(setting) => {
                let (user, pass) = self.creds(setting);
                vec![format!("CREDS {} {}", protocol::one_line(&user), protocol::one_line(&pass))]
            }
            Request::GetUuid => vec![value(&self.uuid)],
            Request::GetGitDir => vec![value(&self.gitdir().map(|g| g.display().to_string()).unwrap_or_default())],
            Request::GetGitRemoteName => vec![value(&self.remote)],
            Request::DirHash(k) => vec![value(&key(k).map(|k| k.hashdir_mixed(false)).unwrap_or_default())],
            Request::DirHashLower(k) => vec![value(&key(k).map(|k| k.hashdir_lower(false)).unwrap_or_default())],
            Request::GetState(k) => vec![value(&key(k).and_then(|k| self.state(&k)).unwrap_or_default())],
            Request::GetUrls { key: k, prefix } => {
                let urls = key(k).and_then(|k| self.annex.as_ref()?.urls(&k).ok()).unwrap_or_default();
                let mut out: Vec<String> =
                    urls.iter().filter(|u| u.starts_with(prefix.as_str())).map(|u| value(u)).collect();
                out.push(value(""));
                out
            }
            Request::GetWanted => vec![value("")],
            Request::Write(_) => Vec::new(),
        }
    }

    /// The remote's state for `key` (`SETSTATE`, kept in the branch's `.log.rmt`).
    fn state(&self, key: &Key) -> Option<String> {
        let annex = self.annex.as_ref()?;
        let meta = annex.meta().ok()?;
        let chunks = annex.branch.file(&annex.key_log_path(&meta, key, ".log.rmt")).ok()?;
        let log = crate::annex::logs::compact_map_log(chunks.iter().map(Vec::as_slice));
        log.get(self.uuid.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Credentials as git-annex finds them for an external remote: the environment, then
    /// embedded in `remote.log` (base64 of `login\npassword`), then `.git/annex/creds/`.
    fn creds(&self, setting: &str) -> (String, String) {
        let base = format!("{}-{setting}", self.uuid).replace('/', "_");
        if let (Ok(u), Ok(p)) = (std::env::var(format!("{base}login")), std::env::var(format!("{base}password"))) {
            return (u, p);
        }
        let split = |text: &str| {
            let mut lines = text.lines();
            Some((lines.next()?.to_string(), lines.next()?.to_string()))
        };
        use base64::Engine;
        let embedded = self
            .config
            .get(setting)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| split(&t));
        if let Some(c) = embedded {
            return c;
        }
        self.gitdir()
            .and_then(|g| std::fs::read_to_string(g.join("annex/creds").join(&base)).ok())
            .and_then(|t| split(&t))
            .unwrap_or_default()
    }
}

/// Reads lines of at most [`MAX_LINE`] bytes. Cancel-safe: a partial line is kept here, so
/// a timed-out wait loses nothing.
struct Lines {
    r: BufReader<ChildStdout>,
    partial: Vec<u8>,
}

impl Lines {
    /// The next line, or `None` at the end of the output.
    async fn next(&mut self) -> std::io::Result<Option<String>> {
        use std::io::{Error as IoError, ErrorKind};
        loop {
            let buf = self.r.fill_buf().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            let (take, done) = match buf.iter().position(|&c| c == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            self.partial.extend_from_slice(&buf[..take]);
            self.r.consume(if done { take + 1 } else { take });
            if self.partial.len() > MAX_LINE {
                return Err(IoError::new(ErrorKind::InvalidData, format!("a line longer than {MAX_LINE} bytes")));
            }
            if done {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|_| IoError::new(ErrorKind::InvalidData, "a line that is not UTF-8"));
            }
        }
    }
}

/// A started and prepared program.
pub struct Program {
    child: Child,
    stdin: ChildStdin,
    lines: Lines,
    ctx: Arc<Context>,
}

impl Program {
    /// Starts the program and prepares it; fails within the remote's timeout.
    pub async fn start(ctx: Arc<Context>) -> Result<Program, Error> {
        let remote = ctx.remote.clone();
        let mut cmd = Command::new(&ctx.program);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        if let Some(a) = &ctx.annex {
            cmd.current_dir(a.base_dir());
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            remote: remote.clone(),
            program: ctx.program.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::Exited { remote, why: "no pipes to the program".into() });
        };
        tokio::spawn(log_stderr(remote, stderr));
        let mut p = Program { child, stdin, lines: Lines { r: BufReader::new(stdout), partial: Vec::new() }, ctx };
        match p.next_message().await? {
            FromRemote::Version(v) if v == "1" => {}
            FromRemote::Version(v) => return Err(Error::Version { remote: p.ctx.remote.clone(), version: v }),
            other => return Err(p.unexpected(&other)),
        }
        p.send(protocol::EXTENSIONS).await?;
        match p.next_message().await? {
            FromRemote::Extensions | FromRemote::UnsupportedRequest => {}
            other => return Err(p.unexpected(&other)),
        }
        p.send("PREPARE").await?;
        match p.next_message().await? {
            FromRemote::PrepareSuccess => Ok(p),
            FromRemote::PrepareFailure(why) => Err(Error::Prepare { remote: p.ctx.remote.clone(), why }),
            other => Err(p.unexpected(&other)),
        }
    }

    fn unexpected(&self, m: &FromRemote) -> Error {
        let remote = self.ctx.remote.clone();
        match m {
            FromRemote::Error(why) => Error::Remote { remote, why: why.clone() },
            other => Error::Protocol { remote, error: protocol::ProtocolError(format!("{other:?}")) },
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), Error> {
        let remote = || self.ctx.remote.clone();
        let mut buf = line.as_bytes().to_vec();
        buf.push(b'\n');
        let write = async {
            self.stdin.write_all(&buf).await?;
            self.stdin.flush().await
        };
        match tokio::time::timeout(self.ctx.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Io { remote: remote(), what: "write to the program", source: e }),
            Err(_) => Err(Error::Stalled { remote: remote(), secs: self.ctx.timeout.as_secs() }),
        }
    }

    /// The next message that is not a request (requests are answered on the way), within
    /// `wait`; `Ok(None)` when `wait` passed first.
    async fn message_within(&mut self, wait: Duration) -> Result<Option<FromRemote>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => return Err(self.exited().await),
                Ok(Err(e)) => return Err(Error::Io { remote: self.ctx.remote.clone(), what: "read", source: e }),
            };
            let msg =
                protocol::parse(&line).map_err(|error| Error::Protocol { remote: self.ctx.remote.clone(), error })?;
            match msg {
                FromRemote::Request(req) => {
                    // Answers may read the git-annex branch (GETSTATE, GETURLS): off the
                    // runtime's workers, which serve every other transfer meanwhile.
                    let ctx = self.ctx.clone();
                    let replies = tokio::task::spawn_blocking(move || ctx.reply(&req)).await.map_err(|e| {
                        Error::Io { remote: self.ctx.remote.clone(), what: "answer", source: std::io::Error::other(e) }
                    })?;
                    for reply in replies {
                        self.send(&reply).await?;
                    }
                }
                FromRemote::Note(n) => tracing::debug!("remote {}: {n}", self.ctx.remote),
                FromRemote::Error(why) => return Err(Error::Remote { remote: self.ctx.remote.clone(), why }),
                m => return Ok(Some(m)),
            }
        }
    }

    /// The next message that is not a request, within the remote's timeout.
    async fn next_message(&mut self) -> Result<FromRemote, Error> {
        match self.message_within(self.ctx.timeout).await? {
            Some(m) => Ok(m),
            None => Err(Error::Stalled { remote: self.ctx.remote.clone(), secs: self.ctx.timeout.as_secs() }),
        }
    }

    /// Why the output ended: the program's exit status, if it comes soon.
    async fn exited(&mut self) -> Error {
        let why = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => "closed its output".to_string(),
        };
        Error::Exited { remote: self.ctx.remote.clone(), why }
    }

    /// Asks where `key` is (`WHEREIS`): the program's text, `None` when it cannot say.
    pub async fn whereis(&mut self, key: &Key) -> Result<Option<String>, Error> {
        let word = key_word(key, &self.ctx.remote)?;
        self.send(&format!("WHEREIS {word}")).await?;
        match self.next_message().await? {
            FromRemote::WhereisSuccess(text) => Ok(Some(text)),
            FromRemote::WhereisFailure | FromRemote::UnsupportedRequest => Ok(None),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Retrieves `key` into `file`. `grew` is called every [`TICK`] and on PROGRESS, and
    /// says whether the file grew since its last call: growth counts as the program being
    /// alive, so a long quiet download is not cut.
    pub async fn retrieve(
        &mut self,
        key: &Key,
        file: &Path,
        grew: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<(), Error> {
        let word = key_word(key, &self.ctx.remote)?;
        self.send(&protocol::retrieve(&word, file)).await?;
        let mut alive = Instant::now();
        loop {
            let msg = self.message_within(TICK).await?;
            if grew() || msg.is_some() {
                alive = Instant::now();
            } else if alive.elapsed() > self.ctx.timeout {
                return Err(Error::Stalled { remote: self.ctx.remote.clone(), secs: self.ctx.timeout.as_secs() });
            }
            match msg {
                None | Some(FromRemote::Progress(_)) => {}
                Some(FromRemote::TransferSuccess { key: k }) if k == word => return Ok(()),
                Some(FromRemote::TransferFailure { key: k, why }) if k == word => {
                    return Err(Error::Transfer { remote: self.ctx.remote.clone(), key: word, why });
                }
                Some(other) => return Err(self.unexpected(&other)),
            }
        }
    }
}

/// The key as one protocol word (a key with a space or newline cannot be sent).
fn key_word(key: &Key, remote: &str) -> Result<String, Error> {
    let k = key.to_string_lossy();
    if k.is_empty() || k.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(Error::Protocol {
            remote: remote.to_string(),
            error: protocol::ProtocolError(format!("key {k:?}")),
        });
    }
    Ok(k)
}

/// Logs what the program says on stderr, a line at a time, without keeping more than a line.
async fn log_stderr(remote: String, stderr: tokio::process::ChildStderr) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                tracing::info!("remote {remote} (stderr): {}", text.trim_end());
            }
        }
    }
}
