//! The compute API: execute (with an access token, or the seed spec's signed
//! form), status, logs (followed as server-sent events), stop, list, and the
//! results of an execution (owner only).

use super::bearer;
use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, EXEC_WINDOW, exec_message, valid_nonce};
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::server::{Gateway, Job, now};
use axum::Form;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use insitu_runtime::Status;
use insitu_runtime::receipt::recover_personal;
use insitu_runtime::resolve::resolve;
use insitu_runtime::sandbox::StopHandle;
use insitu_runtime::store::parse_address;
use insitu_runtime::workflow::Did;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecuteBody {
    workflow_did: String,
    consumer: String,
}

pub(crate) async fn execute(
    State(g): State<Arc<Gateway>>,
    ApiPath(agreement_id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<ExecuteBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let grant = g.tokens.check(bearer(&headers)?, AUD_EXECUTE, now())?;
    let Json(body) = body?;
    let agreement_id = crate::ids::agreement(&agreement_id);
    let workflow_did = crate::ids::did(&body.workflow_did);
    if grant.agreement != agreement_id {
        return Err(ApiError::Forbidden(format!(
            "the token is for agreement {}, not {agreement_id}",
            grant.agreement
        )));
    }
    if grant.did.as_deref() != Some(workflow_did.as_str())
        || !body.consumer.eq_ignore_ascii_case(&grant.consumer)
    {
        return Err(ApiError::Forbidden(
            "workflowDid and consumer must be those the grant was signed for".into(),
        ));
    }
    let id = start_execution(&g, &grant.consumer, &agreement_id, &workflow_did).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"workflowId": id}))))
}

/// Queues an execution of `workflow_did` under `agreement_id` for `consumer`
/// (lowercase address) once the agreement and the datasets' compute services
/// allow it; returns its id.
pub(crate) async fn start_execution(
    g: &Gateway,
    consumer: &str,
    agreement_id: &str,
    workflow_did: &str,
) -> ApiResult<String> {
    start_with(g, consumer, agreement_id, workflow_did, |_, _| Ok(())).await
}

/// [`start_execution`], with `prepare` given the new execution's id and its
/// resolved form to adjust (a federated round) before it is queued; an error
/// of `prepare` fails the execution with that reason.
pub(crate) async fn start_with(
    g: &Gateway,
    consumer: &str,
    agreement_id: &str,
    workflow_did: &str,
    prepare: impl FnOnce(&str, &mut insitu_runtime::resolve::Resolved) -> ApiResult<()>,
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
    let mut resolved = resolve(&g.store, &agreement, now())?;
    let permit = g.queue.try_reserve().map_err(|_| ApiError::Busy)?;
    let (id, created) = g.store.create_execution_ack(&agreement)?;
    // A request dropped while the creation commits (the client went away)
    // would leave an execution nobody queues: it is failed instead.
    let mut orphan = Orphan {
        store: &g.store,
        id: &id,
        armed: true,
    };
    let created = created.done().await;
    orphan.armed = false;
    drop(orphan);
    created?;
    if let Err(e) = prepare(&id, &mut resolved) {
        let _ = g.store.set_status(
            &id,
            Status::Failed,
            Some(&format!(
                "could not be prepared: {}",
                crate::error::message(&e)
            )),
        );
        return Err(e);
    }
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

/// Fails execution `id` when dropped armed (see [`start_with`]).
struct Orphan<'a> {
    store: &'a insitu_runtime::store::Store,
    id: &'a str,
    armed: bool,
}

impl Drop for Orphan<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Queued after the creation; nobody waits for it.
            let _ = self.store.advance_ack(
                self.id,
                Status::Failed,
                Some("the execute request was cancelled before the execution was queued; execute it again"),
                None,
            );
        }
    }
}

