//! Workflows end to end through the pipeline: resolve, configure (image from a
//! local layout by checksum), run, chain stages, publish a result asset.

use insitu_runtime::Status;
use insitu_runtime::image::{BlobStore, Puller, package};
use insitu_runtime::pipeline::{ImageResolver, Pipeline, collect};
use insitu_runtime::receipt::{ProviderKey, Receipt, verify};
use insitu_runtime::resolve::resolve;
use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig, StopHandle};
use insitu_runtime::store::{Agreement, Store};
use insitu_runtime::workflow::Did;
use insitu_tests::{HOSTILE_P1, WORD_COUNT_P1};
use serde_json::{Value, json};
use std::sync::Arc;

const CONSUMER: &str = "0x5b38da6a701c568545dcfcb03fcb875f56beddc4";

struct World {
    tmp: tempfile::TempDir,
    store: Arc<Store>,
    pipeline: Pipeline,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path().join("insitu.db")).unwrap());
    for (tag, wasm) in [("wc", WORD_COUNT_P1), ("hostile", HOSTILE_P1)] {
        package::write_layout(
            &tmp.path().join("layout"),
            tag,
            &package::wasm_artifact(wasm).unwrap(),
        )
        .unwrap();
    }
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            concurrency: 2,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let pipeline = Pipeline {
        backends: Pipeline::local(&sandbox),
        sandbox,
        store: store.clone(),
        puller: Puller::new(BlobStore::open(tmp.path().join("blobs")).unwrap()),
        images: ImageResolver {
            layouts: vec![tmp.path().join("layout")],
            ..ImageResolver::default()
        },
        dir: insitu_runtime::datadir::DataDir::new(tmp.path()),
        limits: Limits::default(),
        key: ProviderKey::load_or_create(&tmp.path().join("provider.key")).unwrap(),
        caches: Default::default(),
    };
    World {
        tmp,
        store,
        pipeline,
    }
}

impl World {
    /// A dataset of two text files allowing `allowed`, a workflow of `images`
    /// chained stage to stage, and an agreement for it.
    fn agreement(&self, allowed: &[String], images: &[String]) -> Agreement {
        let data = self.tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("a.txt"), "one two two\n").unwrap();
        std::fs::write(data.join("b.txt"), "three three three\n").unwrap();
        let ds = self.store.add_dataset("texts", &data, allowed, 60).unwrap();
        let stages: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                let (name, checksum) = image.split_once('@').unwrap();
                let input = if i == 0 { json!({"index": 0, "id": ds}) } else { json!({"index": 0, "previousStage": i - 1}) };
                json!({"index": i, "requirements": {"container": {"image": name, "tag": "", "checksum": checksum}}, "input": [input]})
            })
            .collect();
        let wf = self
            .store
            .add_workflow(&json!({"main": {"type": "workflow", "name": "count twice", "workflow": {"stages": stages}}}))
            .unwrap();
        self.store
            .agreement(&self.store.grant(CONSUMER, &ds, &wf, 60).unwrap())
            .unwrap()
    }

    async fn execute(&self, a: &Agreement) -> (String, Status) {
        let resolved = resolve(&self.store, a, a.expires_at).unwrap();
        let id = self.store.create_execution(a).unwrap();
        let status = self
            .pipeline
            .run(&id, &resolved, &StopHandle::default())
            .await
            .unwrap();
        (id, status)
    }
}

fn digest(wasm: &[u8]) -> String {
    package::wasm_artifact(wasm).unwrap().manifest_digest
}

