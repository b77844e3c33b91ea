//! Who may use the provider's pages (the dashboard, the review page): a
//! client on a loopback address, or anyone with an admin token (`insitu
//! admin token`, audience [`AUD_ADMIN`]) as a bearer, or once as `?token=`,
//! which sets an HttpOnly, SameSite=Strict cookie. Off with `dashboard =
//! false` (404). Also the HTML escaping and the page headers they share.

use crate::auth::AUD_ADMIN;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::bearer;
use crate::http::state::{Gateway, now};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The admin token's cookie.
pub(crate) const COOKIE: &str = "insitu_admin";

/// The client's address (set by the server for every connection).
pub(crate) fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Checks who is asking; returns the token to set as a cookie, if one came
/// in the query.
///
/// # Errors
/// 404 when the pages are off; 401 for a stranger; 401/403 for a bad token.
pub(crate) fn authorize(
    g: &Gateway,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> ApiResult<Option<String>> {
    if !g.dashboard {
        return Err(ApiError::NotFound(
            "the dashboard is off on this provider (dashboard = false)".into(),
        ));
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        });
    let bearer = bearer(headers).ok().map(str::to_string);
    let offered = query_token.map(str::to_string).or(bearer).or(cookie);
    if let Some(t) = &offered {
        g.tokens.check(t, AUD_ADMIN, now())?;
        return Ok(query_token.map(str::to_string));
    }
    if peer.is_some_and(|p| p.ip().is_loopback()) {
        return Ok(None);
    }
    Err(ApiError::Unauthorized(
        "the dashboard is served to loopback clients, or with an admin token: run insitu admin token --data-dir DIR on the provider and open /?token=TOKEN".into(),
    ))
}

/// The query of the provider's pages: an admin token (set as a cookie),
/// and the execution to show.
#[derive(serde::Deserialize)]
pub(crate) struct PageQuery {
    pub(crate) token: Option<String>,
    pub(crate) execution: Option<String>,
}

/// A provider's page for `req` (`GET`, with [`PageQuery`]): who asks is
/// checked ([`authorize`]), then `render` (given the execution to show)
/// runs off the async threads.
///
/// # Errors
/// As [`authorize`] and `render`.
pub(crate) async fn serve_page(
    g: Arc<Gateway>,
    q: PageQuery,
    req: Request,
    render: fn(&Gateway, Option<&str>) -> ApiResult<String>,
) -> ApiResult<Response> {
    let set_cookie = authorize(&g, peer(&req), req.headers(), q.token.as_deref())?;
    let execution = q.execution;
    let html = tokio::task::spawn_blocking(move || render(&g, execution.as_deref()))
        .await
        .map_err(|e| ApiError::Runtime(insitu_runtime::Error::Engine(e.to_string())))??;
    Ok(page(html, set_cookie))
}

/// `html` as a page: no caching, a strict content security policy, and the
/// admin cookie when a token came in the query.
pub(crate) fn page(html: String, set_cookie: Option<String>) -> Response {
    let mut response = Html(html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(t) = set_cookie
        && let Ok(v) =
            HeaderValue::from_str(&format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"))
    {
        h.insert(header::SET_COOKIE, v);
    }
    response
}

/// `s` safe in HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn time(ms: u64) -> String {
    insitu_runtime::store::rfc3339(ms / 1000)
        .trim_end_matches('Z')
        .replace('T', " ")
}
