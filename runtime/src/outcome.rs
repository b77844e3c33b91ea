//! Statuses and outcomes: the one vocabulary used by the CLI's JSON, the HTTP
//! API and the store (docs/ARCHITECTURE.md, "Statuses and outcomes").

use serde::{Deserialize, Serialize};

/// Where a stage or an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Configuring,
    Running,
    Publishing,
    /// Results held for review under a dataset's output policy: not
    /// terminal, nothing released until a reviewer decides.
    Held,
    Succeeded,
    Failed,
    Stopped,
}

impl Status {
    /// Every status, in the order of an execution's life.
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Configuring,
        Status::Running,
        Status::Publishing,
        Status::Held,
        Status::Succeeded,
        Status::Failed,
        Status::Stopped,
    ];

    /// True for `succeeded`, `failed` and `stopped`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Stopped)
    }

    /// True while a worker has it (queued, configuring, running,
    /// publishing): what a crash cuts short. `held` is not: it waits for a
    /// reviewer and survives restarts.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Pending | Status::Configuring | Status::Running | Status::Publishing
        )
    }

    /// The one place that knows which status changes are allowed:
    /// `pending → configuring → running → (configuring → running)* → publishing
    /// → succeeded`, `publishing → held → publishing` (results held for
    /// review, then released), `failed` from any non-terminal status,
    /// `stopped` from any non-terminal status. Terminal statuses never change.
    ///
    /// # Errors
    /// [`crate::Error::Transition`] naming both statuses.
    pub fn transition(self, to: Status) -> Result<Status, crate::Error> {
        use Status::*;
        let allowed = match (self, to) {
            (from, _) if from.is_terminal() => false,
            (_, Failed | Stopped) => true,
            (Pending, Configuring) => true,
            (Configuring, Running) => true,
            // The next stage, or publishing the last one's results.
            (Running, Configuring | Publishing) => true,
            (Publishing, Succeeded | Held) => true,
            (Held, Publishing) => true,
            _ => false,
        };
        if allowed {
            Ok(to)
        } else {
            Err(crate::Error::Transition { from: self, to })
        }
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Configuring => "configuring",
            Status::Running => "running",
            Status::Publishing => "publishing",
            Status::Held => "held",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
        }
    }
}

/// How a finished stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The guest returned from its entry point or called `proc_exit`.
    Exited,
    /// The guest trapped (unreachable, out-of-bounds, stack overflow, ...).
    Trapped,
    /// The wall-clock limit elapsed.
    TimedOut,
    /// The guest tried to grow memory or tables beyond its limit and then failed.
    MemoryExceeded,
    /// The output directory reached its quota.
    OutputQuotaExceeded,
    /// The logs (stdout + stderr + files in the logs dir) reached their quota.
    LogQuotaExceeded,
    /// The module or image was refused before running.
    Rejected,
    /// Somebody asked for the stage to stop.
    Stopped,
}

impl Outcome {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Exited => "exited",
            Outcome::Trapped => "trapped",
            Outcome::TimedOut => "timed_out",
            Outcome::MemoryExceeded => "memory_exceeded",
            Outcome::OutputQuotaExceeded => "output_quota_exceeded",
            Outcome::LogQuotaExceeded => "log_quota_exceeded",
            Outcome::Rejected => "rejected",
            Outcome::Stopped => "stopped",
        }
    }

    /// The status a stage ends in given this outcome and exit code.
    pub fn status(self, exit_code: Option<i32>) -> Status {
        match self {
            Outcome::Exited if exit_code == Some(0) => Status::Succeeded,
            Outcome::Stopped => Status::Stopped,
            _ => Status::Failed,
        }
    }
}

/// What `insitu run` prints and what the gateway records per stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub status: Status,
    pub outcome: Outcome,
    /// The guest's exit code when it exited; `null` otherwise.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// `sha256:<hex>` of the module's bytes.
    pub module_digest: String,
    /// Sum of the sizes of the regular files in the output dir (links not followed).
    pub output_bytes: u64,
    /// Sum of the sizes of the regular files in the logs dir, including stdout.log and stderr.log.
    pub log_bytes: u64,
    /// The most linear memory the guest held at once, in bytes (wasm memories
    /// never shrink, so this is what it had grown to); `null` when the
    /// backend cannot tell (pods).
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// Fuel (wasm instructions, roughly) the guest consumed, when the sandbox
    /// meters fuel ([`crate::sandbox::Interruption::Fuel`]); `null` otherwise.
    #[serde(default)]
    pub fuel_consumed: Option<u64>,
    /// Why the stage failed, when it did: the trap, the limit hit, the rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        assert_eq!(
            serde_json::to_string(&Outcome::OutputQuotaExceeded).unwrap(),
            "\"output_quota_exceeded\""
        );
        assert_eq!(
            serde_json::to_string(&Status::Publishing).unwrap(),
            "\"publishing\""
        );
        assert_eq!(Outcome::Exited.status(Some(0)), Status::Succeeded);
        assert_eq!(Outcome::Exited.status(Some(3)), Status::Failed);
        assert_eq!(Outcome::Stopped.status(None), Status::Stopped);
        assert_eq!(Outcome::TimedOut.status(None), Status::Failed);
    }

    #[test]
    fn transitions() {
        use Status::*;
        let mut s = Pending;
        for next in [
            Configuring,
            Running,
            Configuring,
            Running,
            Publishing,
            Succeeded,
        ] {
            s = s.transition(next).unwrap();
        }
        assert_eq!(s, Succeeded);
        for from in [Pending, Configuring, Running, Publishing] {
            assert_eq!(from.transition(Stopped).unwrap(), Stopped);
            assert_eq!(from.transition(Failed).unwrap(), Failed);
        }
        assert_eq!(
            Succeeded.transition(Running).unwrap_err().to_string(),
            "execution status cannot go from `succeeded` to `running`; succeeded is final"
        );
        assert_eq!(
            Pending.transition(Succeeded).unwrap_err().to_string(),
            "execution status cannot go from `pending` to `succeeded`"
        );
        assert!(Stopped.transition(Failed).is_err());
    }
}
