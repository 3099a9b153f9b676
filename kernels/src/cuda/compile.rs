//! The kernel sources (embedded in the binary) and their compilation: NVRTC to PTX, once per process per
//! (source hash, architecture), and, where ptxas exists, PTX to SASS with the per-kernel resource report
//! (registers, shared memory, spill bytes) that saeperf stores as metrics so a new spill shows as a regression on
//! machines with no GPU; where nvdisasm exists too, the static SASS instruction mix of each kernel ([`sass`]).

use super::sass::{self, SassMix};
use super::{toolkit, CudaError};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// One .cu file: its name, its text, and the kernels it defines (the `extern "C" __global__` entry points).
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

/// common.cuh, prepended to every file in place of its `#include "common.cuh"` line.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// Every kernel file, one per op family.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "encode.cu",
        source: include_str!("../../cuda/encode.cu"),
        kernels: &["encode_gemm_relu", "topk_rows"],
    },
    KernelFile {
        name: "decode.cu",
        source: include_str!("../../cuda/decode.cu"),
        kernels: &["decode_gemm", "decode_sparse"],
    },
    KernelFile {
        name: "backward.cu",
        source: include_str!("../../cuda/backward.cu"),
        kernels: &[
            "bwd_residual",
            "bwd_dwdec_gemm",
            "bwd_dpre_gemm",
            "bwd_dwenc_gemm",
            "col_sums",
            "bwd_bdec",
            "bwd_sparse_pairs",
            "transpose",
        ],
    },
    KernelFile {
        name: "adam.cu",
        source: include_str!("../../cuda/adam.cu"),
        kernels: &["adam_step", "adam_decoder_rows"],
    },
    KernelFile {
        name: "resample.cu",
        source: include_str!("../../cuda/resample.cu"),
        kernels: &["enc_col_sq_norms", "per_token_sq_err", "resample_write"],
    },
    KernelFile {
        name: "reduce.cu",
        source: include_str!("../../cuda/reduce.cu"),
        kernels: &["row_stats", "feature_fire_counts", "count_nonzero"],
    },
    KernelFile {
        name: "threshold.cu",
        source: include_str!("../../cuda/threshold.cu"),
        kernels: &["threshold_rows", "threshold_grad"],
    },
    KernelFile {
        name: "batchtopk.cu",
        source: include_str!("../../cuda/batchtopk.cu"),
        kernels: &[
            "btk_hist",
            "btk_pick",
            "btk_row_ties",
            "btk_allow",
            "btk_apply",
        ],
    },
    KernelFile {
        name: "matryoshka.cu",
        source: include_str!("../../cuda/matryoshka.cu"),
        kernels: &["prefix_mask", "accumulate"],
    },
    KernelFile {
        name: "auxk.cu",
        source: include_str!("../../cuda/auxk.cu"),
        kernels: &["auxk_mask_dead"],
    },
    KernelFile {
        name: "gated.cu",
        source: include_str!("../../cuda/gated.cu"),
        kernels: &[
            "gated_encode_gemm",
            "gated_relu",
            "gated_dz",
            "gated_dr_mag",
        ],
    },
];

/// The architectures `runner kernels check` compiles for (Ampere A100, Hopper H100 / H200).
pub const CHECK_ARCHS: &[u32] = &[80, 90];

/// Environment variable naming a directory whose kernel files (every `.cu` of [`FILES`] and `common.cuh`) replace
/// the copies embedded in the binary: a kernel edit can then be checked, benchmarked and compared without
/// rebuilding the runner (`SAEPERF_CUDA_SRC=kernels/cuda runner kernels check`).
pub const SOURCE_DIR_ENV: &str = "SAEPERF_CUDA_SRC";

