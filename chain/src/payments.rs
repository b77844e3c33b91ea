//! Payments: the lock-payment events, the watcher that grants compute as
//! soon as a payment for this provider's dataset is locked, and how the
//! catalog's DIDs and prices read on-chain.

use crate::contracts::*;
use crate::ids;
use crate::{Chain, ChainError};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use insitu_runtime::store::Store;
use insitu_runtime::workflow::Did;
use std::sync::Arc;
use std::time::Duration;

impl Chain {
    /// The lock payments fulfilled in blocks `from..=to`: (agreement id, DID).
    ///
    /// # Errors
    /// [`ChainError::Rpc`].
    pub async fn locked_payments(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(B256, B256)>, ChainError> {
        let logs = self.lock_events(None, from, to).await?;
        Ok(logs
            .iter()
            .filter_map(|l| {
                let t = l.topics();
                (t.len() >= 3).then(|| (t[1], t[2]))
            })
            .collect())
    }

    /// The agreements whose payment was locked for `did` between blocks
    /// `from` and `to`, oldest first.
    ///
    /// # Errors
    /// [`ChainError::Rpc`].
    pub async fn locked_for(&self, did: B256, from: u64, to: u64) -> Result<Vec<B256>, ChainError> {
        let logs = self.lock_events(Some(did), from, to).await?;
        Ok(logs
            .iter()
            .filter_map(|l| l.topics().get(1).copied())
            .collect())
    }

    /// `LockPaymentCondition.Fulfilled` events in blocks `from..=to` (of
    /// `did` only, when given).
    async fn lock_events(
        &self,
        did: Option<B256>,
        from: u64,
        to: u64,
    ) -> Result<Vec<alloy::rpc::types::Log>, ChainError> {
        use alloy::sol_types::SolEvent;
        let mut filter = alloy::rpc::types::Filter::new()
            .address(self.addresses.lock_payment)
            .event_signature(ILockPaymentCondition::Fulfilled::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        if let Some(did) = did {
            filter = filter.topic2(did);
        }
        self.provider
            .get_logs(&filter)
            .await
            .map_err(|e| self.rpc(e))
    }
}

/// Spec step 7: grants compute as soon as a consumer locks the payment of an
/// agreement on one of this provider's datasets, instead of waiting for the
/// first execute. Polls for lock-payment events every `every` from the block
/// it starts at, until `alive` returns false. Errors are logged and retried.
pub async fn watch_payments(
    chain: Arc<Chain>,
    store: Arc<Store>,
    every: Duration,
    alive: impl Fn() -> bool,
) {
    let mut next = match chain.block_number().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "payment watcher: chain unavailable; starting from block 0");
            0
        }
    };
    while alive() {
        match chain.block_number().await {
            Ok(head) if head >= next => match chain.locked_payments(next, head).await {
                Ok(locked) => {
                    for (agreement, did) in locked {
                        if let Err(e) = grant_if_ours(&chain, &store, agreement, did).await {
                            tracing::warn!(agreement = %agreement, error = %e, "payment watcher: cannot grant compute");
                        }
                    }
                    next = head + 1;
                }
                Err(e) => tracing::warn!(error = %e, "payment watcher: cannot read logs"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "payment watcher: chain unavailable"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Grants compute for `agreement` if `did` is a priced dataset of this
/// provider, the payment is locked as priced and compute is not yet granted.
async fn grant_if_ours(
    chain: &Chain,
    store: &Store,
    agreement: B256,
    did: B256,
) -> Result<(), ChainError> {
    let dataset = did_of(did);
    let Some(price) = price_of(store, &dataset, chain.provider_address) else {
        return Ok(()); // not ours, or not priced
    };
    // Under an output policy, compute is granted when results are released
    // (settling), not when the payment is locked.
    if store.output_policy(&dataset).is_ok_and(|p| !p.is_open()) {
        return Ok(());
    }
    let Some((consumer, on_chain_did)) = chain.agreement_data(agreement).await? else {
        return Ok(());
    };
    if on_chain_did != did {
        return Ok(());
    }
    let a = &chain.addresses;
    let lock_id = ids::condition_id(
        agreement,
        a.lock_payment,
        ids::lock_hash(did, a.escrow_payment, &price),
    );
    let compute_id = ids::condition_id(agreement, a.compute, ids::compute_hash(did, consumer));
    if chain.condition(lock_id).await?.state != ConditionState::Fulfilled
        || chain.condition(compute_id).await?.state != ConditionState::Unfulfilled
    {
        return Ok(());
    }
    let tx = chain
        .fulfill(Service::Compute, agreement, did, consumer)
        .await?;
    tracing::info!(agreement = %agreement, tx = %tx, "payment locked; compute granted on-chain");
    Ok(())
}

/// A catalog DID (`did:nv:` + 64 hex) as the on-chain `bytes32`: the same value.
pub fn did_bytes(did: &Did) -> B256 {
    did.as_str()
        .trim_start_matches("did:nv:")
        .parse()
        .expect("a Did is did:nv: followed by 64 hex digits")
}

/// An on-chain `bytes32` DID as the catalog's `did:nv:` form.
pub fn did_of(bytes: B256) -> Did {
    Did::parse(&format!("did:nv:{}", alloy::hex::encode(bytes))).expect("64 hex digits")
}

/// The price a dataset's compute service asks, from its DDO (`price` in the
/// smallest unit of `priceToken`, the native currency without one, paid to
/// the provider); `None` when it has none.
pub fn price_of(store: &Store, did: &Did, provider: Address) -> Option<Price> {
    service_price(store, did, provider, Service::Compute)
}

/// The price of `service` of dataset `did` (as [`price_of`]).
pub fn service_price(
    store: &Store,
    did: &Did,
    provider: Address,
    service: Service,
) -> Option<Price> {
    let (_, ddo) = store.ddo(did).ok()?;
    let kind = match service {
        Service::Compute => "compute",
        Service::Access => "access",
    };
    let main = &ddo["service"]
        .as_array()?
        .iter()
        .find(|s| s["type"] == kind)?["attributes"]["main"];
    let amount: U256 = match &main["price"] {
        serde_json::Value::String(s) => s.parse().ok()?,
        serde_json::Value::Number(n) => U256::from(n.as_u64()?),
        _ => return None,
    };
    let token = match &main["priceToken"] {
        serde_json::Value::String(t) => t.parse().ok()?,
        _ => Address::ZERO,
    };
    Some(Price {
        token,
        amounts: vec![amount],
        receivers: vec![provider],
    })
}
