//! `insitu-bench fl`: federated rounds over loopback HTTP, secure aggregation
//! against plain FedAvg, on the same gateways and the same training stage.
//!
//! For 3, 5 and 10 participants × 10^3, 10^5 and 10^6 parameters: that many
//! in-process gateways (`Local`, each its own data dir, one worker), each
//! with a dataset, an agreement for one consumer and a one-stage workflow
//! whose guest (the test guest's `fl-update` case) writes an update of the
//! model's size.
//!
//! - **secure**: `insitu fl run`'s coordinator over HTTP (start with the
//!   global model, share, masked, unmask; threshold ⌈2n/3⌉), 3 rounds;
//! - **plain**: each participant executes the same stage through the compute
//!   API (no model upload), the coordinator downloads the unmasked update and
//!   its weight and averages in floating point — what FedAvg over insitu
//!   would cost without secure aggregation — 3 rounds.
//!
//! Reported per configuration: the median round time of each and their
//! ratio, rounds per second, and the bytes a participant sends per secure
//! round (response bodies) against the model's 8 bytes per parameter.

use insitu_federated::coordinator::{Coordinator, Peer, Plan, PlanParticipant, RoundCall};
use insitu_federated::wire::{
    MaskRequest, SealedMsg, ShareRequest, ShareResponse, Started, UnmaskRequest, UnmaskResponse,
};
use insitu_gateway::client::Consumer;
use insitu_gateway::commands::fl::HttpPeer;
use insitu_gateway::config::ServeConfig;
use insitu_gateway::http::Local;
use insitu_runtime::image::package;
use insitu_runtime::receipt::ProviderKey;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROUNDS: u64 = 3;

/// An [`HttpPeer`] that counts the bytes of what the participant sent:
/// the masked update, and everything else (keys, sealed and revealed shares).
struct Counting {
    inner: HttpPeer,
    sent: AtomicU64,
    masked: AtomicU64,
}

