//! `runner report post`: the sticky pull-request comment and the commit status, and the [`PostDocument`] that says
//! what was posted (the scheduler reads it instead of the command's text).
//!
//! In two steps, so that the store is never open while GitHub is slow or failing: [`prepare`] reads the store and
//! renders the comment (the caller then closes the store), [`send`] talks to GitHub. Nothing is ever written to the
//! store: a failed post loses nothing and can simply run again.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use saeperf_compare::rules::Rules;
use saeperf_compare::Verdict;
use saeperf_git::Repo as GitRepo;
use saeperf_report::comment::{self, Comment, CommentRequest};
use saeperf_store::document::{Document, Header};
use saeperf_store::{RunMeta, Store};
use serde::{Deserialize, Serialize};

use crate::github::{CommentOutcome, GitHub, Repo, RetryPolicy, StatusState};

/// Where and how to post (checked values; the command line builds them from its flags).
#[derive(Debug, Clone)]
pub struct PostRequest {
    pub comment: CommentRequest,
    pub repo: Repo,
    /// The pull request (None: the one recorded with the head run).
    pub pr: Option<u64>,
    pub api_url: String,
    /// Refuse to post unless the head run and the pull request's current head are this commit.
    pub verify_head: Option<String>,
    pub status_context: String,
    /// Post the comment only, no commit status.
    pub no_status: bool,
    pub retry: RetryPolicy,
}

/// What [`prepare`] read from the store: everything [`send`] needs.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub comment: Comment,
    pub head: RunMeta,
    pub pr: u64,
}

/// Read the head run and its baseline, render the comment, and check the request against the run (the pull request
/// is known, `--verify-head` matches the run's commit). Only reads the store.
pub fn prepare(store: &Store, git: &GitRepo, rules: &Rules, req: &PostRequest) -> Result<Prepared> {
    let (comment, head) = comment::for_stored_run(store, git, rules, &req.comment)?;
    let pr = req
        .pr
        .or(head.pr)
        .with_context(|| format!("run {} records no pull request; pass --pr", head.id))?;
    if let Some(sha) = &req.verify_head {
        if head.commit.as_deref() != Some(sha.as_str()) {
            bail!(
                "run {} is of commit {}, not {sha} (--verify-head); refusing to post",
                head.id,
                head.commit.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(Prepared { comment, head, pr })
}

/// The commit status a post set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostedStatus {
    pub sha: String,
    pub state: StatusState,
    pub context: String,
    pub description: String,
    pub target_url: Option<String>,
}

/// What `runner report post --json` prints: where the comment went, the status set, and the verdict reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostDocument {
    #[serde(flatten)]
    pub header: Header,
    /// `owner/name`.
    pub repo: String,
    pub pr: u64,
    pub head_run: String,
    pub commit: Option<String>,
    pub verdict: Verdict,
    pub comment: CommentOutcome,
    /// None with `--no-status`, or when the run has no commit.
    pub status: Option<PostedStatus>,
}

impl Document for PostDocument {
    const KIND: &'static str = "post";
    const VERSION: u32 = 1;
}

impl PostDocument {
    pub fn parse(text: &str) -> Result<Self, saeperf_store::document::DocumentError> {
        saeperf_store::document::parse(text)
    }

    /// The line `runner report post` prints for people.
    pub fn line(&self) -> String {
        format!(
            "{:?} comment {} on {}#{}{} ({})",
            self.comment.action,
            self.comment.id,
            self.repo,
            self.pr,
            self.comment
                .url
                .as_deref()
                .map(|u| format!(" {u}"))
                .unwrap_or_default(),
            self.verdict.as_str()
        )
    }
}

/// The commit status state of a verdict: failure for a regression or a failed benchmark, else success.
pub fn status_state(v: Verdict) -> StatusState {
    match v {
        Verdict::Regression | Verdict::Failed => StatusState::Failure,
        _ => StatusState::Success,
    }
}

/// Post the prepared comment (create or update the sticky one) and set the commit status.
pub fn send(p: &Prepared, req: &PostRequest, token: &str) -> Result<PostDocument> {
    let marker = saeperf_report::marker(&req.comment.options.key);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let repo = &req.repo;
    let pr = p.pr;
    let (c, status) = rt.block_on(async {
        let gh = GitHub::new(&req.api_url, token, req.retry.clone())?;
        if let Some(sha) = &req.verify_head {
            let head = gh.pull_head_sha(repo, pr).await?;
            if &head != sha {
                anyhow::bail!(
                    "pull request #{pr} of {}/{} is at {head}, not {sha} (--verify-head); refusing to post",
                    repo.owner,
                    repo.name
                );
            }
        }
        let c = gh.upsert_comment(repo, pr, &p.comment.body, &marker).await?;
        let mut status = None;
        if !req.no_status {
            match p.head.commit.as_deref() {
                Some(sha) => {
                    let st = PostedStatus {
                        sha: sha.to_string(),
                        state: status_state(p.comment.verdict),
                        context: req.status_context.clone(),
                        description: p.comment.status_line.clone(),
                        target_url: req
                            .comment
                            .options
                            .dashboard_url
                            .as_deref()
                            .map(|u| {
                                format!(
                                    "{}/runs/{}.html",
                                    u.trim_end_matches('/'),
                                    saeperf_report::slug(&p.head.id)
                                )
                            })
                            .or_else(|| c.url.clone()),
                    };
                    gh.set_status(
                        repo,
                        sha,
                        st.state,
                        &st.context,
                        &st.description,
                        st.target_url.as_deref(),
                    )
                    .await?;
                    status = Some(st);
                }
                None => tracing::warn!("run {} has no commit: no commit status set", p.head.id),
            }
        }
        Ok::<_, anyhow::Error>((c, status))
    })?;
    Ok(PostDocument {
        header: Header::of::<PostDocument>(),
        repo: format!("{}/{}", repo.owner, repo.name),
        pr,
        head_run: p.head.id.clone(),
        commit: p.head.commit.clone(),
        verdict: p.comment.verdict,
        comment: c,
        status,
    })
}

/// Retries as `runner report post` configures them: `attempts` in all, the first wait `first_delay`, doubling.
pub fn retry_policy(attempts: u32, first_delay: Duration) -> RetryPolicy {
    RetryPolicy {
        attempts: attempts.max(1),
        base_delay: first_delay,
        max_delay: Duration::from_secs(120),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_documents_round_trip_and_malformed_ones_are_one_line() {
        let doc = PostDocument {
            header: Header::of::<PostDocument>(),
            repo: "octo/saeperf".into(),
            pr: 7,
            head_run: "20260101T010000-bead01".into(),
            commit: Some("b".repeat(40)),
            verdict: Verdict::Regression,
            comment: CommentOutcome {
                action: crate::github::CommentAction::Updated,
                id: 1001,
                url: Some("http://gh.test/c/1001".into()),
            },
            status: None,
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(PostDocument::parse(&text).unwrap(), doc);
        assert_eq!(
            doc.line(),
            "Updated comment 1001 on octo/saeperf#7 http://gh.test/c/1001 (regression)"
        );
        for (text, want) in [
            (
                "Created comment 1 on o/r#7 (regression)",
                "not a saeperf post document",
            ),
            (
                r#"{"document": "bench", "version": 1}"#,
                "a \"bench\" document",
            ),
            (
                r#"{"document": "post", "version": 1, "pr": 7}"#,
                "missing field",
            ),
        ] {
            let e = PostDocument::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
