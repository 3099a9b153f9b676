//! Compressed sparse rows of a code matrix f [batch, d_sae]: the firing features of each token.

use rayon::prelude::*;

/// The nonzero entries of f, row by row, in increasing feature order.
#[derive(Clone, Debug, Default)]
pub struct Csr {
    /// Row r's entries are `idx[ptr[r]..ptr[r + 1]]` / `val[..]`.
    pub ptr: Vec<usize>,
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
}

impl Csr {
    /// Builds the CSR form of the row-major matrix `f` with `cols` columns: one parallel pass counts each row's
    /// nonzeros, a second fills the rows in place (no per-row buffers).
    pub fn from_dense(f: &[f32], cols: usize) -> Csr {
        let mut csr = Csr::default();
        csr.refill(f, cols);
        csr
    }

    /// [`Csr::from_dense`] into this one's buffers (a step's codes fill 9 MB of them at density 0.25: fresh ones
    /// page-faulted in measured most of the build's time).
    pub fn refill(&mut self, f: &[f32], cols: usize) {
        self.count(f, cols);
        self.fill(f, cols);
    }

    /// The first half of [`Csr::refill`]: each row's nonzeros counted into `ptr` (whose last entry is then the
    /// number of nonzeros, which is how a fast op learns the codes' density without a pass of its own).
    fn count(&mut self, f: &[f32], cols: usize) {
        self.ptr.clear();
        self.ptr.push(0);
        if cols == 0 {
            self.ptr.resize(f.len() + 1, 0);
            return;
        }
        let mut counts = Vec::with_capacity(f.len() / cols);
        f.par_chunks(cols)
            .map(|row| row.iter().filter(|v| **v != 0.0).count())
            .collect_into_vec(&mut counts);
        for c in &counts {
            self.ptr.push(self.ptr.last().copied().unwrap_or(0) + c);
        }
    }

    /// The second half of [`Csr::refill`], after [`Csr::count`] on the same `f`.
    fn fill(&mut self, f: &[f32], cols: usize) {
        let nnz = *self.ptr.last().unwrap_or(&0);
        self.idx.clear();
        self.idx.resize(nnz, 0);
        self.val.clear();
        self.val.resize(nnz, 0.0);
        if cols == 0 {
            return;
        }
        split_rows(&mut self.idx, &self.ptr)
            .into_par_iter()
            .zip(split_rows(&mut self.val, &self.ptr))
            .zip(f.par_chunks(cols))
            .for_each(|((ri, rv), row)| {
                let count = ri.len();
                let mut n = 0;
                if count == 0 {
                    return;
                }
                // Without a branch on the value (at densities near one half it is a coin toss to predict): every
                // entry is written at the next free slot, which moves on only past a nonzero one.
                for (i, &v) in row.iter().enumerate() {
                    ri[n] = i as u32;
                    rv[n] = v;
                    n += (v != 0.0) as usize;
                    if n == count {
                        break;
                    }
                }
            });
    }

    pub fn rows(&self) -> usize {
        self.ptr.len() - 1
    }

    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.ptr[r], self.ptr[r + 1]);
        (&self.idx[a..b], &self.val[a..b])
    }

    /// The transpose: for each feature, the (row, value) pairs in increasing row order.
    pub fn transpose(&self, cols: usize) -> Csr {
        self.transpose_with_order(cols).0
    }

    /// The transpose, and for each of its entries the position of the same entry in `self` (so that values laid out
    /// like `self.val`, such as the gradients at the firing pairs, can be read in the transpose's order).
    pub fn transpose_with_order(&self, cols: usize) -> (Csr, Vec<u32>) {
        let mut count = vec![0usize; cols + 1];
        for &i in &self.idx {
            count[i as usize + 1] += 1;
        }
        for c in 0..cols {
            count[c + 1] += count[c];
        }
        let ptr = count.clone();
        let mut next = count;
        let mut idx = vec![0u32; self.idx.len()];
        let mut val = vec![0f32; self.idx.len()];
        let mut order = vec![0u32; self.idx.len()];
        for r in 0..self.rows() {
            let (a, b) = (self.ptr[r], self.ptr[r + 1]);
            for e in a..b {
                let c = self.idx[e] as usize;
                let slot = next[c];
                idx[slot] = r as u32;
                val[slot] = self.val[e];
                order[slot] = e as u32;
                next[c] += 1;
            }
        }
        (Csr { ptr, idx, val }, order)
    }
}

