//! Who a request is: the bearer token it carries.

use crate::error::{ApiError, ApiResult};
use axum::http::{HeaderMap, header};

/// The bearer token of a request.
///
/// # Errors
/// 401 when there is none.
pub(crate) fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
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
