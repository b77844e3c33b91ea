//! Checking a receipt without trusting the provider (`insitu verify`): its
//! hash and signature, who signed it, the downloaded files against it, and —
//! for executions that ran in deterministic mode — a local re-run of every
//! stage ([`reproduce`]) compared digest by digest. The on-chain check lives
//! in `insitu-chain` (the layer that talks to the chain).
//!
//! Every check is a [`Check`] line; a [`Report`] holds iff all of them do.

use crate::Error;
use crate::image::Puller;
use crate::pipeline::{ImageResolver, collect, listing_digest};
use crate::receipt::{self, Receipt, recover_hash};
use crate::sandbox::{Determinism, JobSpec, Limits, Sandbox, StopHandle};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One check: what was checked, whether it holds, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `hash`, `signature`, `provider`, `file PATH`, …
    pub name: String,
    pub ok: bool,
    /// What was found; for a failure, expected vs found and what to do.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

/// The checks of one verification, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True iff every check holds (and there is at least one).
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// Adds a check.
    pub fn push(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }
}

/// A receipt as a consumer may have saved it: the `receipt` object of
/// `GET …/compute/results/{id}`, that whole response, or the in-toto DSSE
/// envelope of `…/results/{id}/receipt.intoto.json`. Returns the receipt and,
/// for an envelope, the signer the envelope's own signature recovers to.
///
/// # Errors
/// [`Error::Invalid`] naming what is malformed.
pub fn parse(text: &[u8]) -> Result<(Receipt, Option<String>), Error> {
    let invalid = |reason: String| Error::Receipt(reason);
    let v: Value = serde_json::from_slice(text).map_err(|e| {
        invalid(format!(
            "not JSON: {e}; save the `receipt` of GET …/compute/results/{{id}} or its receipt.intoto.json"
        ))
    })?;
    if v.get("payloadType").is_some() {
        let (statement, signer) = open_envelope(&v)?;
        let r = serde_json::from_value(statement["predicate"].clone()).map_err(|e| {
            invalid(format!(
                "the envelope's predicate is not an insitu receipt: {e}"
            ))
        })?;
        return Ok((r, Some(signer)));
    }
    let inner = v.get("receipt").filter(|r| r.is_object()).unwrap_or(&v);
    let r = serde_json::from_value(inner.clone()).map_err(|e| {
        invalid(format!(
            "not a receipt ({e}); expected {{\"body\", \"hash\", \"signature\", \"signer\"}}"
        ))
    })?;
    Ok((r, None))
}

/// Checks what needs nothing but the receipt (and, optionally, the expected
/// provider and the downloaded files): `hash` (JCS form of the body against
/// `hash`), `signature` (recovers to `signer`), `provider` (is `provider`),
/// `version`, and with `files` one line per output file (present, size and
/// sha256 as the receipt says) plus one for files the receipt does not name.
pub fn verify(receipt: &Receipt, provider: Option<&str>, files: Option<&Path>) -> Report {
    let mut report = Report::default();
    let actual = format!("0x{}", hex::encode(receipt::body_hash(&receipt.body)));
    report.push(
        "hash",
        actual == receipt.hash,
        if actual == receipt.hash {
            format!("the body hashes to {actual} (RFC 8785 JCS, sha256)")
        } else {
            format!(
                "the body hashes to {actual}, the receipt says {}: the body was changed after signing",
                receipt.hash
            )
        },
    );
    match hex_hash(&receipt.hash).and_then(|h| recover_personal_hash(&h, &receipt.signature)) {
        Some(signer) if signer.eq_ignore_ascii_case(&receipt.signer) => {
            report.push("signature", true, format!("signed by {signer}"))
        }
        Some(signer) => report.push(
            "signature",
            false,
            format!(
                "signed by {signer}, but the receipt names {} as its signer",
                receipt.signer
            ),
        ),
        None => report.push(
            "signature",
            false,
            "not a valid 65-byte secp256k1 signature of the hash",
        ),
    }
    if let Some(p) = provider {
        let ok = p.eq_ignore_ascii_case(&receipt.signer);
        report.push(
            "provider",
            ok,
            if ok {
                format!("{} is the expected provider", receipt.signer)
            } else {
                format!(
                    "signed by {}, not by the expected provider {p}",
                    receipt.signer
                )
            },
        );
    }
    let version = receipt.body["version"].as_u64();
    report.push(
        "version",
        matches!(version, Some(1 | 2)),
        match version {
            Some(v @ (1 | 2)) => format!("receipt version {v}"),
            _ => format!(
                "unknown receipt version {}; this insitu reads versions 1 and 2",
                receipt.body["version"]
            ),
        },
    );
    if let Some(dir) = files {
        check_files(&mut report, "file", &receipt.body["outputs"], dir);
    }
    report
}

