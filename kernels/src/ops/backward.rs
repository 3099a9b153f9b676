//! Backward: the gradients of loss = (1/B)·Σ_b ‖x̂_b − x_b‖² + λ·(1/B)·Σ_b Σ_i f_bi with respect to every parameter.
//!
//! Contract: x [B, d], f [B, F] (the encode output), x̂ [B, d] (the decode output), the weights, λ (0 for TopK)
//! → ∂W_enc [d, F], ∂b_enc [F], ∂W_dec [F, d], ∂b_dec [d] (overwritten). Gradients flow only through firing features
//! (f > 0): the ReLU mask, and for TopK the selection.
//! Dense FLOPs ≈ 6·B·d·F (three GEMMs); sparse (when f is sparse) ≈ 6·nnz(f)·d.

use super::gemm::{sgemm, Trans};
use super::sparse::Csr;
use super::spmm::{self, PACK};
use super::Shape;
use rayon::prelude::*;

/// The parameters of a dictionary, borrowed.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    pub w_enc: &'a [f32],
    pub b_enc: &'a [f32],
    pub w_dec: &'a [f32],
    pub b_dec: &'a [f32],
}

/// Gradient buffers, one per parameter, overwritten by the op.
pub struct GradsMut<'a> {
    pub w_enc: &'a mut [f32],
    pub b_enc: &'a mut [f32],
    pub w_dec: &'a mut [f32],
    pub b_dec: &'a mut [f32],
}

fn check(s: Shape, x: &[f32], f: &[f32], xhat: &[f32], w: &Weights, g: &GradsMut) {
    assert_eq!(x.len(), s.batch * s.d_in, "backward: x");
    assert_eq!(f.len(), s.batch * s.d_sae, "backward: f");
    assert_eq!(xhat.len(), s.batch * s.d_in, "backward: x̂");
    assert_eq!(w.w_enc.len(), s.d_in * s.d_sae, "backward: W_enc");
    assert_eq!(w.b_enc.len(), s.d_sae, "backward: b_enc");
    assert_eq!(w.w_dec.len(), s.d_sae * s.d_in, "backward: W_dec");
    assert_eq!(w.b_dec.len(), s.d_in, "backward: b_dec");
    assert_eq!(g.w_enc.len(), s.d_in * s.d_sae, "backward: ∂W_enc");
    assert_eq!(g.b_enc.len(), s.d_sae, "backward: ∂b_enc");
    assert_eq!(g.w_dec.len(), s.d_sae * s.d_in, "backward: ∂W_dec");
    assert_eq!(g.b_dec.len(), s.d_in, "backward: ∂b_dec");
}

/// Plain loops: the definition.
pub fn reference(s: Shape, x: &[f32], f: &[f32], xhat: &[f32], l1: f32, w: Weights, g: GradsMut) {
    check(s, x, f, xhat, &w, &g);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    let inv_b = 1.0 / bsz.max(1) as f32;
    let dxh: Vec<f32> = (0..bsz * d)
        .map(|p| 2.0 * (xhat[p] - x[p]) * inv_b)
        .collect();
    let mut dpre = vec![0.0f32; bsz * fs];
    for b in 0..bsz {
        for i in 0..fs {
            if f[b * fs + i] > 0.0 {
                let mut acc = l1 * inv_b;
                for j in 0..d {
                    acc += dxh[b * d + j] * w.w_dec[i * d + j];
                }
                dpre[b * fs + i] = acc;
            }
        }
    }
    for i in 0..fs {
        for j in 0..d {
            let mut gd = 0.0f32;
            let mut ge = 0.0f32;
            for b in 0..bsz {
                gd += f[b * fs + i] * dxh[b * d + j];
                ge += (x[b * d + j] - w.b_dec[j]) * dpre[b * fs + i];
            }
            g.w_dec[i * d + j] = gd;
            g.w_enc[j * fs + i] = ge;
        }
        g.b_enc[i] = (0..bsz).map(|b| dpre[b * fs + i]).sum();
    }
    for j in 0..d {
        let mut acc: f32 = (0..bsz).map(|b| dxh[b * d + j]).sum();
        for i in 0..fs {
            acc -= w.w_enc[j * fs + i] * g.b_enc[i];
        }
        g.b_dec[j] = acc;
    }
}

