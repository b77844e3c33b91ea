//! The HTTP gateway over real loopback HTTP with a real signing client.

use insitu_gateway::auth::{AUD_COMPUTE, AUD_EXECUTE, make_grant};
use insitu_gateway::server::{Gateway, ServeConfig, build};
use insitu_runtime::image::package;
use insitu_runtime::receipt::{ProviderKey, Receipt, verify};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Api {
    base: String,
    gateway: Arc<Gateway>,
    tmp: tempfile::TempDir,
    http: reqwest::Client,
    consumer: ProviderKey,
    agreement: String,
    workflow: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn start() -> Api {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    package::write_layout(&tmp.path().join("layout"), "wc", &artifact).unwrap();
    let mut config = ServeConfig::new(tmp.path().join("data"));
    config.layouts = vec![tmp.path().join("layout")];
    config.workers = 2;
    let (router, gateway) = build(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "red green green blue blue blue\n").unwrap();
    let store = &gateway.store;
    let ds = store
        .add_dataset(
            "colours",
            &input,
            std::slice::from_ref(&artifact.manifest_digest),
            60,
        )
        .unwrap();
    let wf = store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "example.invalid/wc", "tag": "1", "checksum": artifact.manifest_digest}},
             "input": [{"index": 0, "id": ds}]}]}}}))
        .unwrap();
    let consumer = ProviderKey::load_or_create(&tmp.path().join("consumer.key")).unwrap();
    let agreement = store.grant(&consumer.address(), &ds, &wf, 600).unwrap();
    Api {
        base,
        gateway,
        tmp,
        http: reqwest::Client::new(),
        consumer,
        agreement,
        workflow: wf.to_string(),
    }
}

impl Api {
    async fn token(&self, key: &ProviderKey, claims: Value) -> reqwest::Response {
        let jwt = make_grant(key, &claims).unwrap();
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
        let r = self
            .http
            .post(format!(
                "{}/api/v1/node/services/compute/execute/{}",
                self.base, self.agreement
            ))
            .bearer_auth(token)
            .json(&json!({"workflowDid": self.workflow, "consumer": self.consumer.address()}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
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
        format!("agreement {} belongs to another consumer", api.agreement)
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
        if api
            .gateway
            .store
            .execution(&id)
            .unwrap()
            .status
            .is_terminal()
        {
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
    let ghost = format!("did:nv:{}", "ab".repeat(32));
    let (code, body) = api
        .get(&format!("/api/v1/metadata/assets/ddo/{ghost}"), &t)
        .await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/node/services/compute/execute/{}",
            api.base, api.agreement
        ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "too_large");
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/node/services/compute/execute/{}",
            api.base, api.agreement
        ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"workflowDid\": 7}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["error"], "invalid");
    assert!(
        body["message"].as_str().unwrap().contains("workflowDid"),
        "{body}"
    );
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
