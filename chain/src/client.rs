//! [`Chain`], the RPC client: reading agreements and conditions, and the
//! provider's transactions (fulfilling conditions, releasing escrow,
//! committing receipts) under a [`TxPolicy`]; checking a committed receipt.

use crate::ChainError;
use crate::contracts::*;
use crate::did_of;
use crate::ids;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use insitu_runtime::receipt::ProviderKey;
use std::time::Duration;

/// How the provider's transactions are priced, sent and awaited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TxPolicy {
    /// The chain id transactions are signed for (EIP-155); when set, a node
    /// serving another chain is refused before anything is read or sent.
    /// Default: whatever the node says.
    pub chain_id: Option<u64>,
    /// Blocks on top of the one including a transaction before it counts
    /// as done (1 = mined). Default 1.
    pub confirmations: u64,
    /// The gas limit is the node's estimate times this (at least 1.0).
    /// Default 1.2.
    pub gas_multiplier: f64,
    /// The most the provider pays per gas, in wei (EIP-1559 `maxFeePerGas`).
    /// While the base fee is above it nothing is sent (payouts are retried).
    /// Default: no cap (the node's suggestion).
    pub max_fee_per_gas: Option<u128>,
    /// How long to wait for a sent transaction to be confirmed. Default 120 s.
    pub timeout: Duration,
}

impl Default for TxPolicy {
    fn default() -> Self {
        TxPolicy {
            chain_id: None,
            confirmations: 1,
            gas_multiplier: 1.2,
            max_fee_per_gas: None,
            timeout: Duration::from_secs(120),
        }
    }
}

/// An RPC connection with the provider's key.
#[derive(Debug)]
pub struct Chain {
    pub(crate) provider: DynProvider,
    url: String,
    policy: TxPolicy,
    /// Set once the node's chain id matched [`TxPolicy::chain_id`].
    chain_checked: tokio::sync::OnceCell<()>,
    pub addresses: Addresses,
    /// The provider's address (sender of its transactions).
    pub provider_address: Address,
}

fn rpc_err(url: &str) -> impl Fn(alloy::contract::Error) -> ChainError + '_ {
    move |e| match e {
        alloy::contract::Error::TransportError(t) => ChainError::Rpc {
            url: url.to_string(),
            reason: t.to_string(),
        },
        other => ChainError::Reverted {
            call: "call".into(),
            reason: other.to_string(),
        },
    }
}

impl Chain {
    /// Connects to `url` (HTTP JSON-RPC) with the provider's `key` for
    /// transactions, sent with the default [`TxPolicy`].
    ///
    /// # Errors
    /// [`ChainError::Rpc`] for a malformed URL.
    pub fn connect(
        url: &str,
        addresses: Addresses,
        key: &ProviderKey,
    ) -> Result<Chain, ChainError> {
        Chain::connect_with(url, addresses, key, TxPolicy::default())
    }

    /// [`Chain::connect`] with a transaction policy. Nothing is sent to the
    /// node yet: a chain down at start-up is reported by the first call.
    ///
    /// # Errors
    /// [`ChainError::Rpc`] for a malformed URL.
    pub fn connect_with(
        url: &str,
        addresses: Addresses,
        key: &ProviderKey,
        policy: TxPolicy,
    ) -> Result<Chain, ChainError> {
        let parsed = url.parse().map_err(|e| ChainError::Rpc {
            url: url.to_string(),
            reason: format!("not a URL: {e}"),
        })?;
        let signer = key.signer();
        let provider_address = signer.address();
        insitu_runtime::tls::install();
        let builder = ProviderBuilder::new().wallet(EthereumWallet::from(signer));
        let provider = match policy.chain_id {
            Some(id) => builder.with_chain_id(id).connect_http(parsed).erased(),
            None => builder.connect_http(parsed).erased(),
        };
        Ok(Chain {
            provider,
            url: url.to_string(),
            policy,
            chain_checked: tokio::sync::OnceCell::new(),
            addresses,
            provider_address,
        })
    }

