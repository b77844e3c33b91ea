//! The wasmtime sandbox: one shared engine, a compiled-module cache, and a
//! fresh store per job that enforces the guest contract (docs/ARCHITECTURE.md, "Guest contract") and
//! the limits, and classifies how the job ended (docs/ARCHITECTURE.md, "Statuses and outcomes").
//!
//! # Mechanisms
//! - **Wall time**: epoch interruption (a ticker thread advances the engine's
//!   epoch every [`TICK`]; each store's callback traps once the deadline
//!   passed) for guests computing, and an async deadline that drops the call
//!   for guests blocked in a host call (a long `poll_oneoff` sleep).
//! - **Memory and tables**: a [`wasmtime::ResourceLimiter`] refusing growth past
//!   the limit; a guest that then fails ends `memory_exceeded`.
//! - **Output and log quotas**: see [`quota`]; core modules are charged before
//!   each write through [`guard`]; stdout/stderr of all guests through
//!   [`quota::LogStream`]; components' files by a rescan on every tick (backed
//!   off to keep scanning under a tenth of the guest's time). Sparse growth of
//!   core modules' files is caught by a rescan every [`SCAN_INTERVAL`].
//! - **Isolation**: only the preopens of the job; inputs read-only; no
//!   environment unless declared; no network: core modules importing
//!   `sock_*` are refused at load by [`inspect`]; components may import
//!   `wasi:sockets` (every standard command does) but creating a TCP or UDP
//!   socket and every name lookup fail with `access-denied` before the host
//!   opens a socket, and no address passes wasmtime-wasi's default address
//!   check.

mod cache;
mod determinism;
mod guard;
pub mod inspect;
pub mod quota;

pub use crate::job::{
    BoxFuture, Determinism, GUEST_INPUTS, GUEST_LOGS, GUEST_OUTPUT, JobSpec, Limits, StopHandle,
};
pub use cache::CacheHit;
pub use inspect::ModuleKind;

use crate::Error;
use crate::outcome::{Outcome, RunReport};
use crate::units::{format_duration, format_size};
use cache::ModuleCache;
use guard::Guard;
use quota::{Budget, LogStream, SharedBudget, lock, scan};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How often the engine's epoch advances: the timeout's granularity.
pub const TICK: Duration = Duration::from_millis(5);
/// How often core modules' writable directories are rescanned for growth that
/// no charge saw (sparse files).
pub const SCAN_INTERVAL: Duration = Duration::from_millis(50);
/// Largest total size of the guest's arguments and environment.
pub const MAX_ARGS_BYTES: usize = 1 << 20;
/// Largest number of table elements per store.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// How the engine interrupts guests that compute past their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interruption {
    /// Epoch interruption (default): a load and compare at loop headers and
    /// function entries; a ticker thread advances the epoch.
    #[default]
    Epoch,
    /// Fuel metering with periodic async yields; slower, kept for comparison.
    Fuel,
}

/// Configuration of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The provider's maxima; jobs asking for more are refused.
    pub max: Limits,
    /// Jobs that may run at the same time; sizes the pooling allocator.
    /// `0` uses the on-demand allocator (best for one job per process).
    pub concurrency: u32,
    /// Directory for compiled artifacts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    pub interruption: Interruption,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max: Limits::ceiling(),
            concurrency: 16,
            cache_dir: None,
            interruption: Interruption::Epoch,
        }
    }
}

/// A clock for deterministic mode: starts at 0 and advances 1 µs per read.
#[derive(Clone, Default)]
struct SteppedClock(Arc<AtomicU64>);

impl SteppedClock {
    fn read(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000
    }
}

impl wasmtime_wasi::HostWallClock for SteppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.read())
    }
}

impl wasmtime_wasi::HostMonotonicClock for SteppedClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.read()
    }
}

/// A module compiled, checked and linked, ready to instantiate.
pub struct Prepared {
    /// `sha256:<hex>` of the module's bytes.
    pub digest: String,
    pub kind: ModuleKind,
    /// Where the compiled code came from when this value was prepared.
    pub source: CacheHit,
    pre: Pre,
}

