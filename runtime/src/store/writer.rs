//! Group commit: the durable writes of many callers share one SQLite commit.
//!
//! One thread (`insitu-store-writer`) owns the store's write connection
//! (WAL, `synchronous=FULL`). A caller hands it a piece of work, a closure
//! over the connection, and is answered once the piece is durable. The
//! thread takes every piece that is waiting (at most [`MAX_BATCH`]) and
//! 1. makes the files the pieces name durable first, with one `syncfs(2)` per
//!    filesystem other than the database's for the whole batch (a result's
//!    files are on disk before the database says it exists);
//! 2. runs each piece inside its own savepoint, so a refused piece (a
//!    transition the rules forbid) is rolled back alone;
//! 3. commits once — one flush for the whole batch: SQLite's sync of the WAL,
//!    made a `syncfs` of the database's filesystem when results on it wait
//!    (see `vfs`), so files and commit share it — and only then answers every
//!    caller, each with its own result.
//!
//! While one batch is being synced the next callers queue, so batches grow
//! with the load by themselves: the write groups of RocksDB and the group
//! commit of PostgreSQL. Under load that is not enough (a flush here takes
//! ~0.3 ms, so it finds two or three executions waiting), so, as with
//! PostgreSQL's `commit_delay` and `commit_siblings`, when at least
//! [`SIBLINGS`] executions are active (the gauge [`Store::hold_commits`] is
//! given) a batch holding a durable write waits up to [`COMMIT_DELAY`] after
//! that write arrived for the others to join — or until every active
//! execution has a write in it. One execution alone never waits.
//!
//! A write is either *durable* (the default) or *volatile*: an execution's
//! intermediate statuses (`configuring`, `running`, `publishing`) are worth
//! nothing after a crash, since recovery fails every execution that had not
//! ended. A batch of only volatile writes commits with `synchronous=NORMAL`:
//! into the WAL without an fsync, visible to readers at once, and durable with
//! the next durable commit (whose fsync of the WAL covers every frame before
//! it) or checkpoint (which SQLite syncs in either mode). A batch holding any
//! durable write commits with `synchronous=FULL`. SQLite makes a WAL commit
//! visible to other connections only after its frames are written and, with
//! `FULL`, synced (`sqlite3WalFrames` writes the wal-index header last), so
//! no reader ever sees a durable write that is not yet on disk.

use super::vfs;
use crate::Error;
use rusqlite::Connection;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most pieces committed together.
pub const MAX_BATCH: usize = 1024;

/// How long a durable write may wait for company under load (see the
/// module documentation); `INSITU_COMMIT_DELAY_US` overrides it.
pub const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(4);

/// Active executions from which durable writes wait for company.
pub const SIBLINGS: usize = 4;

/// What the writer has done since the store was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Pieces of work committed or refused.
    pub writes: u64,
    /// Durable commits: each one fsync of the WAL.
    pub commits: u64,
    /// Commits of volatile writes alone: no fsync.
    pub volatile_commits: u64,
    /// `syncfs(2)` calls made for result files on another filesystem than
    /// the database's (or when a commit wrote nothing).
    pub syncs: u64,
    /// Durable commits whose WAL sync was a `syncfs` that also flushed the
    /// results on the database's filesystem (see `vfs`).
    pub syncs_with_commit: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
    volatile_commits: AtomicU64,
    syncs: AtomicU64,
    syncs_with_commit: AtomicU64,
}

/// Builds the error every caller of a failed batch gets.
type Failure = Arc<dyn Fn() -> Error + Send + Sync>;

/// One caller's piece of work, type-erased for the queue.
trait Piece: Send {
    /// Runs the work on `conn`; false when it failed (it is rolled back).
    fn apply(&mut self, conn: &Connection, path: &Path) -> bool;
    /// Answers the caller: its own result, or `failure` when the batch did
    /// not reach the disk.
    fn answer(self: Box<Self>, failure: Option<&Failure>);
}

struct Typed<T, W, R> {
    work: Option<W>,
    result: Option<Result<T, Error>>,
    reply: R,
}

impl<T, W, R> Piece for Typed<T, W, R>
where
    T: Send,
    W: FnOnce(&Connection, &Path) -> Result<T, Error> + Send,
    R: FnOnce(Result<T, Error>) + Send,
{
    fn apply(&mut self, conn: &Connection, path: &Path) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let r = work(conn, path);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn answer(self: Box<Self>, failure: Option<&Failure>) {
        let r = match (failure, self.result) {
            (Some(f), _) => Err(f()),
            (None, Some(r)) => r,
            (None, None) => Err(Error::Engine("a store write was never run".into())),
        };
        (self.reply)(r)
    }
}

struct Job {
    piece: Box<dyn Piece>,
    /// A directory whose filesystem must be synced before the commit.
    sync: Option<PathBuf>,
    kind: Kind,
    /// When it was submitted.
    at: Instant,
}

