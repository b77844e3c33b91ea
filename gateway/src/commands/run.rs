//! `insitu run`: one stage, locally, printing one line of JSON.

use anyhow::Context;
use insitu_runtime::sandbox::{JobSpec, Limits, StopHandle};
use insitu_runtime::{RunReport, Status};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where the module comes from.
#[derive(Debug, Clone)]
pub enum ModuleArg {
    File(PathBuf),
    Image(super::image::ImageArg),
}

/// What `insitu run` needs, already parsed.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub module: ModuleArg,
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub logs: Option<PathBuf>,
    pub limits: Limits,
    pub cache_dir: Option<PathBuf>,
    pub extra: Vec<String>,
    /// Deterministic mode, if asked for.
    pub deterministic: Option<insitu_runtime::sandbox::Determinism>,
}

/// Runs the stage and prints its report. Returns the report; the caller maps
/// its status to the exit code.
///
/// # Errors
/// Anything that prevents running (unreadable module, bad directories, limits
/// above the maximum). A module refused before running is a report with the
/// `rejected` outcome, not an error.
pub fn execute(args: RunArgs) -> anyhow::Result<RunReport> {
    let rt = super::runtime()?;
    let (bytes, name) = match &args.module {
        ModuleArg::File(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the module {}", path.display()))?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("algorithm")
                .to_string();
            (bytes, name)
        }
        ModuleArg::Image(image) => {
            let bytes = rt.block_on(super::image::pull_module(image, args.cache_dir.as_deref()))?;
            (bytes, image.algorithm_name())
        }
    };
    std::fs::create_dir_all(&args.output).with_context(|| {
        format!(
            "cannot create the output directory {}",
            args.output.display()
        )
    })?;
    let temp_logs;
    let logs = match &args.logs {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the logs directory {}", dir.display()))?;
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
        limits: args.limits,
        deterministic: args.deterministic,
    };
    let sandbox = super::local_sandbox(args.cache_dir.as_deref())?;
    let started = std::time::Instant::now();
    let report = match sandbox.prepare(&bytes) {
        Ok(module) => {
            super::runtime()?.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?
        }
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
