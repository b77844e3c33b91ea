//! Where images come from: an OCI image layout directory or a registry.

use super::store::BlobStream;
use super::{check_digest, media};
use crate::Error;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use std::path::PathBuf;

/// A place manifests and blobs can be read from by digest. Sources do not
/// verify; [`super::Puller`] and [`super::BlobStore`] do.
pub trait ImageSource: Send + Sync {
    /// A human-readable name for errors (`registry host/repo`, `layout DIR`).
    fn name(&self) -> String;
    /// The raw bytes of the manifest (or index) with `digest`.
    fn manifest(&self, digest: &str) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
    /// A stream of the blob with `digest`.
    fn blob(&self, digest: &str) -> impl Future<Output = Result<BlobStream, Error>> + Send;
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
#[derive(Debug, Clone)]
pub struct LayoutSource {
    pub dir: PathBuf,
}

impl LayoutSource {
    fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        check_digest(digest)?;
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")))
    }

    fn missing(&self, digest: &str, e: std::io::Error) -> Error {
        Error::Source {
            source_name: self.name(),
            reason: format!("no blob {digest} ({e}); is this the right layout and checksum?"),
        }
    }

    /// The manifest digest `index.json` lists under `tag` (annotation
    /// `org.opencontainers.image.ref.name`), or its only manifest when `tag`
    /// is `None`.
    ///
    /// # Errors
    /// [`Error::Source`] when the index is unreadable or has no such tag.
    pub fn resolve(&self, tag: Option<&str>) -> Result<String, Error> {
        let err = |reason: String| Error::Source {
            source_name: self.name(),
            reason,
        };
        let path = self.dir.join("index.json");
        let text = std::fs::read(&path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let index: Value = serde_json::from_slice(&text)
            .map_err(|e| err(format!("index.json is not JSON: {e}")))?;
        let manifests = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let name = |m: &Value| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let found = match tag {
            Some(t) => manifests.iter().find(|m| name(m).as_deref() == Some(t)),
            None if manifests.len() == 1 => manifests.first(),
            None => {
                return Err(err(format!(
                    "it holds {} images; name one as DIR:TAG (tags: {:?})",
                    manifests.len(),
                    manifests.iter().filter_map(name).collect::<Vec<_>>()
                )));
            }
        };
        let m = found.ok_or_else(|| {
            err(format!(
                "no image tagged `{}`; tags: {:?}",
                tag.unwrap_or(""),
                manifests.iter().filter_map(name).collect::<Vec<_>>()
            ))
        })?;
        m.get("digest")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| err("an index entry has no digest".into()))
    }
}

impl ImageSource for LayoutSource {
    fn name(&self) -> String {
        format!("layout {}", self.dir.display())
    }

    async fn manifest(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(digest)?;
        std::fs::read(&p).map_err(|e| self.missing(digest, e))
    }

    async fn blob(&self, digest: &str) -> Result<BlobStream, Error> {
        let p = self.blob_path(digest)?;
        let file = tokio::fs::File::open(&p)
            .await
            .map_err(|e| self.missing(digest, e))?;
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file,
            1 << 16,
        )))
    }
}

/// A registry repository, through `oci-client`.
pub struct RegistrySource {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySource")
            .field("reference", &self.reference.whole())
            .finish()
    }
}

/// Parses `host[:port]/name[:tag][@sha256:…]`.
///
/// # Errors
/// [`Error::Reference`] with the parser's reason.
pub fn parse_reference(reference: &str) -> Result<Reference, Error> {
    reference
        .parse::<Reference>()
        .map_err(|e| Error::Reference {
            reference: reference.to_string(),
            reason: format!("{e}; expected host[:port]/name[:tag]@sha256:<64 hex>"),
        })
}

impl RegistrySource {
    /// A source for the repository of `reference`. Plain HTTP is used only
    /// for registries listed in `insecure` (`host` or `host:port`).
    pub fn new(reference: Reference, insecure: &[String], auth: RegistryAuth) -> RegistrySource {
        let protocol = if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure.to_vec())
        };
        crate::tls::install();
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        RegistrySource {
            client,
            reference,
            auth,
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    fn error(&self, what: &str, e: oci_client::errors::OciDistributionError) -> Error {
        let hint = match &e {
            oci_client::errors::OciDistributionError::RequestError(_) => {
                "; is the registry reachable at that address (plain-HTTP registries need --insecure-registry)?"
            }
            oci_client::errors::OciDistributionError::UnauthorizedError { .. }
            | oci_client::errors::OciDistributionError::AuthenticationFailure(_) => {
                "; the registry refused the credentials: set INSITU_REGISTRY_USERNAME and INSITU_REGISTRY_PASSWORD (or INSITU_REGISTRY_TOKEN)"
            }
            _ => "",
        };
        Error::Source {
            source_name: self.name(),
            reason: format!("{what}: {e}{hint}"),
        }
    }
}

