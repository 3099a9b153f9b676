//! Feature contexts (`runner features`): what researchers read to judge a dictionary. For a
//! sample of features spread over the density range (dead, ultralow, typical, dense), each
//! feature's density on the evaluation split, its top activating examples with about 20 tokens of
//! surrounding Brown text and per-token activations, and the tokens whose unembedding best
//! matches its decoder direction (decoder row times the final-norm gain, against the output
//! layer).
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
pub fn top_tokens(w_out: &[f32], d: usize, dir: &[f32], n: usize) -> Vec<(f32, u32)> {
    let mut scores: Vec<(f32, u32)> = w_out
        .chunks_exact(d)
        .enumerate()
        .map(|(v, row)| (row.iter().zip(dir).map(|(a, b)| a * b).sum(), v as u32))
        .collect();
    top_of(&mut scores, n)
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

/// Mean pairwise cosine of the embedding rows (`embed`, vocab × d) of `tokens`; None with fewer than two tokens.
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

/// The coherence of the token lists of random directions: Gaussian directions in the residual space, scaled by the
/// final norm's gain like a decoder direction, their top tokens found by the same unembedding match.
#[derive(Debug, Clone)]
pub struct CoherenceNull {
    /// Sorted ascending.
    pub scores: Vec<f64>,
}

impl CoherenceNull {
    pub fn build(
        w_out: &[f32],
        gain: &[f32],
        d: usize,
        n_top: usize,
        directions: usize,
        seed: u64,
    ) -> Self {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let vocab = w_out.len() / d.max(1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xc0de);
        let normal = rand_distr::StandardNormal;
        let dirs: Vec<f32> = (0..directions * d)
            .map(|i| {
                let z: f32 = normal.sample(&mut rng);
                z * gain[i % d]
            })
            .collect();
        // All directions against the whole vocabulary in one product: [directions, vocab].
        let mut dots = vec![0f32; directions * vocab];
        saeperf_kernels::ops::gemm::sgemm(
            directions,
            vocab,
            d,
            &dirs,
            saeperf_kernels::ops::gemm::Trans::N,
            w_out,
            saeperf_kernels::ops::gemm::Trans::T,
            &mut dots,
            false,
        );
        let mut scores: Vec<f64> = dots
            .chunks_exact(vocab.max(1))
            .filter_map(|row| {
                let mut s: Vec<(f32, u32)> = row
                    .iter()
                    .enumerate()
                    .map(|(v, x)| (*x, v as u32))
                    .collect();
                let ids: Vec<u32> = top_of(&mut s, n_top).into_iter().map(|t| t.1).collect();
                token_coherence(w_out, d, &ids)
            })
            .collect();
        scores.sort_by(f64::total_cmp);
        CoherenceNull { scores }
    }

    /// The fraction of random directions whose score is at most `score`.
    pub fn percentile(&self, score: f64) -> f64 {
        if self.scores.is_empty() {
            return f64::NAN;
        }
        self.scores.partition_point(|s| *s <= score) as f64 / self.scores.len() as f64
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.scores.is_empty() {
            return f64::NAN;
        }
        let i = ((self.scores.len() - 1) as f64 * q).round() as usize;
        self.scores[i]
    }

    pub fn judge(&self, score: f64) -> Coherence {
        Coherence {
            score,
            percentile: self.percentile(score),
            null_median: self.quantile(0.5),
            null_p95: self.quantile(0.95),
        }
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
        // Unembedding match.
        let dir: Vec<f32> = sae.w_dec[j * d..(j + 1) * d]
            .iter()
            .zip(&gain)
            .map(|(w, g)| w * g)
            .collect();
        let scores = top_tokens(&w_out, d, &dir, opts.top_tokens);
        let ids: Vec<u32> = scores.iter().map(|s| s.1).collect();
        let coherence = token_coherence(&w_out, d, &ids).map(|score| null.judge(score));
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

    /// vocab 2000 × d 64: 20 tokens share a direction (plus noise), the rest are random.
    fn embedding() -> (Vec<f32>, Vec<f32>) {
        let (vocab, d) = (2000, 64);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let shared: Vec<f32> = (0..d).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut w = vec![0f32; vocab * d];
        for v in 0..vocab {
            for j in 0..d {
                let noise = rng.random::<f32>() - 0.5;
                w[v * d + j] = if v < 20 {
                    shared[j] + 0.3 * noise
                } else {
                    noise
                };
            }
        }
        (w, shared)
    }

    #[test]
    fn a_direction_of_similar_tokens_is_coherent_and_random_ones_are_not() {
        let (w, shared) = embedding();
        let d = 64;
        let gain = vec![1f32; d];
        let null = CoherenceNull::build(&w, &gain, d, 10, 200, 0);
        assert_eq!(null.scores.len(), 200);
        let ids: Vec<u32> = top_tokens(&w, d, &shared, 10).iter().map(|t| t.1).collect();
        assert!(ids.iter().all(|&t| t < 20), "{ids:?}");
        let c = null.judge(token_coherence(&w, d, &ids).unwrap());
        assert!(c.percentile >= 0.99 && c.score > c.null_p95, "{c:?}");
        // Random directions fall in the middle of the null, on the whole.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
        let mut pcts: Vec<f64> = (0..50)
            .map(|_| {
                let dir: Vec<f32> = (0..d).map(|_| rng.random::<f32>() - 0.5).collect();
                let ids: Vec<u32> = top_tokens(&w, d, &dir, 10).iter().map(|t| t.1).collect();
                null.percentile(token_coherence(&w, d, &ids).unwrap())
            })
            .collect();
        pcts.sort_by(f64::total_cmp);
        assert!((0.2..=0.8).contains(&pcts[25]), "{pcts:?}");
        // Identical tokens score 1; fewer than two have no score.
        assert!((token_coherence(&w, d, &[5, 5, 5]).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(token_coherence(&w, d, &[5]), None);
    }
}
