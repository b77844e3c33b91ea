//! Federated-learning fixtures: shards of a generated logistic problem and
//! the accuracy of a model on them.

use std::io::Write;
use std::path::Path;

/// One labelled row: features and label (0 or 1).
pub type Row = (Vec<f64>, f64);

/// Writes `rows` rows of `features` features (CSV with a header, label
/// last) from `seed`: the label is whether Σ over the first four features of
/// (i+1)/2·xᵢ, plus noise, is positive. Returns the rows.
pub fn write_shard(path: &Path, rows: usize, seed: u64, features: usize) -> Vec<Row> {
    let mut rng = insitu_examples::Rng::new(seed);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let header: Vec<String> = (1..=features).map(|i| format!("x{i}")).collect();
    writeln!(out, "{},y", header.join(",")).unwrap();
    let mut data = Vec::new();
    for _ in 0..rows {
        let x: Vec<f64> = (0..features).map(|_| rng.normal()).collect();
        let z: f64 = x
            .iter()
            .take(4)
            .enumerate()
            .map(|(i, x)| (i + 1) as f64 * 0.5 * x)
            .sum::<f64>()
            + 0.8 * rng.normal();
        let y = f64::from(u8::from(z > 0.0));
        for v in &x {
            write!(out, "{v:.5},").unwrap();
        }
        writeln!(out, "{y}").unwrap();
        data.push((x, y));
    }
    data
}

/// The share of `data` a logistic model of 4 weights and a bias (`params`)
/// labels right.
pub fn accuracy(params: &[f64], data: &[Row]) -> f64 {
    let correct = data
        .iter()
        .filter(|(x, y)| {
            let z = params[4] + x.iter().zip(params).map(|(x, w)| x * w).sum::<f64>();
            (z >= 0.0) == (*y >= 0.5)
        })
        .count();
    correct as f64 / data.len() as f64
}
