//! Looks at module bytes before anything compiles them: is this a core module
//! or a component, and does it import only what the guest contract grants?

use crate::Error;
use wasmparser::{Parser, Payload};

/// The two kinds of WebAssembly binary insitu runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A core module for `wasm32-wasip1` (imports `wasi_snapshot_preview1`).
    Core,
    /// A component for `wasm32-wasip2` (a `wasi:cli/command`).
    Component,
}

const P1: &str = "wasi_snapshot_preview1";

/// Classifies `bytes` and checks their imports.
///
/// # Errors
/// [`Error::Rejected`] for anything that is not a WebAssembly binary (naming
/// ELF/Mach-O/PE precompiled artifacts and the text format explicitly), a core
/// module importing from anywhere but WASI preview 1 or importing sockets, a
/// component importing `wasi:http` (which insitu does not provide), and
/// binaries that fail to parse. Components may import `wasi:sockets`: every
/// standard `wasi:cli/command` does (componentize-py, componentize-js, Rust's
/// wasm32-wasip2 std), and the sandbox denies each socket and name-lookup
/// call at run time instead (see `Sandbox::run`).
pub fn inspect(bytes: &[u8], digest: &str) -> Result<ModuleKind, Error> {
    let reject = |reason: String| Error::Rejected {
        digest: digest.to_string(),
        reason,
    };
    if !bytes.starts_with(b"\0asm") {
        let what = if bytes.starts_with(b"\x7fELF") {
            "a precompiled native artifact (ELF), not WebAssembly; insitu compiles modules itself and never loads native code from users"
        } else if bytes.starts_with(&[0xcf, 0xfa, 0xed, 0xfe]) || bytes.starts_with(b"MZ") {
            "a native executable, not WebAssembly"
        } else if bytes.trim_ascii_start().starts_with(b"(") {
            "WebAssembly text (.wat); compile it to a binary first (e.g. `wasm-tools parse`)"
        } else {
            "not a WebAssembly binary (no \\0asm header); pass the .wasm file cargo built for wasm32-wasip1"
        };
        return Err(reject(format!("the file is {what}")));
    }
    let kind = if Parser::is_component(bytes) {
        ModuleKind::Component
    } else if Parser::is_core_wasm(bytes) {
        ModuleKind::Core
    } else {
        return Err(reject("unsupported WebAssembly binary version".into()));
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| reject(format!("malformed WebAssembly: {e}")))?;
        match payload {
            Payload::ImportSection(reader) if kind == ModuleKind::Core => {
                for imports in reader {
                    let imports =
                        imports.map_err(|e| reject(format!("malformed import section: {e}")))?;
                    for import in imports {
                        let (_, import) =
                            import.map_err(|e| reject(format!("malformed import: {e}")))?;
                        check_core_import(import.module, import.name).map_err(reject)?;
                    }
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|e| reject(format!("malformed import: {e}")))?;
                    check_component_import(import.name.name).map_err(reject)?;
                }
            }
            // Nested modules and components are checked through the outer imports.
            Payload::ModuleSection {
                parser: _,
                unchecked_range: _,
            }
            | Payload::ComponentSection {
                parser: _,
                unchecked_range: _,
            } if kind == ModuleKind::Component => {}
            _ => {}
        }
    }
    Ok(kind)
}

fn check_core_import(module: &str, name: &str) -> Result<(), String> {
    if module != P1 {
        return Err(format!(
            "it imports `{module}::{name}`, which insitu does not provide; core modules may import only `{P1}` (build for wasm32-wasip1)"
        ));
    }
    if name.starts_with("sock_") {
        return Err(format!(
            "it imports the networking function `{P1}::{name}`; guests have no network access"
        ));
    }
    Ok(())
}

fn check_component_import(name: &str) -> Result<(), String> {
    if name.starts_with("wasi:http/") {
        return Err(format!(
            "it imports `{name}`; guests have no network access and insitu provides no HTTP: build a `wasi:cli/command` without HTTP (`insitu build` does; componentize-js needs `--disable http fetch-event`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(s: &str) -> Vec<u8> {
        wat::parse_str(s).unwrap()
    }

    #[test]
    fn classifies_and_rejects() {
        let ok = wat(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) (func (export "_start")))"#,
        );
        assert_eq!(inspect(&ok, "d").unwrap(), ModuleKind::Core);

        let sock = wat(
            r#"(module (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32))))"#,
        );
        let e = inspect(&sock, "sha256:x").unwrap_err().to_string();
        assert!(e.contains("module sha256:x rejected: it imports the networking function `wasi_snapshot_preview1::sock_accept`"), "{e}");

        let env = wat(r#"(module (import "env" "open" (func)))"#);
        let e = inspect(&env, "d").unwrap_err().to_string();
        assert!(
            e.contains("it imports `env::open`, which insitu does not provide"),
            "{e}"
        );

        let e = inspect(b"\x7fELF\x02\x01\x01", "d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("precompiled native artifact (ELF)"), "{e}");
        let e = inspect(b"(module)", "d").unwrap_err().to_string();
        assert!(e.contains("WebAssembly text"), "{e}");
        let e = inspect(b"\0asm\x01\0\0\0\x01\xff", "d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed WebAssembly"), "{e}");
    }

    #[test]
    fn components_may_import_sockets_but_not_http() {
        let c = wat(r#"(component (import "wasi:sockets/ip-name-lookup@0.2.0" (instance)))"#);
        assert_eq!(inspect(&c, "d").unwrap(), ModuleKind::Component);
        let c = wat(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#);
        let e = inspect(&c, "d").unwrap_err().to_string();
        assert!(
            e.contains("imports `wasi:http/outgoing-handler@0.2.0`; guests have no network access and insitu provides no HTTP"),
            "{e}"
        );
        let c = wat(r#"(component (import "wasi:cli/environment@0.2.0" (instance)))"#);
        assert_eq!(inspect(&c, "d").unwrap(), ModuleKind::Component);
    }
}
