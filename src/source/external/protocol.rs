//! The messages of git-annex's external special remote protocol (version 1), as annexfs
//! speaks git-annex's side: parsing what the program says, formatting what annexfs says.
//!
//! Lines are words separated by single spaces; the last parameter of a message takes the
//! rest of the line (it may contain spaces). Everything the program says is untrusted: an
//! unknown or malformed line is a [`ProtocolError`], never guessed at.

/// What annexfs tells the program it understands (no ASYNC: one request at a time).
pub const EXTENSIONS: &str = "EXTENSIONS INFO GETGITREMOTENAME";

/// A line from the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromRemote {
    Version(String),
    Extensions,
    UnsupportedRequest,
    PrepareSuccess,
    PrepareFailure(String),
    TransferSuccess {
        key: String,
    },
    TransferFailure {
        key: String,
        why: String,
    },
    Progress(u64),
    WhereisSuccess(String),
    WhereisFailure,
    /// `ERROR`: the program gives up; it is stopped.
    Error(String),
    /// `DEBUG` or `INFO`: for the log.
    Note(String),
    /// A request annexfs answers (or ignores, for writes).
    Request(Request),
}

/// A request of the program to git-annex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetConfig(String),
    GetCreds(String),
    GetUuid,
    GetGitDir,
    GetGitRemoteName,
    DirHash(String),
    DirHashLower(String),
    GetState(String),
    GetUrls {
        key: String,
        prefix: String,
    },
    GetWanted,
    /// A request that would write the repository (SETCONFIG, SETSTATE, SETURLPRESENT, …):
    /// annexfs is read-only and expects no reply to these, so it drops them.
    Write(String),
}

/// A line that is not a valid message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected message {0:?}")]
pub struct ProtocolError(pub String);

/// Requests with no reply that would change the repository.
const WRITES: &[&str] = &[
    "SETCONFIG",
    "SETCREDS",
    "SETSTATE",
    "SETURLPRESENT",
    "SETURLMISSING",
    "SETURIPRESENT",
    "SETURIMISSING",
    "SETWANTED",
];

/// Shortens a line for error messages (a program may send megabytes of garbage).
fn shown(line: &str) -> String {
    const MAX: usize = 120;
    if line.len() <= MAX {
        return line.to_string();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// Parses one line (without its newline).
pub fn parse(line: &str) -> Result<FromRemote, ProtocolError> {
    let bad = || ProtocolError(shown(line));
    let (word, rest) = match line.split_once(' ') {
        Some((w, r)) => (w, Some(r)),
        None => (line, None),
    };
    let arg = || rest.filter(|r| !r.is_empty()).map(str::to_string).ok_or_else(bad);
    let text = || rest.unwrap_or("").to_string();
    Ok(match word {
        "VERSION" => FromRemote::Version(arg()?),
        "EXTENSIONS" => FromRemote::Extensions,
        "UNSUPPORTED-REQUEST" => FromRemote::UnsupportedRequest,
        "PREPARE-SUCCESS" if rest.is_none() => FromRemote::PrepareSuccess,
        "PREPARE-FAILURE" => FromRemote::PrepareFailure(text()),
        "TRANSFER-SUCCESS" => {
            let r = arg()?;
            let key = r.strip_prefix("RETRIEVE ").filter(|k| !k.is_empty() && !k.contains(' ')).ok_or_else(bad)?;
            FromRemote::TransferSuccess { key: key.to_string() }
        }
        "TRANSFER-FAILURE" => {
            let r = arg()?;
            let r = r.strip_prefix("RETRIEVE ").ok_or_else(bad)?;
            let (key, why) = r.split_once(' ').unwrap_or((r, ""));
            if key.is_empty() {
                return Err(bad());
            }
            FromRemote::TransferFailure { key: key.to_string(), why: why.to_string() }
        }
        "PROGRESS" => FromRemote::Progress(arg()?.parse().map_err(|_| bad())?),
        "WHEREIS-SUCCESS" => FromRemote::WhereisSuccess(text()),
        "WHEREIS-FAILURE" => FromRemote::WhereisFailure,
        "ERROR" => FromRemote::Error(text()),
        "DEBUG" | "INFO" => FromRemote::Note(text()),
        "GETCONFIG" => FromRemote::Request(Request::GetConfig(arg()?)),
        "GETCREDS" => FromRemote::Request(Request::GetCreds(arg()?)),
        "GETUUID" => FromRemote::Request(Request::GetUuid),
        "GETGITDIR" => FromRemote::Request(Request::GetGitDir),
        "GETGITREMOTENAME" => FromRemote::Request(Request::GetGitRemoteName),
        "DIRHASH" => FromRemote::Request(Request::DirHash(arg()?)),
        "DIRHASH-LOWER" => FromRemote::Request(Request::DirHashLower(arg()?)),
        "GETSTATE" => FromRemote::Request(Request::GetState(arg()?)),
        "GETURLS" => {
            let r = arg()?;
            let (key, prefix) = r.split_once(' ').unwrap_or((r.as_str(), ""));
            FromRemote::Request(Request::GetUrls { key: key.to_string(), prefix: prefix.to_string() })
        }
        "GETWANTED" => FromRemote::Request(Request::GetWanted),
        w if WRITES.contains(&w) => FromRemote::Request(Request::Write(w.to_string())),
        _ => return Err(bad()),
    })
}

/// A value for a `VALUE` or `CREDS` reply: on one line, whatever the repository holds.
pub fn one_line(v: &str) -> String {
    v.replace(['\n', '\r'], " ")
}

/// `TRANSFER RETRIEVE KEY FILE`.
pub fn retrieve(key: &str, file: &std::path::Path) -> String {
    format!("TRANSFER RETRIEVE {key} {}", file.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(parse("VERSION 1"), Ok(FromRemote::Version("1".into())));
        assert_eq!(parse("PREPARE-SUCCESS"), Ok(FromRemote::PrepareSuccess));
        assert_eq!(
            parse("TRANSFER-SUCCESS RETRIEVE SHA256E-s1--ab"),
            Ok(FromRemote::TransferSuccess { key: "SHA256E-s1--ab".into() })
        );
        assert_eq!(
            parse("TRANSFER-FAILURE RETRIEVE K no such file here"),
            Ok(FromRemote::TransferFailure { key: "K".into(), why: "no such file here".into() })
        );
        assert_eq!(parse("PROGRESS 1024"), Ok(FromRemote::Progress(1024)));
        assert_eq!(parse("GETCONFIG directory"), Ok(FromRemote::Request(Request::GetConfig("directory".into()))));
        assert_eq!(
            parse("GETURLS K http://"),
            Ok(FromRemote::Request(Request::GetUrls { key: "K".into(), prefix: "http://".into() }))
        );
        assert_eq!(parse("SETSTATE K v"), Ok(FromRemote::Request(Request::Write("SETSTATE".into()))));
        assert_eq!(parse("ERROR it broke"), Ok(FromRemote::Error("it broke".into())));
        assert_eq!(parse("DEBUG"), Ok(FromRemote::Note(String::new())));
    }

    #[test]
    fn garbage_is_refused() {
        for line in ["", "HELLO", "PROGRESS lots", "TRANSFER-SUCCESS STORE K", "VERSION", "PREPARE-SUCCESS x"] {
            assert!(parse(line).is_err(), "{line:?}");
        }
        let long = "x".repeat(10_000);
        assert!(parse(&long).unwrap_err().0.len() < 200);
    }
}