thread_local! {
    static CSR: std::cell::RefCell<Csr> = std::cell::RefCell::new(Csr::default());
}

/// Runs `body` with this thread's pooled CSR buffers (taken out of the pool meanwhile, so a nested call gets its own).
fn pooled<R>(body: impl FnOnce(&mut Csr) -> R) -> R {
    let mut csr = CSR.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let out = body(&mut csr);
    let _ = CSR.try_with(|c| *c.borrow_mut() = csr);
    out
}

/// Runs `body` on the CSR form of `f` ([batch, cols]), built in this thread's reused buffers.
pub(crate) fn with_csr<R>(f: &[f32], cols: usize, body: impl FnOnce(&Csr) -> R) -> R {
    pooled(|csr| {
        csr.refill(f, cols);
        body(csr)
    })
}

/// Picks a fast op's kernels for codes `f` of shape `s` ([`super::path_for`], with the op's blocked/dense crossover
/// `dense_from`) and runs `body` with the path and, on a sparse path, the codes' CSR form. One pass over `f` both
/// counts the nonzeros that decide the path and starts the CSR.
pub(crate) fn with_path<R>(
    s: super::Shape,
    f: &[f32],
    dense_from: f64,
    body: impl FnOnce(super::Path, Option<&Csr>) -> R,
) -> R {
    pooled(|csr| {
        csr.count(f, s.d_sae);
        let path = super::path_for(s, *csr.ptr.last().unwrap_or(&0), dense_from);
        if path == super::Path::Dense {
            body(path, None)
        } else {
            csr.fill(f, s.d_sae);
            body(path, Some(csr))
        }
    })
}

/// `data` cut into the rows that `ptr` delimits (ptr[0] = 0, ptr[rows] = data.len()).
pub fn split_rows<'a, T>(mut data: &'a mut [T], ptr: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ptr.len().saturating_sub(1));
    for w in ptr.windows(2) {
        let (row, rest) = data.split_at_mut(w[1] - w[0]);
        out.push(row);
        data = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_transpose() {
        let f = [0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0];
        let csr = Csr::from_dense(&f, 3);
        assert_eq!(csr.ptr, vec![0, 1, 2, 4]);
        assert_eq!(csr.idx, vec![1, 0, 0, 2]);
        let t = csr.transpose(3);
        assert_eq!(t.ptr, vec![0, 2, 3, 4]);
        assert_eq!(t.idx, vec![1, 2, 0, 2]);
        assert_eq!(t.val, vec![2.0, 3.0, 1.0, 4.0]);
        let (t2, order) = csr.transpose_with_order(3);
        assert_eq!(t2.val, t.val);
        let back: Vec<f32> = order.iter().map(|&e| csr.val[e as usize]).collect();
        assert_eq!(back, t.val);
    }

    #[test]
    fn parallel_build_and_transpose_match_plain_loops() {
        let (rows, cols) = (300, 257);
        let mut state = 12345u64;
        let f: Vec<f32> = (0..rows * cols)
            .map(|k| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (state >> 33) % 10 < 3 {
                    k as f32 + 1.0
                } else {
                    0.0
                }
            })
            .collect();
        let csr = Csr::from_dense(&f, cols);
        let mut want = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                if f[r * cols + c] != 0.0 {
                    want.push((r, c as u32, f[r * cols + c]));
                }
            }
        }
        assert_eq!(csr.idx.len(), want.len());
        for r in 0..rows {
            let (i, v) = csr.row(r);
            let w: Vec<_> = want.iter().filter(|e| e.0 == r).collect();
            assert_eq!(i, w.iter().map(|e| e.1).collect::<Vec<_>>().as_slice());
            assert_eq!(v, w.iter().map(|e| e.2).collect::<Vec<_>>().as_slice());
        }
        let (t, order) = csr.transpose_with_order(cols);
        for c in 0..cols {
            let (ri, rv) = t.row(c);
            let w: Vec<_> = want.iter().filter(|e| e.1 as usize == c).collect();
            assert_eq!(
                ri,
                w.iter().map(|e| e.0 as u32).collect::<Vec<_>>().as_slice()
            );
            assert_eq!(rv, w.iter().map(|e| e.2).collect::<Vec<_>>().as_slice());
        }
        for (k, &e) in order.iter().enumerate() {
            assert_eq!(csr.val[e as usize], t.val[k]);
        }
    }
}