    /// The underlying provider (for tests and tools).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The transaction policy.
    pub fn policy(&self) -> &TxPolicy {
        &self.policy
    }

    /// Refuses a node serving another chain than [`TxPolicy::chain_id`]
    /// (asked once; a no-op without a configured id).
    ///
    /// # Errors
    /// [`ChainError::WrongChain`], [`ChainError::Rpc`].
    pub async fn check_chain(&self) -> Result<(), ChainError> {
        let Some(expected) = self.policy.chain_id else {
            return Ok(());
        };
        self.chain_checked
            .get_or_try_init(|| async {
                let actual = self
                    .provider
                    .get_chain_id()
                    .await
                    .map_err(|e| self.rpc(e))?;
                if actual == expected {
                    Ok(())
                } else {
                    Err(ChainError::WrongChain {
                        url: self.url.clone(),
                        expected,
                        actual,
                    })
                }
            })
            .await
            .copied()
    }

    /// The current block number.
    ///
    /// # Errors
    /// [`ChainError::Rpc`], [`ChainError::WrongChain`].
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        self.check_chain().await?;
        self.provider
            .get_block_number()
            .await
            .map_err(|e| self.rpc(e))
    }

    /// The agreement's (consumer, DID); `None` when no such agreement exists.
    ///
    /// # Errors
    /// [`ChainError::Rpc`], [`ChainError::WrongChain`].
    pub async fn agreement_data(&self, id: B256) -> Result<Option<(Address, B256)>, ChainError> {
        self.agreement_data_of(id, Service::Compute).await
    }

    /// [`Chain::agreement_data`] of an agreement of `service`'s template.
    ///
    /// # Errors
    /// As [`Chain::agreement_data`]; [`ChainError::Addresses`] for access
    /// without its contracts.
    pub async fn agreement_data_of(
        &self,
        id: B256,
        service: Service,
    ) -> Result<Option<(Address, B256)>, ChainError> {
        self.check_chain().await?;
        let (template, _) = self.addresses.of(service)?;
        // Every template derives `getAgreementData` from BaseEscrowTemplate.
        let t = IEscrowComputeExecutionTemplate::new(template, &self.provider);
        let d = t
            .getAgreementData(id)
            .call()
            .await
            .map_err(rpc_err(&self.url))?;
        Ok((d.accessConsumer != Address::ZERO).then_some((d.accessConsumer, d.did)))
    }

    /// A condition's state and time-out.
    ///
    /// # Errors
    /// [`ChainError::Rpc`].
    pub async fn condition(&self, id: B256) -> Result<Condition, ChainError> {
        let c = IConditionStoreManager::new(self.addresses.condition_store_manager, &self.provider)
            .getCondition(id)
            .call()
            .await
            .map_err(rpc_err(&self.url))?;
        Ok(Condition {
            state: ConditionState::from_u8(c.state),
            time_out: c.timeOut.saturating_to(),
            block_number: c.blockNumber.saturating_to(),
        })
    }

    /// [`ChainError::Rpc`] naming this node, for a failed request.
    pub(crate) fn rpc(&self, e: impl std::fmt::Display) -> ChainError {
        ChainError::Rpc {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Waits until none of the provider's transactions is pending (its
    /// `pending` nonce equals its `latest` one), polling for up to the
    /// policy's timeout. Settling reads the chain's state to decide what to
    /// send; read while an earlier attempt's transaction (from a run killed
    /// before it was confirmed, say) still waits in the mempool, that state
    /// would say "not done" and the same transaction would go out twice.
    ///
    /// # Errors
    /// [`ChainError::InFlight`] when they are still pending at the timeout;
    /// [`ChainError::Rpc`].
    pub async fn await_in_flight(&self, call: &str) -> Result<(), ChainError> {
        let rpc = |e| self.rpc(e);
        use std::future::IntoFuture;
        let (me, started) = (self.provider_address, tokio::time::Instant::now());
        loop {
            let (mined, sent) = tokio::join!(
                self.provider
                    .get_transaction_count(me)
                    .latest()
                    .into_future(),
                self.provider
                    .get_transaction_count(me)
                    .pending()
                    .into_future(),
            );
            let (mined, sent) = (mined.map_err(rpc)?, sent.map_err(rpc)?);
            if sent <= mined {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= self.policy.timeout {
                return Err(ChainError::InFlight {
                    call: call.to_string(),
                    provider: me,
                    count: sent - mined,
                    waited: self.policy.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(250).min(self.policy.timeout - waited)).await;
        }
    }

    /// Sends a transaction under the [`TxPolicy`] (gas = estimate ×
    /// multiplier, fees capped, `confirmations` awaited); its hash.
    async fn transact<P, C>(
        &self,
        what: &str,
        call: alloy::contract::CallBuilder<P, C>,
    ) -> Result<B256, ChainError>
    where
        P: Provider,
        C: alloy::contract::CallDecoder,
    {
        self.check_chain().await?;
        let refused = |e: alloy::contract::Error| match e {
            alloy::contract::Error::TransportError(t) if t.is_transport_error() => {
                ChainError::Rpc {
                    url: self.url.clone(),
                    reason: t.to_string(),
                }
            }
            other => ChainError::Reverted {
                call: what.to_string(),
                reason: other.to_string(),
            },
        };
        // Estimating runs the call: a revert surfaces here, with its reason,
        // before anything is signed.
        let estimate = call.estimate_gas().await.map_err(refused)?;
        let gas = (estimate as f64 * self.policy.gas_multiplier.max(1.0)).ceil() as u64;
        let mut call = call.gas(gas);
        if let Some(cap) = self.policy.max_fee_per_gas {
            let rpc = |e| self.rpc(e);
            let fees = self.provider.estimate_eip1559_fees().await.map_err(rpc)?;
            if fees.max_fee_per_gas > cap {
                let base_fee = self
                    .provider
                    .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
                    .await
                    .map_err(rpc)?
                    .and_then(|b| b.header.base_fee_per_gas)
                    .map_or(0, u128::from);
                if base_fee.saturating_add(fees.max_priority_fee_per_gas.min(cap)) > cap {
                    return Err(ChainError::GasAboveCap {
                        call: what.to_string(),
                        base_fee,
                        cap,
                    });
                }
            }
            call = call
                .max_fee_per_gas(fees.max_fee_per_gas.min(cap))
                .max_priority_fee_per_gas(fees.max_priority_fee_per_gas.min(cap));
        }
        let pending = call.send().await.map_err(refused)?;
        let hash = *pending.tx_hash();
        let confirmations = self.policy.confirmations.max(1);
        if confirmations == 1
            && let Some(receipt) = self.quick_receipt(hash).await?
        {
            return Self::succeeded(what, receipt);
        }
        // alloy's own timeout stops at inclusion; this one covers the
        // confirmations too.
        let receipt = tokio::time::timeout(
            self.policy.timeout,
            pending
                .with_required_confirmations(confirmations)
                .with_timeout(Some(self.policy.timeout))
                .get_receipt(),
        )
        .await
        .map_err(|_| ChainError::Rpc {
            url: self.url.clone(),
            reason: format!(
                "{what}: transaction {hash} sent but not confirmed by {confirmations} block(s) within {:?}",
                self.policy.timeout
            ),
        })?
        .map_err(|e| self.rpc(e))?;
        Self::succeeded(what, receipt)
    }

    /// A few quick looks for `hash`'s receipt, at once and then 1 ms apart
    /// and doubling, for 127 ms in all: dev chains and fast sequencers
    /// include a transaction within milliseconds, while alloy's watcher, when
    /// its first look comes too early, looks again only a poll interval later
    /// (250 ms on loopback, 7 s elsewhere) — a quarter of anvil's
    /// transactions waited that long.
    /// `None` when the transaction is not in a block yet.
    async fn quick_receipt(
        &self,
        hash: B256,
    ) -> Result<Option<alloy::rpc::types::TransactionReceipt>, ChainError> {
        for wait in [0, 1, 2, 4, 8, 16, 32, 64] {
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let receipt = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| self.rpc(e))?;
            if receipt.is_some() {
                return Ok(receipt);
            }
        }
        Ok(None)
    }

    /// `receipt`'s transaction hash, or [`ChainError::Reverted`] when it failed.
    fn succeeded(
        what: &str,
        receipt: alloy::rpc::types::TransactionReceipt,
    ) -> Result<B256, ChainError> {
        if !receipt.status() {
            return Err(ChainError::Reverted {
                call: what.to_string(),
                reason: format!("transaction {} failed", receipt.transaction_hash),
            });
        }
        Ok(receipt.transaction_hash)
    }

    /// Grants `service` on-chain for `agreement` (`ComputeExecutionCondition`
    /// or `AccessCondition.fulfill`); returns the transaction hash once mined.
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`];
    /// [`ChainError::Addresses`] for access without its contracts.
    pub async fn fulfill(
        &self,
        service: Service,
        agreement: B256,
        did: B256,
        consumer: Address,
    ) -> Result<B256, ChainError> {
        let (_, condition) = self.addresses.of(service)?;
        match service {
            Service::Compute => {
                let c = IComputeExecutionCondition::new(condition, &self.provider);
                let call = c.fulfill(agreement, did, consumer);
                self.transact("ComputeExecutionCondition.fulfill", call)
                    .await
            }
            Service::Access => {
                let c = IAccessCondition::new(condition, &self.provider);
                let call = c.fulfill(agreement, did, consumer);
                self.transact("AccessCondition.fulfill", call).await
            }
        }
    }

    /// Releases the escrowed payment of `agreement` to the price's receivers
    /// (`EscrowPaymentCondition.fulfill`, released by the compute condition).
    /// Idempotent: once the provider's earlier transactions are mined
    /// ([`Chain::await_in_flight`]), `None` when the escrow condition is
    /// already fulfilled (by an attempt whose confirmation timed out, or by a
    /// run killed while its transaction waited in the mempool).
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`];
    /// [`ChainError::InFlight`].
    pub async fn release(
        &self,
        agreement: B256,
        did: B256,
        consumer: Address,
        price: &Price,
    ) -> Result<Option<B256>, ChainError> {
        self.release_of(agreement, did, consumer, price, Service::Compute)
            .await
    }

    /// [`Chain::release`] of an agreement of `service` (released by its
    /// compute or access condition).
    ///
    /// # Errors
    /// As [`Chain::release`].
    pub async fn release_of(
        &self,
        agreement: B256,
        did: B256,
        consumer: Address,
        price: &Price,
        service: Service,
    ) -> Result<Option<B256>, ChainError> {
        let a = &self.addresses;
        let (_, release) = a.of(service)?;
        let compute_id = ids::condition_id(agreement, release, ids::compute_hash(did, consumer));
        let lock_id = ids::condition_id(
            agreement,
            a.lock_payment,
            ids::lock_hash(did, a.escrow_payment, price),
        );
        let escrow_id = ids::condition_id(
            agreement,
            a.escrow_payment,
            ids::escrow_hash(did, price, consumer, a.escrow_payment, lock_id, compute_id),
        );
        self.await_in_flight("EscrowPaymentCondition.fulfill")
            .await?;
        if self.condition(escrow_id).await?.state == ConditionState::Fulfilled {
            return Ok(None);
        }
        let c = IEscrowPaymentCondition::new(a.escrow_payment, &self.provider);
        self.transact(
            "EscrowPaymentCondition.fulfill",
            c.fulfill(
                agreement,
                did,
                price.amounts.clone(),
                price.receivers.clone(),
                consumer,
                // Named `_lockPaymentAddress`, but it is the escrow (reward)
                // address the lock condition paid into: the contract hashes
                // the lock condition's values with it.
                a.escrow_payment,
                price.token,
                lock_id,
                compute_id,
            ),
        )
        .await
        .map(Some)
    }

    /// Registers a new DID owned by the provider, with the provider as its
    /// compute provider (`DIDRegistry.registerDID`); returns (DID, tx hash).
    /// The DID is `keccak256(abi.encode(seed, provider))`.
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`].
    pub async fn register_did(
        &self,
        seed: B256,
        checksum: B256,
    ) -> Result<(B256, B256), ChainError> {
        let r = IDIDRegistry::new(self.addresses.did_registry, &self.provider);
        let tx = self
            .transact(
                "DIDRegistry.registerDID",
                r.registerDID(
                    seed,
                    checksum,
                    vec![self.provider_address],
                    String::new(),
                    alloy::primitives::keccak256("registered"),
                    String::new(),
                ),
            )
            .await?;
        Ok((ids::did(seed, self.provider_address), tx))
    }

    /// The consumer's side (this client's key is the consumer's): creates a
    /// compute agreement on `did` for `price` with `seed` and locks the
    /// payment into escrow. Returns the agreement id.
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`].
    pub async fn create_agreement_and_pay(
        &self,
        seed: B256,
        did: B256,
        price: &Price,
    ) -> Result<B256, ChainError> {
        self.create_and_pay(seed, did, price, Service::Compute)
            .await
    }

    /// [`Chain::create_agreement_and_pay`] for `service`: a compute or an
    /// access agreement. A price in an ERC-20 token is first approved for
    /// the lock-payment condition to take.
    ///
    /// # Errors
    /// As [`Chain::create_agreement_and_pay`]; [`ChainError::Addresses`] for
    /// access without its contracts.
    pub async fn create_and_pay(
        &self,
        seed: B256,
        did: B256,
        price: &Price,
        service: Service,
    ) -> Result<B256, ChainError> {
        let a = &self.addresses;
        let (template, release) = a.of(service)?;
        let me = self.provider_address;
        let id = ids::agreement_id(seed, me);
        let compute_hash = ids::compute_hash(did, me);
        let lock_hash = ids::lock_hash(did, a.escrow_payment, price);
        let compute_id = ids::condition_id(id, release, compute_hash);
        let lock_id = ids::condition_id(id, a.lock_payment, lock_hash);
        // As the Nevermined SDK does: the escrow's `lockPaymentAddress` is
        // the escrow contract the payment is locked into.
        let escrow_hash = ids::escrow_hash(did, price, me, a.escrow_payment, lock_id, compute_id);
        // Both templates take (id, did, [release, lock, escrow] hashes, ...).
        let t = IEscrowComputeExecutionTemplate::new(template, &self.provider);
        self.transact(
            match service {
                Service::Compute => "EscrowComputeExecutionTemplate.createAgreement",
                Service::Access => "AccessTemplate.createAgreement",
            },
            t.createAgreement(
                seed,
                did,
                vec![compute_hash, lock_hash, escrow_hash],
                vec![U256::ZERO; 3],
                vec![U256::ZERO; 3],
                me,
            ),
        )
        .await?;
        let total = price.amounts.iter().fold(U256::ZERO, |s, a| s + *a);
        if price.token != Address::ZERO {
            let token = IERC20::new(price.token, &self.provider);
            self.transact("ERC20.approve", token.approve(a.lock_payment, total))
                .await?;
        }
        let native = if price.token == Address::ZERO {
            total
        } else {
            U256::ZERO
        };
        let l = ILockPaymentCondition::new(a.lock_payment, &self.provider);
        self.transact(
            "LockPaymentCondition.fulfill",
            l.fulfill(
                id,
                did,
                a.escrow_payment,
                price.token,
                price.amounts.clone(),
                price.receivers.clone(),
            )
            .value(native),
        )
        .await?;
        Ok(id)
    }

    /// Commits a receipt hash on-chain as a provenance entry of `did`
    /// (`DIDRegistry.used` with the hash as the provenance id, activity
    /// `keccak256("compute")`): unique, and emitted as a `Used` event.
    /// Idempotent: waits for the provider's pending transactions first, then
    /// `None` when the hash is already committed.
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`];
    /// [`ChainError::InFlight`].
    pub async fn commit_receipt(
        &self,
        receipt_hash: B256,
        did: B256,
    ) -> Result<Option<B256>, ChainError> {
        self.await_in_flight("DIDRegistry.used").await?;
        if self.commitment(receipt_hash).await?.is_some() {
            return Ok(None);
        }
        let r = IDIDRegistry::new(self.addresses.did_registry, &self.provider);
        self.transact(
            "DIDRegistry.used",
            r.used(
                receipt_hash,
                did,
                self.provider_address,
                alloy::primitives::keccak256("compute"),
                alloy::primitives::Bytes::new(),
                "insitu execution receipt".to_string(),
            ),
        )
        .await
        .map(Some)
    }
}

/// A receipt hash committed on-chain: the provenance entry
/// `DIDRegistry.used` recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commitment {
    /// The DID (bytes32) it was committed for.
    pub did: B256,
    /// Who committed it (the provider).
    pub agent: Address,
    /// The block of the entry.
    pub block: u64,
}

impl Chain {
    /// The provenance entry of `receipt_hash`, if it was committed.
    ///
    /// # Errors
    /// [`ChainError::Rpc`].
    pub async fn commitment(&self, receipt_hash: B256) -> Result<Option<Commitment>, ChainError> {
        let r = IDIDRegistry::new(self.addresses.did_registry, &self.provider);
        let entry = r
            .getProvenanceEntry(receipt_hash)
            .call()
            .await
            .map_err(rpc_err(&self.url))?;
        Ok((entry.did != B256::ZERO).then(|| Commitment {
            did: entry.did,
            agent: entry.agentId,
            block: entry.blockNumberUpdated.try_into().unwrap_or(u64::MAX),
        }))
    }
}

/// `insitu verify`'s chain check: `receipt`'s hash is committed on-chain as
/// a provenance entry of one of its datasets, by its signer.
pub async fn verify_committed(
    chain: &Chain,
    receipt: &insitu_runtime::receipt::Receipt,
) -> insitu_runtime::verify::Check {
    let check = |ok: bool, detail: String| insitu_runtime::verify::Check {
        name: "on-chain".into(),
        ok,
        detail,
    };
    let Some(hash) = receipt.hash.parse::<B256>().ok() else {
        return check(
            false,
            format!("the receipt hash `{}` is not 32 bytes of hex", receipt.hash),
        );
    };
    let datasets: Vec<String> = receipt.body["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["did"].as_str().map(str::to_string))
        .collect();
    match chain.commitment(hash).await {
        Err(e) => check(false, e.to_string()),
        Ok(None) => check(
            false,
            format!(
                "the receipt hash {} is not committed on-chain (no DIDRegistry provenance entry); the provider has not settled it yet, or it is not the receipt it committed",
                receipt.hash
            ),
        ),
        Ok(Some(c)) => {
            let did = did_of(c.did).to_string();
            let agent = c.agent.to_checksum(None);
            if !datasets.contains(&did) {
                check(
                    false,
                    format!(
                        "committed in block {} for {did}, which is not a dataset of the receipt ({})",
                        c.block,
                        datasets.join(", ")
                    ),
                )
            } else if !agent.eq_ignore_ascii_case(&receipt.signer) {
                check(
                    false,
                    format!(
                        "committed in block {} by {agent}, not by the receipt's signer {}",
                        c.block, receipt.signer
                    ),
                )
            } else {
                check(
                    true,
                    format!(
                        "committed in block {} for dataset {did} by {agent}",
                        c.block
                    ),
                )
            }
        }
    }
}
