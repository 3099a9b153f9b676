//! Counted CUDA kernel behaviour without a GPU: builds the CPU emulator of kernels/cuda/emu (with the kernel sources
//! embedded in the binary, or those of `SAEPERF_CUDA_SRC`) with g++ in its counting mode and runs it.
//!
//! - [`Emulator::count`]: every kernel at the fixed small shapes of `check.cpp --count`, checked against its C++
//!   reference, with its warp-level memory traffic (global requests and 32-byte sectors, shared-memory requests and
//!   bank conflicts), barriers and fp32 operations: deterministic metrics `kernel.emu.<kernel>.<metric>`
//!   ([`EmuReport::metrics`]).
//! - [`Emulator::roofline`]: the ops' kernel sequences once at a real shape, a few blocks of each launch emulated and
//!   scaled to the grid, and each kernel's time at the peak FP32 rate and HBM bandwidth of an H100 and an H200
//!   ([`RooflineReport`]).
//!
//! What the counts predict on a GPU, and what they cannot see (caches, occupancy, clocks), is docs/kernel-metrics.md.
//! Nothing here needs CUDA: the emulator is plain C++ (it never touches cudarc).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::compile::{source_dir, COMMON, FILES, SOURCE_DIR_ENV};
use super::CudaError;
use crate::ops::Shape;

const EMU_H: &str = include_str!("../../cuda/emu/emu.h");
const RT_CPP: &str = include_str!("../../cuda/emu/rt.cpp");
const CHECK_CPP: &str = include_str!("../../cuda/emu/check.cpp");

/// The shapes (batch × d_in × d_sae) `check.cpp --count` runs every kernel at: one whose d_in and d_sae are tile
/// multiples (the vector paths of real shapes), one that is not. Must match check.cpp.
pub const COUNT_SHAPES: &str = "16×128×256 and 5×130×133";

/// Blocks emulated per launch in a roofline run (check.cpp's `emu_set_sample`): the first and the last.
pub const ROOFLINE_SAMPLED_BLOCKS: u32 = 2;

/// Environment variable naming the C++ compiler (default: `g++` on PATH; it must accept g++'s flags).
pub const CXX_ENV: &str = "SAEPERF_CXX";

/// One kernel's counts, summed over its launches (scaled to the whole grid in a roofline run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmuCounts {
    pub launches: u64,
    pub blocks: u64,
    pub threads: u64,
    /// Warp-wide global loads, and the 32-byte sectors they touched.
    pub gld_requests: u64,
    pub gld_sectors: u64,
    /// Warp-wide global stores, and their sectors.
    pub gst_requests: u64,
    pub gst_sectors: u64,
    /// Bytes the lanes of global loads and stores asked for.
    pub global_bytes: u64,
    /// Warp-wide atomic operations (global or shared).
    pub atomics: u64,
    /// Warp-wide shared-memory loads and stores, the bank wavefronts they took, and the wavefronts beyond one per
    /// phase (bank conflicts).
    pub shared_requests: u64,
    pub shared_wavefronts: u64,
    pub bank_conflicts: u64,
    /// __syncthreads executed, summed over blocks (each block counts its thread that executed the most).
    pub barriers: u64,
    /// fp32 operations executed by all threads (arithmetic, comparisons, fmaf, math functions: one each).
    pub fp_ops: u64,
    /// Floating-point operations (fmaf two, comparisons none).
    pub flops: u64,
}

