//! `runner schedule` end to end: a real git repository, the real runner as the "build" of each commit, a real sled
//! store, a schedule firing every 2 seconds, a real local HTTP server receiving the webhook, and SIGTERM; a
//! pull-request job against a local stand-in for the GitHub API (real HTTP) and a local "origin" holding
//! `refs/pull/N/head`. Plus malformed configurations failing at start with one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, git, init_repo};
use crate::report::FakeGitHub;
use crate::store::text;

fn suite(steps: usize, op_samples: usize) -> String {
    format!(
        r#"
name = "tiny"
default_profile = "standard"

[profiles.standard]
steps_scale = 1.0
op_samples = {op_samples}
op_warmup = 1
synthetic_tokens = 2048

[data.synthetic]
kind = "synthetic"
d_in = 16
n_features = 64
active = 3.0
seed = 0

[[train]]
name = "tiny-relu"
data = "synthetic"
arch = "relu"
d_sae = 64
l1 = 3e-3
steps = {steps}
batch = 64
lr = 3e-3
seed = 1
log_every = 10

[shapes.small]
batch = 64
d_in = 16
d_sae = 64

[[op]]
name = "op/encode"
op = "encode"
shape = "small"

[speed]
min_threshold = 100.0
"#
    )
}

fn commit_suite(repo: &Path, s: &str, msg: &str) -> String {
    std::fs::write(repo.join("suite.toml"), s).unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-qm", msg]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A local webhook receiver: records every POST body, answers 200.
fn webhook_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/T000/B000/secret", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut b = vec![0; len];
            if r.read_exact(&mut b).is_ok() {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&b).to_string());
            }
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
    });
    (url, got)
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    config: PathBuf,
}

fn runner(e: &Env) -> Command {
    common::runner(&e.root.join("home"))
}

