//! Feature contexts (`runner features`): what researchers read to judge a dictionary. For a
//! sample of features spread over the density range (dead, ultralow, typical, dense), each
//! feature's density on the evaluation split, its top activating examples with about 20 tokens of
//! surrounding Brown text and per-token activations, and the tokens whose unembedding best
//! matches its decoder direction (decoder row times the final-norm gain, against the output
//! layer), with that list's coherence against the lists of random directions ([`token_coherence`],
//! [`CoherenceNull`]; docs/metrics.md, "Token coherence").
//!
//! Bands (density = fraction of evaluation tokens on which the feature fires): dead = 0,
//! ultralow < 1e-4, dense > 0.01 (the `dense_fraction` threshold of metrics.json), typical between.

use super::gguf::GgufFile;
use super::tokenizer::Tokenizer;
use crate::data::actset::ActivationSet;
use crate::data::corpus::Corpus;
use anyhow::Context as _;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use saeperf_kernels::sae::Sae;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::metrics::{DENSE_THRESHOLD as DENSE_ABOVE, ULTRALOW_BELOW};

/// Options of [`feature_report`].
#[derive(Debug, Clone)]
pub struct FeatureOptions {
    /// Features sampled per density band.
    pub per_band: usize,
    /// Top activating examples per feature.
    pub examples: usize,
    /// Tokens of context around each example (about 3/4 before, 1/4 after).
    pub window: usize,
    /// Tokens listed by unembedding match.
    pub top_tokens: usize,
    /// Extra features to include whatever their band.
    pub include: Vec<usize>,
    pub seed: u64,
    /// Model and corpus (defaults: those recorded in the set's source, else the asset cache).
    pub model: Option<PathBuf>,
    pub corpus: Option<PathBuf>,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        FeatureOptions {
            per_band: 8,
            examples: 8,
            window: 20,
            top_tokens: 10,
            include: Vec::new(),
            seed: 0,
            model: None,
            corpus: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenAct {
    pub text: String,
    /// The feature's activation on this token (scaled units); null where the token is not a
    /// row of the set (outside its context, or a BOS).
    pub activation: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct Example {
    pub activation: f32,
    pub doc: String,
    /// Token offset within the document.
    pub pos: u32,
    /// Index into `tokens` of the activating token.
    pub focus: usize,
    /// The window as plain text with the activating token in [[ ]].
    pub text: String,
    pub tokens: Vec<TokenAct>,
}

#[derive(Debug, Serialize)]
pub struct TokenScore {
    pub id: u32,
    pub text: String,
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct Feature {
    pub index: usize,
    pub band: &'static str,
    pub density: f64,
    pub fires: u64,
    pub mean_activation: f64,
    pub max_activation: f32,
    pub top_examples: Vec<Example>,
    pub top_tokens: Vec<TokenScore>,
    /// How coherent `top_tokens` is, against the lists of random directions (docs/metrics.md, "Token coherence").
    pub coherence: Option<Coherence>,
}

/// Random directions whose token lists make the null distribution of [`token_coherence`].
pub const NULL_DIRECTIONS: usize = 200;

/// A card's token coherence and where it falls among random directions'.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Coherence {
    /// Mean pairwise cosine of the listed tokens' embedding rows.
    pub score: f64,
    /// Fraction of random directions whose list scores at most this.
    pub percentile: f64,
    pub null_median: f64,
    pub null_p95: f64,
}

/// The `n` tokens whose unembedding row best matches `dir` (largest dot product first): (score, token id).
/// One direction of [`top_tokens_many`].
pub fn top_tokens(w_out: &[f32], d: usize, dir: &[f32], n: usize) -> Vec<(f32, u32)> {
    top_tokens_many(w_out, d, dir, n).pop().unwrap_or_default()
}

/// Directions scored against the unembedding in one pass of matrix products.
const DIRS_PER_BLOCK: usize = 64;

/// The unembedding match of feature cards and of the coherence null, for many directions at once: `dirs` is
/// m × d row-major, `w_out` vocab × d row-major (the output matrix; see [`feature_report`] for which tensor), and
/// row r of the answer is the `n` tokens v with the largest `w_out[v] · dirs[r]`, largest first, ties by lower id:
/// (score, token id). The dot products are one SGEMM per block of [`DIRS_PER_BLOCK`] directions (so at most
/// 64 × vocab scores are held at once), and each row's top `n` is selected in parallel.
pub fn top_tokens_many(w_out: &[f32], d: usize, dirs: &[f32], n: usize) -> Vec<Vec<(f32, u32)>> {
    use rayon::prelude::*;
    use saeperf_kernels::ops::gemm::{sgemm, Trans};
    if d == 0 || dirs.is_empty() {
        return vec![];
    }
    assert_eq!(
        w_out.len() % d,
        0,
        "top_tokens_many: w_out is not vocab × d"
    );
    assert_eq!(dirs.len() % d, 0, "top_tokens_many: dirs is not m × d");
    let vocab = w_out.len() / d;
    let m = dirs.len() / d;
    if vocab == 0 {
        return vec![vec![]; m];
    }
    let mut out = Vec::with_capacity(m);
    let mut dots = vec![0f32; DIRS_PER_BLOCK.min(m) * vocab];
    for block in dirs.chunks(DIRS_PER_BLOCK * d) {
        let rows = block.len() / d;
        let dots = &mut dots[..rows * vocab];
        // [rows, d] · [vocab, d]ᵀ = [rows, vocab].
        sgemm(
            rows,
            vocab,
            d,
            block,
            Trans::N,
            w_out,
            Trans::T,
            dots,
            false,
        );
        out.par_extend(dots.par_chunks_exact(vocab).map(|row| {
            let mut s: Vec<(f32, u32)> = row
                .iter()
                .enumerate()
                .map(|(v, x)| (*x, v as u32))
                .collect();
            top_of(&mut s, n)
        }));
    }
    out
}

fn top_of(scores: &mut Vec<(f32, u32)>, n: usize) -> Vec<(f32, u32)> {
    let kt = n.min(scores.len());
    if kt == 0 {
        return vec![];
    }
    scores.select_nth_unstable_by(kt - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scores.truncate(kt);
    scores.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    std::mem::take(scores)
}

/// Mean pairwise cosine of the rows of `embed` (vocab × d row-major) of `tokens`, each unordered pair once (a token
/// listed twice pairs with itself at cosine 1); None with fewer than two tokens. Feature cards pass the same matrix
/// their list was ranked against (the output matrix; SmolLM2 ties it to the token embedding). A zero row has cosine
/// 0 with everything.
pub fn token_coherence(embed: &[f32], d: usize, tokens: &[u32]) -> Option<f64> {
    if tokens.len() < 2 {
        return None;
    }
    let rows: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            let r = &embed[t as usize * d..(t as usize + 1) * d];
            let n = r
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-30);
            r.iter().map(|v| *v as f64 / n).collect()
        })
        .collect();
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            sum += rows[i]
                .iter()
                .zip(&rows[j])
                .map(|(a, b)| a * b)
                .sum::<f64>();
            pairs += 1;
        }
    }
    Some(sum / pairs as f64)
}

