//! The store across restarts, concurrent writers and refusals.

use super::catalog::{ddo_size, parse_ddo_size};
use super::*;

const SUM: &str = "sha256:cb57ecfa6ebbefd8ffc7f75c0f00e57a7fa739578a429b6f72a0df19315deadc";
const ALICE: &str = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4";

fn workflow_on(dataset: &Did) -> Value {
    json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
        {"index": 0, "requirements": {"container": {"image": "r/x", "tag": "1", "checksum": SUM}},
         "input": [{"index": 0, "id": dataset}]}]}}})
}

#[test]
fn signed_requests_are_used_once_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("insitu.db");
    let store = Store::open(&path).unwrap();
    assert!(store.use_signature("aa", 1_000, 1_301).unwrap());
    assert!(
        !store.use_signature("aa", 1_001, 1_302).unwrap(),
        "a replay"
    );
    drop(store);
    let store = Store::open(&path).unwrap();
    assert!(
        !store.use_signature("aa", 1_200, 1_501).unwrap(),
        "still a replay after a restart"
    );
    // Marks are forgotten once expired, by the next use of any signature.
    assert!(store.use_signature("bb", 1_400, 1_701).unwrap());
    let left: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM used_signatures", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1);
}

/// A store at `dir/insitu.db` with one dataset, one workflow on it and an
/// agreement of Alice's for it: (database path, store, agreement).
fn store_with_agreement(dir: &std::path::Path) -> (std::path::PathBuf, Store, Agreement) {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let db = dir.join("insitu.db");
    let store = Store::open(&db).unwrap();
    let ds = store
        .add_dataset("weather", &data, &[SUM.into()], 3600)
        .unwrap();
    let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
    let a = store
        .agreement(&store.grant(ALICE, &ds, &wf, 60).unwrap())
        .unwrap();
    (db, store, a)
}

#[test]
fn intermediate_statuses_commit_without_an_fsync_and_ends_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store, a) = store_with_agreement(dir.path());
    let id = store.create_execution(&a).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let before = store.write_stats();
    for to in [Status::Configuring, Status::Running] {
        let ack = store.advance_ack(&id, to, None, None);
        assert_eq!(rt.block_on(ack.done()).unwrap(), to);
        // Visible to another connection once answered.
        let other = Store::open(&db).unwrap();
        assert_eq!(other.execution(&id).unwrap().status, to);
    }
    let mid = store.write_stats();
    assert_eq!(
        (mid.commits, mid.volatile_commits),
        (before.commits, before.volatile_commits + 2),
        "{mid:?}"
    );
    let ack = store.advance_ack(&id, Status::Failed, Some("ended"), None);
    assert_eq!(rt.block_on(ack.done()).unwrap(), Status::Failed);
    let end = store.write_stats();
    assert_eq!(end.commits, mid.commits + 1, "a terminal status is durable");
    drop(store);
    let store = Store::open(&db).unwrap();
    assert_eq!(store.execution(&id).unwrap().status, Status::Failed);
}

#[test]
fn concurrent_writes_share_commits_and_a_refusal_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store, a) = store_with_agreement(dir.path());
    // 8 threads, each waiting for every change to be durable before the next.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..50)
                        .map(|_| {
                            let e = store.create_execution(&a).unwrap();
                            store.set_status(&e, Status::Configuring, None).unwrap();
                            store.set_status(&e, Status::Failed, Some("done")).unwrap();
                            e
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let w = store.write_stats();
    assert_eq!(w.writes, 8 * 50 * 3);
    assert!(
        w.commits < w.writes,
        "concurrent writers share commits: {w:?}"
    );
    // Queued together: the refused change (pending → succeeded) is rolled
    // back alone, the ones around it commit.
    let (e1, e2) = (
        store.create_execution(&a).unwrap(),
        store.create_execution(&a).unwrap(),
    );
    let before = store.advance_ack(&e1, Status::Configuring, None, None);
    let refused = store.advance_ack(&e2, Status::Succeeded, None, None);
    let after = store.advance_ack(&e2, Status::Configuring, None, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(before.done().await.unwrap(), Status::Configuring);
        let e = refused.done().await.unwrap_err();
        assert!(matches!(e, Error::Transition { .. }), "{e}");
        assert_eq!(after.done().await.unwrap(), Status::Configuring);
    });
    // Everything acknowledged is there after a restart.
    drop(store);
    let store = Store::open(&db).unwrap();
    for id in &ids {
        assert_eq!(store.execution(id).unwrap().status, Status::Failed);
    }
    assert_eq!(store.execution(&e1).unwrap().status, Status::Configuring);
    assert_eq!(store.execution(&e2).unwrap().status, Status::Configuring);
    store.check_integrity().unwrap();
}

