//! The examples, the guest contract (arguments, environment, mounts), modules
//! and components, the compiled-module cache, and host-side errors.

use super::{Dirs, run, sandbox};
use insitu_runtime::sandbox::{CacheHit, Sandbox, SandboxConfig, StopHandle};
use insitu_runtime::{Outcome, Status};
use insitu_tests::{HOSTILE_P1, HOSTILE_P2, WORD_COUNT_P2};
use serde_json::Value;

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn word_count_counts_words() {
    let d = Dirs::new();
    let r = run(
        insitu_examples::WORD_COUNT.wasm,
        &d.spec("word-count", &["--top", "2"]),
    )
    .await;
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Succeeded, Outcome::Exited, Some(0)),
        "{r:?}"
    );
    let counts = json(&d.output.join("counts.json"));
    assert_eq!(counts["files"], 2);
    assert_eq!(counts["words"], 5);
    assert_eq!(counts["counts"]["hello"], 2);
    assert_eq!(counts["counts"]["world"], 2);
    assert_eq!(
        counts["top"],
        serde_json::json!([["hello", 2], ["world", 2]])
    );
    assert_eq!(
        r.output_bytes,
        std::fs::metadata(d.output.join("counts.json"))
            .unwrap()
            .len()
    );
    assert!(
        d.stderr().contains("2 files, 5 words, 3 distinct"),
        "{}",
        d.stderr()
    );
    assert!(r.module_digest.starts_with("sha256:") && r.module_digest.len() == 71);
}

#[tokio::test]
async fn csv_stats_computes_column_statistics() {
    let d = Dirs::new();
    std::fs::remove_dir_all(&d.input).unwrap();
    std::fs::create_dir_all(&d.input).unwrap();
    std::fs::write(
        d.input.join("a.csv"),
        "x,name,y\n1,\"a, b\",10\n2,c,\n3,d,30\n",
    )
    .unwrap();
    std::fs::write(d.input.join("b.csv"), "y,x\n20,4\n").unwrap();
    let r = run(insitu_examples::CSV_STATS.wasm, &d.spec("csv-stats", &[])).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?} {}", d.stderr());
    let s = json(&d.output.join("stats.json"));
    assert_eq!(s["rows"], 4);
    let x = &s["columns"]["x"];
    assert_eq!(
        (
            x["count"].as_u64(),
            x["mean"].as_f64(),
            x["min"].as_f64(),
            x["max"].as_f64()
        ),
        (Some(4), Some(2.5), Some(1.0), Some(4.0))
    );
    assert!((x["stddev"].as_f64().unwrap() - 1.290_994_448_7).abs() < 1e-9);
    assert_eq!(s["columns"]["y"]["count"], 3);
    assert_eq!(s["columns"]["y"]["mean"], 20.0);
    assert_eq!(s["columns"]["name"]["non_numeric"], 3);
}

#[tokio::test]
async fn linreg_train_recovers_the_weights() {
    let d = Dirs::new();
    insitu_examples::write_regression(&d.input.join("train.csv"), 2_000, 3, false).unwrap();
    std::fs::remove_file(d.input.join("data.txt")).unwrap();
    std::fs::remove_dir_all(d.input.join("sub")).unwrap();
    let r = run(
        insitu_examples::LINREG_TRAIN.wasm,
        &d.spec("linreg-train", &["--epochs", "300"]),
    )
    .await;
    assert_eq!(r.status, Status::Succeeded, "{r:?} {}", d.stderr());
    let model = json(&d.output.join("model.json"));
    let w: Vec<f64> = model["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (i, w) in w.iter().enumerate() {
        assert!((w - 0.5 * (i + 1) as f64).abs() < 0.05, "weight {i} = {w}");
    }
    assert!(
        (model["bias"].as_f64().unwrap() - 3.0).abs() < 0.05,
        "{model}"
    );
    assert!(json(&d.output.join("metrics.json"))["r2"].as_f64().unwrap() > 0.99);
}

#[tokio::test]
async fn logistic_regression_classifies() {
    let d = Dirs::new();
    std::fs::remove_dir_all(&d.input).unwrap();
    insitu_examples::write_regression(&d.input.join("train.csv"), 2_000, 2, true).unwrap();
    let r = run(
        insitu_examples::LINREG_TRAIN.wasm,
        &d.spec("linreg-train", &["--model", "logistic"]),
    )
    .await;
    assert_eq!(r.status, Status::Succeeded, "{r:?} {}", d.stderr());
    assert!(
        json(&d.output.join("metrics.json"))["accuracy"]
            .as_f64()
            .unwrap()
            > 0.95
    );
}

