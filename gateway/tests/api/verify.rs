//! Verifiable compute across real processes: `insitu serve` (the provider),
//! the consumer's HTTP calls, and `insitu verify` (anyone, no server) as a
//! separate process. Receipts verify on honest results and fail on every
//! tampering; deterministic executions reproduce; the exec form cannot be
//! replayed; strangers see no file hashes.

use super::spawn_server;
use insitu_gateway::auth::exec_message;
use insitu_gateway::client::Consumer;
use insitu_runtime::image::package;
use insitu_runtime::receipt::{self, ProviderKey};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn now() -> u64 {
    super::now()
}

/// `insitu ARGS…`: (exit code, stdout, stderr).
fn insitu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_insitu"))
        .args(args)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("insitu-verify-test-cache"),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_word(s: &str) -> String {
    s.split_whitespace().last().unwrap().to_string()
}

fn verify(receipt: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verify", "--receipt", receipt.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = insitu(&args);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_verify_receipts_and_reproduce_executions() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let (data, layout, input) = (p("data"), p("layout"), p("input"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "red green green blue blue blue\n").unwrap();
    std::fs::write(input.join("b.txt"), "green\n").unwrap();
    let wc = package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    package::write_layout(&layout, "wc", &wc).unwrap();
    let d = data.to_str().unwrap();
    let (code, out, err) = insitu(&[
        "asset",
        "add",
        "--data-dir",
        d,
        "--path",
        input.to_str().unwrap(),
        "--name",
        "colours",
        "--allow-image",
        &wc.manifest_digest,
        "--deterministic",
    ]);
    assert_eq!(code, 0, "{err}");
    let ds = last_word(&out);
    std::fs::write(p("wf.json"), json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
        {"index": 0, "requirements": {"container": {"image": "example.invalid/wc", "tag": "1", "checksum": wc.manifest_digest}},
         "input": [{"index": 0, "id": ds}], "arguments": ["--top", "2"]}]}}}).to_string()).unwrap();
    let (_, out, _) = insitu(&[
        "workflow",
        "add",
        "--data-dir",
        d,
        "--file",
        p("wf.json").to_str().unwrap(),
    ]);
    let wf = last_word(&out);
    let consumer = ProviderKey::load_or_create(&p("consumer.key")).unwrap();
    let (_, out, _) = insitu(&[
        "agreement",
        "grant",
        "--data-dir",
        d,
        "--consumer",
        &consumer.address(),
        "--dataset",
        &ds,
        "--workflow",
        &wf,
    ]);
    let agreement = last_word(&out);
    let (mut server, base) = spawn_server(&data, &layout);
    let provider = ProviderKey::load_or_create(&data.join("provider.key")).unwrap();
    let http = insitu_runtime::tls::http_client();
    let exec = |body: String| {
        http.post(format!("{base}/api/v1/gateway/services/exec"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    // The exec form: the legacy one is refused, a signed one runs once.
    let legacy = format!(
        "serviceAgreementId={agreement}&consumerAddress={}&workflowDID={wf}&signature={}",
        consumer.address(),
        consumer.personal_sign(agreement.as_bytes()).unwrap()
    );
    let r = exec(legacy).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("a signature of the agreement id alone can be replayed and is refused")
    );
    let (code, form, err) = insitu(&[
        "sign",
        "--key",
        p("consumer.key").to_str().unwrap(),
        "--exec",
        &agreement,
        &wf,
    ]);
    assert_eq!(code, 0, "{err}");
    let r = exec(form.trim().to_string()).await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["workflowId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = exec(form.trim().to_string()).await.unwrap();
    assert_eq!(r.status(), 401, "a replay is refused");
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "this signed request was already used (a replay); sign a new one with a fresh nonce"
    );
    let stale = now() - 301;
    let message = exec_message(&agreement, &wf, "stalenonce1", stale);
    let r = exec(format!(
        "serviceAgreementId={agreement}&consumerAddress={}&workflowDID={wf}&nonce=stalenonce1&timestamp={stale}&signature={}",
        consumer.address(),
        consumer.personal_sign(message.as_bytes()).unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("the signed request is stale")
    );

    // Wait for it with a compute token; the SSE end event names the result.
    let owner_client = Consumer::new(base.clone(), consumer.clone());
    let token = owner_client
        .token(&owner_client.claims(&agreement, &wf, Some(&id)))
        .await
        .unwrap();
    let get = |path: String, auth: Option<&str>| {
        let mut r = http.get(format!("{base}/api/v1/{path}"));
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let sse = get(
        format!("node/services/compute/logs/{id}?follow=true"),
        Some(&token),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let end = sse
        .split("event: end\ndata: ")
        .nth(1)
        .expect("an end event");
    let end: Value = serde_json::from_str(end.lines().next().unwrap()).unwrap();
    assert_eq!(end["status"], "succeeded", "{sse}");
    let did = end["did"]
        .as_str()
        .expect("the end event carries the result DID")
        .to_string();

    let results: Value = get(format!("node/services/compute/results/{id}"), Some(&token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(results["did"], did);
    let r = &results["receipt"];
    assert_eq!(r["body"]["version"], 2);
    assert_eq!(r["body"]["deterministic"], true);
    let stage = &r["body"]["stages"][0];
    assert_eq!(stage["arguments"], json!(["--top", "2"]));
    assert!(
        stage["resources"]["peak_memory_bytes"].as_u64().unwrap() > 0,
        "{stage}"
    );
    assert!(stage["resources"]["wall_time_ms"].is_u64());
    let logs: Vec<&str> = stage["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(logs, ["progress.jsonl", "stderr.log", "stdout.log"]);
    let receipt_file = p("receipt.json");
    std::fs::write(&receipt_file, results.to_string()).unwrap();
    let files = p("files");
    std::fs::create_dir(&files).unwrap();
    for f in results["files"].as_array().unwrap() {
        let name = f["path"].as_str().unwrap();
        let bytes = get(
            format!("node/services/compute/results/{id}/{name}"),
            Some(&token),
        )
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
        std::fs::write(files.join(name), bytes).unwrap();
    }

    // Honest: every check holds.
    let addr = provider.address();
    let (code, out) = verify(
        &receipt_file,
        &["--provider", &addr, "--files", files.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    for line in [
        "ok   hash: ",
        "ok   signature: signed by ",
        "ok   provider: ",
        "ok   file counts.json: ",
    ] {
        assert!(out.contains(line), "{line} in {out}");
    }
    // The DSSE envelope verifies the same way, and says who signed it.
    let envelope = get(
        format!("node/services/compute/results/{id}/receipt.intoto.json"),
        Some(&token),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let env_file = p("receipt.intoto.json");
    std::fs::write(&env_file, &envelope).unwrap();
    let (code, out) = verify(&env_file, &["--provider", &addr]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("ok   envelope: DSSE envelope signed by {addr}")),
        "{out}"
    );
    // Reproduced locally from the same image and data: the same digests.
    let (code, out) = verify(
        &receipt_file,
        &[
            "--reproduce",
            "--input",
            input.to_str().unwrap(),
            "--image-layout",
            layout.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok   output counts.json: "), "{out}");
    assert!(out.contains("ok   stage 0 log stdout.log: "), "{out}");

    // Tampering, one kind at a time.
    let counts = files.join("counts.json");
    let honest = std::fs::read(&counts).unwrap();
    std::fs::write(&counts, b"{\"words\": 1000000}").unwrap();
    let (code, out) = verify(&receipt_file, &["--files", files.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let want = results["files"][0]["sha256"].as_str().unwrap();
    assert!(
        out.contains(&format!(
            "FAIL file counts.json: sha256 expected {want}, found sha256:"
        )),
        "{out}"
    );
    std::fs::remove_file(&counts).unwrap();
    let (code, out) = verify(&receipt_file, &["--files", files.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "FAIL file counts.json: missing from {}",
            files.display()
        )),
        "{out}"
    );
    std::fs::write(&counts, &honest).unwrap();
    std::fs::write(files.join("extra.txt"), b"x").unwrap();
    let (code, out) = verify(&receipt_file, &["--files", files.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("holds files the receipt does not name: extra.txt"),
        "{out}"
    );
    std::fs::remove_file(files.join("extra.txt")).unwrap();

    let mut changed = results["receipt"].clone();
    changed["body"]["consumer"] = json!("0x0000000000000000000000000000000000000001");
    std::fs::write(p("changed.json"), changed.to_string()).unwrap();
    let (code, out) = verify(&p("changed.json"), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL hash: the body hashes to 0x"), "{out}");
    assert!(out.contains("the body was changed after signing"), "{out}");

    let mallory = ProviderKey::random();
    let body: Value = results["receipt"]["body"].clone();
    let forged = receipt::sign(&mallory, body).unwrap();
    let mut as_provider = serde_json::to_value(&forged).unwrap();
    as_provider["signer"] = json!(addr);
    std::fs::write(p("forged.json"), as_provider.to_string()).unwrap();
    let (code, out) = verify(&p("forged.json"), &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "FAIL signature: signed by {}, but the receipt names {addr} as its signer",
            mallory.address()
        )),
        "{out}"
    );
    std::fs::write(p("mallory.json"), serde_json::to_string(&forged).unwrap()).unwrap();
    let (code, out) = verify(&p("mallory.json"), &["--provider", &addr]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "FAIL provider: signed by {}, not by the expected provider {addr}",
            mallory.address()
        )),
        "{out}"
    );

    let mut bad_env: Value = serde_json::from_str(&envelope).unwrap();
    let other = insitu_runtime::verify::envelope(&mallory, &forged).unwrap();
    bad_env["payload"] = other["payload"].clone();
    std::fs::write(p("bad-env.json"), bad_env.to_string()).unwrap();
    let (code, out) = verify(&p("bad-env.json"), &[]);
    assert_eq!(code, 2, "a broken envelope is no receipt");
    assert!(
        out.contains("the envelope was changed after signing"),
        "{out}"
    );

    // Reproducing with other data fails on the input digest.
    let wrong = p("wrong");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::write(wrong.join("a.txt"), "red\n").unwrap();
    let (code, out) = verify(
        &receipt_file,
        &[
            "--reproduce",
            "--input",
            wrong.to_str().unwrap(),
            "--image-layout",
            layout.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "FAIL input {ds}: {} has digest sha256:",
            wrong.display()
        )),
        "{out}"
    );
    assert!(out.contains("not the same data"), "{out}");

    // What each caller sees of the result asset.
    let stranger_client = Consumer::new(base.clone(), mallory.clone());
    let stranger = stranger_client
        .token(&stranger_client.claims(&agreement, &wf, Some(&id)))
        .await
        .unwrap();
    let sha = want.trim_start_matches("sha256:");
    // The audit: for each route, what the owner, a stranger with a valid
    // token of their own, and anyone without credentials get, and whether
    // the answer holds the output's sha256.
    // (caller, credentials, route, status, holds the sha256)
    let table: Vec<(&str, Option<&str>, String, u16, bool)> = vec![
        (
            "anyone",
            None,
            format!("metadata/assets/ddo/{did}"),
            200,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            format!("metadata/assets/ddo/{did}"),
            200,
            false,
        ),
        (
            "owner",
            Some(&token),
            format!("metadata/assets/ddo/{did}"),
            200,
            true,
        ),
        (
            "anyone",
            None,
            format!("metadata/assets/ddo/{ds}"),
            200,
            false,
        ),
        (
            "anyone",
            None,
            format!("node/services/compute/results/{id}"),
            401,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            format!("node/services/compute/results/{id}"),
            403,
            false,
        ),
        (
            "owner",
            Some(&token),
            format!("node/services/compute/results/{id}"),
            200,
            true,
        ),
        (
            "anyone",
            None,
            format!("node/services/compute/results/{id}/counts.json"),
            401,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            format!("node/services/compute/results/{id}/counts.json"),
            403,
            false,
        ),
        (
            "anyone",
            None,
            format!("node/services/compute/results/{id}/receipt.intoto.json"),
            401,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            format!("node/services/compute/results/{id}/receipt.intoto.json"),
            403,
            false,
        ),
        (
            "anyone",
            None,
            format!("node/services/compute/status/{id}"),
            401,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            format!("node/services/compute/status/{id}"),
            403,
            false,
        ),
        (
            "owner",
            Some(&token),
            format!("node/services/compute/status/{id}"),
            200,
            true,
        ),
        (
            "anyone",
            None,
            format!("node/services/compute/logs/{id}"),
            401,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            format!("node/services/compute/logs/{id}"),
            403,
            false,
        ),
        (
            "anyone",
            None,
            "node/services/compute/list".to_string(),
            401,
            false,
        ),
        (
            "stranger",
            Some(&stranger),
            "node/services/compute/list".to_string(),
            200,
            false,
        ),
        ("anyone", None, "openapi.json".to_string(), 200, false),
    ];
    for (who, auth, route, status, sees) in &table {
        let r = get(route.clone(), *auth).await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{who} GET {route}");
        let text = r.text().await.unwrap();
        assert_eq!(text.contains(sha), *sees, "{who} GET {route}: {text}");
        assert!(
            !text.contains(input.to_str().unwrap()),
            "{who} GET {route} shows a local path"
        );
    }
    for (path, want) in [("/metrics", 200), ("/healthz", 200)] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want);
        assert!(!r.text().await.unwrap().contains(sha), "{path}");
    }
    let r = http
        .delete(format!("{base}/api/v1/node/services/compute/stop/{id}"))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a stranger cannot stop it");
    let public: Value = get(format!("metadata/assets/ddo/{did}"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let main = &public["service"][0]["attributes"]["main"];
    assert!(main.get("files").is_none(), "{main}");
    assert_eq!(
        main["provenance"]["stages"][0]["module_digest"], stage["module_digest"],
        "provenance stays public"
    );
    assert!(main["provenance"]["stages"][0].get("arguments").is_none());

    server.kill().unwrap();
    server.wait().unwrap();
}
