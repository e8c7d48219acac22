//! The Reed–Solomon code (systematic: data pieces are stored as they are) over one stripe,
//! through reed-solomon-simd.

use super::SpreadError;
use super::layout::Code;

fn code_err(e: reed_solomon_simd::Error) -> SpreadError {
    SpreadError::Code(e.to_string())
}

/// The `m` parity pieces of a stripe's `k` data pieces (all of one even length).
pub fn encode(code: Code, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, SpreadError> {
    reed_solomon_simd::encode(code.k, code.m, data).map_err(code_err)
}

/// Rebuilds the missing data pieces of a stripe. `pieces[i]` is shard `i`'s piece when it was
/// read and checked, `None` when it is lost; at least `k` must be present. On return every
/// data piece (`0..k`) is present.
pub fn decode(code: Code, pieces: &mut [Option<Vec<u8>>]) -> Result<usize, SpreadError> {
    let present = pieces.iter().filter(|p| p.is_some()).count();
    let missing_data: Vec<usize> = (0..code.k).filter(|&i| pieces[i].is_none()).collect();
    if missing_data.is_empty() {
        return Ok(0);
    }
    if present < code.k {
        return Err(SpreadError::TooFew { have: present, need: code.k });
    }
    let original = (0..code.k).filter_map(|i| pieces[i].as_ref().map(|p| (i, p)));
    let recovery = (0..code.m).filter_map(|j| pieces[code.k + j].as_ref().map(|p| (j, p)));
    let mut restored = reed_solomon_simd::decode(code.k, code.m, original, recovery).map_err(code_err)?;
    for &i in &missing_data {
        let p = restored.remove(&i).ok_or_else(|| SpreadError::Code(format!("piece {i} was not rebuilt")))?;
        pieces[i] = Some(p);
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
