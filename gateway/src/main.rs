//! `insitu`: run algorithms next to the data. See `insitu --help`.

use clap::{Args, Parser, Subcommand};
use insitu_gateway::commands::{self, run::RunArgs};
use insitu_runtime::Status;
use insitu_runtime::sandbox::Limits;
use insitu_runtime::units::{parse_duration, parse_size};
use std::path::PathBuf;
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

#[derive(Subcommand)]
enum Command {
    /// Run one stage locally; prints one line of JSON with the result.
    Run(RunCli),
    /// Run the example algorithms on sample data through the sandbox.
    Demo,
}

#[derive(Args)]
struct RunCli {
    /// The WebAssembly module (wasm32-wasip1) or component (wasm32-wasip2) to run.
    #[arg(long, value_name = "FILE.wasm")]
    module: PathBuf,
    /// An input directory, preopened read-only at /data/inputs/N (repeatable).
    #[arg(long = "input", value_name = "DIR")]
    inputs: Vec<PathBuf>,
    /// The output directory (created if missing; must be empty), at /data/outputs.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// The logs directory (must be empty), at /data/logs; default: a temporary one.
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Wall-clock limit (ms, s, m, h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Linear memory limit (KiB, MiB, GiB).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    memory: u64,
    /// Output directory quota.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    output_quota: u64,
    /// Logs quota (stdout + stderr + files in the logs dir).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    log_quota: u64,
    /// Where compiled modules are cached [default: ~/.cache/insitu/modules].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the compiled-module cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Extra arguments passed to the algorithm after the contract's.
    #[arg(last = true, value_name = "EXTRA_ARGS")]
    extra: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(r) => commands::run::execute(RunArgs {
            cache_dir: if r.no_cache {
                None
            } else {
                r.cache_dir.or_else(commands::default_cache_dir)
            },
            module: r.module,
            inputs: r.inputs,
            output: r.output,
            logs: r.logs,
            limits: Limits {
                timeout: r.timeout,
                memory: r.memory,
                output_quota: r.output_quota,
                log_quota: r.log_quota,
            },
            extra: r.extra,
        })
        .map(|report| report.status == Status::Succeeded),
        Command::Demo => commands::demo::execute(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
