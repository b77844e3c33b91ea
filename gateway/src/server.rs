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

use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, AuthError, Tokens, verify_grant};
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Form, Json, Router};
use insitu_runtime::Status;
use insitu_runtime::image::{BlobStore, Puller};
use insitu_runtime::permissions::{LocalAgreements, Permissions};
use insitu_runtime::pipeline::{ImageResolver, Pipeline};
use insitu_runtime::receipt::{ProviderKey, recover_personal};
use insitu_runtime::resolve::{Resolved, resolve};
use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig, StopHandle};
use insitu_runtime::store::{Store, parse_address};
use insitu_runtime::workflow::Did;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
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
    /// Timeouts and connection limits of the HTTP server.
    pub http: HttpLimits,
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
            http: HttpLimits::default(),
        }
    }
}

struct Job {
    id: String,
    resolved: Resolved,
    stop: StopHandle,
}

/// The gateway's shared state.
pub struct Gateway {
    pub store: Arc<Store>,
    /// Who may execute what (local agreements unless [`ServeConfig::permissions`] says otherwise).
    pub permissions: Arc<dyn Permissions>,
    pub pipeline: Arc<Pipeline>,
    tokens: Tokens,
    queue: mpsc::Sender<Job>,
    stops: Mutex<HashMap<String, StopHandle>>,
    /// Set by [`Gateway::shutdown`]: no new executions; queued ones fail.
    closing: AtomicBool,
    /// Executions queued or running.
    active: AtomicUsize,
    stage_seconds: Histogram,
    http: HttpLimits,
    /// Held for the gateway's life: one process per data dir.
    _lock: std::fs::File,
}

/// Upper bounds (seconds) of the stage-duration histogram's buckets.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// A Prometheus histogram of durations.
#[derive(Default)]
struct Histogram {
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

    fn render(&self, name: &str, help: &str, out: &mut String) {
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
    /// Runs one dequeued execution to its end and records its stage durations.
    async fn run_job(&self, job: Job) {
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
            match self.pipeline.run(&job.id, &job.resolved, &job.stop).await {
                Ok(Status::Succeeded) => self.settle(&job).await,
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An API error: the one place errors become HTTP responses.
#[derive(Debug)]
pub enum ApiError {
    Auth(AuthError),
    Runtime(insitu_runtime::Error),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    /// A body the extractors refused (malformed, wrong type, too large), with its status.
    Body(StatusCode, String),
    Busy,
    /// The gateway is shutting down.
    Unavailable(String),
}

/// axum's `Path`, refusing with an [`ApiError`] (a JSON body, like every
/// other error) instead of axum's plain-text rejection.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(r) => Err(ApiError::Body(r.status(), r.body_text())),
        }
    }
}

/// axum's `Query`, refusing with an [`ApiError`].
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(ApiQuery(t)),
            Err(r) => Err(ApiError::Body(r.status(), r.body_text())),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Body(r.status(), r.body_text())
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        ApiError::Body(r.status(), r.body_text())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Auth(e)
    }
}

