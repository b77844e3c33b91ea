//! What the commands share: the caches' place, a local sandbox, a runtime,
//! log setup, the provider's key and keystore password, printing one line.

use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig};
use std::path::PathBuf;

/// Prints `line` (an identifier, a token) on stdout.
///
/// # Errors
/// `line`'s.
pub(crate) fn print_line(line: anyhow::Result<String>) -> anyhow::Result<bool> {
    line.map(|l| {
        println!("{l}");
        true
    })
}

/// The default cache root: `$XDG_CACHE_HOME/insitu`, else
/// `$HOME/.cache/insitu`, else none. Compiled modules go to `modules/`,
/// image blobs to `blobs/`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("insitu"))
}

/// A sandbox for one job per process: on-demand allocation, compiled modules
/// cached under `cache_root/modules`.
pub fn local_sandbox(cache_root: Option<&std::path::Path>) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig {
        max: Limits::ceiling(),
        concurrency: 0,
        cache_dir: cache_root.map(|r| r.join("modules")),
        ..SandboxConfig::default()
    })?)
}

/// A current-thread runtime with timers and network IO, for one job or pull.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Sends `tracing` output to stderr as text or JSON lines; the filter comes
/// from `INSITU_LOG` (e.g. `debug`, `insitu_runtime=trace`) [default: info].
pub fn init_logs(format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("INSITU_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The provider's key: `INSITU_PROVIDER_KEY` (hex) if set, else `file`, else
/// `<data_dir>/provider.key` (created on first use, as `insitu serve` does).
///
/// # Errors
/// A malformed key or an unreadable file.
pub fn provider_key(
    data_dir: &std::path::Path,
    file: Option<&std::path::Path>,
    keystore: Option<&std::path::Path>,
) -> anyhow::Result<insitu_runtime::receipt::ProviderKey> {
    use insitu_runtime::receipt::ProviderKey;
    if let Ok(hex) = std::env::var("INSITU_PROVIDER_KEY") {
        return Ok(ProviderKey::from_hex(hex.trim())?);
    }
    let password = keystore_password();
    if let Some(path) = keystore {
        let password = password.ok_or_else(|| {
            anyhow::anyhow!(
                "the keystore {} needs its password: set INSITU_KEYSTORE_PASSWORD",
                path.display()
            )
        })?;
        return Ok(ProviderKey::from_keystore(path, &password)?);
    }
    let path = file.map_or_else(
        || data_dir.join("provider.key"),
        std::path::Path::to_path_buf,
    );
    if path.exists() {
        return Ok(ProviderKey::open(&path, password.as_deref())?);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(ProviderKey::load_or_create(&path)?)
}

/// The password of encrypted key files: env `INSITU_KEYSTORE_PASSWORD`
/// (never a flag, so it stays out of `ps` and shell history).
pub fn keystore_password() -> Option<String> {
    std::env::var("INSITU_KEYSTORE_PASSWORD").ok()
}
