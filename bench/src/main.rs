//! insitu-bench: the figures in BENCHMARKS.md.
//!
//! ```text
//! scripts/bench            # builds everything in release, then runs all
//! insitu-bench [jobs|cli|native|compile|timeout|images|http|chain|verify|secagg|fl|access|search|airlock|all]
//! insitu-bench load       # not in `all`: INSITU_LOAD_CONSUMERS, INSITU_LOAD_SECONDS
//! insitu-bench guest-io   # not in `all`: a guest reading 1 GiB vs a native reader
//! insitu-bench lang       # not in `all`: Python components (needs componentize-py and the wasmtime CLI)
//! insitu-bench scale      # not in `all`: csv-stats 1 MB … 1 GB, 100 executions at once
//! ```
//! `cli` needs the `wasmtime` CLI on PATH (or `WASMTIME=/path/to/wasmtime`) and
//! the `insitu` binary next to this one; `native` needs the example binaries
//! built natively in the same target dir (`cargo build --release -p word-count
//! -p csv-stats -p linreg-train`).

mod access;
mod airlock;
mod chain;
mod fl;
mod guest_io;
mod http;
mod lang;
mod load;
mod podman;
mod scale;
mod search;
mod secagg;
mod verify;

use anyhow::{Context, bail};
use insitu_runtime::sandbox::{
    Interruption, JobSpec, Limits, Prepared, Sandbox, SandboxConfig, StopHandle,
};
use insitu_runtime::{Outcome, Status};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// mimalloc rather than glibc's malloc: ~13 % of the CPU of an execution
/// over HTTP went to glibc's allocator (see BENCHMARKS.md, [disk-speed]).
/// Built with lazy arena commit (`.cargo/config.toml`): eager commit, its
/// Linux default, doubled the resident memory of a loaded server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    insitu_gateway::quiet_error_backtraces();
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = what == "all";
    println!(
        "insitu-bench on {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if all || what == "jobs" {
        jobs()?;
    }
    if all || what == "compile" {
        compile()?;
    }
    if all || what == "timeout" {
        timeout()?;
    }
    if all || what == "native" {
        native()?;
    }
    if all || what == "cli" {
        cli()?;
    }
    if all || what == "images" {
        images()?;
    }
    if all || what == "http" {
        http::http()?;
    }
    if all || what == "chain" {
        chain::chain()?;
    }
    if what == "guest-io" {
        guest_io::guest_io()?;
    }
    if what == "lang" {
        lang::lang()?;
    }
    if what == "load" {
        load::load()?;
    }
    if what == "podman" {
        podman::podman()?;
    }
    if what == "scale" {
        scale::scale()?;
    }
    if all || what == "verify" {
        verify::verify()?;
    }
    if all || what == "secagg" {
        secagg::secagg()?;
    }
    if all || what == "fl" {
        fl::fl()?;
    }
    if all || what == "access" {
        access::access()?;
    }
    if all || what == "search" {
        search::search()?;
    }
    if all || what == "airlock" {
        airlock::airlock()?;
    }
    Ok(())
}

/// VmRSS of process `pid` (`self` for this one), in KiB; 0 if unreadable.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Where `http` and `load` put their data dirs: `INSITU_BENCH_DIRS`
/// (colon-separated, e.g. `/tmp:/dev/shm` for disk and tmpfs side by side in
/// one run), else the temporary directory (`TMPDIR`).
fn bench_dirs() -> Vec<std::path::PathBuf> {
    match std::env::var("INSITU_BENCH_DIRS") {
        Ok(v) if !v.is_empty() => v.split(':').map(Into::into).collect(),
        _ => vec![std::env::temp_dir()],
    }
}

