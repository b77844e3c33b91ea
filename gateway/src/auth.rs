//! Consumers authenticate with Nevermined JWT grants and get short-lived
//! access tokens (docs/ARCHITECTURE.md, "HTTP"; the grant format is Nevermined's).
//!
//! A grant is `base64url(header).base64url(payload).base64url(signature)` with
//! header `{"alg":"ES256K"}`, claims `iss` (the consumer's address), `aud`,
//! `sub` (the agreement id), `did` (the workflow, to execute), `eths:
//! "personal"`, `iat`, `exp`; the signature is the EIP-191 `personal_sign` of
//! the text `base64url(header).base64url(payload)` (65 bytes r‖s‖v), as the
//! Nevermined JS SDK makes it. The access token binds consumer, audience,
//! agreement (and execution) and expires; it is HMAC-SHA256 signed with a
//! secret of this provider.
//!
//! The SDK's EIP-712 variant is accepted too: the claims carry `eip712Data
//! {message, chainId}` and the signature is over the typed data
//! `Nevermined(address from,string message,string token)` in domain
//! `{name: "Nevermined", version: "1", chainId}`, with `from` = `iss` and
//! `token` = the signing input.

use alloy_primitives::Address;
use alloy_sol_types::{SolStruct, eip712_domain};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use insitu_runtime::receipt::{recover_hash, recover_personal};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// Audience of grants that execute a workflow.
pub const AUD_EXECUTE: &str = "/api/v1/node/services/execute";
/// Audience of grants for status, logs, stop and results.
pub const AUD_COMPUTE: &str = "/api/v1/node/services/compute";
/// Audience of grants that download a dataset's files (access agreements).
pub const AUD_ACCESS: &str = "/api/v1/node/services/access";
/// Audience of grants that publish assets (a consumer's workflows and
/// algorithms) to the catalog; `sub` is not needed.
pub const AUD_PUBLISH: &str = "/api/v1/metadata/assets";
/// Audience of the provider's admin tokens (the dashboard); issued by
/// `insitu admin token`, never from a consumer's grant.
pub const AUD_ADMIN: &str = "/dashboard";
/// Clock skew tolerated on `iat`/`exp`, in seconds.
pub const SKEW: u64 = 60;
/// Lifetime of access tokens, in seconds.
pub const TOKEN_TTL: u64 = 3600;

/// Why a grant or token was refused. Each maps to HTTP 401 (bad credentials)
/// or 403 (valid credentials, wrong scope) in the gateway's one error mapping.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the grant is not a JWT: {0}")]
    Malformed(String),
    #[error("the grant uses alg `{0}`; only ES256K grants signed with personal_sign are accepted")]
    Algorithm(String),
    #[error("the grant's signature is from {signer}, not from its issuer {issuer}")]
    WrongSigner { signer: String, issuer: String },
    #[error("the grant expired {0} s ago; sign a new one")]
    Expired(u64),
    #[error("the grant is issued in the future (iat {0}); check the client's clock")]
    NotYetValid(u64),
    #[error(
        "the grant's audience is `{0}`; use {AUD_EXECUTE} to execute, {AUD_COMPUTE} for an execution, {AUD_ACCESS} to download a dataset or {AUD_PUBLISH} to publish a workflow"
    )]
    Audience(String),
    #[error("the grant's claim `{0}` is missing or malformed")]
    Claim(&'static str),
    #[error("the access token is invalid or was not issued by this provider")]
    BadToken,
    #[error("the access token expired; get a new one from /api/v1/node/services/oauth/token")]
    TokenExpired,
    #[error("the access token is for `{have}`, not `{want}`")]
    TokenScope { have: String, want: String },
}

/// A verified grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Lowercase `0x` address of the consumer.
    pub consumer: String,
    pub audience: String,
    /// The agreement id (`0x` + 64 hex, lowercase); empty for publishing.
    pub agreement: String,
    /// The workflow DID, for execute grants; the dataset DID, for access grants.
    pub did: Option<String>,
    /// The execution, for compute grants.
    pub execution: Option<String>,
    pub expires_at: u64,
}

