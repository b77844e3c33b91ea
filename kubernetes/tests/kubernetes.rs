//! The Kubernetes backend: golden manifests, contract tests against an
//! in-process fake of the API server ([`fake`]), and an end-to-end test on a
//! real cluster that runs only when `INSITU_TEST_KUBECONFIG` was set at build
//! time (it is reported `ignored` — not run — otherwise).

mod fake;

use fake::Fake;
use insitu_kubernetes::manifests::{self, stage_objects, to_yaml};
use insitu_kubernetes::{KubeBackend, KubeSettings, VolumeSpec};
use insitu_runtime::backend::{Backend, StageCode, StageJob};
use insitu_runtime::backend::{JobSpec, Limits, StopHandle};
use insitu_runtime::datadir::DataDir;
use insitu_runtime::workflow::Did;
use insitu_runtime::{Outcome, Status};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DATASET: &str = "did:nv:1111111111111111111111111111111111111111111111111111111111111111";
const CHECKSUM: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const AGREEMENT: &str = "0x3333333333333333333333333333333333333333333333333333333333333333";

/// A native stage of execution `nv-…` reading `dataset`, its output and logs
/// (created) under `data_dir/executions`.
fn job(data_dir: &Path, dataset: &Path, image_word: &str) -> StageJob {
    let stage = data_dir.join("executions/nv-0123456789abcdef0123456789abcdef/stage-0");
    let mut j = job_unchecked(stage, image_word);
    std::fs::create_dir_all(&j.spec.output).unwrap();
    std::fs::create_dir_all(&j.spec.logs).unwrap();
    j.spec.inputs = vec![dataset.to_path_buf()];
    j
}

#[test]
fn golden_manifests_of_a_native_stage() {
    let data = PathBuf::from("/var/lib/insitu");
    let j = job_at(&data);
    let settings = KubeSettings {
        datasets: [(
            DATASET.to_string(),
            VolumeSpec::Claim {
                claim: "datasets".into(),
                sub_path: Some("books".into()),
            },
        )]
        .into(),
        ..KubeSettings::default()
    };
    let (pod, policy) = stage_objects(&j, &settings, &data).unwrap();
    let yaml = to_yaml(&pod, &policy).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/native-stage.yaml");
    if std::env::var_os("INSITU_BLESS").is_some() {
        std::fs::write(&golden, &yaml).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        yaml,
        want,
        "manifests changed; review and rerun with INSITU_BLESS=1 to update {}",
        golden.display()
    );

    // What the golden file must keep saying, whatever else changes.
    let spec = pod.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("registry.example:5000/algos/ok@{CHECKSUM}").as_str())
    );
    assert_eq!(
        c.args.as_ref().unwrap(),
        &[
            "--input1=/data/inputs/1",
            "--output=/data/outputs",
            "--logs=/data/logs"
        ]
    );
    assert!(
        c.command.is_none() && c.env.is_none(),
        "the image's entrypoint, no environment"
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &["ALL"]
    );
    assert_eq!(
        spec.security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.active_deadline_seconds, Some(30));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let mounts = c.volume_mounts.as_ref().unwrap();
    let input = mounts
        .iter()
        .find(|m| m.mount_path == "/data/inputs/1")
        .unwrap();
    assert_eq!(
        (input.read_only, input.sub_path.as_deref()),
        (Some(true), Some("books"))
    );
    let out = mounts
        .iter()
        .find(|m| m.mount_path == "/data/outputs")
        .unwrap();
    assert_eq!(
        out.sub_path.as_deref(),
        Some("executions/nv-0123456789abcdef0123456789abcdef/stage-0/outputs")
    );
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels[manifests::EXECUTION],
        "nv-0123456789abcdef0123456789abcdef"
    );
    assert_eq!(labels[manifests::AGREEMENT].len(), 63);
    assert_eq!(
        policy.metadata.labels.as_ref().unwrap(),
        labels,
        "the policy carries the same labels"
    );
    let p = policy.spec.as_ref().unwrap();
    assert_eq!(p.policy_types.as_ref().unwrap(), &["Ingress", "Egress"]);
    assert!(p.ingress.is_none() && p.egress.is_none(), "deny all");
}

