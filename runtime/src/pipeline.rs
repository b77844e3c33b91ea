//! Runs a [`Resolved`] execution: for each stage `configuring` (find the image
//! by checksum, pull and verify it, compile the module) then `running` (the
//! sandbox, inputs wired to datasets or the previous stage's output), then
//! `publishing` (hash every regular file of the last stage's output — links the
//! guest made are never followed — and register the result as an asset owned by
//! the consumer, with its provenance). Every status change is persisted through
//! [`Store::advance`], with the per-stage records written in the same
//! transaction; the result asset, the receipt and `succeeded` are written
//! together by [`Store::publish`].
//! A succeeded execution gets a signed [`receipt`] (version [`receipt::VERSION`],
//! `docs/receipt.schema.json`): inputs (a digest of each dataset's file
//! listing), stages (image and module digests, arguments, inputs, limits,
//! outcomes, exit codes, times, resources used, each log file's sha256),
//! outputs (each file's sha256), the result DID and whether it ran in
//! deterministic mode ([`crate::sandbox::Determinism`], seeded per stage from
//! the execution id).

use crate::Error;
use crate::backend::{Backend, LocalWasm, StageCode, StageJob};
use crate::datadir::DataDir;
pub use crate::digest::fingerprint;
use crate::image::{self, AnySource, LayoutSource, Puller, RegistryAuth, RegistrySource};
use crate::outcome::{Outcome, Status};
use crate::receipt::{self, ProviderKey};
use crate::resolve::{FederatedRound, Resolved, ResolvedInput, ResolvedStage};
use crate::sandbox::{Determinism, JobSpec, Limits, Sandbox, StopHandle};
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
    /// Where the image `reference` pinned by `checksum` is pulled from.
    ///
    /// # Errors
    /// [`Error::Reference`] for a malformed registry reference.
    pub fn source(&self, reference: &str, checksum: &str) -> Result<AnySource, Error> {
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
    /// The data dir: executions' working directories
    /// (`executions/<execution>/stage-N/{outputs,logs}`).
    pub dir: DataDir,
    pub limits: Limits,
    /// Signs receipts.
    pub key: ProviderKey,
    /// What later executions reuse.
    pub caches: Caches,
    /// Who runs stages, in order of preference: each stage goes to the first
    /// that accepts its code. Default ([`Pipeline::local`]): the sandbox only.
    pub backends: Vec<Arc<dyn Backend>>,
}

/// An execution whose last status change is queued ([`Pipeline::start`]).
#[must_use = "the execution's end is durable only once `done` returns"]
pub struct Finish {
    queued: Queued,
    published: Option<crate::store::Ack<()>>,
    status: Status,
}

impl Finish {
    fn ready(status: Status) -> Finish {
        Finish::queued(Queued::default(), None, status)
    }

    fn queued(queued: Queued, published: Option<crate::store::Ack<()>>, status: Status) -> Finish {
        Finish {
            queued,
            published,
            status,
        }
    }

    /// Waits until the execution's terminal status is durable; returns it.
    ///
    /// # Errors
    /// A refused or failed write (the store, the provider's disk).
    pub async fn done(mut self) -> Result<Status, Error> {
        self.queued.settle().await?;
        if let Some(ack) = self.published {
            ack.done().await?;
        }
        Ok(self.status)
    }
}

/// Status changes queued by [`Pipeline::run`] and not yet known durable.
#[derive(Default)]
struct Queued(Vec<crate::store::Ack<Status>>);

impl Queued {
    fn push(&mut self, ack: crate::store::Ack<Status>) {
        self.0.push(ack);
    }

    /// The first refusal among those already answered (e.g. the execution
    /// was stopped meanwhile); forgets the answered ones.
    fn check(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        self.0.retain_mut(|ack| match ack.ready() {
            None => true,
            Some(r) => {
                if first.is_ok()
                    && let Err(e) = r
                {
                    first = Err(e);
                }
                false
            }
        });
        first
    }

