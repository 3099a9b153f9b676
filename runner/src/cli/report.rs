//! `runner report comment`, `runner report post` and `runner dashboard`: the comment rendered or posted, the static
//! site built.
//!
//! Posting reads the store first and closes it before any network request (service's `post`: prepare, then send),
//! so a slow or failing GitHub never holds the store's lock, and nothing is ever written to it: a failed post loses
//! nothing and can simply run again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use saeperf_bench::document::ResultMeta;
use saeperf_bench::Suite;
use saeperf_compare::baseline::Baseline;
use saeperf_git::Repo as GitRepo;
use saeperf_report::comment::{self, CommentOptions, CommentRequest};
use saeperf_report::dashboard::{self, DashboardOptions, FeatureAttach};
use saeperf_service::github::{Repo, RetryPolicy};
use saeperf_service::post::{self, PostRequest};
use saeperf_store::{RunState, Store};

use super::open_store;

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Render the pull-request comment (Markdown) for a run and its baseline.
    Comment(CommentArgs),
    /// Post (or update in place) the sticky pull-request comment and set a commit status with the verdict.
    Post(Box<PostArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct CommentArgs {
    /// Head run: run id (or prefix), commit SHA prefix, or `latest` (the newest complete run).
    #[arg(long, default_value = "latest")]
    pub head: String,
    /// Base run (same forms), or `none`. Default: the baseline `runner bench` would pick (the merge base's run on
    /// the same machine, backend and profile), else the newest earlier run of the base branch in the same series.
    #[arg(long)]
    pub base: Option<String>,
    /// The branch pull requests merge into.
    #[arg(long, default_value = "main")]
    pub base_branch: String,
    /// Suite whose regression rules apply (default bench/suite.toml, else the built-in copy).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// Where the dashboard is published (e.g. https://OWNER.github.io/REPO); links are left out without it.
    #[arg(long, env = "SAEPERF_DASHBOARD_URL")]
    pub dashboard_url: Option<String>,
    /// Key of the hidden marker: one sticky comment per key (e.g. one per machine).
    #[arg(long, default_value = "default")]
    pub key: String,
    /// Peak FP32 GFLOP/s of the machine, for the "share of peak" column (GPUs: a built-in table).
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Write the comment to this file instead of stdout.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PostArgs {
    #[command(flatten)]
    pub comment: CommentArgs,
    /// A result bundle's directory (`runner bundle`): its meta.json, read and checked, names the pull request, the
    /// head run and the base run (and replaces --pr, --head and --base).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// The repository, OWNER/NAME.
    #[arg(long, env = "GITHUB_REPOSITORY")]
    pub repo: String,
    /// Pull-request number (default: the one recorded with the head run).
    #[arg(long)]
    pub pr: Option<u64>,
    /// GitHub API base URL (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub api_url: String,
    /// Refuse to post unless both the head run and the pull request's current head are this commit (workflows pass
    /// the SHA of the triggering event, so a result bundle cannot aim at another pull request).
    #[arg(long)]
    pub verify_head: Option<String>,
    /// Context name of the commit status.
    #[arg(long, default_value = "saeperf")]
    pub status_context: String,
    /// Post the comment only, no commit status.
    #[arg(long)]
    pub no_status: bool,
    /// Attempts per request (retries on 5xx and rate limits).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// First retry delay in milliseconds (doubles each time; Retry-After wins when GitHub sends it).
    #[arg(long, default_value_t = 2000)]
    pub retry_delay_ms: u64,
    /// The longest wait for a rate limit, in seconds: a limit that resets later fails at once, saying when to try
    /// again (waiting while limited can get an integration banned).
    #[arg(long, default_value_t = 300)]
    pub max_wait_secs: u64,
    /// The least wait after a secondary rate limit that names no time, in milliseconds (GitHub: a minute).
    #[arg(long, default_value_t = 60_000)]
    pub secondary_wait_ms: u64,
    /// Seconds one request may take before it counts as timed out.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// The login whose comments are the bot's (default: the token's own, from GET /user). A workflow's
    /// GITHUB_TOKEN cannot read GET /user: pass `github-actions[bot]`.
    #[arg(long, env = "SAEPERF_BOT_LOGIN")]
    pub bot_login: Option<String>,
    /// Add this line to the comment (the scheduler says which head was approved, and by whom).
    #[arg(long)]
    pub note: Option<String>,
    /// When to comment: always (create or update), on-change (create only for a regression, improvement, failed
    /// or acknowledged benchmark; update an existing comment always), never (the commit status only).
    #[arg(long, env = "SAEPERF_COMMENT_POLICY", default_value = "always")]
    pub comment_policy: post::CommentPolicy,
    /// Print what was posted as a post document (docs/documents.md) instead of one line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Output directory (created; may already hold an earlier dashboard).
    #[arg(long)]
    pub out: PathBuf,
    /// Branch whose runs make the history of each series.
    #[arg(long, default_value = "main")]
    pub main_branch: String,
    /// Repository web URL for commit links (default from GITHUB_SERVER_URL and GITHUB_REPOSITORY when set).
    #[arg(long)]
    pub repo_url: Option<String>,
    /// Absolute URL the site is published at (for the Atom feed's links).
    #[arg(long)]
    pub site_url: Option<String>,
    /// Newest runs kept per series group.
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    /// Feature contexts from `runner features` to show on a run page: [RUN:]BENCH=FILE (RUN defaults to the newest
    /// run that has BENCH). Repeatable.
    #[arg(long = "features", value_name = "[RUN:]BENCH=FILE")]
    pub features: Vec<String>,
    /// Suite whose regression rules apply.
    #[arg(long)]
    pub suite: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// The comment request of the flags (`--base`: none, a run reference, or the default choice).
fn comment_request(a: &CommentArgs) -> Result<CommentRequest> {
    let base = match a.base.as_deref() {
        None => Baseline::MergeBase,
        Some("none") => Baseline::None,
        Some(spec) => Baseline::Run(spec.to_string()),
    };
    Ok(CommentRequest {
        head: a.head.clone(),
        base,
        base_branch: a.base_branch.clone(),
        options: CommentOptions {
            dashboard_url: a.dashboard_url.clone(),
            key: a.key.clone(),
            peak_gflops: a.peak_gflops,
        },
    })
}

fn rules(suite: Option<&Path>) -> Result<saeperf_compare::rules::Rules> {
    Ok(Suite::load(suite)?.0.rules())
}

pub fn run_report(db: Option<&Path>, cmd: &ReportCmd) -> Result<i32> {
    match cmd {
        ReportCmd::Comment(a) => {
            let req = comment_request(a)?;
            let rules = rules(a.suite.as_deref())?;
            let (c, head) = {
                let store = open_store(db)?;
                comment::for_stored_run(&store, &GitRepo::current(), &rules, &req)?
            };
            match &a.out {
                Some(p) => {
                    std::fs::write(p, &c.body)
                        .with_context(|| format!("writing {}", p.display()))?;
                    eprintln!(
                        "comment for run {} ({}) written to {}",
                        head.id,
                        c.verdict.as_str(),
                        p.display()
                    );
                }
                None => print!("{}", c.body),
            }
            Ok(0)
        }
        ReportCmd::Post(a) => cmd_post(db, a),
    }
}

fn cmd_post(db: Option<&Path>, a: &PostArgs) -> Result<i32> {
    let repo: Repo = a.repo.parse()?;
    let token = std::env::var("GITHUB_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .context("GITHUB_TOKEN is not set: posting needs a token with pull-requests: write and statuses: write")?;
    let mut req = PostRequest {
        comment: comment_request(&a.comment)?,
        repo,
        pr: a.pr,
        api_url: a.api_url.clone(),
        verify_head: a.verify_head.clone(),
        status_context: a.status_context.clone(),
        no_status: a.no_status,
        retry: RetryPolicy {
            attempts: a.attempts.max(1),
            base_delay: Duration::from_millis(a.retry_delay_ms),
            max_wait: Duration::from_secs(a.max_wait_secs),
            secondary_min_wait: Duration::from_millis(a.secondary_wait_ms),
            timeout: Duration::from_secs(a.timeout_secs.max(1)),
        },
        bot_login: a.bot_login.clone(),
        note: a.note.clone(),
        policy: a.comment_policy,
    };
    if let Some(dir) = &a.bundle {
        let p = dir.join("meta.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let meta = ResultMeta::parse(&text).with_context(|| p.display().to_string())?;
        req.pr = Some(meta.pr);
        req.comment.head = meta.head_run.clone();
        req.comment.base = match &meta.base_run {
            Some(r) => Baseline::Run(r.clone()),
            None => Baseline::None,
        };
        match &req.verify_head {
            Some(sha) if sha != &meta.head_sha => anyhow::bail!(
                "{}: the bundle is of commit {}, not {sha} (--verify-head); refusing to post",
                p.display(),
                meta.head_sha
            ),
            Some(_) => {}
            None => req.verify_head = Some(meta.head_sha.clone()),
        }
    }
    let rules = rules(a.comment.suite.as_deref())?;
    // Read everything from the store, then close it before the network.
    let prepared = {
        let store = open_store(db)?;
        post::prepare(&store, &GitRepo::current(), &rules, &req)?
    };
    let doc = post::send(&prepared, &req, &token)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", doc.line());
    }
    Ok(0)
}

fn parse_features(store: &Store, specs: &[String]) -> Result<Vec<FeatureAttach>> {
    specs
        .iter()
        .map(|s| {
            let (target, file) = s
                .split_once('=')
                .with_context(|| format!("--features {s:?}: expected [RUN:]BENCH=FILE"))?;
            let (run, bench) = match target.split_once(':') {
                Some((run, bench)) => (store.resolve(run, &|_| true)?.id, bench.to_string()),
                None => {
                    let m = store
                        .newest(|m| {
                            m.state == RunState::Complete
                                && m.benchmarks.iter().any(|b| b == target)
                        })?
                        .with_context(|| {
                            format!("--features {s:?}: no complete run has benchmark {target:?}")
                        })?;
                    (m.id, target.to_string())
                }
            };
            Ok(FeatureAttach {
                run,
                bench,
                path: PathBuf::from(file),
            })
        })
        .collect()
}

pub fn run_dashboard(db: Option<&Path>, a: &DashboardArgs) -> Result<i32> {
    let rules = rules(a.suite.as_deref())?;
    dashboard::check_out_dir(&a.out)?;
    let repo_url = a.repo_url.clone().or_else(|| {
        let server = std::env::var("GITHUB_SERVER_URL").ok()?;
        let repo = std::env::var("GITHUB_REPOSITORY").ok()?;
        Some(format!("{}/{repo}", server.trim_end_matches('/')))
    });
    let store = open_store(db)?;
    let features = parse_features(&store, &a.features)?;
    for f in &features {
        saeperf_report::features::read(&f.path)?;
    }
    let opt = DashboardOptions {
        out: a.out.clone(),
        title: "saeperf".into(),
        main_branch: a.main_branch.clone(),
        repo_url,
        site_url: a.site_url.clone(),
        limit: a.limit.max(1),
        features,
    };
    let s = dashboard::build(&store, &rules, &opt)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "dashboard: {} pages ({} runs, {} series in {} groups, {} regressions) in {}; open {}",
            s.pages,
            s.runs,
            s.series,
            s.groups,
            s.regressions,
            s.out.display(),
            s.out.join("index.html").display()
        );
    }
    Ok(0)
}
