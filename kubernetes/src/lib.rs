//! # insitu-kubernetes
//!
//! Stages as Kubernetes pods, behind the same [`Backend`] trait as the
//! in-process sandbox: native (non-wasm) images always, wasm stages too when
//! the provider scales out ([`KubeSettings::wasm`]). The guest contract is the
//! same (docs/ARCHITECTURE.md, "Guest contract"): inputs mounted read-only at `/data/inputs/N`, the output
//! and logs directories writable, the contract's arguments, no environment.
//!
//! - [`manifests`] builds the objects of a stage — a hardened Pod pinned by
//!   digest and a NetworkPolicy denying all ingress and egress — as pure
//!   functions (golden-tested; printed by `insitu k8s manifests`).
//! - [`KubeBackend`] creates them, watches the pod to its end (re-watching
//!   when a watch drops), copies the pod's log into the execution's logs,
//!   maps Kubernetes failures to outcomes (image pull → `rejected`,
//!   `OOMKilled` → `memory_exceeded`, `DeadlineExceeded` → `timed_out`,
//!   eviction → `trapped` with the kubelet's message), deletes on stop, and
//!   removes everything it created whatever the end.
//! - [`KubeBackend::reconcile`] (at gateway start) removes what an earlier
//!   process left: executions it was running were failed by the store's
//!   recovery, so nothing is adopted and nothing is orphaned.
//!
//! The provider's data dir must be visible to the pods ([`KubeSettings::data_volume`]):
//! outputs and logs are written there and published by the gateway, so the
//! data never leaves the provider's cluster.

pub mod manifests;

use futures_util::StreamExt;
use insitu_runtime::backend::StopHandle;
use insitu_runtime::backend::{Backend, StageCode, StageJob, bytes_under};
use insitu_runtime::datadir::DataDir;
use insitu_runtime::permissions::BoxFuture;
use insitu_runtime::{Error, Outcome, RunReport, Status};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the Kubernetes backend could not do something.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The provider's `[kubernetes]` settings are unusable.
    #[error("kubernetes settings: {0}")]
    Config(String),
    /// The API server refused or could not be reached.
    #[error("kubernetes API {action}: {reason}")]
    Api { action: String, reason: String },
}

impl From<KubeError> for Error {
    fn from(e: KubeError) -> Self {
        match e {
            KubeError::Config(_) => Error::InvalidJob(e.to_string()),
            KubeError::Api { .. } => Error::Unavailable(e.to_string()),
        }
    }
}

/// Where a directory is for the pods.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum VolumeSpec {
    /// A node directory (single-node clusters, or a path every node mounts).
    HostPath { host_path: PathBuf },
    /// A PersistentVolumeClaim in the namespace, optionally a sub-path of it.
    Claim {
        claim: String,
        #[serde(default)]
        sub_path: Option<String>,
    },
}

/// The `[kubernetes]` table of the config file.
///
/// ```toml
/// [kubernetes]
/// namespace = "insitu"                 # default
/// kubeconfig = "/etc/insitu/kubeconfig" # default: KUBECONFIG, ~/.kube/config, in-cluster
/// data_volume = { claim = "insitu-data" }  # default: a hostPath of the data dir
/// wasm = false                         # also run wasm stages as pods
/// insitu_image = "registry/insitu@sha256:…"  # needed when wasm = true
/// cpu = "1"
///
/// [kubernetes.datasets]                # default: a hostPath of the dataset's dir
/// "did:nv:0123…" = { claim = "datasets", sub_path = "books" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSettings {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig; default: its current context.
    pub context: Option<String>,
    /// How the provider's data dir is visible to pods; default: a hostPath
    /// of the same path (the gateway runs on the node).
    pub data_volume: Option<VolumeSpec>,
    /// Per dataset DID, the volume holding it; default: a hostPath of the
    /// dataset's directory.
    #[serde(default)]
    pub datasets: BTreeMap<String, VolumeSpec>,
    /// Run wasm stages as pods too (scale-out), with `insitu run`.
    #[serde(default)]
    pub wasm: bool,
    /// An image holding the `insitu` binary, pinned by digest; for `wasm`.
    pub insitu_image: Option<String>,
    /// CPU of each stage's container (request = limit). Default `1`.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// User and group the containers run as. Default 65532 (nonroot).
    #[serde(default = "default_uid")]
    pub run_as_user: i64,
    pub runtime_class: Option<String>,
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
}

