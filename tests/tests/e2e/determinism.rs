//! Deterministic mode: what a guest observes (random, clocks, listing order,
//! file metadata) is fixed by the seed, so the same module on the same data
//! gives the same bytes wherever and however often it runs.

use crate::{Dirs, run};
use insitu_runtime::pipeline::collect;
use insitu_runtime::sandbox::{Determinism, JobSpec};
use std::collections::BTreeSet;
use std::path::Path;

/// The same files, created in `order` with distinct mtimes, so the host's
/// listing order and metadata differ between copies.
fn dataset(dir: &Path, order: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, name) in order.iter().enumerate() {
        let f = dir.join(name);
        std::fs::write(&f, format!("{name} holds some words\n")).unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(1_000 * i as u64 + 7);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// The wall clock's reading (ns) in an `observe` report.
fn wall(report: &str) -> u128 {
    report
        .lines()
        .nth(1)
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn digest(dir: &Path) -> String {
    let (files, _) = collect(dir).unwrap();
    serde_json::to_string(&files).unwrap()
}

async fn observe(module: &[u8], order: &[&str], deterministic: Option<Determinism>) -> String {
    let d = Dirs::new();
    let input = d.tmp.path().join("shuffled");
    dataset(&input, order);
    let mut spec = JobSpec::new("observe", d.output.clone(), d.logs.clone()).input(input);
    spec.args = vec!["observe".into()];
    spec.deterministic = deterministic;
    let r = run(module, &spec).await;
    assert_eq!(
        r.status.as_str(),
        "succeeded",
        "{:?} {}",
        r.error,
        d.stderr()
    );
    std::fs::read_to_string(d.output.join("observed.txt")).unwrap()
}

/// What `module` (the hostile guest's `observe`) sees in deterministic mode:
/// the same for the same seed whatever the host's listing order and times.
async fn fixes_random_clocks_listings_and_metadata(module: &[u8]) {
    let seed = Determinism::for_stage("nv-exec-1", 0);
    let a = observe(module, &["b.txt", "a.txt", "c.txt", "-dash"], Some(seed)).await;
    let b = observe(module, &["c.txt", "-dash", "a.txt", "b.txt"], Some(seed)).await;
    assert_eq!(a, b, "same seed, same data: same observations");
    let names: Vec<&str> = a
        .lines()
        .skip(2)
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["-dash", "a.txt", "b.txt", "c.txt"], "{a}");
    assert!(a.lines().skip(2).all(|l| l.contains("mtime 0 ")), "{a}");
    assert!(
        wall(&a) < 1_000_000,
        "the wall clock starts at the epoch: {a}"
    );
    // Another seed draws other random numbers; outside the mode they vary.
    let other = observe(
        module,
        &["a.txt"],
        Some(Determinism::for_stage("nv-exec-2", 0)),
    )
    .await;
    assert_ne!(a.lines().next(), other.lines().next());
    let free = observe(module, &["b.txt", "a.txt"], None).await;
    assert_ne!(
        free.lines().next(),
        observe(module, &["b.txt", "a.txt"], None)
            .await
            .lines()
            .next()
    );
    assert!(wall(&free) > 1_700_000_000_000_000_000, "{free}");
    assert!(!free.contains("mtime 0 "), "{free}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_mode_fixes_random_clocks_listings_and_metadata() {
    fixes_random_clocks_listings_and_metadata(insitu_tests::HOSTILE_P1).await;
}

/// Components too: listings sorted, no times, seeded random, stepped clocks
/// (through the shadowed `wasi:filesystem` functions and the WASI context).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_mode_covers_components() {
    fixes_random_clocks_listings_and_metadata(insitu_tests::HOSTILE_P2).await;
}

/// Every example, 100 times in deterministic mode over copies of its sample
/// data created in varying order: one output digest per example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_give_one_digest_in_100_runs() {
    for example in insitu_examples::ALL {
        let sample = tempfile::tempdir().unwrap();
        insitu_examples::write_sample(example.sample, sample.path()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(sample.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let mut digests = BTreeSet::new();
        for i in 0..100 {
            let d = Dirs::new();
            let input = d.tmp.path().join("data");
            std::fs::create_dir(&input).unwrap();
            // Copies written in a rotating order.
            let k = i % names.len().max(1);
            for n in names[k..].iter().chain(&names[..k]) {
                std::fs::copy(sample.path().join(n), input.join(n)).unwrap();
            }
            let mut spec =
                JobSpec::new(example.name, d.output.clone(), d.logs.clone()).input(input);
            spec.args = example.args.iter().map(|s| s.to_string()).collect();
            spec.deterministic = Some(Determinism::for_stage("nv-examples", 0));
            let r = run(example.wasm, &spec).await;
            assert_eq!(
                r.status.as_str(),
                "succeeded",
                "{} run {i}: {:?}",
                example.name,
                r.error
            );
            digests.insert(digest(&d.output));
        }
        assert_eq!(digests.len(), 1, "{}: {digests:?}", example.name);
    }
}
