//! Nevermined's own JavaScript SDK against a real `insitu serve` (issue #18):
//! `tests/nvm-sdk/compat.mjs` drives every compute route, the token
//! exchange, DDO resolution, search and access downloads through the SDK's
//! classes. The provider side is set up with the `insitu` CLI as a provider
//! would. A missing Node.js or SDK install fails the test (`scripts/setup`
//! installs the SDK with `npm ci`); it never skips.

use std::path::Path;
use std::process::Command;

fn insitu(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_insitu"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "insitu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn last_word(s: &str) -> String {
    s.split_whitespace().last().unwrap().to_string()
}

#[tokio::test]
async fn nevermineds_javascript_sdk_works_unchanged() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/nvm-sdk");
    assert!(
        suite
            .join("node_modules/@nevermined-io/sdk/package.json")
            .exists(),
        "the Nevermined SDK is not installed in {}: run scripts/setup (npm ci there)",
        suite.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).display().to_string();
    std::fs::write(p("word-count.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
    std::fs::write(p("hostile.wasm"), insitu_tests::HOSTILE_P1).unwrap();
    let wc = insitu(&[
        "push",
        &p("word-count.wasm"),
        "--layout",
        &format!("{}:word-count", p("images")),
    ]);
    let hostile = insitu(&[
        "push",
        &p("hostile.wasm"),
        "--layout",
        &format!("{}:hostile", p("images")),
    ]);
    std::fs::create_dir_all(p("notes")).unwrap();
    std::fs::write(p("notes/a.txt"), "the cat saw the other cat\n").unwrap();
    let (mut server, base) = insitu_tests::serve(
        Path::new(env!("CARGO_BIN_EXE_insitu")),
        ["--data-dir", &p("provider"), "--layout", &p("images")],
    );
    let dataset = last_word(&insitu(&[
        "asset",
        "add",
        "--data-dir",
        &p("provider"),
        "--path",
        &p("notes"),
        "--name",
        "notes",
        "--allow-image",
        &wc,
        "--allow-image",
        &hostile,
        "--access",
    ]));
    let stage = |image: &str, checksum: &str, args: &[&str]| {
        serde_json::json!({"main": {"type": "workflow", "name": image, "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": image, "tag": "1", "checksum": checksum}},
             "input": [{"index": 0, "id": dataset}], "arguments": args}]}}})
    };
    std::fs::write(
        p("wf.json"),
        stage("local/word-count", &wc, &[]).to_string(),
    )
    .unwrap();
    std::fs::write(
        p("slow.json"),
        stage("local/hostile", &hostile, &["sleep"]).to_string(),
    )
    .unwrap();
    let add = |file: &str| {
        last_word(&insitu(&[
            "workflow",
            "add",
            "--data-dir",
            &p("provider"),
            "--file",
            &p(file),
        ]))
    };
    let (workflow, slow) = (add("wf.json"), add("slow.json"));
    let consumer = insitu(&["key", "new", &p("consumer.key")]);
    let key = std::fs::read_to_string(p("consumer.key")).unwrap();
    let grant = |args: &[&str]| {
        let mut all = vec![
            "agreement",
            "grant",
            "--data-dir",
            &p("provider"),
            "--consumer",
            &consumer,
            "--dataset",
            &dataset,
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        all.extend(args.iter().map(|s| s.to_string()));
        last_word(&insitu(&all.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let compute = grant(&["--workflow", &workflow]);
    let slow_agreement = grant(&["--workflow", &slow]);
    let access = grant(&["--service", "access"]);
    // The gateway is another process: blocking this thread is fine.
    let out = Command::new("node")
        .arg(suite.join("compat.mjs"))
        .env("INSITU_URL", &base)
        .env("CONSUMER_KEY", key.trim())
        .env("COMPUTE_AGREEMENT", &compute)
        .env("WORKFLOW", &workflow)
        .env("SLOW_WORKFLOW", &slow)
        .env("SLOW_AGREEMENT", &slow_agreement)
        .env("DATASET", &dataset)
        .env("ACCESS_AGREEMENT", &access)
        .output()
        .expect("node runs (Node.js >= 18; scripts/setup checks it)");
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the SDK suite failed:\n{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["passed"].as_u64().unwrap() >= 13, "{summary}");
}
