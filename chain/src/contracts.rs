//! The contracts: their interfaces (`sol!`, the 3.5.9 ABI subset insitu
//! calls), where a deployment put them ([`Addresses`]), and the values they
//! hold (condition states, prices).

use crate::ChainError;
use alloy::primitives::{Address, U256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    pub(crate) fn from_u8(v: u8) -> ConditionState {
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