fn status(e: &Env) -> serde_json::Value {
    let o = runner(e)
        .args(["status", "--json", "--config"])
        .arg(&e.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Attempts (history, oldest first) of a status report.
fn attempts(st: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut v = st["recent"].as_array().unwrap().clone();
    v.reverse();
    v
}

fn wait_for<T>(
    what: &str,
    limit: Duration,
    child: &mut Child,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the scheduler exited while waiting for {what}"
        );
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn setup(hook: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let repo = root.join("repo");
    init_repo(&repo);
    let exe = env!("CARGO_BIN_EXE_runner");
    let config = root.join("saeperf.toml");
    std::fs::write(
        &config,
        format!(
            r#"# the scheduler under test
store = "store"
dashboard_dir = "site"

[repository]
path = "repo"

[commands]
# The "build" of each commit is the runner already built by cargo; a commit holding BROKEN fails to build.
build = "test -x {exe} && ! test -e BROKEN"
bench = "{exe} --db {{db}} bench --json --profile {{profile}} --commit {{commit}} --branch {{branch}} --base-branch {{base_branch}} {{suite_args}}"

[notify]
webhooks = ["{hook}"]
retry_delay_ms = 100

[[job]]
name = "main"
cron = "*/2 * * * * *"
branch = "main"
suite = "suite.toml"
"#
        ),
    )
    .unwrap();
    Env {
        _dir: dir,
        root,
        repo,
        config,
    }
}

#[test]
fn schedule_benchmarks_each_commit_once_notifies_and_stops_cleanly() {
    let (hook, received) = webhook_server();
    let e = setup(&hook);
    let c1 = commit_suite(&e.repo, &suite(60, 8), "first");
    let log = std::fs::File::create(e.root.join("scheduler.log")).unwrap();
    let mut child = runner(&e)
        .args(["--log", "info", "schedule", "--config"])
        .arg(&e.config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sched_log = || std::fs::read_to_string(e.root.join("scheduler.log")).unwrap_or_default();

    // A second scheduler on the same store is refused at once.
    std::thread::sleep(Duration::from_millis(500));
    let o = runner(&e)
        .args(["schedule", "--config"])
        .arg(&e.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("another scheduler"), "{}", text(&o));

    // First commit: benchmarked, no baseline yet.
    let a1 = wait_for(
        "the first commit's run",
        Duration::from_secs(60),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["commit"] == c1.as_str())
        },
    );
    assert_eq!(a1["outcome"], "ok", "{a1}\n{}", sched_log());
    assert!(a1["run_id"].is_string(), "{a1}");

    // Second commit cuts training to 3 steps: quality regresses against the first.
    let c2 = commit_suite(&e.repo, &suite(3, 8), "fewer steps");
    let a2 = wait_for(
        "the second commit's run",
        Duration::from_secs(60),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["commit"] == c2.as_str())
        },
    );
    assert_eq!(a2["outcome"], "regression", "{a2}\n{}", sched_log());
    assert!(
        a2["detail"].as_str().unwrap().contains("tiny-relu mse"),
        "{a2}"
    );
    let body = wait_for("the webhook", Duration::from_secs(10), &mut child, || {
        received.lock().unwrap().first().cloned()
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = v["text"].as_str().unwrap();
    assert!(
        t.contains("regression") && t.contains(&c2[..10]) && t.contains("tiny-relu"),
        "{t}"
    );
    assert!(v["blocks"].is_array());

    // A few more fires: nothing is benchmarked twice, nothing more is notified.
    let fires_before = sched_log().matches(" fire").count();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        sched_log().matches(" fire").count() > fires_before,
        "{}",
        sched_log()
    );
    let st = status(&e);
    let all = attempts(&st);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(received.lock().unwrap().len(), 1);
    // The dashboard was re-rendered (by `runner dashboard`) and the status file sits beside it.
    assert!(e.root.join("site/index.html").is_file(), "{}", sched_log());
    let page = std::fs::read_to_string(e.root.join("site/index.html")).unwrap();
    assert!(
        page.contains("tiny-relu"),
        "the dashboard shows the benchmarks"
    );
    assert!(e.root.join("site/status.json").is_file());
    assert_eq!(st["jobs"][0]["name"], "main");
    assert!(st["jobs"][0]["next_fire"].is_string());
    assert_eq!(st["scheduler_pid"], child.id());

    // A commit that fails to build: recorded with its log, not retried, and the service carries on.
    std::fs::write(e.repo.join("BROKEN"), "x").unwrap();
    let cb = commit_suite(&e.repo, &suite(3, 8), "broken build");
    let ab = wait_for(
        "the broken commit's attempt",
        Duration::from_secs(30),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["commit"] == cb.as_str())
        },
    );
    assert_eq!(ab["outcome"], "build_failed", "{ab}");
    let blog = std::fs::read_to_string(ab["log"].as_str().unwrap()).unwrap();
    assert!(
        blog.contains("build: test -x") && blog.contains("build failed"),
        "{blog}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        attempts(&status(&e)).len(),
        3,
        "a failed build is not retried at every fire"
    );

    // A third commit with a long bench: SIGTERM while it runs.
    std::fs::remove_file(e.repo.join("BROKEN")).unwrap();
    let c3 = commit_suite(&e.repo, &suite(60, 2_000_000), "long");
    let run3 = wait_for(
        "the long bench to start",
        Duration::from_secs(60),
        &mut child,
        || {
            let st = status(&e);
            let cur = &st["current"];
            if cur["commit"] != c3.as_str() {
                return None;
            }
            let log = std::fs::read_to_string(cur["log"].as_str()?).ok()?;
            log.lines()
                .find_map(|l| l.strip_prefix("run "))
                .map(|r| r.split_whitespace().next().unwrap().to_string())
        },
    );
    let wt = e.root.join("store.schedule/worktrees/main");
    assert!(wt.is_dir());
    stop(&mut child, &sched_log);
    assert!(!wt.exists(), "the worktree is removed");
    let st = status(&e);
    assert!(st["current"].is_null());
    assert!(st["scheduler_pid"].is_null());
    let all = attempts(&st);
    assert_eq!(all.len(), 4);
    let last = &all[3];
    assert_eq!(last["outcome"], "interrupted", "{last}");
    assert_eq!(last["run_id"], run3.as_str());

    // The store: two complete runs, and the one incomplete run is exactly the interrupted attempt's.
    let o = runner(&e)
        .arg("--db")
        .arg(e.root.join("store"))
        .args(["db", "check", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["complete"], 2, "{rep}");
    assert_eq!(rep["incomplete"], serde_json::json!([run3]));
    let o = runner(&e)
        .arg("--db")
        .arg(e.root.join("store"))
        .args(["db", "list", "--json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let commits: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit"].as_str().unwrap())
        .collect();
    assert_eq!(
        commits,
        vec![c1.as_str(), c2.as_str(), c3.as_str()],
        "one run per commit"
    );
}

