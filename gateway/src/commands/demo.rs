//! `insitu demo`, the README's first command: everything on embedded
//! defaults, nothing to install or configure.
//!
//! 1. Runs each example algorithm in the sandbox on generated sample data.
//! 2. The provider's side: starts the gateway in-process on a loopback port
//!    with a temporary data dir, packages `csv-stats` and `report` as OCI wasm
//!    artifacts in a local image layout, registers a sample dataset whose
//!    compute service allows exactly those two images, registers a two-stage
//!    workflow (`csv-stats` on the dataset, then `report` on its output) and
//!    grants a local agreement to a freshly generated consumer key.
//! 3. The consumer's side, over real HTTP: signs a Nevermined JWT grant,
//!    trades it for an access token, executes, watches the stages progress,
//!    lists and downloads the results, and verifies the provider's signed
//!    receipt. Then the gateway shuts down gracefully.

use crate::client::Consumer;
use crate::config::ServeConfig;
use crate::http::Local;
use anyhow::bail;
use insitu_examples::{ALL, CSV_STATS, REPORT_WASM, Sample};
use insitu_runtime::Status;
use insitu_runtime::image::package;
use insitu_runtime::receipt::{ProviderKey, Receipt};
use insitu_runtime::sandbox::{JobSpec, StopHandle};
use serde_json::json;
use std::time::{Duration, Instant};