impl From<insitu_runtime::Error> for ApiError {
    fn from(e: insitu_runtime::Error) -> Self {
        ApiError::Runtime(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use insitu_runtime::Error as E;
        let (status, code, message) = match self {
            ApiError::Auth(e @ AuthError::TokenScope { .. }) => {
                (StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            ApiError::Auth(e) => (StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Body(status, m) => {
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                (status, code, m)
            }
            ApiError::Busy => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": "busy", "message": "the execution queue is full; retry after the Retry-After delay"})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            ApiError::Runtime(e) => match &e {
                E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", e.to_string()),
                E::Denied(_) => (StatusCode::FORBIDDEN, "forbidden", e.to_string()),
                E::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                ),
                E::Workflow { .. } | E::Invalid { .. } | E::Reference { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
                }
                E::Transition { .. } => (StatusCode::CONFLICT, "conflict", e.to_string()),
                E::DiskFull { .. } => {
                    (StatusCode::INSUFFICIENT_STORAGE, "disk_full", e.to_string())
                }
                _ => {
                    tracing::error!(error = %e, "internal error");
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                }
            },
        };
        (status, Json(json!({"error": code, "message": message}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

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
    let key = match &config.provider_key {
        Some(k) => k.clone(),
        None => ProviderKey::load_or_create(&dir.join("provider.key"))?,
    };
    let token_key = ProviderKey::load_or_create(&dir.join("token.key"))?;
    let tokens = Tokens::new(
        token_key
            .personal_sign(b"insitu access tokens")?
            .into_bytes(),
    );
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
    let permissions: Arc<dyn Permissions> = match (&config.permissions, &config.chain) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => {
            let addresses = insitu_chain::Addresses::from_file(&c.contracts)?;
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
        _lock: lock,
    });
    if let Some(chain) = watcher {
        let (store, g) = (gateway.store.clone(), Arc::downgrade(&gateway));
        on_thread("insitu-payments".into(), async move {
            let alive = move || g.strong_count() > 0;
            insitu_chain::watch_payments(chain, store, Duration::from_millis(500), alive).await;
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
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/gateway/services/exec", post(exec))
        .route("/api/v1/node/services/oauth/token", post(token))
        .route(
            "/api/v1/node/services/compute/execute/{agreement}",
            post(execute),
        )
        .route(
            "/api/v1/node/services/compute/status/{execution}",
            get(status),
        )
        .route("/api/v1/node/services/compute/logs/{execution}", get(logs))
        .route(
            "/api/v1/node/services/compute/stop/{execution}",
            delete(stop),
        )
        .route("/api/v1/node/services/compute/list", get(list))
        .route(
            "/api/v1/node/services/compute/results/{execution}",
            get(results),
        )
        .route(
            "/api/v1/node/services/compute/results/{execution}/{*file}",
            get(download),
        )
        .route("/api/v1/metadata/assets/ddo/{did}", get(ddo))
        .layer(DefaultBodyLimit::max(64 << 10))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.http.request_timeout,
        ))
        .with_state(gateway.clone());
    Ok((router, gateway))
}

/// Runs `task` on a new thread named `name`, on its own single-threaded
/// runtime (executions and chain work never share the HTTP runtime).
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
        let (stream, _) = tokio::select! {
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
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
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

fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "missing bearer token; get one from POST /api/v1/node/services/oauth/token".into(),
            )
        })
}

#[derive(Deserialize)]
struct TokenForm {
    client_assertion_type: String,
    client_assertion: String,
}

async fn token(
    State(g): State<Arc<Gateway>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> ApiResult<Json<Value>> {
    let Form(f) = form?;
    if f.client_assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return Err(ApiError::BadRequest(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                .into(),
        ));
    }
    let grant = verify_grant(&f.client_assertion, now())?;
    Ok(Json(json!({"access_token": g.tokens.issue(&grant, now())})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteBody {
    workflow_did: String,
    consumer: String,
}

async fn execute(
    State(g): State<Arc<Gateway>>,
    ApiPath(agreement_id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<ExecuteBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let grant = g.tokens.check(bearer(&headers)?, AUD_EXECUTE, now())?;
    let Json(body) = body?;
    let agreement_id = agreement_id.to_ascii_lowercase();
    if grant.agreement != agreement_id {
        return Err(ApiError::Forbidden(format!(
            "the token is for agreement {}, not {agreement_id}",
            grant.agreement
        )));
    }
    if grant.did.as_deref() != Some(body.workflow_did.as_str())
        || !body.consumer.eq_ignore_ascii_case(&grant.consumer)
    {
        return Err(ApiError::Forbidden(
            "workflowDid and consumer must be those the grant was signed for".into(),
        ));
    }
    let id = start_execution(&g, &grant.consumer, &agreement_id, &body.workflow_did).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"workflowId": id}))))
}

/// Queues an execution of `workflow_did` under `agreement_id` for `consumer`
/// (lowercase address) once the agreement and the datasets' compute services
/// allow it; returns its id.
async fn start_execution(
    g: &Gateway,
    consumer: &str,
    agreement_id: &str,
    workflow_did: &str,
) -> ApiResult<String> {
    if g.closing.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable(
            "the provider is shutting down and takes no new executions; retry when it is back"
                .into(),
        ));
    }
    let agreement = g
        .permissions
        .check_execute(agreement_id, consumer, workflow_did, now())
        .await?;
    let resolved = resolve(&g.store, &agreement, now())?;
    let permit = g.queue.try_reserve().map_err(|_| ApiError::Busy)?;
    let id = g.store.create_execution(&agreement)?;
    let stop = StopHandle::default();
    g.stops
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), stop.clone());
    g.active.fetch_add(1, Ordering::SeqCst);
    permit.send(Job {
        id: id.clone(),
        resolved,
        stop,
    });
    tracing::info!(execution = %id, agreement = %agreement_id, consumer, "execution queued");
    Ok(id)
}