impl EmuCounts {
    /// Bytes requested ÷ bytes in the sectors touched (1: perfectly coalesced; above 1: lanes share data).
    pub fn coalescing(&self) -> f64 {
        let sectors = self.gld_sectors + self.gst_sectors;
        if sectors == 0 {
            1.0
        } else {
            self.global_bytes as f64 / (32.0 * sectors as f64)
        }
    }
    /// Bytes moved between the SMs and memory if every sector came from DRAM (no cache reuse).
    pub fn sector_bytes(&self) -> f64 {
        32.0 * (self.gld_sectors + self.gst_sectors) as f64
    }
    /// The judged metrics of one kernel, by name (docs/kernel-metrics.md).
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let per = |v: u64, n: u64| if n == 0 { 0.0 } else { v as f64 / n as f64 };
        vec![
            ("global_load_sectors", self.gld_sectors as f64),
            ("global_store_sectors", self.gst_sectors as f64),
            (
                "global_requests",
                (self.gld_requests + self.gst_requests) as f64,
            ),
            ("coalescing", self.coalescing()),
            ("shared_requests", self.shared_requests as f64),
            ("bank_conflicts", self.bank_conflicts as f64),
            ("atomics", self.atomics as f64),
            ("barriers_per_block", per(self.barriers, self.blocks)),
            ("fp32_ops_per_thread", per(self.fp_ops, self.threads)),
            ("flops", self.flops as f64),
        ]
    }
}

/// What `check.cpp --count` found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmuReport {
    /// The compiler that built the emulator (its first `--version` line).
    pub compiler: String,
    /// "embedded", or the SAEPERF_CUDA_SRC directory the kernels were read from.
    pub sources: String,
    pub shapes: String,
    /// Comparisons with the C++ references, and how many failed (a wrong kernel is counted all the same).
    pub comparisons: u32,
    pub failed: u32,
    /// The first few failed comparisons, as the emulator printed them.
    pub failures: Vec<String>,
    pub kernels: BTreeMap<String, EmuCounts>,
    pub build_ms: f64,
    pub run_ms: f64,
}

impl EmuReport {
    /// `kernel.emu.<kernel>.<metric>` for every kernel, and `kernel.emu.failed_checks`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut v = vec![("kernel.emu.failed_checks".to_string(), self.failed as f64)];
        for (k, c) in &self.kernels {
            for (m, x) in c.metrics() {
                v.push((format!("kernel.emu.{k}.{m}"), x));
            }
        }
        v
    }
}

/// A GPU's peak rates for the roofline.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Peak {
    pub name: &'static str,
    /// FP32 (non-tensor-core) FLOP/s.
    pub fp32_flops: f64,
    /// HBM bytes/s.
    pub hbm_bytes: f64,
}

/// H100 SXM5 and H200 SXM (NVIDIA's data sheets: 67 TFLOP/s FP32 each; 3.35 and 4.8 TB/s HBM).
pub const PEAKS: [Peak; 2] = [
    Peak {
        name: "h100",
        fp32_flops: 66.9e12,
        hbm_bytes: 3.35e12,
    },
    Peak {
        name: "h200",
        fp32_flops: 66.9e12,
        hbm_bytes: 4.8e12,
    },
];

/// One kernel launch sequence's member at the roofline shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RooflineRow {
    /// The op sequence as "family.variant", e.g. "backward.dense".
    pub op: String,
    pub kernel: String,
    pub counts: EmuCounts,
    /// Time at each [`PEAKS`] entry's peak, µs: max(flops ÷ FP32 peak, sector bytes ÷ HBM bandwidth).
    pub us: BTreeMap<String, f64>,
    /// "compute" or "memory": which term is the larger at the first of [`PEAKS`] (the H100; the H200's higher
    /// bandwidth can move a kernel from memory- to compute-bound).
    pub bound: String,
}

/// The ops at one real shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RooflineReport {
    pub compiler: String,
    pub sources: String,
    pub shape: Shape,
    /// k of the sparse (TopK) sequences.
    pub k: usize,
    /// Blocks emulated per launch (the rest of the grid is scaled from them).
    pub sampled_blocks: u32,
    pub rows: Vec<RooflineRow>,
    pub run_ms: f64,
}

