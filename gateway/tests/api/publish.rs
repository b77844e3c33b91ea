//! Consumer-published workflows and algorithms over HTTP: the spec's
//! CONSUMER defines the workflow as a new asset, and executes it under an
//! agreement of theirs.

use super::*;
use insitu_gateway::auth::AUD_PUBLISH;

impl Api {
    async fn publish_token(&self, key: &ProviderKey) -> String {
        let r = self
            .token(
                key,
                json!({"iss": key.address(), "aud": AUD_PUBLISH, "eths": "personal",
                       "iat": now(), "exp": now() + 300}),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn publish(&self, token: &str, doc: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/metadata/assets/ddo", self.base))
            .bearer_auth(token)
            .json(doc)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// A token to execute `workflow` under `agreement` as `key`.
    async fn execute_token(&self, key: &ProviderKey, agreement: &str, workflow: &str) -> String {
        let r = self
            .token(
                key,
                json!({"iss": key.address(), "aud": AUD_EXECUTE, "sub": agreement, "did": workflow,
                       "eths": "personal", "iat": now(), "exp": now() + 300}),
            )
            .await;
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A one-stage workflow running `image` on `datasets`, with an optional
/// algorithm asset as its transformation.
fn workflow(name: &str, image: &str, datasets: &[&str], algorithm: Option<&str>) -> Value {
    let inputs: Vec<Value> = datasets
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"index": i, "id": d}))
        .collect();
    let mut stage = json!({"index": 0, "requirements": {"container": {"image": "example.invalid/alg", "tag": "1", "checksum": image}},
                           "input": inputs});
    if let Some(a) = algorithm {
        stage["transformation"] = json!({"id": a});
    }
    json!({"main": {"type": "workflow", "name": name, "workflow": {"stages": [stage]}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_publishes_a_workflow_and_executes_it_under_their_agreement() {
    let api = start().await;
    let ds = api.dataset.to_string();
    let token = api.publish_token(&api.consumer).await;

    let (code, ddo) = api
        .publish(&token, &workflow("my count", &api.wc, &[&ds], None))
        .await;
    assert_eq!(code, 201, "{ddo}");
    let mine = ddo["id"].as_str().unwrap().to_string();
    assert_eq!(
        ddo["service"][0]["attributes"]["main"]["owner"],
        json!(api.consumer.address().to_ascii_lowercase())
    );
    assert_eq!(
        ddo["service"][0]["serviceEndpoint"],
        json!(format!("{}/api/v1/metadata/assets/ddo/{mine}", api.base))
    );
    // Executed under the consumer's agreement for the dataset (granted for
    // the provider's workflow).
    let t = api
        .execute_token(&api.consumer, &api.agreement, &mine)
        .await;
    let (code, body) = api.execute_under(&t, &api.agreement, &mine).await;
    assert_eq!(code, 202, "{body}");
    let id = body["workflowId"].as_str().unwrap().to_string();
    let e = api.wait_for(&id, &["succeeded", "failed"]).await;
    assert_eq!(e.status.as_str(), "succeeded", "{:?}", e.reason);
    assert_eq!(e.workflow.as_str(), mine);

    // An algorithm the consumer publishes names the image a stage must run.
    let (code, alg) = api
        .publish(
            &token,
            &json!({"main": {"type": "algorithm", "name": "wc", "algorithm": {"container":
                {"image": "example.invalid/wc", "tag": "1", "checksum": api.wc}}}}),
        )
        .await;
    assert_eq!(code, 201, "{alg}");
    let alg = alg["id"].as_str().unwrap().to_string();
    let (code, _) = api
        .publish(
            &token,
            &workflow("by algorithm", &api.wc, &[&ds], Some(&alg)),
        )
        .await;
    assert_eq!(code, 201);
    let (code, body) = api
        .publish(&token, &workflow("mismatch", &api.spin, &[&ds], Some(&alg)))
        .await;
    assert_eq!(code, 422, "{body}");
    let m = body["message"].as_str().unwrap();
    assert!(m.contains(&api.wc) && m.contains(&api.spin), "{m}");

    // Refusals.
    let other = ProviderKey::load_or_create(&api.tmp.path().join("other.key")).unwrap();
    let other_token = api.publish_token(&other).await;
    let (code, theirs) = api
        .publish(&other_token, &workflow("theirs", &api.wc, &[&ds], None))
        .await;
    assert_eq!(code, 201);
    let theirs = theirs["id"].as_str().unwrap().to_string();
    // Someone else's workflow does not run under my agreement.
    let t = api
        .execute_token(&api.consumer, &api.agreement, &theirs)
        .await;
    let (code, body) = api.execute_under(&t, &api.agreement, &theirs).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is for workflow"),
        "{body}"
    );
    // My workflow on a dataset my agreement does not cover.
    let elsewhere = api.tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other_ds = api
        .g()
        .store
        .add_dataset("elsewhere", &elsewhere, std::slice::from_ref(&api.wc), 60)
        .unwrap();
    let (_, both) = api
        .publish(
            &token,
            &workflow("both", &api.wc, &[&ds, other_ds.as_str()], None),
        )
        .await;
    let both = both["id"].as_str().unwrap().to_string();
    let t = api
        .execute_token(&api.consumer, &api.agreement, &both)
        .await;
    let (code, body) = api.execute_under(&t, &api.agreement, &both).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("reads dataset {other_ds}")),
        "{body}"
    );
    // My workflow running an image the dataset does not allow.
    let (_, odd) = api
        .publish(
            &token,
            &workflow("odd", &format!("sha256:{}", "0".repeat(64)), &[&ds], None),
        )
        .await;
    let odd = odd["id"].as_str().unwrap().to_string();
    let t = api.execute_token(&api.consumer, &api.agreement, &odd).await;
    let (code, body) = api.execute_under(&t, &api.agreement, &odd).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is not allowed by the compute service"),
        "{body}"
    );
    // Datasets are the provider's to register; bodies are checked with paths.
    let (code, body) = api
        .publish(&token, &json!({"main": {"type": "dataset", "name": "x"}}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("registered by their provider"),
        "{body}"
    );
    let (code, body) = api
        .publish(
            &token,
            &json!({"main": {"type": "workflow", "name": "x", "workflow": {"stages": []}}}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("$.main.workflow.stages"),
        "{body}"
    );
    let (code, _) = api
        .publish("", &workflow("anon", &api.wc, &[&ds], None))
        .await;
    assert_eq!(code, 401);
    let execute = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    let (code, _) = api
        .publish(&execute, &workflow("scope", &api.wc, &[&ds], None))
        .await;
    assert_eq!(code, 403);
    // Nothing refused was stored: the catalog holds the provider's workflow
    // and the five publications accepted.
    let r = api
        .http
        .post(format!("{}/api/v1/metadata/assets/ddo/query", api.base))
        .json(&json!({"query": {"type": "workflow"}}))
        .send()
        .await
        .unwrap();
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["total_results"], 6, "{found}");
}
