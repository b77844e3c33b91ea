//! A consumer's client for the gateway's HTTP API: signs Nevermined JWT
//! grants with the consumer's key, trades them for access tokens, executes
//! and watches. `insitu demo`, the benchmarks and the chain tests use it; any
//! HTTP client that signs grants the same way works too (see the README).

use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, make_grant};
use insitu_runtime::receipt::ProviderKey;
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what}: {source}")]
    Http {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} refused with {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: Value,
    },
    #[error("signing the grant failed: {0}")]
    Sign(#[from] insitu_runtime::Error),
}

/// A consumer talking to one gateway.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub key: ProviderKey,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Consumer {
    pub fn new(base: impl Into<String>, key: ProviderKey) -> Consumer {
        Consumer {
            http: insitu_runtime::tls::http_client(),
            base: base.into(),
            key,
        }
    }

    async fn json(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ClientError> {
        let http = |source| ClientError::Http { what, source };
        let r = request.send().await.map_err(http)?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.map_err(http)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Refused { what, status, body });
        }
        Ok(body)
    }

    /// Trades a grant with `claims` (signed with personal_sign) for an access token.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn token(&self, claims: &Value) -> Result<String, ClientError> {
        let jwt = make_grant(&self.key, claims)?;
        let body = self
            .json(
                "token",
                self.http
                    .post(format!("{}/api/v1/node/services/oauth/token", self.base))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}")),
            )
            .await?;
        Ok(body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The claims of a grant under `agreement` valid 10 minutes: to execute
    /// `workflow` (audience execute) or, with `execution`, for that execution.
    pub fn claims(&self, agreement: &str, workflow: &str, execution: Option<&str>) -> Value {
        let mut c = json!({"iss": self.key.address(), "sub": agreement, "eths": "personal",
                           "iat": now(), "exp": now() + 600});
        match execution {
            None => {
                c["aud"] = json!(AUD_EXECUTE);
                c["did"] = json!(workflow);
            }
            Some(id) => {
                c["aud"] = json!(AUD_COMPUTE);
                c["execution_id"] = json!(id);
            }
        }
        c
    }

    /// POST execute with an execute `token`; the execution id.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the gateway's answer (429 when its queue is full).
    pub async fn execute(
        &self,
        token: &str,
        agreement: &str,
        workflow: &str,
    ) -> Result<String, ClientError> {
        let body = self.execute_body(token, agreement, workflow).await?;
        Ok(body["workflowId"].as_str().unwrap_or_default().to_string())
    }

    /// [`Consumer::execute`], with the compute token for the new execution
    /// the gateway answers with (`access_token`); a gateway that does not
    /// send one gets a grant signed for it, as [`Consumer::token`] does.
    ///
    /// # Errors
    /// As [`Consumer::execute`] and [`Consumer::token`].
    pub async fn execute_for(
        &self,
        token: &str,
        agreement: &str,
        workflow: &str,
    ) -> Result<(String, String), ClientError> {
        let body = self.execute_body(token, agreement, workflow).await?;
        let id = body["workflowId"].as_str().unwrap_or_default().to_string();
        let compute = match body["access_token"].as_str() {
            Some(t) => t.to_string(),
            None => {
                self.token(&self.claims(agreement, workflow, Some(&id)))
                    .await?
            }
        };
        Ok((id, compute))
    }

    async fn execute_body(
        &self,
        token: &str,
        agreement: &str,
        workflow: &str,
    ) -> Result<Value, ClientError> {
        let body = self
            .json(
                "execute",
                self.http
                    .post(format!(
                        "{}/api/v1/node/services/compute/execute/{agreement}",
                        self.base
                    ))
                    .bearer_auth(token)
                    .json(&json!({"workflowDid": workflow, "consumer": self.key.address()})),
            )
            .await?;
        Ok(body)
    }

    /// GET `path` (under `/api/v1/node/services/compute/`) with a compute `token`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get(&self, token: &str, path: &str) -> Result<Value, ClientError> {
        self.json(
            "compute API",
            self.http
                .get(format!("{}/api/v1/node/services/compute/{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    /// Downloads result file `file` of execution `id`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn download(
        &self,
        token: &str,
        id: &str,
        file: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let http = |source| ClientError::Http {
            what: "download",
            source,
        };
        let r = self
            .http
            .get(format!(
                "{}/api/v1/node/services/compute/results/{id}/{file}",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(http)?;
        let status = r.status().as_u16();
        if status != 200 {
            let body = r.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Refused {
                what: "download",
                status,
                body,
            });
        }
        Ok(r.bytes().await.map_err(http)?.to_vec())
    }
}
