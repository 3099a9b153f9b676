//! The static dashboard end to end: a real sled store with several runs (a regression, a dense-feature spike, a
//! pull request from a branch with a hostile name, feature contexts with hostile corpus text) rendered by the real
//! binary, then every page opened in headless Chromium over file://: no console errors, charts and the density
//! histogram present, every internal link resolving, hostile strings shown as text. Screenshots of the index, a
//! series page and a run page land in target/screenshots/ for a person to look at.
//!
//! Chromium: Debian's `chromium` package (CHROME=/path overrides). Without it the test fails when `CI` is set and
//! skips with a printed reason otherwise.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions};
use saeperf_store::{Run, Store};

use crate::common;
use crate::report::{commit, meta, results, test_fingerprint, Knobs};

const HOSTILE_BRANCH: &str = "<script>alert(1)</script>";
const HOSTILE_TOKEN: &str = "<img src=x onerror=alert(2)>";

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROME") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn build_store(db: &Path) -> PathBuf {
    let store = Store::open(db).unwrap();
    for i in 0..8usize {
        let k = Knobs {
            phase: i,
            encode_time: if i >= 5 { 1.3e-3 } else { 1.0e-3 },
            mse: 0.02 + 0.000_01 * i as f64,
            dense_spike: if i == 7 { 120 } else { 0 },
            ..Knobs::default()
        };
        commit(
            &store,
            meta(
                &format!("20260101T{:02}0000-main{i:02}", i),
                60 * i as i64,
                &format!("{i:x}").repeat(40),
                "main",
                None,
            ),
            k,
        );
    }
    commit(
        &store,
        meta(
            "20260101T083000-prhost",
            510,
            &"f".repeat(40),
            HOSTILE_BRANCH,
            Some(9),
        ),
        Knobs {
            mse: 0.03,
            ..Knobs::default()
        },
    );
    // Feature contexts in the shape `runner features` writes, with hostile corpus text.
    let features = serde_json::json!({
        "dict": "d", "data": "x", "eval_tokens": 4096, "d_sae": 512, "band_rule": {}, "band_counts": {},
        "features": [
            { "index": 138, "band": "typical", "density": 0.0021, "fires": 9, "mean_activation": 1.2, "max_activation": 3.1,
              "top_tokens": [ { "id": 1, "text": " invention", "score": 0.4 }, { "id": 2, "text": HOSTILE_TOKEN, "score": 0.3 } ],
              "top_examples": [ { "activation": 3.1, "doc": "cj01", "pos": 40, "focus": 3, "text": "",
                "tokens": [ { "text": "the", "activation": 0.1 }, { "text": " field", "activation": 0.9 },
                            { "text": " of", "activation": null }, { "text": " invention", "activation": 3.1 },
                            { "text": HOSTILE_TOKEN, "activation": 0.0 } ] } ] },
            { "index": 7, "band": "dense", "density": 0.21, "fires": 860, "mean_activation": 0.3, "max_activation": 1.0,
              "top_tokens": [], "top_examples": [] }
        ]
    });
    let f = db.parent().unwrap().join("features.json");
    std::fs::write(&f, serde_json::to_string(&features).unwrap()).unwrap();
    f
}

