//! Checksummed OCI images: where algorithms come from.
//!
//! An image is named by the sha256 of its manifest's exact bytes (the
//! workflow's `requirements.container.checksum`). [`Puller::pull`] fetches the
//! manifest from an [`ImageSource`] (a registry or an OCI layout directory),
//! checks its digest before reading a byte of it, picks the platform from an
//! index, classifies the image ([`ImageKind`]), and streams every blob it needs
//! into the content-addressed [`BlobStore`], where nothing lands unless its
//! size and digest match. A cached image is served without touching the source.
//! [`package`] builds the CNCF wasm artifact for `insitu push`.

pub mod archive;
pub mod package;
mod source;
mod store;

pub use oci_client::secrets::RegistryAuth;
pub use source::{
    AnySource, ImageSource, LayoutSource, RegistrySource, auth_from_env, layout, parse_reference,
    registry, split_layout,
};
pub use store::BlobStore;

use crate::Error;
use serde_json::Value;

/// Media types insitu understands.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
    pub const WASM_LAYER: &str = "application/wasm";
    pub const WASM_LAYER_LEGACY: &str = "application/vnd.wasm.content.layer.v1+wasm";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const TAR_LAYERS: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ];
    /// What a registry is asked to return for a manifest.
    pub const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
}

pub use crate::digest::{check_digest, sha256_digest};

/// What an image is, once classified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageKind {
    /// A CNCF wasm artifact or a single wasm layer of the older media type.
    Wasm { layer: String, media_type: String },
    /// A container image whose tar layer holds the `.wasm` (crun/youki "compat").
    WasmCompat { layer: String, path: String },
    /// Anything else: a native container image for the Kubernetes backend.
    Native,
}

/// A pulled, verified image.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The digest of the manifest that was classified (the platform's, for an index).
    pub manifest_digest: String,
    /// The digest that was asked for (an index's, when it was one).
    pub requested_digest: String,
    pub kind: ImageKind,
    /// The module's bytes, for wasm images.
    pub wasm: Option<Vec<u8>>,
}

/// A blob transfer in progress, as [`Puller::progress`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Transfer<'a> {
    pub digest: &'a str,
    /// Bytes received so far.
    pub done: u64,
    /// The size its descriptor declares.
    pub total: u64,
}

