//! The provider's state in SQLite (`<data-dir>/insitu.db`, WAL mode): the
//! catalog of assets (datasets, workflows, algorithms, results) with their
//! DDOs, local agreements, and executions.
//!
//! DDOs are public (served by the gateway); a dataset's local path is kept in
//! its own column and never appears in a DDO. Every status change goes through
//! [`Status::transition`] inside a transaction. When the store is opened, any
//! execution left non-terminal by a crash is marked `failed` with the reason.
//!
//! Executions' state changes, results and used signatures are written by one
//! thread that commits many callers' changes together (group commit, see
//! `writer`): each caller is answered once its change is durable, and no
//! reader sees a change before it is. The `*_ack` methods queue a change and
//! return at once with an [`Ack`] to await; the others block until it is
//! durable. Catalog and agreement writes go straight to SQLite.

use crate::Error;

mod access;
mod agreements;
mod catalog;
mod executions;
mod index;
mod reviews;
mod vfs;
mod writer;

#[cfg(test)]
mod tests;
use crate::outcome::Status;
use crate::workflow::{Did, Workflow};
pub use access::{AccessAgreement, Download};
pub use agreements::Agreement;
pub use catalog::{About, AssetKind, Dataset, DatasetSpec, Search, Server, Sort};
pub use executions::{EXECUTION_PREFIX, Execution, StageRecord};
pub use reviews::{Decision, Review};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
pub use writer::{Ack, COMMIT_DELAY, MAX_BATCH, SIBLINGS, WriteStats};

/// See the module documentation.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Executions' state changes, results and used signatures: group commit.
    writer: writer::Writer,
    /// The catalog's search index, caught up on every search.
    index: Mutex<index::Index>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// `Ok` while agreement `id` (`what`: "agreement", "access agreement")
