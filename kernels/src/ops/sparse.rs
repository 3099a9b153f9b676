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
    /// Builds the CSR form of the row-major matrix `f` with `cols` columns.
    pub fn from_dense(f: &[f32], cols: usize) -> Csr {
        if cols == 0 {
            return Csr {
                ptr: vec![0; f.len() + 1],
                ..Default::default()
            };
        }
        let rows: Vec<(Vec<u32>, Vec<f32>)> = f
            .par_chunks(cols)
            .map(|row| {
                let mut idx = Vec::new();
                let mut val = Vec::new();
                for (i, &v) in row.iter().enumerate() {
                    if v != 0.0 {
                        idx.push(i as u32);
                        val.push(v);
                    }
                }
                (idx, val)
            })
            .collect();
        let mut ptr = Vec::with_capacity(rows.len() + 1);
        ptr.push(0);
        let nnz: usize = rows.iter().map(|r| r.0.len()).sum();
        let mut idx = Vec::with_capacity(nnz);
        let mut val = Vec::with_capacity(nnz);
        for (i, v) in rows {
            idx.extend_from_slice(&i);
            val.extend_from_slice(&v);
            ptr.push(idx.len());
        }
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
        for r in 0..self.rows() {
            let (ri, rv) = self.row(r);
            for (&c, &v) in ri.iter().zip(rv) {
                let slot = next[c as usize];
                idx[slot] = r as u32;
                val[slot] = v;
                next[c as usize] += 1;
            }
        }
        Csr { ptr, idx, val }
    }
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
    }
}
