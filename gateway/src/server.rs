//! The HTTP gateway (DESIGN §4): Nevermined-compatible compute API over the
//! provider's store, pipeline and sandbox.
//!
//! Consumers trade a signed JWT grant for an access token, execute a workflow
//! under an agreement, watch its status, read logs, stop it, list their
//! executions and download results. Only an agreement's consumer sees or
//! touches its executions. Executions wait in a bounded queue ([`ServeConfig::queue`])
//! for a worker thread ([`ServeConfig::workers`]); a full queue answers 429 with
//! `Retry-After`. Errors become `{"error", "message"}` responses in one place,
//! [`ApiError`]'s `IntoResponse`. The API is described by the OpenAPI
//! document `gateway/openapi.json`, served at `/api/v1/openapi.json`.
//!
//! One process owns a data dir: [`build`] takes an exclusive lock on
//! `<data_dir>/insitu.lock` and fails executions a previous process left
//! unfinished. [`Gateway::shutdown`] stops taking executions, lets running
//! ones finish within a grace period, stops the rest, and fails queued ones
//! with a reason.

use crate::auth::Tokens;
use crate::routes;
use axum::Router;
use insitu_runtime::Status;
use insitu_runtime::image::{BlobStore, Puller};
use insitu_runtime::permissions::{LocalAgreements, Permissions};
use insitu_runtime::pipeline::{ImageResolver, Pipeline};
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::resolve::Resolved;
use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig, StopHandle};
use insitu_runtime::store::Store;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Holds `insitu.db`, `blobs/`, `modules/`, `executions/`, `provider.key`, `token.key`.
    pub data_dir: PathBuf,
    /// Worker threads running executions. Default: the number of cores.
    pub workers: usize,
    /// Executions that may wait for a worker before new ones get 429. Default 64.
    pub queue: usize,
    /// Local OCI layouts searched for images by checksum before registries.
    pub layouts: Vec<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// Limits of each stage.
    pub limits: Limits,
    /// The provider's maxima. Default: [`Limits::ceiling`].
    pub max: Limits,
    /// Signs receipts. Default: `<data_dir>/provider.key`, created on first use.
    pub provider_key: Option<ProviderKey>,
    /// Where agreements are checked. Default: on-chain when [`ServeConfig::chain`]
    /// is set, else [`LocalAgreements`] in the data dir's store.
    pub permissions: Option<Arc<dyn Permissions>>,
    /// Chain mode: agreements live in the Nevermined contracts.
    pub chain: Option<ChainConfig>,
    /// Native images (and, if asked, wasm stages) run as pods on this cluster.
    pub kubernetes: Option<insitu_kubernetes::KubeSettings>,
    /// Native images as Podman containers on this machine, when
    /// [`ServeConfig::kubernetes`] is not set.
    pub podman: Option<insitu_podman::Settings>,
    /// Timeouts and connection limits of the HTTP server.
    pub http: HttpLimits,
    /// Accept the exec form's legacy signature (of the agreement id alone,
    /// replayable) with a warning. Default false.
    pub legacy_exec_signatures: bool,
    /// The gateway's public base URL (no trailing `/`), in served DDOs'
    /// `serviceEndpoint`s. Default: the scheme-less `Host` a client used,
    /// as `http://HOST`.
    pub public_url: Option<String>,
    /// Serve the provider's dashboard at `/` (to loopback clients, or with
    /// an admin token from `insitu admin token`). Default true.
    pub dashboard: bool,
}

/// What slow or numerous clients may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request's headers (slow-loris). Default 10 s.
    pub header_timeout: Duration,
    /// Time from the headers to the handler's answer, reading the body
    /// included (408). Streams (followed logs) are not cut. Default 30 s.
    pub request_timeout: Duration,
    /// Connections served at once; more wait to be accepted. Default 1024.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Chain mode's settings.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// HTTP JSON-RPC endpoint.
    pub rpc: String,
    /// JSON file: contract name → address.
    pub contracts: PathBuf,
    /// How long a positive permission answer is reused. Default 10 s.
    pub cache_ttl: Duration,
    /// Chain id, confirmations, gas and fee policy of the provider's transactions.
    pub tx: insitu_chain::TxPolicy,
}

