//! Pull-request reports: the comment rendered by the real binary from a real sled store (snapshot-tested), and
//! `runner report post` against a local HTTP server that implements the GitHub REST endpoints used and records every
//! request (create, update in place, retries on 5xx and rate limits, a persistent failure that loses nothing).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use saeperf_store::schema::{BenchKind, BenchStatus, CurvePoint};
use saeperf_store::Fingerprint;
use saeperf_store::{BenchResult, Run, RunBackend, RunMeta, RunState, Store};

use crate::common;

/// A fixed machine so that rendered output does not depend on where the test runs.
pub fn test_fingerprint() -> Fingerprint {
    Fingerprint {
        cpu_model: "Test CPU 9000".into(),
        cpu_cores: 2,
        os: "linux".into(),
        kernel: Some("6.1.0-test".into()),
        gpus: vec![],
        rustc: "rustc 1.95.0 (test)".into(),
    }
}

pub fn meta(id: &str, minutes: i64, commit: &str, branch: &str, pr: Option<u64>) -> RunMeta {
    let fp = test_fingerprint();
    let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
        + chrono::Duration::minutes(minutes);
    RunMeta {
        id: id.into(),
        state: RunState::Incomplete,
        commit: Some(commit.into()),
        branch: Some(branch.into()),
        pr,
        dirty: false,
        started_at: t,
        finished_at: Some(t + chrono::Duration::minutes(3)),
        fingerprint_id: fp.id(),
        fingerprint: fp,
        backend: RunBackend::Cpu,
        suite: "saeperf".into(),
        profile: "quick".into(),
        suite_hash: "5ca1ab1e".repeat(8),
        activation_sets: BTreeMap::from([("synthetic".to_string(), "ab".repeat(32))]),
        benchmarks: vec![],
        runner_version: "0.1.0".into(),
        skipped: Default::default(),
    }
}

/// Deterministic samples around `center` (±1%).
fn samples(center: f64, n: usize, phase: usize) -> Vec<f64> {
    (0..n)
        .map(|i| center * (1.0 + 0.01 * (((i * 7 + phase * 3) % 11) as f64 / 5.0 - 1.0)))
        .collect()
}

/// Knobs for one synthetic run.
#[derive(Clone, Copy)]
pub struct Knobs {
    pub encode_time: f64,
    pub mse: f64,
    pub fve: f64,
    pub dense_spike: u64,
    pub phase: usize,
    pub topk_failed: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            encode_time: 1.0e-3,
            mse: 0.0200,
            fve: 0.90,
            dense_spike: 0,
            phase: 0,
            topk_failed: false,
        }
    }
}

pub fn results(k: Knobs) -> Vec<BenchResult> {
    let mut counts = vec![0u64; 28];
    for (i, c) in counts.iter_mut().enumerate().take(22).skip(8) {
        *c = (40.0 * (-((i as f64 - 15.0) / 3.0).powi(2)).exp()).round() as u64;
    }
    counts[26] += k.dense_spike;
    let hist = serde_json::json!({ "lo": -7.0, "width": 0.25, "counts": counts, "dead": 17 });
    let phases = |scale: f64| {
        serde_json::json!({
            "encode": 8.0 * k.encode_time / 1.0e-3 * scale,
            "decode": 2.0 * scale,
            "backward": 5.0 * scale,
            "optimizer": 3.0,
            "other": 1.0,
        })
    };
    let train = |name: &str, mse: f64, fve: f64, seedish: f64| BenchResult {
        name: name.into(),
        kind: BenchKind::Train,
        status: BenchStatus::Ok,
        samples: vec![12.0 + seedish],
        yardstick: vec![],
        metrics: BTreeMap::from([
            ("mse".to_string(), mse),
            ("l0".to_string(), 11.5 + seedish),
            ("fve".to_string(), fve),
            ("dead_fraction".to_string(), 0.033),
            (
                "dense_fraction".to_string(),
                0.002 + k.dense_spike as f64 / 512.0,
            ),
            ("mmcs".to_string(), 0.91),
            ("tokens_per_sec".to_string(), 52_000.0),
        ]),
        metric_seeds: BTreeMap::new(),
        deterministic: true,
        curve: (0..20)
            .map(|s| CurvePoint {
                step: s * 25,
                loss: 1.0 / (1.0 + s as f64 * 0.3) + mse,
                mse: 0.8 / (1.0 + s as f64 * 0.3) + mse,
                l0: 60.0 / (1.0 + s as f64 * 0.2) + 10.0,
            })
            .collect(),
        extra: serde_json::json!({
            "tokens_per_sec": 52_000.0 * (1.0 - seedish / 100.0),
            "density_histogram": hist,
            "train_backend": "cpu",
            // The encoder's share of a step follows the encode knob, so a slower encode names its phase.
            "phase_ms": phases(1.5),
            "steady_phase_ms": phases(1.0),
        }),
    };
    let op = |name: &str, center: f64, flops: Option<f64>| BenchResult {
        name: name.into(),
        kind: BenchKind::Op,
        status: BenchStatus::Ok,
        samples: samples(center, 20, k.phase),
        yardstick: samples(2.0e-3, 20, k.phase + 1),
        metrics: BTreeMap::new(),
        metric_seeds: BTreeMap::new(),
        deterministic: true,
        curve: vec![],
        extra: serde_json::json!({ "op": name.trim_start_matches("op/"), "dense_flops": flops }),
    };
    let mut topk = train("topk", 0.018, 0.92, 0.5);
    if k.topk_failed {
        topk.status = BenchStatus::Diverged("loss diverged at step 40 (NaN)".into());
        topk.metrics.clear();
        topk.curve.clear();
        topk.samples.clear();
    }
    vec![
        train("relu-l1", k.mse, k.fve, 0.0),
        topk,
        op("op/encode", k.encode_time, Some(2.0 * 256.0 * 64.0 * 512.0)),
        op("op/decode", 0.9e-3, Some(2.0 * 256.0 * 64.0 * 512.0)),
        op("op/adam", 0.3e-3, None),
    ]
}

