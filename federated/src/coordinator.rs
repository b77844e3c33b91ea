//! The coordinator of a federated job and its aggregator.
//!
//! The coordinator (`insitu fl run`, ephemeral: it lives as long as the job)
//! drives R rounds over the participants of a [`Plan`]. Each round it hands
//! every participant the current global model and runs the four steps of
//! secure aggregation (Bonawitz et al. 2017, §4) through the [`Peer`] seam —
//! start (the participant queues its training execution and advertises
//! keys), share (sealed Shamir shares, relayed unread), masked (the
//! participant's masked update, once its training finished), unmask (shares
//! that remove the masks of the sum). A participant that fails, times out
//! or sends something malformed at any step is dropped from the round with
//! its reason; the round completes, with the exact sum of the survivors,
//! while at least `threshold` remain, and aborts — revealing nothing — when
//! fewer do.
//!
//! The **aggregator** is a separate component with its own state, in the
//! coordinator's process: a [`secagg::Aggregator`] per round, which is given
//! only masked vectors and the revealed shares, never an unmasked update,
//! and from the unmasked sum FedAvg's new model ([`fedavg::average`]).
//!
//! Progress is durable: after each completed round the job's state (its id,
//! the plan's digest, rounds done, every round's model digest and the
//! participants' executions) and the round's model (by digest, under
//! `models/`) are written to the output directory (write, fsync, rename; the
//! model first, so the state never names a model that is not on disk), and a
//! coordinator restarted with the same plan and directory resumes after the
//! last completed round. The final model is `model.f64`.

use crate::fedavg;
use crate::secagg::{self, Advertised};
use crate::wire::{self, Keys, MaskRequest, SealedMsg, ShareRequest, Started, UnmaskRequest};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The state file in the output directory.
pub const STATE_FILE: &str = "state.json";
/// The job's final model in the output directory (little-endian doubles);
/// while it runs, the last completed round's model is kept by digest in
/// `models/`.
pub const MODEL_FILE: &str = "model.f64";

/// A federated job: `PLAN.json` of `insitu fl run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Training rounds.
    pub rounds: u64,
    /// Participants that must start a round; fewer abort it.
    pub min_participants: usize,
    /// Survivors a round needs (Shamir's threshold): with fewer it aborts
    /// and nothing is revealed. Up to `participants − threshold` may drop
    /// out after sharing.
    pub threshold: usize,
    /// Values in the model (the update every participant writes).
    pub parameters: usize,
    /// Seconds a round may take (training included). Default 300.
    #[serde(default = "default_round_timeout")]
    pub round_timeout_secs: u64,
    /// The providers, each under the consumer's agreement with it.
    pub participants: Vec<PlanParticipant>,
    /// Index of the participant whose gateway publishes the final model as a
    /// result asset. Default 0.
    #[serde(default)]
    pub publish: usize,
    /// Participants asked each round: a fresh uniform sample of this many
    /// (FedAvg's fraction C of the clients). Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_round: Option<usize>,
}

fn default_round_timeout() -> u64 {
    300
}

/// One provider of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanParticipant {
    /// `http://host:port` of its gateway.
    pub gateway: String,
    /// The consumer's agreement with it (0x + 64 hex).
    pub agreement: String,
    /// The training workflow's DID at that provider.
    pub workflow: String,
}

/// The largest model a plan may ask for (values).
pub const MAX_PARAMETERS: usize = 16 << 20;

