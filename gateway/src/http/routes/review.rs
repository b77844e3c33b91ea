//! The provider's review page (output control, [`insitu_runtime::airlock`]):
//! `GET /review` lists the executions whose results are held for review;
//! `?execution=ID` shows one — its checks' report, its text results and
//! logs — with a form to release or reject it; `POST /review/{execution}`
//! records the decision (applied by the server within a second, as an
//! `insitu review` decision is), then redirects back to the page.
//!
//! Who may look and decide: as the dashboard ([`crate::http::admin`]).
//! Decisions are protected against cross-site requests by a token bound to
//! the execution (HMAC under the provider's token key) that only the page
//! carries, and by refusing browsers' cross-site fetches (`Sec-Fetch-Site`).

use crate::error::{ApiError, ApiPath, ApiResult};
use crate::http::admin::{authorize, esc, peer, time};
use crate::http::state::Gateway;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use insitu_runtime::Status;
use insitu_runtime::store::Decision;
use std::fmt::Write;
use std::sync::Arc;

/// The most of one text file the page shows.
const SHOWN: u64 = 64 << 10;

#[derive(serde::Deserialize)]
pub(crate) struct DecideForm {
    /// `release` or `reject`.
    decision: String,
    reviewer: String,
    #[serde(default)]
    reason: String,
    csrf: String,
}

/// `POST /review/{execution}`: a reviewer's decision from the page.
pub(crate) async fn decide(
    State(g): State<Arc<Gateway>>,
    ApiPath(id): ApiPath<String>,
    req: Request,
) -> ApiResult<Response> {
    authorize(&g, peer(&req), req.headers(), None)?;
    let site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if site != "same-origin" && site != "none" {
        return Err(ApiError::Forbidden(format!(
            "a {site} request cannot decide on held results; use the review page of this provider"
        )));
    }
    let id = crate::ids::execution(&id);
    let axum::Form(f) = axum::Form::<DecideForm>::from_request(req, &()).await?;
    if !g.tokens.check_csrf(&format!("review:{id}"), &f.csrf) {
        return Err(ApiError::Forbidden(
            "the form's token is not this provider's for this execution; reload the review page and decide there".into(),
        ));
    }
    let decision = match f.decision.as_str() {
        "release" => Decision::Release,
        "reject" if f.reason.trim().is_empty() => {
            return Err(ApiError::BadRequest(
                "a rejection needs a reason: the consumer sees it".into(),
            ));
        }
        "reject" => Decision::Reject,
        other => {
            return Err(ApiError::BadRequest(format!(
                "decision must be `release` or `reject`, not `{other}`"
            )));
        }
    };
    let reason = Some(f.reason.trim()).filter(|r| !r.is_empty());
    g.store.decide(&id, decision, f.reviewer.trim(), reason)?;
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/review?execution={id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// The page of `GET /review`: the held executions, and one in full.
pub(crate) fn render(g: &Gateway, selected: Option<&str>) -> ApiResult<String> {
    let mut out = String::with_capacity(16 << 10);
    out.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width\"><title>insitu review</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left;max-width:40em;overflow-wrap:anywhere}",
        "pre{background:#f6f6f6;padding:.6em;max-height:20em;overflow:auto}.failed{color:#cf222e}.passed{color:#1a7f37}",
        "form{border:1px solid #ccc;border-radius:6px;padding:.8em;display:inline-block}",
        "</style></head><body><h1>Held results</h1><p><a href=\"/\">dashboard</a></p>",
    ));
    let held = g.store.held_executions()?;
    out.push_str("<table id=\"held\"><tr><th>execution</th><th>held since</th><th>why</th></tr>");
    for e in &held {
        let _ = write!(
            out,
            "<tr data-id=\"{id}\"><td><a href=\"/review?execution={id}\"><code>{id}</code></a></td><td>{}</td><td>{}</td></tr>",
            time(e.updated_at),
            esc(e.reason.as_deref().unwrap_or_default()),
            id = esc(&e.id)
        );
    }
    if held.is_empty() {
        out.push_str("<tr><td colspan=\"3\">nothing is held</td></tr>");
    }
    out.push_str("</table>");
    if let Some(id) = selected {
        execution(g, &crate::ids::execution(id), &mut out)?;
    }
    out.push_str("</body></html>");
    Ok(out)
}

