//! DDOs as a Nevermined client needs them: the catalog stores what an asset
//! is; this adds, when a DDO is served, how to act on it from here — each
//! service's `serviceEndpoint` on this gateway (config `public_url`, else
//! the URL the client used), and for a dataset's `compute` and `access`
//! services the provider as `creator`, the agreement template's address as
//! `templateId` (chain mode) and a `serviceAgreementTemplate` whose
//! conditions (lock payment, compute or access, escrow payment) carry the
//! values the consumer needs: DID, escrow address, token, amounts,
//! receivers. Computed on every read, so a changed URL or deployment never
//! leaves stale endpoints in the store.

use serde_json::{Value, json};

/// What the services of a served DDO point at.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// The gateway's public base URL, no trailing `/`.
    pub base: String,
    /// The provider's address (`0x…`), who receives payments.
    pub provider: String,
    /// Chain mode: the deployed contracts.
    pub contracts: Option<insitu_chain::Addresses>,
}

fn hex(a: impl std::fmt::LowerHex) -> String {
    format!("{a:#x}")
}

fn param(name: &str, ty: &str, value: Value) -> Value {
    json!({"name": name, "type": ty, "value": value})
}

impl Services {
    /// Adds endpoints, templates and conditions to the services of `ddo`.
    pub fn decorate(&self, ddo: &mut Value) {
        let did = ddo["id"].as_str().unwrap_or_default().to_string();
        let Some(services) = ddo["service"].as_array_mut() else {
            return;
        };
        for s in services {
            let kind = s["type"].as_str().unwrap_or_default().to_string();
            let endpoint = match kind.as_str() {
                "metadata" => format!("{}/api/v1/metadata/assets/ddo/{did}", self.base),
                "compute" => format!("{}/api/v1/node/services/execute", self.base),
                "access" => format!("{}/api/v1/node/services/access", self.base),
                _ => continue,
            };
            s["serviceEndpoint"] = json!(endpoint);
            if kind == "metadata" {
                continue;
            }
            let main = &s["attributes"]["main"];
            let price = main["price"].as_str().unwrap_or("0").to_string();
            let token = main["priceToken"]
                .as_str()
                .unwrap_or("0x0000000000000000000000000000000000000000")
                .to_string();
            s["attributes"]["main"]["creator"] = json!(self.provider);
            let c = self.contracts.as_ref();
            let (template_name, template, release_name, release_contract) = if kind == "compute" {
                (
                    "EscrowComputeExecutionTemplate",
                    c.map(|c| hex(c.template)),
                    "execCompute",
                    "ComputeExecutionCondition",
                )
            } else {
                (
                    "AccessTemplate",
                    c.and_then(|c| c.access).map(|a| hex(a.template)),
                    "access",
                    "AccessCondition",
                )
            };
            if let Some(t) = template {
                s["templateId"] = json!(t);
            }
            let escrow = c.map(|c| hex(c.escrow_payment)).unwrap_or_default();
            s["attributes"]["serviceAgreementTemplate"] = json!({
                "contractName": template_name,
                "fulfillmentOrder": ["lockPayment.fulfill", format!("{release_name}.fulfill"), "escrowPayment.fulfill"],
                "conditionDependency": {
                    "lockPayment": [],
                    release_name: [],
                    "escrowPayment": ["lockPayment", release_name],
                },
                "conditions": [
                    {"name": "lockPayment", "timelock": 0, "timeout": 0,
                     "contractName": "LockPaymentCondition", "functionName": "fulfill",
                     "parameters": [
                        param("_did", "bytes32", json!(did)),
                        param("_rewardAddress", "address", json!(escrow)),
                        param("_tokenAddress", "address", json!(token)),
                        param("_amounts", "uint256[]", json!([price])),
                        param("_receivers", "address[]", json!([self.provider])),
                     ]},
                    {"name": release_name, "timelock": 0, "timeout": 0,
                     "contractName": release_contract, "functionName": "fulfill",
                     "parameters": [
                        param("_documentId", "bytes32", json!(did)),
                        param("_grantee", "address", json!("")),
                     ]},
                    {"name": "escrowPayment", "timelock": 0, "timeout": 0,
                     "contractName": "EscrowPaymentCondition", "functionName": "fulfill",
                     "parameters": [
                        param("_did", "bytes32", json!(did)),
                        param("_amounts", "uint256[]", json!([price])),
                        param("_receivers", "address[]", json!([self.provider])),
                        param("_returnAddress", "address", json!("")),
                        param("_lockPaymentAddress", "address", json!(escrow)),
                        param("_tokenAddress", "address", json!(token)),
                        param("_lockCondition", "bytes32", json!("")),
                        param("_releaseCondition", "bytes32", json!("")),
                     ]},
                ],
            });
        }
    }
}
