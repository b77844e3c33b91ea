//! The one owner of an execution's life, from admission to settlement.
//!
//! [`Executions`] admits an execution ([`Executions::admit`]: the agreement
//! is checked, the workflow resolved, a place in the bounded queue reserved,
//! the row created), hands it to one of its worker threads, which runs it
//! through the [`Pipeline`], and hands the wait for its final (group) commit
//! to a finisher thread, which records the stage metrics, settles it with
//! the agreement's source (chain mode) and wakes whoever waits for it
//! ([`Executions::wait`]). It stops executions on request
//! ([`Executions::stop`]) and at shutdown ([`Executions::shutdown`]), and
//! retries the settlements a previous run left pending.
//!
//! Nothing else holds a queue, a worker or a stop handle: the gateway's
//! routes call these methods. Status changes themselves go through the
//! store ([`crate::Status::transition`]).

use crate::metrics::Histogram;
use crate::permissions::Permissions;
use crate::pipeline::Pipeline;
use crate::resolve::{Resolved, resolve};
use crate::store::{Agreement, Execution, Store};
use crate::sync::lock;
use crate::thread::{RuntimeThread, on_thread};
use crate::{Error, Status, job::StopHandle};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

#[cfg(test)]
mod tests;

/// How many executions run and wait at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Worker threads running executions (at least 1).
    pub workers: usize,
    /// Executions that may wait for a worker before [`Error::Busy`] (at
    /// least 1).
    pub queue: usize,
}

/// What [`Executions::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It had already ended with this status; nothing was done.
    Ended(Status),
    /// It was still queued and is now `stopped`.
    BeforeStart,
    /// It is running and was asked to stop; it ends `stopped` shortly.
    Stopping,
    /// Its results were held for review; it is `stopped` and they are not
    /// released.
    WhileHeld,
}

/// How often decisions on held results are looked for.
const DECISIONS: Duration = Duration::from_millis(200);

/// A queued execution.
struct Job {
    id: String,
    resolved: Resolved,
    stop: StopHandle,
}

/// The owner of executions' lives; see the module documentation. Dropping
/// it ends the workers once they are idle.
pub struct Executions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    pipeline: Arc<Pipeline>,
    permissions: Arc<dyn Permissions>,
    queue: mpsc::Sender<Job>,
    stops: Mutex<HashMap<String, StopHandle>>,
    /// Set by [`Executions::shutdown`]: no new executions; queued ones fail.
    closing: AtomicBool,
    /// Executions queued or running (also the store's commit-delay gauge).
    active: Arc<AtomicUsize>,
    stage_seconds: Histogram,
    /// Woken whenever an execution ends (its final status is stored).
    finished: Notify,
    /// Waits for executions' final commits and settles them.
    finisher: RuntimeThread,
    /// Held for as long as anything here runs (the data dir's lock).
    _guard: Option<std::fs::File>,
}

impl Executions {
    /// Starts the workers and the finisher over `pipeline`'s store; in
    /// settling mode ([`Permissions::settles`]), retries the settlements a
    /// previous run left pending. `guard` (the data dir's lock) is held until
    /// this and every worker are gone.
    ///
    /// # Errors
    /// When a thread cannot be started.
    pub fn start(
        pipeline: Arc<Pipeline>,
        permissions: Arc<dyn Permissions>,
        capacity: Capacity,
        guard: Option<std::fs::File>,
    ) -> Result<Executions, Error> {
        let thread_err = |e| Error::io("start a thread", "insitu-executions", e);
        let (tx, rx) = mpsc::channel::<Job>(capacity.queue.max(1));
        let inner = Arc::new(Inner {
            store: pipeline.store.clone(),
            pipeline,
            permissions,
            queue: tx,
            stops: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
            stage_seconds: Histogram::default(),
            finished: Notify::new(),
            finisher: RuntimeThread::start("insitu-finish").map_err(thread_err)?,
            _guard: guard,
        });
        inner.store.hold_commits(inner.active.clone());
        if inner.permissions.settles() {
            let weak = Arc::downgrade(&inner);
            on_thread("insitu-settle".into(), async move {
                if let Some(inner) = weak.upgrade() {
                    inner.settle_pending().await;
                }
            })
            .map_err(thread_err)?;
        }
        {
            // Reviewers decide from another process (`insitu review`) or
            // the dashboard; decisions are applied here, in order.
            let weak = Arc::downgrade(&inner);
            on_thread("insitu-reviews".into(), async move {
                while let Some(inner) = weak.upgrade() {
                    inner.apply_decisions().await;
                    drop(inner);
                    tokio::time::sleep(DECISIONS).await;
                }
            })
            .map_err(thread_err)?;
        }
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for n in 0..capacity.workers.max(1) {
            let (rx, weak): (_, Weak<Inner>) = (rx.clone(), Arc::downgrade(&inner));
            on_thread(format!("insitu-worker-{n}"), async move {
                loop {
                    let Some(job) = rx.lock().await.recv().await else {
                        return;
                    };
                    let Some(inner) = weak.upgrade() else { return };
                    inner.run(job).await;
                }
            })
            .map_err(thread_err)?;
        }
        Ok(Executions { inner })
    }

