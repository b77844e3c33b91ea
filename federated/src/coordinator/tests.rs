//! The coordinator against in-process peers: rounds, dropouts, resuming.

use super::*;
use crate::participant::RoundSecrets;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a fake participant misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Unreachable from the start.
    Down,
    /// Shares, then never sends its masked update (killed mid-round).
    DiesAfterSharing,
    /// Sends a masked vector one value short.
    WrongLength,
    /// Sends a number of bytes that is no whole vector.
    Malformed,
    /// Never answers `masked` (a training that runs past the round).
    Hangs,
}

/// A participant in this process: its update is `params` of `weight`.
struct Fake {
    params: Vec<f64>,
    weight: u64,
    fault: Fault,
    secrets: Mutex<Option<RoundSecrets>>,
    /// Models it was handed, round by round.
    seen: Mutex<Vec<Vec<u8>>>,
    down: AtomicBool,
}

fn fake(params: Vec<f64>, weight: u64, fault: Fault) -> Fake {
    Fake {
        params,
        weight,
        fault,
        secrets: Mutex::new(None),
        seen: Mutex::new(Vec::new()),
        down: AtomicBool::new(fault == Fault::Down),
    }
}

impl Peer for Fake {
    async fn start(&self, at: &RoundCall, id: u32, model: &[u8]) -> Result<Started, String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("connection refused".into());
        }
        self.seen.lock().unwrap().push(model.to_vec());
        let tag = format!("{}/{}/{}", at.job, at.round, at.attempt);
        let (s, keys) = RoundSecrets::new(id, tag.as_bytes(), at.threshold, at.parameters)
            .map_err(|e| e.to_string())?;
        *self.secrets.lock().unwrap() = Some(s);
        Ok(Started {
            execution: format!("nv-{id}"),
            participant: id,
            keys,
        })
    }

    async fn share(&self, _: &RoundCall, body: &ShareRequest) -> Result<Vec<SealedMsg>, String> {
        let mut s = self.secrets.lock().unwrap();
        let sealed = s
            .as_mut()
            .ok_or("no round")?
            .share(body.roster.clone())
            .map_err(|e| e.to_string())?;
        Ok(sealed.iter().map(SealedMsg::from).collect())
    }

    async fn masked(&self, _: &RoundCall, body: &MaskRequest) -> Result<Vec<u8>, String> {
        if self.fault == Fault::DiesAfterSharing {
            return Err("connection reset".into());
        }
        if self.fault == Fault::Hangs {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let sealed: Vec<_> = body.sealed.iter().map(|s| s.sealed().unwrap()).collect();
        let mut s = self.secrets.lock().unwrap();
        let mut y = s
            .as_mut()
            .ok_or("no round")?
            .mask(&sealed, &self.params, self.weight)
            .map_err(|e| e.to_string())?;
        match self.fault {
            Fault::WrongLength => {
                y.pop();
            }
            Fault::Malformed => return Ok(vec![1, 2, 3]),
            _ => {}
        }
        Ok(wire::to_bytes(&y))
    }

    async fn unmask(
        &self,
        _: &RoundCall,
        body: &UnmaskRequest,
    ) -> Result<wire::UnmaskResponse, String> {
        let mut s = self.secrets.lock().unwrap().take().ok_or("no round")?;
        Ok(wire::UnmaskResponse {
            shares: s
                .reveal(&body.survivors, &body.dropped)
                .map_err(|e| e.to_string())?,
            execution: "nv".into(),
            receipt: None,
        })
    }
}

fn plan(n: usize, rounds: u64, threshold: usize) -> Plan {
    Plan {
        rounds,
        min_participants: threshold,
        threshold,
        parameters: 3,
        round_timeout_secs: 10,
        participants: (0..n)
            .map(|i| PlanParticipant {
                gateway: format!("http://127.0.0.1:{}", 9000 + i),
                agreement: format!("0x{i:064x}"),
                workflow: "did:nv:00".into(),
            })
            .collect(),
        publish: 0,
        per_round: None,
    }
}

