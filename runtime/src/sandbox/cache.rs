//! The compiled-module cache: in memory (ready-to-instantiate `InstancePre`s)
//! and on disk (artifacts this engine compiled, keyed by the module's sha256
//! and the engine's compatibility hash).
//!
//! Only files written by [`ModuleCache::store`] into the provider's cache
//! directory are ever deserialized; bytes that came from a user or an image are
//! always compiled.

use crate::Error;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::Engine;

/// Where a prepared module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheHit {
    /// Already compiled and linked in this process.
    Memory,
    /// Deserialized from the on-disk cache.
    Disk,
    /// Compiled now.
    Compiled,
}

/// One digest's entry: locked while it is being prepared.
type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

/// The single-flight map of prepared modules plus the directory of artifacts.
pub struct ModuleCache<T> {
    dir: Option<PathBuf>,
    slots: Mutex<HashMap<String, Slot<T>>>,
}

impl<T> ModuleCache<T> {
    /// A cache keeping artifacts under `dir/<engine hash>/` when `dir` is given.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created.
    pub fn new(dir: Option<&Path>, engine: &Engine) -> Result<Self, Error> {
        let dir = match dir {
            Some(dir) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                engine.precompile_compatibility_hash().hash(&mut h);
                let dir = dir.join(format!("{:016x}", h.finish()));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io("create module cache", &dir, e))?;
                Some(dir)
            }
            None => None,
        };
        Ok(ModuleCache {
            dir,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Returns the prepared value for `digest`, running `prepare` at most once
    /// at a time per digest (concurrent callers wait for the first).
    /// Failures are not cached.
    pub fn get_or_prepare(
        &self,
        digest: &str,
        prepare: impl FnOnce() -> Result<T, Error>,
    ) -> Result<(Arc<T>, bool), Error> {
        let slot = {
            let mut slots = crate::sync::lock(&self.slots);
            slots.entry(digest.to_string()).or_default().clone()
        };
        let mut slot = crate::sync::lock(&slot);
        if let Some(ready) = &*slot {
            return Ok((ready.clone(), true));
        }
        let ready = Arc::new(prepare()?);
        *slot = Some(ready.clone());
        Ok((ready, false))
    }

    /// The value prepared for `digest`, if it is ready in memory.
    pub fn get(&self, digest: &str) -> Option<Arc<T>> {
        let slot = crate::sync::lock(&self.slots).get(digest)?.clone();
        slot.try_lock().ok()?.clone()
    }

    /// Forgets every prepared module held in memory (the disk cache stays).
    pub fn clear_memory(&self) {
        crate::sync::lock(&self.slots).clear();
    }

    /// Path of the artifact for `digest`, if a disk cache is configured.
    pub fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.as_ref().map(|d| d.join(format!("{hex}.cwasm")))
    }

    /// Writes an artifact atomically (temp file, fsync-free rename).
    /// Failures are logged and otherwise ignored: the cache is an optimisation.
    pub fn store(&self, digest: &str, bytes: &[u8]) {
        let (Some(dir), Some(path)) = (&self.dir, self.artifact_path(digest)) else {
            return;
        };
        let result = tempfile::NamedTempFile::new_in(dir).and_then(|mut tmp| {
            tmp.write_all(bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compiled module to the cache");
        }
    }
}
