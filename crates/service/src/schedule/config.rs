//! The scheduler's configuration file (saeperf.toml): which repository to track, the jobs with their cron
//! schedules, where the store, the dashboard and the scheduler's own state live, the build and bench commands and the
//! notification webhooks. Parsed with serde (`deny_unknown_fields`) and validated at start; every error is one line
//! that names the file, the line and the key.
//!
//! Cron expressions use the `cron` crate's syntax: 6 fields (`sec min hour day-of-month month day-of-week`) or 7
//! (plus year); day-of-week 1-7 means Sunday-Saturday, names (MON-FRI) are clearer. The classic 5-field form
//! (`min hour dom month dow`) is accepted too and runs at second 0, but only with `*` or names in the day-of-week
//! field, because numeric days differ between the two conventions (classic cron: 0 = Sunday; here: 1 = Sunday).
//!
//! Relative paths are resolved against the directory of the configuration file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// Default build command, run in the commit's worktree with `CARGO_TARGET_DIR` set to the shared target directory.
pub const DEFAULT_BUILD: &str = "cargo build --release";
/// Default bench command (placeholders are replaced by shell-quoted values, see [`Commands`]).
pub const DEFAULT_BENCH: &str =
    "{target_dir}/release/runner --db {db} bench --json --profile {profile} \
     --commit {commit} --branch {branch} --base-branch {base_branch} {suite_args} {pr_args}";
/// Default dashboard command (only run when `dashboard_dir` is configured): the scheduler's own runner renders.
pub const DEFAULT_DASHBOARD: &str =
    "{runner} --db {db} dashboard --out {dashboard_dir} --main-branch {main_branch} {suite_args}";

/// A parsed cron schedule that remembers how it was written.
#[derive(Debug, Clone)]
pub struct Cron {
    pub source: String,
    pub schedule: cron::Schedule,
}

