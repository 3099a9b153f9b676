//! Choosing a backend at run time (`--backend cpu|reference|cuda|auto`), candle style: the CUDA types always exist,
//! and asking for CUDA where there is none is a clear error, never a panic. `auto` takes CUDA when a driver and a
//! device are present and NVRTC can compile the kernels, else the CPU, and says which it chose and why.

use crate::backend::{BackendError, CpuBackend};
use crate::cuda::CudaBackend;
use std::fmt;
use std::str::FromStr;

/// What the user asked for.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The fast CPU ops.
    Cpu,
    /// The plain CPU reference loops.
    Reference,
    /// The CUDA kernels on device 0; an error when unavailable.
    Cuda,
    /// CUDA when available, else the fast CPU ops.
    #[default]
    Auto,
}

impl BackendChoice {
    pub const ALL: [BackendChoice; 4] = [
        BackendChoice::Cpu,
        BackendChoice::Reference,
        BackendChoice::Cuda,
        BackendChoice::Auto,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Cpu => "cpu",
            BackendChoice::Reference => "reference",
            BackendChoice::Cuda => "cuda",
            BackendChoice::Auto => "auto",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackendChoice::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown backend {s:?} (expected cpu, reference, cuda or auto)"))
    }
}

/// The backend that was opened. Dispatch with a `match` to code generic over [`crate::Backend`].
pub enum Selected {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

/// Code generic over the backend, to run with whichever [`Selected`] holds (a closure cannot be generic over the
/// backend type; a trait method can). The training loop implements it once and runs on either device.
pub trait WithBackend {
    type Output;
    fn run<B: crate::Backend>(self, backend: &B) -> Self::Output;
}

impl Selected {
    /// Runs `w` with the selected backend.
    pub fn with<W: WithBackend>(&self, w: W) -> W::Output {
        match self {
            Selected::Cpu(b) => w.run(b),
            Selected::Cuda(b) => w.run(&**b),
        }
    }

    pub fn name(&self) -> String {
        use crate::Backend;
        match self {
            Selected::Cpu(b) => b.name(),
            Selected::Cuda(b) => b.name(),
        }
    }
}

/// The opened backend and one line saying what was chosen and why (for the log and the run record).
pub struct Selection {
    pub backend: Selected,
    pub line: String,
}

/// Opens the backend for `choice`. `Cuda` fails with [`BackendError::Unavailable`] (reason in one line) where
/// there is no usable GPU; `Auto` then falls back to the CPU and says so in [`Selection::line`].
pub fn select_backend(choice: BackendChoice) -> Result<Selection, BackendError> {
    match choice {
        BackendChoice::Cpu => Ok(Selection {
            backend: Selected::Cpu(CpuBackend::fast()),
            line: "backend: cpu (as asked)".into(),
        }),
        BackendChoice::Reference => Ok(Selection {
            backend: Selected::Cpu(CpuBackend::reference()),
            line: "backend: cpu-reference (as asked)".into(),
        }),
        BackendChoice::Cuda => {
            let b = CudaBackend::new(0)?;
            let line = format!("backend: {} (as asked)", crate::Backend::name(&b));
            Ok(Selection {
                backend: Selected::Cuda(Box::new(b)),
                line,
            })
        }
        BackendChoice::Auto => match CudaBackend::new(0) {
            Ok(b) => {
                let line = format!(
                    "backend: auto chose {} (a CUDA device is present)",
                    crate::Backend::name(&b)
                );
                Ok(Selection {
                    backend: Selected::Cuda(Box::new(b)),
                    line,
                })
            }
            Err(BackendError::Unavailable { reason, .. }) => Ok(Selection {
                backend: Selected::Cpu(CpuBackend::fast()),
                line: format!("backend: auto chose cpu (CUDA unavailable: {reason})"),
            }),
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_choice() {
        for c in BackendChoice::ALL {
            assert_eq!(c.to_string().parse::<BackendChoice>(), Ok(c));
        }
        assert_eq!("CUDA".parse::<BackendChoice>(), Ok(BackendChoice::Cuda));
        assert!("gpu"
            .parse::<BackendChoice>()
            .unwrap_err()
            .contains("expected cpu, reference, cuda or auto"));
    }

    #[test]
    fn generic_code_runs_with_the_selected_backend() {
        struct RoundTrip(Vec<f32>);
        impl WithBackend for RoundTrip {
            type Output = Result<(String, Vec<f32>), BackendError>;
            fn run<B: crate::Backend>(self, b: &B) -> Self::Output {
                let buf = b.upload(&self.0)?;
                Ok((b.name(), b.download(&buf)?))
            }
        }
        let s = select_backend(BackendChoice::Reference).unwrap();
        let (name, back) = s.backend.with(RoundTrip(vec![1.0, -2.5])).unwrap();
        assert_eq!(name, "cpu-reference");
        assert_eq!(back, vec![1.0, -2.5]);
    }

    #[test]
    fn cuda_without_a_driver_is_a_clear_error_and_auto_falls_back() {
        if crate::cuda::device_present().is_ok() {
            eprintln!("SKIP: a CUDA device is present; the fallback cannot be observed here");
            return;
        }
        match select_backend(BackendChoice::Cuda) {
            Err(BackendError::Unavailable { reason, .. }) => assert!(!reason.is_empty()),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("cuda opened without a device"),
        }
        let s = select_backend(BackendChoice::Auto).unwrap();
        assert!(matches!(s.backend, Selected::Cpu(_)));
        assert!(
            s.line
                .starts_with("backend: auto chose cpu (CUDA unavailable: "),
            "{}",
            s.line
        );
    }
}
