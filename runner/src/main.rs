//! `runner`: the saeperf service's command line. Each subcommand parses its flags and calls one function.
//!
//! Exit codes: 0 success (and, for `bench`/`compare`, no regression); 1 error (bad input, store in use, ...);
//! 2 a regression was found; 3 a benchmark failed or diverged in the head run.

mod bench;
mod compare;
mod fingerprint;
mod store;
mod store_cli;
mod suite;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "saeperf: benchmark and regression tracking for SAE training kernels"
)]
struct Cli {
    #[command(flatten)]
    db: store_cli::DbArg,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the benchmark suite, store the run, compare it with its baseline; exit 2 on a regression, 3 on a failure.
    Bench(bench::BenchArgs),
    /// Time the suite's op micro-benchmarks once and print them as JSON (the A/B worker of --baseline auto).
    #[command(hide = true)]
    BenchOps(bench::auto::BenchOpsArgs),
    /// The results store: check, list, export.
    #[command(subcommand)]
    Db(store_cli::DbCmd),
    /// Add the runs of JSON bundles (from `runner db export`) to the store.
    Ingest {
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
    },
    /// Compare two stored runs; exit 2 on a regression, 3 on a failed benchmark.
    Compare(store_cli::CompareArgs),
    /// Print a benchmark metric's series over stored runs.
    History(store_cli::HistoryArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    let db = cli.db.db.as_deref();
    match cli.cmd {
        Cmd::Bench(a) => bench::run_bench(db, &a),
        Cmd::BenchOps(a) => bench::auto::run_bench_ops(&a),
        Cmd::Db(c) => store_cli::run_db(db, &c),
        Cmd::Ingest { bundles } => store_cli::run_ingest(db, &bundles),
        Cmd::Compare(a) => store_cli::run_compare(db, &a),
        Cmd::History(a) => store_cli::run_history(db, &a),
    }
}
