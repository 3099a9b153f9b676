//! Decode: x̂ = f · W_dec + b_dec.
//!
//! Contract: f [B, F], W_dec [F, d], b_dec [d] → x̂ [B, d]. Dense: FLOPs 2·B·F·d. Sparse (gather only the decoder rows
//! of firing features): FLOPs 2·nnz(f)·d, bytes ≈ 4·nnz(f)·d.

use super::gemm::{sgemm, Trans};
use super::sparse::Csr;
use super::spmm::{self, PACK};
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

/// Tokens per parallel task of the sparse decode, and the decoder rows (a slab of W_dec) that the task's tokens gather
/// from before it moves on. Within a slab the work goes a packed tile at a time: the slab's SLAB × PACK block of W_dec
/// (16 KB, contiguous) stays in L1 while every token of the task adds its pairs into registers. Gathering whole rows
/// token by token instead reads W_dec from L3 once per token (2.2 GB a step at density 0.2), and was bound by it.
const TOKEN_BLOCK: usize = 128;
const SLAB: usize = 64;

/// Sparse gather: each token adds up the decoder rows of its firing features, slab by slab of W_dec and a packed tile
/// at a time. The features stay in increasing order, so each element is one FMA chain over its pairs in order.
pub fn fast_sparse_blocked(s: Shape, csr: &Csr, w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    assert_eq!(csr.rows(), s.batch, "decode: csr rows");
    assert_eq!(xhat.len(), s.batch * s.d_in, "decode: x̂");
    let (d, fs) = (s.d_in, s.d_sae);
    if d == 0 {
        return;
    }
    let full = d / PACK * PACK;
    let packed = spmm::pack(w_dec, fs, d);
    xhat.par_chunks_mut(TOKEN_BLOCK * d)
        .enumerate()
        .for_each(|(t, out)| {
            let b0 = t * TOKEN_BLOCK;
            let n = out.len() / d;
            for row in out.chunks_mut(d) {
                row.copy_from_slice(b_dec);
            }
            let bounds = spmm::cut_slabs(&csr.ptr, &csr.idx, b0..b0 + n, SLAB, fs);
            let slabs = spmm::Slabs::new(&bounds, SLAB, fs);
            spmm::gather_block(out, d, &packed, &csr.idx, &csr.val, &slabs);
            if full < d {
                for (r, row) in out.chunks_mut(d).enumerate() {
                    let l = slabs.row(r);
                    spmm::gather_tail(&mut row[full..], w_dec, d, &csr.idx[l.clone()], &csr.val[l]);
                }
            }
        });
}

/// Sparse gather for very sparse codes (below [`super::SPARSE_DENSITY_ROWS`]): each token adds up the decoder rows of
/// its firing features, row by row. There it beats [`fast_sparse_blocked`] (whose packing of W_dec alone costs about
/// as much as the few pairs); above it the blocked gather wins (0.65× this one's time at density 0.1).
pub fn fast_sparse_rows(s: Shape, csr: &Csr, w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
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

/// The sparse gather: [`fast_sparse_rows`] for very sparse codes, [`fast_sparse_blocked`] otherwise.
pub fn fast_sparse(s: Shape, csr: &Csr, w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    match super::path_for(s, csr.idx.len(), f64::INFINITY) {
        super::Path::Rows => fast_sparse_rows(s, csr, w_dec, b_dec, xhat),
        _ => fast_sparse_blocked(s, csr, w_dec, b_dec, xhat),
    }
}

/// The fast path: by the codes' density, the row-wise gather, the blocked gather, or a GEMM.
pub fn fast(s: Shape, f: &[f32], w_dec: &[f32], b_dec: &[f32], xhat: &mut [f32]) {
    check(s, f, w_dec, b_dec, xhat);
    super::sparse::with_path(s, f, super::SPARSE_DENSITY_DECODE, |path, csr| {
        match (path, csr) {
            (super::Path::Rows, Some(csr)) => fast_sparse_rows(s, csr, w_dec, b_dec, xhat),
            (super::Path::Blocked, Some(csr)) => fast_sparse_blocked(s, csr, w_dec, b_dec, xhat),
            _ => fast_dense(s, f, w_dec, b_dec, xhat),
        }
    })
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
                let csr = Csr::from_dense(&f, fsz);
                let mut sparse = vec![f32::NAN; b * d];
                fast_sparse(s, &csr, &w, &bd, &mut sparse);
                for op in [fast_sparse_rows, fast_sparse_blocked] {
                    let mut out = vec![f32::NAN; b * d];
                    op(s, &csr, &w, &bd, &mut out);
                    assert!(rel_err(&out, &want) < 1e-5, "rows/blocked {s:?}");
                }
                let mut auto = vec![f32::NAN; b * d];
                fast(s, &f, &w, &bd, &mut auto);
                assert!(rel_err(&dense, &want) < 1e-5, "dense {s:?}");
                assert!(rel_err(&sparse, &want) < 1e-5, "sparse {s:?}");
                assert!(rel_err(&auto, &want) < 1e-5, "auto {s:?}");
            }
        }
    }
}
