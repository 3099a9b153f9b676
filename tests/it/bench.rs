//! `runner bench` end to end, as real child processes on a real sled store in a temp dir, inside a throw-away git
//! repository: A/A reports no regression, an injected slowdown and a quality drop are regressions (exit 2), a bench
//! killed with SIGKILL leaves a store that passes `db check` with that run incomplete and never a baseline, and an
//! export + ingest reproduces the comparisons.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, git, init_repo};
use crate::store::text;

/// The bench tests time things: run them one at a time so they do not slow each other down.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tiny suite: one small dictionary on a small synthetic set, and every op at a small shape. Speed thresholds are
/// wide (100%) so that shared-machine noise never trips the A/A test; the injected slowdown is 5x.
fn tiny_suite(steps: usize, op_samples: usize) -> String {
    format!(
        r#"
name = "tiny"
default_profile = "standard"

[profiles.standard]
steps_scale = 1.0
op_samples = {op_samples}
op_warmup = 2
synthetic_tokens = 4096

[data.synthetic]
kind = "synthetic"
d_in = 16
n_features = 64
active = 3.0
seed = 0

# Optional and never prepared here: its benchmark is skipped, not failed.
[data.lm]
kind = "prepared"
path = "sets/not-prepared"
optional = true

[[train]]
name = "lm-relu"
data = "lm"
arch = "relu"
d_sae = 64
l1 = 3e-3
steps = 5
batch = 8

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
batch = 256
d_in = 64
d_sae = 1024

[[op]]
name = "op/encode"
op = "encode"
shape = "small"

[[op]]
name = "op/decode"
op = "decode"
shape = "small"

[[op]]
name = "op/backward"
op = "backward"
shape = "small"

[[op]]
name = "op/adam"
op = "adam"
shape = "small"

[speed]
min_threshold = 1.0
"#
    )
}

struct Env {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    db: PathBuf,
    home: PathBuf,
}

/// A git repository with one commit on main holding the suite.
fn setup(suite: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    init_repo(&repo);
    std::fs::write(repo.join("suite.toml"), suite).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "suite"]);
    let db = dir.path().join("store");
    let home = dir.path().join("home");
    Env {
        repo,
        db,
        home,
        _dir: dir,
    }
}

fn cmd(e: &Env, args: &[&str]) -> Command {
    let mut c = common::runner(&e.home);
    c.current_dir(&e.repo)
        .arg("--db")
        .arg(&e.db)
        .args(args)
        .env_remove("SAEPERF_INJECT_SLOWDOWN");
    c
}

fn bench(e: &Env, extra_env: &[(&str, &str)]) -> (Output, serde_json::Value) {
    let mut c = cmd(e, &["bench", "--suite", "suite.toml", "--json"]);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    (o, v)
}

