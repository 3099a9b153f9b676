//! The CUDA side of saeperf: hand-written kernels (kernels/cuda/*.cu) compiled at run time with NVRTC through
//! cudarc, the [`CudaBackend`] that runs the SAE ops on a GPU behind the same [`crate::Backend`] trait as the CPU,
//! and the checks and timings of those kernels.
//!
//! This module (and its children) is the ONLY place that touches cudarc. Every entry point first checks that the
//! library it needs can be loaded ([`toolkit`]), because cudarc panics when a library is missing; without a driver
//! the same types exist and return [`CudaError::Unavailable`]. The build never needs nvcc, a toolkit or a GPU.
//!
//! - [`toolkit`]: finding libcuda, libnvrtc, ptxas and nvdisasm.
//! - [`compile`]: the embedded sources, NVRTC compilation (cached per process), the ptxas resource report.
//! - [`sass`]: the static SASS instruction mix of each kernel (nvdisasm on ptxas's cubin).
//! - [`emu`]: the kernels run in the CPU emulator (kernels/cuda/emu) with counted memory traffic, bank conflicts,
//!   barriers and fp32 operations, and the roofline estimate at a real shape; plain C++, no cudarc.
//! - [`backend`]: the `CudaBackend`.
//! - [`verify`]: every kernel against its CPU reference on a GPU (`runner kernels check --backend cuda`).
//! - [`bench`]: CUDA-event timings of every op and of cuBLAS SGEMM as the yardstick.

pub mod backend;
pub mod bench;
pub mod compile;
pub mod emu;
pub mod sass;
pub mod toolkit;
pub mod verify;

pub use backend::CudaBackend;
pub use compile::{compile_all, CompileReport, KernelResources};

use thiserror::Error;

/// What went wrong on the CUDA side.
#[derive(Debug, Error)]
pub enum CudaError {
    /// A library or the device is missing on this machine.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// NVRTC rejected a kernel file.
    #[error("NVRTC failed to compile {file} for sm_{arch}: {log}")]
    Compile {
        file: String,
        arch: u32,
        log: String,
    },
    /// A kernel source file (from SAEPERF_CUDA_SRC) could not be read.
    #[error("cannot read kernel source {path} ({SOURCE_DIR_ENV}): {msg}", SOURCE_DIR_ENV = compile::SOURCE_DIR_ENV)]
    Source { path: String, msg: String },
    /// ptxas failed or could not be run.
    #[error("ptxas: {0}")]
    Ptxas(String),
    /// nvdisasm failed or could not be run on a cubin.
    #[error("nvdisasm: {0}")]
    Nvdisasm(String),
    /// The CPU emulator of the kernels could not be built or run.
    #[error("kernel emulator: {0}")]
    Emulator(String),
    /// The driver reported an error.
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// cuBLAS reported an error.
    #[error("cuBLAS error: {0}")]
    Blas(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

impl From<CudaError> for crate::BackendError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Unavailable(reason) => crate::BackendError::Unavailable {
                backend: "cuda".into(),
                reason,
            },
            other => crate::BackendError::Device {
                backend: "cuda".into(),
                message: other.to_string(),
            },
        }
    }
}

/// True when a CUDA device can be used here: the driver loads and reports at least one device. Never panics.
pub fn device_present() -> Result<usize, String> {
    toolkit::driver()?;
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err("the NVIDIA driver reports no CUDA device".into()),
        Err(e) => Err(format!("the NVIDIA driver failed to initialise: {e:?}")),
    }
}