enum Pre {
    Core(InstancePre<JobState>),
    Component(CommandPre<JobState>),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

/// A copy of `prepared` marked as a memory hit.
fn memory_hit(prepared: &Prepared) -> Arc<Prepared> {
    Arc::new(Prepared {
        digest: prepared.digest.clone(),
        kind: prepared.kind,
        source: CacheHit::Memory,
        pre: match &prepared.pre {
            Pre::Core(p) => Pre::Core(p.clone()),
            Pre::Component(p) => Pre::Component(p.clone()),
        },
    })
}

/// The shared engine, linkers and module cache. Create one per process.
pub struct Sandbox {
    engine: Engine,
    core_linker: Linker<JobState>,
    component_linker: wasmtime::component::Linker<JobState>,
    cache: ModuleCache<Prepared>,
    config: SandboxConfig,
    ticker_stop: Arc<AtomicBool>,
    /// Modules prepared, by where they came from: memory, disk, compiled.
    prepared: [AtomicU64; 3],
}

/// How modules were prepared since the sandbox started (see [`Sandbox::cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Already compiled and linked in this process.
    pub memory: u64,
    /// Loaded from the on-disk cache.
    pub disk: u64,
    /// Compiled.
    pub compiled: u64,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Builds the engine and linkers and starts the epoch ticker.
    ///
    /// # Errors
    /// [`Error::Engine`] if wasmtime refuses the configuration (e.g. the
    /// pooling allocator cannot reserve address space); [`Error::Io`] if the
    /// cache directory cannot be created.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        let engine_err = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
        let mut c = Config::new();
        c.wasm_component_model(true)
            .memory_init_cow(true)
            .max_wasm_stack(1 << 20)
            .async_stack_size(2 << 20)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            // Deterministic floating point for every job (see `Determinism`).
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .parallel_compilation(true);
        match config.interruption {
            Interruption::Epoch => c.epoch_interruption(true),
            Interruption::Fuel => c.consume_fuel(true),
        };
        if config.concurrency > 0 {
            let n = config.concurrency;
            let mut pool = PoolingAllocationConfig::new();
            // Room for `n` components at their per-component maxima below: a
            // componentize-py component instantiates more than 8 core
            // instances (the C runtime, CPython, adapters), and 16 jobs of
            // one at 8 per job ran out of slots. Slots are address space,
            // committed only when used.
            pool.total_core_instances(n * 32)
                .total_component_instances(n)
                .total_memories(n * 2)
                .total_tables(n * 16)
                // Guards nest one fiber per intercepted call.
                .total_stacks(n * 2)
                .max_memory_size(config.max.memory as usize)
                .table_elements(MAX_TABLE_ELEMENTS)
                .max_core_instances_per_component(32)
                .max_memories_per_component(2)
                .max_tables_per_component(16)
                // Reset only the pages a job touched (PAGEMAP_SCAN, Linux ≥ 6.7)
                // with memset, and batch the remaining madvise calls: fewer
                // TLB-shootdown IPIs between worker threads.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(16 << 20)
                .table_keep_resident(64 << 10)
                .decommit_batch_size(8);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&c).map_err(engine_err)?;
        let core_linker = guard::core_linker(&engine).map_err(engine_err)?;
        let mut component_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker).map_err(engine_err)?;
        determinism::shadow(&mut component_linker).map_err(engine_err)?;
        let cache = ModuleCache::new(config.cache_dir.as_deref(), &engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        if config.interruption == Interruption::Epoch {
            let (engine, stop) = (engine.clone(), ticker_stop.clone());
            std::thread::Builder::new()
                .name("insitu-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?;
        }
        Ok(Sandbox {
            engine,
            core_linker,
            component_linker,
            cache,
            config,
            ticker_stop,
            prepared: Default::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Checks, compiles (or loads from cache) and links `bytes`.
    ///
    /// # Errors
    /// [`Error::Rejected`] when the module is not acceptable (see
    /// [`inspect::inspect`]), fails to compile or link, or is not a command
    /// (no `_start`).
    pub fn prepare(&self, bytes: &[u8]) -> Result<Arc<Prepared>, Error> {
        let digest = crate::digest::sha256_digest(bytes);
        let (prepared, hit) = self
            .cache
            .get_or_prepare(&digest, || self.prepare_uncached(bytes, &digest))?;
        let source = if hit {
            CacheHit::Memory
        } else {
            prepared.source
        };
        self.prepared[source as usize].fetch_add(1, Ordering::Relaxed);
        if hit {
            return Ok(memory_hit(&prepared));
        }
        Ok(prepared)
    }

    /// The module whose sha256 is `digest` if it is already prepared in
    /// memory (counted as a memory hit), without reading or hashing its bytes.
    pub fn cached(&self, digest: &str) -> Option<Arc<Prepared>> {
        let prepared = self.cache.get(digest)?;
        self.prepared[CacheHit::Memory as usize].fetch_add(1, Ordering::Relaxed);
        Some(memory_hit(&prepared))
    }

    /// How many modules were prepared from memory, from disk, and by compiling.
    pub fn cache_stats(&self) -> CacheStats {
        let n = |s: CacheHit| self.prepared[s as usize].load(Ordering::Relaxed);
        CacheStats {
            memory: n(CacheHit::Memory),
            disk: n(CacheHit::Disk),
            compiled: n(CacheHit::Compiled),
        }
    }

    /// Forgets the modules prepared in memory; the disk cache stays.
    pub fn clear_memory_cache(&self) {
        self.cache.clear_memory();
    }

    fn prepare_uncached(&self, bytes: &[u8], digest: &str) -> Result<Prepared, Error> {
        let reject = |reason: String| Error::Rejected {
            digest: digest.to_string(),
            reason,
        };
        let kind = inspect::inspect(bytes, digest)?;
        let artifact = self.cache.artifact_path(digest).filter(|p| p.exists());
        let (pre, source) = match kind {
            ModuleKind::Core => {
                let (module, source) = match artifact.and_then(|p| self.load_core(&p)) {
                    Some(m) => (m, CacheHit::Disk),
                    None => {
                        let m = Module::new(&self.engine, bytes)
                            .map_err(|e| reject(format!("it does not compile: {e:#}")))?;
                        if let Ok(art) = m.serialize() {
                            self.cache.store(digest, &art);
                        }
                        (m, CacheHit::Compiled)
                    }
                };
                // The copy-on-write memory image (a memfd holding the
                // initial memory) now, not at the first instantiation.
                module
                    .initialize_copy_on_write_image()
                    .map_err(|e| reject(format!("its memory image cannot be built: {e:#}")))?;
                if module.get_export("_start").is_none() {
                    return Err(reject(
                        "it has no `_start` export; build a command (a binary with `fn main`), not a library"
                            .into(),
                    ));
                }
                let pre = self
                    .core_linker
                    .instantiate_pre(&module)
                    .map_err(|e| reject(format!("it cannot be linked: {e:#}")))?;
                (Pre::Core(pre), source)
            }
            ModuleKind::Component => {
                let (component, source) = match artifact.and_then(|p| self.load_component(&p)) {
                    Some(c) => (c, CacheHit::Disk),
                    None => {
                        let c = wasmtime::component::Component::new(&self.engine, bytes)
                            .map_err(|e| reject(format!("it does not compile: {e:#}")))?;
                        if let Ok(art) = c.serialize() {
                            self.cache.store(digest, &art);
                        }
                        (c, CacheHit::Compiled)
                    }
                };
                component
                    .initialize_copy_on_write_image()
                    .map_err(|e| reject(format!("its memory images cannot be built: {e:#}")))?;
                let pre = self
                    .component_linker
                    .instantiate_pre(&component)
                    .map_err(|e| reject(format!("it cannot be linked: {e:#}")))?;
                let pre = CommandPre::new(pre).map_err(|e| {
                    reject(format!(
                        "it is not a wasi:cli/command component (no `run` export): {e:#}"
                    ))
                })?;
                (Pre::Component(pre), source)
            }
        };
        Ok(Prepared {
            digest: digest.to_string(),
            kind,
            source,
            pre,
        })
    }

    /// Reads an artifact into memory (never mmaps it: a file truncated by
    /// someone else while mapped would crash the process with SIGBUS).
    fn read_artifact(&self, path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path)
            .map_err(
                |e| tracing::warn!(path = %path.display(), error = %e, "cannot read cached module"),
            )
            .ok()
    }

    fn load_core(&self, path: &Path) -> Option<Module> {
        let bytes = self.read_artifact(path)?;
        // SAFETY: `path` is in this sandbox's cache directory, under a name
        // derived from the engine's compatibility hash, and was written there
        // atomically by `ModuleCache::store` from `Module::serialize` of this
        // engine configuration. Bytes from users never take this path.
        let m = unsafe { Module::deserialize(&self.engine, &bytes) };
        m.map_err(|e| tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached module"))
            .ok()
    }

    fn load_component(&self, path: &Path) -> Option<wasmtime::component::Component> {
        let bytes = self.read_artifact(path)?;
        // SAFETY: as in `load_core`: only artifacts this engine wrote.
        let c = unsafe { wasmtime::component::Component::deserialize(&self.engine, &bytes) };
        c.map_err(|e| tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component"))
            .ok()
    }

    /// Runs `module` for `spec` until it ends, a limit is hit, or `stop` is
    /// requested. Guest failures are outcomes in the report, not errors.
    ///
    /// Blocking file I/O of the guest runs on the calling thread; in a
    /// multi-job server call this from a blocking-capable thread.
    ///
    /// # Errors
    /// [`Error::LimitAboveMaximum`] for limits above the provider's,
    /// [`Error::InvalidJob`] for missing or non-empty directories and
    /// oversized arguments, [`Error::Io`] if the logs files cannot be created.
    pub async fn run(
        &self,
        module: &Prepared,
        spec: &JobSpec,
        stop: &StopHandle,
    ) -> Result<RunReport, Error> {
        let started = Instant::now();
        spec.limits.check_within(&self.config.max)?;
        let argv = spec.argv();
        let args_bytes: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
            + spec
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        if args_bytes > MAX_ARGS_BYTES {
            return Err(Error::InvalidJob(format!(
                "the arguments and environment take {}, more than the {} a guest may receive; pass large parameters in an input file",
                format_size(args_bytes as u64),
                format_size(MAX_ARGS_BYTES as u64)
            )));
        }
        check_dirs(spec)?;
        // Both dirs were just found empty.
        let out_budget = Budget::empty(
            spec.output.clone(),
            spec.limits.output_quota,
            Outcome::OutputQuotaExceeded,
        );
        let log_budget = Budget::empty(
            spec.logs.clone(),
            spec.limits.log_quota,
            Outcome::LogQuotaExceeded,
        );
        let log_file = |name: &str| {
            let path = spec.logs.join(name);
            std::fs::File::create(&path).map_err(|e| Error::io("create", path, e))
        };
        // The two log files occupy their entries in the budget from the start.
        lock(&log_budget).charge(2 * quota::ENTRY_COST).ok();

        let mut b = WasiCtxBuilder::new();
        b.args(&argv)
            .envs(&spec.env)
            .stdout(LogStream::new(log_file("stdout.log")?, log_budget.clone()))
            .stderr(LogStream::new(log_file("stderr.log")?, log_budget.clone()))
            .allow_blocking_current_thread(true)
            // No network: socket creation refused before any host socket
            // exists. Name lookup is off and the address check refuses every
            // address by the builder's own defaults (kept, not rebuilt per job).
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(d) = &spec.deterministic {
            use chacha20::ChaCha20Rng;
            use chacha20::rand_core::SeedableRng;
            use sha2::{Digest, Sha256};
            let clock = SteppedClock::default();
            let insecure: [u8; 32] = Sha256::digest(d.seed).into();
            b.wall_clock(clock.clone())
                .monotonic_clock(clock)
                .secure_random(ChaCha20Rng::from_seed(d.seed))
                .insecure_random(ChaCha20Rng::from_seed(insecure))
                .insecure_random_seed(u128::from_le_bytes(
                    insecure[..16].try_into().expect("16 bytes"),
                ));
        }
        let preopen = |b: &mut WasiCtxBuilder, host: &Path, guest: &str, perms| {
            b.preopened_dir(host, guest, perms)
                .map(|_| ())
                .map_err(|e| {
                    Error::InvalidJob(format!("cannot open {} for the guest: {e}", host.display()))
                })
        };
        for (i, input) in spec.inputs.iter().enumerate() {
            let guest = format!("{GUEST_INPUTS}/{}", i + 1);
            preopen(&mut b, input, &guest, FsPerms::ReadOnly)?;
        }
        preopen(&mut b, &spec.output, GUEST_OUTPUT, FsPerms::ReadWrite)?;
        preopen(&mut b, &spec.logs, GUEST_LOGS, FsPerms::ReadWrite)?;

        // Preopens get descriptors 3, 4, ... in order (WASI preview 1).
        let first_writable = 3 + spec.inputs.len() as i32;
        let wasi = match module.kind {
            ModuleKind::Core => Wasi::P1(b.build_p1()),
            ModuleKind::Component => Wasi::P2 {
                ctx: b.build(),
                table: ResourceTable::new(),
            },
        };
        let deadline = started + spec.limits.timeout;
        let state = JobState {
            wasi,
            limiter: Limiter {
                memory_max: spec.limits.memory as usize,
                memory_used: 0,
                denied: None,
            },
            guard: Guard::new([
                (first_writable, out_budget.clone()),
                (first_writable + 1, log_budget.clone()),
            ]),
            budgets: [out_budget.clone(), log_budget.clone()],
            // Components write files without charges: rescan them on every scan tick.
            always_dirty: module.kind == ModuleKind::Component,
            deadline,
            timeout: spec.limits.timeout,
            stop: stop.clone(),
            kill: None,
            next_scan: started,
            deterministic: spec.deterministic.is_some(),
            listings: determinism::Listings::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        match self.config.interruption {
            Interruption::Epoch => {
                store.epoch_deadline_callback(|mut ctx| ctx.data_mut().tick());
                store.set_epoch_deadline(1);
            }
            Interruption::Fuel => {
                store
                    .set_fuel(u64::MAX)
                    .map_err(|e| Error::Engine(format!("{e:#}")))?;
                store
                    .fuel_async_yield_interval(Some(1_000_000))
                    .map_err(|e| Error::Engine(format!("{e:#}")))?;
            }
        }

        let ended = {
            let call = async {
                match &module.pre {
                    Pre::Core(pre) => {
                        let instance = pre.instantiate_async(&mut store).await?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call_async(&mut store, ()).await
                    }
                    Pre::Component(pre) => {
                        let command = pre.instantiate_async(&mut store).await?;
                        match command.wasi_cli_run().call_run(&mut store).await? {
                            Ok(()) => Ok(()),
                            Err(()) => Err(wasmtime::Error::new(I32Exit(1))),
                        }
                    }
                }
            };
            tokio::select! {
                biased;
                r = call => Ended::Returned(r),
                _ = tokio::time::sleep_until(deadline.into()) => Ended::Deadline,
                _ = stop.wait() => Ended::Stopped,
            }
        };

        let (mut outcome, exit_code, mut error) = store.data().classify(ended);
        let output = scan(&spec.output);
        let logs = scan(&spec.logs);
        // Growth no charge saw (sparse files) still fails the stage.
        if outcome == Outcome::Exited {
            for (usage, budget) in [(output, &out_budget), (logs, &log_budget)] {
                let b = lock(budget);
                if usage.charged() > b.quota() {
                    outcome = b.outcome();
                    error = Some(format!(
                        "{} exceeded after the guest ended: it holds {}",
                        if outcome == Outcome::LogQuotaExceeded {
                            "log quota"
                        } else {
                            "output quota"
                        },
                        format_size(usage.charged())
                    ));
                }
            }
        }
        let exit_code = if outcome == Outcome::Exited {
            exit_code
        } else {
            None
        };
        Ok(RunReport {
            status: outcome.status(exit_code),
            outcome,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
            module_digest: module.digest.clone(),
            output_bytes: output.file_bytes,
            log_bytes: logs.file_bytes,
            peak_memory_bytes: Some(store.data().limiter.memory_used as u64),
            fuel_consumed: match self.config.interruption {
                Interruption::Fuel => store.get_fuel().ok().map(|left| u64::MAX - left),
                Interruption::Epoch => None,
            },
            error,
        })
    }
}

/// Inputs must be directories; output and logs must be empty directories.
fn check_dirs(spec: &JobSpec) -> Result<(), Error> {
    for (i, input) in spec.inputs.iter().enumerate() {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidJob(format!(
                    "input {} ({}) is not a directory; put the dataset's files in a directory",
                    i + 1,
                    input.display()
                )));
            }
            Err(e) => return Err(Error::io("open input", input, e)),
        }
    }
    for (what, dir) in [("output", &spec.output), ("logs", &spec.logs)] {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| Error::io("open the directory", dir, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidJob(format!(
                "the {what} directory {} is not empty; give each run a new or empty directory so results never mix",
                dir.display()
            )));
        }
    }
    Ok(())
}

enum Ended {
    Returned(wasmtime::Result<()>),
    Deadline,
    Stopped,
}

enum Wasi {
    P1(WasiP1Ctx),
    P2 { ctx: WasiCtx, table: ResourceTable },
}

impl Wasi {
    fn p1(&mut self) -> &mut WasiP1Ctx {
        match self {
            Wasi::P1(ctx) => ctx,
            Wasi::P2 { .. } => {
                unreachable!("the core-module linker only runs with preview 1 stores")
            }
        }
    }
}

/// The data of one job's store.
pub struct JobState {
    wasi: Wasi,
    limiter: Limiter,
    guard: Guard,
    budgets: [SharedBudget; 2],
    always_dirty: bool,
    deadline: Instant,
    timeout: Duration,
    stop: StopHandle,
    /// Set when the host ends the guest for a reason of its own.
    kill: Option<(Outcome, String)>,
    /// When the writable directories are scanned next.
    next_scan: Instant,
    /// Listings sorted and file metadata neutral ([`Determinism`]).
    deterministic: bool,
    /// Components in deterministic mode: sorted listings being read.
    listings: determinism::Listings,
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        match &mut self.wasi {
            Wasi::P2 { ctx, table } => WasiCtxView { ctx, table },
            Wasi::P1(_) => unreachable!("the component linker only runs with preview 2 stores"),
        }
    }
}