fn update(i: usize) -> (Vec<f64>, u64) {
    let x = i as f64;
    (vec![x, -2.0 * x, 0.5 + x], 10 * (i as u64 + 1))
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[tokio::test]
async fn faults_are_dropped_with_reasons_and_the_sum_stays_exact() {
    let faults = [
        Fault::None,
        Fault::Down,
        Fault::None,
        Fault::DiesAfterSharing,
        Fault::WrongLength,
        Fault::Malformed,
        Fault::None,
    ];
    let peers: Vec<Fake> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (p, w) = update(i);
            fake(p, w, *f)
        })
        .collect();
    let plan = plan(peers.len(), 1, 3);
    let out = tempfile::tempdir().unwrap();
    let c = Coordinator {
        plan: &plan,
        peers: &peers,
        out: out.path(),
    };
    let mut lines = Vec::new();
    let done = c.run(|r| lines.push(r.clone())).await.unwrap();
    let r = &lines[0];
    assert_eq!(r.participants, vec![0, 2, 6]);
    let reasons: Vec<(usize, &str)> = r
        .dropped
        .iter()
        .map(|d| (d.participant, d.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (1, "start: connection refused"),
            (3, "masked: connection reset"),
            (
                4,
                "masked: participant 5 sent a vector of 3 values; the model has 4"
            ),
            (5, "masked: 3 bytes, not a whole number of 8-byte values"),
        ]
    );
    let survivors: Vec<_> = [0, 2, 6].iter().map(|&i| update(i)).collect();
    close(&done.model, &fedavg::plain(&survivors));
    assert_eq!(
        done.digest,
        model_digest(&std::fs::read(out.path().join(MODEL_FILE)).unwrap())
    );
}

#[tokio::test]
async fn below_the_threshold_a_round_aborts_and_reveals_nothing() {
    let peers: Vec<Fake> = (0..4)
        .map(|i| {
            let (p, w) = update(i);
            let f = if i < 2 {
                Fault::DiesAfterSharing
            } else {
                Fault::None
            };
            fake(p, w, f)
        })
        .collect();
    let plan = plan(4, 1, 3);
    let out = tempfile::tempdir().unwrap();
    let e = Coordinator {
        plan: &plan,
        peers: &peers,
        out: out.path(),
    }
    .run(|_| {})
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("round 0 aborted: only 2 masked updates arrived, fewer than the threshold 3: the round is aborted and nothing is revealed"),
        "{e}"
    );
    // Nobody was asked to reveal: the survivors still hold their secrets.
    for p in &peers[2..] {
        assert!(p.secrets.lock().unwrap().is_some());
    }
    assert!(!out.path().join(STATE_FILE).exists());
}

#[tokio::test]
async fn a_restarted_coordinator_resumes_after_the_last_completed_round() {
    let peers: Vec<Fake> = (0..3)
        .map(|i| {
            let (p, w) = update(i);
            fake(p, w, Fault::None)
        })
        .collect();
    let plan = plan(3, 3, 2);
    let out = tempfile::tempdir().unwrap();
    let c = Coordinator {
        plan: &plan,
        peers: &peers,
        out: out.path(),
    };
    // Round 1 aborts: two participants are down.
    let mut rounds = 0;
    let e = {
        let stop = |r: &RoundReport| {
            rounds += 1;
            if r.round == 0 {
                peers[1].down.store(true, Ordering::SeqCst);
                peers[2].down.store(true, Ordering::SeqCst);
            }
        };
        c.run(stop).await.unwrap_err()
    };
    assert!(matches!(e, FlError::Aborted { round: 1, .. }), "{e}");
    assert_eq!(rounds, 1);
    let job = c.load().unwrap().0.job;
    // A crash while committing the next round leaves a model the state
    // does not name, and model.f64 half-written: neither matters.
    std::fs::write(out.path().join("models/0badc0de.f64"), [1u8; 24]).unwrap();
    std::fs::write(out.path().join(MODEL_FILE), [7u8; 5]).unwrap();
    // Back up: rounds 1 and 2 run, round 0 is not repeated.
    for p in &peers {
        p.down.store(false, Ordering::SeqCst);
    }
    let mut resumed = Vec::new();
    let done = c.run(|r| resumed.push(r.round)).await.unwrap();
    assert_eq!(resumed, vec![1, 2]);
    assert_eq!(done.state.job, job);
    assert_eq!(done.state.rounds.len(), 3);
    // Round 1 started from round 0's model, which was on disk.
    let seen = peers[0].seen.lock().unwrap().clone();
    assert!(seen[0].is_empty());
    assert_eq!(model_digest(&seen[2]), done.state.rounds[0].model);
    assert_eq!(
        model_digest(&std::fs::read(out.path().join(MODEL_FILE)).unwrap()),
        done.digest
    );
    assert_eq!(
        std::fs::read_dir(out.path().join("models"))
            .unwrap()
            .count(),
        1
    );
    // Another plan in the same directory is refused.
    let mut other = plan.clone();
    other.rounds = 4;
    let e = Coordinator {
        plan: &other,
        peers: &peers,
        out: out.path(),
    }
    .run(|_| {})
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("holds the state of another job"), "{e}");
}