/// The seed spec's form: `serviceAgreementId`, `consumerAddress`,
/// `signature` (personal_sign of the agreement id), `workflowDID`.
#[derive(Deserialize)]
struct ExecForm {
    #[serde(rename = "serviceAgreementId")]
    agreement: String,
    #[serde(rename = "consumerAddress")]
    consumer: String,
    signature: String,
    #[serde(rename = "workflowDID")]
    workflow: String,
}

async fn exec(
    State(g): State<Arc<Gateway>>,
    form: Result<Form<ExecForm>, FormRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Form(f) = form?;
    let consumer = parse_address(&f.consumer).map_err(|_| {
        ApiError::BadRequest(format!(
            "consumerAddress `{}` is not an address (0x + 40 hex)",
            f.consumer
        ))
    })?;
    let signer = recover_personal(f.agreement.as_bytes(), &f.signature).map_err(|_| {
        ApiError::Unauthorized(
            "signature must be the 65-byte hex personal_sign of serviceAgreementId".into(),
        )
    })?;
    let signer = format!("{signer:#x}");
    if signer != consumer {
        return Err(ApiError::Unauthorized(format!(
            "the signature is from {signer}, not from consumerAddress {consumer}; sign serviceAgreementId with the consumer's key"
        )));
    }
    let id = start_execution(
        &g,
        &consumer,
        &f.agreement.to_ascii_lowercase(),
        &f.workflow,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"workflowId": id}))))
}

/// The execution `id`, if the token is a compute token for it and its holder owns it.
fn owned(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
) -> ApiResult<insitu_runtime::store::Execution> {
    let grant = g.tokens.check(bearer(headers)?, AUD_COMPUTE, now())?;
    if grant.execution.as_deref() != Some(id) {
        return Err(ApiError::Forbidden(format!(
            "the token is not for execution {id}"
        )));
    }
    let e = g.store.execution(id)?;
    if e.consumer != grant.consumer {
        return Err(ApiError::Forbidden(format!(
            "execution {id} belongs to another consumer"
        )));
    }
    Ok(e)
}

async fn status(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let e = owned(&g, &headers, &id)?;
    let pods: Vec<Value> = e
        .stages
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    json!({"podName": format!("{id}-stage-{}", s["index"]), "status": s["status"],
                                "startedAt": s["started_at"], "finishedAt": s["finished_at"]})
                })
                .collect()
        })
        .unwrap_or_default();
    let finished = e.status.is_terminal().then_some(e.updated_at);
    Ok(Json(json!({
        "workflowStatus": {"status": e.status, "startedAt": e.created_at, "finishedAt": finished, "did": e.result, "pods": pods},
        "execution": e,
    })))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

const LOG_FILES: [&str; 2] = ["stdout.log", "stderr.log"];

async fn logs(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    owned(&g, &headers, &id)?;
    if q.follow {
        return Ok(follow_logs(g, id).into_response());
    }
    let mut out = Vec::new();
    for n in 0..stage_dirs(&g, &id) {
        let dir = g.pipeline.logs(&id, n);
        let mut content = String::new();
        for f in LOG_FILES {
            content.push_str(&std::fs::read_to_string(dir.join(f)).unwrap_or_default());
        }
        out.push(json!({"stage": n, "podName": format!("{id}-stage-{n}"), "content": content}));
    }
    Ok(Json(json!({"logs": out})).into_response())
}