    /// Waits for every queued change; the first refusal.
    async fn settle(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        for ack in self.0.drain(..) {
            if let Err(e) = ack.done().await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

/// Memos of a [`Pipeline`]; start with `Caches::default()`.
#[derive(Debug, Default)]
pub struct Caches {
    /// Images already pulled and prepared: checksum → (module digest,
    /// manifest digest, which differs when the checksum names an index).
    /// A digest-pinned image never changes, so later stages skip the pull
    /// and the module hashing while the module is still prepared in memory.
    images: Mutex<HashMap<String, (String, String)>>,
    /// Dataset directory → (stat fingerprint, digest of its listing): a
    /// dataset is hashed again only when a file's path, size, mtime or inode
    /// changed (as git's index does).
    inputs: Mutex<HashMap<PathBuf, ([u8; 32], String)>>,
    /// The inputs' fingerprints for the output checks, per dataset version.
    indexes: crate::airlock::Indexes,
}

/// Files modified this recently are not memoized: a write within the
/// timestamp granularity could leave size and mtime unchanged.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn create(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))
}

impl Pipeline {
    /// The default backends: wasm in `sandbox`, no native images.
    pub fn local(sandbox: &Arc<Sandbox>) -> Vec<Arc<dyn Backend>> {
        vec![Arc::new(LocalWasm(sandbox.clone()))]
    }

    /// The output directory of stage `index` of execution `id`.
    pub fn outputs(&self, id: &str, index: u32) -> PathBuf {
        self.dir.outputs(id, index)
    }

    /// The logs directory of stage `index` of execution `id`.
    pub fn logs(&self, id: &str, index: u32) -> PathBuf {
        self.dir.logs(id, index)
    }

    async fn configure(&self, stage: &ResolvedStage) -> Result<(StageCode, String), Error> {
        self.code(&stage.reference, &stage.checksum).await
    }

    /// Pulls and compiles the image `reference` pinned by `checksum` ahead of
    /// its first execution (see [`crate::warm`]): its blobs land in the blob
    /// cache, a wasm image's compiled code in the sandbox's caches, so the
    /// first execution starts as warm as the next ones. Native images are
    /// only pulled.
    ///
    /// # Errors
    /// As an execution's image step: [`Error::Reference`], pull and checksum
    /// errors, [`Error::Rejected`] for a module the sandbox refuses.
    pub async fn warm(&self, reference: &str, checksum: &str) -> Result<(), Error> {
        self.code(reference, checksum).await.map(|_| ())
    }

    /// The code of image `checksum`: from memory when an execution or
    /// [`Pipeline::warm`] prepared it, else pulled (blob cache first) and
    /// prepared (compiled-code cache first).
    async fn code(&self, reference: &str, checksum: &str) -> Result<(StageCode, String), Error> {
        let known = crate::sync::lock(&self.caches.images)
            .get(checksum)
            .cloned();
        if let Some((module, manifest)) = known
            && let Some(module) = self.sandbox.cached(&module)
        {
            return Ok((StageCode::Wasm(module), manifest));
        }
        let source = self.images.source(reference, checksum)?;
        let pulled = self.puller.pull(&source, checksum).await?;
        let Some(wasm) = pulled.wasm else {
            return Ok((StageCode::Native, pulled.manifest_digest));
        };
        let module = self.sandbox.prepare(&wasm)?;
        crate::sync::lock(&self.caches.images).insert(
            checksum.to_string(),
            (module.digest.clone(), pulled.manifest_digest.clone()),
        );
        Ok((StageCode::Wasm(module), pulled.manifest_digest))
    }

    /// Ends execution `id` `failed` because stage `stage`'s image or module
    /// was refused (`rejected`), recording it after `records`.
    fn reject(
        &self,
        id: &str,
        stage: &ResolvedStage,
        started: u64,
        e: &Error,
        mut records: Vec<Value>,
    ) -> Result<Status, Error> {
        let why = format!("stage {}: {e}", stage.index);
        records.push(
            json!({"index": stage.index, "status": "failed", "outcome": Outcome::Rejected,
            "image": stage.reference, "arguments": stage.arguments,
            "started_at": started, "finished_at": now_ms(), "error": why}),
        );
        self.store
            .advance(id, Status::Failed, Some(&why), Some(&Value::Array(records)))?;
        Ok(Status::Failed)
    }

    /// The first backend that accepts `code`.
    fn backend(&self, stage: &ResolvedStage, code: &StageCode) -> Result<&dyn Backend, Error> {
        self.backends
            .iter()
            .find(|b| b.accepts(code))
            .map(|b| b.as_ref())
            .ok_or_else(|| Error::BadImage {
                digest: stage.checksum.clone(),
                reason: "a native (non-wasm) image; it needs the Kubernetes or the Podman backend, which this provider has not configured ([kubernetes] or [podman] in the config file)".into(),
            })
    }

    /// The sha256 of the canonical JSON of [`collect`]`(root)`, memoized by
    /// [`fingerprint`].
    fn input_digest(&self, root: &Path) -> Result<String, Error> {
        let (print, newest) = fingerprint(root)?;
        let memo = crate::sync::lock(&self.caches.inputs);
        if let Some((p, digest)) = memo.get(root)
            && *p == print
        {
            return Ok(digest.clone());
        }
        drop(memo);
        let digest = listing_digest(root)?;
        if newest.elapsed().is_ok_and(|age| age > RACY) {
            crate::sync::lock(&self.caches.inputs)
                .insert(root.to_path_buf(), (print, digest.clone()));
        }
        Ok(digest)
    }

    /// Runs execution `id` (status `pending`) to a terminal status, which it
    /// returns once it is durable. Guest failures and refused images end the
    /// execution `failed` with the reason; they are not errors.
    ///
    /// # Errors
    /// Host-side failures: the database or the provider's disk.
    pub async fn run(
        &self,
        id: &str,
        resolved: &Resolved,
        stop: &StopHandle,
    ) -> Result<Status, Error> {
        self.start(id, resolved, stop).await?.done().await
    }

    /// [`Pipeline::run`] up to queueing the final status change: returns as
    /// soon as the stages ran and the result is handed to the store, so the
    /// caller can take the next execution while this one's commit (shared
    /// with others, see `store::writer`) reaches the disk. [`Finish::done`]
    /// waits for it.
    ///
    /// # Errors
    /// As [`Pipeline::run`].
    pub async fn start(
        &self,
        id: &str,
        resolved: &Resolved,
        stop: &StopHandle,
    ) -> Result<Finish, Error> {
        let mut records: Vec<Value> = Vec::new();
        // Stage records not yet persisted: written with the next status change.
        let mut fresh: Option<Value> = None;
        // Intermediate status changes are queued, not waited for: the
        // final one is committed with (or after) them.
        let mut queued = Queued::default();
        for stage in &resolved.stages {
            queued.check()?;
            queued.push(self.store.advance_ack(
                id,
                Status::Configuring,
                None,
                fresh.take().as_ref(),
            ));
            let started = now_ms();
            let (outputs, logs) = (self.outputs(id, stage.index), self.logs(id, stage.index));
            create(&outputs)?;
            create(&logs)?;
            let configured = self
                .configure(stage)
                .await
                .and_then(|(code, digest)| {
                    let backend = self.backend(stage, &code)?;
                    // Only the sandbox controls what a guest observes.
                    if resolved.deterministic && backend.name() != LocalWasm::NAME {
                        return Err(Error::BadImage {
                            digest: stage.checksum.clone(),
                            reason: format!("the workflow runs in deterministic mode, which only the provider's wasm sandbox gives; this stage would run on the {} backend", backend.name()),
                        });
                    }
                    Ok((backend, code, digest))
                });
            let (backend, code, image_digest) = match configured {
                Ok(m) => m,
                Err(e) => {
                    queued.settle().await?;
                    return self
                        .reject(id, stage, started, &e, records)
                        .map(Finish::ready);
                }
            };
            if stop.is_stopped() {
                queued.push(self.store.advance_ack(
                    id,
                    Status::Stopped,
                    Some("stopped on request"),
                    None,
                ));
                return Ok(Finish::queued(queued, None, Status::Stopped));
            }
            queued.check()?;
            queued.push(self.store.advance_ack(id, Status::Running, None, None));
            let mut inputs: Vec<PathBuf> = stage
                .inputs
                .iter()
                .map(|i| match i {
                    ResolvedInput::Dataset { path, .. } => path.clone(),
                    ResolvedInput::PreviousStage(n) => self.outputs(id, *n),
                })
                .collect();
            let mut args = stage.arguments.clone();
            if let Some(fl) = &resolved.federated {
                inputs.push(fl.model.clone());
                args.push(format!("--fl-round={}", fl.round));
            }
            let job = StageJob {
                execution: id.to_string(),
                agreement: resolved.agreement.id.clone(),
                stage: stage.index,
                image: pinned(&stage.reference, &stage.checksum),
                checksum: stage.checksum.clone(),
                code,
                spec: JobSpec {
                    name: format!("stage-{}", stage.index),
                    inputs,
                    output: outputs,
                    logs,
                    args,
                    env: Vec::new(),
                    limits: stage.server.cap(self.limits),
                    deterministic: resolved
                        .deterministic
                        .then(|| Determinism::for_stage(id, stage.index)),
                },
                datasets: stage
                    .inputs
                    .iter()
                    .map(|i| match i {
                        ResolvedInput::Dataset { did, .. } => Some(did.clone()),
                        ResolvedInput::PreviousStage(_) => None,
                    })
                    .collect(),
            };
            let report = match backend.run(&job, stop).await {
                Ok(r) => r,
                Err(e @ Error::Rejected { .. }) => {
                    queued.settle().await?;
                    return self
                        .reject(id, stage, started, &e, records)
                        .map(Finish::ready);
                }
                Err(e) => {
                    queued.settle().await?;
                    return Err(e);
                }
            };
            let (logs, _) = collect(&job.spec.logs)?;
            records.push(json!({
                "index": stage.index, "status": report.status, "outcome": report.outcome, "exit_code": report.exit_code,
                "image": stage.reference, "image_digest": image_digest, "module_digest": report.module_digest,
                "backend": backend.name(), "arguments": stage.arguments,
                "inputs": stage.inputs.iter().map(|i| match i {
                    ResolvedInput::Dataset { did, .. } => json!({"dataset": did}),
                    ResolvedInput::PreviousStage(n) => json!({"previous_stage": n}),
                }).collect::<Vec<_>>(),
                "limits": job.spec.limits,
                "started_at": started, "finished_at": now_ms(),
                "resources": {
                    "wall_time_ms": report.duration_ms, "peak_memory_bytes": report.peak_memory_bytes,
                    "output_bytes": report.output_bytes, "log_bytes": report.log_bytes,
                    "fuel_consumed": report.fuel_consumed,
                },
                "logs": logs, "error": report.error,
            }));
            if report.status != Status::Succeeded {
                let why = format!(
                    "stage {}: {}",
                    stage.index,
                    report.error.unwrap_or_default()
                );
                queued.push(self.store.advance_ack(
                    id,
                    report.status,
                    Some(&why),
                    Some(&Value::Array(records)),
                ));
                return Ok(Finish::queued(queued, None, report.status));
            }
            fresh = Some(Value::Array(records.clone()));
        }
        queued.check()?;
        queued.push(
            self.store
                .advance_ack(id, Status::Publishing, None, fresh.take().as_ref()),
        );
        let results = self.outputs(id, resolved.result_stage());
        let federated = match &resolved.federated {
            Some(fl) => Some(self.set_aside_update(id, &results, fl)?),
            None => None,
        };
        let mut inputs = Vec::new();
        for stage in &resolved.stages {
            for input in &stage.inputs {
                if let ResolvedInput::Dataset { did, path } = input {
                    let digest = self.input_digest(path)?;
                    let mut entry = json!({"stage": stage.index, "did": did, "digest": digest});
                    if let Some(other) = resolved.covering.get(did) {
                        entry["agreement"] = json!(other);
                    }
                    inputs.push(entry);
                }
            }
        }
        let name = format!("{} result", resolved.workflow.name);
        let mut provenance = Provenance {
            datasets: json!(resolved.workflow.datasets()),
            inputs,
            stages: Value::Array(records),
            deterministic: resolved.deterministic,
            federated,
            output_control: None,
        };
        if let Some(end) = self.control_outputs(id, resolved, &name, &mut provenance)? {
            queued.push(self.store.advance_ack(id, end.0, Some(&end.1), None));
            return Ok(Finish::queued(queued, None, end.0));
        }
        let (_, done) =
            self.publish_result(id, &resolved.agreement, &name, &results, provenance)?;
        // Intermediate outputs were workspaces: only the result (the last
        // stage's outputs) and every stage's logs stay.
        for stage in &resolved.stages[..resolved.stages.len().saturating_sub(1)] {
            let dir = self.outputs(id, stage.index);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove an intermediate output");
            }
        }
        Ok(Finish::queued(queued, Some(done), Status::Succeeded))
    }
}

impl Pipeline {
    /// Output control before publishing execution `id` (see
    /// [`crate::airlock`]): under the strictest output policy of the
    /// datasets it read, checks its results and logs. `None`: publish (the
    /// report and the automatic release go into `provenance`); otherwise the
    /// status it ends the run in — `held` for review (what publishing needs
    /// is kept for the reviewer's release), or `failed` when checks failed
    /// and nobody reviews — with the reason.
    ///
    /// # Errors
    /// [`Error::Io`] reading results or inputs; store errors.
    fn control_outputs(
        &self,
        id: &str,
        resolved: &Resolved,
        name: &str,
        provenance: &mut Provenance,
    ) -> Result<Option<(Status, String)>, Error> {
        let policy = resolved.output_policy.clone();
        if policy.is_open() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let index = match policy.max_copied_share {
            Some(_) => {
                // Versions as the inputs' digests just read them.
                let known = crate::sync::lock(&self.caches.inputs);
                let dirs: Vec<(&Path, Option<[u8; 32]>)> = resolved
                    .stages
                    .iter()
                    .flat_map(|s| &s.inputs)
                    .filter_map(|i| match i {
                        ResolvedInput::Dataset { path, .. } => {
                            Some((path.as_path(), known.get(path).map(|(v, _)| *v)))
                        }
                        ResolvedInput::PreviousStage(_) => None,
                    })
                    .collect();
                drop(known);
                Some(self.caches.indexes.union(&dirs)?)
            }
            None => None,
        };
        let results = crate::airlock::Results {
            outputs: self.outputs(id, resolved.result_stage()),
            logs: resolved
                .stages
                .iter()
                .map(|s| (s.index, self.logs(id, s.index)))
                .collect(),
        };
        let report = crate::airlock::check(&policy, &results, index.as_deref())?;
        tracing::info!(
            execution = id,
            passed = report.passed,
            bytes = report.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "outputs checked"
        );
        let review = policy.release == crate::airlock::Release::Review
            || (!report.passed && !policy.reviewers.is_empty());
        if review {
            let held = json!({"name": name, "provenance": provenance.to_json()});
            self.store.record_review(id, &report, Some(&held))?;
            let why = if report.passed {
                format!(
                    "held for review by {} (the dataset's output policy); every output check passed",
                    policy.reviewers.join(", ")
                )
            } else {
                format!(
                    "held for review by {}: {}",
                    policy.reviewers.join(", "),
                    report.summary()
                )
            };
            return Ok(Some((Status::Held, why)));
        }
        if !report.passed {
            self.store.record_review(id, &report, None)?;
            return Ok(Some((
                Status::Failed,
                format!(
                    "the results did not pass the output checks of the datasets read and were withheld (insitu review show {id}): {}",
                    report.summary()
                ),
            )));
        }
        provenance.output_control = Some(
            json!({"checks": report, "decision": "released", "reviewer": null, "reason": "every output check passed", "decided_at": now_ms()}),
        );
        Ok(None)
    }

