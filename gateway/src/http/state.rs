//! The HTTP layer's shared state: what the routes read, and nothing that
//! runs executions (that is [`Executions`]' job).

use crate::auth::Tokens;
use crate::config::HttpLimits;
use crate::http::rounds::Rounds;
use insitu_runtime::executions::Executions;
use insitu_runtime::permissions::Permissions;
use insitu_runtime::pipeline::Pipeline;
use insitu_runtime::store::Store;
use insitu_runtime::workflow::Did;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The gateway's shared state.
pub struct Gateway {
    pub store: Arc<Store>,
    /// Who may execute what (local agreements unless
    /// [`crate::config::ServeConfig::permissions`] says otherwise).
    pub permissions: Arc<dyn Permissions>,
    pub pipeline: Arc<Pipeline>,
    /// Admits, runs, stops and waits for executions.
    pub executions: Executions,
    pub(crate) tokens: Tokens,
    pub(crate) http: HttpLimits,
    /// [`crate::config::ServeConfig::legacy_exec_signatures`].
    pub(crate) legacy_exec_signatures: bool,
    /// Federated rounds this provider takes part in.
    pub(crate) rounds: Rounds,
    /// What served DDOs' services point at (`base` empty: the request's Host).
    pub(crate) services: crate::ddo::Services,
    /// [`crate::config::ServeConfig::dashboard`].
    pub(crate) dashboard: bool,
    /// The provider's address, shown on the dashboard.
    pub(crate) provider: String,
    /// Queue depth sampled every [`QUEUE_SAMPLE`], the last hour's (unix
    /// ms, depth), for the dashboard.
    pub(crate) depth_samples: Mutex<VecDeque<(u64, usize)>>,
    /// Workflow → whether its datasets have an output policy, as last read
    /// (kept [`POLICY_TTL`]: status polls would otherwise read it each time).
    pub(crate) controlled: Mutex<HashMap<Did, (Instant, bool)>>,
}

/// How long [`Gateway::controlled`] answers are reused.
pub(crate) const POLICY_TTL: Duration = Duration::from_secs(1);

/// How often the dashboard's queue-depth chart is sampled.
pub(crate) const QUEUE_SAMPLE: Duration = Duration::from_secs(5);

impl Gateway {
    /// Stops taking executions (execute answers 503), fails those still
    /// queued, lets running ones finish for up to `grace`, then stops them and
    /// waits for them to end. Returns how many had to be stopped.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.executions.shutdown(grace).await
    }

    /// Whether workflow `did`'s results are under an output policy (then its
    /// logs and progress are results too, released with them).
    ///
    /// # Errors
    /// As [`Store::workflow_policy`].
    pub(crate) fn controlled(&self, did: &Did) -> Result<bool, insitu_runtime::Error> {
        if let Some((at, c)) = insitu_runtime::sync::lock(&self.controlled).get(did)
            && at.elapsed() < POLICY_TTL
        {
            return Ok(*c);
        }
        let c = !self.store.workflow_policy(did)?.is_open();
        insitu_runtime::sync::lock(&self.controlled).insert(did.clone(), (Instant::now(), c));
        Ok(c)
    }

    /// Records the queue's depth now, keeping the last hour's samples.
    pub(crate) fn sample_queue(&self) {
        let keep = (3600 / QUEUE_SAMPLE.as_secs()) as usize;
        let mut s = insitu_runtime::sync::lock(&self.depth_samples);
        s.push_back((now() * 1000, self.executions.depth()));
        while s.len() > keep {
            s.pop_front();
        }
    }
}

/// Unix seconds.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
