//! `insitu-bench verify`: what verifiable receipts cost — signing a receipt
//! (JCS + sha256 + secp256k1), and `insitu verify` of a result's files
//! (target ≥ 1 GB/s on a 1 GiB result).

use insitu_runtime::pipeline::collect;
use insitu_runtime::receipt::{self, ProviderKey};
use serde_json::json;
use std::io::Write;
use std::time::Instant;

pub fn verify() -> anyhow::Result<()> {
    println!("== verify: receipt signing and checking ==");
    let key = ProviderKey::random();
    let stage = json!({"index": 0, "status": "succeeded", "outcome": "exited", "exit_code": 0,
        "image": "r.example/wc:1@sha256:0325ea30a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c",
        "image_digest": format!("sha256:{}", "ab".repeat(32)), "module_digest": format!("sha256:{}", "cd".repeat(32)),
        "backend": "wasm", "arguments": ["--top", "5"], "inputs": [{"dataset": format!("did:nv:{}", "12".repeat(32))}],
        "limits": {"timeout": 30000, "memory": 536870912u64, "output_quota": 1073741824u64, "log_quota": 16777216},
        "started_at": 1_764_000_000_000u64, "finished_at": 1_764_000_000_002u64,
        "resources": {"wall_time_ms": 1, "peak_memory_bytes": 1_179_648, "output_bytes": 120, "log_bytes": 300, "fuel_consumed": null},
        "logs": [{"path": "stderr.log", "size": 20, "sha256": format!("sha256:{}", "ef".repeat(32))},
                 {"path": "stdout.log", "size": 280, "sha256": format!("sha256:{}", "01".repeat(32))}]});
    let body = json!({"version": 2, "schema": receipt::SCHEMA_ID, "deterministic": false,
        "execution": "nv-0123456789abcdef", "agreement": format!("0x{}", "34".repeat(32)),
        "workflow": format!("did:nv:{}", "56".repeat(32)), "consumer": format!("0x{}", "78".repeat(20)),
        "provider": key.address(), "result": format!("did:nv:{}", "9a".repeat(32)),
        "inputs": [{"stage": 0, "did": format!("did:nv:{}", "12".repeat(32)), "digest": format!("sha256:{}", "bc".repeat(32))}],
        "outputs": [{"path": "counts.json", "size": 120, "sha256": format!("sha256:{}", "de".repeat(32))}],
        "stages": [stage], "finished_at": 1_764_000_000_003u64});
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(receipt::sign(&key, body.clone())?);
    }
    let sign = t.elapsed() / n;
    let signed = receipt::sign(&key, body)?;
    let t = Instant::now();
    for _ in 0..n {
        assert!(insitu_runtime::verify::verify(&signed, None, None).ok());
    }
    let check = t.elapsed() / n;
    println!(
        "sign a one-stage receipt: {:.1} µs; check its hash and signature: {:.1} µs",
        sign.as_secs_f64() * 1e6,
        check.as_secs_f64() * 1e6
    );

    let gib: u64 = std::env::var("INSITU_BENCH_VERIFY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir()?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join("result.bin"))?);
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for _ in 0..gib {
        f.write_all(&chunk)?;
    }
    f.into_inner()?.sync_all()?;
    let (files, _) = collect(dir.path())?;
    let result = receipt::sign(&key, json!({"version": 2, "outputs": files}))?;
    for round in 1..=3 {
        let t = Instant::now();
        let report = insitu_runtime::verify::verify(&result, None, Some(dir.path()));
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(report.ok(), "{:?}", report.checks);
        println!(
            "verify a {gib} MiB result (page cache warm after round 1), round {round}: {:.2} s, {:.2} GB/s",
            secs,
            (gib << 20) as f64 / secs / 1e9
        );
    }
    let t = Instant::now();
    let status = std::process::Command::new("sha256sum")
        .arg(dir.path().join("result.bin"))
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "anchor: coreutils sha256sum of the same file: {secs:.2} s, {:.2} GB/s\n",
                (gib << 20) as f64 / secs / 1e9
            );
        }
        _ => println!("anchor: sha256sum is not installed\n"),
    }
    Ok(())
}