#[tokio::test]
async fn a_participant_past_the_round_deadline_is_dropped() {
    let peers: Vec<Fake> = (0..3)
        .map(|i| {
            let (p, w) = update(i);
            fake(p, w, if i == 1 { Fault::Hangs } else { Fault::None })
        })
        .collect();
    let mut plan = plan(3, 1, 2);
    plan.round_timeout_secs = 1;
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut lines = Vec::new();
    let done = Coordinator {
        plan: &plan,
        peers: &peers,
        out: out.path(),
    }
    .run(|r| lines.push(r.clone()))
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        lines[0].dropped,
        vec![Dropped {
            participant: 1,
            reason: "masked: no answer before the round's deadline".into()
        }]
    );
    close(&done.model, &fedavg::plain(&[update(0), update(2)]));
}

#[tokio::test]
async fn each_round_asks_a_fresh_sample_of_per_round_participants() {
    let peers: Vec<Fake> = (0..6)
        .map(|i| {
            let (p, w) = update(i);
            fake(p, w, Fault::None)
        })
        .collect();
    let mut plan = plan(6, 8, 2);
    plan.per_round = Some(3);
    let out = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    Coordinator {
        plan: &plan,
        peers: &peers,
        out: out.path(),
    }
    .run(|r| lines.push(r.clone()))
    .await
    .unwrap();
    let mut asked = BTreeSet::new();
    for r in &lines {
        assert_eq!(r.selected.len(), 3, "{r:?}");
        assert_eq!(r.participants, r.selected);
        asked.extend(r.selected.iter().copied());
    }
    // Each participant was handed a model once per round it was asked in.
    let calls: usize = peers.iter().map(|p| p.seen.lock().unwrap().len()).sum();
    assert_eq!(calls, 3 * 8);
    // Over 8 rounds, more than one sample (a fixed one has probability 20^-7).
    assert!(asked.len() > 3, "{asked:?}");
}

#[test]
fn plans_are_checked() {
    let mut p = plan(3, 1, 2);
    p.check().unwrap();
    p.threshold = 4;
    assert_eq!(
        p.check().unwrap_err().to_string(),
        "the plan is invalid: threshold must be between 2 and the 3 participants, not 4"
    );
    let mut p = plan(3, 1, 2);
    p.participants[1] = p.participants[0].clone();
    assert!(
        p.check()
            .unwrap_err()
            .to_string()
            .contains("repeats gateway")
    );
    let mut p = plan(3, 1, 2);
    p.per_round = Some(1);
    assert_eq!(
        p.check().unwrap_err().to_string(),
        "the plan is invalid: per_round must be between the threshold 2 and the 3 participants, not 1"
    );
    let e = serde_json::from_value::<Plan>(serde_json::json!({"rounds": 1, "rouds": 2}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `rouds`"), "{e}");
}
