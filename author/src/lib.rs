//! Authoring insitu algorithms: what `insitu new` and `insitu build` do.
//!
//! This crate owns the author's side of the guest contract: the project
//! templates for each [`Lang`] ([`new_project`]), the guest SDKs and the
//! `insitu:guest/algorithm` WIT world embedded in the binary ([`sdk`]), and
//! the build of a project into one WebAssembly file ([`build`]): cargo for
//! Rust (a `wasm32-wasip1` module), componentize-py for Python and
//! componentize-js for JavaScript (`wasi:cli/command` components), each
//! compiler pinned ([`tools`]). It runs no guest code; the sandbox checks and
//! runs what it builds.

mod build;
pub mod sdk;
mod templates;
pub mod tools;

pub use build::{Built, build};
pub use templates::new_project;

use std::path::PathBuf;

/// The languages an algorithm may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A cargo package built for `wasm32-wasip1` against the `insitu-guest` crate.
    Rust,
    /// `app.py` defining `Run = insitu_guest.command(main)`, built by componentize-py.
    Python,
    /// `app.js` exporting `run = command(main)`, built by componentize-js.
    Js,
}

impl Lang {
    /// All languages, in the order `--lang` lists them.
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// The name `--lang` takes.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The file whose presence marks a project of this language.
    pub fn marker(self) -> &'static str {
        match self {
            Lang::Rust => "Cargo.toml",
            Lang::Python => "app.py",
            Lang::Js => "app.js",
        }
    }
}

impl std::str::FromStr for Lang {
    type Err = Error;

    fn from_str(s: &str) -> Result<Lang, Error> {
        match s {
            "rust" | "rs" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            other => Err(Error::UnknownLang(other.to_string())),
        }
    }
}

/// What can go wrong creating or building a project.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown language `{0}`; use rust, python or js")]
    UnknownLang(String),
    #[error(
        "`{0}` is not a valid algorithm name; use lowercase letters, digits, `-` and `_`, starting with a letter"
    )]
    BadName(String),
    #[error("{} already exists and is not empty; pick another name or --dir", .0.display())]
    Exists(PathBuf),
    #[error(
        "{} is not an algorithm project: it has no Cargo.toml, app.py or app.js (create one with `insitu new NAME --lang rust|python|js`)",
        .0.display()
    )]
    NotAProject(PathBuf),
    #[error("{tool} {version} was not found (looked in {looked}); {fix}")]
    ToolMissing {
        tool: &'static str,
        version: &'static str,
        looked: String,
        fix: &'static str,
    },
    #[error("{} is {tool} {found}, but insitu build needs {tool} {version}; {fix}", .path.display())]
    ToolVersion {
        tool: &'static str,
        path: PathBuf,
        found: String,
        version: &'static str,
        fix: &'static str,
    },
    #[error("{tool} failed building {}: {detail}", .project.display())]
    BuildFailed {
        tool: &'static str,
        project: PathBuf,
        detail: String,
    },
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
