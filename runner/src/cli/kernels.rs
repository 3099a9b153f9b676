//! `runner kernels check` and `runner kernels bench`: the command-line face of the CUDA kernel checks.
//!
//! `check` compiles every kernel with NVRTC for sm_80 and sm_90 and, where ptxas exists, reports each kernel's
//! registers, shared memory and spill bytes, and where nvdisasm exists its static SASS instruction mix (no GPU
//! needed); with `--backend cuda` (or `auto` on a GPU machine) it also runs every kernel against its CPU reference.
//! `bench` times the CUDA ops against cuBLAS SGEMM. `emulate` runs every kernel in the CPU emulator and prints its
//! counted memory traffic, bank conflicts, barriers and fp32 operations (`--roofline B,D,F`: the ops at that shape and
//! their time at an H100's and an H200's peak); no GPU needed (docs/kernel-metrics.md). Exit codes (as every runner command): 0 all good; 1 a check
//! failed, a kernel spills registers, or an error (e.g. CUDA asked for but unavailable), printed as one line on
//! stderr.

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
    /// Run every kernel in the CPU emulator: counted global sectors, coalescing, bank conflicts, fp32 operations.
    Emulate(EmulateArgs),
}

#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Instead of the counts at the small check shapes: the ops' kernels at this shape (batch,d_in,d_sae; two blocks
    /// per launch emulated and scaled to the grid) and each kernel's time at an H100's and an H200's peak.
    #[arg(long, value_parser = parse_shape)]
    pub roofline: Option<Shape>,
    /// k of the TopK (sparse) sequences of --roofline.
    #[arg(long, default_value_t = 64)]
    pub topk: usize,
    #[arg(long)]
    pub json: bool,
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
        KernelsCmd::Emulate(a) => emulate(a, quiet),
    }
}

fn emulate(a: EmulateArgs, quiet: bool) -> Result<i32> {
    if a.topk == 0 {
        bail!("--topk must be at least 1");
    }
    let pb = spinner(quiet || a.json);
    pb.set_message("building the kernel emulator (g++)");
    let emu = cuda::emu::Emulator::build().context("building the kernel emulator")?;
    if let Some(shape) = a.roofline {
        pb.set_message(format!(
            "emulating the ops at {}×{}×{}",
            shape.batch, shape.d_in, shape.d_sae
        ));
        let r = emu.roofline(shape, a.topk).context("the roofline run")?;
        pb.finish_and_clear();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(0);
        }
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header([
            "op",
            "kernel",
            "GFLOP",
            "sector MB",
            "bound",
            "H100 µs",
            "H200 µs",
        ]);
        for row in &r.rows {
            t.add_row([
                row.op.clone(),
                row.kernel.clone(),
                format!("{:.2}", row.counts.flops as f64 / 1e9),
                format!("{:.1}", row.counts.sector_bytes() / 1e6),
                row.bound.clone(),
                format!("{:.1}", row.us["h100"]),
                format!("{:.1}", row.us["h200"]),
            ]);
        }
        println!("{t}");
        println!(
            "An estimate: {} blocks of every launch emulated and scaled to the grid; every sector counted as DRAM \
             traffic (no cache reuse), so tiled GEMMs look more memory-bound than they are (docs/kernel-metrics.md).",
            r.sampled_blocks
        );
        return Ok(0);
    }
    pb.set_message(format!(
        "running every kernel at {}",
        cuda::emu::COUNT_SHAPES
    ));
    let r = emu.count().context("counting the kernels")?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header([
            "kernel",
            "load sectors",
            "store sectors",
            "requests",
            "coalescing",
            "shared req.",
            "bank conflicts",
            "barriers/block",
            "fp32 ops/thread",
        ]);
        for (k, c) in &r.kernels {
            let m: std::collections::BTreeMap<&str, f64> = c.metrics().into_iter().collect();
            t.add_row([
                k.clone(),
                format!("{:.0}", m["global_load_sectors"]),
                format!("{:.0}", m["global_store_sectors"]),
                format!("{:.0}", m["global_requests"]),
                format!("{:.0}%", m["coalescing"] * 100.0),
                format!("{:.0}", m["shared_requests"]),
                format!("{:.0}", m["bank_conflicts"]),
                format!("{:.1}", m["barriers_per_block"]),
                format!("{:.1}", m["fp32_ops_per_thread"]),
            ]);
        }
        println!("{t}");
        println!(
            "{} comparisons with the references, {} failed; counted at {} with {} (kernels: {}). Blind to caches, \
             occupancy and clocks (docs/kernel-metrics.md).",
            r.comparisons, r.failed, r.shapes, r.compiler, r.sources
        );
        for f in &r.failures {
            println!("FAILED: {f}");
        }
    }
    Ok(if r.failed > 0 { 1 } else { 0 })
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
            "nvdisasm": report.nvdisasm.as_ref().ok(),
            "nvdisasm_missing": report.nvdisasm.as_ref().err(),
            "sass": report.sass,
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
                print_sass(&report);
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

/// The static SASS instruction mix (nvdisasm), one row per kernel and architecture.
fn print_sass(report: &cuda::CompileReport) {
    match &report.nvdisasm {
        Ok(p) => {
            println!("nvdisasm: {p}");
            println!(
                "{:<6} {:<20} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>4} {:>7} {:>5}",
                "arch",
                "kernel",
                "instrs",
                "ffma",
                "fma%",
                "ldg",
                "stg",
                "lds",
                "sts",
                "ldl/stl",
                "loop"
            );
            for s in &report.sass {
                println!(
                    "{:<6} {:<20} {:>6} {:>5} {:>5.1} {:>4} {:>4} {:>4} {:>4} {:>7} {:>5}",
                    s.arch,
                    s.kernel,
                    s.instructions,
                    s.ffma,
                    s.fma_share * 100.0,
                    s.global_loads,
                    s.global_stores,
                    s.shared_loads,
                    s.shared_stores,
                    format!("{}/{}", s.local_loads, s.local_stores),
                    s.main_loop_instructions
                );
            }
        }
        Err(why) => println!("no SASS instruction mix: {why}"),
    }
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
