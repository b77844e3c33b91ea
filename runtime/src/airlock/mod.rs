//! Output control: results leave a provider only through the output policy
//! of the datasets they were computed from — the "safe outputs" of the Five
//! Safes (Desai, Ritchie, Welpton, 2016), as trusted research environments
//! check outputs before release (OpenSAFELY's output checking, DataSHIELD's
//! disclosure controls).
//!
//! - [`policy`]: a dataset's [`OutputPolicy`] (release `auto` or `review`,
//!   size, file types, small counts, copied input) and the strictest of
//!   several.
//! - [`checks`]: the automatic checks over an execution's results *and
//!   logs*, giving a [`Report`] that names files, rows and columns, never
//!   content.
//! - [`winnow`]: copied-input detection by line and 64-byte-run
//!   fingerprints (winnowing, as in MOSS), with an [`Indexes`] cache of the
//!   inputs' fingerprints per dataset version.
//!
//! What the checks catch and miss is in SECURITY.md.

pub mod checks;
pub mod policy;
pub mod winnow;

pub use checks::{Finding, Report, Results, check};
pub use policy::{OutputPolicy, Release};
pub use winnow::Index;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The inputs' fingerprint indexes, one per dataset version (its directory
/// and [`crate::digest::fingerprint`]), built once and kept for the
/// process's life; a new version replaces the old one.
#[derive(Debug, Default)]
pub struct Indexes {
    built: Mutex<HashMap<std::path::PathBuf, Version>>,
}

/// A dataset version's fingerprint and its index.
type Version = ([u8; 32], Arc<Index>);

impl Indexes {
    /// The index of the dataset at `dir`, built now if it changed since;
    /// `version` is its [`crate::digest::fingerprint`] when the caller
    /// has just computed it.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the dataset cannot be listed or read.
    pub fn of(&self, dir: &Path, version: Option<[u8; 32]>) -> Result<Arc<Index>, crate::Error> {
        let version = match version {
            Some(v) => v,
            None => crate::digest::fingerprint(dir)?.0,
        };
        if let Some((v, index)) = crate::sync::lock(&self.built).get(dir)
            && *v == version
        {
            return Ok(index.clone());
        }
        let started = std::time::Instant::now();
        let index = Arc::new(
            Index::build(&[dir]).map_err(|e| crate::Error::io("index the inputs of", dir, e))?,
        );
        tracing::info!(
            dataset = %dir.display(),
            bytes = index.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "inputs fingerprinted for the output checks"
        );
        crate::sync::lock(&self.built).insert(dir.to_path_buf(), (version, index.clone()));
        Ok(index)
    }

    /// One index of several datasets (each cached on its own).
    ///
    /// # Errors
    /// As [`Indexes::of`].
    pub fn union(&self, dirs: &[(&Path, Option<[u8; 32]>)]) -> Result<Arc<Index>, crate::Error> {
        match dirs {
            [(one, v)] => self.of(one, *v),
            _ => {
                let mut all = Index::default();
                for (d, v) in dirs {
                    all.merge(self.of(d, *v)?.as_ref());
                }
                Ok(Arc::new(all))
            }
        }
    }
}
