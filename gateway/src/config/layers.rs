//! `insitu serve` settings: a TOML file (`--config`), then `INSITU_*`
//! environment variables, then flags, each overriding the one before; what
//! none of them sets keeps its default ([`ServeConfig::new`]).
//!
//! ```toml
//! listen = "127.0.0.1:8030"
//! data_dir = "/var/lib/insitu"
//! workers = 2                 # default: the number of cores
//! queue = 64
//! layouts = ["/srv/algorithms"]
//! insecure_registries = ["127.0.0.1:5000"]
//! provider_key_file = "/etc/insitu/provider.key"   # default: <data_dir>/provider.key
//! log_format = "json"         # or "text" (default)
//! shutdown_grace = "30s"
//! header_timeout = "10s"      # slow clients: time to send the headers
//! request_timeout = "30s"     # … and to send the body and get the answer (408)
//! max_connections = 1024
//! legacy_exec_signatures = false  # true: accept replayable exec forms (agreement id only)
//! public_url = "https://provider.example"  # in DDOs' serviceEndpoint (default: the URL a client used)
//! dashboard = true            # the provider's dashboard at / (loopback, or an admin token)
//! mode = "chain"             # or "local" (default unless chain_rpc is set)
//! chain_rpc = "http://127.0.0.1:8545"   # chain mode, with contracts:
//! contracts = "/etc/insitu/contracts.json"
//! provider_keystore = "/etc/insitu/provider.json"  # password: INSITU_KEYSTORE_PASSWORD
//! chain_id = 31337            # refuse a node serving another chain
//! confirmations = 2           # default 1
//! gas_multiplier = 1.2        # gas limit = estimate × this (default 1.2)
//! max_fee_per_gas = "50gwei"  # default: the node's suggestion, uncapped
//! tx_timeout = "2m"
//! chain_cache_ttl = "10s"
//!
//! [limits]                    # per-stage defaults
//! timeout = "30s"
//! memory = "512MiB"
//! output_quota = "1GiB"
//! log_quota = "16MiB"
//!
//! [max]                       # the provider's maxima (same keys)
//! timeout = "1h"
//!
//! [kubernetes]                # native images as pods; see insitu_kubernetes::KubeSettings
//! namespace = "insitu"
//!
//! [podman]                    # or: native images as containers on this machine
//! runtime = "runc"            # see insitu_podman::Settings
//! ```
//!
//! Environment: `INSITU_LISTEN`, `INSITU_DATA_DIR`, `INSITU_WORKERS`,
//! `INSITU_QUEUE`, `INSITU_LAYOUTS` and `INSITU_INSECURE_REGISTRIES`
//! (comma-separated), `INSITU_PROVIDER_KEY_FILE`, `INSITU_PROVIDER_KEY` (hex;
//! wins over any key file), `INSITU_LOG_FORMAT`, `INSITU_SHUTDOWN_GRACE`,
//! `INSITU_HEADER_TIMEOUT`, `INSITU_REQUEST_TIMEOUT`, `INSITU_MAX_CONNECTIONS`,
//! `INSITU_LEGACY_EXEC_SIGNATURES`, `INSITU_PUBLIC_URL`, `INSITU_DASHBOARD`,
//! `INSITU_MODE`, `INSITU_CHAIN_RPC`, `INSITU_CONTRACTS`,
//! `INSITU_PROVIDER_KEYSTORE` with `INSITU_KEYSTORE_PASSWORD` (only ever from
//! the environment), `INSITU_CHAIN_ID`, `INSITU_CONFIRMATIONS`,
//! `INSITU_GAS_MULTIPLIER`, `INSITU_MAX_FEE_PER_GAS`, `INSITU_TX_TIMEOUT`,
//! `INSITU_CHAIN_CACHE_TTL`,
//! `INSITU_TIMEOUT`, `INSITU_MEMORY`, `INSITU_OUTPUT_QUOTA`, `INSITU_LOG_QUOTA`
//! and `INSITU_MAX_*` for the maxima.

use super::serve::{ChainConfig, ServeConfig};
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::sandbox::Limits;
use insitu_runtime::units::{parse_duration, parse_size};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the settings could not be loaded; each names where the bad value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("{origin}: `{value}` is not a valid {what}: {reason}")]
    Value {
        origin: String,
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Limits(String),
}

