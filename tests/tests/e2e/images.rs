//! Checksummed OCI images against a real registry (docker-registry) with
//! skopeo as the independent client, and OCI layouts; every bad input is
//! refused with its precise error and leaves the blob store intact.

use super::{Dirs, sandbox};
use insitu_runtime::image::{
    self, BlobStore, ImageKind, LayoutSource, Puller, RegistryAuth, RegistrySource, package,
};
use insitu_runtime::sandbox::StopHandle;
use insitu_runtime::{Error, Status};
use insitu_tests::registry::{Registry, skopeo};
use insitu_tests::{HOSTILE_P1, WORD_COUNT_P1};
use serde_json::{Value, json};
use std::path::Path;

fn sha(bytes: &[u8]) -> String {
    image::sha256_digest(bytes)
}

fn registry_source(reg: &Registry, repo: &str) -> RegistrySource {
    let r = image::parse_reference(&format!("{}/{repo}", reg.host())).unwrap();
    RegistrySource::new(r, &[reg.host()], RegistryAuth::Anonymous)
}

/// Every stored blob hashes to its name and no temporary file is left.
fn assert_store_intact(store: &BlobStore) {
    for e in std::fs::read_dir(store.root().join("sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            sha(&std::fs::read(&p).unwrap()),
            format!("sha256:{name}"),
            "a corrupt blob was stored"
        );
    }
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "temporary files left"
    );
}

/// Writes blobs and a manifest into an OCI layout; returns the manifest digest.
fn layout_with(dir: &Path, manifest: &[u8], blobs: &[&[u8]]) -> String {
    let b = dir.join("blobs/sha256");
    std::fs::create_dir_all(&b).unwrap();
    for blob in blobs.iter().chain([&manifest]) {
        std::fs::write(b.join(sha(blob).trim_start_matches("sha256:")), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": image::media::OCI_MANIFEST, "digest": sha(manifest), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    sha(manifest)
}

fn desc(media_type: &str, blob: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha(blob), "size": blob.len()})
}

async fn pull_layout(
    manifest: &Value,
    blobs: &[&[u8]],
) -> (
    Result<image::PulledImage, Error>,
    BlobStore,
    tempfile::TempDir,
) {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = serde_json::to_vec(manifest).unwrap();
    let digest = layout_with(&tmp.path().join("layout"), &bytes, blobs);
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let mut puller = Puller::new(store.clone());
    puller.max_blob = 64 << 20;
    let source = LayoutSource {
        dir: tmp.path().join("layout"),
    };
    (puller.pull(&source, &digest).await, store, tmp)
}

async fn run_word_count(wasm: &[u8]) {
    let d = Dirs::new();
    let module = sandbox().prepare(wasm).unwrap();
    let r = sandbox()
        .run(&module, &d.spec("word-count", &[]), &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert!(
        std::fs::read_to_string(d.output.join("counts.json"))
            .unwrap()
            .contains("\"words\": 5")
    );
}

#[tokio::test]
async fn pushed_artifacts_match_skopeo_run_by_digest_and_are_cached() {
    let reg = Registry::start();
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    package::push(&registry_source(&reg, "algos/word-count:v1"), &artifact)
        .await
        .unwrap();

    // skopeo, an independent client, sees exactly our bytes and digest.
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/algos/word-count:v1", reg.host()),
    ]);
    assert_eq!(sha(&raw), artifact.manifest_digest);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["artifactType"], "application/wasm");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");

    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path()).unwrap();
    let reference = format!(
        "{}/algos/word-count:v1@{}",
        reg.host(),
        artifact.manifest_digest
    );
    let (source, digest) =
        image::registry(&reference, &[reg.host()], RegistryAuth::Anonymous, false)
            .await
            .unwrap();
    // A progress observer sees the blobs' bytes arrive, up to their size.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64, u64)>::new()));
    let mut puller = Puller::new(store.clone());
    let log = seen.clone();
    puller.progress = Some(std::sync::Arc::new(move |t: &image::Transfer<'_>| {
        log.lock()
            .unwrap()
            .push((t.digest.to_string(), t.done, t.total))
    }));
    let pulled = puller.pull(&source, &digest).await.unwrap();
    assert_eq!(pulled.wasm.as_deref(), Some(WORD_COUNT_P1));
    assert!(
        matches!(pulled.kind, ImageKind::Wasm { ref media_type, .. } if media_type == "application/wasm")
    );
    assert_eq!(store.fetch_count(), 3, "manifest, config, layer");
    let layer: Vec<(String, u64, u64)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _, _)| *d == artifact.layer_digest)
        .cloned()
        .collect();
    let last = layer.last().expect("progress for the layer");
    assert_eq!(
        (last.1, last.2),
        (WORD_COUNT_P1.len() as u64, WORD_COUNT_P1.len() as u64)
    );
    assert!(layer.windows(2).all(|w| w[0].1 < w[1].1), "{layer:?}");
    run_word_count(pulled.wasm.as_deref().unwrap()).await;

    // With the registry gone, the cached image is served without any request.
    drop(reg);
    let again = Puller::new(store.clone())
        .pull(&source, &digest)
        .await
        .unwrap();
    assert_eq!(again.wasm.as_deref(), Some(WORD_COUNT_P1));
    assert_eq!(store.fetch_count(), 3);
    assert_store_intact(&store);
}

