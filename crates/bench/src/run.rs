//! Running a suite into a run, in named steps: [`prepare`] (suite, backend, data, the run begun in the store, the
//! merge base's runner for `--baseline auto`) → [`execute`] (every benchmark, each saved as it finishes, then the run
//! committed atomically as `Complete`) → [`judge`] (the baseline and the comparison, as a [`BenchDocument`]). The
//! command line prints the document (a table for people, JSON for machines) and exits with its code.
//! A run that is killed stays `Incomplete` in the store and is never a baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use saeperf_compare::baseline::{self, Baseline, BaselineChoice};
use saeperf_compare::rules::Rules;
use saeperf_compare::Comparison;
use saeperf_git::{short, Repo};
use saeperf_kernels::cuda::CudaBackend;
use saeperf_kernels::select::{select_backend, BackendChoice, Selected};
use saeperf_kernels::{Backend, CpuMode, Op};
use saeperf_store::schema::new_run_id;
use saeperf_store::{
    BenchKind, BenchResult, BenchStatus, Fingerprint, Run, RunBackend, RunMeta, RunState, Store,
};

use crate::auto::{self, AutoBase};
use crate::count::{self, CountRequest, Counted};
use crate::document::BenchDocument;
use crate::suite::{BenchSpec, ResolvedSuite, Suite};
use crate::train::{DataCtx, DataPrep};
use crate::{kernels, ops, train};

/// What to run, as checked values (the command line builds it from its flags).
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// The suite file (None: bench/suite.toml, else the copy built into the binary).
    pub suite: Option<PathBuf>,
    /// None: the suite's default profile.
    pub profile: Option<String>,
    /// Only benchmarks whose name contains this.
    pub filter: Option<String>,
    pub backend: BackendChoice,
    pub baseline: Baseline,
    /// The branch pull requests merge into.
    pub base_branch: String,
    pub pr: Option<u64>,
    /// The commit and branch to record (None: what git says).
    pub commit: Option<String>,
    pub branch: Option<String>,
    /// Run no op micro-benchmarks (the merge base's once-through run of `--baseline auto`).
    pub skip_ops: bool,
    /// Record counted cost (instructions, est_cycles) under Valgrind where it is installed.
    pub count: bool,
    /// Make a missing set whose suite entry says `prepare = true` (the default language-model set) before running.
    pub prepare_data: bool,
    pub progress: bool,
}

/// The backend of a run: opened once, from the request's choice, and handed to every benchmark.
pub struct Device {
    /// What the run records.
    pub backend: RunBackend,
    pub selected: Selected,
}

impl Device {
    pub fn open(choice: BackendChoice) -> Result<Device> {
        let sel = select_backend(choice)?;
        tracing::info!("{}", sel.line);
        let backend = match &sel.backend {
            Selected::Cpu(c) if c.mode == CpuMode::Reference => RunBackend::Reference,
            Selected::Cpu(_) => RunBackend::Cpu,
            Selected::Cuda(_) => RunBackend::Cuda,
        };
        Ok(Device {
            backend,
            selected: sel.backend,
        })
    }

    /// The GPU, when the run's backend is CUDA.
    pub fn cuda(&self) -> Option<&CudaBackend> {
        match &self.selected {
            Selected::Cuda(g) => Some(g),
            Selected::Cpu(_) => None,
        }
    }

    /// Whether a seed gives bit-identical results on this backend.
    pub fn deterministic(&self) -> bool {
        self.backend.is_deterministic()
    }
}

/// A run that [`prepare`] has begun in the store, with everything [`execute`] needs.
pub struct Prepared {
    /// The store the run is recorded in (open, so locked, for the whole run).
    pub store: Store,
    pub request: BenchRequest,
    pub resolved: ResolvedSuite,
    pub rules: Rules,
    pub device: Device,
    pub data: DataCtx,
    /// The run as begun (`Incomplete`).
    pub meta: RunMeta,
    /// `--baseline auto` with no stored merge-base run: the merge base's runner, ready to time.
    pub auto_base: Option<AutoBase>,
    /// `$SAEPERF_HOME`: where the run keeps its dictionaries ([`crate::dicts`]).
    pub home: PathBuf,
    /// The stored run whose dictionaries the feature diff compares with: the baseline as known before the run
    /// (the stored merge-base run, or `--baseline RUN`); None for `--baseline none` or a merge base built now.
    pub diff_base: Option<String>,
}

