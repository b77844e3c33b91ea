//! Compile once per digest, before the first execution: a provider's images
//! are pulled and compiled when they are registered, not when a consumer
//! first waits for them.
//!
//! [`Warmer`] follows the catalog (workflows' stage images, algorithm
//! assets, images datasets allow; see [`Store::images_registered_after`]),
//! whichever process registered them — `insitu workflow add` writes the
//! database from another process — and hands each new checksum once to
//! [`Pipeline::warm`]: blobs into the blob cache, compiled code into the
//! sandbox's memory and disk caches. A Python component (19 MB) compiles in
//! seconds; a consumer's first execution then starts from memory. Failures
//! (an unreachable registry, a module the sandbox refuses) are logged and
//! retried by the execution itself, which reports them as it always did.

use crate::Error;
use crate::pipeline::Pipeline;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the catalog is checked for new registrations.
pub const WATCH: Duration = Duration::from_millis(250);

/// Warms registered images; see the module docs.
#[derive(Debug, Default)]
pub struct Warmer {
    /// The last asset row looked at.
    after: i64,
    /// Checksums handed to the pipeline (warmed, or failed once).
    seen: HashSet<String>,
}

impl Warmer {
    /// Warms, through `pipeline`, every image registered since the last
    /// call (on the first call: everything registered); returns how many
    /// images were warmed.
    ///
    /// # Errors
    /// [`Error::Store`] reading the catalog; warming failures are logged.
    pub async fn catch_up(&mut self, pipeline: &Pipeline) -> Result<usize, Error> {
        let (images, last) = pipeline.store.images_registered_after(self.after)?;
        self.after = last;
        let mut warmed = 0;
        for (reference, checksum) in images {
            if !self.seen.insert(checksum.clone()) {
                continue;
            }
            let t = std::time::Instant::now();
            match pipeline.warm(&reference, &checksum).await {
                Ok(()) => {
                    warmed += 1;
                    tracing::info!(%checksum, seconds = t.elapsed().as_secs_f64(), "image warmed");
                }
                // A dataset's allowed checksum not in any local layout has no
                // reference to pull from: a workflow naming it warms it.
                Err(e) if reference.is_empty() => {
                    self.seen.remove(&checksum);
                    tracing::debug!(%checksum, error = %e, "allowed image not warmed yet");
                }
                Err(e) => {
                    tracing::warn!(%reference, error = %e, "cannot warm image; its executions will report why")
                }
            }
        }
        if warmed > 0 {
            // The blobs and compiled code just written reach the disk now,
            // not in the first execution's group commit (one `syncfs` of
            // the data dir's file system per round of warming).
            let root = pipeline.dir.root();
            if let Err(e) = crate::datadir::syncfs(root) {
                tracing::warn!(dir = %root.display(), error = %e, "cannot sync warmed images");
            }
        }
        Ok(warmed)
    }

    /// Starts a thread that calls [`Warmer::catch_up`] every [`WATCH`]
    /// until `pipeline` is dropped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(pipeline: &Arc<Pipeline>) -> Result<(), Error> {
        let weak: Weak<Pipeline> = Arc::downgrade(pipeline);
        let mut warmer = Warmer::default();
        crate::thread::on_thread("insitu-warm".into(), async move {
            while let Some(pipeline) = weak.upgrade() {
                if let Err(e) = warmer.catch_up(&pipeline).await {
                    tracing::warn!(error = %e, "cannot read the catalog to warm images");
                }
                drop(pipeline);
                tokio::time::sleep(WATCH).await;
            }
        })
        .map_err(|e| Error::io("start a thread", "insitu-warm", e))
    }
}
