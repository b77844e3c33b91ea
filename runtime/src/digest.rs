//! Content digests (`sha256:<hex>`), the identity of every blob, module and
//! manifest, and the stat fingerprint of a directory (what changes when any
//! file does). A leaf: the sandbox, the images, the pipeline and the output
//! checks use it.

use crate::Error;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits.
///
/// # Errors
/// [`Error::Reference`] naming what is wrong.
pub fn check_digest(digest: &str) -> Result<(), Error> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Reference {
            reference: digest.to_string(),
            reason: "a checksum is `sha256:` followed by 64 lowercase hex digits".into(),
        })
    }
}

/// A sha256 over every entry under `root` (relative path, mode, size, mtime,
/// inode; sorted), and the newest mtime: what changes when any file does.
///
/// # Errors
/// [`Error::Io`] when a directory cannot be listed.
pub fn fingerprint(root: &Path) -> Result<([u8; 32], SystemTime), Error> {
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    let mut newest = UNIX_EPOCH;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
            if m.is_dir() {
                stack.push(path.clone());
            }
            if let Ok(t) = m.modified() {
                newest = newest.max(t);
            }
            entries.push(format!(
                "{}\0{:o}\0{}\0{}.{}\0{}",
                path.strip_prefix(root).unwrap_or(&path).display(),
                m.mode(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            ));
        }
    }
    entries.sort();
    let mut h = Sha256::new();
    for e in &entries {
        h.update(e.as_bytes());
        h.update(b"\n");
    }
    Ok((h.finalize().into(), newest))
}
