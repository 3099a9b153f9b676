//! Loss recovered: the model's next-token cross-entropy on fixed evaluation contexts when the
//! residual entering the hooked block is left alone (ce_clean), replaced by zeros (ce_zero), or
//! replaced by a reconstruction (ce_sae), plus the mean KL divergence of the spliced and of the
//! zero-ablated distribution from the clean one (kl_div, and SAEBench's KL-div score kl_score).
//! Definitions in docs/metrics.md ("Language-model metrics").
//!
//! Only positions 1.. are replaced (the BOS position is not in the activation sets, its norm is an
//! outlier and no dictionary is trained on it); every prediction of every context counts in the
//! means. The blocks before the hook run once per batch and are shared by the three passes.

use super::model::{next_token_losses, Llama};
use super::{contexts::Contexts, LmError};
use candle_core::{Device, Tensor};

/// The language-model metrics of one dictionary (keys of metrics.json).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LmMetrics {
    pub ce_clean: f64,
    pub ce_sae: f64,
    pub ce_zero: f64,
    pub loss_recovered: f64,
    pub delta_ce: f64,
    pub kl_div: f64,
    /// Mean KL(clean ‖ zero-ablated): the denominator of SAEBench's KL-div score.
    pub kl_zero: f64,
    /// SAEBench's KL-div score: (kl_zero − kl_div) / kl_zero.
    pub kl_score: f64,
}

/// A reconstruction callback: `n` rows of `d_model` values in (model units), as many out.
pub type Reconstruct<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>, LmError> + 'a;

/// Replaces positions 1.. of `x` `[b, t, d]` with `f(rows)` where rows is `[(b*(t-1)), d]`
/// flattened row-major; position 0 is kept.
fn splice_rows(x: &Tensor, f: &mut Reconstruct) -> Result<Tensor, LmError> {
    let (b, t, d) = x.dims3()?;
    let body = x.narrow(1, 1, t - 1)?.contiguous()?;
    let rows = body.flatten_all()?.to_vec1::<f32>()?;
    let n = b * (t - 1);
    let out = f(&rows, n)?;
    if out.len() != n * d {
        return Err(LmError::Input(format!(
            "reconstruction has {} values, expected {n} x {d}",
            out.len()
        )));
    }
    if out.iter().any(|v| !v.is_finite()) {
        return Err(LmError::Input("reconstruction contains NaN or Inf".into()));
    }
    let new_body = Tensor::from_vec(out, (b, t - 1, d), &Device::Cpu)?;
    Ok(Tensor::cat(&[x.narrow(1, 0, 1)?, new_body], 1)?)
}

