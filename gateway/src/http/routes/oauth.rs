//! `POST /api/v1/node/services/oauth/token`: a Nevermined JWT grant
//! (client assertion) for a short-lived access token.

use crate::auth::verify_grant;
use crate::error::{ApiError, ApiResult};
use crate::http::state::{Gateway, now};
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct TokenForm {
    client_assertion_type: String,
    client_assertion: String,
}

pub(crate) async fn token(
    State(g): State<Arc<Gateway>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> ApiResult<Json<Value>> {
    let Form(f) = form?;
    if f.client_assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return Err(ApiError::BadRequest(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                .into(),
        ));
    }
    let grant = verify_grant(&f.client_assertion, now())?;
    Ok(Json(json!({"access_token": g.tokens.issue(&grant, now())})))
}