/// Output format of the server's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where agreements are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The embedded agreement store (`insitu agreement grant`).
    Local,
    /// The Nevermined contracts, through `chain_rpc` and `contracts`.
    Chain,
}

/// Optional limits, as text (`"30s"`, `"512MiB"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsText {
    pub timeout: Option<String>,
    pub memory: Option<String>,
    pub output_quota: Option<String>,
    pub log_quota: Option<String>,
}

/// One layer of settings (the file, the environment or the flags).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
    #[serde(default)]
    pub layouts: Vec<PathBuf>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    pub provider_key_file: Option<PathBuf>,
    /// An encrypted key file (Web3 Secret Storage), opened with
    /// `keystore_password`.
    pub provider_keystore: Option<PathBuf>,
    /// Only from the environment (`INSITU_KEYSTORE_PASSWORD`).
    #[serde(skip)]
    pub keystore_password: Option<String>,
    /// Hex private key; only from the environment (`INSITU_PROVIDER_KEY`).
    #[serde(skip)]
    pub provider_key: Option<String>,
    pub log_format: Option<LogFormat>,
    pub shutdown_grace: Option<String>,
    pub header_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<usize>,
    /// Accept the exec form's legacy, replayable signature (with a warning).
    pub legacy_exec_signatures: Option<bool>,
    /// The gateway's public base URL, for DDOs' `serviceEndpoint`s.
    pub public_url: Option<String>,
    /// Serve the provider's dashboard at `/`.
    pub dashboard: Option<bool>,
    /// `local` or `chain`; default: chain when `chain_rpc` is set.
    pub mode: Option<Mode>,
    /// Chain mode: the JSON-RPC endpoint (with `contracts`).
    pub chain_rpc: Option<String>,
    /// Chain mode: the chain id transactions are signed for.
    pub chain_id: Option<u64>,
    /// Chain mode: blocks to wait on top of a transaction's (default 1).
    pub confirmations: Option<u64>,
    /// Chain mode: gas limit = estimate × this (default 1.2).
    pub gas_multiplier: Option<f64>,
    /// Chain mode: cap on the fee per gas (`50gwei`, or wei).
    pub max_fee_per_gas: Option<String>,
    /// Chain mode: how long to wait for a transaction (default 2m).
    pub tx_timeout: Option<String>,
    /// Chain mode: the JSON file of contract name → address.
    pub contracts: Option<PathBuf>,
    /// Chain mode: how long a positive permission answer is reused (default 10s).
    pub chain_cache_ttl: Option<String>,
    #[serde(default)]
    pub limits: LimitsText,
    #[serde(default)]
    pub max: LimitsText,
    /// The Kubernetes backend (only from the config file).
    pub kubernetes: Option<insitu_kubernetes::KubeSettings>,
    /// The Podman backend (only from the config file); `[kubernetes]` wins
    /// when both are set.
    pub podman: Option<insitu_podman::Settings>,
    /// Where this layer came from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