#[test]
fn dashboard_renders_and_every_page_loads_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let features = build_store(&db);
    let site = target_dir().join("dashboard-test");
    let _ = std::fs::remove_dir_all(&site);
    // A scheduler's status beside the dashboard (written before any dashboard exists, as the scheduler does): the
    // status page is rendered and linked from every page's nav; its run link and log link must resolve.
    std::fs::create_dir_all(&site).unwrap();
    let sched_log = tmp.path().join("20260101T070500-nightly-0123456789.log");
    std::fs::write(&sched_log, "build ok\nbench ok\n").unwrap();
    let attempt = serde_json::json!({
        "job": "nightly", "commit": "0123456789abcdef0123456789abcdef01234567",
        "branch": "<script>alert(3)</script>", "pr": 3,
        "started_at": "2026-01-01T07:05:00Z", "finished_at": "2026-01-01T07:09:00Z",
        "outcome": "regression", "run_id": "20260101T070000-main07", "log": sched_log,
        "detail": "<img src=x onerror=alert(4)>",
    });
    std::fs::write(
        site.join("status.json"),
        serde_json::to_vec(&serde_json::json!({
            "scheduler_pid": 4242, "generated_at": "2026-01-01T07:10:00Z", "state_dir": tmp.path(),
            "jobs": [ { "name": "nightly", "cron": "0 0 3 * * *", "target": "branch main", "profile": "quick",
                        "queued": false, "last_fire": null, "next_fire": "2026-01-02T03:00:00Z",
                        "last_attempt": attempt } ],
            "current": null, "recent": [ attempt ],
        }))
        .unwrap(),
    )
    .unwrap();
    // A first build, then a rebuild over it (an earlier dashboard may be overwritten).
    common::ok(
        common::runner(tmp.path())
            .arg("--db")
            .arg(&db)
            .args(["dashboard", "--out"])
            .arg(&site),
    );
    let out = common::ok(
        common::runner(tmp.path())
            .env_remove("GITHUB_SERVER_URL")
            .arg("--db")
            .arg(&db)
            .args([
                "dashboard",
                "--json",
                "--repo-url",
                "https://github.com/octo/saeperf",
                "--out",
            ])
            .arg(&site)
            .arg("--features")
            .arg(format!(
                "20260101T070000-main07:relu-l1={}",
                features.display()
            )),
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["runs"], 9);
    assert_eq!(summary["groups"], 1);
    assert!(summary["regressions"].as_u64().unwrap() >= 1, "{summary}");
    let status_page = std::fs::read_to_string(site.join("status.html"))
        .unwrap()
        .replace("&#x2f;", "/");
    assert!(
        status_page.contains("href=\"runs/20260101T070000-main07.html\"")
            && status_page.contains("status-logs/20260101T070500-nightly-0123456789.log")
            && !status_page.contains("<script>alert(3)"),
        "{status_page}"
    );
    // A training benchmark's run page breaks its step into phases.
    let run_page = std::fs::read_to_string(site.join("runs/20260101T070000-main07.html")).unwrap();
    let phases = run_page
        .split("<table class=\"phases\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or_else(|| panic!("no phase table on the run page"));
    for p in ["encode", "decode", "backward", "optimizer", "other"] {
        assert!(
            phases.contains(&format!("<tr><td>{p}</td><td class=\"num\">")),
            "{phases}"
        );
    }
    // This run's encode knob is 1.3 ms: 8 × 1.3 = 10.4 ms of 10.4 + 2 + 5 + 3 + 1 = 21.4 in the steady state.
    assert!(
        phases.contains("<td class=\"num\">10.4 ms</td><td class=\"num\">49%</td>"),
        "{phases}"
    );
    assert!(std::fs::read_to_string(site.join("index.html"))
        .unwrap()
        .contains("href=\"status.html\""));
    // No calibration run in this store: the calibration page says how to make one.
    let calibration = std::fs::read_to_string(site.join("calibration.html")).unwrap();
    assert!(
        calibration.contains("No calibration has been stored")
            && calibration.contains("<code>runner calibrate</code>"),
        "{calibration}"
    );
    for f in [
        "index.html",
        "status.html",
        "regressions.html",
        "compare.html",
        "calibration.html",
        "feed.xml",
        "style.css",
        "compare.js",
    ] {
        assert!(site.join(f).is_file(), "{f} missing");
    }
    // Hostile strings never reach a page unescaped.
    for entry in walk(&site) {
        let text = std::fs::read_to_string(&entry).unwrap();
        assert!(
            !text.contains(HOSTILE_BRANCH),
            "{} holds the raw branch name",
            entry.display()
        );
        assert!(
            !text.contains(HOSTILE_TOKEN),
            "{} holds raw corpus text",
            entry.display()
        );
    }
    let feed = std::fs::read_to_string(site.join("feed.xml")).unwrap();
    assert!(
        feed.contains("<entry>") && feed.contains("encode time: 999.00 µs → 1.300 ms"),
        "{feed}"
    );
    // An unrelated non-empty directory is refused.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let o = common::run(
        common::runner(tmp.path())
            .arg("--db")
            .arg(&db)
            .args(["dashboard", "--out"])
            .arg(&other),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));

    let Some(chrome) = find_chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed: CI must install it (apt-get install -y chromium) for the dashboard test");
        }
        eprintln!("SKIPPED the browser part of the dashboard test: no chromium on PATH (apt-get install -y chromium, or set CHROME)");
        return;
    };
    browse(&chrome, &site);
}