    /// Publishes execution `id`'s held results as a reviewer released them
    /// (`review`: its record in the store): the result asset and a receipt
    /// that records the checks and the decision. The execution is `held`;
    /// it ends `succeeded`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when nothing is held for it; store errors.
    pub async fn release_held(&self, review: &crate::store::Review) -> Result<(), Error> {
        let id = &review.execution;
        let held = review.held.as_ref().ok_or_else(|| Error::NotFound {
            what: "held results of execution",
            id: id.clone(),
            hint: "",
        })?;
        let e = self.store.execution(id)?;
        let agreement = self.store.agreement(&e.agreement)?;
        let mut provenance = Provenance::from_json(&held["provenance"]);
        provenance.output_control = Some(review.record());
        let name = held["name"].as_str().unwrap_or("result").to_string();
        let results = self.outputs(id, e.result_stage());
        self.store
            .advance_ack(id, Status::Publishing, None, None)
            .done()
            .await?;
        let (_, done) = self.publish_result(id, &agreement, &name, &results, provenance)?;
        done.done().await
    }

    /// Publishes files the provider received rather than computed (a
    /// federated job's final model) as the result of execution `id`
    /// (`pending`, created under `agreement`): writes them to the
    /// execution's output directory, registers the result asset owned by the
    /// consumer with `provenance`, and signs a receipt (no stages, no
    /// inputs; `federated` = `provenance`). Returns the result's DID.
    ///
    /// # Errors
    /// [`Error::Io`] writing the files; store errors.
    pub async fn publish_received(
        &self,
        id: &str,
        agreement: &crate::store::Agreement,
        name: &str,
        files: &[(&str, &[u8])],
        provenance: Value,
    ) -> Result<crate::workflow::Did, Error> {
        let mut queued = Queued::default();
        for to in [Status::Configuring, Status::Running, Status::Publishing] {
            queued.push(self.store.advance_ack(id, to, None, Some(&json!([]))));
        }
        let results = self.outputs(id, 0);
        create(&results)?;
        for (file, bytes) in files {
            // Made durable by the publication's sync.
            let path = results.join(file);
            std::fs::write(&path, bytes).map_err(|e| Error::io("write", &path, e))?;
        }
        let (did, done) = self.publish_result(
            id,
            agreement,
            name,
            &results,
            Provenance {
                datasets: json!([]),
                inputs: Vec::new(),
                stages: json!([]),
                deterministic: false,
                federated: Some(provenance),
                output_control: None,
            },
        )?;
        queued.settle().await?;
        done.done().await?;
        Ok(did)
    }