pub fn commit(store: &Store, m: RunMeta, k: Knobs) {
    store.begin_run(&m).unwrap();
    store
        .commit_run(&Run {
            meta: m,
            results: results(k),
        })
        .unwrap();
}

/// A store with a base run on main and a PR head that is slower, worse in quality and better in fve.
fn two_run_store(dir: &Path) {
    let store = Store::open(dir).unwrap();
    commit(
        &store,
        meta("20260101T000000-base01", 0, &"a".repeat(40), "main", None),
        Knobs::default(),
    );
    commit(
        &store,
        meta(
            "20260101T010000-head01",
            60,
            &"b".repeat(40),
            "feature/<b>faster</b>|x",
            Some(7),
        ),
        Knobs {
            encode_time: 1.3e-3,
            mse: 0.0230,
            fve: 0.93,
            phase: 2,
            ..Knobs::default()
        },
    );
}

#[test]
fn comment_shows_verdict_changes_and_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    two_run_store(&db);
    let out = common::ok(
        common::runner(tmp.path())
            .arg("--db")
            .arg(&db)
            .args([
                "report",
                "comment",
                "--head",
                "20260101T010000-head01",
                "--base",
                "20260101T000000-base01",
            ])
            .args(["--dashboard-url", "https://example.test/saeperf/"]),
    );
    // The first line is the verdict; the marker makes the comment findable; external strings are escaped.
    let first = out.lines().next().unwrap();
    assert!(first.contains("regression"), "{first}");
    assert!(out.trim_end().ends_with("<!-- saeperf-report:default -->"));
    assert!(
        out.contains("feature/&lt;b&gt;faster&lt;/b&gt;\\|x"),
        "branch not escaped:\n{out}"
    );
    assert!(!out.contains("<b>faster"));
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\d{8}T\d{6}-[0-9a-z]{6}", "[RUN]");
    settings.add_filter(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "[TIME]");
    settings.add_filter(r"\b[0-9a-f]{16}\b", "[HASH]");
    settings.add_filter(r"p=\d\.\d+e-?\d+", "p=[P]");
    settings.add_filter(r"\d+\.\d+ s\b", "[DURATION]");
    settings.set_snapshot_path("snapshots");
    settings.bind(|| insta::assert_snapshot!("pr_comment", out));

    // A failed benchmark in the head wins over everything; no baseline at all still renders.
    let store = Store::open(&db).unwrap();
    commit(
        &store,
        meta(
            "20260101T020000-head02",
            120,
            &"c".repeat(40),
            "feature/y",
            Some(8),
        ),
        Knobs {
            topk_failed: true,
            ..Knobs::default()
        },
    );
    drop(store);
    let out = common::ok(common::runner(tmp.path()).arg("--db").arg(&db).args([
        "report",
        "comment",
        "--head",
        "20260101T020000-head02",
        "--base",
        "20260101T000000-base01",
    ]));
    assert!(
        out.lines().next().unwrap().contains("1 benchmark failed"),
        "{out}"
    );
    assert!(out.contains("diverged: loss diverged at step 40"));
    let out = common::ok(common::runner(tmp.path()).arg("--db").arg(&db).args([
        "report",
        "comment",
        "--head",
        "20260101T000000-base01",
        "--base",
        "none",
    ]));
    assert!(out.lines().next().unwrap().contains("no baseline"), "{out}");
}

/// A `kernels/resources` result with `n` register metrics, kernel i having `regs(i)` registers.
fn resources_result(n: usize, regs: impl Fn(usize) -> f64) -> BenchResult {
    BenchResult {
        name: "kernels/resources".into(),
        kind: BenchKind::Resources,
        status: BenchStatus::Ok,
        samples: vec![],
        yardstick: vec![],
        metrics: (0..n)
            .map(|i| {
                (
                    format!("kernel.sm_90.kernel_number_{i:04}.registers"),
                    regs(i),
                )
            })
            .collect(),
        metric_seeds: BTreeMap::new(),
        deterministic: true,
        curve: vec![],
        extra: serde_json::Value::Null,
    }
}