#[tokio::test]
async fn a_layout_we_did_not_write_pushed_by_skopeo_runs() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    // The older wasm-to-oci layer type, a config of another shape, pretty-printed JSON.
    let config = br#"{ "architecture": "wasm", "os": "wasip1" }"#.to_vec();
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": image::media::OCI_MANIFEST,
        "config": desc(image::media::WASM_CONFIG, &config),
        "layers": [desc("application/vnd.wasm.content.layer.v1+wasm", WORD_COUNT_P1)],
    }))
    .unwrap();
    let digest = layout_with(&tmp.path().join("l"), &manifest, &[&config, WORD_COUNT_P1]);
    let layout = format!("oci:{}:t", tmp.path().join("l").display());
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &layout,
        &format!("docker://{}/third/party:1", reg.host()),
    ]);

    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let (source, d) = image::registry(
        &format!("{}/third/party@{digest}", reg.host()),
        &[reg.host()],
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let pulled = Puller::new(store).pull(&source, &d).await.unwrap();
    assert_eq!(
        pulled.manifest_digest, digest,
        "skopeo kept the manifest bytes"
    );
    run_word_count(&pulled.wasm.unwrap()).await;
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn compat_manifest(layer: &[u8], config: &[u8]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": image::media::OCI_MANIFEST,
        "config": desc(image::media::OCI_CONFIG, config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        "annotations": {"module.wasm.image/variant": "compat"},
    })
}

#[tokio::test]
async fn compat_images_with_a_tar_layer_run() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layer = tar_gz(&[
        ("app/readme.txt", b"hi"),
        ("app/word-count.wasm", WORD_COUNT_P1),
    ]);
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/app/word-count.wasm"]}, "rootfs": {"type": "layers", "diff_ids": []}}))
    .unwrap();
    let manifest = serde_json::to_vec(&compat_manifest(&layer, &config)).unwrap();
    let digest = layout_with(&tmp.path().join("l"), &manifest, &[&layer, &config]);
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:t", tmp.path().join("l").display()),
        &format!("docker://{}/compat/wc:1", reg.host()),
    ]);

    let (source, d) = image::registry(
        &format!("{}/compat/wc@{digest}", reg.host()),
        &[reg.host()],
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let pulled = Puller::new(BlobStore::open(tmp.path().join("s")).unwrap())
        .pull(&source, &d)
        .await
        .unwrap();
    assert_eq!(
        pulled.kind,
        ImageKind::WasmCompat {
            layer: sha(&layer),
            path: "app/word-count.wasm".into()
        }
    );
    run_word_count(&pulled.wasm.unwrap()).await;
}

#[tokio::test]
async fn native_images_are_classified_native() {
    let layer = tar_gz(&[("bin/tool", b"\x7fELF")]);
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/tool"]}}),
    )
    .unwrap();
    let mut m = compat_manifest(&layer, &config);
    m.as_object_mut().unwrap().remove("annotations");
    let (pulled, _, _tmp) = pull_layout(&m, &[&layer, &config]).await;
    let pulled = pulled.unwrap();
    assert_eq!((pulled.kind, pulled.wasm), (ImageKind::Native, None));
}

