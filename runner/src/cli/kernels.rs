//! `runner kernels check` and `runner kernels bench`: the command-line face of the CUDA kernel checks.
//!
//! `check` compiles every kernel with NVRTC for sm_80 and sm_90 and, where ptxas exists, reports each kernel's
//! registers, shared memory and spill bytes (no GPU needed); with `--backend cuda` (or `auto` on a GPU machine) it
//! also runs every kernel against its CPU reference. `bench` times the CUDA ops against cuBLAS SGEMM. Exit codes
//! (as every runner command): 0 all good; 1 a check failed, a kernel spills registers, or an error (e.g. CUDA asked
//! for but unavailable), printed as one line on stderr.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use saeperf_kernels::cuda::{self, bench, verify, CudaBackend};
use saeperf_kernels::select::{select_backend, BackendChoice, Selected, Selection};
use saeperf_kernels::{Op, Shape};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum KernelsCmd {
    /// Compile every kernel with NVRTC (sm_80, sm_90), report ptxas resources; on a GPU, check against the CPU.
    Check(CheckArgs),
    /// Time every CUDA op (CUDA events, median) next to cuBLAS SGEMM at the same shape.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// cpu: compile check only; cuda: also run every kernel against its CPU reference (fails without a GPU);
    /// auto: cuda when a GPU is present, else compile check only.
    #[arg(long, default_value = "auto", value_parser = parse_choice)]
    pub backend: BackendChoice,
    /// Only these op families in the GPU check (encode, decode, backward, adam, resample, reduce); repeatable.
    #[arg(long = "op", value_parser = parse_op)]
    pub ops: Vec<Op>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not fail when a kernel spills registers.
    #[arg(long)]
    pub allow_spills: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Must resolve to cuda (auto fails on a machine without a GPU).
    #[arg(long, default_value = "cuda", value_parser = parse_choice)]
    pub backend: BackendChoice,
    /// batch,d_in,d_sae
    #[arg(long, default_value = "4096,576,16384", value_parser = parse_shape)]
    pub shape: Shape,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    /// k of the TopK (sparse) rows.
    #[arg(long, default_value_t = 64)]
    pub topk: usize,
    #[arg(long)]
    pub json: bool,
}

fn parse_op(s: &str) -> Result<Op, String> {
    s.parse()
}

fn parse_choice(s: &str) -> Result<BackendChoice, String> {
    s.parse()
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|e| format!("shape {s:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    match v[..] {
        [b, d, f] if b > 0 && d > 0 && f > 0 => Ok(Shape::new(b, d, f)),
        _ => Err(format!(
            "shape {s:?}: expected three positive numbers batch,d_in,d_sae"
        )),
    }
}

/// Runs the subcommand; returns the process exit code.
pub fn run(cmd: KernelsCmd, quiet: bool) -> Result<i32> {
    match cmd {
        KernelsCmd::Check(a) => check(a, quiet),
        KernelsCmd::Bench(a) => run_bench(a, quiet),
    }
}

