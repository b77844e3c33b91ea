//! Runs a [`Resolved`] execution: for each stage `configuring` (find the image
//! by checksum, pull and verify it, compile the module) then `running` (the
//! sandbox, inputs wired to datasets or the previous stage's output), then
//! `publishing` (hash every regular file of the last stage's output — links the
//! guest made are never followed — and register the result as an asset owned by
//! the consumer, with its provenance). Every status change is persisted through
//! [`Store::set_status`]; per-stage records through [`Store::record_stages`].
//! A succeeded execution gets a signed [`receipt`]: inputs (a digest of each
//! dataset's file listing), stages (image and module digests, outcomes, exit
//! codes, times, bytes), outputs (each file's sha256) and the result DID.

use crate::Error;
use crate::image::{self, AnySource, LayoutSource, Puller, RegistryAuth, RegistrySource};
use crate::outcome::{Outcome, Status};
use crate::receipt::{self, ProviderKey};
use crate::resolve::{Resolved, ResolvedInput, ResolvedStage};
use crate::sandbox::{JobSpec, Limits, Prepared, Sandbox, StopHandle};
use crate::store::Store;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where stage images are looked for: local OCI layouts first (any layout
/// holding the manifest blob serves it, whatever its tags), then the registry
/// the reference names.
#[derive(Debug, Clone, Default)]
pub struct ImageResolver {
    pub layouts: Vec<PathBuf>,
    pub insecure: Vec<String>,
    pub auth: Option<(String, String)>,
}

impl ImageResolver {
    fn source(&self, reference: &str, checksum: &str) -> Result<AnySource, Error> {
        let hex = checksum.trim_start_matches("sha256:");
        if let Some(dir) = self
            .layouts
            .iter()
            .find(|d| d.join("blobs/sha256").join(hex).is_file())
        {
            return Ok(AnySource::Layout(LayoutSource { dir: dir.clone() }));
        }
        let auth = match &self.auth {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => image::auth_from_env(),
        };
        Ok(AnySource::Registry(RegistrySource::new(
            image::parse_reference(reference)?,
            &self.insecure,
            auth,
        )))
    }
}

/// Runs executions.
pub struct Pipeline {
    pub sandbox: Arc<Sandbox>,
    pub store: Arc<Store>,
    pub puller: Puller,
    pub images: ImageResolver,
    /// Per-execution working directories: `<root>/<execution>/stage-N/{outputs,logs}`.
    pub root: PathBuf,
    pub limits: Limits,
    /// Signs receipts.
    pub key: ProviderKey,
    /// Images already pulled and prepared: checksum → (module digest,
    /// manifest digest, which differs when the checksum names an index).
    /// A digest-pinned image never changes, so later stages skip the pull
    /// and the module hashing while the module is still prepared in memory.
    pub known: Mutex<HashMap<String, (String, String)>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn create(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))
}

impl Pipeline {
    /// The output directory of stage `index` of execution `id`.
    pub fn outputs(&self, id: &str, index: u32) -> PathBuf {
        self.root
            .join(id)
            .join(format!("stage-{index}"))
            .join("outputs")
    }

    /// The logs directory of stage `index` of execution `id`.
    pub fn logs(&self, id: &str, index: u32) -> PathBuf {
        self.root
            .join(id)
            .join(format!("stage-{index}"))
            .join("logs")
    }

