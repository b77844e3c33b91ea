//! Data sharing over HTTP: a dataset offered for download, access
//! agreements, ranged downloads, the download record, and the refusals.

use super::*;
use insitu_gateway::auth::AUD_ACCESS;
use insitu_runtime::store::{About, DatasetSpec};

/// A dataset directory with a small file, a 1 MiB and a 32 MiB file in a
/// subdirectory and a link leading out of it; returns (dir, the 1 MiB
/// file's bytes).
fn shared_dir(root: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let dir = root.join("shared");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha\n").unwrap();
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.join("sub/b.bin"), &big).unwrap();
    // Larger than what loopback socket buffers take in at once.
    std::fs::write(dir.join("sub/c.bin"), big.repeat(32)).unwrap();
    std::fs::write(root.join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), dir.join("link.txt")).unwrap();
    (dir, big)
}

impl Api {
    /// An access token of `key` for access agreement `agreement` on `dataset`.
    async fn access_token(&self, key: &ProviderKey, agreement: &str, dataset: &str) -> String {
        let r = self
            .token(
                key,
                json!({"iss": key.address(), "aud": AUD_ACCESS, "sub": agreement, "did": dataset,
                       "eths": "personal", "iat": now(), "exp": now() + 300}),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn fetch(
        &self,
        agreement: &str,
        index: &str,
        token: &str,
        range: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self
            .http
            .get(format!(
                "{}/api/v1/node/services/access/{agreement}/{index}",
                self.base
            ))
            .bearer_auth(token);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_offered_for_download_is_downloaded_under_an_access_agreement_and_recorded() {
    let api = start().await;
    let store = &api.g().store;
    let (dir, big) = shared_dir(api.tmp.path());
    let shared = store
        .register_dataset(&DatasetSpec {
            name: "shared tiles",
            path: &dir,
            allowed_images: std::slice::from_ref(&api.wc),
            timeout_secs: 60,
            server: Default::default(),
            price: Some("7".into()),
            price_token: None,
            access: true,
            did: None,
            deterministic: false,
            about: About::default(),
        })
        .unwrap();

    // The DDO a client reads: three services with endpoints on this gateway,
    // the files by index (the link left out), no local path.
    let (code, ddo) = api
        .get(&format!("/api/v1/metadata/assets/ddo/{shared}"), "")
        .await;
    assert_eq!(code, 200, "{ddo}");
    let types: Vec<&str> = ddo["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["metadata", "compute", "access"]);
    assert_eq!(
        ddo["service"][2]["serviceEndpoint"],
        json!(format!("{}/api/v1/node/services/access", api.base))
    );
    assert_eq!(
        ddo["service"][1]["serviceEndpoint"],
        json!(format!("{}/api/v1/node/services/execute", api.base))
    );
    let provider = api.g().pipeline.key.address();
    assert_eq!(
        ddo["service"][2]["attributes"]["main"]["creator"],
        json!(provider)
    );
    let lock = &ddo["service"][2]["attributes"]["serviceAgreementTemplate"]["conditions"][0];
    assert_eq!(lock["name"], "lockPayment");
    assert_eq!(lock["parameters"][3]["value"], json!(["7"]));
    assert_eq!(lock["parameters"][4]["value"], json!([provider]));
    let files: Vec<(&str, &str)> = ddo["service"][0]["attributes"]["main"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap(),
                f["contentLength"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("a.txt", "6"),
            ("sub/b.bin", "1048576"),
            ("sub/c.bin", "33554432")
        ]
    );
    assert!(!ddo.to_string().contains(api.tmp.path().to_str().unwrap()));
    // A compute-only dataset lists no files and offers no access.
    let (_, plain) = api
        .get(&format!("/api/v1/metadata/assets/ddo/{}", api.dataset), "")
        .await;
    assert_eq!(plain["service"].as_array().unwrap().len(), 2, "{plain}");
    assert!(plain["service"][0]["attributes"]["main"]["files"].is_null());
    // Search finds it by the service it offers.
    let r = api
        .http
        .post(format!("{}/api/v1/metadata/assets/ddo/query", api.base))
        .json(&json!({"query": {"service": "access"}}))
        .send()
        .await
        .unwrap();
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["total_results"], 1, "{found}");
    assert_eq!(found["results"][0]["id"], json!(shared));

    // Granted; downloaded byte-exact, whole and by ranges.
    let agreement = store
        .grant_access(&api.consumer.address(), &shared, 600)
        .unwrap();
    let token = api
        .access_token(&api.consumer, &agreement, shared.as_str())
        .await;
    let r = api.fetch(&agreement, "1", &token, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment;filename=b.bin"
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[..]);
    // Ids however the client spells them: no 0x, upper case.
    let spelled = agreement.trim_start_matches("0x").to_ascii_uppercase();
    let r = api.fetch(&spelled, "0", &token, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "alpha\n");
    let r = api
        .fetch(&agreement, "1", &token, Some("bytes=1000-"))
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1048575/1048576");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[1000..]);
    let r = api.fetch(&agreement, "1", &token, Some("bytes=-10")).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[big.len() - 10..]);
    let r = api
        .fetch(&agreement, "1", &token, Some("bytes=2000000-"))
        .await;
    assert_eq!(r.status(), 416);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not fit the file's 1048576 bytes"),
        "{body}"
    );

    // A download cut short is recorded as such.
    let mut r = api.fetch(&agreement, "2", &token, None).await;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let rows = store.downloads(Some(&shared), 10).unwrap();
        // Recorded at the start with 0 bytes, at the end with what was sent.
        if rows.len() == 5 && rows[0].bytes > 0 {
            break rows;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let summary: Vec<(u64, &str, u64, bool)> = record
        .iter()
        .rev()
        .map(|d| (d.index, d.file.as_str(), d.bytes, d.complete))
        .collect();
    assert_eq!(
        summary[..4],
        [
            (1, "sub/b.bin", 1 << 20, true),
            (0, "a.txt", 6, true),
            (1, "sub/b.bin", (1 << 20) - 1000, true),
            (1, "sub/b.bin", 10, true),
        ]
    );
    assert!(
        !summary[4].3 && summary[4].2 < 32 << 20,
        "cut short: {:?}",
        summary[4]
    );
    assert!(
        record
            .iter()
            .all(|d| d.consumer.eq_ignore_ascii_case(&api.consumer.address())
                && d.agreement == agreement),
        "{record:?}"
    );
    // The provider's listing.
    let listing = insitu_gateway::commands::catalog::downloads(
        &api.tmp.path().join("data"),
        Some(shared.as_str()),
        10,
        false,
    )
    .unwrap();
    assert_eq!(listing.lines().count(), 6, "{listing}");
    assert!(
        listing.contains(&format!("{shared}/sub/b.bin")),
        "{listing}"
    );

    // Refusals, each precise, none recorded as a download.
    let msg = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (
            status,
            body["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (code, m) = msg(api.fetch(&agreement, "1", "", None).await).await;
    assert_eq!(code, 401, "{m}");
    let execute = api.access(api.claims(&api.consumer, AUD_EXECUTE)).await;
    let (code, m) = msg(api.fetch(&agreement, "1", &execute, None).await).await;
    assert_eq!(code, 403, "{m}");
    assert!(m.contains(AUD_ACCESS), "{m}");
    let (code, m) = msg(api.fetch(&agreement, "9", &token, None).await).await;
    assert_eq!(code, 404, "{m}");
    assert!(m.contains("file index `9`"), "{m}");
    let (code, m) = msg(api.fetch(&agreement, "x", &token, None).await).await;
    assert_eq!(code, 400, "{m}");
    let other = ProviderKey::load_or_create(&api.tmp.path().join("other.key")).unwrap();
    let stranger = api.access_token(&other, &agreement, shared.as_str()).await;
    let (code, m) = msg(api.fetch(&agreement, "0", &stranger, None).await).await;
    assert_eq!(code, 403, "{m}");
    assert!(m.contains("belongs to another consumer"), "{m}");
    let wrong_dataset = api
        .access_token(&api.consumer, &agreement, api.dataset.as_str())
        .await;
    let (code, m) = msg(api.fetch(&agreement, "0", &wrong_dataset, None).await).await;
    assert_eq!(code, 403, "{m}");
    assert!(m.contains(&format!("is for dataset {shared}")), "{m}");
    // A compute agreement downloads nothing.
    let compute = api
        .access_token(&api.consumer, &api.agreement, api.dataset.as_str())
        .await;
    let (code, m) = msg(api.fetch(&api.agreement, "0", &compute, None).await).await;
    assert_eq!(code, 404, "{m}");
    assert!(m.contains("it is a compute agreement"), "{m}");
    // Nor does a dataset registered without access: no agreement for it.
    let err = store
        .grant_access(&api.consumer.address(), &api.dataset, 600)
        .unwrap_err();
    assert!(
        err.to_string().contains("is not offered for download"),
        "{err}"
    );
    // Expired.
    let expired = store
        .grant_access(&api.consumer.address(), &shared, 0)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = api
        .access_token(&api.consumer, &expired, shared.as_str())
        .await;
    let (code, m) = msg(api.fetch(&expired, "0", &t, None).await).await;
    assert_eq!(code, 403, "{m}");
    assert!(m.contains("expired"), "{m}");
    // A file swapped for a link after registration is not followed out.
    std::fs::remove_file(dir.join("a.txt")).unwrap();
    std::os::unix::fs::symlink(api.tmp.path().join("secret.txt"), dir.join("a.txt")).unwrap();
    let (code, m) = msg(api.fetch(&agreement, "0", &token, None).await).await;
    assert_eq!(code, 404, "{m}");
    assert!(m.contains("now outside the dataset"), "{m}");
    assert_eq!(store.downloads(Some(&shared), 100).unwrap().len(), 5);
}