/// holds at `now`; else [`Error::Denied`] saying how long ago it expired.
fn live(what: &str, id: &str, expires_at: u64, now: u64) -> Result<(), Error> {
    if now > expires_at {
        return Err(Error::Denied(format!(
            "{what} {id} expired {} s ago; ask the provider for a new agreement",
            now - expires_at
        )));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads execution `id`'s status on `conn` (inside the writer's
/// transaction) and checks the move to `to`.
fn transition_in(conn: &Connection, path: &Path, id: &str, to: Status) -> Result<Status, Error> {
    let from: Option<String> = conn
        .prepare_cached("SELECT status FROM executions WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![id], |r| r.get(0)).optional())
        .map_err(|e| writer::sql_error(path, &e))?;
    let from = status_from(&from.ok_or_else(|| Error::NotFound {
        what: "execution",
        id: id.to_string(),
        hint: "",
    })?);
    from.transition(to)
}

/// `N` random bytes from the OS.
fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Engine(format!("no randomness from the OS: {e}")))?;
    Ok(b)
}

/// 32 random bytes as lowercase hex.
fn random_hex32() -> Result<String, Error> {
    Ok(hex::encode(random_bytes::<32>()?))
}

/// `N` bytes as lowercase hex, ordered by creation time: the Unix time in
/// milliseconds in the first 6 bytes (big-endian), random bytes after it —
/// the layout of a UUIDv7 (RFC 9562, section 5.7). A row keyed by it lands
/// at the end of its primary-key index rather than on a random page of it,
/// so a commit of many new executions dirties a few index pages instead of
/// one per row (WAL frames, checkpoints and disk writes with them).
fn time_ordered_hex<const N: usize>() -> Result<String, Error> {
    let mut b = random_bytes::<N>()?;
    b[..6].copy_from_slice(&now_ms().to_be_bytes()[2..]);
    Ok(hex::encode(b))
}

/// Checks and lowercases an Ethereum address.
///
/// # Errors
/// [`Error::Invalid`] unless it is `0x` followed by 40 hex digits.
pub fn parse_address(a: &str) -> Result<String, Error> {
    let ok = a.len() == 42 && a.starts_with("0x") && a[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(Error::Invalid {
            what: "address",
            value: a.to_string(),
            reason: "expected 0x followed by 40 hex digits",
        });
    }
    Ok(a.to_ascii_lowercase())
}

/// `unix` seconds as RFC 3339 UTC (`2026-12-04T18:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86400, unix % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS assets (
    did TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('dataset', 'workflow', 'algorithm', 'result')),
    ddo TEXT NOT NULL,
    path TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agreements (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    dataset TEXT NOT NULL REFERENCES assets(did),
    workflow TEXT NOT NULL REFERENCES assets(did),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    agreement TEXT NOT NULL REFERENCES agreements(id),
    consumer TEXT NOT NULL,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    stages TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    receipt TEXT,
    settlement TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_by_consumer ON executions(consumer, created_at);
CREATE TABLE IF NOT EXISTS access_agreements (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    dataset TEXT NOT NULL REFERENCES assets(did),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS downloads (
    id INTEGER PRIMARY KEY,
    agreement TEXT NOT NULL REFERENCES access_agreements(id),
    consumer TEXT NOT NULL,
    dataset TEXT NOT NULL,
    file_index INTEGER NOT NULL,
    file TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS downloads_by_dataset ON downloads(dataset, id);
CREATE TABLE IF NOT EXISTS output_policies (
    dataset TEXT PRIMARY KEY REFERENCES assets(did),
    policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    execution TEXT PRIMARY KEY REFERENCES executions(id),
    report TEXT NOT NULL,
    held TEXT,
    decision TEXT,
    reviewer TEXT,
    reason TEXT,
    decided_at INTEGER,
    applied INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS used_signatures (
    digest TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
";

fn status_from(s: &str) -> Status {
    serde_json::from_value(Value::String(s.to_string())).unwrap_or(Status::Failed)
}

impl Store {
    /// Opens (creating) the database at `path`. Several processes may open it
    /// (the CLI's catalog verbs while the server runs); only the process that
    /// runs executions calls [`Store::recover`].
    ///
    /// # Errors
    /// [`Error::Store`] when SQLite cannot open or migrate it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Store, Error> {
        let path = path.into();
        let e = |err: rusqlite::Error| Error::Store {
            path: path.clone(),
            reason: err.to_string(),
        };
        // INSITU_SQLITE_SYNCHRONOUS=normal (benchmarks only): commits are not
        // synced and results not flushed, so a power loss can lose the last
        // ones — SQLite's WAL default, measured as the bound of durability's cost.
        let durable = !std::env::var("INSITU_SQLITE_SYNCHRONOUS")
            .is_ok_and(|v| v.eq_ignore_ascii_case("normal"));
        let pragmas = format!(
            "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
            if durable { "FULL" } else { "NORMAL" }
        );
        let conn = Connection::open(&path).map_err(e)?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .and_then(|()| conn.execute_batch(&pragmas))
            .map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(e)?;
        // Databases whose catalog was searched with SQLite FTS5 (the index is
        // in memory now, see `index`): the table and its triggers go.
        conn.execute_batch(
            "DROP TRIGGER IF EXISTS assets_fts_insert; DROP TRIGGER IF EXISTS assets_fts_update;
             DROP TRIGGER IF EXISTS assets_fts_delete; DROP TABLE IF EXISTS assets_fts;",
        )
        .map_err(e)?;
        // Databases from before settlements existed.
        let has_settlement = conn
            .prepare("SELECT 1 FROM pragma_table_info('executions') WHERE name = 'settlement'")
            .and_then(|mut st| st.exists([]))
            .map_err(e)?;
        if !has_settlement {
            conn.execute_batch("ALTER TABLE executions ADD COLUMN settlement TEXT")
                .map_err(e)?;
        }
        // The writer's own connection (see `writer`): same settings, and the
        // VFS whose WAL sync can flush the results with it (see `vfs`).
        vfs::register().map_err(|code| Error::Store {
            path: path.clone(),
            reason: format!("cannot register SQLite's insitu-unix VFS (code {code})"),
        })?;
        let wconn =
            Connection::open_with_flags_and_vfs(&path, rusqlite::OpenFlags::default(), vfs::NAME)
                .map_err(e)?;
        wconn.execute_batch(&pragmas).map_err(e)?;
        let writer =
            writer::Writer::start(wconn, path.clone(), durable).map_err(|err| Error::Store {
                path: path.clone(),
                reason: format!("cannot start the writer thread: {err}"),
            })?;
        let store = Store {
            path,
            conn: Mutex::new(conn),
            writer,
            index: Mutex::default(),
        };
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn err(&self, e: rusqlite::Error) -> Error {
        writer::sql_error(&self.path, &e)
    }

    /// Makes durable writes wait up to [`COMMIT_DELAY`] for others to share
    /// their commit while `active` (executions queued or running) is at
    /// least [`SIBLINGS`]: fewer fsyncs under load, no wait for one alone.
    pub fn hold_commits(&self, active: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        self.writer.hold_commits(active);
    }

    /// What the group-commit writer has done since the store was opened.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// SQLite's `PRAGMA integrity_check` of the whole database.
    ///
    /// # Errors
    /// [`Error::Store`] with SQLite's findings when it is not `ok`.
    pub fn check_integrity(&self) -> Result<(), Error> {
        let found: Vec<String> = self
            .conn()
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(|e| self.err(e))?;
        if found == ["ok"] {
            Ok(())
        } else {
            Err(Error::Store {
                path: self.path.clone(),
                reason: format!("integrity check failed: {}", found.join("; ")),
            })
        }
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sync::lock(&self.conn)
    }

    /// Marks every active execution (see [`Status::is_active`]; `held` ones wait
    /// for their reviewer) `failed` with the reason: call it once, when the process
    /// that runs executions starts (holding the data
    /// dir's lock), since nothing can still be running then. Returns how many
    /// there were.
    ///
    /// # Errors
    /// [`Error::Store`] when the update fails.
    pub fn recover(&self) -> Result<usize, Error> {
        let unfinished: Vec<String> = Status::ALL
            .iter()
            .filter(|s| s.is_active())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let conn = self.conn();
        let n = conn
            .execute(
                &format!(
                    "UPDATE executions SET reason = 'insitu stopped while the execution was ' || status || '; marked failed when it restarted', status = 'failed', updated_at = ?1
                     WHERE status IN ({})",
                    unfinished.join(", ")
                ),
                params![now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n)
    }
}
