//! `runner bench`: runs a suite and produces a run — records it in the store, compares it with its baseline, prints
//! a table and exits with the verdict's code.
//!
//! Flow: resolve the suite for the profile and filter → open the store (fails at once if another process has it) →
//! detect the machine fingerprint and git state → prepare the activation sets → write the run as `Incomplete` →
//! run every benchmark (each saved as it finishes) → commit the run atomically as `Complete` → pick the baseline
//! ([`find_baseline`]) → compare → table (or `--json`) → exit code ([`crate::compare::exit_code`]).
//! A run that is killed stays `Incomplete` in the store and is never a baseline.

pub mod auto;
pub mod kernels;
pub mod ops;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::compare::{self, same_series, Comparison};
use crate::fingerprint::Fingerprint;
use crate::store::schema::{new_run_id, BenchKind, BenchStatus};
use crate::store::{BenchResult, Run, RunMeta, RunState, Store};
use crate::suite::{BenchSpec, Suite};
use saeperf_kernels::select::{select_backend, BackendChoice, Selected, Selection};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Suite file (default bench/suite.toml, else the copy built into the binary).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// quick (CI, ≤ 3 min on 2 cores), standard (default), full (GPU machines).
    #[arg(long)]
    pub profile: Option<String>,
    /// auto (the best available: cuda when a device is usable, else cpu), cpu, reference (plain loops; slow), cuda.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Only benchmarks whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// merge-base (default: the newest stored complete run of the merge base with --base-branch on this machine,
    /// backend and profile), none, auto (merge-base, else build the merge base in a git worktree and time it here,
    /// interleaved), or a run reference (run id, commit prefix, `latest`).
    #[arg(long, default_value = "merge-base")]
    pub baseline: String,
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
    /// Print the run and its comparison as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show every comparison row, not only those that need attention.
    #[arg(long)]
    pub all: bool,
    /// Run no op micro-benchmarks (used by --baseline auto for the merge base's once-through run, whose op
    /// timings come from the interleaved A/B phase instead).
    #[arg(long, hide = true)]
    pub skip_ops: bool,
}

/// What git says about the working tree (all None outside a repository).
#[derive(Debug, Clone, Default)]
pub struct GitState {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub dirty: bool,
}

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

pub fn git_state() -> GitState {
    let commit = git(&["rev-parse", "HEAD"]);
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD");
    let dirty = commit.is_some()
        && git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    GitState {
        commit,
        branch,
        dirty,
    }
}

/// The merge base of `rev` with the base branch (tries `branch`, then `origin/branch`).
fn merge_base(rev: &str, branch: &str) -> Option<String> {
    git(&["merge-base", rev, branch])
        .or_else(|| git(&["merge-base", rev, &format!("origin/{branch}")]))
}

/// How the baseline was chosen, for the table and the JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaselineChoice {
    pub run: Option<String>,
    pub why: String,
}

/// Pick the stored baseline of `head`:
/// - only complete runs on the same machine fingerprint, backend and profile, never `head` itself;
/// - a pull request (head's commit is not on the base branch): the newest run of the exact merge base. Earlier runs
///   of the PR's own branch are NOT used: they already contain the PR's changes and would hide its regressions;
/// - on the base branch itself (merge base = head's commit): the newest run of the nearest first-parent ancestor
///   that has one, head's own commit first (so a dirty tree is compared with its clean commit);
/// - outside git (no commit): the newest run of the same series.
pub fn find_baseline(store: &Store, head: &RunMeta, base_branch: &str) -> Result<BaselineChoice> {
    let runs = store.list_runs()?;
    let cands: Vec<&RunMeta> = runs
        .iter()
        .filter(|m| m.state == RunState::Complete && m.id != head.id && same_series(m, head))
        .collect();
    let newest_of = |c: &str| {
        cands
            .iter()
            .rev()
            .find(|m| m.commit.as_deref() == Some(c))
            .map(|m| m.id.clone())
    };
    let Some(commit) = head.commit.as_deref() else {
        return Ok(match cands.last() {
            Some(m) => BaselineChoice {
                run: Some(m.id.clone()),
                why: "no git commit: newest run of this series".into(),
            },
            None => BaselineChoice {
                run: None,
                why: "no earlier run on this machine, backend and profile".into(),
            },
        });
    };
    let Some(mb) = merge_base(commit, base_branch) else {
        return Ok(BaselineChoice {
            run: None,
            why: format!(
                "no merge base of {} with {base_branch} (is the branch fetched?)",
                short(commit)
            ),
        });
    };
    if mb != commit {
        return Ok(match newest_of(&mb) {
            Some(id) => BaselineChoice { run: Some(id), why: format!("merge base {} with {base_branch}", short(&mb)) },
            None => BaselineChoice {
                run: None,
                why: format!(
                    "no stored run of merge base {} on this machine, backend and profile (run `runner bench` there, \
                     or use --baseline auto)",
                    short(&mb)
                ),
            },
        });
    }
    let ancestors =
        git(&["rev-list", "--first-parent", "--max-count=200", commit]).unwrap_or_default();
    for c in ancestors.lines() {
        if let Some(id) = newest_of(c) {
            let why = if c == commit {
                "an earlier run of the same commit".to_string()
            } else {
                format!("nearest benchmarked ancestor {} on {base_branch}", short(c))
            };
            return Ok(BaselineChoice { run: Some(id), why });
        }
    }
    Ok(BaselineChoice {
        run: None,
        why: format!(
            "no stored run of {} or its ancestors on this series",
            short(commit)
        ),
    })
}

