//! The vocabulary of the seam between the pipeline and what runs a stage
//! (see [`crate::backend`]): one job's directories, arguments and limits
//! ([`JobSpec`], [`Limits`]), deterministic mode ([`Determinism`]), the
//! request to stop ([`StopHandle`]) and the boxed future trait objects
//! return ([`BoxFuture`]). A leaf: it imports nothing else of the crate but
//! errors and units, so every backend can use it without the sandbox.

use crate::Error;
use crate::units::{format_duration, format_size};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A boxed future, so the seams' traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Guest paths of the contract.
pub const GUEST_INPUTS: &str = "/data/inputs";
pub const GUEST_OUTPUT: &str = "/data/outputs";
pub const GUEST_LOGS: &str = "/data/logs";

/// Limits of one job. Defaults: 30 s, 512 MiB, 1 GiB output, 16 MiB logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Wall-clock time from start to end of the guest.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Total linear memory of the guest, in bytes.
    pub memory: u64,
    /// Output directory quota, in bytes (see [`crate::sandbox::quota::ENTRY_COST`]).
    pub output_quota: u64,
    /// Logs quota (stdout + stderr + files in the logs dir), in bytes.
    pub log_quota: u64,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            memory: 512 << 20,
            output_quota: 1 << 30,
            log_quota: 16 << 20,
        }
    }
}

impl Limits {
    /// The largest limits a provider may allow: 24 h, 4 GiB (the most a
    /// 32-bit memory can address), 1 TiB output, 1 GiB logs.
    pub fn ceiling() -> Limits {
        Limits {
            timeout: Duration::from_secs(24 * 3600),
            memory: 4 << 30,
            output_quota: 1 << 40,
            log_quota: 1 << 30,
        }
    }

    /// Checks that every limit is within `max`.
    ///
    /// # Errors
    /// [`Error::LimitAboveMaximum`] naming the first limit above its maximum.
    pub fn check_within(&self, max: &Limits) -> Result<(), Error> {
        let above = |what, requested: String, maximum: String| Error::LimitAboveMaximum {
            what,
            requested,
            maximum,
        };
        if self.timeout > max.timeout {
            return Err(above(
                "timeout",
                format_duration(self.timeout),
                format_duration(max.timeout),
            ));
        }
        for (what, v, m) in [
            ("memory", self.memory, max.memory),
            ("output quota", self.output_quota, max.output_quota),
            ("log quota", self.log_quota, max.log_quota),
        ] {
            if v > m {
                return Err(above(what, format_size(v), format_size(m)));
            }
        }
        Ok(())
    }
}

/// One job: which directories, which arguments, which limits.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// argv\[0\] of the guest: the algorithm's name.
    pub name: String,
    /// Host directories preopened read-only at `/data/inputs/1`, `/data/inputs/2`, ...
    pub inputs: Vec<PathBuf>,
    /// Host directory preopened read-write at `/data/outputs`; must be empty.
    pub output: PathBuf,
    /// Host directory preopened read-write at `/data/logs`; must be empty.
    /// Receives `stdout.log` and `stderr.log`.
    pub logs: PathBuf,
    /// Extra arguments after the contract's.
    pub args: Vec<String>,
    /// Environment variables the stage declares (none by default).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Run in deterministic mode (default: no).
    pub deterministic: Option<Determinism>,
}

/// Deterministic mode: what a guest can observe is a function of its module,
/// arguments, inputs and this seed, so two providers holding the same data
/// produce the same bytes (and `insitu verify --reproduce` can check them).
///
/// Always (every job): NaNs are canonicalised and relaxed SIMD gives its
/// deterministic results (the engine's `cranelift_nan_canonicalization` and
/// `relaxed_simd_deterministic`); no threads (shared memories and
/// wasi-threads are not enabled). In deterministic mode also:
/// - clocks: the wall clock starts at the Unix epoch and, like the monotonic
///   clock, advances 1 µs each time either is read;
/// - random: `random_get` and `wasi:random` are ChaCha20 streams seeded by
///   [`Determinism::seed`] (the insecure ones by its SHA-256);
/// - listings: `fd_readdir` in name order (`.` and `..` first) with inode
///   numbers derived from names; file metadata without device, inode or times
///   (all 0) and a link count of 1;
/// - components (Python, JavaScript, wasip2): the same through
///   `wasi:filesystem` — `read-directory` in name order, `stat`/`stat-at`
///   without times and with a link count of 1, `metadata-hash` 0 (the
///   sandbox's `determinism` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Determinism {
    /// Seeds the guest's random streams.
    pub seed: [u8; 32],
}

impl Determinism {
    /// The mode for stage `stage` of execution `execution`: seed =
    /// SHA-256 of `insitu-determinism-v1`, NUL, the execution id, NUL and
    /// the stage index in decimal.
    pub fn for_stage(execution: &str, stage: u32) -> Determinism {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"insitu-determinism-v1\0");
        h.update(execution.as_bytes());
        h.update(b"\0");
        h.update(stage.to_string().as_bytes());
        Determinism {
            seed: h.finalize().into(),
        }
    }
}

impl JobSpec {
    /// A job with no inputs, no extra arguments and default limits.
    pub fn new(name: impl Into<String>, output: PathBuf, logs: PathBuf) -> JobSpec {
        JobSpec {
            name: name.into(),
            inputs: Vec::new(),
            output,
            logs,
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            deterministic: None,
        }
    }

    /// Adds an input directory.
    pub fn input(mut self, dir: PathBuf) -> JobSpec {
        self.inputs.push(dir);
        self
    }

    /// The guest's argv: name, `--inputN=…`, `--output=…`, `--logs=…`, extras.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.inputs.len() + self.args.len() + 3);
        argv.push(self.name.clone());
        for i in 1..=self.inputs.len() {
            argv.push(format!("--input{i}={GUEST_INPUTS}/{i}"));
        }
        argv.push(format!("--output={GUEST_OUTPUT}"));
        argv.push(format!("--logs={GUEST_LOGS}"));
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// Asks a running job to stop. Cloning shares the request.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    notify: tokio::sync::Notify,
}

impl StopHandle {
    /// Requests the stop; the job ends `stopped` within one [`crate::sandbox::TICK`].
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once [`StopHandle::stop`] has been called.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Register before checking the flag so a stop in between is not lost.
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}