impl RooflineReport {
    /// `roofline.<op>.<kernel>.{flops,sector_bytes,h100_us,h200_us}`, and per op `roofline.<op>.{h100_us,h200_us}`
    /// (the sum over its kernels).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut v = Vec::new();
        let mut ops: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
        for r in &self.rows {
            let base = format!("roofline.{}.{}", r.op, r.kernel);
            v.push((format!("{base}.flops"), r.counts.flops as f64));
            v.push((format!("{base}.sector_bytes"), r.counts.sector_bytes()));
            for (p, us) in &r.us {
                v.push((format!("{base}.{p}_us"), *us));
                *ops.entry(&r.op).or_default().entry(p).or_default() += us;
            }
        }
        for (op, m) in ops {
            for (p, us) in m {
                v.push((format!("roofline.{op}.{p}_us"), us));
            }
        }
        v
    }

    /// The CUDA-event timing metric (`cuda/ops`, in ms) that measures the same op sequence, where there is one.
    pub fn measured_metric(op: &str, k: usize) -> Option<String> {
        let variant = match op {
            "encode.relu" => "encode.relu".to_string(),
            "encode.topk" => format!("encode.topk_k={k}"),
            "decode.dense" => "decode.dense".to_string(),
            "decode.sparse" => format!("decode.sparse_topk_k={k}"),
            "backward.dense" => "backward.dense".to_string(),
            "backward.sparse" => format!("backward.sparse_topk_k={k}"),
            _ => return None,
        };
        Some(format!("cuda.{variant}.ms"))
    }
}

/// Time of `c` at `p`'s peak, µs, and what bounds it.
pub fn at_peak(c: &EmuCounts, p: &Peak) -> (f64, &'static str) {
    let compute = c.flops as f64 / p.fp32_flops;
    let memory = c.sector_bytes() / p.hbm_bytes;
    if compute >= memory {
        (compute * 1e6, "compute")
    } else {
        (memory * 1e6, "memory")
    }
}

/// The C++ compiler the emulator is built with: `SAEPERF_CXX`, else `g++` on PATH.
pub fn compiler() -> Result<PathBuf, String> {
    if let Some(c) = std::env::var_os(CXX_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(c));
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("g++"))
                .find(|c| c.is_file())
        })
        .ok_or_else(|| {
            format!("no C++ compiler: g++ is not on PATH (apt-get install g++, or set {CXX_ENV})")
        })
}

fn emu_err(msg: impl Into<String>) -> CudaError {
    CudaError::Emulator(msg.into())
}

/// The counting emulator, built in a temporary directory (removed when dropped).
pub struct Emulator {
    dir: tempfile::TempDir,
    exe: PathBuf,
    compiler: String,
    sources: String,
    build_ms: f64,
}