/// Runs the demo; returns whether everything succeeded.
///
/// # Errors
/// Host-side failures (temp dirs, sandbox, gateway, loopback HTTP).
pub fn execute() -> anyhow::Result<bool> {
    let work = tempfile::Builder::new().prefix("insitu-demo-").tempdir()?;
    let sandboxed = examples(work.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let flow = rt.block_on(gateway_flow(work.path()))?;
    let ok = sandboxed && flow;
    println!(
        "\n{}",
        if ok {
            "demo complete: every step succeeded"
        } else {
            "demo FAILED (see above)"
        }
    );
    Ok(ok)
}

/// Part 1: each example in the sandbox.
fn examples(work: &std::path::Path) -> anyhow::Result<bool> {
    let sandbox = super::shared::local_sandbox(None)?;
    let rt = super::shared::runtime()?;
    println!(
        "== 1. the sandbox: {} example algorithms on sample data\n",
        ALL.len()
    );
    let mut all_ok = true;
    for example in ALL {
        let dir = work.join("examples").join(example.name);
        let (data, output, logs) = (dir.join("data"), dir.join("output"), dir.join("logs"));
        insitu_examples::write_sample(example.sample, &data)?;
        for d in [&output, &logs] {
            std::fs::create_dir_all(d)?;
        }
        let module = sandbox.prepare(example.wasm)?;
        let mut spec = JobSpec::new(example.name, output.clone(), logs.clone()).input(data);
        spec.args = example.args.iter().map(|s| s.to_string()).collect();
        let report = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
        println!(
            "{:<13} {} ({:?}) in {} ms, {} bytes of output, module {}",
            example.name,
            report.status.as_str(),
            report.outcome,
            report.duration_ms,
            report.output_bytes,
            &report.module_digest[..19],
        );
        match std::fs::read_to_string(output.join(example.result)) {
            Ok(text) => println!("  {}: {}\n", example.result, excerpt(&text, 360)),
            Err(e) => println!("  no {}: {e}\n", example.result),
        }
        if report.status != Status::Succeeded {
            all_ok = false;
            println!("  error: {}", report.error.unwrap_or_default());
        }
    }
    Ok(all_ok)
}

fn excerpt(text: &str, max: usize) -> String {
    let shown: String = text.chars().take(max).collect();
    let more = if text.len() > shown.len() {
        "\n  …"
    } else {
        ""
    };
    format!("{}{more}", shown.replace('\n', "\n  "))
}

/// Parts 2 and 3: provider and consumer over loopback HTTP.
async fn gateway_flow(work: &std::path::Path) -> anyhow::Result<bool> {
    println!("== 2. the provider: gateway, images, dataset, workflow, agreement\n");
    let layout = work.join("images");
    let stats = package::wasm_artifact(CSV_STATS.wasm)?;
    let report = package::wasm_artifact(REPORT_WASM)?;
    package::write_layout(&layout, "csv-stats", &stats)?;
    package::write_layout(&layout, "report", &report)?;
    println!("images      OCI layout {}", layout.display());
    println!("            csv-stats  {}", stats.manifest_digest);
    println!("            report     {}", report.manifest_digest);

    let mut config = ServeConfig::new(work.join("provider"));
    config.layouts = vec![layout];
    let local = Local::start(&config, Duration::from_secs(5)).await?;
    let (base, gateway) = (local.base.clone(), local.gateway.clone());
    println!(
        "gateway     {base} (data dir {})",
        config.data_dir.display()
    );

    let data = work.join("datasets/weather");
    insitu_examples::write_sample(Sample::Csv, &data)?;
    let store = &gateway.store;
    let dataset = store.add_dataset(
        "weather stations",
        &data,
        &[
            stats.manifest_digest.clone(),
            report.manifest_digest.clone(),
        ],
        3600,
    )?;
    println!("dataset     {dataset} (5,000 rows of CSV; stays here)");
    let workflow = store.add_workflow(&json!({"main": {"type": "workflow", "name": "weather report", "workflow": {"stages": [
        {"index": 0, "stageType": "Filtering", "requirements": {"container": {"image": "local/csv-stats", "tag": "1", "checksum": stats.manifest_digest}},
         "input": [{"index": 0, "id": dataset}], "output": {}},
        {"index": 1, "stageType": "Transformation", "requirements": {"container": {"image": "local/report", "tag": "1", "checksum": report.manifest_digest}},
         "input": [{"index": 0, "previousStage": 0}], "output": {}}]}}}))?;
    println!("workflow    {workflow} (csv-stats → report)");
    let consumer = ProviderKey::load_or_create(&work.join("consumer.key"))?;
    let agreement = store.grant(&consumer.address(), &dataset, &workflow, 3600)?;
    println!(
        "agreement   {agreement}\n            for consumer {} (a fresh key), valid 1 h",
        consumer.address()
    );

    println!("\n== 3. the consumer, over HTTP\n");
    let client = Consumer::new(base.clone(), consumer.clone());
    let exec_token = client
        .token(&client.claims(&agreement, workflow.as_str(), None))
        .await?;
    println!("token       signed a JWT grant (ES256K, personal_sign) → access token");
    let id = client
        .execute(&exec_token, &agreement, workflow.as_str())
        .await?;
    println!("execute     POST …/compute/execute/{agreement:.10}… → execution {id}");

    let t = client
        .token(&client.claims(&agreement, workflow.as_str(), Some(&id)))
        .await?;
    let started = Instant::now();
    let mut last = String::new();
    let status = loop {
        let s = client.get(&t, &format!("status/{id}")).await?;
        let st = s["workflowStatus"]["status"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let stages = s["execution"]["stages"].as_array().map_or(0, Vec::len);
        let line = format!("{st} ({stages}/2 stages done)");
        if line != last {
            println!(
                "status      {:>6.1} ms  {line}",
                started.elapsed().as_secs_f64() * 1e3
            );
            last = line;
        }
        if ["succeeded", "failed", "stopped"].contains(&st.as_str()) {
            break s;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the execution did not finish in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let mut ok = status["workflowStatus"]["status"] == "succeeded";
    for stage in status["execution"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  stage {}  {} {} exit {} in {} ms, {} output bytes",
            stage["index"],
            stage["status"].as_str().unwrap_or("?"),
            stage["outcome"].as_str().unwrap_or("?"),
            stage["exit_code"],
            stage["resources"]["wall_time_ms"],
            stage["resources"]["output_bytes"]
        );
    }
    if !ok {
        println!("  reason: {}", status["execution"]["reason"]);
    } else {
        let results = client.get(&t, &format!("results/{id}")).await?;
        println!(
            "results     asset {} owned by the consumer",
            results["did"].as_str().unwrap_or("?")
        );
        for f in results["files"].as_array().into_iter().flatten() {
            println!(
                "  {}  {} bytes  {}",
                f["path"].as_str().unwrap_or("?"),
                f["size"],
                f["sha256"].as_str().unwrap_or("?")
            );
        }
        let report = client.download(&t, &id, "report.md").await?;
        let text = String::from_utf8_lossy(&report).into_owned();
        println!("\nreport.md (downloaded):\n  {}\n", excerpt(&text, 900));
        // As a consumer would with `insitu verify --files`: every downloaded
        // file against the signed receipt, signed by the provider.
        let downloaded = work.join("downloaded");
        for f in results["files"].as_array().into_iter().flatten() {
            let name = f["path"].as_str().unwrap_or_default();
            let path = downloaded.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, client.download(&t, &id, name).await?)?;
        }
        let receipt: Receipt = serde_json::from_value(results["receipt"].clone())?;
        let provider = gateway.pipeline.key.address();
        let checks = insitu_runtime::verify::verify(&receipt, Some(&provider), Some(&downloaded));
        ok &= checks.ok();
        println!("receipt     hash {}", receipt.hash);
        for check in &checks.checks {
            println!("  {check}");
        }
    }
    drop(gateway);
    local.stop().await?;
    println!("gateway     shut down");
    Ok(ok)
}