/// How many stages of execution `id` have started (have a working directory).
fn stage_dirs(g: &Gateway, id: &str) -> u32 {
    (0..)
        .take_while(|n| g.pipeline.logs(id, *n).is_dir())
        .count() as u32
}

/// Where a follower is in each stage's log files.
struct Tail {
    g: Arc<Gateway>,
    id: String,
    /// (stage, file index) → bytes sent, plus bytes held back (an incomplete UTF-8 sequence).
    offsets: HashMap<(u32, usize), (u64, Vec<u8>)>,
    pending: std::collections::VecDeque<Event>,
    done: bool,
}

impl Tail {
    /// Reads what was appended since the last poll into `pending`.
    fn poll(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        for n in 0..stage_dirs(&self.g, &self.id) {
            let dir = self.g.pipeline.logs(&self.id, n);
            for (i, name) in LOG_FILES.iter().enumerate() {
                let (offset, held) = self.offsets.entry((n, i)).or_default();
                let Ok(mut f) = std::fs::File::open(dir.join(name)) else {
                    continue;
                };
                let mut buf = std::mem::take(held);
                if f.seek(SeekFrom::Start(*offset)).is_err() {
                    continue;
                }
                let read = f.take(1 << 20).read_to_end(&mut buf).unwrap_or(0);
                *offset += read as u64;
                let valid = match std::str::from_utf8(&buf) {
                    Ok(_) => buf.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => buf.len(),
                };
                *held = buf.split_off(valid);
                if buf.is_empty() {
                    continue;
                }
                let content = String::from_utf8_lossy(&buf);
                self.pending.push_back(
                    Event::default().event("log").data(
                        json!({"stage": n, "podName": format!("{}-stage-{n}", self.id),
                               "stream": name.trim_end_matches(".log"), "content": content})
                        .to_string(),
                    ),
                );
            }
        }
    }
}

