//! The HTTP layer: the shared state routes read ([`Gateway`]), the router,
//! serving ([`serve`]) and the plumbing routes share — who a request is
//! ([`extract`]), who may use the provider's pages ([`admin`]), logs
//! ([`logs`]), file responses ([`files`]), federated rounds ([`rounds`]). The routes themselves live in [`routes`], one module
//! per API area; they call [`insitu_runtime::executions::Executions`] for
//! anything about an execution's life and never import each other.
//!
//! [`build`] is the composition: [`Provider::open`] plus this layer.

pub(crate) mod admin;
pub(crate) mod extract;
pub(crate) mod files;
pub(crate) mod logs;
pub(crate) mod rounds;
pub(crate) mod routes;
mod serve;
pub(crate) mod state;

pub use routes::ops::OPENAPI;
pub use serve::serve;
pub use state::Gateway;

use crate::config::{HttpLimits, ServeConfig};
use crate::error::ApiQuery;
use crate::provider::Provider;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use insitu_runtime::thread::on_thread;
use routes::{access, compute, dashboard, federated, metadata, oauth, ops, review};
use std::sync::Arc;
use std::time::Duration;

/// The largest model body a federated route takes: the largest plan's
/// model in little-endian doubles.
const MODEL_LIMIT: usize = 8 * insitu_federated::coordinator::MAX_PARAMETERS;

/// Builds the provider for `config` ([`Provider::open`]) and the HTTP layer
/// over it: the router, the shared state, the dashboard's queue sampler and
/// (chain mode) the payments watcher. Must run within a tokio runtime.
///
/// # Errors
/// As [`Provider::open`], or when a thread cannot be started.
pub fn build(config: &ServeConfig) -> anyhow::Result<(Router, Arc<Gateway>)> {
    let p = Provider::open(config)?;
    let gateway = Arc::new(Gateway {
        store: p.store,
        permissions: p.permissions,
        pipeline: p.pipeline,
        executions: p.executions,
        tokens: p.tokens,
        http: config.http,
        legacy_exec_signatures: config.legacy_exec_signatures,
        rounds: Default::default(),
        provider: p.services.provider.clone(),
        services: p.services,
        dashboard: config.dashboard,
        depth_samples: Default::default(),
        controlled: Default::default(),
    });
    if let Some(chain) = p.chain {
        let (store, g) = (gateway.store.clone(), Arc::downgrade(&gateway));
        on_thread("insitu-payments".into(), async move {
            let alive = move || g.strong_count() > 0;
            insitu_chain::watch_payments(chain, store, Duration::from_millis(500), alive).await;
        })?;
    }
    let g = Arc::downgrade(&gateway);
    on_thread("insitu-sampler".into(), async move {
        while let Some(g) = g.upgrade() {
            g.sample_queue();
            drop(g);
            tokio::time::sleep(state::QUEUE_SAMPLE).await;
        }
    })?;
    Ok((router(gateway.clone(), config.http), gateway))
}

/// Every route of the API (docs/ARCHITECTURE.md, "HTTP") over `gateway`.
pub fn router(gateway: Arc<Gateway>, http: HttpLimits) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(g), ApiQuery(q), req| admin::serve_page(g, q, req, dashboard::render)),
        )
        .route("/dashboard/logs/{id}", get(dashboard::logs))
        .route(
            "/review",
            get(|State(g), ApiQuery(q), req| admin::serve_page(g, q, req, review::render)),
        )
        .route("/review/{execution}", post(review::decide))
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