#[tokio::test]
async fn tags_without_checksum_and_wrong_checksums_are_refused() {
    let e = image::registry(
        "127.0.0.1:1/algos/wc:v1",
        &[],
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "image reference `127.0.0.1:1/algos/wc:v1`: a tag without a checksum is refused: images run pinned by digest; append @sha256:<digest> (`insitu inspect` prints it)"
    );
    let e = image::registry(
        "127.0.0.1:1/algos/wc@sha256:abc",
        &[],
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("image reference `127.0.0.1:1/algos/wc@sha256:abc`"),
        "{e}"
    );

    let reg = Registry::start();
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    package::push(&registry_source(&reg, "algos/wc:v1"), &artifact)
        .await
        .unwrap();
    let wrong = sha(b"something else");
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path()).unwrap();
    let (source, d) = image::registry(
        &format!("{}/algos/wc@{wrong}", reg.host()),
        &[reg.host()],
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let e = Puller::new(store.clone())
        .pull(&source, &d)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "registry {}/algos/wc: checksum {wrong} not found: the repository has no manifest with that digest (never pushed there, deleted, or a wrong checksum)",
            reg.host()
        )
    );
    // With a tag, the error says where the tag points now, or that it
    // does not resolve either.
    for (tag, then) in [
        (
            "v1",
            format!(
                "; its tag `v1` points to {} now: if that is the algorithm meant, put that checksum in the workflow (insitu inspect prints it)",
                artifact.manifest_digest
            ),
        ),
        ("v9", "; its tag `v9` does not resolve either".to_string()),
    ] {
        let (source, d) = image::registry(
            &format!("{}/algos/wc:{tag}@{wrong}", reg.host()),
            &[reg.host()],
            RegistryAuth::Anonymous,
            false,
        )
        .await
        .unwrap();
        let e = Puller::new(store.clone())
            .pull(&source, &d)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(&then), "{e}");
        assert!(e.contains(&format!("checksum {wrong} not found")), "{e}");
    }
    assert_store_intact(&store);
    assert!(!store.contains(&wrong));
}

#[tokio::test]
async fn bytes_tampered_or_truncated_in_the_registry_are_refused() {
    let reg = Registry::start();
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    package::push(&registry_source(&reg, "algos/wc:v1"), &artifact)
        .await
        .unwrap();
    let reference = format!("{}/algos/wc@{}", reg.host(), artifact.manifest_digest);
    let pull = |store: BlobStore| {
        let reference = reference.clone();
        let host = reg.host();
        async move {
            let (source, d) = image::registry(&reference, &[host], RegistryAuth::Anonymous, false)
                .await
                .unwrap();
            Puller::new(store).pull(&source, &d).await
        }
    };

    // One flipped byte in the module, in the registry's own storage.
    let layer_file = reg.blob_data(&artifact.layer_digest);
    let mut bytes = std::fs::read(&layer_file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&layer_file, &bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path().join("a")).unwrap();
    let e = pull(store.clone()).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "blob {0} has digest sha256:",
            artifact.layer_digest
        )) && msg.contains(&format!(
            "expected {}; the content changed or the checksum is wrong — nothing was stored",
            artifact.layer_digest
        )),
        "{msg}"
    );
    assert!(!store.contains(&artifact.layer_digest));
    assert_store_intact(&store);

    // Truncated.
    std::fs::write(&layer_file, &WORD_COUNT_P1[..1000]).unwrap();
    let store = BlobStore::open(tmp.path().join("b")).unwrap();
    let e = pull(store.clone()).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "blob {}: truncated: received 1000 of the {} bytes its descriptor declares",
            artifact.layer_digest,
            WORD_COUNT_P1.len()
        )),
        "{e}"
    );
    assert!(!store.contains(&artifact.layer_digest));
    assert_store_intact(&store);

    // The manifest itself altered in storage.
    let manifest_file = reg.blob_data(&artifact.manifest_digest);
    let mut m = std::fs::read(&manifest_file).unwrap();
    m.extend_from_slice(b" ");
    std::fs::write(&manifest_file, &m).unwrap();
    let store = BlobStore::open(tmp.path().join("c")).unwrap();
    let e = pull(store.clone()).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "the manifest {0} from registry {1}/algos/wc has digest sha256:",
            artifact.manifest_digest,
            reg.host()
        )),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_store_intact(&store);
}

