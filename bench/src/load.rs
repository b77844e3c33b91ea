//! `insitu-bench load`: many consumers against one `insitu serve` process on
//! loopback, for a bounded time. Each consumer has its own key and agreement
//! and loops: execute a cached single-stage `word-count`, poll its status to
//! the end, download the result. Reports throughput, execute → succeeded
//! latency (p50/p99/p999), errors (anything but 429 on a valid request),
//! 429s, and every 10 s the server's RSS, open descriptors and SQLite size —
//! the soak's evidence of no growth.
//!
//! `INSITU_LOAD_CONSUMERS` (default 32), `INSITU_LOAD_SECONDS` (default 30;
//! 600 is the soak). The server reads its own settings from the environment,
//! so `INSITU_QUEUE=8` with more consumers than that saturates it: refused
//! executions are counted with how fast their 429 came. Needs the `insitu`
//! binary next to this one.

use anyhow::{Context, bail};
use insitu_gateway::client::{ClientError, Consumer};
use insitu_runtime::image::package;
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::store::Store;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (RSS in KiB, open descriptors) of `pid`.
fn process(pid: u32) -> (u64, usize) {
    let rss = crate::rss_kib(&pid.to_string());
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

#[derive(Default)]
struct Tally {
    done: AtomicU64,
    busy: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
    /// How long each 429 took to arrive: saturation must be answered fast.
    refusals: Mutex<Vec<Duration>>,
    first_error: Mutex<Option<String>>,
}

pub fn load() -> anyhow::Result<()> {
    for dir in crate::bench_dirs() {
        load_in(&dir)?;
    }
    Ok(())
}

fn load_in(dir: &std::path::Path) -> anyhow::Result<()> {
    let consumers = env("INSITU_LOAD_CONSUMERS", 32) as usize;
    let seconds = env("INSITU_LOAD_SECONDS", 30);
    println!("## load: {consumers} consumers, {seconds} s, one `insitu serve` process");
    let bin = std::env::current_exe()?
        .parent()
        .context("no dir")?
        .join("insitu");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p insitu-gateway",
            bin.display()
        );
    }
    let tmp = tempfile::tempdir_in(dir)?;
    println!(
        "data dir {} on {}",
        tmp.path().display(),
        crate::fs_type(tmp.path())
    );
    let (data, layout, input) = (
        tmp.path().join("data"),
        tmp.path().join("layout"),
        tmp.path().join("input"),
    );
    let artifact = package::wasm_artifact(insitu_tests::WORD_COUNT_P1)?;
    package::write_layout(&layout, "wc", &artifact)?;
    std::fs::create_dir_all(&input)?;
    std::fs::write(
        input.join("a.txt"),
        "red green green blue blue blue\n".repeat(10),
    )?;
    std::fs::create_dir_all(&data)?;
    let mut keys = Vec::new();
    let workflow;
    {
        let store = Store::open(data.join("insitu.db"))?;
        let ds = store.add_dataset(
            "colours",
            &input,
            std::slice::from_ref(&artifact.manifest_digest),
            86_400,
        )?;
        let wf = store.add_workflow(&json!({"main": {"type": "workflow", "name": "count", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": artifact.manifest_digest}},
             "input": [{"index": 0, "id": ds}]}]}}}))?;
        for _ in 0..consumers {
            let key = ProviderKey::random();
            let agreement = store.grant(&key.address(), &ds, &wf, 86_400)?;
            keys.push((key, agreement));
        }
        workflow = wf.to_string();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(&bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "2",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--layout")
        .arg(&layout)
        .env("INSITU_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let result = (|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(drive(pid, port, keys, workflow, seconds, &data))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn drive(
    pid: u32,
    port: u16,
    keys: Vec<(ProviderKey, String)>,
    workflow: String,
    seconds: u64,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{port}");
    let http = insitu_runtime::tls::http_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        if Instant::now() > deadline {
            bail!("insitu serve did not answer on {base}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = Arc::new(Tally::default());
    let metrics = || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        anyhow::Ok([
            counter("insitu_store_writes_total"),
            counter("insitu_store_commits_total"),
            counter("insitu_store_volatile_commits_total"),
            counter("insitu_store_syncs_total"),
        ])
    };
    let before = metrics().await?;
    let bytes = crate::written(pid);
    let start = Instant::now();
    let window = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (key, agreement) in keys {
        let (tally, workflow, base) = (tally.clone(), workflow.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let c = Consumer::new(base, key);
            let fail = |e: String| {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tally.first_error.lock().unwrap().get_or_insert(e);
            };
            let Ok(token) = c.token(&c.claims(&agreement, &workflow, None)).await else {
                fail("token".into());
                return;
            };
            while start.elapsed() < window {
                let t = Instant::now();
                let (id, compute) = match c.execute_for(&token, &agreement, &workflow).await {
                    Ok(answer) => answer,
                    Err(ClientError::Refused { status: 429, .. }) => {
                        tally.busy.fetch_add(1, Ordering::Relaxed);
                        tally.refusals.lock().unwrap().push(t.elapsed());
                        // Back off less than Retry-After asks, to keep the queue full.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => {
                        fail(e.to_string());
                        continue;
                    }
                };
                let outcome = async {
                    let token = compute;
                    loop {
                        let s = c.get(&token, &format!("status/{id}")).await?;
                        match s["workflowStatus"]["status"].as_str() {
                            Some("succeeded") => break,
                            Some("failed" | "stopped") => {
                                return Err(anyhow::anyhow!("execution ended: {s}"));
                            }
                            _ => tokio::time::sleep(Duration::from_millis(2)).await,
                        }
                    }
                    let took = t.elapsed();
                    let out = c.download(&token, &id, "counts.json").await?;
                    if out.is_empty() {
                        return Err(anyhow::anyhow!("empty result"));
                    }
                    anyhow::Ok(took)
                }
                .await;
                match outcome {
                    Ok(took) => {
                        tally.done.fetch_add(1, Ordering::Relaxed);
                        tally.latencies.lock().unwrap().push(took);
                    }
                    Err(e) => fail(format!("{e:#}")),
                }
            }
        }));
    }
    println!("| time | executions/s | RSS | descriptors | SQLite (db + wal) |");
    println!("|---|---|---|---|---|");
    let (mut last, mut last_at) = (0, Duration::ZERO);
    let mut samples = Vec::new();
    let every = Duration::from_secs(10).min(window);
    while start.elapsed() < window {
        // The last sample ends with the window, not after it.
        tokio::time::sleep(every.min(window.saturating_sub(start.elapsed()))).await;
        let at = start.elapsed();
        let done = tally.done.load(Ordering::Relaxed);
        let (rss, fds) = process(pid);
        let size = |f: &str| {
            std::fs::metadata(data.join(f)).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64
        };
        println!(
            "| {:>4.0} s | {:.0} | {:.1} MiB | {fds} | {:.1} + {:.1} MiB |",
            at.as_secs_f64(),
            (done - last) as f64 / (at - last_at).as_secs_f64(),
            rss as f64 / 1024.0,
            size("insitu.db"),
            size("insitu.db-wal"),
        );
        samples.push((rss, fds));
        (last, last_at) = (done, at);
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *tally.latencies.lock().unwrap());
    l.sort();
    let p = |q| {
        if l.is_empty() {
            Duration::ZERO
        } else {
            crate::percentile(&l, q)
        }
    };
    let done = tally.done.load(Ordering::Relaxed);
    let after = metrics().await?;
    let bytes = crate::written(pid) - bytes;
    println!(
        "{}",
        crate::group_commit(
            done,
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
            after[3] - before[3]
        )
    );
    println!("{}", crate::written_per(done, bytes));
    println!(
        "{done} executions succeeded in {secs:.1} s: {:.0}/s; execute → succeeded p50 {} p99 {} p999 {}; errors {}; 429 {}",
        done as f64 / secs,
        crate::ms(p(0.5)),
        crate::ms(p(0.99)),
        crate::ms(p(0.999)),
        tally.errors.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
    );
    let mut r = std::mem::take(&mut *tally.refusals.lock().unwrap());
    if !r.is_empty() {
        r.sort();
        println!(
            "429 answered in p50 {} p99 {} max {}",
            crate::ms(crate::percentile(&r, 0.5)),
            crate::ms(crate::percentile(&r, 0.99)),
            crate::ms(r[r.len() - 1]),
        );
    }
    if let (Some(first), Some(last)) = (samples.get(1).or(samples.first()), samples.last()) {
        println!(
            "RSS {:.1} → {:.1} MiB, descriptors {} → {} (from the second sample to the last)",
            first.0 as f64 / 1024.0,
            last.0 as f64 / 1024.0,
            first.1,
            last.1
        );
    }
    if let Some(e) = tally.first_error.lock().unwrap().take() {
        bail!("errors on valid requests; the first: {e}");
    }
    Ok(())
}
