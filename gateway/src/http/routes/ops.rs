//! Operations: Prometheus metrics and the OpenAPI document.

use crate::error::ApiResult;
use crate::http::rounds::STEPS;
use crate::http::state::Gateway;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("../../../openapi.json");

/// The OpenAPI 3.1 document of this API.
pub(crate) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Prometheus text format: executions by status, queue depth, active
/// executions, blob fetches, module cache hits, stage durations.
pub(crate) async fn metrics(State(g): State<Arc<Gateway>>) -> ApiResult<Response> {
    let mut out = String::from(
        "# HELP insitu_executions Executions by status.\n# TYPE insitu_executions gauge\n",
    );
    for (status, n) in g.store.count_by_status()? {
        out.push_str(&format!(
            "insitu_executions{{status=\"{}\"}} {n}\n",
            status.as_str()
        ));
    }
    let depth = g.executions.depth();
    out.push_str(&format!(
        "# HELP insitu_queue_depth Executions waiting for a worker.\n# TYPE insitu_queue_depth gauge\ninsitu_queue_depth {depth}\n"
    ));
    out.push_str(&format!(
        "# HELP insitu_blob_fetches_total Blobs fetched from image sources (cache misses).\n# TYPE insitu_blob_fetches_total counter\ninsitu_blob_fetches_total {}\n",
        g.pipeline.puller.store.fetch_count()
    ));
    let c = g.pipeline.sandbox.cache_stats();
    out.push_str("# HELP insitu_modules_prepared_total Modules prepared for a run, by where the compiled code came from (memory and disk are cache hits).\n# TYPE insitu_modules_prepared_total counter\n");
    for (source, n) in [
        ("memory", c.memory),
        ("disk", c.disk),
        ("compiled", c.compiled),
    ] {
        out.push_str(&format!(
            "insitu_modules_prepared_total{{source=\"{source}\"}} {n}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP insitu_executions_active Executions queued or running in this process.\n# TYPE insitu_executions_active gauge\ninsitu_executions_active {}\n",
        g.executions.active()
    ));
    let w = g.store.write_stats();
    for (name, help, n) in [
        (
            "insitu_store_writes_total",
            "State changes, results and used signatures written durably (group commit).",
            w.writes,
        ),
        (
            "insitu_store_commits_total",
            "Database commits, each one fsync of the WAL, shared by the writes of a group.",
            w.commits,
        ),
        (
            "insitu_store_volatile_commits_total",
            "Database commits of intermediate statuses alone, without an fsync (durable with the next commit).",
            w.volatile_commits,
        ),
        (
            "insitu_store_syncs_total",
            "Separate syncfs(2) calls that made published results durable (results on another filesystem than the database's).",
            w.syncs,
        ),
        (
            "insitu_store_commit_syncfs_total",
            "Durable commits whose WAL sync was a syncfs(2) that flushed the group's results with it.",
            w.syncs_with_commit,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}\n"
        ));
    }
    out.push_str("# HELP insitu_fl_steps_total Federated round steps this provider took as a participant.\n# TYPE insitu_fl_steps_total counter\n");
    for (step, n) in STEPS.iter().zip(g.rounds.counts()) {
        out.push_str(&format!("insitu_fl_steps_total{{step=\"{step}\"}} {n}\n"));
    }
    g.executions.stage_seconds().render(
        "insitu_stage_duration_seconds",
        "Stage durations from configuring to the end of running.",
        &mut out,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
