//! Identifiers as the contracts compute them, all `keccak256(abi.encode(...))`.

use crate::Price;
use alloy::primitives::{Address, B256, keccak256};
use alloy::sol_types::SolValue;

/// The id of an agreement `creator` creates with `seed`.
pub fn agreement_id(seed: B256, creator: Address) -> B256 {
    keccak256((seed, creator).abi_encode_params())
}

/// The DID `creator` registers with `seed` (`DIDRegistry.hashDID`).
pub fn did(seed: B256, creator: Address) -> B256 {
    keccak256((seed, creator).abi_encode_params())
}

/// A condition's id in an agreement: `keccak256(abi.encode(agreementId,
/// conditionContract, valueHash))`.
pub fn condition_id(agreement: B256, condition: Address, value_hash: B256) -> B256 {
    keccak256((agreement, condition, value_hash).abi_encode_params())
}

/// `ComputeExecutionCondition.hashValues(did, consumer)`.
pub fn compute_hash(did: B256, consumer: Address) -> B256 {
    keccak256((did, consumer).abi_encode_params())
}

/// `LockPaymentCondition.hashValues(did, escrow, token, amounts, receivers)`.
pub fn lock_hash(did: B256, escrow: Address, price: &Price) -> B256 {
    keccak256(
        (
            did,
            escrow,
            price.token,
            price.amounts.clone(),
            price.receivers.clone(),
        )
            .abi_encode_params(),
    )
}

/// `EscrowPaymentCondition.hashValues(did, amounts, receivers, returnAddress,
/// lockPaymentAddress, token, lockCondition, releaseCondition)`, which hashes
/// the release condition as a one-element array (`hashValuesMulti`).
pub fn escrow_hash(
    did: B256,
    price: &Price,
    return_address: Address,
    lock_payment: Address,
    lock_condition: B256,
    release_condition: B256,
) -> B256 {
    keccak256(
        (
            did,
            price.amounts.clone(),
            price.receivers.clone(),
            return_address,
            lock_payment,
            price.token,
            lock_condition,
            vec![release_condition],
        )
            .abi_encode_params(),
    )
}
