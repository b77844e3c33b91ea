//! Content digests (`sha256:<hex>`), the identity of every blob, module and
//! manifest. A leaf: the sandbox and the image code both use it.

use crate::Error;
use sha2::{Digest, Sha256};

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
