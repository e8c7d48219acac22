//! Python web servers on loopback that do not serve byte ranges, for the tests of web sources
//! that ignore `Range` (tests/nonrange.rs) and of keys without a size (tests/sizeless.rs).
//!
//! - [`PyHttp::plain`]: `python3 -m http.server`, which answers every GET with 200 and the
//!   whole file (with its Content-Length) and HEAD with the length;
//! - [`PyHttp::slow`]: the same handler, sending at most `rate` bytes/s;
//! - [`PyHttp::chunked`]: 200 with `Transfer-Encoding: chunked` and no length anywhere (HEAD
//!   too), ignoring Range: the size cannot be learnt before the end of the body
//!   ([`PyHttp::chunked_slow`]: at most `rate` bytes/s).
//!
//! Included with `#[path]` by the test files that use it.

#![allow(dead_code)]

use crate::common::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PyHttp {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
}

impl Drop for PyHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SCRIPT: &str = r#"
import http.server, sys, time, os
mode, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0

class Slow(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, src, dst):
        while True:
            b = src.read(16384)
            if not b:
                break
            dst.write(b)
            time.sleep(len(b) / rate)

class Chunked(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def head(self):
        path = os.path.join(root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        return path
    def do_HEAD(self):
        self.head()
    def do_GET(self):
        path = self.head()
        if path is None:
            return
        with open(path, "rb") as f:
            while True:
                b = f.read(50000)
                if not b:
                    break
                self.wfile.write(b"%x\r\n" % len(b) + b + b"\r\n")
                if rate:
                    time.sleep(len(b) / rate)
        self.wfile.write(b"0\r\n\r\n")

handler = {"slow": Slow, "chunked": Chunked}[mode]
class Quiet(handler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.command, self.path))
        sys.stderr.flush()
http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet).serve_forever()
"#;

/// Whether python3 is installed.
pub fn available() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

impl PyHttp {
    fn spawn(mut cmd: Command, port: u16, log: &Path) -> PyHttp {
        let err = std::fs::File::create(log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(err).spawn().expect("run python3");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "python server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PyHttp { child, port, log: log.to_path_buf() }
    }

    /// `python3 -m http.server` serving `root`; its log goes to `log`.
    pub fn plain(root: &Path, log: &Path) -> PyHttp {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"]).arg(root);
        PyHttp::spawn(cmd, port, log)
    }

    fn script(mode: &str, root: &Path, log: &Path, rate: Option<u64>) -> PyHttp {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SCRIPT, mode, &port.to_string()]).arg(root);
        if let Some(r) = rate {
            cmd.arg(r.to_string());
        }
        PyHttp::spawn(cmd, port, log)
    }

    /// The http.server handler sending at most `rate` bytes/s per response.
    pub fn slow(root: &Path, log: &Path, rate: u64) -> PyHttp {
        PyHttp::script("slow", root, log, Some(rate))
    }

    /// A server that sends every body chunked, with no length anywhere.
    pub fn chunked(root: &Path, log: &Path) -> PyHttp {
        PyHttp::script("chunked", root, log, None)
    }

    /// The same, sending at most `rate` bytes/s per response.
    pub fn chunked_slow(root: &Path, log: &Path, rate: u64) -> PyHttp {
        PyHttp::script("chunked", root, log, Some(rate))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// The request lines it logged (`GET /path`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