    /// Registers the files in `results` as execution `id`'s result (it is
    /// `publishing`), owned by the agreement's consumer, with `provenance`
    /// in its DDO and a signed receipt; ends the execution `succeeded`.
    /// Returns the result's DID and the ack of its (queued) publication.
    fn publish_result(
        &self,
        id: &str,
        agreement: &crate::store::Agreement,
        name: &str,
        results: &Path,
        provenance: Provenance,
    ) -> Result<(crate::workflow::Did, crate::store::Ack<()>), Error> {
        let (files, skipped) = collect(results)?;
        let mut main = json!({
            "type": "result",
            "name": name,
            "owner": agreement.consumer,
            "files": files,
            "skipped": skipped,
            "provenance": {
                "execution": id,
                "agreement": agreement.id,
                "workflow": agreement.workflow,
                "inputs": provenance.datasets,
                "stages": provenance.stages,
            },
        });
        let result = self.store.new_result_did()?;
        let mut body = json!({
            "version": receipt::VERSION,
            "schema": receipt::SCHEMA_ID,
            "deterministic": provenance.deterministic,
            "execution": id,
            "agreement": agreement.id,
            "workflow": agreement.workflow,
            "consumer": agreement.consumer,
            "provider": self.key.address(),
            "result": result,
            "inputs": provenance.inputs,
            "outputs": main["files"],
            "stages": main["provenance"]["stages"],
            "finished_at": now_ms(),
        });
        if let Some(fl) = provenance.federated {
            main["provenance"]["federated"] = fl.clone();
            body["federated"] = fl;
        }
        if let Some(review) = provenance.output_control {
            body["output_control"] = review;
        }
        let receipt = receipt::sign(&self.key, body)?;
        let done = self
            .store
            .publish_ack(id, &result, &main, results, &receipt)?;
        Ok((result, done))
    }