#[tokio::test]
async fn registry_down_or_unknown_repository_is_a_clear_error() {
    let reg = Registry::start();
    let host = reg.host();
    let digest = sha(b"x");
    let (source, d) = image::registry(
        &format!("{host}/nobody/here@{digest}"),
        std::slice::from_ref(&host),
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let store = BlobStore::open(tempfile::tempdir().unwrap().keep()).unwrap();
    let e = Puller::new(store.clone())
        .pull(&source, &d)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "registry {host}/nobody/here: checksum {digest} not found: the repository has no manifest with that digest (never pushed there, deleted, or a wrong checksum)"
        )
    );
    drop(reg);
    let e = Puller::new(store.clone())
        .pull(&source, &d)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(": error sending request for url (http://"),
        "{e}"
    );
    assert!(
        e.starts_with(&format!(
            "registry {host}/nobody/here: cannot fetch manifest {digest}"
        )),
        "{e}"
    );
    assert_store_intact(&store);
}

#[tokio::test]
async fn descriptors_that_lie_about_sizes_are_refused() {
    let config = br#"{"architecture":"wasm","os":"wasip1"}"#.to_vec();
    for (delta, expect) in [
        (10i64, "truncated: received"),
        (-10, "the source sent more than the"),
    ] {
        let mut layer = desc(image::media::WASM_LAYER, WORD_COUNT_P1);
        layer["size"] = json!(WORD_COUNT_P1.len() as i64 + delta);
        let m = json!({"schemaVersion": 2, "mediaType": image::media::OCI_MANIFEST,
            "config": desc(image::media::WASM_CONFIG, &config), "layers": [layer]});
        let (r, store, _tmp) = pull_layout(&m, &[&config, WORD_COUNT_P1]).await;
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("blob {}: ", sha(WORD_COUNT_P1))) && e.contains(expect),
            "{e}"
        );
        assert!(!store.contains(&sha(WORD_COUNT_P1)));
        assert_store_intact(&store);
    }
    let mut layer = desc(image::media::WASM_LAYER, WORD_COUNT_P1);
    layer["size"] = json!(1u64 << 40);
    let m = json!({"schemaVersion": 2, "config": desc(image::media::WASM_CONFIG, &config), "layers": [layer]});
    let (r, store, _tmp) = pull_layout(&m, &[&config, WORD_COUNT_P1]).await;
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains(
            "its descriptor says 1099511627776 bytes, more than the provider's maximum of 67108864"
        ),
        "{e}"
    );
    assert_store_intact(&store);
}

