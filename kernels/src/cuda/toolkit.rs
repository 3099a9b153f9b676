//! Finding the CUDA pieces on this machine without ever letting cudarc panic: the driver (libcuda), NVRTC
//! (libnvrtc), ptxas and nvdisasm.
//!
//! cudarc loads its libraries by name on first use and panics when none is found, so every entry point of the CUDA
//! module calls [`driver`] or [`nvrtc`] first. Where NVRTC is searched, in order:
//! 1. `$SAEPERF_NVRTC`: a path to `libnvrtc.so*` or to the folder holding it;
//! 2. the dynamic loader's own search (`LD_LIBRARY_PATH`, the ld cache), by the names cudarc tries;
//! 3. the pip wheel `nvidia-cuda-nvrtc-cu12` (`python3 -c 'import nvidia.cuda_nvrtc'`, folder `lib/`);
//! 4. `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`.
//!
//! A library found by path (3, 4) is loaded by its absolute path once and kept loaded; when cudarc later asks the
//! loader for `libnvrtc.so.12`, the loader hands back the already loaded object with that soname. ptxas is searched
//! as `$SAEPERF_PTXAS`, then `PATH`, then the pip wheel `nvidia-cuda-nvcc-cu12` (`bin/ptxas`), then the toolkit.
//! nvdisasm (for the static SASS instruction mix, [`super::sass`]) likewise: `$SAEPERF_NVDISASM`, `PATH`, the pip
//! wheel `nvidia-cuda-nvdisasm` (`nvidia/cu13/bin/nvdisasm`), the toolkit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Why a CUDA piece is missing, in one line.
pub type Missing = String;

/// True when the NVIDIA driver library can be loaded (checked once per process).
pub fn driver() -> Result<(), Missing> {
    static DRIVER: OnceLock<Result<(), Missing>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: is_culib_present only tries to dlopen the candidate library names and closes them again.
            if unsafe { cudarc::driver::sys::is_culib_present() } {
                Ok(())
            } else {
                Err("no NVIDIA driver: libcuda.so could not be loaded (is this a machine with a GPU?)".into())
            }
        })
        .clone()
}

/// Where NVRTC was found, for logs and reports.
pub fn nvrtc() -> Result<String, Missing> {
    static NVRTC: OnceLock<Result<String, Missing>> = OnceLock::new();
    NVRTC.get_or_init(locate_nvrtc).clone()
}

fn nvrtc_loadable() -> bool {
    // SAFETY: is_culib_present only tries to dlopen the candidate library names and closes them again.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn locate_nvrtc() -> Result<String, Missing> {
    if let Some(v) = std::env::var_os("SAEPERF_NVRTC") {
        let p = PathBuf::from(v);
        let file = if p.is_dir() {
            nvrtc_in(&p)
        } else {
            Some(p.clone())
        };
        let Some(file) = file else {
            return Err(format!(
                "SAEPERF_NVRTC={}: no libnvrtc.so* in that folder",
                p.display()
            ));
        };
        return preload(&file).map(|_| format!("{} (SAEPERF_NVRTC)", file.display()));
    }
    if nvrtc_loadable() {
        return Ok("libnvrtc from the dynamic loader's search path".into());
    }
    let mut tried = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = pip_package_dir("nvidia.cuda_nvrtc") {
        dirs.push(d.join("lib"));
    }
    dirs.extend(toolkit_dirs().into_iter().map(|d| d.join("lib64")));
    for dir in dirs {
        if let Some(file) = nvrtc_in(&dir) {
            match preload(&file) {
                Ok(()) => return Ok(file.display().to_string()),
                Err(e) => tried.push(e),
            }
        } else {
            tried.push(format!("{}: no libnvrtc.so*", dir.display()));
        }
    }
    Err(format!(
        "NVRTC not found (install it with `python3 -m pip install nvidia-cuda-nvrtc-cu12`, or set SAEPERF_NVRTC or \
         LD_LIBRARY_PATH){}",
        if tried.is_empty() { String::new() } else { format!("; tried {}", tried.join("; ")) }
    ))
}