/// Rounds of A/B chunks for `--baseline auto`.
const AUTO_ROUNDS: usize = 4;

/// The commit `--baseline auto` builds: the merge base, or the first parent when head is on the base branch.
fn auto_base_commit(commit: Option<&str>, base_branch: &str) -> Option<String> {
    let commit = commit?;
    let mb = merge_base(commit, base_branch)?;
    if mb != commit {
        Some(mb)
    } else {
        git(&["rev-parse", &format!("{commit}^")])
    }
}

fn short(c: &str) -> &str {
    &c[..c.len().min(10)]
}

/// Run one benchmark other than the op micro-benchmarks, never failing: errors become a `failed` / `diverged`
/// status with the reason.
fn run_one(spec: &BenchSpec, ctx: &train::DataCtx, backend: &str, seeds: usize) -> BenchResult {
    match spec {
        BenchSpec::Train(t) => train::run(t, false, ctx, backend, seeds),
        BenchSpec::Prune(t) => train::run(t, true, ctx, backend, seeds),
        BenchSpec::Resources { name } => kernels::run_resources(name),
        BenchSpec::CudaOps {
            name,
            shape,
            warmup,
            iters,
            topk,
        } => kernels::run_cuda_ops(name, *shape, *warmup, *iters, *topk),
        BenchSpec::Op { .. } => unreachable!("ops run in rounds, see run_ops"),
    }
}

/// Run every op micro-benchmark together, in rounds (see [`ops::time_ops`]).
pub(crate) fn run_ops(specs: &[&BenchSpec], backend: &str) -> Vec<BenchResult> {
    let mut list = Vec::new();
    let (mut samples, mut warmup) = (0, 0);
    for spec in specs {
        if let BenchSpec::Op {
            op,
            shape,
            samples: n,
            warmup: w,
            ..
        } = spec
        {
            list.push((
                op.clone(),
                saeperf_kernels::Shape::new(shape.batch, shape.d_in, shape.d_sae),
            ));
            (samples, warmup) = (*n, *w);
        }
    }
    let timed: Vec<Result<ops::OpTiming>> = match backend {
        "cpu" => ops::time_ops(&saeperf_kernels::CpuBackend::fast(), &list, samples, warmup),
        "reference" => ops::time_ops(
            &saeperf_kernels::CpuBackend::reference(),
            &list,
            samples,
            warmup,
        ),
        "cuda" => match select_backend(BackendChoice::Cuda) {
            Ok(Selection {
                backend: Selected::Cuda(gpu),
                ..
            }) => ops::time_ops(&*gpu, &list, samples, warmup),
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(s) => s.line,
                };
                list.iter()
                    .map(|_| Err(anyhow::anyhow!("--backend cuda: {why}")))
                    .collect()
            }
        },
        other => list
            .iter()
            .map(|_| {
                Err(anyhow::anyhow!(
                    "backend {other} is not available in this build"
                ))
            })
            .collect(),
    };
    specs
        .iter()
        .zip(timed)
        .map(|(spec, res)| {
            let BenchSpec::Op {
                name, op, shape, ..
            } = spec
            else {
                unreachable!("only ops are passed")
            };
            let (status, samples, yardstick) = match res {
                Ok(t) => (BenchStatus::Ok, t.samples, t.yardstick),
                Err(e) => (BenchStatus::Failed(format!("{e:#}")), vec![], vec![]),
            };
            let flops = match op.as_str() {
                "encode" | "decode" => Some(2.0 * (shape.batch * shape.d_in * shape.d_sae) as f64),
                _ => None,
            };
            BenchResult {
                name: name.clone(),
                kind: BenchKind::Op,
                status,
                samples,
                yardstick,
                metrics: BTreeMap::new(),
                metric_seeds: BTreeMap::new(),
                deterministic: true,
                curve: vec![],
                extra: serde_json::json!({ "op": op, "shape": shape, "dense_flops": flops }),
            }
        })
        .collect()
}

