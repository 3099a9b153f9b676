//! Sparse × dense products on packed column tiles: the kernels of the sparse decode and backward.
//!
//! A dense operand W [rows, d] is repacked as [column tile][row][PACK] with its start on a 64-byte boundary, so that a
//! row's tile is 256 aligned, contiguous bytes. In place at d 576 the rows sit 2304 bytes apart (a quarter of L1's
//! sets), and a Vec's 16-byte alignment splits every other 32-byte load across two cache lines; on the 2-core EPYC VM
//! the gather measured 47 → 70 GFLOP/s a core in L1 from the alignment alone (the GEMM reaches 89).
//!
//! Arithmetic: every product is accumulated with a fused multiply-add, on AVX2+FMA through intrinsics and elsewhere
//! through `f32::mul_add` (which rounds once, as the instruction does), in the same order, so that every machine
//! computes the same bits. One load per FMA is this VM's limit (a 256-bit load a cycle): a separate multiply and add
//! measured a quarter slower than the FMA, and a test kernel that used each load twice ran at 82 GFLOP/s a core.

use super::scratch::{self, Scratch};
use rayon::prelude::*;
use std::ops::Range;

/// Columns in a packed tile: 64 floats, eight AVX2 accumulators, so that a pair's eight loads feed eight independent
/// add chains.
pub(crate) const PACK: usize = 64;

/// A matrix's first `d / PACK · PACK` columns as [column tile][row][PACK], 64-byte aligned.
pub(crate) struct Packed {
    buf: Scratch,
    off: usize,
    len: usize,
    pub rows: usize,
}

impl std::ops::Deref for Packed {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
}

/// Packs W [rows, d] (row-major) into column tiles, in parallel over the tiles.
pub(crate) fn pack(w: &[f32], rows: usize, d: usize) -> Packed {
    assert_eq!(w.len(), rows * d, "pack: length");
    let tiles = d / PACK;
    let len = tiles * PACK * rows;
    let mut buf = scratch::take(len + 16);
    // Floats to skip to reach a 64-byte boundary (the buffer is at least 4-byte aligned).
    let off = (64 - buf.as_ptr() as usize % 64) % 64 / 4;
    if tiles > 0 && rows > 0 {
        buf[off..off + len]
            .par_chunks_mut(rows * PACK)
            .enumerate()
            .for_each(|(c, blk)| {
                for (i, t) in blk.chunks_exact_mut(PACK).enumerate() {
                    t.copy_from_slice(&w[i * d + c * PACK..i * d + c * PACK + PACK]);
                }
            });
    }
    Packed {
        buf,
        off,
        len,
        rows,
    }
}

/// Tests set this to run the portable loops on a CPU that has AVX2 and FMA (both paths give the same bits, so other
/// tests running meanwhile are not disturbed).
#[cfg(test)]
static PORTABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn has_fma() -> bool {
    #[cfg(test)]
    if PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The pairs of row r in slab k of a blocked product: `bounds[r·(slabs + 1) + k] .. bounds[r·(slabs + 1) + k + 1]`,
/// ranges of `idx`/`val` that follow each other (a row's pairs sorted by index, cut where the slabs of W start).
pub(crate) struct Slabs<'a> {
    pub bounds: &'a [usize],
    pub slabs: usize,
    /// Rows of W in a slab.
    pub size: usize,
}

impl<'a> Slabs<'a> {
    /// The slabs of `size` rows over W's `extent` rows, cut at `bounds` (from [`cut_slabs`] with the same size).
    pub fn new(bounds: &'a [usize], size: usize, extent: usize) -> Self {
        Slabs {
            bounds,
            slabs: extent.div_ceil(size.max(1)),
            size,
        }
    }

    fn rows(&self) -> usize {
        self.bounds.len() / (self.slabs + 1)
    }
    fn range(&self, r: usize, k: usize) -> Range<usize> {
        let at = r * (self.slabs + 1) + k;
        self.bounds[at]..self.bounds[at + 1]
    }
    /// All of row r's pairs.
    pub fn row(&self, r: usize) -> Range<usize> {
        self.bounds[r * (self.slabs + 1)]..self.bounds[(r + 1) * (self.slabs + 1) - 1]
    }
}

