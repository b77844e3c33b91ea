//! `insitu new` and `insitu build`: start an algorithm in Rust, Python or
//! JavaScript and build it into the WebAssembly file `insitu run` and
//! `insitu push` take (the work lives in `insitu_author`).

use anyhow::Context;
use clap::Args;
use insitu_author::Lang;
use std::path::PathBuf;

/// `insitu new`: a project that builds and runs as created.
#[derive(Args, Debug, Clone)]
pub struct NewCommand {
    /// The algorithm's name (lowercase letters, digits, `-`, `_`); also its directory.
    pub name: String,
    /// The language: rust (a wasm32-wasip1 module), python or js (components).
    #[arg(long, default_value = "rust", value_parser = parse_lang)]
    pub lang: Lang,
    /// Where to create the project's directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    s.parse().map_err(|e: insitu_author::Error| e.to_string())
}

impl NewCommand {
    /// Creates the project; prints its directory and the next steps.
    ///
    /// # Errors
    /// A bad name, an existing non-empty directory, I/O.
    pub fn execute(self) -> anyhow::Result<bool> {
        let dir = insitu_author::new_project(&self.dir, &self.name, self.lang)?;
        let d = dir.display();
        eprintln!(
            "created the {} algorithm {}; next:\n  insitu build {d}\n  insitu run --module {d}/app.wasm --input DATA_DIR --output OUT_DIR",
            self.lang.name(),
            self.name,
        );
        println!("{d}");
        Ok(true)
    }
}

/// `insitu build`: one project in, one WebAssembly file out.
#[derive(Args, Debug, Clone)]
pub struct BuildCommand {
    /// The project directory (with Cargo.toml, app.py or app.js).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the module or component [default: DIR/app.wasm].
    #[arg(long, short = 'o', value_name = "FILE.wasm")]
    pub output: Option<PathBuf>,
}

impl BuildCommand {
    /// Builds, checks what was built as the sandbox will, prints its path.
    ///
    /// # Errors
    /// Not a project, a compiler missing or at another version, a failed
    /// build, or a result the sandbox would refuse.
    pub fn execute(self) -> anyhow::Result<bool> {
        let built = insitu_author::build(&self.dir, self.output.as_deref())?;
        let bytes = std::fs::read(&built.module)
            .with_context(|| format!("cannot read {}", built.module.display()))?;
        let digest = insitu_runtime::digest::sha256_digest(&bytes);
        let kind = insitu_runtime::sandbox::inspect::inspect(&bytes, &digest)?;
        eprintln!(
            "built the {} {} {} ({:.1} MB, {digest}) in {:.1} s",
            built.lang.name(),
            match kind {
                insitu_runtime::sandbox::ModuleKind::Core => "module",
                insitu_runtime::sandbox::ModuleKind::Component => "component",
            },
            built.module.display(),
            bytes.len() as f64 / 1e6,
            built.elapsed.as_secs_f64(),
        );
        println!("{}", built.module.display());
        Ok(true)
    }
}
