//! The provider's dashboard over HTTP: what it shows, who may see it.

use super::*;

/// A non-loopback address of this machine (the interface a route to the
/// outside would use; nothing is sent).
fn lan_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.255:9")
        .or_else(|_| s.connect("8.8.8.8:53"))
        .expect("a non-loopback route to test the dashboard's refusal");
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_executions_charts_catalog_and_live_logs_to_the_provider() {
    let api = start().await;
    let id = api.run().await;
    api.wait_for(&id, &["succeeded"]).await;

    let r = api.http.get(format!("{}/", api.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = r.text().await.unwrap();
    for want in [
        format!("<tr data-id=\"{id}\">"),
        "<td class=\"succeeded\">succeeded".to_string(),
        "<svg id=\"per-minute\"".to_string(),
        "<svg id=\"latency\"".to_string(),
        "<svg id=\"queue-depth\"".to_string(),
        "class=\"bar\"".to_string(),
        "<td>colours</td>".to_string(),
        api.agreement.clone(),
        api.g().pipeline.key.address(),
        "stage 0 succeeded".to_string(),
    ] {
        assert!(html.contains(&want), "no `{want}` in the page");
    }
    assert!(
        !html.contains(api.tmp.path().to_str().unwrap()),
        "a local path leaked"
    );
    // The last minute's bar is not empty.
    let last_bar = html
        .split("<svg id=\"per-minute\"")
        .nth(1)
        .unwrap()
        .split("</svg>")
        .next()
        .unwrap()
        .rsplit("<rect")
        .next()
        .unwrap();
    assert!(last_bar.contains(": 1.000 executions"), "{last_bar}");

    // One execution: its live logs, from the admin stream.
    let html = api
        .http
        .get(format!("{}/?execution={id}", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("<pre id=\"log\" data-id=\"{id}\">")));
    assert!(html.contains("new EventSource('/dashboard/logs/'"));
    let events = api
        .http
        .get(format!("{}/dashboard/logs/{id}", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("event: log"), "{events}");
    assert!(events.contains("1 files, 6 words"), "{events}");
    assert!(events.contains("event: end"), "{events}");
    let r = api
        .http
        .get(format!("{}/?execution=nv-0000", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // From another address: refused without a token, shown with one (which
    // becomes a cookie).
    let dir = api.tmp.path().join("data");
    let mut config = ServeConfig::new(api.tmp.path().join("data2"));
    config.workers = 1;
    let (router, gateway) = build(&config).unwrap();
    let ip = lan_ip();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (halt, halted) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(insitu_gateway::http::serve(
        listener,
        router,
        gateway,
        Duration::from_millis(100),
        async move {
            let _ = halted.await;
        },
    ));
    let r = api.http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("insitu admin token"),
        "{body}"
    );
    let token = insitu_gateway::provider::tokens_of(&api.tmp.path().join("data2"))
        .unwrap()
        .issue_admin("0x0", now() + 600);
    let r = api
        .http
        .get(format!("{base}/?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let r = api
        .http
        .get(format!("{base}/"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the cookie lets the browser back in");
    // Another provider's admin token, an expired one.
    let other = insitu_gateway::provider::tokens_of(&dir)
        .unwrap()
        .issue_admin("0x0", now() + 600);
    let expired = insitu_gateway::provider::tokens_of(&api.tmp.path().join("data2"))
        .unwrap()
        .issue_admin("0x0", now() - 10);
    for bad in [other, expired] {
        let r = api
            .http
            .get(format!("{base}/"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = api
        .http
        .get(format!("{base}/dashboard/logs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let _ = halt.send(());
    served.await.unwrap().unwrap();

    // Off: 404.
    let off = start_with(|c| c.dashboard = false).await;
    let r = off.http.get(format!("{}/", off.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
