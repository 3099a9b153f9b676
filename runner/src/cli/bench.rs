//! `runner bench` (and its hidden A/B worker `runner bench-ops`): flags → a [`BenchRequest`] → prepare, execute,
//! judge (the bench crate) → print the document, as a table or as JSON, and exit with its code.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use saeperf_bench::auto::OpsRequest;
use saeperf_bench::{BenchDocument, BenchRequest, Device};
use saeperf_compare::baseline::Baseline;
use saeperf_compare::EXIT_FAILED;
use saeperf_git::Repo;
use saeperf_kernels::select::BackendChoice;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Suite file (default bench/suite.toml, else the copy built into the binary).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// quick (CI, ≤ 3 min on 2 cores), standard (default), full (GPU machines).
    #[arg(long)]
    pub profile: Option<String>,
    /// auto (the best available: cuda when a device is usable, else cpu), cpu, reference (plain loops; slow), cuda.
    #[arg(long, default_value = "auto", value_parser = super::parse_backend)]
    pub backend: BackendChoice,
    /// Only benchmarks whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// merge-base (default: the newest stored complete run of the merge base with --base-branch on this machine,
    /// backend and profile), none, auto (merge-base, else build the merge base in a git worktree and time it here,
    /// interleaved), or a run reference (run id, commit prefix, `latest`).
    #[arg(long, default_value = "merge-base", value_parser = parse_baseline)]
    pub baseline: Baseline,
    /// The branch pull requests merge into.
    #[arg(long, default_value = "main")]
    pub base_branch: String,
    /// Pull-request number to record with the run.
    #[arg(long)]
    pub pr: Option<u64>,
    /// Commit to record (default: `git rev-parse HEAD`).
    #[arg(long)]
    pub commit: Option<String>,
    /// Branch to record (default: the current git branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Print the run and its comparison as one JSON document (docs/documents.md) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show every comparison row, not only those that need attention.
    #[arg(long)]
    pub all: bool,
    /// Run no op micro-benchmarks (used by --baseline auto for the merge base's once-through run, whose op
    /// timings come from the interleaved A/B phase instead).
    #[arg(long, hide = true)]
    pub skip_ops: bool,
    /// Do not record counted cost (instructions, est_cycles under Valgrind; docs/verdicts.md, "Counted cost").
    #[arg(long)]
    pub no_count: bool,
    /// Do not fetch and prepare the language-model activation set when it is missing (its benchmarks are then
    /// skipped, and the run says so). Also `SAEPERF_NO_PREPARE=1`.
    #[arg(long, env = "SAEPERF_NO_PREPARE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_prepare: bool,
}

/// Hidden `runner count-ops`: run each benchmark's work once inside the counted region (the child that
/// `runner bench` starts under callgrind) and print which benchmark each region was.
#[derive(Args, Debug)]
pub struct CountOpsArgs {
    #[arg(long)]
    pub suite: Option<PathBuf>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(long, default_value = "cpu", value_parser = super::parse_backend)]
    pub backend: BackendChoice,
    #[arg(long)]
    pub only_ops: bool,
    #[arg(long)]
    pub skip_ops: bool,
}

/// Hidden `runner bench-worker`: one side of paired timing; allocates every op once, then serves timing requests
/// on stdin (docs/verdicts.md, "Paired timing").
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[arg(long)]
    pub suite: Option<PathBuf>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(long, default_value = "auto", value_parser = super::parse_backend)]
    pub backend: BackendChoice,
}

/// Hidden `runner bench-ops`: time the suite's op micro-benchmarks once and print them as JSON (the A/B worker).
#[derive(Args, Debug)]
pub struct BenchOpsArgs {
    #[arg(long)]
    pub suite: Option<PathBuf>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(long, default_value = "auto", value_parser = super::parse_backend)]
    pub backend: BackendChoice,
    /// Timed samples per op (default: the profile's).
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long)]
    pub warmup: Option<usize>,
}

fn parse_baseline(s: &str) -> Result<Baseline, String> {
    s.parse()
}

/// `runner bench`. Returns the exit code.
pub fn cmd_bench(db: Option<&Path>, a: BenchArgs, quiet: bool) -> Result<i32> {
    let req = BenchRequest {
        suite: a.suite,
        profile: a.profile,
        filter: a.filter,
        backend: a.backend,
        baseline: a.baseline,
        base_branch: a.base_branch,
        pr: a.pr,
        commit: a.commit,
        branch: a.branch,
        skip_ops: a.skip_ops,
        count: !a.no_count,
        prepare_data: !a.no_prepare,
        progress: !quiet,
    };
    let repo = Repo::current();
    let prepared = saeperf_bench::prepare(req, || super::open_store(db), &super::home(), &repo)?;
    let done = saeperf_bench::execute(&prepared)?;
    let doc = saeperf_bench::judge(&prepared, &repo, done)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&doc, a.all));
    }
    Ok(doc.exit_code())
}