    /// Queues an execution of `workflow` under `agreement_id` for `consumer`
    /// (lowercase address) once the agreement and the datasets' compute
    /// services allow it at `now` (unix seconds); returns its id. `prepare`
    /// is given the new execution's id and resolved form to adjust (a
    /// federated round) before it is queued; its error fails the execution
    /// with that reason and is returned.
    ///
    /// The execution is queued while its creation commits (a worker may
    /// start it meanwhile; nothing of it is committed before the creation),
    /// and the id is returned once the creation is durable. A future dropped
    /// meanwhile leaves it to run and end as any other (as a cancelled
    /// Kubernetes create leaves its object); a creation that fails fails the
    /// run too, and its directory is removed.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`]; [`Error::Busy`] when the queue is full (no
    /// execution is created); the permission check's and resolution's
    /// errors; the store's.
    pub async fn admit<E, P>(
        &self,
        consumer: &str,
        agreement_id: &str,
        workflow: &str,
        now: u64,
        prepare: P,
    ) -> Result<String, E>
    where
        E: From<Error> + std::fmt::Display,
        P: FnOnce(&str, &mut Resolved) -> Result<(), E>,
    {
        let g = &self.inner;
        if g.closing.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown.into());
        }
        let agreement = g
            .permissions
            .check_execute(agreement_id, consumer, workflow, now)
            .await?;
        let mut resolved = resolve(&g.store, &agreement, now)?;
        let permit = g.queue.try_reserve().map_err(|_| Error::Busy)?;
        let (id, created) = g.store.create_execution_ack(&agreement)?;
        if let Err(e) = prepare(&id, &mut resolved) {
            // Queued behind the creation: answered once both are durable.
            let _ = g.store.set_status(
                &id,
                Status::Failed,
                Some(&format!("could not be prepared: {e}")),
            );
            return Err(e);
        }
        // Queued while its creation commits: a worker starts it at once. Its
        // own writes queue behind the creation in the store's writer, so
        // nothing of it is committed (or visible) before the execution
        // exists, and its result, a later durable commit, only after the
        // creation is durable. The answer still waits for that.
        let stop = StopHandle::default();
        lock(&g.stops).insert(id.clone(), stop.clone());
        g.active.fetch_add(1, Ordering::SeqCst);
        permit.send(Job {
            id: id.clone(),
            resolved,
            stop: stop.clone(),
        });
        if let Err(e) = created.done().await {
            // Never created: its writes fail, and so does it, unseen.
            stop.stop();
            return Err(e.into());
        }
        tracing::info!(execution = %id, agreement = %agreement_id, consumer, "execution queued");
        Ok(id)
    }

    /// Stops execution `id`: a queued one is `stopped` at once, a running one
    /// is asked to stop (its stages end `stopped`), an ended one is left.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown execution; the store's.
    pub fn stop(&self, id: &str) -> Result<Stopped, Error> {
        let g = &self.inner;
        let e = g.store.execution(id)?;
        if e.status.is_terminal() {
            return Ok(Stopped::Ended(e.status));
        }
        if e.status == Status::Held {
            g.store.set_status(
                id,
                Status::Stopped,
                Some("stopped on request while its results were held for review; they were not released"),
            )?;
            g.finished.notify_waiters();
            return Ok(Stopped::WhileHeld);
        }
        if let Some(s) = lock(&g.stops).get(id) {
            s.stop();
        }
        // Still queued: stopped now, not when a worker gets to it.
        if e.status == Status::Pending
            && g.store
                .set_status(
                    id,
                    Status::Stopped,
                    Some("stopped on request before it started"),
                )
                .is_ok()
        {
            return Ok(Stopped::BeforeStart);
        }
        Ok(Stopped::Stopping)
    }

    /// Execution `id` once it has ended, or as it is at `deadline`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown execution; the store's.
    pub async fn wait(&self, id: &str, deadline: Instant) -> Result<Execution, Error> {
        loop {
            // Armed before the status is read, so an end in between still wakes it.
            let ended = self.inner.finished.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let e = self.inner.store.execution(id)?;
            let now = Instant::now();
            if e.status.is_terminal() || now >= deadline {
                return Ok(e);
            }
            let _ = tokio::time::timeout(deadline - now, ended).await;
        }
    }

    /// Executions waiting for a worker.
    pub fn depth(&self) -> usize {
        let q = &self.inner.queue;
        q.max_capacity() - q.capacity()
    }

    /// Executions queued or running.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Durations of the stages of ended executions.
    pub fn stage_seconds(&self) -> &Histogram {
        &self.inner.stage_seconds
    }

    /// Stops taking executions ([`Error::ShuttingDown`]), fails those still
    /// queued, lets running ones finish for up to `grace`, then stops them
    /// and waits (up to 10 s) for them to end. Returns how many had to be
    /// stopped.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let g = &self.inner;
        g.closing.store(true, Ordering::SeqCst);
        let idle = || g.active.load(Ordering::SeqCst) == 0;
        let deadline = Instant::now() + grace;
        while !idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if idle() {
            return 0;
        }
        let stops: Vec<StopHandle> = lock(&g.stops).values().cloned().collect();
        let running = self.active().saturating_sub(self.depth());
        tracing::warn!(
            executions = running,
            "grace period over; stopping running executions"
        );
        for s in &stops {
            s.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running
    }
}