impl ImageSource for RegistrySource {
    fn name(&self) -> String {
        format!(
            "registry {}/{}",
            self.reference.registry(),
            self.reference.repository()
        )
    }

    async fn manifest(&self, digest: &str) -> Result<Vec<u8>, Error> {
        use oci_client::errors::{DigestError, OciDistributionError as E, OciErrorCode};
        let r = self.reference.clone_with_digest(digest.to_string());
        let e = match self
            .client
            .pull_manifest_raw(&r, &self.auth, media::ACCEPTED)
            .await
        {
            Ok((bytes, _)) => return Ok(bytes.to_vec()),
            Err(e) => e,
        };
        Err(match e {
            // The client checks the digest too; report it as ours.
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                Error::DigestMismatch {
                    what: format!("the manifest {digest} from {}", self.name()),
                    expected,
                    actual,
                }
            }
            E::ImageManifestNotFoundError(_) => self.unknown(digest).await,
            E::RegistryError { envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == OciErrorCode::ManifestUnknown) =>
            {
                self.unknown(digest).await
            }
            e => self.error(&format!("cannot fetch manifest {digest}"), e),
        })
    }

    async fn blob(&self, digest: &str) -> Result<BlobStream, Error> {
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        let stream = self
            .client
            .pull_blob_stream(&self.reference, digest)
            .await
            .map_err(|e| self.error(&format!("cannot fetch blob {digest}"), e))?;
        Ok(Box::pin(
            stream.stream.map(|r| r.map_err(std::io::Error::other)),
        ))
    }
}

impl RegistrySource {
    /// The error for a checksum the repository has no manifest for: what was
    /// asked, where, and what the reference's tag points to now (if it has
    /// one and it resolves), so a stale checksum is told from a wrong
    /// repository.
    async fn unknown(&self, digest: &str) -> Error {
        let tag = match self.reference.tag() {
            None => String::new(),
            Some(t) => match self.resolve_tag().await {
                Ok(now) if now == digest => format!(
                    "; its tag `{t}` points to that digest, yet the registry does not serve it"
                ),
                Ok(now) => format!(
                    "; its tag `{t}` points to {now} now: if that is the algorithm meant, put that checksum in the workflow (insitu inspect prints it)"
                ),
                Err(_) => format!("; its tag `{t}` does not resolve either"),
            },
        };
        Error::Source {
            source_name: self.name(),
            reason: format!(
                "checksum {digest} not found: the repository has no manifest with that digest (never pushed there, deleted, or a wrong checksum){tag}"
            ),
        }
    }

    /// The digest the registry's tag currently points to (sha256 of the
    /// manifest bytes it returns). For `insitu inspect` and explicitly allowed
    /// tags only: running is always by digest.
    ///
    /// # Errors
    /// [`Error::Reference`] without a tag; [`Error::Source`] if the registry fails.
    pub async fn resolve_tag(&self) -> Result<String, Error> {
        if self.reference.tag().is_none() {
            return Err(Error::Reference {
                reference: self.reference.whole(),
                reason: "no tag to resolve".into(),
            });
        }
        let r = Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            self.reference.tag().unwrap_or_default().to_string(),
        );
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&r, &self.auth, media::ACCEPTED)
            .await
            .map_err(|e| self.error("cannot resolve the tag", e))?;
        Ok(super::sha256_digest(&bytes))
    }
}

/// Either kind of source, so callers can choose at run time.
#[derive(Debug)]
pub enum AnySource {
    Registry(RegistrySource),
    Layout(LayoutSource),
    /// An `oci-archive` tarball unpacked into a temporary layout.
    Archive(LayoutSource, tempfile::TempDir),
}

impl ImageSource for AnySource {
    fn name(&self) -> String {
        match self {
            AnySource::Registry(s) => s.name(),
            AnySource::Layout(s) | AnySource::Archive(s, _) => s.name(),
        }
    }

