//! `runner train`, `runner eval` and `runner data synth`: a dictionary trained, evaluated, or a synthetic set made.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use saeperf_kernels::select::{select_backend, BackendChoice};
use saeperf_kernels::{Arch, Sae};
use saeperf_sae::data::actset::ActivationSet;
use saeperf_sae::data::synth::{self, SynthConfig};
use saeperf_sae::metrics::{self, Metrics};
use saeperf_sae::train::{self, ResampleConfig, TrainConfig, TrainOverrides};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArchArg {
    Relu,
    Topk,
    Jumprelu,
    Batchtopk,
    Matryoshka,
    Gated,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Activation set directory; default: the embedded synthetic set (generated on first use under $SAEPERF_HOME).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory for the dictionary, metrics.json and training.json.
    #[arg(long, default_value = "sae-out")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "relu")]
    pub arch: ArchArg,
    /// Dictionary size [default: 8 × d_in].
    #[arg(long)]
    pub d_sae: Option<usize>,
    /// Sparsity coefficient λ: of the L1 penalty (relu; gated: of its gate), or of the L0 penalty (jumprelu).
    #[arg(long)]
    pub l1: Option<f32>,
    /// Features kept per token (topk), on average over a batch (batchtopk, matryoshka).
    #[arg(long)]
    pub k: Option<usize>,
    /// JumpReLU: bandwidth ε of the threshold's pseudo-gradient [default: 0.001; 0.1 on a model's set].
    #[arg(long)]
    pub bandwidth: Option<f32>,
    /// JumpReLU: every threshold's initial value [default: 0.001; 0.7 on a model's set].
    #[arg(long)]
    pub init_threshold: Option<f32>,
    /// Matryoshka: nested prefix sizes, the last one d_sae, e.g. 64,128,256,512 [default: d_sae/8, /4, /2, d_sae].
    #[arg(long, value_delimiter = ',')]
    pub prefixes: Vec<usize>,
    /// AuxK (topk, batchtopk, matryoshka): dead latents per token that reconstruct the residual [default: 0, off].
    #[arg(long)]
    pub aux_k: Option<usize>,
    /// AuxK: a latent is dead when it has not fired for this many steps [default: 100].
    #[arg(long)]
    pub aux_window: Option<usize>,
    /// Time to quality: report the seconds and steps until the smoothed batch FVU first reaches this.
    #[arg(long)]
    pub target_fvu: Option<f64>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub lr_warmup: Option<usize>,
    #[arg(long)]
    pub l1_warmup: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps at which dead features are resampled, e.g. 1000,2000.
    #[arg(long, value_delimiter = ',')]
    pub resample_at: Vec<usize>,
    /// Dead = did not fire during this many steps before a resample.
    #[arg(long, default_value_t = 500)]
    pub resample_window: usize,
    /// Inputs sampled to choose the new directions.
    #[arg(long, default_value_t = 16_384)]
    pub resample_sample: usize,
    /// After training, remove features whose training-split frequency exceeds this (e.g. 0.038).
    #[arg(long)]
    pub prune_above: Option<f64>,
    /// cpu (fast ops), reference (plain loops, slow), cuda, or auto (CUDA when a driver and a device are present).
    #[arg(long, default_value = "auto", value_parser = super::parse_backend)]
    pub backend: BackendChoice,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dictionary directory: saeperf's own, or SAELens' (cfg.json + sae_weights.safetensors; docs/formats.md).
    #[arg(long)]
    pub dict: PathBuf,
    /// Activation set directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write metrics.json [default: DICT/metrics.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// The layouts `runner export` writes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// SAELens (`SAE.load_from_disk(dir)`): cfg.json + sae_weights.safetensors.
    Saelens,
    /// dictionary_learning (`utils.load_dictionary(dir)`): ae.pt + config.json.
    DictionaryLearning,
    /// EleutherAI sparsify (`SparseCoder.load_from_disk(dir)`): cfg.json + sae.safetensors; TopK only.
    Sparsify,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Dictionary directory (saeperf's own, or one of the layouts `runner eval` reads).
    #[arg(long)]
    pub dict: PathBuf,
    /// Output directory (created; files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// The activation set the dictionary was trained on: its hook point is recorded in the export's metadata.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The model's name as SAELens knows it, for the export's metadata (e.g. HuggingFaceTB/SmolLM2-135M).
    #[arg(long)]
    pub model_name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = SynthConfig::default().d_in)]
    pub d_in: usize,
    /// Ground-truth features.
    #[arg(long, default_value_t = SynthConfig::default().n_features)]
    pub features: usize,
    #[arg(long, default_value_t = SynthConfig::default().n_train)]
    pub train_tokens: usize,
    #[arg(long, default_value_t = SynthConfig::default().n_eval)]
    pub eval_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Expected active features per token.
    #[arg(long, default_value_t = SynthConfig::default().mean_active)]
    pub mean_active: f64,
    /// Power-law exponent of the feature frequencies.
    #[arg(long, default_value_t = SynthConfig::default().zipf_exponent)]
    pub zipf: f64,
    /// Gaussian noise standard deviation per coordinate.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f32,
    #[arg(long)]
    pub json: bool,
}

