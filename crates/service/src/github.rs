//! The GitHub client: the only code in saeperf that talks to GitHub, through octocrab.
//!
//! It lists the open pull requests that carry a label (for the scheduler's pull-request jobs), keeps one sticky
//! comment per pull request (found again by a hidden marker and updated in place) and sets a
//! commit status carrying the verdict. The API base URL is configurable (GitHub Enterprise, tests against a local
//! server); the token comes from the caller (the CLI reads GITHUB_TOKEN). Every request is retried with exponential
//! backoff on 5xx answers, 429, and 403 answers that are rate limits (`x-ratelimit-remaining: 0`, or a "secondary
//! rate limit" message), honouring `Retry-After` and `x-ratelimit-reset`. Requests go through octocrab's raw
//! `_get`/`_post`/`_patch` so the status and headers of every answer can be read; octocrab supplies the base URL,
//! authentication and headers.

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

/// How requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts per request (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubled after every failed attempt.
    pub base_delay: Duration,
    /// No single wait is longer than this (a Retry-After beyond it is cut to it).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(120),
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
}

#[derive(Deserialize)]
struct RawRef {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
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

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
}

/// A GitHub API client bound to one base URL and token.
pub struct GitHub {
    oc: octocrab::Octocrab,
    retry: RetryPolicy,
}

