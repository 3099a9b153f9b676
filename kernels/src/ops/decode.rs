//! Decode: x̂ = f · W_dec + b_dec.
//!
//! Contract: f [B, F], W_dec [F, d], b_dec [d] → x̂ [B, d]. Dense: FLOPs 2·B·F·d. Sparse (gather only the decoder rows
//! of firing features): FLOPs 2·nnz(f)·d, bytes ≈ 4·nnz(f)·d.

use super::gemm::{sgemm, Trans};
use super::sparse::Csr;
use super::Shape;
use rayon::prelude::*;

fn check(s: Shape, f: &[f32], w_dec: &[f32], b_dec: &[f32], xhat: &[f32]) {
    assert_eq!(f.len(), s.batch * s.d_sae, "decode: f");
    assert_eq!(w_dec.len(), s.d_sae * s.d_in, "decode: W_dec");
    assert_eq!(b_dec.len(), s.d_in, "decode: b_dec");
    assert_eq!(xhat.len(), s.batch * s.d_in, "decode: x̂");
}

/// Plain loops: the definition.
pub fn reference(s: Shape, f: &[f32], w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    check(s, f, w_dec, b_dec, xhat);
    for b in 0..s.batch {
        for j in 0..s.d_in {
            let mut acc = b_dec[j];
            for i in 0..s.d_sae {
                acc += f[b * s.d_sae + i] * w_dec[i * s.d_in + j];
            }
            xhat[b * s.d_in + j] = acc;
        }
    }
}

/// Dense tiled GEMM on top of the broadcast bias.
pub fn fast_dense(s: Shape, f: &[f32], w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    check(s, f, w_dec, b_dec, xhat);
    xhat.par_chunks_mut(s.d_in.max(1))
        .for_each(|row| row.copy_from_slice(b_dec));
    sgemm(
        s.batch,
        s.d_in,
        s.d_sae,
        f,
        Trans::N,
        w_dec,
        Trans::N,
        xhat,
        true,
    );
}

/// Sparse gather: each token adds up the decoder rows of its firing features.
pub fn fast_sparse(s: Shape, csr: &Csr, w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    assert_eq!(csr.rows(), s.batch, "decode: csr rows");
    assert_eq!(xhat.len(), s.batch * s.d_in, "decode: x̂");
    if s.d_in == 0 {
        return;
    }
    xhat.par_chunks_mut(s.d_in)
        .enumerate()
        .for_each(|(b, row)| {
            row.copy_from_slice(b_dec);
            let (idx, val) = csr.row(b);
            super::simd(|| {
                for (&i, &v) in idx.iter().zip(val) {
                    let w = &w_dec[i as usize * s.d_in..(i as usize + 1) * s.d_in];
                    for (o, wv) in row.iter_mut().zip(w) {
                        *o += v * wv;
                    }
                }
            })
        });
}

/// The fast path: sparse when few features fire, dense otherwise.
pub fn fast(s: Shape, f: &[f32], w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    check(s, f, w_dec, b_dec, xhat);
    if super::prefers_sparse(s, f) {
        fast_sparse(s, &Csr::from_dense(f, s.d_sae), w_dec, b_dec, xhat)
    } else {
        fast_dense(s, f, w_dec, b_dec, xhat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use rand::Rng;

    #[test]
    fn dense_and_sparse_match_reference() {
        let mut r = rng(3);
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            for density in [0.02f32, 0.5] {
                let f: Vec<f32> = (0..b * fsz)
                    .map(|_| {
                        if r.random::<f32>() < density {
                            r.random::<f32>() * 2.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let w = randn(&mut r, fsz * d, 0.5);
                let bd = randn(&mut r, d, 0.1);
                let mut want = vec![f32::NAN; b * d];
                reference(s, &f, &w, &bd, &mut want);
                let mut dense = vec![f32::NAN; b * d];
                fast_dense(s, &f, &w, &bd, &mut dense);
                let mut sparse = vec![f32::NAN; b * d];
                fast_sparse(s, &Csr::from_dense(&f, fsz), &w, &bd, &mut sparse);
                let mut auto = vec![f32::NAN; b * d];
                fast(s, &f, &w, &bd, &mut auto);
                assert!(rel_err(&dense, &want) < 1e-5, "dense {s:?}");
                assert!(rel_err(&sparse, &want) < 1e-5, "sparse {s:?}");
                assert!(rel_err(&auto, &want) < 1e-5, "auto {s:?}");
            }
        }
    }
}