fn default_namespace() -> String {
    "insitu".into()
}
fn default_cpu() -> String {
    "1".into()
}
fn default_uid() -> i64 {
    65532
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            namespace: default_namespace(),
            kubeconfig: None,
            context: None,
            data_volume: None,
            datasets: BTreeMap::new(),
            wasm: false,
            insitu_image: None,
            cpu: default_cpu(),
            run_as_user: default_uid(),
            runtime_class: None,
            image_pull_secrets: Vec::new(),
        }
    }
}

impl KubeSettings {
    /// The data volume, defaulting to a hostPath of `data_dir`.
    pub fn data_volume(&self, data_dir: &Path) -> VolumeSpec {
        self.data_volume.clone().unwrap_or(VolumeSpec::HostPath {
            host_path: data_dir.to_path_buf(),
        })
    }

    /// Checks what can be checked without a cluster.
    ///
    /// # Errors
    /// [`KubeError::Config`] naming the setting.
    pub fn check(&self) -> Result<(), KubeError> {
        if self.namespace.is_empty() || self.namespace.len() > 63 {
            return Err(KubeError::Config(format!(
                "namespace `{}` is not a valid namespace name",
                self.namespace
            )));
        }
        if self.wasm {
            match &self.insitu_image {
                Some(i) if i.contains("@sha256:") => {}
                Some(i) => {
                    return Err(KubeError::Config(format!(
                        "insitu_image `{i}` must be pinned by digest (…@sha256:…)"
                    )));
                }
                None => {
                    return Err(KubeError::Config(
                        "wasm = true needs insitu_image (an image holding the insitu binary, pinned by @sha256:…)".into(),
                    ));
                }
            }
        }
        for did in self.datasets.keys() {
            insitu_runtime::workflow::Did::parse(did).map_err(|e| {
                KubeError::Config(format!("datasets: `{did}` is not a dataset DID: {e}"))
            })?;
        }
        Ok(())
    }

    /// A client for the configured cluster (must be created, and used, on
    /// a tokio runtime).
    ///
    /// # Errors
    /// [`KubeError::Config`] for an unreadable kubeconfig or unknown context.
    pub async fn client(&self) -> Result<kube::Client, KubeError> {
        client(self.config().await?)
    }

    /// The client configuration: `kubeconfig` (and `context`), else
    /// `KUBECONFIG`, `~/.kube/config` or the in-cluster service account.
    ///
    /// # Errors
    /// [`KubeError::Config`] for an unreadable kubeconfig or unknown context.
    pub async fn config(&self) -> Result<kube::Config, KubeError> {
        let bad = |e: String| KubeError::Config(e);
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| bad(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| bad(format!("kubeconfig {}: {e}", path.display())))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| bad(format!("kubeconfig: {e}")))?,
            None => kube::Config::infer().await.map_err(|e| {
                bad(format!(
                    "no cluster found (KUBECONFIG, ~/.kube/config, in-cluster): {e}"
                ))
            })?,
        };
        Ok(config)
    }
}

/// A client for `config` (TLS through rustls with ring).
///
/// # Errors
/// [`KubeError::Config`] when the client cannot be built from `config`.
pub fn client(config: kube::Config) -> Result<kube::Client, KubeError> {
    // Several crypto providers are compiled in; rustls refuses to guess.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(config).map_err(|e| KubeError::Config(format!("client: {e}")))
}

/// How long the backend waits between attempts when the API server answers
/// 5xx or cannot be reached, and how many attempts it makes.
const RETRIES: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(200);

/// Stages as pods.
pub struct KubeBackend {
    client: kube::Client,
    settings: KubeSettings,
    data_dir: DataDir,
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let action = action.into();
    move |e| KubeError::Api {
        action,
        reason: match e {
            kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
            other => other.to_string(),
        },
    }
}

fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `f` until it succeeds or fails for good (not 5xx/429/transport),
/// [`RETRIES`] times at most, backing off.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = BACKOFF;
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if retryable(&e) && attempt < RETRIES => {
                tracing::warn!(error = %e, attempt, "kubernetes API: retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// How a pod ended, read from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// The container terminated: its exit code and reason.
    Terminated { exit_code: i32, reason: String },
    /// The pod failed as a whole (deadline, eviction) before or around it.
    PodFailed { reason: String, message: String },
    /// The image cannot be pulled.
    PullFailed { reason: String, message: String },
}

const PULL_ERRORS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
];

