//! The GitHub client: the only code in saeperf that talks to GitHub, through octocrab.
//!
//! It lists open pull requests (for the scheduler's pull-request jobs) with what approving one needs (label events,
//! comments, a user's permission), keeps one sticky comment per pull request and sets a commit status carrying the
//! verdict. The API base URL is configurable (GitHub Enterprise, tests against a local server); the token comes
//! from the caller (the CLI reads GITHUB_TOKEN). Requests go through octocrab's raw `_get`/`_post`/`_patch` so the
//! status and headers of every answer can be read; octocrab supplies the base URL, authentication, its
//! User-Agent and the API version header; its own retry layer is not built in (the `retry` feature is off): retries follow GitHub's rules here (docs/github.md):
//!
//! - `retry-after`: wait that long; `x-ratelimit-remaining: 0`: wait until `x-ratelimit-reset`; a secondary limit
//!   that names no time: wait at least [`RetryPolicy::secondary_min_wait`] (a minute), then back off. A wait longer
//!   than [`RetryPolicy::max_wait`] is not waited: the request fails at once with one line saying when to try again
//!   (requests made while limited can get an integration banned).
//! - 5xx answers and transport errors are retried with exponential backoff, except for a request that is not
//!   idempotent (creating a comment): it may have been stored, so the caller looks before sending it again.
//! - The sticky comment is the bot's only: a comment counts as ours when its author is the bot's login (`GET /user`,
//!   or a configured app login such as `github-actions[bot]`) and it carries the marker; anyone can paste a marker.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors talking to GitHub, each naming the request.
#[derive(Debug, Error)]
pub enum GitHubError {
    #[error("invalid GitHub API base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("repository must be OWNER/NAME, got {0:?}")]
    Repo(String),
    #[error("cannot build the GitHub client: {0}")]
    Client(String),
    #[error("{what}: GitHub answered {status} after {attempts} attempt(s): {message}")]
    Status {
        what: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("{what}: GitHub's rate limit is spent until {until} ({minutes} min from now, beyond the {max_wait_secs} s this client waits); try again then")]
    RateLimited {
        what: String,
        until: String,
        minutes: i64,
        max_wait_secs: u64,
    },
    #[error("{what}: request failed after {attempts} attempt(s): {source}")]
    Transport {
        what: String,
        attempts: u32,
        source: octocrab::Error,
    },
    #[error("{what}: unexpected answer from GitHub: {reason}")]
    Decode { what: String, reason: String },
}

/// `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

impl std::str::FromStr for Repo {
    type Err = GitHubError;
    fn from_str(s: &str) -> Result<Repo, GitHubError> {
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && p != "."
                && p != ".."
        };
        match s.split_once('/') {
            Some((o, n)) if ok(o) && ok(n) => Ok(Repo {
                owner: o.to_string(),
                name: n.to_string(),
            }),
            _ => Err(GitHubError::Repo(s.to_string())),
        }
    }
}

/// How requests are retried (see the module doc for GitHub's rules).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts per request (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubled after every failed attempt.
    pub base_delay: Duration,
    /// The longest wait for a rate limit or a backoff; a limit that resets later fails at once instead.
    pub max_wait: Duration,
    /// The least wait after a secondary rate limit that names no time (GitHub: at least a minute).
    pub secondary_min_wait: Duration,
    /// How long one request may take before it counts as timed out.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_secs(2),
            max_wait: Duration::from_secs(300),
            secondary_min_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Commit status states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Success,
    Failure,
    Error,
    Pending,
}

/// What happened to the sticky comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommentAction {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentOutcome {
    pub action: CommentAction,
    pub id: u64,
    pub url: Option<String>,
}

/// An open pull request as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    pub head_sha: String,
    /// The head branch's name (in the fork, for pull requests from forks).
    pub head_ref: String,
    /// The branch it merges into.
    pub base_ref: String,
    pub base_sha: String,
    pub draft: bool,
    /// `owner/name` of the repository the head lives in (None when GitHub does not say, e.g. a deleted fork):
    /// only a head in the repository itself was pushed by someone with write access.
    pub head_repo: Option<String>,
    /// The labels, as written.
    pub labels: Vec<String>,
}

