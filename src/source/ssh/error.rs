//! Why an ssh remote could not serve a range: [`SshError`], made from ssh's exit status and
//! its stderr ([`classify`]), and how the fetcher sees it (permanent or worth retrying).

use crate::source::remote::FetchError;
use std::time::Duration;

/// What went wrong reaching a repository over ssh. `dest` is the ssh destination as shown to
/// the user (`user@host port N`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    #[error("cannot run ssh: {0}")]
    Spawn(String),
    /// The server's host key is unknown to known_hosts, or changed.
    #[error("ssh {dest}: {msg}")]
    HostKey { dest: String, msg: String },
    /// No key (or agent) the server accepts; in batch mode ssh never asks for a password.
    #[error("ssh {dest}: {msg}")]
    Auth { dest: String, msg: String },
    /// ssh could not connect (refused, unreachable, unknown host, session refused).
    #[error("ssh {dest}: {msg}")]
    Connect { dest: String, msg: String },
    /// The master connection was not up in time.
    #[error("ssh {dest}: no answer in {secs} s")]
    Timeout { dest: String, secs: u64 },
    /// A session did not get through its handshake in time (a hung git-annex-shell, or
    /// server): not asked again for a while.
    #[error("git-annex-shell on {dest}: no answer in {secs} s")]
    ShellTimeout { dest: String, secs: u64 },
    /// The remote command failed: git-annex-shell missing, not a git-annex repository, …
    #[error("git-annex-shell on {dest} failed ({status}): {msg}")]
    Shell { dest: String, status: String, msg: String },
    /// git-annex-shell said something the P2P protocol does not allow here.
    #[error("git-annex-shell on {dest}: {msg}")]
    Protocol { dest: String, msg: String },
    #[error("git-annex-shell on {dest} serves repository {got}, not {want} (remote.NAME.annex-uuid)")]
    WrongUuid { dest: String, got: String, want: String },
    #[error("git-annex-shell on {dest} does not have the content of the key")]
    NotPresent { dest: String },
    #[error("git-annex-shell on {dest} offers {got} bytes from offset {offset}, but the key has {want} there")]
    WrongLength { dest: String, offset: u64, got: u64, want: u64 },
    /// The session ended in the middle of an exchange.
    #[error("ssh {dest}: connection lost{msg}")]
    Lost { dest: String, msg: String },
    #[error("ssh {dest}: no data for {secs} s")]
    Stalled { dest: String, secs: u64 },
}

impl SshError {
    /// Whether asking again cannot help until someone changes something (a key, known_hosts,
    /// the remote repository): the fetcher gives the source up for the key at once. A timeout
    /// is not: a slow login or a busy host may answer the next time (backoff, then retry).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SshError::Spawn(_)
                | SshError::HostKey { .. }
                | SshError::Auth { .. }
                | SshError::Shell { .. }
                | SshError::Protocol { .. }
                | SshError::WrongUuid { .. }
                | SshError::NotPresent { .. }
                | SshError::WrongLength { .. }
        )
    }

    /// Whether the failure is the host's, shared by every repository reached there (as opposed
    /// to one repository's, or one session's).
    pub fn is_host_wide(&self) -> bool {
        matches!(
            self,
            SshError::Spawn(_)
                | SshError::HostKey { .. }
                | SshError::Auth { .. }
                | SshError::Connect { .. }
                | SshError::Timeout { .. }
        )
    }
}

impl From<SshError> for FetchError {
    fn from(e: SshError) -> FetchError {
        match e {
            SshError::Stalled { secs, .. } => FetchError::Stalled(Duration::from_secs(secs)),
            e if e.is_permanent() => FetchError::Refused(e.to_string()),
            e => FetchError::Transport(e.to_string()),
        }
    }
}

/// Lines of ssh's stderr worth showing: its own noise (debug output, "Warning: Permanently
/// added …") left out, the last few kept, on one line.
pub fn summary(stderr: &str) -> String {
    const KEEP: usize = 4;
    const MAX: usize = 400;
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("debug")
                && !l.starts_with("Warning: Permanently added")
                && !l.starts_with("Pseudo-terminal")
                && !l.chars().all(|c| c == '@')
        })
        .collect();
    let mut s = lines[lines.len().saturating_sub(KEEP)..].join(" ");
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Why ssh (or the command it ran) ended, from its exit status (`None`: killed) and stderr.
pub fn classify(dest: &str, status: Option<i32>, stderr: &str) -> SshError {
    let has = |s: &str| stderr.contains(s);
    let msg = summary(stderr);
    let dest = dest.to_string();
    if has("Host key verification failed")
        || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("No matching host key")
        || has("host key is known") && has("strict checking")
    {
        return SshError::HostKey { dest, msg };
    }
    if has("Permission denied") || has("Too many authentication failures") || has("No more authentication methods") {
        return SshError::Auth { dest, msg };
    }
    match status {
        // ssh itself failed (it exits 255), or was killed.
        Some(255) | None => {
            let msg = if msg.is_empty() { "ssh failed without a message".to_string() } else { msg };
            SshError::Connect { dest, msg }
        }
        Some(code) => SshError::Shell {
            dest,
            status: format!("exit status {code}"),
            msg: if msg.is_empty() { "no message".into() } else { msg },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_messages_are_classified() {
        let d = "root@127.0.0.1 port 2222";
        let unknown = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n";
        let e = classify(d, Some(255), unknown);
        assert!(matches!(e, SshError::HostKey { .. }) && e.is_permanent() && e.is_host_wide());
        assert_eq!(
            e.to_string(),
            "ssh root@127.0.0.1 port 2222: No ED25519 host key is known for [127.0.0.1]:2222 and you have \
             requested strict checking. Host key verification failed."
        );
        let e = classify(d, Some(255), "root@127.0.0.1: Permission denied (publickey,password).\n");
        assert!(matches!(e, SshError::Auth { .. }), "{e:?}");
        assert!(e.to_string().ends_with("Permission denied (publickey,password)."));
        let e = classify(d, Some(255), "ssh: connect to host 127.0.0.1 port 2222: Connection refused\n");
        assert!(matches!(e, SshError::Connect { .. }) && !e.is_permanent());
        let e = classify(d, Some(127), "bash: line 1: git-annex-shell: command not found\n");
        assert!(matches!(e, SshError::Shell { .. }) && e.is_permanent() && !e.is_host_wide(), "{e:?}");
        assert!(e.to_string().contains("command not found") && e.to_string().contains("exit status 127"));
        assert!(matches!(classify(d, None, ""), SshError::Connect { .. }));
    }

    #[test]
    fn summaries_keep_the_last_lines_without_noise() {
        let s = "debug1: x\nWarning: Permanently added '[h]:1' (ED25519) to the list of known hosts.\n\n\
                 a\nb\nc\nd\ne\n";
        assert_eq!(summary(s), "b c d e");
        let long = "é".repeat(500);
        let s = summary(&long);
        assert!(s.len() <= 404 && s.ends_with('…'));
    }

    #[test]
    fn the_fetcher_sees_permanent_failures_as_such() {
        let f: FetchError = SshError::Auth { dest: "h".into(), msg: "Permission denied".into() }.into();
        assert!(f.is_permanent());
        let f: FetchError = SshError::Lost { dest: "h".into(), msg: String::new() }.into();
        assert!(!f.is_permanent());
        let f: FetchError = SshError::Stalled { dest: "h".into(), secs: 10 }.into();
        assert_eq!(f, FetchError::Stalled(Duration::from_secs(10)));
    }
}