impl JobState {
    /// The epoch callback: stop, deadline and periodic quota scans.
    fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        if self.stop.is_stopped() {
            self.kill = Some((Outcome::Stopped, "stopped on request".into()));
            return Err(Trap::Interrupt.into());
        }
        if now >= self.deadline {
            self.kill = Some((
                Outcome::TimedOut,
                format!("time limit of {} reached", format_duration(self.timeout)),
            ));
            return Err(Trap::Interrupt.into());
        }
        if now >= self.next_scan {
            for budget in &self.budgets {
                let mut b = lock(budget);
                if self.always_dirty {
                    b.charge(0).ok();
                }
                if let Err(why) = b.check() {
                    self.kill = Some((b.outcome(), why));
                    return Err(Trap::Interrupt.into());
                }
            }
            // Components are scanned every tick unless scanning gets costly;
            // core modules' writes are charged, so they only need the sparse check.
            let cost = now.elapsed() * 10;
            let every = if self.always_dirty {
                TICK
            } else {
                SCAN_INTERVAL
            };
            self.next_scan = now + every.max(cost);
        }
        Ok(UpdateDeadline::Continue(1))
    }

    fn classify(&self, ended: Ended) -> (Outcome, Option<i32>, Option<String>) {
        let err = match ended {
            Ended::Returned(Ok(())) => return (Outcome::Exited, Some(0), None),
            Ended::Returned(Err(e)) => e,
            Ended::Deadline => {
                return (
                    Outcome::TimedOut,
                    None,
                    Some(format!(
                        "time limit of {} reached while the guest waited in a host call",
                        format_duration(self.timeout)
                    )),
                );
            }
            Ended::Stopped => return (Outcome::Stopped, None, Some("stopped on request".into())),
        };
        if let Some((outcome, why)) = &self.kill {
            return (*outcome, None, Some(why.clone()));
        }
        for budget in &self.budgets {
            let b = lock(budget);
            if let Some(why) = b.exceeded() {
                return (b.outcome(), None, Some(why.to_string()));
            }
        }
        let exit = err.downcast_ref::<I32Exit>().map(|e| e.0);
        if let Some(denied) = &self.limiter.denied
            && exit != Some(0)
        {
            return (Outcome::MemoryExceeded, None, Some(denied.clone()));
        }
        match exit {
            Some(code) => (
                Outcome::Exited,
                Some(code),
                (code != 0).then(|| format!("the guest exited with code {code}")),
            ),
            None => (Outcome::Trapped, None, Some(describe(&err))),
        }
    }
}

/// One line: the root cause, and the innermost guest function when known.
fn describe(err: &wasmtime::Error) -> String {
    let what = match err.downcast_ref::<Trap>() {
        Some(trap) => format!("the guest trapped: {trap}"),
        None => format!("the guest failed: {}", err.root_cause()),
    };
    let frame = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| {
            bt.frames()
                .first()
                .and_then(|f| f.func_name().map(str::to_string))
        });
    match frame {
        Some(f) => format!("{what} (in {f})"),
        None => what,
    }
}

/// Counts linear memory across all of a store's memories; refuses growth past
/// the job's limit and remembers that it did.
struct Limiter {
    memory_max: usize,
    memory_used: usize,
    denied: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.memory_used.saturating_add(grow) > self.memory_max {
            self.denied = Some(format!(
                "memory limit of {} reached: the guest asked to grow a memory from {} to {}; ask for a larger --memory",
                format_size(self.memory_max as u64),
                format_size(current as u64),
                format_size(desired as u64),
            ));
            return Ok(false);
        }
        self.memory_used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.denied = Some(format!(
                "table limit of {MAX_TABLE_ELEMENTS} elements reached: the guest asked to grow a table from {current} to {desired}"
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        4
    }
}