/// The dashboard index folds a benchmark with many series (every kernel's resources) under one line, but a series
/// of it that regressed stays in the main table where people look.
#[test]
fn dashboard_index_folds_quiet_series_of_a_large_benchmark() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let store = Store::open(&db).unwrap();
    for (id, minutes, c, bump) in [
        ("20260101T000000-base01", 0, "a", 0.0),
        ("20260101T010000-head01", 60, "b", 64.0),
    ] {
        let m = meta(id, minutes, &c.repeat(40), "main", None);
        store.begin_run(&m).unwrap();
        let mut results = results(Knobs::default());
        results.push(resources_result(20, |i| {
            64.0 + if i == 3 { bump } else { 0.0 }
        }));
        store.commit_run(&Run { meta: m, results }).unwrap();
    }
    drop(store);
    let site = tmp.path().join("site");
    common::ok(
        common::runner(tmp.path())
            .arg("--db")
            .arg(&db)
            .args(["dashboard", "--out"])
            .arg(&site),
    );
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    let fold = index
        .find("<details class=\"folded\">")
        .expect("a folded section");
    let loud = index
        .find("kernel.sm_90.kernel_number_0003.registers")
        .expect("the regressed series is listed");
    assert!(loud < fold, "the regressed series is in the main table");
    assert!(
        index.contains("kernels&#x2f;resources: 19 more series with nothing to flag"),
        "{}",
        &index[fold..fold + 300]
    );
    // Folded series are still linked (their pages exist).
    assert!(index[fold..].contains("kernel.sm_90.kernel_number_0004.registers"));
}

/// A comparison with thousands of rows (e.g. every kernel's resources regressing at once) still fits in one GitHub
/// comment: the full table goes first, then the least important significant rows, and the comment says so.
#[test]
fn a_huge_comparison_is_cut_to_fit_githubs_comment_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let store = Store::open(&db).unwrap();
    let resources = |regs: f64| resources_result(3000, |i| regs + i as f64 % 7.0);
    for (id, minutes, c, regs) in [
        ("20260101T000000-base01", 0, "a", 64.0),
        ("20260101T010000-head01", 60, "b", 128.0),
    ] {
        let m = meta(id, minutes, &c.repeat(40), "main", None);
        store.begin_run(&m).unwrap();
        let mut results = results(Knobs::default());
        results.push(resources(regs));
        store.commit_run(&Run { meta: m, results }).unwrap();
    }
    drop(store);
    let out = common::ok(common::runner(tmp.path()).arg("--db").arg(&db).args([
        "report",
        "comment",
        "--head",
        "20260101T010000-head01",
        "--base",
        "20260101T000000-base01",
    ]));
    assert!(
        out.chars().count() <= 65_000,
        "{} characters",
        out.chars().count()
    );
    assert!(
        out.lines().next().unwrap().contains("regression"),
        "{}",
        out.lines().next().unwrap()
    );
    assert!(
        out.contains("The table of every comparison ("),
        "full table not replaced by a note"
    );
    assert!(out.contains("more, left out to fit GitHub's comment size limit"));
    // What is kept is the most important: the largest register jumps come first.
    assert!(
        out.contains(r"kernel.sm\_90.kernel\_number\_0000.registers"),
        "largest change kept"
    );
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("3000 kernel metrics worse"),
        "resource regressions are not quality: {}",
        out.lines().next().unwrap()
    );
    assert!(out.trim_end().ends_with("<!-- saeperf-report:default -->"));
}

// ---------------------------------------------------------------------------------------------------------------
// A local stand-in for the GitHub REST API: real HTTP on 127.0.0.1, the endpoints `report post` uses, a record of
// every request, and a queue of faults to answer with before serving normally.

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub url: String,
    pub auth: Option<String>,
    pub body: String,
    pub at: Instant,
}

#[derive(Debug, Clone, Default)]
pub struct Fault {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Default)]
pub struct State {
    pub comments: Vec<(u64, String)>,
    /// Who wrote each comment (absent: "octocat"); the token's comments are the bot's, "saeperf-bot".
    pub authors: std::collections::BTreeMap<u64, String>,
    /// When each comment was written (absent: long ago).
    pub created: std::collections::BTreeMap<u64, String>,
    /// `labeled` events of the pull request: (actor, label, created_at).
    pub label_events: Vec<(String, String, String)>,
    /// Logins with write permission on the repository (everyone else reads).
    pub writers: Vec<String>,
    /// Every value of the headers each request carried more than once (name, count), by request index.
    pub repeated_headers: Vec<(usize, String, usize)>,
    /// Store the next created comment, but answer only after this long: the client has given up by then (a
    /// timeout after the server acted).
    pub late_comment_post: Option<Duration>,
    pub statuses: Vec<(String, serde_json::Value)>,
    pub requests: Vec<Recorded>,
    pub faults: VecDeque<Fault>,
    /// Fail every request with this status (after the queued faults).
    pub always: Option<u16>,
    pub pr_head: String,
    /// What `GET /repos/{repo}/pulls` lists (all of them on every page request; paginated by 100).
    pub pulls: Vec<serde_json::Value>,
    next_id: u64,
}

