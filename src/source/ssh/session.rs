//! One P2P protocol session with `git-annex-shell p2pstdio` (git-annex's
//! `doc/design/p2p_protocol.mdwn`), as git-annex's own client speaks it:
//!
//! - git-annex-shell authenticates nobody (ssh did): it starts with `AUTH-SUCCESS UUID`, its
//!   repository's UUID, which must be the remote's. (The client sends no `AUTH`: p2pstdio
//!   would answer `ERROR unexpected command`.)
//! - `VERSION 1` → `VERSION n` (`ERROR` from a server older than versions: version 0).
//! - `GET OFFSET ASSOCIATEDFILE KEY` (the associated file is empty here) → `DATA LEN`, LEN
//!   bytes (the content from OFFSET to its end), then in version 1 `VALID` or `INVALID`; the
//!   client answers `SUCCESS` or `FAILURE`. A server without the content sends `DATA 0` and
//!   `INVALID`.
//!
//! A session serves one GET at a time and a GET cannot be stopped: a session whose range
//! ended before its DATA did is killed, unless little is left (then it is read to the end
//! and the session kept).

use super::command::{StderrTail, command};
use super::error::{SshError, classify, summary};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::OwnedSemaphorePermit;

/// The highest protocol version spoken (VALID/INVALID after DATA).
const PROTOCOL_VERSION: u32 = 1;
/// Longest protocol line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Opening a session over a master connection (ssh, git-annex-shell starting, the version
/// exchange) takes at most this; less than the fetcher's stall timeout, so that a server that
/// never answers is known as such (and remembered) instead of stalling every request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
/// No byte from the server for this long while one is due: the session is given up.
pub const STALL_TIMEOUT: Duration = crate::source::http::STALL_TIMEOUT;

/// A running `ssh … git-annex-shell p2pstdio`, past the version exchange.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: StderrTail,
    version: u32,
    /// The ssh destination, for messages.
    dest: String,
    /// A place among the host's sessions, given back when the session ends.
    _slot: OwnedSemaphorePermit,
}

