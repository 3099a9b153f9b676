//! The CUDA kernel benchmarks of a run: the ptxas resource report (registers, shared memory and spill bytes of every
//! kernel at sm_80 and sm_90 — needs NVRTC and ptxas, never a GPU) and the CUDA op timings next to cuBLAS SGEMM
//! (needs the cuda backend). Both become metrics of one [`BenchResult`] each, so the store keeps them per run and
//! `compare` judges them with the suite's `kernel.*` and `cuda.*` rules: a new spill or a jump in registers is a
//! regression even on a machine without a GPU.
//!
//! Like every benchmark, these never fail the run: an error becomes a `failed` status with the reason.

use std::collections::BTreeMap;

use saeperf_kernels::cuda::{self, bench as cuda_bench, CudaBackend};
use saeperf_kernels::Shape;
use saeperf_store::{BenchKind, BenchResult, BenchStatus};

use crate::suite::ShapeSpec;

/// Why the resource report cannot be made on this machine (None: NVRTC and ptxas are both there).
pub fn resources_unavailable() -> Option<String> {
    if let Err(m) = cuda::toolkit::nvrtc() {
        return Some(format!("NVRTC not found ({m})"));
    }
    if cuda::toolkit::ptxas().is_none() {
        return Some(
            "ptxas not found (python3 -m pip install nvidia-cuda-nvcc-cu12, or set SAEPERF_PTXAS)"
                .into(),
        );
    }
    None
}

fn result(
    name: &str,
    kind: BenchKind,
    status: BenchStatus,
    metrics: Vec<(String, f64)>,
    extra: serde_json::Value,
) -> BenchResult {
    BenchResult {
        name: name.to_string(),
        kind,
        status,
        samples: vec![],
        yardstick: vec![],
        metrics: metrics.into_iter().collect::<BTreeMap<_, _>>(),
        metric_seeds: BTreeMap::new(),
        deterministic: true,
        curve: vec![],
        extra,
    }
}

fn failed(name: &str, kind: BenchKind, why: String) -> BenchResult {
    result(
        name,
        kind,
        BenchStatus::Failed(why),
        vec![],
        serde_json::Value::Null,
    )
}

/// Compile every kernel for every checked architecture and record its ptxas resources (and, where nvdisasm exists,
/// its static SASS instruction mix, `kernel.<arch>.<kernel>.sass.*`).
pub fn run_resources(name: &str) -> BenchResult {
    let fail = |m: String| failed(name, BenchKind::Resources, m);
    let report = match cuda::compile_all(|_| {}) {
        Ok(r) => r,
        Err(e) => return fail(format!("compiling the CUDA kernels: {e}")),
    };
    if let Err(why) = &report.ptxas {
        return fail(format!("no resource report: {why}"));
    }
    let spilling: Vec<String> = report
        .spills()
        .iter()
        .map(|r| format!("{} {}", r.arch, r.kernel))
        .collect();
    if !spilling.is_empty() {
        tracing::warn!("kernels spill registers: {}", spilling.join(", "));
    }
    let extra = serde_json::json!({
        "nvrtc": report.nvrtc,
        "sources": report.sources,
        "ptxas": report.ptxas.as_ref().ok(),
        // The nvdisasm behind the kernel.*.sass.* metrics, or why they are absent.
        "nvdisasm": match &report.nvdisasm {
            Ok(p) | Err(p) => p,
        },
        "kernels": report.resources.len(),
        "spilling": spilling,
        "compile_ms": report.compiled.iter().map(|c| c.compile_ms).sum::<f64>(),
    });
    result(
        name,
        BenchKind::Resources,
        BenchStatus::Ok,
        report.metrics(),
        extra,
    )
}