pub struct FakeGitHub {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(req: tiny_http::Request, status: u16, headers: &[(&str, String)], body: String) {
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    resp.add_header(tiny_http::Header::from_bytes("content-type", "application/json").unwrap());
    for (k, v) in headers {
        resp.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
    }
    let _ = req.respond(resp);
}

impl FakeGitHub {
    pub fn start(repo: &str, pr: u64) -> FakeGitHub {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..State::default()
        }));
        let (srv, st) = (server.clone(), state.clone());
        let repo = repo.to_string();
        let thread = std::thread::spawn(move || {
            while let Ok(mut req) = srv.recv() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let method = req.method().as_str().to_string();
                let url = req.url().to_string();
                let auth = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("authorization"))
                    .map(|h| h.value.as_str().to_string());
                let mut counts = std::collections::BTreeMap::<String, usize>::new();
                for h in req.headers() {
                    *counts
                        .entry(h.field.as_str().as_str().to_ascii_lowercase())
                        .or_default() += 1;
                }
                let mut s = st.lock().unwrap();
                let index = s.requests.len();
                for (k, n) in counts.into_iter().filter(|(_, n)| *n > 1) {
                    s.repeated_headers.push((index, k, n));
                }
                s.requests.push(Recorded {
                    method: method.clone(),
                    url: url.clone(),
                    auth: auth.clone(),
                    body: body.clone(),
                    at: Instant::now(),
                });
                if let Some(f) = s.faults.pop_front() {
                    drop(s);
                    respond(req, f.status, &f.headers, f.body);
                    continue;
                }
                let late = if method == "POST" && url.contains("/comments") {
                    s.late_comment_post.take()
                } else {
                    None
                };
                if let Some(code) = s.always {
                    drop(s);
                    respond(req, code, &[], r#"{"message":"Server Error"}"#.into());
                    continue;
                }
                if auth.as_deref() != Some("Bearer test-token") {
                    drop(s);
                    respond(req, 401, &[], r#"{"message":"Bad credentials"}"#.into());
                    continue;
                }
                let path = url.split('?').next().unwrap().to_string();
                let base = format!("/repos/{repo}");
                let comments_path = format!("{base}/issues/{pr}/comments");
                let (status, out) = if method == "GET" && path == "/user" {
                    (
                        200,
                        serde_json::json!({ "login": "saeperf-bot" }).to_string(),
                    )
                } else if method == "GET" && path == format!("{base}/issues/{pr}/events") {
                    let list: Vec<serde_json::Value> = s
                        .label_events
                        .iter()
                        .map(|(actor, label, at)| {
                            serde_json::json!({
                            "event": "labeled", "actor": { "login": actor },
                            "label": { "name": label }, "created_at": at })
                        })
                        .collect();
                    (200, serde_json::to_string(&list).unwrap())
                } else if method == "GET"
                    && path.starts_with(&format!("{base}/collaborators/"))
                    && path.ends_with("/permission")
                {
                    let user = path.split('/').nth_back(1).unwrap().to_string();
                    let perm = if s.writers.contains(&user) {
                        "write"
                    } else {
                        "read"
                    };
                    (
                        200,
                        serde_json::json!({ "permission": perm, "user": { "login": user } })
                            .to_string(),
                    )
                } else if method == "GET" && path == comments_path {
                    let query = url.split_once('?').map(|q| q.1).unwrap_or("");
                    let page: usize = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("page="))
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(1);
                    let list: Vec<serde_json::Value> = s
                        .comments
                        .iter()
                        .skip((page - 1) * 100)
                        .take(100)
                        .map(|(id, b)| serde_json::json!({
                            "id": id, "body": b, "html_url": format!("http://gh.test/c/{id}"),
                            "user": { "login": s.authors.get(id).map(String::as_str).unwrap_or("octocat") },
                            "created_at": s.created.get(id).cloned().unwrap_or_else(|| "2020-01-01T00:00:00Z".into()),
                        }))
                        .collect();
                    (200, serde_json::to_string(&list).unwrap())
                } else if method == "POST" && path == comments_path {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    s.next_id += 1;
                    let id = s.next_id;
                    s.comments
                        .push((id, v["body"].as_str().unwrap().to_string()));
                    s.authors.insert(id, "saeperf-bot".into());
                    (201, serde_json::json!({ "id": id, "body": v["body"], "html_url": format!("http://gh.test/c/{id}") }).to_string())
                } else if method == "PATCH" && path.starts_with(&format!("{base}/issues/comments/"))
                {
                    let id: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    match s.comments.iter_mut().find(|(i, _)| *i == id) {
                        Some(c) => {
                            c.1 = v["body"].as_str().unwrap().to_string();
                            (200, serde_json::json!({ "id": id, "body": v["body"], "html_url": format!("http://gh.test/c/{id}") }).to_string())
                        }
                        None => (404, r#"{"message":"Not Found"}"#.into()),
                    }
                } else if method == "POST" && path.starts_with(&format!("{base}/statuses/")) {
                    let sha = path.rsplit('/').next().unwrap().to_string();
                    s.statuses.push((sha, serde_json::from_str(&body).unwrap()));
                    (201, "{}".into())
                } else if method == "GET" && path == format!("{base}/pulls") {
                    let query = url.split_once('?').map(|q| q.1).unwrap_or("");
                    let page: usize = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("page="))
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(1);
                    let list: Vec<&serde_json::Value> =
                        s.pulls.iter().skip((page - 1) * 100).take(100).collect();
                    (200, serde_json::to_string(&list).unwrap())
                } else if method == "GET" && path == format!("{base}/pulls/{pr}") {
                    (
                        200,
                        serde_json::json!({ "number": pr, "head": { "sha": s.pr_head } })
                            .to_string(),
                    )
                } else {
                    (404, r#"{"message":"Not Found"}"#.into())
                };
                drop(s);
                if let Some(d) = late {
                    std::thread::sleep(d);
                }
                respond(req, status, &[], out);
            }
        });
        FakeGitHub {
            url,
            state,
            server,
            thread: Some(thread),
        }
    }
}

