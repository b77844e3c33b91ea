//! The HTTP routes, one module per API area: [`compute`] (execute, status,
//! logs, stop, list, results), [`oauth`] (grants for access tokens),
//! [`dashboard`] (the provider's page), [`metadata`] (DDOs and catalog search), [`access`] (dataset downloads
//! under access agreements), [`federated`] (a participant's steps in federated
//! rounds, the final model's publication) and [`ops`] (health, metrics, the
//! OpenAPI document).
//! Shared here: the router and how a request proves who it is.

pub(crate) mod access;
pub(crate) mod compute;
pub(crate) mod dashboard;
pub(crate) mod federated;
pub(crate) mod metadata;
pub(crate) mod oauth;
pub(crate) mod ops;

use crate::error::{ApiError, ApiResult};
use crate::server::{Gateway, HttpLimits};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{delete, get, post};
use std::sync::Arc;

/// The largest model body a federated route takes: the largest plan's
/// model in little-endian doubles.
const MODEL_LIMIT: usize = 8 * insitu_federated::coordinator::MAX_PARAMETERS;

/// Every route of the API (DESIGN §4) over `gateway`.
pub fn router(gateway: Arc<Gateway>, http: HttpLimits) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard/logs/{id}", get(dashboard::logs))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(ops::metrics))
        .route("/api/v1/openapi.json", get(ops::openapi))
        .route("/api/v1/gateway/services/exec", post(compute::exec))
        .route("/api/v1/node/services/oauth/token", post(oauth::token))
        .route(
            "/api/v1/node/services/compute/execute/{agreement}",
            post(compute::execute),
        )
        .route(
            "/api/v1/node/services/compute/status/{execution}",
            get(compute::status),
        )
        .route(
            "/api/v1/node/services/compute/logs/{execution}",
            get(compute::logs),
        )
        .route(
            "/api/v1/node/services/compute/stop/{execution}",
            delete(compute::stop),
        )
        .route("/api/v1/node/services/compute/list", get(compute::list))
        .route(
            "/api/v1/node/services/compute/results/{execution}",
            get(compute::results),
        )
        .route(
            "/api/v1/node/services/compute/results/{execution}/receipt.intoto.json",
            get(compute::attestation),
        )
        .route(
            "/api/v1/node/services/compute/results/{execution}/{*file}",
            get(compute::download),
        )
        .route(
            "/api/v1/node/services/access/{agreement}/{index}",
            get(access::download),
        )
        .route(
            "/api/v1/metadata/assets/ddo/query",
            get(metadata::query_get).post(metadata::query_post),
        )
        .route("/api/v1/metadata/assets/ddo", post(metadata::publish))
        .route("/api/v1/metadata/assets/ddo/{did}", get(metadata::ddo))
        .route(
            "/api/v1/node/services/fl/{job}/{round}/start",
            post(federated::start).layer(DefaultBodyLimit::max(MODEL_LIMIT)),
        )
        .route(
            "/api/v1/node/services/fl/{job}/{round}/share",
            post(federated::share),
        )
        .route(
            "/api/v1/node/services/fl/{job}/{round}/masked",
            post(federated::masked),
        )
        .route(
            "/api/v1/node/services/fl/{job}/{round}/unmask",
            post(federated::unmask),
        )
        .route(
            "/api/v1/node/services/fl/{job}/publish",
            post(federated::publish).layer(DefaultBodyLimit::max(MODEL_LIMIT / 3 * 4 + (16 << 20))),
        )
        .layer(DefaultBodyLimit::max(64 << 10))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            http.request_timeout,
        ))
        .with_state(gateway)
}

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