/// Steps in the main branch's history, end to end: 12 runs of op/encode on main with a +8% step from run 6 on, and a
/// single +30% outlier of op/decode at run 3, stored in a real sled store and rendered by the real binary. The step is
/// listed once, at the commit of run 6, on the regressions page and in the feed, and drawn on its series chart; the
/// outlier is flagged as a per-run regression as before but is not a step. Two more runs at the new level leave the
/// step's feed entry as it was (reported once).
#[test]
fn dashboard_reports_a_step_in_history_once_and_not_a_single_outlier() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let site = tmp.path().join("site");
    // Run-to-run noise of a few tenths of a percent on top of the samples' own ±1%.
    const JITTER: [f64; 14] = [
        0.002, -0.003, 0.001, 0.004, -0.002, 0.0, -0.004, 0.003, -0.001, 0.002, -0.003, 0.001, 0.0,
        -0.002,
    ];
    let id = |i: usize| format!("20260102T{i:02}0000-step{i:02}");
    let sha = |i: usize| format!("{:040x}", 0x5eed_0000 + i);
    let store_runs = |range: std::ops::Range<usize>| {
        let store = Store::open(&db).unwrap();
        for i in range {
            let level = if i < 6 { 1.0e-3 } else { 1.08e-3 };
            let mut rs = results(Knobs {
                phase: i,
                encode_time: level * (1.0 + JITTER[i]),
                ..Knobs::default()
            });
            let decode = rs.iter_mut().find(|r| r.name == "op/decode").unwrap();
            let f = if i == 3 {
                1.3
            } else {
                1.0 + JITTER[(i + 5) % 14]
            };
            decode.samples.iter_mut().for_each(|x| *x *= f);
            let m = meta(&id(i), 24 * 60 + 60 * i as i64, &sha(i), "main", None);
            store.begin_run(&m).unwrap();
            store
                .commit_run(&Run {
                    meta: m,
                    results: rs,
                })
                .unwrap();
        }
    };
    let build = || -> serde_json::Value {
        let out = common::ok(
            common::runner(tmp.path())
                .arg("--db")
                .arg(&db)
                .args(["dashboard", "--json", "--out"])
                .arg(&site),
        );
        serde_json::from_str(&out).unwrap()
    };
    let read = |rel: &str| {
        std::fs::read_to_string(site.join(rel))
            .unwrap()
            .replace("&#x2f;", "/")
    };
    store_runs(0..12);
    let summary = build();
    assert_eq!(summary["runs"], 12, "{summary}");
    assert_eq!(
        summary["steps"], 1,
        "one step, none for the outlier: {summary}"
    );

    let page = read("regressions.html");
    let (per_run, steps) = page.split_once("<section id=\"steps\">").unwrap();
    let steps = steps.split("</section>").next().unwrap();
    // The per-run regressions are unchanged: the outlier and the step's first run are both flagged there.
    assert!(per_run.contains("<td>op/decode</td>"), "{per_run}");
    assert!(per_run.contains("<td>op/encode</td>"), "{per_run}");
    // The steps section: op/encode once, at run 6 and its commit, +8%; not op/decode.
    let rows: Vec<&str> = steps.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 1, "{steps}");
    let row = rows[0];
    assert!(
        row.contains("<td>op/encode</td><td>time</td>")
            && row.contains(&format!("href=\"runs/{}.html\"", id(6)))
            && row.contains(&sha(6)[..7])
            && row.contains("regression"),
        "{row}"
    );
    let change: f64 = row
        .split("<td class=\"num\">")
        .nth(3)
        .and_then(|c| c.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((7.0..9.0).contains(&change), "{row}");
    assert!(!steps.contains("op/decode"), "{steps}");

    // The feed: one step entry, its id made of the series and run 6.
    let feed = read("feed.xml");
    let step_ids: Vec<&str> = feed
        .split("<id>")
        .filter_map(|e| e.split("</id>").next())
        .filter(|e| e.starts_with("urn:saeperf:step:"))
        .collect();
    assert_eq!(step_ids.len(), 1, "{feed}");
    assert!(step_ids[0].ends_with(&format!(":{}", id(6))), "{feed}");
    assert!(step_ids[0].contains("op_encode"), "{feed}");

    // The series charts: a step line on op/encode time, none on op/decode time.
    let series_of = |bench: &str| {
        walk(&site.join("series"))
            .into_iter()
            .map(|p| std::fs::read_to_string(p).unwrap().replace("&#x2f;", "/"))
            .find(|t| t.contains(&format!("<h1>{bench} · time</h1>")))
            .unwrap()
    };
    let encode = series_of("op/encode");
    assert_eq!(encode.matches("<g class=\"step regression\">").count(), 1);
    assert!(encode.contains(&format!("href=\"../runs/{}.html\"", id(6))));
    assert!(!series_of("op/decode").contains("class=\"step "));

    // Two more runs at the new level: the same step, the same feed entry.
    let first_id = step_ids[0].to_string();
    store_runs(12..14);
    let summary = build();
    assert_eq!(summary["steps"], 1, "{summary}");
    let feed = read("feed.xml");
    assert_eq!(feed.matches("urn:saeperf:step:").count(), 1, "{feed}");
    assert!(feed.contains(&format!("<id>{first_id}</id>")), "{feed}");
}

