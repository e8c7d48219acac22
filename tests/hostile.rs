//! HTTP mirrors that misbehave on purpose, next to an honest one: every response is checked,
//! the liar's answers are refused and the read completes byte-exact from the honest mirror.

use annexfs::annex::Key;
use annexfs::annex::policy::AddressPolicy;
use annexfs::fetch::{FetchConfig, Fetcher};
use annexfs::pieces::PieceStore;
use annexfs::source::http::{HttpClient, HttpSource};
use annexfs::source::remote::RangeSource;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug)]
enum Mode {
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
}

async fn serve(listener: tokio::net::TcpListener, data: Arc<Vec<u8>>, mode: Mode) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { return };
        let data = data.clone();
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
            let range = text.lines().find_map(|l| l.strip_prefix("range: bytes=")).and_then(|r| {
                let (a, b) = r.trim().split_once('-')?;
                Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
            });
            let (a, b) = range.unwrap_or((0, data.len() - 1));
            let body = &data[a..=b.min(data.len() - 1)];
            let total = data.len();
            let head = |status: &str, extra: &str| format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n");
            let _ = match mode {
                Mode::Stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
                Mode::Honest => {
                    let h = head(
                        "206 Partial Content",
                        &format!("Content-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\n", body.len()),
                    );
                    sock.write_all(&[h.as_bytes(), body].concat()).await
                }
                Mode::IgnoresRange => {
                    let h = head("200 OK", &format!("Content-Length: {total}\r\n"));
                    sock.write_all(&[h.as_bytes(), &data[..]].concat()).await
                }
                Mode::WrongRange => {
                    let h = head(
                        "206 Partial Content",
                        &format!(
                            "Content-Range: bytes {}-{}/{total}\r\nContent-Length: {}\r\n",
                            a + 1,
                            b + 1,
                            body.len()
                        ),
                    );
                    sock.write_all(&[h.as_bytes(), body].concat()).await
                }
                Mode::Short => {
                    let h = head(
                        "206 Partial Content",
                        &format!("Content-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\n", body.len()),
                    );
                    sock.write_all(&[h.as_bytes(), &body[..body.len() / 2]].concat()).await
                }
                Mode::Endless => {
                    let h = head("206 Partial Content", &format!("Content-Range: bytes {a}-{b}/{total}\r\n"));
                    let _ = sock.write_all(h.as_bytes()).await;
                    let _ = sock.write_all(body).await;
                    loop {
                        if sock.write_all(&[0u8; 65536]).await.is_err() {
                            break;
                        }
                    }
                    Ok(())
                }
                Mode::Gzip => {
                    let h = head(
                        "206 Partial Content",
                        &format!(
                            "Content-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\nContent-Encoding: gzip\r\n",
                            body.len()
                        ),
                    );
                    sock.write_all(&[h.as_bytes(), body].concat()).await
                }
            };
        });
    }
}

fn sha256_key(data: &[u8]) -> Key {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    Key::parse_str(&format!("SHA256E-s{}--{hex}.bin", data.len())).unwrap()
}

#[test]
fn misbehaving_mirrors_are_refused_and_the_honest_one_serves() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let data: Arc<Vec<u8>> = Arc::new((0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect());
    let key = sha256_key(&data);
    let policy = AddressPolicy::from_config(Some("127.0.0.1"));
    for mode in [Mode::IgnoresRange, Mode::WrongRange, Mode::Short, Mode::Endless, Mode::Gzip, Mode::Stall] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PieceStore::open(dir.path(), 1 << 30).unwrap());
        let cfg = FetchConfig {
            stall_timeout: Duration::from_millis(700),
            read_deadline: Duration::from_secs(30),
            ..Default::default()
        };
        let fetcher = Fetcher::new(store, rt.handle().clone(), cfg);
        let client = HttpClient::new(policy.clone()).unwrap();
        let mut sources: Vec<Arc<dyn RangeSource>> = Vec::new();
        for (name, m) in [("liar", mode), ("honest", Mode::Honest)] {
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let url = format!("http://{}/f.bin", listener.local_addr().unwrap());
            rt.spawn(serve(listener, data.clone(), m));
            sources.push(Arc::new(HttpSource::new(
                format!("{name} {url}"),
                client.clone(),
                vec![url],
                data.len() as u64,
            )));
        }
        let kf = fetcher.key(&key, sources, None).unwrap();
        // Random-ish reads first (ranges not at 0), then the rest.
        for (off, len) in [(1_234_567u64, 70_000u64), (0, 3_000_000)] {
            let got = rt.block_on(kf.read(off, len)).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            let end = (off + len).min(data.len() as u64) as usize;
            assert!(got[..] == data[off as usize..end], "{mode:?}: bytes at {off}");
        }
        assert!(rt.block_on(kf.wait_verified(Duration::from_secs(10))), "{mode:?}: the whole key verifies");
        let reports = kf.source_reports();
        let liar = reports.iter().find(|r| r.name.starts_with("liar")).unwrap();
        let honest = reports.iter().find(|r| r.name.starts_with("honest")).unwrap();
        assert!(honest.bytes > 0, "{mode:?}");
        // A liar's answers never land; it is given up (or, stalled, never delivers). Two
        // misbehaviours are harmless by construction: an endless body is read only as far as
        // the range asked (then the connection is dropped), and a whole-object answer is used
        // only for a range at offset 0 (its first bytes), the source then being treated as
        // not serving ranges. The bytes were compared above either way.
        assert!(
            liar.dead.is_some() || liar.bytes == 0 || matches!(mode, Mode::IgnoresRange | Mode::Endless),
            "{mode:?}: liar {liar:?}"
        );
    }
}