#[tokio::test]
async fn a_two_stage_workflow_chains_outputs_and_publishes_a_result_asset() {
    let w = world();
    let wc = format!(
        "unreachable.invalid/algos/word-count@{}",
        digest(WORD_COUNT_P1)
    );
    let a = w.agreement(&[digest(WORD_COUNT_P1)], &[wc.clone(), wc]);
    let (id, status) = w.execute(&a).await;
    let e = w.store.execution(&id).unwrap();
    assert_eq!(status, Status::Succeeded, "{e:?}");
    assert_eq!(e.status, Status::Succeeded);
    let stages = e.stages.as_array().unwrap();
    assert_eq!(stages.len(), 2);
    for s in stages {
        assert_eq!(
            (
                s["status"].as_str(),
                s["outcome"].as_str(),
                s["exit_code"].as_i64()
            ),
            (Some("succeeded"), Some("exited"), Some(0))
        );
        assert_eq!(s["image_digest"], digest(WORD_COUNT_P1));
    }
    // Stage 1 counted the words of stage 0's single output file.
    let out1 = w.pipeline.outputs(&id, 1).join("counts.json");
    let counts: Value = serde_json::from_slice(&std::fs::read(&out1).unwrap()).unwrap();
    assert_eq!(counts["files"], 1);
    // Stage 0's outputs were a workspace, gone once published; its logs stay.
    assert!(!w.pipeline.outputs(&id, 0).exists());
    assert!(w.pipeline.logs(&id, 0).join("stderr.log").is_file());
    assert!(counts["counts"]["three"].as_u64().unwrap() >= 1);

    let result = Did::parse(e.result.as_deref().unwrap()).unwrap();
    let (_, ddo) = w.store.ddo(&result).unwrap();
    let main = &ddo["service"][0]["attributes"]["main"];
    assert_eq!(main["owner"], CONSUMER);
    assert_eq!(main["provenance"]["execution"], id);
    assert_eq!(main["provenance"]["agreement"], a.id);
    assert_eq!(main["provenance"]["inputs"], json!([a.dataset]));
    let bytes = std::fs::read(&out1).unwrap();
    assert_eq!(
        main["files"],
        json!([{"path": "counts.json", "size": bytes.len(), "sha256": insitu_runtime::image::sha256_digest(&bytes)}])
    );
    assert!(
        !ddo.to_string().contains(w.tmp.path().to_str().unwrap()),
        "no provider path in the DDO"
    );

    // The receipt verifies against the provider's address and covers it all.
    let receipt: Receipt = serde_json::from_value(e.receipt.clone().unwrap()).unwrap();
    assert_eq!(
        verify(&receipt).unwrap().to_checksum(None),
        w.pipeline.key.address()
    );
    assert_eq!(receipt.body["result"], result.to_string());
    assert_eq!(receipt.body["outputs"], main["files"]);
    assert_eq!(receipt.body["stages"].as_array().unwrap().len(), 2);
    assert_eq!(receipt.body["inputs"][0]["did"], a.dataset.to_string());
    assert!(
        receipt.body["inputs"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[tokio::test]
async fn failures_end_the_execution_failed_with_the_reason() {
    // The guest fails (the hostile module without a case exits 64).
    let w = world();
    let h = format!("unreachable.invalid/hostile@{}", digest(HOSTILE_P1));
    let a = w.agreement(&[digest(HOSTILE_P1)], &[h]);
    let (id, status) = w.execute(&a).await;
    assert_eq!(status, Status::Failed);
    let e = w.store.execution(&id).unwrap();
    assert_eq!(
        e.reason.as_deref(),
        Some("stage 0: the guest exited with code 64")
    );
    assert_eq!((e.result, e.receipt), (None, None));

    // The image is allowed but nowhere to be found.
    let w = world();
    let missing = format!("sha256:{}", "ab".repeat(32));
    let a = w.agreement(
        std::slice::from_ref(&missing),
        &[format!("127.0.0.1:1/ghost@{missing}")],
    );
    let (id, status) = w.execute(&a).await;
    assert_eq!(status, Status::Failed);
    let reason = w.store.execution(&id).unwrap().reason.unwrap();
    assert!(
        reason.starts_with(&format!(
            "stage 0: registry 127.0.0.1:1/ghost: cannot fetch manifest {missing}"
        )),
        "{reason}"
    );
}

#[test]
fn links_in_results_are_never_followed_or_published() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("real.txt"), "12345").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../../..", tmp.path().join("up")).unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/", tmp.path().join("sub/trail")).unwrap();
    let (files, skipped) = collect(tmp.path()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["path"], "real.txt");
    assert_eq!(skipped, vec!["abs", "sub/trail", "up"]);
}