/// [`job`] without touching the disk (for golden output).
fn job_at(data: &Path) -> StageJob {
    let stage = data.join("executions/nv-0123456789abcdef0123456789abcdef/stage-0");
    let mut j = job_unchecked(stage, "ok");
    j.spec.inputs = vec![PathBuf::from("/srv/books")];
    j
}

fn job_unchecked(stage: PathBuf, word: &str) -> StageJob {
    StageJob {
        execution: "nv-0123456789abcdef0123456789abcdef".into(),
        agreement: AGREEMENT.into(),
        stage: 0,
        image: format!("registry.example:5000/algos/{word}@{CHECKSUM}"),
        checksum: CHECKSUM.into(),
        code: StageCode::Native,
        spec: JobSpec {
            name: "stage-0".into(),
            inputs: Vec::new(),
            output: stage.join("outputs"),
            logs: stage.join("logs"),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits {
                timeout: Duration::from_secs(30),
                memory: 256 << 20,
                output_quota: 1 << 20,
                log_quota: 1 << 20,
            },
            deterministic: None,
        },
        datasets: vec![Some(Did::parse(DATASET).unwrap())],
    }
}

struct World {
    fake: Fake,
    backend: KubeBackend,
    data: PathBuf,
    dataset: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dataset = tmp.path().join("books");
    std::fs::create_dir_all(&dataset).unwrap();
    std::fs::write(dataset.join("a.txt"), "one\n").unwrap();
    std::fs::write(dataset.join("b.txt"), "two\n").unwrap();
    let fake = Fake::start().await;
    let backend =
        KubeBackend::new(fake.client(), KubeSettings::default(), DataDir::new(&data)).unwrap();
    World {
        fake,
        backend,
        data,
        dataset,
        _tmp: tmp,
    }
}

impl World {
    async fn run(&self, word: &str) -> (insitu_runtime::RunReport, StageJob) {
        let j = job(&self.data, &self.dataset, word);
        let report = self.backend.run(&j, &StopHandle::default()).await.unwrap();
        (report, j)
    }

    fn assert_clean(&self) {
        assert!(
            self.fake.names("pods").is_empty(),
            "{:?}",
            self.fake.names("pods")
        );
        assert!(self.fake.names("networkpolicies").is_empty());
    }
}

#[tokio::test]
async fn a_native_stage_runs_as_a_pod_and_leaves_nothing() {
    let w = world().await;
    let (r, j) = w.run("ok").await;
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Succeeded, Outcome::Exited, Some(0)),
        "{r:?}"
    );
    // The "container" read the dataset through its read-only mount.
    assert_eq!(
        std::fs::read_to_string(j.spec.output.join("result.txt")).unwrap(),
        "2 input files\n"
    );
    assert_eq!(
        std::fs::read_to_string(j.spec.logs.join("stdout.log")).unwrap(),
        "hello from the pod\n"
    );
    assert_eq!(r.module_digest, CHECKSUM);
    w.assert_clean();
    let requests = w.fake.inner.lock().unwrap().requests.clone();
    let first_policy = requests
        .iter()
        .position(|r| r.starts_with("POST /apis/networking"))
        .unwrap();
    let first_pod = requests
        .iter()
        .position(|r| r.starts_with("POST /api/v1"))
        .unwrap();
    assert!(
        first_policy < first_pod,
        "egress is denied before the pod exists: {requests:?}"
    );
}

