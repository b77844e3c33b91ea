//! `insitu-bench chain`: on-chain permission checks and settlement against
//! anvil restored from the `testchain/` fixture (built by `scripts/setup`).

use anyhow::Context;
use insitu_chain::alloy::primitives::{Address, B256, U256};
use insitu_chain::{Addresses, Chain, ChainAgreements, Price};
use insitu_runtime::permissions::Permissions;
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::store::{DatasetSpec, Server, Store};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROVIDER: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const CONSUMER: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const IMAGE: &str = "sha256:cb57ecfa6ebbefd8ffc7f75c0f00e57a7fa739578a429b6f72a0df19315deadc";

fn fixture(rel: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testchain")
        .join(rel);
    anyhow::ensure!(p.exists(), "{} is missing; run scripts/setup", p.display());
    Ok(p)
}

pub fn chain() -> anyhow::Result<()> {
    println!("## chain: on-chain permissions against the real contracts on local anvil");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut anvil = std::process::Command::new(fixture(
        "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
    )?)
    .args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--silent",
    ])
    .arg("--load-state")
    .arg(fixture("out/state.json")?)
    .spawn()?;
    let result = bench(port).await;
    let _ = anvil.kill();
    let _ = anvil.wait();
    result
}

async fn bench(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}");
    let addresses = Addresses::from_file(&fixture("out/addresses.json")?)?;
    let provider_key = ProviderKey::from_hex(PROVIDER)?;
    let provider = Arc::new(Chain::connect(&url, addresses.clone(), &provider_key)?);
    let consumer = Chain::connect(&url, addresses, &ProviderKey::from_hex(CONSUMER)?)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.block_number().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "anvil did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (did, _) = provider
        .register_did(B256::repeat_byte(7), B256::ZERO)
        .await?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir(&data)?;
    let store = Arc::new(Store::open(tmp.path().join("insitu.db"))?);
    let dataset = insitu_chain::did_of(did);
    store.register_dataset(&DatasetSpec {
        name: "bench",
        path: &data,
        allowed_images: &[IMAGE.to_string()],
        timeout_secs: 3600,
        server: Server::default(),
        price: Some("1000".into()),
        price_token: None,
        access: false,
        did: Some(dataset.clone()),
        deterministic: false,
        about: Default::default(),
    })?;
    let workflow = store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "r/a", "tag": "1", "checksum": IMAGE}},
             "input": [{"index": 0, "id": dataset}]}]}}}))?
        .to_string();
    let price = Price {
        token: Address::ZERO,
        amounts: vec![U256::from(1000)],
        receivers: vec![provider.provider_address],
    };
    let who = format!("{:#x}", consumer.provider_address);
    let uncached = ChainAgreements::new(provider.clone(), store.clone(), Duration::ZERO);
    let cached = ChainAgreements::new(provider.clone(), store.clone(), Duration::from_secs(600));

    let n = 30;
    let (mut cold, mut warm, mut settle) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = consumer
            .create_agreement_and_pay(B256::repeat_byte(i as u8 + 1), did, &price)
            .await?;
        let id = format!("{id:#x}");
        let t = Instant::now();
        let agreement = uncached
            .check_execute(&id, &who, &workflow, 0)
            .await
            .context("cold check")?;
        cold.push(t.elapsed());
        for _ in 0..10 {
            let t = Instant::now();
            uncached.check_execute(&id, &who, &workflow, 0).await?;
            warm.push(t.elapsed());
        }
        let t = Instant::now();
        uncached
            .settle(
                &agreement,
                &format!("{:#x}", B256::repeat_byte(0x80 + i as u8)),
            )
            .await?;
        settle.push(t.elapsed());
    }
    let id = format!(
        "{:#x}",
        consumer
            .create_agreement_and_pay(B256::repeat_byte(0xee), did, &price)
            .await?
    );
    cached.check_execute(&id, &who, &workflow, 0).await?;
    let mut hits = Vec::new();
    for _ in 0..10_000 {
        let t = Instant::now();
        cached.check_execute(&id, &who, &workflow, 0).await?;
        hits.push(t.elapsed());
    }
    for v in [&mut cold, &mut warm, &mut settle, &mut hits] {
        v.sort();
    }
    let p = crate::percentile;
    println!(
        "first check of a paid agreement (reads + grants compute: 1 transaction), p50 {} p99 {} ({n} agreements)",
        crate::ms(p(&cold, 0.5)),
        crate::ms(p(&cold, 0.99))
    );
    println!(
        "check of a granted agreement, uncached (4 reads), p50 {} p99 {}",
        crate::us(p(&warm, 0.5)),
        crate::us(p(&warm, 0.99))
    );
    println!(
        "check answered from the cache, p50 {:.2} µs p99 {:.2} µs",
        p(&hits, 0.5).as_secs_f64() * 1e6,
        p(&hits, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "settlement after an execution (release payment + commit receipt: 2 transactions), p50 {} p99 {}",
        crate::ms(p(&settle, 0.5)),
        crate::ms(p(&settle, 0.99))
    );
    println!();
    Ok(())
}
