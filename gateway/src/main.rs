//! `insitu`: run algorithms next to the data. See `insitu --help`.

use clap::{Args, Parser, Subcommand};
use insitu_gateway::commands::image::ImageArg;
use insitu_gateway::commands::run::{ModuleArg, RunArgs};
use insitu_gateway::commands::{self};
use insitu_runtime::Status;
use insitu_runtime::sandbox::Limits;
use insitu_runtime::units::{parse_duration, parse_size};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "insitu",
    version,
    about = "Data in situ computation: run algorithms where the data lives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one stage locally; prints one line of JSON with the result.
    Run(RunCli),
    /// Package a module as an OCI wasm artifact and push it (or write a layout); prints the manifest digest.
    Push(PushCli),
    /// Show what an image is (wasm artifact, compat, native) and its digests.
    Inspect(InspectCli),
    /// Register datasets (the provider's catalog).
    #[command(subcommand)]
    Asset(AssetCmd),
    /// Register workflows.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Register algorithm assets.
    #[command(subcommand)]
    Algorithm(AlgorithmCmd),
    /// Grant local agreements.
    #[command(subcommand)]
    Agreement(AgreementCmd),
    /// The record of dataset downloads (data sharing).
    #[command(subcommand)]
    Downloads(DownloadsCmd),
    /// Run the HTTP gateway (Nevermined-compatible compute API).
    Serve(ServeCli),
    /// The whole flow on embedded defaults: sandbox, gateway, a two-stage workflow over HTTP.
    Demo,
    /// Consumer keys (secp256k1).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Print a signed Nevermined JWT grant, to trade for an access token.
    Grant(GrantCli),
    /// As a consumer: execute a workflow at a gateway, show its progress,
    /// download and verify the results. Exit 0 succeeded, 1 the execution
    /// failed (or did not verify), 2 a usage, auth or connection error.
    Exec(ExecCli),
    /// As a consumer: list executions, show one's status or logs, stop one.
    #[command(subcommand)]
    Executions(ExecutionsCli),
    /// The provider's admin tokens.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Kubernetes: what a stage creates on the cluster.
    #[command(subcommand)]
    K8s(K8sCmd),
    /// Check a receipt: signature, provider, downloaded files, on-chain
    /// commitment, and (--reproduce) a local re-run; one line per check,
    /// exit 0 iff all hold.
    Verify(VerifyCli),
    /// Federated learning: train one model across several providers with
    /// secure aggregation.
    #[command(subcommand)]
    Fl(FlCmd),
    /// Print the personal_sign (EIP-191) signature of a text; with --exec,
    /// a signed exec form (agreement, workflow, fresh nonce, timestamp) for
    /// POST /api/v1/gateway/services/exec.
    Sign {
        /// The key file (hex).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The text to sign.
        #[arg(required_unless_present = "exec")]
        message: Option<String>,
        /// Print the exec form body for this agreement and workflow instead.
        #[arg(long, num_args = 2, value_names = ["AGREEMENT", "WORKFLOW"], conflicts_with = "message")]
        exec: Option<Vec<String>>,
    },
}