impl Session {
    /// Runs `ssh ARGS COMMAND` and does the handshake: the server must be `remote_uuid`.
    pub async fn open(
        args: &[String],
        remote_command: &str,
        remote_uuid: &str,
        dest: &str,
        slot: OwnedSemaphorePermit,
    ) -> Result<Session, SshError> {
        let mut all = args.to_vec();
        all.push(remote_command.to_string());
        let mut child = command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SshError::Spawn(e.to_string()))?;
        let stderr = StderrTail::capture(child.stderr.take());
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SshError::Spawn("no pipes to ssh".into()));
        };
        widen_pipe(&stdout);
        let mut s = Session {
            child,
            stdin,
            stdout: BufReader::with_capacity(256 * 1024, stdout),
            stderr,
            version: 0,
            dest: dest.to_string(),
            _slot: slot,
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, s.handshake(remote_uuid)).await {
            Ok(Ok(())) => Ok(s),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SshError::ShellTimeout { dest: dest.to_string(), secs: HANDSHAKE_TIMEOUT.as_secs() }),
        }
    }

    async fn handshake(&mut self, remote_uuid: &str) -> Result<(), SshError> {
        let Some(line) = self.line().await? else { return Err(self.ended().await) };
        match line.split_once(' ') {
            Some(("AUTH-SUCCESS", uuid)) if uuid.trim() == remote_uuid => {}
            Some(("AUTH-SUCCESS", uuid)) => {
                return Err(SshError::WrongUuid {
                    dest: self.dest.clone(),
                    got: uuid.trim().to_string(),
                    want: remote_uuid.to_string(),
                });
            }
            _ => return Err(self.protocol(format!("expected AUTH-SUCCESS, got {:?}", clip(&line)))),
        }
        self.send(format!("VERSION {PROTOCOL_VERSION}\n").as_bytes()).await?;
        let Some(line) = self.line().await? else { return Err(self.ended().await) };
        self.version = match line.split_once(' ') {
            Some(("VERSION", v)) => match v.trim().parse::<u32>() {
                Ok(v) => v.min(PROTOCOL_VERSION),
                Err(_) => return Err(self.protocol(format!("bad version {:?}", clip(v)))),
            },
            // A server that predates versions.
            _ if line.starts_with("ERROR") => 0,
            _ => return Err(self.protocol(format!("expected VERSION, got {:?}", clip(&line)))),
        };
        Ok(())
    }

    /// Asks for the content of `key` from `offset` to its end; returns how many bytes the
    /// server will send (its `DATA` length).
    pub async fn get(&mut self, offset: u64, key: &[u8]) -> Result<u64, SshError> {
        let mut msg = format!("GET {offset}  ").into_bytes();
        msg.extend_from_slice(key);
        msg.push(b'\n');
        self.send(&msg).await?;
        let line = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.line()).await {
            Err(_) => return Err(SshError::Stalled { dest: self.dest.clone(), secs: HANDSHAKE_TIMEOUT.as_secs() }),
            Ok(r) => r?,
        };
        let Some(line) = line else { return Err(self.lost().await) };
        match line.split_once(' ') {
            Some(("DATA", n)) => {
                n.trim().parse::<u64>().map_err(|_| self.protocol(format!("bad DATA length {:?}", clip(n))))
            }
            _ => Err(self.protocol(format!("expected DATA, got {:?}", clip(&line)))),
        }
    }

    /// Reads DATA bytes into `buf`; returns how many (never 0).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, SshError> {
        match tokio::time::timeout(STALL_TIMEOUT, self.stdout.read(buf)).await {
            Err(_) => Err(SshError::Stalled { dest: self.dest.clone(), secs: STALL_TIMEOUT.as_secs() }),
            Ok(Ok(0)) => Err(self.lost().await),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(SshError::Lost { dest: self.dest.clone(), msg: format!(": {e}") }),
        }
    }

    /// Reads and throws away `n` DATA bytes.
    pub async fn skip(&mut self, mut n: u64) -> Result<(), SshError> {
        let mut buf = vec![0u8; 64 * 1024];
        while n > 0 {
            let want = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            let got = self.read(&mut buf[..want]).await?;
            n -= got as u64;
        }
        Ok(())
    }

    /// After the last DATA byte: the server's `VALID` or `INVALID` (version 1), answered with
    /// `SUCCESS` or `FAILURE`. Returns whether the content was valid.
    pub async fn finish(&mut self) -> Result<bool, SshError> {
        let valid = if self.version >= 1 {
            let line = match tokio::time::timeout(STALL_TIMEOUT, self.line()).await {
                Err(_) => return Err(SshError::Stalled { dest: self.dest.clone(), secs: STALL_TIMEOUT.as_secs() }),
                Ok(r) => r?,
            };
            match line.as_deref() {
                Some("VALID") => true,
                Some("INVALID") => false,
                Some(other) => return Err(self.protocol(format!("expected VALID or INVALID, got {:?}", clip(other)))),
                None => return Err(self.lost().await),
            }
        } else {
            true
        };
        self.send(if valid { b"SUCCESS\n" } else { b"FAILURE\n" }).await?;
        Ok(valid)
    }

    /// Whether the ssh process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn send(&mut self, msg: &[u8]) -> Result<(), SshError> {
        let r = async {
            self.stdin.write_all(msg).await?;
            self.stdin.flush().await
        }
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(_) => Err(self.lost().await),
        }
    }

    /// The next protocol line, without its newline; `None` at the end of the output.
    async fn line(&mut self) -> Result<Option<String>, SshError> {
        let mut line = Vec::new();
        loop {
            let buf = match self.stdout.fill_buf().await {
                Ok(b) => b,
                Err(e) => return Err(SshError::Lost { dest: self.dest.clone(), msg: format!(": {e}") }),
            };
            if buf.is_empty() {
                return if line.is_empty() { Ok(None) } else { Err(self.lost().await) };
            }
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buf[..i]);
                self.stdout.consume(i + 1);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            let n = buf.len();
            line.extend_from_slice(buf);
            self.stdout.consume(n);
            if line.len() > MAX_LINE {
                return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
            }
        }
    }

    /// Why the session ended before the handshake was over: ssh's status and stderr.
    async fn ended(&mut self) -> SshError {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(s)) => s.code(),
            _ => None,
        };
        let text = self.stderr.text(Duration::from_millis(500)).await;
        classify(&self.dest, status, &text)
    }

    /// The session ended in the middle of an exchange: what ssh said about it.
    async fn lost(&mut self) -> SshError {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
        let text = summary(&self.stderr.text(Duration::from_millis(200)).await);
        let msg = if text.is_empty() { String::new() } else { format!(": {text}") };
        SshError::Lost { dest: self.dest.clone(), msg }
    }

    fn protocol(&self, msg: String) -> SshError {
        SshError::Protocol { dest: self.dest.clone(), msg }
    }
}

/// Bytes the pipe from ssh holds ([`widen_pipe`]).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Lets the pipe from ssh hold [`PIPE_BYTES`] instead of the default 64 KiB: at tens of MB/s
/// 64 KiB is a few milliseconds, and whenever the fetcher's task is late to read (a busy
/// machine) ssh stops reading its connection and the transfer stalls for a while. Best
/// effort: a system that refuses (a lower `fs.pipe-max-size`) keeps the default.
fn widen_pipe(out: &ChildStdout) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this session owns; no memory is passed.
    let r = unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    if r < 0 {
        tracing::debug!("ssh pipe stays at its default size: {}", std::io::Error::last_os_error());
    }
}

/// At most 200 bytes of something a server sent, for a message.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