impl Plan {
    /// Checks the plan's numbers against each other.
    ///
    /// # Errors
    /// [`FlError::Plan`] naming the field and what it must be.
    pub fn check(&self) -> Result<(), FlError> {
        let n = self.participants.len();
        let bad = |m: String| Err(FlError::Plan(m));
        if n < 2 {
            return bad(format!(
                "participants: {n} listed; a federated job needs at least 2"
            ));
        }
        if self.rounds == 0 {
            return bad("rounds must be at least 1".into());
        }
        if self.threshold < 2 || self.threshold > n {
            return bad(format!(
                "threshold must be between 2 and the {n} participants, not {}",
                self.threshold
            ));
        }
        let asked = self.per_round.unwrap_or(n);
        if asked > n || asked < self.threshold {
            return bad(format!(
                "per_round must be between the threshold {} and the {n} participants, not {asked}",
                self.threshold
            ));
        }
        if self.min_participants < self.threshold || self.min_participants > asked {
            return bad(format!(
                "min_participants must be between the threshold {} and the {asked} participants asked each round, not {}",
                self.threshold, self.min_participants
            ));
        }
        if self.parameters == 0 || self.parameters > MAX_PARAMETERS {
            return bad(format!(
                "parameters must be between 1 and {MAX_PARAMETERS}, not {}",
                self.parameters
            ));
        }
        if self.publish >= n {
            return bad(format!(
                "publish is participant index {}, but there are {n}",
                self.publish
            ));
        }
        if self.round_timeout_secs == 0 {
            return bad("round_timeout_secs must be at least 1".into());
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.participants.iter().enumerate() {
            if !(p.gateway.starts_with("http://") || p.gateway.starts_with("https://")) {
                return bad(format!(
                    "participants[{i}].gateway `{}` is not an http(s) URL",
                    p.gateway
                ));
            }
            if !seen.insert((
                p.gateway.trim_end_matches('/'),
                p.agreement.to_ascii_lowercase(),
            )) {
                return bad(format!(
                    "participants[{i}] repeats gateway {} and agreement {}",
                    p.gateway, p.agreement
                ));
            }
        }
        Ok(())
    }

    /// sha256 of the plan's JSON: the job a state file belongs to.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("a plan serialises");
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }
}

/// Why a federated job stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlError {
    #[error("the plan is invalid: {0}")]
    Plan(String),
    #[error("round {round} aborted: {reason}")]
    Aborted { round: u64, reason: String },
    #[error(
        "{dir} holds the state of another job (plan {found}, this plan is {expected}); use another --out directory or the same plan"
    )]
    OtherJob {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state file {path} is unreadable: {reason}; remove the directory to start the job over"
    )]
    State { path: PathBuf, reason: String },
}

/// Where in a job a call to a participant belongs.
#[derive(Debug, Clone)]
pub struct RoundCall {
    pub job: String,
    pub round: u64,
    /// Fresh per attempt of a round: a restarted round gets new secrets.
    pub attempt: String,
    pub threshold: usize,
    pub parameters: usize,
    /// When the round gives up on a participant.
    pub deadline: Instant,
}

/// One participant as the coordinator reaches it (a gateway over HTTP, or
/// anything else speaking the same steps). Each error is the reason the
/// participant is dropped from the round.
pub trait Peer: Sync {
    /// Queues the training execution with `model` (empty in round 0) and
    /// returns the participant's keys, as participant `id`.
    fn start(
        &self,
        at: &RoundCall,
        id: u32,
        model: &[u8],
    ) -> impl Future<Output = Result<Started, String>> + Send;
    /// The participant's shares for the roster, sealed per holder.
    fn share(
        &self,
        at: &RoundCall,
        body: &ShareRequest,
    ) -> impl Future<Output = Result<Vec<SealedMsg>, String>> + Send;
    /// The masked update (raw little-endian words), once trained.
    fn masked(
        &self,
        at: &RoundCall,
        body: &MaskRequest,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
    /// The shares that unmask the sum.
    fn unmask(
        &self,
        at: &RoundCall,
        body: &UnmaskRequest,
    ) -> impl Future<Output = Result<wire::UnmaskResponse, String>> + Send;
}

/// What one completed round did (a JSON line of `insitu fl run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u64,
    /// Participant indexes (0-based, in the plan) asked this round.
    #[serde(default)]
    pub selected: Vec<usize>,
    /// Participant indexes (0-based, in the plan) whose updates are in the sum.
    pub participants: Vec<usize>,
    /// Those left out, with why.
    pub dropped: Vec<Dropped>,
    pub seconds: f64,
    /// Seconds each step took: `start` (training queued, keys), `share`,
    /// `masked` (training and masking), `unmask` (shares, the aggregator's
    /// unmasking and FedAvg).
    #[serde(default)]
    pub steps: BTreeMap<String, f64>,
    /// sha256 of the new global model.
    pub model: String,
    /// Each survivor's round execution and its receipt hash.
    pub executions: Vec<Value>,
}

