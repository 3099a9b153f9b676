//! The CUDA kernels seen from the command line: the NVRTC compile + ptxas resource check (runs wherever NVRTC is
//! installed, as in CI), the backend fallback without a driver, and the GPU correctness check where a GPU exists.

use saeperf_kernels::cuda;
use std::process::{Command, Output};

fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runner binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn kernels_check_compiles_every_kernel_and_reports_resources() {
    let out = runner(&["kernels", "check", "--backend", "cpu", "--json"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if let Err(why) = cuda::toolkit::nvrtc() {
        eprintln!("SKIP kernels_check_compiles_every_kernel_and_reports_resources: {why}");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("NVRTC not found"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    let compiled = v["compiled"].as_array().unwrap();
    let files = cuda::compile::FILES;
    assert_eq!(compiled.len(), files.len() * 2);
    for arch in ["sm_80", "sm_90"] {
        for f in files {
            let c = compiled
                .iter()
                .find(|c| c["file"] == f.name && c["arch"] == arch)
                .unwrap();
            for k in f.kernels {
                assert!(
                    c["kernels"].as_array().unwrap().iter().any(|e| e == k),
                    "{arch} {k}"
                );
            }
        }
    }
    if cuda::toolkit::ptxas().is_none() {
        eprintln!("no ptxas here: resource report not checked");
        return;
    }
    let m = v["metrics"].as_object().unwrap();
    let regs = m["kernel.sm_90.encode_gemm_relu.registers"]
        .as_f64()
        .unwrap();
    assert!(
        regs > 0.0 && regs <= 128.0,
        "encode GEMM registers {regs}: __launch_bounds__(256, 2) caps it at 128"
    );
    assert_eq!(
        m["kernel.sm_90.encode_gemm_relu.spill_bytes"].as_f64(),
        Some(0.0)
    );
    assert_eq!(v["spilling_kernels"].as_array().unwrap().len(), 0);
}

#[test]
fn auto_falls_back_to_cpu_with_a_clear_line_and_cuda_fails_cleanly_without_a_driver() {
    if let Ok(n) = cuda::device_present() {
        eprintln!(
            "SKIP: {n} CUDA device(s) present; the no-driver fallback cannot be observed here"
        );
        return;
    }
    let out = runner(&["kernels", "check", "--backend", "auto"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("backend: auto chose cpu (CUDA unavailable: "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    if cuda::toolkit::nvrtc().is_ok() {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }

    let out = runner(&["kernels", "check", "--backend", "cuda"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: --backend cuda: backend cuda is not available: "),
        "{stderr}"
    );

    let out = runner(&["kernels", "bench", "--backend", "cuda"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not available"));
}

#[test]
fn gpu_kernels_match_their_cpu_references() {
    if let Err(why) = cuda::device_present() {
        eprintln!("SKIP gpu_kernels_match_their_cpu_references: {why}");
        return;
    }
    let out = runner(&["kernels", "check", "--backend", "cuda", "--json"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["failed"], 0);
    assert!(v["checks"].as_array().unwrap().len() > 100);
}

#[test]
fn a_missing_nvrtc_is_a_one_line_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["kernels", "check", "--backend", "cpu"])
        .env("SAEPERF_NVRTC", "/nonexistent/libnvrtc.so.12")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: compiling the CUDA kernels")
                && l.contains("/nonexistent/libnvrtc.so.12")),
        "{stderr}"
    );
}

#[test]
fn training_with_auto_falls_back_to_cpu_and_cuda_fails_cleanly_without_a_driver() {
    if let Ok(n) = cuda::device_present() {
        eprintln!(
            "SKIP: {n} CUDA device(s) present; the no-driver fallback cannot be observed here"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("set");
    let synth = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "data",
            "synth",
            "--d-in",
            "8",
            "--features",
            "16",
            "--train-tokens",
            "512",
            "--eval-tokens",
            "64",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(synth.status.success());
    let train = |backend: &str| {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .args([
                "train",
                "--steps",
                "5",
                "--batch",
                "64",
                "--backend",
                backend,
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join(backend))
            .output()
            .unwrap()
    };
    let out = train("auto");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("backend: auto chose cpu (CUDA unavailable: "),
        "{stderr}"
    );
    let out = train("cuda");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: backend cuda is not available: "),
        "{stderr}"
    );
    assert!(!tmp
        .path()
        .join("cuda")
        .join("sae_weights.safetensors")
        .exists());
}

/// A suite with only the kernel resource benchmark.
const RESOURCES_SUITE: &str = r#"
name = "resources"
default_profile = "standard"

[profiles.standard]
steps_scale = 1.0
op_samples = 5
synthetic_tokens = 1024

[[resources]]
name = "kernels/resources"
"#;

/// The ptxas report is stored with each `runner bench` run, and a kernel edit that makes the encoder GEMM spill
/// (raising its occupancy bound from 2 to 4 blocks of 256 threads caps it at 64 registers, below the 8×8 tile's
/// needs) is a regression of the next run — on a machine with no GPU. The edited source is read through
/// SAEPERF_CUDA_SRC, as a kernel developer would before rebuilding.
#[test]
fn a_kernel_that_starts_to_spill_is_a_regression_of_the_bench_run() {
    let missing = cuda::toolkit::nvrtc().err().or_else(|| {
        cuda::toolkit::ptxas()
            .is_none()
            .then(|| "ptxas not found".to_string())
    });
    if let Some(why) = missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs NVRTC and ptxas, but: {why}"
        );
        eprintln!("SKIP a_kernel_that_starts_to_spill_is_a_regression_of_the_bench_run: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("cuda");
    std::fs::create_dir_all(&src).unwrap();
    let kernels_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/cuda");
    for e in std::fs::read_dir(&kernels_dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "cu" || x == "cuh") {
            std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(tmp.path().join("suite.toml"), RESOURCES_SUITE).unwrap();
    let bench = |baseline: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(tmp.path())
            .args(["--db", "store", "bench", "--suite", "suite.toml", "--json"])
            .args(["--baseline", baseline])
            .env("SAEPERF_HOME", tmp.path().join("home"))
            .env("SAEPERF_CUDA_SRC", &src)
            .env_remove("SAEPERF_DB")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&o.stdout), text(&o.stderr)));
        (o.status.code(), v)
    };
    let rows = |v: &serde_json::Value, verdict: &str| -> Vec<String> {
        v["comparison"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["verdict"] == verdict)
            .map(|r| {
                format!(
                    "{} {}",
                    r["bench"].as_str().unwrap(),
                    r["metric"].as_str().unwrap()
                )
            })
            .collect()
    };

    let (code, first) = bench("none");
    assert_eq!(code, Some(0), "{first}");
    let res = &first["run"]["results"][0];
    assert_eq!(res["name"], "kernels/resources");
    assert_eq!(res["kind"], "resources");
    let m = res["metrics"].as_object().unwrap();
    let n_kernels: usize = cuda::compile::FILES.iter().map(|f| f.kernels.len()).sum();
    assert_eq!(
        m.len(),
        n_kernels * 2 * 3,
        "3 metrics per kernel and architecture"
    );
    assert!(
        m["kernel.sm_90.encode_gemm_relu.registers"]
            .as_f64()
            .unwrap()
            > 64.0
    );
    assert_eq!(
        m["kernel.sm_90.encode_gemm_relu.spill_bytes"].as_f64(),
        Some(0.0)
    );

    // A/A: the same sources give the same report, nothing to flag.
    let (code, same) = bench("latest");
    assert_eq!(code, Some(0), "{same}");
    assert!(rows(&same, "regression").is_empty(), "{same}");
    assert!(
        rows(&same, "noise").len() >= n_kernels * 2 * 3,
        "every resource judged"
    );

    // The edit: the encoder GEMM now has to fit in 64 registers.
    let enc = src.join("encode.cu");
    let text_before = std::fs::read_to_string(&enc).unwrap();
    let edited = text_before.replace(
        "__launch_bounds__(GEMM_THREADS, 2)\nencode_gemm_relu",
        "__launch_bounds__(GEMM_THREADS, 4)\nencode_gemm_relu",
    );
    assert_ne!(
        edited, text_before,
        "encode.cu's launch bounds moved; update this test"
    );
    std::fs::write(&enc, edited).unwrap();
    let (code, spilled) = bench("latest");
    let reg = rows(&spilled, "regression");
    assert_eq!(code, Some(2), "{reg:?}");
    for arch in ["sm_80", "sm_90"] {
        assert!(
            reg.contains(&format!(
                "kernels/resources kernel.{arch}.encode_gemm_relu.spill_bytes"
            )),
            "{reg:?}"
        );
    }
    assert!(
        reg.iter().all(|r| r.contains(".encode_gemm_relu.")),
        "only the edited kernel regresses: {reg:?}"
    );
    // fewer registers is no regression: it is the spill that counts.
    assert!(rows(&spilled, "improvement")
        .iter()
        .any(|r| r.ends_with("encode_gemm_relu.registers")));

    // A source directory that lacks a file is a one-line error naming it, not a panic.
    std::fs::remove_file(src.join("reduce.cu")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["kernels", "check", "--backend", "cpu"])
        .env("SAEPERF_CUDA_SRC", &src)
        .output()
        .unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("reduce.cu") && stderr.contains("SAEPERF_CUDA_SRC"),
        "{stderr}"
    );
}