/// `Some` once `pod` has ended (or can never start).
fn ended(pod: &Pod) -> Option<Ended> {
    let status = pod.status.as_ref()?;
    // The kubelet's verdict on the pod comes first: a deadline or an
    // eviction also terminates the container, with a plain exit code.
    let reason = status.reason.clone().unwrap_or_default();
    if status.phase.as_deref() == Some("Failed")
        && (reason == "DeadlineExceeded" || reason == "Evicted")
    {
        return Some(Ended::PodFailed {
            reason,
            message: status.message.clone().unwrap_or_default(),
        });
    }
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.name == manifests::CONTAINER));
    if let Some(state) = container.and_then(|c| c.state.as_ref()) {
        if let Some(t) = &state.terminated {
            return Some(Ended::Terminated {
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_default(),
            });
        }
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            if PULL_ERRORS.contains(&reason.as_str()) {
                return Some(Ended::PullFailed {
                    reason,
                    message: w.message.clone().unwrap_or_default(),
                });
            }
        }
    }
    match status.phase.as_deref() {
        Some("Failed") => Some(Ended::PodFailed {
            reason: status.reason.clone().unwrap_or_default(),
            message: status.message.clone().unwrap_or_default(),
        }),
        Some("Succeeded") => Some(Ended::Terminated {
            exit_code: 0,
            reason: "Completed".into(),
        }),
        _ => None,
    }
}

/// The outcome, exit code and reason of an ended pod.
fn outcome(end: &Ended) -> (Outcome, Option<i32>, Option<String>) {
    match end {
        Ended::Terminated { reason, .. } if reason == "OOMKilled" => (
            Outcome::MemoryExceeded,
            None,
            Some("the container was OOMKilled: it used more memory than its limit".into()),
        ),
        Ended::Terminated { reason, .. } if reason == "DeadlineExceeded" => (
            Outcome::TimedOut,
            None,
            Some("the pod's activeDeadlineSeconds elapsed".into()),
        ),
        Ended::Terminated { exit_code, .. } => (
            Outcome::Exited,
            Some(*exit_code),
            (*exit_code != 0).then(|| format!("the container exited with code {exit_code}")),
        ),
        Ended::PodFailed { reason, message } if reason == "DeadlineExceeded" => (
            Outcome::TimedOut,
            None,
            Some(format!(
                "the time limit elapsed (DeadlineExceeded: {message})"
            )),
        ),
        Ended::PodFailed { reason, message } if reason == "Evicted" => {
            if message.contains("ephemeral") {
                (
                    Outcome::OutputQuotaExceeded,
                    None,
                    Some(format!("evicted for its disk use: {message}")),
                )
            } else {
                (
                    Outcome::Trapped,
                    None,
                    Some(format!("evicted by the node: {message}")),
                )
            }
        }
        Ended::PodFailed { reason, message } => (
            Outcome::Trapped,
            None,
            Some(format!("the pod failed ({reason}): {message}")),
        ),
        Ended::PullFailed { reason, message } => (
            Outcome::Rejected,
            None,
            Some(format!("the image cannot be pulled ({reason}): {message}")),
        ),
    }
}

/// The execution id and labels of an object none of `running` owns.
fn orphan(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    running: &[String],
) -> Option<(String, BTreeMap<String, String>)> {
    let labels = meta.labels.clone().unwrap_or_default();
    let execution = labels
        .get(manifests::EXECUTION)
        .cloned()
        .unwrap_or_default();
    (!running.contains(&execution)).then_some((execution, labels))
}