/// The seed spec's form: `serviceAgreementId`, `consumerAddress`,
/// `workflowDID`, `nonce`, `timestamp` and `signature`, the `personal_sign`
/// of [`exec_message`] of them. The legacy form (a signature of the agreement
/// id alone, no nonce or timestamp) only with `legacy_exec_signatures`.
#[derive(Deserialize)]
pub(crate) struct ExecForm {
    #[serde(rename = "serviceAgreementId")]
    agreement: String,
    #[serde(rename = "consumerAddress")]
    consumer: String,
    signature: String,
    #[serde(rename = "workflowDID")]
    workflow: String,
    nonce: Option<String>,
    timestamp: Option<u64>,
}

pub(crate) async fn exec(
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
    let (message, what) = match (&f.nonce, f.timestamp) {
        (Some(nonce), Some(ts)) => {
            if !valid_nonce(nonce) {
                return Err(ApiError::BadRequest(format!(
                    "nonce `{nonce}` must be 8 to 64 characters of A-Z, a-z, 0-9, _ and -"
                )));
            }
            let now = now();
            if ts.abs_diff(now) > EXEC_WINDOW {
                return Err(ApiError::Unauthorized(format!(
                    "the signed request is stale: its timestamp {ts} is {} s from the provider's clock ({now}); sign a new one (at most {EXEC_WINDOW} s apart)",
                    ts.abs_diff(now)
                )));
            }
            (
                exec_message(&f.agreement, &f.workflow, nonce, ts),
                "the exec message (agreement, workflow, nonce, timestamp)",
            )
        }
        (None, None) if g.legacy_exec_signatures => {
            tracing::warn!(agreement = %f.agreement, "a legacy exec signature (agreement id only) was accepted; it can be replayed");
            (f.agreement.clone(), "serviceAgreementId")
        }
        (None, None) => {
            return Err(ApiError::Unauthorized(
                "a signature of the agreement id alone can be replayed and is refused; add nonce and timestamp and sign the exec message (insitu sign --exec), see the API documentation".into(),
            ));
        }
        _ => {
            return Err(ApiError::BadRequest("give both nonce and timestamp".into()));
        }
    };
    let signer = recover_personal(message.as_bytes(), &f.signature).map_err(|_| {
        ApiError::Unauthorized(format!(
            "signature must be the 65-byte hex personal_sign of {what}"
        ))
    })?;
    let signer = format!("{signer:#x}");
    if signer != consumer {
        return Err(ApiError::Unauthorized(format!(
            "the signature is from {signer}, not from consumerAddress {consumer}; sign {what} with the consumer's key"
        )));
    }
    if let Some(ts) = f.timestamp {
        // Once: keyed by what was signed (not the signature's bytes, which
        // ECDSA malleability could vary), kept past the freshness window.
        let digest = hex::encode(sha2::Sha256::digest(format!("{consumer}\n{message}")));
        if !g
            .store
            .use_signature(&digest, now(), ts + EXEC_WINDOW + 1)?
        {
            return Err(ApiError::Unauthorized(
                "this signed request was already used (a replay); sign a new one with a fresh nonce".into(),
            ));
        }
    }
    let id = start_execution(
        &g,
        &consumer,
        &crate::ids::agreement(&f.agreement),
        &crate::ids::did(&f.workflow),
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

pub(crate) async fn status(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let id = crate::ids::execution(&id);
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
        "progress": latest_progress(&g, &id),
        "execution": e,
    })))
}

/// The guest SDK's progress file in each stage's logs dir: JSON lines
/// `{"fraction": 0.0..1.0, "message": "…"}`.
const PROGRESS_FILE: &str = "progress.jsonl";
/// The longest progress message passed on (longer ones are cut).
const PROGRESS_MESSAGE: usize = 512;

