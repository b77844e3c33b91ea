//! # insitu-chain
//!
//! Service agreements on-chain, against the real Nevermined compute contracts
//! (`EscrowComputeExecutionTemplate` and its conditions, `@nevermined-io/contracts`
//! 3.5.9), through `alloy`.
//!
//! - [`Addresses`] reads the contract-name → address JSON file a deployment
//!   (or the `testchain/` fixture) writes.
//! - [`ids`] computes agreement, DID and condition ids exactly as the
//!   contracts do (`keccak256(abi.encode(...))`), so the provider never has
//!   to trust ids a consumer sends.
//! - [`Chain`] is the RPC client: agreement data, condition states, and the
//!   provider's transactions (granting compute).
//! - [`ChainAgreements`] implements [`Permissions`]: per agreement, never by
//!   `wasComputeTriggered` alone (it is keyed by DID and consumer, so it stays
//!   true for later unpaid agreements).

pub mod ids;

/// The `alloy` this crate uses, for callers that need its types.
pub use alloy;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use insitu_runtime::permissions::{BoxFuture, Permissions};
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::store::{AccessAgreement, Agreement, Store};
use insitu_runtime::workflow::Did;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The contract interfaces the provider (and the tests, as consumer) use.
mod interfaces {
    #![allow(clippy::too_many_arguments)]
    alloy::sol! {
    #[sol(rpc)]
    interface IEscrowComputeExecutionTemplate {
        function getAgreementData(bytes32 _id) external view returns (address accessConsumer, address accessProvider, bytes32 did);
        function createAgreement(bytes32 _id, bytes32 _did, bytes32[] _conditionIds, uint256[] _timeLocks, uint256[] _timeOuts, address _accessConsumer) external;
    }

    #[sol(rpc)]
    interface IAccessCondition {
        function fulfill(bytes32 _agreementId, bytes32 _documentId, address _grantee) external returns (uint8);
    }

    #[sol(rpc)]
    interface IERC20 {
        function approve(address spender, uint256 amount) external returns (bool);
        function balanceOf(address account) external view returns (uint256);
        function mint(address account, uint256 amount) external returns (bool);
    }

    #[sol(rpc)]
    interface IConditionStoreManager {
        function getCondition(bytes32 _id) external view returns (address typeRef, uint8 state, uint256 timeLock, uint256 timeOut, uint256 blockNumber);
    }

    #[sol(rpc)]
    interface IComputeExecutionCondition {
        function fulfill(bytes32 _agreementId, bytes32 _did, address _computeConsumer) external returns (uint8);
        function hashValues(bytes32 _did, address _computeConsumer) external pure returns (bytes32);
    }

    #[sol(rpc)]
    interface ILockPaymentCondition {
        event Fulfilled(bytes32 indexed _agreementId, bytes32 indexed _did, bytes32 indexed _conditionId, address _rewardAddress, address _tokenAddress, address[] _receivers, uint256[] _amounts);
        function fulfill(bytes32 _agreementId, bytes32 _did, address _rewardAddress, address _tokenAddress, uint256[] _amounts, address[] _receivers) external payable returns (uint8);
        function hashValues(bytes32 _did, address _rewardAddress, address _tokenAddress, uint256[] _amounts, address[] _receivers) external pure returns (bytes32);
    }

    #[sol(rpc)]
    interface IEscrowPaymentCondition {
        function fulfill(bytes32 _agreementId, bytes32 _did, uint256[] _amounts, address[] _receivers, address _returnAddress, address _lockPaymentAddress, address _tokenAddress, bytes32 _lockCondition, bytes32 _releaseCondition) external returns (uint8);
        function hashValues(bytes32 _did, uint256[] _amounts, address[] _receivers, address _returnAddress, address _lockPaymentAddress, address _tokenAddress, bytes32 _lockCondition, bytes32 _releaseCondition) external pure returns (bytes32);
    }

    #[sol(rpc)]
    interface IDIDRegistry {
        function registerDID(bytes32 _didSeed, bytes32 _checksum, address[] _providers, string _url, bytes32 _activityId, string _immutableUrl) external;
        function hashDID(bytes32 _didSeed, address _creator) external pure returns (bytes32);
        function getDIDOwner(bytes32 _did) external view returns (address didOwner);
        function used(bytes32 _provId, bytes32 _did, address _agentId, bytes32 _activityId, bytes _signatureUsing, string _attributes) external returns (bool success);
        function getProvenanceEntry(bytes32 _provId) external view returns (bytes32 did, bytes32 relatedDid, address agentId, bytes32 activityId, address agentInvolvedId, uint8 method, address createdBy, uint256 blockNumberUpdated, bytes signature);
    }
    }
}