    async fn configure(&self, stage: &ResolvedStage) -> Result<(Arc<Prepared>, String), Error> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&stage.checksum)
            .cloned();
        if let Some((module, manifest)) = known
            && let Some(module) = self.sandbox.cached(&module)
        {
            return Ok((module, manifest));
        }
        let source = self.images.source(&stage.reference, &stage.checksum)?;
        let pulled = self.puller.pull(&source, &stage.checksum).await?;
        let wasm = pulled.wasm.ok_or_else(|| Error::BadImage {
            digest: stage.checksum.clone(),
            reason: "a native (non-wasm) image; it needs the Kubernetes backend, which this provider has not configured".into(),
        })?;
        let module = self.sandbox.prepare(&wasm)?;
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(
            stage.checksum.clone(),
            (module.digest.clone(), pulled.manifest_digest.clone()),
        );
        Ok((module, pulled.manifest_digest))
    }

    /// Runs execution `id` (status `pending`) to a terminal status, which it
    /// returns. Guest failures and refused images end the execution `failed`
    /// with the reason; they are not errors.
    ///
    /// # Errors
    /// Host-side failures: the database or the provider's disk.
    pub async fn run(
        &self,
        id: &str,
        resolved: &Resolved,
        stop: &StopHandle,
    ) -> Result<Status, Error> {
        let mut records: Vec<Value> = Vec::new();
        for stage in &resolved.stages {
            self.store.set_status(id, Status::Configuring, None)?;
            let started = now_ms();
            let (outputs, logs) = (self.outputs(id, stage.index), self.logs(id, stage.index));
            create(&outputs)?;
            create(&logs)?;
            let (module, image_digest) = match self.configure(stage).await {
                Ok(m) => m,
                Err(e) => {
                    let why = format!("stage {}: {e}", stage.index);
                    records.push(json!({"index": stage.index, "status": "failed", "outcome": Outcome::Rejected,
                        "image": stage.reference, "started_at": started, "finished_at": now_ms(), "error": why}));
                    self.store.record_stages(id, &Value::Array(records))?;
                    self.store.set_status(id, Status::Failed, Some(&why))?;
                    return Ok(Status::Failed);
                }
            };
            if stop.is_stopped() {
                self.store
                    .set_status(id, Status::Stopped, Some("stopped on request"))?;
                return Ok(Status::Stopped);
            }
            self.store.set_status(id, Status::Running, None)?;
            let inputs = stage
                .inputs
                .iter()
                .map(|i| match i {
                    ResolvedInput::Dataset { path, .. } => path.clone(),
                    ResolvedInput::PreviousStage(n) => self.outputs(id, *n),
                })
                .collect();
            let spec = JobSpec {
                name: format!("stage-{}", stage.index),
                inputs,
                output: outputs,
                logs,
                args: Vec::new(),
                env: Vec::new(),
                limits: self.limits,
            };
            let report = self.sandbox.run(&module, &spec, stop).await?;
            records.push(json!({
                "index": stage.index, "status": report.status, "outcome": report.outcome, "exit_code": report.exit_code,
                "image": stage.reference, "image_digest": image_digest, "module_digest": report.module_digest,
                "started_at": started, "finished_at": now_ms(), "duration_ms": report.duration_ms,
                "output_bytes": report.output_bytes, "log_bytes": report.log_bytes, "error": report.error,
            }));
            self.store
                .record_stages(id, &Value::Array(records.clone()))?;
            if report.status != Status::Succeeded {
                let why = format!(
                    "stage {}: {}",
                    stage.index,
                    report.error.unwrap_or_default()
                );
                self.store.set_status(id, report.status, Some(&why))?;
                return Ok(report.status);
            }
        }
        self.store.set_status(id, Status::Publishing, None)?;
        let last = resolved.stages.last().map_or(0, |s| s.index);
        let results = self.outputs(id, last);
        let (files, skipped) = collect(&results)?;
        let main = json!({
            "type": "result",
            "name": format!("{} result", resolved.workflow.name),
            "owner": resolved.agreement.consumer,
            "files": files,
            "skipped": skipped,
            "provenance": {
                "execution": id,
                "agreement": resolved.agreement.id,
                "workflow": resolved.agreement.workflow,
                "inputs": resolved.workflow.datasets(),
                "stages": records,
            },
        });
        let result = self.store.add_result(id, &main, &results)?;
        let mut inputs = Vec::new();
        for stage in &resolved.stages {
            for input in &stage.inputs {
                if let ResolvedInput::Dataset { did, path } = input {
                    let (listing, _) = collect(path)?;
                    let digest = format!(
                        "sha256:{}",
                        hex::encode(Sha256::digest(receipt::canonical(&Value::Array(listing))))
                    );
                    inputs.push(json!({"stage": stage.index, "did": did, "digest": digest}));
                }
            }
        }
        let body = json!({
            "version": 1,
            "execution": id,
            "agreement": resolved.agreement.id,
            "workflow": resolved.agreement.workflow,
            "consumer": resolved.agreement.consumer,
            "provider": self.key.address(),
            "result": result,
            "inputs": inputs,
            "outputs": main["files"],
            "stages": records,
            "finished_at": now_ms(),
        });
        self.store
            .set_receipt(id, &receipt::sign(&self.key, body)?)?;
        self.store.set_status(id, Status::Succeeded, None)?;
        Ok(Status::Succeeded)
    }
}

/// Every regular file under `root` as `{"path", "size", "sha256"}`, sorted;
/// and the paths of entries that are not regular files or directories (links
/// the guest made), which are never followed nor published.
///
/// # Errors
/// [`Error::Io`] when a file cannot be read.
pub fn collect(root: &Path) -> Result<(Vec<Value>, Vec<String>), Error> {
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let kind = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                // O_NOFOLLOW: a file swapped for a link after the listing is not read.
                let mut f = open_nofollow(&path)?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut size = 0u64;
                loop {
                    let n = f.read(&mut buf).map_err(|e| Error::io("read", &path, e))?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    h.update(&buf[..n]);
                }
                files.push(json!({"path": rel, "size": size, "sha256": format!("sha256:{}", hex::encode(h.finalize()))}));
            } else {
                skipped.push(rel);
            }
        }
    }
    files.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    skipped.sort();
    Ok((files, skipped))
}

fn open_nofollow(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}