/// Resolve `--backend` to what the run records: "cpu", "reference" or "cuda" (auto: CUDA when a device is usable).
pub(crate) fn pick_backend(requested: &str) -> Result<String> {
    let choice: BackendChoice = requested.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let sel = select_backend(choice)?;
    tracing::info!("{}", sel.line);
    Ok(match sel.backend {
        Selected::Cpu(c) if c.mode == saeperf_kernels::CpuMode::Reference => "reference".into(),
        Selected::Cpu(_) => "cpu".into(),
        Selected::Cuda(_) => "cuda".into(),
    })
}

/// `runner bench`. Returns the exit code.
pub fn run_bench(db: Option<&Path>, a: &BenchArgs, quiet: bool) -> Result<i32> {
    let (suite, suite_path) = Suite::load(a.suite.as_deref())?;
    let resolved = suite.resolve(a.profile.as_deref(), a.filter.as_deref())?;
    let rules = suite.rules();
    let backend = pick_backend(&a.backend)?;
    let store = crate::store_cli::open_store(db)?;
    let git = git_state();
    let fp = Fingerprint::detect();
    tracing::info!(suite = %suite_path, profile = %resolved.profile, backend, "starting bench");

    let ctx = train::DataCtx::prepare(&resolved, &crate::store_cli::saeperf_home())?;
    let mut resolved = resolved;
    // Looked for only when the suite has a resources benchmark (it loads NVRTC).
    let mut resources_missing: Option<Option<String>> = None;
    resolved.benches.retain(|b| match b {
        BenchSpec::Train(t) | BenchSpec::Prune(t) => !ctx.skipped.contains(&t.data),
        BenchSpec::Op { .. } => !a.skip_ops,
        BenchSpec::Resources { name } => {
            match resources_missing.get_or_insert_with(kernels::resources_unavailable) {
                None => true,
                Some(why) => {
                    eprintln!("{name}: skipped: {why}");
                    false
                }
            }
        }
        BenchSpec::CudaOps { name, .. } => {
            if backend != "cuda" {
                tracing::info!(
                    "{name}: skipped: it needs the cuda backend (this run uses {backend})"
                );
            }
            backend == "cuda"
        }
    });
    if resolved.benches.is_empty() && !a.skip_ops {
        bail!("every selected benchmark uses an activation set that is not prepared");
    }
    let started = chrono::Utc::now();
    let mut meta = RunMeta {
        id: new_run_id(started),
        state: RunState::Incomplete,
        commit: a.commit.clone().or(git.commit.clone()),
        branch: a.branch.clone().or(git.branch.clone()),
        pr: a.pr,
        dirty: a.commit.is_none() && git.dirty,
        started_at: started,
        finished_at: None,
        fingerprint_id: fp.id(),
        fingerprint: fp,
        backend: backend.clone(),
        suite: resolved.suite.clone(),
        profile: resolved.profile.clone(),
        suite_hash: resolved.hash(),
        activation_sets: ctx.digests(),
        benchmarks: resolved
            .benches
            .iter()
            .map(|b| b.name().to_string())
            .collect(),
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    store.begin_run(&meta)?;
    eprintln!(
        "run {} — suite {} ({}), profile {}, backend {}, {} benchmarks",
        meta.id,
        resolved.suite,
        suite_path,
        resolved.profile,
        backend,
        resolved.benches.len()
    );
    // --baseline auto: with no stored merge-base run, prepare the merge base's runner now (before the long work).
    let auto_base = match a.baseline.as_str() {
        "auto" if find_baseline(&store, &meta, &a.base_branch)?.run.is_none() => {
            match auto_base_commit(meta.commit.as_deref(), &a.base_branch) {
                Some(c) => Some(auto::prepare(&c, &crate::store_cli::saeperf_home())?),
                None => {
                    eprintln!(
                        "--baseline auto: no merge base to build (not in git, or no {} branch)",
                        a.base_branch
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let (op_specs, other_specs): (Vec<&BenchSpec>, Vec<&BenchSpec>) = resolved
        .benches
        .iter()
        .partition(|b| matches!(b, BenchSpec::Op { .. }));
    let steps = other_specs.len() + usize::from(!op_specs.is_empty());
    let pb = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(steps as u64)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut results = Vec::with_capacity(resolved.benches.len());
    let mut save = |r: BenchResult, pb: &indicatif::ProgressBar| -> Result<()> {
        if !r.status.is_ok() {
            pb.suspend(|| match &r.status {
                BenchStatus::Failed(why) => eprintln!("{}: failed: {why}", r.name),
                BenchStatus::Diverged(why) => eprintln!("{}: diverged: {why}", r.name),
                BenchStatus::Ok => {}
            });
        }
        store.add_partial_result(&meta.id, &r)?;
        results.push(r);
        Ok(())
    };
    for spec in &other_specs {
        pb.set_message(spec.name().to_string());
        save(run_one(spec, &ctx, &backend, resolved.seeds), &pb)?;
        pb.inc(1);
    }
    let mut auto_base_run = None;
    if let Some(base) = &auto_base {
        pb.set_message(format!(
            "merge base {}: its suite, once",
            short(&base.commit)
        ));
        let mut brun = pb.suspend(|| auto::base_run(base, a, &resolved.profile))?;
        if !op_specs.is_empty() {
            pb.set_message("op micro-benchmarks, base and head interleaved".to_string());
            let (samples, warmup) = match op_specs[0] {
                BenchSpec::Op {
                    samples, warmup, ..
                } => (*samples, *warmup),
                _ => unreachable!(),
            };
            let (b_ops, h_ops) =
                auto::interleaved_ops(base, a, &resolved.profile, samples, warmup, AUTO_ROUNDS)?;
            for r in h_ops {
                save(r, &pb)?;
            }
            brun.results.retain(|r| r.kind != BenchKind::Op);
            brun.results.extend(b_ops);
        }
        auto_base_run = Some(brun);
        pb.inc(1);
    } else if !op_specs.is_empty() {
        pb.set_message(format!("{} op micro-benchmarks, in rounds", op_specs.len()));
        for r in run_ops(&op_specs, &backend) {
            save(r, &pb)?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    meta.finished_at = Some(chrono::Utc::now());
    let run = Run {
        meta: meta.clone(),
        results,
    };
    store.commit_run(&run)?;
    let meta = store
        .run_meta(&meta.id)?
        .context("the run just committed is not in the store")?;

    let choice = match a.baseline.as_str() {
        "none" => BaselineChoice {
            run: None,
            why: "--baseline none".into(),
        },
        "merge-base" => find_baseline(&store, &meta, &a.base_branch)?,
        "auto" => match auto_base_run {
            Some(mut brun) => {
                // Store the merge base's run as a real run of that commit on this machine: it is a baseline next time.
                let started = brun.meta.started_at;
                brun.meta.id = new_run_id(started);
                brun.meta.fingerprint = meta.fingerprint.clone();
                brun.meta.fingerprint_id = meta.fingerprint_id.clone();
                brun.meta.pr = None;
                store.commit_run(&brun)?;
                BaselineChoice {
                    run: Some(brun.meta.id.clone()),
                    why: format!(
                        "--baseline auto: merge base {} built and run here, op timings interleaved with the head",
                        short(brun.meta.commit.as_deref().unwrap_or(""))
                    ),
                }
            }
            None => find_baseline(&store, &meta, &a.base_branch)?,
        },
        spec => {
            let m = store.resolve(spec, &|m: &RunMeta| {
                same_series(m, &meta) && m.id != meta.id
            })?;
            BaselineChoice {
                run: Some(m.id),
                why: format!("--baseline {spec}"),
            }
        }
    };
    let comparison: Option<Comparison> = match &choice.run {
        Some(id) => {
            let base = store.run_meta(id)?.context("baseline vanished")?;
            Some(compare::compare_stored(&store, &base, &meta, &rules, true)?)
        }
        None => None,
    };
    let run = store.load_run(&meta.id)?;
    let failed = run.results.iter().any(|r| !r.status.is_ok());
    if a.json {
        let v = serde_json::json!({ "run": run, "baseline": choice, "comparison": comparison });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_run(&run));
        match &comparison {
            Some(c) => {
                println!("baseline: {}", choice.why);
                print!("{}", compare::render(c, a.all));
            }
            None if failed => println!(
                "no baseline: {}\noverall: failed (exit code {})",
                choice.why,
                compare::EXIT_FAILED
            ),
            None => println!("no baseline: {}\noverall: new (exit code 0)", choice.why),
        }
    }
    Ok(match &comparison {
        Some(c) => c.exit_code(),
        None if failed => compare::EXIT_FAILED,
        None => compare::EXIT_OK,
    })
}

/// One line for a kernel benchmark, whose metrics do not fit the table's columns.
fn kernel_summary(r: &BenchResult) -> Option<String> {
    match r.kind {
        BenchKind::Resources => {
            let by = |what: &'static str| {
                r.metrics
                    .iter()
                    .filter(move |(k, _)| k.ends_with(what))
                    .map(move |(k, v)| (k.trim_end_matches(what).trim_start_matches("kernel."), *v))
            };
            let n = by(".registers").count();
            let (worst, regs) = by(".registers").max_by(|a, b| a.1.total_cmp(&b.1))?;
            let spilling: Vec<&str> = by(".spill_bytes")
                .filter(|(_, v)| *v > 0.0)
                .map(|(k, _)| k)
                .collect();
            Some(format!(
                "{}: {n} kernel builds, most registers {regs:.0} ({worst}), {}",
                r.name,
                if spilling.is_empty() {
                    "no spills".to_string()
                } else {
                    format!("SPILLING: {}", spilling.join(", "))
                }
            ))
        }
        BenchKind::CudaOps => {
            let parts: Vec<String> = r
                .metrics
                .iter()
                .filter_map(|(k, v)| {
                    let op = k.strip_prefix("cuda.")?.strip_suffix(".ms")?;
                    let vs = r
                        .metrics
                        .get(&format!("cuda.{op}.vs_cublas"))
                        .map(|x| format!(", {x:.2}× cuBLAS"))
                        .unwrap_or_default();
                    Some(format!("{op} {v:.3} ms{vs}"))
                })
                .collect();
            Some(format!("{}: {}", r.name, parts.join("; ")))
        }
        _ => None,
    }
}

/// The run as a table: one line per benchmark with its status, median time and headline metrics.
pub fn render_run(run: &Run) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "benchmark",
        "status",
        "median time",
        "n",
        "mse",
        "l0",
        "fve",
        "mmcs",
        "dead",
        "dense",
    ]);
    let m = |r: &BenchResult, k: &str| {
        r.metrics
            .get(k)
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into())
    };
    for r in &run.results {
        let status = match &r.status {
            BenchStatus::Ok => "ok".to_string(),
            BenchStatus::Failed(_) => "failed".into(),
            BenchStatus::Diverged(_) => "diverged".into(),
        };
        t.add_row([
            r.name.clone(),
            status,
            r.median_time()
                .map(|s| format!("{:.3} ms", s * 1e3))
                .unwrap_or_else(|| "-".into()),
            r.samples.len().to_string(),
            m(r, "mse"),
            m(r, "l0"),
            m(r, "fve"),
            m(r, "mmcs"),
            m(r, "dead_fraction"),
            m(r, "dense_fraction"),
        ]);
    }
    let notes: String = run
        .results
        .iter()
        .filter(|r| r.status.is_ok())
        .filter_map(kernel_summary)
        .map(|l| l + "\n")
        .collect();
    format!(
        "run {} ({}{}, {}, {}, {})\n{t}\n{notes}",
        run.meta.id,
        run.meta.commit.as_deref().map(short).unwrap_or("no commit"),
        if run.meta.dirty { ", dirty" } else { "" },
        run.meta.fingerprint.summary(),
        run.meta.backend,
        run.meta.profile
    )
}