/// `runner calibrate`'s runs on the calibration page and nowhere else: two bench runs on main and two calibration
/// runs made with the bench crate's own `CalibrationRow` and `as_run`, on the same machine, commit and branch as the
/// bench runs (as on a real machine), stored through the store API in a real sled store and rendered by the real
/// binary. The page lists the machine (fingerprint id, CPU), the newest calibration's table and the older one as a
/// history row; no other page, series or count knows either calibration run.
#[test]
fn dashboard_calibration_page_lists_each_machine_and_no_other_page_lists_calibration_runs() {
    use saeperf_bench::calibrate::{as_run, CalibrationRow};
    use std::collections::BTreeMap;

    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let site = tmp.path().join("site");
    let sha = |c: char| c.to_string().repeat(40);
    let row = |method: &str, slowdown: f64, flagged: usize, timed: bool| CalibrationRow {
        method: method.into(),
        slowdown,
        comparisons: 3,
        rows: 6,
        flagged,
        per_op: BTreeMap::from([
            ("op/encode".to_string(), (flagged.min(3), 3)),
            ("op/decode".to_string(), (flagged.saturating_sub(3), 3)),
        ]),
        median_detectable: timed.then_some(0.021),
        pair_spread: timed.then_some(0.0043),
        secs_per_comparison: if timed { 41.0 } else { 7.5 },
    };
    let calibration = |id: &str, minutes: i64, commit: &str, table: &[CalibrationRow]| {
        let git = saeperf_git::GitState {
            commit: Some(commit.to_string()),
            branch: Some("main".into()),
            dirty: false,
        };
        let started = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
            + chrono::Duration::minutes(minutes);
        let mut run = as_run(table, &git, "saeperf", started);
        // The bench runs' machine (the test's fixed fingerprint), and a fixed id.
        run.meta.fingerprint = test_fingerprint();
        run.meta.fingerprint_id = test_fingerprint().id();
        run.meta.id = id.to_string();
        assert_eq!(run.meta.profile, saeperf_store::CALIBRATION_PROFILE);
        assert!(run.meta.is_calibration());
        run
    };
    let old_cal = "20260101T003000-cal001";
    let new_cal = "20260101T013000-cal002";
    {
        let store = Store::open(&db).unwrap();
        commit(
            &store,
            meta("20260101T000000-main00", 0, &sha('a'), "main", None),
            Knobs::default(),
        );
        commit(
            &store,
            meta("20260101T010000-main01", 60, &sha('b'), "main", None),
            Knobs {
                phase: 1,
                ..Knobs::default()
            },
        );
        for run in [
            calibration(
                old_cal,
                30,
                &sha('a'),
                &[
                    row("counted", 0.0, 0, false),
                    row("counted", 0.03, 6, false),
                    row("timed", 0.0, 2, true),
                    row("timed", 0.05, 4, true),
                ],
            ),
            calibration(
                new_cal,
                90,
                &sha('b'),
                &[
                    row("counted", 0.0, 0, false),
                    row("counted", 0.03, 6, false),
                    row("timed", 0.0, 1, true),
                    row("timed", 0.03, 5, true),
                ],
            ),
        ] {
            store.begin_run(&run.meta).unwrap();
            store.commit_run(&run).unwrap();
        }
    }
    let out = common::ok(
        common::runner(tmp.path())
            .env_remove("GITHUB_SERVER_URL")
            .arg("--db")
            .arg(&db)
            .args([
                "dashboard",
                "--json",
                "--repo-url",
                "https://github.com/octo/saeperf",
                "--out",
            ])
            .arg(&site),
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        summary["runs"], 2,
        "calibration runs are not runs of the site: {summary}"
    );
    assert_eq!(
        summary["groups"], 1,
        "no series group of calibrations: {summary}"
    );
    assert_eq!(summary["calibrations"], 2, "{summary}");
    let read = |rel: &str| {
        std::fs::read_to_string(site.join(rel))
            .unwrap()
            .replace("&#x2f;", "/")
            .replace("&#x27;", "'")
    };

    let page = read("calibration.html");
    let fp = test_fingerprint().id();
    assert!(page.contains(&format!("<code>{fp}</code>")), "{page}");
    assert!(
        page.contains("Test CPU 9000") && page.contains("6.1.0-test"),
        "{page}"
    );
    let (newest, history) = page.split_once("<h3>Earlier calibrations</h3>").unwrap();
    // The newest calibration's table: its run, commit (linked) and every row.
    assert!(
        newest.contains(new_cal)
            && !newest.contains(old_cal)
            && newest.contains(&format!(
                "https://github.com/octo/saeperf/commit/{}",
                sha('b')
            )),
        "{newest}"
    );
    for (method, change, flagged, rate) in [
        ("counted", "A/A", "0/6", "0.0%"),
        ("counted", "+3%", "6/6", "100.0%"),
        ("timed", "A/A", "1/6", "16.7%"),
        ("timed", "+3%", "5/6", "83.3%"),
    ] {
        let cells = format!(
            "<td>{method}</td><td>{change}</td><td class=\"num\">3</td><td class=\"num\">{flagged}</td>"
        );
        assert!(newest.contains(&cells), "{cells} missing in {newest}");
        assert!(newest.contains(rate), "{rate} missing in {newest}");
    }
    assert!(
        newest.contains("encode 3/3, decode 2/3") || newest.contains("decode 2/3, encode 3/3"),
        "{newest}"
    );
    assert!(
        newest.contains("±2.1%") && newest.contains("0.4%"),
        "{newest}"
    );
    // The timed A/A row flagged something: marked as false alarms.
    assert!(
        newest.contains("<td class=\"num worse\">16.7%</td>"),
        "{newest}"
    );
    // The history: the older run as one compact row, a column per (method, change) it measured.
    let history = history.split("</section>").next().unwrap();
    assert!(
        history.contains(old_cal) && !history.contains(new_cal),
        "{history}"
    );
    for col in ["counted A/A", "counted +3%", "timed A/A", "timed +5%"] {
        assert!(
            history.contains(&format!("<th class=\"num\">{col}</th>")),
            "{col}: {history}"
        );
    }
    assert!(
        history.contains("<td class=\"num\">0.0% (0/6)</td><td class=\"num\">100.0% (6/6)</td><td class=\"num\">33.3% (2/6)</td><td class=\"num\">66.7% (4/6)</td>"),
        "{history}"
    );

    // Nowhere else: not on the index (groups, recent runs), the compare picker, the regressions, the feed, a series
    // or a run page of its own.
    let index = read("index.html");
    assert!(index.contains("20260101T010000-main01"), "{index}");
    assert!(
        index.contains("href=\"calibration.html\""),
        "the nav links the page"
    );
    for f in walk(&site) {
        let rel = f.strip_prefix(&site).unwrap().to_str().unwrap().to_string();
        let text = read(&rel);
        if rel == "calibration.html" {
            continue;
        }
        for id in [old_cal, new_cal] {
            assert!(!text.contains(id), "{rel} lists calibration run {id}");
        }
        assert!(
            !text.contains("calibrate/"),
            "{rel} shows a calibration result"
        );
        assert!(
            !text.contains("-calibrate-"),
            "{rel} shows a calibration series group"
        );
    }
    // The second bench run is compared with the first, never with the calibration run between them.
    let compare = walk(&site.join("compare"));
    assert_eq!(compare.len(), 1, "{compare:?}");
    assert!(compare[0]
        .to_str()
        .unwrap()
        .ends_with("20260101T000000-main00__20260101T010000-main01.html"));
}

