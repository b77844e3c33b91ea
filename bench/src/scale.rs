//! `insitu-bench scale`: how work scales. `csv-stats` over 1 MB … 1 GB of CSV
//! through `insitu run` (one process each, under `/usr/bin/time`): wall time
//! should grow linearly and peak memory stay flat (the example streams).
//! Then 100 executions at once in one sandbox: the memory each adds.
//!
//! `INSITU_SCALE_MAX_MB` (default 1024) caps the largest input.

use anyhow::{Context, bail};
use insitu_runtime::sandbox::{JobSpec, Sandbox, SandboxConfig, StopHandle};
use std::process::Command;
use std::time::Duration;

pub fn scale() -> anyhow::Result<()> {
    println!("## scale: csv-stats from 1 MB to 1 GB (insitu run, one process each)");
    let bin = crate::target_dir()?.join("insitu");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p insitu-gateway",
            bin.display()
        );
    }
    let max_mb: u64 = std::env::var("INSITU_SCALE_MAX_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let tmp = tempfile::Builder::new().prefix("insitu-scale").tempdir_in(
        std::env::var_os("INSITU_SCALE_DIR").map_or_else(std::env::temp_dir, Into::into),
    )?;
    let module = tmp.path().join("csv-stats.wasm");
    std::fs::write(&module, insitu_examples::CSV_STATS.wasm)?;
    println!("| input | rows | wall time | MB/s | peak RSS of `insitu run` |");
    println!("|---|---|---|---|---|");
    let mut mb = 1;
    while mb <= max_mb {
        let input = tmp.path().join(format!("in-{mb}"));
        // ~29 bytes a row.
        let rows = (mb as usize) * 1_000_000 / 29;
        insitu_examples::write_csv(&input.join("data.csv"), rows)?;
        let bytes = std::fs::metadata(input.join("data.csv"))?.len();
        let out = tmp.path().join(format!("out-{mb}"));
        let run = Command::new("/usr/bin/time")
            .args(["-f", "%e %M"])
            .arg(&bin)
            .args(["run", "--no-cache", "--timeout", "1h", "--module"])
            .arg(&module)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .output()
            .context("/usr/bin/time (Debian package `time`)")?;
        if !run.status.success() {
            bail!(
                "csv-stats on {mb} MB: {}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        let stderr = String::from_utf8_lossy(&run.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        let mut it = last.split_whitespace();
        let secs: f64 = it.next().unwrap_or("0").parse().unwrap_or(0.0);
        let peak_kib: u64 = it.next().unwrap_or("0").parse().unwrap_or(0);
        println!(
            "| {:.0} MB | {rows} | {secs:.2} s | {:.0} | {:.1} MiB |",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs.max(0.01),
            peak_kib as f64 / 1024.0
        );
        std::fs::remove_dir_all(&input)?;
        std::fs::remove_dir_all(&out)?;
        mb *= 10;
    }

    println!("\n## scale: 100 executions at once in one sandbox");
    let sandbox = std::sync::Arc::new(Sandbox::new(SandboxConfig {
        concurrency: 100,
        ..SandboxConfig::default()
    })?);
    let spin = sandbox.prepare(&insitu_tests::spinner())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let before = crate::rss_kib("self");
    let (during, reports) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let dir = tmp.path().join(format!("job{i}"));
            let (o, l) = (dir.join("o"), dir.join("l"));
            std::fs::create_dir_all(&o)?;
            std::fs::create_dir_all(&l)?;
            let mut spec = JobSpec::new("spinner", o, l);
            spec.limits.timeout = Duration::from_secs(3);
            let (sandbox, spin) = (sandbox.clone(), spin.clone());
            tasks.push(tokio::spawn(async move {
                sandbox.run(&spin, &spec, &StopHandle::default()).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during = crate::rss_kib("self");
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(t.await??);
        }
        anyhow::Ok((during, reports))
    })?;
    let timed_out = reports
        .iter()
        .filter(|r| r.outcome == insitu_runtime::Outcome::TimedOut)
        .count();
    println!(
        "RSS {:.1} MiB before, {:.1} MiB with 100 running: {:.0} KiB per execution ({timed_out} of 100 ran to their 3 s limit)",
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        during.saturating_sub(before) as f64 / 100.0
    );
    Ok(())
}