/// The seed of the null's random directions, from the report's seed (so the null differs from the band sampling's
/// stream, which uses the seed itself).
pub fn null_seed(seed: u64) -> u64 {
    seed ^ 0xc0de
}

/// The null distribution of [`token_coherence`]: the coherence of the token lists of random directions. Each
/// direction is standard Gaussian in the residual space (ChaCha8 seeded by [`null_seed`]), times the final norm's
/// gain as a decoder direction is; its list is its top `n_top` tokens by the same unembedding match as the cards
/// ([`top_tokens_many`]), scored against the same matrix. Built once per report.
#[derive(Debug, Clone)]
pub struct CoherenceNull {
    /// Sorted ascending.
    pub scores: Vec<f64>,
}

impl CoherenceNull {
    /// `w_out` vocab × d row-major, `gain` the d gains applied to every direction (ones where there is no norm).
    pub fn build(
        w_out: &[f32],
        gain: &[f32],
        d: usize,
        n_top: usize,
        directions: usize,
        seed: u64,
    ) -> Self {
        use rand_distr::Distribution;
        assert_eq!(gain.len(), d, "CoherenceNull::build: gain length");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(null_seed(seed));
        let dirs: Vec<f32> = (0..directions * d)
            .map(|i| {
                let z: f32 = rand_distr::StandardNormal.sample(&mut rng);
                z * gain[i % d]
            })
            .collect();
        let mut scores: Vec<f64> = top_tokens_many(w_out, d, &dirs, n_top)
            .iter()
            .filter_map(|list| {
                let ids: Vec<u32> = list.iter().map(|t| t.1).collect();
                token_coherence(w_out, d, &ids)
            })
            .collect();
        scores.sort_by(f64::total_cmp);
        CoherenceNull { scores }
    }