fn open_data(data: Option<&Path>) -> Result<ActivationSet> {
    let dir = match data {
        Some(d) => d.to_path_buf(),
        None => synth::ensure_default(&super::home())?,
    };
    ActivationSet::open(&dir)
}

/// The flags' training values, over the defaults of the set's kind (the same builder the suite's entries use).
pub fn train_config(a: &TrainArgs, set_kind: &str) -> Result<TrainConfig> {
    if let Some(p) = a.prune_above {
        if !(0.0..=1.0).contains(&p) {
            bail!("--prune-above must lie in [0, 1], got {p}");
        }
    }
    let overrides = TrainOverrides {
        arch: Some(match a.arch {
            ArchArg::Relu => Arch::Relu,
            ArchArg::Topk => Arch::TopK,
            ArchArg::Jumprelu => Arch::JumpRelu,
            ArchArg::Batchtopk => Arch::BatchTopK,
            ArchArg::Matryoshka => Arch::Matryoshka,
            ArchArg::Gated => Arch::Gated,
        }),
        d_sae: a.d_sae,
        l1_coeff: a.l1,
        k: a.k,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        lr_warmup: a.lr_warmup,
        l1_warmup: a.l1_warmup,
        seed: a.seed,
        resample: (!a.resample_at.is_empty()).then(|| ResampleConfig {
            at_steps: a.resample_at.clone(),
            window: a.resample_window,
            sample: a.resample_sample,
        }),
        log_every: None,
        bandwidth: a.bandwidth,
        init_threshold: a.init_threshold,
        prefixes: (!a.prefixes.is_empty()).then(|| a.prefixes.clone()),
        aux_k: a.aux_k,
        aux_window: a.aux_window,
        target_fvu: a.target_fvu,
        checkpoints: None,
    };
    Ok(TrainConfig::with_overrides(set_kind, &overrides))
}

