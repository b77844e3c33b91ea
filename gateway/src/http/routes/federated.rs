//! The participant's side of federated learning (`insitu_federated`): a
//! coordinator drives each round here in four steps, all with the
//! consumer's execute token for its agreement with this provider —
//!
//! - `POST /api/v1/node/services/fl/{job}/{round}/start?participant=&threshold=&parameters=&attempt=`
//!   with the global model as the body (little-endian doubles, empty in
//!   round 0): queues the training workflow (one stage) with the model as
//!   its last, read-only input and `--fl-round=N`, and answers the round's
//!   fresh public keys;
//! - `POST …/share` with the roster: Shamir shares of the round's secrets,
//!   sealed per holder;
//! - `POST …/masked` with the shares sealed for this participant: once the
//!   training finished, the update masked over those who shared
//!   (`application/octet-stream`, 8 bytes per value); `202` while it still
//!   trains. The unmasked update is deleted as soon as it is masked (or
//!   refused), and never published or served;
//! - `POST …/unmask` with who survived: the shares that remove the masks of
//!   the sum; the round's secrets are then forgotten.
//!
//! and `POST /api/v1/node/services/fl/{job}/publish` registers the job's
//! final model as a result asset owned by the consumer, with a receipt
//! signed by this provider. Round secrets live in memory only (a restarted
//! provider has dropped out of its rounds) and expire after an hour.

use crate::auth::{AUD_EXECUTE, Grant};
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult, integral_json};
use crate::http::extract::bearer;
use crate::http::rounds::Round;
use crate::http::state::{Gateway, now};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use insitu_federated::coordinator::MAX_PARAMETERS;
use insitu_federated::participant::{RoundSecrets, StepError};
use insitu_federated::wire::{
    self, MaskRequest, SealedMsg, ShareRequest, ShareResponse, Started, UnmaskRequest,
    UnmaskResponse,
};
use insitu_runtime::Status;
use insitu_runtime::resolve::{FederatedRound, Resolved};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a round's secrets are kept without the coordinator finishing it.
const ROUND_TTL: Duration = Duration::from_secs(3600);
/// How long `masked` waits for the training before answering 202.
const MASK_WAIT: Duration = Duration::from_secs(15);

fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The grant of an execute token, for the round `job`/`round`.
fn grant(g: &Gateway, headers: &HeaderMap, job: &str) -> ApiResult<Grant> {
    let grant = g.tokens.check(bearer(headers)?, AUD_EXECUTE, now())?;
    if !valid_id(job, 64) {
        return Err(ApiError::BadRequest(format!(
            "job `{job}` must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"
        )));
    }
    Ok(grant)
}

fn step(e: StepError) -> ApiError {
    match e {
        StepError::Order(_) => ApiError::Conflict(e.to_string()),
        _ => ApiError::Unprocessable(e.to_string()),
    }
}

/// Runs `f` on the round's entry, if the token's holder owns it.
fn with_round<T>(
    g: &Gateway,
    grant: &Grant,
    job: &str,
    round: u64,
    f: impl FnOnce(&mut Round) -> ApiResult<T>,
) -> ApiResult<T> {
    let mut rounds = g.rounds.lock();
    let key = (grant.agreement.clone(), job.to_string(), round);
    let entry = rounds.get_mut(&key).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no round {round} of job {job} under agreement {} here (not started, already finished, or this provider restarted)",
            grant.agreement
        ))
    })?;
    if entry.consumer != grant.consumer {
        return Err(ApiError::Forbidden(
            "this round belongs to another consumer".into(),
        ));
    }
    f(entry)
}

#[derive(Deserialize)]
pub(crate) struct StartQuery {
    participant: u32,
    threshold: usize,
    parameters: usize,
    attempt: String,
}