/// Step 1: resolve the suite for the profile and filter, open the backend, open the store (`open_store`: it fails
/// at once if another process has it), detect the machine fingerprint and git state, prepare the activation sets,
/// write the run as `Incomplete`, and (for `--baseline auto` without a stored merge-base run) build the merge base's
/// runner before the long work.
pub fn prepare(
    req: BenchRequest,
    open_store: impl FnOnce() -> Result<Store>,
    home: &Path,
    repo: &Repo,
) -> Result<Prepared> {
    let (suite, suite_path) = Suite::load(req.suite.as_deref())?;
    let mut resolved = suite.resolve(req.profile.as_deref(), req.filter.as_deref())?;
    let rules = suite.rules();
    let device = Device::open(req.backend)?;
    let store = open_store()?;
    let git = repo.state();
    let fp = Fingerprint::detect();
    tracing::info!(suite = %suite_path, profile = %resolved.profile, backend = %device.backend, "starting bench");

    let data = DataCtx::prepare(
        &resolved,
        home,
        DataPrep {
            allowed: req.prepare_data,
            progress: req.progress,
        },
    )?;
    // What this run cannot see: benchmarks on a set that is not there, with the reason (kept in the run).
    let mut skipped = BTreeMap::new();
    // Looked for only when the suite has a resources benchmark (it loads NVRTC).
    let mut resources_missing: Option<Option<String>> = None;
    // Looked for only when the suite has an emulated or roofline benchmark (a C++ compiler).
    let mut cxx_missing: Option<Option<String>> = None;
    // Looked for only when the suite has a peer benchmark (it starts Python once).
    let mut torch_missing: Option<Option<String>> = None;
    let trains: Vec<String> = resolved
        .benches
        .iter()
        .filter(|b| matches!(b, BenchSpec::Train(_)))
        .map(|b| b.name().to_string())
        .collect();
    resolved.benches.retain(|b| match b {
        BenchSpec::Train(t) | BenchSpec::Prune(t) => match data.skipped.get(&t.data) {
            Some(why) => {
                skipped.insert(
                    t.name.clone(),
                    format!("activation set {:?}: {why}", t.data),
                );
                false
            }
            None => true,
        },
        BenchSpec::Op { .. } => !req.skip_ops,
        BenchSpec::Resources { name } => {
            match resources_missing.get_or_insert_with(kernels::resources_unavailable) {
                None => true,
                Some(why) => {
                    eprintln!("{name}: skipped: {why}");
                    false
                }
            }
        }
        BenchSpec::Emulated { name } | BenchSpec::Roofline { name, .. } => {
            match cxx_missing.get_or_insert_with(kernels::emulator_unavailable) {
                None => true,
                Some(why) => {
                    eprintln!("{name}: skipped: {why}");
                    skipped.insert(name.clone(), why.clone());
                    false
                }
            }
        }
        BenchSpec::CudaOps { name, .. } => {
            let on_gpu = device.backend == RunBackend::Cuda;
            if !on_gpu {
                tracing::info!(
                    "{name}: skipped: it needs the cuda backend (this run uses {})",
                    device.backend
                );
            }
            on_gpu
        }
        BenchSpec::Peer {
            name,
            against,
            data: set,
            ..
        } => {
            let why = if let Some(why) = data.skipped.get(set) {
                Some(format!("activation set {set:?} of {against}: {why}"))
            } else if !trains.contains(against) {
                Some(format!(
                    "{against} is not selected in this run, so there is no throughput of ours to divide"
                ))
            } else {
                torch_missing
                    .get_or_insert_with(|| crate::peer::unavailable(&crate::peer::python()))
                    .clone()
            };
            match why {
                None => true,
                Some(why) => {
                    eprintln!("{name}: skipped (the PyTorch peer ratio is not measured): {why}");
                    skipped.insert(name.clone(), why);
                    false
                }
            }
        }
    });
    if resolved.benches.is_empty() && !req.skip_ops {
        bail!("every selected benchmark uses an activation set that is not prepared");
    }
    let started = chrono::Utc::now();
    let meta = RunMeta {
        id: new_run_id(started),
        state: RunState::Incomplete,
        commit: req.commit.clone().or(git.commit.clone()),
        branch: req.branch.clone().or(git.branch.clone()),
        pr: req.pr,
        dirty: req.commit.is_none() && git.dirty,
        started_at: started,
        finished_at: None,
        fingerprint_id: fp.id(),
        fingerprint: fp,
        backend: device.backend,
        suite: resolved.suite.clone(),
        profile: resolved.profile.clone(),
        suite_hash: resolved.hash(),
        activation_sets: data.digests(),
        benchmarks: resolved
            .benches
            .iter()
            .map(|b| b.name().to_string())
            .collect(),
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
        skipped,
    };
    store.begin_run(&meta)?;
    eprintln!(
        "run {} — suite {} ({}), profile {}, backend {}, {} benchmarks",
        meta.id,
        resolved.suite,
        suite_path,
        resolved.profile,
        device.backend,
        resolved.benches.len()
    );
    let auto_base = match req.baseline {
        Baseline::Auto
            if baseline::find_baseline(&store, repo, &meta, &req.base_branch)?
                .run
                .is_none() =>
        {
            match auto_base_commit(repo, meta.commit.as_deref(), &req.base_branch) {
                Some(c) => Some(auto::prepare(&c, home, repo)?),
                None => {
                    eprintln!(
                        "--baseline auto: no merge base to build (not in git, or no {} branch)",
                        req.base_branch
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let diff_base = match &req.baseline {
        Baseline::None => None,
        Baseline::MergeBase | Baseline::Auto => {
            baseline::find_baseline(&store, repo, &meta, &req.base_branch)?.run
        }
        Baseline::Run(spec) => baseline::resolve_base(&store, spec, &meta)
            .ok()
            .map(|m| m.id),
    };
    crate::dicts::prune_old(home, &meta.id);
    Ok(Prepared {
        store,
        request: req,
        resolved,
        rules,
        device,
        data,
        meta,
        auto_base,
        home: home.to_path_buf(),
        diff_base,
    })
}

/// The commit `--baseline auto` builds: the merge base, or the first parent when head is on the base branch.
fn auto_base_commit(repo: &Repo, commit: Option<&str>, base_branch: &str) -> Option<String> {
    let commit = commit?;
    let mb = repo.merge_base(commit, base_branch)?;
    if mb != commit {
        Some(mb)
    } else {
        repo.rev_parse(&format!("{commit}^"))
    }
}

/// What [`execute`] produced: the committed head run and, for `--baseline auto`, the merge base's run measured here
/// (not yet stored; [`judge`] stores it).
pub struct Executed {
    pub head: RunMeta,
    pub auto_base_run: Option<Run>,
}

/// Run one benchmark other than the op micro-benchmarks on the run's backend, never failing: errors become a
/// `failed` / `diverged` status with the reason. Training benchmarks also give their dictionary.
pub fn run_one<B: Backend>(
    spec: &BenchSpec,
    data: &DataCtx,
    backend: &B,
    device: &Device,
    seeds: usize,
) -> (BenchResult, Option<saeperf_kernels::Sae>) {
    let r = match spec {
        BenchSpec::Train(t) => {
            return train::run(t, false, data, backend, device.deterministic(), seeds)
        }
        BenchSpec::Prune(t) => {
            return train::run(t, true, data, backend, device.deterministic(), seeds)
        }
        BenchSpec::Resources { name } => kernels::run_resources(name),
        BenchSpec::Emulated { name } => kernels::run_emulated(name),
        BenchSpec::Roofline { name, shape, topk } => kernels::run_roofline(name, *shape, *topk),
        BenchSpec::CudaOps {
            name,
            shape,
            warmup,
            iters,
            topk,
        } => kernels::run_cuda_ops(name, device.cuda(), *shape, *warmup, *iters, *topk),
        BenchSpec::Op { .. } => unreachable!("ops run in rounds, see run_ops"),
        BenchSpec::Peer { .. } => {
            unreachable!("the peer runs after its training benchmark, see execute")
        }
    };
    (r, None)
}

/// Every op micro-benchmark together, in rounds (see [`ops::time_ops`]), on the run's backend.
pub fn run_ops(specs: &[&BenchSpec], device: &Device) -> Vec<BenchResult> {
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
                *op,
                saeperf_kernels::Shape::new(shape.batch, shape.d_in, shape.d_sae),
            ));
            (samples, warmup) = (*n, *w);
        }
    }
    let timed = match &device.selected {
        Selected::Cpu(c) => ops::time_ops(c, &list, samples, warmup),
        Selected::Cuda(g) => ops::time_ops(&**g, &list, samples, warmup),
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
            // Encode and decode are one GEMM of batch × d_in × d_sae each (dense path).
            let flops = matches!(op, Op::Encode | Op::Decode)
                .then(|| 2.0 * (shape.batch * shape.d_in * shape.d_sae) as f64);
            BenchResult {
                name: name.clone(),
                kind: BenchKind::Op,
                status,
                samples,
                yardstick,
                metrics: Default::default(),
                metric_seeds: Default::default(),
                deterministic: true,
                curve: vec![],
                extra: serde_json::json!({ "op": op, "shape": shape, "dense_flops": flops }),
            }
        })
        .collect()
}

