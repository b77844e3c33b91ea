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

    /// A fresh random key (from the OS's CSPRNG).
    pub fn random() -> ProviderKey {
        ProviderKey(PrivateKeySigner::random())
    }

    /// Loads the key at `path`, or creates a random one there (mode 0600).
    ///
    /// # Errors
    /// [`Error::Io`] for file failures; [`Error::Invalid`] for a bad key file.
    pub fn load_or_create(path: &Path) -> Result<ProviderKey, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => ProviderKey::parse_file(path, &text, None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ProviderKey::random();
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

    /// The key in `path`: hex, or an encrypted keystore (JSON) opened with
    /// `password`.
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Invalid`] for bad hex;
    /// [`Error::Keystore`] for a keystore without a password or with the
    /// wrong one.
    pub fn open(path: &Path, password: Option<&str>) -> Result<ProviderKey, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("read the key file", path, e))?;
        ProviderKey::parse_file(path, &text, password)
    }

    fn parse_file(path: &Path, text: &str, password: Option<&str>) -> Result<ProviderKey, Error> {
        if !text.trim_start().starts_with('{') {
            return ProviderKey::from_hex(text);
        }
        match password {
            Some(p) => ProviderKey::from_keystore(path, p),
            None => Err(Error::Keystore {
                path: path.to_path_buf(),
                reason: "is an encrypted keystore; set its password in INSITU_KEYSTORE_PASSWORD"
                    .into(),
            }),
        }
    }

    /// Decrypts an encrypted key file (Web3 Secret Storage v3, as written by
    /// geth, foundry's `cast wallet` or [`ProviderKey::write_keystore`]) with
    /// `password`.
    ///
    /// # Errors
    /// [`Error::Keystore`] naming the file: unreadable, not a keystore, wrong
    /// password (the MAC does not match), or not a valid key inside.
    pub fn from_keystore(path: &Path, password: &str) -> Result<ProviderKey, Error> {
        use alloy_signer_local::LocalSignerError as L;
        let fail = |reason: String| Error::Keystore {
            path: path.to_path_buf(),
            reason,
        };
        PrivateKeySigner::decrypt_keystore(path, password)
            .map(ProviderKey)
            .map_err(|e| match e {
                L::EthKeystoreError(eth_keystore::KeystoreError::MacMismatch) => fail(
                    "wrong password (the MAC does not match); set INSITU_KEYSTORE_PASSWORD to the password the keystore was created with".into(),
                ),
                L::EthKeystoreError(eth_keystore::KeystoreError::StdIo(e)) => {
                    fail(format!("cannot read it: {e}"))
                }
                L::EthKeystoreError(eth_keystore::KeystoreError::SerdeJson(e)) => fail(format!(
                    "not a Web3 Secret Storage (v3) JSON key file: {e}"
                )),
                L::EthKeystoreError(eth_keystore::KeystoreError::ScryptInvalidParams(_)) => fail(
                    "its scrypt parameters are invalid (n must be a power of two below 2^(16·r))"
                        .into(),
                ),
                other => fail(other.to_string()),
            })
    }

    /// Writes this key to `path` encrypted with `password` (Web3 Secret
    /// Storage v3, scrypt), mode 0600. Refuses to overwrite an existing file.
    ///
    /// # Errors
    /// [`Error::Keystore`] for an existing file, an empty password or a write
    /// failure.
    pub fn write_keystore(&self, path: &Path, password: &str) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |reason: String| Error::Keystore {
            path: path.to_path_buf(),
            reason,
        };
        if password.is_empty() {
            return Err(fail(
                "refusing an empty password; set INSITU_KEYSTORE_PASSWORD".into(),
            ));
        }
        if path.exists() {
            return Err(fail(
                "already exists; choose another file or remove it first".into(),
            ));
        }
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(d), Some(n)) => (
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                },
                n,
            ),
            _ => return Err(fail("not a file path".into())),
        };
        // A temp name in the same dir, restricted before it is renamed into place.
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let mut rng = rand_core::OsRng;
        eth_keystore::encrypt_key(dir, &mut rng, self.0.to_bytes(), password, Some(&tmp))
            .map_err(|e| fail(format!("cannot write it: {e}")))?;
        let tmp = dir.join(tmp);
        let done = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        done.map_err(|e| fail(format!("cannot write it: {e}")))
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

/// The version of the receipt body this provider writes (`version`).
/// Version 1 (before logs, arguments and resources) verifies the same way.
pub const VERSION: u64 = 2;

/// The `$id` of the JSON Schema of version [`VERSION`] bodies
/// (`docs/receipt.schema.json` in the repository), written as `schema`.
pub const SCHEMA_ID: &str = "https://insitu.dev/schemas/receipt/v2.json";

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

/// The bytes that are hashed: the JCS form ([`crate::jcs`], RFC 8785) of `v`.
pub fn canonical(v: &Value) -> String {
    crate::jcs::canonicalize(v)
}

/// The sha256 of `body`'s canonical form: what a receipt's `hash` holds.
pub fn body_hash(body: &Value) -> [u8; 32] {
    Sha256::digest(canonical(body).as_bytes()).into()
}

/// Signs `body` with `key`.
///
/// # Errors
/// As [`ProviderKey::personal_sign`].
pub fn sign(key: &ProviderKey, body: Value) -> Result<Receipt, Error> {
    let hash = body_hash(&body);
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
    let hash = body_hash(&receipt.body);
    let actual = format!("0x{}", hex::encode(hash));
    if actual != receipt.hash {
        return Err(Error::DigestMismatch {
            what: "the receipt body".into(),
            expected: receipt.hash.clone(),
            actual,
        });
    }
    let signer = recover_personal(&hash, &receipt.signature)?;
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

    /// The PBKDF2 test vector of the Web3 Secret Storage definition
    /// (password `testpassword`).
    const SPEC_PBKDF2: &str = r#"{"crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"6087dab2f9fdbbfaddc31a909735c1e6"},"ciphertext":"5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46","kdf":"pbkdf2","kdfparams":{"c":262144,"dklen":32,"prf":"hmac-sha256","salt":"ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},"mac":"517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#;

    #[test]
    fn keystores_decrypt_with_the_right_password_only() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("spec.json");
        std::fs::write(&spec, SPEC_PBKDF2).unwrap();
        let key = ProviderKey::from_keystore(&spec, "testpassword").unwrap();
        assert_eq!(
            hex::encode(key.0.to_bytes()),
            "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
        );
        let wrong = ProviderKey::from_keystore(&spec, "nope")
            .unwrap_err()
            .to_string();
        assert_eq!(
            wrong,
            format!(
                "keystore {}: wrong password (the MAC does not match); set INSITU_KEYSTORE_PASSWORD to the password the keystore was created with",
                spec.display()
            )
        );

        // Round trip through our own writer: 0600, refuses to overwrite.
        let ours = dir.path().join("provider.json");
        let fresh = ProviderKey(PrivateKeySigner::random());
        fresh.write_keystore(&ours, "s3cret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ours).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&ours).unwrap();
        assert!(
            !text.contains(&hex::encode(fresh.0.to_bytes())),
            "encrypted"
        );
        let back = ProviderKey::from_keystore(&ours, "s3cret").unwrap();
        assert_eq!(back.address(), fresh.address());
        let again = fresh
            .write_keystore(&ours, "s3cret")
            .unwrap_err()
            .to_string();
        assert!(
            again.ends_with("already exists; choose another file or remove it first"),
            "{again}"
        );
        assert_eq!(std::fs::read_to_string(&ours).unwrap(), text, "left intact");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp file left"
        );
        let empty = fresh
            .write_keystore(&dir.path().join("x.json"), "")
            .unwrap_err()
            .to_string();
        assert!(empty.contains("refusing an empty password"), "{empty}");

        // Opening by content: keystores need the password, hex does not.
        assert_eq!(
            ProviderKey::open(&ours, Some("s3cret")).unwrap().address(),
            fresh.address()
        );
        let e = ProviderKey::open(&ours, None).unwrap_err().to_string();
        assert!(
            e.ends_with("is an encrypted keystore; set its password in INSITU_KEYSTORE_PASSWORD"),
            "{e}"
        );

        // Not a keystore, or missing.
        let plain = dir.path().join("plain.key");
        std::fs::write(&plain, "0x1234").unwrap();
        let e = ProviderKey::from_keystore(&plain, "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a Web3 Secret Storage (v3) JSON key file"),
            "{e}"
        );
        let e = ProviderKey::from_keystore(&dir.path().join("missing.json"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read it"), "{e}");
    }

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
