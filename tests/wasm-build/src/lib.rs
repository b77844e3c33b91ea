//! Compiles guest crates of this workspace to WebAssembly from a build script,
//! so tests and the demo use modules built from source, never committed binaries.
//!
//! The nested `cargo build` uses its own target directory (`target/wasm-build`)
//! so it never waits on the lock of the build that runs the script.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` (name, directory relative to the workspace root) for
/// `target` in release mode, copies each `<name>.wasm` to
/// `$OUT_DIR/<name>.<target>.wasm`, and returns those paths.
///
/// # Panics
/// When the build fails, with the remedy (usually: install the target).
pub fn build(target: &str, packages: &[(&str, &str)]) -> Vec<PathBuf> {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    let root = workspace_root(&manifest);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("run from a build script"));
    let target_dir = root.join("target").join("wasm-build");
    for dir in ["guest-sdk", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(&target_dir)
        // Guests ship without DWARF (the name section stays for backtraces).
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    for (name, dir) in packages {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
        cmd.args(["-p", name]);
    }
    // What the outer build set for itself must not leak into the guest build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo");
    assert!(
        status.success(),
        "building {packages:?} for {target} failed; if the target is missing run `rustup target add {target}` (scripts/setup does it)"
    );
    packages
        .iter()
        .map(|(name, _)| {
            let built = target_dir
                .join(target)
                .join("release")
                .join(format!("{name}.wasm"));
            let dest = out.join(format!("{name}.{target}.wasm"));
            std::fs::copy(&built, &dest).unwrap_or_else(|e| {
                panic!("cannot copy {} to {}: {e}", built.display(), dest.display())
            });
            dest
        })
        .collect()
}

fn workspace_root(start: &Path) -> PathBuf {
    let mut dir = start.to_path_buf();
    loop {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|s| s.contains("[workspace]")) {
            return dir;
        }
        assert!(dir.pop(), "no workspace root above {}", start.display());
    }
}