/// Time the CUDA ops at `shape` (CUDA events, median of `iters` after `warmup`) next to cuBLAS SGEMM, on the run's
/// GPU (None: the run's backend is not CUDA, and the benchmark fails with that reason).
pub fn run_cuda_ops(
    name: &str,
    gpu: Option<&CudaBackend>,
    shape: ShapeSpec,
    warmup: usize,
    iters: usize,
    topk: usize,
) -> BenchResult {
    let fail = |m: String| failed(name, BenchKind::CudaOps, m);
    let Some(gpu) = gpu else {
        return fail("the CUDA op timings need the cuda backend".into());
    };
    let opts = cuda_bench::BenchOpts {
        warmup,
        iters,
        topk,
    };
    let shape = Shape::new(shape.batch, shape.d_in, shape.d_sae);
    match cuda_bench::bench(gpu, shape, opts, |m| tracing::debug!("timing {m}")) {
        Ok(rep) => {
            let extra = serde_json::json!({
                "device": rep.device,
                "shape": shape,
                "cublas_note": rep.cublas_note,
            });
            result(
                name,
                BenchKind::CudaOps,
                BenchStatus::Ok,
                rep.metrics(),
                extra,
            )
        }
        Err(e) => fail(format!("timing the CUDA ops: {e}")),
    }
}

/// Why the kernel emulator cannot be built here (None: a C++ compiler is there).
pub fn emulator_unavailable() -> Option<String> {
    cuda::emu::compiler().err()
}

/// Run every kernel in the counting emulator at its fixed small shapes: counted global sectors and requests,
/// coalescing, shared-memory requests and bank conflicts, barriers and fp32 operations per kernel
/// (`kernel.emu.<kernel>.<metric>`), and how many of the emulator's comparisons with the references failed.
pub fn run_emulated(name: &str) -> BenchResult {
    let fail = |m: String| failed(name, BenchKind::Emulated, m);
    let emu = match cuda::emu::Emulator::build() {
        Ok(e) => e,
        Err(e) => return fail(format!("building the kernel emulator: {e}")),
    };
    let report = match emu.count() {
        Ok(r) => r,
        Err(e) => return fail(format!("counting the kernels: {e}")),
    };
    if report.failed > 0 {
        tracing::warn!(
            "{name}: {} of {} emulated kernel results differ from their references: {}",
            report.failed,
            report.comparisons,
            report.failures.join("; ")
        );
    }
    let extra = serde_json::json!({
        "compiler": report.compiler,
        "sources": report.sources,
        "shapes": report.shapes,
        "comparisons": report.comparisons,
        "failed": report.failed,
        "failures": report.failures,
        "build_ms": report.build_ms,
        "run_ms": report.run_ms,
        "kernels": report.kernels,
    });
    result(
        name,
        BenchKind::Emulated,
        BenchStatus::Ok,
        report.metrics(),
        extra,
    )
}

/// Emulate the ops' kernel sequences at `shape` (a few blocks of each launch, scaled to the grid) and estimate each
/// kernel's time at an H100's and an H200's peak (`roofline.<op>.<kernel>.<h100_us|h200_us|flops|sector_bytes>`).
pub fn run_roofline(name: &str, shape: ShapeSpec, topk: usize) -> BenchResult {
    let fail = |m: String| failed(name, BenchKind::Roofline, m);
    let emu = match cuda::emu::Emulator::build() {
        Ok(e) => e,
        Err(e) => return fail(format!("building the kernel emulator: {e}")),
    };
    let shape = Shape::new(shape.batch, shape.d_in, shape.d_sae);
    let report = match emu.roofline(shape, topk) {
        Ok(r) => r,
        Err(e) => return fail(format!("emulating the kernels at {shape:?}: {e}")),
    };
    let measured: BTreeMap<String, String> = report
        .rows
        .iter()
        .filter_map(|r| {
            cuda::emu::RooflineReport::measured_metric(&r.op, topk).map(|m| (r.op.clone(), m))
        })
        .collect();
    let extra = serde_json::json!({
        "compiler": report.compiler,
        "sources": report.sources,
        "shape": report.shape,
        "topk": report.k,
        "sampled_blocks": report.sampled_blocks,
        "peaks": cuda::emu::PEAKS,
        "rows": report.rows,
        "measured_metric": measured,
        "run_ms": report.run_ms,
    });
    result(
        name,
        BenchKind::Roofline,
        BenchStatus::Ok,
        report.metrics(),
        extra,
    )
}