fn b64_json(part: &str, what: &str) -> Result<Value, AuthError> {
    let bytes = B64
        .decode(part)
        .map_err(|_| AuthError::Malformed(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed(format!("the {what} is not JSON")))
}

alloy_sol_types::sol! {
    /// The typed data of EIP-712 grants.
    struct Nevermined {
        address from;
        string message;
        string token;
    }
}

/// The EIP-712 signing hash of a grant whose signing input is `token`.
fn eip712_hash(from: Address, message: &str, chain_id: u64, token: &str) -> [u8; 32] {
    let domain = eip712_domain! { name: "Nevermined", version: "1", chain_id: chain_id, };
    let value = Nevermined {
        from,
        message: message.to_string(),
        token: token.to_string(),
    };
    value.eip712_signing_hash(&domain).0
}

/// Verifies a grant at time `now` (unix seconds).
///
/// # Errors
/// See [`AuthError`]; each names what to fix.
pub fn verify_grant(jwt: &str, now: u64) -> Result<Grant, AuthError> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(AuthError::Malformed(format!(
            "{} parts, expected header.payload.signature",
            parts.len()
        )));
    };
    let h = b64_json(header, "header")?;
    let alg = h.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "ES256K" {
        return Err(AuthError::Algorithm(alg.to_string()));
    }
    let claims = b64_json(payload, "payload")?;
    let s = |k: &'static str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .ok_or(AuthError::Claim(k))
    };
    let n = |k: &'static str| {
        claims
            .get(k)
            .and_then(Value::as_u64)
            .ok_or(AuthError::Claim(k))
    };
    let issuer =
        insitu_runtime::store::parse_address(s("iss")?).map_err(|_| AuthError::Claim("iss"))?;
    let eip712 = claims.get("eip712Data");
    if eip712.is_none() && claims.get("eths").and_then(Value::as_str) != Some("personal") {
        return Err(AuthError::Claim("eths"));
    }
    let sig = B64
        .decode(signature)
        .map_err(|_| AuthError::Malformed("the signature is not base64url".into()))?;
    if sig.len() != 65 {
        return Err(AuthError::Malformed(format!(
            "the signature has {} bytes, expected 65",
            sig.len()
        )));
    }
    let signing_input = &jwt.trim()[..header.len() + 1 + payload.len()];
    let unrecoverable =
        |_| AuthError::Malformed("the signature does not recover to an address".into());
    let signer = match eip712 {
        None => {
            recover_personal(signing_input.as_bytes(), &hex::encode(&sig)).map_err(unrecoverable)?
        }
        Some(data) => {
            let message = data
                .get("message")
                .and_then(Value::as_str)
                .ok_or(AuthError::Claim("eip712Data.message"))?;
            let chain_id = data
                .get("chainId")
                .and_then(Value::as_u64)
                .ok_or(AuthError::Claim("eip712Data.chainId"))?;
            let from: Address = issuer.parse().map_err(|_| AuthError::Claim("iss"))?;
            let hash = eip712_hash(from, message, chain_id, signing_input);
            recover_hash(&hash, &hex::encode(&sig)).map_err(unrecoverable)?
        }
    };
    let signer = format!("{signer:#x}");
    if signer != issuer {
        return Err(AuthError::WrongSigner { signer, issuer });
    }
    let (iat, exp) = (n("iat")?, n("exp")?);
    if iat > now + SKEW {
        return Err(AuthError::NotYetValid(iat));
    }
    if exp + SKEW < now {
        return Err(AuthError::Expired(now - exp));
    }
    let audience = s("aud")?.to_string();
    let (did, execution) = match audience.as_str() {
        AUD_EXECUTE | AUD_ACCESS => (Some(crate::ids::did(s("did")?)), None),
        AUD_COMPUTE => (None, Some(crate::ids::execution(s("execution_id")?))),
        AUD_PUBLISH => (None, None),
        other => return Err(AuthError::Audience(other.to_string())),
    };
    // Publishing is no act under an agreement.
    let agreement = if audience == AUD_PUBLISH {
        String::new()
    } else {
        let agreement = crate::ids::agreement(s("sub")?);
        let agreement_ok =
            agreement.len() == 66 && agreement[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !agreement_ok {
            return Err(AuthError::Claim("sub"));
        }
        agreement
    };
    Ok(Grant {
        consumer: issuer,
        audience,
        agreement,
        did,
        execution,
        expires_at: exp,
    })
}

