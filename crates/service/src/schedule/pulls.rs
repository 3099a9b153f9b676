//! Pull-request jobs: list the open pull requests carrying the job's label, fetch each new head as
//! `refs/pull/N/head`, benchmark it like a branch commit against its base branch's merge base, and post the job's
//! sticky comment and commit status through `runner report post` (this binary, as a child), reading what it did from
//! its `PostDocument`. A head that cannot be fetched, built or benched gets an `error` status instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use saeperf_compare::Verdict;

use super::attempt::AttemptCtx;
use super::config::Job;
use super::job;
use super::scheduler::{ChildEnd, Plan, Scheduler};
use super::state::{Attempt, Outcome};
use crate::github::{GitHub, PullRequest, Repo, RetryPolicy, StatusState};
use crate::post::PostDocument;

impl Scheduler {
    /// Run one GitHub call through the client (octocrab, the configured API URL, token and retry policy) on a
    /// runtime of its own; a stop request cuts retries short.
    pub(super) fn with_github<T>(
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
    pub(super) fn list_pulls(&self, label: &str) -> Result<Vec<PullRequest>> {
        let label = label.to_string();
        self.with_github(move |gh, repo| {
            Box::pin(async move { gh.labelled_pulls(repo, &label).await })
        })
    }

    /// A pull request's head that failed to build or whose bench crashed gets an `error` commit status (there is no
    /// run, so no comment); a failure to set it is logged only.
    pub(super) fn report_failure(&self, job: &str, sha: &str, outcome: Outcome) {
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
    pub(super) fn run_pr_job(&mut self, j: &Job, label: &str) {
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
        match self.repo.prune_pull_refs(&open) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                job = j.name,
                n,
                "removed the refs of pull requests no longer listed"
            ),
            Err(e) => tracing::warn!(job = j.name, "pruning pull-request refs: {e:#}"),
        }
        // The base branches (for the merge base).
        let remote = self.fetch_remote(j);
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
            if let Err(e) = self.repo.fetch_pull(remote.as_deref(), p.number, &commit) {
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

    /// `status_context`).
    pub(super) fn status_context(&self, job: &str) -> String {
        format!("{}/{job}", self.cfg.github_api.status_context)
    }

    /// `runner report post --json` for a stored run of a pull request's head: the job's sticky comment and commit
    /// status (both named by [`Scheduler::status_context`]). Runs in the commit's worktree (the merge base and the
    /// suite's rules are the commit's), as a child of this binary in its own process group, so a stop kills it and
    /// fires keep being queued during GitHub's retries. Returns the verdict its [`PostDocument`] reports, or
    /// `GithubFailed` and why.
    pub(super) fn post(&mut self, ctx: &AttemptCtx, run: &str, a: &Attempt) -> (Outcome, String) {
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
        if !ctx.worktree.is_dir() {
            if let Err(e) = self.repo.add_worktree(&ctx.worktree, ctx.commit, false) {
                return (Outcome::GithubFailed, format!("posting: worktree: {e:#}"));
            }
        }
        let mut args: Vec<String> = vec![
            self.runner_exe.display().to_string(),
            "--db".into(),
            self.cfg.store.display().to_string(),
            "report".into(),
            "post".into(),
            "--json".into(),
            "--repo".into(),
            repo.clone(),
            "--pr".into(),
            pr.to_string(),
            "--head".into(),
            run.to_string(),
            "--base-branch".into(),
            ctx.base_branch.to_string(),
            "--verify-head".into(),
            ctx.commit.to_string(),
            "--key".into(),
            self.status_context(&ctx.job.name),
            "--api-url".into(),
            api.api_url.clone(),
            "--status-context".into(),
            self.status_context(&ctx.job.name),
            "--attempts".into(),
            api.attempts.to_string(),
            "--retry-delay-ms".into(),
            api.retry_delay_ms.to_string(),
        ];
        if let Some(u) = &self.cfg.notify.dashboard_url {
            args.extend(["--dashboard-url".into(), u.clone()]);
        }
        if let Some(s) = &ctx.job.suite {
            args.extend(["--suite".into(), s.clone()]);
        }
        let cmd = args
            .iter()
            .map(|x| job::sh_quote(x))
            .collect::<Vec<_>>()
            .join(" ");
        let out = ctx.log.with_extension("post");
        let _ = std::fs::remove_file(&out);
        ctx.note(&format!("post: {cmd}"));
        let mut env = ctx.env.clone();
        env.push(("GITHUB_TOKEN", token.into()));
        let mut child = match job::spawn(&cmd, &ctx.worktree, &[], &env, &out, &ctx.log) {
            Ok(c) => c,
            Err(e) => return (Outcome::GithubFailed, format!("posting: {e:#}")),
        };
        let end = self.wait(&mut child, Duration::from_secs(900));
        let said = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        match end {
            ChildEnd::Exited(st) if st.success() => match PostDocument::parse(&said) {
                Ok(doc) => {
                    ctx.note(&format!("posted: {}", doc.line()));
                    let outcome = match doc.verdict {
                        Verdict::Regression => Outcome::Regression,
                        Verdict::Failed => Outcome::BenchmarkFailed,
                        _ => Outcome::Ok,
                    };
                    tracing::info!(
                        job = ctx.job.name,
                        pr,
                        commit = ctx.commit,
                        "posted: {}",
                        doc.line()
                    );
                    (
                        outcome,
                        format!("posted to #{pr} ({})", doc.verdict.as_str()),
                    )
                }
                Err(e) => {
                    ctx.note(&format!("the post's output is not a post document: {e}"));
                    (
                        Outcome::GithubFailed,
                        format!("posting to #{pr}: the post printed no result: {e}"),
                    )
                }
            },
            ChildEnd::Exited(st) => {
                let why = std::fs::read_to_string(&ctx.log)
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
}
