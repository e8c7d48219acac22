//! A serving node gives its upload to readers before background work: a node paced at
//! 4 MiB/s streams a key to a client that marks its request as background (a keeper fetching
//! its share); a reader then asks for 4 MiB of it. While the reader's response runs, the
//! background response gets only what it had queued before (a step or two), not the half
//! of the link it would get as an equal; once the reader is done it gets the link again.
//! Both bodies are compared with the content.

mod common;

use common::swarm::{key_path, serve};
use common::{Sandbox, free_port, pseudo_random};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIZE: usize = 24 << 20;
const READ: usize = 4 << 20;
const MIB: usize = 1 << 20;

/// Sends `request` and reads the response body (after the head), noting (when, bytes so
/// far) as it goes.
fn fetch(port: u16, request: String, log: Arc<Mutex<Vec<(Instant, usize)>>>) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    let mut head_end = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(h) = head_end {
            log.lock().unwrap().push((Instant::now(), all.len() - h));
        }
    }
    let h = head_end.expect("a response head");
    let head = String::from_utf8_lossy(&all[..h]).into_owned();
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    all.split_off(h)
}

fn request(path: &str, a: usize, b: usize, background: bool) -> String {
    let prio = if background { "X-Annexfs-Priority: background\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes={a}-{}\r\n{prio}Connection: close\r\n\r\n", b - 1)
}

/// Bytes `log` received in `[from, to]`.
fn received_between(log: &[(Instant, usize)], from: Instant, to: Instant) -> usize {
    let at = |t: Instant| log.iter().take_while(|(w, _)| *w <= t).last().map_or(0, |&(_, n)| n);
    at(to) - at(from)
}

#[test]
fn readers_are_served_before_background_work() {
    let sb = Sandbox::new();
    let r = sb.init_repo("r", "r");
    let data = pseudo_random(11, SIZE);
    sb.write(&r.join("f.bin"), &data);
    sb.annex(&r, &["add", "-q", "f.bin"]);
    sb.git(&r, &["commit", "-q", "-m", "f"]);
    let key = sb.annex(&r, &["lookupkey", "f.bin"]).trim().to_string();
    let port = free_port();
    let node = serve(&sb, &r, port, &["--bwlimit", "4MiB"]);
    let kp = key_path(&key);

    let bg_log = Arc::new(Mutex::new(Vec::new()));
    let bg = {
        let (kp, log) = (kp.clone(), bg_log.clone());
        std::thread::spawn(move || fetch(port, request(&kp, 0, SIZE, true), log))
    };
    common::wait_until(Duration::from_secs(60), "the background response under way", || {
        bg_log.lock().unwrap().last().is_some_and(|&(_, n)| n >= MIB)
    });

    let fg_log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let got = fetch(port, request(&kp, SIZE - READ, SIZE, false), fg_log.clone());
    let end = Instant::now();
    assert!(got == data[SIZE - READ..], "the reader's bytes differ");

    // As equals, the background response would have had about half the link meanwhile
    // (READ bytes); it may have what was queued before the reader came.
    let during = received_between(&bg_log.lock().unwrap(), start, end);
    assert!(during <= READ / 4, "background got {during} bytes while the reader got {READ}\n{}", node.log());

    let all = bg.join().unwrap();
    assert!(all == data, "the background response's bytes differ");
    let log = node.log();
    assert!(log.contains(" (background)"), "the background request was not seen as one\n{log}");
}