/// Issues and checks access tokens with this provider's secret.
#[derive(Clone)]
pub struct Tokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    pub fn new(secret: Vec<u8>) -> Tokens {
        Tokens { secret }
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let mut m =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    /// A form token for `scope` (e.g. `review:EXECUTION`): what only this
    /// provider's own pages can put in a form (cross-site request forgery).
    pub fn csrf(&self, scope: &str) -> String {
        hex::encode(self.mac(format!("csrf\0{scope}").as_bytes()))
    }

    /// Whether `token` is [`Tokens::csrf`] of `scope` (constant time).
    pub fn check_csrf(&self, scope: &str, token: &str) -> bool {
        let Ok(mac) = hex::decode(token) else {
            return false;
        };
        let mut m =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(format!("csrf\0{scope}").as_bytes());
        m.verify_slice(&mac).is_ok()
    }

    /// A token for `grant`, valid [`TOKEN_TTL`] from `now` (never past the grant's own expiry + TTL).
    pub fn issue(&self, grant: &Grant, now: u64) -> String {
        let mut claims = grant.clone();
        claims.expires_at = now + TOKEN_TTL;
        let body = B64.encode(serde_json::to_vec(&claims).expect("JSON"));
        let mac = B64.encode(self.mac(body.as_bytes()));
        format!("{body}.{mac}")
    }

    /// An admin token (audience [`AUD_ADMIN`], for the provider's dashboard)
    /// valid until `expires_at` (unix seconds).
    pub fn issue_admin(&self, provider: &str, expires_at: u64) -> String {
        let claims = Grant {
            consumer: provider.to_string(),
            audience: AUD_ADMIN.to_string(),
            agreement: String::new(),
            did: None,
            execution: None,
            expires_at,
        };
        let body = B64.encode(serde_json::to_vec(&claims).expect("JSON"));
        let mac = B64.encode(self.mac(body.as_bytes()));
        format!("{body}.{mac}")
    }

    /// Checks a token for `audience` at `now`.
    ///
    /// # Errors
    /// [`AuthError::BadToken`], [`AuthError::TokenExpired`], [`AuthError::TokenScope`].
    pub fn check(&self, token: &str, audience: &str, now: u64) -> Result<Grant, AuthError> {
        let (body, mac) = token.trim().split_once('.').ok_or(AuthError::BadToken)?;
        let mac = B64.decode(mac).map_err(|_| AuthError::BadToken)?;
        let mut m =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(body.as_bytes());
        m.verify_slice(&mac).map_err(|_| AuthError::BadToken)?;
        let grant: Grant =
            serde_json::from_slice(&B64.decode(body).map_err(|_| AuthError::BadToken)?)
                .map_err(|_| AuthError::BadToken)?;
        if grant.expires_at < now {
            return Err(AuthError::TokenExpired);
        }
        if grant.audience != audience {
            return Err(AuthError::TokenScope {
                have: grant.audience,
                want: audience.to_string(),
            });
        }
        Ok(grant)
    }
}

