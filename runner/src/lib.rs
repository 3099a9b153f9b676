//! saeperf's service code behind the `runner` binary: activation sets, training, metrics, the language model (and, as
//! they land, the bench suite, the store, comparison, reports and the scheduler).
//!
//! Data flows one way: activation set → training (ops on a backend) → metrics → run → store → compare → report.

pub mod bench;
pub mod cli;
pub mod compare;
pub mod data;
pub mod fingerprint;
pub mod github;
pub mod home;
pub mod kernels_cmd;
pub mod lm;
pub mod metrics;
pub mod report;
pub mod store;
pub mod store_cli;
pub mod suite;
pub mod train;