#[test]
fn catalog_agreements_and_executions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = dir.path().join("insitu.db");
    let (ds, wf, agreement, exec) = {
        let store = Store::open(&db).unwrap();
        let ds = store
            .add_dataset("weather", &data, &[SUM.into()], 3600)
            .unwrap();
        let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
        let id = store.grant(ALICE, &ds, &wf, 60).unwrap();
        let a = store.agreement(&id).unwrap();
        assert_eq!(a.consumer, ALICE.to_ascii_lowercase());
        let exec = store.create_execution(&a).unwrap();
        store.set_status(&exec, Status::Configuring, None).unwrap();
        (ds, wf, id, exec)
    };
    // A second process (the CLI) opening it changes nothing.
    let other = Store::open(&db).unwrap();
    assert_eq!(other.execution(&exec).unwrap().status, Status::Configuring);
    // Reopened by the server as after a crash: the unfinished execution is failed, with a reason.
    let store = Store::open(&db).unwrap();
    assert_eq!(store.recover().unwrap(), 1);
    let e = store.execution(&exec).unwrap();
    assert_eq!(e.status, Status::Failed);
    assert_eq!(
        e.reason.as_deref(),
        Some("insitu stopped while the execution was configuring; marked failed when it restarted")
    );
    assert_eq!(store.executions_of(ALICE).unwrap().len(), 1);
    let d = store.dataset(&ds).unwrap();
    assert_eq!(
        (d.name.as_str(), d.allowed_images.as_slice()),
        ("weather", &[SUM.to_string()][..])
    );
    assert_eq!(d.path, std::fs::canonicalize(&data).unwrap());
    assert!(
        !store
            .ddo(&ds)
            .unwrap()
            .1
            .to_string()
            .contains(&data.display().to_string()),
        "local paths never appear in DDOs"
    );
    assert_eq!(store.workflow(&wf).unwrap().stages.len(), 1);
    assert_eq!(store.agreement(&agreement).unwrap().workflow, wf);
    store.check_integrity().unwrap();
}

#[test]
fn servers_cap_limits_and_read_ddo_sizes() {
    for (text, bytes) in [
        ("8gb", 8u64 << 30),
        ("512mb", 512 << 20),
        ("160GB", 160 << 30),
        ("1GiB", 1 << 30),
        ("4096", 4096),
        ("64 kb", 64 << 10),
    ] {
        assert_eq!(parse_ddo_size(text), Some(bytes), "{text}");
    }
    assert_eq!(parse_ddo_size("lots"), None);
    for bytes in [8u64 << 30, 512 << 20, 3 << 10, 1000] {
        assert_eq!(parse_ddo_size(&ddo_size(bytes)), Some(bytes));
    }
    let a = Server {
        memory: Some(64 << 20),
        disk: None,
        max_execution_time: Some(10),
    };
    let b = Server {
        memory: Some(128 << 20),
        disk: Some(1 << 20),
        max_execution_time: None,
    };
    let both = a.min(&b);
    assert_eq!(
        both,
        Server {
            memory: Some(64 << 20),
            disk: Some(1 << 20),
            max_execution_time: Some(10)
        }
    );
    let limits = both.cap(crate::sandbox::Limits::default());
    assert_eq!(
        (limits.memory, limits.output_quota, limits.timeout.as_secs()),
        (64 << 20, 1 << 20, 10)
    );
    // A server never raises a limit.
    let big = Server {
        memory: Some(1 << 40),
        ..Server::default()
    };
    assert_eq!(big.cap(crate::sandbox::Limits::default()).memory, 512 << 20);
    assert_eq!(Server::from_ddo(&a.to_ddo()), a);
}