#[test]
fn malformed_configurations_fail_at_start_with_one_line() {
    let e = setup("http://127.0.0.1:9/hook");
    let good = std::fs::read_to_string(&e.config).unwrap();
    let cases = [
        (
            good.replace("*/2 * * * * *", "*/2 * * *"),
            "cron",
            "line 19",
        ),
        (
            good.replace("*/2 * * * * *", "0 99 * * * *"),
            "cron",
            "line 19",
        ),
        (
            format!("{good}colour = \"blue\"\n"),
            "unknown field `colour`",
            "line 22",
        ),
        (
            good.replace("path = \"repo\"", "path = \"no-such-repo\""),
            "repository.path",
            "line 6",
        ),
        (
            good.replace("[repository]\npath = \"repo\"\n", ""),
            "missing field `repository`",
            "",
        ),
        (
            good.replace("branch = \"main\"\n", ""),
            "exactly one of branch",
            "",
        ),
        (
            good.replace("branch = \"main\"", "pull_requests = { label = \"\" }"),
            "pull_requests.label must not be empty",
            "line 20",
        ),
        (
            good.replace(
                "branch = \"main\"",
                "pull_requests = { label = \"benchmark\" }",
            ),
            "pull_requests needs repository.github",
            "line 20",
        ),
        (
            good.replace(
                "path = \"repo\"",
                "path = \"repo\"\ngithub = \"octo/saeperf\"",
            )
            .replace(
                "branch = \"main\"",
                "pull_requests = { label = \"benchmark\" }",
            ) + "[github]\ntoken_env = \"SAEPERF_TEST_UNSET_TOKEN\"\n",
            "SAEPERF_TEST_UNSET_TOKEN is not set",
            "line 24",
        ),
    ];
    for (text_, want, line) in cases {
        std::fs::write(&e.config, &text_).unwrap();
        let o = runner(&e)
            .args(["schedule", "--config"])
            .arg(&e.config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{want}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(want) && err.contains(line),
            "want {want:?} at {line:?}: {err}"
        );
        assert!(err.contains("saeperf.toml"), "{err}");
    }
    // The valid file passes --check.
    std::fs::write(&e.config, &good).unwrap();
    let o = runner(&e)
        .args(["schedule", "--check", "--config"])
        .arg(&e.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("next fire"));
}

/// Stop the scheduler with SIGTERM and wait (at most 10 s) for exit code 0.
fn stop(child: &mut Child, log: &dyn Fn() -> String) {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the scheduler did not stop\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code.code(), Some(0), "{}", log());
}

/// The bot's own comments on the stand-in.
fn bot_comments(gh: &FakeGitHub) -> usize {
    let s = gh.state.lock().unwrap();
    s.comments
        .iter()
        .filter(|c| s.authors.get(&c.0).map(String::as_str) == Some("saeperf-bot"))
        .count()
}

fn pull(number: u64, head: &str, base: &str, labels: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "number": number,
        "title": "Fewer training steps",
        "state": "open",
        "draft": false,
        "labels": labels.iter().map(|l| serde_json::json!({ "name": l })).collect::<Vec<_>>(),
        "head": { "ref": "feature", "sha": head },
        "base": { "ref": "main", "sha": base },
    })
}

