//! The results store through the real `runner` binary: lock errors, integrity check, export/ingest round trips,
//! compare and history on a real sled store in a temp directory.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn runner(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("SAEPERF_DB")
        .output()
        .expect("runner starts")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ids(db: &Path) -> Vec<String> {
    let o = runner(db, &["db", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn second_process_gets_a_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    let held = sled::open(&db).unwrap(); // this process holds sled's file lock
    let t = Instant::now();
    let o = runner(&db, &["db", "check"]);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let msg = text(&o);
    assert!(msg.contains("in use by another process"), "{msg}");
    assert!(msg.contains(&db.display().to_string()), "{msg}");
    drop(held);
    let o = runner(&db, &["db", "check"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn export_ingest_reproduces_comparisons_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let o = runner(&a, &["db", "synth-history", "--runs", "12"]);
    assert!(o.status.success(), "{}", text(&o));
    let ids = run_ids(&a);
    assert_eq!(ids.len(), 12);
    let bundle = dir.path().join("bundle.json");
    let o = runner(&a, &["db", "export", "--out", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = runner(&b, &["ingest", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("12 runs added"), "{}", text(&o));
    // Ingesting again is a no-op.
    let o = runner(&b, &["ingest", bundle.to_str().unwrap()]);
    assert!(
        text(&o).contains("0 runs added, 12 already present"),
        "{}",
        text(&o)
    );
    assert_eq!(run_ids(&b), ids);
    for (base, head) in [(&ids[3], &ids[11]), (&ids[0], &ids[1])] {
        let ca = runner(&a, &["compare", base, head, "--json"]);
        let cb = runner(&b, &["compare", base, head, "--json"]);
        assert_eq!(ca.status.code(), cb.status.code());
        assert!(!ca.stdout.is_empty(), "{}", text(&ca));
        assert_eq!(ca.stdout, cb.stdout);
    }
    let ha = runner(&a, &["history", "op/encode", "time", "--json"]);
    let hb = runner(&b, &["history", "op/encode", "time", "--json"]);
    assert!(ha.status.success(), "{}", text(&ha));
    assert_eq!(ha.stdout, hb.stdout);
    let o = runner(&b, &["db", "check"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn bad_bundles_and_unknown_runs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        b"{\"format\": \"saeperf-bundle\", \"schema_version\": 99, \"runs\": []}",
    )
    .unwrap();
    let o = runner(&db, &["ingest", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("schema version 99"), "{}", text(&o));
    std::fs::write(&bad, b"not json").unwrap();
    let o = runner(&db, &["ingest", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("bad.json"), "{}", text(&o));
    let o = runner(&db, &["compare", "nope", "latest"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no run matches"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"));
}