impl Counting {
    fn add(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Peer for Counting {
    async fn start(&self, at: &RoundCall, id: u32, model: &[u8]) -> Result<Started, String> {
        let r = self.inner.start(at, id, model).await?;
        self.add(serde_json::to_vec(&r).map_or(0, |b| b.len()));
        Ok(r)
    }

    async fn share(&self, at: &RoundCall, body: &ShareRequest) -> Result<Vec<SealedMsg>, String> {
        let r = self.inner.share(at, body).await?;
        let answer = ShareResponse { sealed: r };
        self.add(serde_json::to_vec(&answer).map_or(0, |b| b.len()));
        Ok(answer.sealed)
    }

    async fn masked(&self, at: &RoundCall, body: &MaskRequest) -> Result<Vec<u8>, String> {
        let r = self.inner.masked(at, body).await?;
        self.masked.fetch_add(r.len() as u64, Ordering::Relaxed);
        Ok(r)
    }

    async fn unmask(&self, at: &RoundCall, body: &UnmaskRequest) -> Result<UnmaskResponse, String> {
        let r = self.inner.unmask(at, body).await?;
        self.add(serde_json::to_vec(&r).map_or(0, |b| b.len()));
        Ok(r)
    }
}

struct Site {
    local: Local,
    agreement: String,
    workflow: String,
}

pub fn fl() -> anyhow::Result<()> {
    println!("## Federated rounds over loopback: secure aggregation vs plain FedAvg");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("INSITU_BENCH_FL_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000, 1_000_000]);
    println!(
        "| participants | parameters | secure round (p50; start / share / masked / unmask ms) | plain round (p50) | secure / plain | secure rounds/s | sent per participant per round: masked update + keys and shares | / model bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [3usize, 5, 10] {
        for &len in &sizes {
            let (secure, plain, (masked, rest), steps) = configuration(n, len).await?;
            let model = 8.0 * len as f64;
            println!(
                "| {n} | {len} | {} ({steps}) | {} | {:.2}× | {:.1} | {masked} B + {rest} B | {:.4}× + {rest} B |",
                super::ms(secure),
                super::ms(plain),
                secure.as_secs_f64() / plain.as_secs_f64(),
                1.0 / secure.as_secs_f64(),
                masked as f64 / model
            );
        }
    }
    Ok(())
}

/// (secure round p50, plain round p50, bytes sent per participant per
/// secure round: (masked update, the rest), that round's steps in ms).
async fn configuration(
    n: usize,
    len: usize,
) -> anyhow::Result<(Duration, Duration, (u64, u64), String)> {
    let tmp = tempfile::tempdir()?;
    let artifact = package::wasm_artifact(insitu_tests::HOSTILE_P1)?;
    let layout = tmp.path().join("layout");
    package::write_layout(&layout, "fl", &artifact)?;
    let consumer = ProviderKey::random();
    let mut sites = Vec::new();
    for i in 0..n {
        let mut config = ServeConfig::new(tmp.path().join(format!("p{i}")));
        config.layouts = vec![layout.clone()];
        config.workers = 1;
        let local = Local::start(&config, Duration::from_secs(5)).await?;
        let input = tmp.path().join(format!("d{i}"));
        std::fs::create_dir_all(&input)?;
        std::fs::write(input.join("rows.csv"), "x\n1\n")?;
        let store = &local.gateway.store;
        let ds = store.add_dataset(
            "rows",
            &input,
            std::slice::from_ref(&artifact.manifest_digest),
            3600,
        )?;
        let wf = store.add_workflow(&json!({"main": {"type": "workflow", "name": "fl", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "local/fl", "tag": "1", "checksum": artifact.manifest_digest}},
             "input": [{"index": 0, "id": ds}], "arguments": ["fl-update", len.to_string()]}]}}}))?;
        let agreement = store.grant(&consumer.address(), &ds, &wf, 3600)?;
        sites.push(Site {
            local,
            agreement,
            workflow: wf.to_string(),
        });
    }
    let plan = Plan {
        rounds: ROUNDS,
        min_participants: n,
        threshold: (2 * n).div_ceil(3).max(2),
        parameters: len,
        round_timeout_secs: 600,
        participants: sites
            .iter()
            .map(|s| PlanParticipant {
                gateway: s.local.base.clone(),
                agreement: s.agreement.clone(),
                workflow: s.workflow.clone(),
            })
            .collect(),
        publish: 0,
        per_round: None,
    };
    let http = insitu_runtime::tls::http_client();
    let peers: Vec<Counting> = plan
        .participants
        .iter()
        .map(|p| Counting {
            inner: HttpPeer::new(http.clone(), p, consumer.clone()),
            sent: AtomicU64::new(0),
            masked: AtomicU64::new(0),
        })
        .collect();
    let out = tmp.path().join("job");
    let mut secure = Vec::new();
    Coordinator {
        plan: &plan,
        peers: &peers,
        out: &out,
    }
    .run(|r| {
        assert!(r.dropped.is_empty(), "{:?}", r.dropped);
        let ms = |k: &str| r.steps.get(k).copied().unwrap_or(0.0) * 1e3;
        let steps = format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            ms("start"),
            ms("share"),
            ms("masked"),
            ms("unmask")
        );
        secure.push((Duration::from_secs_f64(r.seconds), steps));
    })
    .await?;
    let sent = peers
        .iter()
        .map(|p| {
            (
                p.masked.load(Ordering::Relaxed) / ROUNDS,
                p.sent.load(Ordering::Relaxed) / ROUNDS,
            )
        })
        .max()
        .unwrap_or((0, 0));

    // Plain FedAvg: execute, wait, download the update, average.
    let clients: Vec<Consumer> = sites
        .iter()
        .map(|s| Consumer::new(s.local.base.clone(), consumer.clone()))
        .collect();
    let mut plain = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let updates = futures_util::future::try_join_all(sites.iter().zip(&clients).map(
            |(s, c)| async move {
                let token = c.token(&c.claims(&s.agreement, &s.workflow, None)).await?;
                let id = c.execute(&token, &s.agreement, &s.workflow).await?;
                let token = c
                    .token(&c.claims(&s.agreement, &s.workflow, Some(&id)))
                    .await?;
                loop {
                    let st = c.get(&token, &format!("status/{id}")).await?;
                    match st["workflowStatus"]["status"].as_str() {
                        Some("succeeded") => break,
                        Some("failed" | "stopped") => anyhow::bail!("plain round: {st}"),
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                let params = c.download(&token, &id, "update.f64").await?;
                let meta: serde_json::Value =
                    serde_json::from_slice(&c.download(&token, &id, "update.json").await?)?;
                anyhow::Ok((
                    insitu_federated::wire::model_from_bytes(&params).unwrap_or_default(),
                    meta["weight"].as_u64().unwrap_or(0),
                ))
            },
        ))
        .await?;
        let model = insitu_federated::fedavg::plain(&updates);
        assert_eq!(model.len(), len);
        plain.push(t.elapsed());
    }
    for s in sites {
        s.local.stop().await?;
    }
    secure.sort();
    plain.sort();
    let (secure, steps) = secure.swap_remove(secure.len() / 2);
    Ok((secure, plain[plain.len() / 2], sent, steps))
}
