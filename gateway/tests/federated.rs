//! Federated learning across real processes: three to five `insitu serve`
//! providers on loopback ports, each with its own data dir and a shard of a
//! generated dataset, local agreements for one consumer key, and `insitu fl
//! run` as the coordinator — as they would run in production.

use insitu_gateway::auth::{AUD_COMPUTE, AUD_EXECUTE, make_grant};
use insitu_runtime::image::package;
use insitu_runtime::receipt::ProviderKey;
use insitu_tests::fl::{Row, accuracy, write_shard};
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_insitu");
const TRAIN_ARGS: [&str; 6] = ["--model", "logistic", "--epochs", "25", "--lr", "0.5"];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `insitu` with `args`; its stdout's last word on success.
fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "insitu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

/// One provider: its data dir, agreement, workflow and server.
struct Provider {
    data: PathBuf,
    base: String,
    agreement: String,
    workflow: String,
    server: Child,
}

impl Provider {
    fn kill(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `insitu serve` on a random loopback port; returns it and its URL.
fn serve(data: &Path, layout: &Path) -> (Child, String) {
    let args = [
        "--workers".as_ref(),
        "1".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--layout".as_ref(),
        layout.as_os_str(),
    ];
    insitu_tests::serve(Path::new(BIN), args)
}

/// Providers with shards of the training data, one consumer, a plan.
struct Federation {
    tmp: tempfile::TempDir,
    consumer: ProviderKey,
    key_file: PathBuf,
    providers: Vec<Provider>,
    wasm: PathBuf,
    held_out: Vec<Row>,
}

/// A shard: rows, features, extra training arguments.
struct Shard<'a> {
    rows: usize,
    features: usize,
    extra: &'a [&'a str],
}

fn shard(rows: usize) -> Shard<'static> {
    Shard {
        rows,
        features: 4,
        extra: &[],
    }
}

impl Federation {
    fn new(shards: &[Shard<'_>]) -> Federation {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let artifact = package::wasm_artifact(insitu_examples::LINREG_TRAIN.wasm).unwrap();
        package::write_layout(&layout, "linreg-train", &artifact).unwrap();
        let wasm = tmp.path().join("linreg-train.wasm");
        std::fs::write(&wasm, insitu_examples::LINREG_TRAIN.wasm).unwrap();
        let key_file = tmp.path().join("consumer.key");
        let consumer = ProviderKey::load_or_create(&key_file).unwrap();
        let all = tmp.path().join("all");
        std::fs::create_dir_all(&all).unwrap();
        let mut providers = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            let dir = tmp.path().join(format!("provider-{i}"));
            let (data, shard_dir) = (dir.join("data"), dir.join("shard"));
            std::fs::create_dir_all(&shard_dir).unwrap();
            write_shard(
                &shard_dir.join("train.csv"),
                s.rows,
                100 + i as u64,
                s.features,
            );
            if s.features == 4 {
                std::fs::copy(
                    shard_dir.join("train.csv"),
                    all.join(format!("train-{i}.csv")),
                )
                .unwrap();
            }
            let d = data.to_str().unwrap();
            let ds = cli(&[
                "asset",
                "add",
                "--data-dir",
                d,
                "--path",
                shard_dir.to_str().unwrap(),
                "--name",
                &format!("shard {i}"),
                "--allow-image",
                &artifact.manifest_digest,
            ]);
            // The shard's own arguments first: the guest SDK reads the
            // first occurrence of a flag.
            let args: Vec<&str> = s.extra.iter().chain(&TRAIN_ARGS).copied().collect();
            let wf_file = dir.join("workflow.json");
            std::fs::write(
                &wf_file,
                json!({"main": {"type": "workflow", "name": "federated logistic regression", "workflow": {"stages": [
                    {"index": 0, "requirements": {"container": {"image": "example.invalid/linreg-train", "tag": "1", "checksum": artifact.manifest_digest}},
                     "input": [{"index": 0, "id": ds}], "arguments": args}]}}})
                .to_string(),
            )
            .unwrap();
            let workflow = cli(&[
                "workflow",
                "add",
                "--data-dir",
                d,
                "--file",
                wf_file.to_str().unwrap(),
            ]);
            let agreement = cli(&[
                "agreement",
                "grant",
                "--data-dir",
                d,
                "--consumer",
                &consumer.address(),
                "--dataset",
                &ds,
                "--workflow",
                &workflow,
            ]);
            let (server, base) = serve(&data, &layout);
            providers.push(Provider {
                data,
                base,
                agreement,
                workflow,
                server,
            });
        }
        let held_out = write_shard(&tmp.path().join("held-out.csv"), 3000, 999, 4);
        Federation {
            tmp,
            consumer,
            key_file,
            providers,
            wasm,
            held_out,
        }
    }