/// Server-sent events: `log` events (`{"stage", "podName", "stream",
/// "content"}`) as the guest writes, then one `end` event (`{"status",
/// "reason"}`) once the execution is over and everything was sent.
fn follow_logs(
    g: Arc<Gateway>,
    id: String,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let tail = Tail {
        g,
        id,
        offsets: HashMap::new(),
        pending: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(tail, |mut t| async move {
        loop {
            if let Some(e) = t.pending.pop_front() {
                return Some((Ok(e), t));
            }
            if t.done {
                return None;
            }
            // The status is read before the files, so a terminal status means
            // everything the guest wrote is on disk when they are read.
            let execution = t.g.store.execution(&t.id).ok();
            t.poll();
            match execution {
                Some(e) if e.status.is_terminal() => {
                    t.pending.push_back(
                        Event::default()
                            .event("end")
                            .data(json!({"status": e.status, "reason": e.reason}).to_string()),
                    );
                    t.done = true;
                }
                None => t.done = true,
                Some(_) if t.pending.is_empty() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(_) => {}
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn stop(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let e = owned(&g, &headers, &id)?;
    if e.status.is_terminal() {
        return Ok(Json(
            json!({"status": e.status, "text": format!("execution {id} already ended {}", e.status.as_str())}),
        ));
    }
    if let Some(s) = g.stops.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        s.stop();
    }
    // Still queued: stopped now, not when a worker gets to it.
    if e.status == Status::Pending
        && g.store
            .set_status(
                &id,
                Status::Stopped,
                Some("stopped on request before it started"),
            )
            .is_ok()
    {
        return Ok(Json(
            json!({"status": "stopped", "text": format!("execution {id} stopped before it started")}),
        ));
    }
    Ok(Json(
        json!({"status": "stopping", "text": format!("execution {id} is being stopped")}),
    ))
}

async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let t = bearer(&headers)?;
    let grant = g
        .tokens
        .check(t, AUD_COMPUTE, now())
        .or_else(|_| g.tokens.check(t, AUD_EXECUTE, now()))?;
    let execs = g.store.executions_of(&grant.consumer)?;
    Ok(Json(
        json!({"executions": execs.iter().map(|e| json!({"workflowId": e.id, "status": e.status, "did": e.result})).collect::<Vec<_>>()}),
    ))
}

/// The result DDO's published files of an owned, succeeded execution.
fn result_files(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
) -> ApiResult<(insitu_runtime::store::Execution, Vec<Value>)> {
    let e = owned(g, headers, id)?;
    let did = e.result.clone().ok_or_else(|| {
        ApiError::NotFound(format!(
            "execution {id} has no results (it is {})",
            e.status.as_str()
        ))
    })?;
    let did = Did::parse(&did).map_err(ApiError::NotFound)?;
    let (_, ddo) = g.store.ddo(&did)?;
    let files = ddo
        .pointer("/service/0/attributes/main/files")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok((e, files))
}

async fn results(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (e, files) = result_files(&g, &headers, &id)?;
    Ok(Json(
        json!({"did": e.result, "files": files, "receipt": e.receipt}),
    ))
}

async fn download(
    State(g): State<Arc<Gateway>>,
    ApiPath((id, file)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (e, files) = result_files(&g, &headers, &id)?;
    // Only paths published in the result asset are served: nothing else, and
    // no `..`, can be named.
    if !files
        .iter()
        .any(|f| f["path"].as_str() == Some(file.as_str()))
    {
        return Err(ApiError::NotFound(format!(
            "execution {id} has no result file `{file}`"
        )));
    }
    let last = e.stages.as_array().map_or(0, |a| a.len().saturating_sub(1)) as u32;
    let path = g.pipeline.outputs(&id, last).join(&file);
    // Streamed, so a large result costs a buffer, not its size in memory;
    // O_NOFOLLOW: what was published as a regular file is what is served.
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .await;
    let read_err = |err| insitu_runtime::Error::Io {
        action: "read result",
        path: path.clone(),
        source: err,
    };
    let file = opened.map_err(read_err)?;
    let len = file.metadata().await.map_err(read_err)?.len();
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        body,
    )
        .into_response())
}

/// Prometheus text format: executions by status, queue depth, active
/// executions, blob fetches, module cache hits, stage durations.
async fn metrics(State(g): State<Arc<Gateway>>) -> ApiResult<Response> {
    let mut out = String::from(
        "# HELP insitu_executions Executions by status.\n# TYPE insitu_executions gauge\n",
    );
    for (status, n) in g.store.count_by_status()? {
        out.push_str(&format!(
            "insitu_executions{{status=\"{}\"}} {n}\n",
            status.as_str()
        ));
    }
    let depth = g.queue.max_capacity() - g.queue.capacity();
    out.push_str(&format!(
        "# HELP insitu_queue_depth Executions waiting for a worker.\n# TYPE insitu_queue_depth gauge\ninsitu_queue_depth {depth}\n"
    ));
    out.push_str(&format!(
        "# HELP insitu_blob_fetches_total Blobs fetched from image sources (cache misses).\n# TYPE insitu_blob_fetches_total counter\ninsitu_blob_fetches_total {}\n",
        g.pipeline.puller.store.fetch_count()
    ));
    let c = g.pipeline.sandbox.cache_stats();
    out.push_str("# HELP insitu_modules_prepared_total Modules prepared for a run, by where the compiled code came from (memory and disk are cache hits).\n# TYPE insitu_modules_prepared_total counter\n");
    for (source, n) in [
        ("memory", c.memory),
        ("disk", c.disk),
        ("compiled", c.compiled),
    ] {
        out.push_str(&format!(
            "insitu_modules_prepared_total{{source=\"{source}\"}} {n}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP insitu_executions_active Executions queued or running in this process.\n# TYPE insitu_executions_active gauge\ninsitu_executions_active {}\n",
        g.active.load(Ordering::Relaxed)
    ));
    g.stage_seconds.render(
        "insitu_stage_duration_seconds",
        "Stage durations from configuring to the end of running.",
        &mut out,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn ddo(
    State(g): State<Arc<Gateway>>,
    ApiPath(did): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let did = Did::parse(&did).map_err(ApiError::NotFound)?;
    Ok(Json(g.store.ddo(&did)?.1))
}