/// 2·(x̂ − x)/B, and x − b_dec, both [B, d], in buffers reused from step to step.
pub(super) fn residuals(
    s: Shape,
    x: &[f32],
    xhat: &[f32],
    b_dec: &[f32],
) -> (super::scratch::Scratch, super::scratch::Scratch) {
    let inv_b = 1.0 / s.batch.max(1) as f32;
    let mut dxh = super::scratch::take(x.len());
    let mut xc = super::scratch::take(x.len());
    let d = s.d_in.max(1);
    dxh.par_chunks_mut(d)
        .zip(xc.par_chunks_mut(d))
        .enumerate()
        .for_each(|(b, (dr, cr))| {
            let xb = &x[b * s.d_in..(b + 1) * s.d_in];
            let hb = &xhat[b * s.d_in..(b + 1) * s.d_in];
            for j in 0..s.d_in {
                dr[j] = 2.0 * (hb[j] - xb[j]) * inv_b;
                cr[j] = xb[j] - b_dec[j];
            }
        });
    (dxh, xc)
}

/// Column sums of a row-major [rows, cols] matrix, in row order (deterministic).
pub(super) fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    if cols == 0 {
        return;
    }
    for row in m.chunks(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// ∂b_dec = Σ_b ∂x̂_b − W_enc · ∂b_enc.
pub(super) fn b_dec_grad(s: Shape, dxh: &[f32], w_enc: &[f32], g_b_enc: &[f32], out: &mut [f32]) {
    column_sums(dxh, s.d_in, out);
    if s.d_sae == 0 {
        return;
    }
    out.par_iter_mut().enumerate().for_each(|(j, o)| {
        let row = &w_enc[j * s.d_sae..(j + 1) * s.d_sae];
        *o -= super::dot(row, g_b_enc);
    });
}

/// Three GEMMs.
pub fn fast_dense(s: Shape, x: &[f32], f: &[f32], xhat: &[f32], l1: f32, w: Weights, g: GradsMut) {
    check(s, x, f, xhat, &w, &g);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    let (dxh, xc) = residuals(s, x, xhat, w.b_dec);
    // ∂W_dec = fᵀ · ∂x̂
    sgemm(fs, d, bsz, f, Trans::T, &dxh, Trans::N, g.w_dec, false);
    // ∂f = ∂x̂ · W_decᵀ, then the mask and the L1 term.
    let mut dpre = vec![0.0f32; bsz * fs];
    sgemm(
        bsz,
        fs,
        d,
        &dxh,
        Trans::N,
        w.w_dec,
        Trans::T,
        &mut dpre,
        false,
    );
    let l1b = l1 / bsz.max(1) as f32;
    dpre.par_iter_mut().zip(f.par_iter()).for_each(|(dp, &fv)| {
        *dp = if fv > 0.0 { *dp + l1b } else { 0.0 };
    });
    // ∂W_enc = (x − b_dec)ᵀ · ∂pre
    sgemm(d, fs, bsz, &xc, Trans::T, &dpre, Trans::N, g.w_enc, false);
    column_sums(&dpre, fs, g.b_enc);
    b_dec_grad(s, &dxh, w.w_enc, g.b_enc, g.b_dec);
}

/// Features per parallel task of the sparse backward: their ∂W_dec rows and ∂W_enc columns (built as rows, then
/// written into ∂W_enc [d, F] as runs of FEATURE_BLOCK contiguous floats), 2 × 147 KB at d 576, stay in L2.
const FEATURE_BLOCK: usize = 128;

/// Features per parallel task of the row-wise sparse backward: their ∂W_enc columns are built as rows in a small buffer
/// (ROWS_FEATURE_BLOCK × d floats, in L2) and written into ∂W_enc [d, F] as runs of contiguous floats.
const ROWS_FEATURE_BLOCK: usize = 32;

/// Tokens that a task gathers from before it moves on: each packed tile of ∂x̂ and x − b_dec over them (16 KB) stays in
/// L1 while every feature of the task adds its pairs.
const TOKEN_SLAB: usize = 64;

/// Every firing pair regrouped by block of FEATURE_BLOCK features: the blocks one after another, each in token order.
/// This is the first half of a transpose, written as one sequential run per (token, block) instead of a scattered
/// store per pair (a plain transpose measured 21 ms a step at density 0.3, and per-block walks over the tokens'
/// scattered spans 30 ms).
struct ByBlock {
    /// Block k's pairs are `start[k]..start[k + 1]`.
    start: Vec<usize>,
    tok: Vec<u32>,
    feat: Vec<u32>,
    fv: super::scratch::Scratch,
}

/// A buffer that parallel tasks write through, each at positions no other task writes: ∂W_enc's columns of a feature
/// block, the runs of a (token, block) in [`by_block`].
struct Disjoint<T>(*mut T, usize);
// SAFETY: used only where every task writes its own positions (the callers say which).
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T: Copy> Disjoint<T> {
    fn new(v: &mut [T]) -> Self {
        Disjoint(v.as_mut_ptr(), v.len())
    }
    /// # Safety
    /// No other task may write or read `at` meanwhile.
    unsafe fn write(&self, at: usize, value: T) {
        assert!(at < self.1, "Disjoint: out of bounds");
        self.0.add(at).write(value)
    }
    /// Positions `at..at + n`.
    ///
    /// # Safety
    /// No other task may write or read them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, n: usize) -> &mut [T] {
        assert!(at + n <= self.1, "Disjoint: out of bounds");
        std::slice::from_raw_parts_mut(self.0.add(at), n)
    }
}

