//! The example algorithms, compiled from `examples/*` to wasm32-wasip1 by this
//! crate's build script, and deterministic sample data for them.

use std::io::{self, BufWriter, Write};
use std::path::Path;

/// One example algorithm.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub name: &'static str,
    /// The wasm32-wasip1 module.
    pub wasm: &'static [u8],
    /// Extra arguments the demo passes.
    pub args: &'static [&'static str],
    /// What the demo feeds it.
    pub sample: Sample,
    /// The file it writes, shown by the demo.
    pub result: &'static str,
}

/// Which sample data an example reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Text,
    Csv,
    Regression,
}

pub const WORD_COUNT: Example = Example {
    name: "word-count",
    wasm: include_bytes!(concat!(env!("OUT_DIR"), "/word-count.wasm32-wasip1.wasm")),
    args: &["--top", "5"],
    sample: Sample::Text,
    result: "counts.json",
};

pub const CSV_STATS: Example = Example {
    name: "csv-stats",
    wasm: include_bytes!(concat!(env!("OUT_DIR"), "/csv-stats.wasm32-wasip1.wasm")),
    args: &[],
    sample: Sample::Csv,
    result: "stats.json",
};

pub const LINREG_TRAIN: Example = Example {
    name: "linreg-train",
    wasm: include_bytes!(concat!(env!("OUT_DIR"), "/linreg-train.wasm32-wasip1.wasm")),
    args: &["--model", "linear", "--epochs", "200"],
    sample: Sample::Regression,
    result: "metrics.json",
};

pub const ALL: [Example; 3] = [WORD_COUNT, CSV_STATS, LINREG_TRAIN];

/// `report`: renders the JSON results of an earlier stage as Markdown; the
/// second stage of the demo's workflow (after `csv-stats`).
pub const REPORT_WASM: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/report.wasm32-wasip1.wasm"));

/// A small deterministic generator (xorshift64*), so sample data is the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately standard normal (sum of 12 uniforms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

const WORDS: &[&str] = &[
    "data",
    "stays",
    "where",
    "it",
    "lives",
    "and",
    "the",
    "algorithm",
    "travels",
    "to",
    "provider",
    "consumer",
    "wasm",
    "sandbox",
    "result",
    "privacy",
    "compute",
    "in",
    "situ",
    "model",
];

/// Writes `files` text files of `words` words each.
pub fn write_text(dir: &Path, files: usize, words: usize) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng::new(7);
    for f in 0..files {
        let mut out = BufWriter::new(std::fs::File::create(dir.join(format!("part-{f:03}.txt")))?);
        for w in 0..words {
            let word = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
            let sep = if w % 12 == 11 { ".\n" } else { " " };
            write!(out, "{word}{sep}")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Writes a CSV of `rows` rows: `id,temperature,humidity,city` (one text column).
pub fn write_csv(path: &Path, rows: usize) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut rng = Rng::new(11);
    let mut out = BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?);
    writeln!(out, "id,temperature,humidity,city")?;
    let cities = ["Berlin", "Lisbon", "\"Paris, FR\"", "Oslo"];
    for i in 0..rows {
        let t = 15.0 + 8.0 * rng.normal();
        let h = 40.0 + 60.0 * rng.unit();
        writeln!(out, "{i},{t:.3},{h:.2},{}", cities[i % cities.len()])?;
    }
    out.flush()
}

/// Writes a regression CSV: `features` columns `x1..xN` and a target `y`
/// (`y = 3 + Σ (i+1)·x_i + noise`, or a 0/1 label of it when `logistic`).
pub fn write_regression(
    path: &Path,
    rows: usize,
    features: usize,
    logistic: bool,
) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut rng = Rng::new(13);
    let mut out = BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?);
    let header: Vec<String> = (1..=features)
        .map(|i| format!("x{i}"))
        .chain(["y".into()])
        .collect();
    writeln!(out, "{}", header.join(","))?;
    for _ in 0..rows {
        let mut y = 3.0;
        for i in 0..features {
            let x = rng.normal();
            y += (i + 1) as f64 * 0.5 * x;
            write!(out, "{x:.5},")?;
        }
        y += 0.1 * rng.normal();
        if logistic {
            writeln!(out, "{}", u8::from(y > 3.0))?;
        } else {
            writeln!(out, "{y:.5}")?;
        }
    }
    out.flush()
}

/// Writes the demo's sample dataset for `sample` into `dir`.
pub fn write_sample(sample: Sample, dir: &Path) -> io::Result<()> {
    match sample {
        Sample::Text => write_text(dir, 4, 2_000),
        Sample::Csv => write_csv(&dir.join("weather.csv"), 5_000),
        Sample::Regression => write_regression(&dir.join("train.csv"), 5_000, 6, false),
    }
}
