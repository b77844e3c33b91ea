//! What HTTP cannot reach of an execution's life: an admission dropped while
//! its creation commits, a full queue, stops in every status, shutdown with
//! queued and running work, a failed preparation. Real guests (WAT) run in
//! the real sandbox from an OCI layout on disk.

use super::*;
use crate::datadir::DataDir;
use crate::image::{BlobStore, Puller, package};
use crate::job::Limits;
use crate::permissions::LocalAgreements;
use crate::pipeline::ImageResolver;
use crate::receipt::ProviderKey;
use crate::sandbox::{Sandbox, SandboxConfig};
use serde_json::json;
use std::future::Future;

const CONSUMER: &str = "0x5b38da6a701c568545dcfcb03fcb875f56beddc4";

/// Returns at once: succeeds with no results.
const QUICK: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// Computes until stopped.
const SPIN: &str =
    r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;

struct World {
    tmp: tempfile::TempDir,
    store: Arc<Store>,
    executions: Executions,
    /// Agreement ids: one for [`QUICK`], one for [`SPIN`].
    quick: String,
    spin: String,
}

fn world(capacity: Capacity) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path().join("insitu.db")).unwrap());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "one\n").unwrap();
    let mut digests = Vec::new();
    for (tag, wat) in [("quick", QUICK), ("spin", SPIN)] {
        let artifact = package::wasm_artifact(&wat::parse_str(wat).unwrap()).unwrap();
        package::write_layout(&tmp.path().join("layout"), tag, &artifact).unwrap();
        digests.push((tag, artifact.manifest_digest));
    }
    let allowed: Vec<String> = digests.iter().map(|(_, d)| d.clone()).collect();
    let ds = store.add_dataset("texts", &data, &allowed, 60).unwrap();
    let mut agreements = digests.iter().map(|(tag, digest)| {
        let wf = store
            .add_workflow(&json!({"main": {"type": "workflow", "name": tag, "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": format!("local/{tag}"), "tag": "", "checksum": digest}},
                 "input": [{"index": 0, "id": ds}]}]}}}))
            .unwrap();
        store.grant(CONSUMER, &ds, &wf, 60).unwrap()
    });
    let (quick, spin) = (agreements.next().unwrap(), agreements.next().unwrap());
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            concurrency: 4,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let pipeline = Arc::new(Pipeline {
        backends: Pipeline::local(&sandbox),
        sandbox,
        store: store.clone(),
        puller: Puller::new(BlobStore::open(tmp.path().join("blobs")).unwrap()),
        images: ImageResolver {
            layouts: vec![tmp.path().join("layout")],
            ..ImageResolver::default()
        },
        dir: DataDir::new(tmp.path()),
        limits: Limits::default(),
        key: ProviderKey::load_or_create(&tmp.path().join("provider.key")).unwrap(),
        caches: Default::default(),
    });
    let permissions = Arc::new(LocalAgreements {
        store: store.clone(),
    });
    let executions = Executions::start(pipeline, permissions, capacity, None).unwrap();
    World {
        tmp,
        store,
        executions,
        quick,
        spin,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl World {
    /// Admits an execution under `agreement`'s workflow.
    async fn admit(&self, agreement: &str) -> Result<String, Error> {
        let workflow = self
            .store
            .agreement(agreement)
            .unwrap()
            .workflow
            .to_string();
        self.executions
            .admit(CONSUMER, agreement, &workflow, now(), |_, _| Ok(()))
            .await
    }

    /// Waits (up to 20 s) until execution `id` is `status`.
    async fn until(&self, id: &str, status: Status) -> Execution {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = self.store.execution(id).unwrap();
            if e.status == status || Instant::now() > deadline {
                assert_eq!(e.status, status, "{e:?}");
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (up to 20 s) until nothing is queued or running.
    async fn idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.executions.active() > 0 {
            assert!(Instant::now() < deadline, "still active");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const ONE: Capacity = Capacity {
    workers: 1,
    queue: 1,
};

#[tokio::test]
async fn an_admitted_execution_runs_ends_and_is_measured() {
    let w = world(ONE);
    let id = w.admit(&w.quick).await.unwrap();
    let e = w
        .executions
        .wait(&id, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(e.status, Status::Succeeded, "{e:?}");
    assert!(e.result.is_some());
    w.idle().await;
    assert_eq!(w.executions.stage_seconds().count(), 1);
    assert_eq!(w.executions.depth(), 0);
    // Waiting for an ended one answers at once; an unknown one is an error.
    let again = w.executions.wait(&id, Instant::now()).await.unwrap();
    assert_eq!(again.status, Status::Succeeded);
    assert!(matches!(
        w.executions.wait("nope", Instant::now()).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_full_queue_is_busy_and_stops_work_in_every_status() {
    let w = world(ONE);
    let running = w.admit(&w.spin).await.unwrap();
    w.until(&running, Status::Running).await;
    let queued = w.admit(&w.spin).await.unwrap();
    assert_eq!(w.executions.depth(), 1);
    assert_eq!(w.executions.active(), 2);
    // The queue holds one: a third is refused and nothing is created.
    let before = w.store.executions_of(CONSUMER).unwrap().len();
    assert!(matches!(w.admit(&w.spin).await, Err(Error::Busy)));
    assert_eq!(w.store.executions_of(CONSUMER).unwrap().len(), before);

    assert_eq!(w.executions.stop(&queued).unwrap(), Stopped::BeforeStart);
    let e = w.store.execution(&queued).unwrap();
    assert_eq!(e.status, Status::Stopped);
    assert_eq!(
        e.reason.as_deref(),
        Some("stopped on request before it started")
    );
    assert_eq!(w.executions.stop(&running).unwrap(), Stopped::Stopping);
    w.until(&running, Status::Stopped).await;
    assert_eq!(
        w.executions.stop(&running).unwrap(),
        Stopped::Ended(Status::Stopped)
    );
    assert!(matches!(
        w.executions.stop("nope"),
        Err(Error::NotFound { .. })
    ));
    w.idle().await;
    // The stopped queued one never ran: a worker skipped it.
    assert_eq!(w.store.execution(&queued).unwrap().status, Status::Stopped);
    assert!(
        !w.tmp
            .path()
            .join("executions")
            .join(&queued)
            .join("0")
            .exists()
    );
}

#[tokio::test]
async fn shutdown_fails_queued_work_and_stops_running_work() {
    let w = world(Capacity {
        workers: 1,
        queue: 2,
    });
    let running = w.admit(&w.spin).await.unwrap();
    w.until(&running, Status::Running).await;
    let queued = w.admit(&w.quick).await.unwrap();
    let stopped = w.executions.shutdown(Duration::from_millis(200)).await;
    assert_eq!(stopped, 1, "the running one had to be stopped");
    assert_eq!(w.executions.active(), 0);
    assert_eq!(w.store.execution(&running).unwrap().status, Status::Stopped);
    let e = w.store.execution(&queued).unwrap();
    assert_eq!(e.status, Status::Failed);
    assert!(e.reason.unwrap().contains("shut down"));
    assert!(matches!(w.admit(&w.quick).await, Err(Error::ShuttingDown)));
}

#[tokio::test]
async fn an_idle_shutdown_stops_nothing() {
    let w = world(ONE);
    let id = w.admit(&w.quick).await.unwrap();
    w.until(&id, Status::Succeeded).await;
    w.idle().await;
    assert_eq!(w.executions.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn an_admission_dropped_while_its_creation_commits_still_runs_it_to_its_end() {
    let w = world(ONE);
    // Another connection holds the database's write lock, so the creation's
    // commit waits (busy timeout) while the admission is dropped.
    let blocker = rusqlite::Connection::open(w.tmp.path().join("insitu.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let workflow = w.store.agreement(&w.quick).unwrap().workflow.to_string();
    let admit = w
        .executions
        .admit(CONSUMER, &w.quick, &workflow, now(), |_, _| {
            Ok::<_, Error>(())
        });
    let mut admit = Box::pin(admit);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    // Polled until it waits for the commit, then dropped.
    let mut polls = 0;
    while polls < 50 {
        assert!(admit.as_mut().poll(&mut cx).is_pending());
        polls += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    // Queued (and started) while its creation waits; nothing committed yet.
    assert_eq!(w.executions.active(), 1);
    assert!(w.store.executions_of(CONSUMER).unwrap().is_empty());
    drop(admit);
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    w.idle().await;
    let all = w.store.executions_of(CONSUMER).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].status, Status::Succeeded, "{all:?}");
    assert!(all[0].result.is_some());
    assert_eq!(w.executions.depth(), 0);
}

#[tokio::test]
async fn a_creation_that_fails_leaves_no_execution_and_no_directory() {
    let w = world(ONE);
    // The creation's commit gives up after the 5 s busy timeout, while the
    // run it started has already made its directories.
    let blocker = rusqlite::Connection::open(w.tmp.path().join("insitu.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let dirs = DataDir::new(w.tmp.path()).executions();
    let entries = || -> Vec<_> {
        std::fs::read_dir(&dirs).map_or(vec![], |d| d.flatten().map(|e| e.path()).collect())
    };
    let admit = w.admit(&w.quick);
    tokio::pin!(admit);
    let during = tokio::select! {
        _ = &mut admit => panic!("answered while the database was locked"),
        () = tokio::time::sleep(Duration::from_millis(500)) => entries(),
    };
    assert_eq!(during.len(), 1, "the run started while its creation waited");
    let err = admit.await.unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    drop(blocker);
    w.idle().await;
    assert!(w.store.executions_of(CONSUMER).unwrap().is_empty());
    assert!(entries().is_empty(), "{:?}", entries());
}

#[tokio::test]
async fn working_directories_of_executions_never_created_are_swept() {
    let w = world(ONE);
    let id = w.admit(&w.quick).await.unwrap();
    w.until(&id, Status::Succeeded).await;
    w.idle().await;
    // A crash between a run's first directory and its creation's commit.
    let dir = DataDir::new(w.tmp.path());
    let stray = dir.outputs("nv-0123456789abcdef0123456789abcdef", 0);
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("partial.json"), "{").unwrap();
    std::fs::create_dir_all(dir.executions().join("other")).unwrap();
    assert_eq!(crate::pipeline::sweep_uncreated(&dir, &w.store).unwrap(), 1);
    assert!(
        dir.executions().join("other").is_dir(),
        "not an execution's"
    );
    assert!(
        !dir.execution("nv-0123456789abcdef0123456789abcdef")
            .exists()
    );
    // A created execution keeps everything.
    assert!(dir.logs(&id, 0).join("stderr.log").is_file());
    assert_eq!(crate::pipeline::sweep_uncreated(&dir, &w.store).unwrap(), 0);
}

#[tokio::test]
async fn a_failed_preparation_fails_the_execution_with_its_reason() {
    let w = world(ONE);
    let workflow = w.store.agreement(&w.quick).unwrap().workflow.to_string();
    let err = w
        .executions
        .admit(CONSUMER, &w.quick, &workflow, now(), |_, _| {
            Err(Error::Unavailable("no model".into()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
    let all = w.store.executions_of(CONSUMER).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, Status::Failed);
    assert_eq!(
        all[0].reason.as_deref(),
        Some("could not be prepared: unavailable: no model")
    );
    assert_eq!(w.executions.active(), 0);
    assert_eq!(w.executions.depth(), 0, "its queue place was given back");
    // The queue place is free again.
    let id = w.admit(&w.quick).await.unwrap();
    w.until(&id, Status::Succeeded).await;
}

#[tokio::test]
async fn an_agreement_of_another_consumer_creates_nothing() {
    let w = world(ONE);
    let workflow = w.store.agreement(&w.quick).unwrap().workflow.to_string();
    let other = "0x0000000000000000000000000000000000000001";
    let err = w
        .executions
        .admit(other, &w.quick, &workflow, now(), |_, _| Ok::<_, Error>(()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    assert!(w.store.executions_of(other).unwrap().is_empty());
    assert!(w.store.executions_of(CONSUMER).unwrap().is_empty());
}
