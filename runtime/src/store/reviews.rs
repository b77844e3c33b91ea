//! Output control's records: each dataset's output policy, and per
//! execution under a policy the checks' report, what is held for review
//! and the reviewer's decision (applied by the provider's process, so a
//! decision taken while it is down is applied when it starts).

use super::{Store, now_ms};
use crate::Error;
use crate::airlock::{OutputPolicy, Report};
use crate::workflow::Did;
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

/// A reviewer's decision on held results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Release,
    Reject,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Release => "released",
            Decision::Reject => "rejected",
        }
    }
}

/// An execution's output-control record.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub execution: String,
    pub report: Report,
    /// What publishing the held results needs (the pipeline's), `None`
    /// when the results were withheld without review.
    pub held: Option<Value>,
    pub decision: Option<Decision>,
    pub reviewer: Option<String>,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub decided_at: Option<u64>,
    /// The decision has taken effect (published or failed).
    pub applied: bool,
}

impl Review {
    /// The decision as the receipt records it: checks, reviewer, time,
    /// reason.
    pub fn record(&self) -> Value {
        serde_json::json!({
            "checks": self.report,
            "decision": self.decision.map(Decision::as_str),
            "reviewer": self.reviewer,
            "reason": self.reason,
            "decided_at": self.decided_at,
        })
    }
}

impl Store {
    /// Sets dataset `did`'s output policy (validated first).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad policy; [`Error::NotFound`] for an
    /// unknown dataset; [`Error::Store`].
    pub fn set_output_policy(&self, did: &Did, policy: &OutputPolicy) -> Result<(), Error> {
        let policy = policy.clone().validated()?;
        self.dataset(did)?;
        let text = serde_json::to_string(&policy).expect("a policy serialises");
        self.conn()
            .execute(
                "INSERT INTO output_policies (dataset, policy) VALUES (?1, ?2)
                 ON CONFLICT(dataset) DO UPDATE SET policy = excluded.policy",
                params![did.as_str(), text],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Dataset `did`'s output policy (the open default when it has none).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn output_policy(&self, did: &Did) -> Result<OutputPolicy, Error> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT policy FROM output_policies WHERE dataset = ?1",
                params![did.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// The strictest output policy of the datasets workflow `did` reads.
    ///
    /// # Errors
    /// As [`Store::workflow`]; [`Error::Store`].
    pub fn workflow_policy(&self, did: &Did) -> Result<OutputPolicy, Error> {
        let wf = self.workflow(did)?;
        let policies = wf
            .datasets()
            .into_iter()
            .map(|d| self.output_policy(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OutputPolicy::strictest(&policies))
    }

    /// Records execution `id`'s check report, and what publishing needs when
    /// its results are held (`held`); before its status changes.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn record_review(
        &self,
        id: &str,
        report: &Report,
        held: Option<&Value>,
    ) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO reviews (execution, report, held, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(execution) DO UPDATE SET report = excluded.report, held = excluded.held",
                params![
                    id,
                    serde_json::to_string(report).expect("a report serialises"),
                    held.map(Value::to_string),
                    now_ms() as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Execution `id`'s output-control record, if it has one.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn review(&self, id: &str) -> Result<Option<Review>, Error> {
        let conn = self.conn();
        conn.query_row(
            "SELECT execution, report, held, decision, reviewer, reason, decided_at, applied FROM reviews WHERE execution = ?1",
            params![id],
            row,
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Decides on execution `id`'s held results as `reviewer`, with `reason`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an execution with nothing held;
    /// [`Error::Transition`]-like [`Error::Denied`] when it is no longer
    /// held or was already decided; [`Error::Denied`] for a reviewer the
    /// policy does not name.
    pub fn decide(
        &self,
        id: &str,
        decision: Decision,
        reviewer: &str,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        let e = self.execution(id)?;
        let Some(review) = self.review(id)?.filter(|r| r.held.is_some()) else {
            return Err(Error::NotFound {
                what: "held execution",
                id: id.to_string(),
                hint: "; only executions whose results are held for review (status held) can be released or rejected",
            });
        };
        if review.decision.is_some() || e.status != crate::Status::Held {
            return Err(Error::Denied(format!(
                "execution {id} is {} and was already {}",
                e.status.as_str(),
                review.decision.map_or("decided", Decision::as_str)
            )));
        }
        let reviewers = &review.report.policy.reviewers;
        if !reviewers.is_empty() && !reviewers.iter().any(|r| r == reviewer) {
            return Err(Error::Denied(format!(
                "`{reviewer}` is not a reviewer of this execution's datasets ({}); pass --reviewer NAME",
                reviewers.join(", ")
            )));
        }
        self.conn()
            .execute(
                "UPDATE reviews SET decision = ?2, reviewer = ?3, reason = ?4, decided_at = ?5 WHERE execution = ?1 AND decision IS NULL",
                params![id, decision.as_str(), reviewer, reason, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Decisions not yet applied, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn undone_decisions(&self) -> Result<Vec<Review>, Error> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT execution, report, held, decision, reviewer, reason, decided_at, applied FROM reviews
                 WHERE decision IS NOT NULL AND applied = 0 ORDER BY decided_at",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Marks execution `id`'s decision applied.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn applied(&self, id: &str) -> Result<(), Error> {
        self.conn()
            .execute(
                "UPDATE reviews SET applied = 1 WHERE execution = ?1",
                params![id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Review> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> { r.get(i) };
    let report: String = r.get(1)?;
    Ok(Review {
        execution: r.get(0)?,
        report: serde_json::from_str(&report).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        held: text(2)?.and_then(|t| serde_json::from_str(&t).ok()),
        decision: match text(3)?.as_deref() {
            Some("released") => Some(Decision::Release),
            Some("rejected") => Some(Decision::Reject),
            _ => None,
        },
        reviewer: text(4)?,
        reason: text(5)?,
        decided_at: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        applied: r.get::<_, i64>(7)? != 0,
    })
}
