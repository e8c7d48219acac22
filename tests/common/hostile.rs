//! A raw HTTP/1.1 server (tokio TCP) that serves one file honestly or misbehaves on purpose,
//! for the hostile-remote tests and the reliability report. Each instance is one mirror on a
//! loopback port; any of them can be throttled to a bandwidth, which then bounds every byte it
//! sends (honest or not), so that hostile and honest mirrors are limited alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// 200 with the whole object, whatever the Range.
    IgnoresRange,
    /// 206 with a Content-Range one byte off.
    WrongRange,
    /// 206 with the right headers, then half the body and a closed connection.
    Short,
    /// 206 without a length, then more bytes than asked, forever.
    Endless,
    /// Content-Encoding: gzip.
    Gzip,
    /// Accepts connections and never answers.
    Stall,
    /// Right headers, then one byte every 20 ms.
    Drip,
    /// Right headers, then nothing.
    StallAfterHeaders,
    /// Right headers, half the body, then a TCP reset.
    Reset,
    /// 302 to itself.
    RedirectLoop,
    /// 302 to an address the policy does not allow (127.0.0.2).
    RedirectDisallowed,
    /// A 1 MiB header line.
    OversizedHeaders,
    /// Right headers, zeros for a body.
    Zeros,
    /// Right headers, the right body with bits flipped.
    FlippedBits,
    /// Right headers, the bytes of another file.
    OtherFile,
    /// The range asked, with its Content-Range, under status 200 (`rclone serve s3` ≤ 1.75):
    /// not hostile, a quirk a reader copes with.
    RangeAs200,
    /// Status 200 with a Content-Range one byte off.
    WrongRangeAs200,
}

impl Mode {
    /// Every misbehaviour.
    pub const HOSTILE: [Mode; 16] = [
        Mode::IgnoresRange,
        Mode::WrongRange,
        Mode::WrongRangeAs200,
        Mode::Short,
        Mode::Endless,
        Mode::Gzip,
        Mode::Stall,
        Mode::Drip,
        Mode::StallAfterHeaders,
        Mode::Reset,
        Mode::RedirectLoop,
        Mode::RedirectDisallowed,
        Mode::OversizedHeaders,
        Mode::Zeros,
        Mode::FlippedBits,
        Mode::OtherFile,
    ];

    /// Whether the mirror sends wrong bytes with headers that look right.
    pub fn lies_about_content(self) -> bool {
        matches!(self, Mode::Zeros | Mode::FlippedBits | Mode::OtherFile)
    }
}

/// A running mirror.
pub struct Mirror {
    pub url: String,
    pub served: Arc<AtomicU64>,
}

/// Starts a mirror of `data` on a loopback port of runtime `rt`. `rate`: bytes per second
/// for the whole mirror (every byte it sends, whatever its mode), if limited.
pub fn start(rt: &tokio::runtime::Runtime, data: Arc<Vec<u8>>, mode: Mode, rate: Option<u64>) -> Mirror {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/f.bin");
    let served = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(tokio::sync::Mutex::new(tokio::time::Instant::now()));
    let s = served.clone();
    rt.spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            tokio::spawn(answer(sock, data.clone(), mode, rate, budget.clone(), s.clone(), addr.port()));
        }
    });
    Mirror { url, served }
}

/// Reads one request's head (up to the blank line); `None` when the connection ends first.
pub async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&req).into_owned())
}

async fn throttle(rate: Option<u64>, budget: &tokio::sync::Mutex<tokio::time::Instant>, n: usize) {
    let Some(rate) = rate else { return };
    let wait = {
        let mut b = budget.lock().await;
        let now = tokio::time::Instant::now();
        let at = (*b).max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
        *b = at;
        at
    };
    tokio::time::sleep_until(wait).await;
}

/// Writes `bytes` in 16 KiB chunks, each after its share of the mirror's rate.
async fn send(
    sock: &mut tokio::net::TcpStream,
    bytes: &[u8],
    rate: Option<u64>,
    budget: &tokio::sync::Mutex<tokio::time::Instant>,
) -> std::io::Result<()> {
    for c in bytes.chunks(16 << 10) {
        throttle(rate, budget, c.len()).await;
        sock.write_all(c).await?;
    }
    Ok(())
}

