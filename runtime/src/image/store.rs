//! The content-addressed blob store: `<root>/sha256/<hex>`.
//!
//! Blobs are streamed to a temporary file in `<root>/tmp`, counted and hashed
//! on the way, and renamed into place only when size and digest match, so a
//! reader never sees a partial or wrong blob and a failed fetch leaves nothing
//! behind. One fetch per digest runs at a time; concurrent callers wait and
//! then find the blob present.

use crate::Error;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A stream of a blob's bytes.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    inflight: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    fetches: Arc<AtomicU64>,
}

impl BlobStore {
    /// Opens (creating) a store at `root` and removes temporary files a
    /// crashed process may have left.
    ///
    /// # Errors
    /// [`Error::Io`] when the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore, Error> {
        let root = root.into();
        for dir in ["sha256", "tmp"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create blob store", &d, e))?;
        }
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(BlobStore {
            root,
            inflight: Arc::default(),
            fetches: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.root
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// How many blobs were fetched from a source since the store was opened.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Reads a stored blob.
    ///
    /// # Errors
    /// [`Error::Io`] when it is missing or unreadable.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let p = self.path(digest);
        std::fs::read(&p).map_err(|e| Error::io("read blob", p, e))
    }

    /// Reads a stored blob if present.
    ///
    /// # Errors
    /// [`Error::Io`] when present but unreadable.
    pub fn read_if_present(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        match std::fs::read(self.path(digest)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read blob", self.path(digest), e)),
        }
    }

    /// Stores bytes whose digest the caller has verified.
    ///
    /// # Errors
    /// [`Error::Io`] when writing fails (nothing is left behind).
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), Error> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(|e| Error::io("create temp blob", &tmp_dir, e))?;
        tmp.write_all(bytes)
            .map_err(|e| Error::io("write temp blob", tmp.path(), e))?;
        let dest = self.path(digest);
        tmp.persist(&dest)
            .map_err(|e| Error::io("store blob", dest, e.error))?;
        Ok(())
    }

    fn slot(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut inflight = crate::sync::lock(&self.inflight);
        inflight.entry(digest.to_string()).or_default().clone()
    }

    /// Returns the small blob `digest` (a manifest) from the store, or fetches
    /// it with `open`, checks it is at most `max` bytes and hashes to `digest`,
    /// and stores it. One fetch per digest at a time.
    ///
    /// # Errors
    /// [`Error::BlobSize`], [`Error::DigestMismatch`] (naming `what`), the
    /// source's errors, [`Error::Io`].
    pub async fn fetch_bytes<F, Fut>(
        &self,
        digest: &str,
        max: u64,
        what: &str,
        open: F,
    ) -> Result<Vec<u8>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, Error>>,
    {
        let slot = self.slot(digest);
        let _guard = slot.lock().await;
        if let Some(bytes) = self.read_if_present(digest)? {
            return Ok(bytes);
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let bytes = open().await?;
        if bytes.len() as u64 > max {
            return Err(Error::BlobSize {
                what: what.to_string(),
                reason: format!("{} bytes, more than the {max} it may have", bytes.len()),
            });
        }
        let actual = super::sha256_digest(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        self.put_bytes(digest, &bytes)?;
        Ok(bytes)
    }

    /// Fetches `digest` of `size` bytes from the stream `open` returns, unless
    /// it is already stored; verifies and stores it.
    ///
    /// # Errors
    /// [`Error::BlobSize`] when the stream is longer or shorter than `size`;
    /// [`Error::DigestMismatch`] when the bytes hash differently;
    /// [`Error::Source`] when the stream fails; [`Error::Io`] for local I/O.
    pub async fn fetch<F, Fut>(&self, digest: &str, size: u64, open: F) -> Result<(), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BlobStream, Error>>,
    {
        let slot = self.slot(digest);
        let _guard = slot.lock().await;
        if self.contains(digest) {
            return Ok(());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut stream = open().await?;
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(|e| Error::io("create temp blob", &tmp_dir, e))?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let what = || format!("blob {digest}");
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The verdict comes from the bytes received, whatever the
                // transport (which may verify too) says about them.
                Err(e) if received < size => {
                    return Err(Error::BlobSize {
                        what: what(),
                        reason: format!(
                            "truncated: received {received} of the {size} bytes its descriptor declares ({e})"
                        ),
                    });
                }
                Err(e) => {
                    let actual = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
                    if actual != digest {
                        return Err(Error::DigestMismatch {
                            what: what(),
                            expected: digest.to_string(),
                            actual,
                        });
                    }
                    return Err(Error::Source {
                        source_name: what(),
                        reason: format!("the transfer failed after {received} bytes: {e}"),
                    });
                }
            };
            received += chunk.len() as u64;
            if received > size {
                return Err(Error::BlobSize {
                    what: what(),
                    reason: format!(
                        "the source sent more than the {size} bytes its descriptor declares"
                    ),
                });
            }
            hasher.update(&chunk);
            tmp.write_all(&chunk)
                .map_err(|e| Error::io("write temp blob", tmp.path(), e))?;
        }
        if received < size {
            return Err(Error::BlobSize {
                what: what(),
                reason: format!(
                    "truncated: received {received} of the {size} bytes its descriptor declares"
                ),
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: what(),
                expected: digest.to_string(),
                actual,
            });
        }
        let dest = self.path(digest);
        tmp.persist(&dest)
            .map_err(|e| Error::io("store blob", dest, e.error))?;
        Ok(())
    }
}
