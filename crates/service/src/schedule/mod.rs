//! `runner schedule --config FILE`: the unattended benchmark service, and `runner status`, in modules by job:
//! [`scheduler`] (the loop: fires, the queue, waiting for children, the status document), [`attempt`] (one attempt at
//! one commit: build → bench → dashboard → notify → post), [`pulls`] (pull-request jobs: listing, fetching heads,
//! posting, failure statuses), [`job`] (command templates and child processes), [`config`], [`state`], [`status`].
//!
//!
//! One thread, one loop: every 200 ms it checks each job's next cron fire; a fire queues its job (a job already
//! queued is not queued twice, so fires that arrive while another job runs coalesce), and when nothing runs the
//! oldest queued job starts. A job resolves its target commit (after `git fetch` when the clone has a remote),
//! asks the store whether that commit was already benchmarked with the same suite, profile and machine (then it is
//! skipped), checks it out into its own git worktree, builds it, runs that build's bench against the shared store,
//! reads the bench's document (bench's `BenchDocument`: run, baseline, comparison), re-renders the dashboard, notifies webhooks of regressions and
//! removes the worktree. While a child runs the loop keeps polling fires and the stop flag.
//!
//! A pull-request job lists the open pull requests carrying its label through the GitHub client (octocrab, API base
//! URL from the configuration), and for each head commit not yet benchmarked with the same suite, profile and
//! machine fetches `refs/pull/N/head` from the remote (a ref GitHub serves for every pull request, forks included,
//! and that a plain git remote can hold too), benchmarks it like a branch commit with the pull request's base branch
//! as the merge-base baseline, re-renders the dashboard, and runs `runner report post` (this same binary, as a child
//! in its own process group) to update the job's sticky comment and set the commit status, and reads what it did
//! from its `PostDocument`. A failed listing or post
//! is recorded as a `github failed` attempt; a head whose run is stored but whose post failed is posted again at the
//! next fire without being benchmarked again. A head that fails to build (or whose bench crashes) gets an `error`
//! commit status. Build and bench children run without the token variables in their environment: a labelled pull
//! request (perhaps from a fork) runs its own code on this machine, and must not be handed the token.
//!
//! Invariants: the state file (see [`state`]) records the newest handled fire per job, so after downtime a missed
//! fire runs once; an attempt is in `state.current` while it runs and moves to the history with its outcome and log,
//! so every incomplete store run the scheduler caused is named by an `interrupted`/`bench crashed` attempt;
//! SIGTERM/SIGINT kill the child's process group (TERM, then KILL after 3 s), record the attempt as interrupted,
//! remove the worktree and exit 0; a failing build or bench never stops the loop; one scheduler per store
//! ([`state::SchedulerLock`]). The scheduler never holds the store open while a bench runs (sled locks it).

pub mod attempt;
pub mod config;
pub mod job;
pub mod pulls;
pub mod sandbox;
pub mod scheduler;
pub mod state;
pub mod status;

pub use scheduler::{check, due_fire, next_fire, run};
pub use status::status_report;
