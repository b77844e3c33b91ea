//! `insitu run`: one stage, locally, printing one line of JSON.

use super::image::ImageArg;
use anyhow::Context;
use clap::Args;
use insitu_runtime::sandbox::{JobSpec, Limits, StopHandle};
use insitu_runtime::units::{parse_duration, parse_size};
use insitu_runtime::{RunReport, Status};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `insitu run`: one stage, locally.
#[derive(Args, Debug, Clone)]
pub struct RunCommand {
    /// The WebAssembly module (wasm32-wasip1) or component (wasm32-wasip2) to run.
    #[arg(long, value_name = "FILE.wasm", required_unless_present_any = ["image", "image_layout"], conflicts_with_all = ["image", "image_layout"])]
    pub module: Option<PathBuf>,
    /// An OCI image pinned by checksum: host[:port]/name[:tag]@sha256:<digest>.
    #[arg(
        long,
        value_name = "REF@sha256:DIGEST",
        conflicts_with = "image_layout"
    )]
    pub image: Option<String>,
    /// An OCI image layout directory, optionally with a tag: DIR[:TAG].
    #[arg(long, value_name = "DIR[:TAG]")]
    pub image_layout: Option<String>,
    /// Use plain HTTP for this registry host (loopback test registries); repeatable.
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// An input directory, preopened read-only at /data/inputs/N (repeatable).
    #[arg(long = "input", value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// The output directory (created if missing; must be empty), at /data/outputs.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// The logs directory (must be empty), at /data/logs; default: a temporary one.
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Wall-clock limit (ms, s, m, h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Linear memory limit (KiB, MiB, GiB).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub memory: u64,
    /// Output directory quota.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub output_quota: u64,
    /// Logs quota (stdout + stderr + files in the logs dir).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub log_quota: u64,
    /// Cache root: compiled modules in DIR/modules, image blobs in DIR/blobs [default: ~/.cache/insitu].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the caches.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Run in deterministic mode, seeded as stage 0 of execution ID (fixed
    /// clocks, seeded random, sorted listings): what a deterministic
    /// dataset's stages get, and what `insitu verify --reproduce` runs.
    #[arg(long, value_name = "EXECUTION_ID", num_args = 0..=1, default_missing_value = "local")]
    pub deterministic: Option<String>,
    /// Extra arguments passed to the algorithm after the contract's.
    #[arg(last = true, value_name = "EXTRA_ARGS")]
    pub extra: Vec<String>,
}

impl RunCommand {
    /// Runs the stage and prints its report; `Ok(true)` iff it succeeded.
    ///
    /// # Errors
    /// As [`RunCommand::report`].
    pub fn execute(self) -> anyhow::Result<bool> {
        Ok(self.report()?.status == Status::Succeeded)
    }

    /// The module's bytes and the algorithm's name.
    fn module(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<(Vec<u8>, String)> {
        if let Some(path) = &self.module {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the module {}", path.display()))?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("algorithm")
                .to_string();
            return Ok((bytes, name));
        }
        let image = ImageArg::of(
            self.image.clone(),
            self.image_layout.clone(),
            self.insecure_registry.clone(),
        );
        let bytes = rt.block_on(super::image::pull_module(&image, self.cache().as_deref()))?;
        Ok((bytes, image.algorithm_name()))
    }

    /// The cache root, unless `--no-cache`.
    fn cache(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(super::shared::default_cache_dir)
        }
    }

    /// Runs the stage and prints its report.
    ///
    /// # Errors
    /// Anything that prevents running (unreadable module, bad directories, limits
    /// above the maximum). A module refused before running is a report with the
    /// `rejected` outcome, not an error.
    pub fn report(&self) -> anyhow::Result<RunReport> {
        let args = self;
        let rt = super::shared::runtime()?;
        let (bytes, name) = self.module(&rt)?;
        std::fs::create_dir_all(&args.output).with_context(|| {
            format!(
                "cannot create the output directory {}",
                args.output.display()
            )
        })?;
        let temp_logs;
        let logs = match &args.logs {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the logs directory {}", dir.display())
                })?;
                dir.clone()
            }
            None => {
                temp_logs = tempfile::Builder::new().prefix("insitu-logs-").tempdir()?;
                temp_logs.path().to_path_buf()
            }
        };
        let spec = JobSpec {
            name,
            inputs: args.inputs.clone(),
            output: args.output.clone(),
            logs: logs.clone(),
            args: args.extra.clone(),
            env: Vec::new(),
            limits: Limits {
                timeout: args.timeout,
                memory: args.memory,
                output_quota: args.output_quota,
                log_quota: args.log_quota,
            },
            deterministic: args
                .deterministic
                .as_deref()
                .map(|id| insitu_runtime::sandbox::Determinism::for_stage(id, 0)),
        };
        let sandbox = super::shared::local_sandbox(args.cache().as_deref())?;
        let started = std::time::Instant::now();
        let report = match sandbox.prepare(&bytes) {
            Ok(module) => super::shared::runtime()?.block_on(sandbox.run(
                &module,
                &spec,
                &StopHandle::default(),
            ))?,
            Err(insitu_runtime::Error::Rejected { digest, reason }) => RunReport {
                status: Status::Failed,
                outcome: insitu_runtime::Outcome::Rejected,
                exit_code: None,
                duration_ms: started.elapsed().as_millis() as u64,
                module_digest: digest,
                output_bytes: 0,
                log_bytes: 0,
                peak_memory_bytes: None,
                fuel_consumed: None,
                error: Some(format!("module rejected: {reason}")),
            },
            Err(e) => return Err(e.into()),
        };
        println!("{}", serde_json::to_string(&report)?);
        if report.status != Status::Succeeded {
            if let Some(error) = &report.error {
                eprintln!("error: {}", error.lines().next().unwrap_or(error));
            }
            if args.logs.is_none() {
                echo_tail(&logs.join("stderr.log"));
            }
        }
        Ok(report)
    }
}

/// Copies the last 4 KiB of the guest's stderr to ours when its logs dir is
/// temporary and about to vanish.
fn echo_tail(path: &Path) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return;
    }
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut tail = String::new();
    if f.read_to_string(&mut tail).is_ok() {
        eprintln!(
            "guest stderr (last {} bytes):\n{}",
            tail.len(),
            tail.trim_end()
        );
    }
}