/// How durable a write must be when its caller is answered; see the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// On disk: the commit is synced (and the files it names before it).
    Durable,
    /// Committed and visible; on disk with the next sync.
    Volatile,
}

/// The answer to one submitted write; see the module documentation.
#[derive(Debug)]
pub struct Ack<T>(tokio::sync::oneshot::Receiver<Result<T, Error>>);

fn writer_gone() -> Error {
    Error::Engine("the store's writer thread has stopped; restart insitu".into())
}

impl<T> Ack<T> {
    /// Waits until the write is durable (or refused).
    ///
    /// # Errors
    /// The write's own error, or the batch's when it could not be committed.
    pub async fn done(self) -> Result<T, Error> {
        self.0.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// The answer if it has come, without waiting.
    pub fn ready(&mut self) -> Option<Result<T, Error>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(writer_gone())),
        }
    }
}

/// The sending side, held by the store; dropping it ends the thread once
/// the queued writes are committed.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    /// The active executions' gauge, once given.
    gauge: Gauge,
}

/// The count of active executions the commit delay looks at.
type Gauge = Arc<Mutex<Option<Arc<AtomicUsize>>>>;

impl Writer {
    /// Starts the writer thread on `conn`, the store at `path`; `durable`
    /// false skips the file syncs (with SQLite's `synchronous=NORMAL`).
    pub(crate) fn start(conn: Connection, path: PathBuf, durable: bool) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let gauge = Gauge::default();
        let (c, g) = (counters.clone(), gauge.clone());
        std::thread::Builder::new()
            .name("insitu-store-writer".into())
            .spawn(move || run(conn, &path, &rx, &c, &g, durable))?;
        Ok(Writer {
            jobs,
            counters,
            gauge,
        })
    }

    /// Makes durable writes wait for company while `active` (executions
    /// queued or running) is at least [`SIBLINGS`].
    pub(crate) fn hold_commits(&self, active: Arc<AtomicUsize>) {
        *crate::sync::lock(&self.gauge) = Some(active);
    }

    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            volatile_commits: self.counters.volatile_commits.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            syncs_with_commit: self.counters.syncs_with_commit.load(Ordering::Relaxed),
        }
    }

    fn send<T: Send + 'static>(
        &self,
        sync: Option<PathBuf>,
        kind: Kind,
        work: impl FnOnce(&Connection, &Path) -> Result<T, Error> + Send + 'static,
        reply: impl FnOnce(Result<T, Error>) + Send + 'static,
    ) {
        let piece = Box::new(Typed {
            work: Some(work),
            result: None,
            reply,
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job {
            piece,
            sync,
            kind,
            at: Instant::now(),
        }) {
            job.piece.answer(Some(&(Arc::new(writer_gone) as Failure)));
        }
    }

    /// Queues `work` and returns at once; the [`Ack`] answers as `kind`
    /// says (see the module documentation). With `sync`, the filesystem
    /// holding that directory is synced before the commit.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        sync: Option<PathBuf>,
        kind: Kind,
        work: impl FnOnce(&Connection, &Path) -> Result<T, Error> + Send + 'static,
    ) -> Ack<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(sync, kind, work, move |r| {
            let _ = tx.send(r);
        });
        Ack(rx)
    }

    /// Runs `work` and blocks the calling thread until it is durable.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        sync: Option<PathBuf>,
        work: impl FnOnce(&Connection, &Path) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(sync, Kind::Durable, work, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(writer_gone()))
    }
}