    /// The directory a federated round's global model is written to, read
    /// by its training stage.
    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.dir.execution(id).join(FederatedRound::MODEL_DIR)
    }

    /// The directory a federated round's update is kept in until it is masked.
    pub fn update_dir(&self, id: &str) -> PathBuf {
        self.dir.execution(id).join(FederatedRound::UPDATE_DIR)
    }

    /// Moves a round's update out of its output directory (which is then
    /// emptied: a round publishes nothing) into [`Pipeline::update_dir`];
    /// returns what the receipt records of the round.
    fn set_aside_update(
        &self,
        id: &str,
        outputs: &Path,
        fl: &FederatedRound,
    ) -> Result<Value, Error> {
        let aside = self.update_dir(id);
        create(&aside)?;
        for name in FederatedRound::UPDATE_FILES {
            let from = outputs.join(name);
            match std::fs::rename(&from, aside.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("move the update", &from, e)),
            }
        }
        std::fs::remove_dir_all(outputs)
            .and_then(|()| std::fs::create_dir(outputs))
            .map_err(|e| Error::io("empty", outputs, e))?;
        Ok(
            json!({"job": fl.job, "round": fl.round, "participant": fl.participant,
                  "model": fl.model_digest}),
        )
    }
}

/// What a result's DDO and receipt record besides its files.
#[derive(Default)]
struct Provenance {
    /// The datasets the workflow read (the DDO's `provenance.inputs`).
    datasets: Value,
    /// Per dataset input: stage, DID, listing digest (the receipt's `inputs`).
    inputs: Vec<Value>,
    /// The stage records.
    stages: Value,
    deterministic: bool,
    /// A federated round's or job's record.
    federated: Option<Value>,
    /// The output checks and the release decision, under an output policy.
    output_control: Option<Value>,
}