pub fn cmd_train(a: TrainArgs, quiet: bool) -> Result<i32> {
    train_config(&a, "")?.validate_basic()?;
    let set = open_data(a.data.as_deref())?;
    let cfg = train_config(&a, set.manifest().source_kind())?;
    cfg.validate(set.d_in())?;
    let progress = !quiet && !a.json;
    let sel = select_backend(a.backend)?;
    tracing::info!(set = %set.dir().display(), "training; {}", sel.line);
    if progress {
        eprintln!("{}", sel.line);
    }
    let out = train::train(&sel.backend, &cfg, &set, progress)?;
    saeperf_sae::formats::save(&out.sae, &a.out)?;
    // The clean and zero-ablated passes run once, for the dictionary and (with --prune-above) its pruned copy.
    let lm = (set.manifest().source_kind() == "model")
        .then(|| {
            saeperf_sae::lm::loss::LmEval::open(
                &set,
                &saeperf_sae::lm::loss::LossOptions {
                    progress,
                    ..Default::default()
                },
            )
        })
        .transpose()?;
    let evaluate = |sae: &Sae| -> anyhow::Result<metrics::Metrics> {
        let mut m = metrics::evaluate(sae, &set)?;
        if let Some(lm) = &lm {
            saeperf_sae::lm::loss::fill_lm(&mut m, &lm.metrics(sae)?);
        }
        Ok(m)
    };
    let mut m = evaluate(&out.sae)?;
    m.tokens_per_sec = Some(out.tokens_per_sec);
    m.wall_secs = Some(out.wall_secs);
    m.write(&a.out.join("metrics.json"))?;
    train::write_record(&a.out, &cfg, &out)?;
    let mut report = serde_json::json!({
        "dictionary": a.out,
        "activation_set": set.dir(),
        "backend": out.backend,
        "metrics": m,
        "resamples": out.resamples,
        "steady_tokens_per_sec": out.steady_tokens_per_sec,
        "phase_secs": out.phases.to_json(),
        "steady_phase_secs": out.steady_phases.to_json(),
        "reached_fvu": out.reached_fvu,
    });
    let mut pruned_metrics = None;
    if let Some(thr) = a.prune_above {
        let (pruned, removed) = train::prune_dense(&out.sae, &set, thr)?;
        let dir = a.out.join("pruned");
        saeperf_sae::formats::save(&pruned, &dir)?;
        let pm = evaluate(&pruned)?;
        pm.write(&dir.join("metrics.json"))?;
        report["pruning"] = serde_json::json!({
            "threshold": thr, "removed": removed.len(), "removed_features": removed,
            "dictionary": dir, "metrics": pm,
        });
        pruned_metrics = Some((pm, removed.len(), thr));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "dictionary: {} ({} backend, {:.0} tokens/s, {:.1} s)",
            a.out.display(),
            out.backend,
            out.tokens_per_sec,
            out.wall_secs
        );
        match (cfg.target_fvu, out.reached_fvu) {
            (Some(t), Some(r)) => println!("time to FVU {t}: {:.1} s ({} steps)", r.secs, r.step),
            (Some(t), None) => println!("time to FVU {t}: not reached in {} steps", cfg.steps),
            _ => {}
        }
        let breakdown = |times: &train::PhaseTimes, steps: usize| {
            let total = times.total().max(1e-12);
            train::Phase::ALL
                .iter()
                .map(|p| {
                    let t = times.get(*p);
                    format!(
                        "{} {:.1} ms ({:.0}%)",
                        p.name(),
                        t / steps.max(1) as f64 * 1e3,
                        t / total * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("per step: {}", breakdown(&out.phases, cfg.steps));
        println!(
            "steady state (second half): {:.0} tokens/s; per step: {}",
            out.steady_tokens_per_sec,
            breakdown(&out.steady_phases, cfg.steps - cfg.steps / 2)
        );
        for (step, n) in &out.resamples {
            println!("resampled {n} dead features at step {step}");
        }
        match &pruned_metrics {
            None => print!("{}", metrics_table(&[("value", &m)])),
            Some((pm, removed, thr)) => {
                println!(
                    "pruned {removed} features with training frequency > {thr} → {}",
                    a.out.join("pruned").display()
                );
                print!(
                    "{}",
                    metrics_table(&[("before", &m), ("after pruning", pm)])
                );
            }
        }
    }
    Ok(0)
}

pub fn cmd_export(a: ExportArgs) -> Result<i32> {
    use saeperf_sae::formats;
    let sae = formats::load(&a.dict)?;
    let (hook_name, layer) = match &a.data {
        Some(dir) => {
            let set = ActivationSet::open(dir)?;
            let params = &set.manifest().source["params"];
            (
                params["hook"].as_str().map(String::from),
                params["layer"].as_u64().map(|l| l as usize),
            )
        }
        None => (None, None),
    };
    let prov = formats::saelens::Provenance {
        model_name: a.model_name.clone(),
        hook_name,
    };
    let name = match a.format {
        ExportFormat::Saelens => {
            formats::saelens::write(&sae, &a.out, &prov)?;
            "SAELens"
        }
        ExportFormat::DictionaryLearning => {
            formats::dictionary_learning::write(&sae, &a.out, a.model_name.as_deref(), layer)?;
            "dictionary_learning"
        }
        ExportFormat::Sparsify => {
            formats::sparsify::write(&sae, &a.out)?;
            "sparsify"
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"format": name, "dictionary": a.dict, "out": a.out,
                "scaling_factor_folded": sae.cfg.scaling_factor})
        );
    } else {
        println!(
            "{} → {} ({name} layout; scaling factor {} folded into the weights, so it takes raw activations)",
            a.dict.display(),
            a.out.display(),
            sae.cfg.scaling_factor
        );
    }
    Ok(0)
}

pub fn cmd_eval(a: EvalArgs) -> Result<i32> {
    let sae = saeperf_sae::formats::load(&a.dict)?;
    let set = ActivationSet::open(&a.data)?;
    let mut m = metrics::evaluate(&sae, &set)?;
    saeperf_sae::lm::loss::fill_metrics(&mut m, &set, &sae, !a.json)?;
    let path = a.out.clone().unwrap_or_else(|| a.dict.join("metrics.json"));
    m.write(&path)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "metrics of {} on {} (evaluation split, {} tokens) → {}",
            a.dict.display(),
            a.data.display(),
            set.manifest().n_eval,
            path.display()
        );
        print!("{}", metrics_table(&[("value", &m)]));
    }
    Ok(0)
}

