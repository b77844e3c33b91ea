//! [`ServeConfig`] and its parts ([`HttpLimits`], [`ChainConfig`]), with
//! their defaults.

use insitu_runtime::permissions::Permissions;
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::sandbox::Limits;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Holds `insitu.db`, `blobs/`, `modules/`, `executions/`, `provider.key`, `token.key`.
    pub data_dir: PathBuf,
    /// Worker threads running executions. Default: the number of cores.
    pub workers: usize,
    /// Executions that may wait for a worker before new ones get 429. Default 64.
    pub queue: usize,
    /// Local OCI layouts searched for images by checksum before registries.
    pub layouts: Vec<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// Limits of each stage.
    pub limits: Limits,
    /// The provider's maxima. Default: [`Limits::ceiling`].
    pub max: Limits,
    /// Signs receipts. Default: `<data_dir>/provider.key`, created on first use.
    pub provider_key: Option<ProviderKey>,
    /// Where agreements are checked. Default: on-chain when [`ServeConfig::chain`]
    /// is set, else [`insitu_runtime::permissions::LocalAgreements`] in the data dir's store.
    pub permissions: Option<Arc<dyn Permissions>>,
    /// Chain mode: agreements live in the Nevermined contracts.
    pub chain: Option<ChainConfig>,
    /// Native images (and, if asked, wasm stages) run as pods on this cluster.
    pub kubernetes: Option<insitu_kubernetes::KubeSettings>,
    /// Native images as Podman containers on this machine, when
    /// [`ServeConfig::kubernetes`] is not set.
    pub podman: Option<insitu_podman::Settings>,
    /// Timeouts and connection limits of the HTTP server.
    pub http: HttpLimits,
    /// Accept the exec form's legacy signature (of the agreement id alone,
    /// replayable) with a warning. Default false.
    pub legacy_exec_signatures: bool,
    /// The gateway's public base URL (no trailing `/`), in served DDOs'
    /// `serviceEndpoint`s. Default: the scheme-less `Host` a client used,
    /// as `http://HOST`.
    pub public_url: Option<String>,
    /// Serve the provider's dashboard at `/` (to loopback clients, or with
    /// an admin token from `insitu admin token`). Default true.
    pub dashboard: bool,
}

/// What slow or numerous clients may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request's headers (slow-loris). Default 10 s.
    pub header_timeout: Duration,
    /// Time from the headers to the handler's answer, reading the body
    /// included (408). Streams (followed logs) are not cut. Default 30 s.
    pub request_timeout: Duration,
    /// Connections served at once; more wait to be accepted. Default 1024.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Chain mode's settings.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// HTTP JSON-RPC endpoint.
    pub rpc: String,
    /// JSON file: contract name → address.
    pub contracts: PathBuf,
    /// How long a positive permission answer is reused. Default 10 s.
    pub cache_ttl: Duration,
    /// Chain id, confirmations, gas and fee policy of the provider's transactions.
    pub tx: insitu_chain::TxPolicy,
}

impl ChainConfig {
    /// Chain mode through `rpc` with the contracts in `contracts`, other
    /// settings at their defaults.
    pub fn new(rpc: impl Into<String>, contracts: impl Into<PathBuf>) -> ChainConfig {
        ChainConfig {
            rpc: rpc.into(),
            contracts: contracts.into(),
            cache_ttl: Duration::from_secs(10),
            tx: insitu_chain::TxPolicy::default(),
        }
    }
}

impl ServeConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            data_dir,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 64,
            layouts: Vec::new(),
            insecure_registries: Vec::new(),
            limits: Limits::default(),
            max: Limits::ceiling(),
            provider_key: None,
            permissions: None,
            chain: None,
            kubernetes: None,
            podman: None,
            http: HttpLimits::default(),
            legacy_exec_signatures: false,
            public_url: None,
            dashboard: true,
        }
    }
}