#[tokio::test]
async fn kubernetes_failures_map_to_outcomes() {
    let w = world().await;
    for (word, outcome, exit, reason) in [
        (
            "exit3",
            Outcome::Exited,
            Some(3),
            "the container exited with code 3",
        ),
        ("oom", Outcome::MemoryExceeded, None, "OOMKilled"),
        ("deadline", Outcome::TimedOut, None, "DeadlineExceeded"),
        (
            "evicted",
            Outcome::OutputQuotaExceeded,
            None,
            "ephemeral local storage",
        ),
        (
            "pull",
            Outcome::Rejected,
            None,
            "the image cannot be pulled (ErrImagePull)",
        ),
        (
            "flood",
            Outcome::OutputQuotaExceeded,
            Some(0),
            "above its quota",
        ),
    ] {
        let (r, j) = w.run(word).await;
        assert_eq!(
            (r.status, r.outcome, r.exit_code),
            (Status::Failed, outcome, exit),
            "{word}: {r:?}"
        );
        let error = r.error.unwrap_or_default();
        assert!(error.contains(reason), "{word}: {error}");
        w.assert_clean();
        std::fs::remove_dir_all(j.spec.output.parent().unwrap()).unwrap();
    }
}

#[tokio::test]
async fn stop_deletes_the_pod() {
    let w = world().await;
    let j = job(&w.data, &w.dataset, "sleep");
    let stop = StopHandle::default();
    let s = stop.clone();
    let fake = w.fake.clone();
    tokio::spawn(async move {
        while fake.names("pods").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.stop();
    });
    let r = w.backend.run(&j, &stop).await.unwrap();
    assert_eq!(
        (r.status, r.outcome),
        (Status::Stopped, Outcome::Stopped),
        "{r:?}"
    );
    w.assert_clean();
}

#[tokio::test]
async fn api_errors_dropped_watches_and_leftovers() {
    let w = world().await;
    // Two 500s on create, then success: retried with backoff.
    w.fake.inner.lock().unwrap().fail_creates = 2;
    let (r, _) = w.run("ok").await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let creates = w
        .fake
        .inner
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.starts_with("POST /api/v1/namespaces/insitu/pods"))
        .count();
    assert_eq!(creates, 3);

    // Every watch drops at once: the backend reads the pod again and re-watches.
    std::fs::remove_dir_all(w.data.join("executions")).unwrap();
    w.fake.inner.lock().unwrap().drop_watches = true;
    let (r, _) = w.run("ok").await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    w.fake.inner.lock().unwrap().drop_watches = false;

    // 409: a pod of this very stage exists (a create answered too late) — adopted.
    std::fs::remove_dir_all(w.data.join("executions")).unwrap();
    let j = job(&w.data, &w.dataset, "ok");
    let (pod, _) = stage_objects(&j, &KubeSettings::default(), &w.data).unwrap();
    let mut pod = serde_json::to_value(&pod).unwrap();
    pod["status"] = serde_json::json!({"phase": "Succeeded", "containerStatuses": [{"name": "stage", "ready": false,
        "restartCount": 0, "image": "", "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]});
    w.fake.put("pods", pod, "Pod");
    let r = w.backend.run(&j, &StopHandle::default()).await.unwrap();
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    w.assert_clean();

    // 409 from someone else's object of that name: refused, nothing deleted of theirs but ours.
    std::fs::remove_dir_all(w.data.join("executions")).unwrap();
    let j = job(&w.data, &w.dataset, "ok");
    w.fake.put(
        "pods",
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": manifests::name(&j), "namespace": "insitu", "labels": {"app": "other"}}}),
        "Pod",
    );
    let err = w
        .backend
        .run(&j, &StopHandle::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("an object of that name exists and is not this execution's"),
        "{err}"
    );
}

#[tokio::test]
async fn reconcile_removes_what_a_previous_run_left() {
    let w = world().await;
    let settings = KubeSettings::default();
    let mut keep = job(&w.data, &w.dataset, "sleep");
    keep.execution = "nv-ffffffffffffffffffffffffffffffff".into();
    for j in [job(&w.data, &w.dataset, "sleep"), keep.clone()] {
        let (pod, policy) = stage_objects(&j, &settings, &w.data).unwrap();
        w.fake
            .put("pods", serde_json::to_value(&pod).unwrap(), "Pod");
        w.fake.put(
            "networkpolicies",
            serde_json::to_value(&policy).unwrap(),
            "NetworkPolicy",
        );
    }
    // Not ours: left alone.
    w.fake.put(
        "pods",
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "insitu", "labels": {"app": "web"}}}),
        "Pod",
    );
    w.fake.inner.lock().unwrap().logs.insert(
        "insitu-nv-0123456789abcdef0123456789abcdef-s0".into(),
        "last words\n".into(),
    );
    let n = w
        .backend
        .reconcile(&[keep.execution.clone()])
        .await
        .unwrap();
    assert_eq!(n, 2, "the orphan's pod and policy");
    let mut pods = w.fake.names("pods");
    pods.sort();
    assert_eq!(
        pods,
        ["insitu-nv-ffffffffffffffffffffffffffffffff-s0", "web"]
    );
    assert_eq!(
        w.fake.names("networkpolicies"),
        ["insitu-nv-ffffffffffffffffffffffffffffffff-s0"]
    );
    // The orphan's log was kept for its (failed) execution.
    let logs = w
        .data
        .join("executions/nv-0123456789abcdef0123456789abcdef/stage-0/logs/stdout.log");
    assert_eq!(std::fs::read_to_string(logs).unwrap(), "last words\n");
}

