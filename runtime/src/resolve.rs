//! Resolve before you run: an agreement's workflow becomes a list of stages
//! whose images are pinned by checksum, whose datasets are local directories,
//! and which the agreement and the datasets' compute services permit. Backends
//! only ever see a [`Resolved`] execution.

use crate::Error;
use crate::store::{Agreement, Server, Store};
use crate::workflow::{Did, Input, Workflow};
use std::path::PathBuf;

/// Where a resolved stage reads an input from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedInput {
    /// A dataset's local directory.
    Dataset { did: Did, path: PathBuf },
    /// The output of an earlier stage of the same execution.
    PreviousStage(u32),
}

/// One stage, ready for a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedStage {
    pub index: u32,
    /// `image:tag@sha256:…`
    pub reference: String,
    /// `sha256:…` of the image manifest.
    pub checksum: String,
    pub inputs: Vec<ResolvedInput>,
    /// The tightest resources the compute services of the workflow's
    /// datasets offer; caps the provider's limits for this stage.
    pub server: Server,
    /// Extra arguments after the guest contract's.
    pub arguments: Vec<String>,
}

/// An execution ready to run.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub agreement: Agreement,
    pub workflow: Workflow,
    pub stages: Vec<ResolvedStage>,
    /// Every stage runs in deterministic mode: the workflow or one of its
    /// datasets asks for it.
    pub deterministic: bool,
    /// Set when the execution is a participant's round of a federated job.
    pub federated: Option<FederatedRound>,
    /// Datasets the workflow reads that the agreement does not cover, and the
    /// other agreement of the same consumer (for the same workflow) that does.
    pub covering: std::collections::BTreeMap<Did, String>,
    /// The strictest output policy of the datasets read: what the results
    /// must pass before they leave (open for datasets without one).
    pub output_policy: crate::airlock::OutputPolicy,
}

/// A federated round (see `insitu_guest::fl`): the workflow's one stage runs
/// with the global model as one more read-only input after the datasets and
/// `--fl-round=N` after its arguments; its update is kept aside (in
/// [`FederatedRound::UPDATE_DIR`] of the execution's directory) for masking
/// and nothing of its output is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedRound {
    /// The coordinator's job id.
    pub job: String,
    pub round: u64,
    /// The participant's id in the round.
    pub participant: u32,
    /// The directory holding the global model (`model.f64`, absent in round 0).
    pub model: PathBuf,
    /// `sha256:` of the model's bytes (of nothing in round 0).
    pub model_digest: String,
}

impl Resolved {
    /// The index of the stage whose outputs are the results: the last one
    /// (as [`crate::store::Execution::result_stage`] reads it back).
    pub fn result_stage(&self) -> u32 {
        self.stages.last().map_or(0, |s| s.index)
    }
}