#[tokio::test]
async fn images_insitu_cannot_run_are_refused_precisely() {
    let config = br#"{"architecture":"wasm","os":"wasip1"}"#.to_vec();
    let two = json!({"schemaVersion": 2, "config": desc(image::media::WASM_CONFIG, &config),
        "layers": [desc(image::media::WASM_LAYER, WORD_COUNT_P1), desc(image::media::WASM_LAYER, HOSTILE_P1)]});
    let (r, store, _t) = pull_layout(&two, &[&config, WORD_COUNT_P1, HOSTILE_P1]).await;
    assert!(
        r.unwrap_err()
            .to_string()
            .ends_with("it has 2 wasm layers; a wasm artifact has exactly one")
    );
    assert_store_intact(&store);

    let odd = json!({"schemaVersion": 2, "config": desc("application/x-mystery-config", &config),
        "layers": [desc("application/x-mystery", WORD_COUNT_P1)]});
    let (r, _, _t) = pull_layout(&odd, &[&config, WORD_COUNT_P1]).await;
    assert!(
        r.unwrap_err()
            .to_string()
            .ends_with("unknown layer media type `application/x-mystery`")
    );

    let listed = json!({"architecture":"wasm","os":"wasip1","layerDigests":[sha(HOSTILE_P1)]});
    let listed = serde_json::to_vec(&listed).unwrap();
    let wrong_list = json!({"schemaVersion": 2, "config": desc(image::media::WASM_CONFIG, &listed),
        "layers": [desc(image::media::WASM_LAYER, WORD_COUNT_P1)]});
    let (r, _, _t) = pull_layout(&wrong_list, &[&listed, WORD_COUNT_P1]).await;
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("do not match the layer")
    );

    // An index with only platforms insitu cannot run.
    let tmp = tempfile::tempdir().unwrap();
    let child = serde_json::to_vec(
        &json!({"schemaVersion": 2, "config": desc(image::media::WASM_CONFIG, &config),
        "layers": [desc(image::media::WASM_LAYER, WORD_COUNT_P1)]}),
    )
    .unwrap();
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": image::media::OCI_INDEX, "manifests": [
        {"mediaType": image::media::OCI_MANIFEST, "digest": sha(&child), "size": child.len(), "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": image::media::OCI_MANIFEST, "digest": sha(&child), "size": child.len(), "platform": {"os": "windows", "architecture": "amd64"}}]})).unwrap();
    let digest = layout_with(
        &tmp.path().join("l"),
        &index,
        &[&child, &config, WORD_COUNT_P1],
    );
    let store = BlobStore::open(tmp.path().join("s")).unwrap();
    let e = Puller::new(store.clone())
        .pull(
            &LayoutSource {
                dir: tmp.path().join("l"),
            },
            &digest,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("the index offers no usable platform (wasm or linux/amd64); it has [\"linux/arm64\", \"windows/amd64\"]"), "{e}");
    assert_store_intact(&store);

    // The same index with a wasm platform picks it.
    let good = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": image::media::OCI_INDEX, "manifests": [
        {"mediaType": image::media::OCI_MANIFEST, "digest": sha(&child), "size": child.len(), "platform": {"os": "wasip1", "architecture": "wasm"}}]})).unwrap();
    let digest = layout_with(
        &tmp.path().join("l2"),
        &good,
        &[&child, &config, WORD_COUNT_P1],
    );
    let pulled = Puller::new(store)
        .pull(
            &LayoutSource {
                dir: tmp.path().join("l2"),
            },
            &digest,
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, sha(&child));
}

#[tokio::test]
async fn hostile_compat_layers_are_refused() {
    let config = serde_json::to_vec(
        &json!({"architecture": "wasm", "os": "wasi", "config": {"Entrypoint": ["app.wasm"]}}),
    )
    .unwrap();
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    evil.append(&h, &b"x"[..]).unwrap();
    let evil = evil.into_inner().unwrap();
    let m = json!({"schemaVersion": 2, "config": desc(image::media::OCI_CONFIG, &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &evil)]});
    let (r, store, _t) = pull_layout(&m, &[&config, &evil]).await;
    let e = r.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "layer {}: refusing unsafe entry `../escape`: absolute path or `..` component",
            sha(&evil)
        )
    );
    assert_store_intact(&store);

    let bomb = tar_gz(&[("app.wasm", &vec![0u8; 32 << 20])]);
    let m = json!({"schemaVersion": 2, "config": desc(image::media::OCI_CONFIG, &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &bomb)]});
    let (r, _, _t) = pull_layout(&m, &[&config, &bomb]).await;
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("refusing a possible gzip bomb")
    );
}

#[tokio::test]
async fn concurrent_first_pulls_fetch_each_blob_once() {
    let reg = Registry::start();
    let artifact = package::wasm_artifact(HOSTILE_P1).unwrap();
    package::push(&registry_source(&reg, "algos/h:1"), &artifact)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path()).unwrap();
    let reference = format!("{}/algos/h@{}", reg.host(), artifact.manifest_digest);
    let (source, d) = image::registry(&reference, &[reg.host()], RegistryAuth::Anonymous, false)
        .await
        .unwrap();
    let source = std::sync::Arc::new(source);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, source, d) = (store.clone(), source.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            Puller::new(store).pull(&*source, &d).await.map(|p| p.wasm)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_deref(), Some(HOSTILE_P1));
    }
    assert_eq!(
        store.fetch_count(),
        3,
        "one fetch each for manifest, config and layer"
    );
}

