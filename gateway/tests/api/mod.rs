//! The HTTP gateway over real loopback HTTP with a real signing client.

mod access;
mod airlock;
mod dashboard;
mod publish;
mod sdk;
mod verify;

use insitu_gateway::auth::{AUD_COMPUTE, AUD_EXECUTE, make_grant, make_grant_eip712};
use insitu_gateway::config::ServeConfig;
use insitu_gateway::http::{Gateway, Local, build};
use insitu_runtime::image::package;
use insitu_runtime::receipt::{ProviderKey, Receipt, verify};
use insitu_runtime::workflow::Did;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Api {
    base: String,
    gateway: Option<Arc<Gateway>>,
    tmp: tempfile::TempDir,
    http: reqwest::Client,
    consumer: ProviderKey,
    agreement: String,
    workflow: String,
    dataset: Did,
    /// Manifest digests of the word-count and spinner images in the layout.
    wc: String,
    spin: String,
    /// The server; `None` once halted.
    local: Option<Local>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Starts a gateway on `dir/data` (layouts `dir/layout`), served on a random
/// loopback port; shutdowns give running executions 300 ms.
async fn serve_on(dir: &Path, tweak: impl FnOnce(&mut ServeConfig)) -> Local {
    let mut config = ServeConfig::new(dir.join("data"));
    config.layouts = vec![dir.join("layout")];
    config.workers = 2;
    tweak(&mut config);
    Local::start(&config, Duration::from_millis(300))
        .await
        .unwrap()
}

async fn start() -> Api {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Api {
    let tmp = tempfile::tempdir().unwrap();
    let wc = package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    package::write_layout(&tmp.path().join("layout"), "wc", &wc).unwrap();
    let spin = package::wasm_artifact(&insitu_tests::spinner()).unwrap();
    package::write_layout(&tmp.path().join("layout"), "spin", &spin).unwrap();
    let local = serve_on(tmp.path(), tweak).await;
    let (base, gateway) = (local.base.clone(), local.gateway.clone());

    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "red green green blue blue blue\n").unwrap();
    let ds = gateway
        .store
        .add_dataset(
            "colours",
            &input,
            &[wc.manifest_digest.clone(), spin.manifest_digest.clone()],
            60,
        )
        .unwrap();
    let consumer = ProviderKey::load_or_create(&tmp.path().join("consumer.key")).unwrap();
    let mut api = Api {
        base,
        gateway: Some(gateway),
        tmp,
        http: insitu_runtime::tls::http_client(),
        consumer,
        agreement: String::new(),
        workflow: String::new(),
        dataset: ds,
        wc: wc.manifest_digest,
        spin: spin.manifest_digest,
        local: Some(local),
    };
    let (wf, agreement) = api.grant(&api.wc.clone(), 600);
    (api.workflow, api.agreement) = (wf, agreement);
    api
}

impl Api {
    /// A one-stage workflow running `image` on the dataset, and an agreement
    /// for it valid `secs`: (workflow DID, agreement id).
    fn grant(&self, image: &str, secs: u64) -> (String, String) {
        let store = &self.g().store;
        let wf = store
            .add_workflow(&json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "example.invalid/alg", "tag": "1", "checksum": image}},
                 "input": [{"index": 0, "id": self.dataset}]}]}}}))
            .unwrap();
        let agreement = store
            .grant(&self.consumer.address(), &self.dataset, &wf, secs)
            .unwrap();
        (wf.to_string(), agreement)
    }

    fn g(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// Shuts the server down gracefully, drops the gateway (releasing the
    /// data dir) and starts a new one on the same data dir.
    async fn restart(&mut self) {
        assert_eq!(self.halt().await, 0);
        let weak = Arc::downgrade(self.gateway.as_ref().unwrap());
        self.gateway = None;
        assert!(
            weak.upgrade().is_none(),
            "the old gateway is still referenced"
        );
        let local = serve_on(self.tmp.path(), |_| {}).await;
        (self.base, self.gateway) = (local.base.clone(), Some(local.gateway.clone()));
        self.local = Some(local);
    }

    /// Shuts the server down gracefully; returns how many executions it stopped.
    async fn halt(&mut self) -> usize {
        self.local.take().unwrap().stop().await.unwrap()
    }

    async fn token(&self, key: &ProviderKey, claims: Value) -> reqwest::Response {
        self.token_jwt(&make_grant(key, &claims).unwrap()).await
    }

    async fn token_jwt(&self, jwt: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/node/services/oauth/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"))
            .send()
            .await
            .unwrap()
    }

    fn claims(&self, key: &ProviderKey, aud: &str) -> Value {
        json!({"iss": key.address(), "aud": aud, "sub": self.agreement, "did": self.workflow, "eths": "personal",
               "iat": now(), "exp": now() + 300})
    }

    async fn access(&self, claims: Value) -> String {
        let r = self.token(&self.consumer, claims).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A compute token for execution `id`.
    async fn compute_token(&self, id: &str) -> String {
        let mut c = self.claims(&self.consumer, AUD_COMPUTE);
        c["execution_id"] = json!(id);
        self.access(c).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn execute(&self, token: &str) -> (u16, Value) {
        self.execute_under(token, &self.agreement, &self.workflow)
            .await
    }

    async fn execute_under(&self, token: &str, agreement: &str, workflow: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!(
                "{}/api/v1/node/services/compute/execute/{agreement}",
                self.base
            ))
            .bearer_auth(token)
            .json(&json!({"workflowDid": workflow, "consumer": self.consumer.address()}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Executes the default workflow; returns the execution id.
    async fn run(&self) -> String {
        let token = self.access(self.claims(&self.consumer, AUD_EXECUTE)).await;
        let (code, body) = self.execute(&token).await;
        assert_eq!(code, 202, "{body}");
        body["workflowId"].as_str().unwrap().to_string()
    }

    /// Polls the store until execution `id` is in one of `statuses`.
    async fn wait_for(&self, id: &str, statuses: &[&str]) -> insitu_runtime::store::Execution {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let e = self.g().store.execution(id).unwrap();
            if statuses.contains(&e.status.as_str()) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{id} still {}",
                e.status.as_str()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_executes_watches_and_downloads_over_http() {
    let api = start().await;
    let exec_token = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    let (status, body) = api.execute(&exec_token).await;
    assert_eq!(status, 202, "{body}");
    let id = body["workflowId"].as_str().unwrap().to_string();

    let mut claims = api.claims(&api.consumer, AUD_COMPUTE);
    claims["execution_id"] = json!(id);
    let token = api.access(claims).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, s) = api
            .get(
                &format!("/api/v1/node/services/compute/status/{id}"),
                &token,
            )
            .await;
        assert_eq!(code, 200, "{s}");
        let st = s["workflowStatus"]["status"].as_str().unwrap().to_string();
        if ["succeeded", "failed", "stopped"].contains(&st.as_str()) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["workflowStatus"]["status"], "succeeded", "{status}");
    assert_eq!(status["workflowStatus"]["pods"][0]["status"], "succeeded");
    // The guest SDK's progress, as the guest last reported it.
    assert_eq!(status["progress"]["stage"], 0, "{status}");
    assert_eq!(status["progress"]["fraction"], 1.0, "{status}");
    assert!(
        status["progress"]["message"]
            .as_str()
            .unwrap()
            .ends_with("a.txt"),
        "{status}"
    );
    let result_did = status["workflowStatus"]["did"]
        .as_str()
        .unwrap()
        .to_string();

    let (code, results) = api
        .get(
            &format!("/api/v1/node/services/compute/results/{id}"),
            &token,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(results["files"][0]["path"], "counts.json");
    let receipt: Receipt = serde_json::from_value(results["receipt"].clone()).unwrap();
    verify(&receipt).unwrap();
    let r = api
        .http
        .get(format!(
            "{}/api/v1/node/services/compute/results/{id}/counts.json",
            api.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let counts: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(counts["counts"]["blue"], 3);

    let (code, logs) = api
        .get(&format!("/api/v1/node/services/compute/logs/{id}"), &token)
        .await;
    assert_eq!(code, 200);
    assert!(
        logs["logs"][0]["content"]
            .as_str()
            .unwrap()
            .contains("1 files, 6 words"),
        "{logs}"
    );
    let (code, list) = api.get("/api/v1/node/services/compute/list", &token).await;
    assert_eq!(
        (code, list["executions"][0]["workflowId"].as_str()),
        (200, Some(id.as_str()))
    );
    let (code, ddo) = api
        .get(&format!("/api/v1/metadata/assets/ddo/{result_did}"), &token)
        .await;
    assert_eq!((code, ddo["id"].as_str()), (200, Some(result_did.as_str())));
    assert_eq!(
        ddo["service"][0]["attributes"]["main"]["owner"],
        api.consumer.address().to_ascii_lowercase()
    );
    // The worker records durations just after the status turns terminal;
    // the warmer compiles both images the dataset allows when it is
    // registered, so each is compiled once and the execution (or the warmer,
    // if the execution came first) finds its module in memory.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = api
            .http
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let settled = m.contains("insitu_executions_active 0")
            && m.contains("insitu_modules_prepared_total{source=\"compiled\"} 2");
        if settled || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for line in [
        "insitu_executions{status=\"succeeded\"} 1",
        "insitu_modules_prepared_total{source=\"compiled\"} 2",
        "insitu_modules_prepared_total{source=\"memory\"} 1",
        "insitu_stage_duration_seconds_count 1",
        "insitu_stage_duration_seconds_bucket{le=\"+Inf\"} 1",
        "insitu_executions_active 0",
        "insitu_queue_depth 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_precise_statuses_and_messages() {
    let api = start().await;
    // No token.
    let r = api
        .http
        .get(format!("{}/api/v1/node/services/compute/list", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "unauthorized", "message": "missing bearer token; get one from POST /api/v1/node/services/oauth/token"})
    );
    // A grant signed by someone else than its issuer, and an expired one.
    let stranger = ProviderKey::load_or_create(&api.tmp.path().join("stranger.key")).unwrap();
    let r = api
        .token(&stranger, api.claims(&api.consumer, AUD_EXECUTE))
        .await;
    assert_eq!(r.status(), 401);
    assert!(
        r.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("the grant's signature is from")
    );
    let mut old = api.claims(&api.consumer, AUD_EXECUTE);
    old["exp"] = json!(now() - 3600);
    let r = api.token(&api.consumer, old).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("the grant expired")
    );
    // A valid stranger executing under the consumer's agreement.
    let mut theirs = api.claims(&stranger, AUD_EXECUTE);
    theirs["iss"] = json!(stranger.address());
    let r = api.token(&stranger, theirs).await;
    let stranger_token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .http
        .post(format!(
            "{}/api/v1/node/services/compute/execute/{}",
            api.base, api.agreement
        ))
        .bearer_auth(&stranger_token)
        .json(&json!({"workflowDid": api.workflow, "consumer": stranger.address()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        format!(
            "not permitted: agreement {} belongs to another consumer",
            api.agreement
        )
    );

    // The consumer's execution is invisible to the stranger.
    let token = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    let (_, body) = api.execute(&token).await;
    let id = body["workflowId"].as_str().unwrap().to_string();
    let mut c = api.claims(&stranger, AUD_COMPUTE);
    c["iss"] = json!(stranger.address());
    c["execution_id"] = json!(id);
    let t = api.token(&stranger, c).await.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = api
        .get(&format!("/api/v1/node/services/compute/status/{id}"), &t)
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (
            403,
            Some(format!("execution {id} belongs to another consumer").as_str())
        )
    );
    // An execute token is not a compute token.
    let (code, body) = api
        .get(
            &format!("/api/v1/node/services/compute/status/{id}"),
            &token,
        )
        .await;
    assert_eq!((code, body["error"].as_str()), (403, Some("forbidden")));

    // Result downloads name only published files.
    let mut c = api.claims(&api.consumer, AUD_COMPUTE);
    c["execution_id"] = json!(id);
    let t = api.access(c).await;
    for _ in 0..500 {
        if api.g().store.execution(&id).unwrap().status.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Sent raw so no client normalises the dots away; encoded slashes too.
    for evil in [
        "../../insitu.db",
        "..%2F..%2Finsitu.db",
        "counts.json/../../../provider.key",
    ] {
        let (code, body) = raw_get(
            &api.base,
            &format!("/api/v1/node/services/compute/results/{id}/{evil}"),
            &t,
        );
        assert_eq!(code, 404, "{evil}: {body}");
        assert!(body.contains("has no result file"), "{evil}: {body}");
    }
    // Unknown DIDs and oversized bodies (fresh clients: the server may close a
    // connection whose body it refused, so it must not be reused).
    let post_json = async |body: Vec<u8>| {
        insitu_runtime::tls::http_client()
            .post(format!(
                "{}/api/v1/node/services/compute/execute/{}",
                api.base, api.agreement
            ))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    };
    let ghost = format!("did:nv:{}", "ab".repeat(32));
    let (code, body) = api
        .get(&format!("/api/v1/metadata/assets/ddo/{ghost}"), &t)
        .await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let r = post_json(vec![b' '; 1 << 20]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "too_large");
    let r = post_json("{\"workflowDid\": 7}".into()).await;
    assert_eq!(r.status(), 422);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["error"], "invalid");
    assert!(
        body["message"].as_str().unwrap().contains("workflowDid"),
        "{body}"
    );

    // Found by schemathesis (scripts/api-fuzz): every refusal is the
    // documented JSON error, including those of axum's extractors, and its
    // code is one the OpenAPI document lists.
    let doc: Value = serde_json::from_str(insitu_gateway::http::OPENAPI).unwrap();
    let codes = &doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"];
    let documented = |body: &Value| codes.as_array().unwrap().contains(&body["error"]);
    let (code, body) = api
        .get(
            &format!("/api/v1/node/services/compute/logs/{id}?follow=null"),
            &t,
        )
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("follow"),
        "{body}"
    );
    let (code, body) = raw_get(&api.base, "/api/v1/node/services/compute/status/%FF%FE", &t);
    assert_eq!(code, 400, "{body}");
    let body: Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "bad_request", "{body}");
    assert!(documented(&body));
    for (path, what) in [
        (
            format!("compute/execute/{}", api.agreement),
            "application/json",
        ),
        (
            "oauth/token".to_string(),
            "application/x-www-form-urlencoded",
        ),
    ] {
        let r = insitu_runtime::tls::http_client()
            .post(format!("{}/api/v1/node/services/{path}", api.base))
            .bearer_auth(&token)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{path}");
        let body = r.json::<Value>().await.unwrap();
        assert_eq!(body["error"], "unsupported_media_type", "{body}");
        assert!(body["message"].as_str().unwrap().contains(what), "{body}");
        assert!(documented(&body));
    }
    let r = post_json(":{".into()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_request");
    for code in ["disk_full", "busy", "unavailable", "conflict", "internal"] {
        assert!(
            documented(&json!({"error": code})),
            "{code} is not in openapi.json"
        );
    }
}

/// `GET path` over a raw TCP connection: the request line goes out unchanged.
fn raw_get(base: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_exec_form_and_eip712_grants_execute_too() {
    let api = start_with(|c| c.legacy_exec_signatures = true).await;
    let ts = now();
    let message =
        insitu_gateway::auth::exec_message(&api.agreement, &api.workflow, "nonce-0001", ts);
    let form = |signature: &str| {
        format!(
            "serviceAgreementId={}&consumerAddress={}&signature={signature}&workflowDID={}&nonce=nonce-0001&timestamp={ts}",
            api.agreement,
            api.consumer.address(),
            api.workflow.replace(':', "%3A")
        )
    };
    let post = |body: String| {
        api.http
            .post(format!("{}/api/v1/gateway/services/exec", api.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // Signed by someone else: refused, nothing queued.
    let stranger = ProviderKey::load_or_create(&api.tmp.path().join("stranger.key")).unwrap();
    let r = post(form(&stranger.personal_sign(message.as_bytes()).unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        format!(
            "the signature is from {}, not from consumerAddress {}; sign the exec message (agreement, workflow, nonce, timestamp) with the consumer's key",
            stranger.address().to_ascii_lowercase(),
            api.consumer.address().to_ascii_lowercase()
        )
    );
    assert!(
        api.g()
            .store
            .executions_of(&api.consumer.address())
            .unwrap()
            .is_empty()
    );
    let r = post(form("0x1234")).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(form("0x1234").replace("nonce=nonce-0001", "nonce=short"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // With legacy_exec_signatures the old form (agreement id only) still runs.
    let r = post(format!(
        "serviceAgreementId={}&consumerAddress={}&signature={}&workflowDID={}",
        api.agreement,
        api.consumer.address(),
        api.consumer
            .personal_sign(api.agreement.as_bytes())
            .unwrap(),
        api.workflow
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 202);

    let r = post(form(
        &api.consumer.personal_sign(message.as_bytes()).unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["workflowId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api.wait_for(&id, &["succeeded", "failed"])
            .await
            .status
            .as_str(),
        "succeeded"
    );

    // An EIP-712 grant (as the SDK signs with a typed-data wallet) for its status.
    let mut c = api.claims(&api.consumer, AUD_COMPUTE);
    c["execution_id"] = json!(id);
    c.as_object_mut().unwrap().remove("eths");
    let jwt = make_grant_eip712(&api.consumer, &c, "Nevermined login", 31337).unwrap();
    let r = api.token_jwt(&jwt).await;
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, status) = api
        .get(
            &format!("/api/v1/node/services/compute/status/{id}"),
            &token,
        )
        .await;
    assert_eq!(
        (code, status["workflowStatus"]["status"].as_str()),
        (200, Some("succeeded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execute_answer_carries_the_new_executions_compute_token() {
    let api = start().await;
    let token = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    let (code, first) = api.execute(&token).await;
    assert_eq!(code, 202, "{first}");
    let (code, second) = api.execute(&token).await;
    assert_eq!(code, 202, "{second}");
    let (id, compute) = (
        first["workflowId"].as_str().unwrap(),
        first["access_token"].as_str().unwrap(),
    );
    api.wait_for(id, &["succeeded"]).await;
    // It reads its own execution, as a token for a signed compute grant does.
    let (code, status) = api
        .get(
            &format!("/api/v1/node/services/compute/status/{id}"),
            compute,
        )
        .await;
    assert_eq!(
        (code, status["workflowStatus"]["status"].as_str()),
        (200, Some("succeeded"))
    );
    // Not the other execution, and it cannot execute.
    let other = second["workflowId"].as_str().unwrap();
    let (code, body) = api
        .get(
            &format!("/api/v1/node/services/compute/status/{other}"),
            compute,
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains(other), "{body}");
    let (code, body) = api.execute(compute).await;
    assert!(matches!(code, 401 | 403), "{code} {body}");
}

/// Reads server-sent events from `r` until the `end` event; returns them as
/// (event, data, status of the execution when the event arrived).
async fn events(api: &Api, id: &str, mut r: reqwest::Response) -> Vec<(String, Value, String)> {
    let (mut buf, mut out) = (String::new(), Vec::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.is_empty() {
                continue; // keep-alive comment
            }
            let status = api
                .g()
                .store
                .execution(id)
                .unwrap()
                .status
                .as_str()
                .to_string();
            out.push((event.clone(), serde_json::from_str(&data).unwrap(), status));
            if event == "end" {
                return out;
            }
        }
    }
    panic!("the stream ended without an end event: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_followed_live_until_the_execution_ends() {
    let mut api = start_with(|c| c.limits.timeout = Duration::from_millis(1500)).await;
    (api.workflow, api.agreement) = api.grant(&api.spin.clone(), 600);
    let id = api.run().await;
    let token = api.compute_token(&id).await;
    let r = api
        .http
        .get(format!(
            "{}/api/v1/node/services/compute/logs/{id}?follow=true",
            api.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let seen = events(&api, &id, r).await;
    let (kind, data, status_then) = &seen[0];
    assert_eq!(kind, "log");
    assert_eq!(
        (
            data["stage"].as_u64(),
            data["stream"].as_str(),
            data["content"].as_str()
        ),
        (Some(0), Some("stdout"), Some("started\n"))
    );
    // Followed live: the line came while the execution was still active
    // (its `running` is a queued commit, so it may still read `configuring`).
    assert!(
        ["configuring", "running"].contains(&status_then.as_str()),
        "the log line arrived while the guest ran, not after: {status_then}"
    );
    let (kind, data, _) = seen.last().unwrap();
    assert_eq!(kind, "end");
    assert_eq!(data["status"], "failed");
    assert!(data["reason"].as_str().unwrap().contains("time"), "{data}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Following a finished execution replays its logs and ends at once.
    let r = api
        .http
        .get(format!(
            "{}/api/v1/node/services/compute/logs/{id}?follow=true",
            api.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let again = events(&api, &id, r).await;
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].1["content"], "started\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreements_images_and_dids_are_checked_at_execute() {
    let api = start().await;
    let token_for = |agreement: &str, workflow: &str| {
        let mut c = api.claims(&api.consumer, AUD_EXECUTE);
        c["sub"] = json!(agreement);
        c["did"] = json!(workflow);
        api.access(c)
    };
    // An image the dataset's compute service does not allow.
    let banned = format!("sha256:{}", "ee".repeat(32));
    let (wf, agreement) = api.grant(&banned, 600);
    let t = token_for(&agreement, &wf).await;
    let (code, body) = api.execute_under(&t, &agreement, &wf).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("does not allow image {banned}"))
            || body["message"].as_str().unwrap().contains(&banned),
        "{body}"
    );
    // An agreement that timed out.
    let (wf, agreement) = api.grant(&api.wc, 1);
    let t = token_for(&agreement, &wf).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, body) = api.execute_under(&t, &agreement, &wf).await;
    assert_eq!(code, 403, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("not permitted: agreement {agreement} expired "))
            && message.ends_with("ask the provider for a new agreement"),
        "{body}"
    );
    // An agreement nobody granted.
    let ghost = format!("0x{}", "77".repeat(32));
    let t = token_for(&ghost, &api.workflow).await;
    let (code, body) = api.execute_under(&t, &ghost, &api.workflow).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // Another workflow than the agreement's.
    let (other_wf, _) = api.grant(&api.wc, 600);
    let t = token_for(&api.agreement, &other_wf).await;
    let (code, body) = api.execute_under(&t, &api.agreement, &other_wf).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        format!(
            "not permitted: agreement {} is for workflow {}, not {other_wf} (a workflow runs under an agreement for it, or under any agreement of the consumer who published it)",
            api.agreement, api.workflow
        )
    );
    assert!(
        api.g()
            .store
            .executions_of(&api.consumer.address())
            .unwrap()
            .is_empty(),
        "nothing was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_reads_two_datasets_each_under_an_agreement_of_the_consumer() {
    let api = start().await;
    let more = api.tmp.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    std::fs::write(more.join("b.txt"), "green red\n").unwrap();
    let store = &api.g().store;
    let ds2 = store
        .add_dataset("more colours", &more, std::slice::from_ref(&api.wc), 60)
        .unwrap();
    let wf = store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "count both", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "example.invalid/wc", "tag": "1", "checksum": api.wc}},
             "input": [{"index": 0, "id": api.dataset}, {"index": 1, "id": ds2}]}]}}}))
        .unwrap();
    let first = store
        .grant(&api.consumer.address(), &api.dataset, &wf, 600)
        .unwrap();
    let mut c = api.claims(&api.consumer, AUD_EXECUTE);
    (c["sub"], c["did"]) = (json!(first), json!(wf));
    let token = api.access(c).await;
    // Without an agreement for the second dataset: 403 naming it.
    let (code, body) = api.execute_under(&token, &first, wf.as_str()).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(&format!(
            "holds no other agreement for {ds2} and workflow {wf}"
        )),
        "{body}"
    );
    // Another consumer's agreement for it does not help.
    store
        .grant("0x00000000000000000000000000000000000000aa", &ds2, &wf, 600)
        .unwrap();
    let (code, _) = api.execute_under(&token, &first, wf.as_str()).await;
    assert_eq!(code, 403);
    // With the consumer's own, the stage reads both.
    let second = store
        .grant(&api.consumer.address(), &ds2, &wf, 600)
        .unwrap();
    let (code, body) = api.execute_under(&token, &first, wf.as_str()).await;
    assert_eq!(code, 202, "{body}");
    let id = body["workflowId"].as_str().unwrap().to_string();
    let e = api.wait_for(&id, &["succeeded", "failed"]).await;
    assert_eq!(e.status.as_str(), "succeeded", "{:?}", e.reason);
    let receipt = e.receipt.unwrap();
    let inputs = receipt["body"]["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[0]["did"], json!(api.dataset));
    assert!(inputs[0].get("agreement").is_none());
    assert_eq!(inputs[1]["did"], json!(ds2));
    assert_eq!(inputs[1]["agreement"], json!(second));
    let mut c = api.claims(&api.consumer, AUD_COMPUTE);
    (c["sub"], c["execution_id"]) = (json!(first), json!(id));
    let token = api.access(c).await;
    let r = api
        .http
        .get(format!(
            "{}/api/v1/node/services/compute/results/{id}/counts.json",
            api.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let counts: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (counts["files"].as_u64(), counts["words"].as_u64()),
        (Some(2), Some(8)),
        "{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_is_an_input_of_its_owners_later_executions_only() {
    let api = start().await;
    let first = api.run().await;
    let e = api.wait_for(&first, &["succeeded", "failed"]).await;
    assert_eq!(e.status.as_str(), "succeeded", "{:?}", e.reason);
    let result = e.result.unwrap();
    // A workflow reading the result (its counts.json) with the same image.
    let store = &api.g().store;
    let wf = store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "count the counts", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "example.invalid/wc", "tag": "1", "checksum": api.wc}},
             "input": [{"index": 0, "id": result}]}]}}}))
        .unwrap();
    let mine = store
        .grant(&api.consumer.address(), &api.dataset, &wf, 600)
        .unwrap();
    let mut c = api.claims(&api.consumer, AUD_EXECUTE);
    (c["sub"], c["did"]) = (json!(mine), json!(wf));
    let token = api.access(c).await;
    let (code, body) = api.execute_under(&token, &mine, wf.as_str()).await;
    assert_eq!(code, 202, "{body}");
    let id = body["workflowId"].as_str().unwrap().to_string();
    let e = api.wait_for(&id, &["succeeded", "failed"]).await;
    assert_eq!(e.status.as_str(), "succeeded", "{:?}", e.reason);
    let receipt = e.receipt.unwrap();
    assert_eq!(receipt["body"]["inputs"][0]["did"], json!(result));
    // It counted the words of the first result's one file.
    let counts: Value = serde_json::from_slice(
        &std::fs::read(api.g().pipeline.outputs(&id, 0).join("counts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(counts["files"], 1, "{counts}");
    assert!(counts["counts"]["blue"].is_number(), "{counts}");
    // Another consumer, with an agreement of its own for that workflow,
    // cannot read this consumer's result.
    let other = ProviderKey::random();
    let theirs = store
        .grant(&other.address(), &api.dataset, &wf, 600)
        .unwrap();
    let claims = json!({"iss": other.address(), "aud": AUD_EXECUTE, "sub": theirs, "did": wf,
                        "eths": "personal", "iat": now(), "exp": now() + 300});
    let r = api.token(&other, claims).await;
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .http
        .post(format!(
            "{}/api/v1/node/services/compute/execute/{theirs}",
            api.base
        ))
        .bearer_auth(&token)
        .json(&json!({"workflowDid": wf, "consumer": other.address()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["message"],
        format!(
            "not permitted: result {result} is not {}'s: a result is an input only of its owner's executions",
            other.address().to_lowercase()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_searched_over_http_and_results_are_listed_to_their_owner() {
    use insitu_runtime::store::{About, DatasetSpec};
    let api = start().await;
    let store = &api.g().store;
    let dir = api.tmp.path().join("input");
    for (name, tags) in [
        ("colour swatches", vec!["paint", "colour"]),
        ("bird sightings", vec!["nature"]),
    ] {
        store
            .register_dataset(&DatasetSpec {
                name,
                path: &dir,
                allowed_images: std::slice::from_ref(&api.wc),
                timeout_secs: 60,
                server: Default::default(),
                price: None,
                price_token: None,
                access: false,
                did: None,
                deterministic: false,
                about: About {
                    description: Some(format!("{name}, counted by hand")),
                    tags: tags.into_iter().map(str::to_string).collect(),
                    author: Some("Ada".into()),
                },
            })
            .unwrap();
    }
    let id = api.run().await;
    let result = api.wait_for(&id, &["succeeded"]).await.result.unwrap();
    let query = "/api/v1/metadata/assets/ddo/query";
    let names = |body: &Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                d["service"][0]["attributes"]["main"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    // GET: the exact name first, prefixes match, pages.
    let (code, body) = api.get(&format!("{query}?text=colours"), "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(names(&body)[0], "colours");
    let (_, body) = api
        .get(&format!("{query}?text=colo&offset=1&page=2"), "")
        .await;
    assert_eq!(
        (
            body["page"].as_u64(),
            body["total_pages"].as_u64(),
            body["total_results"].as_u64()
        ),
        (Some(2), Some(2), Some(2)),
        "{body}"
    );
    // POST with filters.
    let post = |body: Value, token: Option<String>| {
        let mut r = api.http.post(format!("{}{query}", api.base)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (code, body) = post(
        json!({"text": "counted", "query": {"tags": ["nature"]}}),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(names(&body), ["bird sightings"]);
    let (_, body) = post(json!({"query": {"type": "workflow"}}), None).await;
    assert_eq!(body["total_results"], 1, "the one workflow");
    // The result: its owner finds it, nobody else does.
    let (_, body) = post(json!({"query": {"type": "result"}}), None).await;
    assert_eq!(body["total_results"], 0, "{body}");
    let token = api.compute_token(&id).await;
    let (_, body) = post(json!({"query": {"type": "result"}}), Some(token)).await;
    assert_eq!(body["results"][0]["id"], json!(result), "{body}");
    // No local path anywhere, and bad parameters are 400 with the reason.
    let (_, all) = api.get(&format!("{query}?offset=500"), "").await;
    assert!(!all.to_string().contains(api.tmp.path().to_str().unwrap()));
    let (code, body) = api.get(&format!("{query}?offset=0"), "").await;
    assert_eq!(code, 400);
    assert_eq!(
        body["message"],
        "offset (results per page) must be between 1 and 500, not 0"
    );
    let (code, body) = post(json!({"sort": {"size": "asc"}}), None).await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_execute_and_download_loses_nothing() {
    let mut api = start().await;
    let id = api.run().await;
    let token = api.compute_token(&id).await;
    api.wait_for(&id, &["succeeded"]).await;
    let (_, before) = api
        .get(
            &format!("/api/v1/node/services/compute/results/{id}"),
            &token,
        )
        .await;
    // A second server on the same data dir is refused while the first runs.
    let err = build(&ServeConfig::new(api.tmp.path().join("data")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is in use by another insitu server"), "{err}");

    api.restart().await;
    // The access token, the execution, its results, files and receipt survived.
    let (code, after) = api
        .get(
            &format!("/api/v1/node/services/compute/results/{id}"),
            &token,
        )
        .await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after, before);
    let receipt: Receipt = serde_json::from_value(after["receipt"].clone()).unwrap();
    assert_eq!(verify(&receipt).unwrap().to_checksum(None), receipt.signer);
    let r = api
        .http
        .get(format!(
            "{}/api/v1/node/services/compute/results/{id}/counts.json",
            api.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(
        format!("sha256:{}", insitu_tests::sha256_hex(&bytes)),
        after["files"][0]["sha256"].as_str().unwrap()
    );
    // And it still executes.
    let again = api.run().await;
    assert_eq!(
        api.wait_for(&again, &["succeeded", "failed"])
            .await
            .status
            .as_str(),
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_work_end_and_fails_queued_work() {
    let mut api = start_with(|c| c.workers = 1).await;
    (api.workflow, api.agreement) = api.grant(&api.spin.clone(), 600);
    let running = api.run().await;
    let queued = api.run().await;
    api.wait_for(&running, &["running"]).await;
    // The spinner never ends by itself: the grace period (300 ms) runs out and it is stopped.
    let started = Instant::now();
    assert_eq!(api.halt().await, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    let store = &api.g().store;
    assert_eq!(
        store.execution(&running).unwrap().status.as_str(),
        "stopped"
    );
    let q = store.execution(&queued).unwrap();
    assert_eq!(
        (q.status.as_str(), q.reason.as_deref()),
        (
            "failed",
            Some("the provider shut down before this execution started; execute it again")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_takes_no_new_executions() {
    let api = start().await;
    let token = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    assert_eq!(api.g().shutdown(Duration::ZERO).await, 0);
    let (code, body) = api.execute(&token).await;
    assert_eq!(code, 503);
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let api = start().await;
    let r = api
        .http
        .get(format!("{}/api/v1/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let source = include_str!("../../src/http/mod.rs");
    let mut routes = 0;
    for piece in source.split(".route(").skip(1) {
        let path = piece.trim_start().trim_start_matches('"');
        let path = &path[..path.find('"').unwrap()];
        let path = path
            .replace("{agreement}", "{agreementId}")
            .replace("{execution}", "{executionId}")
            .replace("{*file}", "{file}");
        assert!(paths.contains_key(&path), "{path} is not in openapi.json");
        routes += 1;
    }
    assert_eq!(
        routes,
        paths.len(),
        "openapi.json has paths the router does not serve"
    );
}

/// `insitu serve` as a child process; returns it and its base URL.
fn spawn_server(data: &Path, layout: &Path) -> (std::process::Child, String) {
    insitu_tests::serve(
        Path::new(env!("CARGO_BIN_EXE_insitu")),
        [
            "--workers".as_ref(),
            "1".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--layout".as_ref(),
            layout.as_os_str(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_run_leaves_the_execution_failed_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, layout, input) = (
        tmp.path().join("data"),
        tmp.path().join("layout"),
        tmp.path().join("input"),
    );
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "x").unwrap();
    let spin = package::wasm_artifact(&insitu_tests::spinner()).unwrap();
    package::write_layout(&layout, "spin", &spin).unwrap();
    let (mut server, base) = spawn_server(&data, &layout);

    // The catalog verbs work while the server runs.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_insitu"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .unwrap()
            .to_string()
    };
    let ds = cli(&[
        "asset",
        "add",
        "--path",
        input.to_str().unwrap(),
        "--name",
        "x",
        "--allow-image",
        &spin.manifest_digest,
    ]);
    let wf_file = tmp.path().join("wf.json");
    std::fs::write(&wf_file, json!({"main": {"type": "workflow", "name": "spin", "workflow": {"stages": [
        {"index": 0, "requirements": {"container": {"image": "example.invalid/spin", "tag": "1", "checksum": spin.manifest_digest}},
         "input": [{"index": 0, "id": ds}]}]}}}).to_string()).unwrap();
    let wf = cli(&["workflow", "add", "--file", wf_file.to_str().unwrap()]);
    let consumer = ProviderKey::load_or_create(&tmp.path().join("consumer.key")).unwrap();
    let agreement = cli(&[
        "agreement",
        "grant",
        "--consumer",
        &consumer.address(),
        "--dataset",
        &ds,
        "--workflow",
        &wf,
    ]);

    let http = insitu_runtime::tls::http_client();
    let token = |claims: Value, base: String| {
        let jwt = make_grant(&consumer, &claims).unwrap();
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{base}/api/v1/node/services/oauth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let claims = json!({"iss": consumer.address(), "aud": AUD_EXECUTE, "sub": agreement, "did": wf, "eths": "personal", "iat": now(), "exp": now() + 300});
    let t = token(claims.clone(), base.clone()).await;
    let r = http
        .post(format!(
            "{base}/api/v1/node/services/compute/execute/{agreement}"
        ))
        .bearer_auth(&t)
        .json(&json!({"workflowDid": wf, "consumer": consumer.address()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["workflowId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = claims.clone();
    c["aud"] = json!(AUD_COMPUTE);
    c["execution_id"] = json!(id);
    let t = token(c.clone(), base.clone()).await;
    let status = |base: String, t: String| {
        let (http, id) = (http.clone(), id.clone());
        async move {
            let r = http
                .get(format!("{base}/api/v1/node/services/compute/status/{id}"))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(base.clone(), t.clone()).await["workflowStatus"]["status"] != "running" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no chance to clean up.
    server.kill().unwrap();
    server.wait().unwrap();

    let (mut server, base) = spawn_server(&data, &layout);
    let s = status(base.clone(), t.clone()).await;
    assert_eq!(s["workflowStatus"]["status"], "failed", "{s}");
    assert_eq!(
        s["execution"]["reason"],
        "insitu stopped while the execution was running; marked failed when it restarted"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datasets_server_limits_bound_its_stages() {
    let mut api = start().await;
    let input = api.tmp.path().join("small");
    std::fs::create_dir_all(&input).unwrap();
    let server = insitu_runtime::store::Server {
        memory: Some(64 << 20),
        disk: None,
        max_execution_time: Some(1),
    };
    api.dataset = api
        .g()
        .store
        .add_dataset_on(
            "small",
            &input,
            std::slice::from_ref(&api.spin),
            60,
            &server,
        )
        .unwrap();
    let (_, ddo) = api.g().store.ddo(&api.dataset).unwrap();
    assert_eq!(
        ddo["service"][1]["attributes"]["main"]["provider"]["environment"]["supportedServers"][0],
        json!({"serverId": "1", "serverType": "wasm", "cpu": "1", "gpu": "0", "memory": "64mb", "maxExecutionTime": 1})
    );
    (api.workflow, api.agreement) = api.grant(&api.spin.clone(), 600);
    let started = Instant::now();
    let id = api.run().await;
    let e = api.wait_for(&id, &["failed", "succeeded", "stopped"]).await;
    // The provider's default is 30 s; the dataset's server allows 1 s.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(e.status.as_str(), "failed");
    assert_eq!(e.stages[0]["outcome"], "timed_out", "{:?}", e.stages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_works_in_every_status() {
    let mut api = start_with(|c| c.workers = 1).await;
    (api.workflow, api.agreement) = api.grant(&api.spin.clone(), 600);
    let running = api.run().await;
    let queued = api.run().await;
    api.wait_for(&running, &["running"]).await;
    let stop = |id: String| {
        let api = &api;
        async move {
            let token = api.compute_token(&id).await;
            let r = api
                .http
                .delete(format!(
                    "{}/api/v1/node/services/compute/stop/{id}",
                    api.base
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    // Queued behind the spinner: stopped at once.
    let body = stop(queued.clone()).await;
    assert_eq!(body["status"], "stopped", "{body}");
    assert_eq!(
        api.g().store.execution(&queued).unwrap().status.as_str(),
        "stopped"
    );
    // Running: the guest is interrupted.
    let body = stop(running.clone()).await;
    assert_eq!(body["status"], "stopping", "{body}");
    let e = api
        .wait_for(&running, &["stopped", "failed", "succeeded"])
        .await;
    assert_eq!(e.status.as_str(), "stopped");
    assert_eq!(e.stages[0]["outcome"], "stopped");
    // Over: said so, nothing changes.
    let body = stop(running.clone()).await;
    assert_eq!(
        body["text"],
        format!("execution {running} already ended stopped")
    );
    // The worker is free again: the queued one never ran, a new one does.
    (api.workflow, api.agreement) = api.grant(&api.wc.clone(), 600);
    let next = api.run().await;
    assert_eq!(
        api.wait_for(&next, &["succeeded", "failed"])
            .await
            .status
            .as_str(),
        "succeeded"
    );
    assert_eq!(api.g().store.execution(&queued).unwrap().stages, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut api = start_with(|c| {
        c.workers = 1;
        c.queue = 1;
    })
    .await;
    (api.workflow, api.agreement) = api.grant(&api.spin.clone(), 600);
    let running = api.run().await;
    api.wait_for(&running, &["running"]).await;
    let _queued = api.run().await;
    let token = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    let r = api
        .http
        .post(format!(
            "{}/api/v1/node/services/compute/execute/{}",
            api.base, api.agreement
        ))
        .bearer_auth(&token)
        .json(&json!({"workflowDid": api.workflow, "consumer": api.consumer.address()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "busy");
    // Refused, so not recorded: two executions exist, not three.
    assert_eq!(
        api.g()
            .store
            .executions_of(&api.consumer.address())
            .unwrap()
            .len(),
        2
    );
    assert_eq!(api.halt().await, 1);
}

/// Slow clients cannot hold the server: headers must arrive within
/// `header_timeout` (slow-loris), a body within `request_timeout` (408), and
/// idle connections beyond `max_connections` are closed so new clients get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use insitu_gateway::config::HttpLimits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = start_with(|c| {
        c.http = HttpLimits {
            header_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(800),
            max_connections: 4,
        }
    })
    .await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut buf = Vec::new();
        let t = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        (String::from_utf8_lossy(&buf).into_owned(), t.elapsed())
    };

    // Headers trickling in: the connection is closed at the header timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (text, took) = read_all(s).await;
    assert!(!text.contains("200 OK"), "{text}");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");

    // A body that never completes: 408 at the request timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /api/v1/node/services/oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nclient_as")
        .await
        .unwrap();
    let (text, took) = read_all(s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    // Every connection slot held by a silent client: they are dropped at the
    // header timeout, and a real client gets its answer.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let t = Instant::now();
    let health = api
        .http
        .get(format!("{}/healthz", api.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(idle);
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The data dir's disk fills up: executions are refused (507) or fail with
/// a clear reason, nothing is corrupted (SQLite's integrity check), earlier
/// results stay intact, and work resumes once space is freed. The data dir
/// is a 24 MiB tmpfs (CI runs as root; without mount rights this fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_cleanly_and_loses_nothing() {
    let mut mounted = None;
    let mut api = start_with(|c| {
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(&c.data_dir)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mount a tmpfs at {}: needs root",
            c.data_dir.display()
        );
        mounted = Some(c.data_dir.clone());
    })
    .await;
    let _mount = Mount(mounted.unwrap());
    let data = api.tmp.path().join("data");

    let first = api.run().await;
    assert_eq!(
        api.wait_for(&first, &["succeeded", "failed"])
            .await
            .status
            .as_str(),
        "succeeded"
    );
    let token = api.compute_token(&first).await;
    let (_, before) = api
        .get(
            &format!("/api/v1/node/services/compute/results/{first}"),
            &token,
        )
        .await;

    // Fill the disk.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(data.join("filler")).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let exec_token = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    for _ in 0..3 {
        let (code, body) = api.execute(&exec_token).await;
        match code {
            507 => assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("the provider's disk is full"),
                "{body}"
            ),
            202 => {
                let id = body["workflowId"].as_str().unwrap();
                let e = api.wait_for(id, &["succeeded", "failed"]).await;
                assert_eq!(
                    e.status.as_str(),
                    "failed",
                    "nothing can be published on a full disk"
                );
                assert!(e.reason.is_some(), "a failure says why");
            }
            other => panic!("{other}: {body}"),
        }
    }
    api.g().store.check_integrity().unwrap();

    // Space again: nothing was lost, and work resumes.
    std::fs::remove_file(data.join("filler")).unwrap();
    api.g().store.check_integrity().unwrap();
    let (code, after) = api
        .get(
            &format!("/api/v1/node/services/compute/results/{first}"),
            &token,
        )
        .await;
    assert_eq!((code, &after), (200, &before));
    let again = api.run().await;
    assert_eq!(
        api.wait_for(&again, &["succeeded", "failed"])
            .await
            .status
            .as_str(),
        "succeeded"
    );
    api.halt().await;
}
