//! `insitu build`: one project directory in, one WebAssembly file out.

use crate::{Error, Lang, sdk, tools};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    pub lang: Lang,
    /// The WebAssembly file written.
    pub module: PathBuf,
    pub elapsed: Duration,
}

/// The language of the project in `dir`, by its marker file (`Cargo.toml`,
/// `app.py`, `app.js`, looked for in that order).
///
/// # Errors
/// [`Error::NotAProject`].
pub fn detect(dir: &Path) -> Result<Lang, Error> {
    Lang::ALL
        .into_iter()
        .find(|l| dir.join(l.marker()).is_file())
        .ok_or_else(|| Error::NotAProject(dir.to_path_buf()))
}

/// Builds the project in `dir` into `out` (default: `dir/app.wasm`).
///
/// - Rust: `cargo build --release --target wasm32-wasip1`; the package's one
///   binary is copied to `out` (a core module).
/// - Python: componentize-py [`tools::COMPONENTIZE_PY`] with the embedded WIT
///   (world [`sdk::WORLD`]) and the Python SDK on its path; `app.py` must
///   define `Run`.
/// - JavaScript: componentize-js [`tools::COMPONENTIZE_JS`] over a copy of
///   the project's `.js`/`.mjs` files beside the embedded `insitu_guest.js`,
///   with HTTP and fetch disabled (insitu provides no network); `app.js` must
///   export `run`.
///
/// Python and JavaScript compile a copy of the project (see
/// [`copy_sources`]), so nothing in `dir` is written but `out`.
///
/// # Errors
/// [`Error::NotAProject`]; [`Error::ToolMissing`] / [`Error::ToolVersion`]
/// for a compiler not installed at its pinned version;
/// [`Error::BuildFailed`] with the compiler's own message; [`Error::Io`].
pub fn build(dir: &Path, out: Option<&Path>) -> Result<Built, Error> {
    let started = Instant::now();
    let lang = detect(dir)?;
    let module = out.map_or_else(|| dir.join("app.wasm"), Path::to_path_buf);
    let module = if module.is_absolute() {
        module
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("read", ".", e))?
            .join(module)
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("open", dir, e))?;
    let scratch = tempfile::Builder::new()
        .prefix("insitu-build-")
        .tempdir()
        .map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    match lang {
        Lang::Rust => rust(&dir, &module)?,
        Lang::Python => python(&dir, scratch.path(), &module)?,
        Lang::Js => js(&dir, scratch.path(), &module)?,
    }
    Ok(Built {
        lang,
        module,
        elapsed: started.elapsed(),
    })
}

fn wit(scratch: &Path) -> Result<PathBuf, Error> {
    let wit = scratch.join("wit");
    sdk::write(&wit, sdk::WIT)?;
    Ok(wit)
}

fn python(dir: &Path, scratch: &Path, module: &Path) -> Result<(), Error> {
    let tool = tools::PY.find()?;
    let wit = wit(scratch)?;
    let src = scratch.join("src");
    copy_sources(dir, &src, dir)?;
    let lib = scratch.join("python");
    sdk::write(&lib, sdk::PYTHON)?;
    let mut c = Command::new(&tool);
    c.arg("-q")
        .arg("-d")
        .arg(&wit)
        .args(["-w", sdk::WORLD, "componentize", "app", "-p"])
        .arg(&src)
        .arg("-p")
        .arg(&lib)
        .arg("-o")
        .arg(module)
        .current_dir(&src);
    run(c, tools::PY.name, dir)
}

fn js(dir: &Path, scratch: &Path, module: &Path) -> Result<(), Error> {
    let tool = tools::JS.find()?;
    let wit = wit(scratch)?;
    let src = scratch.join("src");
    copy_sources(dir, &src, dir)?;
    sdk::write(&src, sdk::JS)?;
    let mut c = Command::new(&tool);
    c.arg(src.join("app.js"))
        .arg("-w")
        .arg(&wit)
        .args(["-n", sdk::WORLD, "-d", "http", "fetch-event", "-o"])
        .arg(module)
        .current_dir(&src);
    run(c, tools::JS.name, dir)
}

/// Copies the project's files under `from` to `to`, keeping their relative
/// paths: everything but hidden entries, `node_modules`, `__pycache__`,
/// `target` and `.wasm` files (earlier builds).
fn copy_sources(from: &Path, to: &Path, root: &Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(from).map_err(|e| Error::io("read", from, e))? {
        let entry = entry.map_err(|e| Error::io("read", from, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type().map_err(|e| Error::io("read", &path, e))?;
        if name.starts_with('.') {
            continue;
        }
        if kind.is_dir() {
            if !["node_modules", "__pycache__", "target"].contains(&name.as_ref()) {
                copy_sources(&path, to, root)?;
            }
        } else if kind.is_file() && !name.ends_with(".wasm") {
            let target = to.join(path.strip_prefix(root).expect("under the root"));
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(|e| Error::io("create", p, e))?;
            }
            std::fs::copy(&path, &target).map_err(|e| Error::io("copy", &path, e))?;
        }
    }
    Ok(())
}

fn rust(dir: &Path, module: &Path) -> Result<(), Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip1",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(dir);
    let out = c.output().map_err(|e| Error::BuildFailed {
        tool: "cargo",
        project: dir.to_path_buf(),
        detail: format!("cannot start cargo: {e} (install Rust with https://rustup.rs)"),
    })?;
    check(&out, "cargo", dir)?;
    let executables: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect();
    let [wasm] = executables.as_slice() else {
        return Err(Error::BuildFailed {
            tool: "cargo",
            project: dir.to_path_buf(),
            detail: format!(
                "expected one binary, cargo built {}: {executables:?}; an algorithm project has one `fn main`",
                executables.len()
            ),
        });
    };
    std::fs::copy(wasm, module).map_err(|e| Error::io("write", module, e))?;
    Ok(())
}

fn run(mut c: Command, tool: &'static str, dir: &Path) -> Result<(), Error> {
    let out = c.output().map_err(|e| Error::BuildFailed {
        tool,
        project: dir.to_path_buf(),
        detail: format!("cannot start it: {e}"),
    })?;
    check(&out, tool, dir)
}

/// A failed compiler's exit status and the end of what it printed.
fn check(out: &Output, tool: &'static str, dir: &Path) -> Result<(), Error> {
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(20)..].join("\n");
    Err(Error::BuildFailed {
        tool,
        project: dir.to_path_buf(),
        detail: format!("{}\n{tail}", out.status),
    })
}
