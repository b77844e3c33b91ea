//! `insitu serve` (the provider's gateway) and `insitu admin` (its admin
//! tokens).

use super::shared::print_line;
use std::path::PathBuf;

/// `insitu serve`: the HTTP gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeCommand {
    /// A TOML config file; `INSITU_*` variables override it and flags override both.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database, blobs, module cache, executions and keys [default: insitu-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8030].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A local OCI layout searched for stage images by checksum (repeatable).
    #[arg(long, value_name = "DIR")]
    pub layout: Vec<PathBuf>,
    /// Use plain HTTP for this registry host; repeatable.
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Worker threads [default: the number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// The provider's secp256k1 key file (hex) [default: DATA_DIR/provider.key, created].
    #[arg(long, value_name = "FILE")]
    pub provider_key_file: Option<PathBuf>,
    /// `text` or `json` log lines on stderr [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// The gateway's public base URL, in the `serviceEndpoint`s of the DDOs
    /// it serves [default: http:// + the Host a client used].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Chain mode: the JSON-RPC endpoint of the chain holding the agreements.
    #[arg(long, value_name = "URL", requires = "contracts")]
    pub chain_rpc: Option<String>,
    /// Chain mode: JSON file of contract name → address.
    #[arg(long, value_name = "ADDRESSES.json", requires = "chain_rpc")]
    pub contracts: Option<PathBuf>,
    /// `local` (the embedded agreement store) or `chain` [default: chain
    /// when --chain-rpc is set].
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// The provider's encrypted key file (Web3 Secret Storage, as geth or
    /// `insitu key new --keystore` write it); password in env
    /// INSITU_KEYSTORE_PASSWORD.
    #[arg(long, value_name = "FILE", conflicts_with = "provider_key_file")]
    pub provider_keystore: Option<PathBuf>,
    /// Chain mode: the chain id to sign for; a node serving another chain is refused.
    #[arg(long, value_name = "ID")]
    pub chain_id: Option<u64>,
    /// Chain mode: blocks to wait on top of each transaction [default: 1].
    #[arg(long, value_name = "N")]
    pub confirmations: Option<u64>,
    /// Chain mode: the most paid per gas, e.g. `50gwei` [default: uncapped].
    #[arg(long, value_name = "FEE")]
    pub max_fee_per_gas: Option<String>,
}

impl ServeCommand {
    /// Resolves the settings (file, then `INSITU_*`, then flags), builds the
    /// provider and serves until SIGINT or SIGTERM, then drains.
    ///
    /// # Errors
    /// Invalid settings; as [`crate::http::build`]; an address that cannot be
    /// bound.
    pub fn execute(self) -> anyhow::Result<bool> {
        let s = self;
        use crate::config::{Layer, LogFormat, Mode, Settings};
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
                Some(other) => {
                    anyhow::bail!("--log-format must be `text` or `json`, not `{other}`")
                }
            },
            origin: "flags".into(),
            ..Layer::default()
        });
        let settings = Settings::resolve(&layers)?;
        super::shared::init_logs(settings.log_format);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (router, gateway) = crate::http::build(&settings.serve)?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
            let addr = listener.local_addr()?;
            tracing::info!(address = %addr, data_dir = %settings.serve.data_dir.display(), workers = settings.serve.workers, "gateway listening");
            eprintln!("insitu gateway listening on http://{addr}");
            crate::http::serve(listener, router, gateway, settings.shutdown_grace, super::shared::shutdown_signal()).await?;
            anyhow::Ok(true)
        })
    }
}

/// `insitu admin`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Print an admin token for the dashboard at / (for browsers that are
    /// not on this machine: open http://HOST:PORT/?token=TOKEN once).
    Token {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// How long it is valid, e.g. 8h, 7d.
        #[arg(long, value_parser = insitu_runtime::units::parse_duration, default_value = "12h", value_name = "DURATION")]
        ttl: std::time::Duration,
    },
}

impl AdminCommand {
    /// Prints an admin token.
    ///
    /// # Errors
    /// When the data dir or its keys cannot be read or created.
    pub fn execute(self) -> anyhow::Result<bool> {
        let AdminCommand::Token { data_dir, ttl } = self;
        std::fs::create_dir_all(&data_dir)?;
        let tokens = crate::provider::tokens_of(&data_dir)?;
        let provider = super::shared::provider_key(&data_dir, None, None)?.address();
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + ttl.as_secs();
        print_line(Ok(tokens.issue_admin(&provider, until)))
    }
}
