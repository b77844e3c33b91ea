//! Signed receipts: a canonical JSON document describing an execution, its
//! sha256, and the provider's EIP-191 (`personal_sign`) signature of that hash
//! with its secp256k1 key. Anyone with the provider's address can verify a
//! receipt ([`verify`]); the hash is what can be committed on-chain.

use crate::Error;
use alloy_primitives::{Address, B256, Signature};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The provider's signing key.
#[derive(Clone)]
pub struct ProviderKey(PrivateKeySigner);

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "ProviderKey({})", self.address())
    }
}

impl ProviderKey {
    /// A key from `0x`-prefixed (or bare) hex.
    ///
    /// # Errors
    /// [`Error::Invalid`] when it is not a valid secp256k1 private key.
    pub fn from_hex(hex_key: &str) -> Result<ProviderKey, Error> {
        hex_key
            .trim()
            .parse::<PrivateKeySigner>()
            .map(ProviderKey)
            .map_err(|_| Error::Invalid {
                what: "provider key",
                value: "(hidden)".into(),
                reason: "expected 32 bytes of hex, a valid secp256k1 private key",
            })
    }

    /// Loads the key at `path`, or creates a random one there (mode 0600).
    ///
    /// # Errors
    /// [`Error::Io`] for file failures; [`Error::Invalid`] for a bad key file.
    pub fn load_or_create(path: &Path) -> Result<ProviderKey, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => ProviderKey::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ProviderKey(PrivateKeySigner::random());
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| Error::io("create the provider key", path, e))?;
                writeln!(f, "0x{}", hex::encode(key.0.to_bytes()))
                    .map_err(|e| Error::io("write the provider key", path, e))?;
                Ok(key)
            }
            Err(e) => Err(Error::io("read the provider key", path, e)),
        }
    }

    /// The signer, for sending transactions with this key.
    pub fn signer(&self) -> PrivateKeySigner {
        self.0.clone()
    }

    /// The provider's address (EIP-55 checksummed).
    pub fn address(&self) -> String {
        self.0.address().to_checksum(None)
    }

    /// EIP-191 `personal_sign` of `message`: 65 bytes r‖s‖v as `0x` hex.
    ///
    /// # Errors
    /// [`Error::Engine`] if signing fails (it does not for valid keys).
    pub fn personal_sign(&self, message: &[u8]) -> Result<String, Error> {
        let sig = self
            .0
            .sign_message_sync(message)
            .map_err(|e| Error::Engine(format!("signing failed: {e}")))?;
        Ok(format!("0x{}", hex::encode(sig.as_bytes())))
    }

    /// Signs a 32-byte digest as it is (no prefix; for EIP-712 signing hashes):
    /// 65 bytes r‖s‖v as `0x` hex.
    ///
    /// # Errors
    /// [`Error::Engine`] if signing fails (it does not for valid keys).
    pub fn sign_hash(&self, hash: &[u8; 32]) -> Result<String, Error> {
        let sig = self
            .0
            .sign_hash_sync(&B256::from(*hash))
            .map_err(|e| Error::Engine(format!("signing failed: {e}")))?;
        Ok(format!("0x{}", hex::encode(sig.as_bytes())))
    }
}

/// The address that signed the 32-byte digest `hash` (as [`ProviderKey::sign_hash`] does).
///
/// # Errors
/// [`Error::Invalid`] for malformed or unrecoverable signatures.
pub fn recover_hash(hash: &[u8; 32], signature: &str) -> Result<Address, Error> {
    let invalid = || Error::Invalid {
        what: "signature",
        value: signature.to_string(),
        reason: "expected 65 bytes r||s||v as hex",
    };
    let bytes = hex::decode(signature.trim_start_matches("0x")).map_err(|_| invalid())?;
    let sig = Signature::from_raw(&bytes).map_err(|_| invalid())?;
    sig.recover_address_from_prehash(&B256::from(*hash))
        .map_err(|_| invalid())
}

