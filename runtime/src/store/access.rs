//! Data sharing, the ACCESS service of Nevermined's building blocks: a
//! dataset registered with `access` lists its files in its DDO
//! (`main.files`: index, name relative to the dataset, length) and offers an
//! `access` service; an access agreement lets one consumer download them by
//! index until it expires; every download is recorded (who, when, which file,
//! how many bytes) for the provider.
//!
//! Access agreements live beside compute agreements (same id space: `0x` +
//! 64 hex) in their own table: they name a dataset and no workflow.

use super::{AssetKind, Store, now_ms, parse_address, random_hex32};
use crate::Error;
use crate::workflow::Did;
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The most files a dataset offered for download may list.
pub const MAX_FILES: usize = 100_000;

/// An agreement to download a dataset's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessAgreement {
    /// `0x` + 64 hex, lowercase.
    pub id: String,
    /// Lowercase `0x` address.
    pub consumer: String,
    pub dataset: Did,
    /// Unix seconds.
    pub expires_at: u64,
}

/// One download of a dataset file, as recorded for the provider.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Download {
    pub id: i64,
    pub agreement: String,
    pub consumer: String,
    pub dataset: String,
    /// The file's index in the DDO's `main.files`.
    pub index: u64,
    /// Its name relative to the dataset.
    pub file: String,
    /// Bytes sent.
    pub bytes: u64,
    /// The response reached the file's end (a whole file, or the last part
    /// of a resumed download); false when the client went away before.
    pub complete: bool,
    /// When it started, unix milliseconds.
    pub started_ms: u64,
}

/// The files of dataset directory `root` as the DDO lists them: regular
/// files in byte order of their `/`-separated relative names, each with its
/// index and length. Symbolic links are not followed (a link could lead
/// outside the dataset) and are left out.
///
/// # Errors
/// [`Error::Io`] when a directory cannot be read; [`Error::InvalidJob`] for
/// more than [`MAX_FILES`] files or a name that is not UTF-8.
pub(super) fn list_files(root: &Path) -> Result<Vec<Value>, Error> {
    let mut found: Vec<(String, u64)> = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("list dataset", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list dataset", &dir, e))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .map_err(|e| Error::io("list dataset", &path, e))?;
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(root).expect("under the root");
                let name = rel
                    .to_str()
                    .ok_or_else(|| {
                        Error::InvalidJob(format!(
                            "dataset file {} has a name that is not UTF-8; rename it to offer the dataset for download",
                            path.display()
                        ))
                    })?
                    .replace(std::path::MAIN_SEPARATOR, "/");
                found.push((name, meta.len()));
                if found.len() > MAX_FILES {
                    return Err(Error::InvalidJob(format!(
                        "dataset {} has more than {MAX_FILES} files; offer an archive of it for download instead",
                        root.display()
                    )));
                }
            }
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .enumerate()
        .map(|(i, (name, len))| {
            json!({"index": i, "name": name, "contentType": "application/octet-stream",
                   "contentLength": len.to_string()})
        })
        .collect())
}

/// Whether a dataset DDO offers an `access` service.
pub(super) fn offers_access(ddo: &Value) -> bool {
    ddo["service"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["type"] == "access"))
}

impl AccessAgreement {
    /// Whether it still holds at `now` (unix seconds).
    ///
    /// # Errors
    /// [`Error::Denied`] saying how long ago it expired.
    pub fn live_at(&self, now: u64) -> Result<(), Error> {
        super::live("access agreement", &self.id, self.expires_at, now)
    }
}

impl Store {
    /// Grants `consumer` the right to download the files of `dataset` for
    /// `timeout_secs` from now; returns the agreement id (`0x` + 64 hex).
    ///
    /// # Errors
    /// [`Error::Invalid`] for the address; [`Error::NotFound`] when `dataset`
    /// is not a dataset; [`Error::Denied`] when it offers no access service.
    pub fn grant_access(
        &self,
        consumer: &str,
        dataset: &Did,
        timeout_secs: u64,
    ) -> Result<String, Error> {
        let id = format!("0x{}", random_hex32()?);
        let a = AccessAgreement {
            id: id.clone(),
            consumer: parse_address(consumer)?,
            dataset: dataset.clone(),
            expires_at: now_ms() / 1000 + timeout_secs,
        };
        self.record_access_agreement(&a)?;
        Ok(id)
    }