/// Whether an answer should be retried, and after how long at least (from its headers).
fn retry_hint(status: StatusCode, headers: &HeaderMap, body: &str) -> Option<Option<Duration>> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let reset = || {
        let remaining = header("x-ratelimit-remaining")?;
        if remaining.trim() != "0" {
            return None;
        }
        let reset: i64 = header("x-ratelimit-reset")?.trim().parse().ok()?;
        let wait = reset - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(wait.max(1) as u64))
    };
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (header("x-ratelimit-remaining").map(str::trim) == Some("0")
                || retry_after.is_some()
                || body.to_ascii_lowercase().contains("rate limit")));
    if rate_limited {
        Some(retry_after.or_else(reset))
    } else if status.is_server_error() {
        Some(retry_after)
    } else {
        None
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

enum Method {
    Get,
    Post,
    Patch,
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
        let oc = octocrab::Octocrab::builder()
            .base_uri(uri)
            .map_err(|e| GitHubError::BaseUrl {
                url: base_url.to_string(),
                reason: e.to_string(),
            })?
            .personal_token(token.to_string())
            .add_header(
                http::header::USER_AGENT,
                format!("saeperf-runner/{}", env!("CARGO_PKG_VERSION")),
            )
            .add_header(
                http::header::HeaderName::from_static("x-github-api-version"),
                "2022-11-28".to_string(),
            )
            .set_connect_timeout(Some(Duration::from_secs(20)))
            .set_read_timeout(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| GitHubError::Client(e.to_string()))?;
        Ok(GitHub { oc, retry })
    }

    /// One request with retries; returns the answer's body on a 2xx.
    async fn request(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, GitHubError> {
        let mut attempt = 0;
        let mut backoff = self.retry.base_delay;
        loop {
            attempt += 1;
            let res = match method {
                Method::Get => self.oc._get(path).await,
                Method::Post => self.oc._post(path, body).await,
                Method::Patch => self.oc._patch(path, body).await,
            };
            let (wait, failure) = match res {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let text = self.oc.body_to_string(resp).await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(text);
                    }
                    let failure = GitHubError::Status {
                        what: what.to_string(),
                        status: status.as_u16(),
                        attempts: attempt,
                        message: message_of(&text),
                    };
                    match retry_hint(status, &headers, &text) {
                        Some(hint) => (hint, failure),
                        None => return Err(failure),
                    }
                }
                Err(e) => (
                    None,
                    GitHubError::Transport {
                        what: what.to_string(),
                        attempts: attempt,
                        source: e,
                    },
                ),
            };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let wait = wait.unwrap_or(backoff).min(self.retry.max_delay);
            tracing::warn!(
                "{failure}; retrying in {:.1} s (attempt {attempt} of {})",
                wait.as_secs_f64(),
                self.retry.attempts
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_delay);
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T, GitHubError> {
        serde_json::from_str(text).map_err(|e| GitHubError::Decode {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// Find the comment on `pr` that contains `marker` (the first one, oldest first).
    async fn find_comment(
        &self,
        repo: &Repo,
        pr: u64,
        marker: &str,
    ) -> Result<Option<Comment>, GitHubError> {
        let what = format!("listing the comments of {}/{}#{pr}", repo.owner, repo.name);
        for page in 1..=100 {
            let path = format!(
                "/repos/{}/{}/issues/{pr}/comments?per_page=100&page={page}",
                repo.owner, repo.name
            );
            let text = self.request(&what, Method::Get, &path, None).await?;
            let comments: Vec<Comment> = Self::decode(&what, &text)?;
            let n = comments.len();
            if let Some(c) = comments
                .into_iter()
                .find(|c| c.body.as_deref().is_some_and(|b| b.contains(marker)))
            {
                return Ok(Some(c));
            }
            if n < 100 {
                break;
            }
        }
        Ok(None)
    }

    /// Create the sticky comment, or update it in place when one with `marker` exists.
    pub async fn upsert_comment(
        &self,
        repo: &Repo,
        pr: u64,
        body: &str,
        marker: &str,
    ) -> Result<CommentOutcome, GitHubError> {
        let payload = serde_json::json!({ "body": body });
        match self.find_comment(repo, pr, marker).await? {
            Some(c) if c.body.as_deref() == Some(body) => Ok(CommentOutcome {
                action: CommentAction::Unchanged,
                id: c.id,
                url: c.html_url,
            }),
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
                let c: Comment = Self::decode(&what, &text)?;
                Ok(CommentOutcome {
                    action: CommentAction::Updated,
                    id: c.id,
                    url: c.html_url,
                })
            }
            None => {
                let what = format!("creating a comment on {}/{}#{pr}", repo.owner, repo.name);
                let path = format!("/repos/{}/{}/issues/{pr}/comments", repo.owner, repo.name);
                let text = self
                    .request(&what, Method::Post, &path, Some(&payload))
                    .await?;
                let c: Comment = Self::decode(&what, &text)?;
                Ok(CommentOutcome {
                    action: CommentAction::Created,
                    id: c.id,
                    url: c.html_url,
                })
            }
        }
    }

    /// The open pull requests carrying `label` (compared case-insensitively, as GitHub does), oldest first. The
    /// pulls listing has no label filter, so every page of open pull requests is read (100 per page) and filtered
    /// here; each page goes through the retry policy.
    pub async fn labelled_pulls(
        &self,
        repo: &Repo,
        label: &str,
    ) -> Result<Vec<PullRequest>, GitHubError> {
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
                let open = p.state.as_deref().is_none_or(|s| s == "open");
                if !open || !p.labels.iter().any(|l| l.name.eq_ignore_ascii_case(label)) {
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
                });
            }
            if n < 100 {
                break;
            }
        }
        Ok(out)
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
                        max_delay: Duration::from_millis(10),
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
        assert_eq!(retry_hint(StatusCode::BAD_GATEWAY, &h(&[]), ""), Some(None));
        assert_eq!(
            retry_hint(StatusCode::FORBIDDEN, &h(&[("retry-after", "3")]), ""),
            Some(Some(Duration::from_secs(3)))
        );
        assert!(retry_hint(
            StatusCode::FORBIDDEN,
            &h(&[]),
            r#"{"message":"You have exceeded a secondary rate limit"}"#
        )
        .is_some());
        // A plain permission error is not retried.
        assert_eq!(
            retry_hint(
                StatusCode::FORBIDDEN,
                &h(&[("x-ratelimit-remaining", "4999")]),
                r#"{"message":"Resource not accessible by integration"}"#
            ),
            None
        );
        assert_eq!(retry_hint(StatusCode::NOT_FOUND, &h(&[]), ""), None);
        let reset = (chrono::Utc::now().timestamp() + 30).to_string();
        let w = retry_hint(
            StatusCode::FORBIDDEN,
            &h(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
            "",
        )
        .unwrap()
        .unwrap();
        assert!(
            w >= Duration::from_secs(28) && w <= Duration::from_secs(31),
            "{w:?}"
        );
    }
}
