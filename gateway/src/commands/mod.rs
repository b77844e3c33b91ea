//! One module per `insitu` subcommand.

pub mod demo;
pub mod run;

use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig};
use std::path::PathBuf;

/// The default compiled-module cache: `$XDG_CACHE_HOME/insitu/modules`, else
/// `$HOME/.cache/insitu/modules`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("insitu").join("modules"))
}

/// A sandbox for one job per process: on-demand allocation, the given cache.
pub fn local_sandbox(cache_dir: Option<PathBuf>) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig {
        max: Limits::ceiling(),
        concurrency: 0,
        cache_dir,
        ..SandboxConfig::default()
    })?)
}

/// A current-thread runtime with timers, for running one job.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?)
}