/// One line per file `expected` (a receipt's `[{path, size, sha256}]`) names,
/// comparing it with what `dir` holds, plus one for files it does not name.
fn check_files(report: &mut Report, label: &str, expected: &Value, dir: &Path) {
    let found = match collect(dir) {
        Ok((files, _)) => files,
        Err(e) => {
            report.push(format!("{label}s"), false, format!("cannot read them: {e}"));
            return;
        }
    };
    let mut found: BTreeMap<String, Value> = found
        .into_iter()
        .map(|f| (f["path"].as_str().unwrap_or("").to_string(), f))
        .collect();
    for want in expected.as_array().into_iter().flatten() {
        let path = want["path"].as_str().unwrap_or("");
        let name = format!("{label} {path}");
        match found.remove(path) {
            None => report.push(
                name,
                false,
                format!("missing from {}; download it again", dir.display()),
            ),
            Some(got) if got["sha256"] != want["sha256"] => report.push(
                name,
                false,
                format!(
                    "sha256 expected {}, found {} ({} bytes, the receipt says {})",
                    want["sha256"].as_str().unwrap_or("?"),
                    got["sha256"].as_str().unwrap_or("?"),
                    got["size"],
                    want["size"]
                ),
            ),
            Some(got) => report.push(
                name,
                true,
                format!(
                    "{} bytes, {}",
                    got["size"],
                    got["sha256"].as_str().unwrap_or("?")
                ),
            ),
        }
    }
    if !found.is_empty() {
        let extra: Vec<&str> = found.keys().map(String::as_str).collect();
        report.push(
            format!("{label}s"),
            false,
            format!(
                "{} holds files the receipt does not name: {}",
                dir.display(),
                extra.join(", ")
            ),
        );
    }
}

fn hex_hash(h: &str) -> Option<[u8; 32]> {
    hex::decode(h.strip_prefix("0x")?).ok()?.try_into().ok()
}

/// The signer of an EIP-191 `personal_sign` over the 32 bytes of `hash`.
fn recover_personal_hash(hash: &[u8; 32], signature: &str) -> Option<String> {
    receipt::recover_personal(hash, signature)
        .ok()
        .map(|a| a.to_checksum(None))
}

/// The in-toto payload type of DSSE envelopes.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto predicate type of insitu receipts.
pub const PREDICATE_TYPE: &str = "https://insitu.dev/receipt/v2";

/// DSSE's pre-authentication encoding (DSSE v1 protocol).
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// `receipt` as an in-toto Statement v1 (subjects: the output files by
/// sha256; predicate: the whole signed receipt) in a DSSE envelope signed by
/// `key`: `sig` is the base64 of the 65-byte secp256k1 signature r‖s‖v of
/// SHA-256(PAE(payloadType, payload)); `keyid` is the signer's address.
///
/// # Errors
/// As [`receipt::ProviderKey::sign_hash`].
pub fn envelope(key: &receipt::ProviderKey, receipt: &Receipt) -> Result<Value, Error> {
    let subject: Vec<Value> = receipt.body["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let hex = f["sha256"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("sha256:");
            json!({"name": f["path"], "digest": {"sha256": hex}})
        })
        .collect();
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": receipt,
    });
    let payload = receipt::canonical(&statement).into_bytes();
    let digest: [u8; 32] = Sha256::digest(pae(INTOTO_PAYLOAD_TYPE, &payload)).into();
    let sig = key.sign_hash(&digest)?;
    let sig = hex::decode(sig.trim_start_matches("0x")).expect("hex from sign_hash");
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(json!({
        "payloadType": INTOTO_PAYLOAD_TYPE,
        "payload": b64.encode(&payload),
        "signatures": [{"keyid": key.address(), "sig": b64.encode(sig)}],
    }))
}