pub(crate) async fn start(
    State(g): State<Arc<Gateway>>,
    ApiPath((job, round)): ApiPath<(String, u64)>,
    ApiQuery(q): ApiQuery<StartQuery>,
    headers: HeaderMap,
    model: Bytes,
) -> ApiResult<Json<Started>> {
    let grant = grant(&g, &headers, &job)?;
    let workflow = grant.did.clone().ok_or_else(|| {
        ApiError::Forbidden("the token was granted without a workflow DID".into())
    })?;
    if !valid_id(&q.attempt, 64) {
        return Err(ApiError::BadRequest(format!(
            "attempt `{}` must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -",
            q.attempt
        )));
    }
    if q.participant == 0 || q.parameters == 0 || q.parameters > MAX_PARAMETERS {
        return Err(ApiError::BadRequest(format!(
            "participant must be at least 1 and parameters between 1 and {MAX_PARAMETERS}"
        )));
    }
    if !model.is_empty() && model.len() != 8 * q.parameters {
        return Err(ApiError::Unprocessable(format!(
            "the model is {} bytes; {} parameters take {} (8 bytes each), or none in round 0",
            model.len(),
            q.parameters,
            8 * q.parameters
        )));
    }
    let tag = format!("{job}/{round}/{}", q.attempt);
    let (secrets, keys) =
        RoundSecrets::new(q.participant, tag.as_bytes(), q.threshold, q.parameters)
            .map_err(step)?;
    let fl = FederatedRound {
        job: job.clone(),
        round,
        participant: q.participant,
        model: Default::default(),
        model_digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&model))),
    };
    let pipeline = g.pipeline.clone();
    let admitted = g.executions.admit(
        &grant.consumer,
        &grant.agreement,
        &workflow,
        now(),
        |id, resolved: &mut Resolved| {
            let mut fl = fl;
            let dir = pipeline.model_dir(id);
            let run = || -> std::io::Result<std::path::PathBuf> {
                std::fs::create_dir_all(&dir)?;
                if !model.is_empty() {
                    std::fs::write(dir.join("model.f64"), &model)?;
                }
                Ok(dir)
            };
            fl.model = run().map_err(|e| {
                ApiError::Runtime(insitu_runtime::Error::io(
                    "write the global model",
                    pipeline.model_dir(id),
                    e,
                ))
            })?;
            resolved.federated = Some(fl);
            FederatedRound::check(resolved).map_err(|e| ApiError::Unprocessable(e.to_string()))
        },
    );
    let execution = admitted.await?;
    let mut gone = Vec::new();
    {
        let mut rounds = g.rounds.lock();
        rounds.retain(|_, r| {
            let keep = r.created.elapsed() < ROUND_TTL;
            if !keep {
                gone.push(r.execution.clone());
            }
            keep
        });
        // A new attempt of the same round replaces the old one's secrets.
        if let Some(old) = rounds.insert(
            (grant.agreement.clone(), job.clone(), round),
            Round {
                consumer: grant.consumer.clone(),
                execution: execution.clone(),
                secrets: Some(secrets),
                created: Instant::now(),
            },
        ) {
            gone.push(old.execution);
        }
    }
    // Updates of rounds that will never be masked go with their secrets.
    for old in gone {
        let dir = g.pipeline.update_dir(&old);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(path = %dir.display(), error = %e, "cannot delete a federated update");
        }
    }
    g.rounds.count(0);
    tracing::info!(
        job,
        round,
        participant = q.participant,
        execution,
        "federated round started"
    );
    Ok(Json(Started {
        execution,
        participant: q.participant,
        keys,
    }))
}

