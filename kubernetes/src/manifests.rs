//! The objects a stage creates, as pure functions of the job and the
//! provider's settings: one hardened Pod and one NetworkPolicy denying all
//! ingress and egress to it. Golden tests pin them; `insitu k8s manifests`
//! prints them for review.

use crate::{KubeError, KubeSettings, VolumeSpec};
use insitu_runtime::backend::{StageCode, StageJob};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use std::collections::BTreeMap;
use std::path::Path;

/// Label on everything insitu creates; reconciliation lists by it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "insitu");
/// The execution id (`nv-…`).
pub const EXECUTION: &str = "insitu.dev/execution";
/// The agreement id without `0x`, cut to the 63 characters a label value
/// holds; the full id is the annotation of the same name.
pub const AGREEMENT: &str = "insitu.dev/agreement";
/// The stage index.
pub const STAGE: &str = "insitu.dev/stage";
/// The container running the stage.
pub const CONTAINER: &str = "stage";

/// Scratch space (`/tmp`) every stage gets; the root filesystem is read-only.
const TMP_SIZE: &str = "64Mi";

/// The name of the pod (and network policy) of `job`.
pub fn name(job: &StageJob) -> String {
    format!(
        "insitu-{}-s{}",
        job.execution.to_ascii_lowercase(),
        job.stage
    )
}

/// The labels of everything `job` creates.
pub fn labels(job: &StageJob) -> BTreeMap<String, String> {
    let agreement: String = job
        .agreement
        .trim_start_matches("0x")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        ("app.kubernetes.io/name".into(), "insitu-stage".into()),
        (EXECUTION.into(), job.execution.clone()),
        (AGREEMENT.into(), agreement),
        (STAGE.into(), job.stage.to_string()),
    ])
}

fn meta(job: &StageJob, settings: &KubeSettings) -> ObjectMeta {
    ObjectMeta {
        name: Some(name(job)),
        namespace: Some(settings.namespace.clone()),
        labels: Some(labels(job)),
        annotations: Some(BTreeMap::from([
            (AGREEMENT.to_string(), job.agreement.clone()),
            (
                "insitu.dev/image-checksum".to_string(),
                job.checksum.clone(),
            ),
        ])),
        ..ObjectMeta::default()
    }
}

/// Where the pod finds one host directory: a volume and a sub-path in it.
struct Mount {
    volume: Volume,
    sub_path: Option<String>,
}

fn volume(name: String, spec: &VolumeSpec, read_only: bool) -> Volume {
    match spec {
        VolumeSpec::HostPath { host_path } => Volume {
            name,
            host_path: Some(HostPathVolumeSource {
                path: host_path.display().to_string(),
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        },
        VolumeSpec::Claim { claim, .. } => Volume {
            name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(read_only),
            }),
            ..Volume::default()
        },
    }
}

/// `path` inside the data volume: the data volume holds the provider's data
/// dir, so the path relative to it.
fn in_data(settings: &KubeSettings, data_dir: &Path, path: &Path) -> Result<Mount, KubeError> {
    let rel = path
        .strip_prefix(data_dir)
        .map_err(|_| {
            KubeError::Config(format!(
                "{} is not inside the data dir {}, which is what the data volume holds",
                path.display(),
                data_dir.display()
            ))
        })?
        .display()
        .to_string();
    let spec = settings.data_volume(data_dir);
    let sub_path = match &spec {
        VolumeSpec::Claim {
            sub_path: Some(base),
            ..
        } => format!("{}/{rel}", base.trim_end_matches('/')),
        _ => rel,
    };
    Ok(Mount {
        volume: volume("data".into(), &spec, false),
        sub_path: Some(sub_path),
    })
}

