//! # insitu-guest: write an insitu algorithm
//!
//! An algorithm is a command-line program that insitu runs next to the data.
//! It receives its datasets as read-only directories and writes its results
//! into one output directory. This crate turns the arguments insitu passes
//! (docs/ARCHITECTURE.md in the insitu repository, "Guest contract") into a typed [`Job`], and gives you helpers to walk inputs,
//! write outputs atomically, log, report progress, and turn your `Result` into
//! an exit code. It has no dependencies and builds for `wasm32-wasip1`,
//! `wasm32-wasip2` and natively from the same source.
//!
//! | guest path | what | argument |
//! |---|---|---|
//! | `/data/inputs/1` … `/data/inputs/N` | datasets, read-only | `--input1=/data/inputs/1` … |
//! | `/data/outputs` | your results | `--output=/data/outputs` |
//! | `/data/logs` | logs (stdout/stderr land here too) | `--logs=/data/logs` |
//!
//! Anything after those arguments is yours ([`Job::args`]).
//!
//! ## A complete algorithm
//!
//! ```no_run
//! use insitu_guest::{Job, Error};
//! use std::io::{BufRead, BufReader};
//!
//! fn main() -> std::process::ExitCode {
//!     insitu_guest::run(count_lines)
//! }
//!
//! /// Counts the lines of every file of every input; writes `lines.json`.
//! fn count_lines(job: &Job) -> Result<(), Error> {
//!     let files = job.input_files()?;
//!     let mut total = 0u64;
//!     for (i, file) in files.iter().enumerate() {
//!         let reader = BufReader::new(std::fs::File::open(file)?);
//!         total += reader.lines().count() as u64;
//!         job.progress((i + 1) as f64 / files.len() as f64, &file.display().to_string());
//!     }
//!     job.log(&format!("{} files, {total} lines", files.len()));
//!     job.write_output("lines.json", format!("{{\"lines\": {total}}}\n").as_bytes())?;
//!     Ok(())
//! }
//! ```
//!
//! Build and try it locally, natively or in the sandbox:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1
//! insitu run --module target/wasm32-wasip1/release/count-lines.wasm \
//!     --input ./my-data --output ./out
//! cargo run -- --input1=./my-data --output=./out --logs=./logs   # natively
//! ```

pub mod fl;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

/// The error type algorithms return: anything that can be displayed.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Exit code when the arguments do not follow the contract.
pub const EXIT_USAGE: u8 = 2;

/// One input of the job: a dataset or a previous stage's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// 1-based position, as in `--input1`.
    pub index: usize,
    /// The directory, e.g. `/data/inputs/1`.
    pub path: PathBuf,
}

impl Input {
    /// Regular files under this input, recursively, sorted by path.
    /// Symbolic links are skipped: inputs are data, not pointers elsewhere.
    ///
    /// # Errors
    /// Any I/O error reading a directory.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        files.sort();
        Ok(files)
    }
}

/// The job insitu gave this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// argv\[0\]: the algorithm's name.
    pub name: String,
    pub inputs: Vec<Input>,
    /// Where results go (`/data/outputs` in the sandbox).
    pub output: PathBuf,
    /// Where logs go (`/data/logs` in the sandbox).
    pub logs: PathBuf,
    /// Arguments after the contract's, in order.
    pub args: Vec<String>,
}

/// The arguments did not follow the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsError(pub String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad arguments: {}", self.0)
    }
}

impl std::error::Error for ArgsError {}

impl Job {
    /// Parses this process's arguments.
    ///
    /// # Errors
    /// [`ArgsError`] when `--output` is missing or an input index is repeated,
    /// zero or leaves a gap.
    pub fn from_env() -> Result<Job, ArgsError> {
        Job::parse(std::env::args())
    }

