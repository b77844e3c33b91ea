//! linreg-train: trains a linear or logistic regression on CSV inputs.
//!
//! Every CSV file has a header; all columns must be numeric. The target is the
//! column named by `--target NAME` (default: the last column). Features are
//! standardised; training is full-batch gradient descent.
//!
//! Extra arguments: `--model linear|logistic` (default linear), `--epochs N`
//! (default 300), `--lr RATE` (default 0.1), `--l2 LAMBDA` (default 0).
//! Writes `model.json` (weights in the original feature scale, bias, feature
//! names) and `metrics.json` (linear: mse, r2; logistic: accuracy, log loss).
//!
//! As a federated participant (`--fl-round=N`, [`insitu_guest::fl`]) it reads
//! the datasets but not the last input, which holds the global model — the
//! weights in the original feature scale followed by the bias, or nothing in
//! round 0 — trains `--epochs` from there, and writes its update in the same
//! form, weighted by its number of rows, instead of `model.json`.

use insitu_guest::{Error, Job};
use std::io::{BufRead, BufReader};

fn main() -> std::process::ExitCode {
    insitu_guest::run(train)
}

struct Data {
    names: Vec<String>,
    /// Row-major features, `rows * features`.
    x: Vec<f64>,
    y: Vec<f64>,
    features: usize,
}

