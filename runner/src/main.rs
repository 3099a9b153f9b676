//! The `runner` binary: the command-line face of saeperf. Subcommands parse their flags and hand the work to the
//! libraries; errors print as one line (`{:#}`) with exit code 2.

mod kernels_cmd;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "saeperf: benchmarks and regression tracking for SAE training kernels"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The CUDA kernels: compile / resource check (no GPU needed), GPU correctness check, GPU timings.
    #[command(subcommand)]
    Kernels(kernels_cmd::KernelsCmd),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Kernels(k) => kernels_cmd::run(k),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