/// The kernel results on the run and series pages: an emulated result (made with the kernels crate's own report
/// types, so its metric names are the real ones) as a table per kernel, a roofline result as a table per op, in a
/// base run without a GPU ("no GPU run") and a head run with a cuda/ops result (the measured time beside the
/// estimate), where transpose's bank conflicts went 0 → 1024 and one emulated check failed with hostile text.
#[test]
fn dashboard_run_page_shows_emulated_kernels_and_the_roofline() {
    use saeperf_kernels::cuda::emu::{
        at_peak, EmuCounts, EmuReport, RooflineReport, RooflineRow, PEAKS,
    };
    use saeperf_kernels::ops::Shape;
    use saeperf_store::schema::{BenchKind, BenchStatus};
    use saeperf_store::BenchResult;
    use std::collections::BTreeMap;

    let result = |name: &str,
                  kind: BenchKind,
                  metrics: Vec<(String, f64)>,
                  extra: serde_json::Value| BenchResult {
        name: name.into(),
        kind,
        status: BenchStatus::Ok,
        samples: vec![],
        yardstick: vec![],
        metrics: metrics.into_iter().collect(),
        metric_seeds: BTreeMap::new(),
        deterministic: true,
        curve: vec![],
        extra,
    };
    let counts = |sectors: u64, conflicts: u64, flops: u64| EmuCounts {
        launches: 2,
        blocks: 8,
        threads: 2048,
        gld_requests: sectors / 4,
        gld_sectors: sectors,
        gst_requests: sectors / 8,
        gst_sectors: sectors / 2,
        global_bytes: 32 * sectors,
        shared_requests: 512,
        shared_wavefronts: 512 + conflicts,
        bank_conflicts: conflicts,
        barriers: 16,
        fp_ops: flops / 2,
        flops,
        ..Default::default()
    };
    let emulated = |conflicts: u64, failures: Vec<String>| {
        let report = EmuReport {
            compiler: "g++ (test) 12.2.0".into(),
            sources: "embedded".into(),
            shapes: saeperf_kernels::cuda::emu::COUNT_SHAPES.into(),
            comparisons: 170,
            failed: failures.len() as u32,
            failures,
            kernels: BTreeMap::from([
                ("adam_step".to_string(), counts(4096, 0, 65536)),
                (
                    "encode_gemm_relu".to_string(),
                    counts(35060, 82688, 1 << 22),
                ),
                ("transpose".to_string(), counts(20259, conflicts, 0)),
            ]),
            build_ms: 1.0,
            run_ms: 1.0,
        };
        // The extra of bench's run_emulated.
        let extra = serde_json::json!({
            "compiler": report.compiler, "sources": report.sources, "shapes": report.shapes,
            "comparisons": report.comparisons, "failed": report.failed, "failures": report.failures,
            "build_ms": report.build_ms, "run_ms": report.run_ms, "kernels": report.kernels,
        });
        result(
            "kernels/emulated",
            BenchKind::Emulated,
            report.metrics(),
            extra,
        )
    };
    let shape = Shape::new(4096, 576, 16384);
    let row = |op: &str, kernel: &str, c: EmuCounts| {
        let mut us = BTreeMap::new();
        let mut bound = "";
        for p in &PEAKS {
            let (t, b) = at_peak(&c, p);
            us.insert(p.name.to_string(), t);
            bound = b;
        }
        RooflineRow {
            op: op.into(),
            kernel: kernel.into(),
            counts: c,
            us,
            bound: bound.into(),
        }
    };
    let roofline = RooflineReport {
        compiler: "g++ (test) 12.2.0".into(),
        sources: "embedded".into(),
        shape,
        k: 64,
        sampled_blocks: 2,
        rows: vec![
            row("adam.all_params", "adam_step", counts(1 << 24, 0, 1 << 28)),
            row(
                "backward.dense",
                "bwd_dpre_gemm",
                counts(142_606_336, 0, 77_343_197_184),
            ),
            row(
                "backward.dense",
                "col_sums",
                counts(8_634_368, 0, 69_074_944),
            ),
        ],
        run_ms: 1.0,
    };
    let measured: BTreeMap<String, String> = roofline
        .rows
        .iter()
        .filter_map(|r| RooflineReport::measured_metric(&r.op, 64).map(|m| (r.op.clone(), m)))
        .collect();
    let roofline = result(
        "kernels/roofline",
        BenchKind::Roofline,
        roofline.metrics(),
        serde_json::json!({
            "compiler": roofline.compiler, "sources": roofline.sources, "shape": roofline.shape,
            "topk": roofline.k, "sampled_blocks": roofline.sampled_blocks, "peaks": PEAKS,
            "rows": roofline.rows, "measured_metric": measured, "run_ms": roofline.run_ms,
        }),
    );
    let cuda = result(
        "cuda/ops",
        BenchKind::CudaOps,
        vec![("cuda.backward.dense.ms".to_string(), 2.5)],
        serde_json::Value::Null,
    );
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let (base_id, head_id) = ("20260101T000000-kbase0", "20260101T010000-khead0");
    {
        let store = Store::open(&db).unwrap();
        for (id, minutes, c, extra) in [
            (base_id, 0, 'a', vec![emulated(0, vec![]), roofline.clone()]),
            (
                head_id,
                60,
                'b',
                vec![
                    emulated(
                        1024,
                        vec![format!("transpose 5x130x133: out[3] {HOSTILE_TOKEN}")],
                    ),
                    roofline,
                    cuda,
                ],
            ),
        ] {
            let m = meta(id, minutes, &c.to_string().repeat(40), "main", None);
            store.begin_run(&m).unwrap();
            let mut rs = results(Knobs::default());
            rs.extend(extra);
            store
                .commit_run(&Run {
                    meta: m,
                    results: rs,
                })
                .unwrap();
        }
    }
    let site = target_dir().join("dashboard-kernels-test");
    let _ = std::fs::remove_dir_all(&site);
    common::ok(
        common::runner(tmp.path())
            .arg("--db")
            .arg(&db)
            .args(["dashboard", "--out"])
            .arg(&site),
    );
    let read = |rel: &str| {
        std::fs::read_to_string(site.join(rel))
            .unwrap()
            .replace("&#x2f;", "/")
            .replace("&#x27;", "'")
    };
    let table = |page: &str, class: &str| -> String {
        page.split(&format!("<table class=\"{class}\">"))
            .nth(1)
            .and_then(|t| t.split("</table>").next())
            .unwrap_or_else(|| panic!("no table.{class}"))
            .to_string()
    };

    // The base run: one row per kernel, the roofline alone ("no GPU run"), the long metric list folded.
    let base = read(&format!("runs/{base_id}.html"));
    let kernels = table(&base, "kernels");
    for k in ["adam_step", "encode_gemm_relu", "transpose"] {
        assert!(
            kernels.contains(&format!("<tr><td>{k}</td>")),
            "{k}: {kernels}"
        );
    }
    assert!(
        kernels.contains(saeperf_kernels::cuda::emu::COUNT_SHAPES) && kernels.contains("82,688"),
        "{kernels}"
    );
    assert!(
        base.contains("What these counts cannot see: caches"),
        "{base}"
    );
    let roof = table(&base, "kernels roofline");
    assert!(
        roof.contains("<th>backward.dense</th>")
            && roof.contains("bwd_dpre_gemm")
            && roof.contains("no GPU run"),
        "{roof}"
    );
    assert!(
        roof.contains("no cache reuse") && roof.contains("H100 66.9 TFLOP/s FP32, 3.35 TB/s HBM"),
        "{roof}"
    );
    assert!(
        base.contains("metrics, with base and verdict</summary>"),
        "{base}"
    );
    assert!(
        !base.contains("class=\"alarm\""),
        "no failed check in the base"
    );

    // The head run: transpose's bank conflicts flagged in its cell and row, the failed check shown with its text,
    // the measured CUDA time beside the estimate with their ratio.
    let head = read(&format!("runs/{head_id}.html"));
    let kernels = table(&head, "kernels");
    let transpose = kernels
        .split("<tr><td>transpose</td>")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap();
    assert!(
        transpose.contains("<td class=\"num worse\" title=\"base 0 (+1,024 from 0)\">")
            && transpose.contains(">1,024</a>")
            && transpose.contains("<span class=\"verdict regression\">regression</span>")
            && transpose.contains(">bank_conflicts</a>"),
        "{transpose}"
    );
    assert!(
        head.contains(
            "<strong>1 of 170 emulated kernel results differ from their C++ references</strong>"
        ),
        "{head}"
    );
    assert!(
        !head.contains(HOSTILE_TOKEN),
        "the failure's text is escaped"
    );
    let roof = table(&head, "kernels roofline");
    // The op's H100 estimate: the sum of its kernels' times at the H100's peaks.
    let est: f64 = [
        counts(142_606_336, 0, 77_343_197_184),
        counts(8_634_368, 0, 69_074_944),
    ]
    .iter()
    .map(|c| at_peak(c, &PEAKS[0]).0)
    .sum();
    let dense = roof.split("<th>backward.dense</th>").nth(1).unwrap();
    assert!(
        dense.contains(">2500.0</a></td>")
            && dense.contains(&format!(">{:.2}×</td>", 2500.0 / est)),
        "{est} {dense}"
    );
    // adam has no cuda/ops counterpart: nothing measured, and no "no GPU run" in a run that has one.
    assert!(!roof.contains("no GPU run"), "{roof}");
    // The series pages of kernel metrics say what the metric is and what it cannot see.
    let note = |metric: &str| {
        let page = walk(&site.join("series"))
            .into_iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .find(|t| t.contains(&format!(" · {metric}</h1>")))
            .unwrap_or_else(|| panic!("no series page of {metric}"));
        page.split("<p class=\"metric-note\">")
            .nth(1)
            .map(|n| n.split("</p>").next().unwrap().to_string())
    };
    assert!(note("kernel.emu.transpose.bank_conflicts")
        .unwrap()
        .contains("32 banks"));
    assert!(note("roofline.backward.dense.h100_us")
        .unwrap()
        .contains("summed over its kernels"));
    assert!(note("roofline.backward.dense.col_sums.sector_bytes")
        .unwrap()
        .contains("DRAM"));
    assert!(note("kernel.emu.adam_step.flops").is_some());
    assert!(note("time").is_none() && note("kernel.emu.failed_checks").is_some());

    let Some(chrome) = find_chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed: CI must install it (apt-get install -y chromium) for the dashboard test");
        }
        eprintln!("SKIPPED the browser part of the kernel dashboard test: no chromium on PATH");
        return;
    };
    let (_browser, tab, errors, _profile) = chromium_tab(&chrome);
    tab.navigate_to(&file_url(&site.join(format!("runs/{head_id}.html"))))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    let v = eval_json(
        &tab,
        &format!(
            "const rows = document.querySelectorAll('table.kernels:not(.roofline) tbody tr');
             const alarm = document.querySelector('.alarm code');
             return {{ rows: rows.length, worse: document.querySelectorAll('table.kernels td.worse').length,
                       ops: document.querySelectorAll('table.roofline tr.op').length,
                       hostile: alarm.textContent.includes({h}), scripts: document.scripts.length,
                       folded: Array.from(document.querySelectorAll('details.folded')).every(d => !d.open) }};",
            h = serde_json::to_string(HOSTILE_TOKEN).unwrap()
        ),
    );
    assert_eq!(v["rows"], 3, "{v}");
    assert_eq!(v["worse"], 1, "{v}");
    assert_eq!(v["ops"], 2, "{v}");
    assert_eq!(v["hostile"], true, "the failure is shown as text: {v}");
    assert_eq!(v["scripts"], 0, "{v}");
    assert_eq!(v["folded"], true, "{v}");
    let errs = errors.lock().unwrap().clone();
    assert!(errs.is_empty(), "console errors {errs:?}");
    let shots = target_dir().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    eval_json(
        &tab,
        "document.querySelector('table.kernels').scrollIntoView(); return 0;",
    );
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(shots.join("run-kernels.png"), png).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn eval_json(tab: &headless_chrome::Tab, js: &str) -> serde_json::Value {
    let r = tab
        .evaluate(&format!("JSON.stringify((function(){{ {js} }})())"), false)
        .unwrap_or_else(|e| panic!("evaluating {js}: {e}"));
    let s = r
        .value
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "null".into());
    serde_json::from_str(&s).unwrap()
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.canonicalize().unwrap().display())
}