impl Inner {
    /// Runs one dequeued execution's stages, then hands the wait for its
    /// final (group) commit and what follows to the finisher thread, so this
    /// worker takes the next execution meanwhile.
    async fn run(self: Arc<Self>, job: Job) {
        if self.closing.load(Ordering::SeqCst) {
            let _ = self.store.set_status(
                &job.id,
                Status::Failed,
                Some("the provider shut down before this execution started; execute it again"),
            );
        } else if job.stop.is_stopped() {
            // Stopped while queued; `stop` already recorded it (this only
            // fills the gap if it lost a race with the queue).
            let _ = self.store.set_status(
                &job.id,
                Status::Stopped,
                Some("stopped on request before it started"),
            );
        } else {
            match self.pipeline.start(&job.id, &job.resolved, &job.stop).await {
                Ok(finish) => {
                    let g = self.clone();
                    self.finisher.handle().spawn(async move {
                        let status = finish.done().await;
                        g.finish(job, status).await;
                    });
                    return;
                }
                Err(e) => return self.finish(job, Err(e)).await,
            }
        }
        self.finish(job, Ok(Status::Failed)).await;
    }

    /// What follows an execution's end once its status is durable: settling
    /// (chain mode), stage metrics, waking waiters.
    async fn finish(&self, job: Job, status: Result<Status, Error>) {
        match status {
            Ok(Status::Succeeded) => {
                self.finished.notify_waiters();
                self.settle(&job.id, &job.resolved.agreement).await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(execution = %job.id, error = %e, "execution failed on the host");
                let _ = self.store.set_status(
                    &job.id,
                    Status::Failed,
                    Some(&format!("provider error: {e}")),
                );
            }
        }
        match self.store.execution(&job.id) {
            Ok(e) => {
                for stage in e.stage_records() {
                    if let Some(seconds) = stage.seconds() {
                        self.stage_seconds.observe(seconds);
                    }
                }
                tracing::info!(execution = %job.id, status = e.status.as_str(), "execution finished");
            }
            // Its creation failed while it ran (see `admit`): nothing of it stays.
            Err(Error::NotFound { .. }) => {
                let dir = self.pipeline.dir.execution(&job.id);
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot remove an uncreated execution's directory");
                }
            }
            Err(_) => {}
        }
        self.finished.notify_waiters();
        lock(&self.stops).remove(&job.id);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Settles succeeded execution `id` with its agreement's source (chain
    /// mode: releases the payment, commits the receipt hash).
    async fn settle(&self, id: &str, agreement: &Agreement) {
        if !self.permissions.settles() {
            return;
        }
        let Some(hash) = self.store.execution(id).ok().and_then(|e| e.receipt_hash()) else {
            return;
        };
        self.settle_execution(id, agreement, &hash).await;
    }

