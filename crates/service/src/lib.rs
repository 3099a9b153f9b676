//! saeperf-service: the unattended side of saeperf.
//!
//! - [`schedule`]: `runner schedule` and `runner status`: cron jobs that build and bench tracked commits, and
//!   pull-request jobs that bench labelled pull requests and report on them;
//! - [`post`]: `runner report post`: the sticky pull-request comment and the commit status, with a
//!   [`post::PostDocument`] saying what was posted;
//! - [`github`]: the only code that talks to GitHub (octocrab), with GitHub's rules for retries;
//! - [`notify`]: webhook notifications of regressions.
//!
//! It reads what benches and posts did only through their versioned documents (bench's `BenchDocument`, this crate's
//! `PostDocument`), never through their logs or stdout text.

pub mod github;
pub mod notify;
pub mod post;
pub mod schedule;
