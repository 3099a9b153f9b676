//! The `runner` binary: parses the command line and runs one command. Errors print as one line on stderr and exit
//! non-zero (see the README for the exit codes).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
