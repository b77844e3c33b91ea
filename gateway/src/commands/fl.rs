//! `insitu fl run`: the coordinator of a federated job
//! ([`insitu_federated::coordinator`]) over the participants' gateways, and
//! the publication of the final model at one of them.
//!
//! Prints one JSON line per completed round (`round`, `participants`,
//! `dropped` with reasons, `seconds`, `model` digest) and a final line with
//! the model's path and digest and the published result (`did`,
//! `gateway`, `workflowId`). Exit 0 iff the job completed; 1 when a round
//! aborted (run the same command again to resume after the last completed
//! round); 2 for a bad plan, key or directory.

use crate::auth::AUD_EXECUTE;
use crate::client::Consumer;
use insitu_federated::coordinator::{Coordinator, FlError, Peer, Plan, PlanParticipant, RoundCall};
use insitu_federated::wire::{
    MaskRequest, SealedMsg, ShareRequest, ShareResponse, Started, UnmaskRequest, UnmaskResponse,
};
use insitu_runtime::receipt::ProviderKey;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A participant's gateway, reached with the consumer's execute token for
/// its agreement and workflow.
pub struct HttpPeer {
    consumer: Consumer,
    participant: PlanParticipant,
    /// The access token and when to renew it.
    token: Mutex<Option<(String, Instant)>>,
}

impl HttpPeer {
    /// The peer for `participant`, signing grants with `key`.
    pub fn new(http: reqwest::Client, participant: &PlanParticipant, key: ProviderKey) -> HttpPeer {
        let mut consumer = Consumer::new(participant.gateway.trim_end_matches('/'), key);
        consumer.http = http;
        HttpPeer {
            consumer,
            participant: participant.clone(),
            token: Mutex::new(None),
        }
    }

    /// An execute token (reused for 50 of its 60 minutes).
    async fn token(&self) -> Result<String, String> {
        if let Some((t, at)) = insitu_runtime::sync::lock(&self.token).clone()
            && at.elapsed() < Duration::from_secs(3000)
        {
            return Ok(t);
        }
        let claims = self.consumer.claims(
            &self.participant.agreement,
            &self.participant.workflow,
            None,
        );
        debug_assert_eq!(claims["aud"], AUD_EXECUTE);
        let t = self
            .consumer
            .token(&claims)
            .await
            .map_err(|e| e.to_string())?;
        *insitu_runtime::sync::lock(&self.token) = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    fn url(&self, at: &RoundCall, step: &str) -> String {
        format!(
            "{}/api/v1/node/services/fl/{}/{}/{step}",
            self.consumer.base, at.job, at.round
        )
    }

    /// Sends `request`; the response if 2xx, else the gateway's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let r = request
            .bearer_auth(self.token().await?)
            .send()
            .await
            .map_err(|e| format!("{} unreachable: {e}", self.consumer.base))?;
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Err(format!(
            "HTTP {}: {}",
            status.as_u16(),
            body["message"].as_str().unwrap_or("(no message)")
        ))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, String> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| format!("a malformed answer: {e}"))
    }

    /// Publishes the final model as a result asset owned by the consumer.
    ///
    /// # Errors
    /// The gateway's refusal or an unreachable gateway.
    pub async fn publish(&self, job: &str, body: &Value) -> Result<Value, String> {
        self.json(
            self.consumer
                .http
                .post(format!(
                    "{}/api/v1/node/services/fl/{job}/publish",
                    self.consumer.base
                ))
                .json(body),
        )
        .await
    }
}

impl Peer for HttpPeer {
    async fn start(&self, at: &RoundCall, id: u32, model: &[u8]) -> Result<Started, String> {
        self.json(
            self.consumer
                .http
                .post(self.url(at, "start"))
                .query(&[
                    ("participant", id.to_string()),
                    ("threshold", at.threshold.to_string()),
                    ("parameters", at.parameters.to_string()),
                    ("attempt", at.attempt.clone()),
                ])
                .header("content-type", "application/octet-stream")
                .body(model.to_vec()),
        )
        .await
    }

    async fn share(&self, at: &RoundCall, body: &ShareRequest) -> Result<Vec<SealedMsg>, String> {
        let r: ShareResponse = self
            .json(self.consumer.http.post(self.url(at, "share")).json(body))
            .await?;
        Ok(r.sealed)
    }