impl ChainConfig {
    /// Chain mode through `rpc` with the contracts in `contracts`, other
    /// settings at their defaults.
    pub fn new(rpc: impl Into<String>, contracts: impl Into<PathBuf>) -> ChainConfig {
        ChainConfig {
            rpc: rpc.into(),
            contracts: contracts.into(),
            cache_ttl: Duration::from_secs(10),
            tx: insitu_chain::TxPolicy::default(),
        }
    }
}

impl ServeConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            data_dir,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 64,
            layouts: Vec::new(),
            insecure_registries: Vec::new(),
            limits: Limits::default(),
            max: Limits::ceiling(),
            provider_key: None,
            permissions: None,
            chain: None,
            kubernetes: None,
            podman: None,
            http: HttpLimits::default(),
            legacy_exec_signatures: false,
            public_url: None,
            dashboard: true,
        }
    }
}

pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) resolved: Resolved,
    pub(crate) stop: StopHandle,
}

/// The gateway's shared state.
pub struct Gateway {
    pub store: Arc<Store>,
    /// Who may execute what (local agreements unless [`ServeConfig::permissions`] says otherwise).
    pub permissions: Arc<dyn Permissions>,
    pub pipeline: Arc<Pipeline>,
    pub(crate) tokens: Tokens,
    pub(crate) queue: mpsc::Sender<Job>,
    pub(crate) stops: Mutex<HashMap<String, StopHandle>>,
    /// Set by [`Gateway::shutdown`]: no new executions; queued ones fail.
    pub(crate) closing: AtomicBool,
    /// Executions queued or running.
    pub(crate) active: AtomicUsize,
    pub(crate) stage_seconds: Histogram,
    http: HttpLimits,
    /// [`ServeConfig::legacy_exec_signatures`].
    pub(crate) legacy_exec_signatures: bool,
    /// Federated rounds this provider takes part in.
    pub(crate) rounds: routes::federated::Rounds,
    /// Woken whenever an execution ends (its final status is stored).
    pub(crate) finished: tokio::sync::Notify,
    /// What served DDOs' services point at (`base` empty: the request's Host).
    pub(crate) services: crate::ddo::Services,
    /// [`ServeConfig::dashboard`].
    pub(crate) dashboard: bool,
    /// The provider's address, shown on the dashboard.
    pub(crate) provider: String,
    /// Queue depth sampled every [`QUEUE_SAMPLE`], the last hour's (unix
    /// ms, depth), for the dashboard.
    pub(crate) queue_samples: Mutex<std::collections::VecDeque<(u64, usize)>>,
    /// The finisher thread's runtime: waits for executions' final commits
    /// and settles them (see [`Gateway::run_job`]).
    finisher: RuntimeThread,
    /// Held for the gateway's life: one process per data dir.
    _lock: std::fs::File,
}

/// Upper bounds (seconds) of the stage-duration histogram's buckets.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// A Prometheus histogram of durations.
#[derive(Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative), the last one for +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {total}\n"));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {total}\n"));
    }
}

impl Gateway {
    /// Runs one dequeued execution's stages, then hands the wait for its
    /// final (group) commit and what follows to the finisher thread, so this
    /// worker takes the next execution meanwhile.
    async fn run_job(self: Arc<Self>, job: Job) {
        if self.closing.load(Ordering::SeqCst) {
            let _ = self.store.set_status(
                &job.id,
                Status::Failed,
                Some("the provider shut down before this execution started; execute it again"),
            );
        } else if job.stop.is_stopped() {
            // Stopped while queued; the stop handler already recorded it
            // (this only fills the gap if it lost a race with the queue).
            let _ = self.store.set_status(
                &job.id,
                Status::Stopped,
                Some("stopped on request before it started"),
            );
        } else {
            match self.pipeline.start(&job.id, &job.resolved, &job.stop).await {
                Ok(finish) => {
                    let g = self.clone();
                    self.finisher.handle.spawn(async move {
                        let status = finish.done().await;
                        g.finish(job, status).await;
                    });
                    return;
                }
                Err(e) => return self.finish(job, Err(e)).await,
            }
        }
        self.finish(job, Ok(Status::Failed)).await;
    }

