//! Local (and recorded on-chain) compute agreements, and the signed
//! requests already used.

use super::*;

/// A local agreement: `consumer` may run `workflow` on `dataset` until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Agreement {
    pub id: String,
    /// Lowercase `0x` address.
    pub consumer: String,
    pub dataset: Did,
    pub workflow: Did,
    /// Unix seconds.
    pub expires_at: u64,
}

impl Agreement {
    /// Whether it still holds at `now` (unix seconds).
    ///
    /// # Errors
    /// [`Error::Denied`] saying how long ago it expired.
    pub fn live_at(&self, now: u64) -> Result<(), Error> {
        live("agreement", &self.id, self.expires_at, now)
    }
}

impl Store {
    /// Grants `consumer` the right to run `workflow` on `dataset` for
    /// `timeout_secs` from now; returns the agreement id (`0x` + 64 hex).
    ///
    /// # Errors
    /// [`Error::Invalid`] for the address; [`Error::NotFound`] for the DIDs.
    pub fn grant(
        &self,
        consumer: &str,
        dataset: &Did,
        workflow: &Did,
        timeout_secs: u64,
    ) -> Result<String, Error> {
        let consumer = parse_address(consumer)?;
        self.dataset(dataset)?;
        self.workflow(workflow)?;
        let id = format!("0x{}", random_hex32()?);
        let now = now_ms();
        self.conn()
            .execute(
                "INSERT INTO agreements (id, consumer, dataset, workflow, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, consumer, dataset.as_str(), workflow.as_str(), (now / 1000 + timeout_secs) as i64, now as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// A local agreement.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    pub fn agreement(&self, id: &str) -> Result<Agreement, Error> {
        let row = self
            .conn()
            .query_row(
                "SELECT consumer, dataset, workflow, expires_at FROM agreements WHERE id = ?1",
                params![id.to_ascii_lowercase()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let (consumer, dataset, workflow, expires_at) = row.ok_or_else(|| Error::NotFound {
            what: "agreement",
            id: id.to_string(),
            hint: "",
        })?;
        let did = |s: &str| {
            Did::parse(s).map_err(|reason| Error::Store {
                path: self.path.clone(),
                reason,
            })
        };
        Ok(Agreement {
            id: id.to_ascii_lowercase(),
            consumer,
            dataset: did(&dataset)?,
            workflow: did(&workflow)?,
            expires_at: expires_at as u64,
        })
    }

    /// The id of an agreement `consumer` holds for `dataset` and `workflow`
    /// (any workflow when `None`: for a workflow the consumer published) that
    /// has not expired at `now` (unix seconds): local, or recorded from the
    /// chain when it was checked there. The one expiring last.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn covering_agreement(
        &self,
        consumer: &str,
        dataset: &Did,
        workflow: Option<&Did>,
        now: u64,
    ) -> Result<Option<String>, Error> {
        self.conn()
            .query_row(
                "SELECT id FROM agreements WHERE consumer = ?1 AND dataset = ?2 AND (?3 IS NULL OR workflow = ?3) AND expires_at >= ?4
                 ORDER BY expires_at DESC LIMIT 1",
                params![
                    consumer.to_ascii_lowercase(),
                    dataset.as_str(),
                    workflow.map(Did::as_str),
                    now.min(i64::MAX as u64) as i64
                ],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records (or updates) an agreement that lives elsewhere — on-chain —
    /// so executions can refer to it.
    ///
    /// # Errors
    /// [`Error::Store`] (including DIDs the catalog does not have).
    pub fn record_agreement(&self, a: &Agreement) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO agreements (id, consumer, dataset, workflow, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET consumer = excluded.consumer, dataset = excluded.dataset, workflow = excluded.workflow, expires_at = excluded.expires_at",
                params![
                    a.id,
                    a.consumer,
                    a.dataset.as_str(),
                    a.workflow.as_str(),
                    a.expires_at.min(i64::MAX as u64) as i64,
                    now_ms() as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Local and recorded agreements, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn agreements(&self, limit: usize) -> Result<Vec<Agreement>, Error> {
        let ids: Vec<String> = {
            let conn = self.conn();
            let mut st = conn
                .prepare_cached("SELECT id FROM agreements ORDER BY created_at DESC LIMIT ?1")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map(params![limit.min(i64::MAX as usize) as i64], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        ids.iter().map(|id| self.agreement(id)).collect()
    }

    /// Marks a signed request (by a sha256 `digest` of what was signed) as
    /// used until `expires_at` (unix seconds); forgets marks already expired
    /// at `now`. Returns false when it was already used: a replay.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn use_signature(&self, digest: &str, now: u64, expires_at: u64) -> Result<bool, Error> {
        let digest = digest.to_string();
        self.writer.run(None, move |conn, path| {
            let sql = |e: rusqlite::Error| writer::sql_error(path, &e);
            conn.prepare_cached("DELETE FROM used_signatures WHERE expires_at < ?1")
                .and_then(|mut st| st.execute(params![now as i64]))
                .map_err(sql)?;
            let added = conn
                .prepare_cached(
                    "INSERT INTO used_signatures (digest, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut st| st.execute(params![digest, expires_at as i64]))
                .map_err(sql)?;
            Ok(added == 1)
        })
    }
}