impl PullRequest {
    /// Whether the head lives in `repo` itself (not a fork).
    pub fn from_repo_itself(&self, repo: &Repo) -> bool {
        self.head_repo
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case(&format!("{}/{}", repo.owner, repo.name)))
    }

    pub fn has_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l.eq_ignore_ascii_case(label))
    }
}

#[derive(Deserialize)]
struct RawRepoName {
    full_name: String,
}

#[derive(Deserialize)]
struct RawRef {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
    #[serde(default)]
    repo: Option<RawRepoName>,
}

#[derive(Deserialize)]
struct RawLabel {
    name: String,
}

#[derive(Deserialize)]
struct RawPull {
    number: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    labels: Vec<RawLabel>,
    head: RawRef,
    base: RawRef,
}

/// Pages of 100 read at most when listing (10 000 open pull requests).
const MAX_PAGES: u32 = 100;

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub login: String,
}

/// A comment on a pull request (its conversation).
#[derive(Debug, Clone, Deserialize)]
pub struct IssueComment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl IssueComment {
    pub fn author(&self) -> &str {
        self.user.as_ref().map(|u| u.login.as_str()).unwrap_or("")
    }
}

/// A `labeled` event on a pull request.
#[derive(Debug, Clone)]
pub struct LabelEvent {
    pub actor: String,
    pub label: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A GitHub API client bound to one base URL and token.
pub struct GitHub {
    oc: octocrab::Octocrab,
    retry: RetryPolicy,
}

/// What an answer that is not a success asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// Not retried (a client error).
    No,
    /// Wait exactly this long (`retry-after`, or until `x-ratelimit-reset`).
    Wait(Duration),
    /// A secondary rate limit naming no time: at least the policy's minimum, then backoff.
    Secondary,
    /// A server error: backoff (only for idempotent requests).
    Server,
}

/// What an answer that is not a success asks for, from its status, headers and body.
fn retry_hint(status: StatusCode, headers: &HeaderMap, body: &str) -> Hint {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let spent = header("x-ratelimit-remaining").map(str::trim) == Some("0");
    let reset = || {
        let reset: i64 = header("x-ratelimit-reset")?.trim().parse().ok()?;
        let wait = reset - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(wait.max(1) as u64))
    };
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (spent
                || retry_after.is_some()
                || body.to_ascii_lowercase().contains("rate limit")));
    if limited {
        match retry_after.or_else(|| if spent { reset() } else { None }) {
            Some(d) => Hint::Wait(d),
            None => Hint::Secondary,
        }
    } else if status.is_server_error() {
        match retry_after {
            Some(d) => Hint::Wait(d),
            None => Hint::Server,
        }
    } else {
        Hint::No
    }
}

fn message_of(body: &str) -> String {
    #[derive(Deserialize)]
    struct E {
        message: String,
    }
    serde_json::from_str::<E>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| body.chars().take(200).collect())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Patch,
}

/// A request's outcome when it failed in a way that leaves unknown whether GitHub acted on it (a timeout, a dropped
/// connection or a server error on a request that is not idempotent).
enum Sent {
    Done(String),
    Unknown(GitHubError),
}

