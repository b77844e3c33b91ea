//! `insitu-bench lang`: Python components (#27). The Python `csv-stats`
//! example (componentize-py, 19 MB) on a 1,000-row CSV:
//! - a warm job in the provider's sandbox (compiled code in memory, pooling
//!   allocator, copy-on-write memory images) vs the wasmtime CLI running the
//!   same component precompiled (`wasmtime compile`, then `wasmtime run
//!   --allow-precompiled`), alternated in one run; `insitu run` (one process
//!   per job, disk cache) beside them;
//! - the first execution after registering the workflow (the gateway warms
//!   the image when it is registered) vs the next ones, over HTTP;
//! - 32 jobs at once in one sandbox: wall time and the process's resident
//!   memory (peak RSS above the baseline, vs 32 × one job's linear memory).
//!
//! Needs componentize-py (`scripts/setup`) and the wasmtime CLI (`WASMTIME`
//! or on the PATH: `cargo install wasmtime-cli --version 48.0.8 --locked`).

use crate::{ms, percentile, rss_kib, target_dir};
use anyhow::{Context, bail};
use insitu_gateway::client::Consumer;
use insitu_gateway::config::ServeConfig;
use insitu_gateway::http::Local;
use insitu_runtime::image::package;
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::sandbox::{JobSpec, Sandbox, SandboxConfig, StopHandle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 30;
/// How long the server idles before the first execution after registration
/// (and before the same workflow's idle run it is compared with).
const IDLE: Duration = Duration::from_secs(1);

pub fn lang() -> anyhow::Result<()> {
    println!("## Python components: csv-stats (componentize-py) on 1,000 rows");
    let tmp = tempfile::tempdir()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm_path = tmp.path().join("csv-stats.wasm");
    let built = insitu_author::build(&root.join("examples/python/csv-stats"), Some(&wasm_path))?;
    let wasm = std::fs::read(&wasm_path)?;
    println!(
        "component: {:.1} MB, built in {:.1} s",
        wasm.len() as f64 / 1e6,
        built.elapsed.as_secs_f64()
    );
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input)?;
    let mut csv = String::from("id,region,units,price\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i},r{},{},{}.5\n", i % 7, i % 13, i % 101));
    }
    std::fs::write(input.join("sales.csv"), csv)?;
    let mut fresh = crate::fresh_dirs(tmp.path());

    // The anchor: the wasmtime CLI, precompiled.
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    let version = Command::new(&wasmtime).arg("--version").output().with_context(|| {
        format!("cannot run `{wasmtime}`; install it (cargo install wasmtime-cli --version 48.0.8 --locked) or set WASMTIME")
    })?;
    let cwasm = wasm_path.with_extension("cwasm");
    let t = Instant::now();
    let st = Command::new(&wasmtime)
        .arg("compile")
        .arg(&wasm_path)
        .arg("-o")
        .arg(&cwasm)
        .status()?;
    anyhow::ensure!(st.success(), "wasmtime compile failed");
    println!(
        "{}: compile {:.2} s",
        String::from_utf8_lossy(&version.stdout).trim(),
        t.elapsed().as_secs_f64()
    );
    let run_wasmtime = |o: &Path, l: &Path| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let st = Command::new(&wasmtime)
            .args(["run", "--allow-precompiled"])
            .arg(format!("--dir={}::/data/inputs/1", input.display()))
            .arg(format!("--dir={}::/data/outputs", o.display()))
            .arg(format!("--dir={}::/data/logs", l.display()))
            .arg("--argv0=csv-stats")
            .arg(&cwasm)
            .args([
                "--input1=/data/inputs/1",
                "--output=/data/outputs",
                "--logs=/data/logs",
            ])
            .stdout(std::fs::File::create(l.join("stdout.log"))?)
            .stderr(std::fs::File::create(l.join("stderr.log"))?)
            .status()?;
        anyhow::ensure!(st.success(), "wasmtime run failed");
        anyhow::ensure!(
            o.join("stats.json").is_file(),
            "wasmtime run wrote no stats.json"
        );
        Ok(t.elapsed())
    };

    // insitu: the provider's sandbox, compiled code in memory.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let t = Instant::now();
    let module = sandbox.prepare(&wasm)?;
    let compile = t.elapsed();
    println!(
        "insitu compile (first registration warms it): {:.2} s",
        compile.as_secs_f64()
    );
    let run_insitu = |o: &Path, l: &Path| -> anyhow::Result<(Duration, u64)> {
        let spec = JobSpec::new("csv-stats", o.to_path_buf(), l.to_path_buf()).input(input.clone());
        let t = Instant::now();
        let r = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
        let d = t.elapsed();
        anyhow::ensure!(r.status.as_str() == "succeeded", "insitu job: {r:?}");
        Ok((d, r.peak_memory_bytes.unwrap_or(0)))
    };
    // `insitu run`, one process per job, warm disk cache.
    let insitu = target_dir()?.join("insitu");
    let cache = tempfile::tempdir()?;
    let run_cli = |o: &Path, l: &Path| {
        crate::time_insitu_run(&insitu, &wasm_path, &input, (o, l), cache.path(), &[])
    };
    let has_cli = insitu.exists();
    {
        let (o, l) = fresh()?;
        run_wasmtime(&o, &l)?;
        let (o, l) = fresh()?;
        let (first, _) = run_insitu(&o, &l)?;
        println!("insitu sandbox: first job after prepare {}", ms(first));
        if has_cli {
            let (o, l) = fresh()?;
            run_cli(&o, &l)?;
        }
    }
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut linear = 0;
    for _ in 0..RUNS {
        let (o, l) = fresh()?;
        let (d, mem) = run_insitu(&o, &l)?;
        a.push(d);
        linear = mem;
        let (o, l) = fresh()?;
        b.push(run_wasmtime(&o, &l)?);
        if has_cli {
            let (o, l) = fresh()?;
            c.push(run_cli(&o, &l)?);
        }
    }
    a.sort();
    b.sort();
    c.sort();
    let (pa, pb) = (percentile(&a, 0.5), percentile(&b, 0.5));
    println!(
        "warm job: insitu sandbox p50 {} (p90 {}) vs wasmtime run --allow-precompiled p50 {} (p90 {}): ratio {:.2}",
        ms(pa),
        ms(percentile(&a, 0.9)),
        ms(pb),
        ms(percentile(&b, 0.9)),
        pa.as_secs_f64() / pb.as_secs_f64()
    );
    if has_cli {
        println!(
            "  insitu run (a process per job, disk cache) p50 {}: ratio {:.2} to wasmtime run",
            ms(percentile(&c, 0.5)),
            percentile(&c, 0.5).as_secs_f64() / pb.as_secs_f64()
        );
    }

    concurrent(&wasm, &input, &mut fresh, linear)?;
    drop(module);
    drop(sandbox);
    first_after_registration(&wasm, &input)
}