    /// The fraction of random directions whose score is at most `score` (NaN for an empty null).
    pub fn percentile(&self, score: f64) -> f64 {
        if self.scores.is_empty() {
            return f64::NAN;
        }
        self.scores.partition_point(|s| *s <= score) as f64 / self.scores.len() as f64
    }

    /// The null score at quantile `q` (nearest rank).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.scores.is_empty() {
            return f64::NAN;
        }
        let i = ((self.scores.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.scores[i]
    }

    /// A card's score placed in the null; None for an empty null (no random direction had a list of two tokens).
    pub fn judge(&self, score: f64) -> Option<Coherence> {
        if self.scores.is_empty() {
            return None;
        }
        Some(Coherence {
            score,
            percentile: self.percentile(score),
            null_median: self.quantile(0.5),
            null_p95: self.quantile(0.95),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct FeatureReport {
    pub dict: PathBuf,
    pub data: PathBuf,
    pub eval_tokens: usize,
    pub d_sae: usize,
    pub band_rule: serde_json::Value,
    pub band_counts: HashMap<&'static str, usize>,
    pub features: Vec<Feature>,
}

fn band(density: f64) -> &'static str {
    crate::metrics::density_band(density)
}

/// Finds the model / corpus of a set: the path recorded in its source when it still has the
/// recorded checksum, else the same file name in the asset cache, else an error.
pub fn locate_asset(set: &ActivationSet, key: &str) -> anyhow::Result<PathBuf> {
    let src = &set.manifest().source;
    let sha = src[key]["sha256"]
        .as_str()
        .with_context(|| format!("{}: source has no {key}.sha256", set.dir().display()))?;
    let mut candidates = Vec::new();
    if let Some(p) = src[key]["path"].as_str() {
        candidates.push(PathBuf::from(p));
    }
    if let Some(f) = src[key]["file"].as_str() {
        let sub = if key == "model" { "models" } else { "corpus" };
        candidates.push(crate::data::assets::home().join(sub).join(f));
    }
    for c in &candidates {
        if c.exists() && crate::data::assets::sha256_file(c).ok().as_deref() == Some(sha) {
            return Ok(c.clone());
        }
    }
    anyhow::bail!(
        "the {key} this set was made from (SHA-256 {sha}) is not at {candidates:?}; run `runner data fetch` \
         or pass its path"
    )
}

/// Builds the report.
pub fn feature_report(
    sae: &Sae,
    dict_dir: &Path,
    set: &ActivationSet,
    opts: &FeatureOptions,
) -> anyhow::Result<FeatureReport> {
    let d = set.d_in();
    anyhow::ensure!(
        sae.cfg.d_in == d,
        "dictionary d_in {} does not match the set's d_in {d}",
        sae.cfg.d_in
    );
    anyhow::ensure!(
        set.manifest().source["kind"] == "model",
        "{} is not a model activation set (source kind {}); feature contexts need text",
        set.dir().display(),
        set.manifest().source["kind"]
    );
    let prov = set
        .provenance()
        .with_context(|| format!("{} has no provenance", set.dir().display()))?;
    let fsz = sae.cfg.d_sae;
    let sf = sae.cfg.scaling_factor;
    let rows = set.eval_rows();
    let n = rows.len();
    anyhow::ensure!(n > 0, "{} has no evaluation rows", set.dir().display());

    // Pass over the eval split: firing counts, sums, and each feature's top rows.
    let k = opts.examples.max(1);
    let mut fires = vec![0u64; fsz];
    let mut sums = vec![0f64; fsz];
    let mut top: Vec<Vec<(f32, usize)>> = vec![Vec::new(); fsz]; // ascending by activation
    let chunk = 2048;
    let mut r = rows.start;
    while r < rows.end {
        let hi = (r + chunk).min(rows.end);
        let m = hi - r;
        let mut x = set.rows_f32(r..hi);
        x.iter_mut().for_each(|v| *v *= sf);
        let f = sae.encode(&x, m);
        for i in 0..m {
            for (j, &a) in f[i * fsz..(i + 1) * fsz].iter().enumerate() {
                if a > 0.0 {
                    fires[j] += 1;
                    sums[j] += a as f64;
                    let t = &mut top[j];
                    if t.len() < k || a > t[0].0 {
                        let at = t.partition_point(|e| e.0 < a);
                        t.insert(at, (a, r + i));
                        if t.len() > k {
                            t.remove(0);
                        }
                    }
                }
            }
        }
        r = hi;
    }

    // Sample features per band.
    let mut by_band: HashMap<&'static str, Vec<usize>> = HashMap::new();
    for (j, &c) in fires.iter().enumerate() {
        by_band
            .entry(band(c as f64 / n as f64))
            .or_default()
            .push(j);
    }
    let band_counts = ["dead", "ultralow", "typical", "dense"]
        .into_iter()
        .map(|b| (b, by_band.get(b).map_or(0, Vec::len)))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut chosen: Vec<usize> = Vec::new();
    for b in ["dead", "ultralow", "typical", "dense"] {
        if let Some(list) = by_band.get(b) {
            let mut pick: Vec<usize> = list
                .choose_multiple(&mut rng, opts.per_band.min(list.len()))
                .copied()
                .collect();
            pick.sort_unstable();
            chosen.extend(pick);
        }
    }
    for &i in &opts.include {
        anyhow::ensure!(i < fsz, "feature {i} outside 0..{fsz}");
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }

    // Text: tokenizer, corpus, and the unembedding.
    let model_path = match &opts.model {
        Some(p) => p.clone(),
        None => locate_asset(set, "model")?,
    };
    let corpus_path = match &opts.corpus {
        Some(p) => p.clone(),
        None => locate_asset(set, "corpus")?,
    };
    let gguf = GgufFile::open(&model_path)?;
    let cfg = gguf.config()?;
    anyhow::ensure!(
        cfg.d_model == d,
        "model d_model {} != set d_in {d}",
        cfg.d_model
    );
    let tok = Tokenizer::from_gguf(&gguf)?;
    let corpus = Corpus::from_tgz(&corpus_path)?;
    let doc_names: Vec<String> =
        serde_json::from_value(set.manifest().source["corpus"]["documents"].clone())
            .unwrap_or_else(|_| corpus.docs.iter().map(|d| d.id.clone()).collect());
    // The matrix of the unembedding match and of token coherence: the output layer, `output.weight`, or the token
    // embedding `token_embd.weight` when the model ties them (SmolLM2 does, so there it is the embedding). A
    // direction u in the residual stream moves the logits by W_out · (g ⊙ u / rms) after the final RMSNorm with gain
    // g; the 1/rms only rescales, so the cards rank tokens by W_out · (g ⊙ w_dec,j), and random directions get the
    // same ⊙ g.
    let out_name = if gguf.has("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let w_out = gguf
        .tensor_f32(out_name, &[cfg.vocab, d])?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let gain = gguf
        .tensor_f32("output_norm.weight", &[d])?
        .to_vec1::<f32>()?;

    // The coherence of random directions' token lists, once per report.
    let null = CoherenceNull::build(
        &w_out,
        &gain,
        d,
        opts.top_tokens,
        NULL_DIRECTIONS,
        opts.seed,
    );

    // Rows by (doc, pos), to find the neighbours of an example in the set.
    let mut where_row: HashMap<(u32, u32), usize> = HashMap::with_capacity(set.n_tokens());
    for (row, (&dd, &pp)) in prov.doc.iter().zip(&prov.pos).enumerate() {
        where_row.insert((dd, pp), row);
    }
    let mut doc_tokens: HashMap<u32, Vec<u32>> = HashMap::new();
    let before = opts.window * 3 / 4;
    let after = opts.window - before;

    // Unembedding match of every chosen feature, in one product.
    let dirs: Vec<f32> = chosen
        .iter()
        .flat_map(|&j| {
            sae.w_dec[j * d..(j + 1) * d]
                .iter()
                .zip(&gain)
                .map(|(w, g)| w * g)
        })
        .collect();
    let mut card_tokens = top_tokens_many(&w_out, d, &dirs, opts.top_tokens).into_iter();

    let mut features = Vec::with_capacity(chosen.len());
    for &j in &chosen {
        let density = fires[j] as f64 / n as f64;
        let mut examples = Vec::new();
        for &(a, row) in top[j].iter().rev() {
            let (dd, pp) = (prov.doc[row], prov.pos[row]);
            let name = doc_names
                .get(dd as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{dd}"));
            let toks = match doc_tokens.get(&dd) {
                Some(t) => t,
                None => {
                    let idx = corpus
                        .docs
                        .iter()
                        .position(|x| x.id == name)
                        .with_context(|| format!("document {name} not in the corpus"))?;
                    let t = tok.encode(&corpus.docs[idx].text)?;
                    doc_tokens.entry(dd).or_insert(t)
                }
            };
            anyhow::ensure!(
                (pp as usize) < toks.len() && toks[pp as usize] == prov.token_id[row],
                "row {row}: document {name} token {pp} does not match the set's token id \
                 (different corpus or tokenizer?)"
            );
            let lo = (pp as usize).saturating_sub(before);
            let hi = (pp as usize + after).min(toks.len());
            let neigh: Vec<Option<usize>> = (lo..hi)
                .map(|q| where_row.get(&(dd, q as u32)).copied())
                .collect();
            let present: Vec<usize> = neigh.iter().flatten().copied().collect();
            let mut x = set.gather_f32(&present);
            x.iter_mut().for_each(|v| *v *= sf);
            let f = sae.encode(&x, present.len());
            let mut it = 0;
            let mut tokens = Vec::with_capacity(hi - lo);
            let mut text = String::new();
            for (q, nb) in (lo..hi).zip(&neigh) {
                let t = tok.token_text(toks[q]);
                let act = nb.map(|_| {
                    let v = f[it * fsz + j];
                    it += 1;
                    v
                });
                if q == pp as usize {
                    text.push_str(&format!("[[{t}]]"));
                } else {
                    text.push_str(&t);
                }
                tokens.push(TokenAct {
                    text: t,
                    activation: act,
                });
            }
            examples.push(Example {
                activation: a,
                doc: name,
                pos: pp,
                focus: pp as usize - lo,
                text,
                tokens,
            });
        }
        let scores = card_tokens.next().unwrap_or_default();
        let ids: Vec<u32> = scores.iter().map(|s| s.1).collect();
        let coherence = token_coherence(&w_out, d, &ids).and_then(|score| null.judge(score));
        features.push(Feature {
            index: j,
            band: band(density),
            density,
            fires: fires[j],
            mean_activation: if fires[j] > 0 {
                sums[j] / fires[j] as f64
            } else {
                0.0
            },
            max_activation: top[j].last().map_or(0.0, |e| e.0),
            top_examples: examples,
            coherence,
            top_tokens: scores
                .into_iter()
                .map(|(s, id)| TokenScore {
                    id,
                    text: tok.token_text(id),
                    score: s,
                })
                .collect(),
        });
    }
    Ok(FeatureReport {
        dict: dict_dir.to_path_buf(),
        data: set.dir().to_path_buf(),
        eval_tokens: n,
        d_sae: fsz,
        band_rule: serde_json::json!({
            "dead": "density 0", "ultralow": format!("density < {ULTRALOW_BELOW}"),
            "dense": format!("density > {DENSE_ABOVE}"), "typical": "otherwise",
            "density": "fraction of evaluation tokens on which the feature fires",
        }),
        band_counts,
        features,
    })
}

/// A short human-readable rendering: one line per feature with its best example.
pub fn render_table(r: &FeatureReport) -> String {
    let mut s = format!(
        "{} features on {} eval tokens: dead {}, ultralow {}, typical {}, dense {}\n",
        r.d_sae,
        r.eval_tokens,
        r.band_counts["dead"],
        r.band_counts["ultralow"],
        r.band_counts["typical"],
        r.band_counts["dense"]
    );
    s.push_str(&format!(
        "{:>7} {:>9} {:>10} {:>7} {:>8}  {:<30} best example\n",
        "feature", "band", "density", "max", "coh pct", "top tokens"
    ));
    for f in &r.features {
        let toks: Vec<String> = f
            .top_tokens
            .iter()
            .take(4)
            .map(|t| format!("{:?}", t.text))
            .collect();
        let ex = f
            .top_examples
            .first()
            .map(|e| format!("{}: {}", e.doc, e.text.replace('\n', "⏎")))
            .unwrap_or_default();
        let coh = f
            .coherence
            .map_or("-".to_string(), |c| format!("{:.2}", c.percentile));
        s.push_str(&format!(
            "{:>7} {:>9} {:>10.2e} {:>7.2} {:>8}  {:<30} {}\n",
            f.index,
            f.band,
            f.density,
            f.max_activation,
            coh,
            toks.join(" "),
            ex
        ));
    }
    s
}

#[cfg(test)]
mod coherence_tests {
    use super::*;
    use rand::Rng;

    const VOCAB: usize = 2000;
    const D: usize = 64;
    const CLUSTER: u32 = 20;

    /// vocab 2000 × d 64: tokens 0..20 share a direction (plus noise), the rest are random; and the shared direction.
    fn embedding() -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let shared: Vec<f32> = (0..D).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut w = vec![0f32; VOCAB * D];
        for v in 0..VOCAB {
            for j in 0..D {
                let noise = rng.random::<f32>() - 0.5;
                w[v * D + j] = if v < CLUSTER as usize {
                    shared[j] + 0.3 * noise
                } else {
                    noise
                };
            }
        }
        (w, shared)
    }

    fn ids(list: &[(f32, u32)]) -> Vec<u32> {
        list.iter().map(|t| t.1).collect()
    }

    #[test]
    fn a_direction_along_a_cluster_lists_it_and_beats_random_directions() {
        let (w, shared) = embedding();
        let null = CoherenceNull::build(&w, &[1.0; D], D, 10, NULL_DIRECTIONS, 0);
        assert_eq!(null.scores.len(), NULL_DIRECTIONS);
        assert!(null.scores.windows(2).all(|p| p[0] <= p[1]));
        // The cluster's mean direction lists ten cluster tokens.
        let mut mean = vec![0f32; D];
        for v in 0..CLUSTER as usize {
            for j in 0..D {
                mean[j] += w[v * D + j] / CLUSTER as f32;
            }
        }
        let list = ids(&top_tokens(&w, D, &mean, 10));
        assert_eq!(list.len(), 10);
        assert!(list.iter().all(|&t| t < CLUSTER), "{list:?}");
        let c = null.judge(token_coherence(&w, D, &list).unwrap()).unwrap();
        assert!(c.percentile >= 0.99 && c.score > c.null_p95, "{c:?}");
        assert!(c.null_median <= c.null_p95 && c.score > 0.5, "{c:?}");
        // So does the shared direction itself.
        assert!(ids(&top_tokens(&w, D, &shared, 10))
            .iter()
            .all(|&t| t < CLUSTER));
    }

    #[test]
    fn random_directions_fall_in_the_middle_of_the_null() {
        let (w, _) = embedding();
        let null = CoherenceNull::build(&w, &[1.0; D], D, 10, NULL_DIRECTIONS, 0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
        let dirs: Vec<f32> = (0..50 * D).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut pcts: Vec<f64> = top_tokens_many(&w, D, &dirs, 10)
            .iter()
            .map(|l| null.percentile(token_coherence(&w, D, &ids(l)).unwrap()))
            .collect();
        assert_eq!(pcts.len(), 50);
        pcts.sort_by(f64::total_cmp);
        assert!((0.2..=0.8).contains(&pcts[25]), "{pcts:?}");
        // Spread, not piled at one end.
        assert!(pcts[5] < 0.5 && pcts[44] > 0.5, "{pcts:?}");
    }

    #[test]
    fn identical_tokens_score_one_and_short_lists_none() {
        let (w, _) = embedding();
        assert!((token_coherence(&w, D, &[5, 5, 5]).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(token_coherence(&w, D, &[5]), None);
        assert_eq!(token_coherence(&w, D, &[]), None);
        // Orthogonal rows score 0, opposite rows -1, and a zero row pairs at 0.
        let e = [1.0, 0.0, 0.0, 2.0, -3.0, 0.0, 0.0, 0.0];
        assert!(token_coherence(&e, 2, &[0, 1]).unwrap().abs() < 1e-12);
        assert!((token_coherence(&e, 2, &[0, 2]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(token_coherence(&e, 2, &[0, 3]), Some(0.0));
        // Mean over the three pairs of {0, 0, 1}: (1 + 0 + 0) / 3.
        assert!((token_coherence(&e, 2, &[0, 0, 1]).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn the_batched_match_is_the_plain_loop() {
        let (w, _) = embedding();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // 70 directions: more than one block of the product.
        let m = DIRS_PER_BLOCK + 6;
        let dirs: Vec<f32> = (0..m * D).map(|_| rng.random::<f32>() - 0.5).collect();
        let many = top_tokens_many(&w, D, &dirs, 10);
        assert_eq!(many.len(), m);
        for (r, got) in many.iter().enumerate() {
            let dir = &dirs[r * D..(r + 1) * D];
            let mut want: Vec<(f64, u32)> = w
                .chunks_exact(D)
                .enumerate()
                .map(|(v, row)| {
                    let s = row
                        .iter()
                        .zip(dir)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    (s, v as u32)
                })
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            assert_eq!(
                ids(got),
                want[..10].iter().map(|t| t.1).collect::<Vec<_>>(),
                "direction {r}"
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.0 as f64 - w.0).abs() < 1e-4,
                    "direction {r}: {g:?} vs {w:?}"
                );
            }
            // One direction alone is the same list (the product's last bits may differ with the block's size).
            assert_eq!(ids(&top_tokens(&w, D, dir, 10)), ids(got), "direction {r}");
        }
        // More tokens asked than exist, and no directions.
        assert_eq!(top_tokens(&w[..3 * D], D, &dirs[..D], 10).len(), 3);
        assert!(top_tokens_many(&w, D, &[], 10).is_empty());
    }

    #[test]
    fn percentiles_count_ties_as_at_or_below_and_the_null_is_seeded() {
        let null = CoherenceNull {
            scores: vec![0.1, 0.2, 0.2, 0.3],
        };
        assert_eq!(null.percentile(0.05), 0.0);
        assert_eq!(null.percentile(0.2), 0.75);
        assert_eq!(null.percentile(0.3), 1.0);
        assert_eq!(null.quantile(0.5), 0.2);
        assert_eq!(null.quantile(1.0), 0.3);
        let c = null.judge(0.25).unwrap();
        assert_eq!((c.percentile, c.null_median, c.null_p95), (0.75, 0.2, 0.3));
        assert_eq!(CoherenceNull { scores: vec![] }.judge(0.5), None);
        // A list of one token has no score, so neither has the null.
        let (w, _) = embedding();
        assert!(CoherenceNull::build(&w, &[1.0; D], D, 1, 20, 0)
            .scores
            .is_empty());
        // The same seed gives the same null; another seed another.
        let a = CoherenceNull::build(&w, &[1.0; D], D, 10, 30, 1);
        assert_eq!(
            a.scores,
            CoherenceNull::build(&w, &[1.0; D], D, 10, 30, 1).scores
        );
        assert_ne!(
            a.scores,
            CoherenceNull::build(&w, &[1.0; D], D, 10, 30, 2).scores
        );
    }

    #[test]
    fn the_table_shows_each_cards_percentile() {
        let feature = |index, coherence| Feature {
            index,
            band: "typical",
            density: 0.001,
            fires: 3,
            mean_activation: 1.0,
            max_activation: 2.0,
            top_examples: vec![],
            top_tokens: vec![TokenScore {
                id: 1,
                text: " a".into(),
                score: 0.5,
            }],
            coherence,
        };
        let r = FeatureReport {
            dict: "d".into(),
            data: "x".into(),
            eval_tokens: 1000,
            d_sae: 2,
            band_rule: serde_json::json!({}),
            band_counts: ["dead", "ultralow", "typical", "dense"]
                .into_iter()
                .map(|b| (b, 0))
                .collect(),
            features: vec![
                feature(
                    0,
                    Some(Coherence {
                        score: 0.4,
                        percentile: 0.995,
                        null_median: 0.1,
                        null_p95: 0.2,
                    }),
                ),
                feature(1, None),
            ],
        };
        let t = render_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("coh pct"), "{t}");
        assert!(
            lines[2].contains(" 0.99 ") || lines[2].contains(" 1.00 "),
            "{t}"
        );
        let cells: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(cells[4], "-", "{t}");
    }

    /// The null at SmolLM2's size (vocab 49,152 × d 576, 200 directions, top 10); a timing to run by hand:
    /// `cargo test -p saeperf-sae --lib null_at_model_size -- --ignored --nocapture` (add `--release`).
    #[test]
    #[ignore]
    fn null_at_model_size() {
        let (vocab, d) = (49_152, 576);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..vocab * d).map(|_| rng.random::<f32>() - 0.5).collect();
        let t = std::time::Instant::now();
        let null = CoherenceNull::build(&w, &vec![1.0; d], d, 10, NULL_DIRECTIONS, 0);
        let dt = t.elapsed();
        eprintln!(
            "null of {NULL_DIRECTIONS} directions at {vocab} × {d}: {dt:?} on {} threads (median {:.4}, p95 {:.4})",
            rayon::current_num_threads(),
            null.quantile(0.5),
            null.quantile(0.95)
        );
        assert_eq!(null.scores.len(), NULL_DIRECTIONS);
    }
}