/// Builds a grant the way the Nevermined JS SDK does (for clients, the demo and tests).
///
/// # Errors
/// When signing fails.
pub fn make_grant(
    key: &insitu_runtime::receipt::ProviderKey,
    claims: &Value,
) -> Result<String, insitu_runtime::Error> {
    let header = B64.encode(br#"{"alg":"ES256K"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).expect("JSON"));
    let signing_input = format!("{header}.{payload}");
    let sig = key.personal_sign(signing_input.as_bytes())?;
    let sig = hex::decode(sig.trim_start_matches("0x")).expect("hex from personal_sign");
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// Builds an EIP-712 grant the way the Nevermined JS SDK does: `claims` get
/// `eip712Data {message, chainId}` and the signature is over the typed data.
///
/// # Errors
/// When signing fails or `claims` has no valid `iss`.
pub fn make_grant_eip712(
    key: &insitu_runtime::receipt::ProviderKey,
    claims: &Value,
    message: &str,
    chain_id: u64,
) -> Result<String, insitu_runtime::Error> {
    let mut claims = claims.clone();
    claims["eip712Data"] = serde_json::json!({"message": message, "chainId": chain_id});
    let header = B64.encode(br#"{"alg":"ES256K"}"#);
    let payload = B64.encode(serde_json::to_vec(&claims).expect("JSON"));
    let signing_input = format!("{header}.{payload}");
    let from: Address = key.address().parse().expect("an address");
    let sig = key.sign_hash(&eip712_hash(from, message, chain_id, &signing_input))?;
    let sig = hex::decode(sig.trim_start_matches("0x")).expect("hex from sign_hash");
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// How stale (or early) a signed exec form may be, in seconds.
pub const EXEC_WINDOW: u64 = 300;

/// The text a consumer `personal_sign`s for the seed spec's exec form
/// (`POST /api/v1/gateway/services/exec`): five lines, `\n`-separated, no
/// trailing newline —
///
/// ```text
/// insitu exec v1
/// agreement: 0x<64 lowercase hex>
/// workflow: did:nv:<64 lowercase hex>
/// nonce: <8 to 64 of A-Z a-z 0-9 _ ->
/// timestamp: <unix seconds>
/// ```
///
/// The provider accepts each signature once and only within
/// [`EXEC_WINDOW`] of `timestamp`, so a captured form cannot start
/// executions again.
pub fn exec_message(agreement: &str, workflow: &str, nonce: &str, timestamp: u64) -> String {
    format!(
        "insitu exec v1\nagreement: {}\nworkflow: {}\nnonce: {nonce}\ntimestamp: {timestamp}",
        agreement.to_ascii_lowercase(),
        workflow.to_ascii_lowercase()
    )
}

/// Whether `nonce` has the exec form's shape (8–64 of `A-Za-z0-9_-`).
pub fn valid_nonce(nonce: &str) -> bool {
    (8..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use insitu_runtime::receipt::ProviderKey;
    use serde_json::json;

    const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const AGREEMENT: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
    const NOW: u64 = 1_800_000_000;

    fn claims(key: &ProviderKey) -> Value {
        json!({"iss": key.address(), "aud": AUD_EXECUTE, "sub": AGREEMENT, "did": format!("did:nv:{}", "ab".repeat(32)),
               "eths": "personal", "iat": NOW - 10, "exp": NOW + 600})
    }

    #[test]
    fn grants_verify_and_tokens_bind_their_scope() {
        let key = ProviderKey::from_hex(KEY).unwrap();
        let grant = verify_grant(&make_grant(&key, &claims(&key)).unwrap(), NOW).unwrap();
        assert_eq!(grant.consumer, key.address().to_ascii_lowercase());
        assert_eq!(grant.agreement, AGREEMENT);
        let tokens = Tokens::new(b"secret".to_vec());
        let t = tokens.issue(&grant, NOW);
        assert_eq!(
            tokens.check(&t, AUD_EXECUTE, NOW + 5).unwrap(),
            Grant {
                expires_at: NOW + TOKEN_TTL,
                ..grant.clone()
            }
        );
        assert_eq!(
            tokens.check(&t, AUD_COMPUTE, NOW).unwrap_err(),
            AuthError::TokenScope {
                have: AUD_EXECUTE.into(),
                want: AUD_COMPUTE.into()
            }
        );
        assert_eq!(
            tokens
                .check(&t, AUD_EXECUTE, NOW + TOKEN_TTL + 1)
                .unwrap_err(),
            AuthError::TokenExpired
        );
        assert_eq!(
            Tokens::new(b"other".to_vec())
                .check(&t, AUD_EXECUTE, NOW)
                .unwrap_err(),
            AuthError::BadToken
        );
        let mut forged = t.clone();
        forged.insert(3, 'x');
        assert_eq!(
            tokens.check(&forged, AUD_EXECUTE, NOW).unwrap_err(),
            AuthError::BadToken
        );
    }

    #[test]
    fn eip712_grants_verify_and_bind_their_typed_data() {
        let key = ProviderKey::from_hex(KEY).unwrap();
        let mut c = claims(&key);
        c.as_object_mut().unwrap().remove("eths");
        let jwt = make_grant_eip712(&key, &c, "Sign this message to log in", 1).unwrap();
        let grant = verify_grant(&jwt, NOW).unwrap();
        assert_eq!(grant.consumer, key.address().to_ascii_lowercase());
        // The EIP-712 signature is not a personal_sign one: the same JWT with
        // eip712Data removed fails, and so does another chain id.
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut other = c.clone();
        other["eip712Data"] = json!({"message": "Sign this message to log in", "chainId": 5});
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&other).unwrap()),
            parts[2]
        );
        assert!(matches!(
            verify_grant(&swapped, NOW).unwrap_err(),
            AuthError::WrongSigner { .. }
        ));
        c["eip712Data"] = json!({"message": "hi"});
        let bad = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(
            verify_grant(&bad, NOW).unwrap_err(),
            AuthError::Claim("eip712Data.chainId")
        );
    }

    /// The typed-data hash against an independent computation of EIP-712's
    /// formula with keccak256 alone.
    #[test]
    fn eip712_hash_follows_the_standard() {
        use alloy_primitives::keccak256;
        let from: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse()
            .unwrap();
        let (message, token, chain) = ("hello", "a.b", 80001u64);
        let mut domain = Vec::new();
        domain.extend(keccak256(
            "EIP712Domain(string name,string version,uint256 chainId)",
        ));
        domain.extend(keccak256("Nevermined"));
        domain.extend(keccak256("1"));
        domain.extend([0u8; 24]);
        domain.extend(chain.to_be_bytes());
        let mut data = Vec::new();
        data.extend(keccak256(
            "Nevermined(address from,string message,string token)",
        ));
        data.extend([0u8; 12]);
        data.extend(from.as_slice());
        data.extend(keccak256(message));
        data.extend(keccak256(token));
        let mut all = vec![0x19, 0x01];
        all.extend(keccak256(&domain));
        all.extend(keccak256(&data));
        assert_eq!(eip712_hash(from, message, chain, token), keccak256(&all).0);
    }

    #[test]
    fn bad_grants_are_refused_precisely() {
        let key = ProviderKey::from_hex(KEY).unwrap();
        let other = ProviderKey::from_hex(
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        )
        .unwrap();
        let with = |edit: &dyn Fn(&mut Value), k: &ProviderKey| {
            let mut c = claims(&key);
            edit(&mut c);
            verify_grant(&make_grant(k, &c).unwrap(), NOW)
        };
        assert_eq!(
            with(&|_| {}, &other).unwrap_err(),
            AuthError::WrongSigner {
                signer: other.address().to_ascii_lowercase(),
                issuer: key.address().to_ascii_lowercase()
            }
        );
        assert_eq!(
            with(&|c| c["exp"] = json!(NOW - 100), &key).unwrap_err(),
            AuthError::Expired(100)
        );
        assert_eq!(
            with(&|c| c["iat"] = json!(NOW + 1000), &key).unwrap_err(),
            AuthError::NotYetValid(NOW + 1000)
        );
        assert_eq!(
            with(&|c| c["aud"] = json!("/elsewhere"), &key).unwrap_err(),
            AuthError::Audience("/elsewhere".into())
        );
        assert_eq!(
            with(&|c| c["sub"] = json!("0x12"), &key).unwrap_err(),
            AuthError::Claim("sub")
        );
        assert_eq!(
            with(
                &|c| {
                    c.as_object_mut().unwrap().remove("eths");
                },
                &key
            )
            .unwrap_err(),
            AuthError::Claim("eths")
        );
        // Tampering with the payload after signing.
        let jwt = make_grant(&key, &claims(&key)).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut c = claims(&key);
        c["sub"] = json!(format!("0x{}", "22".repeat(32)));
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert!(matches!(
            verify_grant(&tampered, NOW).unwrap_err(),
            AuthError::WrongSigner { .. }
        ));
        let hs256 = format!(
            "{}.{}.{}",
            B64.encode(br#"{"alg":"HS256"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(
            verify_grant(&hs256, NOW).unwrap_err(),
            AuthError::Algorithm("HS256".into())
        );
        assert_eq!(
            verify_grant("abc", NOW).unwrap_err().to_string(),
            "the grant is not a JWT: 1 parts, expected header.payload.signature"
        );
    }
}
