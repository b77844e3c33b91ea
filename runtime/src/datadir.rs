//! The provider's data directory, spelled out once.
//!
//! ```text
//! <root>/insitu.db        SQLite: catalog, agreements, executions, receipts
//! <root>/insitu.lock      held by the one process serving this directory
//! <root>/provider.key     signs receipts (created on first use)
//! <root>/token.key        signs access tokens (created on first use)
//! <root>/blobs/           content-addressed image blobs (sha256)
//! <root>/modules/         compiled-module cache
//! <root>/executions/<id>/stage-<n>/{outputs,logs}/
//! ```

use std::path::{Path, PathBuf};

/// A data directory's layout (nothing is created by naming a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root` (made absolute by the caller where pods or
    /// containers mount its directories by path).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state database.
    pub fn database(&self) -> PathBuf {
        self.root.join("insitu.db")
    }

    /// The lock file of the process serving this directory.
    pub fn lock(&self) -> PathBuf {
        self.root.join("insitu.lock")
    }

    /// The key that signs receipts.
    pub fn provider_key(&self) -> PathBuf {
        self.root.join("provider.key")
    }

    /// The key that signs access tokens.
    pub fn token_key(&self) -> PathBuf {
        self.root.join("token.key")
    }

    /// The blob store.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where the blob store keeps the blob `digest` (`sha256:…`).
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.blobs()
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The compiled-module cache.
    pub fn modules(&self) -> PathBuf {
        self.root.join("modules")
    }

    /// Where executions' working directories live.
    pub fn executions(&self) -> PathBuf {
        self.root.join("executions")
    }

    /// Execution `id`'s working directory.
    pub fn execution(&self, id: &str) -> PathBuf {
        self.executions().join(id)
    }

    /// Stage `index` of execution `id`.
    pub fn stage(&self, id: &str, index: u32) -> PathBuf {
        stage_dir(&self.execution(id), index)
    }

    /// The output directory of stage `index` of execution `id`.
    pub fn outputs(&self, id: &str, index: u32) -> PathBuf {
        self.stage(id, index).join(OUTPUTS)
    }

    /// The logs directory of stage `index` of execution `id`.
    pub fn logs(&self, id: &str, index: u32) -> PathBuf {
        self.stage(id, index).join(LOGS)
    }
}

/// A stage's output directory's name in its stage directory.
pub const OUTPUTS: &str = "outputs";
/// A stage's logs directory's name in its stage directory.
pub const LOGS: &str = "logs";

/// Stage `index`'s directory in an execution's working directory `work`
/// (also the layout of `insitu verify --reproduce`'s scratch directory).
pub fn stage_dir(work: &Path, index: u32) -> PathBuf {
    work.join(format!("stage-{index}"))
}

/// `syncfs(2)` of the filesystem holding `dir`: every dirty page and inode
/// of it reaches the disk.
///
/// # Errors
/// Opening `dir`, or the call's own error.
pub fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: `d` is an open descriptor for the whole call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