#[tokio::test]
async fn registries_that_need_credentials_answer_401_without_them() {
    use insitu_tests::registry::{AUTH_PASSWORD, AUTH_USER};
    let reg = Registry::start_with_auth();
    let basic = RegistryAuth::Basic(AUTH_USER.into(), AUTH_PASSWORD.into());
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    let r = image::parse_reference(&format!("{}/private/wc:1", reg.host())).unwrap();
    package::push(
        &RegistrySource::new(r, &[reg.host()], basic.clone()),
        &artifact,
    )
    .await
    .unwrap();

    let reference = format!("{}/private/wc@{}", reg.host(), artifact.manifest_digest);
    let tmp = tempfile::tempdir().unwrap();
    for (i, auth) in [
        RegistryAuth::Anonymous,
        RegistryAuth::Basic(AUTH_USER.into(), "wrong".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let store = BlobStore::open(tmp.path().join(format!("s{i}"))).unwrap();
        let (source, d) = image::registry(&reference, &[reg.host()], auth, false)
            .await
            .unwrap();
        let e = Puller::new(store.clone())
            .pull(&source, &d)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "registry {}/private/wc: cannot fetch manifest",
                reg.host()
            )),
            "{e}"
        );
        assert!(
            e.ends_with("; the registry refused the credentials: set INSITU_REGISTRY_USERNAME and INSITU_REGISTRY_PASSWORD (or INSITU_REGISTRY_TOKEN)"),
            "{e}"
        );
        assert_store_intact(&store);
    }
    let store = BlobStore::open(tmp.path().join("ok")).unwrap();
    let (source, d) = image::registry(&reference, &[reg.host()], basic, false)
        .await
        .unwrap();
    let pulled = Puller::new(store).pull(&source, &d).await.unwrap();
    assert_eq!(pulled.wasm.as_deref(), Some(WORD_COUNT_P1));
}

#[tokio::test]
async fn oci_archives_run_and_legacy_docker_archives_say_how_to_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    package::write_layout(&tmp.path().join("l"), "v1", &artifact).unwrap();
    let layout = format!("oci:{}:v1", tmp.path().join("l").display());
    let oci_tar = tmp.path().join("wc.oci.tar");
    skopeo(&[
        "copy",
        "-q",
        &layout,
        &format!("oci-archive:{}:v1", oci_tar.display()),
    ]);

    let (source, digest) = image::layout(&format!("{}:v1", oci_tar.display())).unwrap();
    assert_eq!(digest, artifact.manifest_digest);
    let pulled = Puller::new(BlobStore::open(tmp.path().join("s")).unwrap())
        .pull(&source, &digest)
        .await
        .unwrap();
    run_word_count(&pulled.wasm.unwrap()).await;

    let docker_tar = tmp.path().join("wc.docker.tar");
    // docker-archive needs a config docker understands; a compat image is one.
    let layer = tar_gz(&[("app/word-count.wasm", WORD_COUNT_P1)]);
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/app/word-count.wasm"]}, "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]}}))
    .unwrap();
    let manifest = serde_json::to_vec(&compat_manifest(&layer, &config)).unwrap();
    layout_with(&tmp.path().join("c"), &manifest, &[&layer, &config]);
    skopeo(&[
        "copy",
        "-q",
        &format!("oci:{}:t", tmp.path().join("c").display()),
        &format!("docker-archive:{}:c:1", docker_tar.display()),
    ]);
    let e = image::layout(&docker_tar.display().to_string())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "archive {}: a docker-archive without index.json (saved by Docker before 25); convert it: skopeo copy docker-archive:FILE oci-archive:NEW.tar",
            docker_tar.display()
        )
    );
}

#[tokio::test]
async fn hostile_archives_are_refused_before_anything_is_written_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.as_old_mut().name[..10].copy_from_slice(b"index.json");
    h.set_link_name("../../../etc/passwd").unwrap();
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    let path = tmp.path().join("evil.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    let e = image::layout(&path.display().to_string())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "archive {}: refusing unsafe entry `index.json`: link to `../../../etc/passwd` points outside the layer",
            path.display()
        )
    );
}

