//! `insitu k8s manifests`: the objects a workflow's stage would create on
//! the cluster, for operators to review or `kubectl apply --dry-run=server`.

use anyhow::Context;
use insitu_kubernetes::KubeSettings;
use insitu_kubernetes::manifests::{stage_objects, to_yaml};
use insitu_runtime::backend::{StageCode, StageJob};
use insitu_runtime::pipeline::pinned;
use insitu_runtime::sandbox::{JobSpec, Limits};
use insitu_runtime::workflow::{Input, Workflow};
use std::path::{Path, PathBuf};

/// `insitu k8s`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum K8sCommand {
    /// Print the NetworkPolicy and Pod (YAML) stage N of a workflow would
    /// create, for review or `kubectl apply --dry-run=server -f -`.
    Manifests {
        /// The workflow (its metadata, or a DDO holding it).
        #[arg(long, value_name = "WORKFLOW.json")]
        workflow: PathBuf,
        #[arg(long, value_name = "N")]
        stage: u32,
        /// Resolve datasets in this data dir's catalog; without it they are
        /// placeholder volumes named `unresolved-dataset-N`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file holding `[kubernetes]` and `[limits]`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

impl K8sCommand {
    /// Prints the manifests.
    ///
    /// # Errors
    /// An unreadable config file; as [`manifests`].
    pub fn execute(self) -> anyhow::Result<bool> {
        use crate::config::{Layer, Settings};
        let K8sCommand::Manifests {
            workflow,
            stage,
            data_dir,
            config,
        } = self;
        let layers = match &config {
            Some(f) => vec![Layer::from_file(f)?],
            None => Vec::new(),
        };
        let settings = Settings::resolve(&layers)?;
        let yaml = manifests(
            &workflow,
            stage,
            data_dir.as_deref(),
            &settings.serve.kubernetes.unwrap_or_default(),
            settings.serve.limits,
        )?;
        print!("{yaml}");
        Ok(true)
    }
}

/// Placeholder execution and agreement ids (the real ones exist only once a
/// consumer executes).
const EXECUTION: &str = "nv-00000000000000000000000000000000";
const AGREEMENT: &str = "0x0000000000000000000000000000000000000000000000000000000000000000";

/// The YAML of stage `stage` of the workflow in `file`, as a native image
/// (wasm artifacts run in-process unless `[kubernetes] wasm = true`). With
/// `data_dir`, datasets resolve to their directories in its catalog;
/// without, they appear as `unresolved-dataset-N` volumes.
///
/// # Errors
/// Unreadable or invalid workflow, no such stage, unknown datasets, settings
/// that cannot work.
pub fn manifests(
    file: &Path,
    stage: u32,
    data_dir: Option<&Path>,
    settings: &KubeSettings,
    limits: Limits,
) -> anyhow::Result<String> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let workflow =
        Workflow::from_json(&text).with_context(|| format!("workflow {}", file.display()))?;
    let s = workflow
        .stages
        .iter()
        .find(|s| s.index == stage)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the workflow has no stage {stage} (its stages: {:?})",
                workflow.stages.iter().map(|s| s.index).collect::<Vec<_>>()
            )
        })?;
    settings.check()?;
    let root = match data_dir {
        Some(d) => std::fs::canonicalize(d).with_context(|| format!("data dir {}", d.display()))?,
        None => PathBuf::from("/var/lib/insitu"),
    };
    let store = match data_dir {
        Some(_) => Some(insitu_runtime::store::Store::open(root.join("insitu.db"))?),
        None => None,
    };
    let work = root.join("executions").join(EXECUTION);
    let mut inputs = Vec::new();
    let mut datasets = Vec::new();
    for input in &s.inputs {
        match input {
            Input::Dataset(did) => {
                inputs.push(match &store {
                    Some(store) => store.dataset(did)?.path,
                    None => PathBuf::new(),
                });
                datasets.push(Some(did.clone()));
            }
            Input::PreviousStage(n) => {
                inputs.push(work.join(format!("stage-{n}")).join("outputs"));
                datasets.push(None);
            }
        }
    }
    let stage_dir = work.join(format!("stage-{stage}"));
    let job = StageJob {
        execution: EXECUTION.into(),
        agreement: AGREEMENT.into(),
        stage,
        image: pinned(&s.container.reference(), &s.container.checksum),
        checksum: s.container.checksum.clone(),
        code: StageCode::Native,
        spec: JobSpec {
            name: format!("stage-{stage}"),
            inputs,
            output: stage_dir.join("outputs"),
            logs: stage_dir.join("logs"),
            args: s.arguments.clone(),
            env: Vec::new(),
            limits,
            deterministic: None,
        },
        datasets,
    };
    let (pod, policy) = stage_objects(&job, settings, &root)?;
    Ok(to_yaml(&pod, &policy)?)
}