/// One execution: status, report, text results and logs, the form.
fn execution(g: &Gateway, id: &str, out: &mut String) -> ApiResult<()> {
    let e = g.store.execution(id)?;
    let review = g.store.review(id)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "execution {id} has no output checks: its datasets have no output policy"
        ))
    })?;
    let r = &review.report;
    let _ = write!(
        out,
        "<h2>Execution <code>{}</code></h2><p id=\"status\">status <b>{}</b> — {}</p>",
        esc(id),
        e.status.as_str(),
        esc(e.reason.as_deref().unwrap_or_default())
    );
    if let Some(d) = review.decision {
        let _ = write!(
            out,
            "<p id=\"decision\">{} by {} at {}{}{}</p>",
            match d {
                Decision::Release => "released",
                Decision::Reject => "rejected",
            },
            esc(review.reviewer.as_deref().unwrap_or_default()),
            time(review.decided_at.unwrap_or_default()),
            review
                .reason
                .as_deref()
                .map(|r| format!(": {}", esc(r)))
                .unwrap_or_default(),
            if review.applied {
                ""
            } else {
                " (being applied)"
            }
        );
    }
    let _ = write!(
        out,
        "<h3>Output checks: <span class=\"{c}\">{c}</span></h3><p>{} files, {} bytes{}</p>",
        r.files,
        r.bytes,
        r.copied_share
            .map(|s| format!(", {:.2} % copied from the inputs", s * 100.0))
            .unwrap_or_default(),
        c = if r.passed { "passed" } else { "failed" }
    );
    out.push_str(
        "<table id=\"report\"><tr><th>check</th><th>file</th><th>where</th><th>finding</th></tr>",
    );
    for f in &r.findings {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.check),
            esc(&f.file),
            esc(f.location.as_deref().unwrap_or_default()),
            esc(&f.detail)
        );
    }
    if r.findings.is_empty() {
        out.push_str("<tr><td colspan=\"4\">no finding</td></tr>");
    }
    out.push_str("</table>");
    if e.status == Status::Held && review.decision.is_none() {
        let reviewers: String = r
            .policy
            .reviewers
            .iter()
            .map(|n| format!("<option>{}</option>", esc(n)))
            .collect();
        let _ = write!(
            out,
            "<form id=\"decide\" method=\"post\" action=\"/review/{id}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>reviewer <select name=\"reviewer\">{reviewers}</select></label> \
             <label>reason <input name=\"reason\" size=\"40\"></label> \
             <button name=\"decision\" value=\"release\">Release</button> \
             <button name=\"decision\" value=\"reject\">Reject</button></form>",
            g.tokens.csrf(&format!("review:{id}")),
            id = esc(id)
        );
    }
    // What would leave: the results and every stage's logs.
    out.push_str("<h3>Results</h3><div id=\"outputs\">");
    files(&g.pipeline.outputs(id, e.result_stage()), "outputs", out);
    out.push_str("</div><h3>Logs</h3><div id=\"logs\">");
    for s in e.stage_records() {
        files(
            &g.pipeline.logs(id, s.index),
            &format!("stage {}", s.index),
            out,
        );
    }
    out.push_str("</div>");
    Ok(())
}

/// Every file under `dir`: text shown (up to [`SHOWN`] bytes), other files
/// by size.
fn files(dir: &std::path::Path, label: &str, out: &mut String) {
    let Ok(list) = insitu_runtime::airlock::winnow::files_under(dir) else {
        return;
    };
    for f in list {
        let name = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut shown = Vec::new();
        if let Ok(file) = std::fs::File::open(&f) {
            use std::io::Read;
            let _ = file.take(SHOWN).read_to_end(&mut shown);
        }
        match std::str::from_utf8(&shown) {
            Ok(text) => {
                let _ = write!(
                    out,
                    "<p><b>{} / {}</b> ({len} bytes{})</p><pre>{}</pre>",
                    esc(label),
                    esc(&name),
                    if len > SHOWN { ", first 64 KiB" } else { "" },
                    esc(text)
                );
            }
            Err(_) => {
                let _ = write!(
                    out,
                    "<p><b>{} / {}</b> ({len} bytes, not text)</p>",
                    esc(label),
                    esc(&name)
                );
            }
        }
    }
}