/// The directory of [`SOURCE_DIR_ENV`], when set (and not empty).
pub fn source_dir() -> Option<std::path::PathBuf> {
    std::env::var_os(SOURCE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

impl KernelFile {
    /// The self-contained source handed to NVRTC: the embedded text, or the files of [`SOURCE_DIR_ENV`] when set.
    pub fn full_source(&self) -> Result<String, CudaError> {
        match source_dir() {
            None => Ok(self.source.replace("#include \"common.cuh\"", COMMON)),
            Some(dir) => {
                let read = |name: &str| {
                    let p = dir.join(name);
                    std::fs::read_to_string(&p).map_err(|e| CudaError::Source {
                        path: p.display().to_string(),
                        msg: e.to_string(),
                    })
                };
                Ok(read(self.name)?.replace("#include \"common.cuh\"", &read("common.cuh")?))
            }
        }
    }
}

/// PTX texts by (source hash, compute capability).
type PtxCache = Mutex<HashMap<(u64, u32), Arc<String>>>;

fn cache() -> &'static PtxCache {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// PTX for `file` at compute capability `arch` (80 = sm_80). Compiled once per process; later calls hit the cache.
pub fn ptx(file: &KernelFile, arch: u32) -> Result<Arc<String>, CudaError> {
    toolkit::nvrtc().map_err(CudaError::Unavailable)?;
    let src = file.full_source()?;
    let mut h = DefaultHasher::new();
    src.hash(&mut h);
    let key = (h.finish(), arch);
    if let Some(p) = cache().lock().expect("ptx cache poisoned").get(&key) {
        return Ok(p.clone());
    }
    let arch_opt: &'static str = match arch {
        80 => "compute_80",
        86 => "compute_86",
        89 => "compute_89",
        90 => "compute_90",
        100 => "compute_100",
        120 => "compute_120",
        other => {
            return Err(CudaError::Compile {
                file: file.name.into(),
                arch,
                log: format!("no NVRTC target known for compute capability {other}"),
            })
        }
    };
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch_opt),
        name: Some(file.name.into()),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).map_err(|e| CudaError::Compile {
        file: file.name.into(),
        arch,
        log: match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().trim().to_string()
            }
            other => format!("{other:?}"),
        },
    })?;
    let text = Arc::new(ptx.to_src());
    cache()
        .lock()
        .expect("ptx cache poisoned")
        .insert(key, text.clone());
    Ok(text)
}

/// ptxas's resource line for one kernel at one architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelResources {
    pub file: String,
    pub kernel: String,
    /// e.g. "sm_90".
    pub arch: String,
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub smem_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_bytes: u32,
}

/// One NVRTC compilation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompiledFile {
    pub file: String,
    pub arch: String,
    pub ptx_bytes: usize,
    /// Entry points found in the PTX.
    pub kernels: Vec<String>,
    pub compile_ms: f64,
}

/// The result of compiling every kernel file for every architecture of [`CHECK_ARCHS`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompileReport {
    /// Where NVRTC was loaded from, and its version.
    pub nvrtc: String,
    /// "embedded", or the directory of SAEPERF_CUDA_SRC the sources were read from.
    pub sources: String,
    /// The ptxas used, or why there was none.
    pub ptxas: Result<String, String>,
    pub compiled: Vec<CompiledFile>,
    /// Empty when ptxas was not found.
    pub resources: Vec<KernelResources>,
    /// The nvdisasm used, or why there was none (the SASS mix is then absent; nothing fails).
    pub nvdisasm: Result<String, String>,
    /// The SASS instruction mix of every kernel and architecture; empty when ptxas or nvdisasm was not found.
    pub sass: Vec<SassMix>,
}

/// Why there is no SASS instruction mix when nvdisasm is not found.
pub const NVDISASM_MISSING: &str =
    "nvdisasm not found (python3 -m pip install nvidia-cuda-nvdisasm, or set SAEPERF_NVDISASM)";

/// What [`assemble`] makes of one PTX text: ptxas's resources and, where nvdisasm was given, the SASS mix.
#[derive(Clone, Debug, Default)]
pub struct Assembled {
    pub resources: Vec<KernelResources>,
    pub sass: Vec<SassMix>,
}

