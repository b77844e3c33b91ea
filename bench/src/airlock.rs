//! `insitu-bench airlock`: output control's costs. The inputs' fingerprint
//! index built from a 256 MiB CSV file (page cache warm; MB/s), and the
//! checks of a 16 MiB CSV result against it (copied input, small counts,
//! size and type; ms per MB). `INSITU_BENCH_AIRLOCK_MB` changes the input
//! size. The gateway's overhead on a small result is `INSITU_BENCH_OUTPUT_POLICY=1
//! insitu-bench http` against `insitu-bench http`.

use insitu_runtime::airlock::{Index, OutputPolicy, Results, check};
use std::io::Write;
use std::time::Instant;

/// `n` bytes of CSV rows: id, name-like token, two numbers.
fn rows(seed: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut x = seed;
    let mut i = 0u64;
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        writeln!(
            out,
            "{i},person-{:012x},{},{}",
            x >> 16,
            x % 1000,
            (x >> 8) % 97
        )
        .unwrap();
        i += 1;
    }
    out
}

pub fn airlock() -> anyhow::Result<()> {
    let mb: usize = std::env::var("INSITU_BENCH_AIRLOCK_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    println!("## Output control: fingerprint index and checks");
    let tmp = tempfile::tempdir()?;
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input)?;
    let data = rows(1, mb << 20);
    std::fs::write(input.join("rows.csv"), &data)?;
    // Warm the page cache, then build the index as a stage would.
    let _ = std::fs::read(input.join("rows.csv"))?;
    let mut best = f64::MAX;
    let mut index = Index::default();
    for _ in 0..3 {
        let t = Instant::now();
        index = Index::build(&[input.as_path()])?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let (lines, runs) = index.len();
    println!(
        "index of {mb} MiB: {:.0} MB/s (best of 3, {:.2} s); {lines} lines, {runs} runs ({:.1} % of positions)",
        data.len() as f64 / best / 1e6,
        best,
        runs as f64 * 100.0 / data.len() as f64
    );
    // A 16 MiB result: fresh rows with 1,600 copied rows mixed in.
    let out = tmp.path().join("out");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&logs)?;
    let mut result = rows(2, 16 << 20);
    let copied: Vec<u8> = data
        .split(|b| *b == b'\n')
        .step_by(997)
        .take(1600)
        .flat_map(|l| l.iter().copied().chain(std::iter::once(b'\n')))
        .collect();
    let mixed = copied.len() as f64 / (result.len() + copied.len()) as f64;
    result.extend_from_slice(&copied);
    std::fs::write(out.join("result.csv"), &result)?;
    std::fs::write(logs.join("stdout.log"), "done\n")?;
    let results = Results {
        outputs: out,
        logs: vec![(0, logs)],
    };
    for (what, policy) in [
        (
            "copied input",
            OutputPolicy {
                max_copied_share: Some(0.05),
                ..Default::default()
            },
        ),
        (
            "small counts",
            OutputPolicy {
                min_count: Some(5),
                ..Default::default()
            },
        ),
        (
            "size and type",
            OutputPolicy {
                max_result_bytes: Some(1 << 30),
                file_types: vec!["csv".into()],
                ..Default::default()
            },
        ),
    ] {
        let mut best = f64::MAX;
        let mut report = None;
        for _ in 0..3 {
            let t = Instant::now();
            report = Some(check(&policy, &results, Some(&index))?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let report = report.expect("ran");
        println!(
            "check {what} of a {:.1} MB result: {:.2} ms per MB ({:.0} MB/s){}",
            result.len() as f64 / 1e6,
            best * 1e3 / (result.len() as f64 / 1e6),
            result.len() as f64 / best / 1e6,
            report
                .copied_share
                .map(|s| format!(
                    "; copied share found {:.2} % ({:.2} % mixed in, line ends included)",
                    s * 100.0,
                    mixed * 100.0
                ))
                .unwrap_or_default()
        );
    }
    Ok(())
}
