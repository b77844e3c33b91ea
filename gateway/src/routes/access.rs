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

/// Read size of a download: large enough that a 1 GiB file is a few
/// thousand reads.
const CHUNK: usize = 512 << 10;
/// Chunks read ahead of the connection.
const AHEAD: usize = 4;

/// The part of a `len`-byte file a request asks for (its `Range`, else the
/// whole file).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    pub(crate) first: u64,
    pub(crate) count: u64,
    pub(crate) len: u64,
    /// Asked for by a `Range` (answered 206 with `Content-Range`).
    pub(crate) ranged: bool,
}

impl Part {
    /// The part of a `len`-byte file `headers` ask for.
    ///
    /// # Errors
    /// 416 as [`byte_range`].
    pub(crate) fn of(headers: &HeaderMap, len: u64) -> ApiResult<Part> {
        let range = byte_range(headers, len)?;
        let (first, last) = range.unwrap_or((0, len.saturating_sub(1)));
        Ok(Part {
            first,
            count: if len == 0 { 0 } else { last - first + 1 },
            len,
            ranged: range.is_some(),
        })
    }

    /// Whether it reaches the file's end.
    pub(crate) fn ends_file(&self) -> bool {
        self.first + self.count == self.len
    }

    /// The response sending it as `body`: octet-stream, its length,
    /// `Accept-Ranges: bytes`, and for a range 206 with `Content-Range`.
    pub(crate) fn response(&self, body: Body) -> Response {
        let mut response = (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::CONTENT_LENGTH, HeaderValue::from(self.count)),
                (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            ],
            body,
        )
            .into_response();
        if self.ranged {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let last = (self.first + self.count).saturating_sub(1);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{last}/{}", self.first, self.len))
                    .expect("ASCII"),
            );
        }
        response
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
    let agreement = crate::ids::agreement(&agreement);
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
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await
        .map_err(|e| ApiError::Runtime(insitu_runtime::Error::Engine(e.to_string())))?
    };
    let (file, len) = opened.map_err(read_err)?;
    let part = Part::of(&headers, len)?;
    let (first, count) = (part.first, part.count);
    let id = g.store.start_download(&access, index, &name)?;
    tracing::info!(agreement = %agreement, consumer = %grant.consumer, dataset = %access.dataset, file = %name, first, count, "download");
    let stream = Recorded {
        inner: read_ahead(file, first, count),
        store: g.store.clone(),
        id,
        sent: 0,
        want: count,
        ends_file: part.ends_file(),
    };
    let base = name.rsplit('/').next().unwrap_or(&name);
    let mut response = part.response(Body::from_stream(stream));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(base)) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `attachment;filename=NAME` as Nevermined's node sends it (its SDK parses
/// exactly `attachment;filename=(.+)`): plain names unquoted; names with
/// spaces, quotes, `;` or non-ASCII quoted (RFC 6266), quotes dropped.
fn content_disposition(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b';' | b'\\' | b','));
    if plain {
        format!("attachment;filename={name}")
    } else {
        let name: String = name
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        format!("attachment;filename=\"{name}\"")
    }
}

/// The bytes `first..first + count` of `file`, read by one blocking task
/// [`AHEAD`] chunks ahead of the connection (one thread for the whole
/// download instead of a hop to the blocking pool per read).
pub(crate) fn read_ahead(
    file: std::fs::File,
    first: u64,
    count: u64,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Unpin + use<> {
    let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut file = file;
        let mut left = count;
        if let Err(e) = file.seek(std::io::SeekFrom::Start(first)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        while left > 0 {
            let want = left.min(CHUNK as u64);
            // read_to_end fills spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want as usize);
            let chunk = match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was downloaded",
                )),
                Ok(n) => {
                    left -= n as u64;
                    Ok(axum::body::Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // The client went away: stop reading.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    tokio_stream_lite::Receiver(rx)
}

/// A channel's receiving end as a [`Stream`].
mod tokio_stream_lite {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct Receiver<T>(pub(super) tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for Receiver<T> {
        type Item = T;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
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