/// The libnvrtc in `dir`, preferring the versioned soname (libnvrtc.so.12) over the bare development link.
fn nvrtc_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("libnvrtc.so") && !n.contains("builtins") && !n.contains(".alt.")
        })
        .collect();
    found.sort_by_key(|p| p.file_name().map(|n| n.len()).unwrap_or(0));
    // "libnvrtc.so.12" (a soname cudarc asks for) before "libnvrtc.so.12.9.86" and after "libnvrtc.so".
    found
        .iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.matches('.').count() == 2)
        })
        .or(found.first())
        .cloned()
}

fn preload(file: &Path) -> Result<(), Missing> {
    // SAFETY: loading NVIDIA's NVRTC runs only its (trusted) initialisers; the handle is leaked on purpose so the
    // library stays loaded for cudarc, which finds it again by soname.
    let lib = unsafe { libloading::Library::new(file) }
        .map_err(|e| format!("{}: cannot be loaded: {e}", file.display()))?;
    std::mem::forget(lib);
    if nvrtc_loadable() {
        Ok(())
    } else {
        Err(format!(
            "{} loads, but not under a name cudarc asks for (libnvrtc.so, libnvrtc.so.12, ...): put its folder on \
             LD_LIBRARY_PATH",
            file.display()
        ))
    }
}

fn toolkit_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = std::env::var_os(var) {
            v.push(PathBuf::from(h));
        }
    }
    v.push(PathBuf::from("/usr/local/cuda"));
    v
}

/// The folder of an installed Python package (e.g. `nvidia.cuda_nvrtc`, a namespace package), via `python3`.
pub fn pip_package_dir(module: &str) -> Option<PathBuf> {
    let code = format!("import {module} as m; print(list(m.__path__)[0])");
    let out = Command::new("python3").args(["-c", &code]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(s.trim());
    p.is_dir().then_some(p)
}

/// The ptxas to assemble PTX with, if any (checked once per process).
pub fn ptxas() -> Option<PathBuf> {
    static PTXAS: OnceLock<Option<PathBuf>> = OnceLock::new();
    PTXAS.get_or_init(find_ptxas).clone()
}

fn find_ptxas() -> Option<PathBuf> {
    find_tool("SAEPERF_PTXAS", "ptxas", "nvidia.cuda_nvcc")
}

/// A CUDA command-line tool: `$env`, then `PATH`, then the pip package `module`'s `bin/`, then the toolkit's `bin/`.
fn find_tool(env: &str, name: &str, module: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|c| c.is_file())
    });
    on_path
        .or_else(|| {
            pip_package_dir(module)
                .map(|d| d.join("bin").join(name))
                .filter(|c| c.is_file())
        })
        .or_else(|| {
            toolkit_dirs()
                .into_iter()
                .map(|d| d.join("bin").join(name))
                .find(|c| c.is_file())
        })
}

/// The nvdisasm to disassemble cubins with, if any (checked once per process): `$SAEPERF_NVDISASM`, then `PATH`,
/// then the pip wheel `nvidia-cuda-nvdisasm` (`nvidia.cu13`, `bin/nvdisasm`), then the toolkit's `bin/`.
pub fn nvdisasm() -> Option<PathBuf> {
    static NVDISASM: OnceLock<Option<PathBuf>> = OnceLock::new();
    NVDISASM.get_or_init(find_nvdisasm).clone()
}

fn find_nvdisasm() -> Option<PathBuf> {
    find_tool("SAEPERF_NVDISASM", "nvdisasm", "nvidia.cu13")
}

/// NVRTC's version (major, minor), once NVRTC is available.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    nvrtc().ok()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion(int *major, int *minor) writes two ints; NVRTC is loaded (checked above).
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}
