//! One module per `insitu` subcommand.

pub mod catalog;
pub mod demo;
pub mod image;
pub mod run;

use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig};
use std::path::PathBuf;

/// The default cache root: `$XDG_CACHE_HOME/insitu`, else
/// `$HOME/.cache/insitu`, else none. Compiled modules go to `modules/`,
/// image blobs to `blobs/`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("insitu"))
}

/// A sandbox for one job per process: on-demand allocation, compiled modules
/// cached under `cache_root/modules`.
pub fn local_sandbox(cache_root: Option<&std::path::Path>) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig {
        max: Limits::ceiling(),
        concurrency: 0,
        cache_dir: cache_root.map(|r| r.join("modules")),
        ..SandboxConfig::default()
    })?)
}

/// A current-thread runtime with timers and network IO, for one job or pull.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
