//! [`ChainAgreements`]: the runtime's [`Permissions`] on-chain — compute and
//! access agreements checked against the contracts (with one shared, cached
//! lookup), conditions fulfilled on demand, settlement after a run.

use crate::ids;
use crate::{
    Chain, ChainError, ConditionState, Price, Service, did_bytes, did_of, price_of, service_price,
};
use alloy::primitives::{Address, B256};
use insitu_runtime::permissions::{BoxFuture, Permissions};
use insitu_runtime::store::{AccessAgreement, Agreement, Store};
use insitu_runtime::workflow::Did;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// On-chain agreements ([`Permissions`]): the consumer of the agreement
/// (`getAgreementData`), its lock-payment condition fulfilled, its compute
/// condition fulfilled — by this provider on demand once payment is locked —
/// and neither timed out. Positive answers are cached for `ttl`; negative
/// ones never.
#[derive(Debug)]
pub struct ChainAgreements {
    pub chain: Arc<Chain>,
    pub store: Arc<Store>,
    pub ttl: Duration,
    cache: Cache<Agreement>,
    access_cache: Cache<AccessAgreement>,
}

/// Positive answers of the checks, each for `ttl`, keyed by (agreement id,
/// consumer, workflow or dataset).
#[derive(Debug)]
struct Cache<T>(Mutex<HashMap<CacheKey, (Instant, T)>>);

/// (agreement id, consumer, workflow or dataset).
type CacheKey = (String, String, String);

impl<T: Clone> Cache<T> {
    fn new() -> Cache<T> {
        Cache(Mutex::new(HashMap::new()))
    }

    fn key(agreement: &str, consumer: &str, what: &str) -> CacheKey {
        (agreement.into(), consumer.into(), what.into())
    }

    /// The answer for `key` if it is younger than `ttl`.
    fn get(&self, key: &CacheKey, ttl: Duration) -> Option<T> {
        insitu_runtime::sync::lock(&self.0)
            .get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, t)| t.clone())
    }

    fn put(&self, key: CacheKey, value: &T) {
        insitu_runtime::sync::lock(&self.0).insert(key, (Instant::now(), value.clone()));
    }
}

fn denied(m: String) -> insitu_runtime::Error {
    insitu_runtime::Error::Denied(m)
}

impl ChainAgreements {
    pub fn new(chain: Arc<Chain>, store: Arc<Store>, ttl: Duration) -> ChainAgreements {
        ChainAgreements {
            chain,
            store,
            ttl,
            cache: Cache::new(),
            access_cache: Cache::new(),
        }
    }

    /// The on-chain agreement `agreement_id` of `service`'s template, if it
    /// belongs to `consumer`: its id, consumer address and DID (bytes32).
    ///
    /// # Errors
    /// [`insitu_runtime::Error::Invalid`] for a malformed id,
    /// [`insitu_runtime::Error::NotFound`] for an unknown agreement,
    /// [`insitu_runtime::Error::Denied`] for another consumer's; the RPC's.
    async fn lookup(
        &self,
        agreement_id: &str,
        consumer: &str,
        service: Service,
    ) -> Result<(B256, Address, B256), insitu_runtime::Error> {
        let id: B256 = agreement_id
            .parse()
            .map_err(|_| insitu_runtime::Error::Invalid {
                what: "agreement id",
                value: agreement_id.to_string(),
                reason: "expected 0x followed by 64 hex digits",
            })?;
        let (what, hint) = match service {
            Service::Compute => (
                "agreement",
                "; it does not exist on-chain (create it with EscrowComputeExecutionTemplate.createAgreement)",
            ),
            Service::Access => (
                "access agreement",
                "; it does not exist on-chain (create it with AccessTemplate.createAgreement, e.g. insitu agreement create --service access)",
            ),
        };
        let (on_chain_consumer, did) = self
            .chain
            .agreement_data_of(id, service)
            .await?
            .ok_or_else(|| insitu_runtime::Error::NotFound {
                what,
                id: agreement_id.to_string(),
                hint,
            })?;
        if format!("{on_chain_consumer:#x}") != consumer {
            return Err(denied(format!(
                "{what} {agreement_id} belongs to another consumer"
            )));
        }
        Ok((id, on_chain_consumer, did))
    }

