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

mod agreements;
mod client;
mod contracts;
mod error;
mod payments;

/// The `alloy` this crate uses, for callers that need its types.
pub use alloy;

pub use agreements::ChainAgreements;
pub use client::{Chain, Commitment, TxPolicy, verify_committed};
pub use contracts::*;
pub use error::ChainError;
pub use payments::{did_bytes, did_of, price_of, service_price, watch_payments};
