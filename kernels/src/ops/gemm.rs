//! A thin safe wrapper over the `gemm` crate for row-major f32 matrices, with optional transposes.

use gemm::Parallelism;

/// How an operand is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// The operand as stored, row-major.
    N,
    /// The transpose of the stored row-major operand.
    T,
}

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// c[m, n] = beta_c · c + op(a)[m, k] · op(b)[k, n], all row-major.
/// `a` is stored [m, k] (N) or [k, m] (T); `b` is stored [k, n] (N) or [n, k] (T).
/// With `accumulate` false the old contents of `c` are ignored.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    c: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(a.len(), m * k, "sgemm: lhs length");
    assert_eq!(b.len(), k * n, "sgemm: rhs length");
    assert_eq!(c.len(), m * n, "sgemm: dst length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // (column stride, row stride) of each operand as the gemm crate wants them.
    let (a_cs, a_rs) = match ta {
        Trans::N => (1isize, k as isize),
        Trans::T => (m as isize, 1isize),
    };
    let (b_cs, b_rs) = match tb {
        Trans::N => (1isize, n as isize),
        Trans::T => (k as isize, 1isize),
    };
    // SAFETY: the lengths were checked above against m, n, k, and the strides describe exactly those buffers;
    // `c` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: Trans, b: &[f32], tb: Trans) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if ta == Trans::N {
                        a[i * k + p]
                    } else {
                        a[p * m + i]
                    };
                    let bv = if tb == Trans::N {
                        b[p * n + j]
                    } else {
                        b[j * k + p]
                    };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_on_odd_shapes() {
        let mut r = rng(1);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (65, 33, 17), (128, 70, 99)] {
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    let a = randn(&mut r, m * k, 1.0);
                    let b = randn(&mut r, k * n, 1.0);
                    let mut c = vec![f32::NAN; m * n];
                    sgemm(m, n, k, &a, ta, &b, tb, &mut c, false);
                    let want = naive(m, n, k, &a, ta, &b, tb);
                    assert!(rel_err(&c, &want) < 1e-5, "{m}x{n}x{k} {ta:?}{tb:?}");
                }
            }
        }
    }
}