impl FederatedRound {
    /// Where the update is kept, under the execution's directory, until it
    /// is masked; never served.
    pub const UPDATE_DIR: &'static str = "fl-update";
    /// Where, in the execution's directory, the round's global model is
    /// written for its training stage.
    pub const MODEL_DIR: &'static str = "fl-model";
    /// The files of the update (the guest SDK's `update.f64`, `update.json`).
    pub const UPDATE_FILES: [&'static str; 2] = ["update.f64", "update.json"];

    /// Checks that `resolved` can run as a round: one stage.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] for a workflow of several stages.
    pub fn check(resolved: &Resolved) -> Result<(), Error> {
        if resolved.stages.len() != 1 {
            return Err(Error::InvalidJob(format!(
                "a federated round runs a training workflow of one stage; workflow {} has {}",
                resolved.agreement.workflow,
                resolved.stages.len()
            )));
        }
        Ok(())
    }
}

/// Resolves `agreement`'s workflow at time `now` (unix seconds).
///
/// Every dataset the workflow reads must be the agreement's, or covered by
/// another unexpired agreement of the same consumer for the same workflow
/// ([`Store::covering_agreement`]: a stage may read several datasets, each
/// under its own agreement); every stage's image must be allowed (by checksum) by the compute service of every dataset
/// the workflow reads, since later stages process data derived from them.
///
/// # Errors
/// [`Error::Denied`] for an expired agreement, a dataset it does not cover, or
/// an image a compute service does not allow; [`Error::NotFound`] for unknown
/// assets; [`Error::InvalidJob`] when a dataset's directory has gone.
pub fn resolve(store: &Store, agreement: &Agreement, now: u64) -> Result<Resolved, Error> {
    agreement.live_at(now)?;
    let workflow = store.workflow(&agreement.workflow)?;
    // A workflow the consumer published runs under any of their agreements
    // for the datasets it reads; a provider's, under agreements for it.
    let own = store
        .workflow_owner(&agreement.workflow)?
        .is_some_and(|o| o.eq_ignore_ascii_case(&agreement.consumer));
    let covers = (!own).then_some(&agreement.workflow);
    let mut datasets = Vec::new();
    let mut covering = std::collections::BTreeMap::new();
    for did in workflow.datasets() {
        let ds = match store.dataset(did) {
            Ok(ds) => ds,
            // Not a dataset: a result of an earlier execution, read by its
            // owner (the data never left this provider).
            Err(e) => match store.ddo(did) {
                Ok((crate::store::AssetKind::Result, _)) => {
                    let ds = store.result_as_dataset(did, &agreement.consumer)?;
                    if !ds.path.is_dir() {
                        return Err(Error::InvalidJob(format!(
                            "result {did}'s files are missing on the provider"
                        )));
                    }
                    datasets.push(ds);
                    continue;
                }
                _ => return Err(e),
            },
        };
        if *did != agreement.dataset {
            match store.covering_agreement(&agreement.consumer, did, covers, now)? {
                Some(other) => {
                    covering.insert(did.clone(), other);
                }
                None => {
                    return Err(Error::Denied(format!(
                        "the workflow reads dataset {did}, which agreement {} does not cover (it covers {}), and consumer {} holds no other agreement for {did} and workflow {}; ask the provider for one (insitu agreement grant --dataset {did} --workflow {})",
                        agreement.id,
                        agreement.dataset,
                        agreement.consumer,
                        agreement.workflow,
                        agreement.workflow
                    )));
                }
            }
        }
        if !ds.path.is_dir() {
            return Err(Error::InvalidJob(format!(
                "dataset {did}'s directory {} is missing on the provider",
                ds.path.display()
            )));
        }
        datasets.push(ds);
    }
    let mut stages = Vec::with_capacity(workflow.stages.len());
    for stage in &workflow.stages {
        let checksum = &stage.container.checksum;
        for ds in &datasets {
            if !ds.allowed_images.contains(checksum) {
                return Err(Error::Denied(format!(
                    "stage {}'s image {} is not allowed by the compute service of dataset {} (allowed: {:?}); the provider can allow it with insitu asset add --allow-image",
                    stage.index,
                    stage.container.reference(),
                    ds.did,
                    ds.allowed_images
                )));
            }
        }
        let inputs = stage
            .inputs
            .iter()
            .map(|i| match i {
                Input::Dataset(did) => {
                    let ds = datasets
                        .iter()
                        .find(|d| &d.did == did)
                        .expect("checked above");
                    ResolvedInput::Dataset {
                        did: did.clone(),
                        path: ds.path.clone(),
                    }
                }
                Input::PreviousStage(n) => ResolvedInput::PreviousStage(*n),
            })
            .collect();
        stages.push(ResolvedStage {
            index: stage.index,
            reference: stage.container.reference(),
            checksum: checksum.clone(),
            inputs,
            server: datasets
                .iter()
                .fold(Server::default(), |s, d| s.min(&d.server)),
            arguments: stage.arguments.clone(),
        });
    }
    let policies = datasets
        .iter()
        .map(|d| store.output_policy(&d.did))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Resolved {
        output_policy: crate::airlock::OutputPolicy::strictest(&policies),
        agreement: agreement.clone(),
        deterministic: workflow.deterministic || datasets.iter().any(|d| d.deterministic),
        workflow,
        stages,
        federated: None,
        covering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OK: &str = "sha256:cb57ecfa6ebbefd8ffc7f75c0f00e57a7fa739578a429b6f72a0df19315deadc";
    const OTHER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    const ALICE: &str = "0x5b38da6a701c568545dcfcb03fcb875f56beddc4";

    fn setup(second_image: &str) -> (tempfile::TempDir, Store, Agreement) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let ds = store.add_dataset("d", &data, &[OK.into()], 60).unwrap();
        let wf = store
            .add_workflow(&json!({"main": {"type": "workflow", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "r/a", "tag": "1", "checksum": OK}}, "input": [{"index": 0, "id": ds}]},
                {"index": 1, "requirements": {"container": {"image": "r/b", "tag": "", "checksum": second_image}}, "input": [{"index": 0, "previousStage": 0}]}]}}}))
            .unwrap();
        let a = store
            .agreement(&store.grant(ALICE, &ds, &wf, 60).unwrap())
            .unwrap();
        (dir, store, a)
    }

    #[test]
    fn stages_are_pinned_and_wired() {
        let (dir, store, a) = setup(OK);
        let r = resolve(&store, &a, a.expires_at).unwrap();
        assert_eq!(r.stages[0].reference, format!("r/a:1@{OK}"));
        assert_eq!(
            r.stages[0].inputs,
            vec![ResolvedInput::Dataset {
                did: a.dataset.clone(),
                path: std::fs::canonicalize(dir.path().join("data")).unwrap()
            }]
        );
        assert_eq!(r.stages[1].inputs, vec![ResolvedInput::PreviousStage(0)]);
    }

    #[test]
    fn a_stage_may_read_datasets_under_several_agreements_of_one_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let mut dids = Vec::new();
        for name in ["a", "b"] {
            let data = dir.path().join(name);
            std::fs::create_dir(&data).unwrap();
            dids.push(store.add_dataset(name, &data, &[OK.into()], 60).unwrap());
        }
        let wf = store
            .add_workflow(&json!({"main": {"type": "workflow", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "r/a", "tag": "1", "checksum": OK}},
                 "input": [{"index": 0, "id": dids[0]}, {"index": 1, "id": dids[1]}]}]}}}))
            .unwrap();
        let a = store
            .agreement(&store.grant(ALICE, &dids[0], &wf, 60).unwrap())
            .unwrap();
        let e = resolve(&store, &a, a.expires_at).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "not permitted: the workflow reads dataset {b}, which agreement {} does not cover (it covers {}), and consumer {ALICE} holds no other agreement for {b} and workflow {wf}; ask the provider for one (insitu agreement grant --dataset {b} --workflow {wf})",
                a.id,
                dids[0],
                b = dids[1]
            )
        );
        // Another consumer's agreement for the second dataset does not count.
        store
            .grant(
                "0x0000000000000000000000000000000000000001",
                &dids[1],
                &wf,
                60,
            )
            .unwrap();
        assert!(resolve(&store, &a, a.expires_at).is_err());
        let b = store.grant(ALICE, &dids[1], &wf, 10).unwrap();
        let soon = a.expires_at - 55;
        let r = resolve(&store, &a, soon).unwrap();
        assert_eq!(r.covering.get(&dids[1]), Some(&b));
        assert_eq!(r.stages[0].inputs.len(), 2);
        // Once the other agreement expired it covers nothing, while the
        // execution's own is still valid.
        let e = resolve(&store, &a, a.expires_at).unwrap_err().to_string();
        assert!(
            e.contains(&format!("holds no other agreement for {}", dids[1])),
            "{e}"
        );
    }

    #[test]
    fn refusals() {
        let (dir, store, a) = setup(OTHER);
        let e = resolve(&store, &a, a.expires_at).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "not permitted: stage 1's image r/b@{OTHER} is not allowed by the compute service of dataset {} (allowed: [\"{OK}\"]); the provider can allow it with insitu asset add --allow-image",
                a.dataset
            )
        );
        let e = resolve(&store, &a, a.expires_at + 5)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "not permitted: agreement {} expired 5 s ago; ask the provider for a new agreement",
                a.id
            )
        );
        let (dir2, store2, a2) = setup(OK);
        std::fs::remove_dir(dir2.path().join("data")).unwrap();
        assert!(
            resolve(&store2, &a2, a2.expires_at)
                .unwrap_err()
                .to_string()
                .ends_with("is missing on the provider")
        );
        drop(dir);
    }
}