fn verdicts(v: &serde_json::Value, metric: &str) -> Vec<String> {
    v["comparison"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metric"] == metric)
        .map(|r| r["verdict"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn aa_is_quiet_slowdown_and_quality_drop_are_regressions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let e = setup(&tiny_suite(60, 12));
    let (o, first) = bench(&e, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        first["comparison"].is_null(),
        "no baseline for the first run"
    );
    assert_eq!(
        first["run"]["results"].as_array().unwrap().len(),
        5,
        "lm-relu is skipped"
    );
    assert!(
        text(&o).contains("skipping benchmarks on activation set \"lm\""),
        "{}",
        text(&o)
    );
    let r0 = &first["run"]["results"][0];
    assert_eq!(r0["status"], "ok", "{r0}");
    assert!(r0["metrics"]["mse"].as_f64().unwrap().is_finite());
    assert!(!r0["curve"].as_array().unwrap().is_empty());
    assert_eq!(first["run"]["meta"]["branch"], "main");
    assert_eq!(first["run"]["meta"]["dirty"], false);

    // A/A: same code, same suite, same commit -> compared with the earlier run of the commit, nothing regresses.
    let (o, aa) = bench(&e, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(aa["comparison"]["base"]["id"], first["run"]["meta"]["id"]);
    assert!(
        ["noise", "improvement"].contains(&aa["comparison"]["overall"].as_str().unwrap()),
        "{}",
        aa["comparison"]
    );
    assert!(
        verdicts(&aa, "mse").iter().all(|v| v == "noise"),
        "deterministic CPU training: identical metrics"
    );

    // Injected 10x slowdown of every op iteration: the ops regress, exit code 2. (Small shapes on a shared machine
    // are noisy, so the test asks for most ops, not all; bench/detector.py measures the detector properly.)
    let (o, slow) = bench(&e, &[("SAEPERF_INJECT_SLOWDOWN", "9.0")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(slow["comparison"]["overall"], "regression");
    let ops: Vec<&serde_json::Value> = slow["comparison"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metric"] == "time" && r["bench"].as_str().unwrap().starts_with("op/"))
        .collect();
    assert_eq!(ops.len(), 4);
    let regressed = ops.iter().filter(|r| r["verdict"] == "regression").count();
    assert!(regressed >= 2, "{ops:?}");
    assert!(ops.iter().all(|r| r["verdict"] != "improvement"), "{ops:?}");

    // A pull request that cuts training to 3 steps: its merge base (main) is the baseline; mse and fve regress.
    git(&e.repo, &["checkout", "-qb", "pr"]);
    std::fs::write(e.repo.join("suite.toml"), tiny_suite(3, 8)).unwrap();
    git(&e.repo, &["commit", "-qam", "fewer steps"]);
    let (o, pr) = bench(&e, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("merge base")
            || pr["baseline"]["why"]
                .as_str()
                .unwrap()
                .contains("merge base")
    );
    assert_eq!(pr["run"]["meta"]["branch"], "pr");
    assert!(
        verdicts(&pr, "mse").contains(&"regression".to_string()),
        "{}",
        pr["comparison"]
    );
    assert!(pr["comparison"]["notes"]
        .to_string()
        .contains("suite differs"));

    // `runner compare` on the stored runs agrees with what bench printed, and export + ingest reproduces it.
    let ids = |v: &serde_json::Value| {
        (
            v["comparison"]["base"]["id"].as_str().unwrap().to_string(),
            v["run"]["meta"]["id"].as_str().unwrap().to_string(),
        )
    };
    let (b, h) = ids(&pr);
    let c1 = cmd(&e, &["compare", &b, &h, "--suite", "suite.toml", "--json"])
        .output()
        .unwrap();
    assert_eq!(c1.status.code(), Some(2));
    let c1v: serde_json::Value = serde_json::from_slice(&c1.stdout).unwrap();
    assert_eq!(c1v["rows"], pr["comparison"]["rows"]);
    let bundle = e.home.join("bundle.json");
    let o = cmd(&e, &["db", "export", "--out", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let other = e.home.join("other-store");
    let o = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "--db",
            other.to_str().unwrap(),
            "ingest",
            bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let c2 = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(&e.repo)
        .args([
            "--db",
            other.to_str().unwrap(),
            "compare",
            &b,
            &h,
            "--suite",
            "suite.toml",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(c2.status.code(), Some(2));
    assert_eq!(c1.stdout, c2.stdout);
    let (b, h) = ids(&slow);
    for db in [&e.db, &other] {
        let o = Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(&e.repo)
            .args([
                "--db",
                db.to_str().unwrap(),
                "compare",
                &b,
                &h,
                "--suite",
                "suite.toml",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
    // History of the quality series shows all four runs.
    let o = cmd(&e, &["history", "tiny-relu", "mse", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 4);
}

#[test]
fn sigkill_mid_run_leaves_an_incomplete_run_that_is_never_a_baseline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let e = setup(&tiny_suite(20, 6));
    let (o, first) = bench(&e, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let first_id = first["run"]["meta"]["id"].as_str().unwrap().to_string();

    // A long run: many op samples. Kill it once it has recorded its start.
    std::fs::write(e.repo.join("suite.toml"), tiny_suite(20, 200_000)).unwrap();
    let mut child = cmd(&e, &["bench", "--suite", "suite.toml"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let t = Instant::now();
    let killed_id = loop {
        let line = lines.next().expect("bench prints its run id").unwrap();
        if let Some(rest) = line.strip_prefix("run ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(60));
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the long bench should still be running"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let o = cmd(&e, &["db", "check", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["complete"], 1);
    assert_eq!(rep["incomplete"], serde_json::json!([killed_id]));
    let o = cmd(&e, &["compare", &first_id, &killed_id])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("incomplete"), "{}", text(&o));

    // The next run's baseline is the earlier complete run, not the killed one.
    std::fs::write(e.repo.join("suite.toml"), tiny_suite(20, 6)).unwrap();
    let (o, next) = bench(&e, &[]);
    assert!(o.status.code() == Some(0), "{}", text(&o));
    assert_eq!(next["comparison"]["base"]["id"], first_id.as_str());
    let o = cmd(&e, &["db", "check"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("2 complete runs, 1 incomplete"),
        "{}",
        text(&o)
    );
}

#[test]
fn baseline_auto_times_the_merge_base_interleaved() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let e = setup(&tiny_suite(20, 12));
    git(&e.repo, &["checkout", "-qb", "pr"]);
    std::fs::write(e.repo.join("notes.txt"), "a change").unwrap();
    git(&e.repo, &["add", "."]);
    git(&e.repo, &["commit", "-qm", "change"]);
    // No stored run of the merge base: auto measures it here. The "merge base's runner" is this same binary (the
    // env override stands in for the worktree build), and the injected slowdown reaches only the head.
    let exe = env!("CARGO_BIN_EXE_runner");
    let mut c = cmd(
        &e,
        &[
            "bench",
            "--suite",
            "suite.toml",
            "--json",
            "--baseline",
            "auto",
        ],
    );
    c.env("SAEPERF_AUTO_BASE_RUNNER", exe)
        .env("SAEPERF_INJECT_SLOWDOWN", "9.0");
    let o = c.output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        v["baseline"]["why"]
            .as_str()
            .unwrap()
            .contains("--baseline auto"),
        "{}",
        v["baseline"]
    );
    let base = &v["comparison"]["base"];
    assert_eq!(base["branch"], "main");
    let main_head = Command::new("git")
        .current_dir(&e.repo)
        .args(["rev-parse", "main"])
        .output()
        .unwrap();
    assert_eq!(
        base["commit"].as_str().unwrap(),
        String::from_utf8_lossy(&main_head.stdout).trim()
    );
    // Op samples: 4 rounds of A/B chunks of 3 => 12 a side; quality identical (same code, same seeds).
    let op = v["run"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "op/encode")
        .unwrap();
    assert_eq!(op["samples"].as_array().unwrap().len(), 12);
    assert!(verdicts(&v, "mse").iter().all(|x| x == "noise"));
    assert!(verdicts(&v, "time").iter().any(|x| x == "regression"));
    // The merge base's run is stored: the next plain bench on the PR uses it.
    let (o, next) = bench(&e, &[]);
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(2),
        "{}",
        text(&o)
    );
    assert_eq!(next["comparison"]["base"]["id"], base["id"]);
}

/// One home for every command: with SAEPERF_HOME unset, a set placed where `runner data prepare` puts it (under the
/// user's cache directory, the `sets/...` name of the default suite's language-model set) is the one `runner bench`
/// trains on. Before, `data prepare` wrote under the cache directory and `bench` looked under `~/.saeperf`.
#[test]
fn bench_finds_a_set_prepared_with_saeperf_home_unset() {
    use saeperf_sae::lm::harvest;
    let dir = tempfile::tempdir().unwrap();
    let home_dir = dir.path().join("user");
    std::fs::create_dir_all(&home_dir).unwrap();
    // Where `runner data prepare` writes with its defaults and SAEPERF_HOME unset, and where the default suite
    // expects its language-model set: the same path.
    let cache_home = home_dir.join(".cache").join("saeperf");
    let prepared = harvest::default_set_dir(
        &cache_home,
        harvest::DEFAULT_LAYER,
        harvest::DEFAULT_CONTEXT,
        harvest::DEFAULT_TRAIN_TOKENS,
        harvest::DEFAULT_EVAL_TOKENS,
    );
    let default_suite: toml::Table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/suite.toml"),
    )
    .unwrap()
    .parse()
    .unwrap();
    let lm_path = default_suite["data"]["lm"]["path"].as_str().unwrap();
    assert_eq!(cache_home.join(lm_path), prepared);

    let runner = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.current_dir(dir.path())
            .env("HOME", &home_dir)
            .env_remove("SAEPERF_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("SAEPERF_DB")
            .env_remove("RUST_LOG")
            .args(args);
        c
    };
    // A small stand-in for the harvested set, written at that path.
    let o = runner(&[
        "data",
        "synth",
        "--out",
        prepared.to_str().unwrap(),
        "--d-in",
        "16",
        "--features",
        "32",
        "--train-tokens",
        "2048",
        "--eval-tokens",
        "256",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        format!(
            r#"
name = "home"
[profiles.standard]
steps_scale = 1.0
op_samples = 3
synthetic_tokens = 1024
[data.lm]
kind = "prepared"
path = "{lm_path}"
optional = true
[[train]]
name = "lm-relu"
data = "lm"
arch = "relu"
d_sae = 32
l1 = 1e-3
steps = 20
batch = 32
"#
        ),
    )
    .unwrap();
    let o = runner(&[
        "--quiet",
        "bench",
        "--suite",
        "suite.toml",
        "--json",
        "--backend",
        "cpu",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("is not prepared"),
        "{}",
        text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["run"]["meta"]["activation_sets"]["lm"].is_string(), "{v}");
    assert_eq!(v["run"]["results"][0]["name"], "lm-relu");
    assert_eq!(v["run"]["results"][0]["status"], "ok");
    // And the store is under the same home.
    assert!(cache_home.join("store").is_dir());
    assert!(!home_dir.join(".saeperf").exists());
}