    /// What follows an execution's end once its status is durable: settling
    /// (chain mode), stage metrics, waking waiters.
    async fn finish(&self, job: Job, status: Result<Status, insitu_runtime::Error>) {
        match status {
            Ok(Status::Succeeded) => {
                self.finished.notify_waiters();
                self.settle(&job).await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(execution = %job.id, error = %e, "execution failed on the host");
                let _ = self.store.set_status(
                    &job.id,
                    Status::Failed,
                    Some(&format!("provider error: {e}")),
                );
            }
        }
        if let Ok(e) = self.store.execution(&job.id) {
            for stage in e.stages.as_array().into_iter().flatten() {
                if let (Some(a), Some(b)) =
                    (stage["started_at"].as_u64(), stage["finished_at"].as_u64())
                {
                    self.stage_seconds.observe(b.saturating_sub(a) as f64 / 1e3);
                }
            }
            tracing::info!(execution = %job.id, status = e.status.as_str(), "execution finished");
        }
        self.finished.notify_waiters();
        self.stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.id);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Settles a succeeded execution with its agreement's source (chain mode:
    /// releases the payment, commits the receipt hash).
    async fn settle(&self, job: &Job) {
        if !self.permissions.settles() {
            return;
        }
        let Some(hash) = self
            .store
            .execution(&job.id)
            .ok()
            .and_then(|e| e.receipt)
            .and_then(|r| r["hash"].as_str().map(str::to_string))
        else {
            return;
        };
        self.settle_execution(&job.id, &job.resolved.agreement, &hash)
            .await;
    }

    /// Settles execution `id`, retrying with backoff while the source is
    /// unavailable. It is marked `{"pending": true}` first, so one cut short
    /// (crash, long outage) is retried when the gateway starts again; the
    /// result or the final error replaces the mark.
    async fn settle_execution(
        &self,
        id: &str,
        agreement: &insitu_runtime::store::Agreement,
        hash: &str,
    ) {
        let _ = self.store.set_settlement(id, &json!({"pending": true}));
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=6 {
            match self.permissions.settle(agreement, hash).await {
                Ok(done) => {
                    let _ = self.store.set_settlement(id, &done);
                    return;
                }
                Err(e @ insitu_runtime::Error::Unavailable(_)) => {
                    tracing::warn!(execution = %id, attempt, error = %e, "settling failed; retrying");
                    if attempt == 6 {
                        let _ = self
                            .store
                            .set_settlement(id, &json!({"pending": true, "error": e.to_string()}));
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(execution = %id, error = %e, "settling failed");
                    let _ = self
                        .store
                        .set_settlement(id, &json!({"error": e.to_string()}));
                    return;
                }
            }
        }
    }

    /// Retries the settlements a previous run left pending.
    async fn settle_pending(&self) {
        let Ok(pending) = self.store.pending_settlements() else {
            return;
        };
        for e in pending {
            let (Ok(agreement), Some(hash)) = (
                self.store.agreement(&e.agreement),
                e.receipt
                    .as_ref()
                    .and_then(|r| r["hash"].as_str().map(str::to_string)),
            ) else {
                continue;
            };
            tracing::info!(execution = %e.id, "retrying a pending settlement");
            self.settle_execution(&e.id, &agreement, &hash).await;
        }
    }

    /// Stops taking executions (execute answers 503), fails those still
    /// queued, lets running ones finish for up to `grace`, then stops them and
    /// waits for them to end. Returns how many had to be stopped.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.closing.store(true, Ordering::SeqCst);
        let idle = || self.active.load(Ordering::SeqCst) == 0;
        let deadline = Instant::now() + grace;
        while !idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if idle() {
            return 0;
        }
        let stops: Vec<StopHandle> = self
            .stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let queued = self.queue.max_capacity() - self.queue.capacity();
        let running = self.active.load(Ordering::SeqCst).saturating_sub(queued);
        tracing::warn!(
            executions = running,
            "grace period over; stopping running executions"
        );
        for s in &stops {
            s.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
/// The Kubernetes backend for `settings`; must run on the gateway's runtime
/// (the client's connection pool lives there).
fn kubernetes_backend(
    settings: &insitu_kubernetes::KubeSettings,
    data_dir: &std::path::Path,
) -> anyhow::Result<insitu_kubernetes::KubeBackend> {
    settings.check()?;
    // Reading the kubeconfig is async; do it on a thread of its own, as
    // this function may be called from within the runtime.
    let config = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| Ok(rt.block_on(settings.config())?))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("reading the kubeconfig panicked"))?
    })?;
    let client = insitu_kubernetes::client(config)?;
    Ok(insitu_kubernetes::KubeBackend::new(
        client,
        settings.clone(),
        data_dir.to_path_buf(),
    )?)
}

