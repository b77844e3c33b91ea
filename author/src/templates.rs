//! `insitu new`: a project that builds and runs as created. Every template is
//! the same algorithm — count the lines of every input file, write
//! `lines.json`, report progress — so authors start from working code.

use crate::{Error, Lang, sdk};
use std::path::{Path, PathBuf};

const RUST_MAIN: &str = r#"//! {name}: counts the lines of every file of every input; writes `lines.json`.

use insitu_guest::{Error, Job};
use std::io::{BufRead, BufReader};

fn main() -> std::process::ExitCode {
    insitu_guest::run(count_lines)
}

fn count_lines(job: &Job) -> Result<(), Error> {
    let files = job.input_files()?;
    let mut lines = 0u64;
    for (i, path) in files.iter().enumerate() {
        lines += BufReader::new(std::fs::File::open(path)?).lines().count() as u64;
        job.progress((i + 1) as f64 / files.len() as f64, &path.display().to_string());
    }
    job.write_output(
        "lines.json",
        format!("{{\"files\": {}, \"lines\": {lines}}}\n", files.len()).as_bytes(),
    )?;
    job.log(&format!("{} files, {lines} lines", files.len()));
    Ok(())
}
"#;

const RUST_MANIFEST: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
insitu-guest = { path = "insitu-guest" }

# A project of its own, even inside another workspace.
[workspace]

[profile.release]
codegen-units = 1
lto = true
"#;

const PYTHON_APP: &str = r#""""{name}: counts the lines of every file of every input; writes lines.json.

Build it with `insitu build`, run it with `insitu run --module app.wasm
--input DIR --output DIR`. The SDK (insitu_guest) comes with insitu build.
"""

import insitu_guest


def count_lines(job):
    files = job.input_files()
    lines = 0
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            lines += sum(1 for _ in f)
        job.progress((i + 1) / len(files), path)
    job.write_output("lines.json", '{"files": %d, "lines": %d}\n' % (len(files), lines))
    job.log(f"{len(files)} files, {lines} lines")


# The component's entry point (wasi:cli/run).
Run = insitu_guest.command(count_lines)
"#;

const JS_APP: &str = r#"// {name}: counts the lines of every file of every input; writes lines.json.
//
// Build it with `insitu build`, run it with `insitu run --module app.wasm
// --input DIR --output DIR`. ./insitu_guest.js comes with insitu build.

import { command, readFile } from "./insitu_guest.js";

function countLines(job) {
  const files = job.inputFiles();
  let lines = 0;
  files.forEach((path, i) => {
    const bytes = readFile(path);
    for (const b of bytes) if (b === 10) lines += 1;
    if (bytes.length && bytes[bytes.length - 1] !== 10) lines += 1;
    job.progress((i + 1) / files.length, path);
  });
  job.writeOutput("lines.json", `{"files": ${files.length}, "lines": ${lines}}\n`);
  job.log(`${files.length} files, ${lines} lines`);
}

// The component's entry point (wasi:cli/run).
export const run = command(countLines);
"#;

const GITIGNORE: &str = "/target\n*.wasm\n__pycache__/\n";

/// Creates project `name` of language `lang` in `parent` (`parent/name`);
/// returns its directory. A Rust project vendors the `insitu-guest` crate in
/// `insitu-guest/`; Python and JavaScript projects get their SDK from
/// `insitu build`.
///
/// # Errors
/// [`Error::BadName`] for a name cargo or a file system would trip on;
/// [`Error::Exists`] when the directory exists and is not empty (nothing is
/// written then); [`Error::Io`].
pub fn new_project(parent: &Path, name: &str, lang: Lang) -> Result<PathBuf, Error> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(Error::BadName(name.to_string()));
    }
    let dir = parent.join(name);
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Exists(dir));
    }
    let fill = |t: &str| t.replace("{name}", name);
    let files: Vec<(String, String)> = match lang {
        Lang::Rust => {
            let mut f = vec![
                ("Cargo.toml".to_string(), fill(RUST_MANIFEST)),
                ("src/main.rs".to_string(), fill(RUST_MAIN)),
                (
                    "insitu-guest/Cargo.toml".to_string(),
                    sdk::RUST_MANIFEST.to_string(),
                ),
            ];
            f.extend(
                sdk::RUST
                    .iter()
                    .map(|(rel, text)| (format!("insitu-guest/{rel}"), text.to_string())),
            );
            f
        }
        Lang::Python => vec![("app.py".to_string(), fill(PYTHON_APP))],
        Lang::Js => vec![("app.js".to_string(), fill(JS_APP))],
    };
    for (rel, text) in files.iter().chain(std::iter::once(&(
        ".gitignore".to_string(),
        GITIGNORE.to_string(),
    ))) {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io("create", p, e))?;
        }
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(dir)
}
