//! Training benchmarks: train a suite's reference dictionary (or the pruning variant: a low penalty, then every
//! feature firing above `prune_above` removed) on its activation set, evaluate it, and record the metrics, the
//! training curve and the wall time.
//!
//! Activation sets are prepared once per run ([`DataCtx::prepare`]): synthetic sets are generated (cached under
//! $SAEPERF_HOME/sets, keyed by their configuration) so `runner bench` needs no download; prepared sets (e.g. the
//! language-model set) are opened from their path, and benchmarks on a missing one fail with the reason.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use saeperf_kernels::Backend;
use saeperf_sae::data::actset::ActivationSet;
use saeperf_sae::data::synth::{self, SynthConfig};
use saeperf_sae::metrics::Metrics;
use saeperf_sae::train::{Diverged, ResampleConfig, TrainConfig, TrainOverrides};
use saeperf_store::{BenchKind, BenchResult, BenchStatus};

use crate::suite::{DataSpec, ResolvedSuite, TrainSpec};

/// Seeds a training benchmark runs at least on a non-deterministic backend (CUDA), so that its quality is judged
/// against a band over seeds rather than one draw (docs/verdicts.md, "Quality").
pub const MIN_BAND_SEEDS: usize = 3;

/// The activation sets of a run, opened once.
pub struct DataCtx {
    sets: BTreeMap<String, Result<ActivationSet, String>>,
    /// Optional prepared sets that are not there: their benchmarks are skipped.
    pub skipped: std::collections::BTreeSet<String>,
}

impl DataCtx {
    /// Generate or open every set the resolved suite uses. A set that cannot be opened is remembered as an error so
    /// that only the benchmarks using it fail.
    pub fn prepare(suite: &ResolvedSuite, home: &Path) -> Result<DataCtx> {
        let mut sets = BTreeMap::new();
        let mut skipped = std::collections::BTreeSet::new();
        for (name, spec) in &suite.data {
            if let DataSpec::Prepared {
                path,
                optional: true,
            } = spec
            {
                let p = if Path::new(path).is_absolute() {
                    Path::new(path).to_path_buf()
                } else {
                    home.join(path)
                };
                if !p.exists() {
                    eprintln!(
                        "skipping benchmarks on activation set {name:?}: {} is not prepared",
                        p.display()
                    );
                    skipped.insert(name.clone());
                    continue;
                }
            }
            let opened = match spec {
                DataSpec::Synthetic {
                    d_in,
                    n_features,
                    active,
                    seed,
                    eval_fraction,
                    zipf_exponent,
                    noise,
                } => {
                    let n_eval =
                        ((suite.synthetic_tokens as f64 * eval_fraction).round() as usize).max(1);
                    let cfg = SynthConfig {
                        d_in: *d_in,
                        n_features: *n_features,
                        n_train: suite.synthetic_tokens.saturating_sub(n_eval).max(1),
                        n_eval,
                        seed: *seed,
                        mean_active: *active,
                        zipf_exponent: *zipf_exponent,
                        noise: *noise,
                    };
                    synth::ensure_synth(home, &cfg)
                        .and_then(|dir| ActivationSet::open(&dir))
                        .with_context(|| format!("synthetic activation set {name:?}"))
                }
                DataSpec::Prepared { path, .. } => {
                    let p = if Path::new(path).is_absolute() {
                        Path::new(path).to_path_buf()
                    } else {
                        home.join(path)
                    };
                    ActivationSet::open(&p).with_context(|| {
                        format!("activation set {name:?} at {} (prepare it first, e.g. `runner data prepare`)", p.display())
                    })
                }
            };
            if let Err(e) = &opened {
                tracing::warn!("{e:#}");
            }
            sets.insert(name.clone(), opened.map_err(|e| format!("{e:#}")));
        }
        Ok(DataCtx { sets, skipped })
    }

    /// An opened set by name.
    pub fn set(&self, name: &str) -> Option<&ActivationSet> {
        self.sets.get(name).and_then(|s| s.as_ref().ok())
    }

    /// Set name -> SHA-256, for the run's metadata.
    pub fn digests(&self) -> BTreeMap<String, String> {
        self.sets
            .iter()
            .filter_map(|(k, v)| {
                v.as_ref()
                    .ok()
                    .map(|s| (k.clone(), s.manifest().sha256.clone()))
            })
            .collect()
    }
}

/// The training configuration of a suite entry at `seed`: the entry's values over the defaults, through the same
/// builder `runner train` uses.
pub(crate) fn train_config(t: &TrainSpec, seed: u64) -> TrainConfig {
    TrainConfig::with_overrides(
        "synthetic",
        &TrainOverrides {
            arch: Some(t.arch()),
            d_sae: Some(t.d_sae),
            l1_coeff: Some(t.l1),
            k: t.k,
            steps: Some(t.steps),
            batch: Some(t.batch),
            lr: Some(t.lr),
            lr_warmup: Some(t.lr_warmup),
            l1_warmup: Some(t.l1_warmup),
            seed: Some(seed),
            resample: t
                .resample
                .as_ref()
                .filter(|r| !r.at_steps.is_empty())
                .map(|r| ResampleConfig {
                    at_steps: r.at_steps.clone(),
                    window: r.window,
                    sample: r.sample,
                }),
            log_every: Some(t.log_every),
        },
    )
}