    async fn check(
        &self,
        agreement_id: &str,
        consumer: &str,
        workflow: &str,
    ) -> Result<Agreement, insitu_runtime::Error> {
        let key = Cache::<Agreement>::key(agreement_id, consumer, workflow);
        if let Some(a) = self.cache.get(&key, self.ttl) {
            return Ok(a);
        }
        let (id, on_chain_consumer, did) = self
            .lookup(agreement_id, consumer, Service::Compute)
            .await?;
        let dataset = did_of(did);
        self.store.dataset(&dataset).map_err(|_| {
            denied(format!(
                "agreement {agreement_id} is for {dataset}, which is not a dataset of this provider"
            ))
        })?;
        let workflow_did = Did::parse(workflow).map_err(|_| insitu_runtime::Error::Invalid {
            what: "workflow DID",
            value: workflow.to_string(),
            reason: "expected did:nv: followed by 64 hex digits",
        })?;
        let wf = self.store.workflow(&workflow_did)?;
        // Under an output policy the compute condition is fulfilled only
        // when the results are released (settling), so a rejection leaves
        // the escrow to time out to the consumer.
        let grant = self.store.workflow_policy(&workflow_did)?.is_open();
        self.paid(
            id,
            agreement_id,
            did,
            on_chain_consumer,
            Service::Compute,
            grant,
        )
        .await?;
        // Every other dataset the workflow reads needs a paid agreement of
        // the same consumer too (a result is checked when resolving: its
        // owner's only).
        for other in wf.datasets().into_iter().filter(|d| **d != dataset) {
            if self.store.dataset(other).is_err() {
                continue;
            }
            self.covering(other, on_chain_consumer, &workflow_did)
                .await
                .map_err(|why| {
                    denied(format!(
                        "workflow {workflow} reads {other}, which agreement {agreement_id} (for {dataset}) does not cover, and {consumer} has no paid agreement for it on-chain{why}; create one (insitu agreement create --dataset {other})"
                    ))
                })?;
        }
        let agreement = Agreement {
            id: agreement_id.to_string(),
            consumer: consumer.to_string(),
            dataset,
            workflow: workflow_did,
            // On-chain time-outs are checked above, on every uncached check.
            expires_at: i64::MAX as u64,
        };
        self.store.record_agreement(&agreement)?;
        self.cache.put(key, &agreement);
        Ok(agreement)
    }