impl KubeBackend {
    /// A backend on `client` for a provider whose data dir is `data_dir`.
    ///
    /// # Errors
    /// [`KubeError::Config`] for settings that cannot work.
    pub fn new(
        client: kube::Client,
        settings: KubeSettings,
        data_dir: DataDir,
    ) -> Result<KubeBackend, KubeError> {
        settings.check()?;
        Ok(KubeBackend {
            client,
            settings,
            data_dir,
        })
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// Removes every pod and network policy insitu created in the namespace
    /// that belongs to none of `running` (execution ids), copying a leftover
    /// pod's log into its execution's logs dir first when that dir is still
    /// empty. Returns how many objects were deleted.
    ///
    /// # Errors
    /// [`KubeError::Api`] when the API server cannot list or delete.
    pub async fn reconcile(&self, running: &[String]) -> Result<usize, KubeError> {
        let selector = format!("{}={}", manifests::MANAGED_BY.0, manifests::MANAGED_BY.1);
        let lp = ListParams::default().labels(&selector);
        let (pod_api, policy_api) = (self.pods(), self.policies());
        let pods = retry(|| pod_api.list(&lp))
            .await
            .map_err(api_err("list pods"))?;
        let mut deleted = 0;
        for pod in pods.items {
            let Some((execution, labels)) = orphan(&pod.metadata, running) else {
                continue;
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let stage = labels.get(manifests::STAGE).cloned().unwrap_or_default();
            let logs = self
                .data_dir
                .execution(&execution)
                .join(format!("stage-{stage}"))
                .join(insitu_runtime::datadir::LOGS);
            if !execution.contains('/')
                && !stage.contains('/')
                && logs.is_dir()
                && bytes_under(&logs) == 0
                && let Ok(text) = self.pods().logs(&name, &LogParams::default()).await
            {
                let _ = std::fs::write(logs.join("stdout.log"), text);
            }
            tracing::info!(pod = %name, execution = %execution, "kubernetes: removing a pod left by an earlier run");
            self.delete_pod(&name).await?;
            deleted += 1;
        }
        let policies = retry(|| policy_api.list(&lp))
            .await
            .map_err(api_err("list network policies"))?;
        for p in policies.items {
            if orphan(&p.metadata, running).is_none() {
                continue;
            }
            self.delete_policy(&p.metadata.name.unwrap_or_default())
                .await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    async fn delete_pod(&self, name: &str) -> Result<(), KubeError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let api = self.pods();
        match retry(|| api.delete(name, &dp)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(api_err(format!("delete pod {name}"))(e)),
        }
    }

    async fn delete_policy(&self, name: &str) -> Result<(), KubeError> {
        let (api, dp) = (self.policies(), DeleteParams::default());
        match retry(|| api.delete(name, &dp)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(api_err(format!("delete network policy {name}"))(e)),
        }
    }

    /// Creates `obj`, or adopts one of the same name that this very stage
    /// created earlier (a create that timed out, then retried).
    async fn create<K>(&self, api: &Api<K>, obj: &K, job: &StageJob) -> Result<(), KubeError>
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let name = manifests::name(job);
        let pp = PostParams::default();
        match retry(|| api.create(&pp, obj)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let existing = api
                    .get(&name)
                    .await
                    .map_err(api_err(format!("get {name}")))?;
                let ours = existing
                    .meta()
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(manifests::EXECUTION))
                    == Some(&job.execution);
                if ours {
                    Ok(())
                } else {
                    Err(KubeError::Api {
                        action: format!("create {name}"),
                        reason: "an object of that name exists and is not this execution's".into(),
                    })
                }
            }
            Err(e) => Err(api_err(format!("create {name}"))(e)),
        }
    }