impl GitHub {
    /// A client for the API at `base_url` (e.g. https://api.github.com, or https://HOST/api/v3 for Enterprise).
    /// Must be called inside a tokio runtime.
    pub fn new(base_url: &str, token: &str, retry: RetryPolicy) -> Result<GitHub, GitHubError> {
        let uri: http::Uri =
            base_url
                .parse()
                .map_err(|e: http::uri::InvalidUri| GitHubError::BaseUrl {
                    url: base_url.to_string(),
                    reason: e.to_string(),
                })?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(GitHubError::BaseUrl {
                url: base_url.to_string(),
                reason: "needs a scheme and a host, e.g. https://api.github.com".into(),
            });
        }
        // octocrab sends its own User-Agent and X-GitHub-Api-Version; a header added here would be appended to
        // octocrab's (HeaderMap::extend) and sent twice, so none is. Its retry layer (feature `retry`, which would
        // re-send a POST) is not built in.
        let oc = octocrab::Octocrab::builder()
            .base_uri(uri)
            .map_err(|e| GitHubError::BaseUrl {
                url: base_url.to_string(),
                reason: e.to_string(),
            })?
            .personal_token(token.to_string())
            .set_connect_timeout(Some(Duration::from_secs(20).min(retry.timeout)))
            .set_read_timeout(Some(retry.timeout))
            .build()
            .map_err(|e| GitHubError::Client(e.to_string()))?;
        Ok(GitHub { oc, retry })
    }

    /// How long to wait before the next attempt, or the error to fail with at once.
    fn wait_for(&self, what: &str, hint: Hint, backoff: Duration) -> Result<Duration, GitHubError> {
        let wait = match hint {
            Hint::Wait(d) => d,
            Hint::Secondary => backoff.max(self.retry.secondary_min_wait),
            Hint::Server | Hint::No => backoff,
        };
        if wait > self.retry.max_wait {
            let until = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            return Err(GitHubError::RateLimited {
                what: what.to_string(),
                until: until.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                minutes: (wait.as_secs() as i64 + 59) / 60,
                max_wait_secs: self.retry.max_wait.as_secs(),
            });
        }
        Ok(wait)
    }

    /// One request with retries; returns the answer's body on a 2xx. A request that is not `idempotent` is never
    /// sent again after an answer that leaves its effect unknown: that comes back as [`Sent::Unknown`].
    async fn send(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        idempotent: bool,
    ) -> Result<Sent, GitHubError> {
        let mut attempt = 0;
        let mut backoff = self.retry.base_delay;
        loop {
            attempt += 1;
            let res = match method {
                Method::Get => self.oc._get(path).await,
                Method::Post => self.oc._post(path, body).await,
                Method::Patch => self.oc._patch(path, body).await,
            };
            let (hint, failure) = match res {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let text = self.oc.body_to_string(resp).await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(Sent::Done(text));
                    }
                    let failure = GitHubError::Status {
                        what: what.to_string(),
                        status: status.as_u16(),
                        attempts: attempt,
                        message: message_of(&text),
                    };
                    (retry_hint(status, &headers, &text), failure)
                }
                Err(e) => (
                    Hint::Server,
                    GitHubError::Transport {
                        what: what.to_string(),
                        attempts: attempt,
                        source: e,
                    },
                ),
            };
            match hint {
                Hint::No => return Err(failure),
                // A rate limit means GitHub did nothing; anything else may have been acted on.
                Hint::Server if !idempotent => return Ok(Sent::Unknown(failure)),
                _ => {}
            }
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let wait = self.wait_for(what, hint, backoff)?;
            tracing::warn!(
                "{failure}; retrying in {:.1} s (attempt {attempt} of {})",
                wait.as_secs_f64(),
                self.retry.attempts
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_wait);
        }
    }

    /// An idempotent request (GET, PATCH, a commit status): retried by the rules.
    async fn request(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, GitHubError> {
        match self.send(what, method, path, body, true).await? {
            Sent::Done(t) => Ok(t),
            Sent::Unknown(e) => Err(e),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T, GitHubError> {
        serde_json::from_str(text).map_err(|e| GitHubError::Decode {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// The token's own login (`GET /user`): whose comments are the bot's. An installation token (a workflow's
    /// GITHUB_TOKEN) cannot call it: configure the app's login (`github-actions[bot]`) instead.
    pub async fn login(&self) -> Result<String, GitHubError> {
        let what = "reading the token's own user (GET /user; pass the bot's login instead for an app token)";
        let text = self.request(what, Method::Get, "/user", None).await?;
        let u: User = Self::decode(what, &text)?;
        Ok(u.login)
    }

    /// Every comment on `pr`, oldest first (100 per page, at most 100 pages).
    pub async fn comments(&self, repo: &Repo, pr: u64) -> Result<Vec<IssueComment>, GitHubError> {
        let what = format!("listing the comments of {}/{}#{pr}", repo.owner, repo.name);
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!(
                "/repos/{}/{}/issues/{pr}/comments?per_page=100&page={page}",
                repo.owner, repo.name
            );
            let text = self.request(&what, Method::Get, &path, None).await?;
            let comments: Vec<IssueComment> = Self::decode(&what, &text)?;
            let n = comments.len();
            out.extend(comments);
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// The bot's own comment on `pr` carrying `marker` (the oldest); a marker in anyone else's comment is ignored.
    async fn find_comment(
        &self,
        repo: &Repo,
        pr: u64,
        marker: &str,
        bot: &str,
    ) -> Result<Option<IssueComment>, GitHubError> {
        Ok(self.comments(repo, pr).await?.into_iter().find(|c| {
            c.author().eq_ignore_ascii_case(bot)
                && c.body.as_deref().is_some_and(|b| b.contains(marker))
        }))
    }

    /// Update the bot's sticky comment in place when the bot already has one with `marker`, else create it when
    /// `create` (else None). A create whose answer was lost (a timeout, a dropped connection, a server error) is not
    /// sent again blindly: the comments are listed again first, and a comment the server stored meanwhile is the one
    /// created.
    pub async fn upsert_comment(
        &self,
        repo: &Repo,
        pr: u64,
        body: &str,
        marker: &str,
        bot: &str,
        create: bool,
    ) -> Result<Option<CommentOutcome>, GitHubError> {
        let payload = serde_json::json!({ "body": body });
        let outcome = |action, c: IssueComment| CommentOutcome {
            action,
            id: c.id,
            url: c.html_url,
        };
        match self.find_comment(repo, pr, marker, bot).await? {
            Some(c) if c.body.as_deref() == Some(body) => {
                Ok(Some(outcome(CommentAction::Unchanged, c)))
            }
            Some(c) => {
                let what = format!(
                    "updating comment {} on {}/{}#{pr}",
                    c.id, repo.owner, repo.name
                );
                let path = format!(
                    "/repos/{}/{}/issues/comments/{}",
                    repo.owner, repo.name, c.id
                );
                let text = self
                    .request(&what, Method::Patch, &path, Some(&payload))
                    .await?;
                Ok(Some(outcome(
                    CommentAction::Updated,
                    Self::decode(&what, &text)?,
                )))
            }
            None if !create => Ok(None),
            None => {
                let what = format!("creating a comment on {}/{}#{pr}", repo.owner, repo.name);
                let path = format!("/repos/{}/{}/issues/{pr}/comments", repo.owner, repo.name);
                let mut backoff = self.retry.base_delay;
                for attempt in 1..=self.retry.attempts {
                    match self
                        .send(&what, Method::Post, &path, Some(&payload), false)
                        .await?
                    {
                        Sent::Done(text) => {
                            return Ok(Some(outcome(
                                CommentAction::Created,
                                Self::decode(&what, &text)?,
                            )))
                        }
                        Sent::Unknown(e) => {
                            tracing::warn!("{e}; looking for the comment before creating it again");
                            if let Some(c) = self.find_comment(repo, pr, marker, bot).await? {
                                return Ok(Some(outcome(CommentAction::Created, c)));
                            }
                            if attempt == self.retry.attempts {
                                return Err(e);
                            }
                            tokio::time::sleep(self.wait_for(&what, Hint::Server, backoff)?).await;
                            backoff = (backoff * 2).min(self.retry.max_wait);
                        }
                    }
                }
                unreachable!("the last attempt returns")
            }
        }
    }

    /// The `labeled` events of `pr` (who added which label when), oldest first.
    pub async fn label_events(&self, repo: &Repo, pr: u64) -> Result<Vec<LabelEvent>, GitHubError> {
        #[derive(Deserialize)]
        struct RawEvent {
            event: String,
            #[serde(default)]
            actor: Option<User>,
            #[serde(default)]
            label: Option<RawLabel>,
            created_at: chrono::DateTime<chrono::Utc>,
        }
        let what = format!("listing the events of {}/{}#{pr}", repo.owner, repo.name);
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!(
                "/repos/{}/{}/issues/{pr}/events?per_page=100&page={page}",
                repo.owner, repo.name
            );
            let text = self.request(&what, Method::Get, &path, None).await?;
            let events: Vec<RawEvent> = Self::decode(&what, &text)?;
            let n = events.len();
            out.extend(events.into_iter().filter_map(|e| {
                (e.event == "labeled").then_some(LabelEvent {
                    actor: e.actor?.login,
                    label: e.label?.name,
                    at: e.created_at,
                })
            }));
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// Whether `login` may push to the repository (permission admin, maintain or write); a user who is no
    /// collaborator (404) may not.
    pub async fn can_write(&self, repo: &Repo, login: &str) -> Result<bool, GitHubError> {
        #[derive(Deserialize)]
        struct Perm {
            permission: String,
            #[serde(default)]
            role_name: Option<String>,
        }
        if login.is_empty()
            || !login
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '[' | ']'))
        {
            return Ok(false);
        }
        let what = format!(
            "reading the permission of {login} on {}/{}",
            repo.owner, repo.name
        );
        let path = format!(
            "/repos/{}/{}/collaborators/{login}/permission",
            repo.owner, repo.name
        );
        match self.request(&what, Method::Get, &path, None).await {
            Ok(text) => {
                let p: Perm = Self::decode(&what, &text)?;
                Ok(
                    ["admin", "maintain", "write"].contains(&p.permission.as_str())
                        || matches!(p.role_name.as_deref(), Some("admin" | "maintain" | "write")),
                )
            }
            Err(GitHubError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every open pull request, oldest first. Each page (100) goes through the retry policy.
    pub async fn open_pulls(&self, repo: &Repo) -> Result<Vec<PullRequest>, GitHubError> {
        let what = format!(
            "listing the open pull requests of {}/{}",
            repo.owner, repo.name
        );
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!(
                "/repos/{}/{}/pulls?state=open&sort=created&direction=asc&per_page=100&page={page}",
                repo.owner, repo.name
            );
            let text = self.request(&what, Method::Get, &path, None).await?;
            let pulls: Vec<RawPull> = Self::decode(&what, &text)?;
            let n = pulls.len();
            for p in pulls {
                if p.state.as_deref().is_some_and(|s| s != "open") {
                    continue;
                }
                if p.head.sha.is_empty() || !p.head.sha.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(GitHubError::Decode {
                        what,
                        reason: format!("pull request #{} has head sha {:?}", p.number, p.head.sha),
                    });
                }
                out.push(PullRequest {
                    number: p.number,
                    title: p.title,
                    head_sha: p.head.sha,
                    head_ref: p.head.name,
                    base_ref: p.base.name,
                    base_sha: p.base.sha,
                    draft: p.draft,
                    head_repo: p.head.repo.map(|r| r.full_name),
                    labels: p.labels.into_iter().map(|l| l.name).collect(),
                });
            }
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// The open pull requests carrying `label` (compared case-insensitively, as GitHub does), oldest first. The
    /// pulls listing has no label filter, so every page is read and filtered here.
    pub async fn labelled_pulls(
        &self,
        repo: &Repo,
        label: &str,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        let mut all = self.open_pulls(repo).await?;
        all.retain(|p| p.has_label(label));
        Ok(all)
    }

    /// The current head commit of a pull request.
    pub async fn pull_head_sha(&self, repo: &Repo, pr: u64) -> Result<String, GitHubError> {
        #[derive(Deserialize)]
        struct Head {
            sha: String,
        }
        #[derive(Deserialize)]
        struct Pull {
            head: Head,
        }
        let what = format!("reading pull request {}/{}#{pr}", repo.owner, repo.name);
        let path = format!("/repos/{}/{}/pulls/{pr}", repo.owner, repo.name);
        let text = self.request(&what, Method::Get, &path, None).await?;
        let p: Pull = Self::decode(&what, &text)?;
        Ok(p.head.sha)
    }

    /// Set a commit status on `sha` (description cut to GitHub's 140 characters).
    pub async fn set_status(
        &self,
        repo: &Repo,
        sha: &str,
        state: StatusState,
        context: &str,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), GitHubError> {
        if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(GitHubError::Decode {
                what: "setting a commit status".into(),
                reason: format!("{sha:?} is not a commit SHA"),
            });
        }
        let mut desc: String = description.chars().take(140).collect();
        if desc.len() < description.len() {
            desc = desc.chars().take(139).collect::<String>() + "…";
        }
        let mut payload =
            serde_json::json!({ "state": state, "context": context, "description": desc });
        if let Some(u) = target_url {
            payload["target_url"] = u.into();
        }
        let what = format!(
            "setting status {context:?} on {}/{}@{}",
            repo.owner,
            repo.name,
            &sha[..sha.len().min(10)]
        );
        let path = format!("/repos/{}/{}/statuses/{sha}", repo.owner, repo.name);
        self.request(&what, Method::Post, &path, Some(&payload))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `labelled_pulls` against a real local HTTP server: 150 open pull requests on two pages, every third one
    /// labelled; the first request answered 502 (retried).
    #[test]
    fn labelled_pulls_reads_every_page_and_filters_by_label() {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let srv = server.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let t = std::thread::spawn(move || {
            while let Ok(req) = srv.recv() {
                let u = req.url().to_string();
                let n = {
                    let mut s = seen2.lock().unwrap();
                    s.push(u.clone());
                    s.len()
                };
                if n == 1 {
                    let _ =
                        req.respond(tiny_http::Response::from_string("{}").with_status_code(502));
                    continue;
                }
                let page: usize = u
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("page="))
                    .unwrap()
                    .parse()
                    .unwrap();
                let list: Vec<serde_json::Value> = (1..=150u64)
                    .skip((page - 1) * 100)
                    .take(100)
                    .map(|i| {
                        let label = if i % 3 == 0 { "Benchmark" } else { "docs" };
                        serde_json::json!({
                            "number": i, "title": format!("pr {i}"), "state": "open", "draft": i == 3,
                            "labels": [ { "name": label } ],
                            "head": { "ref": format!("f{i}"), "sha": format!("{i:040x}") },
                            "base": { "ref": "main", "sha": "ab".repeat(20) },
                        })
                    })
                    .collect();
                let _ = req.respond(tiny_http::Response::from_string(
                    serde_json::to_string(&list).unwrap(),
                ));
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let repo: Repo = "o/r".parse().unwrap();
        let pulls = rt
            .block_on(async {
                let gh = GitHub::new(
                    &url,
                    "t",
                    RetryPolicy {
                        attempts: 2,
                        base_delay: Duration::from_millis(10),
                        ..RetryPolicy::default()
                    },
                )
                .unwrap();
                gh.labelled_pulls(&repo, "benchmark").await
            })
            .unwrap();
        server.unblock();
        t.join().unwrap();
        assert_eq!(pulls.len(), 50);
        assert_eq!(pulls[0].number, 3);
        assert!(pulls[0].draft);
        assert_eq!(pulls[49].number, 150);
        assert_eq!(pulls[49].head_sha, format!("{:040x}", 150));
        assert_eq!(pulls[49].head_ref, "f150");
        assert_eq!(pulls[49].base_ref, "main");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "a retry, then two pages: {seen:?}");
        assert!(seen[2].starts_with("/repos/o/r/pulls?state=open") && seen[2].contains("page=2"));
    }

    #[test]
    fn repo_names_are_checked() {
        assert_eq!(
            "o-1/r.s_x".parse::<Repo>().unwrap(),
            Repo {
                owner: "o-1".into(),
                name: "r.s_x".into()
            }
        );
        for bad in ["o", "o/", "/r", "o/r/x", "o/..", "o/r?x"] {
            assert!(bad.parse::<Repo>().is_err(), "{bad}");
        }
    }

    #[test]
    fn which_answers_are_retried() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert_eq!(
            retry_hint(StatusCode::BAD_GATEWAY, &h(&[]), ""),
            Hint::Server
        );
        assert_eq!(
            retry_hint(StatusCode::FORBIDDEN, &h(&[("retry-after", "3")]), ""),
            Hint::Wait(Duration::from_secs(3))
        );
        // A secondary limit naming no time.
        assert_eq!(
            retry_hint(
                StatusCode::FORBIDDEN,
                &h(&[]),
                r#"{"message":"You have exceeded a secondary rate limit"}"#
            ),
            Hint::Secondary
        );
        assert_eq!(
            retry_hint(StatusCode::TOO_MANY_REQUESTS, &h(&[]), ""),
            Hint::Secondary
        );
        // A plain permission error is not retried.
        assert_eq!(
            retry_hint(
                StatusCode::FORBIDDEN,
                &h(&[("x-ratelimit-remaining", "4999")]),
                r#"{"message":"Resource not accessible by integration"}"#
            ),
            Hint::No
        );
        assert_eq!(retry_hint(StatusCode::NOT_FOUND, &h(&[]), ""), Hint::No);
        let reset = (chrono::Utc::now().timestamp() + 30).to_string();
        let Hint::Wait(w) = retry_hint(
            StatusCode::FORBIDDEN,
            &h(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
            "",
        ) else {
            panic!("a primary limit waits for its reset")
        };
        assert!(
            w >= Duration::from_secs(28) && w <= Duration::from_secs(31),
            "{w:?}"
        );
    }
}