pub fn cmd_synth(a: SynthArgs) -> Result<i32> {
    let cfg = SynthConfig {
        d_in: a.d_in,
        n_features: a.features,
        n_train: a.train_tokens,
        n_eval: a.eval_tokens,
        seed: a.seed,
        mean_active: a.mean_active,
        zipf_exponent: a.zipf,
        noise: a.noise,
    };
    let m = synth::synthesize(&a.out, &cfg)
        .with_context(|| format!("synthesizing into {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "wrote {} ({} train + {} eval tokens, d_in {}, sha256 {})",
            a.out.display(),
            m.n_train,
            m.n_eval,
            m.d_in,
            m.sha256
        );
    }
    Ok(0)
}

/// A plain-text table of metrics, one column per labelled set.
pub fn metrics_table(cols: &[(&str, &Metrics)]) -> String {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    type Cell = Box<dyn Fn(&Metrics) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        ("mse", Box::new(|m| format!("{:.5}", m.mse))),
        ("l0", Box::new(|m| format!("{:.2}", m.l0))),
        ("l1", Box::new(|m| format!("{:.3}", m.l1))),
        ("fvu", Box::new(|m| format!("{:.4}", m.fvu))),
        ("fve", Box::new(|m| format!("{:.4}", m.fve))),
        (
            "dead_fraction",
            Box::new(|m| format!("{:.4}", m.dead_fraction)),
        ),
        (
            "dense_fraction",
            Box::new(|m| format!("{:.4}", m.dense_fraction)),
        ),
        ("mmcs", Box::new(move |m| opt(m.mmcs))),
        (
            "recovered_fraction",
            Box::new(move |m| opt(m.recovered_fraction)),
        ),
        ("loss_recovered", Box::new(move |m| opt(m.loss_recovered))),
        ("delta_ce", Box::new(move |m| opt(m.delta_ce))),
    ];
    let mut s = format!("{:<20}", "metric");
    for (label, _) in cols {
        s += &format!(" {label:>14}");
    }
    s.push('\n');
    for (name, f) in &rows {
        s += &format!("{name:<20}");
        for (_, m) in cols {
            s += &format!(" {:>14}", f(m));
        }
        s.push('\n');
    }
    s
}
