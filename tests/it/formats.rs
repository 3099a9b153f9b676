//! The field's dictionary layouts through the real binary: `runner export --format saelens|dictionary-learning|
//! sparsify` and `runner eval` on the export (docs/formats.md).

use std::path::Path;

use crate::common::{ok, read_json, run, runner};
use crate::engine::{manifest_split, plain_metrics};

fn synth(home: &Path, dir: &Path) {
    ok(runner(home)
        .args(["data", "synth", "--out"])
        .arg(dir)
        .args([
            "--d-in",
            "16",
            "--features",
            "48",
            "--train-tokens",
            "4000",
            "--eval-tokens",
            "600",
        ]));
}

fn eval(home: &Path, dict: &Path, data: &Path, out: &Path) -> serde_json::Value {
    ok(runner(home)
        .args(["eval", "--dict"])
        .arg(dict)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out));
    read_json(out)
}

fn num(m: &serde_json::Value, k: &str) -> f64 {
    m[k].as_f64()
        .unwrap_or_else(|| panic!("metrics.json has no number {k}: {m}"))
}

/// saeperf → SAELens → saeperf gives the same metrics; the export alone, read as SAELens reads it (raw inputs, no
/// scaling factor), gives the FVU and L0 saeperf reported, by `runner eval` and by a plain forward on its files; and
/// a directory written the way SAELens' `save_model` writes it (no saeperf block) is read by `runner eval`.
#[test]
fn saelens_export_round_trips_and_keeps_fvu_and_l0_on_raw_activations() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, data) = (tmp.path().join("home"), tmp.path().join("set"));
    synth(&home, &data);
    for (name, extra) in [
        ("relu", vec!["--l1", "1"]),
        ("topk", vec!["--arch", "topk", "--k", "4"]),
        ("jumprelu", vec!["--arch", "jumprelu", "--l1", "0.5"]),
        ("gated", vec!["--arch", "gated", "--l1", "1"]),
        ("batchtopk", vec!["--arch", "batchtopk", "--k", "4"]),
        (
            "matryoshka",
            vec!["--arch", "matryoshka", "--k", "4", "--aux-k", "8"],
        ),
    ] {
        let dict = tmp.path().join(name);
        ok(runner(&home)
            .args(["train", "--quiet", "--json", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&dict)
            .args([
                "--d-sae", "64", "--steps", "200", "--batch", "256", "--lr", "1e-2",
            ])
            .args(&extra));
        // `runner train` writes SAELens' layout, folded, with the factor in the saeperf block.
        let scale = read_json(&dict.join("cfg.json"))["saeperf"]["scaling_factor_folded"]
            .as_f64()
            .unwrap();
        assert!(
            (scale - 1.0).abs() > 1e-3,
            "the test needs a scaling factor other than 1, got {scale}"
        );
        let orig = eval(
            &home,
            &dict,
            &data,
            &tmp.path().join(format!("{name}-orig.json")),
        );

        let exp = tmp.path().join(format!("{name}-saelens"));
        ok(runner(&home)
            .args(["export", "--format", "saelens", "--dict"])
            .arg(&dict)
            .arg("--out")
            .arg(&exp)
            .arg("--data")
            .arg(&data));
        let cfg = read_json(&exp.join("cfg.json"));
        assert!(cfg.get("scaling_factor").is_none(), "{cfg}");
        assert_eq!(
            cfg,
            read_json(&dict.join("cfg.json")),
            "the export is the layout `runner train` wrote"
        );
        assert_eq!(cfg["metadata"]["sae_lens_version"], "6.54.12");

        // Round trip: every metric as before (folding changes a weight by at most one unit in the last place).
        let back = eval(
            &home,
            &exp,
            &data,
            &tmp.path().join(format!("{name}-back.json")),
        );
        for k in [
            "mse",
            "l0",
            "l1",
            "fvu",
            "fve",
            "dead_fraction",
            "cossim",
            "l2_ratio",
            "explained_variance",
            "mmcs",
            "recovered_fraction",
        ] {
            let (a, b) = (num(&back, k), num(&orig, k));
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                "{name} {k}: round trip {a} vs original {b}"
            );
        }

        // The other layouts: the same round trip through `runner export` and `runner eval`.
        let mut formats = vec!["dictionary-learning"];
        if name == "topk" {
            formats.push("sparsify");
        }
        for fmt in formats {
            let out = tmp.path().join(format!("{name}-{fmt}"));
            ok(runner(&home)
                .args(["export", "--format", fmt, "--dict"])
                .arg(&dict)
                .arg("--out")
                .arg(&out));
            let m = eval(
                &home,
                &out,
                &data,
                &tmp.path().join(format!("{name}-{fmt}.json")),
            );
            for k in ["mse", "l0", "fvu", "dead_fraction", "mmcs"] {
                let (a, b) = (num(&m, k), num(&orig, k));
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                    "{name} via {fmt} {k}: {a} vs original {b}"
                );
            }
        }
        if name == "relu" {
            let o = run(runner(&home)
                .args(["export", "--format", "sparsify", "--dict"])
                .arg(&dict)
                .arg("--out")
                .arg(tmp.path().join("relu-sparsify")));
            assert_eq!(o.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&o.stderr).contains("TopK dictionaries only"));
        }

        // The export as SAELens sees it: a plain forward on its files, raw inputs.
        let (n_train, n_tokens) = manifest_split(&data);
        let p = plain_metrics(&exp, &data, n_train..n_tokens);
        for (k, got) in [("fvu", p.fvu), ("l0", p.l0)] {
            let want = num(&orig, k);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
                "{name} {k}: the exported files give {got}, saeperf reported {want}"
            );
        }

        // Without the saeperf block (as SAELens' save_model writes it): raw units, same FVU and L0, MSE in raw
        // units (scaled MSE / scale²).
        let mut c = cfg.clone();
        c.as_object_mut().unwrap().remove("saeperf");
        std::fs::write(exp.join("cfg.json"), c.to_string()).unwrap();
        let raw = eval(
            &home,
            &exp,
            &data,
            &tmp.path().join(format!("{name}-raw.json")),
        );
        for k in ["fvu", "l0", "dead_fraction"] {
            let (a, b) = (num(&raw, k), num(&orig, k));
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                "{name} {k}: {a} vs {b}"
            );
        }
        let (a, b) = (num(&raw, "mse") * scale * scale, num(&orig, "mse"));
        assert!(
            (a - b).abs() <= 1e-4 * b,
            "{name} mse in raw units: {a} vs {b}"
        );

        // A malformed one: one line naming the key, exit 1, nothing written.
        c["architecture"] = serde_json::json!("matching_pursuit");
        std::fs::write(exp.join("cfg.json"), c.to_string()).unwrap();
        let out_json = tmp.path().join(format!("{name}-bad.json"));
        let o = run(runner(&home)
            .args(["eval", "--dict"])
            .arg(&exp)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out_json));
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("architecture \"matching_pursuit\"") && err.contains("cfg.json"),
            "{err}"
        );
        assert!(!out_json.exists());
    }
}

