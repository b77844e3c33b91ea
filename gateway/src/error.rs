//! The one place errors become HTTP responses: [`ApiError`] and its
//! `IntoResponse` (`{"error": CODE, "message": TEXT}` with the status), and
//! the extractors that refuse with it instead of axum's plain-text rejections.

use crate::auth::AuthError;
use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: the one place errors become HTTP responses.
#[derive(Debug)]
pub enum ApiError {
    Auth(AuthError),
    Runtime(insitu_runtime::Error),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    /// Well-formed but not acceptable (422).
    Unprocessable(String),
    /// Not in this state (409).
    Conflict(String),
    /// A body the extractors refused (malformed, wrong type, too large), with its status.
    Body(StatusCode, String),
    /// Temporarily unable to serve (503).
    Unavailable(String),
}

/// axum's `Path`, refusing with an [`ApiError`] (a JSON body, like every
/// other error) instead of axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

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
pub struct ApiQuery<T>(pub T);

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
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
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
            ApiError::Runtime(e @ E::Busy) => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": "busy", "message": e.to_string()})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            ApiError::Runtime(e) => match &e {
                E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", e.to_string()),
                E::Denied(_) => (StatusCode::FORBIDDEN, "forbidden", e.to_string()),
                E::Unavailable(_) | E::ShuttingDown => (
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

/// `body` as a `T`, where numbers with no fractional part (`192.0`, which
/// JSON Schema calls integers) count as integers.
///
/// # Errors
/// The body's rejection (400, 413, 415), or 422 when it is not a `T`.
pub(crate) fn integral_json<T: serde::de::DeserializeOwned>(
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<T, ApiError> {
    fn integral(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => {
                    Value::from(f as u64)
                }
                _ => Value::Number(n),
            },
            Value::Array(a) => Value::Array(a.into_iter().map(integral).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, v)| (k, integral(v))).collect())
            }
            v => v,
        }
    }
    let Json(v) = body?;
    serde_json::from_value(integral(v)).map_err(|e| {
        ApiError::Body(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

/// The message an error's response carries.
pub(crate) fn message(e: &ApiError) -> String {
    match e {
        ApiError::Auth(e) => e.to_string(),
        ApiError::Runtime(e) => e.to_string(),
        ApiError::Unauthorized(m)
        | ApiError::Forbidden(m)
        | ApiError::NotFound(m)
        | ApiError::BadRequest(m)
        | ApiError::Unprocessable(m)
        | ApiError::Conflict(m)
        | ApiError::Body(_, m)
        | ApiError::Unavailable(m) => m.clone(),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&message(self))
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