fn by_block(csr: &Csr, fs: usize) -> ByBlock {
    let (bsz, blocks) = (csr.rows(), fs.div_ceil(FEATURE_BLOCK));
    let w = blocks + 1;
    let cuts: Vec<usize> = (0..bsz)
        .into_par_iter()
        .flat_map_iter(|b| spmm::cut_slabs(&csr.ptr, &csr.idx, b..b + 1, FEATURE_BLOCK, fs))
        .collect();
    let len = |b: usize, k: usize| cuts[b * w + k + 1] - cuts[b * w + k];
    let mut start = vec![0usize; w];
    for b in 0..bsz {
        for k in 0..blocks {
            start[k + 1] += len(b, k);
        }
    }
    for k in 0..blocks {
        start[k + 1] += start[k];
    }
    // Where token b's pairs of block k go.
    let mut pos = vec![0usize; bsz * blocks];
    let mut run = start[..blocks].to_vec();
    for b in 0..bsz {
        for k in 0..blocks {
            pos[b * blocks + k] = run[k];
            run[k] += len(b, k);
        }
    }
    let nnz = csr.idx.len();
    let (mut tok, mut feat) = (vec![0u32; nnz], vec![0u32; nnz]);
    let mut fv = super::scratch::take(nnz);
    let (pt, pf, pv) = (
        Disjoint::new(&mut tok),
        Disjoint::new(&mut feat),
        Disjoint::new(&mut fv),
    );
    (0..bsz).into_par_iter().for_each(|b| {
        for k in 0..blocks {
            let (e0, p0) = (cuts[b * w + k], pos[b * blocks + k]);
            for j in 0..len(b, k) {
                // SAFETY: positions pos[b, k] .. + len(b, k) belong to token b's pairs of block k alone (the runs
                // of all (token, block) tile 0..nnz), so no two tasks write the same position.
                unsafe {
                    pt.write(p0 + j, b as u32);
                    pf.write(p0 + j, csr.idx[e0 + j]);
                    pv.write(p0 + j, csr.val[e0 + j]);
                }
            }
        }
    });
    ByBlock {
        start,
        tok,
        feat,
        fv,
    }
}

