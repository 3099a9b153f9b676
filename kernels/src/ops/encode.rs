//! Encode: f = act((x − b_dec) · W_enc + b_enc), act = ReLU or TopK(ReLU(·), k).
//!
//! Contract: x [B, d], W_enc [d, F], b_enc [F], b_dec [d] → f [B, F]. FLOPs 2·B·d·F; bytes 4·(B·d + d·F + B·F).

use super::gemm::{sgemm, Trans};
use super::{Activation, Shape};
use rayon::prelude::*;
use std::cmp::Ordering;

fn check(s: Shape, x: &[f32], w_enc: &[f32], b_enc: &[f32], b_dec: &[f32], f: &[f32]) {
    assert_eq!(x.len(), s.batch * s.d_in, "encode: x");
    assert_eq!(w_enc.len(), s.d_in * s.d_sae, "encode: W_enc");
    assert_eq!(b_enc.len(), s.d_sae, "encode: b_enc");
    assert_eq!(b_dec.len(), s.d_in, "encode: b_dec");
    assert_eq!(f.len(), s.batch * s.d_sae, "encode: f");
}

/// Orders pre-activations for TopK: larger first, ties to the lower index. A total order, so the selection is unique.
fn topk_order(a: (usize, f32), b: (usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Applies the activation to one row of pre-activations in place.
fn activate_row(row: &mut [f32], act: Activation, scratch: &mut Vec<(usize, f32)>) {
    match act {
        Activation::Relu => {
            for v in row.iter_mut() {
                *v = v.max(0.0);
            }
        }
        Activation::TopK { k } => {
            let k = k.min(row.len());
            if k == row.len() {
                for v in row.iter_mut() {
                    *v = v.max(0.0);
                }
                return;
            }
            scratch.clear();
            scratch.extend(row.iter().copied().enumerate());
            if k > 0 {
                scratch.select_nth_unstable_by(k - 1, |a, b| topk_order(*a, *b));
            }
            row.fill(0.0);
            for &(i, v) in &scratch[..k] {
                row[i] = v.max(0.0);
            }
        }
    }
}

/// TopK on ReLU'd pre-activations a [B, F] already computed (TopK training with AuxK keeps a beside the codes):
/// f = the k largest of each row of a, ties to the lower index. Plain: sort each row.
pub fn topk_reference(s: Shape, k: usize, a: &[f32], f: &mut [f32]) {
    assert_eq!(a.len(), s.batch * s.d_sae, "topk: a");
    assert_eq!(f.len(), s.batch * s.d_sae, "topk: f");
    for (fr, ar) in f.chunks_mut(s.d_sae.max(1)).zip(a.chunks(s.d_sae.max(1))) {
        let mut order: Vec<(usize, f32)> = ar.iter().copied().enumerate().collect();
        order.sort_by(|x, y| topk_order(*x, *y));
        fr.fill(0.0);
        for &(i, v) in order.iter().take(k) {
            fr[i] = v.max(0.0);
        }
    }
}

/// TopK on a, rows in parallel with a partial selection (the encoder's own epilogue).
pub fn topk_fast(s: Shape, k: usize, a: &[f32], f: &mut [f32]) {
    assert_eq!(a.len(), s.batch * s.d_sae, "topk: a");
    assert_eq!(f.len(), s.batch * s.d_sae, "topk: f");
    f.copy_from_slice(a);
    f.par_chunks_mut(s.d_sae.max(1))
        .for_each_init(Vec::new, |scratch, row| {
            activate_row(row, Activation::TopK { k }, scratch)
        });
}

/// Plain loops: the definition.
pub fn reference(
    s: Shape,
    act: Activation,
    x: &[f32],
    w_enc: &[f32],
    b_enc: &[f32],
    b_dec: &[f32],
    f: &mut [f32],
) {
    check(s, x, w_enc, b_enc, b_dec, f);
    for b in 0..s.batch {
        let xb = &x[b * s.d_in..(b + 1) * s.d_in];
        let row = &mut f[b * s.d_sae..(b + 1) * s.d_sae];
        for (i, out) in row.iter_mut().enumerate() {
            let mut acc = b_enc[i];
            for j in 0..s.d_in {
                acc += (xb[j] - b_dec[j]) * w_enc[j * s.d_sae + i];
            }
            *out = acc;
        }
        match act {
            Activation::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::TopK { k } => {
                let mut order: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                order.sort_by(|a, b| topk_order(*a, *b));
                row.fill(0.0);
                for &(i, v) in order.iter().take(k) {
                    row[i] = v.max(0.0);
                }
            }
        }
    }
}

/// A GEMM for (x − b_dec) · W_enc that overwrites f, then one pass per row that adds b_enc and applies the
/// activation (the bias is not written first and read back by the GEMM: one pass over f fewer).
pub fn fast(
    s: Shape,
    act: Activation,
    x: &[f32],
    w_enc: &[f32],
    b_enc: &[f32],
    b_dec: &[f32],
    f: &mut [f32],
) {
    check(s, x, w_enc, b_enc, b_dec, f);
    let mut xc = super::scratch::take(x.len());
    xc.par_chunks_mut(s.d_in.max(1))
        .zip(x.par_chunks(s.d_in.max(1)))
        .for_each(|(row, xr)| {
            for ((v, xv), m) in row.iter_mut().zip(xr).zip(b_dec) {
                *v = xv - m;
            }
        });
    sgemm(
        s.batch,
        s.d_sae,
        s.d_in,
        &xc,
        Trans::N,
        w_enc,
        Trans::N,
        f,
        false,
    );
    f.par_chunks_mut(s.d_sae.max(1))
        .for_each_init(Vec::new, |scratch, row| {
            match act {
                Activation::Relu => {
                    for (v, b) in row.iter_mut().zip(b_enc) {
                        *v = (*v + b).max(0.0);
                    }
                    return;
                }
                Activation::TopK { .. } => {
                    for (v, b) in row.iter_mut().zip(b_enc) {
                        *v += b;
                    }
                }
            }
            activate_row(row, act, scratch)
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn fast_matches_reference() {
        let mut r = rng(2);
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            let x = randn(&mut r, b * d, 1.0);
            let w = randn(&mut r, d * fsz, 0.3);
            let be = randn(&mut r, fsz, 0.1);
            let bd = randn(&mut r, d, 0.1);
            for act in [
                Activation::Relu,
                Activation::TopK { k: 1 },
                Activation::TopK { k: 5 },
            ] {
                let mut want = vec![f32::NAN; b * fsz];
                let mut got = vec![f32::NAN; b * fsz];
                reference(s, act, &x, &w, &be, &bd, &mut want);
                fast(s, act, &x, &w, &be, &bd, &mut got);
                assert!(
                    rel_err(&got, &want) < 1e-5,
                    "{s:?} {act:?}: {}",
                    rel_err(&got, &want)
                );
                if let Activation::TopK { k } = act {
                    for row in got.chunks(fsz) {
                        assert!(row.iter().filter(|v| **v > 0.0).count() <= k);
                    }
                }
            }
        }
    }
}