impl CompileReport {
    /// The resources as metric values, named `kernel.<arch>.<kernel>.<registers|smem_bytes|spill_bytes>`, where
    /// spill_bytes is spill stores + spill loads, and the SASS mix as `kernel.<arch>.<kernel>.sass.<name>`
    /// ([`SassMix::values`]). These are what the store keeps per run.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut v = Vec::new();
        for r in &self.resources {
            let base = format!("kernel.{}.{}", r.arch, r.kernel);
            v.push((format!("{base}.registers"), r.registers as f64));
            v.push((format!("{base}.smem_bytes"), r.smem_bytes as f64));
            v.push((
                format!("{base}.spill_bytes"),
                (r.spill_store_bytes + r.spill_load_bytes) as f64,
            ));
        }
        for s in &self.sass {
            for (name, value) in s.values() {
                v.push((format!("kernel.{}.{}.sass.{name}", s.arch, s.kernel), value));
            }
        }
        v
    }
    /// Kernels that spill at any architecture.
    pub fn spills(&self) -> Vec<&KernelResources> {
        self.resources
            .iter()
            .filter(|r| r.spill_store_bytes + r.spill_load_bytes > 0)
            .collect()
    }
}

/// The `.entry` names of a PTX text.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".entry "))?;
            Some(
                rest.split(|c: char| c == '(' || c.is_whitespace())
                    .next()?
                    .to_string(),
            )
        })
        .collect()
}

/// Compiles every file for every architecture of [`CHECK_ARCHS`] and, where ptxas exists, assembles each PTX and
/// collects the resource report (and, where nvdisasm exists too, the SASS mix), all NVRTC compilations first, then the
/// assemblies in parallel. Fails on the first compile or assembly error; fails with
/// [`CudaError::Unavailable`] when NVRTC is missing.
pub fn compile_all(mut progress: impl FnMut(&str)) -> Result<CompileReport, CudaError> {
    let where_ = toolkit::nvrtc().map_err(CudaError::Unavailable)?;
    let nvrtc = match toolkit::nvrtc_version() {
        Some((a, b)) => format!("NVRTC {a}.{b} ({where_})"),
        None => where_,
    };
    let ptxas = toolkit::ptxas();
    let nvdisasm = toolkit::nvdisasm();
    let mut compiled = Vec::new();
    let mut resources = Vec::new();
    let mut sass = Vec::new();
    let mut texts = Vec::new();
    for &arch in CHECK_ARCHS {
        for file in FILES {
            progress(&format!("{} sm_{arch}", file.name));
            let t0 = Instant::now();
            let text = ptx(file, arch)?;
            let entries = ptx_entries(&text);
            for k in file.kernels {
                if !entries.iter().any(|e| e == k) {
                    return Err(CudaError::Compile {
                        file: file.name.into(),
                        arch,
                        log: format!(
                            "kernel {k} is missing from the PTX (entries: {})",
                            entries.join(", ")
                        ),
                    });
                }
            }
            compiled.push(CompiledFile {
                file: file.name.into(),
                arch: format!("sm_{arch}"),
                ptx_bytes: text.len(),
                kernels: entries,
                compile_ms: t0.elapsed().as_secs_f64() * 1e3,
            });
            texts.push((file.name, text, arch));
        }
    }
    if let Some(p) = &ptxas {
        progress(&format!(
            "done; ptxas{} on {} PTX texts",
            if nvdisasm.is_some() {
                " + nvdisasm"
            } else {
                ""
            },
            texts.len()
        ));
        for a in assemble_all(p, nvdisasm.as_deref(), &texts)? {
            resources.extend(a.resources);
            sass.extend(a.sass);
        }
    }
    Ok(CompileReport {
        nvrtc,
        sources: source_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "embedded".into()),
        ptxas: ptxas
            .map(|p| p.display().to_string())
            .ok_or_else(|| "ptxas not found (python3 -m pip install nvidia-cuda-nvcc-cu12, or set SAEPERF_PTXAS)".into()),
        compiled,
        resources,
        nvdisasm: nvdisasm
            .map(|p| p.display().to_string())
            .ok_or_else(|| NVDISASM_MISSING.into()),
        sass,
    })
}