/// The field's own packages load what saeperf writes: SAELens (`SAE.load_from_disk`) reads `runner train`'s
/// directory as it is, dictionary_learning (`utils.load_dictionary`) and sparsify (`SparseCoder.load_from_disk`)
/// read `runner export`'s, and each one's encode/decode on raw activations gives the FVU and L0 `runner eval`
/// reported (tests/interop/field_load.py). The packages live in the venv `.ci/run` creates; its python is named by
/// `SAEPERF_FIELD_PYTHON`. Without it the test says so and passes, except in CI, where it fails unless
/// `SAEPERF_FIELD_UNAVAILABLE` gives the reason `.ci/run` could not install them (a disk too full for torch); the
/// test then prints that reason, so the log says what this run did not check.
#[test]
fn the_fields_packages_load_the_dictionaries() {
    let Some(python) = std::env::var_os("SAEPERF_FIELD_PYTHON") else {
        if let Some(why) = std::env::var_os("SAEPERF_FIELD_UNAVAILABLE") {
            eprintln!(
                "NOT CHECKED: the field's packages did not load saeperf's dictionaries in this run: {}",
                why.to_string_lossy()
            );
            return;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "SAEPERF_FIELD_PYTHON is not set: .ci/run installs sae-lens, dictionary-learning and eai-sparsify \
             into a venv and names its python there"
        );
        eprintln!(
            "skipped: SAEPERF_FIELD_PYTHON names no python with sae-lens, dictionary-learning and eai-sparsify"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (home, data) = (tmp.path().join("home"), tmp.path().join("set"));
    synth(&home, &data);
    let (n_train, n_tokens) = manifest_split(&data);
    let mut dicts: Vec<(String, std::path::PathBuf, serde_json::Value)> = vec![];
    for (name, extra) in [
        ("relu", vec!["--l1", "1"]),
        ("topk", vec!["--arch", "topk", "--k", "4"]),
        ("jumprelu", vec!["--arch", "jumprelu", "--l1", "0.5"]),
        ("gated", vec!["--arch", "gated", "--l1", "1"]),
        ("batchtopk", vec!["--arch", "batchtopk", "--k", "4"]),
        (
            "matryoshka",
            vec!["--arch", "matryoshka", "--k", "4", "--aux-k", "8"],
        ),
    ] {
        let dict = tmp.path().join(name);
        ok(runner(&home)
            .args(["train", "--quiet", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&dict)
            .args([
                "--d-sae", "64", "--steps", "200", "--batch", "256", "--lr", "1e-2",
            ])
            .args(&extra));
        let m = eval(
            &home,
            &dict,
            &data,
            &tmp.path().join(format!("{name}.json")),
        );
        dicts.push(("saelens".into(), dict.clone(), m.clone()));
        let mut formats = vec!["dictionary-learning"];
        if name == "topk" {
            formats.push("sparsify");
        }
        for fmt in formats {
            let out = tmp.path().join(format!("{name}-{fmt}"));
            ok(runner(&home)
                .args(["export", "--format", fmt, "--dict"])
                .arg(&dict)
                .arg("--out")
                .arg(&out));
            dicts.push((fmt.into(), out, m.clone()));
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/field_load.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script)
        .arg("--data")
        .arg(&data)
        .arg("--rows")
        .arg(format!("{n_train}:{n_tokens}"));
    for (fmt, dir, _) in &dicts {
        cmd.arg(format!("{fmt}={}", dir.display()));
    }
    let out = ok(&mut cmd);
    let got: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), dicts.len(), "{out}");
    for ((fmt, dir, want), g) in dicts.iter().zip(&got) {
        assert_eq!(g["format"], fmt.as_str());
        for k in ["fvu", "l0"] {
            let (a, b) = (num(g, k), num(want, k));
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                "{} loaded by {fmt}: {k} {a}, runner eval reported {b}",
                dir.display()
            );
        }
        assert!(num(g, "min_code") >= 0.0, "{fmt}: negative codes: {g}");
    }
}