/// The metrics of docs/metrics.md, plus loss recovered when the set was harvested from a model.
fn evaluate(sae: &saeperf_kernels::Sae, set: &ActivationSet) -> Result<Metrics> {
    let mut m = saeperf_sae::metrics::evaluate(sae, set)?;
    saeperf_sae::lm::loss::fill_metrics(&mut m, set, sae, false)?;
    Ok(m)
}

/// Scalar metrics of metrics.json (nulls and the histogram left out).
fn scalar_metrics(m: &Metrics) -> BTreeMap<String, f64> {
    let v = serde_json::to_value(m).expect("metrics serialize");
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
        .filter(|(k, _)| k != "wall_secs")
        .collect()
}

struct SeedOutcome {
    metrics: BTreeMap<String, f64>,
    curve: Vec<saeperf_kernels::CurvePoint>,
    wall: f64,
    extra: serde_json::Value,
}

fn one_seed<B: Backend>(
    t: &TrainSpec,
    prune: bool,
    set: &ActivationSet,
    backend: &B,
    seed: u64,
) -> Result<SeedOutcome> {
    let cfg = train_config(t, seed);
    let out = saeperf_sae::train::train_on(backend, &cfg, set, false)?;
    let mut extra = serde_json::json!({
        "tokens_per_sec": out.tokens_per_sec,
        "resamples": out.resamples,
        "train_backend": out.backend,
    });
    let metrics = if prune {
        let above = t
            .prune_above
            .expect("validated: pruning benchmarks have prune_above");
        let before = evaluate(&out.sae, set).context("evaluating before pruning")?;
        let (pruned, removed) = saeperf_sae::train::prune_dense(&out.sae, set, above)?;
        let after = evaluate(&pruned, set).context("evaluating after pruning")?;
        extra["pruned_features"] = removed.len().into();
        extra["before_pruning"] = serde_json::to_value(scalar_metrics(&before))?;
        // The dashboard draws the density histogram of the dictionary as evaluated.
        extra["density_histogram"] = serde_json::to_value(&after.density_histogram)?;
        scalar_metrics(&after)
    } else {
        let m = evaluate(&out.sae, set)?;
        extra["density_histogram"] = serde_json::to_value(&m.density_histogram)?;
        scalar_metrics(&m)
    };
    Ok(SeedOutcome {
        metrics,
        curve: out.curve,
        wall: out.wall_secs,
        extra,
    })
}

/// How many seeds a training benchmark runs: the profile's, and at least [`MIN_BAND_SEEDS`] where fixed seeds do
/// not give bit-identical results.
pub fn seeds_for(profile_seeds: usize, deterministic: bool) -> usize {
    if deterministic {
        profile_seeds.max(1)
    } else {
        profile_seeds.max(MIN_BAND_SEEDS)
    }
}

/// Run one training benchmark on `backend` (the run's, opened once) for every seed; never fails (errors become the
/// status: `diverged` when training diverged, `failed` otherwise). `deterministic` says whether the backend gives
/// bit-identical results for a seed (the CPU backends; CUDA's reductions do not).
pub fn run<B: Backend>(
    t: &TrainSpec,
    prune: bool,
    ctx: &DataCtx,
    backend: &B,
    deterministic: bool,
    seeds: usize,
) -> BenchResult {
    let mut r = BenchResult {
        name: t.name.clone(),
        kind: if prune {
            BenchKind::Prune
        } else {
            BenchKind::Train
        },
        status: BenchStatus::Ok,
        samples: vec![],
        yardstick: vec![],
        metrics: BTreeMap::new(),
        metric_seeds: BTreeMap::new(),
        deterministic,
        curve: vec![],
        extra: serde_json::Value::Null,
    };
    let set = match ctx.sets.get(&t.data) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            r.status = BenchStatus::Failed(e.clone());
            return r;
        }
        None => {
            r.status = BenchStatus::Failed(format!("activation set {:?} was not prepared", t.data));
            return r;
        }
    };
    let mut per_seed: Vec<SeedOutcome> = Vec::new();
    for i in 0..seeds_for(seeds, deterministic) {
        match one_seed(t, prune, set, backend, t.seed + i as u64) {
            Ok(o) => per_seed.push(o),
            Err(e) => {
                let msg = format!("{e:#}");
                r.status = if e.downcast_ref::<Diverged>().is_some() {
                    BenchStatus::Diverged(msg)
                } else {
                    BenchStatus::Failed(msg)
                };
                return r;
            }
        }
    }
    r.samples = per_seed.iter().map(|o| o.wall).collect();
    let first = &per_seed[0];
    r.metrics = first.metrics.clone();
    r.curve = first.curve.clone();
    r.extra = first.extra.clone();
    if per_seed.len() > 1 {
        for k in first.metrics.keys() {
            let vals: Vec<f64> = per_seed
                .iter()
                .filter_map(|o| o.metrics.get(k).copied())
                .collect();
            r.metrics
                .insert(k.clone(), vals.iter().sum::<f64>() / vals.len() as f64);
            r.metric_seeds.insert(k.clone(), vals);
        }
    }
    r
}