/// The kernel sources as the emulator includes them: `name → text`, `common.cuh` included, from SAEPERF_CUDA_SRC
/// or the copies embedded in the binary.
fn kernel_sources() -> Result<Vec<(String, String)>, CudaError> {
    let names = FILES
        .iter()
        .map(|f| f.name)
        .chain(std::iter::once("common.cuh"));
    match source_dir() {
        None => Ok(FILES
            .iter()
            .map(|f| (f.name.to_string(), f.source.to_string()))
            .chain(std::iter::once(("common.cuh".into(), COMMON.into())))
            .collect()),
        Some(dir) => names
            .map(|n| {
                let p = dir.join(n);
                std::fs::read_to_string(&p)
                    .map(|t| (n.to_string(), t))
                    .map_err(|e| CudaError::Source {
                        path: p.display().to_string(),
                        msg: e.to_string(),
                    })
            })
            .collect(),
    }
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<std::process::Output, CudaError> {
    let out = cmd.output().map_err(|e| emu_err(format!("{what}: {e}")))?;
    Ok(out)
}

fn first_error_line(text: &str) -> String {
    text.lines()
        .find(|l| l.contains("error"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .to_string()
}

impl Emulator {
    /// Writes the sources to a temporary directory and compiles the counting build (the kernels with
    /// -fsanitize=thread, whose hooks rt.cpp supplies; about 10 s on 2 cores).
    pub fn build() -> Result<Emulator, CudaError> {
        let cxx = compiler().map_err(emu_err)?;
        let version = Command::new(&cxx)
            .arg("--version")
            .output()
            .map_err(|e| emu_err(format!("{} ({CXX_ENV}): {e}", cxx.display())))?;
        let compiler = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let dir = tempfile::tempdir().map_err(|e| emu_err(format!("temporary folder: {e}")))?;
        let cuda = dir.path().join("cuda");
        let emu = cuda.join("emu");
        std::fs::create_dir_all(&emu).map_err(|e| emu_err(format!("{}: {e}", emu.display())))?;
        let write = |p: &Path, text: &str| {
            std::fs::write(p, text).map_err(|e| emu_err(format!("{}: {e}", p.display())))
        };
        for (name, text) in kernel_sources()? {
            write(&cuda.join(name), &text)?;
        }
        write(&emu.join("emu.h"), EMU_H)?;
        write(&emu.join("rt.cpp"), RT_CPP)?;
        write(&emu.join("check.cpp"), CHECK_CPP)?;
        let t0 = Instant::now();
        let common = ["-std=c++20", "-O1", "-DEMU_COUNT", "-w", "-c", "-I"];
        let compile = |src: &str, obj: &str, extra: &[&str]| -> Result<(), CudaError> {
            let out = run_checked(
                Command::new(&cxx)
                    .args(common)
                    .arg(&cuda)
                    .args(extra)
                    .arg(emu.join(src))
                    .arg("-o")
                    .arg(emu.join(obj)),
                &cxx.display().to_string(),
            )?;
            if !out.status.success() {
                return Err(emu_err(format!(
                    "compiling {src} (kernels from {}): {}",
                    source_label(),
                    first_error_line(&String::from_utf8_lossy(&out.stderr))
                )));
            }
            Ok(())
        };
        compile(
            "check.cpp",
            "check.o",
            &[
                "-fsanitize=thread",
                "--param",
                "tsan-instrument-func-entry-exit=0",
            ],
        )?;
        compile("rt.cpp", "rt.o", &[])?;
        let exe = emu.join("emu-count");
        let out = run_checked(
            Command::new(&cxx)
                .arg("-rdynamic")
                .arg(emu.join("check.o"))
                .arg(emu.join("rt.o"))
                .arg("-o")
                .arg(&exe),
            "linking the emulator",
        )?;
        if !out.status.success() {
            return Err(emu_err(format!(
                "linking the emulator: {}",
                first_error_line(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        Ok(Emulator {
            dir,
            exe,
            compiler,
            sources: source_label(),
            build_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn run(&self, args: &[String]) -> Result<(std::process::Output, PathBuf, f64), CudaError> {
        let json = self
            .dir
            .path()
            .join(format!("{}.json", args[0].trim_start_matches('-')));
        let t0 = Instant::now();
        let out = run_checked(
            Command::new(&self.exe)
                .arg(&args[0])
                .arg(&json)
                .args(&args[1..]),
            "running the emulator",
        )?;
        Ok((out, json, t0.elapsed().as_secs_f64() * 1e3))
    }

    fn read_counts(
        json: &Path,
        out: &std::process::Output,
    ) -> Result<BTreeMap<String, EmuCounts>, CudaError> {
        let text = std::fs::read_to_string(json).map_err(|_| {
            emu_err(format!(
                "the emulator wrote no counts (exit {}): {}",
                out.status
                    .code()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "by a signal".into()),
                first_error_line(&String::from_utf8_lossy(&out.stderr))
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| emu_err(format!("the emulator's counts are not valid JSON: {e}")))
    }

    /// Every kernel checked and counted at [`COUNT_SHAPES`] (about 30 s on 2 cores).
    pub fn count(&self) -> Result<EmuReport, CudaError> {
        let (out, json, run_ms) = self.run(&["--count".to_string()])?;
        let kernels = Self::read_counts(&json, &out)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The last line: "N comparisons, M failed".
        let (comparisons, failed) = stdout
            .lines()
            .rev()
            .find_map(|l| {
                let (a, b) = l.split_once(" comparisons, ")?;
                Some((
                    a.trim().parse().ok()?,
                    b.strip_suffix(" failed")?.parse().ok()?,
                ))
            })
            .ok_or_else(|| emu_err("the emulator printed no summary line"))?;
        let failures = stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .take(5)
            .map(|l| l.trim_start_matches("FAIL").trim().to_string())
            .collect();
        Ok(EmuReport {
            compiler: self.compiler.clone(),
            sources: self.sources.clone(),
            shapes: COUNT_SHAPES.into(),
            comparisons,
            failed,
            failures,
            kernels,
            build_ms: self.build_ms,
            run_ms,
        })
    }

    /// The ops' kernel sequences at `shape` with TopK's `k` (a few minutes at 4096×576×16384 on 2 cores).
    pub fn roofline(&self, shape: Shape, k: usize) -> Result<RooflineReport, CudaError> {
        let args: Vec<String> = [
            "--roofline".to_string(),
            shape.batch.to_string(),
            shape.d_in.to_string(),
            shape.d_sae.to_string(),
            k.to_string(),
        ]
        .into();
        let (out, json, run_ms) = self.run(&args)?;
        if !out.status.success() {
            return Err(emu_err(format!(
                "the roofline run failed: {}",
                first_error_line(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        let counts = Self::read_counts(&json, &out)?;
        let rows = counts
            .into_iter()
            .filter_map(|(key, c)| {
                let (op, kernel) = key.split_once('|')?;
                let mut us = BTreeMap::new();
                for p in &PEAKS {
                    us.insert(p.name.to_string(), at_peak(&c, p).0);
                }
                let bound = at_peak(&c, &PEAKS[0]).1;
                Some(RooflineRow {
                    op: op.into(),
                    kernel: kernel.into(),
                    counts: c,
                    us,
                    bound: bound.into(),
                })
            })
            .collect();
        Ok(RooflineReport {
            compiler: self.compiler.clone(),
            sources: self.sources.clone(),
            shape,
            k,
            sampled_blocks: ROOFLINE_SAMPLED_BLOCKS,
            rows,
            run_ms,
        })
    }
}

fn source_label() -> String {
    source_dir()
        .map(|d| format!("{} ({SOURCE_DIR_ENV})", d.display()))
        .unwrap_or_else(|| "embedded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_and_peak_time_follow_their_definitions() {
        let c = EmuCounts {
            gld_sectors: 4,
            gst_sectors: 4,
            global_bytes: 128,
            flops: 67_000_000,
            ..Default::default()
        };
        assert_eq!(c.coalescing(), 0.5);
        assert_eq!(c.sector_bytes(), 256.0);
        let (us, bound) = at_peak(&c, &PEAKS[0]);
        assert_eq!(bound, "compute");
        assert!((us - 67e6 / 66.9e12 * 1e6).abs() < 1e-9);
        let empty = EmuCounts::default();
        assert_eq!(empty.coalescing(), 1.0);
        assert!(empty.metrics().iter().all(|(_, v)| v.is_finite()));
    }

    /// The emulator counts what a warp does: a coalesced elementwise kernel touches 4 sectors per request, and the
    /// padded transpose tile has no bank conflict while the GEMM's transposed A-tile store has 4-way ones.
    #[test]
    fn the_counting_emulator_counts_known_kernels() {
        if compiler().is_err() {
            eprintln!("SKIP the_counting_emulator_counts_known_kernels: no g++");
            return;
        }
        let emu = Emulator::build().expect("the counting emulator builds");
        let r = emu.count().expect("the counting emulator runs");
        assert_eq!(r.failed, 0, "every kernel matches its reference");
        assert!(r.comparisons > 100);
        let adam = &r.kernels["adam_step"];
        // 4 loads and 3 stores of 4 bytes and 16 fp32 operations per element (the last warp of a shape that is not a
        // multiple of 32 is partly idle).
        assert!(adam.coalescing() > 0.999, "{adam:?}");
        assert!(adam.gld_sectors <= 4 * adam.gld_requests, "{adam:?}");
        assert_eq!(adam.fp_ops * 28, 16 * adam.global_bytes, "{adam:?}");
        assert_eq!(r.kernels["transpose"].bank_conflicts, 0);
        let enc = &r.kernels["encode_gemm_relu"];
        assert!(enc.bank_conflicts > 0 && enc.barriers > 0, "{enc:?}");
        assert!(enc.flops > 2 * 16 * 128 * 256, "{enc:?}");
        let m = r.metrics();
        assert!(m
            .iter()
            .any(|(k, _)| k == "kernel.emu.transpose.bank_conflicts"));
    }
}