fn spinner(hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn check(a: CheckArgs, quiet: bool) -> Result<i32> {
    // Open the backend first: `--backend cuda` without a GPU is an error before any work.
    let sel = match a.backend {
        BackendChoice::Cpu | BackendChoice::Reference => None,
        c => Some(select_backend(c).with_context(|| format!("--backend {c}"))?),
    };
    if let Some(s) = &sel {
        tracing::info!("{}", s.line);
        if !a.json {
            eprintln!("{}", s.line);
        }
    }
    let pb = spinner(a.json || quiet);
    let report = cuda::compile_all(|m| pb.set_message(format!("NVRTC {m}")))
        .context("compiling the CUDA kernels (runner kernels check)")?;
    pb.finish_and_clear();
    let mut checks = Vec::new();
    if let Some(Selection {
        backend: Selected::Cuda(gpu),
        ..
    }) = &sel
    {
        let pb = spinner(a.json || quiet);
        checks = verify::verify(gpu, &a.ops, |m| {
            pb.set_message(format!("checking kernels against the CPU: {m}"))
        })
        .context("checking the CUDA kernels against their CPU references")?;
        pb.finish_and_clear();
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    let spills = report.spills();
    if a.json {
        let out = json!({
            "backend": sel.as_ref().map(|s| s.line.clone()),
            "nvrtc": report.nvrtc,
            "sources": report.sources,
            "ptxas": report.ptxas.as_ref().ok(),
            "ptxas_missing": report.ptxas.as_ref().err(),
            "compiled": report.compiled,
            "resources": report.resources,
            "metrics": report.metrics().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "checks": checks,
            "tolerance": verify::TOLERANCE,
            "failed": failed.len(),
            "spilling_kernels": spills.iter().map(|r| format!("{} {}", r.arch, r.kernel)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", report.nvrtc);
        if report.sources != "embedded" {
            println!("kernel sources from {}", report.sources);
        }
        println!(
            "compiled {} kernel files for {} architectures",
            report.compiled.len() / cuda::compile::CHECK_ARCHS.len(),
            cuda::compile::CHECK_ARCHS.len()
        );
        match &report.ptxas {
            Ok(p) => {
                println!("ptxas: {p}");
                println!(
                    "{:<6} {:<13} {:<20} {:>5} {:>7} {:>6}",
                    "arch", "file", "kernel", "regs", "smem", "spill"
                );
                for r in &report.resources {
                    println!(
                        "{:<6} {:<13} {:<20} {:>5} {:>7} {:>6}",
                        r.arch,
                        r.file,
                        r.kernel,
                        r.registers,
                        r.smem_bytes,
                        r.spill_store_bytes + r.spill_load_bytes
                    );
                }
            }
            Err(why) => println!("no resource report: {why}"),
        }
        if !checks.is_empty() {
            let worst = checks.iter().map(|c| c.rel_err).fold(0.0, f64::max);
            println!(
                "GPU check: {} comparisons, {} failed (tolerance {:.0e}, worst rel. error {worst:.2e})",
                checks.len(),
                failed.len(),
                verify::TOLERANCE
            );
            for c in failed.iter().take(10) {
                println!(
                    "  FAIL {} {} {}×{}×{}: rel. error {:.3e}",
                    c.op, c.variant, c.shape.batch, c.shape.d_in, c.shape.d_sae, c.rel_err
                );
            }
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "error: {} kernel comparisons exceed the tolerance",
            failed.len()
        );
        return Ok(1);
    }
    if !spills.is_empty() && !a.allow_spills {
        eprintln!(
            "error: kernels spill registers: {}",
            spills
                .iter()
                .map(|r| format!("{} {}", r.arch, r.kernel))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(1);
    }
    Ok(0)
}

fn run_bench(a: BenchArgs, quiet: bool) -> Result<i32> {
    let sel = select_backend(a.backend).with_context(|| format!("--backend {}", a.backend))?;
    let Selected::Cuda(gpu) = &sel.backend else {
        bail!(
            "runner kernels bench times the CUDA kernels, but {}",
            sel.line
        );
    };
    if !a.json {
        eprintln!("{}", sel.line);
    }
    let gpu: &CudaBackend = gpu;
    let pb = spinner(a.json || quiet);
    let opts = bench::BenchOpts {
        warmup: a.warmup,
        iters: a.iters,
        topk: a.topk,
    };
    let rep = bench::bench(gpu, a.shape, opts, |m| {
        pb.set_message(format!("timing {m}"))
    })
    .context("timing the CUDA ops")?;
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "report": rep, "metrics": rep.metrics().into_iter().collect::<std::collections::BTreeMap<_, _>>() })
            )?
        );
    } else {
        println!(
            "{} — shape {}×{}×{}",
            rep.device, a.shape.batch, a.shape.d_in, a.shape.d_sae
        );
        println!(
            "{:<14} {:<20} {:>10} {:>10} {:>9} {:>10} {:>12}",
            "op", "variant", "median ms", "GFLOP/s", "GB/s", "vs cuBLAS", "tokens/s"
        );
        for t in &rep.timings {
            println!(
                "{:<14} {:<20} {:>10.3} {:>10.0} {:>9.0} {:>10} {:>12}",
                t.op,
                t.variant,
                t.median_ms,
                t.gflops,
                t.gbps,
                t.vs_cublas
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                t.tokens_per_sec
                    .map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        if let Some(n) = &rep.cublas_note {
            println!("no cuBLAS yardstick: {n}");
        }
    }
    Ok(0)
}