#[tokio::test]
async fn settings_are_checked() {
    let bad = KubeSettings {
        wasm: true,
        insitu_image: Some("ghcr.io/insitu/insitu:latest".into()),
        ..KubeSettings::default()
    };
    assert_eq!(
        bad.check().unwrap_err().to_string(),
        "kubernetes settings: insitu_image `ghcr.io/insitu/insitu:latest` must be pinned by digest (…@sha256:…)"
    );
    let outside = KubeSettings::default();
    let j = job_unchecked(PathBuf::from("/elsewhere/stage-0"), "ok");
    let err = stage_objects(&j, &outside, Path::new("/var/lib/insitu"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not inside the data dir /var/lib/insitu"),
        "{err}"
    );
}

/// A real cluster (kind, k3d): `INSITU_TEST_KUBECONFIG=~/.kube/config cargo
/// test --test kubernetes` (read when the test is built). The node must see
/// this machine's temp dir (kind: an `extraMounts` of /tmp; k3d: `-v /tmp:/tmp`).
#[tokio::test]
#[cfg_attr(
    not(insitu_real_cluster),
    ignore = "not run: set INSITU_TEST_KUBECONFIG to a kind or k3d cluster's kubeconfig (see README)"
)]
async fn real_cluster_runs_a_native_stage() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let kubeconfig = std::env::var("INSITU_TEST_KUBECONFIG")
        .expect("INSITU_TEST_KUBECONFIG names the cluster's kubeconfig");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dataset = tmp.path().join("books");
    std::fs::create_dir_all(&dataset).unwrap();
    std::fs::write(dataset.join("a.txt"), "one\n").unwrap();
    let settings = KubeSettings {
        kubeconfig: Some(kubeconfig.into()),
        namespace: std::env::var("INSITU_TEST_NAMESPACE").unwrap_or_else(|_| "default".into()),
        ..KubeSettings::default()
    };
    let backend = KubeBackend::new(
        settings.client().await.unwrap(),
        settings.clone(),
        DataDir::new(&data),
    )
    .unwrap();
    let mut j = job(&data, &dataset, "ok");
    // Any small image pinned by digest; its entrypoint gets the contract's arguments.
    j.image = std::env::var("INSITU_TEST_IMAGE").unwrap_or_else(|_| {
        "docker.io/library/busybox@sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7".into()
    });
    j.checksum = j.image.split('@').nth(1).unwrap().into();
    let r = backend.run(&j, &StopHandle::default()).await.unwrap();
    assert_ne!(
        r.outcome,
        Outcome::Rejected,
        "the kubelet pulled the pinned image: {r:?}"
    );
    let pods: Api<Pod> = Api::namespaced(settings.client().await.unwrap(), &settings.namespace);
    let left = pods
        .list(&ListParams::default().labels(&format!("{}={}", manifests::EXECUTION, j.execution)))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "nothing left on the cluster");
}