/// Everything `insitu serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub serve: ServeConfig,
    pub log_format: LogFormat,
    /// How long in-flight executions may run on after a shutdown signal
    /// before they are stopped. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Layer {
    /// The layer in the TOML file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Syntax`] (with line and column).
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut layer: Layer = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        layer.origin = format!("config file {}", path.display());
        Ok(layer)
    }

    /// The layer in `INSITU_*` variables, read through `var`.
    ///
    /// # Errors
    /// [`ConfigError::Value`] for numbers that do not parse.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
        let list = |name: &str| -> Vec<String> {
            var(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |name: &'static str| -> Result<Option<usize>, ConfigError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|e: std::num::ParseIntError| ConfigError::Value {
                            origin: format!("environment variable {name}"),
                            what: "number",
                            value: v.clone(),
                            reason: e.to_string(),
                        })
                })
                .transpose()
        };
        fn parsed<T: std::str::FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            what: &'static str,
        ) -> Result<Option<T>, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            var(name)
                .map(|v| {
                    v.trim().parse().map_err(|e: T::Err| ConfigError::Value {
                        origin: format!("environment variable {name}"),
                        what,
                        value: v.clone(),
                        reason: e.to_string(),
                    })
                })
                .transpose()
        }
        let mode = match var("INSITU_MODE").as_deref().map(str::trim) {
            None => None,
            Some("local") => Some(Mode::Local),
            Some("chain") => Some(Mode::Chain),
            Some(other) => {
                return Err(ConfigError::Value {
                    origin: "environment variable INSITU_MODE".into(),
                    what: "mode",
                    value: other.into(),
                    reason: "use `local` or `chain`".into(),
                });
            }
        };
        let log_format = match var("INSITU_LOG_FORMAT").as_deref().map(str::trim) {
            None => None,
            Some("json") => Some(LogFormat::Json),
            Some("text") => Some(LogFormat::Text),
            Some(other) => {
                return Err(ConfigError::Value {
                    origin: "environment variable INSITU_LOG_FORMAT".into(),
                    what: "log format",
                    value: other.into(),
                    reason: "use `text` or `json`".into(),
                });
            }
        };
        Ok(Layer {
            listen: var("INSITU_LISTEN"),
            data_dir: var("INSITU_DATA_DIR").map(PathBuf::from),
            workers: number("INSITU_WORKERS")?,
            queue: number("INSITU_QUEUE")?,
            layouts: list("INSITU_LAYOUTS")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            insecure_registries: list("INSITU_INSECURE_REGISTRIES"),
            provider_key_file: var("INSITU_PROVIDER_KEY_FILE").map(PathBuf::from),
            provider_keystore: var("INSITU_PROVIDER_KEYSTORE").map(PathBuf::from),
            keystore_password: var("INSITU_KEYSTORE_PASSWORD"),
            provider_key: var("INSITU_PROVIDER_KEY"),
            log_format,
            shutdown_grace: var("INSITU_SHUTDOWN_GRACE"),
            header_timeout: var("INSITU_HEADER_TIMEOUT"),
            request_timeout: var("INSITU_REQUEST_TIMEOUT"),
            max_connections: number("INSITU_MAX_CONNECTIONS")?,
            legacy_exec_signatures: parsed(&var, "INSITU_LEGACY_EXEC_SIGNATURES", "true or false")?,
            public_url: var("INSITU_PUBLIC_URL"),
            dashboard: parsed(&var, "INSITU_DASHBOARD", "true or false")?,
            mode,
            chain_rpc: var("INSITU_CHAIN_RPC"),
            chain_id: parsed(&var, "INSITU_CHAIN_ID", "chain id")?,
            confirmations: parsed(&var, "INSITU_CONFIRMATIONS", "number")?,
            gas_multiplier: parsed(&var, "INSITU_GAS_MULTIPLIER", "multiplier")?,
            max_fee_per_gas: var("INSITU_MAX_FEE_PER_GAS"),
            tx_timeout: var("INSITU_TX_TIMEOUT"),
            contracts: var("INSITU_CONTRACTS").map(PathBuf::from),
            chain_cache_ttl: var("INSITU_CHAIN_CACHE_TTL"),
            limits: LimitsText {
                timeout: var("INSITU_TIMEOUT"),
                memory: var("INSITU_MEMORY"),
                output_quota: var("INSITU_OUTPUT_QUOTA"),
                log_quota: var("INSITU_LOG_QUOTA"),
            },
            max: LimitsText {
                timeout: var("INSITU_MAX_TIMEOUT"),
                memory: var("INSITU_MAX_MEMORY"),
                output_quota: var("INSITU_MAX_OUTPUT_QUOTA"),
                log_quota: var("INSITU_MAX_LOG_QUOTA"),
            },
            kubernetes: None,
            podman: None,
            origin: "environment".into(),
        })
    }
}

/// Where the provider's key comes from.
enum KeySource {
    /// Hex, or a keystore recognised by its content; created when missing.
    File(PathBuf),
    /// An encrypted keystore; never created.
    Keystore(PathBuf),
}

