//! The guest SDKs and the WIT world, embedded in the binary so that
//! `insitu new` and `insitu build` need nothing but the pinned compilers.

use crate::Error;
use std::path::Path;

/// A file written under a directory: its relative path and contents.
pub type File = (&'static str, &'static str);

macro_rules! files {
    ($($rel:literal => $src:literal),* $(,)?) => {
        &[$(($rel, include_str!(concat!("../../guest-sdk/", $src)))),*]
    };
}

/// The WIT of the `insitu:guest/algorithm` world and the WASI 0.2 packages it
/// includes (a `wit/` directory for componentize-py/js `-d`/`-w`).
pub const WIT: &[File] = files![
    "world.wit" => "wit/world.wit",
    "deps/cli.wit" => "wit/deps/cli.wit",
    "deps/clocks.wit" => "wit/deps/clocks.wit",
    "deps/filesystem.wit" => "wit/deps/filesystem.wit",
    "deps/io.wit" => "wit/deps/io.wit",
    "deps/random.wit" => "wit/deps/random.wit",
    "deps/sockets.wit" => "wit/deps/sockets.wit",
];

/// The world every component is built for.
pub const WORLD: &str = "insitu:guest/algorithm";

/// The Python SDK (a directory to put on componentize-py's `-p` path).
pub const PYTHON: &[File] = files![
    "insitu_guest/__init__.py" => "python/insitu_guest/__init__.py",
    "insitu_guest/fl.py" => "python/insitu_guest/fl.py",
];

/// The JavaScript SDK, imported by apps as `./insitu_guest.js`.
pub const JS: &[File] = files!["insitu_guest.js" => "js/insitu_guest.js"];

/// The Rust SDK (the `insitu-guest` crate) as `insitu new --lang rust`
/// vendors it: a standalone package beside the project's own.
pub const RUST: &[File] = files![
    "src/lib.rs" => "src/lib.rs",
    "src/fl.rs" => "src/fl.rs",
];

/// The vendored Rust SDK's manifest (the workspace's, without workspace
/// inheritance).
pub const RUST_MANIFEST: &str = r#"[package]
name = "insitu-guest"
description = "Write insitu algorithms: the typed guest contract (vendored by insitu new)."
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
"#;

/// Writes `files` under `dir`, creating directories.
///
/// # Errors
/// [`Error::Io`] naming the file that could not be written.
pub fn write(dir: &Path, files: &[File]) -> Result<(), Error> {
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}