impl Provenance {
    /// As kept while results are held.
    fn to_json(&self) -> Value {
        json!({"datasets": self.datasets, "inputs": self.inputs, "stages": self.stages,
               "deterministic": self.deterministic, "federated": self.federated})
    }

    fn from_json(v: &Value) -> Provenance {
        Provenance {
            datasets: v["datasets"].clone(),
            inputs: v["inputs"].as_array().cloned().unwrap_or_default(),
            stages: v["stages"].clone(),
            deterministic: v["deterministic"].as_bool().unwrap_or(false),
            federated: (!v["federated"].is_null()).then(|| v["federated"].clone()),
            output_control: None,
        }
    }
}

/// Removes updates a crash left behind (`executions/*/fl-update`): their
/// rounds' secrets died with the process, so they can never be masked.
/// Returns how many were removed.
pub fn sweep_updates(dir: &DataDir) -> usize {
    let Ok(dirs) = std::fs::read_dir(dir.executions()) else {
        return 0;
    };
    dirs.flatten()
        .map(|d| d.path().join(FederatedRound::UPDATE_DIR))
        .filter(|p| p.is_dir() && std::fs::remove_dir_all(p).is_ok())
        .count()
}

/// Removes the working directories of executions the store does not know:
/// a run starts while its creation commits (see
/// [`crate::executions::Executions::admit`]), so a crash before that commit
/// leaves a directory and no execution. Entries not named as execution ids
/// are left alone. Returns how many were removed.
///
/// # Errors
/// The store's.
pub fn sweep_uncreated(dir: &DataDir, store: &crate::store::Store) -> Result<usize, Error> {
    let Ok(dirs) = std::fs::read_dir(dir.executions()) else {
        return Ok(0);
    };
    let known = store.execution_ids()?;
    Ok(dirs
        .flatten()
        .filter(|d| {
            d.file_name().to_str().is_some_and(|n| {
                n.starts_with(crate::store::EXECUTION_PREFIX) && !known.contains(n)
            })
        })
        .filter(|d| std::fs::remove_dir_all(d.path()).is_ok())
        .count())
}