/// Called as blob bytes arrive (a command-line progress bar).
pub type Progress = std::sync::Arc<dyn Fn(&Transfer<'_>) + Send + Sync>;

/// Pulls images into a [`BlobStore`].
#[derive(Clone)]
pub struct Puller {
    pub store: BlobStore,
    /// Largest blob accepted, whatever its descriptor says. Default 1 GiB.
    pub max_blob: u64,
    /// Told about every chunk of a blob fetched (not of cached ones).
    /// Default none.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store)
            .field("max_blob", &self.max_blob)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

const MAX_MANIFEST: u64 = 4 << 20;

impl Puller {
    pub fn new(store: BlobStore) -> Puller {
        Puller {
            store,
            max_blob: 1 << 30,
            progress: None,
        }
    }

    /// Pulls the image whose manifest (or index) has `digest`.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`] / [`Error::BlobSize`] for bytes that do not
    /// match; [`Error::Source`] when the source fails; [`Error::BadImage`] for
    /// media types, layer sets or platforms insitu cannot use;
    /// [`Error::UnsafeArchive`] for hostile tar layers. The store never keeps
    /// anything that failed verification.
    pub async fn pull<S: ImageSource>(
        &self,
        source: &S,
        digest: &str,
    ) -> Result<PulledImage, Error> {
        check_digest(digest)?;
        let top = self.manifest(source, digest).await?;
        let (manifest_digest, manifest) = match media_type(&top) {
            Some(media::OCI_INDEX) | Some(media::DOCKER_LIST) => {
                let child = pick_platform(&top, digest)?;
                let m = self.manifest(source, &child).await?;
                (child, m)
            }
            _ => (digest.to_string(), top),
        };
        let kind = self.classify(source, &manifest_digest, &manifest).await?;
        let wasm = match &kind {
            ImageKind::Wasm { layer, .. } => Some(self.store.read(layer)?),
            ImageKind::WasmCompat { layer, path } => {
                let bytes = self.store.read(layer)?;
                Some(archive::extract_file(&bytes, layer, path, self.max_blob)?)
            }
            ImageKind::Native => None,
        };
        Ok(PulledImage {
            manifest_digest,
            requested_digest: digest.to_string(),
            kind,
            wasm,
        })
    }

    /// A manifest's JSON, from the store or fetched and verified.
    async fn manifest<S: ImageSource>(&self, source: &S, digest: &str) -> Result<Value, Error> {
        let what = format!("the manifest {digest} from {}", source.name());
        let bytes = self
            .store
            .fetch_bytes(digest, MAX_MANIFEST, &what, || source.manifest(digest))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::BadImage {
            digest: digest.to_string(),
            reason: format!("the manifest is not JSON: {e}"),
        })
    }

    /// Fetches the blob a descriptor names, verified, unless already stored.
    async fn blob<S: ImageSource>(
        &self,
        source: &S,
        desc: &Value,
        image: &str,
    ) -> Result<String, Error> {
        let (digest, size) = descriptor(desc, image)?;
        if size > self.max_blob {
            return Err(Error::BlobSize {
                what: format!("blob {digest}"),
                reason: format!(
                    "its descriptor says {size} bytes, more than the provider's maximum of {}",
                    self.max_blob
                ),
            });
        }
        let progress = self.progress.clone();
        self.store
            .fetch(&digest, size, || async {
                let stream = source.blob(&digest).await?;
                Ok(match progress {
                    None => stream,
                    Some(p) => {
                        let d = digest.clone();
                        let counted =
                            futures_util::StreamExt::scan(stream, 0u64, move |done, chunk| {
                                if let Ok(c) = &chunk {
                                    *done += c.len() as u64;
                                    p(&Transfer {
                                        digest: &d,
                                        done: *done,
                                        total: size,
                                    });
                                }
                                std::future::ready(Some(chunk))
                            });
                        Box::pin(counted) as store::BlobStream
                    }
                })
            })
            .await?;
        Ok(digest)
    }

    async fn classify<S: ImageSource>(
        &self,
        source: &S,
        digest: &str,
        m: &Value,
    ) -> Result<ImageKind, Error> {
        let bad = |reason: String| Error::BadImage {
            digest: digest.to_string(),
            reason,
        };
        match media_type(m) {
            Some(media::OCI_MANIFEST) | Some(media::DOCKER_MANIFEST) | None => {}
            Some(other) => return Err(bad(format!("unsupported manifest media type `{other}`"))),
        }
        let config = m
            .get("config")
            .ok_or_else(|| bad("the manifest has no config".into()))?;
        let config_type = config
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let layers = m
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("the manifest has no layers".into()))?;
        let layer_type = |l: &Value| {
            l.get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let wasm_layers: Vec<&Value> = layers
            .iter()
            .filter(|l| {
                matches!(
                    layer_type(l).as_str(),
                    media::WASM_LAYER | media::WASM_LAYER_LEGACY
                )
            })
            .collect();
        if wasm_layers.len() > 1 {
            return Err(bad(format!(
                "it has {} wasm layers; a wasm artifact has exactly one",
                wasm_layers.len()
            )));
        }
        if let Some(layer) = wasm_layers.first() {
            if layers.len() != 1 {
                return Err(bad(
                    "a wasm layer next to other layers; a wasm artifact has exactly one layer"
                        .into(),
                ));
            }
            let config_digest = self.blob(source, config, digest).await?;
            if config_type == media::WASM_CONFIG {
                let cfg: Value = serde_json::from_slice(&self.store.read(&config_digest)?)
                    .map_err(|e| bad(format!("the wasm config is not JSON: {e}")))?;
                let listed: Vec<&str> = cfg
                    .get("layerDigests")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let (layer_digest, _) = descriptor(layer, digest)?;
                if !listed.is_empty() && listed != [layer_digest.as_str()] {
                    return Err(bad(format!(
                        "the config's layerDigests {listed:?} do not match the layer {layer_digest}"
                    )));
                }
            }
            let layer_digest = self.blob(source, layer, digest).await?;
            return Ok(ImageKind::Wasm {
                layer: layer_digest,
                media_type: layer_type(layer),
            });
        }
        for l in layers {
            let t = layer_type(l);
            if !media::TAR_LAYERS.contains(&t.as_str()) {
                return Err(bad(format!("unknown layer media type `{t}`")));
            }
        }
        if ![media::OCI_CONFIG, media::DOCKER_CONFIG].contains(&config_type) {
            return Err(bad(format!("unknown config media type `{config_type}`")));
        }
        let config_digest = self.blob(source, config, digest).await?;
        let cfg: Value = serde_json::from_slice(&self.store.read(&config_digest)?)
            .map_err(|e| bad(format!("the image config is not JSON: {e}")))?;
        let compat_annotation = m
            .pointer("/annotations/module.wasm.image~1variant")
            .and_then(Value::as_str)
            == Some("compat");
        let wasi_platform = cfg.get("os").and_then(Value::as_str) == Some("wasi")
            && cfg.get("architecture").and_then(Value::as_str) == Some("wasm");
        if !(compat_annotation || wasi_platform) {
            return Ok(ImageKind::Native);
        }
        let entry = cfg
            .pointer("/config/Entrypoint/0")
            .or_else(|| cfg.pointer("/config/Cmd/0"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad("a compat wasm image must name its module in the config's Entrypoint".into())
            })?
            .trim_start_matches('/')
            .to_string();
        // The module is in the last layer that holds it.
        for l in layers.iter().rev() {
            let layer = self.blob(source, l, digest).await?;
            let bytes = self.store.read(&layer)?;
            if archive::contains(&bytes, &layer, &entry, self.max_blob)? {
                return Ok(ImageKind::WasmCompat { layer, path: entry });
            }
        }
        Err(bad(format!("no layer holds the entrypoint `{entry}`")))
    }
}

fn media_type(m: &Value) -> Option<&str> {
    m.get("mediaType").and_then(Value::as_str)
}

/// `(digest, size)` of a descriptor, both checked.
fn descriptor(d: &Value, image: &str) -> Result<(String, u64), Error> {
    let bad = |reason: &str| Error::BadImage {
        digest: image.to_string(),
        reason: reason.into(),
    };
    let digest = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a descriptor has no digest"))?;
    check_digest(digest).map_err(|_| {
        bad(&format!(
            "descriptor digest `{digest}` is not sha256:<64 hex>"
        ))
    })?;
    let size = d
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("a descriptor has no size"))?;
    Ok((digest.to_string(), size))
}

/// From an index: the wasm platform (os wasip1/wasip2/wasi, architecture
/// wasm), else linux/amd64.
fn pick_platform(index: &Value, digest: &str) -> Result<String, Error> {
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let platform = |e: &Value| {
        let p = e.get("platform");
        let s = |k| {
            p.and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        (s("os"), s("architecture"))
    };
    let wasm = entries
        .iter()
        .find(|e| matches!(platform(e), (os, arch) if arch == "wasm" && ["wasip1", "wasip2", "wasi"].contains(&os.as_str())));
    let linux = entries
        .iter()
        .find(|e| platform(e) == ("linux".into(), "amd64".into()));
    let chosen = wasm.or(linux).ok_or_else(|| Error::BadImage {
        digest: digest.to_string(),
        reason: format!(
            "the index offers no usable platform (wasm or linux/amd64); it has {:?}",
            entries
                .iter()
                .map(|e| {
                    let (o, a) = platform(e);
                    format!("{o}/{a}")
                })
                .collect::<Vec<_>>()
        ),
    })?;
    let (child, _) = descriptor(chosen, digest)?;
    Ok(child)
}