    /// Writes a plan over all providers; returns its path.
    fn plan(&self, name: &str, rounds: u64, min: usize, threshold: usize) -> PathBuf {
        let path = self.tmp.path().join(format!("{name}.json"));
        let participants: Vec<Value> = self
            .providers
            .iter()
            .map(|p| json!({"gateway": p.base, "agreement": p.agreement, "workflow": p.workflow}))
            .collect();
        std::fs::write(
            &path,
            json!({"rounds": rounds, "min_participants": min, "threshold": threshold,
                   "parameters": 5, "round_timeout_secs": 60, "participants": participants})
            .to_string(),
        )
        .unwrap();
        path
    }

    fn coordinator(&self, plan: &Path, out: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.args(["fl", "run", "--plan"])
            .arg(plan)
            .arg("--key")
            .arg(&self.key_file)
            .arg("--out")
            .arg(out);
        c
    }

    /// The same model trained on every (4-feature) shard at once.
    fn central(&self, epochs: u32) -> Vec<f64> {
        let out = self.tmp.path().join("central");
        let o = Command::new(BIN)
            .args(["run", "--module"])
            .arg(&self.wasm)
            .arg("--input")
            .arg(self.tmp.path().join("all"))
            .arg("--output")
            .arg(&out)
            .args(["--", "--model", "logistic", "--epochs"])
            .arg(epochs.to_string())
            .args(["--lr", "0.5"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let model: Value =
            serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
        let mut params: Vec<f64> = serde_json::from_value(model["weights"].clone()).unwrap();
        params.push(model["bias"].as_f64().unwrap());
        params
    }

    /// An access token for the consumer (`key`) with `claims` at `base`.
    async fn token(&self, key: &ProviderKey, base: &str, claims: Value) -> reqwest::Response {
        let jwt = make_grant(key, &claims).unwrap();
        insitu_runtime::tls::http_client()
            .post(format!("{base}/api/v1/node/services/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"))
            .send()
            .await
            .unwrap()
    }

    async fn compute_token(&self, p: &Provider, execution: &str) -> String {
        let claims = json!({"iss": self.consumer.address(), "aud": AUD_COMPUTE, "sub": p.agreement,
                            "execution_id": execution, "eths": "personal", "iat": now(), "exp": now() + 300});
        let r = self.token(&self.consumer, &p.base, claims).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn params(bytes: &[u8]) -> Vec<f64> {
    insitu_federated::wire::model_from_bytes(bytes).unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_train_a_model_as_good_as_central_training_and_publish_it() {
    let f = Federation::new(&[shard(600), shard(900), shard(1500)]);
    let plan = f.plan("plan", 12, 3, 2);
    let out = f.tmp.path().join("job");
    let o = f.coordinator(&plan, &out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = lines(&o.stdout);
    assert_eq!(lines.len(), 13, "{lines:?}");
    for (r, line) in lines[..12].iter().enumerate() {
        assert_eq!(line["round"], r as u64);
        assert_eq!(line["participants"], json!([0, 1, 2]));
        assert_eq!(line["dropped"], json!([]));
        assert!(line["seconds"].as_f64().unwrap() > 0.0);
        // Every participant's round execution has its own receipt.
        for e in line["executions"].as_array().unwrap() {
            assert!(e["receipt"].as_str().unwrap().starts_with("0x"), "{e}");
        }
    }
    let last = &lines[12];
    let model_bytes = std::fs::read(out.join("model.f64")).unwrap();
    assert_eq!(last["model"], out.join("model.f64").to_str().unwrap());
    assert_eq!(last["digest"], lines[11]["model"]);
    let model = params(&model_bytes);

    // As good as the same model trained on all the data in one place.
    let central = f.central(300);
    let (fed, cen) = (
        accuracy(&model, &f.held_out),
        accuracy(&central, &f.held_out),
    );
    eprintln!("held-out accuracy: federated {fed:.4}, central {cen:.4}");
    assert!(cen > 0.8, "central {cen}");
    assert!(
        (fed - cen).abs() <= 0.01,
        "federated {fed} vs central {cen}"
    );

    // Published at provider 0 as the consumer's result, with provenance and
    // a receipt signed by that provider; the bytes are the model's.
    let p0 = &f.providers[0];
    let id = last["published"]["workflowId"].as_str().unwrap();
    let token = f.compute_token(p0, id).await;
    let http = insitu_runtime::tls::http_client();
    let status: Value = http
        .get(format!(
            "{}/api/v1/node/services/compute/status/{id}",
            p0.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["workflowStatus"]["status"], "succeeded");
    assert_eq!(status["workflowStatus"]["did"], last["published"]["did"]);
    let receipt = &status["execution"]["receipt"];
    let provider = ProviderKey::load_or_create(&p0.data.join("provider.key")).unwrap();
    assert_eq!(receipt["signer"], provider.address());
    assert_eq!(receipt["body"]["federated"]["model"], last["digest"]);
    let rounds = receipt["body"]["federated"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 12);
    // Provider 0 checked its own twelve round executions and their receipts.
    assert_eq!(
        receipt["body"]["federated"]["checked_here"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
    assert_eq!(rounds[5]["model"], lines[5]["model"]);
    let download = http
        .get(format!(
            "{}/api/v1/node/services/compute/results/{id}/model.f64",
            p0.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap().to_vec(), model_bytes);
    let ddo: Value = http
        .get(format!(
            "{}/api/v1/metadata/assets/ddo/{}",
            p0.base,
            last["published"]["did"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ddo["service"][0]["attributes"]["main"]["owner"],
        f.consumer.address().to_lowercase()
    );

    // A round's execution published nothing: its results are empty, and no
    // provider kept an update on disk.
    let round_exec = lines[3]["executions"][1]["execution"].as_str().unwrap();
    let p1 = &f.providers[1];
    let t = f.compute_token(p1, round_exec).await;
    let results: Value = http
        .get(format!(
            "{}/api/v1/node/services/compute/results/{round_exec}",
            p1.base
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(results["files"], json!([]), "{results}");
    for p in &f.providers {
        for file in files(&p.data) {
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(
                name != "update.f64" && name != "update.json",
                "an unmasked update stayed on disk: {}",
                file.display()
            );
        }
    }
    // The coordinator keeps only its state and the global model (also by
    // digest, for a crash-safe commit of each round).
    let mut kept: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["model.f64", "models", "state.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_mid_round_and_a_malformed_update_are_dropped() {
    // Provider 3 trains slowly (killed while it trains); provider 2's data
    // has 5 features, so its update has 6 parameters instead of 5.
    let slow = ["--epochs", "4000000"];
    let mut f = Federation::new(&[
        shard(600),
        shard(900),
        Shard {
            rows: 300,
            features: 5,
            extra: &[],
        },
        Shard {
            rows: 600,
            features: 4,
            extra: &slow,
        },
    ]);
    let plan = f.plan("plan", 3, 2, 2);
    let out = f.tmp.path().join("job");
    let coordinator = f
        .coordinator(&plan, &out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill provider 3 once it has shared its round-0 keys (its training
    // runs for a while yet), so its masks must be removed with the
    // survivors' shares of its key. Its /metrics count the steps it took.
    let mut victim = f.providers.pop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = insitu_runtime::tls::http_client();
    loop {
        let metrics = http
            .get(format!("{}/metrics", victim.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("insitu_fl_steps_total{step=\"share\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "provider 3 never shared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The counter moves before the answer leaves: give the answer time to
    // reach the coordinator (the training still runs for seconds).
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.kill();
    let o = coordinator.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = lines(&o.stdout);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let r0 = &lines[0];
    assert_eq!(r0["participants"], json!([0, 1]), "{r0}");
    let dropped = r0["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 2, "{r0}");
    assert_eq!(dropped[0]["participant"], 2);
    assert_eq!(
        dropped[0]["reason"],
        "masked: HTTP 422: the update has 6 parameters; the plan's model has 5 (the training stage wrote a model of another shape)"
    );
    assert_eq!(dropped[1]["participant"], 3);
    assert!(
        dropped[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("masked: "),
        "{r0}"
    );
    // Later rounds: provider 3 is gone from the start.
    let later = lines[1]["dropped"].as_array().unwrap();
    assert!(
        later
            .iter()
            .any(|d| d["participant"] == 3 && d["reason"].as_str().unwrap().starts_with("start: ")),
        "{}",
        lines[1]
    );
    // The sum of the two survivors was recovered exactly despite the
    // dropout after sharing: the model is a sensible one.
    let model = params(&std::fs::read(out.join("model.f64")).unwrap());
    assert!(accuracy(&model, &f.held_out) > 0.8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_threshold_the_job_aborts_and_a_restarted_coordinator_resumes() {
    let f = Federation::new(&[
        shard(600),
        shard(900),
        Shard {
            rows: 300,
            features: 5,
            extra: &[],
        },
    ]);
    // Threshold 3 of 3 with a malformed update: two masked updates are
    // fewer than the threshold, so the round aborts revealing nothing.
    let strict = f.plan("strict", 2, 3, 3);
    let o = f
        .coordinator(&strict, &f.tmp.path().join("strict"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("round 0 aborted: only 2 masked updates arrived, fewer than the threshold 3: the round is aborted and nothing is revealed; dropped: participant 2 (masked: HTTP 422: the update has 6 parameters"),
        "{err}"
    );
    assert!(o.stdout.is_empty());

    // Coordinator restart: killed after round 1, it resumes at round 2.
    let plan = f.plan("plan", 5, 2, 2);
    let out = f.tmp.path().join("job");
    let mut c = f
        .coordinator(&plan, &out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(c.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        stdout.next().unwrap().unwrap();
    }
    c.kill().unwrap();
    c.wait().unwrap();
    let state: Value =
        serde_json::from_slice(&std::fs::read(out.join("state.json")).unwrap()).unwrap();
    let done = state["rounds"].as_array().unwrap().len();
    assert!(done >= 2, "{state}");
    let o = f.coordinator(&plan, &out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = lines(&o.stdout);
    let rounds: Vec<u64> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, (done as u64..5).collect::<Vec<_>>());
    assert_eq!(lines.last().unwrap()["job"], state["job"]);
    assert_eq!(lines.last().unwrap()["rounds"], 5);

    // A publication whose provenance misstates one of this provider's round
    // executions is refused.
    let p = &f.providers[0];
    let mut forged = lines[0].clone();
    let e0 = forged["executions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["participant"] == 0)
        .unwrap();
    e0["receipt"] = json!(format!("0x{}", "0".repeat(64)));
    let claims = json!({"iss": f.consumer.address(), "aud": AUD_EXECUTE, "sub": p.agreement, "did": p.workflow,
                        "eths": "personal", "iat": now(), "exp": now() + 300});
    let r = f.token(&f.consumer, &p.base, claims).await;
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = insitu_runtime::tls::http_client()
        .post(format!(
            "{}/api/v1/node/services/fl/{}/publish",
            p.base,
            state["job"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({"model": "AAAAAAAA8D8=", "plan": state["plan"], "rounds": [forged]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().ends_with(&format!(
            "is not a round of job {} by this consumer with the receipt named",
            state["job"].as_str().unwrap()
        )),
        "{body}"
    );

    // A stranger (another key) gets no round started under the agreement.
    let p = &f.providers[0];
    let stranger = ProviderKey::random();
    let claims = json!({"iss": stranger.address(), "aud": AUD_EXECUTE, "sub": p.agreement, "did": p.workflow,
                        "eths": "personal", "iat": now(), "exp": now() + 300});
    let r = f.token(&stranger, &p.base, claims).await;
    let status = if r.status() == 200 {
        let token = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        insitu_runtime::tls::http_client()
            .post(format!(
                "{}/api/v1/node/services/fl/job-1/0/start?participant=1&threshold=2&parameters=5&attempt=a",
                p.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    } else {
        r.status().as_u16()
    };
    assert!([401, 403].contains(&status), "{status}");
    // Nobody at all: 401.
    let r = insitu_runtime::tls::http_client()
        .post(format!("{}/api/v1/node/services/fl/job-1/0/share", p.base))
        .json(&json!({"roster": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
