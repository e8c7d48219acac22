//! `annexfs spread codec`: the erasure code's own speed on one core, for the benchmarks.
//! Encoding is timed over whole stripes of 1 MiB pieces; decoding rebuilds `parity=` lost data
//! pieces of every stripe, and the rebuilt bytes are compared with the originals (a wrong
//! rebuild gives `"ok": false`, never a figure).

use crate::spread::{Code, code};
use std::time::Instant;

const PIECE: usize = 1 << 20;

/// Prints `{"ok": …, "value": GB/s, …}` on one line.
pub fn run(k: usize, m: usize, mib: usize, decode: bool) -> anyhow::Result<i32> {
    let code = Code::new(k, m, k + m)?;
    let stripes = (mib / k).max(1);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<Vec<u8>> = (0..k)
        .map(|_| {
            (0..PIECE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[3]
                })
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let parity = code::encode(code, &refs)?;
    let start = Instant::now();
    let mut ok = true;
    for _ in 0..stripes {
        if decode {
            let mut pieces: Vec<Option<Vec<u8>>> =
                data.iter().chain(&parity).enumerate().map(|(i, p)| (i >= m).then(|| p.clone())).collect();
            code::decode(code, &mut pieces)?;
            ok &= (0..m.min(k)).all(|i| pieces[i].as_deref() == Some(data[i].as_slice()));
        } else {
            let p = code::encode(code, &refs)?;
            ok &= p == parity;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (stripes * k * PIECE) as f64;
    let gbps = bytes / secs / 1e9;
    println!(
        "{{\"ok\": {ok}, \"value\": {gbps:.3}, \"bytes\": {bytes}, \"secs\": {secs:.4}, \"what\": \"{}\"}}",
        if decode { "decode" } else { "encode" }
    );
    Ok(if ok { 0 } else { 1 })
}