/// The firing pairs of one block's features, by feature, each in token order: the second half of the transpose, a
/// counting sort of the block's run (in L2).
struct Columns {
    ptr: Vec<usize>,
    tok: Vec<u32>,
    fv: super::scratch::Scratch,
}

fn columns(bb: &ByBlock, blk: usize, n: usize) -> Columns {
    let (a, z) = (bb.start[blk], bb.start[blk + 1]);
    let i0 = blk * FEATURE_BLOCK;
    let mut ptr = vec![0usize; n + 1];
    for &i in &bb.feat[a..z] {
        ptr[i as usize - i0 + 1] += 1;
    }
    for k in 0..n {
        ptr[k + 1] += ptr[k];
    }
    let mut next = ptr.clone();
    let mut tok = vec![0u32; z - a];
    let mut fv = super::scratch::take(z - a);
    for e in a..z {
        let slot = &mut next[bb.feat[e] as usize - i0];
        tok[*slot] = bb.tok[e];
        fv[*slot] = bb.fv[e];
        *slot += 1;
    }
    Columns { ptr, tok, fv }
}

/// Touches only the firing (token, feature) pairs: the decoder-weight gradient of silent features is zero, and so is
/// every encoder gradient of a silent feature. Per block of features, in parallel: each feature's ∂W_dec row and
/// ∂W_enc column from its firing tokens, gathered from packed tiles of ∂x̂ and x − b_dec (see `spmm`).
pub fn fast_sparse_blocked(
    s: Shape,
    x: &[f32],
    f: &[f32],
    xhat: &[f32],
    l1: f32,
    w: Weights,
    g: GradsMut,
) {
    super::sparse::with_csr(f, s.d_sae, |csr| blocked(s, x, f, csr, xhat, l1, w, g))
}

/// [`fast_sparse_blocked`] given the CSR form of `f`.
#[allow(clippy::too_many_arguments)]
fn blocked(
    s: Shape,
    x: &[f32],
    f: &[f32],
    csr: &Csr,
    xhat: &[f32],
    l1: f32,
    w: Weights,
    g: GradsMut,
) {
    check(s, x, f, xhat, &w, &g);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    if d == 0 || fs == 0 || bsz == 0 {
        return fast_dense(s, x, f, xhat, l1, w, g);
    }
    let (dxh, xc) = residuals(s, x, xhat, w.b_dec);
    let l1b = l1 / bsz as f32;
    let (pd, px, pw) = (
        spmm::pack(&dxh, bsz, d),
        spmm::pack(&xc, bsz, d),
        spmm::pack(w.w_dec, fs, d),
    );
    let bb = by_block(csr, fs);
    let full = d / PACK * PACK;
    let genc = Disjoint::new(g.w_enc);
    g.w_dec
        .par_chunks_mut(FEATURE_BLOCK * d)
        .zip(g.b_enc.par_chunks_mut(FEATURE_BLOCK))
        .enumerate()
        .for_each(|(blk, (gd_blk, gb_blk))| {
            let i0 = blk * FEATURE_BLOCK;
            let n = gb_blk.len();
            let cols = columns(&bb, blk, n);
            let pairs = cols.tok.len();
            let bounds = spmm::cut_slabs(&cols.ptr, &cols.tok, 0..n, TOKEN_SLAB, bsz);
            let slabs = spmm::Slabs::new(&bounds, TOKEN_SLAB, bsz);
            // ∂W_dec rows and ∂pre at the pairs in one pass; then ∂W_enc from ∂pre.
            let mut dv = super::scratch::take(pairs);
            gd_blk.fill(0.0);
            spmm::gather_dot_block(
                gd_blk, d, &pd, &pw, i0, &cols.tok, &cols.fv, &slabs, &dxh, w.w_dec, l1b, &mut dv,
            );
            for (k, gb) in gb_blk.iter_mut().enumerate() {
                let mut sum = 0.0f32;
                for &v in &dv[cols.ptr[k]..cols.ptr[k + 1]] {
                    sum += v;
                }
                *gb = sum;
            }
            let mut ge = super::scratch::take(n * d);
            ge.fill(0.0);
            spmm::gather_block(&mut ge, d, &px, &cols.tok, &dv, &slabs);
            if full < d {
                for k in 0..n {
                    let (l, tail) = (slabs.row(k), k * d + full..(k + 1) * d);
                    let tok = &cols.tok[l.clone()];
                    spmm::gather_tail(&mut gd_blk[tail.clone()], &dxh, d, tok, &cols.fv[l.clone()]);
                    spmm::gather_tail(&mut ge[tail], &xc, d, tok, &dv[l]);
                }
            }
            for j in 0..d {
                // SAFETY: row j, columns i0..i0+n of ∂W_enc [d, F]: inside the buffer (i0 + n ≤ F, j < d) and
                // written by this block only.
                let dst = unsafe { genc.slice(j * fs + i0, n) };
                for (k, o) in dst.iter_mut().enumerate() {
                    *o = ge[k * d + j];
                }
            }
        });
    b_dec_grad(s, &dxh, w.w_enc, g.b_enc, g.b_dec);
}