/// Mean cross-entropies and KL on `contexts`, splicing `reconstruct` (model units in, model
/// units out, `n` rows of `d_model`) into the residual entering block `layer`. `progress` is
/// called with the number of contexts done.
pub fn spliced_losses(
    model: &Llama,
    contexts: &Contexts,
    layer: usize,
    batch: usize,
    reconstruct: &mut Reconstruct,
    progress: &mut dyn FnMut(usize),
) -> Result<LmMetrics, LmError> {
    let (t, n_ctx) = (contexts.len, contexts.n());
    if n_ctx == 0 {
        return Err(LmError::Input("no evaluation contexts".into()));
    }
    let batch = batch.max(1);
    let (mut s_clean, mut s_zero, mut s_sae, mut s_kl, mut s_klz, mut count) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0usize);
    let mut done = 0;
    while done < n_ctx {
        let b = batch.min(n_ctx - done);
        let toks = &contexts.tokens[done * t..(done + b) * t];
        let resid = model.resid_pre(toks, b, t, layer)?;
        let clean = model.forward_from(resid.clone(), layer)?;
        let (l_clean, logp_clean) = next_token_losses(&clean, toks)?;
        drop(clean);
        // KL(clean || other) per position, summed over the vocabulary.
        let p_clean = logp_clean.exp()?;
        let kl_of = |logp: Tensor| -> Result<Vec<f32>, LmError> {
            Ok((&p_clean * (&logp_clean - logp)?)?
                .sum(candle_core::D::Minus1)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let zeros = splice_rows(&resid, &mut |rows, _| Ok(vec![0.0; rows.len()]))?;
        let (l_zero, logp_zero) = next_token_losses(&model.forward_from(zeros, layer)?, toks)?;
        // The zero pass's KL now, so that its log-probabilities are freed before the spliced pass.
        let klz = kl_of(logp_zero)?;
        let spliced = splice_rows(&resid, reconstruct)?;
        let (l_sae, logp_sae) = next_token_losses(&model.forward_from(spliced, layer)?, toks)?;
        let kl = kl_of(logp_sae)?;
        s_klz += klz.iter().map(|&v| v as f64).sum::<f64>();
        s_clean += l_clean.iter().map(|&v| v as f64).sum::<f64>();
        s_zero += l_zero.iter().map(|&v| v as f64).sum::<f64>();
        s_sae += l_sae.iter().map(|&v| v as f64).sum::<f64>();
        s_kl += kl.iter().map(|&v| v as f64).sum::<f64>();
        count += l_clean.len();
        done += b;
        progress(done);
    }
    let n = count as f64;
    let (ce_clean, ce_zero, ce_sae) = (s_clean / n, s_zero / n, s_sae / n);
    Ok(LmMetrics {
        ce_clean,
        ce_sae,
        ce_zero,
        loss_recovered: (ce_zero - ce_sae) / (ce_zero - ce_clean),
        delta_ce: ce_sae - ce_clean,
        kl_div: s_kl / n,
        kl_zero: s_klz / n,
        kl_score: kl_score(s_klz / n, s_kl / n),
    })
}

/// The clean and zero-ablated passes over a set's evaluation contexts, run once and kept in the form every later
/// dictionary's spliced pass needs, so that evaluating a dictionary costs one pass from the hooked block instead of
/// the blocks before it plus three passes ([`spliced_losses`], which computes the same numbers and is the reference
/// the tests compare this with).
///
/// Per batch it keeps the residual entering the hooked block; per prediction the clean distribution p reduced to
/// three things: its negative entropy Σ_v p_v log p_v, its mass Σ_v p_v (1 up to rounding) and its expected output
/// direction ē = Σ_v p_v W_out[v] (a d_model vector). With the spliced pass's final-norm output h, logits W_out·h and
/// log-normaliser lse, KL(p ‖ q) = Σ_v p_v log p_v − (ē·h − lse · Σ_v p_v), because
/// Σ_v p_v log q_v = Σ_v p_v (W_out[v]·h) − lse · Σ_v p_v: the full vocabulary of clean log-probabilities
/// (64 contexts × 127 predictions × 49152 tokens, 1.6 GB) is never held. The mass is kept rather than taken as 1
/// because in f32 it is 1 only to about 1e-5, and times an lse of about 20 that would bias the KL by 2e-4, more than
/// the difference between two good dictionaries; ē and the products with it are f64 for the same reason.
pub struct CleanPass {
    layer: usize,
    batches: Vec<CleanBatch>,
    s_clean: f64,
    s_zero: f64,
    s_klz: f64,
    count: usize,
}

struct CleanBatch {
    /// `[b, t, d]`, the residual entering block `layer`.
    resid: Tensor,
    /// `[b * (t - 1), 1]` u32: the token each prediction is scored on.
    targets: Tensor,
    /// `[b * (t - 1), 1]` f64: Σ_v p_v log p_v of the clean prediction.
    neg_entropy: Tensor,
    /// `[b * (t - 1), 1]` f64: Σ_v p_v.
    mass: Tensor,
    /// `[b * (t - 1), d]` f64: Σ_v p_v W_out[v].
    expected_out: Tensor,
}

fn sum_f64(t: &Tensor) -> Result<f64, LmError> {
    Ok(t.to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .iter()
        .sum())
}

impl CleanPass {
    /// Runs the blocks before `layer`, the clean pass and the zero-ablated pass over `contexts`, `batch` contexts
    /// per forward pass; `progress` is called with the number of contexts done.
    pub fn run(
        model: &Llama,
        contexts: &Contexts,
        layer: usize,
        batch: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<CleanPass, LmError> {
        let (t, n_ctx) = (contexts.len, contexts.n());
        if n_ctx == 0 {
            return Err(LmError::Input("no evaluation contexts".into()));
        }
        let batch = batch.max(1);
        let mut out = CleanPass {
            layer,
            batches: vec![],
            s_clean: 0.0,
            s_zero: 0.0,
            s_klz: 0.0,
            count: 0,
        };
        let w_out64 = model.unembedding().to_dtype(candle_core::DType::F64)?;
        let mut done = 0;
        while done < n_ctx {
            let b = batch.min(n_ctx - done);
            let toks = &contexts.tokens[done * t..(done + b) * t];
            let resid = model.resid_pre(toks, b, t, layer)?;
            let (l_clean, logp_clean) =
                next_token_losses(&model.forward_from(resid.clone(), layer)?, toks)?;
            let n = b * (t - 1);
            let logp_clean = logp_clean.reshape((n, model.cfg.vocab))?;
            let p_clean = logp_clean.exp()?;
            let f64_ = |t: &Tensor| t.to_dtype(candle_core::DType::F64);
            let (p64, logp64) = (f64_(&p_clean)?, f64_(&logp_clean)?);
            let neg_entropy = (&p64 * &logp64)?.sum_keepdim(candle_core::D::Minus1)?;
            let mass = p64.sum_keepdim(candle_core::D::Minus1)?;
            let expected_out = p64.matmul(&w_out64.t()?)?;
            drop((p64, logp64));
            let zeros = splice_rows(&resid, &mut |rows, _| Ok(vec![0.0; rows.len()]))?;
            let (l_zero, logp_zero) = next_token_losses(&model.forward_from(zeros, layer)?, toks)?;
            let logp_zero = logp_zero.reshape((n, model.cfg.vocab))?;
            let klz = (&p_clean * (&logp_clean - logp_zero)?)?.sum(candle_core::D::Minus1)?;
            out.s_klz += sum_f64(&klz)?;
            out.s_clean += l_clean.iter().map(|&v| v as f64).sum::<f64>();
            out.s_zero += l_zero.iter().map(|&v| v as f64).sum::<f64>();
            out.count += l_clean.len();
            let targets: Vec<u32> = (0..b)
                .flat_map(|i| toks[i * t + 1..(i + 1) * t].iter().copied())
                .collect();
            out.batches.push(CleanBatch {
                resid,
                targets: Tensor::from_vec(targets, (n, 1), &Device::Cpu)?,
                neg_entropy,
                mass,
                expected_out,
            });
            done += b;
            progress(done);
        }
        Ok(out)
    }

    /// The language-model metrics of `reconstruct` spliced into the residual: one pass from the hooked block per
    /// batch. `progress` is called with the number of batches done.
    pub fn spliced(
        &self,
        model: &Llama,
        reconstruct: &mut Reconstruct,
        progress: &mut dyn FnMut(usize),
    ) -> Result<LmMetrics, LmError> {
        use candle_core::D;
        let (mut s_sae, mut s_kl) = (0f64, 0f64);
        for (i, cb) in self.batches.iter().enumerate() {
            let (b, t, d) = cb.resid.dims3()?;
            let spliced = splice_rows(&cb.resid, reconstruct)?;
            let x = model.run_blocks(spliced, self.layer, model.cfg.n_layer)?;
            let h = model
                .final_norm(&x.narrow(1, 0, t - 1)?)?
                .reshape((b * (t - 1), d))?;
            let logits = h.matmul(model.unembedding())?;
            let m = logits.max_keepdim(D::Minus1)?;
            let lse = (logits
                .broadcast_sub(&m)?
                .exp()?
                .sum_keepdim(D::Minus1)?
                .log()?
                + &m)?;
            // Cross-entropy on the target: lse − logit of the target.
            let picked = logits.gather(&cb.targets, 1)?;
            s_sae += sum_f64(&(&lse - picked)?)?;
            // KL(clean ‖ spliced) = Σ p log p − (ē·h − lse · Σ p), in f64.
            let h = h.to_dtype(candle_core::DType::F64)?;
            let lse = lse.to_dtype(candle_core::DType::F64)?;
            let cross = (&cb.expected_out * &h)?.sum_keepdim(D::Minus1)?;
            let kl = (&cb.neg_entropy - (cross - (lse * &cb.mass)?)?)?;
            s_kl += sum_f64(&kl)?;
            progress(i + 1);
        }
        let n = self.count as f64;
        Ok(self.metrics(s_sae / n, s_kl / n))
    }

    /// The number of forward-pass batches ([`CleanPass::spliced`]'s progress counts these).
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    fn metrics(&self, ce_sae: f64, kl_div: f64) -> LmMetrics {
        let n = self.count as f64;
        let (ce_clean, ce_zero, kl_zero) = (self.s_clean / n, self.s_zero / n, self.s_klz / n);
        LmMetrics {
            ce_clean,
            ce_sae,
            ce_zero,
            loss_recovered: (ce_zero - ce_sae) / (ce_zero - ce_clean),
            delta_ce: ce_sae - ce_clean,
            kl_div,
            kl_zero,
            kl_score: kl_score(kl_zero, kl_div),
        }
    }
}

/// SAEBench's KL-div score: (kl_zero − kl_sae) / kl_zero, with kl_zero the mean KL(clean ‖ zero-ablated) and kl_sae
/// the mean KL(clean ‖ spliced) over the same predictions. 1: the reconstruction leaves the output distribution as it
/// was; 0: as bad as zeroing the residual. NaN when kl_zero is 0 (written as null).
pub fn kl_score(kl_zero: f64, kl_sae: f64) -> f64 {
    (kl_zero - kl_sae) / kl_zero
}

/// Options of [`loss_recovered_with`].
#[derive(Debug, Clone)]
pub struct LossOptions {
    /// Use only the first n stored evaluation contexts (default: all, 64 for a default set).
    pub contexts: Option<usize>,
    /// Contexts per forward pass.
    pub batch: usize,
    pub progress: bool,
    /// The model file (default: the one recorded in the set, else the asset cache).
    pub model: Option<std::path::PathBuf>,
}

impl Default for LossOptions {
    fn default() -> Self {
        LossOptions {
            contexts: None,
            batch: 8,
            progress: false,
            model: None,
        }
    }
}

/// Loss recovered of `sae` on the evaluation contexts stored with a model activation set.
pub fn loss_recovered(
    set: &crate::data::actset::ActivationSet,
    sae: &saeperf_kernels::sae::Sae,
) -> anyhow::Result<LmMetrics> {
    loss_recovered_with(set, sae, &LossOptions::default())
}

/// [`loss_recovered`] with options. Evaluating several dictionaries on one set: [`LmEval`], which runs the clean
/// and zero-ablated passes once.
pub fn loss_recovered_with(
    set: &crate::data::actset::ActivationSet,
    sae: &saeperf_kernels::sae::Sae,
    opts: &LossOptions,
) -> anyhow::Result<LmMetrics> {
    LmEval::open(set, opts)?.metrics(sae)
}

/// The language-model evaluation of one model activation set, opened once: the model, the set's evaluation contexts
/// (checksum verified) and their [`CleanPass`]. Each dictionary then costs one pass from the hooked block.
pub struct LmEval {
    model: Llama,
    clean: CleanPass,
    d: usize,
    progress: bool,
}

impl LmEval {
    /// Loads the model (the one recorded in the set, or `opts.model`) and the set's evaluation contexts, checks
    /// both against the set, and runs the clean and zero-ablated passes.
    pub fn open(
        set: &crate::data::actset::ActivationSet,
        opts: &LossOptions,
    ) -> anyhow::Result<LmEval> {
        use anyhow::Context as _;
        let src = &set.manifest().source;
        anyhow::ensure!(
            src["kind"] == "model",
            "{}: loss recovered needs a set harvested from a model (source kind is {})",
            set.dir().display(),
            src["kind"]
        );
        let d = set.d_in();
        let layer = src["params"]["layer"]
            .as_u64()
            .with_context(|| format!("{}: source has no params.layer", set.dir().display()))?
            as usize;
        let ctx_path = set.dir().join(super::contexts::EVAL_CONTEXTS_FILE);
        let want = src["eval_contexts"]["sha256"].as_str().unwrap_or_default();
        let got = crate::data::assets::sha256_file(&ctx_path)
            .with_context(|| format!("{}", ctx_path.display()))?;
        anyhow::ensure!(
            got == want,
            "{}: checksum mismatch (expected {want}, got {got})",
            ctx_path.display()
        );
        let mut contexts = Contexts::load(&ctx_path)?;
        if let Some(n) = opts.contexts {
            contexts = contexts.take(n);
        }
        let model_path = match &opts.model {
            Some(p) => p.clone(),
            None => super::features::locate_asset(set, "model")?,
        };
        let model = Llama::load(&model_path)?;
        anyhow::ensure!(
            model.cfg.d_model == d,
            "{}: d_model {} != set d_in {d}",
            model_path.display(),
            model.cfg.d_model
        );
        let bar = progress_bar(
            opts.progress,
            contexts.n() as u64,
            "clean and zero-ablated passes {bar:40} {pos}/{len} contexts eta {eta}",
        );
        let clean = CleanPass::run(&model, &contexts, layer, opts.batch, &mut |done| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        Ok(LmEval {
            model,
            clean,
            d,
            progress: opts.progress,
        })
    }

    /// The language-model metrics of `sae` (its scaling factor applied on the way in and undone on the way out).
    pub fn metrics(&self, sae: &saeperf_kernels::sae::Sae) -> anyhow::Result<LmMetrics> {
        anyhow::ensure!(
            sae.cfg.d_in == self.d,
            "dictionary d_in {} does not match the set's d_in {}",
            sae.cfg.d_in,
            self.d
        );
        let sf = sae.cfg.scaling_factor;
        let bar = progress_bar(
            self.progress,
            self.clean.batches() as u64,
            "loss recovered {bar:40} {pos}/{len} batches eta {eta}",
        );
        let m = self.clean.spliced(
            &self.model,
            &mut |rows, n| {
                let x: Vec<f32> = rows.iter().map(|v| v * sf).collect();
                let xh = sae.decode(&sae.encode(&x, n), n);
                Ok(xh.into_iter().map(|v| v / sf).collect())
            },
            &mut |done| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        Ok(m)
    }
}

fn progress_bar(show: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Fills the language-model keys of `m` (ce_*, loss_recovered, delta_ce, kl_div, kl_score) when
/// `set` was harvested from a model; leaves them null otherwise (kl_score also when KL_zero is 0).
pub fn fill_metrics(
    m: &mut crate::metrics::Metrics,
    set: &crate::data::actset::ActivationSet,
    sae: &saeperf_kernels::sae::Sae,
    progress: bool,
) -> anyhow::Result<()> {
    if set.manifest().source_kind() != "model" {
        return Ok(());
    }
    let lm = loss_recovered_with(
        set,
        sae,
        &LossOptions {
            progress,
            ..LossOptions::default()
        },
    )?;
    fill_lm(m, &lm);
    Ok(())
}

/// Writes `lm` into the language-model keys of `m` (kl_score null when KL_zero is 0).
pub fn fill_lm(m: &mut crate::metrics::Metrics, lm: &LmMetrics) {
    m.ce_clean = Some(lm.ce_clean);
    m.ce_sae = Some(lm.ce_sae);
    m.ce_zero = Some(lm.ce_zero);
    m.loss_recovered = Some(lm.loss_recovered);
    m.delta_ce = Some(lm.delta_ce);
    m.kl_div = Some(lm.kl_div);
    m.kl_score = Some(lm.kl_score).filter(|v| v.is_finite());
}

#[cfg(test)]
mod tests {
    use super::kl_score;

    #[test]
    fn kl_score_is_the_share_of_the_zero_ablation_kl_removed() {
        assert_eq!(kl_score(2.0, 0.5), 0.75);
        assert_eq!(kl_score(2.0, 0.0), 1.0);
        assert_eq!(kl_score(2.0, 2.0), 0.0);
        assert_eq!(kl_score(1.0, 3.0), -2.0);
        assert!(kl_score(0.0, 0.0).is_nan());
    }
}
