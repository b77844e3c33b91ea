//! `insitu-bench search`: catalog search over 100,000 registered DDOs
//! (`INSITU_BENCH_SEARCH_ASSETS` to change), in the store and over HTTP
//! (`GET /api/v1/metadata/assets/ddo/query`), p50 and p99 of 2,000 queries
//! each: one common word, two words, a rare word's prefix, an exact name,
//! and a filter by tag. Registering is the slow part: put `TMPDIR` on tmpfs.

use insitu_gateway::config::ServeConfig;
use insitu_gateway::http::Local;
use insitu_runtime::store::{About, DatasetSpec, Search};
use std::time::{Duration, Instant};

/// A vocabulary of `n` made-up words from syllables.
fn vocabulary(n: usize) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "fu", "go", "hi", "ja", "ze",
        "bo", "ci", "xu", "wa", "yo", "qui", "tre", "stra", "mon",
    ];
    (0..n)
        .map(|i| {
            let (a, b, c) = (i % 24, (i / 24) % 24, (i / 576) % 24);
            format!("{}{}{}", SYLLABLES[a], SYLLABLES[b], SYLLABLES[c])
        })
        .collect()
}

/// The kinds of query, in the order they are reported.
const KINDS: [&str; 5] = [
    "one common word",
    "two words",
    "a rare word's prefix",
    "an exact name",
    "a word and a tag",
];

pub fn search() -> anyhow::Result<()> {
    let n: usize = std::env::var("INSITU_BENCH_SEARCH_ASSETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!("## Catalog search over {n} DDOs");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(n))
}

fn summary(what: &str, mut t: Vec<Duration>) {
    t.sort();
    println!(
        "| {what} | {} | {} | {} |",
        super::us(super::percentile(&t, 0.5)),
        super::us(super::percentile(&t, 0.99)),
        super::us(*t.last().unwrap_or(&Duration::ZERO)),
    );
}

async fn run(n: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(tmp.path().join("files"))?;
    let mut config = ServeConfig::new(data);
    config.workers = 1;
    let local = Local::start(&config, Duration::from_secs(1)).await?;
    let store = local.gateway.store.clone();
    let words = vocabulary(2_000);
    let mut rng = insitu_examples::Rng::new(7);
    let mut pick = |k: usize| -> Vec<String> {
        (0..k)
            .map(|_| {
                // Zipf-like: low indexes are common words.
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                words[((u * u * u) * words.len() as f64) as usize % words.len()].clone()
            })
            .collect()
    };
    let t = Instant::now();
    let files = tmp.path().join("files");
    // A dataset named three words and `suffix`, with 12 words of
    // description, 2 tags and an author; its name.
    let mut register = |suffix: &str| -> anyhow::Result<String> {
        let name = format!("{} {suffix}", pick(3).join(" "));
        store.register_dataset(&DatasetSpec {
            name: &name,
            path: &files,
            allowed_images: &[],
            timeout_secs: 60,
            server: Default::default(),
            price: None,
            price_token: None,
            access: false,
            did: None,
            deterministic: false,
            about: About {
                description: Some(pick(12).join(" ")),
                tags: pick(2),
                author: Some(pick(1).remove(0)),
            },
        })?;
        Ok(name)
    };
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        names.push(register(&i.to_string())?);
    }
    println!(
        "registered {n} datasets in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        tmp.path().display()
    );
    let t = Instant::now();
    store.index_catalog()?;
    println!(
        "indexed {n} DDOs for search in {:.2} s (a server does it at start)",
        t.elapsed().as_secs_f64()
    );
    let queries: Vec<(&str, Search)> = (0..2_000)
        .map(|i| {
            let q = |text: String| Search {
                text,
                page_size: 20,
                page: 1,
                ..Search::default()
            };
            match i % 5 {
                0 => ("one common word", q(words[i % 20].clone())),
                1 => (
                    "two words",
                    q(format!("{} {}", words[i % 50], words[(i * 7) % 200])),
                ),
                2 => (
                    "a rare word's prefix",
                    q(words[1_000 + i % 900][..4].to_string()),
                ),
                3 => ("an exact name", q(names[(i * 37) % n].clone())),
                _ => {
                    let mut s = q(words[i % 30].clone());
                    s.tags = vec![words[i % 10].clone()];
                    ("a word and a tag", s)
                }
            }
        })
        .collect();
    println!("| query (store, in process) | p50 | p99 | max |\n|---|---|---|---|");
    for kind in KINDS {
        let mut times = Vec::new();
        for (_, q) in queries.iter().filter(|(k, _)| *k == kind) {
            let t = Instant::now();
            let (results, _) = store.search(q)?;
            times.push(t.elapsed());
            std::hint::black_box(results);
        }
        summary(kind, times);
    }
    // The same with the catalog written between searches: one dataset
    // registered before each query (not timed), so every search indexes it
    // first and scores its words afresh (the word cache is emptied).
    println!(
        "| query (store, a registration before each: nothing cached) | p50 | p99 | max |\n|---|---|---|---|"
    );
    let mut extra = 0;
    for kind in KINDS {
        let mut times = Vec::new();
        for (_, q) in queries.iter().filter(|(k, _)| *k == kind).take(100) {
            extra += 1;
            register(&format!("extra {extra}"))?;
            let t = Instant::now();
            let (results, _) = store.search(q)?;
            times.push(t.elapsed());
            std::hint::black_box(results);
        }
        summary(kind, times);
    }
    let http = insitu_runtime::tls::http_client();
    let mut times = Vec::new();
    for (_, q) in queries.iter().filter(|(k, _)| *k != "a word and a tag") {
        let t = Instant::now();
        let r = http
            .get(format!("{}/api/v1/metadata/assets/ddo/query", local.base))
            .query(&[("text", q.text.as_str()), ("offset", "20")])
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "search answered {}", r.status());
        std::hint::black_box(r.bytes().await?);
        times.push(t.elapsed());
    }
    println!("| query (over HTTP, 20 DDOs a page) | p50 | p99 | max |\n|---|---|---|---|");
    summary("any of the first four", times);
    local.stop().await?;
    Ok(())
}