    /// Settles execution `id`, retrying with backoff while the source is
    /// unavailable. It is marked `{"pending": true}` first, so one cut short
    /// (crash, long outage) is retried when the provider starts again; the
    /// result or the final error replaces the mark.
    async fn settle_execution(&self, id: &str, agreement: &Agreement, hash: &str) {
        let _ = self.store.set_settlement(id, &json!({"pending": true}));
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=6 {
            match self.permissions.settle(agreement, hash).await {
                Ok(done) => {
                    let _ = self.store.set_settlement(id, &done);
                    return;
                }
                Err(e @ Error::Unavailable(_)) => {
                    tracing::warn!(execution = %id, attempt, error = %e, "settling failed; retrying");
                    if attempt == 6 {
                        let _ = self
                            .store
                            .set_settlement(id, &json!({"pending": true, "error": e.to_string()}));
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(execution = %id, error = %e, "settling failed");
                    let _ = self
                        .store
                        .set_settlement(id, &json!({"error": e.to_string()}));
                    return;
                }
            }
        }
    }

    /// Applies reviewers' decisions not yet applied: a release publishes
    /// the held results (then settles, in chain mode), a rejection fails
    /// the execution with the reviewer's reason.
    async fn apply_decisions(&self) {
        let Ok(decided) = self.store.undone_decisions() else {
            return;
        };
        for review in decided {
            let id = review.execution.clone();
            let who = review.reviewer.clone().unwrap_or_default();
            match review.decision {
                Some(crate::store::Decision::Release) => {
                    match self.pipeline.release_held(&review).await {
                        Ok(()) => {
                            tracing::info!(execution = %id, reviewer = %who, "held results released");
                            if let Ok(e) = self.store.execution(&id)
                                && let Ok(agreement) = self.store.agreement(&e.agreement)
                            {
                                self.settle(&id, &agreement).await;
                            }
                        }
                        Err(e) => {
                            tracing::error!(execution = %id, error = %e, "cannot release held results");
                            let _ = self.store.set_status(
                                &id,
                                Status::Failed,
                                Some(&format!("releasing the held results failed: {e}")),
                            );
                        }
                    }
                }
                _ => {
                    let why = format!(
                        "the results were rejected by reviewer {who}: {}",
                        review.reason.as_deref().unwrap_or("no reason given")
                    );
                    let _ = self.store.set_status(&id, Status::Failed, Some(&why));
                }
            }
            let _ = self.store.applied(&id);
            self.finished.notify_waiters();
        }
    }

    /// Retries the settlements a previous run left pending.
    async fn settle_pending(&self) {
        let Ok(pending) = self.store.pending_settlements() else {
            return;
        };
        for e in pending {
            let (Ok(agreement), Some(hash)) =
                (self.store.agreement(&e.agreement), e.receipt_hash())
            else {
                continue;
            };
            tracing::info!(execution = %e.id, "retrying a pending settlement");
            self.settle_execution(&e.id, &agreement, &hash).await;
        }
    }
}