pub use interfaces::*;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("contract addresses {path}: {reason}")]
    Addresses { path: PathBuf, reason: String },
    #[error("the chain RPC at {url} is unavailable: {reason}")]
    Rpc { url: String, reason: String },
    #[error("{call} reverted: {reason}")]
    Reverted { call: String, reason: String },
    /// The node serves another chain than the configured one.
    #[error(
        "the chain RPC at {url} serves chain id {actual}, not the configured {expected}; fix chain_rpc or chain_id"
    )]
    WrongChain {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// Gas costs more than the provider's cap; sending is left for later.
    #[error(
        "{call} not sent: the chain's base fee of {base_fee} wei per gas is above max_fee_per_gas ({cap} wei); it is retried later, or raise the cap"
    )]
    GasAboveCap {
        call: String,
        base_fee: u128,
        cap: u128,
    },
    /// Earlier transactions of the provider are still unmined; deciding now
    /// could send one of them again.
    #[error(
        "{call} not sent: {count} earlier transaction(s) of the provider {provider} still wait to be mined after {waited:?}; it is retried later (raise tx_timeout, or the fee cap if they are underpriced)"
    )]
    InFlight {
        call: String,
        provider: Address,
        count: u64,
        waited: Duration,
    },
}

impl From<ChainError> for insitu_runtime::Error {
    /// An unreachable chain is `Unavailable` (503, retried); a contract that
    /// refuses is `Denied` with its revert reason.
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Rpc { .. }
            | ChainError::Addresses { .. }
            | ChainError::WrongChain { .. }
            | ChainError::GasAboveCap { .. }
            | ChainError::InFlight { .. } => insitu_runtime::Error::Unavailable(e.to_string()),
            ChainError::Reverted { .. } => insitu_runtime::Error::Denied(e.to_string()),
        }
    }
}

/// The contracts the provider talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub condition_store_manager: Address,
    pub template: Address,
    pub compute: Address,
    pub lock_payment: Address,
    pub escrow_payment: Address,
    pub did_registry: Address,
    /// `AccessTemplate` and `AccessCondition`, when deployed (data sharing).
    pub access: Option<AccessContracts>,
}

/// The contracts of access agreements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessContracts {
    pub template: Address,
    pub condition: Address,
}

/// The service an agreement is for: which template created it and which
/// condition releases its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `EscrowComputeExecutionTemplate`, released by `ComputeExecutionCondition`.
    Compute,
    /// `AccessTemplate`, released by `AccessCondition`.
    Access,
}

impl Addresses {
    /// The (template, release condition) of `service`.
    ///
    /// # Errors
    /// [`ChainError::Addresses`] when the access contracts are not in the
    /// addresses file.
    pub fn of(&self, service: Service) -> Result<(Address, Address), ChainError> {
        match service {
            Service::Compute => Ok((self.template, self.compute)),
            Service::Access => self
                .access
                .map(|a| (a.template, a.condition))
                .ok_or_else(|| ChainError::Addresses {
                    path: PathBuf::from("(contracts file)"),
                    reason: "no AccessTemplate and AccessCondition: this deployment cannot make access agreements; add their addresses".into(),
                }),
        }
    }
}

