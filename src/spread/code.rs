//! The Reed–Solomon code (systematic: data pieces are stored as they are) over one stripe,
//! through reed-solomon-simd.
//!
//! The encoder and decoder keep work buffers of several pieces; one of each is kept per thread
//! and reset for the next stripe, rather than made (and its buffers zeroed) every time.

use super::SpreadError;
use super::layout::Code;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use std::cell::RefCell;

fn code_err(e: reed_solomon_simd::Error) -> SpreadError {
    SpreadError::Code(e.to_string())
}

thread_local! {
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

/// The `m` parity pieces of a stripe's `k` data pieces (all of one even length).
pub fn encode(code: Code, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, SpreadError> {
    let bytes = data.first().map_or(0, |d| d.len());
    ENCODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let enc = match slot.as_mut() {
            Some(e) => {
                e.reset(code.k, code.m, bytes).map_err(code_err)?;
                e
            }
            None => slot.insert(ReedSolomonEncoder::new(code.k, code.m, bytes).map_err(code_err)?),
        };
        for d in data {
            enc.add_original_shard(d).map_err(code_err)?;
        }
        let out = enc.encode().map_err(code_err)?;
        Ok(out.recovery_iter().map(<[u8]>::to_vec).collect())
    })
}

/// Rebuilds the missing data pieces of a stripe. `pieces[i]` is shard `i`'s piece when it was
/// read and checked, `None` when it is lost; at least `k` must be present. On return every
/// data piece (`0..k`) is present; returns how many were rebuilt.
pub fn decode(code: Code, pieces: &mut [Option<Vec<u8>>]) -> Result<usize, SpreadError> {
    let present = pieces.iter().filter(|p| p.is_some()).count();
    let missing_data: Vec<usize> = (0..code.k).filter(|&i| pieces[i].is_none()).collect();
    if missing_data.is_empty() {
        return Ok(0);
    }
    if present < code.k {
        return Err(SpreadError::TooFew { have: present, need: code.k });
    }
    let bytes = pieces.iter().flatten().next().map_or(0, Vec::len);
    let restored: Vec<(usize, Vec<u8>)> = DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dec = match slot.as_mut() {
            Some(d) => {
                d.reset(code.k, code.m, bytes).map_err(code_err)?;
                d
            }
            None => slot.insert(ReedSolomonDecoder::new(code.k, code.m, bytes).map_err(code_err)?),
        };
        for (i, p) in pieces.iter().enumerate() {
            if let Some(p) = p {
                if i < code.k {
                    dec.add_original_shard(i, p).map_err(code_err)?;
                } else {
                    dec.add_recovery_shard(i - code.k, p).map_err(code_err)?;
                }
            }
        }
        let out = dec.decode().map_err(code_err)?;
        Ok::<_, SpreadError>(out.restored_original_iter().map(|(i, p)| (i, p.to_vec())).collect())
    })?;
    for (i, p) in restored {
        if i < code.k && pieces[i].is_none() {
            pieces[i] = Some(p);
        }
    }
    if let Some(&i) = missing_data.iter().find(|&&i| pieces[i].is_none()) {
        return Err(SpreadError::Code(format!("piece {i} was not rebuilt")));
    }
    Ok(missing_data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_rebuild_the_stripe() {
        let code = Code { k: 4, m: 2 };
        let data: Vec<Vec<u8>> = (0..4u8).map(|i| (0..64u8).map(|b| b.wrapping_mul(i + 3)).collect()).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let parity = encode(code, &refs).unwrap();
        let all: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
        for a in 0..6 {
            for b in a + 1..6 {
                let mut p: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
                p[a] = None;
                p[b] = None;
                decode(code, &mut p).unwrap();
                for i in 0..4 {
                    assert_eq!(p[i].as_ref().unwrap(), &data[i], "lost {a},{b}");
                }
            }
        }
        let mut p: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
        p[0] = None;
        p[1] = None;
        p[5] = None;
        assert!(matches!(decode(code, &mut p), Err(SpreadError::TooFew { have: 3, need: 4 })));
    }
}
