//! Swarm nodes for tests: `annexfs serve` and mounts with debug logs, raw HTTP requests.

use super::Sandbox;
use super::mnt::Mount;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

pub fn wait_port(port: u16) {
    super::wait_until(Duration::from_secs(60), &format!("a listener on port {port}"), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

pub struct Served(pub Child, pub PathBuf);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Served {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

pub fn serve(sb: &Sandbox, repo: &Path, port: u16, extra: &[&str]) -> Served {
    let log = sb.path(&format!("serve-{port}.log"));
    let child = sb
        .cmd(env!("CARGO_BIN_EXE_annexfs"), repo)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--cache-dir"])
        .arg(sb.path(&format!("serve-cache-{port}")))
        .args(extra)
        .env("ANNEXFS_LOG", "annexfs=debug")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    wait_port(port);
    Served(child, log)
}

pub fn mount_debug(sb: &Sandbox, repo: &Path, name: &str, extra: &[&str]) -> Mount {
    let mp = sb.path(name);
    std::fs::create_dir_all(&mp).unwrap();
    let log = sb.path(&format!("{name}.log"));
    let out = sb
        .cmd(env!("CARGO_BIN_EXE_annexfs"), sb.dir.path())
        .env("ANNEXFS_LOG", "annexfs=debug")
        .arg("mount")
        .arg("--log-file")
        .arg(&log)
        .args(extra)
        .arg(repo)
        .arg(&mp)
        .output()
        .unwrap();
    let m = Mount { mp, log };
    assert!(out.status.success(), "mount {name}: {}\n{}", String::from_utf8_lossy(&out.stderr), m.log());
    m
}

/// A raw HTTP/1.1 exchange: (status, headers, body).
pub fn http(port: u16, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf.get(split + 4..).unwrap_or(&[]).to_vec();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, body)
}

pub fn get(port: u16, path: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    http(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{range}Connection: close\r\n\r\n"))
}

pub fn key_path(key: &str) -> String {
    let enc: String = key
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("/v1/keys/{enc}")
}

/// The `hello` of a node of the repository whose UUID `known` is, going by `uuid`.
pub fn hello(uuid: &str, known: &str) -> String {
    format!("{{\"annexfs\":1,\"uuid\":\"{uuid}\",\"known\":[\"{known}\"]}}")
}

/// `POST /v1/announce` of `url` (claiming `uuid`, when given): the status.
pub fn announce(port: u16, url: &str, uuid: Option<&str>) -> u16 {
    let body = match uuid {
        Some(u) => format!("{{\"url\":\"{url}\",\"uuid\":\"{u}\"}}"),
        None => format!("{{\"url\":\"{url}\"}}"),
    };
    http(
        port,
        &format!(
            "POST /v1/announce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}
