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

    // The static SASS instruction mix (nvdisasm on ptxas's cubin). CI installs nvdisasm; elsewhere its absence is
    // a SKIP line, and the report says why.
    if cuda::toolkit::nvdisasm().is_none() {
        let why = v["nvdisasm_missing"].as_str().unwrap();
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs nvdisasm, but: {why}"
        );
        assert!(
            why.contains("pip install nvidia-cuda-nvdisasm") && why.contains("SAEPERF_NVDISASM"),
            "{why}"
        );
        assert!(!m.keys().any(|k| k.contains(".sass.")));
        eprintln!("SKIP the SASS instruction mix: {why}");
        return;
    }
    let n_kernels: usize = files.iter().map(|f| f.kernels.len()).sum();
    assert_eq!(v["sass"].as_array().unwrap().len(), n_kernels * 2);
    assert_eq!(
        m.keys().filter(|k| k.contains(".sass.")).count(),
        n_kernels * 2 * 10,
        "10 SASS metrics per kernel and architecture"
    );
    let sass = |arch: &str, kernel: &str, name: &str| {
        m[&format!("kernel.{arch}.{kernel}.sass.{name}")]
            .as_f64()
            .unwrap_or_else(|| panic!("{arch} {kernel} {name}"))
    };
    for arch in ["sm_80", "sm_90"] {
        // The encoder GEMM: 8×8 outputs a thread times BK 16 = 1024 FFMA, all in the tile loop. Seen with ptxas
        // 12.9 and nvdisasm 13.5 (sm_80 / sm_90): 2119 / 2152 instructions, 1024 FFMA, share 0.48, main loop
        // 1490 / 1517 instructions, 111 LDG, 80 STG, 64 LDS, 14 STS.
        let k = "encode_gemm_relu";
        let instrs = sass(arch, k, "instructions");
        let main_loop = sass(arch, k, "main_loop_instructions");
        assert!(sass(arch, k, "ffma") >= 1000.0, "{arch}");
        let share = sass(arch, k, "fma_share");
        assert!(share > 0.35 && share < 1.0, "{arch} FFMA share {share}");
        assert!(
            main_loop > 1000.0 && main_loop < instrs,
            "{arch} main loop {main_loop} of {instrs}"
        );
        for n in [
            "global_loads",
            "global_stores",
            "shared_loads",
            "shared_stores",
        ] {
            assert!(sass(arch, k, n) > 0.0, "{arch} {n}");
        }
        // No spills, so no local memory.
        assert_eq!(sass(arch, k, "local_loads"), 0.0, "{arch}");
        // An elementwise kernel reads global memory and has no FFMA loop.
        assert!(sass(arch, "bwd_residual", "global_loads") > 0.0);
        assert_eq!(sass(arch, "bwd_residual", "ffma"), 0.0);
    }
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

/// A copy of the kernel sources (every `.cu` and `common.cuh`) in `dir/cuda`, to edit and point SAEPERF_CUDA_SRC at.
fn kernel_sources_in(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("cuda");
    std::fs::create_dir_all(&src).unwrap();
    let kernels_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/cuda");
    for e in std::fs::read_dir(&kernels_dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "cu" || x == "cuh") {
            std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
        }
    }
    src
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
    let src = kernel_sources_in(tmp.path());
    // The project's own kernel.* rules (bench/suite.toml), so the comparison judges the SASS mix as `runner bench`
    // does.
    let default_suite: toml::Table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/suite.toml"),
    )
    .unwrap()
    .parse()
    .unwrap();
    let kernel_rules: toml::Table = default_suite["metrics"]
        .as_table()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("kernel."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let rules = toml::Table::from_iter([("metrics".to_string(), toml::Value::Table(kernel_rules))]);
    std::fs::write(
        tmp.path().join("suite.toml"),
        format!("{RESOURCES_SUITE}\n{}", toml::to_string(&rules).unwrap()),
    )
    .unwrap();
    // The SASS mix (nvdisasm): CI installs it; elsewhere the resource metrics are checked without it.
    let sass = cuda::toolkit::nvdisasm().is_some();
    if !sass {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs nvdisasm, but it is not found"
        );
        eprintln!(
            "SKIP the SASS part of a_kernel_that_starts_to_spill_is_a_regression_of_the_bench_run: {}",
            cuda::compile::NVDISASM_MISSING
        );
    }
    // Per kernel and architecture: 3 resources, and 10 SASS counts of which 9 are judged (not the FFMA count).
    let (per_kernel, judged) = if sass { (3 + 10, 3 + 9) } else { (3, 3) };
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
        n_kernels * 2 * per_kernel,
        "{per_kernel} metrics per kernel and architecture"
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
        rows(&same, "noise").len() >= n_kernels * 2 * judged,
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
    if sass {
        // The spill shows in the SASS too: seen with ptxas 12.9 / nvdisasm 13.5, the kernel grows from 2119 / 2152
        // instructions (sm_80 / sm_90) to 3206 / 3285, its main loop from 1490 / 1517 to 2515 / 2582, with over
        // 500 LDL and STL each, and the FFMA share falls from 0.48 to 0.32.
        let after = spilled["run"]["results"][0]["metrics"].as_object().unwrap();
        for arch in ["sm_80", "sm_90"] {
            let k = |m: &serde_json::Map<String, serde_json::Value>, n: &str| {
                m[&format!("kernel.{arch}.encode_gemm_relu.sass.{n}")]
                    .as_f64()
                    .unwrap()
            };
            assert!(
                k(after, "instructions") > 1.2 * k(m, "instructions"),
                "{arch}"
            );
            assert!(
                k(after, "local_loads") > 0.0 && k(m, "local_loads") == 0.0,
                "{arch}"
            );
            assert_eq!(k(after, "ffma"), k(m, "ffma"), "{arch}: the same FFMA work");
            for n in [
                "instructions",
                "main_loop_instructions",
                "fma_share",
                "local_loads",
                "local_stores",
            ] {
                assert!(
                    reg.contains(&format!(
                        "kernels/resources kernel.{arch}.encode_gemm_relu.sass.{n}"
                    )),
                    "{n}: {reg:?}"
                );
            }
        }
    }

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