/// A participant left out of a round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dropped {
    pub participant: usize,
    pub reason: String,
}

/// The job's durable state (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    pub job: String,
    pub plan: String,
    pub rounds: Vec<RoundReport>,
    /// Set once the model is published: where, as what.
    #[serde(default)]
    pub published: Option<Value>,
}

/// A job's participants, plan and output directory.
pub struct Coordinator<'a, P: Peer> {
    pub plan: &'a Plan,
    /// One per plan participant, in order.
    pub peers: &'a [P],
    pub out: &'a Path,
}

/// A finished job: the model, its file and digest, and its state.
#[derive(Debug, Clone)]
pub struct Finished {
    pub model: Vec<f64>,
    pub path: PathBuf,
    pub digest: String,
    pub state: JobState,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FlError {
    let path = path.to_path_buf();
    move |source| FlError::Io { what, path, source }
}

/// Writes `bytes` to `path` durably: a temp file, fsync, rename, fsync of
/// the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), FlError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// sha256 of a model's on-disk form.
pub fn model_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

/// The ids (1-based plan indexes, ascending) of the participants asked in a
/// round: all `n`, or a uniform sample of `per_round` of them.
fn select(n: usize, per_round: Option<usize>) -> Vec<u32> {
    let mut ids: Vec<u32> = (1..=n as u32).collect();
    let k = per_round.unwrap_or(n).min(n);
    // A partial Fisher–Yates shuffle with the OS's randomness.
    for i in 0..k {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS has randomness");
        let j = i + (u64::from_le_bytes(b) % (n - i) as u64) as usize;
        ids.swap(i, j);
    }
    ids.truncate(k);
    ids.sort_unstable();
    ids
}

/// Asks participants `ids` (1-based plan indexes) concurrently with `f`,
/// each until `deadline`; their answers, or why not, by id.
async fn ask<'p, P, T, Fut>(
    peers: &'p [P],
    deadline: Instant,
    step: &str,
    ids: impl IntoIterator<Item = u32>,
    f: impl Fn(&'p P, u32) -> Fut,
) -> Vec<(u32, Result<T, String>)>
where
    Fut: Future<Output = Result<T, String>>,
{
    join_all(ids.into_iter().map(|id| {
        let answer = f(&peers[id as usize - 1], id);
        async move { (id, until(deadline, step, answer).await) }
    }))
    .await
}

/// Runs `call` against the round's deadline.
async fn until<T>(
    deadline: Instant,
    step: &str,
    call: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(r) => r.map_err(|e| format!("{step}: {e}")),
        Err(_) => Err(format!("{step}: no answer before the round's deadline")),
    }
}

