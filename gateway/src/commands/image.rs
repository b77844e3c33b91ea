//! `insitu push`, `insitu inspect`, and fetching a module from an image for
//! `insitu run`.

use anyhow::{Context, bail};
use insitu_runtime::image::{self, AnySource, BlobStore, ImageKind, Puller, package};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Where an image comes from on the command line.
#[derive(Debug, Clone)]
pub enum ImageArg {
    /// `host[:port]/name[:tag]@sha256:…`
    Registry {
        reference: String,
        insecure: Vec<String>,
    },
    /// `DIR[:TAG]`
    Layout(String),
}

impl ImageArg {
    /// A layout when `layout` is given, else the registry `reference`.
    pub fn of(
        reference: Option<String>,
        layout: Option<String>,
        insecure: Vec<String>,
    ) -> ImageArg {
        match layout {
            Some(l) => ImageArg::Layout(l),
            None => ImageArg::Registry {
                reference: reference.unwrap_or_default(),
                insecure,
            },
        }
    }

    /// A name for argv\[0\]: the repository's last segment, or the layout's tag or dir name.
    pub fn algorithm_name(&self) -> String {
        match self {
            ImageArg::Registry { reference, .. } => {
                let path = reference.split('@').next().unwrap_or(reference);
                let repo = path.rsplit('/').next().unwrap_or(path);
                repo.split(':').next().unwrap_or(repo).to_string()
            }
            ImageArg::Layout(spec) => {
                let (dir, tag) = image::split_layout(spec);
                tag.map(str::to_string).unwrap_or_else(|| {
                    Path::new(dir)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
            }
        }
    }

    async fn source(&self, allow_tag: bool) -> Result<(AnySource, String), insitu_runtime::Error> {
        match self {
            ImageArg::Registry {
                reference,
                insecure,
            } => image::registry(reference, insecure, image::auth_from_env(), allow_tag).await,
            ImageArg::Layout(spec) => image::layout(spec),
        }
    }
}

/// Pulls `arg` into the store under `cache_root` (a temp store when `None`)
/// and returns the module's bytes.
///
/// # Errors
/// Every pull error; a native image is refused with the reason.
pub async fn pull_module(arg: &ImageArg, cache_root: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let (source, digest) = arg.source(false).await?;
    let temp;
    let root = match cache_root {
        Some(r) => r.join("blobs"),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let pulled = with_progress(Puller::new(BlobStore::open(root)?))
        .pull(&source, &digest)
        .await?;
    match pulled.wasm {
        Some(wasm) => Ok(wasm),
        None => bail!(
            "image {digest} is a native (non-wasm) container image; it runs only on the Kubernetes backend, which `insitu run` does not have"
        ),
    }
}

/// `puller` with a progress bar per blob of at least 1 MiB on stderr when
/// it is a terminal (bytes, rate, time left); unchanged otherwise.
fn with_progress(mut puller: Puller) -> Puller {
    if !std::io::stderr().is_terminal() {
        return puller;
    }
    let bars =
        std::sync::Mutex::new(std::collections::HashMap::<String, indicatif::ProgressBar>::new());
    puller.progress = Some(std::sync::Arc::new(
        move |t: &insitu_runtime::image::Transfer<'_>| {
            if t.total < 1 << 20 {
                return;
            }
            let mut bars = insitu_runtime::sync::lock(&bars);
            let bar = bars.entry(t.digest.to_string()).or_insert_with(|| {
                let b = indicatif::ProgressBar::new(t.total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                b.set_message(format!("pulling {}", &t.digest[..t.digest.len().min(19)]));
                b
            });
            bar.set_position(t.done);
            if t.done >= t.total {
                bar.finish_and_clear();
            }
        },
    ));
    puller
}

/// `insitu push`: packages `module` and pushes it to `target` (registry) or
/// writes it to a layout; returns the manifest digest.
///
/// # Errors
/// Unreadable or unacceptable module, registry or file system failures.
pub async fn push(module: &Path, target: &ImageArg) -> anyhow::Result<String> {
    let wasm = std::fs::read(module)
        .with_context(|| format!("cannot read the module {}", module.display()))?;
    let artifact = package::wasm_artifact(&wasm)?;
    match target {
        ImageArg::Layout(spec) => {
            let (dir, tag) = image::split_layout(spec);
            package::write_layout(Path::new(dir), tag.unwrap_or("latest"), &artifact)?;
        }
        ImageArg::Registry {
            reference,
            insecure,
        } => {
            let r = image::parse_reference(reference)?;
            let dest = image::RegistrySource::new(r, insecure, image::auth_from_env());
            // The registry client uploads each blob whole: a spinner with
            // the size and the time taken, on a terminal.
            let spinner = std::io::stderr().is_terminal().then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.set_message(format!(
                    "pushing {} to {reference}",
                    indicatif::HumanBytes(artifact.layer.len() as u64)
                ));
                s.enable_steady_tick(std::time::Duration::from_millis(120));
                s
            });
            let pushed = package::push(&dest, &artifact).await;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            pushed?;
        }
    }
    Ok(artifact.manifest_digest)
}

/// `insitu inspect`: what the image is. Tags are resolved (that is how users
/// learn the checksum to pin).
///
/// # Errors
/// Every pull error.
pub async fn inspect(
    arg: &ImageArg,
    cache_root: Option<PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    let (source, digest) = arg.source(true).await?;
    let temp = tempfile::tempdir()?;
    let root = cache_root
        .map(|r| r.join("blobs"))
        .unwrap_or_else(|| temp.path().to_path_buf());
    let pulled = with_progress(Puller::new(BlobStore::open(root)?))
        .pull(&source, &digest)
        .await?;
    let mut out = json!({
        "source": insitu_runtime::image::ImageSource::name(&source),
        "digest": pulled.requested_digest,
        "manifest_digest": pulled.manifest_digest,
    });
    match &pulled.kind {
        ImageKind::Wasm { layer, media_type } => {
            out["kind"] = json!("wasm");
            out["layer"] = json!(layer);
            out["layer_media_type"] = json!(media_type);
        }
        ImageKind::WasmCompat { layer, path } => {
            out["kind"] = json!("wasm_compat");
            out["layer"] = json!(layer);
            out["path"] = json!(path);
        }
        ImageKind::Native => out["kind"] = json!("native"),
    }
    if let Some(wasm) = &pulled.wasm {
        let digest = image::sha256_digest(wasm);
        let kind = insitu_runtime::sandbox::inspect::inspect(wasm, &digest)
            .map(|k| format!("{k:?}").to_lowercase())
            .unwrap_or_else(|e| format!("rejected: {e}"));
        out["module_digest"] = json!(digest);
        out["module_kind"] = json!(kind);
        out["module_size"] = json!(wasm.len());
    }
    Ok(out)
}

/// Where an image is: a registry reference or an OCI layout on disk.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageLocation {
    /// Registry reference: host[:port]/name[:tag][@sha256:…].
    #[arg(required_unless_present = "layout", conflicts_with = "layout")]
    pub reference: Option<String>,
    /// An OCI image layout instead: DIR[:TAG] (tag defaults to latest).
    #[arg(long, value_name = "DIR[:TAG]")]
    pub layout: Option<String>,
    /// Use plain HTTP for this registry host (loopback test registries); repeatable.
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
}

impl From<ImageLocation> for ImageArg {
    fn from(l: ImageLocation) -> ImageArg {
        ImageArg::of(l.reference, l.layout, l.insecure_registry)
    }
}

/// `insitu push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushCommand {
    /// The module to package (wasm32-wasip1 module or wasm32-wasip2 component).
    pub module: PathBuf,
    #[command(flatten)]
    pub to: ImageLocation,
}

impl PushCommand {
    /// Pushes (or writes the layout) and prints the manifest digest.
    ///
    /// # Errors
    /// As [`push`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let digest = super::shared::runtime()?.block_on(push(&self.module, &self.to.into()))?;
        println!("{digest}");
        Ok(true)
    }
}

/// `insitu inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectCommand {
    #[command(flatten)]
    pub image: ImageLocation,
}

impl InspectCommand {
    /// Prints what the image is, as pretty JSON.
    ///
    /// # Errors
    /// As [`inspect`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let arg = self.image.into();
        let info = super::shared::runtime()?
            .block_on(inspect(&arg, super::shared::default_cache_dir()))?;
        println!("{}", serde_json::to_string_pretty(&info)?);
        Ok(true)
    }
}