/// The pod and network policy of `job`. `data_dir` is the provider's data
/// dir as the gateway sees it (executions and blobs live under it).
///
/// # Errors
/// [`KubeError::Config`] when a directory of the job is not reachable
/// through the configured volumes, or wasm stages lack `insitu_image`.
pub fn stage_objects(
    job: &StageJob,
    settings: &KubeSettings,
    data_dir: &Path,
) -> Result<(Pod, NetworkPolicy), KubeError> {
    let mut mounts: Vec<(Mount, String, bool)> = Vec::new();
    for (n, input) in job.spec.inputs.iter().enumerate() {
        let at = format!("/data/inputs/{}", n + 1);
        let mount = match job.datasets.get(n).cloned().flatten() {
            Some(did) => {
                let name = format!("input-{}", n + 1);
                match settings.datasets.get(did.as_str()) {
                    Some(spec @ VolumeSpec::Claim { sub_path, .. }) => Mount {
                        volume: volume(name, spec, true),
                        sub_path: sub_path.clone(),
                    },
                    Some(spec) => Mount {
                        volume: volume(name, spec, true),
                        sub_path: None,
                    },
                    None if input.as_os_str().is_empty() => Mount {
                        // `insitu k8s manifests` without a data dir.
                        volume: Volume {
                            name: format!("unresolved-dataset-{}", n + 1),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: format!(
                                    "unresolved-{}",
                                    did.as_str().replace(':', "-")
                                ),
                                read_only: Some(true),
                            }),
                            ..Volume::default()
                        },
                        sub_path: None,
                    },
                    None => Mount {
                        volume: volume(
                            name,
                            &VolumeSpec::HostPath {
                                host_path: input.clone(),
                            },
                            true,
                        ),
                        sub_path: None,
                    },
                }
            }
            None => in_data(settings, data_dir, input)?,
        };
        mounts.push((mount, at, true));
    }
    mounts.push((
        in_data(settings, data_dir, &job.spec.output)?,
        "/data/outputs".into(),
        false,
    ));
    mounts.push((
        in_data(settings, data_dir, &job.spec.logs)?,
        "/data/logs".into(),
        false,
    ));
    let limits = &job.spec.limits;
    let (image, command, args) = match &job.code {
        StageCode::Native => {
            let mut args: Vec<String> = (1..=job.spec.inputs.len())
                .map(|n| format!("--input{n}=/data/inputs/{n}"))
                .collect();
            args.push("--output=/data/outputs".into());
            args.push("--logs=/data/logs".into());
            args.extend(job.spec.args.iter().cloned());
            (job.image.clone(), None, args)
        }
        StageCode::Wasm(module) => {
            let image = settings.insitu_image.clone().ok_or_else(|| {
                KubeError::Config(
                    "wasm stages on the cluster need insitu_image (an image holding the insitu binary, pinned by @sha256:…)".into(),
                )
            })?;
            let blob = insitu_runtime::datadir::DataDir::new(data_dir).blob(&module.digest);
            mounts.push((
                in_data(settings, data_dir, &blob)?,
                "/data/module.wasm".into(),
                true,
            ));
            let mut args = vec![
                "run".to_string(),
                "--module".into(),
                "/data/module.wasm".into(),
            ];
            for n in 1..=job.spec.inputs.len() {
                args.extend(["--input".into(), format!("/data/inputs/{n}")]);
            }
            args.extend([
                "--output".into(),
                "/data/outputs".into(),
                "--logs".into(),
                "/data/logs".into(),
                "--timeout".into(),
                format!("{}ms", limits.timeout.as_millis()),
                "--memory".into(),
                format!("{}KiB", limits.memory.div_ceil(1024)),
                "--output-quota".into(),
                format!("{}KiB", limits.output_quota.div_ceil(1024)),
                "--log-quota".into(),
                format!("{}KiB", limits.log_quota.div_ceil(1024)),
                "--no-cache".into(),
            ]);
            if !job.spec.args.is_empty() {
                args.push("--".into());
                args.extend(job.spec.args.iter().cloned());
            }
            (image, Some(vec!["insitu".to_string()]), args)
        }
    };
    // One volume per distinct source; mounts refer to it by name.
    let mut volumes: Vec<Volume> = Vec::new();
    let mut volume_mounts = Vec::new();
    for (mount, at, read_only) in mounts {
        let name = mount.volume.name.clone();
        if !volumes.iter().any(|v| v.name == name) {
            volumes.push(mount.volume);
        }
        volume_mounts.push(VolumeMount {
            name,
            mount_path: at,
            read_only: Some(read_only),
            sub_path: mount.sub_path,
            ..VolumeMount::default()
        });
    }
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(TMP_SIZE.into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    volume_mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    });
    // Wasm stages: the guest's memory limit plus the runtime's own.
    let memory = match job.code {
        StageCode::Native => limits.memory,
        StageCode::Wasm(_) => limits.memory + (256 << 20),
    };
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(settings.cpu.clone())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", memory.div_ceil(1024))),
        ),
        ("ephemeral-storage".to_string(), Quantity(TMP_SIZE.into())),
    ]);
    let uid = settings.run_as_user;
    let pod = Pod {
        metadata: meta(job, settings),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            // The wall-clock limit, rounded up; the kubelet kills the pod
            // (DeadlineExceeded) even if the gateway is gone.
            active_deadline_seconds: Some(limits.timeout.as_secs_f64().ceil().max(1.0) as i64),
            termination_grace_period_seconds: Some(5),
            runtime_class_name: settings.runtime_class.clone(),
            image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
                settings
                    .image_pull_secrets
                    .iter()
                    .map(|s| k8s_openapi::api::core::v1::LocalObjectReference { name: s.clone() })
                    .collect()
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(uid),
                run_as_group: Some(uid),
                fs_group: Some(uid),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(image),
                image_pull_policy: Some("IfNotPresent".into()),
                command,
                args: Some(args),
                env: None,
                resources: Some(ResourceRequirements {
                    limits: Some(resources.clone()),
                    requests: Some(resources),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        ..SeccompProfile::default()
                    }),
                    ..SecurityContext::default()
                }),
                volume_mounts: Some(volume_mounts),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    };
    let policy = NetworkPolicy {
        metadata: meta(job, settings),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (EXECUTION.to_string(), job.execution.clone()),
                    (STAGE.to_string(), job.stage.to_string()),
                ])),
                ..LabelSelector::default()
            }),
            // Both types and no rules: nothing in, nothing out.
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    };
    Ok((pod, policy))
}

/// The objects as a multi-document YAML stream, policy first (as they are
/// created).
///
/// # Errors
/// [`KubeError::Config`] if serialization fails (it does not for these types).
pub fn to_yaml(pod: &Pod, policy: &NetworkPolicy) -> Result<String, KubeError> {
    // k8s-openapi writes `apiVersion` and `kind` itself.
    let doc = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| e.to_string())
            .and_then(|v| serde_yaml_ng::to_string(&v).map_err(|e| e.to_string()))
            .map_err(|e| KubeError::Config(format!("YAML: {e}")))
    };
    Ok(format!(
        "---\n{}---\n{}",
        doc(serde_json::to_value(policy))?,
        doc(serde_json::to_value(pod))?
    ))
}