    /// Waits until the pod ends, watching it (and re-reading it whenever a
    /// watch ends early). `None` when it was stopped or vanished.
    async fn wait_for(
        &self,
        name: &str,
        stop: &StopHandle,
        deadline: Instant,
    ) -> Result<WaitEnd, KubeError> {
        let pods = self.pods();
        loop {
            let pod = match retry(|| pods.get_opt(name)).await {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(WaitEnd::Vanished),
                Err(e) => return Err(api_err(format!("get pod {name}"))(e)),
            };
            if let Some(end) = ended(&pod) {
                return Ok(WaitEnd::Ended(end));
            }
            let version = pod.metadata.resource_version.clone().unwrap_or_default();
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(60);
            let stream = match pods.watch(&wp, &version).await {
                Ok(s) => s,
                Err(e) if retryable(&e) => {
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
                Err(e) => return Err(api_err(format!("watch pod {name}"))(e)),
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::select! {
                    _ = stop.wait() => return Ok(WaitEnd::Stopped),
                    _ = tokio::time::sleep_until(deadline.into()) => return Ok(WaitEnd::Deadline),
                    n = stream.next() => n,
                };
                match next {
                    Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                        if let Some(end) = ended(&p) {
                            return Ok(WaitEnd::Ended(end));
                        }
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => return Ok(WaitEnd::Vanished),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    // A dropped or expired watch: read the pod again.
                    Some(Ok(WatchEvent::Error(_)) | Err(_)) | None => break,
                }
            }
        }
    }

    async fn run_stage(&self, job: &StageJob, stop: &StopHandle) -> Result<RunReport, Error> {
        let started = Instant::now();
        let (pod, policy) = manifests::stage_objects(job, &self.settings, self.data_dir.root())?;
        let name = manifests::name(job);
        self.create(&self.policies(), &policy, job).await?;
        let result = async {
            self.create(&self.pods(), &pod, job).await?;
            // The kubelet enforces activeDeadlineSeconds once the pod runs;
            // this covers a pod that never starts (unschedulable, slow pull).
            let deadline = started + job.spec.limits.timeout + Duration::from_secs(30);
            let end = self.wait_for(&name, stop, deadline).await?;
            let logs = if matches!(end, WaitEnd::Ended(_)) {
                let lp = LogParams {
                    container: Some(manifests::CONTAINER.into()),
                    limit_bytes: Some(job.spec.limits.log_quota as i64 + 1),
                    ..LogParams::default()
                };
                let api = self.pods();
                retry(|| api.logs(&name, &lp)).await.ok()
            } else {
                None
            };
            Ok::<_, KubeError>((end, logs))
        }
        .await;
        // Whatever happened: nothing stays behind.
        let cleaned = (
            self.delete_pod(&name).await,
            self.delete_policy(&name).await,
        );
        let (end, logs) = result?;
        cleaned.0?;
        cleaned.1?;
        Ok(self.report(job, &end, logs, started))
    }

    fn report(
        &self,
        job: &StageJob,
        end: &WaitEnd,
        logs: Option<String>,
        started: Instant,
    ) -> RunReport {
        let limits = &job.spec.limits;
        let module_digest = match &job.code {
            StageCode::Wasm(m) => m.digest.clone(),
            StageCode::Native => job.checksum.clone(),
        };
        let (mut outcome, mut exit_code, mut error) = match end {
            WaitEnd::Ended(e) => outcome(e),
            WaitEnd::Stopped => (Outcome::Stopped, None, Some("stopped on request".into())),
            WaitEnd::Deadline => (
                Outcome::TimedOut,
                None,
                Some(
                    "the pod did not finish within the time limit (it may never have started)"
                        .into(),
                ),
            ),
            WaitEnd::Vanished => (
                Outcome::Trapped,
                None,
                Some("the pod was deleted by someone else".into()),
            ),
        };
        let mut log_quota_hit = false;
        if let Some(text) = &logs {
            match &job.code {
                // `insitu run` in the pod: its one JSON line is the report;
                // the guest's own logs are already in the logs dir.
                StageCode::Wasm(_) => {
                    if let Some(r) = text
                        .lines()
                        .rev()
                        .find_map(|l| serde_json::from_str::<RunReport>(l).ok())
                        && matches!(end, WaitEnd::Ended(Ended::Terminated { .. }))
                    {
                        (outcome, exit_code, error) = (r.outcome, r.exit_code, r.error);
                    }
                }
                StageCode::Native => {
                    let bytes = text.as_bytes();
                    let keep = bytes.len().min(limits.log_quota as usize);
                    log_quota_hit = bytes.len() as u64 > limits.log_quota;
                    let _ = std::fs::write(job.spec.logs.join("stdout.log"), &bytes[..keep]);
                }
            }
        }
        let output_bytes = bytes_under(&job.spec.output);
        let log_bytes = bytes_under(&job.spec.logs);
        if outcome == Outcome::Exited && exit_code == Some(0) {
            // Kubernetes cannot meter a volume sub-path; the quotas are
            // checked once the container is done.
            if output_bytes > limits.output_quota {
                outcome = Outcome::OutputQuotaExceeded;
                error = Some(format!(
                    "the output holds {output_bytes} bytes, above its quota of {}",
                    limits.output_quota
                ));
            } else if log_quota_hit || log_bytes > limits.log_quota {
                outcome = Outcome::LogQuotaExceeded;
                error = Some(format!(
                    "the logs are above their quota of {}",
                    limits.log_quota
                ));
            }
        }
        let status: Status = outcome.status(exit_code);
        RunReport {
            status,
            outcome,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
            module_digest,
            output_bytes,
            log_bytes,
            peak_memory_bytes: None,
            fuel_consumed: None,
            error,
        }
    }
}

#[derive(Debug)]
enum WaitEnd {
    Ended(Ended),
    Stopped,
    Deadline,
    Vanished,
}

impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn run<'a>(
        &'a self,
        job: &'a StageJob,
        stop: &'a StopHandle,
    ) -> BoxFuture<'a, Result<RunReport, Error>> {
        Box::pin(self.run_stage(job, stop))
    }

    /// Native images always; wasm modules when `wasm` is set and the module
    /// is a blob of the data dir (a wasm artifact's layer), which the pod
    /// mounts.
    fn accepts(&self, code: &StageCode) -> bool {
        match code {
            StageCode::Native => true,
            StageCode::Wasm(m) => self.settings.wasm && self.data_dir.blob(&m.digest).is_file(),
        }
    }
}
