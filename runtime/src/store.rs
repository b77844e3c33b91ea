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
mod index;
mod writer;
use crate::outcome::Status;
use crate::workflow::{Did, Workflow};
pub use access::{AccessAgreement, Download};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
pub use writer::{Ack, LAZY, MAX_BATCH, WriteStats};

/// Kinds of catalog entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    Dataset,
    Workflow,
    Algorithm,
    Result,
}

impl AssetKind {
    fn as_str(self) -> &'static str {
        match self {
            AssetKind::Dataset => "dataset",
            AssetKind::Workflow => "workflow",
            AssetKind::Algorithm => "algorithm",
            AssetKind::Result => "result",
        }
    }
}

/// A dataset the provider computes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub did: Did,
    pub name: String,
    /// The local directory (never published).
    pub path: PathBuf,
    /// Image checksums its compute service allows; empty allows none.
    pub allowed_images: Vec<String>,
    /// The resources its compute service offers each stage.
    pub server: Server,
    /// Its compute service requires deterministic mode (`"deterministic":
    /// true` in the compute service's attributes).
    pub deterministic: bool,
    /// It offers its files for download (an `access` service).
    pub access: bool,
}

/// What [`Store::register_dataset`] records.
#[derive(Debug, Clone)]
pub struct DatasetSpec<'a> {
    pub name: &'a str,
    /// The local directory (never published).
    pub path: &'a Path,
    /// Image manifest checksums the compute service allows.
    pub allowed_images: &'a [String],
    /// The compute service's time-out, seconds.
    pub timeout_secs: u64,
    pub server: Server,
    /// The price of each service offered (in the token's smallest unit, as
    /// a decimal string), paid into escrow in chain mode.
    pub price: Option<String>,
    /// The ERC-20 token `price` is in (`0x` address); `None`: the chain's
    /// native currency.
    pub price_token: Option<String>,
    /// Offer the dataset's files for download (an `access` service); off by
    /// default: in situ computation is the default promise.
    pub access: bool,
    /// The DID to register it under (chain mode: the DID registered on-chain);
    /// `None` draws a random one.
    pub did: Option<Did>,
    /// Stages reading it run in deterministic mode.
    pub deterministic: bool,
    /// What the catalog shows and searches besides the name.
    pub about: About,
}

/// A catalog search ([`Store::search`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Search {
    /// Words to find (runs of letters and digits, any case; each matches as
    /// a prefix; all must match). Empty lists everything.
    pub text: String,
    /// `dataset`, `workflow`, `algorithm` or `result`.
    pub kind: Option<String>,
    /// Tags the asset must all carry.
    pub tags: Vec<String>,
    /// The owner of results.
    pub owner: Option<String>,
    /// Only assets offering this service (`compute`, `access`).
    pub service: Option<String>,
    /// Compute price bounds (wei).
    pub price_min: Option<f64>,
    pub price_max: Option<f64>,
    pub sort: Sort,
    /// Who searches: their results are found too.
    pub viewer: Option<String>,
    /// Results per page (Nevermined's `offset`), at most [`Search::MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// 1-based.
    pub page: usize,
}

impl Search {
    pub const MAX_PAGE_SIZE: usize = 500;
}

/// The order of search results after relevance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Relevance,
    Newest,
    Oldest,
    Name,
}

/// A dataset's descriptive metadata (Nevermined's `main.author`,
/// `additionalInformation.description` and `.tags`), searched by
/// [`Store::search`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct About {
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub author: Option<String>,
}

/// The resources a dataset's compute service offers a stage — the first of
/// `supportedServers` in its DDO (`memory`, `disk`, `maxExecutionTime`).
/// Each one that is set caps the provider's limit for stages reading the
/// dataset; none can raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Server {
    /// Linear memory, bytes.
    pub memory: Option<u64>,
    /// Output quota, bytes.
    pub disk: Option<u64>,
    /// Wall time, seconds.
    pub max_execution_time: Option<u64>,
}

impl Server {
    /// `limits` with each limit lowered to this server's where it is lower.
    pub fn cap(&self, mut limits: crate::sandbox::Limits) -> crate::sandbox::Limits {
        if let Some(m) = self.memory {
            limits.memory = limits.memory.min(m);
        }
        if let Some(d) = self.disk {
            limits.output_quota = limits.output_quota.min(d);
        }
        if let Some(t) = self.max_execution_time {
            limits.timeout = limits.timeout.min(std::time::Duration::from_secs(t));
        }
        limits
    }

    /// The tighter of two servers, limit by limit.
    pub fn min(&self, other: &Server) -> Server {
        let pick = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Server {
            memory: pick(self.memory, other.memory),
            disk: pick(self.disk, other.disk),
            max_execution_time: pick(self.max_execution_time, other.max_execution_time),
        }
    }

    fn is_set(&self) -> bool {
        *self != Server::default()
    }

    /// The DDO's `supportedServers` entry.
    fn to_ddo(self) -> Value {
        let mut v = json!({"serverId": "1", "serverType": "wasm", "cpu": "1", "gpu": "0"});
        if let Some(m) = self.memory {
            v["memory"] = json!(ddo_size(m));
        }
        if let Some(d) = self.disk {
            v["disk"] = json!(ddo_size(d));
        }
        if let Some(t) = self.max_execution_time {
            v["maxExecutionTime"] = json!(t);
        }
        v
    }

