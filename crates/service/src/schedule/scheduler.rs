//! The scheduler's loop: every 200 ms it checks each job's next cron fire and queues due jobs (fires coalesce), runs
//! the oldest queued job when nothing runs, waits for children while still queueing fires and watching the stop
//! flag, and writes the status document (`status.json`) and page after every change. Branch jobs are resolved here;
//! pull-request jobs in [`super::pulls`]; one attempt at one commit in [`super::attempt`].

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use saeperf_git::Repo;
use saeperf_store::{Fingerprint, Store, StoreError};

use super::config::{Config, Job, Target, Tz};
use super::job;
use super::state::{Attempt, Outcome, SchedulerLock, State};

/// How long a child gets between SIGTERM and SIGKILL.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(3);
pub(super) const POLL: Duration = Duration::from_millis(200);

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
pub(super) enum Plan {
    /// Build and bench it.
    Run,
    /// Nothing (already benchmarked, or failed for good).
    Skip,
    /// Its run is stored (this store run id) but this pull-request job has not posted it yet.
    PostOnly(String),
}

/// How a waited-for child ended.
pub(super) enum ChildEnd {
    Exited(std::process::ExitStatus),
    TimedOut,
    Stopped,
}

pub(super) struct Scheduler {
    pub(super) cfg: Config,
    pub(super) state: State,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) fingerprint_id: String,
    pub(super) runner_exe: PathBuf,
    /// The repository the jobs benchmark.
    pub(super) repo: Repo,
    /// The line the next post adds to its comment (which head was approved, by whom).
    pub(super) approval_note: Option<String>,
    /// The bot's login (configured, or the token's own once asked).
    pub(super) bot_login: Option<String>,
}

/// `runner schedule --check`: print each job's next fire; the configuration was checked when it was loaded.
pub fn check(cfg: &Config) {
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
}

/// `runner schedule`: run the service until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> Result<()> {
    for d in [
        cfg.state_dir.clone(),
        cfg.state_dir.join("logs"),
        cfg.state_dir.join("worktrees"),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock = SchedulerLock::acquire(&cfg.state_dir)?;
    let has_prs = cfg
        .jobs
        .iter()
        .any(|j| matches!(j.target, super::config::Target::PullRequests { .. }));
    if has_prs {
        if cfg.commands.sandbox == super::config::Sandbox::Namespace {
            if let Err(why) = super::sandbox::probe() {
                anyhow::bail!(
                    "{}: pull-request jobs run a pull request's code in a user and mount namespace (unshare), \
                     which cannot be made here: {why}; set commands.sandbox = \"none\" only on a throw-away machine",
                    cfg.path.display()
                );
            }
        }
        let w = super::sandbox::Area::new(&cfg).worktrees();
        std::fs::create_dir_all(&w).with_context(|| format!("creating {}", w.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let state = State::load(&cfg.state_dir)?;
    let mut s = Scheduler {
        fingerprint_id: Fingerprint::detect().id(),
        runner_exe: std::env::current_exe().context("locating the runner binary")?,
        repo: Repo::at(&cfg.repo),
        approval_note: None,
        bot_login: cfg.github_api.bot_login.clone(),
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
    Ok(())
}

impl Scheduler {
    pub(super) fn save(&self) {
        if let Err(e) = self.state.save(&self.cfg.state_dir) {
            tracing::error!("cannot save the scheduler state: {e:#}");
        }
    }

    /// Crash recovery: an attempt left running is interrupted; stale worktrees go; jobs no longer configured leave
    /// the queue.
    pub(super) fn startup(&mut self) -> Result<()> {
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
            self.repo.remove_worktree(&self.worktree(j));
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
    pub(super) fn tick(&mut self) {
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

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(super) fn run_loop(&mut self) -> Result<()> {
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
    pub(super) fn open_store(&self) -> Result<Option<Store>> {
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

    pub(super) fn run_job(&mut self, j: &Job) {
        let branch = match &j.target {
            Target::Branch(b) => b.clone(),
            Target::PullRequests { label } => {
                let label = label.clone();
                return self.run_pr_job(j, &label);
            }
        };
        let branch = &branch;
        let remote = self.fetch_remote(j);
        let commit = match self.repo.resolve_branch(remote.as_deref(), branch) {
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

    /// The clone's remote (configured, else `origin`), fetched; a failed fetch is logged and the refs already
    /// here are used.
    pub(super) fn fetch_remote(&self, j: &Job) -> Option<String> {
        let remote = self.repo.remote(self.cfg.remote.as_deref());
        if let Some(r) = &remote {
            if let Err(e) = self.repo.fetch(r) {
                tracing::warn!(
                    job = j.name,
                    "fetch failed, using the refs already here: {e:#}"
                );
            }
        }
        remote
    }

    /// Whether `commit` is benchmarked for job `j`: not when it already failed for good, nor when the store holds a
    /// complete clean run of it with the same suite, profile and machine. For pull-request jobs a stored run that this
    /// job has not yet reported successfully on pull request `pr` (its post failed, another job benchmarked the
    /// commit, or another pull request has the same head) is posted.
    pub(super) fn plan(&self, j: &Job, commit: &str, pr: Option<u64>) -> Plan {
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
        let hash = job::suite_hash_at(&self.repo, commit, j.suite.as_deref(), &j.profile);
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
    pub(super) fn record(
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
        let a = Attempt::start(&j.name, commit, branch, pr, None, log);
        self.finish(a, outcome, detail);
    }

    /// Wait for a child, queueing fires meanwhile; kill its process group on stop or timeout.
    pub(super) fn wait(&mut self, child: &mut Child, timeout: Duration) -> ChildEnd {
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

    pub(super) fn finish(&mut self, mut a: Attempt, outcome: Outcome, detail: String) {
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

    pub(super) fn link(&self, commit: &str) -> Option<String> {
        if let Some(u) = &self.cfg.notify.dashboard_url {
            return Some(u.clone());
        }
        self.cfg
            .github
            .as_ref()
            .map(|g| format!("https://github.com/{g}/commit/{commit}"))
    }

    /// `status.json` beside the dashboard, and the status page rendered from it (`pid`: None once stopping).
    pub(super) fn write_status_json(&self, pid: Option<u32>) {
        let Some(d) = &self.cfg.dashboard_dir else {
            return;
        };
        let st = super::status::status_report(&self.cfg, &self.state, pid);
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
            saeperf_report::status::render(&saeperf_report::environment(), d, repo_url.as_deref())
        {
            tracing::warn!("cannot render the status page: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn missed_fires_after_downtime_run_once() {
        let job = Job {
            name: "n".into(),
            cron: super::super::config::Cron::parse("0 0 3 * * *").unwrap(),
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
