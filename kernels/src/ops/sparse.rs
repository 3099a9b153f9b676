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
        if cols == 0 {
            return Csr {
                ptr: vec![0; f.len() + 1],
                ..Default::default()
            };
        }
        let counts: Vec<usize> = f
            .par_chunks(cols)
            .map(|row| row.iter().filter(|v| **v != 0.0).count())
            .collect();
        let mut ptr = Vec::with_capacity(counts.len() + 1);
        ptr.push(0);
        for c in &counts {
            ptr.push(ptr.last().copied().unwrap_or(0) + c);
        }
        let nnz = *ptr.last().unwrap_or(&0);
        let mut idx = vec![0u32; nnz];
        let mut val = vec![0f32; nnz];
        split_rows(&mut idx, &ptr)
            .into_par_iter()
            .zip(split_rows(&mut val, &ptr))
            .zip(f.par_chunks(cols))
            .for_each(|((ri, rv), row)| {
                let mut n = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v != 0.0 {
                        ri[n] = i as u32;
                        rv[n] = v;
                        n += 1;
                    }
                }
            });
        Csr { ptr, idx, val }
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
}