fn post_cmd(home: &Path, db: &Path, api: &str, extra: &[&str]) -> std::process::Command {
    let mut c = common::runner(home);
    c.env("GITHUB_TOKEN", "test-token")
        .env_remove("GITHUB_REPOSITORY")
        .env_remove("GITHUB_API_URL")
        .env_remove("SAEPERF_DASHBOARD_URL")
        .arg("--db")
        .arg(db)
        .args([
            "report",
            "post",
            "--repo",
            "octo/saeperf",
            "--api-url",
            api,
            "--retry-delay-ms",
            "50",
        ])
        .args(extra);
    c
}

/// The store's runs as exported (without the export's own timestamp).
fn export(home: &Path, db: &Path) -> serde_json::Value {
    let text = common::ok(
        common::runner(home)
            .arg("--db")
            .arg(db)
            .args(["db", "export"]),
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["runs"].clone()
}

#[test]
fn post_creates_then_updates_one_sticky_comment_with_a_status() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    two_run_store(&db);
    let gh = FakeGitHub::start("octo/saeperf", 7);
    // Someone else's comment on the PR stays untouched.
    gh.state.lock().unwrap().comments.push((1, "LGTM".into()));
    let out = common::ok(&mut post_cmd(
        tmp.path(),
        &db,
        &gh.url,
        &[
            "--head",
            "20260101T010000-head01",
            "--base",
            "20260101T000000-base01",
        ],
    ));
    assert!(
        out.contains("Created comment 1001 on octo/saeperf#7"),
        "{out}"
    );
    {
        let s = gh.state.lock().unwrap();
        assert_eq!(s.comments.len(), 2);
        assert!(s.comments[1].1.contains("<!-- saeperf-report:default -->"));
        assert!(s
            .requests
            .iter()
            .all(|r| r.auth.as_deref() == Some("Bearer test-token")));
        assert_eq!(s.statuses.len(), 1);
        let (sha, st) = &s.statuses[0];
        assert_eq!(sha, &"b".repeat(40));
        assert_eq!(st["state"], "failure");
        assert_eq!(st["context"], "saeperf");
        assert!(
            st["description"].as_str().unwrap().contains("regression"),
            "{st}"
        );
        let methods: Vec<&str> = s.requests.iter().map(|r| r.method.as_str()).collect();
        // The bot's own login, the comments, the comment, the status.
        assert_eq!(methods, ["GET", "GET", "POST", "POST"]);
        assert_eq!(s.requests[0].url, "/user");
        assert!(s.requests[2].body.contains("saeperf-report:default"));
        assert!(
            s.repeated_headers.is_empty(),
            "each header once: {:?}",
            s.repeated_headers
        );
    }
    // A new head on the same PR: the same comment is updated in place.
    let store = Store::open(&db).unwrap();
    commit(
        &store,
        meta(
            "20260101T030000-head03",
            180,
            &"d".repeat(40),
            "feature/x",
            Some(7),
        ),
        Knobs::default(),
    );
    drop(store);
    let out = common::ok(&mut post_cmd(
        tmp.path(),
        &db,
        &gh.url,
        &[
            "--head",
            "20260101T030000-head03",
            "--base",
            "20260101T000000-base01",
        ],
    ));
    assert!(out.contains("Updated comment 1001"), "{out}");
    let s = gh.state.lock().unwrap();
    assert_eq!(s.comments.len(), 2, "still one sticky comment");
    assert_eq!(s.comments[0].1, "LGTM");
    assert!(
        s.comments[1].1.contains("no significant change"),
        "{}",
        s.comments[1].1
    );
    let patch = s.requests.iter().find(|r| r.method == "PATCH").unwrap();
    assert_eq!(patch.url, "/repos/octo/saeperf/issues/comments/1001");
    assert_eq!(s.statuses.last().unwrap().1["state"], "success");
}

