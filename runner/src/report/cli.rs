//! Command-line faces of the reports: `runner report comment`, `runner report post` and `runner dashboard`.
//! cli.rs only declares the subcommands (the Args types here) and calls [`run_report`] and [`run_dashboard`].
//!
//! Posting reads the store first and closes it before any network request, so a slow or failing GitHub never holds
//! the store's lock, and nothing is ever written to it: a failed post loses nothing and can simply run again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::comment::{self, CommentOptions};
use super::dashboard::{self, DashboardOptions, FeatureAttach};
use crate::compare::{self, same_series, Verdict};
use crate::github::{GitHub, Repo, RetryPolicy, StatusState};
use crate::store::{RunMeta, RunState, Store};
use crate::suite::Suite;

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Render the pull-request comment (Markdown) for a run and its baseline.
    Comment(CommentArgs),
    /// Post (or update in place) the sticky pull-request comment and set a commit status with the verdict.
    Post(PostArgs),
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

/// The rendered comment and what it was made from.
struct Rendered {
    body: String,
    verdict: Verdict,
    head: RunMeta,
    headline: String,
}

fn render_comment(store: &Store, a: &CommentArgs) -> Result<Rendered> {
    let (suite, _) = Suite::load(a.suite.as_deref())?;
    let rules = suite.rules();
    let head_meta = store.resolve(&a.head, &|_| true)?;
    if head_meta.state != RunState::Complete {
        bail!(
            "run {} is incomplete (cut off before it finished); there is nothing to report",
            head_meta.id
        );
    }
    let (base_meta, why) = match a.base.as_deref() {
        Some("none") => (None, Some("--base none".to_string())),
        Some(spec) => {
            let m = store.resolve(spec, &|m: &RunMeta| {
                same_series(m, &head_meta) && m.id != head_meta.id
            })?;
            (Some(m), None)
        }
        None => {
            let choice = crate::bench::find_baseline(store, &head_meta, &a.base_branch)?;
            match choice.run {
                Some(id) => (store.run_meta(&id)?, Some(choice.why)),
                None => {
                    // Outside the repository (e.g. a workflow that only has the result bundle): the newest earlier
                    // run of the base branch in the same series.
                    let runs = store.list_runs()?;
                    let fallback = runs.into_iter().rev().find(|m| {
                        m.state == RunState::Complete
                            && m.id != head_meta.id
                            && same_series(m, &head_meta)
                            && m.branch.as_deref() == Some(a.base_branch.as_str())
                            && (m.started_at, &m.id) < (head_meta.started_at, &head_meta.id)
                    });
                    match fallback {
                        Some(m) => (
                            Some(m),
                            Some(format!(
                                "newest earlier run of {} on this machine, backend and profile",
                                a.base_branch
                            )),
                        ),
                        None => (None, Some(choice.why)),
                    }
                }
            }
        }
    };
    let head = store.load_run(&head_meta.id)?;
    let (base, cmp) = match &base_meta {
        Some(b) => (
            Some(store.load_run(&b.id)?),
            Some(compare::compare_stored(store, b, &head_meta, &rules, true)?),
        ),
        None => (None, None),
    };
    let opt = CommentOptions {
        dashboard_url: a.dashboard_url.clone(),
        key: a.key.clone(),
        peak_gflops: a.peak_gflops,
    };
    let body = comment::render(&head, base.as_ref(), cmp.as_ref(), why.as_deref(), &opt)?;
    let verdict = match &cmp {
        Some(c) => c.overall,
        None if head.results.iter().any(|r| !r.status.is_ok()) => Verdict::Failed,
        None => Verdict::New,
    };
    let headline = body
        .lines()
        .next()
        .unwrap_or_default()
        .replace("**", "")
        .chars()
        .filter(|c| c.is_ascii() || c.is_alphanumeric() || *c == '—' || *c == '·')
        .collect::<String>()
        .trim()
        .to_string();
    Ok(Rendered {
        body,
        verdict,
        head: head_meta,
        headline,
    })
}

