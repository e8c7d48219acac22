//! moto's S3 server (`moto_server`, from PyPI) on a loopback port, for the S3 tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server, stopped when dropped.
pub struct Moto {
    pub child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `moto_server` of the project's tools (scripts/install-deps), else the one on PATH.
pub fn binary() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    let on_path = Command::new("moto_server").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status();
    on_path.is_ok_and(|s| s.success()).then(|| PathBuf::from("moto_server"))
}

/// Whether an S3 server answers on `port` (a listing of its buckets).
pub fn answers_as_s3(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.contains("ListAllMyBucketsResult")
}

/// Starts `bin` on a free loopback port, its output to `log`, and waits until it answers
/// as an S3 server. A port found free may be taken by another test's server before moto
/// binds it (moto then exits, and what listened there may go): another port, a few times.
pub fn start(bin: &Path, log: &Path) -> Moto {
    for _ in 0..5 {
        let port = super::free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let mut m = Moto { child, port };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && m.child.try_wait().ok().flatten().is_none() {
            if answers_as_s3(port) {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("moto_server does not answer on a loopback port (log: {})", log.display());
}