#[test]
fn schedule_benchmarks_labelled_pull_requests_and_posts_once() {
    let gh = FakeGitHub::start("octo/saeperf", 5);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // The "GitHub" remote: main with the first suite, and pull request #5 whose head (fewer training steps) exists
    // only as refs/pull/5/head, as on GitHub.
    let origin = root.join("origin");
    init_repo(&origin);
    let c1 = commit_suite(&origin, &suite(60, 8), "first");
    git(&origin, &["checkout", "-qb", "feature"]);
    let c2 = commit_suite(&origin, &suite(3, 8), "fewer steps");
    git(&origin, &["update-ref", "refs/pull/5/head", &c2]);
    git(&origin, &["checkout", "-q", "main"]);
    git(&origin, &["branch", "-qD", "feature"]);
    // --no-local: a plain local clone would hard-link every object, the pull request's head included.
    git(&root, &["clone", "-q", "--no-local", "origin", "repo"]);
    assert!(
        std::process::Command::new("git")
            .current_dir(root.join("repo"))
            .args(["cat-file", "-e", &format!("{c2}^{{commit}}")])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0),
        "the clone does not have the head yet"
    );
    {
        let mut s = gh.state.lock().unwrap();
        s.pr_head = c2.clone();
        // Open, but not labelled yet. Only "maintainer" may write to the repository.
        s.pulls = vec![pull(5, &c2, &c1, &["docs"])];
        s.writers = vec!["maintainer".into()];
    }
    let exe = env!("CARGO_BIN_EXE_runner");
    let config = root.join("saeperf.toml");
    std::fs::write(
        &config,
        format!(
            r#"store = "store"
dashboard_dir = "site"

[repository]
path = "repo"
github = "octo/saeperf"

[github]
api_url = "{api}"
token_env = "SAEPERF_TEST_GH_TOKEN"
attempts = 2
retry_delay_ms = 50

[commands]
# The commit's code must not see the token (pull requests may come from forks). A pull request's build (in the
# sandbox) finds the shared store and the scheduler's state empty, and what it plants there never reaches them.
build = "test -x {exe} && ! test -e BROKEN && test -z \"$SAEPERF_TEST_GH_TOKEN\" && {{ test -z \"$SAEPERF_SANDBOX\" || {{ test ! -e {root}/store/conf && test ! -e {root}/store.schedule/state.json && touch {root}/store/planted && ! touch {root}/repo/planted; }}; }}"
bench = "test -z \"$SAEPERF_TEST_GH_TOKEN\" && {exe} --db {{db}} bench --json --profile {{profile}} --commit {{commit}} --branch {{branch}} --base-branch {{base_branch}} {{suite_args}} {{pr_args}}"

[[job]]
name = "main"
cron = "*/2 * * * * *"
branch = "main"
suite = "suite.toml"

[[job]]
name = "prs"
cron = "*/2 * * * * *"
pull_requests = {{ label = "benchmark" }}
suite = "suite.toml"
"#,
            api = gh.url,
            root = root.display()
        ),
    )
    .unwrap();
    let e = Env {
        _dir: dir,
        root: root.clone(),
        repo: root.join("repo"),
        config,
    };
    // Without the token variable a pull-request job is refused at start.
    let o = runner(&e)
        .env_remove("SAEPERF_TEST_GH_TOKEN")
        .args(["schedule", "--config"])
        .arg(&e.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("SAEPERF_TEST_GH_TOKEN is not set"),
        "{}",
        text(&o)
    );

    let log = std::fs::File::create(root.join("scheduler.log")).unwrap();
    let mut child = runner(&e)
        .env("SAEPERF_TEST_GH_TOKEN", "test-token")
        .args(["--log", "info", "schedule", "--config"])
        .arg(&e.config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sched_log = || std::fs::read_to_string(root.join("scheduler.log")).unwrap_or_default();
    let listings = || {
        gh.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.method == "GET" && r.url.starts_with("/repos/octo/saeperf/pulls?"))
            .count()
    };

    // main is benchmarked; the unlabelled pull request is listed but left alone.
    let a1 = wait_for("main's run", Duration::from_secs(60), &mut child, || {
        attempts(&status(&e))
            .into_iter()
            .find(|a| a["commit"] == c1.as_str())
    });
    assert_eq!(a1["outcome"], "ok", "{a1}\n{}", sched_log());
    let n = listings();
    wait_for(
        "another listing",
        Duration::from_secs(10),
        &mut child,
        || (listings() > n).then_some(()),
    );
    assert!(attempts(&status(&e)).iter().all(|a| a["job"] == "main"));
    assert!(gh.state.lock().unwrap().comments.is_empty());

    // Labelled by a maintainer after the head was seen (GitHub compares labels case-insensitively): the head is
    // approved, fetched, benchmarked in the sandbox against the merge base's run, and reported on the pull request.
    {
        let mut s = gh.state.lock().unwrap();
        s.label_events.push((
            "maintainer".into(),
            "Benchmark".into(),
            chrono::Utc::now().to_rfc3339(),
        ));
        s.pulls = vec![pull(5, &c2, &c1, &["docs", "Benchmark"])];
    }
    let a2 = wait_for(
        "the pull request's run",
        Duration::from_secs(60),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["commit"] == c2.as_str())
        },
    );
    assert_eq!(a2["outcome"], "regression", "{a2}\n{}", sched_log());
    assert_eq!(a2["job"], "prs");
    assert_eq!(a2["pr"], 5);
    assert_eq!(a2["branch"], "feature");
    let detail = a2["detail"].as_str().unwrap();
    assert!(
        detail.contains("tiny-relu mse") && detail.contains("posted to #5 (regression)"),
        "{detail}"
    );
    let run2 = a2["run_id"].as_str().unwrap().to_string();
    {
        let s = gh.state.lock().unwrap();
        assert_eq!(s.comments.len(), 1, "{:?}", s.comments);
        let body = &s.comments[0].1;
        assert!(
            body.contains("saeperf-report:saeperf/prs"),
            "the job's marker: {body}"
        );
        assert!(body.contains(&c2[..7]), "{body}");
        assert!(
            body.contains(&c1[..7]),
            "the merge base is the baseline: {body}"
        );
        assert!(body.to_lowercase().contains("regression"), "{body}");
        assert!(
            body.contains(&format!(
                "Benchmarked {}, approved by @maintainer (label benchmark",
                &c2[..7]
            )),
            "{body}"
        );
        assert_eq!(s.statuses.len(), 1);
        assert_eq!(s.statuses[0].0, c2);
        assert_eq!(s.statuses[0].1["state"], "failure");
        assert_eq!(s.statuses[0].1["context"], "saeperf/prs");
        assert!(s
            .requests
            .iter()
            .all(|r| r.auth.as_deref() == Some("Bearer test-token")));
    }
    git(&e.repo, &["cat-file", "-e", "refs/saeperf/pull/5"]);
    // The pull request's build planted files in the shared store and the clone: neither is there.
    assert!(!root.join("store/planted").exists());
    assert!(!root.join("repo/planted").exists());

    // More fires: the head is not benchmarked again and nothing more is posted.
    let n = listings();
    wait_for(
        "two more listings",
        Duration::from_secs(15),
        &mut child,
        || (listings() >= n + 2).then_some(()),
    );
    let all = attempts(&status(&e));
    assert_eq!(all.len(), 2, "{all:?}");
    {
        let s = gh.state.lock().unwrap();
        assert_eq!(s.comments.len(), 1);
        assert_eq!(s.statuses.len(), 1);
        assert!(!s.requests.iter().any(|r| r.method == "PATCH"));
    }

    // The dashboard has the status page, linked from the index, with the pull request's run linked.
    let index = std::fs::read_to_string(root.join("site/index.html"))
        .unwrap()
        .replace("&#x2f;", "/");
    assert!(index.contains("href=\"status.html\""), "nav link");
    // (The template engine writes `/` in attributes as `&#x2f;`.)
    let page = std::fs::read_to_string(root.join("site/status.html"))
        .unwrap()
        .replace("&#x2f;", "/");
    assert!(page.contains("The scheduler is running"), "{page}");
    assert!(page.contains("pull requests labelled benchmark"), "{page}");
    assert!(
        page.contains(&format!("runs/{run2}.html"))
            && root.join(format!("site/runs/{run2}.html")).is_file(),
        "{page}"
    );
    assert!(page.contains("status-logs/"), "log links: {page}");

    // A maintainer acknowledges the regression on the pull request (a drive-by's ack is ignored): it is recorded in
    // the store, the comment is posted again, and the status turns to success, marked acknowledged.
    {
        let mut s = gh.state.lock().unwrap();
        s.comments
            .push((40, "/saeperf ack tiny-relu mse I approve".into()));
        s.authors.insert(40, "drive-by".into());
        for (id, m) in [
            (41, "mse"),
            (42, "fvu"),
            (43, "fve"),
            (44, "l0"),
            (45, "cossim"),
            (46, "explained_variance"),
        ] {
            s.comments.push((
                id,
                format!("/saeperf ack tiny-relu {m} fewer steps on purpose"),
            ));
            s.authors.insert(id, "maintainer".into());
        }
    }
    let t = Instant::now();
    let st = loop {
        let found = {
            let s = gh.state.lock().unwrap();
            s.statuses
                .iter()
                .find(|x| x.0 == c2 && x.1["state"] == "success")
                .map(|x| x.1.clone())
        };
        if let Some(st) = found {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for the acknowledged status\n{}",
            sched_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        st["description"].as_str().unwrap().contains("acknowledged"),
        "{st}"
    );
    {
        let s = gh.state.lock().unwrap();
        let body = &s.comments.iter().find(|c| c.0 == 1001).unwrap().1;
        assert!(
            body.contains("fewer steps on purpose") && body.contains("maintainer"),
            "{body}"
        );
        assert!(!body.contains("I approve"), "{body}");
    }
    let triage = runner(&e)
        .arg("--db")
        .arg(root.join("store"))
        .args(["triage", "list", "--json"])
        .output()
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&triage.stdout).unwrap();
    let t = t.as_array().unwrap();
    assert_eq!(t.len(), 6, "{t:?}");
    assert_eq!(t[0]["by"], "maintainer");
    assert_eq!(t[0]["run"], run2.as_str());

    // A new head whose post is refused (GitHub still reports the old head: --verify-head) is recorded as a failed
    // post; once GitHub agrees, the next fire posts it without benchmarking it again.
    git(&origin, &["checkout", "-qb", "feature2", &c2]);
    let c3 = commit_suite(&origin, &suite(4, 8), "four steps");
    git(&origin, &["update-ref", "refs/pull/5/head", &c3]);
    git(&origin, &["checkout", "-q", "main"]);
    gh.state.lock().unwrap().pulls = vec![pull(5, &c3, &c1, &["benchmark"])];
    // A new push needs a new approval: the label's event is older than the head. It waits, saying so.
    let pending = wait_for(
        "the pending status",
        Duration::from_secs(30),
        &mut child,
        || {
            let s = gh.state.lock().unwrap();
            s.statuses
                .iter()
                .find(|x| x.0 == c3 && x.1["state"] == "pending")
                .map(|x| x.1.clone())
        },
    );
    assert!(
        pending["description"].as_str().unwrap().contains(&format!(
            "waiting for a maintainer's approval of {}",
            &c3[..7]
        )),
        "{pending}"
    );
    // `/saeperf bench` from someone without write permission is ignored.
    {
        let mut s = gh.state.lock().unwrap();
        s.comments.push((50, "/saeperf bench".into()));
        s.authors.insert(50, "drive-by".into());
        s.created.insert(50, chrono::Utc::now().to_rfc3339());
    }
    let n = listings();
    wait_for(
        "two more listings",
        Duration::from_secs(15),
        &mut child,
        || (listings() >= n + 2).then_some(()),
    );
    assert!(
        attempts(&status(&e))
            .iter()
            .all(|a| a["commit"] != c3.as_str()),
        "not benchmarked without approval"
    );
    assert!(gh
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|r| r.url == "/repos/octo/saeperf/collaborators/drive-by/permission"));
    // The maintainer's `/saeperf bench` approves it.
    {
        let mut s = gh.state.lock().unwrap();
        s.comments.push((51, "/saeperf bench\nplease".into()));
        s.authors.insert(51, "maintainer".into());
        s.created.insert(51, chrono::Utc::now().to_rfc3339());
    }
    let a3 = wait_for(
        "the new head's run",
        Duration::from_secs(60),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["commit"] == c3.as_str())
        },
    );
    assert_eq!(a3["outcome"], "github_failed", "{a3}\n{}", sched_log());
    let detail = a3["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "benchmarked (run {} stored",
            a3["run_id"].as_str().unwrap()
        )) && detail.contains("posting to #5 failed")
            && detail.contains("refusing to post"),
        "{detail}"
    );
    let run3 = a3["run_id"].as_str().unwrap().to_string();
    gh.state.lock().unwrap().pr_head = c3.clone();
    let a4 = wait_for(
        "the repeated post",
        Duration::from_secs(30),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["commit"] == c3.as_str() && a["outcome"] != "github_failed")
        },
    );
    // (A fire may come between the failure and the fix: every failed post names the same run.)
    for a in attempts(&status(&e))
        .iter()
        .filter(|a| a["commit"] == c3.as_str() && a["outcome"] == "github_failed")
    {
        assert_eq!(a["run_id"], run3.as_str(), "{a}");
    }
    // The new head is at the acknowledged level: the acks carry over from the acknowledged run (its baseline, the
    // merge base, is older than the acks), so it is not flagged again.
    assert_eq!(a4["outcome"], "ok", "{a4}\n{}", sched_log());
    assert!(
        a4["detail"].as_str().unwrap().contains("(acknowledged)"),
        "{a4}"
    );
    assert_eq!(a4["run_id"], run3.as_str(), "posted, not benchmarked again");
    {
        let s = gh.state.lock().unwrap();
        let bot: Vec<_> = s
            .comments
            .iter()
            .filter(|c| s.authors.get(&c.0).map(String::as_str) == Some("saeperf-bot"))
            .collect();
        assert_eq!(bot.len(), 1, "the sticky comment is updated in place");
        assert!(bot[0].1.contains(&c3[..7]));
        assert!(
            bot[0]
                .1
                .contains("approved by @maintainer (comment /saeperf bench"),
            "{}",
            bot[0].1
        );
        // (The acknowledgement's post and this one.)
        assert_eq!(s.requests.iter().filter(|r| r.method == "PATCH").count(), 2);
        let done: Vec<_> = s
            .statuses
            .iter()
            .filter(|x| x.1["state"] != "pending")
            .collect();
        assert_eq!(done.len(), 3);
        assert_eq!(done[2].0, c3);
    }
    let o = runner(&e)
        .arg("--db")
        .arg(root.join("store"))
        .args(["db", "list", "--json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let commits: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit"].as_str().unwrap())
        .collect();
    assert_eq!(commits, vec![c1.as_str(), c2.as_str(), c3.as_str()]);
    assert_eq!(runs[1]["pr"], 5, "{}", runs[1]);

    // A head that fails to build: recorded with its log, and an `error` status on the commit (no run, no comment).
    git(&origin, &["checkout", "-qb", "feature3", &c1]);
    std::fs::write(origin.join("BROKEN"), "x").unwrap();
    let cb = commit_suite(&origin, &suite(5, 8), "broken");
    git(&origin, &["update-ref", "refs/pull/5/head", &cb]);
    git(&origin, &["checkout", "-q", "main"]);
    {
        // Approved by a comment that names the head (whenever it was written).
        let mut s = gh.state.lock().unwrap();
        s.pr_head = cb.clone();
        s.pulls = vec![pull(5, &cb, &c1, &["benchmark"])];
        s.comments
            .push((52, format!("/saeperf bench {}", &cb[..9])));
        s.authors.insert(52, "maintainer".into());
        s.created.insert(52, "2020-01-01T00:00:00Z".into());
    }
    let st = wait_for(
        "the failure status",
        Duration::from_secs(30),
        &mut child,
        || {
            let s = gh.state.lock().unwrap();
            s.statuses.iter().find(|x| x.0 == cb).map(|x| x.1.clone())
        },
    );
    assert_eq!(st["state"], "error", "{st}");
    assert_eq!(st["context"], "saeperf/prs", "{st}");
    assert!(
        st["description"]
            .as_str()
            .unwrap()
            .starts_with("build failed"),
        "{st}"
    );
    let ab = attempts(&status(&e))
        .into_iter()
        .find(|a| a["commit"] == cb.as_str())
        .unwrap();
    assert_eq!(ab["outcome"], "build_failed", "{ab}");
    assert_eq!(bot_comments(&gh), 1);

    // GitHub failing: the listing is recorded as a failed attempt, and the service carries on.
    gh.state.lock().unwrap().always = Some(502);
    let af = wait_for(
        "a failed listing",
        Duration::from_secs(20),
        &mut child,
        || {
            attempts(&status(&e))
                .into_iter()
                .find(|a| a["outcome"] == "github_failed" && a["commit"] == "")
        },
    );
    assert_eq!(af["job"], "prs");
    assert!(af["detail"].as_str().unwrap().contains("502"), "{af}");
    gh.state.lock().unwrap().always = None;

    stop(&mut child, &sched_log);
    let st = status(&e);
    assert!(st["current"].is_null());
    let page = std::fs::read_to_string(root.join("site/status.html")).unwrap();
    assert!(page.contains("No scheduler is running"), "{page}");
    assert_eq!(bot_comments(&gh), 1);
}

