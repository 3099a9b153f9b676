//! The saeperf service as a library: the `runner` binary is its command-line face.
pub mod data;
pub mod lm;
