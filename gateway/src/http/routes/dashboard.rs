//! The provider's dashboard: `GET /` (server-rendered HTML, charts as
//! inline SVG, no external assets: providers run air-gapped) and
//! `GET /dashboard/logs/{id}` (an execution's live logs as server-sent
//! events, read by the page's few lines of script).
//!
//! Who may look: see [`crate::http::admin`].

use crate::error::{ApiPath, ApiResult};
use crate::http::admin::{authorize, esc, peer, time};
use crate::http::logs;
use crate::http::state::{Gateway, now};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use insitu_runtime::store::{Execution, Search};
use std::fmt::Write;
use std::sync::Arc;

/// A bar chart as inline SVG: one bar per value, labelled below.
fn bars(id: &str, title: &str, values: &[(String, f64)], unit: &str) -> String {
    let (w, h, pad) = (640.0, 160.0, 24.0);
    let max = values.iter().map(|v| v.1).fold(0.0f64, f64::max).max(1e-9);
    let step = (w - 2.0 * pad) / values.len().max(1) as f64;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg id=\"{id}\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\">",
        esc(title),
        esc(title),
        h + 20.0,
        h + 20.0
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{}\" y2=\"{h}\" stroke=\"#888\"/>",
        w - pad
    );
    for (i, (label, v)) in values.iter().enumerate() {
        let bh = (v / max) * (h - pad);
        let x = pad + i as f64 * step;
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#3b7dd8\"><title>{}: {v:.3} {unit}</title></rect>",
            h - bh,
            (step * 0.8).max(1.0),
            esc(label)
        );
        if values.len() <= 12 || i % (values.len() / 12).max(1) == 0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\">{}</text>",
                h + 14.0,
                esc(label)
            );
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `GET /dashboard/logs/{id}`: an execution's logs as server-sent events
/// (the same stream as the consumer's `logs?follow=true`).
pub(crate) async fn logs(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    req: Request,
) -> ApiResult<Response> {
    authorize(&g, peer(&req), req.headers(), None)?;
    let id = crate::ids::execution(&id);
    g.store.execution(&id)?;
    Ok(logs::follow(g, id).into_response())
}