/// Builds the gateway: locks the data dir, opens the store (failing
/// executions a crash left), loads or creates the keys, starts the workers.
///
/// # Errors
/// When the data dir is locked by another process, or the database, keys or
/// sandbox cannot be set up.
/// The access-token signer of the provider whose data dir is `dir`
/// (`token.key`, created on first use); `insitu admin token` issues with it.
///
/// # Errors
/// When the key cannot be read or created.
pub fn tokens_of(dir: &Path) -> anyhow::Result<Tokens> {
    let token_key = ProviderKey::load_or_create(&dir.join("token.key"))?;
    Ok(Tokens::new(
        token_key
            .personal_sign(b"insitu access tokens")?
            .into_bytes(),
    ))
}

pub fn build(config: &ServeConfig) -> anyhow::Result<(Router, Arc<Gateway>)> {
    std::fs::create_dir_all(&config.data_dir)?;
    // Absolute: pods mount its directories by path.
    let dir = &std::fs::canonicalize(&config.data_dir)?;
    let lock_path = dir.join("insitu.lock");
    let lock = std::fs::File::create(&lock_path)?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "data dir {} is in use by another insitu server (lock {}); stop it or choose another --data-dir",
            dir.display(),
            lock_path.display()
        );
    }
    let store = Arc::new(Store::open(dir.join("insitu.db"))?);
    let failed = store.recover()?;
    if failed > 0 {
        tracing::warn!(
            executions = failed,
            "executions left unfinished by the previous run were marked failed"
        );
    }
    let swept = routes::federated::sweep_updates(&dir.join("executions"));
    if swept > 0 {
        tracing::warn!(
            updates = swept,
            "deleted federated updates the previous run left unmasked"
        );
    }
    let key = match &config.provider_key {
        Some(k) => k.clone(),
        None => ProviderKey::load_or_create(&dir.join("provider.key"))?,
    };
    let tokens = tokens_of(dir)?;
    config.limits.check_within(&config.max)?;
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        max: config.max,
        concurrency: config.workers as u32 * 2,
        cache_dir: Some(dir.join("modules")),
        ..SandboxConfig::default()
    })?);
    let mut backends = Pipeline::local(&sandbox);
    if let Some(k) = &config.kubernetes {
        let backend = Arc::new(kubernetes_backend(k, dir)?);
        let reconciler = backend.clone();
        tokio::spawn(async move {
            match reconciler.reconcile(&[]).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    objects = n,
                    "kubernetes: removed what the previous run left"
                ),
                Err(e) => tracing::error!(error = %e, "kubernetes: cannot reconcile"),
            }
        });
        tracing::info!(namespace = %k.namespace, wasm = k.wasm, "kubernetes backend: native images run as pods");
        if k.wasm {
            backends.insert(0, backend);
        } else {
            backends.push(backend);
        }
    } else if let Some(p) = &config.podman {
        let backend = Arc::new(insitu_podman::PodmanBackend::new(p.clone()));
        let version = backend.check()?;
        // Nothing runs yet: every labelled container is a crash's leftover.
        match backend.reconcile(&[])? {
            0 => {}
            n => tracing::warn!(containers = n, "podman: removed what the previous run left"),
        }
        tracing::info!(version, "podman backend: native images run as containers");
        backends.push(backend);
    }
    let pipeline = Arc::new(Pipeline {
        sandbox,
        store: store.clone(),
        puller: Puller::new(BlobStore::open(dir.join("blobs"))?),
        images: ImageResolver {
            layouts: config.layouts.clone(),
            insecure: config.insecure_registries.clone(),
            auth: None,
        },
        root: dir.join("executions"),
        limits: config.limits,
        key: key.clone(),
        caches: Default::default(),
        backends,
    });
    let (tx, rx) = mpsc::channel::<Job>(config.queue.max(1));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut watcher = None;
    let contracts = match &config.chain {
        Some(c) => Some(insitu_chain::Addresses::from_file(&c.contracts)?),
        None => None,
    };
    let services = crate::ddo::Services {
        base: config.public_url.clone().unwrap_or_default(),
        provider: key.address(),
        contracts: contracts.clone(),
    };
    let permissions: Arc<dyn Permissions> = match (&config.permissions, &config.chain) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => {
            let addresses = contracts.clone().expect("read above");
            let chain = Arc::new(insitu_chain::Chain::connect_with(
                &c.rpc, addresses, &key, c.tx,
            )?);
            tracing::info!(rpc = %c.rpc, provider = %key.address(), "chain mode: agreements on-chain");
            watcher = Some(chain.clone());
            Arc::new(insitu_chain::ChainAgreements::new(
                chain,
                store.clone(),
                c.cache_ttl,
            ))
        }
        (None, None) => Arc::new(LocalAgreements {
            store: store.clone(),
        }),
    };
    let gateway = Arc::new(Gateway {
        store,
        permissions,
        pipeline,
        tokens,
        queue: tx,
        stops: Mutex::new(HashMap::new()),
        closing: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        stage_seconds: Histogram::default(),
        http: config.http,
        legacy_exec_signatures: config.legacy_exec_signatures,
        rounds: Default::default(),
        finished: tokio::sync::Notify::new(),
        services,
        dashboard: config.dashboard,
        provider: key.address(),
        queue_samples: Mutex::default(),
        finisher: RuntimeThread::start("insitu-finish")?,
        _lock: lock,
    });
    {
        // The catalog's search index, built off the request path.
        let store = gateway.store.clone();
        std::thread::Builder::new()
            .name("insitu-index".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                match store.index_catalog() {
                    Ok(()) => tracing::debug!(
                        seconds = t.elapsed().as_secs_f64(),
                        "catalog indexed for search"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot index the catalog; searches will retry")
                    }
                }
            })?;
    }
    if let Some(chain) = watcher {
        let (store, g) = (gateway.store.clone(), Arc::downgrade(&gateway));
        on_thread("insitu-payments".into(), async move {
            let alive = move || g.strong_count() > 0;
            insitu_chain::watch_payments(chain, store, Duration::from_millis(500), alive).await;
        })?;
    }
    {
        let g = Arc::downgrade(&gateway);
        on_thread("insitu-sampler".into(), async move {
            let keep = (3600 / QUEUE_SAMPLE.as_secs()) as usize;
            while let Some(g) = g.upgrade() {
                let depth = g.queue.max_capacity() - g.queue.capacity();
                let at = now() * 1000;
                {
                    let mut s = g.queue_samples.lock().unwrap_or_else(|p| p.into_inner());
                    s.push_back((at, depth));
                    while s.len() > keep {
                        s.pop_front();
                    }
                }
                drop(g);
                tokio::time::sleep(QUEUE_SAMPLE).await;
            }
        })?;
    }
    if gateway.permissions.settles() {
        let g = Arc::downgrade(&gateway);
        on_thread("insitu-settle".into(), async move {
            if let Some(g) = g.upgrade() {
                g.settle_pending().await;
            }
        })?;
    }
    for n in 0..config.workers.max(1) {
        let (rx, g) = (rx.clone(), Arc::downgrade(&gateway));
        on_thread(format!("insitu-worker-{n}"), async move {
            loop {
                let Some(job) = rx.lock().await.recv().await else {
                    return;
                };
                let Some(g) = g.upgrade() else { return };
                g.run_job(job).await;
            }
        })?;
    }
    let router = routes::router(gateway.clone(), config.http);
    Ok((router, gateway))
}