/// 32 jobs at once in a sandbox sized for them: wall time, and the peak RSS
/// above the baseline against 32 × one job's linear memory.
fn concurrent(
    wasm: &[u8],
    input: &Path,
    fresh: &mut dyn FnMut() -> anyhow::Result<(PathBuf, PathBuf)>,
    linear: u64,
) -> anyhow::Result<()> {
    const N: usize = 32;
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: N as u32,
        ..Default::default()
    })?;
    let module = sandbox.prepare(wasm)?;
    let dirs: Vec<_> = (0..N).map(|_| fresh()).collect::<anyhow::Result<_>>()?;
    // One job first: the pool's slots and the memory image exist from now on.
    {
        let (o, l) = fresh()?;
        let spec = JobSpec::new("csv-stats", o, l).input(input.to_path_buf());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
    }
    let before = rss_kib("self");
    let peak = std::sync::atomic::AtomicU64::new(before);
    let done = std::sync::atomic::AtomicBool::new(false);
    let t = Instant::now();
    let results: Vec<anyhow::Result<Option<String>>> = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib("self"), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let handles: Vec<_> = dirs
            .iter()
            .map(|(o, l)| {
                let (sandbox, module) = (&sandbox, &module);
                s.spawn(move || -> anyhow::Result<Option<String>> {
                    let spec =
                        JobSpec::new("csv-stats", o.clone(), l.clone()).input(input.to_path_buf());
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let r = rt.block_on(sandbox.run(module, &spec, &StopHandle::default()))?;
                    Ok((r.status.as_str() != "succeeded")
                        .then(|| format!("{:?}: {:?}", r.outcome, r.error)))
                })
            })
            .collect();
        let out = handles
            .into_iter()
            .map(|h| h.join().expect("job thread"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let wall = t.elapsed();
    let ok = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(why) = ok.iter().flatten().next() {
        bail!("a concurrent job failed: {why}");
    }
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let grown = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "{N} jobs at once: {} wall ({} per job on {} cores); RSS {:.0} MiB before, peak +{grown:.0} MiB = {:.1} MiB per job, vs {:.1} MiB of linear memory per job ({:.0} MiB for {N} without sharing)",
        ms(wall),
        ms(wall / N as u32),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        before as f64 / 1024.0,
        grown / N as f64,
        linear as f64 / (1 << 20) as f64,
        (linear * N as u64) as f64 / (1 << 20) as f64,
    );
    Ok(())
}

