//! Pull-request jobs: list the open pull requests carrying the job's label, and for each new head that a maintainer
//! approved, fetch it as `refs/pull/N/head`, benchmark it like a branch commit against its base branch's merge base
//! (its code in the sandbox, [`super::sandbox`]), and post the job's sticky comment and commit status through
//! `runner report post` (this binary, as a child), reading what it did from its `PostDocument`. A head that cannot
//! be fetched, built or benched gets an `error` status instead.
//!
//! Approval is per head SHA (docs/github.md, "Fork safety"): a head in the repository itself was pushed by someone
//! with write access; any other head needs, after this scheduler first saw it, a `labeled` event of the job's label
//! or a comment `/saeperf bench` by a user with write, maintain or admin permission (asked through the API), or a
//! comment `/saeperf bench SHA` (7 hex digits or more) that names it. A new push is a new head: it waits for a new
//! approval, with a `pending` commit status saying so. The comment says which head was approved, and by whom.
//!
//! Triage: on a head whose run was reported as a regression, a comment `/saeperf ack BENCH METRIC [reason]` by a
//! user with write permission records an ack of that row in the store (docs/verdicts.md, "Triage"), and the
//! comment and status are posted again: the row reads acknowledged and the status is success.

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
use crate::github::{
    GitHub, IssueComment, LabelEvent, PullRequest, Repo, RetryPolicy, StatusState,
};
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
        let repo = self.github_repo()?;
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
                    ..RetryPolicy::default()
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

    /// The configured repository (`repository.github`).
    fn github_repo(&self) -> Result<Repo> {
        Ok(self
            .cfg
            .github
            .as_deref()
            .context("repository.github is not set")?
            .parse()?)
    }

    /// Every open pull request.
    pub(super) fn list_pulls(&self) -> Result<Vec<PullRequest>> {
        self.with_github(move |gh, repo| Box::pin(async move { gh.open_pulls(repo).await }))
    }

    /// Remember when each open pull request's head was first seen (a new push is a new head); forget closed ones.
    fn see_heads(&mut self, pulls: &[PullRequest]) {
        let now = chrono::Utc::now();
        self.state
            .pr_heads
            .retain(|n, _| pulls.iter().any(|p| p.number == *n));
        for p in pulls {
            let seen = self.state.pr_heads.get(&p.number);
            if seen.is_none_or(|h| h.sha != p.head_sha) {
                self.state.pr_heads.insert(
                    p.number,
                    super::state::SeenHead {
                        sha: p.head_sha.clone(),
                        first_seen: now,
                    },
                );
            }
        }
        self.save();
    }

    /// Who approved this head of `p`, and how (None: nobody yet). See the module doc.
    fn approval(&mut self, j: &Job, p: &PullRequest, label: &str) -> Result<Option<String>> {
        let sha7 = &p.head_sha[..p.head_sha.len().min(7)];
        let repo = self.github_repo()?;
        if p.from_repo_itself(&repo) {
            return Ok(Some(format!(
                "Benchmarked {sha7}: a branch of {}/{} itself (pushing there needs write access).",
                repo.owner, repo.name
            )));
        }
        // GitHub's times have whole seconds: an approval in the second the head was first seen counts.
        let seen = self
            .state
            .pr_heads
            .get(&p.number)
            .filter(|h| h.sha == p.head_sha)
            .map(|h| h.first_seen)
            .unwrap_or_else(chrono::Utc::now);
        let seen = seen - chrono::Duration::nanoseconds(seen.timestamp_subsec_nanos() as i64);
        let bot = match self.bot_login.clone() {
            Some(b) => b,
            None => {
                let b = self.with_github(|gh, _| Box::pin(async move { gh.login().await }))?;
                self.bot_login = Some(b.clone());
                b
            }
        };
        let n = p.number;
        let (events, comments): (Vec<LabelEvent>, Vec<IssueComment>) =
            self.with_github(move |gh, repo| {
                Box::pin(async move {
                    Ok((gh.label_events(repo, n).await?, gh.comments(repo, n).await?))
                })
            })?;
        // Candidates, newest first: (who, how, when).
        let mut cands: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = Vec::new();
        for e in events {
            if e.label.eq_ignore_ascii_case(label) && e.at >= seen {
                cands.push((e.actor, format!("label {label}"), e.at));
            }
        }
        for c in &comments {
            if c.author().eq_ignore_ascii_case(&bot) {
                continue;
            }
            let Some(at) = c.created_at else { continue };
            let Some(rest) = c
                .body
                .as_deref()
                .and_then(|b| b.lines().next())
                .and_then(|l| l.trim().strip_prefix("/saeperf bench"))
            else {
                continue;
            };
            let arg = rest.split_whitespace().next();
            let ok = match arg {
                None => at >= seen,
                Some(a) => {
                    a.len() >= 7
                        && a.chars().all(|ch| ch.is_ascii_hexdigit())
                        && p.head_sha
                            .to_ascii_lowercase()
                            .starts_with(&a.to_ascii_lowercase())
                }
            };
            if ok {
                let how = match arg {
                    Some(a) => format!("comment /saeperf bench {a}"),
                    None => "comment /saeperf bench".into(),
                };
                cands.push((c.author().to_string(), how, at));
            }
        }
        cands.sort_by_key(|c| std::cmp::Reverse(c.2));
        let mut asked = std::collections::BTreeMap::<String, bool>::new();
        for (who, how, at) in cands {
            let can = match asked.get(&who) {
                Some(c) => *c,
                None => {
                    let w = who.clone();
                    let c = self.with_github(move |gh, repo| {
                        Box::pin(async move { gh.can_write(repo, &w).await })
                    })?;
                    asked.insert(who.clone(), c);
                    c
                }
            };
            if can {
                tracing::info!(job = j.name, pr = n, head = sha7, who, how, "approved");
                return Ok(Some(format!(
                    "Benchmarked {sha7}, approved by @{who} ({how}, {}).",
                    at.format("%Y-%m-%d %H:%M UTC")
                )));
            }
            tracing::info!(job = j.name, pr = n, who, "ignored: no write permission");
        }
        Ok(None)
    }

    /// The run of `commit` whose latest report on #`pr` was a regression.
    fn reported_regression(&self, j: &Job, commit: &str, pr: u64) -> Option<String> {
        let a = self.state.history.iter().rev().find(|a| {
            a.job == j.name && a.commit == commit && a.pr == Some(pr) && a.run_id.is_some()
        })?;
        (a.outcome == Outcome::Regression)
            .then(|| a.run_id.clone())
            .flatten()
    }

    /// Record the new `/saeperf ack BENCH METRIC [reason]` comments of writers on `p` as acks of `run`; returns how
    /// many were recorded. Each comment is handled once (a refused one is logged with its reason).
    fn apply_acks(&mut self, p: &PullRequest, run: &str) -> Result<usize> {
        let n = p.number;
        let comments =
            self.with_github(move |gh, repo| Box::pin(async move { gh.comments(repo, n).await }))?;
        let bot = self.bot_login.clone().unwrap_or_default();
        let mut recorded = 0;
        for c in comments {
            if self.state.handled_comments.contains(&c.id) || c.author().eq_ignore_ascii_case(&bot)
            {
                continue;
            }
            let Some(args) = c
                .body
                .as_deref()
                .and_then(|b| b.lines().next())
                .and_then(|l| l.trim().strip_prefix("/saeperf ack"))
                .map(str::to_string)
            else {
                continue;
            };
            self.state.handled_comments.push(c.id);
            let who = c.author().to_string();
            let w = who.clone();
            let can = self.with_github(move |gh, repo| {
                Box::pin(async move { gh.can_write(repo, &w).await })
            })?;
            let mut words = args.split_whitespace();
            let (bench, metric) = (words.next(), words.next());
            let reason = words.collect::<Vec<_>>().join(" ");
            let why = match (can, bench, metric) {
                (false, _, _) => Some(format!("{who} has no write permission")),
                (true, Some(b), Some(m)) => self.record_ack(run, b, m, &who, &reason, &c).err(),
                _ => Some("usage: /saeperf ack BENCH METRIC [reason]".into()),
            };
            match why {
                None => recorded += 1,
                Some(w) => tracing::warn!(pr = n, comment = c.id, "ack ignored: {w}"),
            }
        }
        let len = self.state.handled_comments.len();
        if len > 10_000 {
            self.state.handled_comments.drain(..len - 10_000);
        }
        self.save();
        Ok(recorded)
    }

    fn record_ack(
        &self,
        run: &str,
        bench: &str,
        metric: &str,
        who: &str,
        reason: &str,
        c: &IssueComment,
    ) -> std::result::Result<(), String> {
        let store = saeperf_store::Store::open(&self.cfg.store).map_err(|e| e.to_string())?;
        let r = store.load_run(run).map_err(|e| e.to_string())?;
        let has = r
            .results
            .iter()
            .any(|x| x.name == bench && (metric == "time" || x.metrics.contains_key(metric)));
        if !has {
            return Err(format!("run {run} has no {bench} {metric}"));
        }
        store
            .record_triage(&saeperf_store::Triage {
                run: run.to_string(),
                bench: bench.to_string(),
                metric: metric.to_string(),
                action: saeperf_store::TriageAction::Ack,
                by: who.to_string(),
                reason: if reason.is_empty() {
                    "acknowledged on the pull request".into()
                } else {
                    reason.to_string()
                },
                at: c.created_at.unwrap_or_else(chrono::Utc::now),
                source: format!("comment {}", c.html_url.as_deref().unwrap_or("")),
            })
            .map_err(|e| e.to_string())
    }

    /// Tell a head (once) with a `pending` status that it waits for a maintainer's approval.
    fn await_approval(&mut self, j: &Job, p: &PullRequest) {
        let key = format!("{}#{}@{}", j.name, p.number, p.head_sha);
        if self.state.awaiting.contains(&key) {
            return;
        }
        let sha7 = p.head_sha[..p.head_sha.len().min(7)].to_string();
        let context = self.status_context(&j.name);
        let description =
            format!("waiting for a maintainer's approval of {sha7}: comment /saeperf bench {sha7}");
        let sha = p.head_sha.clone();
        let r = self.with_github(move |gh, repo| {
            Box::pin(async move {
                gh.set_status(
                    repo,
                    &sha,
                    StatusState::Pending,
                    &context,
                    &description,
                    None,
                )
                .await
            })
        });
        match r {
            Ok(()) => {
                self.state.awaiting.push(key);
                let n = self.state.awaiting.len();
                if n > 1000 {
                    self.state.awaiting.drain(..n - 1000);
                }
                self.save();
            }
            Err(e) => tracing::warn!("cannot set the pending status: {e:#}"),
        }
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
        let pulls = match self.list_pulls() {
            Ok(all) => {
                self.see_heads(&all);
                all.into_iter()
                    .filter(|p| p.has_label(label))
                    .collect::<Vec<_>>()
            }
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
            // A head branch named like the base or main branch would join that branch's history: it is named
            // by its pull request instead.
            let branch =
                if p.head_ref.is_empty() || p.head_ref == p.base_ref || p.head_ref == j.base_branch
                {
                    format!("pull/{}", p.number)
                } else {
                    p.head_ref.clone()
                };
            let plan = self.plan(j, &commit, Some(p.number));
            if matches!(plan, Plan::Skip) {
                if let Some(run) = self.reported_regression(j, &commit, p.number) {
                    match self.apply_acks(&p, &run) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(
                                job = j.name,
                                pr = p.number,
                                n,
                                "acknowledged: posting again"
                            );
                            self.approval_note = None;
                            self.attempt(
                                j,
                                &commit,
                                &branch,
                                &base_branch_of(&remote, &p),
                                Some(p.number),
                                Some(run),
                            );
                        }
                        Err(e) => {
                            tracing::warn!(job = j.name, pr = p.number, "reading acks: {e:#}")
                        }
                    }
                }
                continue;
            }
            match self.approval(j, &p, label) {
                Ok(Some(note)) => self.approval_note = Some(note),
                Ok(None) => {
                    self.await_approval(j, &p);
                    continue;
                }
                Err(e) => {
                    if !self.stopping() {
                        self.record(
                            j,
                            &commit,
                            &branch,
                            Some(p.number),
                            Outcome::GithubFailed,
                            format!("pull request #{}: checking its approval: {e:#}", p.number),
                        );
                    }
                    continue;
                }
            }
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
            let base_branch = base_branch_of(&remote, &p);
            match plan {
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
        if let Some(b) = &self.bot_login {
            args.extend(["--bot-login".into(), b.clone()]);
        }
        args.extend([
            "--comment-policy".into(),
            api.comment_policy.as_str().into(),
        ]);
        if let Some(n) = self.approval_note.take() {
            args.extend(["--note".into(), n]);
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
                    let found = if doc.regressions.is_empty() {
                        String::new()
                    } else {
                        format!("{}; ", doc.regressions.join(", "))
                    };
                    (
                        outcome,
                        format!("{found}posted to #{pr} ({})", doc.verdict.as_str()),
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

/// The branch a pull request's merge base is taken from (the remote's copy when the clone fetches one).
fn base_branch_of(remote: &Option<String>, p: &PullRequest) -> String {
    match remote {
        Some(r) => format!("{r}/{}", p.base_ref),
        None => p.base_ref.clone(),
    }
}