impl Addresses {
    /// Reads a JSON object of contract name → address (as the fixture and
    /// Nevermined's deployments write it).
    ///
    /// # Errors
    /// [`ChainError::Addresses`] naming the file and the missing or malformed entry.
    pub fn from_file(path: &Path) -> Result<Addresses, ChainError> {
        let err = |reason: String| ChainError::Addresses {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| err(format!("not a JSON object: {e}")))?;
        let get = |name: &str| -> Result<Address, ChainError> {
            let v = map
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| err(format!("no address for {name}")))?;
            v.parse()
                .map_err(|e| err(format!("{name}: `{v}` is not an address: {e}")))
        };
        Ok(Addresses {
            condition_store_manager: get("ConditionStoreManager")?,
            template: get("EscrowComputeExecutionTemplate")?,
            compute: get("ComputeExecutionCondition")?,
            lock_payment: get("LockPaymentCondition")?,
            escrow_payment: get("EscrowPaymentCondition")?,
            did_registry: get("DIDRegistry")?,
            access: match (
                map.contains_key("AccessTemplate"),
                map.contains_key("AccessCondition"),
            ) {
                (false, false) => None,
                _ => Some(AccessContracts {
                    template: get("AccessTemplate")?,
                    condition: get("AccessCondition")?,
                }),
            },
        })
    }
}

/// A condition's state as the ConditionStoreManager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionState {
    Uninitialized,
    Unfulfilled,
    Fulfilled,
    Aborted,
}

impl ConditionState {
    fn from_u8(v: u8) -> ConditionState {
        match v {
            1 => ConditionState::Unfulfilled,
            2 => ConditionState::Fulfilled,
            3 => ConditionState::Aborted,
            _ => ConditionState::Uninitialized,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionState::Uninitialized => "uninitialized",
            ConditionState::Unfulfilled => "unfulfilled",
            ConditionState::Fulfilled => "fulfilled",
            ConditionState::Aborted => "aborted",
        }
    }
}

/// A condition: its state and time-out (in blocks from `block_number`; 0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub state: ConditionState,
    pub time_out: u64,
    pub block_number: u64,
}