/// A fee per gas: wei (`1000000000`), `gwei` or `wei` suffixed, decimals
/// allowed for gwei (`1.5gwei`).
fn parse_wei(text: &str) -> Result<u128, String> {
    let t = text.trim().to_ascii_lowercase();
    let hint = || "use wei (digits) or gwei, e.g. `50gwei`".to_string();
    if let Some(g) = t.strip_suffix("gwei") {
        let g = g.trim();
        let (whole, frac) = g.split_once('.').unwrap_or((g, ""));
        if whole.is_empty() && frac.is_empty() || frac.len() > 9 {
            return Err(hint());
        }
        let digits = |d: &str| d.is_empty() || d.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(frac) {
            return Err(hint());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| hint())?
        };
        let frac: u128 = format!("{frac:0<9}").parse().map_err(|_| hint())?;
        return whole
            .checked_mul(1_000_000_000)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(hint);
    }
    t.strip_suffix("wei")
        .unwrap_or(&t)
        .trim()
        .parse()
        .map_err(|_| hint())
}

fn apply_limits(
    limits: &mut Limits,
    text: &LimitsText,
    origin: &str,
    section: &str,
) -> Result<(), ConfigError> {
    let bad = |key: &str, value: &str, e: insitu_runtime::Error| ConfigError::Value {
        origin: format!("{origin}, {section}.{key}"),
        what: if key == "timeout" { "duration" } else { "size" },
        value: value.to_string(),
        reason: e.to_string(),
    };
    if let Some(v) = &text.timeout {
        limits.timeout = parse_duration(v).map_err(|e| bad("timeout", v, e))?;
    }
    for (key, value, slot) in [
        ("memory", &text.memory, &mut limits.memory),
        ("output_quota", &text.output_quota, &mut limits.output_quota),
        ("log_quota", &text.log_quota, &mut limits.log_quota),
    ] {
        if let Some(v) = value {
            *slot = parse_size(v).map_err(|e| bad(key, v, e))?;
        }
    }
    Ok(())
}

