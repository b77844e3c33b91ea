//! What participants and the coordinator send each other (JSON bodies of the
//! gateway's federated routes, documented in `gateway/openapi.json`), and the
//! binary form of vectors: models and masked updates travel as raw
//! little-endian 8-byte words (`application/octet-stream`), so a masked
//! update costs 8 bytes per parameter on the wire and nothing more.

use crate::secagg::shamir::Share;
use crate::secagg::{Advertised, Sealed};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

/// A participant's public keys for one round (hex, 32 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    #[serde(with = "key_hex")]
    pub mask: Advertised,
    #[serde(with = "key_hex")]
    pub transport: Advertised,
}

mod key_hex {
    use super::*;

    pub fn serialize<S: Serializer>(k: &Advertised, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k.as_bytes()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Advertised, D::Error> {
        let s = String::deserialize(d)?;
        let bytes: [u8; 32] = hex::decode(&s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("a key is 64 hex characters (32 bytes)"))?;
        Ok(Advertised::from(bytes))
    }
}

/// Sealed shares on the wire: `{"owner", "holder", "ciphertext": hex}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMsg {
    pub owner: u32,
    pub holder: u32,
    pub ciphertext: String,
}

impl From<&Sealed> for SealedMsg {
    fn from(s: &Sealed) -> Self {
        SealedMsg {
            owner: s.owner,
            holder: s.holder,
            ciphertext: hex::encode(&s.ciphertext),
        }
    }
}

impl SealedMsg {
    /// The sealed shares, or why they are malformed.
    ///
    /// # Errors
    /// When the ciphertext is not hex or over 4 KiB.
    pub fn sealed(&self) -> Result<Sealed, String> {
        if self.ciphertext.len() > 8192 {
            return Err(format!(
                "sealed shares of participant {} are {} hex characters; at most 8192",
                self.owner,
                self.ciphertext.len()
            ));
        }
        Ok(Sealed {
            owner: self.owner,
            holder: self.holder,
            ciphertext: hex::decode(&self.ciphertext)
                .map_err(|e| format!("sealed shares of participant {}: {e}", self.owner))?,
        })
    }
}

/// Which secret a revealed share is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Secret {
    /// A survivor's self-mask seed.
    Seed,
    /// A dropped participant's mask key.
    Key,
}

/// One revealed share: `{"owner", "secret": "seed"|"key", "x", "y": [5 field elements]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    pub owner: u32,
    pub secret: Secret,
    pub x: u64,
    pub y: Vec<u64>,
}

impl RevealedShare {
    pub(crate) fn seed(owner: u32, s: &Share) -> RevealedShare {
        RevealedShare {
            owner,
            secret: Secret::Seed,
            x: s.x,
            y: s.y.to_vec(),
        }
    }

    pub(crate) fn key(owner: u32, s: &Share) -> RevealedShare {
        RevealedShare {
            owner,
            secret: Secret::Key,
            x: s.x,
            y: s.y.to_vec(),
        }
    }

    /// The share, if well-formed (field elements below the prime).
    pub fn share(&self) -> Option<Share> {
        let y: [u64; Share::CHUNKS] = self.y.clone().try_into().ok()?;
        (y.iter().all(|v| *v < crate::secagg::shamir::P) && self.x > 0)
            .then_some(Share { x: self.x, y })
    }
}

/// Answer to `start`: the round's execution and the participant's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// The participant's execution of the training stage.
    #[serde(rename = "workflowId")]
    pub execution: String,
    pub participant: u32,
    pub keys: Keys,
}

/// Body of `share`: everyone who advertised keys (U1), by participant id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRequest {
    pub roster: BTreeMap<u32, Keys>,
}

/// Answer to `share`: the participant's shares, one sealed per holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareResponse {
    pub sealed: Vec<SealedMsg>,
}

/// Body of `masked`: the shares sealed for this participant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaskRequest {
    pub sealed: Vec<SealedMsg>,
}

/// Body of `unmask`: who sent masked inputs and who did not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnmaskRequest {
    pub survivors: BTreeSet<u32>,
    pub dropped: BTreeSet<u32>,
}

/// Answer to `unmask`: the revealed shares, and the hash of the receipt of
/// the participant's round execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnmaskResponse {
    pub shares: Vec<RevealedShare>,
    pub execution: String,
    pub receipt: Option<String>,
}

/// `words` as little-endian bytes.
pub fn to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Little-endian 8-byte words, or `None` when `bytes` is not a whole number of them.
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<u64>> {
    bytes.len().is_multiple_of(8).then(|| {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    })
}

/// A model's parameters in their on-disk form (the guest SDK's `model.f64`).
pub fn model_bytes(params: &[f64]) -> Vec<u8> {
    params.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Parameters from their on-disk form, or `None` for a partial double.
pub fn model_from_bytes(bytes: &[u8]) -> Option<Vec<f64>> {
    from_bytes(bytes).map(|w| w.into_iter().map(f64::from_bits).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_partial_words_are_refused() {
        let w = vec![0, 1, u64::MAX, 1 << 63];
        assert_eq!(from_bytes(&to_bytes(&w)).unwrap(), w);
        assert_eq!(from_bytes(&[1, 2, 3]), None);
        let m = vec![1.5, -0.25, 0.0];
        assert_eq!(model_from_bytes(&model_bytes(&m)).unwrap(), m);
    }

    #[test]
    fn keys_are_hex_and_bad_ones_are_refused() {
        let k = Keys {
            mask: Advertised::from([1u8; 32]),
            transport: Advertised::from([2u8; 32]),
        };
        let j = serde_json::to_value(k).unwrap();
        assert_eq!(j["mask"], "01".repeat(32));
        assert_eq!(serde_json::from_value::<Keys>(j).unwrap(), k);
        let e =
            serde_json::from_value::<Keys>(serde_json::json!({"mask": "zz", "transport": "00"}))
                .unwrap_err();
        assert!(e.to_string().contains("64 hex characters"), "{e}");
    }
}
