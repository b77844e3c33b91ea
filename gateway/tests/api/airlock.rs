//! Output control (issue #26) as a provider and a consumer meet it: the
//! provider registers datasets with output policies and reviews held
//! results with the `insitu` CLI, `insitu serve` runs as its own process,
//! the consumer executes and polls over HTTP.

use insitu_gateway::client::{ClientError, Consumer};
use insitu_runtime::receipt::{ProviderKey, Receipt, verify};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_insitu");
/// A row of the dataset no report may show.
const SECRET: &str = "patient-00042,diagnosis-secret";

/// A provider's data dir with one dataset of 200 CSV rows under `policy`
/// (extra `insitu asset add` flags), and a consumer's agreements for a
/// guest that leaks its input (`leak`) and for word-count (`count`).
struct Provider {
    tmp: tempfile::TempDir,
    consumer: ProviderKey,
    /// (agreement, workflow) per workflow name.
    agreements: Vec<(String, String, String)>,
    server: Option<(Child, String)>,
}

fn insitu(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// The last word of a successful command's stdout.
fn last_word(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

impl Provider {
    fn new(policy: &[&str]) -> Provider {
        let tmp = tempfile::tempdir().unwrap();
        let p = |rel: &str| tmp.path().join(rel).display().to_string();
        let rows: String = (0..200)
            .map(|i| {
                format!(
                    "{i},patient-{i:05},diagnosis-{}\n",
                    if i == 42 {
                        "secret".into()
                    } else {
                        (i % 7).to_string()
                    }
                )
            })
            .collect();
        assert!(rows.contains(SECRET));
        std::fs::create_dir_all(tmp.path().join("rows")).unwrap();
        std::fs::write(tmp.path().join("rows/data.txt"), rows).unwrap();
        std::fs::write(tmp.path().join("hostile.wasm"), insitu_tests::HOSTILE_P1).unwrap();
        std::fs::write(tmp.path().join("wc.wasm"), insitu_tests::WORD_COUNT_P1).unwrap();
        let hostile = last_word(insitu(&[
            "push",
            &p("hostile.wasm"),
            "--layout",
            &format!("{}:hostile", p("layout")),
        ]));
        let wc = last_word(insitu(&[
            "push",
            &p("wc.wasm"),
            "--layout",
            &format!("{}:wc", p("layout")),
        ]));
        let (data, rows_dir) = (p("data"), p("rows"));
        let mut add = vec![
            "asset",
            "add",
            "--data-dir",
            &data,
            "--path",
            &rows_dir,
            "--name",
            "rows",
            "--allow-image",
            &hostile,
            "--allow-image",
            &wc,
        ];
        add.extend_from_slice(policy);
        let dataset = last_word(insitu(&add));
        let consumer = ProviderKey::random();
        let mut agreements = Vec::new();
        for (name, digest, args) in [
            ("leak", &hostile, json!(["leak"])),
            ("count", &wc, json!([])),
        ] {
            let file = p(&format!("{name}.json"));
            std::fs::write(
                &file,
                json!({"main": {"type": "workflow", "name": name, "workflow": {"stages": [
                    {"index": 0, "requirements": {"container": {"image": format!("local/{name}"), "tag": "", "checksum": digest}},
                     "input": [{"index": 0, "id": dataset}], "arguments": args}]}}})
                .to_string(),
            )
            .unwrap();
            let workflow = last_word(insitu(&[
                "workflow",
                "add",
                "--data-dir",
                &data,
                "--file",
                &file,
            ]));
            let agreement = last_word(insitu(&[
                "agreement",
                "grant",
                "--data-dir",
                &data,
                "--consumer",
                &consumer.address(),
                "--dataset",
                &dataset,
                "--workflow",
                &workflow,
            ]));
            agreements.push((name.to_string(), agreement, workflow));
        }
        let mut provider = Provider {
            tmp,
            consumer,
            agreements,
            server: None,
        };
        provider.start();
        provider
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn start(&mut self) {
        let (data, layout) = (self.data(), self.tmp.path().join("layout"));
        self.server = Some(insitu_tests::serve(
            Path::new(BIN),
            [
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--layout".as_ref(),
                layout.as_os_str(),
                "--workers".as_ref(),
                "2".as_ref(),
            ],
        ));
    }

    /// Kills the server (SIGKILL) and starts it again on the same data dir.
    fn restart(&mut self) {
        let (mut child, _) = self.server.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.start();
    }

    fn consumer(&self) -> Consumer {
        Consumer::new(
            self.server.as_ref().unwrap().1.clone(),
            self.consumer.clone(),
        )
    }

    fn review(&self, args: &[&str]) -> Output {
        let data = self.data().display().to_string();
        let mut all = vec!["review"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", &data]);
        insitu(&all)
    }

    /// Executes workflow `name`; returns its id.
    async fn execute(&self, name: &str) -> String {
        let (_, agreement, workflow) = self.agreements.iter().find(|a| a.0 == name).unwrap();
        let c = self.consumer();
        let t = c.token(&c.claims(agreement, workflow, None)).await.unwrap();
        c.execute(&t, agreement, workflow).await.unwrap()
    }

    /// A compute token for execution `id` of workflow `name`.
    async fn token(&self, name: &str, id: &str) -> String {
        let (_, agreement, workflow) = self.agreements.iter().find(|a| a.0 == name).unwrap();
        let c = self.consumer();
        c.token(&c.claims(agreement, workflow, Some(id)))
            .await
            .unwrap()
    }

    /// Polls execution `id` until it is `want` (20 s at most); its status.
    async fn until(&self, name: &str, id: &str, want: &str) -> Value {
        let t = self.token(name, id).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self
                .consumer()
                .get(&t, &format!("status/{id}"))
                .await
                .unwrap();
            let status = s["workflowStatus"]["status"].as_str().unwrap().to_string();
            if status == want {
                return s;
            }
            assert!(
                Instant::now() < deadline
                    && !["succeeded", "failed", "stopped"].contains(&status.as_str()),
                "execution {id} is {status}, not {want}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status code of GET `path` with execution `id`'s token.
    async fn refused(&self, name: &str, id: &str, path: &str) -> u16 {
        let t = self.token(name, id).await;
        match self.consumer().get(&t, path).await {
            Err(ClientError::Refused { status, .. }) => status,
            other => panic!("GET {path} was answered: {other:?}"),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_rows_and_small_counts_are_withheld_with_a_report_and_no_content() {
    let p = Provider::new(&["--max-copied-share", "0.05", "--min-count", "10"]);
    // The guest copies its input to a result and prints it to its logs.
    let leak = p.execute("leak").await;
    let s = p.until("leak", &leak, "failed").await;
    let reason = s["execution"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not pass the output checks"),
        "{reason}"
    );
    assert!(reason.contains("copied_input"), "{reason}");
    assert!(!reason.contains("patient-"), "{reason}");
    assert!(s["workflowStatus"]["did"].is_null(), "nothing published");
    assert_eq!(
        p.refused("leak", &leak, &format!("results/{leak}")).await,
        404
    );
    assert_eq!(p.refused("leak", &leak, &format!("logs/{leak}")).await, 409);
    let o = p.review(&["show", &leak]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = String::from_utf8(o.stdout).unwrap();
    assert!(
        !shown.contains("patient-") && !shown.contains(SECRET),
        "{shown}"
    );
    let report: Value = serde_json::from_str(&shown).unwrap();
    let files: Vec<&str> = report["checks"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"outputs/rows.csv"), "{files:?}");
    assert!(
        files.contains(&"logs/stage-0/stdout.log"),
        "logs are checked too: {files:?}"
    );
    assert!(report["checks"]["copied_share"].as_f64().unwrap() > 0.9);

    // Word counts of a one-line text are small counts, named by pointer.
    let count = p.execute("count").await;
    let s = p.until("count", &count, "failed").await;
    assert!(
        s["execution"]["reason"]
            .as_str()
            .unwrap()
            .contains("min_count"),
        "{s}"
    );
    let report: Value = serde_json::from_slice(&p.review(&["show", &count]).stdout).unwrap();
    let at: Vec<&str> = report["checks"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "min_count")
        .map(|f| f["location"].as_str().unwrap())
        .collect();
    assert!(at.len() >= 3, "{at:?}");
    // Locations are positions: a map keyed by words shows no word.
    assert!(
        at.iter()
            .all(|l| l.bytes().all(|b| b == b'/' || b.is_ascii_digit())),
        "{at:?}"
    );
    assert!(
        !String::from_utf8(p.review(&["show", &count]).stdout)
            .unwrap()
            .contains("patient")
    );
    // Nothing was held: there is nothing to release.
    let o = p.review(&["release", &count, "--reviewer", "ann"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("held for review"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_results_are_released_or_rejected_by_a_reviewer_across_a_restart() {
    let mut p = Provider::new(&["--release", "review", "--reviewer", "ann"]);
    let (a, b, c) = (
        p.execute("count").await,
        p.execute("count").await,
        p.execute("count").await,
    );
    for id in [&a, &b, &c] {
        let s = p.until("count", id, "held").await;
        assert!(
            s["execution"]["reason"]
                .as_str()
                .unwrap()
                .starts_with("held for review by ann"),
            "{s}"
        );
        assert_eq!(p.refused("count", id, &format!("results/{id}")).await, 404);
        assert_eq!(p.refused("count", id, &format!("logs/{id}")).await, 409);
    }
    // Held results survive a crash of the provider.
    p.restart();
    p.until("count", &a, "held").await;
    let listed = String::from_utf8(p.review(&["list"]).stdout).unwrap();
    for id in [&a, &b, &c] {
        assert!(listed.contains(id.as_str()), "{listed}");
    }
    // Only a reviewer of the dataset decides.
    let o = p.review(&["release", &a, "--reviewer", "mallory"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a reviewer"));
    let o = p.review(&[
        "release",
        &a,
        "--reviewer",
        "ann",
        "--reason",
        "aggregate only",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = p.until("count", &a, "succeeded").await;
    assert!(s["workflowStatus"]["did"].is_string());
    let t = p.token("count", &a).await;
    let results = p.consumer().get(&t, &format!("results/{a}")).await.unwrap();
    let receipt: Receipt = serde_json::from_value(results["receipt"].clone()).unwrap();
    verify(&receipt).unwrap();
    let review = &receipt.body["output_control"];
    assert_eq!(review["decision"], "released");
    assert_eq!(review["reviewer"], "ann");
    assert_eq!(review["reason"], "aggregate only");
    assert_eq!(review["checks"]["passed"], true);
    // Released logs reach the consumer too.
    let logs = p.consumer().get(&t, &format!("logs/{a}")).await.unwrap();
    assert!(logs["logs"].is_array());
    // A rejection fails the execution with the reviewer's reason.
    let o = p.review(&[
        "reject",
        &b,
        "--reviewer",
        "ann",
        "--reason",
        "counts too small",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = p.until("count", &b, "failed").await;
    assert_eq!(
        s["execution"]["reason"],
        "the results were rejected by reviewer ann: counts too small"
    );
    assert_eq!(p.refused("count", &b, &format!("results/{b}")).await, 404);
    // Deciding twice is refused.
    let o = p.review(&["release", &b, "--reviewer", "ann"]);
    assert_eq!(o.status.code(), Some(2));
    // The consumer may withdraw held results.
    let t = p.token("count", &c).await;
    let r = insitu_runtime::tls::http_client()
        .delete(format!(
            "{}/api/v1/node/services/compute/stop/{c}",
            p.server.as_ref().unwrap().1
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    p.until("count", &c, "stopped").await;
}

/// The review page (issue #26) in headless Chromium: the held executions
/// listed, one's report, text result and logs shown, released with a reason
/// and another rejected through the page's form; a forged form (no token,
/// another execution's token, a cross-site fetch) decides nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_releases_and_rejects_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = insitu_tests::browser_python();
    let p = Provider::new(&["--release", "review", "--reviewer", "ann"]);
    let (a, b) = (p.execute("count").await, p.execute("count").await);
    p.until("count", &a, "held").await;
    p.until("count", &b, "held").await;
    let base = p.server.as_ref().unwrap().1.clone();
    // Forged decisions: refused, and nothing decided.
    let http = insitu_runtime::tls::http_client();
    let page = http
        .get(format!("{base}/review?execution={a}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token_of = |html: &str| {
        html.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string()
    };
    let token_a = token_of(&page);
    for (form, site, why) in [
        (
            vec![("decision", "release"), ("reviewer", "ann"), ("csrf", "00")],
            None,
            "a made-up token",
        ),
        (
            vec![
                ("decision", "release"),
                ("reviewer", "ann"),
                ("csrf", token_a.as_str()),
            ],
            Some("cross-site"),
            "a cross-site request",
        ),
    ] {
        let mut req = http
            .post(format!("{base}/review/{a}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&form));
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{why}");
    }
    let r = http
        .post(format!("{base}/review/{b}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[
            ("decision", "release"),
            ("reviewer", "ann"),
            ("csrf", token_a.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a token of another execution");
    p.until("count", &a, "held").await;
    p.until("count", &b, "held").await;
    // The reviewer in the browser.
    let shots = root.join("target/screenshots");
    let out = Command::new(&python)
        .arg(root.join("tests/browser/review.py"))
        .args([&base, &a, &b])
        .arg(&shots)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("review page ok"), "{text}");
    p.until("count", &a, "succeeded").await;
    let s = p.until("count", &b, "failed").await;
    assert_eq!(
        s["execution"]["reason"],
        "the results were rejected by reviewer ann: too fine-grained"
    );
    for shot in ["review.png", "decided.png"] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2_000, "{shot}");
    }
}

/// A form body of plain fields (letters, digits, hex: nothing to escape).
fn encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}
