//! Fixtures shared by the end-to-end tests: guest modules built from source by
//! this crate's build script, a tree fingerprint to prove data untouched,
//! `insitu serve` as a child process, the registry harness and federated
//! learning's data.

pub mod fl;
pub mod native;
pub mod registry;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The hostile guest for wasm32-wasip1 (a core module).
pub const HOSTILE_P1: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hostile.wasm32-wasip1.wasm"));
/// The hostile guest for wasm32-wasip2 (a component).
pub const HOSTILE_P2: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hostile.wasm32-wasip2.wasm"));
/// A wasm32-wasip2 component that connects and resolves names: imports wasi:sockets.
pub const NET_PROBE_P2: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/net-probe.wasm32-wasip2.wasm"));
/// word-count built for wasm32-wasip1 (the same module the demo embeds).
pub const WORD_COUNT_P1: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/word-count.wasm32-wasip1.wasm"));
/// word-count built as a wasm32-wasip2 component.
pub const WORD_COUNT_P2: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/word-count.wasm32-wasip2.wasm"));

/// Everything observable about a tree, links not followed: per entry its
/// kind, size, mode, mtime (ns), inode and content sha256 (regular files) or
/// target (links).
pub fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let common = format!(
            "mode={:o} mtime={}.{} ino={} nlink={}",
            meta.mode(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ino(),
            meta.nlink()
        );
        let kind = if meta.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            stack.extend(children);
            "dir".to_string()
        } else if meta.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(&p).unwrap().display())
        } else {
            let bytes = std::fs::read(&p).unwrap();
            format!(
                "file {} sha256={}",
                bytes.len(),
                hex::encode(Sha256::digest(&bytes))
            )
        };
        out.insert(rel, format!("{kind} {common}"));
    }
    out
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A guest that writes `started` to stdout, then computes forever: for
/// stop, timeout, followed-logs, shutdown and crash tests.
pub const SPINNER_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "started\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop (br 0))))"#;

/// [`SPINNER_WAT`] as a binary module.
pub fn spinner() -> Vec<u8> {
    wat::parse_str(SPINNER_WAT).expect("valid WAT")
}

/// The Python with Selenium that drives the browser tests (`.venv/`), once
/// Debian's Chromium and chromedriver are there; a missing one fails the
/// test with how to install it (browser tests are never skipped).
pub fn browser_python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists()
            && Path::new("/usr/bin/chromium").exists()
            && Path::new("/usr/bin/chromedriver").exists(),
        "the browser test needs .venv (selenium), /usr/bin/chromium and /usr/bin/chromedriver: run scripts/setup"
    );
    python
}

/// `BIN serve --listen 127.0.0.1:0 ARGS…` as a child process; returns it and
/// its URL once it listens. Its stderr is drained so it never blocks.
pub fn serve<I, A>(bin: &Path, args: I) -> (std::process::Child, String)
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("the server exited").unwrap();
        if let Some(url) = line.strip_prefix("insitu gateway listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}