#[tokio::test]
async fn guest_failure_is_an_outcome_with_its_message() {
    let d = Dirs::new();
    let r = run(
        insitu_examples::LINREG_TRAIN.wasm,
        &d.spec("linreg-train", &["--model", "forest"]),
    )
    .await;
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Failed, Outcome::Exited, Some(1))
    );
    assert_eq!(r.error.as_deref(), Some("the guest exited with code 1"));
    assert!(
        d.stderr()
            .contains("error: --model must be linear or logistic, not `forest`"),
        "{}",
        d.stderr()
    );
    let r = run(HOSTILE_P1, &Dirs::new().spec("hostile", &["exit", "42"])).await;
    assert_eq!((r.outcome, r.exit_code), (Outcome::Exited, Some(42)));
}

#[tokio::test]
async fn argv_follows_the_contract_and_env_is_empty() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["args", "extra"]);
    spec.inputs.push(d.input.clone());
    assert_eq!(
        spec.argv(),
        [
            "hostile",
            "--input1=/data/inputs/1",
            "--input2=/data/inputs/2",
            "--output=/data/outputs",
            "--logs=/data/logs",
            "args",
            "extra"
        ]
    );
    let r = run(HOSTILE_P1, &spec).await;
    assert_eq!(r.status, Status::Succeeded);
    let total: usize = spec.argv().iter().map(|a| a.len()).sum();
    assert_eq!(d.stdout(), format!("7 {total}\n"));

    let d = Dirs::new();
    let r = run(HOSTILE_P1, &d.spec("hostile", &["env"])).await;
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(d.stdout(), "0\n", "no environment unless declared");
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["env"]);
    spec.env.push(("MODE".into(), "fast".into()));
    run(HOSTILE_P1, &spec).await;
    assert_eq!(d.stdout(), "1\n");
}

#[tokio::test]
async fn components_run_under_the_same_contract() {
    let d = Dirs::new();
    let r = run(WORD_COUNT_P2, &d.spec("word-count", &[])).await;
    assert_eq!(
        (r.status, r.outcome),
        (Status::Succeeded, Outcome::Exited),
        "{r:?} {}",
        d.stderr()
    );
    assert_eq!(json(&d.output.join("counts.json"))["words"], 5);

    let d = Dirs::new();
    let r = run(HOSTILE_P2, &d.spec("hostile", &["modify-input"])).await;
    assert_eq!(r.status, Status::Succeeded, "{}", d.stdout());
}

/// Every standard component imports `wasi:sockets`; it runs, and every way
/// out (name lookup, TCP connect on v4 and v6, listening, UDP) is denied
/// while the test listens on the ports it aims at.
#[tokio::test]
async fn components_importing_sockets_run_but_every_network_call_is_denied() {
    use std::io::ErrorKind::WouldBlock;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    udp.set_nonblocking(true).unwrap();
    let ports = [
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    ];
    let ports = ports.map(|p| p.to_string());
    let d = Dirs::new();
    let r = run(
        insitu_tests::NET_PROBE_P2,
        &d.spec("net-probe", &[&ports[0], &ports[1]]),
    )
    .await;
    assert_eq!(r.status, Status::Succeeded, "{r:?} {}", d.stderr());
    let out = d.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for what in [
        "name lookup",
        "tcp connect",
        "tcp connect v6",
        "tcp listen",
        "udp send",
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("denied {what}:")));
        assert!(line.is_some(), "{what} was not denied: {out}");
    }
    assert!(!out.contains("ALLOWED"), "{out}");
    assert_eq!(tcp.accept().map(|_| ()).unwrap_err().kind(), WouldBlock);
    let mut buf = [0; 16];
    assert_eq!(
        udp.recv_from(&mut buf).map(|_| ()).unwrap_err().kind(),
        WouldBlock
    );
}

#[tokio::test]
async fn precompiled_native_code_is_rejected() {
    let wat = r#"(module (func (export "_start")))"#;
    let native = sandbox()
        .engine()
        .precompile_module(&wat::parse_str(wat).unwrap())
        .unwrap();
    let e = sandbox().prepare(&native).unwrap_err().to_string();
    assert!(
        e.contains("a precompiled native artifact (ELF), not WebAssembly"),
        "{e}"
    );
}

