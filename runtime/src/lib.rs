//! # insitu-runtime
//!
//! The execution core of insitu: everything needed to run one algorithm stage
//! against local data under the guest contract of docs/ARCHITECTURE.md ("Guest contract").
//!
//! - [`airlock`] decides what of a run's results may leave: the datasets'
//!   output policies and their automatic checks.
//! - [`sandbox`] owns the shared wasmtime engine, the compiled-module cache and
//!   the per-job store: preopens, limits, quotas and outcome classification.
//! - [`backend`] is the seam between the pipeline and what runs a stage
//!   ([`backend::Backend`]: the in-process sandbox, or Kubernetes pods).
//! - [`image`] pulls checksummed OCI images, verifies every byte, classifies
//!   them (wasm artifact, compat, native) and packages modules as artifacts.
//! - [`outcome`] is the one vocabulary of statuses and outcomes (docs/ARCHITECTURE.md, "Statuses and outcomes").
//! - [`permissions`] decides who may execute what ([`permissions::Permissions`];
//!   local agreements by default).
//! - [`pipeline`] runs a resolved execution stage by stage and publishes the
//!   result asset.
//! - [`executions`] owns an execution's life: admission into a bounded queue,
//!   workers, stop, waiting, settlement and shutdown.
//! - [`job`] is the vocabulary of one stage ([`job::JobSpec`], limits, stop
//!   handles) shared by the sandbox and every backend; [`datadir`] spells out
//!   the data directory's layout; [`digest`] computes and checks `sha256:`
//!   digests; [`sync`], [`thread`] and [`metrics`] are small shared helpers.
//! - [`receipt`] signs execution receipts with the provider's secp256k1 key.
//! - [`resolve`] turns an agreement's workflow into digest-pinned, permitted
//!   stages before any backend sees them.
//! - [`store`] keeps the provider's state in SQLite: catalog, local
//!   agreements, executions (status changes through [`Status::transition`]).
//! - [`units`] parses and prints the sizes and durations users type.
//! - [`workflow`] parses and validates Nevermined compute workflows.
//!
//! ```no_run
//! # async fn demo() -> Result<(), insitu_runtime::Error> {
//! use insitu_runtime::sandbox::{Sandbox, SandboxConfig, JobSpec};
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let module = sandbox.prepare(&std::fs::read("word-count.wasm").unwrap())?;
//! let spec = JobSpec::new("word-count", "/srv/out".into(), "/srv/logs".into())
//!     .input("/srv/datasets/books".into());
//! let report = sandbox.run(&module, &spec, &Default::default()).await?;
//! println!("{}", serde_json::to_string(&report).unwrap());
//! # Ok(()) }
//! ```

pub mod airlock;
pub mod backend;
pub mod datadir;
pub mod digest;
pub mod error;
pub mod executions;
pub mod image;
pub mod jcs;
pub mod job;
pub mod metrics;
pub mod outcome;
pub mod permissions;
pub mod pipeline;
pub mod receipt;
pub mod resolve;
pub mod sandbox;
pub mod store;
pub mod sync;
pub mod thread;
pub mod tls;
pub mod units;
pub mod verify;
pub mod warm;
pub mod workflow;

pub use error::Error;
pub use outcome::{Outcome, RunReport, Status};
