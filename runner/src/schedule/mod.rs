//! `runner schedule --config FILE`: the unattended benchmark service, and `runner status`.
//!
//! One thread, one loop: every 200 ms it checks each job's next cron fire; a fire queues its job (a job already
//! queued is not queued twice, so fires that arrive while another job runs coalesce), and when nothing runs the
//! oldest queued job starts. A job resolves its target commit (after `git fetch` when the clone has a remote),
//! asks the store whether that commit was already benchmarked with the same suite, profile and machine (then it is
//! skipped), checks it out into its own git worktree, builds it, runs that build's bench against the shared store,
//! reads the bench's JSON (run, baseline comparison), re-renders the dashboard, notifies webhooks of regressions and
//! removes the worktree. While a child runs the loop keeps polling fires and the stop flag.
//!
//! A pull-request job lists the open pull requests carrying its label through the GitHub client (octocrab, API base
//! URL from the configuration), and for each head commit not yet benchmarked with the same suite, profile and
//! machine fetches `refs/pull/N/head` from the remote (a ref GitHub serves for every pull request, forks included,
//! and that a plain git remote can hold too), benchmarks it like a branch commit with the pull request's base branch
//! as the merge-base baseline, re-renders the dashboard, and runs `runner report post` (this same binary, as a child
//! in its own process group) to update the job's sticky comment and set the commit status. A failed listing or post
//! is recorded as a `github failed` attempt; a head whose run is stored but whose post failed is posted again at the
//! next fire without being benchmarked again. A head that fails to build (or whose bench crashes) gets an `error`
//! commit status. Build and bench children run without the token variables in their environment: a labelled pull
//! request (perhaps from a fork) runs its own code on this machine, and must not be handed the token.
//!
//! Invariants: the state file (see [`state`]) records the newest handled fire per job, so after downtime a missed
//! fire runs once; an attempt is in `state.current` while it runs and moves to the history with its outcome and log,
//! so every incomplete store run the scheduler caused is named by an `interrupted`/`bench crashed` attempt;
//! SIGTERM/SIGINT kill the child's process group (TERM, then KILL after 3 s), record the attempt as interrupted,
//! remove the worktree and exit 0; a failing build or bench never stops the loop; one scheduler per store
//! ([`state::SchedulerLock`]). The scheduler never holds the store open while a bench runs (sled locks it).

pub mod config;
pub mod job;
pub mod state;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::github::{GitHub, PullRequest, Repo, RetryPolicy, StatusState};
use crate::notify;
use crate::store::{Store, StoreError};
use config::{Config, Job, Target, Tz};
use state::{Attempt, Outcome, SchedulerLock, State};

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// The configuration file (saeperf.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the configuration, print the next fires and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The scheduler's configuration file.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// How long a child gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(200);

/// The next fire of a job strictly after `after`.
pub fn next_fire(job: &Job, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match tz {
        Tz::Utc => job.cron.schedule.after(&after).next(),
        Tz::Local => job
            .cron
            .schedule
            .after(&after.with_timezone(&chrono::Local))
            .next()
            .map(|t| t.with_timezone(&Utc)),
    }
}

/// The newest fire in (last, now] and how many fires that interval held (after downtime: many, run once).
pub fn due_fire(
    job: &Job,
    tz: Tz,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, usize)> {
    let mut newest = None;
    let mut missed = 0usize;
    let mut t = last;
    while let Some(f) = next_fire(job, tz, t) {
        if f > now {
            break;
        }
        newest = Some(f);
        missed += 1;
        t = f;
        if missed >= 100_000 {
            // A very frequent schedule after a long downtime: stop counting; the next tick continues from here
            // and the job is already queued, so it still runs once.
            break;
        }
    }
    newest.map(|f| (f, missed))
}

/// What to do with a target commit.
enum Plan {
    /// Build and bench it.
    Run,
    /// Nothing (already benchmarked, or failed for good).
    Skip,
    /// Its run is stored (this store run id) but this pull-request job has not posted it yet.
    PostOnly(String),
}

/// How a waited-for child ended.
enum ChildEnd {
    Exited(std::process::ExitStatus),
    TimedOut,
    Stopped,
}

struct Scheduler {
    cfg: Config,
    state: State,
    stop: Arc<AtomicBool>,
    fingerprint_id: String,
    runner_exe: PathBuf,
}

