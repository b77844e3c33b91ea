//! One module per `insitu` subcommand, each holding its clap type and what
//! it does ([`Command::execute`] dispatches); `main.rs` only parses.

pub mod catalog;
pub mod consumer;
pub mod demo;
pub mod exec;
pub mod fl;
pub mod image;
pub mod k8s;
pub mod review;
pub mod run;
pub mod serve;
pub mod verify;

use clap::Subcommand;
use insitu_runtime::sandbox::{Limits, Sandbox, SandboxConfig};
use std::path::PathBuf;

/// Every `insitu` subcommand.
#[derive(Subcommand)]
pub enum Command {
    /// Run one stage locally; prints one line of JSON with the result.
    Run(run::RunCommand),
    /// Package a module as an OCI wasm artifact and push it (or write a layout); prints the manifest digest.
    Push(image::PushCommand),
    /// Show what an image is (wasm artifact, compat, native) and its digests.
    Inspect(image::InspectCommand),
    /// Register datasets (the provider's catalog).
    #[command(subcommand)]
    Asset(catalog::AssetCommand),
    /// Register workflows.
    #[command(subcommand)]
    Workflow(catalog::WorkflowCommand),
    /// Register algorithm assets.
    #[command(subcommand)]
    Algorithm(catalog::AlgorithmCommand),
    /// Grant local agreements.
    #[command(subcommand)]
    Agreement(catalog::AgreementCommand),
    /// The record of dataset downloads (data sharing).
    #[command(subcommand)]
    Downloads(catalog::DownloadsCommand),
    /// Run the HTTP gateway (Nevermined-compatible compute API).
    Serve(serve::ServeCommand),
    /// The whole flow on embedded defaults: sandbox, gateway, a two-stage workflow over HTTP.
    Demo,
    /// Consumer keys (secp256k1).
    #[command(subcommand)]
    Key(consumer::KeyCommand),
    /// Print a signed Nevermined JWT grant, to trade for an access token.
    Grant(consumer::GrantCommand),
    /// As a consumer: execute a workflow at a gateway, show its progress,
    /// download and verify the results. Exit 0 succeeded, 1 the execution
    /// failed (or did not verify), 2 a usage, auth or connection error.
    Exec(exec::ExecCommand),
    /// As a consumer: list executions, show one's status or logs, stop one.
    #[command(subcommand)]
    Executions(exec::ExecutionsCommand),
    /// The provider's admin tokens.
    #[command(subcommand)]
    Admin(serve::AdminCommand),
    /// Kubernetes: what a stage creates on the cluster.
    #[command(subcommand)]
    K8s(k8s::K8sCommand),
    /// Check a receipt: signature, provider, downloaded files, on-chain
    /// commitment, and (--reproduce) a local re-run; one line per check,
    /// exit 0 iff all hold.
    Verify(verify::VerifyCommand),
    /// Held results: list them, read their output checks, release or reject
    /// them.
    #[command(subcommand)]
    Review(review::ReviewCommand),
    /// Federated learning: train one model across several providers with
    /// secure aggregation.
    #[command(subcommand)]
    Fl(fl::FlCommand),
    /// Print the personal_sign (EIP-191) signature of a text; with --exec,
    /// a signed exec form (agreement, workflow, fresh nonce, timestamp) for
    /// POST /api/v1/gateway/services/exec.
    Sign(consumer::SignCommand),
}

impl Command {
    /// Runs the command; `Ok(true)` for exit code 0, `Ok(false)` for 1.
    ///
    /// # Errors
    /// Usage, input and connection errors (exit code 2).
    pub fn execute(self) -> anyhow::Result<bool> {
        match self {
            Command::Run(c) => c.execute(),
            Command::Push(c) => c.execute(),
            Command::Inspect(c) => c.execute(),
            Command::Asset(c) => c.execute(),
            Command::Workflow(c) => c.execute(),
            Command::Algorithm(c) => c.execute(),
            Command::Agreement(c) => c.execute(),
            Command::Downloads(c) => c.execute(),
            Command::Serve(c) => c.execute(),
            Command::Demo => demo::execute(),
            Command::Key(c) => c.execute(),
            Command::Grant(c) => c.execute(),
            Command::Exec(c) => exec::run(&c),
            Command::Executions(c) => exec::executions(&c),
            Command::Admin(c) => c.execute(),
            Command::K8s(c) => c.execute(),
            Command::Verify(c) => c.execute(),
            Command::Fl(c) => c.execute(),
            Command::Review(c) => c.execute(),
            Command::Sign(c) => c.execute(),
        }
    }
}

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