/// The document for people: the run's table, then the comparison's (or why there is none).
fn render(doc: &BenchDocument, all: bool) -> String {
    let mut s = saeperf_bench::table::render_run(&doc.run);
    match &doc.comparison {
        Some(c) => {
            s += &format!("baseline: {}\n", doc.baseline.why);
            s += &saeperf_compare::render(c, all);
        }
        None if doc.failed() => {
            s += &format!(
                "no baseline: {}\noverall: failed (exit code {EXIT_FAILED})\n",
                doc.baseline.why
            )
        }
        None => {
            s += &format!(
                "no baseline: {}\noverall: new (exit code 0)\n",
                doc.baseline.why
            )
        }
    }
    s
}

/// `runner bench-ops`.
pub fn cmd_bench_ops(a: BenchOpsArgs) -> Result<i32> {
    let device = Device::open(a.backend)?;
    let doc = saeperf_bench::auto::bench_ops(
        &OpsRequest {
            suite: a.suite,
            profile: a.profile,
            filter: a.filter,
            samples: a.samples,
            warmup: a.warmup,
        },
        &device,
    )?;
    println!("{}", serde_json::to_string(&doc)?);
    Ok(0)
}

/// `runner count-ops` (under callgrind, one rayon thread that is this thread).
pub fn cmd_count_ops(a: CountOpsArgs) -> Result<i32> {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global();
    let device = Device::open(a.backend)?;
    let saeperf_kernels::select::Selected::Cpu(cpu) = &device.selected else {
        anyhow::bail!("counted cost counts the CPU backends (--backend cpu or reference)");
    };
    let req = saeperf_bench::count::CountRequest {
        suite: a.suite,
        profile: a.profile,
        filter: a.filter,
        backend: device.backend,
        only_ops: a.only_ops,
        skip_ops: a.skip_ops,
    };
    let doc = saeperf_bench::count::count_child(&req, cpu, &super::home())?;
    println!("{}", serde_json::to_string(&doc)?);
    Ok(0)
}

/// `runner bench-worker`.
pub fn cmd_worker(a: WorkerArgs) -> Result<i32> {
    saeperf_bench::paired::pin_threads();
    let device = Device::open(a.backend)?;
    let (suite, _) = saeperf_bench::Suite::load(a.suite.as_deref())?;
    let resolved = suite.resolve(a.profile.as_deref(), a.filter.as_deref())?;
    let specs: Vec<&saeperf_bench::suite::BenchSpec> = resolved
        .benches
        .iter()
        .filter(|b| matches!(b, saeperf_bench::suite::BenchSpec::Op { .. }))
        .collect();
    match &device.selected {
        saeperf_kernels::select::Selected::Cpu(c) => saeperf_bench::paired::serve(c, &specs)?,
        saeperf_kernels::select::Selected::Cuda(g) => saeperf_bench::paired::serve(&**g, &specs)?,
    }
    Ok(0)
}

/// `runner calibrate`: the detector measuring itself on this machine.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// The suite profile whose op benchmarks are calibrated.
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Only op benchmarks whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// A/A comparisons of counted cost.
    #[arg(long, default_value_t = 50)]
    pub counted_aa: usize,
    /// A/A comparisons of paired timing.
    #[arg(long, default_value_t = 50)]
    pub timed_aa: usize,
    /// Paired-timing comparisons per injected slowdown.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Counted comparisons per injected slowdown (counts repeat exactly; the A/A rows show it).
    #[arg(long, default_value_t = 1)]
    pub counted_trials: usize,
    /// Injected slowdowns (fractions of each op's own work).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.03,0.05,0.1")]
    pub slowdowns: Vec<f64>,
    /// Skip counted cost.
    #[arg(long)]
    pub no_counted: bool,
    /// Skip paired timing.
    #[arg(long)]
    pub no_timed: bool,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `runner calibrate`.
pub fn cmd_calibrate(db: Option<&Path>, a: CalibrateArgs, quiet: bool) -> Result<i32> {
    if let Some(bad) = a
        .slowdowns
        .iter()
        .find(|s| !(s.is_finite() && **s > 0.0 && **s < 10.0))
    {
        anyhow::bail!("--slowdowns: {bad} is not a fraction in (0, 10)");
    }
    // Open the store first: a locked or corrupt store fails before an hour of measuring.
    let store = super::open_store(db)?;
    let started = chrono::Utc::now();
    let req = saeperf_bench::calibrate::CalibrateRequest {
        suite: a.suite.clone(),
        profile: a.profile,
        filter: a.filter,
        counted_aa: a.counted_aa,
        timed_aa: a.timed_aa,
        trials: a.trials,
        counted_trials: a.counted_trials.max(1),
        slowdowns: a.slowdowns,
        counted: !a.no_counted,
        timed: !a.no_timed,
        progress: !quiet,
    };
    let exe = std::env::current_exe()?;
    let table = saeperf_bench::calibrate::calibrate(&req, &exe)?;
    let (suite, _) = saeperf_bench::Suite::load(a.suite.as_deref())?;
    let run =
        saeperf_bench::calibrate::as_run(&table, &Repo::current().state(), &suite.name, started);
    store.commit_run(&run)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "run": run.meta.id, "rows": table })
            )?
        );
    } else {
        print!("{}", saeperf_bench::calibrate::render(&table));
        println!(
            "stored as run {} (machine {})",
            run.meta.id, run.meta.fingerprint_id
        );
    }
    Ok(0)
}
