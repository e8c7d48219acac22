//! `git-annex-remote-annexfs`: the spread remote's side of git-annex's external special
//! remote protocol (version 1), on stdin/stdout.
//!
//! One request at a time (no ASYNC). Configuration comes from GETCONFIG (`stores=`, `data=`,
//! `parity=`, kept by git-annex in remote.log); INITREMOTE checks the code's limits and that
//! every store can be written, and records the code it settled on (SETCONFIG), so a mount
//! reading remote.log sees the same. Export is not offered (EXPORTSUPPORTED-FAILURE): a
//! spread remote stores keys, not trees.

use crate::spread::remote::Presence;
use crate::spread::{Spread, SpreadError};
use std::io::{BufRead, Write};
use std::sync::Arc;

struct Conn<R, W> {
    input: R,
    output: W,
    /// git-annex understands INFO (shown to the user).
    info: bool,
}

impl<R: BufRead, W: Write> Conn<R, W> {
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let line = line.replace(['\n', '\r'], " ");
        writeln!(self.output, "{line}")?;
        self.output.flush()
    }

    fn recv(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
    }

    /// GETCONFIG `name`: `None` when unset (empty).
    fn config(&mut self, name: &str) -> std::io::Result<Option<String>> {
        self.send(&format!("GETCONFIG {name}"))?;
        let v = self.value()?;
        Ok(Some(v).filter(|v| !v.is_empty()))
    }

    fn value(&mut self) -> std::io::Result<String> {
        match self.recv()? {
            Some(l) => match l.strip_prefix("VALUE") {
                Some(v) => Ok(v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => Err(std::io::Error::other(format!("expected VALUE, got {l:?}"))),
            },
            None => Err(std::io::Error::other("git-annex closed the connection")),
        }
    }

    /// A message for the user (INFO), or for git-annex's debug output.
    fn note(&mut self, text: &str) -> std::io::Result<()> {
        eprintln!("git-annex-remote-annexfs: {text}");
        if self.info { self.send(&format!("INFO {text}")) } else { self.send(&format!("DEBUG {text}")) }
    }

    fn spread(&mut self) -> std::io::Result<Result<Spread, SpreadError>> {
        let stores = self.config("stores")?.unwrap_or_default();
        let data = self.config("data")?;
        let parity = self.config("parity")?;
        Ok(Spread::from_config(&stores, data.as_deref(), parity.as_deref()))
    }
}

/// Runs the protocol until git-annex closes stdin; returns the exit code.
pub fn run() -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("ERROR cannot start a runtime: {e}");
            return 1;
        }
    };
    let stdin = std::io::stdin();
    let mut conn = Conn { input: stdin.lock(), output: std::io::stdout().lock(), info: false };
    match serve(&mut conn, &rt) {
        Ok(()) => 0,
        Err(e) => {
            let _ = conn.send(&format!("ERROR {e}"));
            1
        }
    }
}

