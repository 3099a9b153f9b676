//! saeperf-kernels: the SAE compute core that saeperf guards.
//!
//! Each op (encode, decode, backward, adam, resample, reduce) lives in its own module under [`ops`] with a fixed
//! contract (shapes, FLOPs, bytes), a plain `reference` version written as obvious loops, and a `fast` CPU version
//! (a real GEMM from the `gemm` crate, threads from `rayon`, and a sparse path when few features fire).
//! [`backend::Backend`] puts the ops behind one interface so the training loop runs unchanged on any device;
//! [`sae::Sae`] holds a dictionary and saves / loads it in the SAELens layout.

// Reference versions are written as plain indexed loops on purpose: they are the definition.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod cuda;
pub mod ops;
pub mod sae;
pub mod select;

pub use backend::{Backend, BackendError, CpuBackend, CpuMode, Params};
pub use ops::{Activation, AdamHyper, BatchStats, CurvePoint, Op, Shape};
pub use sae::{Arch, GatedMag, Sae, SaeCfg, SaeError};