/// The progress bar of long bench work (hidden when `show` is false).
pub fn progress_bar(len: usize, show: bool) -> indicatif::ProgressBar {
    let pb = if show {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Step 2: run every benchmark on the run's backend (each result saved as it finishes), then commit the run as
/// `Complete` in one transaction. With `--baseline auto` and a merge base to time, the base's suite runs once and the
/// op micro-benchmarks of both sides are interleaved.
pub fn execute(p: &Prepared) -> Result<Executed> {
    let store = &p.store;
    let (op_specs, other_specs): (Vec<&BenchSpec>, Vec<&BenchSpec>) = p
        .resolved
        .benches
        .iter()
        .partition(|b| matches!(b, BenchSpec::Op { .. }));
    let steps = other_specs.len() + usize::from(!op_specs.is_empty());
    let pb = progress_bar(steps, p.request.progress);
    let counted = if p.request.count {
        pb.set_message("counted cost under Valgrind (one thread)".to_string());
        count_run(p)
    } else {
        Counted::new()
    };
    let mut results = Vec::with_capacity(p.resolved.benches.len());
    let mut save = |mut r: BenchResult, pb: &indicatif::ProgressBar| -> Result<()> {
        count::merge(std::slice::from_mut(&mut r), &counted);
        if !r.status.is_ok() {
            pb.suspend(|| match &r.status {
                BenchStatus::Failed(why) => eprintln!("{}: failed: {why}", r.name),
                BenchStatus::Diverged(why) => eprintln!("{}: diverged: {why}", r.name),
                BenchStatus::Ok => {}
            });
        }
        store.add_partial_result(&p.meta.id, &r)?;
        results.push(r);
        Ok(())
    };
    // Finished reference dictionaries, for the pruning experiment's matched dictionary (trains run first).
    let mut trained: BTreeMap<String, BenchResult> = BTreeMap::new();
    for spec in &other_specs {
        pb.set_message(spec.name().to_string());
        if let BenchSpec::Peer {
            name,
            against,
            data,
            shape,
            topk,
            steps,
            warmup,
        } = spec
        {
            let d_in = p.data.set(data).map(|s| s.d_in()).unwrap_or(0);
            let job = crate::peer::PeerJob {
                python: crate::peer::python(),
                cuda: p.device.backend == RunBackend::Cuda,
                shape: crate::suite::ShapeSpec { d_in, ..*shape },
                steps: *steps,
                warmup: *warmup,
                threads: rayon::current_num_threads(),
            };
            let r = crate::peer::run(
                name,
                &job,
                crate::peer::Ours {
                    name: against,
                    result: trained.get(against),
                    topk: *topk,
                },
            );
            save(r, &pb)?;
            pb.inc(1);
            continue;
        }
        let (mut r, sae) = match &p.device.selected {
            Selected::Cpu(c) => run_one(spec, &p.data, c, &p.device, p.resolved.seeds),
            Selected::Cuda(g) => run_one(spec, &p.data, &**g, &p.device, p.resolved.seeds),
        };
        if let (BenchSpec::Train(t), Some(sae)) = (spec, &sae) {
            pb.suspend(|| crate::dicts::keep_and_diff(p, t, &mut r, sae));
        }
        match spec {
            BenchSpec::Train(_) => {
                trained.insert(r.name.clone(), r.clone());
            }
            BenchSpec::Prune(t) => {
                if let Some(m) = &t.matched {
                    train::attach_matched(&mut r, m, trained.get(m));
                }
            }
            _ => {}
        }
        save(r, &pb)?;
        pb.inc(1);
    }
    let mut auto_base_run = None;
    if let Some(base) = &p.auto_base {
        pb.set_message(format!(
            "merge base {}: its suite, once",
            short(&base.commit)
        ));
        let opts = auto::AutoOptions::of(p);
        let mut brun = pb.suspend(|| auto::base_run(base, &opts))?;
        if let Some(BenchSpec::Op { warmup, .. }) = op_specs.first() {
            let base_counts = if p.request.count && !counted.is_empty() {
                pb.set_message("the merge base's ops: counted cost".to_string());
                count_base_ops(p, base)
            } else {
                Counted::new()
            };
            pb.set_message("op micro-benchmarks, base and head in pairs".to_string());
            let (mut b_ops, h_ops, report) = auto::paired_ops(
                base,
                &opts,
                &op_specs,
                *warmup,
                &p.resolved.paired,
                &p.rules,
            )?;
            tracing::info!(
                secs = report.secs,
                budget_spent = report.budget_spent,
                "paired timing done"
            );
            if report.budget_spent {
                pb.suspend(|| {
                    eprintln!(
                        "paired timing: the {:.0} s budget ran out; some ops have fewer pairs (see their detectable change)",
                        p.resolved.paired.budget_secs
                    )
                });
            }
            for r in h_ops {
                save(r, &pb)?;
            }
            count::merge(&mut b_ops, &base_counts);
            brun.results.retain(|r| r.kind != BenchKind::Op);
            brun.results.extend(b_ops);
        }
        auto_base_run = Some(brun);
        pb.inc(1);
    } else if !op_specs.is_empty() {
        pb.set_message(format!("{} op micro-benchmarks, in rounds", op_specs.len()));
        for r in run_ops(&op_specs, &p.device) {
            save(r, &pb)?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut meta = p.meta.clone();
    meta.finished_at = Some(chrono::Utc::now());
    store.commit_run(&Run { meta, results })?;
    let head = store
        .run_meta(&p.meta.id)?
        .context("the run just committed is not in the store")?;
    Ok(Executed {
        head,
        auto_base_run,
    })
}

/// The counted cost of this run's benchmarks (CPU backends only), or nothing with a one-line note saying why.
fn count_run(p: &Prepared) -> Counted {
    if !matches!(p.device.selected, Selected::Cpu(_)) {
        eprintln!(
            "counted cost skipped: it counts the CPU backends' work, and this run uses {}",
            p.device.backend
        );
        return Counted::new();
    }
    if let Some(why) = count::unavailable() {
        eprintln!("counted cost skipped: {why}");
        return Counted::new();
    }
    let req = CountRequest {
        suite: p.request.suite.clone(),
        profile: Some(p.resolved.profile.clone()),
        filter: p.request.filter.clone(),
        backend: p.device.backend,
        only_ops: false,
        skip_ops: p.request.skip_ops,
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("counted cost skipped: cannot locate this runner ({e})");
            return Counted::new();
        }
    };
    count::count(&exe, None, &req, &[], &[]).unwrap_or_else(|e| {
        eprintln!(
            "counted cost skipped: {}",
            format!("{e:#}").replace('\n', " ")
        );
        Counted::new()
    })
}

/// The merge base's op counts for `--baseline auto` (its runner, its worktree, never the injected slowdown).
fn count_base_ops(p: &Prepared, base: &AutoBase) -> Counted {
    let req = CountRequest {
        suite: p.request.suite.clone(),
        profile: Some(p.resolved.profile.clone()),
        filter: p.request.filter.clone(),
        backend: p.device.backend,
        only_ops: true,
        skip_ops: false,
    };
    count::count(
        &base.runner,
        base.workdir.as_deref(),
        &req,
        &[ops::INJECT_ENV, "SAEPERF_DB", auto::BASE_RUNNER_ENV],
        &[],
    )
    .unwrap_or_else(|e| {
        eprintln!(
            "the merge base's counted cost skipped: {}",
            format!("{e:#}").replace('\n', " ")
        );
        Counted::new()
    })
}

/// Step 3: choose the baseline (storing the merge base's run measured by `--baseline auto`), compare, and put the
/// run, the choice and the comparison into one [`BenchDocument`].
pub fn judge(p: &Prepared, repo: &Repo, done: Executed) -> Result<BenchDocument> {
    let store = &p.store;
    let head = &done.head;
    let base_branch = &p.request.base_branch;
    let choice = match (&p.request.baseline, done.auto_base_run) {
        (Baseline::None, _) => BaselineChoice::none("--baseline none"),
        (Baseline::Auto, Some(mut brun)) => {
            // Store the merge base's run as a real run of that commit on this machine: it is a baseline next time.
            brun.meta.id = new_run_id(brun.meta.started_at);
            brun.meta.fingerprint = head.fingerprint.clone();
            brun.meta.fingerprint_id = head.fingerprint_id.clone();
            brun.meta.pr = None;
            store.commit_run(&brun)?;
            BaselineChoice {
                run: Some(brun.meta.id.clone()),
                why: format!(
                    "--baseline auto: merge base {} built and run here, op timings paired with the head's",
                    short(brun.meta.commit.as_deref().unwrap_or(""))
                ),
            }
        }
        (Baseline::MergeBase | Baseline::Auto, _) => {
            baseline::find_baseline(store, repo, head, base_branch)?
        }
        (Baseline::Run(spec), _) => BaselineChoice {
            run: Some(baseline::resolve_base(store, spec, head)?.id),
            why: format!("--baseline {spec}"),
        },
    };
    let comparison: Option<Comparison> = match &choice.run {
        Some(id) => {
            let base = store.run_meta(id)?.context("baseline vanished")?;
            Some(saeperf_compare::compare_stored(
                store,
                &base,
                head,
                &p.rules,
                true,
                &store.triage()?,
            )?)
        }
        None => None,
    };
    Ok(BenchDocument::new(
        store.load_run(&head.id)?,
        choice,
        comparison,
    ))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use saeperf_kernels::{
        Activation, AdamHyper, BackendError, BatchStats, CpuBackend, Params, Shape,
    };

    use super::*;

    /// The CPU backend under another name, counting the training ops it is asked to run: whatever trains a
    /// reference dictionary must be the backend the run handed down, never one the training path opens itself.
    struct Tagged {
        inner: CpuBackend,
        steps: Cell<usize>,
    }

    type V = Vec<f32>;

    impl Backend for Tagged {
        type Buf = V;
        fn name(&self) -> String {
            "tagged".into()
        }
        fn upload(&self, d: &[f32]) -> Result<V, BackendError> {
            self.inner.upload(d)
        }
        fn download(&self, b: &V) -> Result<V, BackendError> {
            self.inner.download(b)
        }
        fn write(&self, b: &mut V, d: &[f32]) -> Result<(), BackendError> {
            self.inner.write(b, d)
        }
        fn zeros(&self, n: usize) -> Result<V, BackendError> {
            self.inner.zeros(n)
        }
        fn encode(
            &self,
            s: Shape,
            a: Activation,
            x: &V,
            p: &Params<V>,
            f: &mut V,
        ) -> Result<(), BackendError> {
            self.inner.encode(s, a, x, p, f)
        }
        fn decode(&self, s: Shape, f: &V, p: &Params<V>, xh: &mut V) -> Result<(), BackendError> {
            self.inner.decode(s, f, p, xh)
        }
        fn backward(
            &self,
            s: Shape,
            l1: f32,
            x: &V,
            f: &V,
            xh: &V,
            p: &Params<V>,
            g: &mut Params<V>,
        ) -> Result<(), BackendError> {
            self.inner.backward(s, l1, x, f, xh, p, g)
        }
        fn adam(
            &self,
            s: Shape,
            h: AdamHyper,
            p: &mut Params<V>,
            g: &mut Params<V>,
            m: &mut Params<V>,
            v: &mut Params<V>,
        ) -> Result<(), BackendError> {
            self.steps.set(self.steps.get() + 1);
            self.inner.adam(s, h, p, g, m, v)
        }
        fn batch_stats(
            &self,
            s: Shape,
            x: &V,
            xh: &V,
            f: &V,
            c: &mut [u32],
        ) -> Result<BatchStats, BackendError> {
            self.inner.batch_stats(s, x, xh, f, c)
        }
        fn per_token_sq_err(&self, s: Shape, x: &V, xh: &V) -> Result<Vec<f32>, BackendError> {
            self.inner.per_token_sq_err(s, x, xh)
        }
        fn resample(
            &self,
            s: Shape,
            dead: &[usize],
            dirs: &[f32],
            p: &mut Params<V>,
            m: &mut Params<V>,
            v: &mut Params<V>,
        ) -> Result<(), BackendError> {
            self.inner.resample(s, dead, dirs, p, m, v)
        }
    }

    const SUITE: &str = r#"
name = "t"
[profiles.standard]
steps_scale = 1.0
op_samples = 3
synthetic_tokens = 2048
[data.synthetic]
kind = "synthetic"
d_in = 8
n_features = 16
[[train]]
name = "relu"
data = "synthetic"
arch = "relu"
d_sae = 16
l1 = 1e-3
steps = 7
batch = 16
"#;

    fn tiny() -> (tempfile::TempDir, BenchSpec, DataCtx) {
        let home = tempfile::tempdir().unwrap();
        let resolved = Suite::parse(SUITE, "t.toml")
            .unwrap()
            .resolve(None, None)
            .unwrap();
        let data = DataCtx::prepare(&resolved, home.path(), DataPrep::NEVER).unwrap();
        (home, resolved.benches[0].clone(), data)
    }

    #[test]
    fn training_benchmarks_train_on_the_backend_they_are_handed() {
        let (_home, spec, data) = tiny();
        let device = Device::open(BackendChoice::Reference).unwrap();
        let tagged = Tagged {
            inner: CpuBackend::reference(),
            steps: Cell::new(0),
        };
        let (r, _) = run_one(&spec, &data, &tagged, &device, 1);
        assert!(r.status.is_ok(), "{:?}", r.status);
        assert_eq!(r.extra["train_backend"], "tagged");
        assert_eq!(
            tagged.steps.get(),
            7,
            "every training step ran on the handed backend"
        );
    }

    #[test]
    fn the_run_device_is_the_training_backend() {
        // What `execute` does for every training benchmark: the device opened for the run trains it.
        let (_home, spec, data) = tiny();
        for (choice, want, name) in [
            (
                BackendChoice::Reference,
                RunBackend::Reference,
                "cpu-reference",
            ),
            (BackendChoice::Cpu, RunBackend::Cpu, "cpu"),
        ] {
            let device = Device::open(choice).unwrap();
            assert_eq!(device.backend, want);
            let r = match &device.selected {
                Selected::Cpu(c) => run_one(&spec, &data, c, &device, 1).0,
                Selected::Cuda(g) => run_one(&spec, &data, &**g, &device, 1).0,
            };
            assert_eq!(r.extra["train_backend"], name, "{choice}");
            assert!(r.deterministic);
        }
    }

    #[test]
    fn non_deterministic_backends_train_a_band_of_seeds() {
        assert_eq!(train::seeds_for(1, true), 1);
        assert_eq!(train::seeds_for(1, false), train::MIN_BAND_SEEDS);
        assert_eq!(train::seeds_for(5, false), 5);
        assert!(!RunBackend::Cuda.is_deterministic());
    }
}