impl Cron {
    /// Parse a 6/7-field expression, or a 5-field one (second 0 prepended) whose day-of-week has no digits.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let full = match fields.len() {
            5 => {
                if fields[4].chars().any(|c| c.is_ascii_digit()) {
                    return Err(format!(
                        "5-field expression {expr:?} has a numeric day-of-week, which means different days in \
                         classic cron (0 = Sunday) and here (1 = Sunday): use names (MON-FRI) or the 6-field form \
                         with seconds"
                    ));
                }
                format!("0 {}", fields.join(" "))
            }
            6 | 7 => fields.join(" "),
            n => {
                return Err(format!(
                    "expression {expr:?} has {n} fields; expected 6 (sec min hour day-of-month month day-of-week), \
                     7 (plus year) or 5 (classic, without seconds)"
                ))
            }
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| {
            // The cron crate's message repeats the expression with a caret line: keep the reason only.
            let msg = e.to_string();
            let reason = msg
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .trim_start_matches('^')
                .trim()
                .to_string();
            format!("invalid cron expression {expr:?}: {reason}")
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(format!("cron expression {expr:?} never fires again"));
        }
        Ok(Cron {
            source: expr.to_string(),
            schedule,
        })
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cron::parse(&s).map_err(|e| serde::de::Error::custom(format!("cron: {e}")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryRaw {
    /// Local clone (the scheduler fetches into it and makes worktrees from it).
    pub path: Spanned<PathBuf>,
    /// OWNER/NAME on GitHub (links in notifications; pull-request targets and comments).
    #[serde(default)]
    pub github: Option<Spanned<String>>,
    /// Remote to fetch before each job; default `origin` when the clone has one, else no fetch.
    #[serde(default)]
    pub remote: Option<String>,
}

/// The commands a job runs. Placeholders, replaced by shell-quoted values: `{runner}` (this scheduler's own binary),
/// `{target_dir}`, `{worktree}`, `{db}`, `{commit}`, `{branch}`, `{base_branch}`, `{profile}`, `{job}`,
/// `{dashboard_dir}`, `{main_branch}` (the base branch without the remote's prefix), `{suite_args}` (`--suite PATH`
/// when the job names a suite, else nothing) and `{pr_args}` (`--pr N` for a pull request's head, else nothing).
/// For a pull request, `{branch}` is its head branch and `{base_branch}` the branch it merges into.
/// Commands run through `sh -c` in the commit's worktree, in their own process group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    #[serde(default = "default_build")]
    pub build: String,
    #[serde(default = "default_bench")]
    pub bench: String,
    #[serde(default = "default_dashboard")]
    pub dashboard: String,
    /// Seconds a build may take before it is killed and recorded as failed.
    #[serde(default = "default_build_timeout")]
    pub build_timeout_secs: u64,
    /// Seconds a bench may take before it is killed and recorded as failed.
    #[serde(default = "default_bench_timeout")]
    pub bench_timeout_secs: u64,
    /// How a pull request's build and bench are kept from the shared state: `namespace` (default: a user and
    /// mount namespace, `unshare`, in which the store, the state directory, the dashboard and the shared target
    /// directory are empty and the clone, HOME and toolchains read-only) or `none` (only on a throw-away machine).
    #[serde(default)]
    pub sandbox: Sandbox,
}

/// See [`Commands::sandbox`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sandbox {
    #[default]
    Namespace,
    None,
}

fn default_build() -> String {
    DEFAULT_BUILD.into()
}
fn default_bench() -> String {
    DEFAULT_BENCH.into()
}
fn default_dashboard() -> String {
    DEFAULT_DASHBOARD.into()
}
fn default_build_timeout() -> u64 {
    3600
}
fn default_bench_timeout() -> u64 {
    6 * 3600
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            build: default_build(),
            bench: default_bench(),
            dashboard: default_dashboard(),
            build_timeout_secs: default_build_timeout(),
            bench_timeout_secs: default_bench_timeout(),
            sandbox: Sandbox::default(),
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Slack-compatible incoming-webhook URLs; each gets a POST on every regression.
    #[serde(default)]
    pub webhooks: Vec<Spanned<String>>,
    /// Attempts per webhook (the first try plus retries with doubling delays).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First retry delay in milliseconds.
    #[serde(default = "default_retry_ms")]
    pub retry_delay_ms: u64,
    /// Where the dashboard is published, for the link in messages.
    #[serde(default)]
    pub dashboard_url: Option<String>,
}

fn default_attempts() -> u32 {
    4
}
fn default_retry_ms() -> u64 {
    500
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            webhooks: vec![],
            attempts: default_attempts(),
            retry_delay_ms: default_retry_ms(),
            dashboard_url: None,
        }
    }
}

/// Pull requests to benchmark (needs `repository.github` and a token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequests {
    /// Open pull requests carrying this label are benchmarked (each head commit once).
    pub label: Spanned<String>,
}

/// Default GitHub API base URL.
pub const DEFAULT_GITHUB_API: &str = "https://api.github.com";

/// How the scheduler talks to GitHub (only pull-request jobs do).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubSettings {
    /// API base URL (GitHub Enterprise: https://HOST/api/v3).
    #[serde(default = "default_api_url")]
    pub api_url: Spanned<String>,
    /// Name of the environment variable holding the token (pull-requests: write, statuses: write). The token itself
    /// never goes into the file.
    #[serde(default = "default_token_env")]
    pub token_env: Spanned<String>,
    /// Prefix of the commit status context and of the sticky comment's key: each job uses `{status_context}/{job}`.
    /// Schedulers on two machines commenting on the same repository need different values.
    #[serde(default = "default_status_context")]
    pub status_context: String,
    /// Attempts per GitHub request (retries on 5xx and rate limits).
    #[serde(default = "default_gh_attempts")]
    pub attempts: u32,
    /// First retry delay in milliseconds (doubling).
    #[serde(default = "default_gh_retry_ms")]
    pub retry_delay_ms: u64,
    /// The login whose comments are the bot's (default: the token's own, `GET /user`).
    #[serde(default)]
    pub bot_login: Option<String>,
    /// When to comment on a pull request: `always`, `on-change` or `never` (`runner report post --comment-policy`).
    #[serde(default)]
    pub comment_policy: crate::post::CommentPolicy,
}