/// The address that `personal_sign`ed `message` with `signature` (65 bytes hex).
///
/// # Errors
/// [`Error::Invalid`] for malformed or unrecoverable signatures.
pub fn recover_personal(message: &[u8], signature: &str) -> Result<Address, Error> {
    let invalid = || Error::Invalid {
        what: "signature",
        value: signature.to_string(),
        reason: "expected 65 bytes r||s||v as hex from personal_sign",
    };
    let bytes = hex::decode(signature.trim_start_matches("0x")).map_err(|_| invalid())?;
    let sig = Signature::from_raw(&bytes).map_err(|_| invalid())?;
    sig.recover_address_from_msg(message).map_err(|_| invalid())
}

/// A signed receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The receipt document.
    pub body: Value,
    /// `0x` + sha256 of the canonical JSON of `body`.
    pub hash: String,
    /// `personal_sign` of the 32 hash bytes by the provider.
    pub signature: String,
    /// The provider's address.
    pub signer: String,
}

/// JSON with object keys sorted at every level and no insignificant
/// whitespace; the bytes that are hashed.
pub fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// Signs `body` with `key`.
///
/// # Errors
/// As [`ProviderKey::personal_sign`].
pub fn sign(key: &ProviderKey, body: Value) -> Result<Receipt, Error> {
    let hash = Sha256::digest(canonical(&body).as_bytes());
    Ok(Receipt {
        signature: key.personal_sign(&hash)?,
        hash: format!("0x{}", hex::encode(hash)),
        signer: key.address(),
        body,
    })
}

/// Checks `receipt`: its hash matches its body and its signature was made by
/// its signer. Returns the signer's address.
///
/// # Errors
/// [`Error::DigestMismatch`] for a body that does not hash to `hash`;
/// [`Error::Denied`] when the signature is not the signer's.
pub fn verify(receipt: &Receipt) -> Result<Address, Error> {
    let hash = Sha256::digest(canonical(&receipt.body).as_bytes());
    let actual = format!("0x{}", hex::encode(hash));
    if actual != receipt.hash {
        return Err(Error::DigestMismatch {
            what: "the receipt body".into(),
            expected: receipt.hash.clone(),
            actual,
        });
    }
    let signer = recover_personal(&B256::from_slice(&hash).0, &receipt.signature)?;
    if signer.to_checksum(None) != receipt.signer {
        return Err(Error::Denied(format!(
            "the receipt is signed by {}, not by {}",
            signer.to_checksum(None),
            receipt.signer
        )));
    }
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn receipts_verify_and_tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = ProviderKey::load_or_create(&dir.path().join("provider.key")).unwrap();
        let again = ProviderKey::load_or_create(&dir.path().join("provider.key")).unwrap();
        assert_eq!(key.address(), again.address(), "the key persists");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("provider.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(!format!("{key:?}").contains(&hex::encode(key.0.to_bytes())));

        let r = sign(&key, json!({"b": [1, {"z": 1, "a": 2}], "a": "x"})).unwrap();
        assert_eq!(canonical(&r.body), r#"{"a":"x","b":[1,{"a":2,"z":1}]}"#);
        assert_eq!(verify(&r).unwrap().to_checksum(None), key.address());

        let mut tampered = r.clone();
        tampered.body["a"] = "y".into();
        assert!(
            verify(&tampered)
                .unwrap_err()
                .to_string()
                .starts_with("the receipt body has digest 0x")
        );
        let mut forged = r.clone();
        forged.signer = ProviderKey(PrivateKeySigner::random()).address();
        assert!(
            verify(&forged)
                .unwrap_err()
                .to_string()
                .starts_with("not permitted: the receipt is signed by")
        );
    }

    #[test]
    fn personal_sign_matches_known_vectors() {
        // Hardhat/anvil account #0.
        let key = ProviderKey::from_hex(
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
        )
        .unwrap();
        assert_eq!(key.address(), "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        let sig = key.personal_sign(b"hello").unwrap();
        assert_eq!(
            recover_personal(b"hello", &sig).unwrap().to_checksum(None),
            key.address()
        );
        assert!(ProviderKey::from_hex("0x1234").is_err());
    }
}
