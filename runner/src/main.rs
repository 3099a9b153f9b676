//! The `runner` binary (language-model commands; the lead's command-line module replaces this on merge).

use clap::{Parser, Subcommand};
use saeperf_runner::lm::cli;

#[derive(Parser)]
#[command(name = "runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(subcommand)]
    Data(Data),
    Features(cli::FeaturesArgs),
}

#[derive(Subcommand)]
enum Data {
    Fetch(cli::FetchArgs),
    Prepare(cli::PrepareArgs),
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let r = match Cli::parse().command {
        Command::Data(Data::Fetch(a)) => cli::cmd_fetch(a),
        Command::Data(Data::Prepare(a)) => cli::cmd_prepare(a),
        Command::Features(a) => cli::cmd_features(a),
    };
    match r {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
