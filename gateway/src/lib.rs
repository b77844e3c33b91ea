//! The `insitu` command line and (growing) HTTP gateway. `main.rs` only parses
//! arguments; each command lives in [`commands`]; [`auth`] verifies Nevermined
//! JWT grants and issues access tokens.

pub mod auth;
pub mod client;
pub mod commands;
pub mod config;
pub mod ddo;
pub mod error;
pub mod http;
pub mod ids;
pub mod provider;

/// Stops `RUST_BACKTRACE=1` from costing every error a native backtrace,
/// unless `RUST_LIB_BACKTRACE` says otherwise; panics keep theirs.
///
/// Every guest that ends with `proc_exit` (any wasm32-wasip1 `main`) comes
/// back from wasmtime as an error value, and with `RUST_BACKTRACE=1` set, as
/// it often is on servers, each error value captured a native backtrace:
/// 3.7 % of the CPU of `insitu-bench http`. This sets the standard library's
/// answer for error backtraces to "off" (what `RUST_LIB_BACKTRACE=0` asks,
/// see `std::backtrace`) and leaves the environment as it was, so children
/// inherit it unchanged. Call it first in `main`, before any other thread.
pub fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_some()
        || std::env::var_os("RUST_BACKTRACE").is_none()
    {
        return;
    }
    // SAFETY: `main` calls this before it starts any thread, so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    // The standard library reads the variables once, at the first capture,
    // and keeps the answer for the life of the process.
    drop(std::backtrace::Backtrace::capture());
    // SAFETY: as above.
    unsafe { std::env::remove_var("RUST_LIB_BACKTRACE") };
}

#[cfg(test)]
mod tests {
    use std::backtrace::{Backtrace, BacktraceStatus};

    /// Run in a child process of its own (the switch is once per process):
    /// with `RUST_BACKTRACE=1`, errors capture no backtrace and the
    /// environment is left as it was.
    #[test]
    fn error_backtraces_are_off_and_the_environment_unchanged() {
        if std::env::var_os("INSITU_TEST_BACKTRACE_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tests::error_backtraces_are_off_and_the_environment_unchanged",
                    "--test-threads=1",
                ])
                .env("INSITU_TEST_BACKTRACE_CHILD", "1")
                .env("RUST_BACKTRACE", "1")
                .env_remove("RUST_LIB_BACKTRACE")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "child: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        super::quiet_error_backtraces();
        assert_eq!(Backtrace::capture().status(), BacktraceStatus::Disabled);
        assert!(std::env::var_os("RUST_LIB_BACKTRACE").is_none());
        assert_eq!(std::env::var("RUST_BACKTRACE").unwrap(), "1");
        // Asked for explicitly, backtraces stay available.
        assert_eq!(
            Backtrace::force_capture().status(),
            BacktraceStatus::Captured
        );
    }
}