/// Over HTTP, on a gateway already serving (a Rust word-count workflow ran
/// first, so the server's own first-request costs are paid): register the
/// Python workflow, wait for the warmer to compile its image, then its first
/// execution vs the next ones. A brand-new server's very first execution is
/// printed too.
fn first_after_registration(wasm: &[u8], input: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tmp = tempfile::tempdir()?;
        let layout = tmp.path().join("layout");
        let python = package::wasm_artifact(wasm)?;
        package::write_layout(&layout, "csv", &python)?;
        let rust = package::wasm_artifact(insitu_tests::WORD_COUNT_P1)?;
        package::write_layout(&layout, "wc", &rust)?;
        let mut config = ServeConfig::new(tmp.path().join("data"));
        config.layouts = vec![layout];
        let local = Local::start(&config, Duration::from_secs(5)).await?;
        let g = local.gateway.clone();
        let consumer = ProviderKey::load_or_create(&tmp.path().join("consumer.key"))?;
        let c = Consumer::new(local.base.clone(), consumer.clone());
        // Registers `checksum` as a one-stage workflow over `input`; returns
        // a closure-free pair (agreement, workflow) to execute.
        let register = |checksum: &str| -> anyhow::Result<(String, String)> {
            let ds = g.store.add_dataset("data", input, &[checksum.to_string()], 3600)?;
            let wf = g.store.add_workflow(&json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
                {"index": 0, "requirements": {"container": {"image": "local/x", "tag": "1", "checksum": checksum}},
                 "input": [{"index": 0, "id": ds}]}]}}}))?;
            let agreement = g.store.grant(&consumer.address(), &ds, &wf, 3600)?;
            Ok((agreement, wf.to_string()))
        };
        let execute = |agreement: String, wf: String| {
            let c = &c;
            async move {
                let token = c.token(&c.claims(&agreement, &wf, None)).await?;
                let t = Instant::now();
                let id = c.execute(&token, &agreement, &wf).await?;
                let status = c.token(&c.claims(&agreement, &wf, Some(&id))).await?;
                loop {
                    let s = c.get(&status, &format!("status/{id}")).await?;
                    match s["workflowStatus"]["status"].as_str() {
                        Some("succeeded") => return anyhow::Ok(t.elapsed()),
                        Some("failed" | "stopped") => bail!("execution ended: {s}"),
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
        };
        let (a, w) = register(&rust.manifest_digest)?;
        let mut cold = Vec::new();
        for _ in 0..5 {
            cold.push(execute(a.clone(), w.clone()).await?);
        }
        println!(
            "a new server: its first execution (Rust word-count) {} vs the 5th {}",
            ms(cold[0]),
            ms(cold[4])
        );
        let compiled = g.pipeline.sandbox.cache_stats().compiled;
        let registered = Instant::now();
        let (a, w) = register(&python.manifest_digest)?;
        while g.pipeline.sandbox.cache_stats().compiled == compiled {
            if registered.elapsed() > Duration::from_secs(120) {
                bail!("the image was not warmed within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "registration → compiled by the warmer: {:.2} s",
            registered.elapsed().as_secs_f64()
        );
        // What the warmer wrote is synced by now (it syncs after warming);
        // the server idles for IDLE, as it would between registration and a
        // consumer's first request.
        tokio::time::sleep(IDLE).await;
        let first = execute(a.clone(), w.clone()).await?;
        let mut next = Vec::new();
        for _ in 0..RUNS {
            next.push(execute(a.clone(), w.clone()).await?);
        }
        next.sort();
        let warm = percentile(&next, 0.5);
        let stats = g.pipeline.sandbox.cache_stats();
        println!(
            "python: first execution after registration {} vs warm p50 {} over HTTP: ratio {:.2} (modules compiled {}, from memory {})",
            ms(first),
            ms(warm),
            first.as_secs_f64() / warm.as_secs_f64(),
            stats.compiled,
            stats.memory
        );
        // An execution of the same, warm workflow after the same idle time:
        // what an idle server costs any execution.
        tokio::time::sleep(IDLE).await;
        let idle = execute(a.clone(), w.clone()).await?;
        println!(
            "  the same workflow again after {:.0} s idle: {} (the first after registration is {:.2}× this)",
            IDLE.as_secs_f64(),
            ms(idle),
            first.as_secs_f64() / idle.as_secs_f64()
        );
        // The same image under a second workflow and dataset: what remains
        // of a first execution's cost is per module, not per workflow.
        let (a, w) = register(&python.manifest_digest)?;
        let again = execute(a.clone(), w.clone()).await?;
        println!(
            "  a second workflow of the same image: first execution {} (ratio {:.2})",
            ms(again),
            again.as_secs_f64() / warm.as_secs_f64()
        );
        local.stop().await?;
        Ok(())
    })
}