/// Durable commits, commits whose WAL sync flushed the results, separate
/// syncfs calls: from `before` to `after`.
fn flushes(before: WriteStats, after: WriteStats) -> (u64, u64, u64) {
    (
        after.commits - before.commits,
        after.syncs_with_commit - before.syncs_with_commit,
        after.syncs - before.syncs,
    )
}

#[test]
fn publishing_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let ds = store.add_dataset("d", &data, &[SUM.into()], 60).unwrap();
    let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
    let a = store
        .agreement(&store.grant(ALICE, &ds, &wf, 60).unwrap())
        .unwrap();
    let id = store.create_execution(&a).unwrap();
    let key = crate::receipt::ProviderKey::from_hex(
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    )
    .unwrap();
    let receipt = crate::receipt::sign(&key, json!({"execution": id})).unwrap();
    let did = store.new_result_did().unwrap();
    // Not publishing yet: refused, and no result asset appears.
    let err = store
        .publish(&id, &did, &json!({"type": "result"}), &data, &receipt)
        .unwrap_err();
    assert!(matches!(err, Error::Transition { .. }), "{err}");
    assert!(matches!(store.ddo(&did), Err(Error::NotFound { .. })));
    let stages = json!([{"index": 0, "status": "succeeded"}]);
    store.advance(&id, Status::Configuring, None, None).unwrap();
    store.advance(&id, Status::Running, None, None).unwrap();
    store
        .advance(&id, Status::Publishing, None, Some(&stages))
        .unwrap();
    let before = store.write_stats();
    store
        .publish(&id, &did, &json!({"type": "result"}), &data, &receipt)
        .unwrap();
    // The results share the database's filesystem: the commit's own WAL
    // sync flushed them (a syncfs), no separate one.
    assert_eq!(flushes(before, store.write_stats()), (1, 1, 0));
    let e = store.execution(&id).unwrap();
    assert_eq!(e.status, Status::Succeeded);
    assert_eq!(e.stages, stages);
    assert_eq!(e.result.as_deref(), Some(did.as_str()));
    assert_eq!(e.receipt, Some(serde_json::to_value(&receipt).unwrap()));
    assert_eq!(store.ddo(&did).unwrap().0, AssetKind::Result);
    // Results on another filesystem (tmpfs) get a syncfs of their own
    // before the commit, whose WAL sync is then a plain fsync.
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) to put results on");
    let id = store.create_execution(&a).unwrap();
    for to in [Status::Configuring, Status::Running, Status::Publishing] {
        store.advance(&id, to, None, None).unwrap();
    }
    let did = store.new_result_did().unwrap();
    let before = store.write_stats();
    store
        .publish(&id, &did, &json!({"type": "result"}), shm.path(), &receipt)
        .unwrap();
    assert_eq!(flushes(before, store.write_stats()), (1, 0, 1));
}

#[test]
fn refusals_are_precise_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let ghost = Did::parse(&format!("did:nv:{}", "ab".repeat(32))).unwrap();
    assert_eq!(
        store
            .add_workflow(&workflow_on(&ghost))
            .unwrap_err()
            .to_string(),
        format!(
            "unknown DID `{ghost}`; register it first (insitu asset add / insitu workflow add)"
        )
    );
    assert_eq!(
        store
            .grant("0x123", &ghost, &ghost, 1)
            .unwrap_err()
            .to_string(),
        "invalid address `0x123`: expected 0x followed by 40 hex digits"
    );
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    let ds = store.add_dataset("d", &data, &[], 1).unwrap();
    assert_eq!(
        store.grant(ALICE, &ds, &ds, 1).unwrap_err().to_string(),
        format!("unknown workflow `{ds}`; the DID names an asset of another kind")
    );
    let wf = store.add_workflow(&workflow_on(&ds)).unwrap();
    let a = store
        .agreement(&store.grant(ALICE, &ds, &wf, 1).unwrap())
        .unwrap();
    let exec = store.create_execution(&a).unwrap();
    assert_eq!(
        store
            .set_status(&exec, Status::Succeeded, None)
            .unwrap_err()
            .to_string(),
        "execution status cannot go from `pending` to `succeeded`"
    );
    assert_eq!(store.execution(&exec).unwrap().status, Status::Pending);
    store
        .set_status(&exec, Status::Stopped, Some("stopped by the consumer"))
        .unwrap();
    assert!(store.set_status(&exec, Status::Running, None).is_err());
    assert_eq!(
        store.execution(&exec).unwrap().reason.as_deref(),
        Some("stopped by the consumer")
    );
    assert!(matches!(
        store.execution("nv-nope"),
        Err(Error::NotFound { .. })
    ));
    assert!(
        store
            .add_dataset("x", &dir.path().join("missing"), &[], 1)
            .is_err()
    );
    assert!(
        store
            .add_dataset("x", &data, &["sha256:bad".into()], 1)
            .is_err()
    );
}