fn load(inputs: &[insitu_guest::Input], target: Option<&str>) -> Result<Data, Error> {
    let mut data = Data {
        names: Vec::new(),
        x: Vec::new(),
        y: Vec::new(),
        features: 0,
    };
    let mut header: Option<Vec<String>> = None;
    let mut target_col = 0;
    let mut files = Vec::new();
    for input in inputs {
        files.extend(input.files()?);
    }
    for path in files {
        let mut lines = BufReader::new(std::fs::File::open(&path)?).lines();
        let Some(first) = lines.next().transpose()? else {
            continue;
        };
        let names: Vec<String> = first.split(',').map(|s| s.trim().to_string()).collect();
        match &header {
            None => {
                target_col = match target {
                    Some(t) => names
                        .iter()
                        .position(|n| n == t)
                        .ok_or_else(|| format!("no column named `{t}` in {}", path.display()))?,
                    None => names.len().checked_sub(1).ok_or("empty header")?,
                };
                data.names = names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != target_col)
                    .map(|(_, n)| n.clone())
                    .collect();
                data.features = data.names.len();
                header = Some(names);
            }
            Some(h) if *h != names => {
                return Err(
                    format!("{} has header {names:?}, expected {h:?}", path.display()).into(),
                );
            }
            Some(_) => {}
        }
        for (n, line) in lines.enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let before = data.x.len();
            for (i, field) in line.split(',').enumerate() {
                let v: f64 = field.trim().parse().map_err(|_| {
                    format!(
                        "{} line {}: `{}` is not a number",
                        path.display(),
                        n + 2,
                        field.trim()
                    )
                })?;
                if i == target_col {
                    data.y.push(v);
                } else {
                    data.x.push(v);
                }
            }
            if data.x.len() - before != data.features
                || data.y.len() * data.features != data.x.len()
            {
                return Err(
                    format!("{} line {}: wrong number of fields", path.display(), n + 2).into(),
                );
            }
        }
    }
    if data.y.is_empty() {
        return Err("no training rows in the inputs".into());
    }
    Ok(data)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn train(job: &Job) -> Result<(), Error> {
    let logistic = match job.arg("model").unwrap_or("linear") {
        "linear" => false,
        "logistic" => true,
        other => return Err(format!("--model must be linear or logistic, not `{other}`").into()),
    };
    let epochs: usize = job
        .arg("epochs")
        .map(str::parse)
        .transpose()?
        .unwrap_or(300);
    let lr: f64 = job.arg("lr").map(str::parse).transpose()?.unwrap_or(0.1);
    let l2: f64 = job.arg("l2").map(str::parse).transpose()?.unwrap_or(0.0);
    let federated = insitu_guest::fl::round(job).is_some();
    let mut d = load(insitu_guest::fl::datasets(job), job.arg("target"))?;
    let (n, f) = (d.y.len(), d.features);

    // Standardise features in place.
    let mut mean = vec![0.0; f];
    let mut sd = vec![0.0; f];
    for row in d.x.chunks_exact(f) {
        for j in 0..f {
            mean[j] += row[j];
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    for row in d.x.chunks_exact(f) {
        for j in 0..f {
            sd[j] += (row[j] - mean[j]).powi(2);
        }
    }
    sd.iter_mut()
        .for_each(|s| *s = (*s / n as f64).sqrt().max(1e-12));
    for row in d.x.chunks_exact_mut(f) {
        for j in 0..f {
            row[j] = (row[j] - mean[j]) / sd[j];
        }
    }

    // Start from the global model (original scale) when federated.
    let (mut w, mut b) = match insitu_guest::fl::global_model(job)? {
        Some(global) if global.len() != f + 1 => {
            return Err(format!(
                "the global model has {} parameters; {f} features and a bias need {}",
                global.len(),
                f + 1
            )
            .into());
        }
        Some(global) => {
            let w: Vec<f64> = global[..f].iter().zip(&sd).map(|(w, s)| w * s).collect();
            let b = global[f]
                + global[..f]
                    .iter()
                    .zip(&mean)
                    .map(|(w, m)| w * m)
                    .sum::<f64>();
            (w, b)
        }
        None => (vec![0.0; f], 0.0),
    };
    let mut grad = vec![0.0; f];
    for epoch in 0..epochs {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut gb = 0.0;
        for (row, &y) in d.x.chunks_exact(f).zip(&d.y) {
            let z: f64 = b + row.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>();
            let err = if logistic { sigmoid(z) - y } else { z - y };
            for (g, x) in grad.iter_mut().zip(row) {
                *g += err * x;
            }
            gb += err;
        }
        for (wj, g) in w.iter_mut().zip(&grad) {
            *wj -= lr * (g / n as f64 + l2 * *wj);
        }
        b -= lr * gb / n as f64;
        if epoch % 50 == 0 {
            job.progress(epoch as f64 / epochs as f64, &format!("epoch {epoch}"));
        }
    }

    // Metrics on the training data.
    let predict = |row: &[f64]| b + row.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>();
    let metrics = if logistic {
        let (mut correct, mut loss) = (0usize, 0.0);
        for (row, &y) in d.x.chunks_exact(f).zip(&d.y) {
            let p = sigmoid(predict(row)).clamp(1e-12, 1.0 - 1e-12);
            correct += usize::from((p >= 0.5) == (y >= 0.5));
            loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        }
        serde_json::json!({"rows": n, "accuracy": correct as f64 / n as f64, "log_loss": loss / n as f64})
    } else {
        let ybar = d.y.iter().sum::<f64>() / n as f64;
        let (mut sse, mut sst) = (0.0, 0.0);
        for (row, &y) in d.x.chunks_exact(f).zip(&d.y) {
            sse += (predict(row) - y).powi(2);
            sst += (y - ybar).powi(2);
        }
        serde_json::json!({"rows": n, "mse": sse / n as f64, "r2": if sst > 0.0 { 1.0 - sse / sst } else { 1.0 }})
    };
    // Back to the original feature scale.
    let weights: Vec<f64> = w.iter().zip(&sd).map(|(w, s)| w / s).collect();
    let bias = b - weights.iter().zip(&mean).map(|(w, m)| w * m).sum::<f64>();
    d.x.clear();
    if federated {
        let mut params = weights.clone();
        params.push(bias);
        insitu_guest::fl::write_update(job, &params, n as u64)?;
        job.write_output(
            "metrics.json",
            serde_json::to_string_pretty(&metrics)?.as_bytes(),
        )?;
        job.log(&format!(
            "federated update from {n} rows x {f} features: {metrics}"
        ));
        return Ok(());
    }
    let model = serde_json::json!({
        "model": if logistic { "logistic" } else { "linear" },
        "features": d.names,
        "weights": weights,
        "bias": bias,
        "epochs": epochs,
        "learning_rate": lr,
    });
    job.write_output(
        "model.json",
        serde_json::to_string_pretty(&model)?.as_bytes(),
    )?;
    job.write_output(
        "metrics.json",
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    job.log(&format!("trained on {n} rows x {f} features: {metrics}"));
    Ok(())
}