    /// Records (or updates) an access agreement, e.g. one checked on-chain.
    ///
    /// # Errors
    /// As [`Store::grant_access`].
    pub fn record_access_agreement(&self, a: &AccessAgreement) -> Result<(), Error> {
        if !self.dataset(&a.dataset)?.access {
            return Err(Error::Denied(format!(
                "dataset {} is not offered for download (it was registered without --access); its data stays in situ",
                a.dataset
            )));
        }
        self.conn()
            .execute(
                "INSERT INTO access_agreements (id, consumer, dataset, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET consumer = excluded.consumer, dataset = excluded.dataset, expires_at = excluded.expires_at",
                params![
                    a.id.to_ascii_lowercase(),
                    a.consumer,
                    a.dataset.as_str(),
                    a.expires_at.min(i64::MAX as u64) as i64,
                    now_ms() as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// An access agreement.
    ///
    /// # Errors
    /// [`Error::NotFound`] (naming a compute agreement of the same id when
    /// there is one); [`Error::Store`].
    pub fn access_agreement(&self, id: &str) -> Result<AccessAgreement, Error> {
        let id = id.to_ascii_lowercase();
        let row = self
            .conn()
            .query_row(
                "SELECT consumer, dataset, expires_at FROM access_agreements WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((consumer, dataset, expires_at)) = row else {
            let compute = self.agreement(&id).is_ok();
            return Err(Error::NotFound {
                what: "access agreement",
                id,
                hint: if compute {
                    "; it is a compute agreement, which runs workflows on the data but never downloads it"
                } else {
                    "; the provider grants one with insitu agreement grant --service access"
                },
            });
        };
        Ok(AccessAgreement {
            id,
            consumer,
            dataset: Did::parse(&dataset).map_err(|reason| Error::Store {
                path: self.path.clone(),
                reason,
            })?,
            expires_at: expires_at as u64,
        })
    }

    /// File `index` of dataset `did` offered for download: its path and its
    /// name relative to the dataset.
    ///
    /// # Errors
    /// [`Error::Denied`] when the dataset offers no access; [`Error::NotFound`]
    /// for an index it does not list, or a file gone or moved outside the
    /// dataset since it was registered.
    pub fn dataset_file(&self, did: &Did, index: u64) -> Result<(PathBuf, String), Error> {
        // One read of the DDO on the download path.
        let ddo = self.expect_kind(did, AssetKind::Dataset)?;
        if !offers_access(&ddo) {
            return Err(Error::Denied(format!(
                "dataset {did} is not offered for download (it was registered without --access)"
            )));
        }
        let root = PathBuf::from(self.asset_path(did)?);
        let files = ddo
            .pointer("/service/0/attributes/main/files")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let name = files
            .iter()
            .find(|f| f["index"].as_u64() == Some(index))
            .and_then(|f| f["name"].as_str())
            .ok_or_else(|| Error::NotFound {
                what: "file index",
                id: index.to_string(),
                hint: if files.is_empty() {
                    "; the dataset lists no files"
                } else {
                    "; the dataset's DDO lists its files in service[0].attributes.main.files"
                },
            })?;
        let gone = |why: &str| Error::NotFound {
            what: "dataset file",
            id: format!("{did}/{name} ({why})"),
            hint: "; the provider changed the dataset after registering it",
        };
        let path = root.join(name);
        // A directory on the way replaced by a link must not lead out.
        let real = std::fs::canonicalize(&path).map_err(|_| gone("missing"))?;
        if !real.starts_with(&root) {
            return Err(gone("now outside the dataset"));
        }
        Ok((real, name.to_string()))
    }

    /// Records the start of a download; returns its id for
    /// [`Store::finish_download`].
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn start_download(
        &self,
        agreement: &AccessAgreement,
        index: u64,
        file: &str,
    ) -> Result<i64, Error> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO downloads (agreement, consumer, dataset, file_index, file, bytes, complete, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, ?6)",
            params![
                agreement.id,
                agreement.consumer,
                agreement.dataset.as_str(),
                index as i64,
                file,
                now_ms() as i64
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a download ended: `bytes` sent, `complete` or cut short.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn finish_download(&self, id: i64, bytes: u64, complete: bool) -> Result<(), Error> {
        self.conn()
            .execute(
                "UPDATE downloads SET bytes = ?2, complete = ?3 WHERE id = ?1",
                params![id, bytes.min(i64::MAX as u64) as i64, complete],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Recorded downloads, newest first, of `dataset` (all datasets when
    /// `None`), at most `limit`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn downloads(&self, dataset: Option<&Did>, limit: usize) -> Result<Vec<Download>, Error> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, agreement, consumer, dataset, file_index, file, bytes, complete, started_at FROM downloads
                 WHERE ?1 IS NULL OR dataset = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(
                params![
                    dataset.map(Did::as_str),
                    limit.min(i64::MAX as usize) as i64
                ],
                |r| {
                    Ok(Download {
                        id: r.get(0)?,
                        agreement: r.get(1)?,
                        consumer: r.get(2)?,
                        dataset: r.get(3)?,
                        index: r.get::<_, i64>(4)? as u64,
                        file: r.get(5)?,
                        bytes: r.get::<_, i64>(6)? as u64,
                        complete: r.get(7)?,
                        started_ms: r.get::<_, i64>(8)? as u64,
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