fn url_to_path(u: &str) -> Option<PathBuf> {
    let rest = u.strip_prefix("file://")?;
    let rest = rest.split(['#', '?']).next().unwrap();
    // Percent-decoding: the site's own names are ASCII-safe slugs; decode the few escapes a browser may add.
    let mut out = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&rest[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Some(PathBuf::from(String::from_utf8(out).unwrap()))
}

/// Console errors, exceptions and dialogs a tab recorded.
type Errors = Arc<Mutex<Vec<String>>>;

/// Headless Chromium with one tab that records its [`Errors`]; the profile directory must live as long as the browser.
fn chromium_tab(
    chrome: &Path,
) -> (
    Browser,
    Arc<headless_chrome::Tab>,
    Errors,
    tempfile::TempDir,
) {
    let profile = tempfile::tempdir().unwrap();
    let args: Vec<&std::ffi::OsStr> = [
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--allow-file-access-from-files",
    ]
    .iter()
    .map(std::ffi::OsStr::new)
    .collect();
    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chrome.to_path_buf()))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 1600)))
            .user_data_dir(Some(profile.path().to_path_buf()))
            .args(args)
            .idle_browser_timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap(),
    )
    .expect("starting headless chromium");
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(std::time::Duration::from_secs(20));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let e2 = errors.clone();
    tab.add_event_listener(Arc::new(move |ev: &Event| {
        let msg = match ev {
            Event::LogEntryAdded(e) => {
                let entry = &e.params.entry;
                let level = format!("{:?}", entry.level);
                (level == "Error").then(|| format!("log: {} {:?}", entry.text, entry.url))
            }
            Event::RuntimeExceptionThrown(e) => {
                Some(format!("exception: {}", e.params.exception_details.text))
            }
            Event::RuntimeConsoleAPICalled(e) => {
                let t = format!("{:?}", e.params.Type);
                matches!(t.as_str(), "Error" | "Assert").then(|| {
                    format!(
                        "console.{t}: {:?}",
                        e.params.args.first().and_then(|a| a.value.clone())
                    )
                })
            }
            Event::PageJavascriptDialogOpening(e) => Some(format!(
                "a dialog opened (script ran!): {}",
                e.params.message
            )),
            _ => None,
        };
        if let Some(m) = msg {
            e2.lock().unwrap().push(m);
        }
    }))
    .unwrap();
    tab.enable_log().unwrap();
    tab.enable_runtime().unwrap();
    (browser, tab, errors, profile)
}