/// Cuts each row's sorted pair list `ptr[r]..ptr[r + 1]` (rows `rows`, indices in `idx`) where index `slab·k` starts,
/// in one walk along the row (binary searches per slab measured slower: each step a cache miss).
pub(crate) fn cut_slabs(
    ptr: &[usize],
    idx: &[u32],
    rows: Range<usize>,
    slab: usize,
    extent: usize,
) -> Vec<usize> {
    let slabs = extent.div_ceil(slab.max(1));
    let mut bounds = Vec::with_capacity(rows.len() * (slabs + 1));
    for r in rows {
        let (mut e, end) = (ptr[r], ptr[r + 1]);
        bounds.push(e);
        for k in 1..=slabs {
            let limit = k * slab;
            while e < end && (idx[e] as usize) < limit {
                e += 1;
            }
            bounds.push(e);
        }
    }
    bounds
}

/// A blocked sparse × dense product: for each output row r (rows of `out`, of length d) and each column tile,
/// `out[r][tile] = fma(val[e], W[idx[e]][tile], out[r][tile])` over row r's pairs e in order. The loops go tile by
/// tile, then slab by slab of W (so each tile of W streams through memory in order), then row by row, so that a slab's
/// 16 KB block of the tile serves every row while it is in L1. The columns past the last whole tile are the caller's
/// (see [`gather_tail`]). Every index must be below `w.rows` (checked).
pub(crate) fn gather_block(
    out: &mut [f32],
    d: usize,
    w: &Packed,
    idx: &[u32],
    val: &[f32],
    slabs: &Slabs,
) {
    let tiles = d / PACK;
    let rows = slabs.rows();
    assert!(out.len() >= rows * d && w.len() >= tiles * PACK * w.rows && idx.len() == val.len());
    for r in 0..rows {
        assert!(
            idx[slabs.row(r)].iter().all(|&i| (i as usize) < w.rows),
            "gather_block: index out of range"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has AVX2 and FMA; the bounds were checked just above.
        return unsafe { avx2::gather_block(out, d, w, idx, val, slabs) };
    }
    for t in 0..tiles {
        let blk = &w[t * PACK * w.rows..(t + 1) * PACK * w.rows];
        for k in 0..slabs.slabs {
            for r in 0..rows {
                let o = &mut out[r * d + t * PACK..r * d + t * PACK + PACK];
                let l = slabs.range(r, k);
                for (&i, &v) in idx[l.clone()].iter().zip(&val[l]) {
                    for (a, x) in o
                        .iter_mut()
                        .zip(&blk[i as usize * PACK..(i as usize + 1) * PACK])
                    {
                        *a = v.mul_add(*x, *a);
                    }
                }
            }
        }
    }
}

/// [`gather_block`] for the columns past the last whole tile, from the unpacked W [rows, d]: `out` holds those columns
/// of one output row.
pub(crate) fn gather_tail(out: &mut [f32], w: &[f32], d: usize, idx: &[u32], val: &[f32]) {
    let n = out.len();
    let c0 = d - n;
    for (&i, &v) in idx.iter().zip(val) {
        let o = i as usize * d + c0;
        for (a, x) in out.iter_mut().zip(&w[o..o + n]) {
            *a = v.mul_add(*x, *a);
        }
    }
}

/// Half a tile: the fused kernel holds a row's W sub-tile and its gather accumulator in registers (4 + 4 of AVX2's 16).
const HALF: usize = PACK / 2;

/// The gather of [`gather_block`] fused with masked dot products over the same pairs. Output row r is row `w0 + r` of
/// W (`pw`); its pairs e index rows of A (`pa`). For each pair, in one pass over its A row:
/// - `out[r] = fma(val[e], A[idx[e]], out[r])` (as [`gather_block`]: per element, the pairs in order);
/// - `dots[e] = ⟨A[idx[e]], W[w0 + r]⟩ + add`, the masked product (only the pairs are computed).
///
/// A's row is loaded once for both (about 0.9 memory operations per FMA, against 1.2 for the two kernels apart).
///
/// Order of a pair's dot: for each tile and each half of it in order, with x_q, w_q its four 8-float vectors of A
/// and W, s = fma(x3, w3, fma(x2, w2, fma(x1, w1, fma(x0, w0, s)))) lane by lane (s starts at 0); then s's 8 lanes
/// pairwise (l + 4, l + 2, l + 1); then the columns past the last tile from the unpacked `ua` [A rows, d] and
/// `uw` [W rows, d], by FMA in order; then `add`.
///
/// Loops: slab by slab of A's rows (so that a pair's lanes stay in L1 across the tiles), then tile, half and row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_dot_block(
    out: &mut [f32],
    d: usize,
    pa: &Packed,
    pw: &Packed,
    w0: usize,
    idx: &[u32],
    val: &[f32],
    slabs: &Slabs,
    ua: &[f32],
    uw: &[f32],
    add: f32,
    dots: &mut [f32],
) {
    let (tiles, rows) = (d / PACK, slabs.rows());
    assert!(out.len() >= rows * d && idx.len() == val.len());
    assert!(
        w0 + rows <= pw.rows
            && pa.len() >= tiles * PACK * pa.rows
            && pw.len() >= tiles * PACK * pw.rows
    );
    assert!(ua.len() >= pa.rows * d && uw.len() >= pw.rows * d);
    for r in 0..rows {
        let l = slabs.row(r);
        assert!(l.end <= dots.len());
        assert!(
            idx[l].iter().all(|&i| (i as usize) < pa.rows),
            "gather_dot_block: index out of range"
        );
    }
    // Each pair's 8 partial sums of its dot, carried across the tiles of a slab.
    let mut lanes = scratch::take(8 * idx.len());
    let fma = has_fma();
    for k in 0..slabs.slabs {
        for r in 0..rows {
            let l = slabs.range(r, k);
            lanes[l.start * 8..l.end * 8].fill(0.0);
        }
        for t in 0..tiles {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has AVX2 and FMA; the bounds were checked above.
                unsafe {
                    avx2::gather_dot_tile(out, d, pa, pw, w0, idx, val, slabs, k, t, &mut lanes)
                };
                continue;
            }
            for h in [0, HALF] {
                let blk = &pa[t * PACK * pa.rows..(t + 1) * PACK * pa.rows];
                for r in 0..rows {
                    let wv = &pw[(t * pw.rows + w0 + r) * PACK + h..][..HALF];
                    let o = &mut out[r * d + t * PACK + h..][..HALF];
                    for e in slabs.range(r, k) {
                        let x = &blk[idx[e] as usize * PACK + h..][..HALF];
                        for (a, xv) in o.iter_mut().zip(x) {
                            *a = val[e].mul_add(*xv, *a);
                        }
                        let s = &mut lanes[e * 8..e * 8 + 8];
                        for (j, sj) in s.iter_mut().enumerate() {
                            for q in 0..4 {
                                *sj = x[8 * q + j].mul_add(wv[8 * q + j], *sj);
                            }
                        }
                    }
                }
            }
        }
        let full = tiles * PACK;
        for r in 0..rows {
            let wr = &uw[(w0 + r) * d + full..(w0 + r + 1) * d];
            for e in slabs.range(r, k) {
                let s = &mut lanes[e * 8..e * 8 + 8];
                for wd in [4, 2, 1] {
                    for j in 0..wd {
                        s[j] += s[j + wd];
                    }
                }
                let mut sum = s[0];
                let a = idx[e] as usize;
                for (xv, yv) in ua[a * d + full..(a + 1) * d].iter().zip(wr) {
                    sum = xv.mul_add(*yv, sum);
                }
                dots[e] = sum + add;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Packed, Slabs, PACK};
    use std::arch::x86_64::*;

    /// Asks for W's block of slab k + 1 of tile t (or slab 0 of tile t + 1) into L2 while slab k is worked on: the
    /// pairs read a block in no predictable order, so the hardware prefetchers do not fetch it, and the gather
    /// measured bound by those misses.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn prefetch_next(w: &Packed, slabs: &Slabs, t: usize, k: usize) {
        let next = if k + 1 < slabs.slabs {
            (t * w.rows + (k + 1) * slabs.size) * PACK
        } else {
            (t + 1) * w.rows * PACK
        };
        let end = (next + slabs.size * PACK).min(w.len());
        let p = w.as_ptr();
        let mut at = next;
        while at < end {
            // SAFETY (of the call): in bounds, and a prefetch neither reads architecturally nor faults.
            _mm_prefetch::<_MM_HINT_T1>(p.add(at) as *const i8);
            at += 16;
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA, and the caller has checked every bound (see [`super::gather_block`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gather_block(
        out: &mut [f32],
        d: usize,
        w: &Packed,
        idx: &[u32],
        val: &[f32],
        slabs: &Slabs,
    ) {
        let (ip, vp) = (idx.as_ptr(), val.as_ptr());
        for t in 0..d / PACK {
            let blk = w.as_ptr().add(t * PACK * w.rows);
            for k in 0..slabs.slabs {
                prefetch_next(w, slabs, t, k);
                for r in 0..slabs.rows() {
                    let pairs = slabs.range(r, k);
                    if pairs.is_empty() {
                        continue;
                    }
                    let o = out.as_mut_ptr().add(r * d + t * PACK);
                    let mut a = [_mm256_setzero_ps(); 8];
                    for (j, aj) in a.iter_mut().enumerate() {
                        *aj = _mm256_loadu_ps(o.add(8 * j));
                    }
                    for e in pairs {
                        let s = blk.add(*ip.add(e) as usize * PACK);
                        let b = _mm256_set1_ps(*vp.add(e));
                        a[0] = _mm256_fmadd_ps(b, _mm256_load_ps(s), a[0]);
                        a[1] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(8)), a[1]);
                        a[2] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(16)), a[2]);
                        a[3] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(24)), a[3]);
                        a[4] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(32)), a[4]);
                        a[5] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(40)), a[5]);
                        a[6] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(48)), a[6]);
                        a[7] = _mm256_fmadd_ps(b, _mm256_load_ps(s.add(56)), a[7]);
                    }
                    for (j, aj) in a.iter().enumerate() {
                        _mm256_storeu_ps(o.add(8 * j), *aj);
                    }
                }
            }
        }
    }

    /// One tile of [`super::gather_dot_block`] for slab k: both halves, every row.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and the caller has checked every bound (see [`super::gather_dot_block`]).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gather_dot_tile(
        out: &mut [f32],
        d: usize,
        pa: &Packed,
        pw: &Packed,
        w0: usize,
        idx: &[u32],
        val: &[f32],
        slabs: &Slabs,
        k: usize,
        t: usize,
        lanes: &mut [f32],
    ) {
        use super::HALF;
        let blk = pa.as_ptr().add(t * PACK * pa.rows);
        let (ip, vp, lp) = (idx.as_ptr(), val.as_ptr(), lanes.as_mut_ptr());
        for h in [0, HALF] {
            for r in 0..slabs.rows() {
                let pairs = slabs.range(r, k);
                if pairs.is_empty() {
                    continue;
                }
                let wp = pw.as_ptr().add((t * pw.rows + w0 + r) * PACK + h);
                let wv: [__m256; 4] = std::array::from_fn(|q| _mm256_load_ps(wp.add(8 * q)));
                let o = out.as_mut_ptr().add(r * d + t * PACK + h);
                let mut a: [__m256; 4] = std::array::from_fn(|q| _mm256_loadu_ps(o.add(8 * q)));
                for e in pairs {
                    let x = blk.add(*ip.add(e) as usize * PACK + h);
                    let b = _mm256_set1_ps(*vp.add(e));
                    let sp = lp.add(e * 8);
                    let mut sv = _mm256_loadu_ps(sp);
                    for q in 0..4 {
                        let xq = _mm256_load_ps(x.add(8 * q));
                        a[q] = _mm256_fmadd_ps(b, xq, a[q]);
                        sv = _mm256_fmadd_ps(xq, wv[q], sv);
                    }
                    _mm256_storeu_ps(sp, sv);
                }
                for (q, aq) in a.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * q), *aq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use std::sync::atomic::Ordering;

    /// Runs `f` with the intrinsics and with the portable loops; both must give the same bits.
    fn both<T: PartialEq + std::fmt::Debug>(f: impl Fn() -> T) -> T {
        let fast = f();
        PORTABLE.store(true, Ordering::Relaxed);
        let portable = f();
        PORTABLE.store(false, Ordering::Relaxed);
        assert_eq!(fast, portable, "intrinsics and portable loops differ");
        fast
    }

    #[test]
    fn gather_and_masked_dots_agree_across_paths_and_with_f64() {
        let mut r = rng(5);
        for &(rows, d) in &[(7usize, 64usize), (33, 130), (64, 576), (5, 20)] {
            let w = randn(&mut r, rows * d, 1.0);
            let a = randn(&mut r, 3 * d, 1.0);
            let p = pack(&w, rows, d);
            let pa = pack(&a, 3, d);
            assert_eq!(p.as_ptr() as usize % 64, 0);
            let full = d / PACK * PACK;
            let mut idx: Vec<u32> = (0..3 * rows).map(|e| ((e * 5) % rows) as u32).collect();
            let ptr = [0, rows, 2 * rows, 3 * rows];
            for q in 0..3 {
                idx[ptr[q]..ptr[q + 1]].sort_unstable();
            }
            let val = randn(&mut r, idx.len(), 1.0);
            let bounds = cut_slabs(&ptr, &idx, 0..3, 4, rows);
            let slabs = Slabs::new(&bounds, 4, rows);
            let start = randn(&mut r, 3 * d, 1.0);
            let out = both(|| {
                let mut out = start.clone();
                gather_block(&mut out, d, &p, &idx, &val, &slabs);
                for q in 0..3 {
                    let l = slabs.row(q);
                    gather_tail(
                        &mut out[q * d + full..(q + 1) * d],
                        &w,
                        d,
                        &idx[l.clone()],
                        &val[l],
                    );
                }
                out
            });
            for q in 0..3 {
                for c in 0..d {
                    let want: f64 = start[q * d + c] as f64
                        + (ptr[q]..ptr[q + 1])
                            .map(|e| val[e] as f64 * w[idx[e] as usize * d + c] as f64)
                            .sum::<f64>();
                    assert!(
                        (out[q * d + c] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "gather {rows}x{d}"
                    );
                }
            }
            // The fused kernel: A is `w` (pairs index its rows), W is `a` (output row q is its row q).
            let (fused, dots) = both(|| {
                let mut out = start.clone();
                let mut dots = vec![0.0f32; idx.len()];
                gather_dot_block(
                    &mut out, d, &p, &pa, 0, &idx, &val, &slabs, &w, &a, 0.5, &mut dots,
                );
                for q in 0..3 {
                    let l = slabs.row(q);
                    gather_tail(
                        &mut out[q * d + full..(q + 1) * d],
                        &w,
                        d,
                        &idx[l.clone()],
                        &val[l],
                    );
                }
                (out, dots)
            });
            assert_eq!(fused, out, "the fused gather is the gather, bit for bit");
            for q in 0..3 {
                for e in ptr[q]..ptr[q + 1] {
                    let i = idx[e] as usize;
                    let want: f64 = 0.5
                        + (0..d)
                            .map(|c| a[q * d + c] as f64 * w[i * d + c] as f64)
                            .sum::<f64>();
                    assert!(
                        (dots[e] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "dot {rows}x{d}"
                    );
                }
            }
        }
    }
}
