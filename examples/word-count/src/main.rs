//! word-count: counts the words of every text file of every input.
//!
//! Writes `counts.json`: `{"files", "words", "unique", "top": [[word, n], ...],
//! "counts": {word: n}}`. Words are maximal runs of alphanumeric characters,
//! lowercased. Extra argument: `--top N` (default 10).

use insitu_guest::{Error, Job};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};

fn main() -> std::process::ExitCode {
    insitu_guest::run(word_count)
}

fn word_count(job: &Job) -> Result<(), Error> {
    let top: usize = job.arg("top").map(str::parse).transpose()?.unwrap_or(10);
    let files = job.input_files()?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0u64;
    let mut line = String::new();
    for (i, path) in files.iter().enumerate() {
        let mut reader = BufReader::new(std::fs::File::open(path)?);
        loop {
            line.clear();
            // Non-UTF-8 bytes are replaced rather than failing the whole job.
            let mut raw = Vec::new();
            if reader.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            line.push_str(&String::from_utf8_lossy(&raw));
            for word in line
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                *counts.entry(word.to_lowercase()).or_default() += 1;
                words += 1;
            }
        }
        job.progress(
            (i + 1) as f64 / files.len() as f64,
            &path.display().to_string(),
        );
    }
    let mut ranked: Vec<(&String, &u64)> = counts.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let sorted: serde_json::Map<String, serde_json::Value> = {
        let mut all: Vec<_> = counts.iter().collect();
        all.sort();
        all.into_iter()
            .map(|(w, n)| (w.clone(), (*n).into()))
            .collect()
    };
    let result = serde_json::json!({
        "files": files.len(),
        "words": words,
        "unique": counts.len(),
        "top": ranked.iter().take(top).map(|(w, n)| serde_json::json!([w, n])).collect::<Vec<_>>(),
        "counts": sorted,
    });
    job.write_output(
        "counts.json",
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    job.log(&format!(
        "{} files, {words} words, {} distinct",
        files.len(),
        counts.len()
    ));
    Ok(())
}
