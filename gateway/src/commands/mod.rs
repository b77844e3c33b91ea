//! One module per `insitu` subcommand, each holding its clap type and what
//! it does ([`Command::execute`] dispatches); `main.rs` only parses.

pub mod author;
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
pub mod shared;
pub mod verify;

use clap::Subcommand;

/// Every `insitu` subcommand.
#[derive(Subcommand)]
pub enum Command {
    /// Start an algorithm: a project in Rust, Python or JavaScript that builds and runs as created.
    New(author::NewCommand),
    /// Build an algorithm project (cargo, componentize-py or componentize-js) into one .wasm file; prints its path.
    Build(author::BuildCommand),
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
            Command::New(c) => c.execute(),
            Command::Build(c) => c.execute(),
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
