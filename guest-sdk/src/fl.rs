//! Federated learning participants (the guest's side of a federated round).
//!
//! In a round, insitu runs the training stage with one more read-only input
//! after the datasets: the **global model**, a directory holding
//! [`MODEL_FILE`] — the parameters as little-endian IEEE 754 doubles, one
//! after the other, nothing else — or empty in round 0, when there is no
//! model yet. It also passes `--fl-round=N` after the stage's own arguments.
//! The guest trains on the datasets and writes its **update** with
//! [`write_update`]: its locally trained parameters, [`UPDATE_FILE`] in the
//! same format, and [`UPDATE_META`], `{"weight": W, "len": L}` with the number
//! of samples it trained on (FedAvg weights updates by it) and the number of
//! parameters. The provider masks the update before anything leaves it and
//! deletes it after the round.
//!
//! ```no_run
//! use insitu_guest::{fl, Error, Job};
//!
//! fn train(job: &Job) -> Result<(), Error> {
//!     let start = fl::global_model(job)?.unwrap_or_else(|| vec![0.0; 3]);
//!     let (params, samples) = (start, 100); // … train on fl::datasets(job) …
//!     fl::write_update(job, &params, samples)?;
//!     Ok(())
//! }
//! # fn main() {}
//! ```

use crate::{Input, Job};
use std::io;
use std::path::Path;

/// The global model's file in the model input.
pub const MODEL_FILE: &str = "model.f64";
/// The update's parameters in the output directory.
pub const UPDATE_FILE: &str = "update.f64";
/// The update's weight and length in the output directory.
pub const UPDATE_META: &str = "update.json";

/// The round this run is part of (`--fl-round`), if it is federated.
pub fn round(job: &Job) -> Option<u64> {
    job.arg("fl-round").and_then(|r| r.parse().ok())
}

/// The dataset inputs: every input but the model's in a federated run, all
/// of them otherwise.
pub fn datasets(job: &Job) -> &[Input] {
    match round(job) {
        Some(_) => &job.inputs[..job.inputs.len().saturating_sub(1)],
        None => &job.inputs,
    }
}

/// The global model this round starts from: `None` in round 0 (an empty
/// model input) and outside federated runs.
///
/// # Errors
/// `InvalidData` when the model file's size is not a multiple of 8; any I/O
/// error reading it.
pub fn global_model(job: &Job) -> io::Result<Option<Vec<f64>>> {
    if round(job).is_none() {
        return Ok(None);
    }
    let Some(input) = job.inputs.last() else {
        return Ok(None);
    };
    let path = input.path.join(MODEL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes, &path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parameters from their on-disk form (little-endian doubles).
///
/// # Errors
/// `InvalidData` when `bytes` is not a whole number of doubles.
pub fn decode(bytes: &[u8], what: &Path) -> io::Result<Vec<f64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes, not a whole number of 8-byte doubles",
                what.display(),
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Parameters in their on-disk form.
pub fn encode(params: &[f64]) -> Vec<u8> {
    params.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Writes this participant's update (atomically): `params` and the number
/// of samples they were trained on.
///
/// # Errors
/// `InvalidInput` for a weight of 0 or a non-finite parameter; any I/O error.
pub fn write_update(job: &Job, params: &[f64], weight: u64) -> io::Result<()> {
    if weight == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an update needs a weight (the number of samples) of at least 1",
        ));
    }
    if let Some(i) = params.iter().position(|p| !p.is_finite()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("parameter {i} is {}, not a finite number", params[i]),
        ));
    }
    job.write_output(UPDATE_FILE, &encode(params))?;
    job.write_output(
        UPDATE_META,
        format!("{{\"weight\": {weight}, \"len\": {}}}\n", params.len()).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path, round: Option<u64>) -> Job {
        let mut argv = vec![
            "t".to_string(),
            format!("--input1={}", dir.join("data").display()),
            format!("--input2={}", dir.join("model").display()),
            format!("--output={}", dir.join("out").display()),
        ];
        if let Some(r) = round {
            argv.push(format!("--fl-round={r}"));
        }
        Job::parse(argv).unwrap()
    }

    #[test]
    fn models_and_updates_round_trip_on_disk() {
        let dir = std::env::temp_dir().join(format!("insitu-guest-fl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["data", "model", "out"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let j = job(&dir, Some(0));
        assert_eq!(global_model(&j).unwrap(), None, "round 0: no model yet");
        assert_eq!(datasets(&j).len(), 1);
        std::fs::write(dir.join("model").join(MODEL_FILE), encode(&[1.5, -2.0])).unwrap();
        assert_eq!(
            global_model(&job(&dir, Some(1))).unwrap(),
            Some(vec![1.5, -2.0])
        );
        assert_eq!(
            global_model(&job(&dir, None)).unwrap(),
            None,
            "not federated"
        );
        assert_eq!(datasets(&job(&dir, None)).len(), 2);
        std::fs::write(dir.join("model").join(MODEL_FILE), [0u8; 7]).unwrap();
        let e = global_model(&j).unwrap_err().to_string();
        assert!(
            e.ends_with("holds 7 bytes, not a whole number of 8-byte doubles"),
            "{e}"
        );

        write_update(&j, &[0.25, 4.0], 120).unwrap();
        let out = dir.join("out");
        assert_eq!(
            decode(&std::fs::read(out.join(UPDATE_FILE)).unwrap(), &out).unwrap(),
            [0.25, 4.0]
        );
        assert_eq!(
            std::fs::read_to_string(out.join(UPDATE_META)).unwrap(),
            "{\"weight\": 120, \"len\": 2}\n"
        );
        assert!(write_update(&j, &[f64::NAN], 1).is_err());
        assert!(write_update(&j, &[1.0], 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
