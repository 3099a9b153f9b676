//! Fixed-length model contexts cut from the Brown corpus: each is BOS followed by `len - 1`
//! consecutive tokens of one document (full chunks only, so every context has the same length).
//! Chunks are drawn in a seeded shuffle, so a given (corpus, split, tokenizer, seed) always gives
//! the same contexts, spread over all documents of its side of the split.
//!
//! The contexts used for loss recovered are stored beside an activation set in
//! `lm_eval_contexts.safetensors` (tensors `tokens` [n, len], `doc` [n], `start` [n], all u32) so
//! evaluation is reproducible without re-tokenizing.

use super::tokenizer::Tokenizer;
use super::LmError;
use crate::data::corpus::Corpus;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

/// File name of the evaluation contexts inside an activation-set directory.
pub const EVAL_CONTEXTS_FILE: &str = "lm_eval_contexts.safetensors";

/// A batch of contexts: `tokens` is `[n, len]` row-major; context i comes from document
/// `doc[i]` (index into the sorted corpus), its token 1 is document token `start[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contexts {
    pub len: usize,
    pub tokens: Vec<u32>,
    pub doc: Vec<u32>,
    pub start: Vec<u32>,
}

impl Contexts {
    pub fn n(&self) -> usize {
        self.doc.len()
    }

    /// Token ids of context i.
    pub fn get(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.len..(i + 1) * self.len]
    }

    /// The first `n` contexts.
    pub fn take(&self, n: usize) -> Contexts {
        let n = n.min(self.n());
        Contexts {
            len: self.len,
            tokens: self.tokens[..n * self.len].to_vec(),
            doc: self.doc[..n].to_vec(),
            start: self.start[..n].to_vec(),
        }
    }

    /// Contexts `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Contexts {
        Contexts {
            len: self.len,
            tokens: self.tokens[range.start * self.len..range.end * self.len].to_vec(),
            doc: self.doc[range.clone()].to_vec(),
            start: self.start[range].to_vec(),
        }
    }

    /// Saves as safetensors (u32 tensors `tokens`, `doc`, `start`).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let b = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (t, d, s) = (b(&self.tokens), b(&self.doc), b(&self.start));
        let n = self.n();
        let views = vec![
            (
                "tokens",
                TensorView::new(Dtype::U32, vec![n, self.len], &t)?,
            ),
            ("doc", TensorView::new(Dtype::U32, vec![n], &d)?),
            ("start", TensorView::new(Dtype::U32, vec![n], &s)?),
        ];
        let tmp = path.with_extension("tmp");
        safetensors::serialize_to_file(views, None, &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Loads what [`Contexts::save`] wrote; errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<Contexts> {
        use anyhow::Context as _;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let get = |name: &str| -> anyhow::Result<(Vec<usize>, Vec<u32>)> {
            let t = st
                .tensor(name)
                .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
            anyhow::ensure!(
                t.dtype() == safetensors::Dtype::U32,
                "{}: tensor `{name}` is {:?}, expected U32",
                path.display(),
                t.dtype()
            );
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (ts, tokens) = get("tokens")?;
        let (_, doc) = get("doc")?;
        let (_, start) = get("start")?;
        anyhow::ensure!(
            ts.len() == 2 && ts[0] == doc.len() && doc.len() == start.len() && ts[1] >= 2,
            "{}: inconsistent shapes (tokens {ts:?}, {} docs, {} starts)",
            path.display(),
            doc.len(),
            start.len()
        );
        Ok(Contexts {
            len: ts[1],
            tokens,
            doc,
            start,
        })
    }
}

/// Tokenizes the given documents (indices into the corpus).
pub fn tokenize_docs(
    tok: &Tokenizer,
    corpus: &Corpus,
    docs: &[usize],
) -> Result<Vec<(usize, Vec<u32>)>, LmError> {
    docs.iter()
        .map(|&d| Ok((d, tok.encode(&corpus.docs[d].text)?)))
        .collect()
}

/// Every full chunk of `len - 1` tokens of the documents, shuffled with `seed`, the first `n`
/// kept; each prefixed with `bos`. Errors when the documents do not hold `n` chunks.
pub fn sample_contexts(
    docs: &[(usize, Vec<u32>)],
    len: usize,
    n: usize,
    bos: u32,
    seed: u64,
) -> Result<Contexts, LmError> {
    if len < 2 {
        return Err(LmError::Input(format!("context length {len} < 2")));
    }
    let body = len - 1;
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new(); // (entry, doc, start)
    for (e, (d, toks)) in docs.iter().enumerate() {
        for c in 0..toks.len() / body {
            chunks.push((e, *d, c * body));
        }
    }
    if chunks.len() < n {
        return Err(LmError::Input(format!(
            "the documents hold only {} contexts of {len} tokens, {n} requested",
            chunks.len()
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    chunks.shuffle(&mut rng);
    let mut out = Contexts {
        len,
        ..Default::default()
    };
    for &(e, d, s) in &chunks[..n] {
        out.tokens.push(bos);
        out.tokens.extend_from_slice(&docs[e].1[s..s + body]);
        out.doc.push(d as u32);
        out.start.push(s as u32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_deterministic_and_traceable() {
        let docs: Vec<(usize, Vec<u32>)> = (0..4)
            .map(|d| (d + 10, (0..50u32).map(|t| 1000 * d as u32 + t).collect()))
            .collect();
        let a = sample_contexts(&docs, 8, 20, 1, 0).unwrap();
        assert_eq!(a, sample_contexts(&docs, 8, 20, 1, 0).unwrap());
        assert_ne!(a, sample_contexts(&docs, 8, 20, 1, 1).unwrap());
        for i in 0..a.n() {
            let c = a.get(i);
            assert_eq!(c[0], 1);
            let d = a.doc[i] as usize - 10;
            for (p, &t) in c[1..].iter().enumerate() {
                assert_eq!(t, docs[d].1[a.start[i] as usize + p]);
            }
        }
        // 4 docs x floor(50 / 7) = 28 chunks.
        assert!(sample_contexts(&docs, 8, 29, 1, 0).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        a.save(&p).unwrap();
        assert_eq!(Contexts::load(&p).unwrap(), a);
    }
}