#[tokio::test]
async fn redirects_to_another_host_cannot_substitute_bytes() {
    // Registries serve blobs from other hosts (CDNs), so redirects are
    // followed; what arrives is verified like anything else.
    let reg = Registry::start();
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    package::push(&registry_source(&reg, "algos/wc:1"), &artifact)
        .await
        .unwrap();
    let redirector = insitu_tests::registry::Redirector::start(reg.port);
    let front = format!("127.0.0.1:{}", redirector.port);
    let reference = format!("{front}/algos/wc@{}", artifact.manifest_digest);
    let tmp = tempfile::tempdir().unwrap();

    let (source, d) = image::registry(
        &reference,
        std::slice::from_ref(&front),
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let pulled = Puller::new(BlobStore::open(tmp.path().join("a")).unwrap())
        .pull(&source, &d)
        .await
        .unwrap();
    assert_eq!(pulled.wasm.as_deref(), Some(WORD_COUNT_P1));

    // The other host serves different bytes: refused, nothing stored.
    let layer_file = reg.blob_data(&artifact.layer_digest);
    let mut bytes = std::fs::read(&layer_file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&layer_file, &bytes).unwrap();
    let store = BlobStore::open(tmp.path().join("b")).unwrap();
    let e = Puller::new(store.clone())
        .pull(&source, &d)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "blob {} has digest sha256:",
            artifact.layer_digest
        )),
        "{e}"
    );
    assert!(!store.contains(&artifact.layer_digest));
    assert_store_intact(&store);
}

/// A proxy in front of the real registry that forwards everything but cuts
/// any response whose path contains `cut` after half its body (a registry or
/// network failing mid-pull). Each connection serves one request.
fn cutting_proxy(upstream: u16, cut: String) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let cut = cut.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                // One request per upstream connection.
                let head = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                up.write_all(head.as_bytes()).unwrap();
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp);
                let body_at = resp
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(resp.len(), |i| i + 4);
                let end = if path.contains(&cut) {
                    body_at + (resp.len() - body_at) / 2
                } else {
                    resp.len()
                };
                let _ = client.write_all(&resp[..end]);
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

/// The registry fails in the middle of a blob: the pull fails naming the
/// blob, nothing partial is stored, and the next pull completes.
#[tokio::test]
async fn a_registry_failing_mid_pull_leaves_nothing_partial() {
    let reg = Registry::start();
    // Half of the ~150 KiB module is a real partial transfer.
    let artifact = package::wasm_artifact(WORD_COUNT_P1).unwrap();
    package::push(&registry_source(&reg, "algos/wc:v1"), &artifact)
        .await
        .unwrap();
    let upstream: u16 = reg.host().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = format!(
        "127.0.0.1:{}",
        cutting_proxy(upstream, artifact.layer_digest.clone())
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path()).unwrap();
    let (source, digest) = image::registry(
        &format!("{proxy}/algos/wc:v1@{}", artifact.manifest_digest),
        std::slice::from_ref(&proxy),
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let e = Puller::new(store.clone())
        .pull(&source, &digest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "blob {}: truncated: received ",
            artifact.layer_digest
        )) && e.contains(&format!(
            " of the {} bytes its descriptor declares",
            artifact.layer.len()
        )),
        "{e}"
    );
    assert_store_intact(&store);
    assert!(
        !store
            .root()
            .join("sha256")
            .join(artifact.layer_digest.trim_start_matches("sha256:"))
            .exists(),
        "the cut blob was not stored"
    );

    // The registry is whole again: the same digest pulls and runs.
    let (source, digest) = image::registry(
        &format!("{}/algos/wc:v1@{}", reg.host(), artifact.manifest_digest),
        &[reg.host()],
        RegistryAuth::Anonymous,
        false,
    )
    .await
    .unwrap();
    let pulled = Puller::new(store.clone())
        .pull(&source, &digest)
        .await
        .unwrap();
    run_word_count(&pulled.wasm.unwrap()).await;
    assert_store_intact(&store);
}