impl Settings {
    /// Applies `layers` in order (later ones win) over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the layer and key of the first bad value, or
    /// limits above the maxima.
    pub fn resolve(layers: &[Layer]) -> Result<Settings, ConfigError> {
        let data_dir = layers
            .iter()
            .rev()
            .find_map(|l| l.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("insitu-data"));
        let mut serve = ServeConfig::new(data_dir);
        let mut settings = Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8030)),
            serve: serve.clone(),
            log_format: LogFormat::Text,
            shutdown_grace: Duration::from_secs(30),
        };
        let mut key_file: Option<(KeySource, String)> = None;
        let mut password = None;
        let (mut rpc, mut contracts, mut ttl) = (None, None, Duration::from_secs(10));
        let mut mode = None;
        let mut tx = insitu_chain::TxPolicy::default();
        for l in layers {
            mode = l.mode.or(mode);
            if let Some(v) = l.chain_id {
                tx.chain_id = Some(v);
            }
            if let Some(v) = l.confirmations {
                if v == 0 {
                    return Err(ConfigError::Value {
                        origin: format!("{}, confirmations", l.origin),
                        what: "number of confirmations",
                        value: v.to_string(),
                        reason: "use 1 (mined) or more".into(),
                    });
                }
                tx.confirmations = v;
            }
            if let Some(v) = l.gas_multiplier {
                if !(1.0..=10.0).contains(&v) {
                    return Err(ConfigError::Value {
                        origin: format!("{}, gas_multiplier", l.origin),
                        what: "gas multiplier",
                        value: v.to_string(),
                        reason: "use a factor from 1.0 to 10.0 (e.g. 1.2)".into(),
                    });
                }
                tx.gas_multiplier = v;
            }
            if let Some(v) = &l.max_fee_per_gas {
                tx.max_fee_per_gas = Some(parse_wei(v).map_err(|reason| ConfigError::Value {
                    origin: format!("{}, max_fee_per_gas", l.origin),
                    what: "fee per gas",
                    value: v.clone(),
                    reason,
                })?);
            }
            if let Some(v) = &l.tx_timeout {
                tx.timeout = parse_duration(v).map_err(|e| ConfigError::Value {
                    origin: format!("{}, tx_timeout", l.origin),
                    what: "duration",
                    value: v.clone(),
                    reason: e.to_string(),
                })?;
            }
            if l.keystore_password.is_some() {
                password.clone_from(&l.keystore_password);
            }
            if l.provider_key_file.is_some() && l.provider_keystore.is_some() {
                return Err(ConfigError::Value {
                    origin: format!("{}, provider_keystore", l.origin),
                    what: "key setting",
                    value: "both provider_key_file and provider_keystore".into(),
                    reason: "set one of them".into(),
                });
            }
            if let Some(f) = &l.provider_keystore {
                key_file = Some((KeySource::Keystore(f.clone()), l.origin.clone()));
            }
            if let Some(v) = &l.chain_rpc {
                rpc = Some(v.clone());
            }
            if let Some(v) = &l.contracts {
                contracts = Some(v.clone());
            }
            if let Some(v) = &l.chain_cache_ttl {
                ttl = parse_duration(v).map_err(|e| ConfigError::Value {
                    origin: format!("{}, chain_cache_ttl", l.origin),
                    what: "duration",
                    value: v.clone(),
                    reason: e.to_string(),
                })?;
            }
            if let Some(v) = &l.listen {
                settings.listen =
                    v.parse()
                        .map_err(|e: std::net::AddrParseError| ConfigError::Value {
                            origin: format!("{}, listen", l.origin),
                            what: "listen address",
                            value: v.clone(),
                            reason: format!("{e}; use HOST:PORT, e.g. 127.0.0.1:8030"),
                        })?;
            }
            if let Some(n) = l.workers {
                serve.workers = n.max(1);
            }
            if let Some(n) = l.queue {
                serve.queue = n.max(1);
            }
            if !l.layouts.is_empty() {
                serve.layouts = l.layouts.clone();
            }
            if !l.insecure_registries.is_empty() {
                serve.insecure_registries = l.insecure_registries.clone();
            }
            if let Some(f) = &l.provider_key_file {
                key_file = Some((KeySource::File(f.clone()), l.origin.clone()));
            }
            if let Some(hex) = &l.provider_key {
                serve.provider_key =
                    Some(
                        ProviderKey::from_hex(hex.trim()).map_err(|e| ConfigError::Value {
                            origin: format!("{}, provider key", l.origin),
                            what: "secp256k1 private key",
                            value: "(hidden)".into(),
                            reason: e.to_string(),
                        })?,
                    );
                key_file = None;
            }
            for (text, slot, key) in [
                (
                    &l.header_timeout,
                    &mut serve.http.header_timeout,
                    "header_timeout",
                ),
                (
                    &l.request_timeout,
                    &mut serve.http.request_timeout,
                    "request_timeout",
                ),
            ] {
                if let Some(v) = text {
                    *slot = parse_duration(v).map_err(|e| ConfigError::Value {
                        origin: format!("{}, {key}", l.origin),
                        what: "duration",
                        value: v.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            if let Some(n) = l.max_connections {
                serve.http.max_connections = n.max(1);
            }
            if let Some(u) = &l.public_url {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && !u.contains(char::is_whitespace);
                if !ok {
                    return Err(ConfigError::Value {
                        origin: l.origin.clone(),
                        what: "public_url",
                        value: u.clone(),
                        reason: "expected an http:// or https:// URL".into(),
                    });
                }
                serve.public_url = Some(u.trim_end_matches('/').to_string());
            }
            if let Some(b) = l.dashboard {
                serve.dashboard = b;
            }
            if let Some(b) = l.legacy_exec_signatures {
                serve.legacy_exec_signatures = b;
            }
            if let Some(f) = l.log_format {
                settings.log_format = f;
            }
            if let Some(g) = &l.shutdown_grace {
                settings.shutdown_grace = parse_duration(g).map_err(|e| ConfigError::Value {
                    origin: format!("{}, shutdown_grace", l.origin),
                    what: "duration",
                    value: g.clone(),
                    reason: e.to_string(),
                })?;
            }
            if let Some(k) = &l.kubernetes {
                k.check().map_err(|e| ConfigError::Value {
                    origin: format!("{}, [kubernetes]", l.origin),
                    what: "kubernetes table",
                    value: k.namespace.clone(),
                    reason: e.to_string(),
                })?;
                serve.kubernetes = Some(k.clone());
            }
            if let Some(p) = &l.podman {
                serve.podman = Some(p.clone());
            }
            apply_limits(&mut serve.limits, &l.limits, &l.origin, "limits")?;
            apply_limits(&mut serve.max, &l.max, &l.origin, "max")?;
        }
        match key_file {
            Some((KeySource::File(file), origin)) => {
                let key = if file.exists() {
                    ProviderKey::open(&file, password.as_deref())
                } else {
                    ProviderKey::load_or_create(&file)
                };
                serve.provider_key = Some(key.map_err(|e| ConfigError::Value {
                    origin: format!("{origin}, provider_key_file"),
                    what: "key file",
                    value: file.display().to_string(),
                    reason: e.to_string(),
                })?);
            }
            Some((KeySource::Keystore(file), origin)) => {
                let Some(password) = password else {
                    return Err(ConfigError::Value {
                        origin: format!("{origin}, provider_keystore"),
                        what: "keystore setting",
                        value: file.display().to_string(),
                        reason: "its password is missing; set INSITU_KEYSTORE_PASSWORD".into(),
                    });
                };
                serve.provider_key =
                    Some(ProviderKey::from_keystore(&file, &password).map_err(|e| {
                        ConfigError::Value {
                            origin: format!("{origin}, provider_keystore"),
                            what: "keystore",
                            value: file.display().to_string(),
                            reason: e.to_string(),
                        }
                    })?);
            }
            None => {}
        }
        if mode == Some(Mode::Local) {
            (rpc, contracts) = (None, None);
        }
        serve.chain = match (rpc, contracts) {
            (Some(rpc), Some(contracts)) => Some(ChainConfig {
                rpc,
                contracts,
                cache_ttl: ttl,
                tx,
            }),
            (None, None) if mode == Some(Mode::Chain) => {
                return Err(ConfigError::Limits(
                    "mode is chain but no chain is configured: set --chain-rpc URL and --contracts FILE (or chain_rpc and contracts / INSITU_CHAIN_RPC and INSITU_CONTRACTS)".into(),
                ));
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Limits(
                    "chain mode needs the contract addresses too: --contracts FILE (or contracts / INSITU_CONTRACTS)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Limits(
                    "chain mode needs the RPC endpoint too: --chain-rpc URL (or chain_rpc / INSITU_CHAIN_RPC)".into(),
                ));
            }
        };
        serve
            .max
            .check_within(&Limits::ceiling())
            .map_err(|e| ConfigError::Limits(format!("max: {e}")))?;
        serve.limits.check_within(&serve.max).map_err(|e| {
            ConfigError::Limits(format!("limits: {e}; raise [max] or lower [limits]"))
        })?;
        settings.serve = serve;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Layer {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Layer::from_env(|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("insitu.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nworkers = 3\nlog_format = \"json\"\ninsecure_registries = [\"a:5000\"]\n[limits]\ntimeout = \"10s\"\nmemory = \"64MiB\"\n[max]\ntimeout = \"1h\"\n",
        )
        .unwrap();
        let flags = Layer {
            workers: Some(5),
            origin: "flags".into(),
            ..Layer::default()
        };
        let s = Settings::resolve(&[
            Layer::from_file(&file).unwrap(),
            env(&[
                ("INSITU_LISTEN", "127.0.0.1:9100"),
                ("INSITU_WORKERS", "4"),
                ("INSITU_TIMEOUT", "20s"),
            ]),
            flags,
        ])
        .unwrap();
        assert_eq!(s.listen.port(), 9100);
        assert_eq!(s.serve.workers, 5);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.serve.insecure_registries, ["a:5000"]);
        assert_eq!(s.serve.limits.timeout, Duration::from_secs(20));
        assert_eq!(s.serve.limits.memory, 64 << 20);
        assert_eq!(s.serve.max.timeout, Duration::from_secs(3600));
        assert_eq!(s.serve.data_dir, PathBuf::from("insitu-data"));
    }

    #[test]
    fn bad_values_name_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("insitu.toml");
        std::fs::write(&file, "listen = \"here\"\n").unwrap();
        let err = Settings::resolve(&[Layer::from_file(&file).unwrap()]).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "config file {}, listen: `here` is not a valid listen address",
                file.display()
            )),
            "{err}"
        );
        std::fs::write(&file, "workers = 2\nlisten_on = 3\n").unwrap();
        let err = Layer::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("unknown field `listen_on`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = Settings::resolve(&[env(&[("INSITU_MEMORY", "lots")])]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment, limits.memory: `lots` is not a valid size"),
            "{err}"
        );
        let err = Settings::resolve(&[env(&[("INSITU_MAX_TIMEOUT", "5s")])]).unwrap_err();
        assert!(
            err.to_string().starts_with("limits: ") && err.to_string().contains("raise [max]"),
            "{err}"
        );
        assert!(
            Layer::from_env(|k| (k == "INSITU_WORKERS").then(|| "two".to_string()))
                .unwrap_err()
                .to_string()
                .starts_with("environment variable INSITU_WORKERS: `two` is not a valid number")
        );
    }

    #[test]
    fn chain_settings_keystore_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let keystore = dir.path().join("provider.json");
        let key = ProviderKey::random();
        key.write_keystore(&keystore, "pw").unwrap();
        let file = dir.path().join("insitu.toml");
        std::fs::write(
            &file,
            format!(
                "chain_rpc = \"http://127.0.0.1:8545\"\ncontracts = \"c.json\"\nprovider_keystore = \"{}\"\nchain_id = 31337\nconfirmations = 3\nmax_fee_per_gas = \"1.5gwei\"\ntx_timeout = \"45s\"\n",
                keystore.display()
            ),
        )
        .unwrap();
        let s = Settings::resolve(&[
            Layer::from_file(&file).unwrap(),
            env(&[
                ("INSITU_KEYSTORE_PASSWORD", "pw"),
                ("INSITU_GAS_MULTIPLIER", "1.5"),
            ]),
        ])
        .unwrap();
        assert_eq!(s.serve.provider_key.unwrap().address(), key.address());
        let chain = s.serve.chain.unwrap();
        assert_eq!(chain.tx.chain_id, Some(31337));
        assert_eq!(chain.tx.confirmations, 3);
        assert_eq!(chain.tx.gas_multiplier, 1.5);
        assert_eq!(chain.tx.max_fee_per_gas, Some(1_500_000_000));
        assert_eq!(chain.tx.timeout, Duration::from_secs(45));

        // The password is required, and checked; neither is ever printed.
        let err = Settings::resolve(&[Layer::from_file(&file).unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("its password is missing; set INSITU_KEYSTORE_PASSWORD"),
            "{err}"
        );
        let err = Settings::resolve(&[
            Layer::from_file(&file).unwrap(),
            env(&[("INSITU_KEYSTORE_PASSWORD", "wrong")]),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("wrong password"), "{err}");
        assert!(
            !err.contains("wrong\"") && !err.contains("`wrong`"),
            "{err}"
        );

        // `--mode local` overrides a file's chain settings; `chain` needs them.
        let local = Layer {
            mode: Some(Mode::Local),
            origin: "flags".into(),
            ..Layer::default()
        };
        let s = Settings::resolve(&[
            Layer::from_file(&file).unwrap(),
            env(&[("INSITU_KEYSTORE_PASSWORD", "pw")]),
            local,
        ])
        .unwrap();
        assert!(s.serve.chain.is_none());
        let err = Settings::resolve(&[env(&[("INSITU_MODE", "chain")])])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mode is chain but no chain is configured"),
            "{err}"
        );
        let err = Settings::resolve(&[env(&[("INSITU_CONFIRMATIONS", "0")])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("use 1 (mined) or more"), "{err}");
        let err = Settings::resolve(&[env(&[("INSITU_GAS_MULTIPLIER", "0.5")])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 1.0 to 10.0"), "{err}");
        let both = Layer {
            provider_key_file: Some("a".into()),
            provider_keystore: Some("b".into()),
            origin: "flags".into(),
            ..Layer::default()
        };
        let err = Settings::resolve(&[both]).unwrap_err().to_string();
        assert!(err.ends_with("set one of them"), "{err}");
    }

    #[test]
    fn fees_parse_in_wei_and_gwei() {
        assert_eq!(parse_wei("1000"), Ok(1000));
        assert_eq!(parse_wei("7 wei"), Ok(7));
        assert_eq!(parse_wei("50gwei"), Ok(50_000_000_000));
        assert_eq!(parse_wei("0.000000001gwei"), Ok(1));
        assert_eq!(parse_wei(".5 GWei"), Ok(500_000_000));
        for bad in [
            "",
            "gwei",
            "1.2.3gwei",
            "-1",
            "1e9",
            "0.0000000001gwei",
            "5 eth",
        ] {
            assert!(parse_wei(bad).is_err(), "{bad}");
        }
    }
}
