//! The metadata API: `GET /api/v1/metadata/assets/ddo/{did}` resolves a DDO;
//! `GET|POST /api/v1/metadata/assets/ddo/query` searches the catalog
//! (Nevermined's query shape: `text`, `query` filters, `sort`, `offset` =
//! page size, `page`) → `{results, page, total_pages, total_results}`;
//! `POST /api/v1/metadata/assets/ddo` publishes a consumer's own workflow or
//! algorithm (the spec: the CONSUMER defines the workflow as a new asset),
//! owned by them, with an access token from a grant for [`AUD_PUBLISH`].
//!
//! Datasets and workflows are public. A result's DDO is whole only for its
//! owner (a bearer access token of the consumer who owns it); anyone else
//! sees its provenance — which execution, agreement, workflow, datasets,
//! images and modules, and how each stage ended — but no file names, sizes
//! or digests of its outputs or logs, nor its stages' arguments: a stranger
//! could otherwise confirm a guess of a small output by its sha256.

use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, AUD_PUBLISH};
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult, integral_json};
use crate::http::extract::bearer;
use crate::http::state::{Gateway, now};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use insitu_runtime::store::AssetKind;
use insitu_runtime::store::{Search, Sort};
use insitu_runtime::workflow::Did;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The fields of a stage's provenance record anyone may see.
const PUBLIC_STAGE_FIELDS: [&str; 10] = [
    "index",
    "image",
    "image_digest",
    "module_digest",
    "backend",
    "status",
    "outcome",
    "exit_code",
    "started_at",
    "finished_at",
];

pub(crate) async fn ddo(
    State(g): State<Arc<Gateway>>,
    ApiPath(did): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let did = Did::parse(&crate::ids::did(&did)).map_err(ApiError::NotFound)?;
    let (kind, mut ddo) = g.store.ddo(&did)?;
    if kind == AssetKind::Result {
        let main = ddo.pointer_mut("/service/0/attributes/main");
        if let Some(main) = main
            && !is_owner(&g, &headers, main["owner"].as_str().unwrap_or(""))
        {
            public_result(main);
        }
    }
    services(&g, &headers).decorate(&mut ddo);
    Ok(Json(ddo))
}

/// [`Gateway::services`] with the base URL this request reached (`Host`)
/// unless `public_url` is configured.
pub(crate) fn services(g: &Gateway, headers: &HeaderMap) -> crate::ddo::Services {
    let mut s = g.services.clone();
    if s.base.is_empty() {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        s.base = format!("http://{host}");
    }
    s
}

/// Publishes the body — a workflow (its metadata `{"main": …}` or a DDO
/// holding it, validated as `insitu workflow add` does) or an algorithm
/// (`main.algorithm.container {image, tag, checksum}`) — as an asset owned by
/// the token's consumer; answers 201 with its DDO. The consumer may execute
/// an own workflow under any of their agreements covering the datasets it
/// reads.
pub(crate) async fn publish(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let grant = g.tokens.check(bearer(&headers)?, AUD_PUBLISH, now())?;
    let Json(doc) = body?;
    if !doc.is_object() {
        return Err(ApiError::Unprocessable(
            "the body must be an object: a workflow's {\"main\": …} or a DDO holding it".into(),
        ));
    }
    let main = doc.get("main").cloned().or_else(|| {
        doc.get("service")?.as_array()?.iter().find_map(|s| {
            s.pointer("/attributes/main")
                .filter(|m| m.get("type").is_some())
                .cloned()
        })
    });
    let main = main.unwrap_or(Value::Null);
    let did = match main.get("type").and_then(Value::as_str) {
        Some("workflow") => g.store.add_workflow_as(&doc, Some(&grant.consumer))?,
        Some("algorithm") => {
            let c = &main["algorithm"]["container"];
            let field = |k: &str| {
                c.get(k).and_then(Value::as_str).ok_or_else(|| {
                    ApiError::Unprocessable(format!(
                        "main.algorithm.container.{k} is missing: an algorithm names its image, tag and checksum (sha256:…)"
                    ))
                })
            };
            let (image, tag, checksum) = (field("image")?, field("tag")?, field("checksum")?);
            let name = main["name"].as_str().unwrap_or(image);
            let reference = if tag.is_empty() {
                format!("{image}@{checksum}")
            } else {
                format!("{image}:{tag}@{checksum}")
            };
            g.store
                .add_algorithm_as(name, &reference, Some(&grant.consumer))?
        }
        other => {
            return Err(ApiError::Unprocessable(format!(
                "main.type is {}; a consumer publishes a `workflow` or an `algorithm` (datasets are registered by their provider)",
                other.map_or_else(|| "missing".to_string(), |t| format!("`{t}`"))
            )));
        }
    };
    tracing::info!(did = %did, owner = %grant.consumer, "asset published by a consumer");
    let (_, mut ddo) = g.store.ddo(&did)?;
    services(&g, &headers).decorate(&mut ddo);
    Ok((StatusCode::CREATED, Json(ddo)))
}

/// Whether the request carries a valid access token of `owner`.
fn is_owner(g: &Gateway, headers: &HeaderMap, owner: &str) -> bool {
    let Ok(t) = bearer(headers) else {
        return false;
    };
    g.tokens
        .check(t, AUD_COMPUTE, now())
        .or_else(|_| g.tokens.check(t, AUD_EXECUTE, now()))
        .is_ok_and(|grant| grant.consumer.eq_ignore_ascii_case(owner))
}