#[test]
fn the_catalog_is_searched_ranked_and_results_stay_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let add = |name: &str, description: &str, tags: &[&str]| {
        store
            .register_dataset(&DatasetSpec {
                name,
                path: &data,
                allowed_images: &[],
                timeout_secs: 60,
                server: Server::default(),
                price: None,
                price_token: None,
                access: false,
                did: None,
                deterministic: false,
                about: About {
                    description: Some(description.into()),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    author: Some("Met Office".into()),
                },
            })
            .unwrap()
    };
    let weather = add("weather", "hourly readings", &["climate", "hourly"]);
    let stations = add(
        "weather stations",
        "where the weather is measured",
        &["climate"],
    );
    let _rain = add("rainfall", "daily weather totals", &["climate", "daily"]);
    let _other = add("traffic", "cars per hour", &["roads"]);
    let search = |text: &str| Search {
        text: text.into(),
        page_size: 10,
        page: 1,
        ..Search::default()
    };
    let names = |r: &(Vec<Value>, u64)| -> Vec<String> {
        r.0.iter()
            .map(|d| {
                d["service"][0]["attributes"]["main"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    // The exact name first, then by relevance; prefix matches count.
    let r = store.search(&search("weather")).unwrap();
    assert_eq!(r.1, 3);
    assert_eq!(names(&r)[0], "weather");
    assert_eq!(r.0[0]["id"], json!(weather));
    assert_eq!(
        names(&store.search(&search("stat")).unwrap()),
        ["weather stations"]
    );
    assert_eq!(
        store.search(&search("office")).unwrap().1,
        4,
        "author is searched"
    );
    // Tags and type filter; hostile query syntax is just words.
    let mut q = search("weather");
    q.tags = vec!["daily".into()];
    assert_eq!(names(&store.search(&q).unwrap()), ["rainfall"]);
    q.kind = Some("workflow".into());
    assert_eq!(store.search(&q).unwrap().1, 0);
    for hostile in ["\"", "weather\" OR *", "NEAR(", "a AND", ")(", "-", "''"] {
        store.search(&search(hostile)).unwrap();
    }
    assert_eq!(store.search(&search("!!!")).unwrap().1, 0);
    // Pages.
    let mut q = search("");
    q.page_size = 3;
    let first = store.search(&q).unwrap();
    assert_eq!((first.0.len(), first.1), (3, 4));
    q.page = 2;
    assert_eq!(store.search(&q).unwrap().0.len(), 1);
    q.page = 9;
    assert_eq!(store.search(&q).unwrap(), (Vec::new(), 4));
    // A result is found by its owner only; paths never appear.
    let wf = store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "r/a", "tag": "1", "checksum": format!("sha256:{}", "ab".repeat(32))}},
             "input": [{"index": 0, "id": stations}]}]}}}))
        .unwrap();
    let owner = "0x5b38da6a701c568545dcfcb03fcb875f56beddc4";
    let a = store
        .agreement(&store.grant(owner, &stations, &wf, 60).unwrap())
        .unwrap();
    let id = store.create_execution(&a).unwrap();
    for to in [Status::Configuring, Status::Running, Status::Publishing] {
        store.set_status(&id, to, None).unwrap();
    }
    let result = store.new_result_did().unwrap();
    let receipt = crate::receipt::sign(&crate::receipt::ProviderKey::random(), json!({})).unwrap();
    store
        .publish(
            &id,
            &result,
            &json!({"type": "result", "name": "weather result", "owner": owner}),
            &data,
            &receipt,
        )
        .unwrap();
    let mut q = search("weather result");
    assert_eq!(store.search(&q).unwrap().1, 0, "strangers do not find it");
    q.viewer = Some(owner.to_uppercase().replace("0X", "0x"));
    let r = store.search(&q).unwrap();
    assert_eq!(names(&r), ["weather result"]);
    let all = serde_json::to_string(&store.search(&search("")).unwrap().0).unwrap();
    assert!(!all.contains(data.to_str().unwrap()), "a local path leaked");
    // An asset another process registers (the CLI while a server runs)
    // is found by the next search.
    let other = Store::open(store.path()).unwrap();
    other
        .add_algorithm(
            "barometer reader",
            &format!("r/b@sha256:{}", "cd".repeat(32)),
        )
        .unwrap();
    assert_eq!(
        names(&store.search(&search("barometer")).unwrap()),
        ["barometer reader"]
    );
}