/// The sparse backward for very sparse codes (below [`super::SPARSE_DENSITY_ROWS`], e.g. L0 17 of 4608 at the steady
/// state): pair by pair, each feature's ∂W_dec row and ∂W_enc column accumulated in L1 from its firing tokens' whole
/// rows. Below that density it beats [`fast_sparse_blocked`], whose packing and per-tile loops cost more than the
/// few pairs save; above it the blocked kernels win (0.43× this one's time at density 0.1).
pub fn fast_sparse_rows(
    s: Shape,
    x: &[f32],
    f: &[f32],
    xhat: &[f32],
    l1: f32,
    w: Weights,
    g: GradsMut,
) {
    super::sparse::with_csr(f, s.d_sae, |csr| rows(s, x, f, csr, xhat, l1, w, g))
}

/// [`fast_sparse_rows`] given the CSR form of `f`.
#[allow(clippy::too_many_arguments)]
fn rows(s: Shape, x: &[f32], f: &[f32], csr: &Csr, xhat: &[f32], l1: f32, w: Weights, g: GradsMut) {
    check(s, x, f, xhat, &w, &g);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    if d == 0 || fs == 0 {
        return fast_dense(s, x, f, xhat, l1, w, g);
    }
    let (dxh, xc) = residuals(s, x, xhat, w.b_dec);
    let l1b = l1 / bsz.max(1) as f32;
    // ∂pre at every firing pair, laid out like csr.val: ⟨∂x̂_b, W_dec[i]⟩ + λ/B.
    let mut dval = vec![0.0f32; csr.idx.len()];
    super::sparse::split_rows(&mut dval, &csr.ptr)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, out)| {
            let (idx, _) = csr.row(b);
            let db = &dxh[b * d..(b + 1) * d];
            super::simd(|| {
                for (o, &i) in out.iter_mut().zip(idx) {
                    let wr = &w.w_dec[i as usize * d..(i as usize + 1) * d];
                    *o = super::dot_body(db, wr) + l1b;
                }
            })
        });
    let (ft, order) = csr.transpose_with_order(fs);
    let genc = Disjoint::new(g.w_enc);
    g.w_dec
        .par_chunks_mut(ROWS_FEATURE_BLOCK * d)
        .zip(g.b_enc.par_chunks_mut(ROWS_FEATURE_BLOCK))
        .enumerate()
        .for_each(|(blk, (gd_blk, gb_blk))| {
            super::simd(|| {
                let i0 = blk * ROWS_FEATURE_BLOCK;
                let n = gb_blk.len();
                let mut ge = super::scratch::take(n * d);
                ge.fill(0.0);
                gd_blk.fill(0.0);
                for k in 0..n {
                    let (rows, fv) = ft.row(i0 + k);
                    let (a, _) = (ft.ptr[i0 + k], ft.ptr[i0 + k + 1]);
                    let gd = &mut gd_blk[k * d..(k + 1) * d];
                    let ger = &mut ge[k * d..(k + 1) * d];
                    let mut sum = 0.0f32;
                    for (e, (&b, &v)) in rows.iter().zip(fv).enumerate() {
                        let b = b as usize;
                        let dv = dval[order[a + e] as usize];
                        let db = &dxh[b * d..(b + 1) * d];
                        let cb = &xc[b * d..(b + 1) * d];
                        for (((o, a), p), c) in gd.iter_mut().zip(db).zip(ger.iter_mut()).zip(cb) {
                            *o += v * a;
                            *p += dv * c;
                        }
                        sum += dv;
                    }
                    gb_blk[k] = sum;
                }
                for j in 0..d {
                    // SAFETY: row j, columns i0..i0+n of ∂W_enc [d, F]: inside the buffer (i0 + n ≤ F, j < d) and
                    // written by this block only.
                    let dst = unsafe { genc.slice(j * fs + i0, n) };
                    for (k, o) in dst.iter_mut().enumerate() {
                        *o = ge[k * d + j];
                    }
                }
            })
        });
    b_dec_grad(s, &dxh, w.w_enc, g.b_enc, g.b_dec);
}