pub fn run_report(db: Option<&std::path::Path>, cmd: &ReportCmd) -> Result<i32> {
    match cmd {
        ReportCmd::Comment(a) => {
            let r = {
                let store = crate::store_cli::open_store(db)?;
                render_comment(&store, a)?
            };
            match &a.out {
                Some(p) => {
                    std::fs::write(p, &r.body)
                        .with_context(|| format!("writing {}", p.display()))?;
                    eprintln!(
                        "comment for run {} ({}) written to {}",
                        r.head.id,
                        r.verdict.as_str(),
                        p.display()
                    );
                }
                None => print!("{}", r.body),
            }
            Ok(0)
        }
        ReportCmd::Post(a) => post(db, a),
    }
}

fn post(db: Option<&std::path::Path>, a: &PostArgs) -> Result<i32> {
    let repo: Repo = a.repo.parse()?;
    let token = std::env::var("GITHUB_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .context("GITHUB_TOKEN is not set: posting needs a token with pull-requests: write and statuses: write")?;
    // Read everything from the store, then close it before the network.
    let r = {
        let store = crate::store_cli::open_store(db)?;
        render_comment(&store, &a.comment)?
    };
    let pr =
        a.pr.or(r.head.pr)
            .with_context(|| format!("run {} records no pull request; pass --pr", r.head.id))?;
    if let Some(sha) = &a.verify_head {
        if r.head.commit.as_deref() != Some(sha.as_str()) {
            bail!(
                "run {} is of commit {}, not {sha} (--verify-head); refusing to post",
                r.head.id,
                r.head.commit.as_deref().unwrap_or("none")
            );
        }
    }
    let marker = super::marker(&a.comment.key);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let retry = RetryPolicy {
        attempts: a.attempts.max(1),
        base_delay: Duration::from_millis(a.retry_delay_ms),
        max_delay: Duration::from_secs(120),
    };
    let outcome = rt.block_on(async {
        let gh = GitHub::new(&a.api_url, &token, retry)?;
        if let Some(sha) = &a.verify_head {
            let head = gh.pull_head_sha(&repo, pr).await?;
            if &head != sha {
                anyhow::bail!(
                    "pull request #{pr} of {}/{} is at {head}, not {sha} (--verify-head); refusing to post",
                    repo.owner,
                    repo.name
                );
            }
        }
        let c = gh.upsert_comment(&repo, pr, &r.body, &marker).await?;
        if !a.no_status {
            match r.head.commit.as_deref() {
                Some(sha) => {
                    let state = match r.verdict {
                        Verdict::Regression | Verdict::Failed => StatusState::Failure,
                        _ => StatusState::Success,
                    };
                    let target = a
                        .comment
                        .dashboard_url
                        .as_deref()
                        .map(|u| format!("{}/runs/{}.html", u.trim_end_matches('/'), super::slug(&r.head.id)))
                        .or_else(|| c.url.clone());
                    gh.set_status(&repo, sha, state, &a.status_context, &r.headline, target.as_deref())
                        .await?;
                }
                None => tracing::warn!("run {} has no commit: no commit status set", r.head.id),
            }
        }
        Ok::<_, anyhow::Error>(c)
    })?;
    println!(
        "{:?} comment {} on {}/{}#{pr}{} ({})",
        outcome.action,
        outcome.id,
        repo.owner,
        repo.name,
        outcome.url.map(|u| format!(" {u}")).unwrap_or_default(),
        r.verdict.as_str()
    );
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
                        .list_runs()?
                        .into_iter()
                        .rev()
                        .find(|m| {
                            m.state == RunState::Complete
                                && m.benchmarks.iter().any(|b| b == target)
                        })
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

pub fn run_dashboard(db: Option<&std::path::Path>, a: &DashboardArgs) -> Result<i32> {
    let (suite, _) = Suite::load(a.suite.as_deref())?;
    let rules = suite.rules();
    dashboard::check_out_dir(&a.out)?;
    let repo_url = a.repo_url.clone().or_else(|| {
        let server = std::env::var("GITHUB_SERVER_URL").ok()?;
        let repo = std::env::var("GITHUB_REPOSITORY").ok()?;
        Some(format!("{}/{repo}", server.trim_end_matches('/')))
    });
    let store = crate::store_cli::open_store(db)?;
    let features = parse_features(&store, &a.features)?;
    for f in &features {
        super::features::read(&f.path)?;
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
