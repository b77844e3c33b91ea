//! The seam between the pipeline and what runs a stage. The pipeline resolves
//! and classifies first; a [`Backend`] only ever sees a [`StageJob`]: an
//! image pinned by digest, host directories for the guest contract's mounts
//! (docs/ARCHITECTURE.md, "Guest contract"), and limits already capped by the provider's maxima.
//!
//! [`LocalWasm`] runs wasm stages in-process in the shared sandbox (the
//! default); `insitu-kubernetes` runs native images — and, if the provider
//! wants, wasm stages too — as pods with the same contract.

use crate::sandbox::{Prepared, Sandbox};
use crate::workflow::Did;
use crate::{Error, RunReport};
use std::path::Path;
use std::sync::Arc;

pub use crate::job::{BoxFuture, Determinism, JobSpec, Limits, StopHandle};

/// What an image turned out to be, once pulled and verified.
#[derive(Clone)]
pub enum StageCode {
    /// A wasm module, already compiled and checked by the local sandbox.
    Wasm(Arc<Prepared>),
    /// A native container image; only its reference and digest are known.
    Native,
}

impl std::fmt::Debug for StageCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageCode::Wasm(p) => write!(f, "Wasm({})", p.digest),
            StageCode::Native => f.write_str("Native"),
        }
    }
}

/// One stage of one execution, fully resolved.
#[derive(Debug, Clone)]
pub struct StageJob {
    pub execution: String,
    pub agreement: String,
    pub stage: u32,
    /// `repository@sha256:…`, pinned by the workflow's checksum.
    pub image: String,
    /// `sha256:…` the workflow pinned (a manifest's, or an index's).
    pub checksum: String,
    pub code: StageCode,
    /// Host directories and limits, in the guest contract's order.
    pub spec: JobSpec,
    /// For each of `spec.inputs`: the dataset it is, or `None` for an
    /// earlier stage's output.
    pub datasets: Vec<Option<Did>>,
}

/// Runs stages. Guest failures are a [`RunReport`], not an error.
pub trait Backend: Send + Sync {
    /// A short name for logs and status (`wasm`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Runs `job` to its end, or until `stop` is asked for.
    ///
    /// # Errors
    /// Host-side failures (the provider's disk, an unreachable cluster).
    fn run<'a>(
        &'a self,
        job: &'a StageJob,
        stop: &'a StopHandle,
    ) -> BoxFuture<'a, Result<RunReport, Error>>;

    /// Whether this backend can run `code` (a wasm-only backend cannot run
    /// native images).
    fn accepts(&self, code: &StageCode) -> bool;
}

/// Wasm stages in-process, in the shared [`Sandbox`].
pub struct LocalWasm(pub Arc<Sandbox>);

impl LocalWasm {
    /// Its [`Backend::name`].
    pub const NAME: &'static str = "wasm";
}

impl Backend for LocalWasm {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run<'a>(
        &'a self,
        job: &'a StageJob,
        stop: &'a StopHandle,
    ) -> BoxFuture<'a, Result<RunReport, Error>> {
        Box::pin(async move {
            match &job.code {
                StageCode::Wasm(module) => self.0.run(module, &job.spec, stop).await,
                StageCode::Native => Err(Error::BadImage {
                    digest: job.checksum.clone(),
                    reason: "a native image reached the wasm backend".into(),
                }),
            }
        })
    }

    fn accepts(&self, code: &StageCode) -> bool {
        matches!(code, StageCode::Wasm(_))
    }
}

/// Bytes in the regular files under `dir` (links not followed, unreadable
/// directories skipped): what a [`RunReport`] counts as output and log bytes
/// when a backend cannot meter writes as they happen (pods, containers).
pub fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