#[test]
fn a_stage_naming_an_algorithm_must_run_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let (a, b) = (
        format!("sha256:{}", "aa".repeat(32)),
        format!("sha256:{}", "bb".repeat(32)),
    );
    let ds = store
        .add_dataset("d", &data, std::slice::from_ref(&a), 60)
        .unwrap();
    let algo = store
        .add_algorithm("word count", &format!("r.example/wc:1@{a}"))
        .unwrap();
    assert_eq!(store.algorithm_checksum(&algo).unwrap(), a);
    let (_, ddo) = store.ddo(&algo).unwrap();
    assert_eq!(
        ddo["service"][0]["attributes"]["main"]["algorithm"]["container"],
        json!({"image": "r.example/wc", "tag": "1", "checksum": a})
    );
    let workflow = |checksum: &str, id: &Did| {
        json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "r.example/wc", "tag": "1", "checksum": checksum}},
             "input": [{"index": 0, "id": ds}], "transformation": {"id": id}}]}}})
    };
    store.add_workflow(&workflow(&a, &algo)).unwrap();
    let p = "$.main.workflow.stages[0].transformation.id";
    assert_eq!(
        store
            .add_workflow(&workflow(&b, &algo))
            .unwrap_err()
            .to_string(),
        format!(
            "workflow {p}: algorithm {algo} is the image {a}, but the stage runs {b}; use the algorithm's checksum or another algorithm"
        )
    );
    assert_eq!(
        store
            .add_workflow(&workflow(&a, &ds))
            .unwrap_err()
            .to_string(),
        format!(
            "workflow {p}: {ds} is not an algorithm asset of this provider (insitu algorithm add registers one)"
        )
    );
    assert!(
        store.add_algorithm("x", "r.example/wc:1").is_err(),
        "a tag alone is refused"
    );
}

#[test]
fn execution_ids_and_result_dids_are_unique_and_ordered_by_creation_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store, a) = store_with_agreement(dir.path());
    let first = store.create_execution(&a).unwrap();
    let first_did = store.new_result_did().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let ids: Vec<String> = (0..50)
        .map(|_| store.create_execution(&a).unwrap())
        .collect();
    let did = store.new_result_did().unwrap();
    for id in &ids {
        let hex = id.strip_prefix(EXECUTION_PREFIX).unwrap();
        assert!(
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
        // Created later: sorts after (the millisecond prefix), unlike 50
        // random ids, of which about half would sort before.
        assert!(*id > first, "{id} sorts before {first}");
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    assert!(did.as_str() > first_did.as_str(), "{did} ≤ {first_did}");
    assert_eq!(did.as_str().len(), "did:nv:".len() + 64);
    // The prefix is the creation time in milliseconds.
    let ms = u64::from_str_radix(&first[EXECUTION_PREFIX.len()..][..12], 16).unwrap();
    let now = now_ms();
    assert!(ms <= now && now - ms < 60_000, "{ms} vs now {now}");
}
