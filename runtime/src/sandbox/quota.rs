//! Output and log quotas, enforced while the guest runs.
//!
//! A [`Budget`] tracks one writable directory. Every operation that can put
//! bytes on disk is *charged* before it happens (a write of `n` bytes charges
//! `n`; creating a file, directory or link charges [`ENTRY_COST`]). While the
//! running total of charges stays under the quota nothing else is done; when a
//! charge would cross it, the directory is rescanned to learn its real usage
//! (overwrites and deletions do not grow it) and the operation is refused —
//! and the guest stopped — only if real usage plus the charge exceeds the quota.
//! So the disk never holds more than the quota for the directory.

use crate::outcome::Outcome;
use crate::units::format_size;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// What every directory entry costs against a quota: the block it occupies.
/// A file of `n` bytes therefore counts `n + 4096`, which bounds the disk it
/// really uses (data rounded up to whole blocks) from above.
pub const ENTRY_COST: u64 = 4096;

/// What a directory holds, links not followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of the apparent sizes of regular files.
    pub file_bytes: u64,
    /// Number of entries below the root (files, directories, links, others).
    pub entries: u64,
}

impl Usage {
    /// What the usage counts against a quota.
    pub fn charged(&self) -> u64 {
        self.file_bytes
            .saturating_add(self.entries.saturating_mul(ENTRY_COST))
    }
}

/// Walks `root` without following links. Entries that vanish during the walk
/// (the guest deleting them) are skipped.
pub fn scan(root: &Path) -> Usage {
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            usage.entries += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                usage.file_bytes = usage.file_bytes.saturating_add(meta.len());
            }
        }
    }
    usage
}

/// The quota of one writable directory. Shared between the WASI guards and the
/// stdout/stderr streams, hence used through [`SharedBudget`].
#[derive(Debug)]
pub struct Budget {
    root: PathBuf,
    quota: u64,
    /// Upper bound of the directory's usage against the quota.
    charged: u64,
    /// Something was written since the last scan.
    dirty: bool,
    exceeded: Option<String>,
    outcome: Outcome,
}

pub type SharedBudget = Arc<Mutex<Budget>>;

impl Budget {
    /// A budget for `root`, which the caller has found empty: nothing is
    /// charged yet (the sandbox refuses a non-empty output or logs dir before
    /// it makes the budgets, so scanning it again here would only cost a
    /// directory read per run).
    pub fn empty(root: PathBuf, quota: u64, outcome: Outcome) -> SharedBudget {
        Arc::new(Mutex::new(Budget {
            root,
            quota,
            charged: 0,
            dirty: false,
            exceeded: None,
            outcome,
        }))
    }

    /// Charges `bytes` that are about to be written.
    ///
    /// # Errors
    /// A message for the guest's trap when real usage plus `bytes` would exceed
    /// the quota; the budget then stays exceeded.
    pub fn charge(&mut self, bytes: u64) -> Result<(), String> {
        if let Some(why) = &self.exceeded {
            return Err(why.clone());
        }
        self.dirty = true;
        if self.charged.saturating_add(bytes) <= self.quota {
            self.charged += bytes;
            return Ok(());
        }
        let actual = scan(&self.root).charged();
        if actual.saturating_add(bytes) <= self.quota {
            self.charged = actual + bytes;
            return Ok(());
        }
        Err(self.exceed(actual, bytes))
    }

    /// Rescans if anything was written since the last scan; catches growth no
    /// charge sees (sparse files made by seeking or truncating upwards).
    ///
    /// # Errors
    /// As [`Budget::charge`].
    pub fn check(&mut self) -> Result<(), String> {
        if let Some(why) = &self.exceeded {
            return Err(why.clone());
        }
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        let actual = scan(&self.root).charged();
        self.charged = actual;
        if actual > self.quota {
            return Err(self.exceed(actual, 0));
        }
        Ok(())
    }

    /// Refuses a file size the quota can never hold.
    pub fn check_size(&mut self, size: u64) -> Result<(), String> {
        self.dirty = true;
        if size.saturating_add(ENTRY_COST) > self.quota {
            return Err(self.exceed(size, 0));
        }
        Ok(())
    }

    fn exceed(&mut self, usage: u64, more: u64) -> String {
        let what = match self.outcome {
            Outcome::LogQuotaExceeded => "log",
            _ => "output",
        };
        let why = format!(
            "{what} quota of {} exceeded: the guest used {} and tried to add {}; ask for a larger --{what}-quota",
            format_size(self.quota),
            format_size(usage),
            format_size(more),
        );
        self.exceeded = Some(why.clone());
        why
    }

    /// Why the budget was exceeded, if it was.
    pub fn exceeded(&self) -> Option<&str> {
        self.exceeded.as_deref()
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
}

/// Locks a budget; a poisoned lock (a panic elsewhere) still yields the data.
pub fn lock(b: &SharedBudget) -> std::sync::MutexGuard<'_, Budget> {
    crate::sync::lock(b)
}

/// A guest's stdout or stderr: a file in the logs dir, every write charged to
/// the logs budget first.
#[derive(Clone)]
pub struct LogStream {
    file: Arc<File>,
    budget: SharedBudget,
}

impl LogStream {
    pub fn new(file: File, budget: SharedBudget) -> Self {
        LogStream {
            file: Arc::new(file),
            budget,
        }
    }

    fn write_charged(&self, buf: &[u8]) -> Result<(), Result<String, io::Error>> {
        lock(&self.budget).charge(buf.len() as u64).map_err(Ok)?;
        (&*self.file).write_all(buf).map_err(Err)
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_charged(&bytes).map_err(|e| match e {
            Ok(quota) => StreamError::Trap(wasmtime::format_err!(quota)),
            Err(io) => StreamError::LastOperationFailed(wasmtime::format_err!(io)),
        })
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.write_charged(buf)
                .map(|()| buf.len())
                .map_err(|e| match e {
                    Ok(quota) => io::Error::other(quota),
                    Err(io) => io,
                }),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_rescan_before_refusing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Budget::empty(
            dir.path().into(),
            3 * ENTRY_COST,
            Outcome::OutputQuotaExceeded,
        );
        let mut b = lock(&b);
        // Two files of 1 KiB: 2 * (4 KiB + 1 KiB) charged = 10 KiB < 12 KiB.
        b.charge(ENTRY_COST + 1024).unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 1024]).unwrap();
        b.charge(ENTRY_COST + 1024).unwrap();
        // The guest rewrites a: charged grows past the quota, the rescan shows 5 KiB.
        b.charge(1024).unwrap();
        b.charge(1024).unwrap();
        // Real usage 5 KiB + 8 KiB more does not fit.
        let e = b.charge(8192).unwrap_err();
        assert!(e.starts_with("output quota of 12KiB exceeded"), "{e}");
        assert!(b.charge(1).is_err(), "an exceeded budget stays exceeded");
    }

    #[test]
    fn scan_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), [0u8; 100]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("l")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert_eq!(
            scan(dir.path()),
            Usage {
                file_bytes: 100,
                entries: 3
            }
        );
    }
}