pub fn run_schedule(a: &ScheduleArgs) -> Result<i32> {
    let cfg = Config::load(&a.config)?;
    if a.check {
        let now = Utc::now();
        for j in &cfg.jobs {
            println!(
                "{}: {} → next fire {}",
                j.name,
                j.cron.source,
                next_fire(j, cfg.timezone, now)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            );
        }
        println!("configuration {} is valid", cfg.path.display());
        return Ok(0);
    }
    for d in [
        cfg.state_dir.clone(),
        cfg.state_dir.join("logs"),
        cfg.state_dir.join("worktrees"),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock = SchedulerLock::acquire(&cfg.state_dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let state = State::load(&cfg.state_dir)?;
    let mut s = Scheduler {
        fingerprint_id: crate::fingerprint::Fingerprint::detect().id(),
        runner_exe: std::env::current_exe().context("locating the runner binary")?,
        cfg,
        state,
        stop,
    };
    s.startup()?;
    s.write_status_json(Some(std::process::id()));
    s.run_loop()?;
    s.write_status_json(None);
    tracing::info!("scheduler stopped");
    eprintln!("scheduler stopped");
    Ok(0)
}

impl Scheduler {
    fn save(&self) {
        if let Err(e) = self.state.save(&self.cfg.state_dir) {
            tracing::error!("cannot save the scheduler state: {e:#}");
        }
    }

    fn worktree(&self, job: &str) -> PathBuf {
        self.cfg.state_dir.join("worktrees").join(job)
    }

    /// Crash recovery: an attempt left running is interrupted; stale worktrees go; jobs no longer configured leave
    /// the queue.
    fn startup(&mut self) -> Result<()> {
        if let Some(a) = self.state.recover() {
            tracing::warn!(
                job = a.job,
                commit = a.commit,
                "the previous scheduler died during this attempt"
            );
        }
        let names: Vec<String> = self.cfg.jobs.iter().map(|j| j.name.clone()).collect();
        self.state.pending.retain(|j| names.contains(j));
        for j in &names {
            job::remove_worktree(&self.cfg.repo, &self.worktree(j));
        }
        self.save();
        eprintln!(
            "scheduler started (pid {}, {} jobs, state {})",
            std::process::id(),
            self.cfg.jobs.len(),
            self.cfg.state_dir.display()
        );
        Ok(())
    }

    /// Queue every job whose next fire has come; a run of missed fires counts once.
    fn tick(&mut self) {
        let now = Utc::now();
        let mut changed = false;
        for j in &self.cfg.jobs {
            let Some(&last) = self.state.last_fire.get(&j.name) else {
                // First start: wait for the next fire.
                self.state.last_fire.insert(j.name.clone(), now);
                changed = true;
                continue;
            };
            if let Some((f, missed)) = due_fire(j, self.cfg.timezone, last, now) {
                self.state.last_fire.insert(j.name.clone(), f);
                let queued = self.state.enqueue(&j.name);
                tracing::info!(job = j.name, fire = %f, missed, queued, "fire");
                changed = true;
            }
        }
        if changed {
            self.save();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run_loop(&mut self) -> Result<()> {
        while !self.stopping() {
            self.tick();
            if self.state.pending.is_empty() {
                std::thread::sleep(POLL);
                continue;
            }
            let name = self.state.pending.remove(0);
            self.save();
            let Some(j) = self.cfg.jobs.iter().find(|j| j.name == name).cloned() else {
                continue;
            };
            self.run_job(&j);
        }
        Ok(())
    }

    /// Open the store briefly (it may be busy with a bench run by hand: retry for a while).
    fn open_store(&self) -> Result<Option<Store>> {
        let t = Instant::now();
        loop {
            match Store::open(&self.cfg.store) {
                Ok(s) => return Ok(Some(s)),
                Err(StoreError::InUse { .. })
                    if t.elapsed() < Duration::from_secs(60) && !self.stopping() =>
                {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(StoreError::InUse { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn run_job(&mut self, j: &Job) {
        let branch = match &j.target {
            Target::Branch(b) => b.clone(),
            Target::PullRequests { label } => {
                let label = label.clone();
                return self.run_pr_job(j, &label);
            }
        };
        let branch = &branch;
        let repo = self.cfg.repo.clone();
        let remote = job::remote(&repo, self.cfg.remote.as_deref());
        if let Some(r) = &remote {
            if let Err(e) = job::git(&repo, &["fetch", "--prune", "--quiet", r]) {
                tracing::warn!(
                    job = j.name,
                    "fetch failed, using the refs already here: {e:#}"
                );
            }
        }
        let commit = match job::resolve_branch(&repo, remote.as_deref(), branch) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(job = j.name, "{e:#}");
                eprintln!("job {}: {e:#}", j.name);
                return;
            }
        };
        if !matches!(self.plan(j, &commit, None), Plan::Run) {
            return;
        }
        let base_branch = match &remote {
            Some(r) => format!("{r}/{}", j.base_branch),
            None => j.base_branch.clone(),
        };
        self.attempt(j, &commit, branch, &base_branch, None, None);
    }

    /// Whether `commit` is benchmarked for job `j`: not when it already failed for good, nor when the store holds a
    /// complete clean run of it with the same suite, profile and machine. For pull-request jobs a stored run that this
    /// job has not yet reported successfully on pull request `pr` (its post failed, another job benchmarked the
    /// commit, or another pull request has the same head) is posted.
    fn plan(&self, j: &Job, commit: &str, pr: Option<u64>) -> Plan {
        if let Some(prev) = self
            .state
            .history
            .iter()
            .rev()
            .find(|a| a.job == j.name && a.commit == commit && a.outcome.is_final_failure())
        {
            tracing::info!(
                job = j.name,
                commit,
                "skipped: this commit already failed ({})",
                prev.outcome.as_str()
            );
            return Plan::Skip;
        }
        let hash = job::suite_hash_at(&self.cfg.repo, commit, j.suite.as_deref(), &j.profile);
        match self.open_store() {
            Ok(Some(store)) => {
                match job::already_benchmarked(
                    &store,
                    commit,
                    &self.fingerprint_id,
                    &j.profile,
                    hash.as_deref(),
                ) {
                    Ok(Some(run)) => {
                        let reported = self.state.history.iter().any(|a| {
                            a.job == j.name
                                && a.commit == commit
                                && a.pr == pr
                                && matches!(
                                    a.outcome,
                                    Outcome::Ok | Outcome::Regression | Outcome::BenchmarkFailed
                                )
                        });
                        if pr.is_some() && !reported {
                            tracing::info!(
                                job = j.name,
                                commit,
                                run,
                                "benchmarked, not yet posted"
                            );
                            return Plan::PostOnly(run);
                        }
                        tracing::info!(job = j.name, commit, run, "skipped: already benchmarked");
                        Plan::Skip
                    }
                    Ok(None) => Plan::Run,
                    Err(e) => {
                        tracing::warn!("cannot list the store's runs: {e:#}");
                        Plan::Run
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(
                    job = j.name,
                    "the store stayed busy for a minute; this fire is skipped"
                );
                Plan::Skip
            }
            Err(e) => {
                tracing::error!(job = j.name, "cannot open the store: {e:#}");
                eprintln!("job {}: cannot open the store: {e:#}", j.name);
                Plan::Skip
            }
        }
    }

    /// Record an attempt that ran nothing (a failed listing or fetch), with its reason in a log file of its own.
    fn record(
        &mut self,
        j: &Job,
        commit: &str,
        branch: &str,
        pr: Option<u64>,
        outcome: Outcome,
        detail: String,
    ) {
        let key = if commit.is_empty() { "none" } else { commit };
        let log = job::log_path(&self.cfg.state_dir.join("logs"), &j.name, key);
        if let Err(e) = std::fs::write(
            &log,
            format!("[saeperf schedule {}] {detail}\n", Utc::now().to_rfc3339()),
        ) {
            tracing::warn!("cannot write {}: {e}", log.display());
        }
        let a = Attempt {
            job: j.name.clone(),
            commit: commit.to_string(),
            branch: branch.to_string(),
            pr,
            started_at: Utc::now(),
            finished_at: None,
            outcome: Outcome::Running,
            run_id: None,
            log,
            detail: String::new(),
        };
        self.finish(a, outcome, detail);
    }

    /// Run one GitHub call through the client (octocrab, the configured API URL, token and retry policy) on a
    /// runtime of its own; a stop request cuts retries short.
    fn with_github<T>(
        &self,
        call: impl for<'a> FnOnce(
            &'a GitHub,
            &'a Repo,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, crate::github::GitHubError>> + 'a>,
        >,
    ) -> Result<T> {
        let repo: Repo = self
            .cfg
            .github
            .as_deref()
            .context("repository.github is not set")?
            .parse()?;
        let api = self.cfg.github_api.clone();
        let token = api.token()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let stop = Arc::clone(&self.stop);
        rt.block_on(async move {
            let gh = GitHub::new(
                &api.api_url,
                &token,
                RetryPolicy {
                    attempts: api.attempts,
                    base_delay: Duration::from_millis(api.retry_delay_ms),
                    max_delay: Duration::from_secs(120),
                },
            )?;
            tokio::select! {
                r = call(&gh, &repo) => Ok(r?),
                _ = async {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } => anyhow::bail!("stopped while talking to GitHub"),
            }
        })
    }

    /// The open pull requests carrying `label`.
    fn list_pulls(&self, label: &str) -> Result<Vec<PullRequest>> {
        let label = label.to_string();
        self.with_github(move |gh, repo| {
            Box::pin(async move { gh.labelled_pulls(repo, &label).await })
        })
    }

    /// A pull request's head that failed to build or whose bench crashed gets an `error` commit status (there is no
    /// run, so no comment); a failure to set it is logged only.
    fn report_failure(&self, job: &str, sha: &str, outcome: Outcome) {
        let context = self.status_context(job);
        let description = format!(
            "{}: see the scheduler's status page and log",
            outcome.as_str()
        );
        let target = self
            .cfg
            .notify
            .dashboard_url
            .as_deref()
            .map(|u| format!("{}/status.html", u.trim_end_matches('/')));
        let sha = sha.to_string();
        let r = self.with_github(move |gh, repo| {
            Box::pin(async move {
                gh.set_status(
                    repo,
                    &sha,
                    StatusState::Error,
                    &context,
                    &description,
                    target.as_deref(),
                )
                .await
            })
        });
        if let Err(e) = r {
            tracing::warn!("cannot set the failure status: {e:#}");
        }
    }

    /// A pull-request job: every labelled open pull request whose head is new gets benchmarked and reported.
    fn run_pr_job(&mut self, j: &Job, label: &str) {
        let repo = self.cfg.repo.clone();
        let listing = format!("pull requests labelled {label}");
        let pulls = match self.list_pulls(label) {
            Ok(p) => p,
            Err(e) => {
                if !self.stopping() {
                    self.record(
                        j,
                        "",
                        &listing,
                        None,
                        Outcome::GithubFailed,
                        format!("listing {listing}: {e:#}"),
                    );
                }
                return;
            }
        };
        tracing::info!(
            job = j.name,
            label,
            count = pulls.len(),
            "labelled pull requests"
        );
        let open: Vec<u64> = pulls.iter().map(|p| p.number).collect();
        match job::prune_pull_refs(&repo, &open) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                job = j.name,
                n,
                "removed the refs of pull requests no longer listed"
            ),
            Err(e) => tracing::warn!(job = j.name, "pruning pull-request refs: {e:#}"),
        }
        let remote = job::remote(&repo, self.cfg.remote.as_deref());
        if let Some(r) = &remote {
            // The base branches (for the merge base).
            if let Err(e) = job::git(&repo, &["fetch", "--prune", "--quiet", r]) {
                tracing::warn!(
                    job = j.name,
                    "fetch failed, using the refs already here: {e:#}"
                );
            }
        }
        for p in pulls {
            if self.stopping() {
                break;
            }
            self.tick();
            let commit = p.head_sha.clone();
            let branch = if p.head_ref.is_empty() {
                format!("pull/{}", p.number)
            } else {
                p.head_ref.clone()
            };
            if let Err(e) = job::fetch_pull(&repo, remote.as_deref(), p.number, &commit) {
                self.record(
                    j,
                    &commit,
                    &branch,
                    Some(p.number),
                    Outcome::FetchFailed,
                    format!("pull request #{}: {e:#}", p.number),
                );
                // Say so on the pull request too (the fetch is tried again at the next fire; a later success
                // replaces this status).
                self.report_failure(&j.name, &commit, Outcome::FetchFailed);
                continue;
            }
            let base_branch = match &remote {
                Some(r) => format!("{r}/{}", p.base_ref),
                None => p.base_ref.clone(),
            };
            match self.plan(j, &commit, Some(p.number)) {
                Plan::Skip => {}
                Plan::Run => {
                    self.attempt(j, &commit, &branch, &base_branch, Some(p.number), None);
                    let failed = self
                        .state
                        .history
                        .last()
                        .filter(|a| a.commit == commit && a.outcome.is_final_failure())
                        .map(|a| a.outcome);
                    if let Some(o) = failed {
                        self.report_failure(&j.name, &commit, o);
                    }
                }
                Plan::PostOnly(run) => {
                    self.attempt(j, &commit, &branch, &base_branch, Some(p.number), Some(run))
                }
            }
        }
    }

    /// Wait for a child, queueing fires meanwhile; kill its process group on stop or timeout.
    fn wait(&mut self, child: &mut Child, timeout: Duration) -> ChildEnd {
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return ChildEnd::Exited(st),
                Ok(None) => {}
                Err(e) => tracing::warn!("waiting for a child: {e}"),
            }
            let stop = self.stopping();
            if stop || t.elapsed() > timeout {
                job::signal_group(child, libc::SIGTERM);
                let k = Instant::now();
                while k.elapsed() < KILL_GRACE {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                job::signal_group(child, libc::SIGKILL);
                let _ = child.wait();
                return if stop {
                    ChildEnd::Stopped
                } else {
                    ChildEnd::TimedOut
                };
            }
            self.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn finish(&mut self, mut a: Attempt, outcome: Outcome, detail: String) {
        a.outcome = outcome;
        a.detail = detail;
        a.finished_at = Some(Utc::now());
        let line = format!(
            "job {} commit {}: {}{}{}",
            a.job,
            &a.commit[..a.commit.len().min(10)],
            outcome.as_str(),
            a.run_id
                .as_deref()
                .map(|r| format!(" (run {r})"))
                .unwrap_or_default(),
            if a.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", a.detail)
            }
        );
        match outcome {
            Outcome::Ok => tracing::info!("{line}"),
            _ => tracing::warn!("{line}"),
        }
        eprintln!("{line}");
        self.state.current = None;
        self.state.push_history(a);
        self.save();
        self.write_status_json(Some(std::process::id()));
    }

    fn attempt(
        &mut self,
        j: &Job,
        commit: &str,
        branch: &str,
        base_branch: &str,
        pr: Option<u64>,
        post_only: Option<String>,
    ) {
        let log = job::log_path(&self.cfg.state_dir.join("logs"), &j.name, commit);
        let out = log.with_extension("json");
        let mut a = Attempt {
            job: j.name.clone(),
            commit: commit.to_string(),
            branch: branch.to_string(),
            pr,
            started_at: Utc::now(),
            finished_at: None,
            outcome: Outcome::Running,
            run_id: post_only.clone(),
            log: log.clone(),
            detail: String::new(),
        };
        self.state.current = Some(a.clone());
        self.save();
        self.write_status_json(Some(std::process::id()));
        eprintln!(
            "job {}: {} {branch}{} at {commit} (log {})",
            j.name,
            if post_only.is_some() {
                "posting"
            } else {
                "benchmarking"
            },
            pr.map(|n| format!(" (#{n})")).unwrap_or_default(),
            log.display()
        );
        let wt = self.worktree(&j.name);
        job::remove_worktree(&self.cfg.repo, &wt);
        let result = self.attempt_in(
            j,
            commit,
            branch,
            base_branch,
            &wt,
            &log,
            &out,
            &mut a,
            post_only.is_some(),
        );
        job::remove_worktree(&self.cfg.repo, &wt);
        let (outcome, detail) = result;
        self.finish(a, outcome, detail);
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt_in(
        &mut self,
        j: &Job,
        commit: &str,
        branch: &str,
        base_branch: &str,
        wt: &Path,
        log: &Path,
        out: &Path,
        a: &mut Attempt,
        post_only: bool,
    ) -> (Outcome, String) {
        let note = |msg: &str| {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "[saeperf schedule {}] {msg}", Utc::now().to_rfc3339());
            }
        };
        note(&format!("job {} commit {commit} branch {branch}", j.name));
        if let Err(e) = job::add_worktree(&self.cfg.repo, wt, commit) {
            note(&format!("{e:#}"));
            return (Outcome::BuildFailed, format!("worktree: {e:#}"));
        }
        let vars: Vec<(&str, String)> = vec![
            ("runner", self.runner_exe.display().to_string()),
            ("target_dir", self.cfg.target_dir.display().to_string()),
            ("worktree", wt.display().to_string()),
            ("db", self.cfg.store.display().to_string()),
            ("commit", commit.to_string()),
            ("branch", branch.to_string()),
            ("base_branch", base_branch.to_string()),
            ("main_branch", j.base_branch.clone()),
            ("profile", j.profile.clone()),
            ("job", j.name.clone()),
            (
                "dashboard_dir",
                self.cfg
                    .dashboard_dir
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "suite_args",
                j.suite
                    .as_deref()
                    .map(|s| format!("--suite {}", job::sh_quote(s)))
                    .unwrap_or_default(),
            ),
            (
                "pr_args",
                a.pr.map(|n| format!("--pr {n}")).unwrap_or_default(),
            ),
        ];
        let env = [(
            "CARGO_TARGET_DIR",
            self.cfg.target_dir.clone().into_os_string(),
        )];
        // The commit's own code (build scripts, the bench) never sees the GitHub token: pull requests may come from
        // forks. Only `report post`, this binary, gets it.
        let unset = self.secret_vars();
        let unset: Vec<&str> = unset.iter().map(String::as_str).collect();
        if post_only {
            return match a.run_id.clone() {
                Some(run) => self.post(j, commit, base_branch, &run, wt, log, &env, a),
                None => (Outcome::GithubFailed, "no run to post".into()),
            };
        }

        // Build.
        let cmd = job::expand(&self.cfg.commands.build, &vars);
        note(&format!("build: {cmd}"));
        let mut child = match job::spawn(&cmd, wt, &unset, &env, log, log) {
            Ok(c) => c,
            Err(e) => return (Outcome::BuildFailed, format!("{e:#}")),
        };
        match self.wait(
            &mut child,
            Duration::from_secs(self.cfg.commands.build_timeout_secs),
        ) {
            ChildEnd::Exited(st) if st.success() => {}
            ChildEnd::Exited(st) => {
                note(&format!("build failed: {st}"));
                return (
                    Outcome::BuildFailed,
                    format!("build exited {st} (see the log)"),
                );
            }
            ChildEnd::TimedOut => return (Outcome::BuildFailed, "build timed out".into()),
            ChildEnd::Stopped => return (Outcome::Interrupted, "stopped during the build".into()),
        }

        // Bench.
        let cmd = job::expand(&self.cfg.commands.bench, &vars);
        note(&format!("bench: {cmd}"));
        let _ = std::fs::remove_file(out);
        let mut child = match job::spawn(&cmd, wt, &unset, &env, out, log) {
            Ok(c) => c,
            Err(e) => return (Outcome::BenchCrashed, format!("{e:#}")),
        };
        let end = self.wait(
            &mut child,
            Duration::from_secs(self.cfg.commands.bench_timeout_secs),
        );
        a.run_id = job::run_id_from_log(log);
        let code = match end {
            ChildEnd::Exited(st) => st.code(),
            ChildEnd::TimedOut => {
                note("bench timed out and was killed");
                return (
                    Outcome::BenchCrashed,
                    "bench timed out; its store run stays incomplete".into(),
                );
            }
            ChildEnd::Stopped => {
                note("stopped: bench killed");
                return (
                    Outcome::Interrupted,
                    "stopped during the bench; its store run stays incomplete (never a baseline)"
                        .into(),
                );
            }
        };
        let report = std::fs::read_to_string(out)
            .ok()
            .and_then(|t| job::parse_bench_json(&t));
        if let Some(r) = &report {
            a.run_id = r.run_id.clone().or(a.run_id.take());
        }
        let (outcome, detail) = match (code, &report) {
            (Some(2), Some(r)) => (
                Outcome::Regression,
                r.regressions
                    .iter()
                    .map(|x| format!("{} {}", x.bench, x.metric))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (Some(2), None) => (
                Outcome::Regression,
                "bench reported a regression (no JSON output)".into(),
            ),
            (Some(0), r) => (
                Outcome::Ok,
                r.as_ref()
                    .and_then(|r| r.overall.clone())
                    .map(|o| format!("overall: {o}"))
                    .unwrap_or_else(|| "no baseline yet".into()),
            ),
            (Some(3), r) => (
                Outcome::BenchmarkFailed,
                r.as_ref()
                    .map(|r| r.failed_benches.join(", "))
                    .unwrap_or_default(),
            ),
            (c, _) => {
                note(&format!("bench exited with {c:?}"));
                return (
                    Outcome::BenchCrashed,
                    format!(
                        "bench exited {} (see the log){}",
                        c.map(|c| c.to_string())
                            .unwrap_or_else(|| "on a signal".into()),
                        if a.run_id.is_some() {
                            "; its store run stays incomplete"
                        } else {
                            ""
                        }
                    ),
                );
            }
        };

        // Dashboard (the store is free again: the bench has exited).
        if let Some(d) = &self.cfg.dashboard_dir {
            if let Err(e) = std::fs::create_dir_all(d) {
                tracing::warn!("cannot create {}: {e}", d.display());
            }
            let cmd = job::expand(&self.cfg.commands.dashboard, &vars);
            note(&format!("dashboard: {cmd}"));
            match job::spawn(&cmd, wt, &unset, &env, log, log) {
                Ok(mut c) => match self.wait(&mut c, Duration::from_secs(600)) {
                    ChildEnd::Exited(st) if st.success() => {}
                    _ => tracing::warn!(
                        job = j.name,
                        "dashboard rendering failed (see {})",
                        log.display()
                    ),
                },
                Err(e) => tracing::warn!("dashboard: {e:#}"),
            }
        }

        // Notifications.
        if outcome == Outcome::Regression && !self.cfg.notify.webhooks.is_empty() {
            let link = self.link(commit);
            let msg = notify::Message {
                verdict: "regression".into(),
                job: j.name.clone(),
                commit: commit.to_string(),
                branch: branch.to_string(),
                run_id: a.run_id.clone(),
                base_run_id: report.as_ref().and_then(|r| r.base_run_id.clone()),
                regressions: report
                    .as_ref()
                    .map(|r| r.regressions.clone())
                    .unwrap_or_default(),
                link,
            };
            let hooks: Vec<String> = self
                .cfg
                .notify
                .webhooks
                .iter()
                .map(|w| w.get_ref().clone())
                .collect();
            let d = notify::Delivery {
                attempts: self.cfg.notify.attempts,
                first_delay: Duration::from_millis(self.cfg.notify.retry_delay_ms),
                timeout: Duration::from_secs(10),
            };
            for (url, r) in notify::send(&hooks, &msg, &d) {
                note(&format!("notify {url}: {r:?}"));
            }
        }

        // The pull request's comment and commit status.
        if let (Some(_), Some(run)) = (a.pr, a.run_id.clone()) {
            let (posted, said) = self.post(j, commit, base_branch, &run, wt, log, &env, a);
            return match posted {
                Outcome::GithubFailed | Outcome::Interrupted => (
                    posted,
                    format!("benchmarked ({}: {detail}); {said}", outcome.as_str()),
                ),
                _ => (outcome, format!("{detail}; {said}")),
            };
        }
        (outcome, detail)
    }

    /// The commit status context and the sticky comment's key of a job: `{github.status_context}/{job}`, so two
    /// jobs keep two comments and two statuses on one pull request (two machines: give each its own
    /// `status_context`).
    fn status_context(&self, job: &str) -> String {
        format!("{}/{job}", self.cfg.github_api.status_context)
    }

    /// Environment variables that hold secrets: the configured token variable and GITHUB_TOKEN.
    fn secret_vars(&self) -> Vec<String> {
        let mut v = vec!["GITHUB_TOKEN".to_string()];
        if self.cfg.github_api.token_env != "GITHUB_TOKEN" {
            v.push(self.cfg.github_api.token_env.clone());
        }
        v
    }

    /// `runner report post` for a stored run of a pull request's head: the job's sticky comment and commit status
    /// (both named by [`Scheduler::status_context`]). Runs in the
    /// commit's worktree (the merge base and the suite's rules are the commit's), as a child of this binary in its
    /// own process group, so a stop kills it and fires keep being queued during GitHub's retries. Returns the
    /// verdict the post reported, or `GithubFailed` and why.
    #[allow(clippy::too_many_arguments)]
    fn post(
        &mut self,
        j: &Job,
        commit: &str,
        base_branch: &str,
        run: &str,
        wt: &Path,
        log: &Path,
        env: &[(&str, std::ffi::OsString)],
        a: &Attempt,
    ) -> (Outcome, String) {
        let Some(pr) = a.pr else {
            return (Outcome::GithubFailed, "no pull request".into());
        };
        let Some(repo) = self.cfg.github.clone() else {
            return (Outcome::GithubFailed, "repository.github is not set".into());
        };
        let api = self.cfg.github_api.clone();
        let token = match api.token() {
            Ok(t) => t,
            Err(e) => return (Outcome::GithubFailed, format!("posting: {e}")),
        };
        if !wt.is_dir() {
            if let Err(e) = job::add_worktree(&self.cfg.repo, wt, commit) {
                return (Outcome::GithubFailed, format!("posting: worktree: {e:#}"));
            }
        }
        let mut args: Vec<String> = vec![
            self.runner_exe.display().to_string(),
            "--db".into(),
            self.cfg.store.display().to_string(),
            "report".into(),
            "post".into(),
            "--repo".into(),
            repo.clone(),
            "--pr".into(),
            pr.to_string(),
            "--head".into(),
            run.to_string(),
            "--base-branch".into(),
            base_branch.to_string(),
            "--verify-head".into(),
            commit.to_string(),
            "--key".into(),
            self.status_context(&j.name),
            "--api-url".into(),
            api.api_url.clone(),
            "--status-context".into(),
            self.status_context(&j.name),
            "--attempts".into(),
            api.attempts.to_string(),
            "--retry-delay-ms".into(),
            api.retry_delay_ms.to_string(),
        ];
        if let Some(u) = &self.cfg.notify.dashboard_url {
            args.extend(["--dashboard-url".into(), u.clone()]);
        }
        if let Some(s) = &j.suite {
            args.extend(["--suite".into(), s.clone()]);
        }
        let cmd = args
            .iter()
            .map(|x| job::sh_quote(x))
            .collect::<Vec<_>>()
            .join(" ");
        let out = log.with_extension("post");
        let _ = std::fs::remove_file(&out);
        {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(
                    f,
                    "[saeperf schedule {}] post: {cmd}",
                    Utc::now().to_rfc3339()
                );
            }
        }
        let mut env: Vec<(&str, std::ffi::OsString)> = env.to_vec();
        env.push(("GITHUB_TOKEN", token.into()));
        let mut child = match job::spawn(&cmd, wt, &[], &env, &out, log) {
            Ok(c) => c,
            Err(e) => return (Outcome::GithubFailed, format!("posting: {e:#}")),
        };
        let end = self.wait(&mut child, Duration::from_secs(900));
        let said = std::fs::read_to_string(&out).unwrap_or_default();
        {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = write!(f, "{said}");
            }
        }
        let _ = std::fs::remove_file(&out);
        match end {
            ChildEnd::Exited(st) if st.success() => {
                // `report post` ends its line with `(VERDICT)`.
                let verdict = said
                    .trim()
                    .rsplit_once('(')
                    .map(|(_, v)| v.trim_end_matches(')').to_string())
                    .unwrap_or_default();
                let outcome = match verdict.as_str() {
                    "regression" => Outcome::Regression,
                    "failed" => Outcome::BenchmarkFailed,
                    _ => Outcome::Ok,
                };
                tracing::info!(job = j.name, pr, commit, "posted: {}", said.trim());
                (outcome, format!("posted to #{pr} ({verdict})"))
            }
            ChildEnd::Exited(st) => {
                let why = std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("Error") || l.starts_with("error"))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("exited {st}"));
                (
                    Outcome::GithubFailed,
                    format!("posting to #{pr} failed: {why}"),
                )
            }
            ChildEnd::TimedOut => (Outcome::GithubFailed, format!("posting to #{pr} timed out")),
            ChildEnd::Stopped => (Outcome::Interrupted, "stopped while posting".into()),
        }
    }

    fn link(&self, commit: &str) -> Option<String> {
        if let Some(u) = &self.cfg.notify.dashboard_url {
            return Some(u.clone());
        }
        self.cfg
            .github
            .as_ref()
            .map(|g| format!("https://github.com/{g}/commit/{commit}"))
    }

    /// `status.json` beside the dashboard, and the status page rendered from it (`pid`: None once stopping).
    fn write_status_json(&self, pid: Option<u32>) {
        let Some(d) = &self.cfg.dashboard_dir else {
            return;
        };
        let st = status_report(&self.cfg, &self.state, pid);
        let tmp = d.join("status.json.tmp");
        let r = std::fs::create_dir_all(d)
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec_pretty(&st).expect("serializes")))
            .and_then(|_| std::fs::rename(&tmp, d.join("status.json")));
        if let Err(e) = r {
            tracing::warn!("cannot write {}: {e}", d.join("status.json").display());
            return;
        }
        let repo_url = self
            .cfg
            .github
            .as_ref()
            .map(|g| format!("https://github.com/{g}"));
        if let Err(e) =
            crate::report::status::render(&crate::report::environment(), d, repo_url.as_deref())
        {
            tracing::warn!("cannot render the status page: {e:#}");
        }
    }
}

/// What `runner status` shows (and, as status.json, the dashboard's status page).
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub scheduler_pid: Option<u32>,
    /// When this report was made.
    #[serde(default)]
    pub generated_at: Option<DateTime<Utc>>,
    pub state_dir: PathBuf,
    pub jobs: Vec<JobStatus>,
    pub current: Option<Attempt>,
    /// Newest attempts first.
    pub recent: Vec<Attempt>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub cron: String,
    pub target: String,
    pub profile: String,
    pub queued: bool,
    pub last_fire: Option<DateTime<Utc>>,
    pub next_fire: Option<DateTime<Utc>>,
    pub last_attempt: Option<Attempt>,
}

pub fn status_report(cfg: &Config, st: &State, pid: Option<u32>) -> StatusReport {
    let now = Utc::now();
    StatusReport {
        scheduler_pid: pid,
        generated_at: Some(now),
        state_dir: cfg.state_dir.clone(),
        jobs: cfg
            .jobs
            .iter()
            .map(|j| {
                let last = st.last_fire.get(&j.name).copied();
                JobStatus {
                    name: j.name.clone(),
                    cron: j.cron.source.clone(),
                    target: match &j.target {
                        Target::Branch(b) => format!("branch {b}"),
                        Target::PullRequests { label } => format!("pull requests labelled {label}"),
                    },
                    profile: j.profile.clone(),
                    queued: st.pending.contains(&j.name),
                    last_fire: last,
                    next_fire: next_fire(j, cfg.timezone, last.unwrap_or(now).max(now)),
                    last_attempt: st.last_attempt(&j.name).cloned(),
                }
            })
            .collect(),
        current: st.current.clone(),
        recent: st.history.iter().rev().take(20).cloned().collect(),
    }
}

/// `runner status --config FILE`.
pub fn run_status(a: &StatusArgs) -> Result<i32> {
    let cfg = Config::load_for_status(&a.config)?;
    let st = State::load(&cfg.state_dir)?;
    let pid = SchedulerLock::holder(&cfg.state_dir);
    let rep = status_report(&cfg, &st, pid);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
        return Ok(0);
    }
    match pid {
        Some(p) => println!(
            "scheduler running (pid {p}), state {}",
            cfg.state_dir.display()
        ),
        None => println!("no scheduler running, state {}", cfg.state_dir.display()),
    }
    let fmt_t = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let short = |c: &str| c[..c.len().min(10)].to_string();
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "job",
        "cron",
        "target",
        "profile",
        "next fire (UTC)",
        "queued",
        "last attempt",
        "outcome",
    ]);
    for j in &rep.jobs {
        t.add_row([
            j.name.clone(),
            j.cron.clone(),
            j.target.clone(),
            j.profile.clone(),
            fmt_t(j.next_fire),
            if j.queued { "yes".into() } else { "".into() },
            j.last_attempt
                .as_ref()
                .map(|a| format!("{} {}", short(&a.commit), fmt_t(Some(a.started_at))))
                .unwrap_or_else(|| "-".into()),
            j.last_attempt
                .as_ref()
                .map(|a| a.outcome.as_str().to_string())
                .unwrap_or_default(),
        ]);
    }
    println!("{t}");
    if let Some(c) = &rep.current {
        println!(
            "running: job {} commit {} since {}",
            c.job,
            short(&c.commit),
            fmt_t(Some(c.started_at))
        );
    }
    if !rep.recent.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header([
            "finished (UTC)",
            "job",
            "commit (PR)",
            "outcome",
            "run",
            "detail",
            "log",
        ]);
        for a in &rep.recent {
            t.add_row([
                fmt_t(a.finished_at),
                a.job.clone(),
                format!(
                    "{}{}",
                    short(&a.commit),
                    a.pr.map(|n| format!(" (#{n})")).unwrap_or_default()
                ),
                a.outcome.as_str().to_string(),
                a.run_id.clone().unwrap_or_default(),
                a.detail.clone(),
                a.log.display().to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn missed_fires_after_downtime_run_once() {
        let job = Job {
            name: "n".into(),
            cron: config::Cron::parse("0 0 3 * * *").unwrap(),
            target: Target::Branch("main".into()),
            profile: "quick".into(),
            suite: None,
            base_branch: "main".into(),
        };
        let last = Utc.with_ymd_and_hms(2025, 1, 1, 3, 0, 0).unwrap();
        // Down for three nights: one fire (the newest), three slots missed.
        let now = Utc.with_ymd_and_hms(2025, 1, 4, 12, 0, 0).unwrap();
        let (f, n) = due_fire(&job, Tz::Utc, last, now).unwrap();
        assert_eq!(f, Utc.with_ymd_and_hms(2025, 1, 4, 3, 0, 0).unwrap());
        assert_eq!(n, 3);
        // Not yet time.
        assert!(due_fire(&job, Tz::Utc, f, now).is_none());
        assert_eq!(
            next_fire(&job, Tz::Utc, f),
            Some(Utc.with_ymd_and_hms(2025, 1, 5, 3, 0, 0).unwrap())
        );
    }
}
