//! `runner bench --baseline auto`: when no stored run of the merge base exists, build the merge base's runner in a
//! git worktree and measure it here, in the same job — its quality benchmarks and counted cost once, and every op
//! micro-benchmark timed in pairs with the head's by two long-lived workers ([`crate::paired`]), so that clock drift
//! and neighbours hit both sides alike (docs/verdicts.md, "Paired timing").
//!
//! The base binary: `$SAEPERF_AUTO_BASE_RUNNER` if set (a prebuilt runner of the merge base; also how the tests
//! drive this path without a cargo build), else `cargo build --release -p saeperf-runner` in the worktree
//! `$SAEPERF_HOME/auto/<commit>` with the shared target dir `$SAEPERF_HOME/auto/target`. The merge base's runner must
//! know `bench-worker` (every runner since paired timing landed); an older one gets a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use saeperf_git::{short, Repo};
use saeperf_store::{BenchResult, Run, RunBackend};

use saeperf_compare::rules::Rules;

use crate::document::{BenchDocument, OpsDocument};
use crate::paired::{self, PairReport, Worker};
use crate::run::{run_ops, Device, Prepared};
use crate::suite::{BenchSpec, PairSettings, Suite};

/// Environment variable naming a prebuilt runner of the merge base.
pub const BASE_RUNNER_ENV: &str = "SAEPERF_AUTO_BASE_RUNNER";

/// What the hidden `runner bench-ops` (the A/B worker) times.
#[derive(Debug, Clone)]
pub struct OpsRequest {
    pub suite: Option<PathBuf>,
    pub profile: Option<String>,
    pub filter: Option<String>,
    /// Timed samples and warm-up iterations per op (None: the profile's).
    pub samples: Option<usize>,
    pub warmup: Option<usize>,
}

/// `runner bench-ops`: time the suite's op micro-benchmarks once on `device`.
pub fn bench_ops(req: &OpsRequest, device: &Device) -> Result<OpsDocument> {
    let (suite, _) = Suite::load(req.suite.as_deref())?;
    let resolved = suite.resolve(req.profile.as_deref(), req.filter.as_deref())?;
    let specs: Vec<BenchSpec> = resolved
        .benches
        .into_iter()
        .filter_map(|b| match b {
            BenchSpec::Op {
                name,
                op,
                shape,
                samples,
                warmup,
            } => Some(BenchSpec::Op {
                name,
                op,
                shape,
                samples: req.samples.unwrap_or(samples),
                warmup: req.warmup.unwrap_or(warmup),
            }),
            _ => None,
        })
        .collect();
    let refs: Vec<&BenchSpec> = specs.iter().collect();
    let results = if refs.is_empty() {
        vec![]
    } else {
        run_ops(&refs, device)
    };
    Ok(OpsDocument::new(results))
}

/// What both sides of `--baseline auto` are run with: the head's suite choice, filter, profile and backend.
#[derive(Debug, Clone)]
pub struct AutoOptions {
    pub suite: Option<PathBuf>,
    pub filter: Option<String>,
    pub profile: String,
    pub base_branch: String,
    pub backend: RunBackend,
}

impl AutoOptions {
    pub fn of(p: &Prepared) -> AutoOptions {
        AutoOptions {
            suite: p.request.suite.clone(),
            filter: p.request.filter.clone(),
            profile: p.resolved.profile.clone(),
            base_branch: p.request.base_branch.clone(),
            backend: p.device.backend,
        }
    }
}

/// The merge base to measure and its runner binary.
pub struct AutoBase {
    pub commit: String,
    pub runner: PathBuf,
    /// Where the base runs (its worktree, so that its own bench/suite.toml is found), if built here.
    pub workdir: Option<PathBuf>,
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let o = cmd.output().with_context(|| format!("starting {what}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "{what} failed ({}): {}",
            o.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(o)
}

/// Find or build the runner of `commit`.
pub fn prepare(commit: &str, home: &Path, repo: &Repo) -> Result<AutoBase> {
    if let Some(p) = std::env::var_os(BASE_RUNNER_ENV) {
        let runner = PathBuf::from(p);
        if !runner.is_file() {
            bail!("{BASE_RUNNER_ENV}={} is not a file", runner.display());
        }
        return Ok(AutoBase {
            commit: commit.to_string(),
            runner,
            workdir: None,
        });
    }
    let root = home.join("auto");
    let wt = root.join(&commit[..commit.len().min(12)]);
    if !wt.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        eprintln!(
            "--baseline auto: checking out merge base {} in {}",
            short(commit),
            wt.display()
        );
        repo.add_worktree(&wt, commit, true)?;
    }
    let target = root.join("target");
    eprintln!("--baseline auto: building the merge base's runner (cargo build --release; first time takes minutes)");
    run_checked(
        Command::new("cargo")
            .current_dir(&wt)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--release",
                "-p",
                "saeperf-runner",
                "--bin",
                "runner",
            ]),
        "cargo build of the merge base",
    )?;
    Ok(AutoBase {
        commit: commit.to_string(),
        runner: target.join("release").join("runner"),
        workdir: Some(wt),
    })
}

