//! Who may execute what: the seam between the gateway and wherever service
//! agreements live. [`LocalAgreements`] reads the embedded store (the default,
//! `insitu agreement grant`); an on-chain implementation reads the Nevermined
//! contracts. The gateway asks before it resolves or queues anything.

use crate::Error;
use crate::store::{AccessAgreement, Agreement, Store};
use std::sync::Arc;

pub use crate::job::BoxFuture;

/// Decides whether a consumer may execute a workflow under an agreement.
pub trait Permissions: Send + Sync + std::fmt::Debug {
    /// The agreement `agreement_id` (lowercase `0x` + 64 hex) if `consumer`
    /// (lowercase address) may execute `workflow` under it at `now` (unix
    /// seconds).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agreement; [`Error::Denied`] naming
    /// the reason (another consumer, another workflow, expired, unpaid…);
    /// other errors when the source of agreements cannot be read.
    fn check_execute<'a>(
        &'a self,
        agreement_id: &'a str,
        consumer: &'a str,
        workflow: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Agreement, Error>>;

    /// The access agreement `agreement_id` if `consumer` may download the
    /// files of `dataset` (a DID) under it at `now`. An implementation that
    /// settles grants access and releases the payment here.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agreement; [`Error::Denied`] naming
    /// the reason (another consumer, another dataset, expired, unpaid, a
    /// dataset not offered for download…).
    fn check_access<'a>(
        &'a self,
        agreement_id: &'a str,
        consumer: &'a str,
        dataset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<AccessAgreement, Error>>;

    /// Whether [`Permissions::settle`] has anything to do (default: no).
    fn settles(&self) -> bool {
        false
    }

    /// Settles a succeeded execution under `agreement` whose receipt hash
    /// is `receipt_hash` (`0x` + 64 hex): e.g. releases the escrowed payment
    /// and commits the hash on-chain. Returns what was done (recorded with the
    /// execution). Default: nothing to settle (`null`).
    ///
    /// # Errors
    /// When settling fails; the execution stays succeeded.
    fn settle<'a>(
        &'a self,
        agreement: &'a Agreement,
        receipt_hash: &'a str,
    ) -> BoxFuture<'a, Result<serde_json::Value, Error>> {
        let _ = (agreement, receipt_hash);
        Box::pin(async { Ok(serde_json::Value::Null) })
    }
}

/// Local agreements in the provider's store: the agreement's consumer may
/// execute its workflow, as often as they like, until it times out.
#[derive(Debug, Clone)]
pub struct LocalAgreements {
    pub store: Arc<Store>,
}

impl LocalAgreements {
    fn check(
        &self,
        agreement_id: &str,
        consumer: &str,
        workflow: &str,
        now: u64,
    ) -> Result<Agreement, Error> {
        let mut agreement = self.store.agreement(agreement_id)?;
        if agreement.consumer != consumer {
            return Err(Error::Denied(format!(
                "agreement {agreement_id} belongs to another consumer"
            )));
        }
        if !agreement.workflow.as_str().eq_ignore_ascii_case(workflow) {
            // A workflow the consumer published runs under their agreement
            // for a dataset it reads (resolving checks the rest: every other
            // dataset covered, every image allowed).
            let did = crate::workflow::Did::parse(workflow).map_err(|_| Error::Invalid {
                what: "workflow DID",
                value: workflow.to_string(),
                reason: "expected did:nv: followed by 64 hex digits",
            })?;
            let owned = self
                .store
                .workflow_owner(&did)
                .ok()
                .flatten()
                .is_some_and(|o| o.eq_ignore_ascii_case(consumer));
            if !owned {
                return Err(Error::Denied(format!(
                    "agreement {agreement_id} is for workflow {}, not {workflow} (a workflow runs under an agreement for it, or under any agreement of the consumer who published it)",
                    agreement.workflow
                )));
            }
            if !self
                .store
                .workflow(&did)?
                .datasets()
                .contains(&&agreement.dataset)
            {
                return Err(Error::Denied(format!(
                    "workflow {workflow} does not read dataset {}, which agreement {agreement_id} is for",
                    agreement.dataset
                )));
            }
            agreement.workflow = did;
        }
        agreement.live_at(now)?;
        Ok(agreement)
    }
}

impl LocalAgreements {
    fn check_access(
        &self,
        agreement_id: &str,
        consumer: &str,
        dataset: &str,
        now: u64,
    ) -> Result<AccessAgreement, Error> {
        let agreement = self.store.access_agreement(agreement_id)?;
        if agreement.consumer != consumer {
            return Err(Error::Denied(format!(
                "access agreement {agreement_id} belongs to another consumer"
            )));
        }
        if !agreement.dataset.as_str().eq_ignore_ascii_case(dataset) {
            return Err(Error::Denied(format!(
                "access agreement {agreement_id} is for dataset {}, not {dataset}",
                agreement.dataset
            )));
        }
        agreement.live_at(now)?;
        Ok(agreement)
    }
}

impl Permissions for LocalAgreements {
    fn check_access<'a>(
        &'a self,
        agreement_id: &'a str,
        consumer: &'a str,
        dataset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<AccessAgreement, Error>> {
        Box::pin(async move { self.check_access(agreement_id, consumer, dataset, now) })
    }

    fn check_execute<'a>(
        &'a self,
        agreement_id: &'a str,
        consumer: &'a str,
        workflow: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Agreement, Error>> {
        Box::pin(async move { self.check(agreement_id, consumer, workflow, now) })
    }
}
