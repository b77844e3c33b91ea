//! Data sharing: `GET /api/v1/node/services/access/{agreementId}/{index}`,
//! Nevermined's node route for downloading file `index` of a dataset under
//! an access agreement, with an access token from a grant whose `aud` is
//! [`AUD_ACCESS`] and whose `did` is the dataset. Resumable with one
//! `Range: bytes=A-[B]` (206); every download is recorded with the bytes
//! it sent ([`insitu_runtime::store::Store::downloads`], `insitu downloads
//! list`).

use crate::auth::AUD_ACCESS;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::routes::bearer;
use crate::server::{Gateway, now};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use insitu_runtime::store::Store;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncSeekExt;

/// Read size of a download: large enough that a 1 GiB file is a few
/// thousand reads.
const CHUNK: usize = 256 << 10;

/// An agreement id as `0x` + lowercase hex, however the client spelled it.
fn agreement_id(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    if lower.starts_with("0x") {
        lower
    } else {
        format!("0x{lower}")
    }
}

/// A single byte range `bytes=A-B` / `bytes=A-` / `bytes=-N` of a `len`-byte
/// file as (first, last) inclusive. `Ok(None)` for no header, and — as RFC
/// 9110 §14.2 lets a server do — for one it ignores: malformed, another
/// unit, or several ranges; those are answered with the whole file.
///
/// # Errors
/// 416 for a well-formed range that does not fit the file.
fn byte_range(headers: &HeaderMap, len: u64) -> ApiResult<Option<(u64, u64)>> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let unsatisfiable = || {
        Err(ApiError::Body(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "the range bytes={spec} does not fit the file's {len} bytes; ask for bytes=A-B with A <= B < {len}"
            ),
        ))
    };
    match (number(a), number(b)) {
        (None, Some(n)) if a.is_empty() => {
            if n == 0 || len == 0 {
                return unsatisfiable();
            }
            Ok(Some((len.saturating_sub(n), len - 1)))
        }
        (Some(first), last) if b.is_empty() || last.is_some() => {
            let last = last.unwrap_or(u64::MAX).min(len.saturating_sub(1));
            if first >= len || first > last {
                return unsatisfiable();
            }
            Ok(Some((first, last)))
        }
        _ => Ok(None),
    }
}

pub(crate) async fn download(
    State(g): State<Arc<Gateway>>,
    ApiPath((agreement, index)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let grant = g.tokens.check(bearer(&headers)?, AUD_ACCESS, now())?;
    let agreement = agreement_id(&agreement);
    if grant.agreement != agreement {
        return Err(ApiError::Forbidden(format!(
            "the token is for agreement {}, not {agreement}",
            grant.agreement
        )));
    }
    let index: u64 = index.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "file index `{index}` is not a number; the dataset's DDO lists its files with their index"
        ))
    })?;
    let dataset = grant.did.as_deref().unwrap_or_default();
    let access = g
        .permissions
        .check_access(&agreement, &grant.consumer, dataset, now())
        .await?;
    let (path, name) = g.store.dataset_file(&access.dataset, index)?;
    // O_NOFOLLOW: a file replaced by a link since it was checked is refused.
    let read_err = |err| insitu_runtime::Error::Io {
        action: "read dataset file",
        path: path.clone(),
        source: err,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .await
        .map_err(read_err)?;
    let len = file.metadata().await.map_err(read_err)?.len();
    let range = byte_range(&headers, len)?;
    let (first, last) = range.unwrap_or((0, len.saturating_sub(1)));
    let count = if len == 0 { 0 } else { last - first + 1 };
    if first > 0 {
        file.seek(std::io::SeekFrom::Start(first))
            .await
            .map_err(read_err)?;
    }
    let id = g.store.start_download(&access, index, &name)?;
    tracing::info!(agreement = %agreement, consumer = %grant.consumer, dataset = %access.dataset, file = %name, first, count, "download");
    let stream = Recorded {
        inner: tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(file, count),
            CHUNK,
        ),
        store: g.store.clone(),
        id,
        sent: 0,
        want: count,
        ends_file: first + count == len,
    };
    let base = name.rsplit('/').next().unwrap_or(&name).replace('"', "");
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(count)),
            (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{base}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")).expect("ASCII"),
        );
    }
    Ok(response)
}

/// A download's body: counts what it sends and records it in the store
/// when it ends, completely or cut short (the client went away).
struct Recorded<S> {
    inner: S,
    store: Arc<Store>,
    id: i64,
    sent: u64,
    want: u64,
    /// The range reaches the end of the file.
    ends_file: bool,
}

impl<S> Stream for Recorded<S>
where
    S: Stream<Item = std::io::Result<axum::body::Bytes>> + Unpin,
{
    type Item = std::io::Result<axum::body::Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            self.sent += chunk.len() as u64;
        }
        next
    }
}

impl<S> Drop for Recorded<S> {
    fn drop(&mut self) {
        let complete = self.sent == self.want && self.ends_file;
        if let Err(e) = self.store.finish_download(self.id, self.sent, complete) {
            tracing::warn!(download = self.id, error = %e, "cannot record the end of a download");
        }
    }
}