/// A result's `main` attributes as a stranger sees them: provenance only.
fn public_result(main: &mut Value) {
    let Some(m) = main.as_object_mut() else {
        return;
    };
    m.remove("files");
    m.remove("skipped");
    if let Some(stages) = m
        .get_mut("provenance")
        .and_then(|p| p.get_mut("stages"))
        .and_then(Value::as_array_mut)
    {
        for stage in stages.iter_mut() {
            let public: Map<String, Value> = PUBLIC_STAGE_FIELDS
                .iter()
                .filter_map(|k| stage.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            *stage = Value::Object(public);
        }
    }
}

/// `GET …/ddo/query?text=&offset=&page=`: `offset` is the page size
/// (Nevermined's name), `page` is 1-based.
#[derive(serde::Deserialize)]
pub(crate) struct QueryParams {
    #[serde(default)]
    text: String,
    offset: Option<usize>,
    page: Option<usize>,
}

/// `POST …/ddo/query`: Nevermined's query body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryBody {
    #[serde(default)]
    text: String,
    #[serde(default)]
    query: Filters,
    /// `{"created": "asc"|"desc"}` or `{"name": "asc"}`; default relevance.
    #[serde(default)]
    sort: Option<Map<String, Value>>,
    offset: Option<usize>,
    page: Option<usize>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Filters {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    owner: Option<String>,
    price: Option<PriceRange>,
    /// Only assets offering this service (`compute` or `access`).
    service: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceRange {
    min: Option<f64>,
    max: Option<f64>,
}

/// Results per page when the query does not say.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Longest search text.
const MAX_TEXT: usize = 1000;

pub(crate) async fn query_get(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<QueryParams>,
) -> ApiResult<Json<Value>> {
    search(
        &g,
        &headers,
        QueryBody {
            text: q.text,
            query: Filters::default(),
            sort: None,
            offset: q.offset,
            page: q.page,
        },
    )
}

pub(crate) async fn query_post(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    // serde takes a struct from an array too; the API's objects are objects.
    let object = |v: Option<&Value>, what: &str| match v {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::Body(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} must be an object"),
        )),
    };
    if let Ok(Json(v)) = &body {
        object(Some(v), "the body")?;
        object(v.get("query"), "query")?;
        object(v.get("query").and_then(|q| q.get("price")), "query.price")?;
    }
    let body: QueryBody = integral_json(body)?;
    search(&g, &headers, body)
}

/// The consumer of a valid bearer access token, if any.
fn viewer(g: &Gateway, headers: &HeaderMap) -> Option<String> {
    let t = bearer(headers).ok()?;
    g.tokens
        .check(t, AUD_COMPUTE, now())
        .or_else(|_| g.tokens.check(t, AUD_EXECUTE, now()))
        .ok()
        .map(|grant| grant.consumer)
}

fn search(g: &Gateway, headers: &HeaderMap, q: QueryBody) -> ApiResult<Json<Value>> {
    let size = q.offset.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=Search::MAX_PAGE_SIZE).contains(&size) {
        return Err(ApiError::BadRequest(format!(
            "offset (results per page) must be between 1 and {}, not {size}",
            Search::MAX_PAGE_SIZE
        )));
    }
    let page = q.page.unwrap_or(1);
    if page == 0 || page > 1_000_000 {
        return Err(ApiError::BadRequest(format!(
            "page must be between 1 and 1000000, not {page}"
        )));
    }
    if q.text.len() > MAX_TEXT {
        return Err(ApiError::BadRequest(format!(
            "text is {} bytes; at most {MAX_TEXT}",
            q.text.len()
        )));
    }
    if let Some(k) = &q.query.kind
        && !["dataset", "workflow", "algorithm", "result"].contains(&k.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "query.type `{k}` is not one of dataset, workflow, algorithm, result"
        )));
    }
    let sort = match &q.sort {
        None => Sort::Relevance,
        Some(m) => {
            let one = (m.len() == 1).then(|| m.iter().next()).flatten();
            match one.map(|(k, v)| (k.as_str(), v.as_str())) {
                Some(("created", Some("desc"))) => Sort::Newest,
                Some(("created", Some("asc"))) => Sort::Oldest,
                Some(("name", Some("asc"))) => Sort::Name,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "sort {} is not one of {{\"created\": \"asc\"|\"desc\"}}, {{\"name\": \"asc\"}}",
                        Value::Object(m.clone())
                    )));
                }
            }
        }
    };
    if let Some(k) = &q.query.service
        && !["compute", "access"].contains(&k.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "query.service `{k}` is not one of compute, access"
        )));
    }
    let (mut results, total) = g.store.search(&Search {
        text: q.text,
        kind: q.query.kind,
        tags: q.query.tags,
        owner: q.query.owner,
        service: q.query.service,
        price_min: q.query.price.as_ref().and_then(|p| p.min),
        price_max: q.query.price.as_ref().and_then(|p| p.max),
        sort,
        viewer: viewer(g, headers),
        page_size: size,
        page,
    })?;
    let services = services(g, headers);
    for r in &mut results {
        services.decorate(r);
    }
    Ok(Json(serde_json::json!({
        "results": results,
        "page": page,
        "total_pages": total.div_ceil(size as u64),
        "total_results": total,
    })))
}
