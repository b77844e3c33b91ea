//! Federated training in the sandbox: `linreg-train` as a participant
//! (`--fl-round`, the global model as its last input) on three shards, its
//! updates combined by secure aggregation and weighted FedAvg round after
//! round, reaches the accuracy of the same model trained on all the data.

use crate::{Dirs, run};
use insitu_federated::{fedavg, secagg};
use insitu_guest::fl;
use insitu_runtime::sandbox::JobSpec;
use insitu_tests::fl::{accuracy, write_shard};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One participant's round: its update (parameters, weight).
async fn participate(shard: &Path, model: &Path, round: u64) -> (Vec<f64>, u64) {
    let d = Dirs::new();
    let mut spec = JobSpec::new("linreg-train", d.output.clone(), d.logs.clone())
        .input(shard.to_path_buf())
        .input(model.to_path_buf());
    spec.args = ["--model", "logistic", "--epochs", "25", "--lr", "0.5"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--fl-round={round}")])
        .collect();
    let r = run(insitu_examples::LINREG_TRAIN.wasm, &spec).await;
    assert_eq!(
        r.status.as_str(),
        "succeeded",
        "{:?} {}",
        r.error,
        d.stderr()
    );
    let bytes = std::fs::read(d.output.join(fl::UPDATE_FILE)).unwrap();
    let params = fl::decode(&bytes, &d.output).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.output.join(fl::UPDATE_META)).unwrap()).unwrap();
    assert!(
        !d.output.join("model.json").exists(),
        "a participant writes only its update"
    );
    (params, meta["weight"].as_u64().unwrap())
}

/// FedAvg of `updates` through secure aggregation (threshold 2); checks it
/// against plain FedAvg.
fn secure_average(round: u64, updates: &[(Vec<f64>, u64)]) -> Vec<f64> {
    let ids: Vec<u32> = (1..=updates.len() as u32).collect();
    let parts: Vec<secagg::Participant> = ids
        .iter()
        .map(|&i| secagg::Participant::new(i).unwrap())
        .collect();
    let keys: BTreeMap<u32, secagg::Advertised> =
        parts.iter().map(|p| (p.id, p.advertise())).collect();
    let tag = format!("test/round-{round}");
    let mut held: BTreeMap<u32, Vec<secagg::SharesFor>> = BTreeMap::new();
    for p in &parts {
        for s in p.share(&ids, 2).unwrap() {
            held.entry(s.holder).or_default().push(s);
        }
    }
    let len = updates[0].0.len() + 1;
    let mut agg = secagg::Aggregator::new(tag.as_bytes(), len, 2, keys.clone());
    for (p, (params, w)) in parts.iter().zip(updates) {
        agg.add(
            p.id,
            p.mask(tag.as_bytes(), &fedavg::contribution(params, *w), &keys),
        )
        .unwrap();
    }
    let survivors = agg.survivors();
    let mut seeds = BTreeMap::<u32, Vec<_>>::new();
    for h in &survivors {
        for (owner, r) in secagg::reveal(&held[h], &survivors, &BTreeSet::new(), 2).unwrap() {
            if let secagg::Revealed::Seed(s) = r {
                seeds.entry(owner).or_default().push(s.clone());
            }
        }
    }
    let secure = fedavg::average(&agg.unmask(&seeds, &BTreeMap::new()).unwrap()).unwrap();
    for (a, b) in secure.iter().zip(fedavg::plain(updates)) {
        assert!((a - b).abs() < 1e-5, "secure {a} vs plain {b}");
    }
    secure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_training_matches_central_training() {
    let tmp = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    let all = tmp.path().join("all");
    std::fs::create_dir_all(&all).unwrap();
    for (i, rows) in [600usize, 900, 1500].into_iter().enumerate() {
        let dir = tmp.path().join(format!("shard-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_shard(&dir.join("train.csv"), rows, 100 + i as u64, 4);
        std::fs::copy(dir.join("train.csv"), all.join(format!("train-{i}.csv"))).unwrap();
        shards.push(dir);
    }
    let held_out = write_shard(&tmp.path().join("held-out.csv"), 3000, 999, 4);

    // Central: the same model on all the data at once.
    let d = Dirs::new();
    let mut spec = JobSpec::new("linreg-train", d.output.clone(), d.logs.clone()).input(all);
    spec.args = ["--model", "logistic", "--epochs", "300", "--lr", "0.5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        run(insitu_examples::LINREG_TRAIN.wasm, &spec)
            .await
            .status
            .as_str(),
        "succeeded"
    );
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.output.join("model.json")).unwrap()).unwrap();
    let mut central: Vec<f64> = serde_json::from_value(model["weights"].clone()).unwrap();
    central.push(model["bias"].as_f64().unwrap());
    let central_acc = accuracy(&central, &held_out);

    // Federated: 12 rounds of 25 local epochs.
    let model_dir = tmp.path().join("global");
    std::fs::create_dir_all(&model_dir).unwrap();
    let mut global = Vec::new();
    for round in 0..12 {
        let mut updates = Vec::new();
        for shard in &shards {
            updates.push(participate(shard, &model_dir, round).await);
        }
        global = secure_average(round, &updates);
        std::fs::write(model_dir.join(fl::MODEL_FILE), fl::encode(&global)).unwrap();
    }
    let federated_acc = accuracy(&global, &held_out);
    eprintln!("held-out accuracy: federated {federated_acc:.4}, central {central_acc:.4}");
    assert!(central_acc > 0.8, "central {central_acc}");
    assert!(
        (federated_acc - central_acc).abs() <= 0.01,
        "federated {federated_acc} vs central {central_acc}"
    );
}
