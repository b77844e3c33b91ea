//! Packages a module as a CNCF wasm artifact (TAG-Runtime layout): manifest
//! `artifactType: application/wasm`, config `application/vnd.wasm.config.v0+json`,
//! exactly one `application/wasm` layer. The bytes are deterministic: the same
//! module always gives the same manifest digest.

use super::source::RegistrySource;
use super::{media, sha256_digest};
use crate::Error;
use crate::sandbox::inspect::{ModuleKind, inspect};
use serde_json::json;
use std::path::Path;

/// The blobs of an artifact, ready to write or push.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

/// Builds the artifact for `wasm` (`os` is `wasip1` for core modules, `wasip2`
/// for components).
///
/// # Errors
/// [`Error::Rejected`] when `wasm` is not a module insitu would run.
pub fn wasm_artifact(wasm: &[u8]) -> Result<Artifact, Error> {
    let layer_digest = sha256_digest(wasm);
    let os = match inspect(wasm, &layer_digest)? {
        ModuleKind::Core => "wasip1",
        ModuleKind::Component => "wasip2",
    };
    let config = serde_json::to_vec(&json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
    }))
    .expect("JSON");
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": media::WASM_LAYER,
        "config": {"mediaType": media::WASM_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": media::WASM_LAYER, "digest": layer_digest, "size": wasm.len()}],
    }))
    .expect("JSON");
    Ok(Artifact {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config_digest,
        config,
        layer_digest,
        layer: wasm.to_vec(),
    })
}

/// Writes `artifact` into the OCI image layout `dir` (created if needed),
/// tagged `tag` in `index.json`; an existing entry with that tag is replaced.
///
/// # Errors
/// [`Error::Io`] for file system failures.
pub fn write_layout(dir: &Path, tag: &str, artifact: &Artifact) -> Result<(), Error> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("create layout", &blobs, e))?;
    for (digest, bytes) in [
        (&artifact.layer_digest, &artifact.layer),
        (&artifact.config_digest, &artifact.config),
        (&artifact.manifest_digest, &artifact.manifest),
    ] {
        let p = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&p, bytes).map_err(|e| Error::io("write blob", p, e))?;
    }
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| Error::io("write", layout, e))?;
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default();
    manifests.retain(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(|v| v.as_str())
            != Some(tag)
    });
    manifests.push(json!({
        "mediaType": media::OCI_MANIFEST,
        "artifactType": media::WASM_LAYER,
        "digest": artifact.manifest_digest,
        "size": artifact.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests});
    let tmp = dir.join(".index.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&index).expect("JSON"))
        .map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &index_path).map_err(|e| Error::io("write", index_path, e))
}

/// Pushes `artifact` to the registry repository of `target` (its tag, if any,
/// is set to the manifest).
///
/// # Errors
/// [`Error::Source`] when the registry refuses.
pub async fn push(target: &RegistrySource, artifact: &Artifact) -> Result<(), Error> {
    let r = target.reference();
    let client = target.client();
    let err = |what: &str, e: oci_client::errors::OciDistributionError| Error::Source {
        source_name: format!("registry {}/{}", r.registry(), r.repository()),
        reason: format!("{what}: {e}"),
    };
    client
        .store_auth_if_needed(r.resolve_registry(), target.auth())
        .await;
    client
        .auth(r, target.auth(), oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| err("cannot authenticate for push", e))?;
    for (digest, bytes) in [
        (&artifact.layer_digest, &artifact.layer),
        (&artifact.config_digest, &artifact.config),
    ] {
        client
            .push_blob(r, bytes.clone(), digest)
            .await
            .map_err(|e| err(&format!("cannot push blob {digest}"), e))?;
    }
    let tagged = match r.tag() {
        Some(_) => r.clone(),
        None => r.clone_with_digest(artifact.manifest_digest.clone()),
    };
    client
        .push_manifest_raw(
            &tagged,
            artifact.manifest.clone(),
            media::OCI_MANIFEST.parse().expect("a valid header value"),
        )
        .await
        .map_err(|e| err("cannot push the manifest", e))?;
    Ok(())
}
