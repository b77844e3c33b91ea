//! [`ChainError`], and how it maps onto the runtime's errors.

use alloy::primitives::Address;
use std::path::PathBuf;
use std::time::Duration;

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