/// What a dataset costs: paid into escrow by the lock condition, released to
/// `receivers` after the execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// `Address::ZERO` for the chain's native currency.
    pub token: Address,
    pub amounts: Vec<U256>,
    pub receivers: Vec<Address>,
}

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
    provider: DynProvider,
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
    fn rpc(&self, e: impl std::fmt::Display) -> ChainError {
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

    /// The provider grants compute (`ComputeExecutionCondition.fulfill`);
    /// returns the transaction hash once mined.
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`].
    pub async fn fulfill_compute(
        &self,
        agreement: B256,
        did: B256,
        consumer: Address,
    ) -> Result<B256, ChainError> {
        let c = IComputeExecutionCondition::new(self.addresses.compute, &self.provider);
        self.transact(
            "ComputeExecutionCondition.fulfill",
            c.fulfill(agreement, did, consumer),
        )
        .await
    }

    /// Grants access on-chain for `agreement` (`AccessCondition.fulfill`);
    /// returns the transaction hash once mined.
    ///
    /// # Errors
    /// [`ChainError::Reverted`] with the revert reason; [`ChainError::Rpc`];
    /// [`ChainError::Addresses`] without the access contracts.
    pub async fn fulfill_access(
        &self,
        agreement: B256,
        did: B256,
        consumer: Address,
    ) -> Result<B256, ChainError> {
        let (_, condition) = self.addresses.of(Service::Access)?;
        let c = IAccessCondition::new(condition, &self.provider);
        self.transact(
            "AccessCondition.fulfill",
            c.fulfill(agreement, did, consumer),
        )
        .await
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
        use alloy::sol_types::SolEvent;
        let filter = alloy::rpc::types::Filter::new()
            .address(self.addresses.lock_payment)
            .event_signature(ILockPaymentCondition::Fulfilled::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| self.rpc(e))?;
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
        use alloy::sol_types::SolEvent;
        let filter = alloy::rpc::types::Filter::new()
            .address(self.addresses.lock_payment)
            .event_signature(ILockPaymentCondition::Fulfilled::SIGNATURE_HASH)
            .topic2(did)
            .from_block(from)
            .to_block(to);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| self.rpc(e))?;
        Ok(logs
            .iter()
            .filter_map(|l| l.topics().get(1).copied())
            .collect())
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
    let tx = chain.fulfill_compute(agreement, did, consumer).await?;
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
    cache: Mutex<HashMap<CacheKey, (Instant, Agreement)>>,
    access_cache: Mutex<HashMap<CacheKey, (Instant, AccessAgreement)>>,
}

/// (agreement id, consumer, workflow).
type CacheKey = (String, String, String);

fn denied(m: String) -> insitu_runtime::Error {
    insitu_runtime::Error::Denied(m)
}

impl ChainAgreements {
    pub fn new(chain: Arc<Chain>, store: Arc<Store>, ttl: Duration) -> ChainAgreements {
        ChainAgreements {
            chain,
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
            access_cache: Mutex::new(HashMap::new()),
        }
    }

    async fn check(
        &self,
        agreement_id: &str,
        consumer: &str,
        workflow: &str,
    ) -> Result<Agreement, insitu_runtime::Error> {
        let key = (
            agreement_id.to_string(),
            consumer.to_string(),
            workflow.to_string(),
        );
        if let Some((at, a)) = insitu_runtime::sync::lock(&self.cache).get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(a.clone());
        }
        let id: B256 = agreement_id
            .parse()
            .map_err(|_| insitu_runtime::Error::Invalid {
                what: "agreement id",
                value: agreement_id.to_string(),
                reason: "expected 0x followed by 64 hex digits",
            })?;
        let (on_chain_consumer, did) = self
            .chain
            .agreement_data(id)
            .await?
            .ok_or_else(|| insitu_runtime::Error::NotFound {
                what: "agreement",
                id: agreement_id.to_string(),
                hint: "; it does not exist on-chain (create it with EscrowComputeExecutionTemplate.createAgreement)",
            })?;
        if format!("{on_chain_consumer:#x}") != consumer {
            return Err(denied(format!(
                "agreement {agreement_id} belongs to another consumer"
            )));
        }
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
        self.paid(id, agreement_id, did, on_chain_consumer, Service::Compute)
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
        insitu_runtime::sync::lock(&self.cache).insert(key, (Instant::now(), agreement.clone()));
        Ok(agreement)
    }

    /// Checks that agreement `id` (of `service`) on `did` is paid as the
    /// dataset's service prices it and its release condition (compute or
    /// access) has not timed out, and fulfils that condition on-chain if it
    /// is not yet; returns the price (what a release pays out).
    async fn paid(
        &self,
        id: B256,
        agreement_id: &str,
        did: B256,
        consumer: Address,
        service: Service,
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
            ConditionState::Unfulfilled => {
                let sent = match service {
                    Service::Compute => self.chain.fulfill_compute(id, did, consumer).await,
                    Service::Access => self.chain.fulfill_access(id, did, consumer).await,
                };
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
            match self
                .paid(id, &id_text, did, consumer, Service::Compute)
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
        let key = (
            agreement_id.to_string(),
            consumer.to_string(),
            dataset.to_string(),
        );
        if let Some((at, a)) = insitu_runtime::sync::lock(&self.access_cache).get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(a.clone());
        }
        let id: B256 = agreement_id
            .parse()
            .map_err(|_| insitu_runtime::Error::Invalid {
                what: "agreement id",
                value: agreement_id.to_string(),
                reason: "expected 0x followed by 64 hex digits",
            })?;
        let (on_chain_consumer, did) = self
            .chain
            .agreement_data_of(id, Service::Access)
            .await?
            .ok_or_else(|| insitu_runtime::Error::NotFound {
                what: "access agreement",
                id: agreement_id.to_string(),
                hint: "; it does not exist on-chain (create it with AccessTemplate.createAgreement, e.g. insitu agreement create --service access)",
            })?;
        if format!("{on_chain_consumer:#x}") != consumer {
            return Err(denied(format!(
                "access agreement {agreement_id} belongs to another consumer"
            )));
        }
        let on_chain_dataset = did_of(did);
        if !on_chain_dataset.as_str().eq_ignore_ascii_case(dataset) {
            return Err(denied(format!(
                "access agreement {agreement_id} is for dataset {on_chain_dataset}, not {dataset}"
            )));
        }
        let price = self
            .paid(id, agreement_id, did, on_chain_consumer, Service::Access)
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
        insitu_runtime::sync::lock(&self.access_cache)
            .insert(key, (Instant::now(), agreement.clone()));
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
        let price = price_of(&self.store, &agreement.dataset, self.chain.provider_address)
            .ok_or_else(|| denied(format!("dataset {} has no price", agreement.dataset)))?;
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