/// The sparse backward: [`fast_sparse_rows`] for very sparse codes, [`fast_sparse_blocked`] otherwise.
pub fn fast_sparse(s: Shape, x: &[f32], f: &[f32], xhat: &[f32], l1: f32, w: Weights, g: GradsMut) {
    by_density(f64::INFINITY, s, x, f, xhat, l1, w, g)
}

/// The fast path: by the codes' density, the row-wise sparse kernels, the blocked sparse kernels, or three GEMMs.
pub fn fast(s: Shape, x: &[f32], f: &[f32], xhat: &[f32], l1: f32, w: Weights, g: GradsMut) {
    by_density(super::SPARSE_DENSITY_BACKWARD, s, x, f, xhat, l1, w, g)
}

/// The kernels that [`super::path_for`] picks for the codes `f`, given the blocked/dense crossover `dense_from`.
#[allow(clippy::too_many_arguments)]
fn by_density(
    dense_from: f64,
    s: Shape,
    x: &[f32],
    f: &[f32],
    xhat: &[f32],
    l1: f32,
    w: Weights,
    g: GradsMut,
) {
    super::sparse::with_path(s, f, dense_from, |path, csr| match (path, csr) {
        (super::Path::Rows, Some(csr)) => rows(s, x, f, csr, xhat, l1, w, g),
        (super::Path::Blocked, Some(csr)) => blocked(s, x, f, csr, xhat, l1, w, g),
        _ => fast_dense(s, x, f, xhat, l1, w, g),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use crate::ops::{decode, encode, Activation};

    struct Case {
        s: Shape,
        x: Vec<f32>,
        w_enc: Vec<f32>,
        b_enc: Vec<f32>,
        w_dec: Vec<f32>,
        b_dec: Vec<f32>,
    }

    fn case(seed: u64, s: Shape) -> Case {
        let mut r = rng(seed);
        Case {
            s,
            x: randn(&mut r, s.batch * s.d_in, 1.0),
            w_enc: randn(&mut r, s.d_in * s.d_sae, 0.5),
            b_enc: randn(&mut r, s.d_sae, 0.2),
            w_dec: randn(&mut r, s.d_sae * s.d_in, 0.5),
            b_dec: randn(&mut r, s.d_in, 0.1),
        }
    }

    fn forward(c: &Case, act: Activation) -> (Vec<f32>, Vec<f32>) {
        let s = c.s;
        let mut f = vec![0.0; s.batch * s.d_sae];
        encode::reference(s, act, &c.x, &c.w_enc, &c.b_enc, &c.b_dec, &mut f);
        let mut xh = vec![0.0; s.batch * s.d_in];
        decode::reference(s, &f, &c.w_dec, &c.b_dec, &mut xh);
        (f, xh)
    }

    fn loss(c: &Case, act: Activation, l1: f32) -> f64 {
        let (f, xh) = forward(c, act);
        let sq: f64 = xh
            .iter()
            .zip(&c.x)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let l1s: f64 = f.iter().map(|v| *v as f64).sum();
        (sq + l1 as f64 * l1s) / c.s.batch as f64
    }

    type GradFn = fn(Shape, &[f32], &[f32], &[f32], f32, Weights, GradsMut);

    fn grads(c: &Case, act: Activation, l1: f32, op: GradFn) -> [Vec<f32>; 4] {
        let s = c.s;
        let (f, xh) = forward(c, act);
        let mut g = [
            vec![f32::NAN; s.d_in * s.d_sae],
            vec![f32::NAN; s.d_sae],
            vec![f32::NAN; s.d_sae * s.d_in],
            vec![f32::NAN; s.d_in],
        ];
        let [ge, gbe, gd, gbd] = &mut g;
        op(
            s,
            &c.x,
            &f,
            &xh,
            l1,
            Weights {
                w_enc: &c.w_enc,
                b_enc: &c.b_enc,
                w_dec: &c.w_dec,
                b_dec: &c.b_dec,
            },
            GradsMut {
                w_enc: ge,
                b_enc: gbe,
                w_dec: gd,
                b_dec: gbd,
            },
        );
        g
    }

    #[test]
    fn fast_versions_match_reference() {
        for (n, &(b, d, fs)) in SHAPES.iter().enumerate() {
            let c = case(10 + n as u64, Shape::new(b, d, fs));
            for (act, l1) in [(Activation::Relu, 0.3), (Activation::TopK { k: 3 }, 0.0)] {
                let want = grads(&c, act, l1, reference);
                for op in [
                    fast_dense as GradFn,
                    fast_sparse_rows,
                    fast_sparse_blocked,
                    fast_sparse,
                    fast,
                ] {
                    let got = grads(&c, act, l1, op);
                    for p in 0..4 {
                        let e = rel_err(&got[p], &want[p]);
                        assert!(e < 1e-4, "{:?} {act:?} param {p}: {e}", c.s);
                    }
                }
            }
        }
    }

    #[test]
    fn reference_matches_finite_differences() {
        let c0 = case(99, Shape::new(6, 5, 9));
        for (act, l1) in [(Activation::Relu, 0.5), (Activation::TopK { k: 2 }, 0.0)] {
            let g = grads(&c0, act, l1, reference);
            let h = 1e-3f32;
            let mut checked = 0;
            for p in 0..4 {
                let len = g[p].len();
                for e in 0..len {
                    let mut plus = case(99, c0.s);
                    let mut minus = case(99, c0.s);
                    let bump = |c: &mut Case, v: f32| match p {
                        0 => c.w_enc[e] += v,
                        1 => c.b_enc[e] += v,
                        2 => c.w_dec[e] += v,
                        _ => c.b_dec[e] += v,
                    };
                    bump(&mut plus, h);
                    bump(&mut minus, -h);
                    // Skip points where a ReLU or the TopK selection flips inside ±h: the loss is not smooth there.
                    let (fp, _) = forward(&plus, act);
                    let (fm, _) = forward(&minus, act);
                    let (f0, _) = forward(&c0, act);
                    let same = |a: &[f32], b: &[f32]| {
                        a.iter().zip(b).all(|(x, y)| (*x > 0.0) == (*y > 0.0))
                    };
                    if !same(&fp, &f0) || !same(&fm, &f0) {
                        continue;
                    }
                    let num = (loss(&plus, act, l1) - loss(&minus, act, l1)) / (2.0 * h as f64);
                    let ana = g[p][e] as f64;
                    assert!(
                        (num - ana).abs() <= 2e-3 + 2e-3 * ana.abs(),
                        "{act:?} param {p}[{e}]: numeric {num} analytic {ana}"
                    );
                    checked += 1;
                }
            }
            assert!(checked > 100, "too few smooth points checked: {checked}");
        }
    }
}
