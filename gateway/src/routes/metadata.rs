//! The metadata API: `GET /api/v1/metadata/assets/ddo/{did}` resolves a DDO.

use crate::error::{ApiError, ApiPath, ApiResult};
use crate::server::Gateway;
use axum::Json;
use axum::extract::State;
use insitu_runtime::workflow::Did;
use serde_json::Value;
use std::sync::Arc;

pub(crate) async fn ddo(
    State(g): State<Arc<Gateway>>,
    ApiPath(did): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let did = Did::parse(&did).map_err(ApiError::NotFound)?;
    Ok(Json(g.store.ddo(&did)?.1))
}
