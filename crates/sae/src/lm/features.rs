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

pub const ULTRALOW_BELOW: f64 = 1e-4;
pub const DENSE_ABOVE: f64 = 0.01;

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
    if density == 0.0 {
        "dead"
    } else if density < ULTRALOW_BELOW {
        "ultralow"
    } else if density > DENSE_ABOVE {
        "dense"
    } else {
        "typical"
    }
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
        let mut scores: Vec<(f32, u32)> = w_out
            .chunks_exact(d)
            .enumerate()
            .map(|(v, row)| (row.iter().zip(&dir).map(|(a, b)| a * b).sum(), v as u32))
            .collect();
        let kt = opts.top_tokens.min(scores.len());
        scores.select_nth_unstable_by(kt.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
        scores.truncate(kt);
        scores.sort_by(|a, b| b.0.total_cmp(&a.0));
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
        "{:>7} {:>9} {:>10} {:>7}  {:<30} best example\n",
        "feature", "band", "density", "max", "top tokens"
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
        s.push_str(&format!(
            "{:>7} {:>9} {:>10.2e} {:>7.2}  {:<30} {}\n",
            f.index,
            f.band,
            f.density,
            f.max_activation,
            toks.join(" "),
            ex
        ));
    }
    s
}