    async fn masked(&self, at: &RoundCall, body: &MaskRequest) -> Result<Vec<u8>, String> {
        loop {
            let r = self
                .send(self.consumer.http.post(self.url(at, "masked")).json(body))
                .await?;
            // 202: still training; ask again (the gateway waits a while each time).
            if r.status() == reqwest::StatusCode::ACCEPTED {
                continue;
            }
            return r
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| format!("reading the masked update: {e}"));
        }
    }

    async fn unmask(&self, at: &RoundCall, body: &UnmaskRequest) -> Result<UnmaskResponse, String> {
        self.json(self.consumer.http.post(self.url(at, "unmask")).json(body))
            .await
    }
}

/// `insitu fl`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum FlCommand {
    /// Coordinate a federated job: every round, each participant trains on
    /// its data with the global model and returns only a masked update; the
    /// sum is unmasked and averaged (FedAvg). One JSON line per round, a
    /// final line with the model's path, digest and published result; exit
    /// 0 iff the job completed, 1 when a round aborted (run again to
    /// resume), 2 on a bad plan, key or directory.
    Run {
        /// The plan: rounds, min_participants, threshold, parameters,
        /// round_timeout_secs, participants [{gateway, agreement, workflow}],
        /// per_round, publish.
        #[arg(long, value_name = "PLAN.json")]
        plan: PathBuf,
        /// The consumer's key file (hex, or a keystore with INSITU_KEYSTORE_PASSWORD).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where the job's state and global model are kept (resumes from it).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

impl FlCommand {
    /// Runs the job; `Ok(true)` iff it completed.
    ///
    /// # Errors
    /// As [`run`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let FlCommand::Run { plan, key, out } = self;
        run(&plan, &key, &out)
    }
}

/// Runs the job; prints its lines; `Ok(true)` iff it completed.
///
/// # Errors
/// A plan, key or directory that cannot be used (exit 2).
pub fn run(plan_file: &Path, key: &Path, out: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read(plan_file)
        .map_err(|e| anyhow::anyhow!("cannot read the plan {}: {e}", plan_file.display()))?;
    let plan: Plan = serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "the plan {} is not a federated plan: {e} (see the README's federated section)",
            plan_file.display()
        )
    })?;
    plan.check()?;
    let key = ProviderKey::open(key, super::shared::keystore_password().as_deref())?;
    insitu_runtime::tls::install();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let peers: Vec<HttpPeer> = plan
        .participants
        .iter()
        .map(|p| HttpPeer::new(http.clone(), p, key.clone()))
        .collect();
    super::shared::runtime()?.block_on(async {
        let coordinator = Coordinator {
            plan: &plan,
            peers: &peers,
            out,
        };
        let finished = match coordinator
            .run(|r| println!("{}", serde_json::to_string(r).unwrap_or_default()))
            .await
        {
            Ok(f) => f,
            Err(e @ FlError::Aborted { .. }) => {
                eprintln!("error: {e}; the rounds done are kept in {}: run the same command again to resume", out.display());
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let mut state = finished.state.clone();
        let published = match &state.published {
            Some(p) => p.clone(),
            None => {
                use base64::Engine;
                let at = &peers[plan.publish];
                let answer = at
                    .publish(
                        &state.job,
                        &json!({
                            "model": base64::engine::general_purpose::STANDARD
                                .encode(std::fs::read(&finished.path)?),
                            "plan": state.plan,
                            "rounds": state.rounds,
                        }),
                    )
                    .await;
                match answer {
                    Ok(a) => {
                        let p = json!({"gateway": plan.participants[plan.publish].gateway,
                                       "agreement": plan.participants[plan.publish].agreement,
                                       "did": a["did"], "workflowId": a["workflowId"]});
                        coordinator.save_published(&mut state, p.clone())?;
                        p
                    }
                    Err(e) => {
                        eprintln!(
                            "error: the model was trained ({}) but publishing it at {} failed: {e}; run the same command again to retry",
                            finished.path.display(),
                            plan.participants[plan.publish].gateway
                        );
                        return Ok(false);
                    }
                }
            }
        };
        println!(
            "{}",
            json!({"job": state.job, "model": finished.path, "digest": finished.digest,
                   "rounds": state.rounds.len(), "published": published})
        );
        Ok(true)
    })
}