    /// Checks that agreement `id` (of `service`) on `did` is paid as the
    /// dataset's service prices it and its release condition (compute or
    /// access) has not timed out, and (`grant`) fulfils that condition
    /// on-chain if it is not yet; returns the price (what a release pays
    /// out).
    async fn paid(
        &self,
        id: B256,
        agreement_id: &str,
        did: B256,
        consumer: Address,
        service: Service,
        grant: bool,
    ) -> Result<Price, insitu_runtime::Error> {
        let kind = match service {
            Service::Compute => "compute",
            Service::Access => "access",
        };
        let dataset = did_of(did);
        let price = service_price(&self.store, &dataset, self.chain.provider_address, service)
            .ok_or_else(|| {
                denied(format!(
                    "dataset {dataset} has no priced {kind} service; the provider registers it with insitu asset add --price WEI{}",
                    if service == Service::Access { " --access" } else { "" }
                ))
            })?;
        let a = &self.chain.addresses;
        let (_, condition) = a.of(service)?;
        let release_id = ids::condition_id(id, condition, ids::compute_hash(did, consumer));
        let lock_id = ids::condition_id(
            id,
            a.lock_payment,
            ids::lock_hash(did, a.escrow_payment, &price),
        );
        let block = self.chain.block_number().await?;
        let lock = self.chain.condition(lock_id).await?;
        if lock.state != ConditionState::Fulfilled {
            return Err(denied(format!(
                "agreement {agreement_id}: the payment is not locked as the {kind} service prices it (lock condition {lock_id} is {}); lock {} with LockPaymentCondition.fulfill",
                lock.state.as_str(),
                price.amounts[0]
            )));
        }
        let release = self.chain.condition(release_id).await?;
        if release.time_out > 0 && block > release.block_number.saturating_add(release.time_out) {
            return Err(denied(format!(
                "agreement {agreement_id}: its {kind} condition timed out at block {}",
                release.block_number + release.time_out
            )));
        }
        match release.state {
            ConditionState::Fulfilled => Ok(price),
            ConditionState::Unfulfilled if !grant => Ok(price),
            ConditionState::Unfulfilled => {
                let sent = self.chain.fulfill(service, id, did, consumer).await;
                match sent {
                    Ok(tx) => {
                        tracing::info!(agreement = agreement_id, tx = %tx, "{kind} granted on-chain");
                        Ok(price)
                    }
                    // The payment watcher (or a concurrent request) may have
                    // granted it meanwhile.
                    Err(ChainError::Reverted { .. })
                        if self.chain.condition(release_id).await?.state
                            == ConditionState::Fulfilled =>
                    {
                        Ok(price)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            other => Err(denied(format!(
                "agreement {agreement_id}: its {kind} condition is {}",
                other.as_str()
            ))),
        }
    }

    /// A paid compute agreement of `consumer` on `dataset`, found from the
    /// lock-payment events of its DID (newest first) and checked as
    /// [`ChainAgreements::paid`] does; recorded for `workflow` so
    /// the execution names it. `Err` says why none was found (appended to
    /// the refusal).
    async fn covering(
        &self,
        dataset: &Did,
        consumer: Address,
        workflow: &Did,
    ) -> Result<String, String> {
        let did = did_bytes(dataset);
        let head = self
            .chain
            .block_number()
            .await
            .map_err(|e| format!(" ({e})"))?;
        let locked = self
            .chain
            .locked_for(did, 0, head)
            .await
            .map_err(|e| format!(" ({e})"))?;
        let mut last = String::new();
        for id in locked.into_iter().rev() {
            match self.chain.agreement_data(id).await {
                Ok(Some((c, d))) if c == consumer && d == did => {}
                _ => continue,
            }
            let id_text = format!("{id:#x}");
            let grant = self
                .store
                .workflow_policy(workflow)
                .map_err(|e| format!(" ({e})"))?
                .is_open();
            match self
                .paid(id, &id_text, did, consumer, Service::Compute, grant)
                .await
            {
                Ok(_) => {
                    let a = Agreement {
                        id: id_text.clone(),
                        consumer: format!("{consumer:#x}"),
                        dataset: dataset.clone(),
                        workflow: workflow.clone(),
                        expires_at: i64::MAX as u64,
                    };
                    self.store
                        .record_agreement(&a)
                        .map_err(|e| format!(" ({e})"))?;
                    return Ok(id_text);
                }
                Err(e) => last = format!(" (the newest, {id_text}: {e})"),
            }
        }
        Err(last)
    }
}

impl ChainAgreements {
    /// An access agreement on-chain (`AccessTemplate`): its consumer and
    /// dataset, the payment locked as the dataset's access service prices it;
    /// then access granted (`AccessCondition.fulfill`) and the payment
    /// released to the provider (`EscrowPaymentCondition.fulfill`), each once.
    /// A release that fails is logged and retried on the next download.
    async fn check_access_now(
        &self,
        agreement_id: &str,
        consumer: &str,
        dataset: &str,
    ) -> Result<AccessAgreement, insitu_runtime::Error> {
        let key = Cache::<AccessAgreement>::key(agreement_id, consumer, dataset);
        if let Some(a) = self.access_cache.get(&key, self.ttl) {
            return Ok(a);
        }
        let (id, on_chain_consumer, did) =
            self.lookup(agreement_id, consumer, Service::Access).await?;
        let on_chain_dataset = did_of(did);
        if !on_chain_dataset.as_str().eq_ignore_ascii_case(dataset) {
            return Err(denied(format!(
                "access agreement {agreement_id} is for dataset {on_chain_dataset}, not {dataset}"
            )));
        }
        let price = self
            .paid(
                id,
                agreement_id,
                did,
                on_chain_consumer,
                Service::Access,
                true,
            )
            .await?;
        match self
            .chain
            .release_of(id, did, on_chain_consumer, &price, Service::Access)
            .await
        {
            Ok(tx) => {
                tracing::info!(agreement = agreement_id, tx = ?tx, "access payment released")
            }
            Err(e) => {
                tracing::warn!(agreement = agreement_id, error = %e, "access payment not released; retried at the next download")
            }
        }
        let agreement = AccessAgreement {
            id: agreement_id.to_string(),
            consumer: consumer.to_string(),
            dataset: on_chain_dataset,
            expires_at: i64::MAX as u64,
        };
        self.store.record_access_agreement(&agreement)?;
        self.access_cache.put(key, &agreement);
        Ok(agreement)
    }

    async fn settle_now(
        &self,
        agreement: &Agreement,
        receipt_hash: &str,
    ) -> Result<serde_json::Value, insitu_runtime::Error> {
        let invalid = |what: &'static str, value: &str| insitu_runtime::Error::Invalid {
            what,
            value: value.to_string(),
            reason: "expected 0x followed by 64 hex digits",
        };
        let id: B256 = agreement
            .id
            .parse()
            .map_err(|_| invalid("agreement id", &agreement.id))?;
        let hash: B256 = receipt_hash
            .parse()
            .map_err(|_| invalid("receipt hash", receipt_hash))?;
        let did = did_bytes(&agreement.dataset);
        let consumer: Address =
            agreement
                .consumer
                .parse()
                .map_err(|_| insitu_runtime::Error::Invalid {
                    what: "address",
                    value: agreement.consumer.clone(),
                    reason: "expected 0x followed by 40 hex digits",
                })?;
        // Under output control the compute condition was held back until
        // the release: granted now (the lock and the time-outs are checked
        // again). Otherwise it was granted at admission.
        let price = if self.store.workflow_policy(&agreement.workflow)?.is_open() {
            price_of(&self.store, &agreement.dataset, self.chain.provider_address)
                .ok_or_else(|| denied(format!("dataset {} has no price", agreement.dataset)))?
        } else {
            self.paid(id, &agreement.id, did, consumer, Service::Compute, true)
                .await?
        };
        let release = self.chain.release(id, did, consumer, &price).await?;
        let commit = self.chain.commit_receipt(hash, did).await?;
        tracing::info!(agreement = %agreement.id, release = ?release, receipt = ?commit, "settled on-chain");
        let tx = |t: Option<B256>| t.map(|t| format!("{t:#x}"));
        let mut settled = serde_json::json!({
            "release_tx": tx(release),
            "receipt_tx": tx(commit),
            "receipt_hash": receipt_hash,
        });
        if release.is_none() || commit.is_none() {
            settled["note"] = "done by an earlier attempt whose confirmation was not seen; null transactions were not sent again".into();
        }
        Ok(settled)
    }
}

impl Permissions for ChainAgreements {
    fn check_execute<'a>(
        &'a self,
        agreement_id: &'a str,
        consumer: &'a str,
        workflow: &'a str,
        _now: u64,
    ) -> BoxFuture<'a, Result<Agreement, insitu_runtime::Error>> {
        Box::pin(self.check(agreement_id, consumer, workflow))
    }

    fn check_access<'a>(
        &'a self,
        agreement_id: &'a str,
        consumer: &'a str,
        dataset: &'a str,
        _now: u64,
    ) -> BoxFuture<'a, Result<AccessAgreement, insitu_runtime::Error>> {
        Box::pin(self.check_access_now(agreement_id, consumer, dataset))
    }

    fn settles(&self) -> bool {
        true
    }

    fn settle<'a>(
        &'a self,
        agreement: &'a Agreement,
        receipt_hash: &'a str,
    ) -> BoxFuture<'a, Result<serde_json::Value, insitu_runtime::Error>> {
        Box::pin(self.settle_now(agreement, receipt_hash))
    }
}