/// A suite with only the emulated kernel benchmark.
const EMULATED_SUITE: &str = r#"
name = "emulated"
default_profile = "standard"

[profiles.standard]
steps_scale = 1.0
op_samples = 5
synthetic_tokens = 1024

[[emulated]]
name = "kernels/emulated"
"#;

/// Counted CUDA kernel behaviour catches, on a machine without a GPU, a kernel edit that reads global memory
/// uncoalesced and one that adds shared-memory bank conflicts: `runner bench` stores the emulator's counts with the run
/// and `runner compare` flags each edit on the right metric of the right kernel, while the unedited kernels stay
/// quiet. Both edits keep the results correct (the emulator's checks still pass): only the counts can see them.
#[test]
fn uncoalesced_reads_and_bank_conflicts_are_regressions_without_a_gpu() {
    if let Err(why) = cuda::emu::compiler() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs g++, but: {why}"
        );
        eprintln!("SKIP uncoalesced_reads_and_bank_conflicts_are_regressions_without_a_gpu: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = kernel_sources_in(tmp.path());
    std::fs::write(tmp.path().join("suite.toml"), EMULATED_SUITE).unwrap();
    let runner_in = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(tmp.path())
            .args(["--db", "store"])
            .args(args)
            .env("SAEPERF_HOME", tmp.path().join("home"))
            .env("SAEPERF_CUDA_SRC", &src)
            .env("RUST_LOG", "warn")
            .env_remove("SAEPERF_DB")
            .output()
            .unwrap()
    };
    let bench = || {
        let o = runner_in(&[
            "bench",
            "--suite",
            "suite.toml",
            "--json",
            "--baseline",
            "none",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&o.stdout), text(&o.stderr)));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let res = &v["run"]["results"][0];
        assert_eq!(res["kind"], "emulated", "{res}");
        assert_eq!(res["status"], "ok", "{res}");
        assert_eq!(
            res["metrics"]["kernel.emu.failed_checks"].as_f64(),
            Some(0.0),
            "the edits keep every result right: {}",
            res["extra"]["failures"]
        );
        v["run"]["meta"]["id"].as_str().unwrap().to_string()
    };
    // `runner compare BASE HEAD --json --all`: its exit code and "BENCH METRIC" of each regression.
    let compare = |base: &str, head: &str| {
        let o = runner_in(&[
            "compare",
            base,
            head,
            "--suite",
            "suite.toml",
            "--json",
            "--all",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&o.stdout), text(&o.stderr)));
        let regressions: Vec<String> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["verdict"] == "regression")
            .map(|r| r["metric"].as_str().unwrap().to_string())
            .collect();
        (o.status.code(), regressions, v)
    };
    let edit = |file: &str, from: &str, to: &str| {
        let p = src.join(file);
        let before = std::fs::read_to_string(&p).unwrap();
        let after = before.replace(from, to);
        assert_ne!(
            after, before,
            "{file} no longer contains {from:?}; update this test"
        );
        std::fs::write(&p, after).unwrap();
        before
    };

    let base = bench();
    // A/A: the counts repeat exactly.
    let same = bench();
    let (code, reg, v) = compare(&base, &same);
    assert_eq!(code, Some(0), "{reg:?}");
    let judged = v["rows"].as_array().unwrap().len();
    assert!(
        judged > 300,
        "every kernel's counts are judged: {judged} rows"
    );

    // Uncoalesced: adam_step's threads take their elements with a stride of the grid size instead of side by side
    // (still every element once, so the result is right).
    let adam = edit(
        "adam.cu",
        "const long long i = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;",
        "const long long i = (long long)threadIdx.x * gridDim.x + blockIdx.x;",
    );
    let strided = bench();
    let (code, reg, _) = compare(&base, &strided);
    assert_eq!(code, Some(2), "{reg:?}");
    for m in ["global_load_sectors", "global_store_sectors", "coalescing"] {
        assert!(
            reg.contains(&format!("kernel.emu.adam_step.{m}")),
            "{m}: {reg:?}"
        );
    }
    assert!(
        reg.iter().all(|m| m.starts_with("kernel.emu.adam_step.")),
        "only the edited kernel regresses: {reg:?}"
    );
    std::fs::write(src.join("adam.cu"), adam).unwrap();

    // Bank conflicts: the transpose tile loses the padding column that keeps a warp's column reads in 32 banks.
    edit("backward.cu", "tile[32][33]", "tile[32][32]");
    let conflicted = bench();
    let (code, reg, _) = compare(&base, &conflicted);
    assert_eq!(code, Some(2), "{reg:?}");
    assert_eq!(
        reg,
        vec!["kernel.emu.transpose.bank_conflicts".to_string()],
        "only the transpose's bank conflicts regress"
    );

    // A kernel source that does not compile is a failed benchmark with the compiler's line, not a panic.
    edit(
        "reduce.cu",
        "block_sum<double>(sse)",
        "block_sum<double>(sse, oops)",
    );
    let o = runner_in(&[
        "bench",
        "--suite",
        "suite.toml",
        "--json",
        "--baseline",
        "none",
    ]);
    let stderr = text(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let status = &v["run"]["results"][0];
    assert_eq!(status["status"], "failed", "{status}");
    assert!(
        status["reason"].as_str().unwrap().contains("reduce.cu"),
        "{status}"
    );
}
