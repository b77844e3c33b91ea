//! Executions: creation, status changes (through [`Status::transition`]),
//! results, settlements and the queries over them.

use super::*;
use writer::Kind;

/// An execution's row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Execution {
    pub id: String,
    pub agreement: String,
    pub consumer: String,
    pub workflow: Did,
    pub status: Status,
    pub reason: Option<String>,
    /// Per-stage records (JSON array), as the pipeline wrote them.
    pub stages: Value,
    /// The result asset's DID once published.
    pub result: Option<String>,
    /// The signed receipt once published.
    pub receipt: Option<Value>,
    /// What settling it on-chain did (transaction hashes), in chain mode.
    pub settlement: Option<Value>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
}

impl Execution {
    /// The per-stage records, typed (what the status, the dashboard and the
    /// metrics read); records that are not the pipeline's shape are skipped.
    pub fn stage_records(&self) -> Vec<StageRecord> {
        self.stages
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| StageRecord::deserialize(s).ok())
            .collect()
    }

    /// The index of the stage whose outputs are the results: the last one
    /// recorded (0 before any), as [`crate::resolve::Resolved::result_stage`]
    /// chose it.
    pub fn result_stage(&self) -> u32 {
        self.stage_records().last().map_or(0, |s| s.index)
    }

    /// The signed receipt's hash (`0x` + 64 hex), once published.
    pub fn receipt_hash(&self) -> Option<String> {
        self.receipt
            .as_ref()?
            .get("hash")?
            .as_str()
            .map(str::to_string)
    }
}

/// What the pipeline records of one stage (the fields read back; the
/// record itself, part of the signed receipt, holds more).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct StageRecord {
    pub index: u32,
    pub status: Option<Status>,
    /// Unix milliseconds.
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}

impl StageRecord {
    /// How long the stage took, once it has ended.
    pub fn seconds(&self) -> Option<f64> {
        Some(self.finished_at?.saturating_sub(self.started_at?) as f64 / 1e3)
    }
}

/// How every execution id starts.
pub const EXECUTION_PREFIX: &str = "nv-";

impl Store {
    /// Records a new `pending` execution; returns its id once it is durable.
    ///
    /// # Errors
    /// [`Error::Store`] (including an unknown agreement).
    pub fn create_execution(&self, agreement: &Agreement) -> Result<String, Error> {
        let (id, work) = Self::new_execution(agreement)?;
        self.writer.run(None, work)?;
        Ok(id)
    }