async fn answer(
    mut sock: tokio::net::TcpStream,
    data: Arc<Vec<u8>>,
    mode: Mode,
    rate: Option<u64>,
    budget: Arc<tokio::sync::Mutex<tokio::time::Instant>>,
    served: Arc<AtomicU64>,
    port: u16,
) {
    // Keep-alive: answer requests on this connection until it closes.
    loop {
        let Some(text) = read_head(&mut sock).await else { return };
        let text = text.to_ascii_lowercase();
        let range = text.lines().find_map(|l| l.strip_prefix("range: bytes=")).and_then(|r| {
            let (a, b) = r.trim().split_once('-')?;
            Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
        });
        let total = data.len();
        let (a, b) = range.unwrap_or((0, total - 1));
        let b = b.min(total - 1);
        let body: Vec<u8> = match mode {
            Mode::Zeros => vec![0u8; b + 1 - a],
            Mode::FlippedBits => {
                data[a..=b].iter().enumerate().map(|(i, x)| if i % 4096 == 7 { x ^ 0x10 } else { *x }).collect()
            }
            Mode::OtherFile => data[a..=b].iter().map(|x| x.wrapping_add(1)).collect(),
            _ => data[a..=b].to_vec(),
        };
        let ok_head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let close = |status: &str, extra: &str| format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n");
        let r = match mode {
            Mode::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Honest | Mode::Zeros | Mode::FlippedBits | Mode::OtherFile => {
                if sock.write_all(ok_head.as_bytes()).await.is_err() {
                    return;
                }
                let mut r = Ok(());
                for c in body.chunks(16 << 10) {
                    throttle(rate, &budget, c.len()).await;
                    r = sock.write_all(c).await;
                    if r.is_err() {
                        break;
                    }
                    served.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                r
            }
            Mode::IgnoresRange => {
                let h = close("200 OK", &format!("Content-Length: {total}\r\n"));
                send(&mut sock, &[h.as_bytes(), &data[..]].concat(), rate, &budget).await
            }
            Mode::RangeAs200 | Mode::WrongRangeAs200 => {
                let d = usize::from(mode == Mode::WrongRangeAs200);
                let h = close(
                    "200 OK",
                    &format!("Content-Range: bytes {}-{}/{total}\r\nContent-Length: {}\r\n", a + d, b + d, body.len()),
                );
                send(&mut sock, &[h.as_bytes(), &body].concat(), rate, &budget).await
            }
            Mode::WrongRange => {
                let h = close(
                    "206 Partial Content",
                    &format!("Content-Range: bytes {}-{}/{total}\r\nContent-Length: {}\r\n", a + 1, b + 1, body.len()),
                );
                send(&mut sock, &[h.as_bytes(), &body].concat(), rate, &budget).await
            }
            Mode::Short => {
                let h = close(
                    "206 Partial Content",
                    &format!("Content-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\n", body.len()),
                );
                let _ = send(&mut sock, &[h.as_bytes(), &body[..body.len() / 2]].concat(), rate, &budget).await;
                return;
            }
            Mode::Endless => {
                let h = close("206 Partial Content", &format!("Content-Range: bytes {a}-{b}/{total}\r\n"));
                let _ = send(&mut sock, &[h.as_bytes(), &body].concat(), rate, &budget).await;
                while send(&mut sock, &[0u8; 65536], rate, &budget).await.is_ok() {}
                return;
            }
            Mode::Gzip => {
                let h = close(
                    "206 Partial Content",
                    &format!(
                        "Content-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\nContent-Encoding: gzip\r\n",
                        body.len()
                    ),
                );
                send(&mut sock, &[h.as_bytes(), &body].concat(), rate, &budget).await
            }
            Mode::Drip => {
                if sock.write_all(ok_head.as_bytes()).await.is_err() {
                    return;
                }
                for x in &body {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if sock.write_all(&[*x]).await.is_err() {
                        return;
                    }
                }
                Ok(())
            }
            Mode::StallAfterHeaders => {
                let _ = sock.write_all(ok_head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Reset => {
                let _ = send(&mut sock, &[ok_head.as_bytes(), &body[..body.len() / 2]].concat(), rate, &budget).await;
                // A zero linger makes the close a reset (and never blocks, unlike a positive one).
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
                return;
            }
            Mode::RedirectLoop => {
                let h =
                    close("302 Found", &format!("Location: http://127.0.0.1:{port}/f.bin\r\nContent-Length: 0\r\n"));
                sock.write_all(h.as_bytes()).await
            }
            Mode::RedirectDisallowed => {
                let h =
                    close("302 Found", &format!("Location: http://127.0.0.2:{port}/f.bin\r\nContent-Length: 0\r\n"));
                sock.write_all(h.as_bytes()).await
            }
            Mode::OversizedHeaders => {
                let big = "x".repeat(1 << 20);
                let h = close(
                    "206 Partial Content",
                    &format!("X-Filler: {big}\r\nContent-Range: bytes {a}-{b}/{total}\r\n"),
                );
                send(&mut sock, &[h.as_bytes(), &body].concat(), rate, &budget).await
            }
        };
        let keep_alive = matches!(mode, Mode::Honest | Mode::Zeros | Mode::FlippedBits | Mode::OtherFile | Mode::Drip);
        if r.is_err() || !keep_alive {
            return;
        }
    }
}
