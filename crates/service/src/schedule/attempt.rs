//! One attempt at one commit for one job, in named steps: worktree → build → bench → dashboard → notify → post.
//! A step that fails ends the attempt with its outcome and a one-line reason; the worktree is always removed. The
//! bench's result is read from its `BenchDocument` (the bench command's stdout), never from its log; the store run a
//! bench began is found in the store when there is no document (a crash, a timeout, a stop).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use saeperf_bench::BenchDocument;
use saeperf_store::{Store, StoreError};

use super::config::Job;
use super::job;
use super::sandbox;
use super::scheduler::{ChildEnd, Scheduler};
use super::state::{Attempt, Outcome};
use crate::notify;

/// How a step that ends the attempt ends it.
pub(super) type Ended = (Outcome, String);

/// What one attempt works with: the job, the commit, where its files go, and what its commands see.
pub(super) struct AttemptCtx<'a> {
    pub job: &'a Job,
    pub commit: &'a str,
    pub branch: &'a str,
    /// The branch the merge-base baseline is taken from (`origin/main`, a pull request's base).
    pub base_branch: &'a str,
    pub worktree: PathBuf,
    /// The attempt's log (every step's stderr, and the scheduler's own notes).
    pub log: PathBuf,
    /// Where the bench command's stdout (its document) goes.
    pub out: PathBuf,
    /// The placeholders of the command templates.
    pub vars: Vec<(&'static str, String)>,
    /// Variables set for every child.
    pub env: Vec<(&'static str, OsString)>,
    /// Variables removed for the commit's own code (the secrets).
    pub unset: Vec<String>,
    /// For a pull request: how its own code (build, bench) runs instead (see [`sandbox`]).
    pub untrusted: Option<Untrusted>,
}

/// How a pull request's own commands run: their placeholders (`{db}` and `{target_dir}` in the untrusted area),
/// their variables, and the namespace wrapper.
pub(super) struct Untrusted {
    pub vars: Vec<(&'static str, String)>,
    pub env: Vec<(&'static str, OsString)>,
    pub area: sandbox::Area,
}

impl AttemptCtx<'_> {
    /// Append a line of the scheduler's own to the attempt's log.
    pub fn note(&self, msg: &str) {
        job::append_line(
            &self.log,
            &format!("[saeperf schedule {}] {msg}", Utc::now().to_rfc3339()),
        );
    }

    /// Start `cmd` in the worktree without the secrets, stdout to `stdout`, stderr to the log.
    fn spawn(&self, cmd: &str, stdout: &std::path::Path) -> anyhow::Result<std::process::Child> {
        let unset: Vec<&str> = self.unset.iter().map(String::as_str).collect();
        job::spawn(cmd, &self.worktree, &unset, &self.env, stdout, &self.log)
    }

    /// Start one of the commit's own commands (`template`: build or bench) without the secrets; for a pull request
    /// with the untrusted area's placeholders and variables, inside the sandbox. Returns what it runs, too.
    fn spawn_code(
        &self,
        cfg: &super::config::Config,
        template: &str,
        stdout: &std::path::Path,
    ) -> (String, anyhow::Result<std::process::Child>) {
        let unset: Vec<&str> = self.unset.iter().map(String::as_str).collect();
        match &self.untrusted {
            None => {
                let cmd = job::expand(template, &self.vars);
                let child = job::spawn(&cmd, &self.worktree, &unset, &self.env, stdout, &self.log);
                (cmd, child)
            }
            Some(u) => {
                let cmd = job::expand(template, &u.vars);
                let wrapped = sandbox::wrap(cfg, &cmd);
                let child = job::spawn(&wrapped, &self.worktree, &unset, &u.env, stdout, &self.log);
                (
                    format!("{cmd} (a pull request's code: in the sandbox)"),
                    child,
                )
            }
        }
    }
}

/// What the bench step learned.
struct Benched {
    outcome: Outcome,
    detail: String,
    doc: BenchDocument,
}

impl Scheduler {
    /// Run an attempt at `commit` for `j` (or, with `post_only`, post that stored run) and record its outcome.
    pub(super) fn attempt(
        &mut self,
        j: &Job,
        commit: &str,
        branch: &str,
        base_branch: &str,
        pr: Option<u64>,
        post_only: Option<String>,
    ) {
        let log = job::log_path(&self.cfg.state_dir.join("logs"), &j.name, commit);
        let mut a = Attempt::start(&j.name, commit, branch, pr, post_only.clone(), log.clone());
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
        let ctx = self.context(j, commit, branch, base_branch, pr, log);
        self.repo.remove_worktree(&ctx.worktree);
        let (outcome, detail) = self.steps(&ctx, &mut a, post_only.is_some());
        self.repo.remove_worktree(&ctx.worktree);
        self.finish(a, outcome, detail);
    }

    fn context<'a>(
        &self,
        j: &'a Job,
        commit: &'a str,
        branch: &'a str,
        base_branch: &'a str,
        pr: Option<u64>,
        log: PathBuf,
    ) -> AttemptCtx<'a> {
        let wt = self.worktree(&j.name);
        let vars = vec![
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
                pr.map(|n| format!("--pr {n}")).unwrap_or_default(),
            ),
        ];
        AttemptCtx {
            job: j,
            commit,
            branch,
            base_branch,
            out: log.with_extension("json"),
            log,
            worktree: wt,
            env: vec![(
                "CARGO_TARGET_DIR",
                self.cfg.target_dir.clone().into_os_string(),
            )],
            // The commit's own code (build scripts, the bench) never sees the GitHub token: pull requests may come
            // from forks. Only `report post`, this binary, gets it.
            unset: self.secret_vars(),
            untrusted: pr.map(|_| {
                let area = sandbox::Area::new(&self.cfg);
                let mut vars = vars.clone();
                for (k, v) in vars.iter_mut() {
                    match *k {
                        "db" => *v = area.store().display().to_string(),
                        "target_dir" => *v = area.target().display().to_string(),
                        "dashboard_dir" => v.clear(),
                        _ => {}
                    }
                }
                Untrusted {
                    vars,
                    env: area.env(),
                    area,
                }
            }),
            vars,
        }
    }

    /// The steps, in order; the first that ends the attempt decides its outcome.
    fn steps(&mut self, ctx: &AttemptCtx, a: &mut Attempt, post_only: bool) -> Ended {
        ctx.note(&format!(
            "job {} commit {} branch {}",
            ctx.job.name, ctx.commit, ctx.branch
        ));
        if let Err(e) = self.repo.add_worktree(&ctx.worktree, ctx.commit, false) {
            ctx.note(&format!("{e:#}"));
            return (Outcome::BuildFailed, format!("worktree: {e:#}"));
        }
        if post_only {
            return match a.run_id.clone() {
                Some(run) => self.post(ctx, &run, a),
                None => (Outcome::GithubFailed, "no run to post".into()),
            };
        }
        if let Err(end) = self.build(ctx) {
            return end;
        }
        let benched = match self.bench(ctx, a) {
            Ok(b) => b,
            Err(end) => return end,
        };
        self.dashboard(ctx);
        // (A pull request's regressions are reported on the pull request; its own document is not trusted.)
        if benched.outcome == Outcome::Regression && ctx.untrusted.is_none() {
            self.notify(ctx, a, &benched.doc);
        }
        // The pull request's comment and commit status.
        if let (Some(_), Some(run)) = (a.pr, a.run_id.clone()) {
            let (posted, said) = self.post(ctx, &run, a);
            return match posted {
                Outcome::GithubFailed | Outcome::Interrupted if ctx.untrusted.is_some() => (
                    posted,
                    format!(
                        "benchmarked (run {run} stored; its verdict comes with the post); {said}"
                    ),
                ),
                Outcome::GithubFailed | Outcome::Interrupted => (
                    posted,
                    format!(
                        "benchmarked ({}: {}); {said}",
                        benched.outcome.as_str(),
                        benched.detail
                    ),
                ),
                // A pull request's bench had no baseline in its throw-away store: the verdict is the post's,
                // computed here from the shared store.
                _ if ctx.untrusted.is_some() => (posted, said),
                _ => (benched.outcome, format!("{}; {said}", benched.detail)),
            };
        }
        (benched.outcome, benched.detail)
    }

    /// Build: the configured build command in the worktree.
    fn build(&mut self, ctx: &AttemptCtx) -> Result<(), Ended> {
        if let Some(u) = &ctx.untrusted {
            u.area
                .reset()
                .map_err(|e| (Outcome::BuildFailed, format!("the untrusted area: {e:#}")))?;
        }
        let (cmd, child) = ctx.spawn_code(&self.cfg, &self.cfg.commands.build, &ctx.log);
        ctx.note(&format!("build: {cmd}"));
        let mut child = child.map_err(|e| (Outcome::BuildFailed, format!("{e:#}")))?;
        match self.wait(
            &mut child,
            Duration::from_secs(self.cfg.commands.build_timeout_secs),
        ) {
            ChildEnd::Exited(st) if st.success() => Ok(()),
            ChildEnd::Exited(st) => {
                ctx.note(&format!("build failed: {st}"));
                Err((
                    Outcome::BuildFailed,
                    format!("build exited {st} (see the log)"),
                ))
            }
            ChildEnd::TimedOut => Err((Outcome::BuildFailed, "build timed out".into())),
            ChildEnd::Stopped => Err((Outcome::Interrupted, "stopped during the build".into())),
        }
    }

    /// Bench: the configured bench command; its stdout must be a bench document.
    fn bench(&mut self, ctx: &AttemptCtx, a: &mut Attempt) -> Result<Benched, Ended> {
        let _ = std::fs::remove_file(&ctx.out);
        let (cmd, child) = ctx.spawn_code(&self.cfg, &self.cfg.commands.bench, &ctx.out);
        ctx.note(&format!("bench: {cmd}"));
        let mut child = child.map_err(|e| (Outcome::BenchCrashed, format!("{e:#}")))?;
        let end = self.wait(
            &mut child,
            Duration::from_secs(self.cfg.commands.bench_timeout_secs),
        );
        let doc = std::fs::read_to_string(&ctx.out)
            .map_err(|e| format!("no output ({e})"))
            .and_then(|t| BenchDocument::parse(&t).map_err(|e| e.to_string()));
        // The store run: the document's, else the run this bench began (the child is gone; the store is free).
        a.run_id = match (&doc, &ctx.untrusted) {
            (Ok(d), _) => Some(d.run.meta.id.clone()),
            (Err(_), None) => self.run_begun_since(ctx.commit, a.started_at),
            // A pull request's bench wrote only its throw-away store.
            (Err(_), Some(_)) => None,
        };
        let code = match end {
            ChildEnd::Exited(st) => st.code(),
            ChildEnd::TimedOut => {
                ctx.note("bench timed out and was killed");
                return Err((
                    Outcome::BenchCrashed,
                    "bench timed out; its store run stays incomplete".into(),
                ));
            }
            ChildEnd::Stopped => {
                ctx.note("stopped: bench killed");
                return Err((
                    Outcome::Interrupted,
                    "stopped during the bench; its store run stays incomplete (never a baseline)"
                        .into(),
                ));
            }
        };
        let incomplete = if a.run_id.is_some() {
            "; its store run stays incomplete"
        } else {
            ""
        };
        let doc = match (code, doc) {
            (Some(0 | 2 | 3), Ok(d)) => d,
            (Some(0 | 2 | 3), Err(why)) => {
                ctx.note(&format!(
                    "the bench's output is not a bench document: {why}"
                ));
                return Err((
                    Outcome::BenchCrashed,
                    format!("the bench printed no result: {why}"),
                ));
            }
            (c, _) => {
                ctx.note(&format!("bench exited with {c:?}"));
                return Err((
                    Outcome::BenchCrashed,
                    format!(
                        "bench exited {} (see the log){incomplete}",
                        c.map(|c| c.to_string())
                            .unwrap_or_else(|| "on a signal".into()),
                    ),
                ));
            }
        };
        if let Some(u) = &ctx.untrusted {
            let r = self.ingest_untrusted(ctx, a, &doc);
            u.area.clear();
            if let Err(why) = r {
                a.run_id = None;
                ctx.note(&format!("the pull request's run was refused: {why}"));
                return Err((
                    Outcome::BenchCrashed,
                    format!("the pull request's run was refused: {why}"),
                ));
            }
        }
        let (outcome, detail) = match code {
            Some(2) => (
                Outcome::Regression,
                doc.regressions()
                    .map(|r| format!("{} {}", r.bench, r.metric))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Some(3) => (Outcome::BenchmarkFailed, doc.failed_benches().join(", ")),
            _ => (
                Outcome::Ok,
                doc.comparison
                    .as_ref()
                    .map(|c| format!("overall: {}", c.overall.as_str()))
                    .unwrap_or_else(|| "no baseline yet".into()),
            ),
        };
        Ok(Benched {
            outcome,
            detail,
            doc,
        })
    }

    /// The newest store run of `commit` on this machine begun at or after `since` (the run a bench began). The
    /// bench's process group has just exited or been killed, and its lock on the store goes with its last process:
    /// wait for that a few seconds, even while stopping.
    fn run_begun_since(&self, commit: &str, since: chrono::DateTime<Utc>) -> Option<String> {
        let t = std::time::Instant::now();
        let store = loop {
            match Store::open(&self.cfg.store) {
                Ok(s) => break s,
                Err(StoreError::InUse { .. }) if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    tracing::warn!("cannot open the store to find the bench's run: {e}");
                    return None;
                }
            }
        };
        job::run_begun_since(&store, commit, &self.fingerprint_id, since)
            .map_err(|e| tracing::warn!("cannot list the store's runs: {e:#}"))
            .ok()
            .flatten()
    }

    /// Dashboard: re-rendered from the store (free again: the bench has exited). Its failure is logged only.
    fn dashboard(&mut self, ctx: &AttemptCtx) {
        let Some(d) = self.cfg.dashboard_dir.clone() else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(&d) {
            tracing::warn!("cannot create {}: {e}", d.display());
        }
        let cmd = job::expand(&self.cfg.commands.dashboard, &ctx.vars);
        ctx.note(&format!("dashboard: {cmd}"));
        match ctx.spawn(&cmd, &ctx.log) {
            Ok(mut c) => match self.wait(&mut c, Duration::from_secs(600)) {
                ChildEnd::Exited(st) if st.success() => {}
                _ => tracing::warn!(
                    job = ctx.job.name,
                    "dashboard rendering failed (see {})",
                    ctx.log.display()
                ),
            },
            Err(e) => tracing::warn!("dashboard: {e:#}"),
        }
    }

    /// Notify: the configured webhooks hear of a regression; each delivery is noted in the log, never fatal.
    fn notify(&self, ctx: &AttemptCtx, a: &Attempt, doc: &BenchDocument) {
        if self.cfg.notify.webhooks.is_empty() {
            return;
        }
        let msg = notify::Message {
            verdict: "regression".into(),
            job: ctx.job.name.clone(),
            commit: ctx.commit.to_string(),
            branch: ctx.branch.to_string(),
            run_id: a.run_id.clone(),
            base_run_id: doc.comparison.as_ref().map(|c| c.base.id.clone()),
            regressions: doc
                .regressions()
                .map(|r| notify::Regression {
                    bench: r.bench.clone(),
                    metric: r.metric.clone(),
                    change: r.change,
                    detail: r.detail.clone(),
                })
                .collect(),
            link: self.link(ctx.commit),
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
            ctx.note(&format!("notify {url}: {r:?}"));
        }
    }

    /// Environment variables that hold secrets: the configured token variable and GITHUB_TOKEN.
    pub(super) fn secret_vars(&self) -> Vec<String> {
        let mut v = vec!["GITHUB_TOKEN".to_string()];
        if self.cfg.github_api.token_env != "GITHUB_TOKEN" {
            v.push(self.cfg.github_api.token_env.clone());
        }
        v
    }

    /// The worktree directory of a job (a pull-request job's in the untrusted area: its code runs there).
    pub(super) fn worktree(&self, job: &str) -> PathBuf {
        let prs = self.cfg.jobs.iter().any(|j| {
            j.name == job && matches!(j.target, super::config::Target::PullRequests { .. })
        });
        if prs {
            sandbox::Area::new(&self.cfg).worktrees().join(job)
        } else {
            self.cfg.state_dir.join("worktrees").join(job)
        }
    }

    /// Check the run a pull request's bench handed back and add it to the shared store: it must be complete, of the
    /// approved commit, of this pull request and branch, and of this machine. Its code never opened the store.
    fn ingest_untrusted(
        &self,
        ctx: &AttemptCtx,
        a: &Attempt,
        doc: &BenchDocument,
    ) -> Result<(), String> {
        let m = &doc.run.meta;
        if m.state != saeperf_store::RunState::Complete {
            return Err(format!("run {} is not complete", m.id));
        }
        if m.commit.as_deref() != Some(ctx.commit) {
            return Err(format!(
                "run {} is of commit {}, not the approved {}",
                m.id,
                m.commit.as_deref().unwrap_or("none"),
                ctx.commit
            ));
        }
        if m.pr != a.pr || m.branch.as_deref() != Some(ctx.branch) {
            return Err(format!(
                "run {} claims pull request {:?} on branch {:?}, not #{} on {}",
                m.id,
                m.pr,
                m.branch,
                a.pr.unwrap_or(0),
                ctx.branch
            ));
        }
        if m.fingerprint_id != self.fingerprint_id {
            return Err(format!(
                "run {} claims machine {}, not this one ({})",
                m.id, m.fingerprint_id, self.fingerprint_id
            ));
        }
        if m.is_calibration() {
            return Err(format!("run {} is a calibration run", m.id));
        }
        let store = Store::open(&self.cfg.store).map_err(|e| e.to_string())?;
        store.ingest_run(&doc.run).map_err(|e| e.to_string())?;
        ctx.note(&format!(
            "ingested the pull request's run {} into the shared store",
            m.id
        ));
        Ok(())
    }
}