fn suite_arg(o: &AutoOptions) -> Vec<String> {
    // With an explicit --suite both sides run it; otherwise each side runs its own commit's bench/suite.toml.
    match &o.suite {
        Some(s) => vec![
            "--suite".into(),
            std::path::absolute(s)
                .unwrap_or(s.clone())
                .display()
                .to_string(),
        ],
        None => vec![],
    }
}

fn base_cmd(base: &AutoBase) -> Command {
    let mut c = Command::new(&base.runner);
    if let Some(w) = &base.workdir {
        c.current_dir(w);
    }
    // The slowdown injection stands for a regression in the head's code: the base never sees it.
    c.env_remove("SAEPERF_DB")
        .env_remove(BASE_RUNNER_ENV)
        .env_remove(crate::ops::INJECT_ENV);
    c
}

/// The base's suite without its ops (they are timed interleaved), once, into a throw-away store; returns its run.
pub fn base_run(base: &AutoBase, o: &AutoOptions) -> Result<Run> {
    let tmp = tempfile::tempdir().context("creating a temp store for the base run")?;
    let mut c = base_cmd(base);
    c.arg("--db").arg(tmp.path().join("store")).args([
        "bench",
        "--baseline",
        "none",
        "--json",
        "--profile",
        &o.profile,
    ]);
    c.args([
        "--backend",
        o.backend.as_str(),
        "--commit",
        &base.commit,
        "--branch",
        &o.base_branch,
    ]);
    c.args(suite_arg(o));
    if let Some(f) = &o.filter {
        c.args(["--filter", f]);
    }
    let out = c.output().context("starting the merge base's runner")?;
    // Exit 3 (a failed benchmark) still produced a run; anything else without a document is an error.
    let doc = BenchDocument::parse(&String::from_utf8_lossy(&out.stdout)).map_err(|e| {
        anyhow::anyhow!(
            "the merge base's runner did not produce a run ({}; {e}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )
    })?;
    Ok(doc.run)
}

/// Op timings of base and head, paired (see [`crate::paired`]): one long-lived worker of each build, pairs in random
/// order within each pair, sequential sampling, confirmation of borderline ops. Returns the base's and the head's op
/// results, tied together by a pairing token.
pub fn paired_ops(
    base: &AutoBase,
    o: &AutoOptions,
    specs: &[&BenchSpec],
    warmup: usize,
    settings: &PairSettings,
    rules: &Rules,
) -> Result<(Vec<BenchResult>, Vec<BenchResult>, PairReport)> {
    let head_exe = std::env::current_exe().context("locating this runner")?;
    let args = |c: &mut Command| {
        c.args([
            "--quiet",
            "bench-worker",
            "--profile",
            &o.profile,
            "--backend",
            o.backend.as_str(),
        ]);
        if let Some(f) = &o.filter {
            c.args(["--filter", f]);
        }
        c.args(suite_arg(o));
    };
    let mut start = |base_first: bool| -> Result<(Worker, Worker)> {
        let mut bc = base_cmd(base);
        args(&mut bc);
        let mut hc = Command::new(&head_exe);
        hc.env_remove(BASE_RUNNER_ENV);
        args(&mut hc);
        Ok(if base_first {
            let b = Worker::start(bc, "the merge base's")?;
            (b, Worker::start(hc, "this build's")?)
        } else {
            let h = Worker::start(hc, "this build's")?;
            (Worker::start(bc, "the merge base's")?, h)
        })
    };
    let token = format!(
        "auto-{}-{}",
        short(&base.commit),
        chrono::Utc::now().timestamp_micros()
    );
    let seed = chrono::Utc::now().timestamp_micros() as u64;
    let (pairs, report, ready) = paired::time_pairs(&mut start, warmup, settings, rules, seed)?;
    let (b, h) = paired::results(&pairs, specs, (&ready.0, &ready.1), &token);
    Ok((b, h, report))
}
