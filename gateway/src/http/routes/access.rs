//! Data sharing: `GET /api/v1/node/services/access/{agreementId}/{index}`,
//! Nevermined's node route for downloading file `index` of a dataset under
//! an access agreement, with an access token from a grant whose `aud` is
//! [`AUD_ACCESS`] and whose `did` is the dataset. Resumable with one
//! `Range: bytes=A-[B]` (206); every download is recorded with the bytes
//! it sent ([`insitu_runtime::store::Store::downloads`], `insitu downloads
//! list`).

use crate::auth::AUD_ACCESS;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::http::extract::bearer;
use crate::http::files::{Part, content_disposition, read_ahead};
use crate::http::state::{Gateway, now};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::Stream;
use insitu_runtime::store::Store;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