/// The filesystem type of `path` (`stat -f`), e.g. `ext2/ext3` or `tmpfs`.
fn fs_type(path: &std::path::Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One line on the store's group commit over `executions`.
fn group_commit(executions: u64, writes: u64, commits: u64, volatile: u64, syncs: u64) -> String {
    let per = |n: u64| n as f64 / executions.max(1) as f64;
    format!(
        "group commit: {writes} writes in {commits} durable + {volatile} volatile commits ({:.1} writes per commit), {syncs} syncfs; fsyncs per execution {:.3} (commits {:.3} + syncfs {:.3})",
        writes as f64 / (commits + volatile).max(1) as f64,
        per(commits + syncs),
        per(commits),
        per(syncs)
    )
}

/// Bytes process `pid` has caused to be written to storage so far
/// (`write_bytes` of `/proc/<pid>/io`: page-cache writes of files on a disk,
/// none on tmpfs), or 0 where the kernel does not say.
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `written` over a window, per execution.
fn written_per(executions: u64, bytes: u64) -> String {
    format!(
        "storage writes {:.1} KiB per execution",
        bytes as f64 / 1024.0 / executions.max(1) as f64
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A source of fresh (output, logs) directory pairs under `root`.
fn fresh_dirs(root: &Path) -> impl FnMut() -> anyhow::Result<(PathBuf, PathBuf)> + '_ {
    let mut n = 0;
    move || {
        n += 1;
        let (o, l) = (root.join(format!("o{n}")), root.join(format!("l{n}")));
        std::fs::create_dir(&o)?;
        std::fs::create_dir(&l)?;
        Ok((o, l))
    }
}

/// Times one `insitu run` process: `module` over `input` into `o`/`l`, with
/// the compiled-module cache in `cache`, then `extra` arguments.
fn time_insitu_run(
    insitu: &Path,
    module: &Path,
    input: &Path,
    (o, l): (&Path, &Path),
    cache: &Path,
    extra: &[&str],
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = Command::new(insitu)
        .args(["run", "--module"])
        .arg(module)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(o)
        .arg("--logs")
        .arg(l)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--")
        .args(extra)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "insitu run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(t.elapsed())
}

/// Input dir with one small file, and `n` pairs of empty output/logs dirs.
fn job_dirs(root: &Path, n: usize) -> anyhow::Result<(PathBuf, Vec<(PathBuf, PathBuf)>)> {
    let input = root.join("input");
    std::fs::create_dir_all(&input)?;
    std::fs::write(input.join("data.txt"), "hello world\n".repeat(100))?;
    let mut dirs = Vec::with_capacity(n);
    for i in 0..n {
        let (o, l) = (root.join(format!("o{i}")), root.join(format!("l{i}")));
        std::fs::create_dir(&o)?;
        std::fs::create_dir(&l)?;
        dirs.push((o, l));
    }
    Ok((input, dirs))
}

fn run_jobs(
    sandbox: &Sandbox,
    module: &Prepared,
    input: &Path,
    dirs: &[(PathBuf, PathBuf)],
) -> anyhow::Result<Vec<Duration>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let mut times = Vec::with_capacity(dirs.len());
    for (o, l) in dirs {
        let mut spec = JobSpec::new("hostile", o.clone(), l.clone()).input(input.to_path_buf());
        spec.args = vec!["write-ok".into()];
        let t = Instant::now();
        let r = rt.block_on(sandbox.run(module, &spec, &StopHandle::default()))?;
        times.push(t.elapsed());
        if r.status != Status::Succeeded {
            bail!("job failed: {r:?}");
        }
    }
    Ok(times)
}

/// In-process jobs: read an input file, write an output file, all limits on.
fn jobs() -> anyhow::Result<()> {
    println!("## in-process jobs (read input, write output; epoch timeout, memory limit, quotas)");
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        concurrency: 8,
        ..SandboxConfig::default()
    })?);
    let module = sandbox.prepare(insitu_tests::HOSTILE_P1)?;
    let tmp = tempfile::tempdir()?;
    let (input, dirs) = job_dirs(tmp.path(), 6000)?;
    run_jobs(&sandbox, &module, &input, &dirs[..500])?; // warm-up
    let mut times = run_jobs(&sandbox, &module, &input, &dirs[500..3500])?;
    times.sort();
    println!(
        "latency, 1 thread, {} jobs: p50 {}  p99 {}  max {}",
        times.len(),
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99)),
        us(*times.last().unwrap())
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = 2500 / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (sandbox, module, input) = (&sandbox, &module, &input);
            let part = &dirs[3500 + t * chunk..3500 + (t + 1) * chunk];
            s.spawn(move || run_jobs(sandbox, module, input, part).expect("jobs"));
        }
    });
    let total = chunk * threads;
    println!(
        "throughput, {threads} threads, {total} jobs: {:.0} jobs/s\n",
        total as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Compile a module vs load it from the disk cache vs the memory cache.
fn compile() -> anyhow::Result<()> {
    println!("## compile vs cache");
    let cache = tempfile::tempdir()?;
    for (name, wasm) in [
        ("hostile (wasip1)", insitu_tests::HOSTILE_P1),
        ("word-count (wasip1)", insitu_examples::WORD_COUNT.wasm),
    ] {
        let mut compiled = Vec::new();
        let mut from_disk = Vec::new();
        let mut from_memory = Vec::new();
        for i in 0..5 {
            let dir = cache.path().join(format!("{name}-{i}"));
            let sandbox = Sandbox::new(SandboxConfig {
                cache_dir: Some(dir),
                concurrency: 0,
                ..SandboxConfig::default()
            })?;
            let t = Instant::now();
            sandbox.prepare(wasm)?;
            compiled.push(t.elapsed());
            sandbox.clear_memory_cache();
            let t = Instant::now();
            sandbox.prepare(wasm)?;
            from_disk.push(t.elapsed());
            let t = Instant::now();
            sandbox.prepare(wasm)?;
            from_memory.push(t.elapsed());
        }
        for v in [&mut compiled, &mut from_disk, &mut from_memory] {
            v.sort();
        }
        println!(
            "{name}, {} KiB: compile {}  disk cache {}  memory cache {}  (medians of 5)",
            wasm.len() / 1024,
            ms(compiled[2]),
            ms(from_disk[2]),
            us(from_memory[2])
        );
    }
    println!();
    Ok(())
}

/// How long an infinite loop with a 1 s timeout takes to end.
fn timeout() -> anyhow::Result<()> {
    println!("## timeout accuracy (infinite loop, timeout 1s)");
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let module = sandbox.prepare(insitu_tests::HOSTILE_P1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let mut worst = Duration::ZERO;
    for case in ["loop", "sleep"] {
        for _ in 0..5 {
            let tmp = tempfile::tempdir()?;
            let (input, dirs) = job_dirs(tmp.path(), 1)?;
            let mut spec =
                JobSpec::new("hostile", dirs[0].0.clone(), dirs[0].1.clone()).input(input);
            spec.args = vec![case.into()];
            spec.limits.timeout = Duration::from_secs(1);
            let t = Instant::now();
            let r = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
            let took = t.elapsed();
            if r.outcome != Outcome::TimedOut {
                bail!("{case} did not time out: {r:?}");
            }
            worst = worst.max(took);
        }
        println!("{case}: worst of 5 ended after {}", ms(worst));
    }
    println!();
    Ok(())
}

fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe dir")?.to_path_buf())
}

/// wasm (epoch and fuel) vs native for the CPU-heavy examples.
fn native() -> anyhow::Result<()> {
    println!("## wasm vs native (limits enforced; in-process, module cached)");
    let bin = target_dir()?;
    let tmp = tempfile::tempdir()?;
    let reg = tmp.path().join("reg");
    insitu_examples::write_regression(&reg.join("train.csv"), 20_000, 8, false)?;
    let csv = tmp.path().join("csv");
    insitu_examples::write_csv(&csv.join("weather.csv"), 1_000_000)?;
    let cases: [(&str, &[u8], &Path, &[&str]); 2] = [
        (
            "linreg-train",
            insitu_examples::LINREG_TRAIN.wasm,
            &reg,
            &["--epochs", "300"],
        ),
        ("csv-stats", insitu_examples::CSV_STATS.wasm, &csv, &[]),
    ];
    let mut ratios: Vec<(f64, f64)> = Vec::new();
    for (name, wasm, input, args) in cases {
        let native_bin = bin.join(name);
        if !native_bin.exists() {
            bail!(
                "{} missing: cargo build --release -p {name}",
                native_bin.display()
            );
        }
        let native = median_of(5, || {
            let out = tempfile::tempdir()?;
            let t = Instant::now();
            let st = Command::new(&native_bin)
                .arg(format!("--input1={}", input.display()))
                .arg(format!("--output={}", out.path().display()))
                .arg(format!("--logs={}", out.path().display()))
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(st.success(), "native {name} failed");
            Ok(t.elapsed())
        })?;
        let mut wasm_times = Vec::new();
        for mode in [Interruption::Epoch, Interruption::Fuel] {
            let sandbox = Sandbox::new(SandboxConfig {
                interruption: mode,
                concurrency: 0,
                ..SandboxConfig::default()
            })?;
            let module = sandbox.prepare(wasm)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let t = median_of(5, || {
                let o = tempfile::tempdir()?;
                let (out, logs) = (o.path().join("o"), o.path().join("l"));
                std::fs::create_dir(&out)?;
                std::fs::create_dir(&logs)?;
                let mut spec = JobSpec::new(name, out, logs).input(input.to_path_buf());
                spec.args = args.iter().map(|s| s.to_string()).collect();
                spec.limits = Limits {
                    timeout: Duration::from_secs(600),
                    ..Limits::default()
                };
                let t = Instant::now();
                let r = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
                anyhow::ensure!(r.status == Status::Succeeded, "wasm {name} failed: {r:?}");
                Ok(t.elapsed())
            })?;
            wasm_times.push(t);
        }
        let (re, rf) = (ratio(wasm_times[0], native), ratio(wasm_times[1], native));
        println!(
            "{name}: native {}  wasm+epoch {} ({re:.2}x)  wasm+fuel {} ({rf:.2}x)",
            ms(native),
            ms(wasm_times[0]),
            ms(wasm_times[1])
        );
        ratios.push((re, rf));
    }
    let geo = |f: fn(&(f64, f64)) -> f64| {
        (ratios.iter().map(|r| f(r).ln()).sum::<f64>() / ratios.len() as f64).exp()
    };
    println!(
        "geometric mean: epoch {:.2}x  fuel {:.2}x\n",
        geo(|r| r.0),
        geo(|r| r.1)
    );
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn median_of(
    n: usize,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    let mut v = (0..n).map(|_| f()).collect::<anyhow::Result<Vec<_>>>()?;
    v.sort();
    Ok(v[n / 2])
}

/// One process per job, warm caches: `insitu run` vs `wasmtime run`.
fn cli() -> anyhow::Result<()> {
    println!("## one process per job, warm cache: insitu run vs wasmtime run");
    let insitu = target_dir()?.join("insitu");
    if !insitu.exists() {
        bail!(
            "{} missing: cargo build --release -p insitu-gateway",
            insitu.display()
        );
    }
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    let version = Command::new(&wasmtime).arg("--version").output().with_context(|| {
        format!("cannot run `{wasmtime}`; install it (cargo install wasmtime-cli --version 48.0.8) or set WASMTIME")
    })?;
    let tmp = tempfile::tempdir()?;
    let module = tmp.path().join("hostile.wasm");
    std::fs::write(&module, insitu_tests::HOSTILE_P1)?;
    let (input, dirs) = job_dirs(tmp.path(), 80)?;
    let cache = tmp.path().join("cache");
    let wasmtime_cache = tmp.path().join("wasmtime-cache.toml");
    std::fs::write(
        &wasmtime_cache,
        format!(
            "[cache]\ndirectory = \"{}\"\n",
            tmp.path().join("wt-cache").display()
        ),
    )?;
    let run_insitu = |o: &Path, l: &Path| {
        time_insitu_run(&insitu, &module, &input, (o, l), &cache, &["write-ok"])
    };
    let run_wasmtime = |o: &Path, l: &Path| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let stdout = std::fs::File::create(l.join("stdout.log"))?;
        let stderr = std::fs::File::create(l.join("stderr.log"))?;
        let st = Command::new(&wasmtime)
            .arg("run")
            .arg(format!("-Ccache-config={}", wasmtime_cache.display()))
            .arg(format!("--dir={}::/data/inputs/1", input.display()))
            .arg(format!("--dir={}::/data/outputs", o.display()))
            .arg(format!("--dir={}::/data/logs", l.display()))
            .arg("--argv0=hostile")
            .arg(&module)
            .args([
                "--input1=/data/inputs/1",
                "--output=/data/outputs",
                "--logs=/data/logs",
                "write-ok",
            ])
            .stdout(stdout)
            .stderr(stderr)
            .status()?;
        anyhow::ensure!(st.success(), "wasmtime run failed");
        Ok(t.elapsed())
    };
    // Warm both caches, then alternate to share any machine noise.
    run_insitu(&dirs[0].0, &dirs[0].1)?;
    run_wasmtime(&dirs[1].0, &dirs[1].1)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for pair in dirs[2..].chunks(2) {
        a.push(run_insitu(&pair[0].0, &pair[0].1)?);
        b.push(run_wasmtime(&pair[1].0, &pair[1].1)?);
    }
    a.sort();
    b.sort();
    let (ma, mb) = (percentile(&a, 0.5), percentile(&b, 0.5));
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    println!(
        "insitu run: median {}  |  wasmtime run: median {}  |  ratio {:.2} ({} runs each)\n",
        ms(ma),
        ms(mb),
        ratio(ma, mb),
        a.len()
    );
    Ok(())
}

/// Image verification and pull paths (issue #3).
fn images() -> anyhow::Result<()> {
    use insitu_runtime::image::{
        self, BlobStore, LayoutSource, Puller, RegistryAuth, RegistrySource, package,
    };
    println!("## images");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // sha256 of a 256 MiB blob: the hash alone, and the whole verified store path.
    let blob: Vec<u8> = (0..256u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let digest = image::sha256_digest(&blob);
    let hash = t.elapsed();
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout/blobs/sha256");
    std::fs::create_dir_all(&layout)?;
    std::fs::write(layout.join(digest.trim_start_matches("sha256:")), &blob)?;
    let store = BlobStore::open(tmp.path().join("store"))?;
    let source = LayoutSource {
        dir: tmp.path().join("layout"),
    };
    let t = Instant::now();
    rt.block_on(store.fetch(&digest, blob.len() as u64, || {
        image::ImageSource::blob(&source, &digest)
    }))?;
    let verified = t.elapsed();
    let gbps = |d: Duration| blob.len() as f64 / d.as_secs_f64() / 1e9;
    println!(
        "sha256 of 256 MiB: {:.2} GB/s; stream + hash + write + rename into the store: {:.2} GB/s ({})",
        gbps(hash),
        gbps(verified),
        tmp.path().display()
    );
    drop(blob);

    // Cold and warm paths from a loopback registry.
    let reg = insitu_tests::registry::Registry::start();
    let wasm = insitu_tests::HOSTILE_P1;
    let artifact = package::wasm_artifact(wasm)?;
    let target = RegistrySource::new(
        image::parse_reference(&format!("{}/bench/h:1", reg.host()))?,
        &[reg.host()],
        RegistryAuth::Anonymous,
    );
    rt.block_on(package::push(&target, &artifact))?;
    let reference = format!("{}/bench/h@{}", reg.host(), artifact.manifest_digest);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..5 {
        let store = BlobStore::open(tmp.path().join(format!("cold{i}")))?;
        let sandbox = Sandbox::new(SandboxConfig {
            concurrency: 0,
            ..SandboxConfig::default()
        })?;
        let (out, logs) = (
            tmp.path().join(format!("o{i}")),
            tmp.path().join(format!("l{i}")),
        );
        std::fs::create_dir(&out)?;
        std::fs::create_dir(&logs)?;
        let t = Instant::now();
        let (source, digest) = rt.block_on(image::registry(
            &reference,
            &[reg.host()],
            RegistryAuth::Anonymous,
            false,
        ))?;
        let pulled = rt.block_on(Puller::new(store.clone()).pull(&source, &digest))?;
        let module = sandbox.prepare(pulled.wasm.as_deref().context("wasm")?)?;
        let mut spec = JobSpec::new("hostile", out, logs);
        spec.args = vec!["exit".into(), "0".into()];
        let r = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
        anyhow::ensure!(r.status == Status::Succeeded, "{r:?}");
        cold.push(t.elapsed());
        // Warm: blobs stored, module compiled in memory.
        let t = Instant::now();
        let pulled = rt.block_on(Puller::new(store).pull(&source, &digest))?;
        let _ready = sandbox.prepare(pulled.wasm.as_deref().context("wasm")?)?;
        warm.push(t.elapsed());
    }
    cold.sort();
    warm.sort();
    println!(
        "cold (pull {} KiB module from the loopback registry, verify, compile, first result): median {}  |  warm (cached) to a ready instance: median {}",
        wasm.len() / 1024,
        ms(cold[2]),
        us(warm[2])
    );

    // 16 concurrent first requests for one uncached image.
    let store = BlobStore::open(tmp.path().join("concurrent"))?;
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fetched = multi.block_on(async {
        let (source, digest) =
            image::registry(&reference, &[reg.host()], RegistryAuth::Anonymous, false).await?;
        let source = Arc::new(source);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (store, source, digest) = (store.clone(), source.clone(), digest.clone());
                tokio::spawn(async move { Puller::new(store).pull(&*source, &digest).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(store.fetch_count())
    })?;
    println!("16 concurrent first pulls of one image (3 blobs): {fetched} fetches\n");
    Ok(())
}
