//! The pinned compilers `insitu build` drives, and where it finds them.
//!
//! Python and JavaScript components are built by componentize-py and
//! componentize-js at exactly the versions below (a component's bytes, and so
//! its digest, depend on them). `scripts/setup` installs both into the tools
//! directory: `$INSITU_TOOLS`, default `~/.cache/insitu/tools`, as
//! `python/bin/componentize-py` (a virtualenv) and
//! `js/node_modules/.bin/componentize-js` (from the lockfile in
//! `guest-sdk/js/tools/`). A compiler on the `PATH` is used when the tools
//! directory has none, if its version matches.

use crate::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-py version Python components are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js version JavaScript components are built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// One pinned compiler.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
    /// Its path inside the tools directory.
    pub in_tools: &'static str,
    /// How to install it when missing or at another version.
    pub fix: &'static str,
}

/// componentize-py, pinned.
pub const PY: Tool = Tool {
    name: "componentize-py",
    version: COMPONENTIZE_PY,
    in_tools: "python/bin/componentize-py",
    fix: "run scripts/setup, or `pip install componentize-py==0.25.1` into a virtualenv on the PATH",
};

/// componentize-js, pinned.
pub const JS: Tool = Tool {
    name: "componentize-js",
    version: COMPONENTIZE_JS,
    in_tools: "js/node_modules/.bin/componentize-js",
    fix: "run scripts/setup, or `npm install -g @bytecodealliance/componentize-js@0.23.0` (Node.js >= 20)",
};

/// The tools directory: `$INSITU_TOOLS`, else `~/.cache/insitu/tools`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INSITU_TOOLS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/insitu/tools")
}

impl Tool {
    /// The executable at the pinned version: in the tools directory, else on
    /// the `PATH`.
    ///
    /// # Errors
    /// [`Error::ToolMissing`] when neither has it; [`Error::ToolVersion`] when
    /// the one found reports another version.
    pub fn find(&self) -> Result<PathBuf, Error> {
        self.find_in(&dir(), std::env::var_os("PATH").as_deref())
    }

    /// [`Tool::find`] in tools directory `tools` and search path `path`.
    ///
    /// # Errors
    /// As [`Tool::find`].
    pub fn find_in(&self, tools: &Path, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, Error> {
        let in_tools = tools.join(self.in_tools);
        let on_path = path
            .map(|p| {
                std::env::split_paths(p)
                    .map(|d| d.join(self.name))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let Some(path) = std::iter::once(in_tools.clone())
            .chain(on_path)
            .find(|p| is_executable(p))
        else {
            return Err(Error::ToolMissing {
                tool: self.name,
                version: self.version,
                looked: format!("{} and the PATH", in_tools.display()),
                fix: self.fix,
            });
        };
        let found = version_of(&path);
        if found.as_deref() != Some(self.version) {
            return Err(Error::ToolVersion {
                tool: self.name,
                path,
                found: found.unwrap_or_else(|| "of an unknown version".into()),
                version: self.version,
                fix: self.fix,
            });
        }
        Ok(path)
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last word `TOOL --version` prints (`componentize-py 0.25.1`, `0.23.0`).
fn version_of(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last().map(str::to_string)
}