#[tokio::test]
async fn modules_without_start_and_with_unknown_imports_are_rejected() {
    let lib = wat::parse_str(r#"(module (func (export "f")))"#).unwrap();
    let e = sandbox().prepare(&lib).unwrap_err().to_string();
    assert!(
        e.contains("it has no `_start` export; build a command"),
        "{e}"
    );
    let bad = wat::parse_str(r#"(module (import "wasi_snapshot_preview1" "no_such_call" (func)) (func (export "_start")))"#).unwrap();
    let e = sandbox().prepare(&bad).unwrap_err().to_string();
    assert!(e.contains("it cannot be linked"), "{e}");
}

#[tokio::test]
async fn compiled_modules_are_cached_in_memory_and_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        cache_dir: Some(cache.path().into()),
        concurrency: 0,
        ..SandboxConfig::default()
    };
    let wasm = insitu_examples::WORD_COUNT.wasm;
    let first = Sandbox::new(config.clone()).unwrap();
    assert_eq!(first.prepare(wasm).unwrap().source, CacheHit::Compiled);
    assert_eq!(first.prepare(wasm).unwrap().source, CacheHit::Memory);
    drop(first);
    let second = Sandbox::new(config.clone()).unwrap();
    let m = second.prepare(wasm).unwrap();
    assert_eq!(m.source, CacheHit::Disk);
    let d = Dirs::new();
    let r = second
        .run(&m, &d.spec("word-count", &[]), &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::Succeeded);

    // A corrupted artifact is ignored and replaced, never trusted.
    let artifact = walk_files(cache.path()).pop().unwrap();
    std::fs::write(&artifact, b"garbage").unwrap();
    let third = Sandbox::new(config).unwrap();
    assert_eq!(third.prepare(wasm).unwrap().source, CacheHit::Compiled);
    assert_ne!(std::fs::read(&artifact).unwrap(), b"garbage");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[tokio::test]
async fn bad_job_specs_are_clear_errors_and_touch_nothing() {
    let d = Dirs::new();
    std::fs::write(d.output.join("old.txt"), "previous results").unwrap();
    let module = sandbox().prepare(HOSTILE_P1).unwrap();
    let e = sandbox()
        .run(
            &module,
            &d.spec("hostile", &["write-ok"]),
            &StopHandle::default(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("the output directory") && e.to_string().contains("is not empty"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(d.output.join("old.txt")).unwrap(),
        "previous results"
    );
    assert!(!d.logs.join("stdout.log").exists());

    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["write-ok"]);
    spec.inputs.push(d.tmp.path().join("secret.txt"));
    let e = sandbox()
        .run(&module, &spec, &StopHandle::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input 2") && e.contains("is not a directory"),
        "{e}"
    );

    let mut spec = d.spec("hostile", &["write-ok"]);
    spec.limits.memory = 8 << 30;
    let e = sandbox()
        .run(&module, &spec, &StopHandle::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "memory of 8GiB is above the provider's maximum of 4GiB; ask for at most 4GiB"
    );

    let mut spec = d.spec("hostile", &["args"]);
    spec.args.extend((0..20_000).map(|i| format!("{i:0>60}")));
    let e = sandbox()
        .run(&module, &spec, &StopHandle::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the 1MiB a guest may receive"), "{e}");
}

#[tokio::test]
async fn large_argument_lists_within_the_limit_reach_the_guest() {
    let d = Dirs::new();
    let mut spec = d.spec("hostile", &["args"]);
    spec.args.extend((0..10_000).map(|i| format!("{i:0>80}")));
    let r = run(HOSTILE_P1, &spec).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert!(
        d.stdout().starts_with("10005 "),
        "name + input + output + logs + case + 10000: {}",
        d.stdout()
    );
}

#[tokio::test]
async fn stop_ends_a_running_guest() {
    let d = Dirs::new();
    let module = sandbox().prepare(HOSTILE_P1).unwrap();
    let stop = StopHandle::default();
    let s = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        s.stop();
    });
    let r = sandbox()
        .run(&module, &d.spec("hostile", &["loop"]), &stop)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.outcome, r.exit_code),
        (Status::Stopped, Outcome::Stopped, None)
    );

    // Also while the guest sleeps in a host call.
    let d = Dirs::new();
    let stop = StopHandle::default();
    let s = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        s.stop();
    });
    let r = sandbox()
        .run(&module, &d.spec("hostile", &["sleep"]), &stop)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Stopped);
    assert!(r.duration_ms < 5_000);
}

/// A component of 12 core instances (componentize-py's have more than 8):
/// as many of them as the sandbox's concurrency run at once; the pool does
/// not run out of instance slots (it had 8 per job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_holds_concurrent_components_of_many_core_instances() {
    let mut wat = String::from(
        "(component (core module $m (func (export \"run\") (result i32) (loop br 0) i32.const 0))",
    );
    for i in 0..12 {
        wat.push_str(&format!(" (core instance $i{i} (instantiate $m))"));
    }
    wat.push_str(
        " (func $run (result (result)) (canon lift (core func $i0 \"run\")))
          (instance $r (export \"run\" (func $run)))
          (export \"wasi:cli/run@0.2.0\" (instance $r)))",
    );
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 2,
        ..SandboxConfig::default()
    })
    .unwrap();
    let module = sandbox.prepare(&wat::parse_str(&wat).unwrap()).unwrap();
    let dirs = [Dirs::new(), Dirs::new()];
    let specs: Vec<_> = dirs
        .iter()
        .map(|d| {
            let mut spec = d.spec("spin", &[]);
            spec.limits.timeout = std::time::Duration::from_millis(300);
            spec
        })
        .collect();
    // Two threads, each its own runtime: both guests are instantiated and
    // spinning at the same time.
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                let (sandbox, module) = (&sandbox, &module);
                s.spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(sandbox.run(module, spec, &StopHandle::default()))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in reports {
        assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    }
}