/// What a receipt records of an input dataset: `sha256:` of the JCS form of
/// its [`collect`] listing (every file's path, size and sha256).
///
/// # Errors
/// [`Error::Io`] when a file cannot be read.
pub fn listing_digest(root: &Path) -> Result<String, Error> {
    let (listing, _) = collect(root)?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(receipt::canonical(&Value::Array(listing))))
    ))
}

/// `repository@sha256:…` of a workflow's `image:tag@sha256:…` reference:
/// the tag dropped (a registry port is kept), pinned by `checksum`.
pub fn pinned(reference: &str, checksum: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[slash..].find(':') {
        Some(colon) => &name[..slash + colon],
        None => name,
    };
    format!("{repo}@{checksum}")
}

/// Every regular file under `root` as `{"path", "size", "sha256"}`, sorted;
/// and the paths of entries that are not regular files or directories (links
/// the guest made), which are never followed nor published.
///
/// # Errors
/// [`Error::Io`] when a file cannot be read.
pub fn collect(root: &Path) -> Result<(Vec<Value>, Vec<String>), Error> {
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    // One read buffer for every file, grown to the largest file's size up to
    // 1 MiB: log files of a few bytes do not pay for zeroing a big buffer.
    let mut buf: Vec<u8> = Vec::new();
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
                let len = f.metadata().map_or(0, |m| m.len()) as usize;
                let want = (len + 1).clamp(4096, 1 << 20);
                if buf.len() < want {
                    buf.resize(want, 0);
                }
                let mut h = Sha256::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_references_drop_the_tag_and_keep_ports() {
        let d = "sha256:ab";
        assert_eq!(
            pinned("reg:5000/a/b:1@sha256:00", d),
            "reg:5000/a/b@sha256:ab"
        );
        assert_eq!(pinned("reg:5000/a/b", d), "reg:5000/a/b@sha256:ab");
        assert_eq!(pinned("busybox:1.36", d), "busybox@sha256:ab");
        assert_eq!(pinned("local/wc", d), "local/wc@sha256:ab");
    }

    #[test]
    fn fingerprints_change_with_any_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.csv"), "1,2\n").unwrap();
        let (first, _) = fingerprint(dir.path()).unwrap();
        assert_eq!(fingerprint(dir.path()).unwrap().0, first, "stable");
        // Same size, new content and mtime.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("sub/a.csv"))
            .unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        drop(f);
        let (second, newest) = fingerprint(dir.path()).unwrap();
        assert_ne!(second, first);
        assert!(newest > SystemTime::now());
        std::fs::write(dir.path().join("b.csv"), "").unwrap();
        assert_ne!(fingerprint(dir.path()).unwrap().0, second, "a new file");
    }
}
