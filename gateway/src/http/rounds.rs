//! The federated rounds this provider takes part in (kept in memory: a
//! round's secrets never touch the disk) and the count of each step.

use insitu_federated::participant::RoundSecrets;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// (agreement, job, round).
pub(crate) type RoundKey = (String, String, u64);

/// One round this provider takes part in.
pub(crate) struct Round {
    pub(crate) consumer: String,
    pub(crate) execution: String,
    pub(crate) secrets: Option<RoundSecrets>,
    pub(crate) created: Instant,
}

/// The rounds in progress, in memory, and how many times each step was
/// taken (`/metrics`: `insitu_fl_steps_total{step}`).
#[derive(Default)]
pub(crate) struct Rounds {
    map: Mutex<HashMap<RoundKey, Round>>,
    /// start, share, masked, unmask.
    steps: [std::sync::atomic::AtomicU64; 4],
}

/// The steps counted in [`Rounds`], in order.
pub(crate) const STEPS: [&str; 4] = ["start", "share", "masked", "unmask"];

impl Rounds {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoundKey, Round>> {
        insitu_runtime::sync::lock(&self.map)
    }

    pub(crate) fn count(&self, step: usize) {
        self.steps[step].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times each of [`STEPS`] succeeded.
    pub(crate) fn counts(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.steps[i].load(std::sync::atomic::Ordering::Relaxed))
    }
}