pub(crate) async fn share(
    State(g): State<Arc<Gateway>>,
    ApiPath((job, round)): ApiPath<(String, u64)>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<ShareResponse>> {
    let grant = grant(&g, &headers, &job)?;
    let body: ShareRequest = integral_json(body)?;
    with_round(&g, &grant, &job, round, |r| {
        let secrets = r
            .secrets
            .as_mut()
            .ok_or_else(|| ApiError::Conflict("this round's secrets are gone".into()))?;
        let sealed = secrets.share(body.roster).map_err(step)?;
        g.rounds.count(1);
        Ok(Json(ShareResponse {
            sealed: sealed.iter().map(SealedMsg::from).collect(),
        }))
    })
}

/// The update the round's execution set aside: (parameters, weight).
fn read_update(dir: &Path) -> Result<(Vec<f64>, u64), String> {
    let [values, meta] = FederatedRound::UPDATE_FILES;
    let bytes = std::fs::read(dir.join(values)).map_err(|e| {
        format!("the training wrote no {values} (insitu_guest::fl::write_update): {e}")
    })?;
    let params = wire::model_from_bytes(&bytes).ok_or_else(|| {
        format!(
            "{values} is {} bytes, not a whole number of 8-byte doubles",
            bytes.len()
        )
    })?;
    let meta: Value = std::fs::read(dir.join(meta))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{meta} is missing or not JSON"))?;
    let weight = meta["weight"]
        .as_u64()
        .ok_or_else(|| "update.json has no whole-number weight".to_string())?;
    Ok((params, weight))
}

pub(crate) async fn masked(
    State(g): State<Arc<Gateway>>,
    ApiPath((job, round)): ApiPath<(String, u64)>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Response> {
    let grant = grant(&g, &headers, &job)?;
    let body: MaskRequest = integral_json(body)?;
    let sealed = body
        .sealed
        .iter()
        .map(SealedMsg::sealed)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::BadRequest)?;
    // The secrets leave the map while the mask is computed (no lock held),
    // and go back for the unmask step; a concurrent call meanwhile gets 409.
    let (secrets, execution) = with_round(&g, &grant, &job, round, |r| {
        let s = r.secrets.take().ok_or_else(|| {
            ApiError::Conflict(
                "this round's masked update is being computed by another request, or its secrets are gone"
                    .into(),
            )
        })?;
        Ok((s, r.execution.clone()))
    })?;
    let key = (grant.agreement.clone(), job.clone(), round);
    let put_back = |secrets: RoundSecrets| {
        let mut rounds = g.rounds.lock();
        if let Some(r) = rounds.get_mut(&key)
            && r.execution == execution
            && r.secrets.is_none()
        {
            r.secrets = Some(secrets);
        }
    };
    // The costly part first, while the training may still run.
    let (mut secrets, prepared) = tokio::task::spawn_blocking(move || {
        let mut secrets = secrets;
        let r = secrets.prepare(&sealed);
        (secrets, r)
    })
    .await
    .map_err(|e| ApiError::Unavailable(format!("masking was interrupted: {e}")))?;
    if let Err(e) = prepared {
        put_back(secrets);
        return Err(step(e));
    }
    let deadline = Instant::now() + MASK_WAIT;
    let e = match g.executions.wait(&execution, deadline).await {
        Ok(e) => e,
        Err(e) => {
            put_back(secrets);
            return Err(e.into());
        }
    };
    if !e.status.is_terminal() {
        put_back(secrets);
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"status": e.status.as_str(), "execution": execution})),
        )
            .into_response());
    }
    let dir = g.pipeline.update_dir(&execution);
    let update = if e.status == Status::Succeeded {
        read_update(&dir)
    } else {
        Err(format!(
            "the round's training execution {execution} {}: {}",
            e.status.as_str(),
            e.reason.unwrap_or_default()
        ))
    };
    let masked = update
        .map_err(ApiError::Unprocessable)
        .and_then(|(params, weight)| secrets.finish(&params, weight).map_err(step));
    put_back(secrets);
    // Masked or refused, the unmasked update goes now.
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(path = %dir.display(), error = %e, "cannot delete a federated update");
    }
    let masked = masked?;
    g.rounds.count(2);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        wire::to_bytes(&masked),
    )
        .into_response())
}