    /// Parses `argv` (including argv\[0\]). `--inputN=DIR`, `--output=DIR` and
    /// `--logs=DIR` are recognised (also as two words); everything else, in
    /// order, goes to [`Job::args`]. `--logs` defaults to the output dir.
    ///
    /// # Errors
    /// As [`Job::from_env`].
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Job, ArgsError> {
        let mut argv = argv.into_iter();
        let name = argv.next().unwrap_or_else(|| "algorithm".into());
        let mut inputs: Vec<Input> = Vec::new();
        let (mut output, mut logs, mut args) = (None, None, Vec::new());
        while let Some(arg) = argv.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                args.push(arg);
                continue;
            };
            let (key, inline) = match flag.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            let index = key
                .strip_prefix("input")
                .and_then(|n| n.parse::<usize>().ok());
            if key != "output" && key != "logs" && index.is_none() {
                args.push(arg);
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => argv
                    .next()
                    .ok_or_else(|| ArgsError(format!("--{key} needs a directory")))?,
            };
            match (key.as_str(), index) {
                ("output", _) => output = Some(PathBuf::from(value)),
                ("logs", _) => logs = Some(PathBuf::from(value)),
                (_, Some(0)) => {
                    return Err(ArgsError("inputs are numbered from 1 (--input1)".into()));
                }
                (_, Some(i)) => {
                    if inputs.iter().any(|x| x.index == i) {
                        return Err(ArgsError(format!("--input{i} given twice")));
                    }
                    inputs.push(Input {
                        index: i,
                        path: PathBuf::from(value),
                    });
                }
                _ => unreachable!("filtered above"),
            }
        }
        inputs.sort_by_key(|i| i.index);
        if let Some((pos, input)) = inputs
            .iter()
            .enumerate()
            .find(|(pos, i)| i.index != pos + 1)
        {
            return Err(ArgsError(format!(
                "--input{} given but --input{} missing; inputs are numbered 1, 2, 3, ...",
                input.index,
                pos + 1
            )));
        }
        let output = output.ok_or_else(|| ArgsError("--output=DIR is required".into()))?;
        let logs = logs.unwrap_or_else(|| output.clone());
        Ok(Job {
            name,
            inputs,
            output,
            logs,
            args,
        })
    }

    /// Every regular file of every input, input by input, each sorted by path.
    ///
    /// # Errors
    /// Any I/O error reading an input.
    pub fn input_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut all = Vec::new();
        for input in &self.inputs {
            all.extend(input.files()?);
        }
        Ok(all)
    }

    /// The value of an extra argument `--name=value` or `--name value`.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix(&flag) {
                if let Some(v) = v.strip_prefix('=') {
                    return Some(v);
                }
                if v.is_empty() {
                    return it.next().map(String::as_str);
                }
            }
        }
        None
    }

    /// Path of `relative` inside the output directory.
    ///
    /// # Errors
    /// `InvalidInput` if `relative` is absolute or contains `..`.
    pub fn output_path(&self, relative: &str) -> io::Result<PathBuf> {
        let rel = Path::new(relative);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) || relative.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("output name `{relative}` must be a relative path without `..`"),
            ));
        }
        Ok(self.output.join(rel))
    }

    /// Writes an output file atomically: readers see the old file or the whole
    /// new one, never a part. Creates parent directories.
    ///
    /// # Errors
    /// As [`Job::output_path`], and any I/O error.
    pub fn write_output(&self, relative: &str, bytes: &[u8]) -> io::Result<()> {
        let mut f = self.create_output(relative)?;
        f.write_all(bytes)?;
        f.commit()
    }

    /// Starts an atomic output file; nothing is visible until
    /// [`OutputFile::commit`]; dropping it uncommitted removes it.
    ///
    /// # Errors
    /// As [`Job::output_path`], and any I/O error.
    pub fn create_output(&self, relative: &str) -> io::Result<OutputFile> {
        let path = self.output_path(relative)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let tmp = path.with_file_name(format!(".{name}.partial"));
        let file = File::create(&tmp)?;
        Ok(OutputFile {
            file: Some(io::BufWriter::new(file)),
            tmp,
            path,
        })
    }

    /// Writes a line to stderr (`stderr.log` in the logs dir under insitu).
    pub fn log(&self, message: &str) {
        eprintln!("[{}] {message}", self.name);
    }

    /// Records progress (0.0 to 1.0) as a JSON line in `progress.jsonl` in
    /// the logs dir. Failures to record progress are ignored.
    pub fn progress(&self, fraction: f64, message: &str) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let line = format!(
            "{{\"fraction\":{fraction:.4},\"message\":{}}}\n",
            json_string(message)
        );
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join("progress.jsonl"))
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// An output file being written; see [`Job::create_output`].
#[derive(Debug)]
pub struct OutputFile {
    file: Option<io::BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl OutputFile {
    /// Flushes and moves the file into place.
    ///
    /// # Errors
    /// Any I/O error flushing or renaming.
    pub fn commit(mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.into_inner().map_err(|e| e.into_error())?.sync_all().ok();
        }
        fs::rename(&self.tmp, &self.path)
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().map_or(Ok(0), |f| f.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Quotes `s` as a JSON string.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs an algorithm: parses the job, calls `main`, and maps the result to
/// the exit code (0 on success; 1 with `error: …` on stderr on failure;
/// [`EXIT_USAGE`] when the arguments do not follow the contract).
pub fn run<F>(main: F) -> ExitCode
where
    F: FnOnce(&Job) -> Result<(), Error>,
{
    let job = match Job::from_env() {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match main(&job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_contract() {
        let job = Job::parse(argv(&[
            "wc",
            "--input2=/data/inputs/2",
            "--input1=/data/inputs/1",
            "--output=/data/outputs",
            "--logs=/data/logs",
            "--top",
            "5",
            "extra",
        ]))
        .unwrap();
        assert_eq!(job.name, "wc");
        assert_eq!(job.inputs[0].path, PathBuf::from("/data/inputs/1"));
        assert_eq!(job.inputs[1].index, 2);
        assert_eq!(job.logs, PathBuf::from("/data/logs"));
        assert_eq!(job.args, argv(&["--top", "5", "extra"]));
        assert_eq!(job.arg("top"), Some("5"));
        assert_eq!(job.arg("missing"), None);
    }

    #[test]
    fn refuses_bad_contracts() {
        let e = Job::parse(argv(&["a", "--input1=x"])).unwrap_err();
        assert_eq!(e.to_string(), "bad arguments: --output=DIR is required");
        let e = Job::parse(argv(&["a", "--input2=x", "--output=o"])).unwrap_err();
        assert!(e.0.contains("--input2 given but --input1 missing"), "{e}");
        let e = Job::parse(argv(&["a", "--input1=x", "--input1=y", "--output=o"])).unwrap_err();
        assert_eq!(e.0, "--input1 given twice");
    }

    #[test]
    fn outputs_are_atomic_and_confined() {
        let dir = std::env::temp_dir().join(format!("insitu-guest-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let job = Job::parse(argv(&["a", &format!("--output={}", dir.display())])).unwrap();
        assert!(job.write_output("../escape", b"x").is_err());
        assert!(job.write_output("/abs", b"x").is_err());
        {
            let mut f = job.create_output("sub/partial.txt").unwrap();
            f.write_all(b"half").unwrap();
            // dropped without commit
        }
        assert!(!dir.join("sub/partial.txt").exists());
        assert!(!dir.join("sub/.partial.txt.partial").exists());
        job.write_output("sub/ok.txt", b"done").unwrap();
        assert_eq!(fs::read(dir.join("sub/ok.txt")).unwrap(), b"done");
        job.progress(0.5, "half \"way\"");
        let p = fs::read_to_string(dir.join("progress.jsonl")).unwrap();
        assert_eq!(
            p,
            "{\"fraction\":0.5000,\"message\":\"half \\\"way\\\"\"}\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