#[derive(Subcommand)]
enum FlCmd {
    /// Coordinate a federated job: every round, each participant trains on
    /// its data with the global model and returns only a masked update; the
    /// sum is unmasked and averaged (FedAvg). One JSON line per round, a
    /// final line with the model's path, digest and published result; exit
    /// 0 iff the job completed, 1 when a round aborted (run again to
    /// resume), 2 on a bad plan, key or directory.
    Run {
        /// The plan: rounds, min_participants, threshold, parameters,
        /// round_timeout_secs, participants [{gateway, agreement, workflow}],
        /// per_round, publish.
        #[arg(long, value_name = "PLAN.json")]
        plan: PathBuf,
        /// The consumer's key file (hex, or a keystore with INSITU_KEYSTORE_PASSWORD).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where the job's state and global model are kept (resumes from it).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum K8sCmd {
    /// Print the NetworkPolicy and Pod (YAML) stage N of a workflow would
    /// create, for review or `kubectl apply --dry-run=server -f -`.
    Manifests {
        /// The workflow (its metadata, or a DDO holding it).
        #[arg(long, value_name = "WORKFLOW.json")]
        workflow: PathBuf,
        #[arg(long, value_name = "N")]
        stage: u32,
        /// Resolve datasets in this data dir's catalog; without it they are
        /// placeholder volumes named `unresolved-dataset-N`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file holding `[kubernetes]` and `[limits]`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key file (mode 0600); prints its address.
    New {
        file: PathBuf,
        /// Write an encrypted keystore (Web3 Secret Storage, scrypt) with the
        /// password in env INSITU_KEYSTORE_PASSWORD, instead of hex.
        #[arg(long)]
        keystore: bool,
        /// With --keystore: encrypt the existing key in this file (hex)
        /// instead of generating one.
        #[arg(long, value_name = "HEX_FILE", requires = "keystore")]
        from: Option<PathBuf>,
    },
    /// Print the address of a key file (hex, or a keystore opened with
    /// INSITU_KEYSTORE_PASSWORD).
    Address { file: PathBuf },
}

#[derive(Args)]
struct GrantCli {
    /// The consumer's key file (hex).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The agreement id (0x + 64 hex).
    #[arg(long, required_unless_present = "publish")]
    agreement: Option<String>,
    /// Grant to execute this workflow DID.
    #[arg(
        long,
        conflicts_with_all = ["execution", "dataset", "publish"],
        required_unless_present_any = ["execution", "dataset", "publish"]
    )]
    workflow: Option<String>,
    /// Grant to publish own workflows and algorithms
    /// (POST /api/v1/metadata/assets/ddo); needs no agreement.
    #[arg(long, conflicts_with_all = ["execution", "dataset", "agreement"])]
    publish: bool,
    /// Grant to download this dataset's files (an access agreement).
    #[arg(long, conflicts_with = "execution")]
    dataset: Option<String>,
    /// Grant to watch, stop and download this execution.
    #[arg(long)]
    execution: Option<String>,
    /// Seconds the grant is valid.
    #[arg(long, default_value_t = 300)]
    ttl: u64,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Print an admin token for the dashboard at / (for browsers that are
    /// not on this machine: open http://HOST:PORT/?token=TOKEN once).
    Token {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// How long it is valid, e.g. 8h, 7d.
        #[arg(long, value_parser = parse_duration, default_value = "12h", value_name = "DURATION")]
        ttl: std::time::Duration,
    },
}

#[derive(Args)]
struct ExecCli {
    /// The gateway's base URL.
    #[arg(long, value_name = "URL")]
    gateway: String,
    /// The consumer's key file (hex).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The agreement id (0x + 64 hex).
    #[arg(long)]
    agreement: String,
    /// The workflow DID to execute.
    #[arg(long)]
    workflow: String,
    /// Stream the guest's logs to stdout while it runs.
    #[arg(long)]
    follow: bool,
    /// Download the result files into DIR (resumable, each file's sha256
    /// checked against the receipt) and the receipt to DIR.receipt.json.
    #[arg(long, value_name = "DIR")]
    download: Option<PathBuf>,
    /// Verify the receipt (and the downloaded files), as insitu verify does.
    #[arg(long)]
    verify: bool,
    /// With --verify: the provider's address the receipt must be signed by.
    #[arg(long, value_name = "ADDRESS", requires = "verify")]
    provider: Option<String>,
}

/// What every `insitu executions` verb needs.
#[derive(Args)]
struct ExecutionsAt {
    /// The gateway's base URL.
    #[arg(long, value_name = "URL")]
    gateway: String,
    /// The consumer's key file (hex).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The agreement the executions run under.
    #[arg(long)]
    agreement: String,
}

#[derive(Subcommand)]
enum ExecutionsCli {
    /// The consumer's executions at the gateway.
    List {
        #[command(flatten)]
        at: ExecutionsAt,
        /// A workflow of the agreement (the grant to list is an execute grant).
        #[arg(long)]
        workflow: String,
    },
    /// One execution's status, stages, progress and receipt (JSON).
    Status {
        #[command(flatten)]
        at: ExecutionsAt,
        id: String,
    },
    /// One execution's logs so far.
    Logs {
        #[command(flatten)]
        at: ExecutionsAt,
        id: String,
    },
    /// Stop one execution.
    Stop {
        #[command(flatten)]
        at: ExecutionsAt,
        id: String,
    },
}

#[derive(Args)]
struct ServeCli {
    /// A TOML config file; `INSITU_*` variables override it and flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database, blobs, module cache, executions and keys [default: insitu-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8030].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// A local OCI layout searched for stage images by checksum (repeatable).
    #[arg(long, value_name = "DIR")]
    layout: Vec<PathBuf>,
    /// Use plain HTTP for this registry host; repeatable.
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// Worker threads [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// The provider's secp256k1 key file (hex) [default: DATA_DIR/provider.key, created].
    #[arg(long, value_name = "FILE")]
    provider_key_file: Option<PathBuf>,
    /// `text` or `json` log lines on stderr [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// The gateway's public base URL, in the `serviceEndpoint`s of the DDOs
    /// it serves [default: http:// + the Host a client used].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Chain mode: the JSON-RPC endpoint of the chain holding the agreements.
    #[arg(long, value_name = "URL", requires = "contracts")]
    chain_rpc: Option<String>,
    /// Chain mode: JSON file of contract name → address.
    #[arg(long, value_name = "ADDRESSES.json", requires = "chain_rpc")]
    contracts: Option<PathBuf>,
    /// `local` (the embedded agreement store) or `chain` [default: chain
    /// when --chain-rpc is set].
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// The provider's encrypted key file (Web3 Secret Storage, as geth or
    /// `insitu key new --keystore` write it); password in env
    /// INSITU_KEYSTORE_PASSWORD.
    #[arg(long, value_name = "FILE", conflicts_with = "provider_key_file")]
    provider_keystore: Option<PathBuf>,
    /// Chain mode: the chain id to sign for; a node serving another chain is refused.
    #[arg(long, value_name = "ID")]
    chain_id: Option<u64>,
    /// Chain mode: blocks to wait on top of each transaction [default: 1].
    #[arg(long, value_name = "N")]
    confirmations: Option<u64>,
    /// Chain mode: the most paid per gas, e.g. `50gwei` [default: uncapped].
    #[arg(long, value_name = "FEE")]
    max_fee_per_gas: Option<String>,
}

#[derive(Subcommand)]
enum AssetCmd {
    /// Register a local dataset directory; prints its DID.
    Add {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// The dataset's directory (stays on this machine; never published).
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        name: String,
        /// An image its compute service allows: REF@sha256:DIGEST or sha256:DIGEST (repeatable).
        #[arg(long = "allow-image", value_name = "REF@sha256:D")]
        allow_images: Vec<String>,
        /// The compute service's time-out, in seconds.
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
        /// Linear memory a stage reading this dataset may use (its compute
        /// service's server `memory`; caps the provider's limit).
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        memory: Option<u64>,
        /// Output a stage reading this dataset may write (server `disk`).
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        disk: Option<u64>,
        /// Wall time of a stage reading this dataset (server `maxExecutionTime`).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        max_execution_time: Option<std::time::Duration>,
        /// Stages reading this dataset run in deterministic mode (fixed
        /// clocks, seeded random, sorted listings), so their outputs can be
        /// reproduced and checked with `insitu verify --reproduce`.
        #[arg(long)]
        deterministic: bool,
        /// What the dataset holds, for the catalog's search.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Comma-separated tags, for the catalog's search.
        #[arg(long, value_name = "A,B", value_delimiter = ',')]
        tags: Vec<String>,
        /// Who made the data.
        #[arg(long, value_name = "NAME")]
        author: Option<String>,
        /// Also offer the dataset's files for download (an `access` service,
        /// granted with `insitu agreement grant --service access`). Off by
        /// default: the data stays in situ and only computations reach it.
        #[arg(long)]
        access: bool,
        /// Chain mode: register the DID on-chain through this JSON-RPC endpoint.
        #[arg(long, value_name = "URL", requires_all = ["contracts", "price"])]
        chain_rpc: Option<String>,
        /// Chain mode: JSON file of contract name → address.
        #[arg(long, value_name = "ADDRESSES.json", requires = "chain_rpc")]
        contracts: Option<PathBuf>,
        /// The price of each service offered, in the smallest unit of the
        /// currency (wei); required in chain mode, where it is paid into escrow.
        #[arg(long, value_name = "WEI")]
        price: Option<String>,
        /// The ERC-20 token the price is in (its contract address) [default:
        /// the chain's native currency].
        #[arg(long, value_name = "ADDRESS", requires = "price")]
        price_token: Option<String>,
        /// Chain mode: the provider's key file [default: DATA_DIR/provider.key;
        /// env INSITU_PROVIDER_KEY wins].
        #[arg(long, value_name = "FILE", requires = "chain_rpc")]
        provider_key_file: Option<PathBuf>,
        /// Chain mode: the provider's encrypted key file; password in env
        /// INSITU_KEYSTORE_PASSWORD.
        #[arg(
            long,
            value_name = "FILE",
            requires = "chain_rpc",
            conflicts_with = "provider_key_file"
        )]
        provider_keystore: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WorkflowCmd {
    /// Register a workflow (its metadata, or a DDO holding it); prints its DID.
    Add {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        #[arg(long, value_name = "WORKFLOW.json")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AlgorithmCmd {
    /// Register an algorithm asset: an image pinned by digest; prints its
    /// DID. A workflow stage whose `transformation.id` names it must run
    /// that image's checksum.
    Add {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// The image, `host/repo[:tag]@sha256:DIGEST`.
        #[arg(long, value_name = "REF@sha256:DIGEST")]
        image: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum AgreementCmd {
    /// Chain mode, as the consumer: create a compute agreement on-chain and
    /// lock its payment; prints the agreement id.
    Create {
        #[arg(long, value_name = "URL")]
        chain_rpc: String,
        #[arg(long, value_name = "ADDRESSES.json")]
        contracts: PathBuf,
        /// The consumer's key file (hex).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The dataset's DID (registered on-chain by its provider).
        #[arg(long)]
        dataset: String,
        /// The provider's address (receives the payment).
        #[arg(long)]
        provider: String,
        /// The service's price, in the currency's smallest unit (wei).
        #[arg(long, value_name = "WEI")]
        price: String,
        /// The ERC-20 token the price is in [default: native currency]; the
        /// consumer approves the lock-payment condition to take it.
        #[arg(long, value_name = "ADDRESS")]
        price_token: Option<String>,
        /// `compute` (run workflows on the data) or `access` (download it).
        #[arg(long, value_enum, default_value_t = Service::Compute)]
        service: Service,
    },
    /// Grant a consumer a local agreement; prints its id.
    Grant {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// The consumer's address (0x + 40 hex).
        #[arg(long)]
        consumer: String,
        #[arg(long)]
        dataset: String,
        /// `compute` (run --workflow on the dataset) or `access` (download
        /// its files; the dataset must be registered with --access).
        #[arg(long, value_enum, default_value_t = Service::Compute)]
        service: Service,
        /// The workflow the agreement runs (compute agreements).
        #[arg(long, required_if_eq("service", "compute"))]
        workflow: Option<String>,
        /// Seconds the agreement stays valid.
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
    },
}

/// The service an agreement is for.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Service {
    Compute,
    Access,
}

#[derive(Subcommand)]
enum DownloadsCmd {
    /// List recorded downloads, newest first: when, who, agreement,
    /// dataset, file, bytes, whether complete.
    List {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// Only this dataset's.
        #[arg(long)]
        dataset: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct PushCli {
    /// The module to package (wasm32-wasip1 module or wasm32-wasip2 component).
    module: PathBuf,
    /// Registry reference to push to: host[:port]/name:tag.
    #[arg(required_unless_present = "layout", conflicts_with = "layout")]
    reference: Option<String>,
    /// Write an OCI image layout instead: DIR[:TAG] (tag defaults to latest).
    #[arg(long, value_name = "DIR[:TAG]")]
    layout: Option<String>,
    /// Use plain HTTP for this registry host (loopback test registries); repeatable.
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
}

#[derive(Args)]
struct InspectCli {
    /// Registry reference: host[:port]/name[:tag][@sha256:…] (tags are resolved).
    #[arg(required_unless_present = "layout", conflicts_with = "layout")]
    reference: Option<String>,
    /// Inspect an OCI image layout: DIR[:TAG].
    #[arg(long, value_name = "DIR[:TAG]")]
    layout: Option<String>,
    /// Use plain HTTP for this registry host; repeatable.
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
}

fn image_arg(reference: Option<String>, layout: Option<String>, insecure: Vec<String>) -> ImageArg {
    match layout {
        Some(l) => ImageArg::Layout(l),
        None => ImageArg::Registry {
            reference: reference.unwrap_or_default(),
            insecure,
        },
    }
}

#[derive(Args)]
struct RunCli {
    /// The WebAssembly module (wasm32-wasip1) or component (wasm32-wasip2) to run.
    #[arg(long, value_name = "FILE.wasm", required_unless_present_any = ["image", "image_layout"], conflicts_with_all = ["image", "image_layout"])]
    module: Option<PathBuf>,
    /// An OCI image pinned by checksum: host[:port]/name[:tag]@sha256:<digest>.
    #[arg(
        long,
        value_name = "REF@sha256:DIGEST",
        conflicts_with = "image_layout"
    )]
    image: Option<String>,
    /// An OCI image layout directory, optionally with a tag: DIR[:TAG].
    #[arg(long, value_name = "DIR[:TAG]")]
    image_layout: Option<String>,
    /// Use plain HTTP for this registry host (loopback test registries); repeatable.
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// An input directory, preopened read-only at /data/inputs/N (repeatable).
    #[arg(long = "input", value_name = "DIR")]
    inputs: Vec<PathBuf>,
    /// The output directory (created if missing; must be empty), at /data/outputs.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// The logs directory (must be empty), at /data/logs; default: a temporary one.
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Wall-clock limit (ms, s, m, h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Linear memory limit (KiB, MiB, GiB).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    memory: u64,
    /// Output directory quota.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    output_quota: u64,
    /// Logs quota (stdout + stderr + files in the logs dir).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    log_quota: u64,
    /// Cache root: compiled modules in DIR/modules, image blobs in DIR/blobs [default: ~/.cache/insitu].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the caches.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Run in deterministic mode, seeded as stage 0 of execution ID (fixed
    /// clocks, seeded random, sorted listings): what a deterministic
    /// dataset's stages get, and what `insitu verify --reproduce` runs.
    #[arg(long, value_name = "EXECUTION_ID", num_args = 0..=1, default_missing_value = "local")]
    deterministic: Option<String>,
    /// Extra arguments passed to the algorithm after the contract's.
    #[arg(last = true, value_name = "EXTRA_ARGS")]
    extra: Vec<String>,
}

fn serve(s: ServeCli) -> anyhow::Result<bool> {
    use insitu_gateway::config::{Layer, LogFormat, Mode, Settings};
    let mut layers = Vec::new();
    if let Some(file) = &s.config {
        layers.push(Layer::from_file(file)?);
    }
    layers.push(Layer::from_env(|k| std::env::var(k).ok())?);
    layers.push(Layer {
        listen: s.listen,
        data_dir: s.data_dir,
        workers: s.workers,
        layouts: s.layout,
        insecure_registries: s.insecure_registry,
        provider_key_file: s.provider_key_file,
        provider_keystore: s.provider_keystore,
        public_url: s.public_url,
        chain_rpc: s.chain_rpc,
        contracts: s.contracts,
        chain_id: s.chain_id,
        confirmations: s.confirmations,
        max_fee_per_gas: s.max_fee_per_gas,
        mode: match s.mode.as_deref() {
            None => None,
            Some("local") => Some(Mode::Local),
            Some("chain") => Some(Mode::Chain),
            Some(other) => anyhow::bail!("--mode must be `local` or `chain`, not `{other}`"),
        },
        log_format: match s.log_format.as_deref() {
            None => None,
            Some("json") => Some(LogFormat::Json),
            Some("text") => Some(LogFormat::Text),
            Some(other) => anyhow::bail!("--log-format must be `text` or `json`, not `{other}`"),
        },
        origin: "flags".into(),
        ..Layer::default()
    });
    let settings = Settings::resolve(&layers)?;
    commands::init_logs(settings.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (router, gateway) = insitu_gateway::http::build(&settings.serve)?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(address = %addr, data_dir = %settings.serve.data_dir.display(), workers = settings.serve.workers, "gateway listening");
        eprintln!("insitu gateway listening on http://{addr}");
        insitu_gateway::http::serve(listener, router, gateway, settings.shutdown_grace, commands::shutdown_signal()).await?;
        anyhow::Ok(true)
    })
}

#[derive(Args)]
struct VerifyCli {
    /// The receipt: the `receipt` of GET …/compute/results/{id} saved as JSON
    /// (or the whole response), or its receipt.intoto.json (DSSE envelope).
    #[arg(long, value_name = "FILE")]
    receipt: PathBuf,
    /// The provider's address it must be signed by.
    #[arg(long, value_name = "0xADDRESS")]
    provider: Option<String>,
    /// The downloaded result files: each must match the receipt, and no other may be there.
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
    /// Check that the receipt's hash is committed on-chain (with --contracts).
    #[arg(long, value_name = "URL", requires = "contracts")]
    chain_rpc: Option<String>,
    /// The contracts' addresses (JSON: name → address).
    #[arg(long, value_name = "FILE", requires = "chain_rpc")]
    contracts: Option<PathBuf>,
    /// Re-run the (deterministic) execution locally and compare every digest.
    #[arg(long, requires = "inputs")]
    reproduce: bool,
    /// With --reproduce: a dataset directory, one per dataset of the receipt, in its order.
    #[arg(long = "input", value_name = "DIR")]
    inputs: Vec<PathBuf>,
    /// With --reproduce: an OCI layout searched for the stages' images before registries.
    #[arg(long = "image-layout", value_name = "DIR")]
    layouts: Vec<PathBuf>,
    /// Allow plain HTTP for this registry (repeatable).
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
}

fn print_line(line: anyhow::Result<String>) -> anyhow::Result<bool> {
    line.map(|l| {
        println!("{l}");
        true
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(r) => commands::run::execute(RunArgs {
            cache_dir: if r.no_cache {
                None
            } else {
                r.cache_dir.or_else(commands::default_cache_dir)
            },
            module: match (r.module, r.image, r.image_layout) {
                (Some(m), _, _) => ModuleArg::File(m),
                (None, image, layout) => {
                    ModuleArg::Image(image_arg(image, layout, r.insecure_registry))
                }
            },
            inputs: r.inputs,
            output: r.output,
            logs: r.logs,
            limits: Limits {
                timeout: r.timeout,
                memory: r.memory,
                output_quota: r.output_quota,
                log_quota: r.log_quota,
            },
            extra: r.extra,
            deterministic: r
                .deterministic
                .map(|id| insitu_runtime::sandbox::Determinism::for_stage(&id, 0)),
        })
        .map(|report| report.status == Status::Succeeded),
        Command::Push(p) => {
            let target = image_arg(p.reference, p.layout, p.insecure_registry);
            commands::runtime()
                .and_then(|rt| rt.block_on(commands::image::push(&p.module, &target)))
                .map(|digest| {
                    println!("{digest}");
                    true
                })
        }
        Command::Inspect(i) => {
            let arg = image_arg(i.reference, i.layout, i.insecure_registry);
            commands::runtime()
                .and_then(|rt| {
                    rt.block_on(commands::image::inspect(
                        &arg,
                        commands::default_cache_dir(),
                    ))
                })
                .map(|info| {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&info).unwrap_or_default()
                    );
                    true
                })
        }
        Command::Asset(AssetCmd::Add {
            data_dir,
            path,
            name,
            allow_images,
            timeout,
            memory,
            disk,
            max_execution_time,
            deterministic,
            description,
            tags,
            author,
            access,
            chain_rpc,
            contracts,
            price,
            price_token,
            provider_key_file,
            provider_keystore,
        }) => {
            let offer = commands::catalog::Offer {
                timeout_secs: timeout,
                server: insitu_runtime::store::Server {
                    memory,
                    disk,
                    max_execution_time: max_execution_time.map(|d| d.as_secs().max(1)),
                },
                deterministic,
                about: insitu_runtime::store::About {
                    description,
                    tags: tags
                        .into_iter()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect(),
                    author,
                },
                access,
                price,
                price_token,
            };
            match (chain_rpc, contracts) {
                (Some(rpc), Some(contracts)) => commands::provider_key(
                    &data_dir,
                    provider_key_file.as_deref(),
                    provider_keystore.as_deref(),
                )
                .and_then(|key| {
                    print_line(commands::catalog::add_dataset_on_chain(
                        &data_dir,
                        &path,
                        &name,
                        &allow_images,
                        &offer,
                        &commands::catalog::OnChain {
                            rpc,
                            contracts,
                            key,
                        },
                    ))
                }),
                _ => print_line(commands::catalog::add_dataset(
                    &data_dir,
                    &path,
                    &name,
                    &allow_images,
                    &offer,
                )),
            }
        }
        Command::Workflow(WorkflowCmd::Add { data_dir, file }) => {
            print_line(commands::catalog::add_workflow(&data_dir, &file))
        }
        Command::Algorithm(AlgorithmCmd::Add {
            data_dir,
            image,
            name,
        }) => print_line(commands::catalog::add_algorithm(&data_dir, &image, &name)),
        Command::Agreement(AgreementCmd::Grant {
            data_dir,
            consumer,
            dataset,
            service,
            workflow,
            timeout,
        }) => print_line(match (service, workflow) {
            (Service::Compute, Some(workflow)) => {
                commands::catalog::grant(&data_dir, &consumer, &dataset, &workflow, timeout)
            }
            (Service::Compute, None) => Err(anyhow::anyhow!(
                "a compute agreement names the workflow it runs: add --workflow DID"
            )),
            (Service::Access, None) => {
                commands::catalog::grant_access(&data_dir, &consumer, &dataset, timeout)
            }
            (Service::Access, Some(_)) => Err(anyhow::anyhow!(
                "an access agreement downloads the dataset's files and runs no workflow: drop --workflow"
            )),
        }),
        Command::Downloads(DownloadsCmd::List {
            data_dir,
            dataset,
            limit,
            json,
        }) => print_line(commands::catalog::downloads(
            &data_dir,
            dataset.as_deref(),
            limit,
            json,
        )),
        Command::Agreement(AgreementCmd::Create {
            chain_rpc,
            contracts,
            key,
            dataset,
            provider,
            price,
            price_token,
            service,
        }) => print_line(commands::consumer::create_agreement(
            &chain_rpc,
            &contracts,
            &key,
            &dataset,
            &provider,
            &commands::consumer::Payment {
                price,
                token: price_token,
                access: service == Service::Access,
            },
        )),
        Command::Serve(s) => serve(s),
        Command::K8s(K8sCmd::Manifests {
            workflow,
            stage,
            data_dir,
            config,
        }) => (|| {
            use insitu_gateway::config::{Layer, Settings};
            let layers = match &config {
                Some(f) => vec![Layer::from_file(f)?],
                None => Vec::new(),
            };
            let settings = Settings::resolve(&layers)?;
            let yaml = commands::k8s::manifests(
                &workflow,
                stage,
                data_dir.as_deref(),
                &settings.serve.kubernetes.unwrap_or_default(),
                settings.serve.limits,
            )?;
            print!("{yaml}");
            Ok(true)
        })(),
        Command::Demo => commands::demo::execute(),
        Command::Key(KeyCmd::New {
            file,
            keystore,
            from,
        }) => print_line(commands::consumer::new_key(
            &file,
            keystore,
            from.as_deref(),
        )),
        Command::Key(KeyCmd::Address { file }) => print_line(commands::consumer::address(&file)),
        Command::Grant(g) => {
            use commands::consumer::GrantFor;
            let target = match (&g.workflow, &g.execution, &g.dataset) {
                _ if g.publish => GrantFor::Publish,
                (Some(w), _, _) => GrantFor::Execute(w),
                (_, Some(e), _) => GrantFor::Execution(e),
                (_, _, Some(d)) => GrantFor::Access(d),
                _ => unreachable!(
                    "clap requires one of --workflow, --execution, --dataset, --publish"
                ),
            };
            print_line(commands::consumer::grant(
                &g.key,
                g.agreement.as_deref().unwrap_or_default(),
                target,
                g.ttl,
            ))
        }
        Command::Admin(AdminCmd::Token { data_dir, ttl }) => (|| {
            std::fs::create_dir_all(&data_dir)?;
            let tokens = insitu_gateway::provider::tokens_of(&data_dir)?;
            let provider = commands::provider_key(&data_dir, None, None)?.address();
            let until = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + ttl.as_secs();
            print_line(Ok(tokens.issue_admin(&provider, until)))
        })(),
        Command::Exec(e) => commands::exec::run(&commands::exec::ExecArgs {
            gateway: e.gateway,
            key: e.key,
            agreement: e.agreement,
            workflow: e.workflow,
            follow: e.follow,
            download: e.download,
            verify: e.verify,
            provider: e.provider,
        }),
        Command::Executions(x) => {
            use commands::exec::ExecutionsCmd;
            let (at, cmd) = match x {
                ExecutionsCli::List { at, workflow } => (at, ExecutionsCmd::List { workflow }),
                ExecutionsCli::Status { at, id } => (at, ExecutionsCmd::Status { id }),
                ExecutionsCli::Logs { at, id } => (at, ExecutionsCmd::Logs { id }),
                ExecutionsCli::Stop { at, id } => (at, ExecutionsCmd::Stop { id }),
            };
            commands::exec::executions(&at.gateway, &at.key, &at.agreement, &cmd)
        }
        Command::Verify(v) => commands::verify::run(&commands::verify::VerifyArgs {
            receipt: v.receipt,
            provider: v.provider,
            files: v.files,
            chain: v.chain_rpc.zip(v.contracts),
            reproduce: v.reproduce.then_some(v.inputs),
            layouts: v.layouts,
            insecure_registries: v.insecure_registry,
            cache_dir: commands::default_cache_dir(),
        })
        .map(|report| {
            for check in &report.checks {
                println!("{check}");
            }
            report.ok()
        }),
        Command::Fl(FlCmd::Run { plan, key, out }) => commands::fl::run(&commands::fl::FlArgs {
            plan: &plan,
            key: &key,
            out: &out,
        }),
        Command::Sign { key, message, exec } => match (exec, message) {
            (Some(e), _) => print_line(commands::consumer::exec_form(
                &key,
                &e[0],
                &e[1],
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )),
            (None, m) => print_line(commands::consumer::sign(&key, &m.unwrap_or_default())),
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
