//! The command line, in two stages (ripgrep style): raw flags (clap `Args`, one module per command family) →
//! checked values (the crates' request types) → one library call per command. The modules here only parse, check,
//! call and print; the work lives in the crates (ARCHITECTURE.md). Errors print as one line with exit code 1.

mod bench;
mod data;
mod kernels;
mod report;
mod schedule;
mod store;
mod train;
mod triage;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use saeperf_store::Store;

/// Exit code for an error (bad input, failed run).
pub const EXIT_ERROR: i32 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "saeperf: benchmark and regression tracking for SAE training kernels"
)]
pub struct Cli {
    /// Log filter (also RUST_LOG), e.g. info, debug, saeperf_bench=trace.
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(flatten)]
    pub db: DbArg,
    #[command(subcommand)]
    pub command: Command,
}

/// Store location shared by the store commands.
#[derive(Args, Debug, Clone)]
pub struct DbArg {
    /// The results store (a sled directory); default $SAEPERF_HOME/store (SAEPERF_HOME defaults to the user cache dir + saeperf).
    #[arg(long, env = "SAEPERF_DB", global = true)]
    pub db: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a dictionary (with no --data: on the embedded synthetic set).
    Train(train::TrainArgs),
    /// Compute metrics.json for a saved dictionary on an activation set's evaluation split.
    Eval(train::EvalArgs),
    /// Write a dictionary in another tool's layout (SAELens), folded to raw units.
    Export(train::ExportArgs),
    /// Activation sets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Feature contexts of a dictionary on a model activation set (JSON report + table).
    Features(data::FeaturesArgs),
    /// Run the benchmark suite, store the run, compare it with its baseline; exit 2 on a regression, 3 on a failure.
    Bench(bench::BenchArgs),
    /// Time the suite's op micro-benchmarks once and print them as JSON (the A/B worker of --baseline auto).
    #[command(hide = true)]
    BenchOps(bench::BenchOpsArgs),
    /// Count each benchmark's work once inside the counted region (the child `runner bench` runs under callgrind).
    #[command(hide = true)]
    CountOps(bench::CountOpsArgs),
    /// One side of paired timing: serves "time op i for n iterations" requests on stdin.
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
    /// Measure the speed detector on this machine: A/A false alarms and injected slowdowns caught, for counted cost
    /// and paired timing; stored as a run and printed as a table.
    Calibrate(bench::CalibrateArgs),
    /// The results store: check, list, export.
    #[command(subcommand)]
    Db(store::DbCmd),
    /// Add the runs of JSON bundles (from `runner db export`) to the store.
    Ingest {
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
    },
    /// Write the result bundle of a `runner bench --json` document: its runs, and what a later post needs.
    Bundle(store::BundleArgs),
    /// Compare two stored runs; exit 2 on a regression, 3 on a failed benchmark.
    Compare(store::CompareArgs),
    /// Print a benchmark metric's series over stored runs.
    History(store::HistoryArgs),
    /// Acknowledge a regression or dismiss a false alarm flagged in a run; list them.
    #[command(subcommand)]
    Triage(triage::TriageCmd),
    /// Pull-request reports: render the comment, or post it with a commit status.
    #[command(subcommand)]
    Report(report::ReportCmd),
    /// Build the static dashboard (works from file:// and GitHub Pages).
    Dashboard(report::DashboardArgs),
    /// The CUDA kernels: NVRTC compile + ptxas resource check (no GPU needed), GPU correctness check, GPU timings.
    #[command(subcommand)]
    Kernels(kernels::KernelsCmd),
    /// The scheduled runner service: rebuild and bench tracked commits on cron schedules (see saeperf.toml).
    Schedule(schedule::ScheduleArgs),
    /// The scheduler's next fires, running attempt and recent outcomes.
    Status(schedule::StatusArgs),
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

fn run(cli: Cli) -> Result<i32> {
    let db = cli.db.db.as_deref();
    match cli.command {
        Command::Train(a) => train::cmd_train(a, cli.quiet),
        Command::Eval(a) => train::cmd_eval(a),
        Command::Export(a) => train::cmd_export(a),
        Command::Data(c) => data::run(c, cli.quiet),
        Command::Features(a) => data::cmd_features(a),
        Command::Bench(a) => bench::cmd_bench(db, a, cli.quiet),
        Command::BenchOps(a) => bench::cmd_bench_ops(a),
        Command::CountOps(a) => bench::cmd_count_ops(a),
        Command::Calibrate(a) => bench::cmd_calibrate(db, a, cli.quiet),
        Command::BenchWorker(a) => bench::cmd_worker(a),
        Command::Db(c) => store::run_db(db, &c),
        Command::Ingest { bundles } => store::run_ingest(db, &bundles),
        Command::Bundle(a) => store::run_bundle(db, &a),
        Command::Compare(a) => store::run_compare(db, &a),
        Command::History(a) => store::run_history(db, &a),
        Command::Triage(c) => triage::run(db, &c),
        Command::Report(c) => report::run_report(db, &c),
        Command::Dashboard(a) => report::run_dashboard(db, &a),
        Command::Kernels(k) => kernels::run(k, cli.quiet),
        Command::Schedule(a) => schedule::run_schedule(&a),
        Command::Status(a) => schedule::run_status(&a),
    }
}

/// The one home of every command: `$SAEPERF_HOME`, else the user's cache dir + `saeperf`.
pub fn home() -> PathBuf {
    saeperf_sae::home::saeperf_home()
}

/// The store path: `--db`, else `$SAEPERF_HOME/store`.
pub fn store_path(db: Option<&Path>) -> PathBuf {
    db.map(Path::to_path_buf)
        .unwrap_or_else(|| home().join("store"))
}

/// Open the store (creating its parent directory); a store in use by another process is a one-line error.
pub fn open_store(db: Option<&Path>) -> Result<Store> {
    let p = store_path(db);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(Store::open(&p)?)
}

/// A `--backend` value: cpu, reference, cuda or auto.
pub fn parse_backend(s: &str) -> Result<saeperf_kernels::select::BackendChoice, String> {
    s.parse()
}