/// The page of `GET /`: the dashboard.
pub(crate) fn render(g: &Gateway, selected: Option<&str>) -> ApiResult<String> {
    let now_ms = now() * 1000;
    let hour = g
        .store
        .execution_times(now_ms.saturating_sub(3_600_000), 1_000_000)?;
    let counts = g.store.count_by_status()?;
    let depth = g.executions.depth();
    let active = g.executions.active();
    let mut out = String::with_capacity(64 << 10);
    out.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width\"><title>insitu provider</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left;max-width:30em;overflow-wrap:anywhere}",
        "code{font-size:12px}.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;padding:.5em 1em}",
        ".succeeded{color:#1a7f37}.failed{color:#cf222e}.stopped{color:#9a6700}th,td.succeeded,td.failed,td.stopped{white-space:nowrap;overflow-wrap:normal}",
        "pre#log{background:#111;color:#ddd;padding:1em;max-height:24em;overflow:auto}figure{margin:0 0 1em}",
        "</style>"
    ));
    if selected.is_none() {
        // Fresh numbers without script: the page reloads itself.
        out.push_str("<meta http-equiv=\"refresh\" content=\"5\">");
    }
    out.push_str("</head><body>");
    let _ = write!(
        out,
        "<h1>insitu provider <code>{}</code></h1><p><a id=\"review\" href=\"/review\">results held for review: {}</a></p><div class=\"cards\">",
        esc(&g.provider),
        counts
            .iter()
            .find(|(s, _)| *s == insitu_runtime::Status::Held)
            .map_or(0, |(_, n)| *n)
    );
    for (status, n) in &counts {
        let _ = write!(
            out,
            "<div class=\"card {0}\" data-status=\"{0}\"><b>{n}</b> {0}</div>",
            status.as_str()
        );
    }
    let _ = write!(
        out,
        "<div class=\"card\" id=\"queue\"><b>{depth}</b> queued</div><div class=\"card\"><b>{active}</b> active</div></div>"
    );
    // Charts: executions started per minute; latency percentiles.
    let mut per_minute = vec![0.0; 60];
    for (created, _, _) in &hour {
        let age = now_ms.saturating_sub(*created) / 60_000;
        if age < 60 {
            per_minute[59 - age as usize] += 1.0;
        }
    }
    let minutes: Vec<(String, f64)> = per_minute
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("-{}m", 59 - i), *n))
        .collect();
    out.push_str(&bars(
        "per-minute",
        "Executions started per minute, last hour",
        &minutes,
        "executions",
    ));
    let mut took: Vec<f64> = hour
        .iter()
        .filter(|(_, _, status)| status.is_terminal())
        .map(|(created, updated, _)| updated.saturating_sub(*created) as f64 / 1e3)
        .collect();
    took.sort_by(f64::total_cmp);
    let pcts: Vec<(String, f64)> = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
        .iter()
        .map(|(l, p)| (l.to_string(), percentile(&took, *p)))
        .collect();
    out.push_str(&bars(
        "latency",
        &format!(
            "Execution latency (s), {} finished in the last hour",
            took.len()
        ),
        &pcts,
        "s",
    ));
    // Queue depth: the largest sample of each minute of the last hour.
    let mut depth_per_minute = vec![0.0f64; 60];
    for (at, d) in insitu_runtime::sync::lock(&g.depth_samples).iter() {
        let age = now_ms.saturating_sub(*at) / 60_000;
        if age < 60 {
            let slot = &mut depth_per_minute[59 - age as usize];
            *slot = slot.max(*d as f64);
        }
    }
    let depths: Vec<(String, f64)> = depth_per_minute
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("-{}m", 59 - i), *n))
        .collect();
    out.push_str(&bars(
        "queue-depth",
        "Queue depth (largest per minute), last hour",
        &depths,
        "queued",
    ));
    // Executions, newest first.
    out.push_str("<h2>Executions</h2><table id=\"executions\"><tr><th>id</th><th>status</th><th>consumer</th><th>workflow</th><th>created (UTC)</th><th>took</th><th>stages</th></tr>");
    let recent = g.store.executions_since(0, 100)?;
    for e in recent.iter().rev() {
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><a href=\"/?execution={id}\"><code>{id}</code></a></td><td class=\"{st}\">{st}{reason}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.consumer),
            esc(e.workflow.as_str()),
            time(e.created_at),
            if e.status.is_terminal() {
                format!(
                    "{:.2} s",
                    e.updated_at.saturating_sub(e.created_at) as f64 / 1e3
                )
            } else {
                String::new()
            },
            stage_timings(e),
            id = esc(&e.id),
            st = e.status.as_str(),
            reason = e
                .reason
                .as_deref()
                .map(|r| format!(": {}", esc(r)))
                .unwrap_or_default(),
        );
    }
    out.push_str("</table>");
    if let Some(id) = selected {
        let e = g.store.execution(id)?;
        let _ = write!(
            out,
            "<h2>Execution <code>{}</code></h2><p>{} — {}</p><pre id=\"log\" data-id=\"{}\"></pre>",
            esc(&e.id),
            e.status.as_str(),
            stage_timings(&e),
            esc(&e.id)
        );
        // The live logs: EventSource on the admin stream (the cookie or
        // loopback authorises it), appended as text, never as HTML.
        out.push_str(concat!(
            "<script>const pre=document.getElementById('log');",
            "const es=new EventSource('/dashboard/logs/'+encodeURIComponent(pre.dataset.id));",
            "es.addEventListener('log',m=>{pre.textContent+=JSON.parse(m.data).content;pre.scrollTop=pre.scrollHeight;});",
            "es.addEventListener('progress',m=>{const p=JSON.parse(m.data);document.title=Math.round(p.fraction*100)+'% insitu';});",
            "es.addEventListener('end',m=>{pre.dataset.end=JSON.parse(m.data).status;es.close();});</script>"
        ));
    }
    // The catalog.
    for (kind, title) in [
        ("dataset", "Datasets"),
        ("workflow", "Workflows"),
        ("algorithm", "Algorithms"),
    ] {
        let (ddos, total) = g.store.search(&Search {
            kind: Some(kind.into()),
            page_size: 100,
            page: 1,
            ..Search::default()
        })?;
        let _ = write!(
            out,
            "<h2>{title} ({total})</h2><table id=\"{kind}s\"><tr><th>name</th><th>DID</th><th>services</th></tr>"
        );
        for d in &ddos {
            let services: Vec<&str> = d["service"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["type"].as_str())
                .collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(d["service"][0]["attributes"]["main"]["name"]
                    .as_str()
                    .unwrap_or_default()),
                esc(d["id"].as_str().unwrap_or_default()),
                esc(&services.join(", "))
            );
        }
        out.push_str("</table>");
    }
    out.push_str("<h2>Agreements</h2><table id=\"agreements\"><tr><th>id</th><th>consumer</th><th>dataset</th><th>workflow</th><th>expires (UTC)</th></tr>");
    for a in g.store.agreements(100)? {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&a.id),
            esc(&a.consumer),
            esc(a.dataset.as_str()),
            esc(a.workflow.as_str()),
            if a.expires_at >= i64::MAX as u64 {
                "on-chain".to_string()
            } else {
                time(a.expires_at * 1000)
            }
        );
    }
    out.push_str("</table>");
    out.push_str("</body></html>");
    Ok(out)
}

/// "stage 0 succeeded 0.12 s, stage 1 …" from the stage records.
fn stage_timings(e: &Execution) -> String {
    let parts: Vec<String> = e
        .stage_records()
        .iter()
        .map(|s| {
            let took = s.seconds().map_or(String::new(), |t| format!(" {t:.2} s"));
            let status = s.status.map_or("?", |s| s.as_str());
            format!("stage {} {}{took}", s.index, esc(status))
        })
        .collect();
    parts.join(", ")
}