fn default_api_url() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_GITHUB_API.to_string())
}
fn default_token_env() -> Spanned<String> {
    Spanned::new(0..0, "GITHUB_TOKEN".to_string())
}
fn default_status_context() -> String {
    "saeperf".into()
}
fn default_gh_attempts() -> u32 {
    5
}
fn default_gh_retry_ms() -> u64 {
    2000
}

impl Default for GitHubSettings {
    fn default() -> Self {
        GitHubSettings {
            api_url: default_api_url(),
            token_env: default_token_env(),
            status_context: default_status_context(),
            attempts: default_gh_attempts(),
            retry_delay_ms: default_gh_retry_ms(),
            bot_login: None,
            comment_policy: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRaw {
    pub name: Spanned<String>,
    pub cron: Spanned<Cron>,
    /// Branch to benchmark (its newest commit at each fire).
    #[serde(default)]
    pub branch: Option<String>,
    /// Or: open pull requests carrying a label.
    #[serde(default)]
    pub pull_requests: Option<Spanned<PullRequests>>,
    /// Suite profile (quick, standard, full).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Suite file inside the repository (default: what the bench picks, bench/suite.toml).
    #[serde(default)]
    pub suite: Option<String>,
    /// The main branch: the baseline's branch for branch jobs and the history branch of the dashboard; default
    /// `main`. Pull-request jobs take each pull request's own base branch for the merge-base baseline.
    #[serde(default)]
    pub base_branch: Option<String>,
}

fn default_profile() -> String {
    "standard".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tz {
    #[default]
    Utc,
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repository: RepositoryRaw,
    store: PathBuf,
    #[serde(default)]
    dashboard_dir: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    target_dir: Option<PathBuf>,
    #[serde(default)]
    untrusted_dir: Option<PathBuf>,
    #[serde(default)]
    timezone: Tz,
    #[serde(default)]
    commands: Commands,
    #[serde(default)]
    notify: Notify,
    #[serde(default)]
    github: GitHubSettings,
    #[serde(default, rename = "job")]
    jobs: Vec<JobRaw>,
}

/// What a job benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Branch(String),
    PullRequests { label: String },
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub cron: Cron,
    pub target: Target,
    pub profile: String,
    pub suite: Option<String>,
    pub base_branch: String,
}

/// The validated configuration, paths absolute.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub repo: PathBuf,
    pub github: Option<String>,
    pub remote: Option<String>,
    pub store: PathBuf,
    pub dashboard_dir: Option<PathBuf>,
    /// Scheduler state (state.json, the lock, logs, worktrees); default `<store>.schedule`.
    pub state_dir: PathBuf,
    /// CARGO_TARGET_DIR shared by every build (incremental rebuilds); default `<state_dir>/target`.
    pub target_dir: PathBuf,
    /// Where a pull request's worktree, HOME, CARGO_HOME, target directory and throw-away store live while its code
    /// runs (emptied before and after each attempt); default `<state_dir>.untrusted`. Never inside the state
    /// directory, the store or the target directory (those are hidden from that code).
    pub untrusted_dir: PathBuf,
    pub timezone: Tz,
    pub commands: Commands,
    pub notify: Notify,
    /// GitHub API settings (used by pull-request jobs; checked at load only when there is one).
    pub github_api: GitHubApi,
    pub jobs: Vec<Job>,
}

/// The validated GitHub settings.
#[derive(Debug, Clone)]
pub struct GitHubApi {
    pub api_url: String,
    /// The environment variable holding the token (read when a job needs it, never stored here).
    pub token_env: String,
    pub status_context: String,
    pub attempts: u32,
    pub retry_delay_ms: u64,
    pub bot_login: Option<String>,
    pub comment_policy: crate::post::CommentPolicy,
}

impl GitHubApi {
    /// The token from the configured environment variable.
    pub fn token(&self) -> Result<String> {
        std::env::var(&self.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("the GitHub token variable {} is not set", self.token_env)
            })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Read and validate; errors are one line: `FILE: line N: problem`.
    pub fn load(path: &Path) -> Result<Config> {
        Config::load_with(path, true)
    }

    /// Read and validate, without requiring the GitHub token (for `runner status`, which never talks to GitHub).
    pub fn load_for_status(path: &Path) -> Result<Config> {
        Config::load_with(path, false)
    }

    fn load_with(path: &Path, need_token: bool) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read configuration {}: {e}", path.display()))?;
        Config::parse_with(&text, path, need_token)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        Config::parse_with(text, path, true)
    }

    fn parse_with(text: &str, path: &Path, need_token: bool) -> Result<Config> {
        let file = path.display();
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(s) => anyhow::anyhow!("{file}: line {}: {msg}", line_of(text, s.start)),
                None => anyhow::anyhow!("{file}: {msg}"),
            }
        })?;
        let at =
            |span: std::ops::Range<usize>| format!("{file}: line {}", line_of(text, span.start));
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let repo = abs(raw.repository.path.get_ref());
        if !repo.is_dir() {
            bail!(
                "{}: repository.path: {} does not exist",
                at(raw.repository.path.span()),
                repo.display()
            );
        }
        if !saeperf_git::Repo::at(&repo).is_repository() {
            bail!(
                "{}: repository.path: {} is not a git repository",
                at(raw.repository.path.span()),
                repo.display()
            );
        }
        let github = match &raw.repository.github {
            Some(g) => {
                let v = g.get_ref();
                let ok = v.split('/').count() == 2 && v.split('/').all(|p| !p.is_empty());
                if !ok {
                    bail!(
                        "{}: repository.github: {v:?} is not OWNER/NAME",
                        at(g.span())
                    );
                }
                Some(v.clone())
            }
            None => None,
        };
        if raw.jobs.is_empty() {
            bail!("{file}: no [[job]] defined: the scheduler would never run anything");
        }
        let mut jobs = Vec::new();
        let mut has_pr_jobs = false;
        for j in &raw.jobs {
            let name = j.name.get_ref().clone();
            if name.is_empty() || name.contains(['/', ' ']) {
                bail!(
                    "{}: job.name: {name:?} must be non-empty, without spaces or slashes",
                    at(j.name.span())
                );
            }
            if jobs.iter().any(|x: &Job| x.name == name) {
                bail!("{}: job.name: {name:?} is defined twice", at(j.name.span()));
            }
            let target = match (&j.branch, &j.pull_requests) {
                (Some(b), None) => Target::Branch(b.clone()),
                (None, Some(pr)) => {
                    let label = pr.get_ref().label.get_ref().trim();
                    if label.is_empty() {
                        bail!(
                            "{}: job {name:?}: pull_requests.label must not be empty",
                            at(pr.get_ref().label.span())
                        );
                    }
                    if github.is_none() {
                        bail!(
                            "{}: job {name:?}: pull_requests needs repository.github = \"OWNER/NAME\"",
                            at(pr.span())
                        );
                    }
                    has_pr_jobs = true;
                    Target::PullRequests {
                        label: label.to_string(),
                    }
                }
                _ => bail!(
                    "{}: job {name:?}: set exactly one of branch = \"...\" or pull_requests = {{ label = \"...\" }}",
                    at(j.name.span())
                ),
            };
            jobs.push(Job {
                name,
                cron: j.cron.get_ref().clone(),
                target,
                profile: j.profile.clone(),
                suite: j.suite.clone(),
                base_branch: j.base_branch.clone().unwrap_or_else(|| "main".into()),
            });
        }
        for w in &raw.notify.webhooks {
            let u = w.get_ref();
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bail!(
                    "{}: notify.webhooks: {u:?} is not an http(s) URL",
                    at(w.span())
                );
            }
        }
        if raw.notify.attempts == 0 {
            bail!("{file}: notify.attempts must be at least 1");
        }
        let gh = &raw.github;
        let api_url = gh.api_url.get_ref().trim_end_matches('/').to_string();
        let where_ = |s: &Spanned<String>| {
            if s.span().is_empty() {
                file.to_string()
            } else {
                at(s.span())
            }
        };
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
            bail!(
                "{}: github.api_url: {api_url:?} is not an http(s) URL",
                where_(&gh.api_url)
            );
        }
        let token_env = gh.token_env.get_ref().clone();
        if token_env.is_empty() || token_env.contains(['=', '\0']) {
            bail!(
                "{}: github.token_env: {token_env:?} is not an environment variable name",
                where_(&gh.token_env)
            );
        }
        if gh.attempts == 0 {
            bail!("{file}: github.attempts must be at least 1");
        }
        let github_api = GitHubApi {
            api_url,
            token_env,
            status_context: gh.status_context.clone(),
            attempts: gh.attempts,
            retry_delay_ms: gh.retry_delay_ms,
            bot_login: gh.bot_login.clone(),
            comment_policy: gh.comment_policy,
        };
        if has_pr_jobs && need_token {
            if let Err(e) = github_api.token() {
                bail!(
                    "{}: github.token_env: {e}; pull-request jobs need a token with pull-requests: write and \
                     statuses: write",
                    where_(&gh.token_env)
                );
            }
        }
        let store = abs(&raw.store);
        let state_dir = raw
            .state_dir
            .as_deref()
            .map(abs)
            .unwrap_or_else(|| PathBuf::from(format!("{}.schedule", store.display())));
        let target_dir = raw
            .target_dir
            .as_deref()
            .map(abs)
            .unwrap_or_else(|| state_dir.join("target"));
        let untrusted_dir = raw
            .untrusted_dir
            .as_deref()
            .map(abs)
            .unwrap_or_else(|| PathBuf::from(format!("{}.untrusted", state_dir.display())));
        for (name, hidden) in [
            ("store", &store),
            ("state_dir", &state_dir),
            ("target_dir", &target_dir),
        ] {
            if untrusted_dir.starts_with(hidden) || hidden.starts_with(&untrusted_dir) {
                bail!(
                    "{file}: untrusted_dir {} and {name} {} must not contain one another (a pull request's code \
                     runs in the first and must not reach the second)",
                    untrusted_dir.display(),
                    hidden.display()
                );
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            repo,
            github,
            remote: raw.repository.remote.clone(),
            store,
            dashboard_dir: raw.dashboard_dir.as_deref().map(abs),
            state_dir,
            target_dir,
            untrusted_dir,
            timezone: raw.timezone,
            commands: raw.commands,
            notify: raw.notify,
            github_api,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        std::process::Command::new("git")
            .args(["init", "-q"])
            .arg(dir.path().join("repo"))
            .status()
            .unwrap();
        let p = dir.path().join("saeperf.toml");
        Config::parse(text, &p)
    }

    const OK: &str = "store = \"store\"\n[repository]\npath = \"repo\"\n[[job]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\nbranch = \"main\"\n";

    #[test]
    fn the_untrusted_area_stays_apart_from_the_shared_state() {
        let c = parse(OK).unwrap();
        assert!(c.untrusted_dir.ends_with("store.schedule.untrusted"));
        assert_eq!(c.commands.sandbox, Sandbox::Namespace);
        assert_eq!(
            c.github_api.comment_policy,
            crate::post::CommentPolicy::Always
        );
        for inside in ["store/x", "store.schedule/u"] {
            let e = parse(&format!("untrusted_dir = \"{inside}\"\n{OK}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("must not contain one another"), "{e}");
        }
        let c = parse(&OK.replace(
            "[repository]",
            "[commands]\nsandbox = \"none\"\n[github]\ncomment_policy = \"on-change\"\n[repository]",
        ))
        .unwrap();
        assert_eq!(c.commands.sandbox, Sandbox::None);
        assert_eq!(
            c.github_api.comment_policy,
            crate::post::CommentPolicy::OnChange
        );
        assert!(parse(&OK.replace(
            "[repository]",
            "[commands]\nsandbox = \"off\"\n[repository]"
        ))
        .is_err());
    }

    #[test]
    fn valid_config_and_defaults() {
        let c = parse(OK).unwrap();
        assert_eq!(c.jobs[0].target, Target::Branch("main".into()));
        assert_eq!(c.commands.build, DEFAULT_BUILD);
        assert!(c.state_dir.ends_with("store.schedule"));
        assert_eq!(c.jobs[0].profile, "standard");
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = parse(&OK.replace("0 0 3 * * *", "61 * * * * *"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 6") && e.contains("cron"), "{e}");
        let e = parse(&format!("{OK}colour = 1\n")).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = parse(&OK.replace("path = \"repo\"", "path = \"nope\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("repository.path"), "{e}");
        let e = parse(&OK.replace("branch = \"main\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one of branch"), "{e}");
        assert!(!e.contains('\n'));
    }

    /// A pull-request job; `token_env` names PATH, a variable every test process has (the token's value is never
    /// read here beyond "set and non-empty").
    const PR: &str = "store = \"store\"\n[repository]\npath = \"repo\"\ngithub = \"octo/saeperf\"\n\
        [github]\napi_url = \"http://127.0.0.1:9/api/\"\ntoken_env = \"PATH\"\n\
        [[job]]\nname = \"prs\"\ncron = \"0 0 * * * *\"\npull_requests = { label = \"benchmark\" }\n";

    #[test]
    fn pull_request_jobs() {
        let c = parse(PR).unwrap();
        assert_eq!(
            c.jobs[0].target,
            Target::PullRequests {
                label: "benchmark".into()
            }
        );
        assert_eq!(c.github_api.api_url, "http://127.0.0.1:9/api");
        assert_eq!(c.github_api.token_env, "PATH");
        assert_eq!(c.github_api.status_context, "saeperf");
        // Defaults: the public API and GITHUB_TOKEN (not checked without pull-request jobs).
        let c = parse(OK).unwrap();
        assert_eq!(c.github_api.api_url, DEFAULT_GITHUB_API);
        assert_eq!(c.github_api.token_env, "GITHUB_TOKEN");

        let e = parse(&PR.replace("label = \"benchmark\"", "label = \" \""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 11") && e.contains("pull_requests.label must not be empty"),
            "{e}"
        );
        let e = parse(&PR.replace("github = \"octo/saeperf\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 10") && e.contains("needs repository.github"),
            "{e}"
        );
        let e = parse(&PR.replace("\"PATH\"", "\"SAEPERF_TEST_NO_SUCH_TOKEN_VARIABLE\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 7")
                && e.contains("github.token_env")
                && e.contains("SAEPERF_TEST_NO_SUCH_TOKEN_VARIABLE is not set"),
            "{e}"
        );
        let e = parse(&PR.replace("http://127.0.0.1:9/api/", "ftp://x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 6") && e.contains("github.api_url"), "{e}");
        let e = parse(&PR.replace("label = \"benchmark\"", "label = \"b\", colour = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = parse(&PR.replace(
            "pull_requests = { label = \"benchmark\" }",
            "branch = \"main\"\npull_requests = { label = \"b\" }",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("exactly one of branch"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn cron_forms() {
        assert!(Cron::parse("*/2 * * * * *").is_ok());
        assert!(Cron::parse("0 3 * * MON-FRI").is_ok());
        assert!(Cron::parse("0 3 * * 1")
            .unwrap_err()
            .contains("numeric day-of-week"));
        assert!(Cron::parse("* *").unwrap_err().contains("2 fields"));
    }
}