/// [`assemble`] on every `(file, PTX, arch)`, as many at once as this machine has cores (ptxas and nvdisasm are
/// single-threaded processes); the results in the order given, or the error of the first that failed.
fn assemble_all(
    ptxas: &std::path::Path,
    nvdisasm: Option<&std::path::Path>,
    texts: &[(&str, Arc<String>, u32)],
) -> Result<Vec<Assembled>, CudaError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(texts.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Assembled, CudaError>>>> =
        Mutex::new((0..texts.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((file, ptx, arch)) = texts.get(i) else {
                    break;
                };
                let r = assemble(ptxas, nvdisasm, file, ptx, *arch);
                results.lock().expect("assemble results poisoned")[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("assemble results poisoned")
        .into_iter()
        .map(|r| r.expect("every PTX text assembled"))
        .collect()
}

/// Runs `ptxas -arch=sm_XX -v` on one PTX text and parses its per-kernel resource lines; with `nvdisasm`, also
/// disassembles the cubin and counts each kernel's SASS mix ([`sass`]). A failing nvdisasm is a
/// [`CudaError::Nvdisasm`] naming the file and architecture.
pub fn assemble(
    ptxas: &std::path::Path,
    nvdisasm: Option<&std::path::Path>,
    file: &str,
    ptx: &str,
    arch: u32,
) -> Result<Assembled, CudaError> {
    let dir =
        tempfile::tempdir().map_err(|e| CudaError::Ptxas(format!("temporary folder: {e}")))?;
    let input = dir.path().join(file.replace(".cu", ".ptx"));
    std::fs::write(&input, ptx)
        .map_err(|e| CudaError::Ptxas(format!("{}: {e}", input.display())))?;
    let out = Command::new(ptxas)
        .arg(format!("-arch=sm_{arch}"))
        .arg("-v")
        .arg("-o")
        .arg(dir.path().join("out.cubin"))
        .arg(&input)
        .output()
        .map_err(|e| CudaError::Ptxas(format!("{}: {e}", ptxas.display())))?;
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(CudaError::Ptxas(format!(
            "{file} sm_{arch}: {}",
            log.trim()
        )));
    }
    let resources = parse_ptxas_log(file, &log);
    let sass = match nvdisasm {
        None => Vec::new(),
        Some(nvdisasm) => {
            let text =
                sass::disassemble(nvdisasm, &dir.path().join("out.cubin")).map_err(
                    |e| match e {
                        CudaError::Nvdisasm(m) => {
                            CudaError::Nvdisasm(format!("{file} sm_{arch}: {m}"))
                        }
                        other => other,
                    },
                )?;
            sass::parse(file, &format!("sm_{arch}"), &text)
        }
    };
    Ok(Assembled { resources, sass })
}

fn num_before(s: &str, unit: &str) -> Option<u32> {
    let i = s.find(unit)?;
    s[..i].split_whitespace().last()?.parse().ok()
}

/// Parses ptxas `-v` output: for each "Compiling entry function 'K' for 'sm_XX'", the "bytes stack frame, spill
/// stores, spill loads" line and the "Used N registers, ... N bytes smem" line that follow.
pub fn parse_ptxas_log(file: &str, log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or("").to_string();
            let arch = rest
                .split("for '")
                .nth(1)
                .and_then(|s| s.split('\'').next())
                .unwrap_or("")
                .to_string();
            out.push(KernelResources {
                file: file.into(),
                kernel,
                arch,
                registers: 0,
                smem_bytes: 0,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
                stack_bytes: 0,
            });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("bytes stack frame") {
                cur.stack_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
                cur.spill_store_bytes = num_before(line, "bytes spill stores").unwrap_or(0);
                cur.spill_load_bytes = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains("registers") {
                cur.registers = num_before(line, "registers").unwrap_or(0);
                cur.smem_bytes = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_resource_lines() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'encode_gemm_relu' for 'sm_90'\n\
ptxas info    : Function properties for encode_gemm_relu\n\
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n\
ptxas info    : Used 128 registers, used 1 barriers, 16384 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'topk_rows' for 'sm_90'\n\
ptxas info    : Function properties for topk_rows\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 30 registers, used 1 barriers, 1060 bytes smem, 380 bytes cmem[0]\n";
        let r = parse_ptxas_log("encode.cu", log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                file: "encode.cu".into(),
                kernel: "encode_gemm_relu".into(),
                arch: "sm_90".into(),
                registers: 128,
                smem_bytes: 16384,
                spill_store_bytes: 12,
                spill_load_bytes: 16,
                stack_bytes: 8,
            }
        );
        assert_eq!(
            (r[1].registers, r[1].smem_bytes, r[1].spill_store_bytes),
            (30, 1060, 0)
        );
    }

    #[test]
    fn every_file_names_its_kernels_and_includes_the_common_header() {
        for f in FILES {
            assert!(f.source.contains("#include \"common.cuh\""), "{}", f.name);
            let full = f.full_source().unwrap();
            assert!(
                !full.lines().any(|l| l.trim_start().starts_with("#include")),
                "{}: NVRTC gets one self-contained source",
                f.name
            );
            for k in f.kernels {
                assert!(
                    f.source.contains(&format!("\n{k}(")),
                    "{}: no kernel {k}",
                    f.name
                );
            }
            // The header lists its variants and how to run their check (style.md, llm.c).
            assert!(f.source.starts_with("// "), "{}", f.name);
            assert!(f.source.contains("Check:"), "{}", f.name);
        }
    }

    /// Really compiles every kernel file with NVRTC (and assembles it with ptxas) where NVRTC is installed; prints
    /// why it skipped otherwise. CI installs the NVRTC and ptxas wheels, so there it always runs.
    #[test]
    fn nvrtc_compiles_every_kernel_without_spills() {
        if let Err(why) = toolkit::nvrtc() {
            eprintln!("SKIP nvrtc_compiles_every_kernel_without_spills: {why}");
            return;
        }
        let report = compile_all(|_| {}).unwrap_or_else(|e| panic!("{e}"));
        for r in &report.resources {
            eprintln!(
                "{} {} {} regs {} smem {} spill {}+{}",
                r.arch,
                r.file,
                r.kernel,
                r.registers,
                r.smem_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes
            );
        }
        assert_eq!(report.compiled.len(), FILES.len() * CHECK_ARCHS.len());
        match &report.ptxas {
            Ok(_) => {
                let n: usize = FILES.iter().map(|f| f.kernels.len()).sum();
                assert_eq!(
                    report.resources.len(),
                    n * CHECK_ARCHS.len(),
                    "{:?}",
                    report.resources
                );
                assert!(report.resources.iter().all(|r| r.registers > 0));
                assert!(
                    report.spills().is_empty(),
                    "kernels spill: {:?}",
                    report.spills()
                );
                match &report.nvdisasm {
                    Ok(_) => {
                        // One mix per kernel and architecture, the same kernels ptxas reported.
                        let mut got: Vec<_> =
                            report.sass.iter().map(|s| (&s.arch, &s.kernel)).collect();
                        let mut want: Vec<_> = report
                            .resources
                            .iter()
                            .map(|r| (&r.arch, &r.kernel))
                            .collect();
                        got.sort();
                        want.sort();
                        assert_eq!(got, want);
                        assert!(report.sass.iter().all(|s| s.instructions > 0));
                    }
                    Err(why) => eprintln!("no SASS mix: {why}"),
                }
                assert_eq!(
                    report.metrics().len(),
                    3 * report.resources.len() + 10 * report.sass.len()
                );
            }
            Err(why) => eprintln!("no resource report: {why}"),
        }
        // The second compilation of the same source and architecture comes from the cache.
        let a = ptx(&FILES[0], 90).unwrap();
        let b = ptx(&FILES[0], 90).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
    }

    /// Runs every kernel in the CPU emulator of the CUDA execution model (kernels/cuda/emu) against C++ references
    /// where g++ exists: the only correctness evidence for the kernels on a machine without a GPU.
    #[test]
    fn kernels_run_correctly_in_the_emulator() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("emu-check");
        let build = Command::new("g++")
            .args(["-std=c++20", "-O1", "-pthread", "-I"])
            .arg(&root)
            .arg(root.join("emu/check.cpp"))
            .arg(root.join("emu/rt.cpp"))
            .arg("-o")
            .arg(&exe)
            .output();
        let build = match build {
            Ok(b) => b,
            Err(e) => {
                eprintln!("SKIP kernels_run_correctly_in_the_emulator: no g++ ({e})");
                return;
            }
        };
        assert!(
            build.status.success(),
            "g++: {}",
            String::from_utf8_lossy(&build.stderr)
        );
        let run = Command::new(&exe).arg("--quick").output().unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{out}");
        assert!(out.contains(" 0 failed"), "{out}");
    }
}