    fn from_ddo(v: &Value) -> Server {
        Server {
            memory: v["memory"].as_str().and_then(parse_ddo_size),
            disk: v["disk"].as_str().and_then(parse_ddo_size),
            max_execution_time: v["maxExecutionTime"].as_u64(),
        }
    }
}

/// Sizes as Nevermined DDOs write them: `8gb`, `512mb` (binary multiples).
fn ddo_size(bytes: u64) -> String {
    for (unit, n) in [
        ("tb", 1u64 << 40),
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
    ] {
        if bytes >= n && bytes.is_multiple_of(n) {
            return format!("{}{unit}", bytes / n);
        }
    }
    format!("{bytes}b")
}

/// Reads `8gb`, `512mb`, `160GB`, `1GiB`, `4096`; `None` when it is none of these.
fn parse_ddo_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").map_or(t.clone(), |x| format!("{x}b"));
    let (num, mult) = [
        ("tb", 1u64 << 40),
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("b", 1),
    ]
    .iter()
    .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim().to_string(), *m)))
    .unwrap_or((t.clone(), 1));
    num.parse::<u64>().ok()?.checked_mul(mult)
}

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
    /// recorded (0 before any).
    pub fn result_stage(&self) -> u32 {
        self.stages
            .as_array()
            .map_or(0, |a| a.len().saturating_sub(1)) as u32
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

/// 32 random bytes as lowercase hex.
fn random_hex32() -> Result<String, Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Engine(format!("no randomness from the OS: {e}")))?;
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
        // The writer's own connection (see `writer`): same settings.
        let wconn = Connection::open(&path).map_err(e)?;
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

    fn err(&self, e: rusqlite::Error) -> Error {
        writer::sql_error(&self.path, &e)
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

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sync::lock(&self.conn)
    }

    /// Marks every non-terminal execution `failed` with the reason: call it
    /// once, when the process that runs executions starts (holding the data
    /// dir's lock), since nothing can still be running then. Returns how many
    /// there were.
    ///
    /// # Errors
    /// [`Error::Store`] when the update fails.
    pub fn recover(&self) -> Result<usize, Error> {
        let conn = self.conn();
        let n = conn
            .execute(
                "UPDATE executions SET reason = 'insitu stopped while the execution was ' || status || '; marked failed when it restarted', status = 'failed', updated_at = ?1
                 WHERE status NOT IN ('succeeded', 'failed', 'stopped')",
                params![now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    fn insert_asset(
        &self,
        did: &Did,
        kind: AssetKind,
        ddo: &Value,
        path: Option<&Path>,
    ) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO assets (did, kind, ddo, path, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    did.as_str(),
                    kind.as_str(),
                    ddo.to_string(),
                    path.map(|p| p.display().to_string()),
                    now_ms() as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Registers a local dataset directory with a compute service allowing
    /// `allowed_images` (image manifest checksums). Returns its DID.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] when `path` is not a directory; [`Error::Reference`]
    /// for a malformed checksum; [`Error::Store`].
    pub fn add_dataset(
        &self,
        name: &str,
        path: &Path,
        allowed_images: &[String],
        timeout_secs: u64,
    ) -> Result<Did, Error> {
        self.add_dataset_on(name, path, allowed_images, timeout_secs, &Server::default())
    }

    /// [`Store::add_dataset`] whose compute service also offers `server`
    /// (recorded as `supportedServers` when any limit is set).
    ///
    /// # Errors
    /// As [`Store::add_dataset`].
    pub fn add_dataset_on(
        &self,
        name: &str,
        path: &Path,
        allowed_images: &[String],
        timeout_secs: u64,
        server: &Server,
    ) -> Result<Did, Error> {
        self.register_dataset(&DatasetSpec {
            name,
            path,
            allowed_images,
            timeout_secs,
            server: *server,
            price: None,
            price_token: None,
            access: false,
            did: None,
            deterministic: false,
            about: About::default(),
        })
    }

    /// Registers a dataset as `spec` describes; returns its DID.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] when the path is not a directory;
    /// [`Error::Reference`] for a malformed checksum; [`Error::Store`]
    /// (including a DID already registered).
    pub fn register_dataset(&self, spec: &DatasetSpec<'_>) -> Result<Did, Error> {
        let path = std::fs::canonicalize(spec.path)
            .map_err(|e| Error::io("open dataset", spec.path, e))?;
        if !path.is_dir() {
            return Err(Error::InvalidJob(format!(
                "dataset {} is not a directory",
                path.display()
            )));
        }
        for c in spec.allowed_images {
            crate::image::check_digest(c)?;
        }
        let did = match &spec.did {
            Some(d) => d.clone(),
            None => Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed"),
        };
        let mut environment = json!({
            "supportedContainers": spec.allowed_images.iter().map(|c| json!({"checksum": c})).collect::<Vec<_>>(),
        });
        if spec.server.is_set() {
            environment["supportedServers"] = json!([spec.server.to_ddo()]);
        }
        let mut compute = json!({
            "name": "compute", "timeout": spec.timeout_secs,
            "provider": {"environment": environment},
        });
        if let Some(price) = &spec.price {
            if !(!price.is_empty()
                && price.len() <= 78
                && price.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(Error::Invalid {
                    what: "price",
                    value: price.clone(),
                    reason: "expected an amount in the token's smallest unit (digits only)",
                });
            }
            compute["price"] = json!(price);
        }
        if let Some(token) = &spec.price_token {
            if spec.price.is_none() {
                return Err(Error::Invalid {
                    what: "price token",
                    value: token.clone(),
                    reason: "a token needs a price too (--price)",
                });
            }
            compute["priceToken"] = json!(parse_address(token)?);
        }
        if spec.deterministic {
            compute["deterministic"] = json!(true);
        }
        let mut metadata = json!({"main": {"type": "dataset", "name": spec.name,
                                           "dateCreated": rfc3339(now_ms() / 1000)}});
        if let Some(a) = &spec.about.author {
            metadata["main"]["author"] = json!(a);
        }
        if spec.about.description.is_some() || !spec.about.tags.is_empty() {
            metadata["additionalInformation"] = json!({"description": spec.about.description.clone().unwrap_or_default(),
                       "tags": spec.about.tags});
        }
        let mut services = vec![
            json!({"type": "metadata", "index": 0, "attributes": metadata}),
            json!({"type": "compute", "index": 1, "attributes": {"main": compute}}),
        ];
        if spec.access {
            // The files a grantee downloads by index (names relative to the
            // dataset; the directory itself is never published).
            services[0]["attributes"]["main"]["files"] = json!(access::list_files(&path)?);
            let mut main = json!({"name": "access", "timeout": spec.timeout_secs});
            for key in ["price", "priceToken"] {
                if let Some(v) = compute.get(key) {
                    main[key] = v.clone();
                }
            }
            services.push(json!({"type": "access", "index": 2, "attributes": {"main": main}}));
        }
        let ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": services,
        });
        self.insert_asset(&did, AssetKind::Dataset, &ddo, Some(&path))?;
        Ok(did)
    }

    /// Registers an algorithm asset: the image `reference`
    /// (`host/repo[:tag]@sha256:…`, pinned by digest) named `name`; returns
    /// its DID. A workflow stage whose `transformation.id` is this DID must
    /// run the same image checksum.
    ///
    /// # Errors
    /// [`Error::Reference`] without a digest or with a malformed one;
    /// [`Error::Store`].
    pub fn add_algorithm(&self, name: &str, reference: &str) -> Result<Did, Error> {
        self.add_algorithm_as(name, reference, None)
    }

    /// [`Store::add_algorithm`] published by consumer `owner` (recorded as
    /// `main.owner`).
    ///
    /// # Errors
    /// As [`Store::add_algorithm`]; [`Error::Invalid`] for the address.
    pub fn add_algorithm_as(
        &self,
        name: &str,
        reference: &str,
        owner: Option<&str>,
    ) -> Result<Did, Error> {
        let owner = owner.map(parse_address).transpose()?;
        let (image, checksum) = reference.rsplit_once('@').ok_or_else(|| Error::Reference {
            reference: reference.to_string(),
            reason: "an algorithm is pinned by digest: append @sha256:<digest> (insitu inspect prints it)".into(),
        })?;
        crate::image::check_digest(checksum)?;
        let (image, tag) = match image.rsplit_once(':') {
            Some((i, t)) if !t.contains('/') => (i, t),
            _ => (image, ""),
        };
        let did = Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed");
        let mut ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": [{"type": "metadata", "index": 0, "attributes": {"main": {
                "type": "algorithm", "name": name, "dateCreated": rfc3339(now_ms() / 1000),
                "algorithm": {"container": {"image": image, "tag": tag, "checksum": checksum}},
            }}}],
        });
        if let Some(o) = owner {
            ddo["service"][0]["attributes"]["main"]["owner"] = json!(o);
        }
        self.insert_asset(&did, AssetKind::Algorithm, &ddo, None)?;
        Ok(did)
    }

    /// The image checksum of algorithm asset `did`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not an algorithm.
    pub fn algorithm_checksum(&self, did: &Did) -> Result<String, Error> {
        let ddo = self.expect_kind(did, AssetKind::Algorithm)?;
        Ok(ddo
            .pointer("/service/0/attributes/main/algorithm/container/checksum")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Registers a workflow (validated); returns its DID.
    ///
    /// # Errors
    /// [`Error::Workflow`] for invalid documents; [`Error::NotFound`] when a
    /// stage reads a dataset the catalog does not have; [`Error::Store`].
    pub fn add_workflow(&self, doc: &Value) -> Result<Did, Error> {
        self.add_workflow_as(doc, None)
    }

    /// [`Store::add_workflow`] published by consumer `owner` (lowercase
    /// address, recorded as `main.owner`): the consumer may execute it under
    /// any agreement of theirs covering the datasets it reads.
    ///
    /// # Errors
    /// As [`Store::add_workflow`]; [`Error::Invalid`] for the address.
    pub fn add_workflow_as(&self, doc: &Value, owner: Option<&str>) -> Result<Did, Error> {
        let owner = owner.map(parse_address).transpose()?;
        let workflow = Workflow::from_value(doc)?;
        for (i, stage) in workflow.stages.iter().enumerate() {
            if let Some(algorithm) = &stage.transformation {
                let path = format!("$.main.workflow.stages[{i}].transformation.id");
                let checksum = self.algorithm_checksum(algorithm).map_err(|_| Error::Workflow {
                    path: path.clone(),
                    reason: format!(
                        "{algorithm} is not an algorithm asset of this provider (insitu algorithm add registers one)"
                    ),
                })?;
                if checksum != stage.container.checksum {
                    return Err(Error::Workflow {
                        path,
                        reason: format!(
                            "algorithm {algorithm} is the image {checksum}, but the stage runs {}; use the algorithm's checksum or another algorithm",
                            stage.container.checksum
                        ),
                    });
                }
            }
        }
        for d in workflow.datasets() {
            // A dataset, or a result (an input of its owner's executions).
            if !matches!(self.ddo(d)?.0, AssetKind::Dataset | AssetKind::Result) {
                self.dataset(d)?;
            }
        }
        let did = Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed");
        let main = doc.get("main").cloned().unwrap_or_else(|| {
            doc.get("service")
                .and_then(Value::as_array)
                .and_then(|s| {
                    s.iter().find_map(|s| {
                        s.pointer("/attributes/main")
                            .filter(|m| m["type"] == "workflow")
                    })
                })
                .cloned()
                .unwrap_or(Value::Null)
        });
        let mut main = main;
        match (&owner, main.as_object_mut()) {
            (Some(o), Some(m)) => {
                m.insert("owner".into(), json!(o));
            }
            // Only a consumer's publication names an owner.
            (None, Some(m)) => {
                m.remove("owner");
            }
            _ => {}
        }
        let ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": [{"type": "metadata", "index": 0, "attributes": {"main": main}}],
        });
        self.insert_asset(&did, AssetKind::Workflow, &ddo, None)?;
        Ok(did)
    }

    /// The consumer who published workflow `did` (`None`: the provider's).
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not a workflow.
    pub fn workflow_owner(&self, did: &Did) -> Result<Option<String>, Error> {
        Ok(self
            .expect_kind(did, AssetKind::Workflow)?
            .pointer("/service/0/attributes/main/owner")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The DDO and kind of any asset.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    pub fn ddo(&self, did: &Did) -> Result<(AssetKind, Value), Error> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT kind, ddo FROM assets WHERE did = ?1",
                params![did.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let (kind, ddo) = row.ok_or_else(|| Error::NotFound {
            what: "DID",
            id: did.to_string(),
            hint: "; register it first (insitu asset add / insitu workflow add)",
        })?;
        let kind = match kind.as_str() {
            "dataset" => AssetKind::Dataset,
            "workflow" => AssetKind::Workflow,
            "algorithm" => AssetKind::Algorithm,
            _ => AssetKind::Result,
        };
        let ddo = serde_json::from_str(&ddo).map_err(|e| Error::Store {
            path: self.path.clone(),
            reason: format!("the DDO of {did} is not JSON: {e}"),
        })?;
        Ok((kind, ddo))
    }

    fn expect_kind(&self, did: &Did, want: AssetKind) -> Result<Value, Error> {
        let (kind, ddo) = self.ddo(did)?;
        if kind != want {
            return Err(Error::NotFound {
                what: match want {
                    AssetKind::Dataset => "dataset",
                    AssetKind::Workflow => "workflow",
                    AssetKind::Algorithm => "algorithm",
                    AssetKind::Result => "result",
                },
                id: did.to_string(),
                hint: "; the DID names an asset of another kind",
            });
        }
        Ok(ddo)
    }

    /// The local directory of an asset (datasets, results).
    fn asset_path(&self, did: &Did) -> Result<String, Error> {
        self.conn()
            .query_row(
                "SELECT path FROM assets WHERE did = ?1",
                params![did.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// A registered dataset.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not a dataset; [`Error::Store`].
    pub fn dataset(&self, did: &Did) -> Result<Dataset, Error> {
        let ddo = self.expect_kind(did, AssetKind::Dataset)?;
        let path = self.asset_path(did)?;
        let allowed_images = ddo
            .pointer("/service/1/attributes/main/provider/environment/supportedContainers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["checksum"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Dataset {
            did: did.clone(),
            name: ddo
                .pointer("/service/0/attributes/main/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            path: PathBuf::from(path),
            allowed_images,
            server: ddo
                .pointer("/service/1/attributes/main/provider/environment/supportedServers/0")
                .map(Server::from_ddo)
                .unwrap_or_default(),
            deterministic: ddo.pointer("/service/1/attributes/main/deterministic")
                == Some(&Value::Bool(true)),
            access: access::offers_access(&ddo),
        })
    }

    /// A result asset used as an input of a later execution by `consumer`:
    /// as a [`Dataset`] whose directory is the result's files, whose allowed
    /// images, resources and deterministic mode are those of the datasets it
    /// was computed from (all of them, through results of results: data
    /// derived from a dataset stays under its compute service).
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not a result; [`Error::Denied`] when
    /// it belongs to another consumer or a dataset it came from is gone.
    pub fn result_as_dataset(&self, did: &Did, consumer: &str) -> Result<Dataset, Error> {
        let ddo = self.expect_kind(did, AssetKind::Result)?;
        let main = ddo
            .pointer("/service/0/attributes/main")
            .cloned()
            .unwrap_or(Value::Null);
        if !main["owner"]
            .as_str()
            .is_some_and(|o| o.eq_ignore_ascii_case(consumer))
        {
            return Err(Error::Denied(format!(
                "result {did} is not {consumer}'s: a result is an input only of its owner's executions"
            )));
        }
        let path = self.asset_path(did)?;
        // The datasets it came from, through results of results.
        let mut sources: Vec<Dataset> = Vec::new();
        let mut todo: Vec<(Value, usize)> = vec![(main["provenance"]["inputs"].clone(), 0)];
        while let Some((inputs, depth)) = todo.pop() {
            for d in inputs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let Ok(d) = Did::parse(d) else { continue };
                match self.ddo(&d) {
                    Ok((AssetKind::Dataset, _)) => {
                        if !sources.iter().any(|s| s.did == d) {
                            sources.push(self.dataset(&d)?);
                        }
                    }
                    Ok((AssetKind::Result, r)) if depth < 32 => todo.push((
                        r.pointer("/service/0/attributes/main/provenance/inputs")
                            .cloned()
                            .unwrap_or(Value::Null),
                        depth + 1,
                    )),
                    _ => {
                        return Err(Error::Denied(format!(
                            "result {did} was computed from {d}, which this provider no longer has as a dataset; its compute service cannot be checked"
                        )));
                    }
                }
            }
        }
        let Some(first) = sources.first() else {
            return Err(Error::Denied(format!(
                "result {did} records no dataset it was computed from"
            )));
        };
        Ok(Dataset {
            did: did.clone(),
            name: main["name"].as_str().unwrap_or("").to_string(),
            path: PathBuf::from(path),
            allowed_images: first
                .allowed_images
                .iter()
                .filter(|i| sources.iter().all(|s| s.allowed_images.contains(i)))
                .cloned()
                .collect(),
            server: sources
                .iter()
                .fold(Server::default(), |s, d| s.min(&d.server)),
            deterministic: sources.iter().any(|s| s.deterministic),
            access: false,
        })
    }

    /// Brings the search index up to date with the catalog (a server calls
    /// it at start, so the first search does not pay for indexing every
    /// asset; searches call it for the assets added since).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn index_catalog(&self) -> Result<(), Error> {
        let conn = self.conn();
        let mut index = crate::sync::lock(&self.index);
        self.catch_up(&conn, &mut index)
    }

    fn catch_up(&self, conn: &Connection, index: &mut index::Index) -> Result<(), Error> {
        let mut st = conn
            .prepare_cached(
                "SELECT rowid, did, kind, ddo FROM assets WHERE rowid > ?1 ORDER BY rowid",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st
            .query(params![index.last_rowid])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let (rowid, did, kind, ddo): (i64, String, String, String) = (
                r.get(0).map_err(|e| self.err(e))?,
                r.get(1).map_err(|e| self.err(e))?,
                r.get(2).map_err(|e| self.err(e))?,
                r.get(3).map_err(|e| self.err(e))?,
            );
            index.add(rowid, &did, &kind, &ddo);
        }
        Ok(())
    }

    /// Searches the catalog: full text over name, description, tags and
    /// author (an in-memory index, ranked by BM25F with the name weighing
    /// most; an exact name first; see `index`), filtered by `query`. Datasets, workflows and
    /// algorithms are public; a result is found only by its owner
    /// (`query.viewer`). Returns one page of DDOs and the total.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn search(&self, query: &Search) -> Result<(Vec<Value>, u64), Error> {
        let conn = self.conn();
        let (dids, total) = {
            let mut index = crate::sync::lock(&self.index);
            self.catch_up(&conn, &mut index)?;
            index.search(query)
        };
        let mut results = Vec::with_capacity(dids.len());
        let mut ddo = conn
            .prepare_cached("SELECT ddo FROM assets WHERE did = ?1")
            .map_err(|e| self.err(e))?;
        for did in &dids {
            let text: String = ddo
                .query_row(params![did], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            results.push(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        Ok((results, total))
    }

    /// A registered workflow, parsed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Workflow`] if it no longer validates.
    pub fn workflow(&self, did: &Did) -> Result<Workflow, Error> {
        Workflow::from_value(&self.expect_kind(did, AssetKind::Workflow)?)
    }

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
        let ack = self.writer.submit(None, false, move |conn, path| {
            work(conn, path).map(|()| answer)
        });
        Ok((id, ack))
    }

    #[allow(clippy::type_complexity)]
    fn new_execution(
        agreement: &Agreement,
    ) -> Result<
        (
            String,
            impl FnOnce(&Connection, &Path) -> Result<(), Error> + Send + 'static,
        ),
        Error,
    > {
        let id = format!("nv-{}", &random_hex32()?[..32]);
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
    /// change is durable or refused. Changes submitted by one thread are
    /// applied in the order submitted. A change to a non-terminal status
    /// may wait a few milliseconds to share a commit with others.
    pub fn advance_ack(
        &self,
        id: &str,
        to: Status,
        reason: Option<&str>,
        stages: Option<&Value>,
    ) -> Ack<Status> {
        self.writer.submit(
            None,
            !to.is_terminal(),
            Self::advance_work(id, to, reason, stages),
        )
    }

    fn advance_work(
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
        Ok(Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed"))
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
        Ok(self.writer.submit(Some(path.to_path_buf()), false, work))
    }

    fn publish_work(
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

    /// The executions of `consumer`, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn executions_of(&self, consumer: &str) -> Result<Vec<Execution>, Error> {
        self.executions_where("consumer = ?1", &consumer.to_ascii_lowercase())
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

    fn executions_where(&self, cond: &str, arg: &str) -> Result<Vec<Execution>, Error> {
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

    /// SQLite's own consistency check (`PRAGMA integrity_check`).
    ///
    /// # Errors
    /// [`Error::Store`] with SQLite's findings when it is not `ok`.
    pub fn integrity_check(&self) -> Result<(), Error> {
        let r: String = self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(Error::Store {
                path: self.path.clone(),
                reason: format!("integrity check failed: {r}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "sha256:cb57ecfa6ebbefd8ffc7f75c0f00e57a7fa739578a429b6f72a0df19315deadc";
    const ALICE: &str = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4";

    fn workflow_on(dataset: &Did) -> Value {
        json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "r/x", "tag": "1", "checksum": SUM}},
             "input": [{"index": 0, "id": dataset}]}]}}})
    }

    #[test]
    fn signed_requests_are_used_once_even_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("insitu.db");
        let store = Store::open(&path).unwrap();
        assert!(store.use_signature("aa", 1_000, 1_301).unwrap());
        assert!(
            !store.use_signature("aa", 1_001, 1_302).unwrap(),
            "a replay"
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(
            !store.use_signature("aa", 1_200, 1_501).unwrap(),
            "still a replay after a restart"
        );
        // Marks are forgotten once expired, by the next use of any signature.
        assert!(store.use_signature("bb", 1_400, 1_701).unwrap());
        let left: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM used_signatures", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }

    #[test]
    fn concurrent_writes_share_commits_and_a_refusal_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let db = dir.path().join("insitu.db");
        let store = Store::open(&db).unwrap();
        let ds = store
            .add_dataset("weather", &data, &[SUM.into()], 3600)
            .unwrap();
        let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
        let a = store
            .agreement(&store.grant(ALICE, &ds, &wf, 60).unwrap())
            .unwrap();
        // 8 threads, each waiting for every change to be durable before the next.
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..50)
                            .map(|_| {
                                let e = store.create_execution(&a).unwrap();
                                store.set_status(&e, Status::Configuring, None).unwrap();
                                store.set_status(&e, Status::Failed, Some("done")).unwrap();
                                e
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let w = store.write_stats();
        assert_eq!(w.writes, 8 * 50 * 3);
        assert!(
            w.commits < w.writes,
            "concurrent writers share commits: {w:?}"
        );
        // Queued together: the refused change (pending → succeeded) is rolled
        // back alone, the ones around it commit.
        let (e1, e2) = (
            store.create_execution(&a).unwrap(),
            store.create_execution(&a).unwrap(),
        );
        let before = store.advance_ack(&e1, Status::Configuring, None, None);
        let refused = store.advance_ack(&e2, Status::Succeeded, None, None);
        let after = store.advance_ack(&e2, Status::Configuring, None, None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(before.done().await.unwrap(), Status::Configuring);
            let e = refused.done().await.unwrap_err();
            assert!(matches!(e, Error::Transition { .. }), "{e}");
            assert_eq!(after.done().await.unwrap(), Status::Configuring);
        });
        // Everything acknowledged is there after a restart.
        drop(store);
        let store = Store::open(&db).unwrap();
        for id in &ids {
            assert_eq!(store.execution(id).unwrap().status, Status::Failed);
        }
        assert_eq!(store.execution(&e1).unwrap().status, Status::Configuring);
        assert_eq!(store.execution(&e2).unwrap().status, Status::Configuring);
        store.integrity_check().unwrap();
    }

    #[test]
    fn catalog_agreements_and_executions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let db = dir.path().join("insitu.db");
        let (ds, wf, agreement, exec) = {
            let store = Store::open(&db).unwrap();
            let ds = store
                .add_dataset("weather", &data, &[SUM.into()], 3600)
                .unwrap();
            let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
            let id = store.grant(ALICE, &ds, &wf, 60).unwrap();
            let a = store.agreement(&id).unwrap();
            assert_eq!(a.consumer, ALICE.to_ascii_lowercase());
            let exec = store.create_execution(&a).unwrap();
            store.set_status(&exec, Status::Configuring, None).unwrap();
            (ds, wf, id, exec)
        };
        // A second process (the CLI) opening it changes nothing.
        let other = Store::open(&db).unwrap();
        assert_eq!(other.execution(&exec).unwrap().status, Status::Configuring);
        // Reopened by the server as after a crash: the unfinished execution is failed, with a reason.
        let store = Store::open(&db).unwrap();
        assert_eq!(store.recover().unwrap(), 1);
        let e = store.execution(&exec).unwrap();
        assert_eq!(e.status, Status::Failed);
        assert_eq!(
            e.reason.as_deref(),
            Some(
                "insitu stopped while the execution was configuring; marked failed when it restarted"
            )
        );
        assert_eq!(store.executions_of(ALICE).unwrap().len(), 1);
        let d = store.dataset(&ds).unwrap();
        assert_eq!(
            (d.name.as_str(), d.allowed_images.as_slice()),
            ("weather", &[SUM.to_string()][..])
        );
        assert_eq!(d.path, std::fs::canonicalize(&data).unwrap());
        assert!(
            !store
                .ddo(&ds)
                .unwrap()
                .1
                .to_string()
                .contains(&data.display().to_string()),
            "local paths never appear in DDOs"
        );
        assert_eq!(store.workflow(&wf).unwrap().stages.len(), 1);
        assert_eq!(store.agreement(&agreement).unwrap().workflow, wf);
        store.integrity_check().unwrap();
    }

    #[test]
    fn servers_cap_limits_and_read_ddo_sizes() {
        for (text, bytes) in [
            ("8gb", 8u64 << 30),
            ("512mb", 512 << 20),
            ("160GB", 160 << 30),
            ("1GiB", 1 << 30),
            ("4096", 4096),
            ("64 kb", 64 << 10),
        ] {
            assert_eq!(parse_ddo_size(text), Some(bytes), "{text}");
        }
        assert_eq!(parse_ddo_size("lots"), None);
        for bytes in [8u64 << 30, 512 << 20, 3 << 10, 1000] {
            assert_eq!(parse_ddo_size(&ddo_size(bytes)), Some(bytes));
        }
        let a = Server {
            memory: Some(64 << 20),
            disk: None,
            max_execution_time: Some(10),
        };
        let b = Server {
            memory: Some(128 << 20),
            disk: Some(1 << 20),
            max_execution_time: None,
        };
        let both = a.min(&b);
        assert_eq!(
            both,
            Server {
                memory: Some(64 << 20),
                disk: Some(1 << 20),
                max_execution_time: Some(10)
            }
        );
        let limits = both.cap(crate::sandbox::Limits::default());
        assert_eq!(
            (limits.memory, limits.output_quota, limits.timeout.as_secs()),
            (64 << 20, 1 << 20, 10)
        );
        // A server never raises a limit.
        let big = Server {
            memory: Some(1 << 40),
            ..Server::default()
        };
        assert_eq!(big.cap(crate::sandbox::Limits::default()).memory, 512 << 20);
        assert_eq!(Server::from_ddo(&a.to_ddo()), a);
    }

    #[test]
    fn publishing_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let ds = store.add_dataset("d", &data, &[SUM.into()], 60).unwrap();
        let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
        let a = store
            .agreement(&store.grant(ALICE, &ds, &wf, 60).unwrap())
            .unwrap();
        let id = store.create_execution(&a).unwrap();
        let key = crate::receipt::ProviderKey::from_hex(
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
        )
        .unwrap();
        let receipt = crate::receipt::sign(&key, json!({"execution": id})).unwrap();
        let did = store.new_result_did().unwrap();
        // Not publishing yet: refused, and no result asset appears.
        let err = store
            .publish(&id, &did, &json!({"type": "result"}), &data, &receipt)
            .unwrap_err();
        assert!(matches!(err, Error::Transition { .. }), "{err}");
        assert!(matches!(store.ddo(&did), Err(Error::NotFound { .. })));
        let stages = json!([{"index": 0, "status": "succeeded"}]);
        store.advance(&id, Status::Configuring, None, None).unwrap();
        store.advance(&id, Status::Running, None, None).unwrap();
        store
            .advance(&id, Status::Publishing, None, Some(&stages))
            .unwrap();
        store
            .publish(&id, &did, &json!({"type": "result"}), &data, &receipt)
            .unwrap();
        let e = store.execution(&id).unwrap();
        assert_eq!(e.status, Status::Succeeded);
        assert_eq!(e.stages, stages);
        assert_eq!(e.result.as_deref(), Some(did.as_str()));
        assert_eq!(e.receipt, Some(serde_json::to_value(&receipt).unwrap()));
        assert_eq!(store.ddo(&did).unwrap().0, AssetKind::Result);
    }

    #[test]
    fn refusals_are_precise_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let ghost = Did::parse(&format!("did:nv:{}", "ab".repeat(32))).unwrap();
        assert_eq!(
            store
                .add_workflow(&workflow_on(&ghost))
                .unwrap_err()
                .to_string(),
            format!(
                "unknown DID `{ghost}`; register it first (insitu asset add / insitu workflow add)"
            )
        );
        assert_eq!(
            store
                .grant("0x123", &ghost, &ghost, 1)
                .unwrap_err()
                .to_string(),
            "invalid address `0x123`: expected 0x followed by 40 hex digits"
        );
        let data = dir.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let ds = store.add_dataset("d", &data, &[], 1).unwrap();
        assert_eq!(
            store.grant(ALICE, &ds, &ds, 1).unwrap_err().to_string(),
            format!("unknown workflow `{ds}`; the DID names an asset of another kind")
        );
        let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
        let a = store
            .agreement(&store.grant(ALICE, &ds, &wf, 1).unwrap())
            .unwrap();
        let exec = store.create_execution(&a).unwrap();
        assert_eq!(
            store
                .set_status(&exec, Status::Succeeded, None)
                .unwrap_err()
                .to_string(),
            "execution status cannot go from `pending` to `succeeded`"
        );
        assert_eq!(store.execution(&exec).unwrap().status, Status::Pending);
        store
            .set_status(&exec, Status::Stopped, Some("stopped by the consumer"))
            .unwrap();
        assert!(store.set_status(&exec, Status::Running, None).is_err());
        assert_eq!(
            store.execution(&exec).unwrap().reason.as_deref(),
            Some("stopped by the consumer")
        );
        assert!(matches!(
            store.execution("nv-nope"),
            Err(Error::NotFound { .. })
        ));
        assert!(
            store
                .add_dataset("x", &dir.path().join("missing"), &[], 1)
                .is_err()
        );
        assert!(
            store
                .add_dataset("x", &data, &["sha256:bad".into()], 1)
                .is_err()
        );
    }

    #[test]
    fn the_catalog_is_searched_ranked_and_results_stay_their_owners() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let add = |name: &str, description: &str, tags: &[&str]| {
            store
                .register_dataset(&DatasetSpec {
                    name,
                    path: &data,
                    allowed_images: &[],
                    timeout_secs: 60,
                    server: Server::default(),
                    price: None,
                    price_token: None,
                    access: false,
                    did: None,
                    deterministic: false,
                    about: About {
                        description: Some(description.into()),
                        tags: tags.iter().map(|t| t.to_string()).collect(),
                        author: Some("Met Office".into()),
                    },
                })
                .unwrap()
        };
        let weather = add("weather", "hourly readings", &["climate", "hourly"]);
        let stations = add(
            "weather stations",
            "where the weather is measured",
            &["climate"],
        );
        let _rain = add("rainfall", "daily weather totals", &["climate", "daily"]);
        let _other = add("traffic", "cars per hour", &["roads"]);
        let search = |text: &str| Search {
            text: text.into(),
            page_size: 10,
            page: 1,
            ..Search::default()
        };
        let names = |r: &(Vec<Value>, u64)| -> Vec<String> {
            r.0.iter()
                .map(|d| {
                    d["service"][0]["attributes"]["main"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        // The exact name first, then by relevance; prefix matches count.
        let r = store.search(&search("weather")).unwrap();
        assert_eq!(r.1, 3);
        assert_eq!(names(&r)[0], "weather");
        assert_eq!(r.0[0]["id"], json!(weather));
        assert_eq!(
            names(&store.search(&search("stat")).unwrap()),
            ["weather stations"]
        );
        assert_eq!(
            store.search(&search("office")).unwrap().1,
            4,
            "author is searched"
        );
        // Tags and type filter; hostile query syntax is just words.
        let mut q = search("weather");
        q.tags = vec!["daily".into()];
        assert_eq!(names(&store.search(&q).unwrap()), ["rainfall"]);
        q.kind = Some("workflow".into());
        assert_eq!(store.search(&q).unwrap().1, 0);
        for hostile in ["\"", "weather\" OR *", "NEAR(", "a AND", ")(", "-", "''"] {
            store.search(&search(hostile)).unwrap();
        }
        assert_eq!(store.search(&search("!!!")).unwrap().1, 0);
        // Pages.
        let mut q = search("");
        q.page_size = 3;
        let first = store.search(&q).unwrap();
        assert_eq!((first.0.len(), first.1), (3, 4));
        q.page = 2;
        assert_eq!(store.search(&q).unwrap().0.len(), 1);
        q.page = 9;
        assert_eq!(store.search(&q).unwrap(), (Vec::new(), 4));
        // A result is found by its owner only; paths never appear.
        let wf = store
            .add_workflow(&json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "r/a", "tag": "1", "checksum": format!("sha256:{}", "ab".repeat(32))}},
                 "input": [{"index": 0, "id": stations}]}]}}}))
            .unwrap();
        let owner = "0x5b38da6a701c568545dcfcb03fcb875f56beddc4";
        let a = store
            .agreement(&store.grant(owner, &stations, &wf, 60).unwrap())
            .unwrap();
        let id = store.create_execution(&a).unwrap();
        for to in [Status::Configuring, Status::Running, Status::Publishing] {
            store.set_status(&id, to, None).unwrap();
        }
        let result = store.new_result_did().unwrap();
        let receipt =
            crate::receipt::sign(&crate::receipt::ProviderKey::random(), json!({})).unwrap();
        store
            .publish(
                &id,
                &result,
                &json!({"type": "result", "name": "weather result", "owner": owner}),
                &data,
                &receipt,
            )
            .unwrap();
        let mut q = search("weather result");
        assert_eq!(store.search(&q).unwrap().1, 0, "strangers do not find it");
        q.viewer = Some(owner.to_uppercase().replace("0X", "0x"));
        let r = store.search(&q).unwrap();
        assert_eq!(names(&r), ["weather result"]);
        let all = serde_json::to_string(&store.search(&search("")).unwrap().0).unwrap();
        assert!(!all.contains(data.to_str().unwrap()), "a local path leaked");
        // An asset another process registers (the CLI while a server runs)
        // is found by the next search.
        let other = Store::open(store.path()).unwrap();
        other
            .add_algorithm(
                "barometer reader",
                &format!("r/b@sha256:{}", "cd".repeat(32)),
            )
            .unwrap();
        assert_eq!(
            names(&store.search(&search("barometer")).unwrap()),
            ["barometer reader"]
        );
    }

    #[test]
    fn a_stage_naming_an_algorithm_must_run_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let (a, b) = (
            format!("sha256:{}", "aa".repeat(32)),
            format!("sha256:{}", "bb".repeat(32)),
        );
        let ds = store
            .add_dataset("d", &data, std::slice::from_ref(&a), 60)
            .unwrap();
        let algo = store
            .add_algorithm("word count", &format!("r.example/wc:1@{a}"))
            .unwrap();
        assert_eq!(store.algorithm_checksum(&algo).unwrap(), a);
        let (_, ddo) = store.ddo(&algo).unwrap();
        assert_eq!(
            ddo["service"][0]["attributes"]["main"]["algorithm"]["container"],
            json!({"image": "r.example/wc", "tag": "1", "checksum": a})
        );
        let workflow = |checksum: &str, id: &Did| {
            json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "r.example/wc", "tag": "1", "checksum": checksum}},
                 "input": [{"index": 0, "id": ds}], "transformation": {"id": id}}]}}})
        };
        store.add_workflow(&workflow(&a, &algo)).unwrap();
        let p = "$.main.workflow.stages[0].transformation.id";
        assert_eq!(
            store
                .add_workflow(&workflow(&b, &algo))
                .unwrap_err()
                .to_string(),
            format!(
                "workflow {p}: algorithm {algo} is the image {a}, but the stage runs {b}; use the algorithm's checksum or another algorithm"
            )
        );
        assert_eq!(
            store
                .add_workflow(&workflow(&a, &ds))
                .unwrap_err()
                .to_string(),
            format!(
                "workflow {p}: {ds} is not an algorithm asset of this provider (insitu algorithm add registers one)"
            )
        );
        assert!(
            store.add_algorithm("x", "r.example/wc:1").is_err(),
            "a tag alone is refused"
        );
    }
}
