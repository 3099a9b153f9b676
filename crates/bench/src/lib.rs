//! saeperf-bench: the benchmark suite and running it into a run.
//!
//! - [`suite`]: the suite file (bench/suite.toml) → the benchmarks a profile runs, with their rules;
//! - [`run`]: `runner bench` in named steps, prepare → execute → judge, on a backend opened once per run;
//! - [`ops`], [`train`], [`kernels`]: the op micro-benchmarks (timed in rounds next to a yardstick), the training
//!   benchmarks (reference dictionaries and the pruning variant), the kernel benchmarks (ptxas resources, CUDA ops);
//! - [`dicts`]: the dictionaries a run keeps, and each reference dictionary's feature diff against the baseline's;
//! - [`calibrate`]: `runner calibrate`, the detector's false alarms and catches measured on this machine;
//! - [`peer`]: PyTorch's training step timed in the same run, and our throughput's ratio to it;
//! - [`count`]: counted cost (instructions, estimated cycles) of ops and training steps under Valgrind;
//! - [`paired`]: paired timing of two builds by long-lived workers (`runner bench-worker`);
//! - [`auto`]: `--baseline auto`, the merge base built in a worktree and its ops timed in pairs with the head's;
//! - [`document`]: the versioned documents `runner bench --json` and `runner bench-ops` write and their readers;
//! - [`table`]: the run as a table for people; [`synthetic`]: synthetic stores for measuring compare on big histories.
//!
//! The store is handed in by the caller; this crate never chooses where it lives.

pub mod auto;
pub mod calibrate;
pub mod count;
pub mod dicts;
pub mod document;
pub mod kernels;
pub mod ops;
pub mod paired;
pub mod peer;
pub mod run;
pub mod suite;
pub mod synthetic;
pub mod table;
pub mod train;

pub use document::{BenchDocument, OpsDocument};
pub use run::{execute, judge, prepare, BenchRequest, Device, Executed, Prepared};
pub use suite::Suite;
