//! `insitu-bench http`: the gateway over loopback HTTP. A cached single-stage
//! `word-count` on a small input: POST execute → status `succeeded`, latency
//! (one client) and sustained throughput (many clients), with every state
//! change persisted in SQLite (WAL, synchronous=FULL) under the data dir.

use anyhow::{Context, bail};
use insitu_gateway::auth::{AUD_COMPUTE, AUD_EXECUTE, make_grant};
use insitu_gateway::server::{ServeConfig, build, serve};
use insitu_runtime::image::package;
use insitu_runtime::receipt::ProviderKey;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Client {
    http: reqwest::Client,
    base: String,
    consumer: ProviderKey,
    agreement: String,
    workflow: String,
    exec_token: String,
}

impl Client {
    async fn token(&self, claims: Value) -> anyhow::Result<String> {
        let jwt = make_grant(&self.consumer, &claims)?;
        let r = self
            .http
            .post(format!("{}/api/v1/node/services/oauth/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"))
            .send()
            .await?;
        let body: Value = r.json().await?;
        Ok(body["access_token"]
            .as_str()
            .with_context(|| format!("no token: {body}"))?
            .to_string())
    }

    fn claims(&self, aud: &str) -> Value {
        json!({"iss": self.consumer.address(), "aud": aud, "sub": self.agreement, "did": self.workflow,
               "eths": "personal", "iat": now(), "exp": now() + 3600})
    }

    /// One execution: (time to 202, time to `succeeded`), or None on 429.
    async fn execute(&self, pause: Duration) -> anyhow::Result<Option<(Duration, Duration)>> {
        let t = Instant::now();
        let r = self
            .http
            .post(format!(
                "{}/api/v1/node/services/compute/execute/{}",
                self.base, self.agreement
            ))
            .bearer_auth(&self.exec_token)
            .json(&json!({"workflowDid": self.workflow, "consumer": self.consumer.address()}))
            .send()
            .await?;
        if r.status() == 429 {
            return Ok(None);
        }
        let body: Value = r.json().await?;
        let accepted = t.elapsed();
        let id = body["workflowId"]
            .as_str()
            .with_context(|| format!("execute: {body}"))?
            .to_string();
        let mut c = self.claims(AUD_COMPUTE);
        c["execution_id"] = json!(id);
        let token = self.token(c).await?;
        loop {
            let s: Value = self
                .http
                .get(format!(
                    "{}/api/v1/node/services/compute/status/{id}",
                    self.base
                ))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            match s["workflowStatus"]["status"].as_str() {
                Some("succeeded") => return Ok(Some((accepted, t.elapsed()))),
                Some("failed" | "stopped") => bail!("execution ended: {s}"),
                _ if pause.is_zero() => tokio::task::yield_now().await,
                _ => tokio::time::sleep(pause).await,
            }
        }
    }
}

pub fn http() -> anyhow::Result<()> {
    println!("## HTTP gateway: cached word-count, POST execute → status succeeded");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let artifact = package::wasm_artifact(insitu_tests::WORD_COUNT_P1)?;
    package::write_layout(&tmp.path().join("layout"), "wc", &artifact)?;
    let mut config = ServeConfig::new(tmp.path().join("data"));
    config.layouts = vec![tmp.path().join("layout")];
    config.queue = 256;
    let workers = config.workers;
    let (router, gateway) = build(&config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (halt, halted) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router,
        gateway.clone(),
        Duration::from_secs(5),
        async move {
            let _ = halted.await;
        },
    ));
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input)?;
    std::fs::write(
        input.join("a.txt"),
        "red green green blue blue blue\n".repeat(10),
    )?;
    let ds = gateway.store.add_dataset(
        "colours",
        &input,
        std::slice::from_ref(&artifact.manifest_digest),
        3600,
    )?;
    let wf = gateway.store.add_workflow(&json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
        {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": artifact.manifest_digest}},
         "input": [{"index": 0, "id": ds}]}]}}}))?;
    let consumer = ProviderKey::load_or_create(&tmp.path().join("consumer.key"))?;
    let agreement = gateway.store.grant(&consumer.address(), &ds, &wf, 3600)?;
    let mut client = Client {
        http: reqwest::Client::new(),
        base,
        consumer,
        agreement,
        workflow: wf.to_string(),
        exec_token: String::new(),
    };
    client.exec_token = client.token(client.claims(AUD_EXECUTE)).await?;
    let client = Arc::new(client);
    println!("data dir {} ({} workers)", tmp.path().display(), workers);

    for _ in 0..50 {
        client.execute(Duration::ZERO).await?;
    }
    // The same execution without HTTP: resolve, persist, pull (cached),
    // run, publish, sign the receipt.
    let agreement = gateway.store.agreement(&client.agreement)?;
    let mut direct = Vec::new();
    for _ in 0..std::env::var("INSITU_BENCH_DIRECT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
    {
        let t = Instant::now();
        let resolved = insitu_runtime::resolve::resolve(&gateway.store, &agreement, now())?;
        let id = gateway.store.create_execution(&agreement)?;
        let status = gateway
            .pipeline
            .run(&id, &resolved, &Default::default())
            .await?;
        direct.push(t.elapsed());
        if status != insitu_runtime::Status::Succeeded {
            bail!("direct run: {status:?}");
        }
    }
    direct.sort();
    if std::env::var_os("INSITU_BENCH_PIPELINE_ONLY").is_some() {
        println!(
            "pipeline p50 {}",
            crate::us(crate::percentile(&direct, 0.5))
        );
        std::process::exit(0);
    }
    println!(
        "pipeline alone (no HTTP, no queue): p50 {} p99 {}",
        crate::us(crate::percentile(&direct, 0.5)),
        crate::us(crate::percentile(&direct, 0.99))
    );
    let n = 1000;
    let (mut accepted, mut done) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        if let Some((a, d)) = client.execute(Duration::ZERO).await? {
            accepted.push(a);
            done.push(d);
        }
    }
    accepted.sort();
    done.sort();
    let p = crate::percentile;
    println!(
        "one client, {n} executions: execute → succeeded p50 {} p90 {} p99 {} (202 Accepted p50 {})",
        crate::us(p(&done, 0.5)),
        crate::us(p(&done, 0.9)),
        crate::us(p(&done, 0.99)),
        crate::us(p(&accepted, 0.5)),
    );

    let clients: usize = std::env::var("INSITU_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let poll = Duration::from_millis(
        std::env::var("INSITU_BENCH_POLL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    );
    let window = Duration::from_secs(5);
    let completed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, completed, refused) = (client.clone(), completed.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < window {
                match c.execute(poll).await? {
                    Some(_) => completed.fetch_add(1, Ordering::Relaxed),
                    None => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = completed.load(Ordering::Relaxed);
    println!(
        "{clients} clients polling status every {} ms, {:.1} s: {n} executions succeeded, {:.0} executions/s ({} answered 429)",
        poll.as_millis(),
        secs,
        n as f64 / secs,
        refused.load(Ordering::Relaxed)
    );
    println!(
        "anchors: one `wasmtime run` process per job 6.0 ms warm here (insitu-bench cli; ~8 ms in DESIGN §6); Nevermined's published Argo sample workflow 17 s"
    );
    let _ = halt.send(());
    server.await??;
    println!();
    Ok(())
}
