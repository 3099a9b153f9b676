//! `runner report post`: the sticky pull-request comment and the commit status, and the [`PostDocument`] that says
//! what was posted (the scheduler reads it instead of the command's text).
//!
//! In two steps, so that the store is never open while GitHub is slow or failing: [`prepare`] reads the store and
//! renders the comment (the caller then closes the store), [`send`] talks to GitHub. Nothing is ever written to the
//! store: a failed post loses nothing and can simply run again.

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
    /// The login whose comments are the bot's (None: the token's own, `GET /user`).
    pub bot_login: Option<String>,
    /// A line added to the comment, after its headline (e.g. which head was approved by whom).
    pub note: Option<String>,
    /// When a comment is written at all.
    pub policy: CommentPolicy,
}

/// When `report post` writes the sticky comment (per repository; CodSpeed's setting). The commit status is set
/// whatever the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommentPolicy {
    /// Create the comment, or update it, on every post.
    #[default]
    Always,
    /// Create it only when there is something to see (a regression, an improvement, a failed or acknowledged
    /// benchmark); an existing comment is always updated, so it never shows a stale verdict.
    OnChange,
    /// Never comment; the commit status only.
    Never,
}

impl std::str::FromStr for CommentPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(CommentPolicy::Always),
            "on-change" => Ok(CommentPolicy::OnChange),
            "never" => Ok(CommentPolicy::Never),
            _ => Err(format!(
                "comment policy {s:?} is not always, on-change or never"
            )),
        }
    }
}

impl CommentPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CommentPolicy::Always => "always",
            CommentPolicy::OnChange => "on-change",
            CommentPolicy::Never => "never",
        }
    }
}

/// Whether a verdict is a change worth a new comment under `on-change`.
pub fn is_change(v: Verdict) -> bool {
    matches!(
        v,
        Verdict::Regression | Verdict::Improvement | Verdict::Failed | Verdict::Acknowledged
    )
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
    let (mut comment, head) = comment::for_stored_run(store, git, rules, &req.comment)?;
    if let Some(note) = req.note.as_deref().filter(|n| !n.trim().is_empty()) {
        comment.body = with_note(&comment.body, note);
    }
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

/// The comment with `note` as its own paragraph after the first one (the headline); one line, Markdown escaped
/// of nothing but newlines.
fn with_note(body: &str, note: &str) -> String {
    let note = note.replace(['\r', '\n'], " ");
    match body.find("\n\n") {
        Some(i) => format!("{}\n\n{note}{}", &body[..i], &body[i..]),
        None => format!("{body}\n\n{note}\n"),
    }
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
    /// None when the comment policy wrote none.
    pub comment: Option<CommentOutcome>,
    /// The comment policy the post followed.
    #[serde(default)]
    pub policy: CommentPolicy,
    /// None with `--no-status`, or when the run has no commit.
    pub status: Option<PostedStatus>,
    /// "BENCH METRIC" of each regression reported.
    #[serde(default)]
    pub regressions: Vec<String>,
}

impl Document for PostDocument {
    const KIND: &'static str = "post";
    /// 2: `comment` may be null (the comment policy), `policy` and `regressions` added.
    const VERSION: u32 = 2;
}

impl PostDocument {
    pub fn parse(text: &str) -> Result<Self, saeperf_store::document::DocumentError> {
        saeperf_store::document::parse(text)
    }

    /// The line `runner report post` prints for people.
    pub fn line(&self) -> String {
        match &self.comment {
            Some(c) => format!(
                "{:?} comment {} on {}#{}{} ({})",
                c.action,
                c.id,
                self.repo,
                self.pr,
                c.url
                    .as_deref()
                    .map(|u| format!(" {u}"))
                    .unwrap_or_default(),
                self.verdict.as_str()
            ),
            None => format!(
                "no comment on {}#{} (comment policy {}) ({})",
                self.repo,
                self.pr,
                self.policy.as_str(),
                self.verdict.as_str()
            ),
        }
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
        let bot = match (&req.bot_login, req.policy) {
            (_, CommentPolicy::Never) => String::new(),
            (Some(l), _) => l.clone(),
            (None, _) => gh.login().await?,
        };
        let c = match req.policy {
            CommentPolicy::Never => None,
            CommentPolicy::Always => Some(
                gh.upsert_comment(repo, pr, &p.comment.body, &marker, &bot, true)
                    .await?
                    .expect("created when missing"),
            ),
            CommentPolicy::OnChange => {
                gh.upsert_comment(repo, pr, &p.comment.body, &marker, &bot, is_change(p.comment.verdict))
                    .await?
            }
        };
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
                            .or_else(|| c.as_ref().and_then(|c| c.url.clone())),
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
        policy: req.policy,
        status,
        regressions: p.comment.regressions.clone(),
    })
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
            comment: Some(CommentOutcome {
                action: crate::github::CommentAction::Updated,
                id: 1001,
                url: Some("http://gh.test/c/1001".into()),
            }),
            policy: CommentPolicy::Always,
            status: None,
            regressions: vec!["op/encode time".into()],
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
                r#"{"document": "bench", "version": 2}"#,
                "a \"bench\" document",
            ),
            (
                r#"{"document": "post", "version": 2, "pr": 7}"#,
                "missing field",
            ),
        ] {
            let e = PostDocument::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
