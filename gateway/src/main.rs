//! `insitu`: run algorithms next to the data. See `insitu --help`; each
//! subcommand lives in [`insitu_gateway::commands`].

use clap::Parser;
use insitu_gateway::commands::Command;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "insitu",
    version,
    about = "Data in situ computation: run algorithms where the data lives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// mimalloc rather than glibc's malloc: ~13 % of the CPU of an execution
/// over HTTP went to glibc's allocator (see BENCHMARKS.md, [disk-speed]).
/// Built with lazy arena commit (`.cargo/config.toml`): eager commit, its
/// Linux default, doubled the resident memory of a loaded server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    insitu_gateway::quiet_error_backtraces();
    match Cli::parse().command.execute() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
