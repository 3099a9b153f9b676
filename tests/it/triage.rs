//! Triage end to end: a real sled store, the real `runner` binary. A maintainer acknowledges a regression
//! (`runner triage ack`): the comparison's row reads acknowledged, the overall verdict too, `runner compare` exits 0,
//! the comment's headline and the commit status say who and why; a later run at the acked level stays quiet against
//! the acked run's predecessors and against its own history (the noise band restarted at the ack) while an unrelated
//! regression is still flagged; a dismissed false alarm reads noise; the dashboard lists both.

use std::path::Path;

use saeperf_store::Store;

use crate::common;
use crate::report::{commit, meta, FakeGitHub, Knobs};

const BASE: &str = "20260101T001000-base01";
const HEAD: &str = "20260101T002000-head01";
const LATER: &str = "20260101T003000-later1";
const NOISY: &str = "20260101T004000-noisy1";

fn sha(k: u64) -> String {
    format!("{:040x}", 0xabc000 + k)
}

/// Ten main-branch runs of history and the base at 1.0 ms for op/encode, the head at 1.3 ms (a regression, on
/// pull request 7), a later run at the head's level with fve worse (an unrelated regression), and a run after it
/// with mse worse (the false alarm that gets dismissed).
fn store(db: &Path) {
    let store = Store::open(db).unwrap();
    for k in 0..10u64 {
        commit(
            &store,
            meta(
                &format!("20260101T00{k:02}00-hist{k:02}"),
                k as i64,
                &sha(k),
                "main",
                None,
            ),
            Knobs {
                phase: k as usize % 5,
                ..Knobs::default()
            },
        );
    }
    commit(
        &store,
        meta(BASE, 10, &sha(10), "main", None),
        Knobs::default(),
    );
    commit(
        &store,
        meta(HEAD, 20, &sha(20), "main", Some(7)),
        Knobs {
            encode_time: 1.3e-3,
            phase: 2,
            ..Knobs::default()
        },
    );
    commit(
        &store,
        meta(LATER, 30, &sha(30), "main", None),
        Knobs {
            encode_time: 1.3e-3,
            fve: 0.85,
            phase: 3,
            ..Knobs::default()
        },
    );
    commit(
        &store,
        meta(NOISY, 40, &sha(40), "main", None),
        Knobs {
            encode_time: 1.3e-3,
            fve: 0.85,
            mse: 0.0236,
            phase: 4,
            ..Knobs::default()
        },
    );
}

fn runner(home: &Path, db: &Path) -> std::process::Command {
    let mut c = common::runner(home);
    c.arg("--db").arg(db).env_remove("USER");
    c
}

/// `runner compare BASE HEAD --json`: (exit code, comparison).
fn compare(home: &Path, db: &Path, base: &str, head: &str) -> (i32, serde_json::Value) {
    let o = common::run(runner(home, db).args(["compare", base, head, "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap(), v)
}

fn row<'a>(c: &'a serde_json::Value, bench: &str, metric: &str) -> &'a serde_json::Value {
    c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["bench"] == bench && r["metric"] == metric)
        .unwrap_or_else(|| panic!("no row {bench} {metric} in {c}"))
}