/// The scheduler reads a bench's result only through its document: a bench that exits "regression" but prints
/// something that is not a bench document is recorded as `bench crashed` with the reader's one line, and nothing is
/// notified or stored on its account.
#[test]
fn a_malformed_bench_document_is_one_line_and_nothing_follows() {
    let (hook, received) = webhook_server();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let repo = root.join("repo");
    init_repo(&repo);
    commit_suite(&repo, &suite(10, 2), "first");
    let config = root.join("saeperf.toml");
    std::fs::write(
        &config,
        format!(
            r#"store = "store"
[repository]
path = "repo"
[commands]
build = "true"
bench = "echo '{{\"document\": \"bench\", \"version\": 1, \"run\": 3}}'; exit 2"
[notify]
webhooks = ["{hook}"]
retry_delay_ms = 100
[[job]]
name = "main"
cron = "* * * * * *"
branch = "main"
"#
        ),
    )
    .unwrap();
    let e = Env {
        _dir: dir,
        root,
        repo,
        config,
    };
    let log = std::fs::File::create(e.root.join("scheduler.log")).unwrap();
    let mut child = runner(&e)
        .args(["schedule", "--config"])
        .arg(&e.config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sched_log = || std::fs::read_to_string(e.root.join("scheduler.log")).unwrap_or_default();
    let a = wait_for(
        "the attempt with a malformed document",
        Duration::from_secs(30),
        &mut child,
        || attempts(&status(&e)).into_iter().next(),
    );
    stop(&mut child, &sched_log);
    assert_eq!(a["outcome"], "bench_crashed", "{a}");
    let detail = a["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("the bench printed no result: not a saeperf bench document: "),
        "{detail}"
    );
    assert!(!detail.contains('\n'));
    assert!(a["run_id"].is_null(), "{a}");
    assert!(received.lock().unwrap().is_empty(), "nothing is notified");
    let o = runner(&e)
        .arg("--db")
        .arg(e.root.join("store"))
        .args(["db", "list", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs, serde_json::json!([]), "nothing is stored");
}
