//! `insitu-bench http`: the gateway over loopback HTTP. A cached single-stage
//! `word-count` on a small input: POST execute → status `succeeded`, latency
//! (one client) and sustained throughput (many clients), with every state
//! change persisted in SQLite (WAL, synchronous=FULL) under the data dir.

use anyhow::bail;
use insitu_gateway::client::{ClientError, Consumer};
use insitu_gateway::config::ServeConfig;
use insitu_gateway::http::Local;
use insitu_runtime::image::package;
use insitu_runtime::receipt::ProviderKey;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Client {
    c: Consumer,
    agreement: String,
    workflow: String,
    exec_token: String,
}

impl Client {
    /// One execution: (time to 202, time to `succeeded`), or None on 429.
    async fn execute(&self, pause: Duration) -> anyhow::Result<Option<(Duration, Duration)>> {
        let t = Instant::now();
        let (id, token) = match self
            .c
            .execute_for(&self.exec_token, &self.agreement, &self.workflow)
            .await
        {
            Ok(answer) => answer,
            Err(ClientError::Refused { status: 429, .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let accepted = t.elapsed();
        loop {
            let s = self.c.get(&token, &format!("status/{id}")).await?;
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
    for dir in crate::bench_dirs() {
        rt.block_on(run(&dir))?;
    }
    Ok(())
}

async fn run(dir: &std::path::Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir_in(dir)?;
    let artifact = package::wasm_artifact(insitu_tests::WORD_COUNT_P1)?;
    package::write_layout(&tmp.path().join("layout"), "wc", &artifact)?;
    let mut config = ServeConfig::new(tmp.path().join("data"));
    config.layouts = vec![tmp.path().join("layout")];
    config.queue = 256;
    let workers = config.workers;
    let local = Local::start(&config, Duration::from_secs(5)).await?;
    let (base, gateway) = (local.base.clone(), local.gateway.clone());
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input)?;
    std::fs::write(
        input.join("a.txt"),
        "red green green blue blue blue\n".repeat(10),
    )?;
    // INSITU_BENCH_DETERMINISTIC=1: the dataset requires deterministic mode.
    let deterministic = std::env::var_os("INSITU_BENCH_DETERMINISTIC").is_some();
    let ds = gateway
        .store
        .register_dataset(&insitu_runtime::store::DatasetSpec {
            name: "colours",
            path: &input,
            allowed_images: std::slice::from_ref(&artifact.manifest_digest),
            timeout_secs: 3600,
            server: Default::default(),
            price: None,
            price_token: None,
            access: false,
            did: None,
            deterministic,
            about: Default::default(),
        })?;
    if deterministic {
        println!("deterministic mode on");
    }
    // INSITU_BENCH_OUTPUT_POLICY=1: the dataset has an output policy whose
    // checks the result passes (size, type, copied input; released at once).
    if std::env::var_os("INSITU_BENCH_OUTPUT_POLICY").is_some() {
        gateway.store.set_output_policy(
            &ds,
            &insitu_runtime::airlock::OutputPolicy {
                max_result_bytes: Some(1 << 20),
                file_types: vec!["json".into()],
                max_copied_share: Some(0.5),
                ..Default::default()
            },
        )?;
        println!("output policy on: size, type and copied-input checks, automatic release");
    }
    let wf = gateway.store.add_workflow(&json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
        {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": artifact.manifest_digest}},
         "input": [{"index": 0, "id": ds}]}]}}}))?;
    let consumer = ProviderKey::load_or_create(&tmp.path().join("consumer.key"))?;
    let agreement = gateway.store.grant(&consumer.address(), &ds, &wf, 3600)?;
    let mut client = Client {
        c: Consumer::new(base, consumer),
        agreement,
        workflow: wf.to_string(),
        exec_token: String::new(),
    };
    client.exec_token = client
        .c
        .token(&client.c.claims(&client.agreement, &client.workflow, None))
        .await?;
    let client = Arc::new(client);
    println!(
        "data dir {} on {} ({} workers){}",
        tmp.path().display(),
        crate::fs_type(tmp.path()),
        workers,
        if std::env::var("INSITU_SQLITE_SYNCHRONOUS")
            .is_ok_and(|v| v.eq_ignore_ascii_case("normal"))
        {
            ", SQLite synchronous=NORMAL (no fsync: not durable)"
        } else {
            ""
        }
    );

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
    // INSITU_BENCH_DIRECT=0 skips this part.
    if !direct.is_empty() {
        println!(
            "pipeline alone (no HTTP, no queue): p50 {} p99 {}",
            crate::us(crate::percentile(&direct, 0.5)),
            crate::us(crate::percentile(&direct, 0.99))
        );
    }
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
    let writes = gateway.store.write_stats();
    let bytes = crate::written(std::process::id());
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
    let w = gateway.store.write_stats();
    let bytes = crate::written(std::process::id()) - bytes;
    println!(
        "{clients} clients polling status every {} ms, {:.1} s: {n} executions succeeded, {:.0} executions/s ({} answered 429)",
        poll.as_millis(),
        secs,
        n as f64 / secs,
        refused.load(Ordering::Relaxed)
    );
    println!(
        "{}",
        crate::group_commit(
            n,
            w.writes - writes.writes,
            w.commits - writes.commits,
            w.volatile_commits - writes.volatile_commits,
            w.syncs - writes.syncs
        )
    );
    println!("{}", crate::written_per(n, bytes));
    println!(
        "anchors: one `wasmtime run` process per job 6.0 ms warm here (insitu-bench cli; ~8 ms in the seed's gathered facts); Nevermined's published Argo sample workflow 17 s"
    );
    drop(gateway);
    local.stop().await?;
    println!();
    Ok(())
}
