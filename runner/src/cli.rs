//! The command line: raw flags (clap) → checked values → one function per command.

use crate::data::actset::ActivationSet;
use crate::data::synth::{self, SynthConfig};
use crate::metrics::{self, Metrics};
use crate::train::{self, BackendChoice, ResampleConfig, TrainConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use saeperf_kernels::{Arch, Sae};
use std::path::{Path, PathBuf};

/// Exit code for an error (bad input, failed run).
pub const EXIT_ERROR: i32 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "saeperf: benchmark and regression tracking for SAE training kernels"
)]
pub struct Cli {
    /// Log filter (also RUST_LOG), e.g. info, debug, saeperf_runner=trace.
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(flatten)]
    pub db: crate::store_cli::DbArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a dictionary (with no --data: on the embedded synthetic set).
    Train(TrainArgs),
    /// Compute metrics.json for a saved dictionary on an activation set's evaluation split.
    Eval(EvalArgs),
    /// Activation sets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Run the benchmark suite, store the run, compare it with its baseline; exit 2 on a regression, 3 on a failure.
    Bench(crate::bench::BenchArgs),
    /// Time the suite's op micro-benchmarks once and print them as JSON (the A/B worker of --baseline auto).
    #[command(hide = true)]
    BenchOps(crate::bench::auto::BenchOpsArgs),
    /// The results store: check, list, export.
    #[command(subcommand)]
    Db(crate::store_cli::DbCmd),
    /// Add the runs of JSON bundles (from `runner db export`) to the store.
    Ingest {
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
    },
    /// Compare two stored runs; exit 2 on a regression, 3 on a failed benchmark.
    Compare(crate::store_cli::CompareArgs),
    /// Print a benchmark metric's series over stored runs.
    History(crate::store_cli::HistoryArgs),
    /// Pull-request reports: render the comment, or post it with a commit status.
    #[command(subcommand)]
    Report(crate::report::cli::ReportCmd),
    /// Build the static dashboard (works from file:// and GitHub Pages).
    Dashboard(crate::report::cli::DashboardArgs),
    /// Feature contexts of a dictionary on a model activation set (JSON report + table).
    Features(crate::lm::cli::FeaturesArgs),
    /// The CUDA kernels: NVRTC compile + ptxas resource check (no GPU needed), GPU correctness check, GPU timings.
    #[command(subcommand)]
    Kernels(crate::kernels_cmd::KernelsCmd),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Generate a synthetic activation set with known ground truth.
    Synth(SynthArgs),
    /// Download and verify the reference model (SmolLM2-135M GGUF) and the Brown corpus.
    Fetch(crate::lm::cli::FetchArgs),
    /// Harvest the activation set of the reference model on the Brown corpus.
    Prepare(crate::lm::cli::PrepareArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArchArg {
    Relu,
    Topk,
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
    /// L1 coefficient λ (ReLU).
    #[arg(long)]
    pub l1: Option<f32>,
    /// Features kept per token (TopK).
    #[arg(long)]
    pub k: Option<usize>,
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
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dictionary directory (cfg.json + sae_weights.safetensors).
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

/// Parses the command line, runs the command, prints any error as one line; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            EXIT_ERROR
        }
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn init_tracing(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Train(a) => cmd_train(a, cli.quiet),
        Command::Eval(a) => cmd_eval(a),
        Command::Data(DataCommand::Synth(a)) => cmd_synth(a),
        Command::Bench(a) => crate::bench::run_bench(cli.db.db.as_deref(), &a, cli.quiet),
        Command::BenchOps(a) => crate::bench::auto::run_bench_ops(&a),
        Command::Db(c) => crate::store_cli::run_db(cli.db.db.as_deref(), &c),
        Command::Ingest { bundles } => crate::store_cli::run_ingest(cli.db.db.as_deref(), &bundles),
        Command::Compare(a) => crate::store_cli::run_compare(cli.db.db.as_deref(), &a),
        Command::History(a) => crate::store_cli::run_history(cli.db.db.as_deref(), &a),
        Command::Report(c) => crate::report::cli::run_report(cli.db.db.as_deref(), &c),
        Command::Dashboard(a) => crate::report::cli::run_dashboard(cli.db.db.as_deref(), &a),
        Command::Data(DataCommand::Fetch(a)) => crate::lm::cli::cmd_fetch(a),
        Command::Data(DataCommand::Prepare(a)) => crate::lm::cli::cmd_prepare(a, cli.quiet),
        Command::Features(a) => crate::lm::cli::cmd_features(a),
        Command::Kernels(k) => crate::kernels_cmd::run(k, cli.quiet),
    }
}

fn open_data(data: Option<&Path>) -> Result<ActivationSet> {
    let dir = match data {
        Some(d) => d.to_path_buf(),
        None => synth::ensure_default(&crate::home::saeperf_home())?,
    };
    ActivationSet::open(&dir)
}

/// Builds the training configuration from the flags over the defaults.
pub fn train_config(a: &TrainArgs, set_kind: &str) -> Result<TrainConfig> {
    let mut c = TrainConfig::defaults_for(set_kind);
    c.arch = match a.arch {
        ArchArg::Relu => Arch::Relu,
        ArchArg::Topk => Arch::TopK,
    };
    c.d_sae = a.d_sae;
    if let Some(v) = a.l1 {
        c.l1_coeff = v;
    }
    if let Some(v) = a.k {
        c.k = v;
    }
    if let Some(v) = a.steps {
        c.steps = v;
    }
    if let Some(v) = a.batch {
        c.batch = v;
    }
    if let Some(v) = a.lr {
        c.lr = v;
    }
    if let Some(v) = a.lr_warmup {
        c.lr_warmup = v;
    }
    if let Some(v) = a.l1_warmup {
        c.l1_warmup = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    if !a.resample_at.is_empty() {
        c.resample = Some(ResampleConfig {
            at_steps: a.resample_at.clone(),
            window: a.resample_window,
            sample: a.resample_sample,
        });
    }
    c.backend = a.backend;
    if let Some(p) = a.prune_above {
        if !(0.0..=1.0).contains(&p) {
            bail!("--prune-above must lie in [0, 1], got {p}");
        }
    }
    Ok(c)
}

fn cmd_train(a: TrainArgs, quiet: bool) -> Result<i32> {
    train_config(&a, "")?.validate_basic()?;
    let set = open_data(a.data.as_deref())?;
    let cfg = train_config(&a, set.manifest().source_kind())?;
    cfg.validate(set.d_in())?;
    tracing::info!(set = %set.dir().display(), backend = %cfg.backend, "training");
    let out = train::train(&cfg, &set, !quiet && !a.json)?;
    out.sae.save(&a.out)?;
    let mut m = metrics::evaluate(&out.sae, &set)?;
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
    });
    let mut pruned_metrics = None;
    if let Some(thr) = a.prune_above {
        let (pruned, removed) = train::prune_dense(&out.sae, &set, thr)?;
        let dir = a.out.join("pruned");
        pruned.save(&dir)?;
        let pm = metrics::evaluate(&pruned, &set)?;
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

fn cmd_eval(a: EvalArgs) -> Result<i32> {
    let sae = Sae::load(&a.dict)?;
    let set = ActivationSet::open(&a.data)?;
    let mut m = metrics::evaluate(&sae, &set)?;
    crate::lm::loss::fill_metrics(&mut m, &set, &sae, !a.json)?;
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

fn cmd_synth(a: SynthArgs) -> Result<i32> {
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
