//! The one integration-test binary of saeperf: a module per area, each driving the real `runner` binary or the
//! library on real files.

mod bench;
mod common;
mod cuda;
mod dashboard;
mod engine;
mod formats;
mod lm;
mod report;
mod schedule;
mod store;
mod structure;
mod triage;
