//! The compute API: execute (with an access token, or the seed spec's signed
//! form), status, logs (followed as server-sent events), stop, list, and the
//! results of an execution (owner only).

use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, EXEC_WINDOW, exec_message, valid_nonce};
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::http::extract::bearer;
use crate::http::files::{Part, read_ahead};
use crate::http::logs;
use crate::http::state::{Gateway, now};
use axum::Form;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use insitu_runtime::executions::Stopped;
use insitu_runtime::receipt::recover_personal;
use insitu_runtime::store::parse_address;
use insitu_runtime::workflow::Did;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use std::sync::Arc;

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
    // The compute token the consumer would otherwise get by signing a grant
    // for this execution (same consumer, agreement, execution and lifetime):
    // one signature and one round trip fewer per execution.
    let compute = crate::auth::Grant {
        consumer: grant.consumer,
        audience: AUD_COMPUTE.to_string(),
        agreement: agreement_id,
        did: None,
        execution: Some(id.clone()),
        expires_at: 0,
    };
    let token = g.tokens.issue(&compute, now());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"workflowId": id, "access_token": token})),
    ))
}

/// Queues an execution of `workflow_did` under `agreement_id` for `consumer`
/// (lowercase address); see [`insitu_runtime::executions::Executions::admit`].
async fn start_execution(
    g: &Gateway,
    consumer: &str,
    agreement_id: &str,
    workflow_did: &str,
) -> ApiResult<String> {
    g.executions
        .admit(consumer, agreement_id, workflow_did, now(), |_, _| Ok(()))
        .await
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
    let stages = e.stage_records();
    let pods: Vec<Value> = stages
        .iter()
        .map(|s| {
            json!({"podName": format!("{id}-stage-{}", s.index), "status": s.status,
                   "startedAt": s.started_at, "finishedAt": s.finished_at})
        })
        .collect();
    let finished = e.status.is_terminal().then_some(e.updated_at);
    Ok(Json(json!({
        "workflowStatus": {"status": e.status, "startedAt": e.created_at, "finishedAt": finished, "did": e.result, "pods": pods},
        "progress": if logs_released(&g, &e)? { logs::latest_progress(&g, &id, &stages) } else { Value::Null },
        "execution": e,
    })))
}

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

pub(crate) async fn logs(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = crate::ids::execution(&id);
    let e = owned(&g, &headers, &id)?;
    if !logs_released(&g, &e)? {
        return Err(ApiError::Conflict(format!(
            "the logs of execution {id} are results under the output policy of the datasets it reads: they are released with its results, once it has succeeded (it is {})",
            e.status.as_str()
        )));
    }
    if q.follow {
        return Ok(logs::follow(g, id).into_response());
    }
    Ok(Json(json!({"logs": logs::read(&g, &id)})).into_response())
}

/// Whether execution `e`'s logs (and progress messages) may reach its
/// consumer: always, unless its datasets have an output policy — then only
/// once its results were released (logs are results and pass the same
/// checks).
fn logs_released(g: &Gateway, e: &insitu_runtime::store::Execution) -> ApiResult<bool> {
    Ok(e.status == insitu_runtime::Status::Succeeded || !g.controlled(&e.workflow)?)
}

pub(crate) async fn stop(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let id = crate::ids::execution(&id);
    owned(&g, &headers, &id)?;
    Ok(Json(match g.executions.stop(&id)? {
        Stopped::Ended(status) => {
            json!({"status": status, "text": format!("execution {id} already ended {}", status.as_str())})
        }
        Stopped::BeforeStart => {
            json!({"status": "stopped", "text": format!("execution {id} stopped before it started")})
        }
        Stopped::Stopping => {
            json!({"status": "stopping", "text": format!("execution {id} is being stopped")})
        }
        Stopped::WhileHeld => {
            json!({"status": "stopped", "text": format!("execution {id} was held for review and is stopped; its results were not released")})
        }
    }))
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
    let path = g.pipeline.outputs(&id, e.result_stage()).join(&file);
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
    let part = Part::of(&headers, len)?;
    let body =
        axum::body::Body::from_stream(read_ahead(file.into_std().await, part.first, part.count));
    Ok(part.response(body))
}