    /// [`Store::create_execution`] without blocking: the new id at once,
    /// and the [`Ack`] that answers it again once it is durable.
    ///
    /// # Errors
    /// [`Error::Engine`] when the OS has no randomness; the ack: as
    /// [`Store::create_execution`].
    pub fn create_execution_ack(
        &self,
        agreement: &Agreement,
    ) -> Result<(String, Ack<String>), Error> {
        let (id, work) = Self::new_execution(agreement)?;
        let answer = id.clone();
        let ack = self.writer.submit(None, Kind::Durable, move |conn, path| {
            work(conn, path).map(|()| answer)
        });
        Ok((id, ack))
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn new_execution(
        agreement: &Agreement,
    ) -> Result<
        (
            String,
            impl FnOnce(&Connection, &Path) -> Result<(), Error> + Send + 'static,
        ),
        Error,
    > {
        let id = format!("{EXECUTION_PREFIX}{}", time_ordered_hex::<16>()?);
        let (eid, a, consumer, wf) = (
            id.clone(),
            agreement.id.clone(),
            agreement.consumer.clone(),
            agreement.workflow.as_str().to_string(),
        );
        let now = now_ms() as i64;
        Ok((id, move |conn: &Connection, path: &Path| {
            conn.prepare_cached(
                "INSERT INTO executions (id, agreement, consumer, workflow, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
            )
            .and_then(|mut st| st.execute(params![eid, a, consumer, wf, now]))
            .map_err(|e| writer::sql_error(path, &e))?;
            Ok(())
        }))
    }

    /// Moves execution `id` to `to` if [`Status::transition`] allows it,
    /// atomically and durably; `reason` is kept for failures and stops.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Transition`], [`Error::Store`].
    pub fn set_status(&self, id: &str, to: Status, reason: Option<&str>) -> Result<Status, Error> {
        self.advance(id, to, reason, None)
    }

    /// [`Store::set_status`] that also replaces the per-stage records when
    /// `stages` is given, in the same transaction.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Transition`], [`Error::Store`].
    pub fn advance(
        &self,
        id: &str,
        to: Status,
        reason: Option<&str>,
        stages: Option<&Value>,
    ) -> Result<Status, Error> {
        self.writer
            .run(None, Self::advance_work(id, to, reason, stages))
    }

    /// [`Store::advance`] without blocking: the [`Ack`] answers once the
    /// change is committed or refused. Changes submitted by one thread are
    /// applied in the order submitted. A change to a terminal status is
    /// durable when answered; one to an intermediate status is visible but
    /// *volatile* (no fsync of its own, durable with the next durable commit):
    /// after a crash, recovery fails every execution that had not ended.
    pub fn advance_ack(
        &self,
        id: &str,
        to: Status,
        reason: Option<&str>,
        stages: Option<&Value>,
    ) -> Ack<Status> {
        let kind = if to.is_terminal() {
            Kind::Durable
        } else {
            Kind::Volatile
        };
        self.writer
            .submit(None, kind, Self::advance_work(id, to, reason, stages))
    }

    pub(super) fn advance_work(
        id: &str,
        to: Status,
        reason: Option<&str>,
        stages: Option<&Value>,
    ) -> impl FnOnce(&Connection, &Path) -> Result<Status, Error> + Send + 'static {
        let (id, reason, stages) = (
            id.to_string(),
            reason.map(str::to_string),
            stages.map(Value::to_string),
        );
        let now = now_ms() as i64;
        move |conn: &Connection, path: &Path| {
            let to = transition_in(conn, path, &id, to)?;
            conn.prepare_cached(
                "UPDATE executions SET status = ?2, reason = COALESCE(?3, reason), stages = COALESCE(?4, stages), updated_at = ?5 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, to.as_str(), reason, stages, now]))
            .map_err(|e| writer::sql_error(path, &e))?;
            Ok(to)
        }
    }

    /// A fresh DID for a result asset (registered by [`Store::publish`]).
    ///
    /// # Errors
    /// [`Error::Engine`] when the OS has no randomness.
    pub fn new_result_did(&self) -> Result<Did, Error> {
        Ok(Did::parse(&format!("did:nv:{}", time_ordered_hex::<32>()?)).expect("well-formed"))
    }

    /// Ends execution `id` (`publishing`) as `succeeded` in one transaction:
    /// registers its result asset `did` (files at `path`, metadata
    /// `ddo_main`), links it, and stores the signed `receipt`. The files at
    /// `path` are made durable (`syncfs` of their filesystem, shared by the
    /// batch) before the commit. A crash leaves either all of it or none.
    ///
    /// # Errors
    /// [`Error::Transition`] unless the execution is `publishing`; [`Error::Store`].
    pub fn publish(
        &self,
        id: &str,
        did: &Did,
        ddo_main: &Value,
        path: &Path,
        receipt: &crate::receipt::Receipt,
    ) -> Result<(), Error> {
        let work = self.publish_work(id, did, ddo_main, path, receipt)?;
        self.writer.run(Some(path.to_path_buf()), work)
    }

    /// [`Store::publish`] without blocking: the [`Ack`] answers once the
    /// result is durable or refused.
    ///
    /// # Errors
    /// [`Error::Store`] when the receipt cannot be encoded; the ack: as
    /// [`Store::publish`].
    pub fn publish_ack(
        &self,
        id: &str,
        did: &Did,
        ddo_main: &Value,
        path: &Path,
        receipt: &crate::receipt::Receipt,
    ) -> Result<Ack<()>, Error> {
        let work = self.publish_work(id, did, ddo_main, path, receipt)?;
        Ok(self
            .writer
            .submit(Some(path.to_path_buf()), Kind::Durable, work))
    }

    pub(super) fn publish_work(
        &self,
        id: &str,
        did: &Did,
        ddo_main: &Value,
        path: &Path,
        receipt: &crate::receipt::Receipt,
    ) -> Result<impl FnOnce(&Connection, &Path) -> Result<(), Error> + Send + 'static, Error> {
        let ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": [{"type": "metadata", "index": 0, "attributes": {"main": ddo_main}}],
        });
        let receipt = serde_json::to_string(receipt).map_err(|e| Error::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let now = now_ms() as i64;
        let (id, did, ddo, files) = (
            id.to_string(),
            did.as_str().to_string(),
            ddo.to_string(),
            path.display().to_string(),
        );
        Ok(move |conn: &Connection, path: &Path| {
            transition_in(conn, path, &id, Status::Succeeded)?;
            let sql = |e: rusqlite::Error| writer::sql_error(path, &e);
            conn.prepare_cached(
                "INSERT INTO assets (did, kind, ddo, path, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![did, AssetKind::Result.as_str(), ddo, files, now])
            })
            .map_err(sql)?;
            conn.prepare_cached(
                "UPDATE executions SET status = 'succeeded', result = ?2, receipt = ?3, updated_at = ?4 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, did, receipt, now]))
            .map_err(sql)?;
            Ok(())
        })
    }

    /// Records what settling execution `id` on-chain did.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn set_settlement(&self, id: &str, settlement: &Value) -> Result<(), Error> {
        let (id, settlement, now) = (id.to_string(), settlement.to_string(), now_ms() as i64);
        self.writer.run(None, move |conn, path| {
            conn.prepare_cached(
                "UPDATE executions SET settlement = ?2, updated_at = ?3 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, settlement, now]))
            .map_err(|e| writer::sql_error(path, &e))?;
            Ok(())
        })
    }

    /// Succeeded executions whose settlement is still pending.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn pending_settlements(&self) -> Result<Vec<Execution>, Error> {
        self.executions_where(
            "status = 'succeeded' AND json_extract(settlement, '$.pending') = 1 AND ?1 = ?1",
            "",
        )
    }

    /// One execution.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    pub fn execution(&self, id: &str) -> Result<Execution, Error> {
        self.executions_where("id = ?1", id)?
            .pop()
            .ok_or_else(|| Error::NotFound {
                what: "execution",
                id: id.to_string(),
                hint: "",
            })
    }

    /// The ids of every execution.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn execution_ids(&self) -> Result<std::collections::HashSet<String>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id FROM executions")
            .map_err(|e| self.err(e))?;
        let mut ids = std::collections::HashSet::new();
        for id in stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
        {
            ids.insert(id.map_err(|e| self.err(e))?);
        }
        Ok(ids)
    }

    /// The executions of `consumer`, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn executions_of(&self, consumer: &str) -> Result<Vec<Execution>, Error> {
        self.executions_where("consumer = ?1", &consumer.to_ascii_lowercase())
    }

    /// Executions whose results are held for review, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn held_executions(&self) -> Result<Vec<Execution>, Error> {
        self.executions_where("status = ?1", Status::Held.as_str())
    }

    /// The newest `limit` executions created at or after `since_ms` (unix
    /// milliseconds), oldest first (the provider's dashboard).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn executions_since(&self, since_ms: u64, limit: usize) -> Result<Vec<Execution>, Error> {
        let limit = limit.min(i64::MAX as usize);
        self.executions_where(
            &format!(
                "id IN (SELECT id FROM executions WHERE created_at >= CAST(?1 AS INTEGER)
                        ORDER BY created_at DESC, id DESC LIMIT {limit})"
            ),
            &since_ms.min(i64::MAX as u64).to_string(),
        )
    }

    /// (created, updated, status) of at most the newest `limit` executions
    /// created at or after `since_ms`: what the dashboard's charts need,
    /// without reading stages and receipts.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn execution_times(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Status)>, Error> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT created_at, updated_at, status FROM executions WHERE created_at >= ?1
                 ORDER BY created_at DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(
                params![
                    since_ms.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        status_from(&r.get::<_, String>(2)?),
                    ))
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub(super) fn executions_where(&self, cond: &str, arg: &str) -> Result<Vec<Execution>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id, agreement, consumer, workflow, status, reason, created_at, updated_at, stages, result, receipt, settlement
                 FROM executions WHERE {cond} ORDER BY created_at, id"
            ))
            .map_err(|e| self.err(e))?;
        let json = |text: Option<String>| text.and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let rows = stmt
            .query_map(params![arg], |r| {
                let workflow: String = r.get(3)?;
                Ok(Execution {
                    id: r.get(0)?,
                    agreement: r.get(1)?,
                    consumer: r.get(2)?,
                    workflow: Did::parse(&workflow).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            3,
                            rusqlite::types::Type::Text,
                            e.into(),
                        )
                    })?,
                    status: status_from(&r.get::<_, String>(4)?),
                    reason: r.get(5)?,
                    created_at: r.get::<_, i64>(6)? as u64,
                    updated_at: r.get::<_, i64>(7)? as u64,
                    stages: json(r.get(8)?).unwrap_or(Value::Null),
                    result: r.get(9)?,
                    receipt: json(r.get(10)?),
                    settlement: json(r.get(11)?),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// How many executions are in each status.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn count_by_status(&self) -> Result<Vec<(Status, u64)>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT status, COUNT(*) FROM executions GROUP BY status ORDER BY status",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    status_from(&r.get::<_, String>(0)?),
                    r.get::<_, i64>(1)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
