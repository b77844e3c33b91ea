//! The HTTP gateway (DESIGN §4): Nevermined-compatible compute API over the
//! provider's store, pipeline and sandbox.
//!
//! Consumers trade a signed JWT grant for an access token, execute a workflow
//! under an agreement, watch its status, read logs, stop it, list their
//! executions and download results. Only an agreement's consumer sees or
//! touches its executions. Executions wait in a bounded queue ([`ServeConfig::queue`])
//! for a worker thread ([`ServeConfig::workers`]); a full queue answers 429 with
//! `Retry-After`. Errors become `{"error", "message"}` responses in one place,
//! [`ApiError`]'s `IntoResponse`.

use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, AuthError, Tokens, verify_grant};
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Form, Json, Router};
use insitu_runtime::Status;
use insitu_runtime::image::{BlobStore, Puller};
use insitu_runtime::pipeline::{ImageResolver, Pipeline};
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::resolve::{Resolved, resolve};
use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig, StopHandle};
use insitu_runtime::store::Store;
use insitu_runtime::workflow::Did;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
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
    pub limits: Limits,
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
    pub pipeline: Arc<Pipeline>,
    tokens: Tokens,
    queue: mpsc::Sender<Job>,
    stops: Mutex<HashMap<String, StopHandle>>,
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
            ApiError::Body(status, m) => {
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid",
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
                E::Workflow { .. } | E::Invalid { .. } | E::Reference { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
                }
                E::Transition { .. } => (StatusCode::CONFLICT, "conflict", e.to_string()),
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

/// Builds the gateway: opens the store (failing executions a crash left),
/// loads or creates the keys, starts the workers.
///
/// # Errors
/// When the data dir, database, keys or sandbox cannot be set up.
pub fn build(config: &ServeConfig) -> anyhow::Result<(Router, Arc<Gateway>)> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)?;
    let store = Arc::new(Store::open(dir.join("insitu.db"))?);
    let key = ProviderKey::load_or_create(&dir.join("provider.key"))?;
    let token_key = ProviderKey::load_or_create(&dir.join("token.key"))?;
    let tokens = Tokens::new(
        token_key
            .personal_sign(b"insitu access tokens")?
            .into_bytes(),
    );
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        concurrency: config.workers as u32 * 2,
        cache_dir: Some(dir.join("modules")),
        ..SandboxConfig::default()
    })?);
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
        key,
    });
    let (tx, rx) = mpsc::channel::<Job>(config.queue.max(1));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let gateway = Arc::new(Gateway {
        store,
        pipeline,
        tokens,
        queue: tx,
        stops: Mutex::new(HashMap::new()),
    });
    for n in 0..config.workers.max(1) {
        let (rx, g) = (rx.clone(), Arc::downgrade(&gateway));
        std::thread::Builder::new().name(format!("insitu-worker-{n}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("worker runtime");
            rt.block_on(async move {
                loop {
                    let Some(job) = rx.lock().await.recv().await else { return };
                    let Some(g) = g.upgrade() else { return };
                    if let Err(e) = g.pipeline.run(&job.id, &job.resolved, &job.stop).await {
                        tracing::error!(execution = %job.id, error = %e, "execution failed on the host");
                        let _ = g.store.set_status(&job.id, Status::Failed, Some(&format!("provider error: {e}")));
                    }
                    g.stops.lock().unwrap_or_else(|p| p.into_inner()).remove(&job.id);
                }
            });
        })?;
    }
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
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
        .with_state(gateway.clone());
    Ok((router, gateway))
}

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
    Path(agreement_id): Path<String>,
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
    let agreement = g.store.agreement(&agreement_id)?;
    if agreement.consumer != grant.consumer {
        return Err(ApiError::Forbidden(format!(
            "agreement {agreement_id} belongs to another consumer"
        )));
    }
    if agreement.workflow.as_str() != body.workflow_did {
        return Err(ApiError::Forbidden(format!(
            "agreement {agreement_id} is for workflow {}",
            agreement.workflow
        )));
    }
    let resolved = resolve(&g.store, &agreement, now())?;
    let permit = g.queue.try_reserve().map_err(|_| ApiError::Busy)?;
    let id = g.store.create_execution(&agreement)?;
    let stop = StopHandle::default();
    g.stops
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), stop.clone());
    permit.send(Job {
        id: id.clone(),
        resolved,
        stop,
    });
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
    Path(id): Path<String>,
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

async fn logs(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let e = owned(&g, &headers, &id)?;
    let stages = e.stages.as_array().map_or(0, |a| a.len() as u32);
    let mut out = Vec::new();
    for n in 0..stages {
        let dir = g.pipeline.logs(&id, n);
        let mut content = String::new();
        for f in ["stdout.log", "stderr.log"] {
            content.push_str(&std::fs::read_to_string(dir.join(f)).unwrap_or_default());
        }
        out.push(json!({"stage": n, "podName": format!("{id}-stage-{n}"), "content": content}));
    }
    Ok(Json(json!({"logs": out})))
}

async fn stop(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
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
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (e, files) = result_files(&g, &headers, &id)?;
    Ok(Json(
        json!({"did": e.result, "files": files, "receipt": e.receipt}),
    ))
}

async fn download(
    State(g): State<Arc<Gateway>>,
    Path((id, file)): Path<(String, String)>,
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
    let bytes = std::fs::read(&path).map_err(|err| insitu_runtime::Error::Io {
        action: "read result",
        path: path.clone(),
        source: err,
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Prometheus text format: executions by status, queue depth, blob fetches.
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
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn ddo(State(g): State<Arc<Gateway>>, Path(did): Path<String>) -> ApiResult<Json<Value>> {
    let did = Did::parse(&did).map_err(ApiError::NotFound)?;
    Ok(Json(g.store.ddo(&did)?.1))
}