    async fn manifest(&self, digest: &str) -> Result<Vec<u8>, Error> {
        match self {
            AnySource::Registry(s) => s.manifest(digest).await,
            AnySource::Layout(s) | AnySource::Archive(s, _) => s.manifest(digest).await,
        }
    }

    async fn blob(&self, digest: &str) -> Result<BlobStream, Error> {
        match self {
            AnySource::Registry(s) => s.blob(digest).await,
            AnySource::Layout(s) | AnySource::Archive(s, _) => s.blob(digest).await,
        }
    }
}

/// A registry source and the digest to pull from `reference`
/// (`host[:port]/name[:tag]@sha256:…`).
///
/// # Errors
/// [`Error::Reference`] when the reference is malformed, or has no checksum
/// and `allow_tag` is false; [`Error::Source`] when resolving an allowed tag fails.
pub async fn registry(
    reference: &str,
    insecure: &[String],
    auth: RegistryAuth,
    allow_tag: bool,
) -> Result<(AnySource, String), Error> {
    let r = parse_reference(reference)?;
    let digest = r.digest().map(str::to_string);
    let source = RegistrySource::new(r, insecure, auth);
    let digest = match digest {
        Some(d) => {
            check_digest(&d)?;
            d
        }
        None if allow_tag => source.resolve_tag().await?,
        None => {
            return Err(Error::Reference {
                reference: reference.to_string(),
                reason: "a tag without a checksum is refused: images run pinned by digest; append @sha256:<digest> (`insitu inspect` prints it)".into(),
            });
        }
    };
    Ok((AnySource::Registry(source), digest))
}

/// Largest `oci-archive` unpacked.
pub const MAX_ARCHIVE: u64 = 8 << 30;

/// A layout source and the digest of `DIR[:TAG]`. When the path is a file it
/// is an `oci-archive` tarball (optionally gzip; also what `docker save` writes
/// since Docker 25), unpacked with every tar check into a temporary layout.
///
/// # Errors
/// [`Error::Source`] when the layout or tag cannot be read;
/// [`Error::UnsafeArchive`] for hostile tarballs.
pub fn layout(spec: &str) -> Result<(AnySource, String), Error> {
    let (path, tag) = split_layout(spec);
    if !std::path::Path::new(path).is_file() {
        let source = LayoutSource { dir: path.into() };
        let digest = source.resolve(tag)?;
        return Ok((AnySource::Layout(source), digest));
    }
    let tmp = tempfile::Builder::new()
        .prefix("insitu-archive-")
        .tempdir()
        .map_err(|e| Error::io("create a temporary dir for", path, e))?;
    super::archive::unpack(std::path::Path::new(path), tmp.path(), MAX_ARCHIVE)?;
    if !tmp.path().join("index.json").exists() {
        let legacy = tmp.path().join("manifest.json").exists();
        return Err(Error::Source {
            source_name: format!("archive {path}"),
            reason: if legacy {
                "a docker-archive without index.json (saved by Docker before 25); convert it: skopeo copy docker-archive:FILE oci-archive:NEW.tar".into()
            } else {
                "not an OCI image archive (no index.json at its root)".into()
            },
        });
    }
    let source = LayoutSource {
        dir: tmp.path().to_path_buf(),
    };
    let digest = source.resolve(tag).map_err(|e| match e {
        Error::Source { reason, .. } => Error::Source {
            source_name: format!("archive {path}"),
            reason,
        },
        e => e,
    })?;
    Ok((AnySource::Archive(source, tmp), digest))
}

/// Splits `DIR[:TAG]`; a colon followed by a path separator belongs to DIR.
pub fn split_layout(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => {
            (dir, Some(tag))
        }
        _ => (spec, None),
    }
}

/// Registry credentials from the environment: `INSITU_REGISTRY_TOKEN`
/// (bearer), or `INSITU_REGISTRY_USERNAME` + `INSITU_REGISTRY_PASSWORD`
/// (basic); anonymous otherwise.
pub fn auth_from_env() -> RegistryAuth {
    let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    if let Some(token) = var("INSITU_REGISTRY_TOKEN") {
        return RegistryAuth::Bearer(token);
    }
    match (
        var("INSITU_REGISTRY_USERNAME"),
        var("INSITU_REGISTRY_PASSWORD"),
    ) {
        (Some(u), Some(p)) => RegistryAuth::Basic(u, p),
        _ => RegistryAuth::Anonymous,
    }
}
