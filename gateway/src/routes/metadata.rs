//! The metadata API: `GET /api/v1/metadata/assets/ddo/{did}` resolves a DDO.
//!
//! Datasets and workflows are public. A result's DDO is whole only for its
//! owner (a bearer access token of the consumer who owns it); anyone else
//! sees its provenance — which execution, agreement, workflow, datasets,
//! images and modules, and how each stage ended — but no file names, sizes
//! or digests of its outputs or logs, nor its stages' arguments: a stranger
//! could otherwise confirm a guess of a small output by its sha256.

use super::bearer;
use crate::auth::{AUD_COMPUTE, AUD_EXECUTE};
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::server::{Gateway, now};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use insitu_runtime::store::AssetKind;
use insitu_runtime::workflow::Did;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The fields of a stage's provenance record anyone may see.
const PUBLIC_STAGE_FIELDS: [&str; 10] = [
    "index",
    "image",
    "image_digest",
    "module_digest",
    "backend",
    "status",
    "outcome",
    "exit_code",
    "started_at",
    "finished_at",
];

pub(crate) async fn ddo(
    State(g): State<Arc<Gateway>>,
    ApiPath(did): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let did = Did::parse(&did).map_err(ApiError::NotFound)?;
    let (kind, mut ddo) = g.store.ddo(&did)?;
    if kind == AssetKind::Result {
        let main = ddo.pointer_mut("/service/0/attributes/main");
        if let Some(main) = main
            && !is_owner(&g, &headers, main["owner"].as_str().unwrap_or(""))
        {
            public_result(main);
        }
    }
    Ok(Json(ddo))
}

/// Whether the request carries a valid access token of `owner`.
fn is_owner(g: &Gateway, headers: &HeaderMap, owner: &str) -> bool {
    let Ok(t) = bearer(headers) else {
        return false;
    };
    g.tokens
        .check(t, AUD_COMPUTE, now())
        .or_else(|_| g.tokens.check(t, AUD_EXECUTE, now()))
        .is_ok_and(|grant| grant.consumer.eq_ignore_ascii_case(owner))
}

/// A result's `main` attributes as a stranger sees them: provenance only.
fn public_result(main: &mut Value) {
    let Some(m) = main.as_object_mut() else {
        return;
    };
    m.remove("files");
    m.remove("skipped");
    if let Some(stages) = m
        .get_mut("provenance")
        .and_then(|p| p.get_mut("stages"))
        .and_then(Value::as_array_mut)
    {
        for stage in stages.iter_mut() {
            let public: Map<String, Value> = PUBLIC_STAGE_FIELDS
                .iter()
                .filter_map(|k| stage.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            *stage = Value::Object(public);
        }
    }
}