/// Runs `task` on a new thread named `name`, on its own single-threaded
/// runtime (executions and chain work never share the HTTP runtime).
/// How often the dashboard's queue-depth chart is sampled.
pub(crate) const QUEUE_SAMPLE: Duration = Duration::from_secs(5);

/// A current-thread runtime on a thread of its own, ended when this is
/// dropped (with the gateway).
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RuntimeThread {
    fn start(name: &str) -> std::io::Result<RuntimeThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })?;
        Ok(RuntimeThread {
            handle,
            _stop: stop,
        })
    }
}

fn on_thread(
    name: String,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(task),
            Err(e) => tracing::error!(error = %e, "cannot start a thread's runtime"),
        }
    })?;
    Ok(())
}

/// Serves `router` on `listener` until `signal` completes, then shuts down
/// gracefully: the gateway stops taking executions and drains (see
/// [`Gateway::shutdown`]) while the listener stops accepting and open
/// requests (including followed logs, which end with their execution)
/// finish. Returns how many executions had to be stopped.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    gateway: Arc<Gateway>,
    grace: Duration,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<usize> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let limits = gateway.http;
    let g = gateway.clone();
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let draining = tokio::spawn(async move {
        signal.await;
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
        let _ = tx.send(());
        g.shutdown(grace).await
    });
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let permit = tokio::select! {
            _ = &mut rx => break,
            p = connections.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut rx => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: wait, do not spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses written in several pieces (a streamed file) must not wait
        // for the peer's delayed ACK (Nagle: ~40 ms per response on loopback).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Handlers that care who is on the other end (the dashboard serves
        // loopback clients without a token) read it as `ConnectInfo`.
        let service = hyper_util::service::TowerToHyperService::new(
            tower_http::add_extension::AddExtension::new(
                router.clone(),
                axum::extract::ConnectInfo(peer),
            ),
        );
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    // Open connections finish their requests (followed logs end with their
    // executions, which the drain stops within the grace).
    let stopped = draining.await.unwrap_or(0);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    tracing::info!(stopped, "gateway stopped");
    Ok(stopped)
}

/// A gateway serving on a random loopback port of this process (the demo,
/// benchmarks and tests); [`Local::stop`] shuts it down gracefully.
pub struct Local {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub gateway: Arc<Gateway>,
    halt: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<usize>>,
}

impl Local {
    /// Builds the gateway for `config` and serves it on `127.0.0.1:0`; a
    /// shutdown gives running executions `grace`.
    ///
    /// # Errors
    /// As [`build`], or when no loopback port can be bound.
    pub async fn start(config: &ServeConfig, grace: Duration) -> anyhow::Result<Local> {
        let (router, gateway) = build(config)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (halt, halted) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            router,
            gateway.clone(),
            grace,
            async move {
                let _ = halted.await;
            },
        ));
        Ok(Local {
            base,
            gateway,
            halt,
            served,
        })
    }

    /// Shuts down gracefully and waits; returns how many executions had to
    /// be stopped. The gateway is gone (and its data dir free) once every
    /// other `Arc` of it is dropped.
    ///
    /// # Errors
    /// When serving failed.
    pub async fn stop(self) -> anyhow::Result<usize> {
        let _ = self.halt.send(());
        Ok(self.served.await??)
    }
}

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");