#[test]
fn post_retries_server_errors_and_rate_limits_honouring_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    two_run_store(&db);
    let gh = FakeGitHub::start("octo/saeperf", 7);
    {
        let mut s = gh.state.lock().unwrap();
        s.faults.push_back(Fault {
            status: 502,
            headers: vec![],
            body: "bad gateway".into(),
        });
        s.faults.push_back(Fault {
            status: 403,
            headers: vec![
                ("retry-after", "1".into()),
                ("x-ratelimit-remaining", "0".into()),
            ],
            body: r#"{"message":"API rate limit exceeded"}"#.into(),
        });
        s.faults.push_back(Fault {
            status: 429,
            headers: vec![],
            body: r#"{"message":"slow down"}"#.into(),
        });
    }
    let out = common::ok(&mut post_cmd(
        tmp.path(),
        &db,
        &gh.url,
        &[
            "--head",
            "20260101T010000-head01",
            "--base",
            "20260101T000000-base01",
            "--no-status",
            "--secondary-wait-ms",
            "300",
        ],
    ));
    assert!(out.contains("Created comment"), "{out}");
    let s = gh.state.lock().unwrap();
    assert_eq!(s.comments.len(), 1);
    assert!(s.statuses.is_empty());
    // 3 faulted GETs, the GET /user that succeeded, the comments, the POST.
    assert_eq!(s.requests.len(), 6, "{:?}", s.requests);
    let gap = s.requests[2].at - s.requests[1].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured, waited {gap:?}"
    );
    // A 429 naming no time is a secondary limit: at least the configured minimum (300 ms here, a minute by
    // default), not the 100 ms backoff.
    let gap = s.requests[3].at - s.requests[2].at;
    assert!(
        gap >= Duration::from_millis(290),
        "secondary limit: waited {gap:?}"
    );
}

/// GitHub's rules, against the local stand-in: a marker in a stranger's comment is left alone and the bot creates
/// its own; a create that timed out after the server stored it is found again, not sent twice; a primary limit that
/// resets in an hour fails at once with one line; a secondary limit waits the configured minimum; every header is
/// sent once.
#[test]
fn post_edits_only_its_own_comment_and_follows_githubs_retry_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    two_run_store(&db);
    let gh = FakeGitHub::start("octo/saeperf", 7);
    let args = [
        "--head",
        "20260101T010000-head01",
        "--base",
        "20260101T000000-base01",
        "--no-status",
    ];
    {
        let mut s = gh.state.lock().unwrap();
        s.comments
            .push((1, "<!-- saeperf-report:default --> I am the bot now".into()));
        s.authors.insert(1, "mallory".into());
    }
    let out = common::ok(&mut post_cmd(tmp.path(), &db, &gh.url, &args));
    assert!(out.contains("Created comment 1001"), "{out}");
    {
        let s = gh.state.lock().unwrap();
        assert_eq!(
            s.comments[0].1,
            "<!-- saeperf-report:default --> I am the bot now"
        );
        assert!(!s.requests.iter().any(|r| r.method == "PATCH"));
        assert!(s.repeated_headers.is_empty(), "{:?}", s.repeated_headers);
    }
    // With a configured bot login, GET /user is not asked; the bot's comment is updated in place.
    let n = gh.state.lock().unwrap().requests.len();
    let mut c = post_cmd(tmp.path(), &db, &gh.url, &args);
    let out = common::ok(c.args(["--bot-login", "saeperf-bot", "--note", "approved by @alice"]));
    assert!(out.contains("Updated comment 1001"), "{out}");
    {
        let s = gh.state.lock().unwrap();
        assert!(s.requests[n..].iter().all(|r| r.url != "/user"));
        assert!(
            s.comments[1].1.contains("approved by @alice"),
            "{}",
            s.comments[1].1
        );
    }

    // The create is stored but answered only after the client gave up (1 s timeout): the client lists the comments
    // again, finds it, and does not create a second.
    gh.state.lock().unwrap().late_comment_post = Some(Duration::from_millis(2500));
    let mut c = post_cmd(tmp.path(), &db, &gh.url, &args);
    let out = common::ok(c.args(["--key", "second", "--timeout-secs", "1"]));
    assert!(out.contains("Created comment 1002"), "{out}");
    {
        let s = gh.state.lock().unwrap();
        let mine: Vec<_> = s
            .comments
            .iter()
            .filter(|c| c.1.contains("saeperf-report:second"))
            .collect();
        assert_eq!(mine.len(), 1, "{:?}", s.comments);
        let posts = s.requests.iter().filter(|r| r.method == "POST").count();
        assert_eq!(posts, 2, "the timed-out create was not sent again");
    }

    // A primary limit whose reset is an hour away: one line, exit 1, within seconds, one request.
    let reset = (chrono::Utc::now().timestamp() + 3600).to_string();
    let n = {
        let mut s = gh.state.lock().unwrap();
        s.faults.push_back(Fault {
            status: 403,
            headers: vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset),
            ],
            body: r#"{"message":"API rate limit exceeded"}"#.into(),
        });
        s.requests.len()
    };
    let t = Instant::now();
    let o = common::run(&mut post_cmd(tmp.path(), &db, &gh.url, &args));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("rate limit is spent until") && err.contains("try again"),
        "{err}"
    );
    assert_eq!(gh.state.lock().unwrap().requests.len(), n + 1);

    // A secondary limit naming no time: the configured minimum (1.5 s), not the 50 ms backoff.
    let n = {
        let mut s = gh.state.lock().unwrap();
        s.faults.push_back(Fault {
            status: 403,
            headers: vec![],
            body: r#"{"message":"You have exceeded a secondary rate limit"}"#.into(),
        });
        s.requests.len()
    };
    let mut c = post_cmd(tmp.path(), &db, &gh.url, &args);
    common::ok(c.args(["--secondary-wait-ms", "1500"]));
    let s = gh.state.lock().unwrap();
    let gap = s.requests[n + 1].at - s.requests[n].at;
    assert!(gap >= Duration::from_millis(1490), "waited {gap:?}");
    assert!(s.repeated_headers.is_empty(), "{:?}", s.repeated_headers);
}