pub(crate) async fn unmask(
    State(g): State<Arc<Gateway>>,
    ApiPath((job, round)): ApiPath<(String, u64)>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<UnmaskResponse>> {
    let grant = grant(&g, &headers, &job)?;
    let body: UnmaskRequest = integral_json(body)?;
    let (shares, execution) = with_round(&g, &grant, &job, round, |r| {
        let secrets = r
            .secrets
            .as_mut()
            .ok_or_else(|| ApiError::Conflict("this round's secrets are gone".into()))?;
        let shares = secrets
            .reveal(&body.survivors, &body.dropped)
            .map_err(step)?;
        Ok((shares, r.execution.clone()))
    })?;
    // Revealed once: the round is over here.
    g.rounds
        .lock()
        .remove(&(grant.agreement.clone(), job.clone(), round));
    g.rounds.count(3);
    let receipt = g
        .store
        .execution(&execution)
        .ok()
        .and_then(|e| e.receipt_hash());
    Ok(Json(UnmaskResponse {
        shares,
        execution,
        receipt,
    }))
}

#[derive(Deserialize)]
pub(crate) struct PublishBody {
    /// The final model, base64 of its little-endian doubles.
    model: String,
    /// The plan's digest and the rounds (`insitu_federated::coordinator::JobState`).
    plan: String,
    rounds: Vec<Value>,
}

pub(crate) async fn publish(
    State(g): State<Arc<Gateway>>,
    ApiPath(job): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use base64::Engine;
    let grant = grant(&g, &headers, &job)?;
    let body: PublishBody = integral_json(body)?;
    let workflow = grant.did.clone().ok_or_else(|| {
        ApiError::Forbidden("the token was granted without a workflow DID".into())
    })?;
    let model = base64::engine::general_purpose::STANDARD
        .decode(&body.model)
        .map_err(|e| ApiError::Unprocessable(format!("model is not base64: {e}")))?;
    if model.is_empty() || !model.len().is_multiple_of(8) {
        return Err(ApiError::Unprocessable(format!(
            "the model is {} bytes, not a whole number of 8-byte doubles",
            model.len()
        )));
    }
    // Executions of this provider the provenance names must be this
    // consumer's rounds of this job, with the receipts it claims; they are
    // recorded as checked here. The rest of the provenance is the
    // coordinator's word, signed as received.
    let mut checked = Vec::new();
    for r in &body.rounds {
        for e in r["executions"].as_array().into_iter().flatten() {
            let Some(id) = e["execution"].as_str() else {
                continue;
            };
            let Ok(x) = g.store.execution(id) else {
                continue;
            };
            let receipt = x.receipt.as_ref();
            if x.consumer != grant.consumer
                || receipt.and_then(|r| r["body"]["federated"]["job"].as_str())
                    != Some(job.as_str())
                || e["receipt"] != receipt.map_or(Value::Null, |r| r["hash"].clone())
            {
                return Err(ApiError::Unprocessable(format!(
                    "execution {id} of this provider is not a round of job {job} by this consumer with the receipt named"
                )));
            }
            checked.push(id.to_string());
        }
    }
    let agreement = g
        .permissions
        .check_execute(&grant.agreement, &grant.consumer, &workflow, now())
        .await?;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&model)));
    let provenance = json!({
        "job": job, "plan": body.plan, "rounds": body.rounds, "model": digest,
        "checked_here": checked,
    });
    let id = g.store.create_execution_ack(&agreement)?.1.done().await?;
    let published = g
        .pipeline
        .publish_received(
            &id,
            &agreement,
            &format!("federated model of {job}"),
            &[("model.f64", &model)],
            provenance,
        )
        .await
        .inspect_err(|e| {
            let _ = g
                .store
                .set_status(&id, Status::Failed, Some(&e.to_string()));
        })?;
    tracing::info!(job, execution = id, did = %published, "federated model published");
    Ok((
        StatusCode::CREATED,
        Json(json!({"workflowId": id, "did": published, "model": digest})),
    ))
}