/// A progress line as the API shows it (`{"stage", "fraction", "message"}`),
/// or `None` for a line that is not the SDK's shape (a guest may write
/// anything there).
fn progress_event(stage: u32, line: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let fraction = v["fraction"]
        .as_f64()
        .filter(|f| f.is_finite())?
        .clamp(0.0, 1.0);
    let mut message = v["message"].as_str().unwrap_or_default().to_string();
    if message.len() > PROGRESS_MESSAGE {
        let mut cut = PROGRESS_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Some(json!({"stage": stage, "fraction": fraction, "message": message}))
}

/// The last progress line of the latest stage that reported any, or null.
fn latest_progress(g: &Gateway, id: &str) -> Value {
    use std::io::{Read, Seek, SeekFrom};
    for n in (0..stage_dirs(g, id)).rev() {
        let Ok(mut f) = std::fs::File::open(g.pipeline.logs(id, n).join(PROGRESS_FILE)) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(4096);
        let mut tail = Vec::new();
        if f.seek(SeekFrom::Start(from)).is_err() || f.take(4096).read_to_end(&mut tail).is_err() {
            continue;
        }
        if let Some(p) = tail
            .split(|b| *b == b'\n')
            .rev()
            .find_map(|line| progress_event(n, line))
        {
            return p;
        }
    }
    Value::Null
}

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

const LOG_FILES: [&str; 2] = ["stdout.log", "stderr.log"];

pub(crate) async fn logs(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = crate::ids::execution(&id);
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
    /// Stage → bytes of its progress file read, plus an incomplete last line.
    progress: HashMap<u32, (u64, Vec<u8>)>,
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
            // Progress is a level, not a log: of what was appended since the
            // last poll, only the newest complete line is sent.
            let (offset, held) = self.progress.entry(n).or_default();
            let Ok(mut f) = std::fs::File::open(dir.join(PROGRESS_FILE)) else {
                continue;
            };
            let mut buf = std::mem::take(held);
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            *offset += f.take(1 << 20).read_to_end(&mut buf).unwrap_or(0) as u64;
            let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            *held = buf.split_off(complete);
            if held.len() > 64 << 10 {
                held.clear(); // a "line" that never ends is no progress
            }
            if let Some(p) = buf
                .split(|b| *b == b'\n')
                .rev()
                .find_map(|line| progress_event(n, line))
            {
                self.pending
                    .push_back(Event::default().event("progress").data(p.to_string()));
            }
        }
    }
}

/// Server-sent events: `log` events (`{"stage", "podName", "stream",
/// "content"}`) as the guest writes, `progress` events (`{"stage",
/// "fraction", "message"}`, the newest line of the guest SDK's
/// `progress.jsonl` at each poll), then one `end` event (`{"status",
/// "reason", "did"}`, `did` the result asset or `null`) once the execution is over and everything was sent.
pub(crate) fn follow_logs(
    g: Arc<Gateway>,
    id: String,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let tail = Tail {
        g,
        id,
        offsets: HashMap::new(),
        progress: HashMap::new(),
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
                        Event::default().event("end").data(
                            json!({"status": e.status, "reason": e.reason, "did": e.result})
                                .to_string(),
                        ),
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

pub(crate) async fn stop(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let id = crate::ids::execution(&id);
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

pub(crate) async fn list(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
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

pub(crate) async fn results(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let id = crate::ids::execution(&id);
    let (e, files) = result_files(&g, &headers, &id)?;
    Ok(Json(
        json!({"did": e.result, "files": files, "receipt": e.receipt}),
    ))
}

/// The receipt of an owned, succeeded execution as an in-toto Statement in
/// a DSSE envelope signed by the provider's key
/// ([`insitu_runtime::verify::envelope`]).
pub(crate) async fn attestation(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let id = crate::ids::execution(&id);
    let e = owned(&g, &headers, &id)?;
    let receipt: insitu_runtime::receipt::Receipt = e
        .receipt
        .and_then(|r| serde_json::from_value(r).ok())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "execution {id} has no receipt (it is {})",
                e.status.as_str()
            ))
        })?;
    Ok(Json(insitu_runtime::verify::envelope(
        &g.pipeline.key,
        &receipt,
    )?))
}

pub(crate) async fn download(
    State(g): State<Arc<Gateway>>,
    ApiPath((id, file)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = crate::ids::execution(&id);
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
    // One `Range: bytes=…` resumes an interrupted download (206).
    let part = super::access::Part::of(&headers, len)?;
    let body = axum::body::Body::from_stream(super::access::read_ahead(
        file.into_std().await,
        part.first,
        part.count,
    ));
    Ok(part.response(body))
}