fn browse(chrome: &Path, site: &Path) {
    let (_browser, tab, errors, _profile) = chromium_tab(chrome);

    let start = site.join("index.html").canonicalize().unwrap();
    let mut queue = VecDeque::from([start.clone()]);
    let mut seen: BTreeSet<PathBuf> = BTreeSet::from([start]);
    let mut visited = 0;
    let links_js = r#"return Array.from(document.querySelectorAll('a[href], link[href], script[src]'))
        .map(e => e.href && e.href.baseVal !== undefined ? new URL(e.href.baseVal, document.baseURI).href : (e.href || e.src));"#;
    while let Some(page) = queue.pop_front() {
        let url = file_url(&page);
        errors.lock().unwrap().clear();
        tab.navigate_to(&url)
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        let ready = eval_json(&tab, "return document.readyState;");
        assert_eq!(ready, "complete", "{url}");
        let links = eval_json(&tab, links_js);
        for l in links.as_array().unwrap() {
            let l = l.as_str().unwrap();
            if l.starts_with("https://github.com/octo/saeperf/commit/") || l.starts_with("data:") {
                continue;
            }
            let p = url_to_path(l).unwrap_or_else(|| panic!("{url} links outside the site: {l}"));
            assert!(p.is_file(), "{url}: link {l} does not resolve");
            let p = p.canonicalize().unwrap();
            if p.extension().is_some_and(|e| e == "html") && seen.insert(p.clone()) {
                queue.push_back(p);
            }
        }
        // No request leaves the site: every resource the page loaded is a file under it (or inline data).
        let resources = eval_json(
            &tab,
            "return performance.getEntriesByType('resource').map(r => r.name);",
        );
        for r in resources.as_array().unwrap() {
            let r = r.as_str().unwrap();
            assert!(
                r.starts_with("file://") || r.starts_with("data:"),
                "{url} requested {r}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        let errs = errors.lock().unwrap().clone();
        assert!(errs.is_empty(), "{url}: console errors {errs:?}");
        visited += 1;
    }
    let all_pages = walk(site)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .count();
    assert_eq!(visited, all_pages, "every page is reachable from the index");

    let shots = target_dir().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let open = |rel: &str| {
        tab.navigate_to(&file_url(&site.join(rel)))
            .unwrap()
            .wait_until_navigated()
            .unwrap();
    };
    let shot = |name: &str| {
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::write(shots.join(name), png).unwrap();
    };

    // Index: sparklines, the hostile branch as text.
    open("index.html");
    let v = eval_json(
        &tab,
        &format!(
            "return {{ sparks: document.querySelectorAll('svg.spark polyline').length,
                      hostile: Array.from(document.querySelectorAll('td.branch')).some(td => td.textContent === {h}),
                      scripts: document.scripts.length }};",
            h = serde_json::to_string(HOSTILE_BRANCH).unwrap()
        ),
    );
    assert!(v["sparks"].as_u64().unwrap() >= 10, "{v}");
    assert_eq!(
        v["hostile"], true,
        "the hostile branch is not shown as text: {v}"
    );
    assert_eq!(v["scripts"], 0);
    shot("index.png");

    // The scheduler's status page: the hostile branch and detail shown as text, the run and log linked.
    open("status.html");
    let v = eval_json(
        &tab,
        "return { branch: document.querySelector('table.attempts td.branch').textContent,
                  links: Array.from(document.querySelectorAll('table.attempts a')).map(a => a.textContent) };",
    );
    assert_eq!(v["branch"], "<script>alert(3)</script>", "{v}");
    assert!(
        v["links"].as_array().unwrap().iter().any(|l| l == "log")
            && v["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == "20260101T070000-main07"),
        "{v}"
    );
    shot("status.png");

    // The op/encode time series: history chart, noise band, the flagged regression.
    let series = walk(&site.join("series"))
        .into_iter()
        .find(|p| {
            let t = std::fs::read_to_string(p).unwrap();
            t.contains("<h1>op&#x2f;encode · time</h1>")
        })
        .expect("series page of op/encode time");
    open(series.strip_prefix(site).unwrap().to_str().unwrap());
    let v = eval_json(
        &tab,
        "return { line: document.querySelectorAll('svg.chart polyline.line').length,
                  band: document.querySelectorAll('svg.chart polygon.band').length,
                  regressions: document.querySelectorAll('svg.chart circle.marker.regression').length,
                  points: document.querySelectorAll('svg.chart circle.marker').length };",
    );
    assert_eq!(v["line"], 1, "{v}");
    assert_eq!(v["band"], 1, "{v}");
    assert_eq!(v["regressions"], 1, "{v}");
    assert_eq!(v["points"], 8, "{v}");
    shot("series.png");

    // The newest main run: curves, the density histogram with its dense spike, the feature cards.
    open("runs/20260101T070000-main07.html");
    let v = eval_json(
        &tab,
        &format!(
            "const bars = Array.from(document.querySelectorAll('svg.histogram rect.bar'));
             const dense = bars.filter(b => b.classList.contains('dense')).map(b => b.getBBox().height);
             const bins = bars.filter(b => b.classList.contains('bin')).map(b => b.getBBox().height);
             return {{ histograms: document.querySelectorAll('svg.histogram').length, bars: bars.length,
                       spike: Math.max(...dense), tallest_bin: Math.max(...bins),
                       curves: document.querySelectorAll('svg.chart.curve').length,
                       cards: document.querySelectorAll('.card').length,
                       focus: document.querySelector('.tok.focus').textContent,
                       hostile_token: Array.from(document.querySelectorAll('.tok')).some(t => t.textContent === {h}),
                       imgs: document.images.length }};",
            h = serde_json::to_string(HOSTILE_TOKEN).unwrap()
        ),
    );
    assert_eq!(v["histograms"], 2, "{v}");
    assert_eq!(v["bars"], 58, "{v}");
    assert!(
        v["spike"].as_f64().unwrap() > v["tallest_bin"].as_f64().unwrap(),
        "the dense spike is not visible: {v}"
    );
    assert_eq!(v["curves"], 6, "{v}");
    assert_eq!(v["cards"], 2, "{v}");
    assert_eq!(v["focus"], " invention");
    assert_eq!(v["hostile_token"], true, "{v}");
    assert_eq!(v["imgs"], 0, "corpus text became an element");
    shot("run.png");
    eval_json(
        &tab,
        "document.querySelector('svg.histogram').scrollIntoView(); return 0;",
    );
    shot("run-density-and-features.png");

    // The pull request's run page and the any-two-runs page with the hostile branch.
    open("runs/20260101T083000-prhost.html");
    let v = eval_json(
        &tab,
        "return { branch: document.querySelector('td.branch').textContent, scripts: document.scripts.length,
                  verdict: document.querySelector('.lede .verdict').textContent };",
    );
    assert_eq!(v["branch"], HOSTILE_BRANCH);
    assert_eq!(v["scripts"], 0);
    assert_eq!(v["verdict"], "regression", "{v}");
    tab.navigate_to(&format!(
        "{}#base=20260101T070000-main07&head=20260101T083000-prhost",
        file_url(&site.join("compare.html"))
    ))
    .unwrap()
    .wait_until_navigated()
    .unwrap();
    errors.lock().unwrap().clear();
    let v = eval_json(
        &tab,
        &format!(
            "const sel = document.getElementById('head');
             return {{ head: sel.value, label: sel.options[sel.selectedIndex].textContent,
                       rows: document.querySelectorAll('#table tbody tr').length,
                       worse: Array.from(document.querySelectorAll('#table td.worse')).length,
                       hostile_option: Array.from(sel.options).some(o => o.textContent.includes({h})) }};",
            h = serde_json::to_string(HOSTILE_BRANCH).unwrap()
        ),
    );
    assert_eq!(v["head"], "20260101T083000-prhost", "{v}");
    assert!(v["rows"].as_u64().unwrap() >= 10, "{v}");
    assert!(v["worse"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["hostile_option"], true, "{v}");
    let errs = errors.lock().unwrap().clone();
    assert!(errs.is_empty(), "compare.html: {errs:?}");
}