fn regressions(c: &serde_json::Value) -> Vec<String> {
    c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verdict"] == "regression")
        .map(|r| {
            format!(
                "{} {}",
                r["bench"].as_str().unwrap(),
                r["metric"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn an_acknowledged_regression_passes_restarts_the_band_and_shows_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, db) = (tmp.path(), tmp.path().join("store"));
    store(&db);

    // (a) The regression, exit 2; acked; then acknowledged, exit 0.
    let (code, c) = compare(home, &db, BASE, HEAD);
    assert_eq!(code, 2, "{c}");
    assert_eq!(c["overall"], "regression");
    assert_eq!(regressions(&c), ["op/encode time"], "{c}");
    let out = common::ok(runner(home, &db).args([
        "triage",
        "ack",
        HEAD,
        "op/encode",
        "time",
        "--reason",
        "new steps",
        "--by",
        "alice",
    ]));
    assert!(
        out.starts_with(
            "acknowledged op/encode time in run 20260101T002000-head01 (by alice: new steps)"
        ),
        "{out}"
    );
    let (code, c) = compare(home, &db, BASE, HEAD);
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["overall"], "acknowledged");
    let r = row(&c, "op/encode", "time");
    assert_eq!(r["verdict"], "acknowledged");
    assert_eq!(r["triage"]["by"], "alice");
    assert_eq!(r["triage"]["reason"], "new steps");
    assert_eq!(r["triage"]["action"], "ack");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .starts_with("regression acknowledged by @alice: new steps"),
        "{r}"
    );
    // The table for people shows the acknowledged row and the overall verdict.
    let text = common::ok(runner(home, &db).args(["compare", BASE, HEAD]));
    assert!(
        text.contains("acknowledged") && text.contains("overall: acknowledged (exit code 0)"),
        "{text}"
    );
    // The comment's headline says who and why; its table row too.
    let comment =
        common::ok(runner(home, &db).args(["report", "comment", "--head", HEAD, "--base", BASE]));
    let first = comment.lines().next().unwrap();
    assert!(
        first.contains("saeperf: 1 regression acknowledged by &#64;alice: new steps"),
        "{first}"
    );
    assert!(
        comment.contains("### Acknowledged regressions"),
        "{comment}"
    );
    assert!(
        comment.lines().any(
            |l| l.starts_with("| op/encode | time |") && l.contains("&#64;alice | new steps |")
        ),
        "{comment}"
    );

    // (b) A later run at the new level against the acked run's predecessor: the acked change is not flagged again,
    // the unrelated fve regression is.
    let (code, c) = compare(home, &db, BASE, LATER);
    assert_eq!(code, 2, "{c}");
    assert_eq!(regressions(&c), ["relu-l1 fve"], "{c}");
    let r = row(&c, "op/encode", "time");
    assert_eq!(r["verdict"], "acknowledged", "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("the change acknowledged in run 20260101T002000-head01 by @alice: new steps"),
        "{r}"
    );
    // ... and against the acked run with its history: quiet, the band of op/encode restarted at the ack (no fence
    // from the runs before it), while op/decode keeps its fence.
    let (code, c) = compare(home, &db, HEAD, LATER);
    assert_eq!(code, 2, "{c}");
    assert_eq!(regressions(&c), ["relu-l1 fve"], "{c}");
    let enc = row(&c, "op/encode", "time");
    assert_eq!(enc["verdict"], "noise", "{enc}");
    assert!(
        enc["detail"]
            .as_str()
            .unwrap()
            .contains("minimum (short history)"),
        "{enc}"
    );
    let dec = row(&c, "op/decode", "time");
    assert!(
        dec["detail"].as_str().unwrap().contains("history fence"),
        "{dec}"
    );

    // (c) An unknown run, benchmark or metric: one line, exit 1; nothing recorded.
    for (run, bench, metric, want) in [
        (
            "20990101T000000-nosuch",
            "op/encode",
            "time",
            "no run matches",
        ),
        (HEAD, "op/nosuch", "time", "has no benchmark \"op/nosuch\""),
        (HEAD, "op/encode", "mse", "has no metric \"mse\""),
    ] {
        let o = common::run(
            runner(home, &db).args(["triage", "ack", run, bench, metric, "--reason", "x"]),
        );
        assert_eq!(o.status.code(), Some(1), "{run} {bench} {metric}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(want), "{err}");
    }

    // (d) A false alarm dismissed; the list has both, as JSON for machines.
    let (code, c) = compare(home, &db, LATER, NOISY);
    assert_eq!(
        (code, regressions(&c)),
        (2, vec!["relu-l1 mse".to_string()]),
        "{c}"
    );
    common::ok(runner(home, &db).args([
        "triage",
        "dismiss",
        NOISY,
        "relu-l1",
        "mse",
        "--reason",
        "the machine was busy",
        "--by",
        "bob",
    ]));
    let (code, c) = compare(home, &db, LATER, NOISY);
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["overall"], "noise");
    let r = row(&c, "relu-l1", "mse");
    assert_eq!(
        (&r["verdict"], &r["triage"]["action"]),
        (&"noise".into(), &"dismiss".into())
    );
    let list: serde_json::Value = serde_json::from_str(&common::ok(
        runner(home, &db).args(["triage", "list", "--json"]),
    ))
    .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        (
            &list[0]["action"],
            &list[0]["run"],
            &list[0]["by"],
            &list[0]["source"]
        ),
        (&"ack".into(), &HEAD.into(), &"alice".into(), &"cli".into())
    );
    assert_eq!(
        (
            &list[1]["action"],
            &list[1]["bench"],
            &list[1]["metric"],
            &list[1]["by"]
        ),
        (
            &"dismiss".into(),
            &"relu-l1".into(),
            &"mse".into(),
            &"bob".into()
        )
    );
    let table = common::ok(runner(home, &db).args(["triage", "list"]));
    assert!(
        table.contains("the machine was busy") && table.contains("new steps"),
        "{table}"
    );
    // Without --by and $USER: "unknown".
    common::ok(runner(home, &db).args([
        "triage", "dismiss", LATER, "op/adam", "time", "--reason", "a spike",
    ]));
    let list: serde_json::Value = serde_json::from_str(&common::ok(
        runner(home, &db).args(["triage", "list", "--json"]),
    ))
    .unwrap();
    assert_eq!(list[2]["by"], "unknown");
    // The store's check knows the tree; an export carries the records.
    let check: serde_json::Value = serde_json::from_str(&common::ok(
        runner(home, &db).args(["db", "check", "--json"]),
    ))
    .unwrap();
    assert_eq!(check["triage"], 3, "{check}");
    let bundle: serde_json::Value = serde_json::from_str(&common::ok(
        runner(home, &db).args(["db", "export", "--run", HEAD]),
    ))
    .unwrap();
    assert_eq!(bundle["triage"].as_array().unwrap().len(), 1, "{bundle}");

    // (e) The dashboard: the acked regression is listed as acknowledged with who, when and why, not as open; the
    // dismissed false alarms are listed; the calibration page counts them per machine.
    let site = tmp.path().join("site");
    common::ok(runner(home, &db).args(["dashboard", "--out"]).arg(&site));
    let read = |f: &str| {
        std::fs::read_to_string(site.join(f))
            .unwrap()
            .replace("&#x2f;", "/")
    };
    let page = read("regressions.html");
    let (open, rest) = page.split_once("<section id=\"acknowledged\">").unwrap();
    let (acked, rest) = rest.split_once("<section id=\"dismissed\">").unwrap();
    let (dismissed, steps) = rest.split_once("<section id=\"steps\">").unwrap();
    assert!(
        !open.contains("<td>op/encode</td>"),
        "the acked regression is not open:\n{open}"
    );
    assert!(
        open.contains("<td>fve</td>"),
        "the unrelated one is:\n{open}"
    );
    let ack_rows: Vec<&str> = acked.split("<tr>").skip(2).collect();
    assert_eq!(ack_rows.len(), 1, "{acked}");
    assert!(
        ack_rows[0].contains("acknowledged")
            && ack_rows[0].contains("<td>@alice</td>")
            && ack_rows[0].contains("new steps")
            && ack_rows[0].contains("<td>op/encode</td><td>time</td>")
            && ack_rows[0].contains(&format!("runs/{HEAD}.html"))
            && ack_rows[0].contains(" UTC</td>"),
        "{}",
        ack_rows[0]
    );
    let dis_rows: Vec<&str> = dismissed.split("<tr>").skip(2).collect();
    assert_eq!(dis_rows.len(), 2, "{dismissed}");
    assert!(
        dismissed.contains("<td>@bob</td>")
            && dismissed.contains("the machine was busy")
            && dismissed.contains("dismissed"),
        "{dismissed}"
    );
    // The step the ack explains is marked acknowledged (and makes no feed entry).
    let steps = steps.split("</section>").next().unwrap();
    assert!(
        steps.contains("<td>op/encode</td><td>time</td>")
            && steps.contains("acknowledged by @alice"),
        "{steps}"
    );
    let feed = read("feed.xml");
    assert!(
        !feed.contains("urn:saeperf:step:"),
        "acked step in the feed: {feed}"
    );
    assert!(
        feed.contains("urn:saeperf:regression:20260101T003000-later1"),
        "{feed}"
    );
    assert!(
        !feed.contains("urn:saeperf:regression:20260101T002000-head01"),
        "{feed}"
    );
    let calibration = read("calibration.html");
    assert!(
        calibration.contains("false alarms dismissed by maintainers: 2"),
        "{calibration}"
    );
    // The run page and compare page read acknowledged too.
    assert!(read(&format!("runs/{HEAD}.html")).contains("acknowledged"));

    // (f) `report post`: the commit status is a success and its description says acknowledged.
    let gh = FakeGitHub::start("octo/saeperf", 7);
    let o = common::run(
        runner(home, &db)
            .env("GITHUB_TOKEN", "test-token")
            .env_remove("GITHUB_REPOSITORY")
            .env_remove("GITHUB_API_URL")
            .env_remove("SAEPERF_DASHBOARD_URL")
            .args(["report", "post", "--repo", "octo/saeperf", "--api-url"])
            .arg(&gh.url)
            .args(["--retry-delay-ms", "50", "--bot-login", "saeperf-bot"])
            .args(["--head", HEAD, "--base", BASE]),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = gh.state.lock().unwrap();
    let (sha_posted, st) = s.statuses.last().expect("a commit status");
    assert_eq!(sha_posted, &sha(20));
    assert_eq!(st["state"], "success", "{st}");
    let desc = st["description"].as_str().unwrap();
    assert!(
        desc.starts_with("saeperf: 1 regression acknowledged by @alice: new steps"),
        "{desc}"
    );
    assert!(s
        .comments
        .last()
        .unwrap()
        .1
        .contains("### Acknowledged regressions"));
}