impl<P: Peer> Coordinator<'_, P> {
    /// The state in the output directory, or a new job's.
    ///
    /// # Errors
    /// [`FlError::OtherJob`], [`FlError::State`], [`FlError::Io`].
    pub fn load(&self) -> Result<(JobState, Vec<f64>), FlError> {
        let path = self.out.join(STATE_FILE);
        let expected = self.plan.digest();
        let state: JobState = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| FlError::State {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((
                    JobState {
                        job: format!("fl-{}", random_hex(16)),
                        plan: expected,
                        rounds: Vec::new(),
                        published: None,
                    },
                    Vec::new(),
                ));
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        if state.plan != expected {
            return Err(FlError::OtherJob {
                dir: self.out.to_path_buf(),
                found: state.plan,
                expected,
            });
        }
        let Some(last) = state.rounds.last() else {
            return Err(FlError::State {
                path,
                reason: "it records no completed round".into(),
            });
        };
        let model_path = self.model_path(&last.model);
        let bytes = std::fs::read(&model_path).map_err(io("read", &model_path))?;
        match wire::model_from_bytes(&bytes).filter(|m| m.len() == self.plan.parameters) {
            Some(model) if model_digest(&bytes) == last.model => Ok((state, model)),
            _ => Err(FlError::State {
                path: model_path,
                reason: "the model does not match the last completed round's digest".into(),
            }),
        }
    }

    /// Where the model of digest `digest` is kept: `models/<hex>.f64`.
    fn model_path(&self, digest: &str) -> PathBuf {
        self.out
            .join("models")
            .join(format!("{}.f64", digest.trim_start_matches("sha256:")))
    }

    /// Commits a completed round: its model (content-addressed, so the
    /// previous round's stays until the state names the new one), then the
    /// state; then older models go. A crash at any point leaves a state
    /// whose model is on disk.
    fn save(&self, state: &JobState, model: &[u8]) -> Result<(), FlError> {
        let digest = model_digest(model);
        let path = self.model_path(&digest);
        let dir = path.parent().expect("under models/");
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        write_durably(&path, model)?;
        write_durably(
            &self.out.join(STATE_FILE),
            &serde_json::to_vec_pretty(state).expect("state serialises"),
        )?;
        for old in std::fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
            if old.path() != path {
                let _ = std::fs::remove_file(old.path());
            }
        }
        Ok(())
    }

    /// Records where the model was published.
    ///
    /// # Errors
    /// [`FlError::Io`].
    pub fn save_published(&self, state: &mut JobState, published: Value) -> Result<(), FlError> {
        state.published = Some(published);
        write_durably(
            &self.out.join(STATE_FILE),
            &serde_json::to_vec_pretty(state).expect("state serialises"),
        )
    }

    /// Runs the job's remaining rounds, calling `report` after each.
    ///
    /// # Errors
    /// [`FlError::Plan`]; [`FlError::Aborted`] when a round has too few
    /// participants (the state keeps the rounds done: run again to resume);
    /// state errors.
    pub async fn run(&self, mut report: impl FnMut(&RoundReport)) -> Result<Finished, FlError> {
        self.plan.check()?;
        if self.peers.len() != self.plan.participants.len() {
            return Err(FlError::Plan(format!(
                "{} peers for {} participants",
                self.peers.len(),
                self.plan.participants.len()
            )));
        }
        std::fs::create_dir_all(self.out).map_err(io("create", self.out))?;
        let (mut state, mut model) = self.load()?;
        while (state.rounds.len() as u64) < self.plan.rounds {
            let round = state.rounds.len() as u64;
            let started = Instant::now();
            let (next, mut done) = self.round(&state.job, round, &model).await?;
            let bytes = wire::model_bytes(&next);
            done.seconds = started.elapsed().as_secs_f64();
            done.model = model_digest(&bytes);
            state.rounds.push(done);
            self.save(&state, &bytes)?;
            model = next;
            report(state.rounds.last().expect("just pushed"));
        }
        // The job's model, for its user: a copy, so editing it cannot touch
        // the state's.
        let bytes = wire::model_bytes(&model);
        let path = self.out.join(MODEL_FILE);
        write_durably(&path, &bytes)?;
        Ok(Finished {
            digest: model_digest(&bytes),
            path,
            model,
            state,
        })
    }

    /// One round: the new global model and what happened.
    async fn round(
        &self,
        job: &str,
        round: u64,
        model: &[f64],
    ) -> Result<(Vec<f64>, RoundReport), FlError> {
        let plan = self.plan;
        let call = RoundCall {
            job: job.to_string(),
            round,
            attempt: random_hex(8),
            threshold: plan.threshold,
            parameters: plan.parameters,
            deadline: Instant::now() + Duration::from_secs(plan.round_timeout_secs),
        };
        let tag = format!("{job}/{round}/{}", call.attempt);
        let call = &call;
        let abort = |reason: String| FlError::Aborted { round, reason };
        let mut dropped: Vec<Dropped> = Vec::new();
        // Participant ids are 1-based plan indexes.
        let index = |id: u32| id as usize - 1;
        let model_bytes = wire::model_bytes(model);

        let mut steps = BTreeMap::new();
        let mut clock = Instant::now();
        let mut lap = |name: &str| {
            steps.insert(name.to_string(), clock.elapsed().as_secs_f64());
            clock = Instant::now();
        };
        // 1. Start: training queued, keys advertised (U1).
        let selected = select(self.peers.len(), plan.per_round);
        let starts = ask(
            self.peers,
            call.deadline,
            "start",
            selected.clone(),
            |p, id| p.start(call, id, &model_bytes),
        )
        .await;
        let mut roster: BTreeMap<u32, Keys> = BTreeMap::new();
        let mut executions: BTreeMap<u32, String> = BTreeMap::new();
        for (id, r) in starts {
            let i = index(id);
            match r {
                Ok(s) if s.participant == i as u32 + 1 => {
                    roster.insert(s.participant, s.keys);
                    executions.insert(s.participant, s.execution);
                }
                Ok(s) => leave(
                    &mut dropped,
                    i,
                    format!(
                        "start: answered as participant {} instead of {}",
                        s.participant,
                        i + 1
                    ),
                ),
                Err(e) => leave(&mut dropped, i, e),
            }
        }
        let needed = plan.min_participants.max(plan.threshold);
        if roster.len() < needed {
            return Err(abort(format!(
                "only {} of {} participants asked started, fewer than min_participants {}; dropped: {}",
                roster.len(),
                selected.len(),
                plan.min_participants,
                describe(&dropped)
            )));
        }

        lap("start");
        // 2. Share: sealed shares, relayed unread (U2 = who shared).
        let body = ShareRequest {
            roster: roster.clone(),
        };
        let shares = ask(
            self.peers,
            call.deadline,
            "share",
            roster.keys().copied(),
            |p, _| p.share(call, &body),
        )
        .await;
        let mut inbox: BTreeMap<u32, Vec<SealedMsg>> = BTreeMap::new();
        let mut shared: BTreeSet<u32> = BTreeSet::new();
        for (id, r) in shares {
            match r.and_then(|sealed| {
                let holders: BTreeSet<u32> = sealed.iter().map(|s| s.holder).collect();
                if sealed.iter().any(|s| s.owner != id)
                    || holders.len() != sealed.len()
                    || holders != roster.keys().copied().collect()
                {
                    Err(
                        "share: not one sealed share per participant of the roster, all its own"
                            .to_string(),
                    )
                } else {
                    Ok(sealed)
                }
            }) {
                Ok(sealed) => {
                    shared.insert(id);
                    for s in sealed {
                        inbox.entry(s.holder).or_default().push(s);
                    }
                }
                Err(e) => leave(&mut dropped, index(id), e),
            }
        }
        if shared.len() < plan.threshold {
            return Err(abort(format!(
                "only {} participants shared their keys, fewer than the threshold {}: nothing is revealed; dropped: {}",
                shared.len(),
                plan.threshold,
                describe(&dropped)
            )));
        }

        lap("share");
        // 3. Masked inputs, to the aggregator (U3 = who sent a valid one).
        let keys: BTreeMap<u32, Advertised> = shared.iter().map(|i| (*i, roster[i].mask)).collect();
        let mut aggregator =
            secagg::Aggregator::new(tag.as_bytes(), plan.parameters + 1, plan.threshold, keys);
        // Each gets the shares sealed for it by those who shared.
        let bodies: BTreeMap<u32, MaskRequest> = shared
            .iter()
            .map(|&id| {
                let sealed = inbox
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|s| shared.contains(&s.owner))
                    .cloned()
                    .collect();
                (id, MaskRequest { sealed })
            })
            .collect();
        let masked = ask(
            self.peers,
            call.deadline,
            "masked",
            shared.iter().copied(),
            |p, id| p.masked(call, &bodies[&id]),
        )
        .await;
        for (id, r) in masked {
            let added = r.and_then(|bytes| {
                let words = wire::from_bytes(&bytes).ok_or_else(|| {
                    format!(
                        "masked: {} bytes, not a whole number of 8-byte values",
                        bytes.len()
                    )
                })?;
                aggregator
                    .add(id, words)
                    .map_err(|e| format!("masked: {e}"))
            });
            if let Err(e) = added {
                leave(&mut dropped, index(id), e);
            }
        }
        let survivors = aggregator.survivors();
        if survivors.len() < plan.threshold {
            return Err(abort(format!(
                "only {} masked updates arrived, fewer than the threshold {}: the round is aborted and nothing is revealed; dropped: {}",
                survivors.len(),
                plan.threshold,
                describe(&dropped)
            )));
        }

        lap("masked");
        // 4. Unmask: seeds of the survivors, keys of the dropped.
        let request = UnmaskRequest {
            survivors: survivors.clone(),
            dropped: aggregator.dropped(),
        };
        let answers = ask(
            self.peers,
            call.deadline,
            "unmask",
            survivors.iter().copied(),
            |p, _| p.unmask(call, &request),
        )
        .await;
        let mut seeds: BTreeMap<u32, Vec<secagg::shamir::Share>> = BTreeMap::new();
        let mut masks: BTreeMap<u32, Vec<secagg::shamir::Share>> = BTreeMap::new();
        let mut receipts = Vec::new();
        for (id, r) in answers {
            match r {
                Ok(a) => {
                    for s in &a.shares {
                        let Some(share) = s.share() else { continue };
                        match s.secret {
                            wire::Secret::Seed if request.survivors.contains(&s.owner) => {
                                seeds.entry(s.owner).or_default().push(share)
                            }
                            wire::Secret::Key if request.dropped.contains(&s.owner) => {
                                masks.entry(s.owner).or_default().push(share)
                            }
                            _ => {}
                        }
                    }
                    receipts.push(json!({
                        "participant": index(id),
                        "gateway": plan.participants[index(id)].gateway,
                        "execution": a.execution,
                        "receipt": a.receipt,
                    }));
                }
                // Its update is in the sum already; only its shares are missing.
                Err(e) => receipts.push(json!({
                    "participant": index(id),
                    "gateway": plan.participants[index(id)].gateway,
                    "execution": executions.get(&id),
                    "error": e,
                })),
            }
        }
        let sum = aggregator
            .unmask(&seeds, &masks)
            .map_err(|e| abort(format!("unmasking the sum: {e}")))?;
        let next = fedavg::average(&sum).map_err(|e| abort(e.to_string()))?;
        lap("unmask");

        dropped.sort_by_key(|d| d.participant);
        Ok((
            next,
            RoundReport {
                round,
                selected: selected.iter().map(|&id| index(id)).collect(),
                participants: survivors.iter().map(|&id| index(id)).collect(),
                dropped,
                seconds: 0.0,
                steps,
                model: String::new(),
                executions: receipts,
            },
        ))
    }
}

fn leave(dropped: &mut Vec<Dropped>, participant: usize, reason: String) {
    dropped.push(Dropped {
        participant,
        reason,
    });
}

fn describe(dropped: &[Dropped]) -> String {
    if dropped.is_empty() {
        return "none".into();
    }
    dropped
        .iter()
        .map(|d| format!("participant {} ({})", d.participant, d.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