#[test]
fn persistent_failure_exits_non_zero_and_leaves_the_store_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    two_run_store(&db);
    let before = export(tmp.path(), &db);
    let gh = FakeGitHub::start("octo/saeperf", 7);
    gh.state.lock().unwrap().always = Some(500);
    let out = common::run(&mut post_cmd(
        tmp.path(),
        &db,
        &gh.url,
        &[
            "--head",
            "20260101T010000-head01",
            "--base",
            "20260101T000000-base01",
            "--attempts",
            "3",
        ],
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("500") && last.contains("after 3 attempt"),
        "{err}"
    );
    assert_eq!(gh.state.lock().unwrap().requests.len(), 3);
    assert_eq!(export(tmp.path(), &db), before, "the store changed");
    assert!(common::ok(
        common::runner(tmp.path())
            .arg("--db")
            .arg(&db)
            .args(["db", "check"])
    )
    .contains("ok"));

    // A head that does not match --verify-head is refused before any request.
    let n = gh.state.lock().unwrap().requests.len();
    let out = common::run(&mut post_cmd(
        tmp.path(),
        &db,
        &gh.url,
        &[
            "--head",
            "20260101T010000-head01",
            "--verify-head",
            &"e".repeat(40),
        ],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to post"));
    assert_eq!(gh.state.lock().unwrap().requests.len(), n);
    // Without a token: a clear message.
    let out = common::run(post_cmd(tmp.path(), &db, &gh.url, &[]).env_remove("GITHUB_TOKEN"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GITHUB_TOKEN is not set"));
}

/// The workflows' path through the typed documents: `runner bundle` reads the bench document through its type and
/// writes runs.json + meta.json; `runner report post --bundle` reads meta.json through its type and posts with
/// `--json`, printing a post document. A malformed bench document writes nothing; a malformed or foreign meta.json
/// is one line and GitHub is never contacted.
#[test]
fn bundle_and_post_read_their_documents_through_the_types() {
    use saeperf_bench::BenchDocument;
    use saeperf_compare::baseline::BaselineChoice;
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    // Run ids as the store makes them (hex suffixes): meta.json checks their form.
    let head = {
        let store = Store::open(&db).unwrap();
        commit(
            &store,
            meta("20260101T000000-ba5e01", 0, &"a".repeat(40), "main", None),
            Knobs::default(),
        );
        commit(
            &store,
            meta(
                "20260101T010000-bead01",
                60,
                &"b".repeat(40),
                "feature",
                Some(7),
            ),
            Knobs {
                encode_time: 1.3e-3,
                mse: 0.0230,
                phase: 2,
                ..Knobs::default()
            },
        );
        store.load_run("20260101T010000-bead01").unwrap()
    };
    let doc = BenchDocument::new(
        head,
        BaselineChoice {
            run: Some("20260101T000000-ba5e01".into()),
            why: "merge base".into(),
        },
        None,
    );
    let bench_json = tmp.path().join("bench.json");
    std::fs::write(&bench_json, serde_json::to_string(&doc).unwrap()).unwrap();
    let bundle = |from: &Path, out: &Path, sha: &str| {
        let mut c = common::runner(tmp.path());
        c.arg("--db").arg(&db).arg("bundle").arg("--from").arg(from);
        c.args(["--pr", "7", "--head-sha", sha, "--out"]).arg(out);
        c.output().unwrap()
    };

    // Malformed: one line, nothing written.
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"document": "bench", "version": 1, "run": {"meta": 3}}"#,
    )
    .unwrap();
    let out_bad = tmp.path().join("bundle-bad");
    let o = bundle(&bad, &out_bad, &"b".repeat(40));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a saeperf bench document"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        !out_bad.exists(),
        "nothing is written for a malformed document"
    );
    // A document of another commit than the pull request's head is refused too.
    let o = bundle(&bench_json, &out_bad, &"c".repeat(40));
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out_bad.exists());

    // Good: the head and its baseline, and a meta document naming them.
    let out = tmp.path().join("bundle");
    let o = bundle(&bench_json, &out, &"b".repeat(40));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("runs.json")).unwrap()).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["document"], "result-meta");
    assert_eq!(meta["pr"], 7);
    assert_eq!(meta["head_run"], "20260101T010000-bead01");
    assert_eq!(meta["base_run"], "20260101T000000-ba5e01");

    // A malformed meta.json: one line, no request reaches GitHub.
    let gh = FakeGitHub::start("octo/saeperf", 7);
    gh.state.lock().unwrap().pr_head = "b".repeat(40);
    let evil = tmp.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    for text in [
        r#"{"document": "result-meta", "version": 1, "pr": 7, "head_sha": "bbbbbbb", "head_run": "../../etc", "base_run": null}"#,
        r#"{"document": "post", "version": 1}"#,
        "not json",
    ] {
        std::fs::write(evil.join("meta.json"), text).unwrap();
        let o = post_cmd(
            tmp.path(),
            &db,
            &gh.url,
            &["--bundle", evil.to_str().unwrap()],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("meta.json"), "{err}");
    }
    assert!(
        gh.state.lock().unwrap().requests.is_empty(),
        "GitHub was never contacted"
    );

    // The bundle as the comment workflow posts it: a post document says what happened.
    let o = post_cmd(
        tmp.path(),
        &db,
        &gh.url,
        &[
            "--bundle",
            out.to_str().unwrap(),
            "--json",
            "--verify-head",
            &"b".repeat(40),
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let posted: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(posted["document"], "post");
    assert_eq!(posted["pr"], 7);
    assert_eq!(posted["head_run"], "20260101T010000-bead01");
    assert_eq!(posted["comment"]["action"], "created");
    assert_eq!(posted["verdict"], "regression");
    assert_eq!(posted["status"]["state"], "failure");
    let s = gh.state.lock().unwrap();
    assert_eq!(s.comments.len(), 1);
    assert_eq!(s.statuses.len(), 1);
}

/// The comment policy: `never` sets the status only; `on-change` creates no comment for a quiet run, creates one for a
/// regression, and then keeps updating it (a quiet run after a regression says so instead of leaving it stale).
#[test]
fn comment_policy_decides_whether_to_comment() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    two_run_store(&db);
    let store = Store::open(&db).unwrap();
    commit(
        &store,
        meta(
            "20260101T030000-head03",
            180,
            &"d".repeat(40),
            "feature/x",
            Some(7),
        ),
        Knobs::default(),
    );
    drop(store);
    let gh = FakeGitHub::start("octo/saeperf", 7);
    let post = |head: &str, policy: &str| {
        let mut c = post_cmd(tmp.path(), &db, &gh.url, &[]);
        c.args(["--head", head, "--base", "20260101T000000-base01", "--json"]);
        c.args(["--comment-policy", policy]);
        let out = common::ok(&mut c);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let doc = post("20260101T010000-head01", "never");
    assert!(doc["comment"].is_null(), "{doc}");
    assert_eq!(doc["policy"], "never");
    {
        let s = gh.state.lock().unwrap();
        assert!(s.comments.is_empty());
        assert_eq!(s.statuses.len(), 1);
        assert!(
            s.requests.iter().all(|r| r.url != "/user"),
            "no comment, no login"
        );
    }
    let doc = post("20260101T030000-head03", "on-change");
    assert!(doc["comment"].is_null(), "quiet: no new comment: {doc}");
    assert!(gh.state.lock().unwrap().comments.is_empty());
    let doc = post("20260101T010000-head01", "on-change");
    assert_eq!(doc["comment"]["action"], "created", "{doc}");
    let doc = post("20260101T030000-head03", "on-change");
    assert_eq!(doc["comment"]["action"], "updated", "{doc}");
    let s = gh.state.lock().unwrap();
    assert_eq!(s.comments.len(), 1);
    assert!(
        s.comments[0].1.contains("no significant change"),
        "{}",
        s.comments[0].1
    );
    assert_eq!(s.statuses.len(), 4);
}
