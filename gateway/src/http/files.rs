//! File responses the routes share: the part of a file a request's `Range`
//! asks for ([`Part`], RFC 9110 §14), streaming it read-ahead
//! ([`read_ahead`]) and `Content-Disposition` names.

use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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

/// `attachment;filename=NAME` as Nevermined's node sends it (its SDK parses
/// exactly `attachment;filename=(.+)`): plain names unquoted; names with
/// spaces, quotes, `;` or non-ASCII quoted (RFC 6266), quotes dropped.
pub(crate) fn content_disposition(name: &str) -> String {
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
