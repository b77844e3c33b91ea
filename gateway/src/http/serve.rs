//! Serving the router: connection limits, header timeouts and a graceful
//! shutdown that drains executions.

use super::state::Gateway;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// Serves `router` on `listener` until `signal` completes, then shuts down
/// gracefully: the gateway stops taking executions and drains (see
/// [`Gateway::shutdown`]) while the listener stops accepting and open
/// requests (including followed logs, which end with their execution)
/// finish. Returns how many executions had to be stopped.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    gateway: Arc<Gateway>,
    grace: Duration,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<usize> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let limits = gateway.http;
    let g = gateway.clone();
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let draining = tokio::spawn(async move {
        signal.await;
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
        let _ = tx.send(());
        g.shutdown(grace).await
    });
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let permit = tokio::select! {
            _ = &mut rx => break,
            p = connections.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut rx => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: wait, do not spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses written in several pieces (a streamed file) must not wait
        // for the peer's delayed ACK (Nagle: ~40 ms per response on loopback).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Handlers that care who is on the other end (the dashboard serves
        // loopback clients without a token) read it as `ConnectInfo`.
        let service = hyper_util::service::TowerToHyperService::new(
            tower_http::add_extension::AddExtension::new(
                router.clone(),
                axum::extract::ConnectInfo(peer),
            ),
        );
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    // Open connections finish their requests (followed logs end with their
    // executions, which the drain stops within the grace).
    let stopped = draining.await.unwrap_or(0);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    tracing::info!(stopped, "gateway stopped");
    Ok(stopped)
}