/// An SQLite failure of `path` as the store reports it.
pub(crate) fn sql_error(path: &Path, e: &rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::DiskFull {
            action: "write the database".into(),
            path: path.to_path_buf(),
        };
    }
    Error::Store {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn failure_of_sql(path: &Path, e: rusqlite::Error) -> Failure {
    let path = path.to_path_buf();
    let e = Arc::new(e);
    Arc::new(move || sql_error(&path, &e))
}

/// The writer thread: batches until every sender is gone.
fn run(
    conn: Connection,
    path: &Path,
    rx: &mpsc::Receiver<Job>,
    counters: &Counters,
    gauge: &Gauge,
    durable: bool,
) {
    let delay = commit_delay();
    // The database's filesystem: results on it are flushed by the commit's
    // own WAL sync (see `vfs`), not by a syncfs of their own.
    let db_dev = path
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .map(|m| m.dev());
    // The connection's `synchronous` setting: FULL when durable (see
    // `Store::open`), NORMAL otherwise.
    let mut full_sync = durable;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let drain = |batch: &mut Vec<Job>| {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch);
        let active = crate::sync::lock(gauge)
            .as_ref()
            .map_or(0, |g| g.load(Ordering::Relaxed));
        if durable
            && active >= SIBLINGS
            && !delay.is_zero()
            && let Some(first) = durables(&batch).map(|j| j.at).min()
        {
            // Under load: wait for company, from the first durable write on.
            let deadline = first + delay;
            let mut waiting = durables(&batch).count();
            while waiting < active && batch.len() < MAX_BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(job) = rx.recv_timeout(left) else {
                    break;
                };
                let from = batch.len();
                batch.push(job);
                drain(&mut batch);
                waiting += durables(&batch[from..]).count();
            }
        }
        let full = durable && batch.iter().any(|j| j.kind == Kind::Durable);
        if full != full_sync {
            let pragma = if full {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            if let Err(e) = conn.execute_batch(pragma) {
                let f = failure_of_sql(path, e);
                for job in batch {
                    job.piece.answer(Some(&f));
                }
                continue;
            }
            full_sync = full;
        }
        if !durable {
            for job in &mut batch {
                job.sync = None;
            }
        }
        counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (synced, with_commit) = sync_files(batch, counters, db_dev);
        let mut pieces = Vec::with_capacity(synced.len());
        for (job, failure) in synced {
            match failure {
                None => pieces.push(job.piece),
                Some(f) => job.piece.answer(Some(&f)),
            }
        }
        if pieces.is_empty() {
            continue;
        }
        match commit(&conn, path, &mut pieces, full && with_commit, counters) {
            Ok(()) => {
                let n = if full {
                    &counters.commits
                } else {
                    &counters.volatile_commits
                };
                n.fetch_add(1, Ordering::Relaxed);
                for piece in pieces {
                    piece.answer(None);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let f = failure_of_sql(path, e);
                for piece in pieces {
                    piece.answer(Some(&f));
                }
            }
        }
    }
}

/// The durable writes among `jobs`.
fn durables(jobs: &[Job]) -> impl Iterator<Item = &Job> {
    jobs.iter().filter(|j| j.kind == Kind::Durable)
}

/// [`COMMIT_DELAY`], or `INSITU_COMMIT_DELAY_US` microseconds (0: none).
fn commit_delay() -> Duration {
    std::env::var("INSITU_COMMIT_DELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(COMMIT_DELAY, Duration::from_micros)
}

/// Runs `pieces` in one transaction, each in a savepoint, and commits;
/// with `flush`, the commit's WAL sync flushes the database's whole
/// filesystem (see `vfs`), the results written before included.
fn commit(
    conn: &Connection,
    path: &Path,
    pieces: &mut [Box<dyn Piece>],
    flush: bool,
    counters: &Counters,
) -> Result<(), rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for piece in pieces.iter_mut() {
        conn.execute_batch("SAVEPOINT piece")?;
        if piece.apply(conn, path) {
            conn.execute_batch("RELEASE piece")?;
        } else {
            conn.execute_batch("ROLLBACK TO piece; RELEASE piece")?;
        }
    }
    let flushes = vfs::syncfs_done();
    vfs::syncfs_next(flush);
    let done = conn.execute_batch("COMMIT");
    vfs::syncfs_next(false);
    done?;
    if vfs::syncfs_done() != flushes {
        counters.syncs_with_commit.fetch_add(1, Ordering::Relaxed);
    } else if flush {
        // SQLite did not sync the WAL (the pieces wrote nothing): flush the
        // results before anyone is told they are durable.
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        crate::datadir::syncfs(path).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                Some(format!("syncfs of the results' filesystem failed: {e}")),
            )
        })?;
    }
    Ok(())
}

/// Syncs each filesystem the batch names once, except the database's own
/// (`db_dev`: flushed by the commit, see `vfs`); pairs every job with the
/// failure of its filesystem's sync, if any, and says whether the commit
/// must flush the database's filesystem.
fn sync_files(
    batch: Vec<Job>,
    counters: &Counters,
    db_dev: Option<u64>,
) -> (Vec<(Job, Option<Failure>)>, bool) {
    // Filesystem (device) → the outcome of syncing it.
    let mut synced: Vec<(u64, Option<Failure>)> = Vec::new();
    let mut with_commit = false;
    let jobs = batch
        .into_iter()
        .map(|job| {
            let Some(dir) = &job.sync else {
                return (job, None);
            };
            let dev = match std::fs::metadata(dir) {
                Ok(m) => m.dev(),
                Err(e) => {
                    let f = io_failure("inspect", dir, e);
                    return (job, Some(f));
                }
            };
            if Some(dev) == db_dev {
                with_commit = true;
                return (job, None);
            }
            if let Some((_, f)) = synced.iter().find(|(d, _)| *d == dev) {
                let f = f.clone();
                return (job, f);
            }
            counters.syncs.fetch_add(1, Ordering::Relaxed);
            let f = crate::datadir::syncfs(dir)
                .err()
                .map(|e| io_failure("sync", dir, e));
            synced.push((dev, f.clone()));
            (job, f)
        })
        .collect();
    (jobs, with_commit)
}

fn io_failure(action: &'static str, dir: &Path, e: std::io::Error) -> Failure {
    let (dir, kind, os, msg) = (dir.to_path_buf(), e.kind(), e.raw_os_error(), e.to_string());
    Arc::new(move || {
        let e = match os {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(kind, msg.clone()),
        };
        Error::io(action, &dir, e)
    })
}