/// Opens a DSSE envelope made by [`envelope`]: checks its payload type and
/// that its first signature recovers to its `keyid`. Returns the statement
/// and the signer.
///
/// # Errors
/// [`Error::Receipt`] naming what does not hold.
pub fn open_envelope(v: &Value) -> Result<(Value, String), Error> {
    let bad = |r: &str| Error::Receipt(format!("DSSE envelope: {r}"));
    if v["payloadType"] != INTOTO_PAYLOAD_TYPE {
        return Err(bad(&format!(
            "payloadType is {}, expected {INTOTO_PAYLOAD_TYPE}",
            v["payloadType"]
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = v["payload"]
        .as_str()
        .and_then(|p| b64.decode(p).ok())
        .ok_or_else(|| bad("payload is not base64"))?;
    let sig = &v["signatures"][0];
    let (keyid, raw) = match (sig["keyid"].as_str(), sig["sig"].as_str()) {
        (Some(k), Some(s)) => (k, b64.decode(s).map_err(|_| bad("sig is not base64"))?),
        _ => return Err(bad("no signature with keyid and sig")),
    };
    let digest: [u8; 32] = Sha256::digest(pae(INTOTO_PAYLOAD_TYPE, &payload)).into();
    let signer = recover_hash(&digest, &format!("0x{}", hex::encode(raw)))
        .map_err(|_| bad("sig is not a 65-byte secp256k1 signature"))?
        .to_checksum(None);
    if !signer.eq_ignore_ascii_case(keyid) {
        return Err(bad(&format!(
            "signed by {signer}, not by its keyid {keyid}: the envelope was changed after signing"
        )));
    }
    let statement: Value =
        serde_json::from_slice(&payload).map_err(|e| bad(&format!("payload is not JSON: {e}")))?;
    if statement["predicateType"] != PREDICATE_TYPE {
        return Err(bad(&format!(
            "predicateType is {}, expected {PREDICATE_TYPE}",
            statement["predicateType"]
        )));
    }
    Ok((statement, signer))
}

/// What [`reproduce`] runs with.
pub struct Reproduction<'a> {
    pub sandbox: &'a Sandbox,
    pub puller: &'a Puller,
    pub images: &'a ImageResolver,
    /// The receipt's datasets, in order of first use (one per distinct DID
    /// of its `inputs`).
    pub inputs: &'a [PathBuf],
    /// Holds each stage's outputs and logs.
    pub work: &'a Path,
}

/// Re-runs every stage of a deterministic execution locally — the same
/// images by checksum, the same inputs by digest, the same arguments and
/// seed — and compares each stage's module, logs and the final outputs with
/// the receipt, one check per comparison.
///
/// # Errors
/// Host failures only (the work dir); everything about the receipt or the
/// run is a failing check.
pub async fn reproduce(receipt: &Receipt, r: &Reproduction<'_>) -> Result<Report, Error> {
    let mut report = Report::default();
    let body = &receipt.body;
    if body["deterministic"] != true {
        report.push(
            "reproduce",
            false,
            "the execution did not run in deterministic mode, so its outputs cannot be reproduced bit for bit; ask the provider for a deterministic dataset or workflow",
        );
        return Ok(report);
    }
    let execution = body["execution"].as_str().unwrap_or("");
    // Datasets in order of first use, with their recorded digests.
    let mut datasets: Vec<(String, String)> = Vec::new();
    for i in body["inputs"].as_array().into_iter().flatten() {
        let did = i["did"].as_str().unwrap_or("").to_string();
        if !datasets.iter().any(|(d, _)| *d == did) {
            datasets.push((did, i["digest"].as_str().unwrap_or("").to_string()));
        }
    }
    if datasets.len() != r.inputs.len() {
        report.push(
            "inputs",
            false,
            format!(
                "the receipt names {} dataset(s) ({}), {} --input given; give one --input per dataset in that order",
                datasets.len(),
                datasets.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>().join(", "),
                r.inputs.len()
            ),
        );
        return Ok(report);
    }
    for ((did, want), dir) in datasets.iter().zip(r.inputs) {
        let name = format!("input {did}");
        match listing_digest(dir) {
            Ok(got) if got == *want => {
                report.push(name, true, format!("{} has digest {got}", dir.display()))
            }
            Ok(got) => report.push(
                name,
                false,
                format!(
                    "{} has digest {got}, the receipt says {want}: not the same data",
                    dir.display()
                ),
            ),
            Err(e) => report.push(name, false, e.to_string()),
        }
    }
    if !report.ok() {
        return Ok(report);
    }
    let stages = body["stages"].as_array().cloned().unwrap_or_default();
    let mut outputs: Vec<PathBuf> = Vec::new();
    for stage in &stages {
        let index = stage["index"].as_u64().unwrap_or(0) as u32;
        let label = format!("stage {index}");
        let reference = stage["image"].as_str().unwrap_or("");
        let Some((_, checksum)) = reference.rsplit_once('@') else {
            report.push(
                label,
                false,
                format!("image `{reference}` is not pinned by checksum"),
            );
            return Ok(report);
        };
        let pulled = match r.images.source(reference, checksum) {
            Ok(source) => r.puller.pull(&source, checksum).await,
            Err(e) => Err(e),
        };
        let wasm = match pulled {
            Ok(p) => p.wasm,
            Err(e) => {
                report.push(label, false, format!("cannot get image {reference}: {e}"));
                return Ok(report);
            }
        };
        let Some(wasm) = wasm else {
            report.push(
                label,
                false,
                format!("image {reference} is native; only wasm stages can be reproduced"),
            );
            return Ok(report);
        };
        let module = match r.sandbox.prepare(&wasm) {
            Ok(m) => m,
            Err(e) => {
                report.push(label, false, e.to_string());
                return Ok(report);
            }
        };
        let recorded = stage["module_digest"].as_str().unwrap_or("");
        report.push(
            format!("{label} module"),
            module.digest == recorded,
            if module.digest == recorded {
                format!("{reference} holds module {recorded}")
            } else {
                format!(
                    "{reference} holds module {}, the receipt says {recorded}",
                    module.digest
                )
            },
        );
        let mut inputs = Vec::new();
        for i in stage["inputs"].as_array().into_iter().flatten() {
            if let Some(did) = i["dataset"].as_str() {
                let at = datasets.iter().position(|(d, _)| d == did).unwrap_or(0);
                inputs.push(r.inputs[at].clone());
            } else if let Some(n) = i["previous_stage"].as_u64() {
                match outputs.get(n as usize) {
                    Some(o) => inputs.push(o.clone()),
                    None => {
                        report.push(
                            label,
                            false,
                            format!("reads stage {n}, which did not run before it"),
                        );
                        return Ok(report);
                    }
                }
            }
        }
        let dir = r.work.join(format!("stage-{index}"));
        let (out, logs) = (dir.join("outputs"), dir.join("logs"));
        for d in [&out, &logs] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
        }
        let limits: Limits = serde_json::from_value(stage["limits"].clone()).unwrap_or_default();
        let spec = JobSpec {
            name: format!("stage-{index}"),
            inputs,
            output: out.clone(),
            logs: logs.clone(),
            args: serde_json::from_value(stage["arguments"].clone()).unwrap_or_default(),
            env: Vec::new(),
            limits,
            deterministic: Some(Determinism::for_stage(execution, index)),
        };
        let ran = r.sandbox.run(&module, &spec, &StopHandle::default()).await;
        let (want_outcome, want_exit) = (&stage["outcome"], stage["exit_code"].as_i64());
        match ran {
            Ok(rep) => {
                let ok = rep.outcome.as_str() == want_outcome.as_str().unwrap_or("")
                    && rep.exit_code.map(i64::from) == want_exit;
                report.push(
                    format!("{label} run"),
                    ok,
                    if ok {
                        format!(
                            "ended {} with exit code {:?}, as recorded",
                            rep.outcome.as_str(),
                            rep.exit_code
                        )
                    } else {
                        format!(
                            "ended {} with exit code {:?}, the receipt says {want_outcome} with {}",
                            rep.outcome.as_str(),
                            rep.exit_code,
                            stage["exit_code"]
                        )
                    },
                );
            }
            Err(e) => report.push(format!("{label} run"), false, e.to_string()),
        }
        check_files(&mut report, &format!("{label} log"), &stage["logs"], &logs);
        outputs.push(out);
    }
    match outputs.last() {
        Some(last) => check_files(&mut report, "output", &body["outputs"], last),
        None => report.push("reproduce", false, "the receipt has no stages"),
    }
    Ok(report)
}