/// A native OCI image in a local layout (manifest and config; the layers
/// are the kubelet's business): its manifest digest.
fn native_layout(dir: &Path, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let blob = |bytes: &[u8]| {
        let d = hex::encode(Sha256::digest(bytes));
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(&d), bytes).unwrap();
        (format!("sha256:{d}"), bytes.len())
    };
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": [format!("/bin/{name}")]}, "rootfs": {"type": "layers", "diff_ids": []}}))
    .unwrap();
    let (config_digest, config_size) = blob(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", "a".repeat(64)), "size": 1234}]}))
    .unwrap();
    let (digest, size) = blob(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType":
            "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": name}}]}),
        )
        .unwrap(),
    )
    .unwrap();
    digest
}

/// A workflow whose stage is a native image runs through the gateway on the
/// Kubernetes backend (the fake cluster, reached through a kubeconfig file);
/// without `[kubernetes]` the same workflow fails with what to configure; a
/// pod left by an earlier run is removed when the gateway starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_native_stages_on_the_cluster() {
    use insitu_gateway::client::Consumer;
    use insitu_gateway::config::ServeConfig;
    use insitu_gateway::http::Local;
    use insitu_runtime::receipt::ProviderKey;
    use insitu_runtime::store::Store;
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::start().await;
    let kubeconfig = tmp.path().join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let layout = tmp.path().join("layout");
    let image = native_layout(&layout, "ok");
    let data = tmp.path().join("data");
    let books = tmp.path().join("books");
    std::fs::create_dir_all(&books).unwrap();
    std::fs::write(books.join("a.txt"), "one\n").unwrap();
    let consumer = ProviderKey::random();
    // The same native stage, plainly and in deterministic mode.
    let [(agreement, workflow), (det_agreement, det_workflow)] = [false, true].map(|deterministic| {
        std::fs::create_dir_all(&data).unwrap();
        let store = Store::open(data.join("insitu.db")).unwrap();
        let ds = store
            .add_dataset("books", &books, std::slice::from_ref(&image), 3600)
            .unwrap();
        let wf = store
            .add_workflow(&serde_json::json!({"main": {"type": "workflow", "name": "native", "workflow": {"deterministic": deterministic, "stages": [
                {"index": 0, "requirements": {"container": {"image": "registry.example/algos/ok", "tag": "1", "checksum": image}},
                 "input": [{"index": 0, "id": ds}]}]}}}))
            .unwrap();
        (
            store.grant(&consumer.address(), &ds, &wf, 3600).unwrap(),
            wf.to_string(),
        )
    });
    // A leftover of an earlier run of this provider.
    let leftover = job(&data, &books, "sleep");
    let (pod, _) = stage_objects(&leftover, &KubeSettings::default(), &data).unwrap();
    fake.put("pods", serde_json::to_value(&pod).unwrap(), "Pod");

    let run = |kubernetes: Option<KubeSettings>, agreement: &String, workflow: &String| {
        let (data, layout, consumer, agreement, workflow) = (
            data.clone(),
            layout.clone(),
            consumer.clone(),
            agreement.clone(),
            workflow.clone(),
        );
        async move {
            let mut config = ServeConfig::new(data);
            config.layouts = vec![layout];
            config.workers = 1;
            config.kubernetes = kubernetes;
            let local = Local::start(&config, Duration::from_secs(5)).await.unwrap();
            let client = Consumer::new(local.base.clone(), consumer);
            let t = client
                .token(&client.claims(&agreement, &workflow, None))
                .await
                .unwrap();
            let exec = client.execute(&t, &agreement, &workflow).await.unwrap();
            let t = client
                .token(&client.claims(&agreement, &workflow, Some(&exec)))
                .await
                .unwrap();
            let status = loop {
                let s = client.get(&t, &format!("status/{exec}")).await.unwrap();
                if ["succeeded", "failed", "stopped"]
                    .contains(&s["workflowStatus"]["status"].as_str().unwrap_or(""))
                {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let result = if status["workflowStatus"]["status"] == "succeeded" {
                Some(client.download(&t, &exec, "result.txt").await.unwrap())
            } else {
                None
            };
            local.stop().await.unwrap();
            (status, result)
        }
    };

    let (status, _) = run(None, &agreement, &workflow).await;
    assert_eq!(status["workflowStatus"]["status"], "failed", "{status}");
    assert!(
        status["execution"]["reason"].as_str().unwrap().contains(
            "it needs the Kubernetes or the Podman backend, which this provider has not configured"
        ),
        "{status}"
    );

    let settings = KubeSettings {
        kubeconfig: Some(kubeconfig),
        ..KubeSettings::default()
    };
    let (status, _) = run(Some(settings.clone()), &det_agreement, &det_workflow).await;
    assert_eq!(status["workflowStatus"]["status"], "failed", "{status}");
    assert!(
        status["execution"]["reason"].as_str().unwrap().contains(
            "the workflow runs in deterministic mode, which only the provider's wasm sandbox gives; this stage would run on the kubernetes backend"
        ),
        "{status}"
    );
    assert_eq!(status["execution"]["stages"][0]["outcome"], "rejected");
    let (status, result) = run(Some(settings), &agreement, &workflow).await;
    assert_eq!(status["workflowStatus"]["status"], "succeeded", "{status}");
    assert_eq!(
        status["execution"]["stages"][0]["backend"], "kubernetes",
        "{status}"
    );
    assert_eq!(result.unwrap(), b"1 input files\n");
    assert!(
        fake.names("pods").is_empty(),
        "the leftover and the stage's pod are gone: {:?}",
        fake.names("pods")
    );
    assert!(fake.names("networkpolicies").is_empty());
}

/// Scale-out: with `wasm = true`, a wasm stage whose module is a verified
/// blob of the data dir runs as a pod executing `insitu run` on it, mounted
/// read-only (no network needed); its JSON line is the stage's report.
#[tokio::test]
async fn wasm_stages_scale_out_as_insitu_run_pods() {
    use insitu_runtime::sandbox::{Sandbox, SandboxConfig};
    let w = world().await;
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let module = sandbox.prepare(insitu_tests::WORD_COUNT_P1).unwrap();
    let insitu_image = format!("registry.example/insitu@sha256:{}", "9".repeat(64));
    let settings = KubeSettings {
        wasm: true,
        insitu_image: Some(insitu_image.clone()),
        ..KubeSettings::default()
    };
    let backend =
        KubeBackend::new(w.fake.client(), settings.clone(), DataDir::new(&w.data)).unwrap();
    let code = StageCode::Wasm(module.clone());
    assert!(
        !backend.accepts(&code),
        "the module is not a blob of the data dir yet"
    );
    let blob = w
        .data
        .join("blobs/sha256")
        .join(module.digest.trim_start_matches("sha256:"));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, insitu_tests::WORD_COUNT_P1).unwrap();
    assert!(backend.accepts(&code));
    assert!(backend.accepts(&StageCode::Native));

    let mut j = job(&w.data, &w.dataset, "unused");
    j.code = code;
    let (pod, _) = stage_objects(&j, &settings, &w.data).unwrap();
    let c = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some(insitu_image.as_str()));
    assert_eq!(c.command.as_ref().unwrap(), &["insitu"]);
    let args = c.args.as_ref().unwrap().join(" ");
    assert!(
        args.starts_with("run --module /data/module.wasm --input /data/inputs/1 --output /data/outputs --logs /data/logs --timeout 30000ms --memory 262144KiB"),
        "{args}"
    );
    let m = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/data/module.wasm")
        .unwrap();
    assert_eq!(m.read_only, Some(true));
    assert_eq!(
        m.sub_path.as_deref(),
        Some(
            format!(
                "blobs/sha256/{}",
                module.digest.trim_start_matches("sha256:")
            )
            .as_str()
        )
    );

    let r = backend.run(&j, &StopHandle::default()).await.unwrap();
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Succeeded, Outcome::Exited, Some(0)),
        "{r:?}"
    );
    assert_eq!(r.module_digest, module.digest);
    assert_eq!(
        std::fs::read_to_string(j.spec.logs.join("stdout.log")).unwrap(),
        "guest output\n"
    );
    w.assert_clean();
}