fn serve<R: BufRead, W: Write>(conn: &mut Conn<R, W>, rt: &tokio::runtime::Runtime) -> std::io::Result<()> {
    conn.send("VERSION 1")?;
    let mut spread: Option<Arc<Spread>> = None;
    while let Some(line) = conn.recv()? {
        let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match word {
            "EXTENSIONS" => {
                conn.info = rest.split(' ').any(|e| e == "INFO");
                conn.send("EXTENSIONS INFO")?;
            }
            "LISTCONFIGS" => {
                conn.send(
                    "CONFIG stores comma-separated stores: absolute directory paths, s3://BUCKET/PREFIX?endpoint=URL",
                )?;
                conn.send("CONFIG data data pieces per stripe (default: the stores less the parity)")?;
                conn.send("CONFIG parity parity pieces per stripe (default 2 from four stores on, else 1)")?;
                conn.send("CONFIGEND")?;
            }
            "INITREMOTE" => {
                let reply = match conn.spread()? {
                    Err(e) => format!("INITREMOTE-FAILURE {e}"),
                    Ok(s) => match rt.block_on(probe(&s)) {
                        Err(e) => format!("INITREMOTE-FAILURE {e}"),
                        Ok(()) => {
                            conn.send(&format!("SETCONFIG data {}", s.code.k))?;
                            conn.send(&format!("SETCONFIG parity {}", s.code.m))?;
                            "INITREMOTE-SUCCESS".to_string()
                        }
                    },
                };
                conn.send(&reply)?;
            }
            "PREPARE" => match conn.spread()? {
                Ok(s) => {
                    spread = Some(Arc::new(s));
                    conn.send("PREPARE-SUCCESS")?;
                }
                Err(e) => conn.send(&format!("PREPARE-FAILURE {e}"))?,
            },
            "TRANSFER" => {
                let Some(s) = spread.clone() else { return Err(std::io::Error::other("TRANSFER before PREPARE")) };
                let mut parts = rest.splitn(3, ' ');
                let (dir, key, file) =
                    (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let r = match dir {
                    "STORE" => transfer_store(conn, rt, &s, key, file)?,
                    "RETRIEVE" => transfer_retrieve(conn, rt, &s, key, file)?,
                    _ => Err(format!("unknown direction {dir}")),
                };
                match r {
                    Ok(()) => conn.send(&format!("TRANSFER-SUCCESS {dir} {key}"))?,
                    Err(why) => conn.send(&format!("TRANSFER-FAILURE {dir} {key} {why}"))?,
                }
            }
            "CHECKPRESENT" => {
                let Some(s) = spread.clone() else { return Err(std::io::Error::other("CHECKPRESENT before PREPARE")) };
                match rt.block_on(s.check(rest)) {
                    Presence::Present => conn.send(&format!("CHECKPRESENT-SUCCESS {rest}"))?,
                    Presence::Absent => conn.send(&format!("CHECKPRESENT-FAILURE {rest}"))?,
                    Presence::Unknown(why) => conn.send(&format!("CHECKPRESENT-UNKNOWN {rest} {why}"))?,
                }
            }
            "REMOVE" => {
                let Some(s) = spread.clone() else { return Err(std::io::Error::other("REMOVE before PREPARE")) };
                match rt.block_on(s.remove(rest)) {
                    Ok(()) => conn.send(&format!("REMOVE-SUCCESS {rest}"))?,
                    Err(e) => conn.send(&format!("REMOVE-FAILURE {rest} {e}"))?,
                }
            }
            "WHEREIS" => {
                let Some(s) = spread.clone() else { return Err(std::io::Error::other("WHEREIS before PREPARE")) };
                match rt.block_on(s.whereis(rest)) {
                    Ok(w) => conn.send(&format!("WHEREIS-SUCCESS {w}"))?,
                    Err(_) => conn.send("WHEREIS-FAILURE")?,
                }
            }
            "GETINFO" => {
                if let Some(s) = &spread {
                    let stores: Vec<&str> = s.stores.iter().map(|e| e.spec.as_str()).collect();
                    let (k, m) = (s.code.k, s.code.m);
                    conn.send("INFOFIELD erasure code")?;
                    conn.send(&format!("INFOVALUE {k} data + {m} parity pieces per stripe"))?;
                    conn.send("INFOFIELD stores")?;
                    conn.send(&format!("INFOVALUE {}", stores.join(", ")))?;
                }
                conn.send("INFOEND")?;
            }
            "EXPORTSUPPORTED" => conn.send("EXPORTSUPPORTED-FAILURE")?,
            "ERROR" => return Err(std::io::Error::other(format!("git-annex: {rest}"))),
            _ => conn.send("UNSUPPORTED-REQUEST")?,
        }
    }
    Ok(())
}

/// INITREMOTE's check: every store takes a write.
async fn probe(s: &Spread) -> Result<(), SpreadError> {
    for e in &s.stores {
        e.store.probe().await.map_err(|x| SpreadError::Store(format!("store {} cannot be written: {x}", e.spec)))?;
    }
    Ok(())
}

type Transfer = Result<(), String>;

fn transfer_store<R: BufRead, W: Write>(
    conn: &mut Conn<R, W>,
    rt: &tokio::runtime::Runtime,
    s: &Spread,
    key: &str,
    file: &str,
) -> std::io::Result<Transfer> {
    let mut sent = Ok(());
    let mut progress = |n: u64| {
        if sent.is_ok() {
            sent = conn.send(&format!("PROGRESS {n}"));
        }
    };
    let r = rt.block_on(s.store_key(key, std::path::Path::new(file), &mut progress));
    sent?;
    Ok(r.map_err(|e| e.to_string()))
}

fn transfer_retrieve<R: BufRead, W: Write>(
    conn: &mut Conn<R, W>,
    rt: &tokio::runtime::Runtime,
    s: &Arc<Spread>,
    key: &str,
    file: &str,
) -> std::io::Result<Transfer> {
    let m = match rt.block_on(s.manifest(key)) {
        Ok(m) => m,
        Err((e, _, _)) => return Ok(Err(e.to_string())),
    };
    let reader = Arc::new(crate::spread::reader::KeyReader::new(s, m));
    let mut out = match std::fs::File::create(file) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => return Ok(Err(format!("{file}: {e}"))),
    };
    let mut sent = Ok(());
    let mut progress = |n: u64| {
        if sent.is_ok() {
            sent = conn.send(&format!("PROGRESS {n}"));
        }
    };
    let r = rt.block_on(reader.retrieve(&mut out, &mut progress));
    sent?;
    let r = r.map_err(|e| e.to_string()).and_then(|()| out.flush().map_err(|e| e.to_string()));
    let report = reader.report();
    if !report.is_empty() {
        conn.note(&format!("{key}: {report}"))?;
    }
    Ok(r.map_err(|e| if report.is_empty() { e } else { format!("{e} ({report})") }))
}
