//! `insitu asset add`, `insitu workflow add`, `insitu agreement grant`: the
//! provider's catalog and local agreements in `<data-dir>/insitu.db`. Each
//! prints one line whose last word is the new identifier.

use super::shared::print_line;
use anyhow::Context;
use clap::Subcommand;
use insitu_runtime::store::{DatasetSpec, Store};
use insitu_runtime::units::{parse_duration, parse_size};
use insitu_runtime::workflow::Did;
use std::path::Path;
use std::path::PathBuf;

/// Opens the store in `data_dir`, creating the directory.
///
/// # Errors
/// When the directory or the database cannot be created.
pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    Ok(Store::open(data_dir.join("insitu.db"))?)
}

/// The checksum of `REF@sha256:…` or of a bare `sha256:…`.
fn checksum(image: &str) -> &str {
    image.rsplit_once('@').map_or(image, |(_, d)| d)
}

/// What a dataset's compute service offers.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// The compute service's time-out, seconds.
    pub timeout_secs: u64,
    /// The resources it offers each stage.
    pub server: insitu_runtime::store::Server,
    /// Stages reading it run in deterministic mode.
    pub deterministic: bool,
    /// Description, tags and author for the catalog.
    pub about: insitu_runtime::store::About,
    /// Also offer the files for download.
    pub access: bool,
    /// How results computed from it may leave (validated by the caller).
    pub output: insitu_runtime::airlock::OutputPolicy,
    /// The price of each service, in the currency's smallest unit.
    pub price: Option<String>,
    /// The ERC-20 token of the price (`None`: native currency).
    pub price_token: Option<String>,
}

impl Offer {
    /// The dataset `name` at `path` offered so, allowing the `allowed`
    /// checksums, under `did` (`None`: a fresh one).
    fn spec<'a>(
        &'a self,
        name: &'a str,
        path: &'a Path,
        allowed: &'a [String],
        did: Option<Did>,
    ) -> DatasetSpec<'a> {
        DatasetSpec {
            name,
            path,
            allowed_images: allowed,
            timeout_secs: self.timeout_secs,
            server: self.server,
            price: self.price.clone(),
            price_token: self.price_token.clone(),
            access: self.access,
            did,
            deterministic: self.deterministic,
            about: self.about.clone(),
        }
    }
}

/// Registers a dataset; returns the line to print.
///
/// # Errors
/// Bad path, malformed checksums, database errors.
pub fn add_dataset(
    data_dir: &Path,
    path: &Path,
    name: &str,
    allow: &[String],
    offer: &Offer,
) -> anyhow::Result<String> {
    let allowed: Vec<String> = allow.iter().map(|a| checksum(a).to_string()).collect();
    let store = open(data_dir)?;
    let did = store.register_dataset(&offer.spec(name, path, &allowed, None))?;
    if !offer.output.is_open() {
        store.set_output_policy(&did, &offer.output)?;
    }
    Ok(format!("dataset `{name}` registered as {did}"))
}

/// Chain mode of `asset add`: where and as whom the DID is registered on-chain.
#[derive(Debug, Clone)]
pub struct OnChain {
    pub rpc: String,
    pub contracts: std::path::PathBuf,
    pub key: insitu_runtime::receipt::ProviderKey,
}

/// Registers a dataset whose DID is first registered on-chain by the
/// provider (so it may grant compute on it); the catalog's `did:nv:<hex>` and
/// the on-chain `bytes32` are the same value. Returns the line to print.
///
/// # Errors
/// Bad path or checksums (checked before any transaction), the chain
/// (unreachable, reverted), database errors.
pub fn add_dataset_on_chain(
    data_dir: &Path,
    path: &Path,
    name: &str,
    allow: &[String],
    offer: &Offer,
    chain: &OnChain,
) -> anyhow::Result<String> {
    let allowed: Vec<String> = allow.iter().map(|a| checksum(a).to_string()).collect();
    for c in &allowed {
        insitu_runtime::image::check_digest(c)?;
    }
    anyhow::ensure!(
        path.is_dir(),
        "dataset {} is not a directory",
        path.display()
    );
    let price = offer.price.as_deref().unwrap_or_default();
    anyhow::ensure!(
        !price.is_empty() && price.bytes().all(|b| b.is_ascii_digit()),
        "--price must be an amount in wei (digits only), not `{price}`"
    );
    if let Some(token) = &offer.price_token {
        insitu_runtime::store::parse_address(token)
            .map_err(|e| anyhow::anyhow!("--price-token: {e}"))?;
    }
    let store = open(data_dir)?;
    let addresses = insitu_chain::Addresses::from_file(&chain.contracts)?;
    let client = insitu_chain::Chain::connect(&chain.rpc, addresses, &chain.key)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let (did, tx) =
        super::shared::runtime()?.block_on(client.register_did(seed.into(), Default::default()))?;
    let did = insitu_chain::did_of(did);
    store.register_dataset(&offer.spec(name, path, &allowed, Some(did.clone())))?;
    if !offer.output.is_open() {
        store.set_output_policy(&did, &offer.output)?;
    }
    Ok(format!(
        "dataset `{name}` registered on-chain (tx {tx:#x}) as {did}"
    ))
}

/// Registers a workflow from a JSON file; returns the line to print.
///
/// # Errors
/// Unreadable file, invalid workflow (with its JSON path), unknown datasets.
pub fn add_workflow(data_dir: &Path, file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read(file)
        .with_context(|| format!("cannot read the workflow {}", file.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("workflow {}: not valid JSON: {e}", file.display()))?;
    let workflow = insitu_runtime::workflow::Workflow::from_value(&doc)?;
    let did = open(data_dir)?.add_workflow(&doc)?;
    Ok(format!(
        "workflow `{}` ({} stages) registered as {did}",
        workflow.name,
        workflow.stages.len()
    ))
}

/// Registers an algorithm asset (an image pinned by digest); returns the
/// line to print.
///
/// # Errors
/// A reference without a digest, database errors.
pub fn add_algorithm(data_dir: &Path, image: &str, name: &str) -> anyhow::Result<String> {
    let did = open(data_dir)?.add_algorithm(name, image)?;
    Ok(format!("algorithm `{name}` ({image}) registered as {did}"))
}

/// Grants a local agreement; returns the line to print.
///
/// # Errors
/// Malformed address or DIDs, unknown assets.
pub fn grant(
    data_dir: &Path,
    consumer: &str,
    dataset: &str,
    workflow: &str,
    timeout_secs: u64,
) -> anyhow::Result<String> {
    let parse = |what: &str, s: &str| Did::parse(s).map_err(|r| anyhow::anyhow!("--{what}: {r}"));
    let (dataset, workflow) = (parse("dataset", dataset)?, parse("workflow", workflow)?);
    let id = open(data_dir)?.grant(consumer, &dataset, &workflow, timeout_secs)?;
    Ok(format!(
        "agreement for {consumer} valid {timeout_secs} s: {id}"
    ))
}

/// Grants a local access agreement (download the dataset's files); returns
/// the line to print.
///
/// # Errors
/// Malformed address or DID, unknown dataset, a dataset not offered for
/// download.
pub fn grant_access(
    data_dir: &Path,
    consumer: &str,
    dataset: &str,
    timeout_secs: u64,
) -> anyhow::Result<String> {
    let dataset = Did::parse(dataset).map_err(|r| anyhow::anyhow!("--dataset: {r}"))?;
    let id = open(data_dir)?.grant_access(consumer, &dataset, timeout_secs)?;
    Ok(format!(
        "access agreement for {consumer} valid {timeout_secs} s: {id}"
    ))
}

/// The recorded downloads as a table (or JSON lines), newest first.
///
/// # Errors
/// A malformed DID, database errors.
pub fn downloads(
    data_dir: &Path,
    dataset: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<String> {
    let dataset = dataset
        .map(|d| Did::parse(d).map_err(|r| anyhow::anyhow!("--dataset: {r}")))
        .transpose()?;
    let rows = open(data_dir)?.downloads(dataset.as_ref(), limit)?;
    let mut out = String::new();
    if json {
        for r in &rows {
            out.push_str(&serde_json::to_string(r)?);
            out.push('\n');
        }
    } else {
        out.push_str("STARTED (UTC)         CONSUMER                                    BYTES        COMPLETE  DATASET / FILE\n");
        for r in &rows {
            out.push_str(&format!(
                "{:<21} {:<43} {:>12} {:<9} {}/{}\n",
                insitu_runtime::store::rfc3339(r.started_ms / 1000),
                r.consumer,
                r.bytes,
                if r.complete { "yes" } else { "no" },
                r.dataset,
                r.file
            ));
        }
    }
    Ok(out.trim_end().to_string())
}

/// `insitu asset`.
#[derive(Subcommand, Debug, Clone)]
pub enum AssetCommand {
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
        /// Output policy: `auto` releases results that pass the checks at
        /// once; `review` holds every result for a --reviewer [default: auto,
        /// or the --output-policy file's].
        #[arg(long, value_name = "auto|review")]
        release: Option<String>,
        /// Output policy: the most bytes results and logs may hold.
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        max_result_bytes: Option<u64>,
        /// Output policy: the only file types results may have (extensions,
        /// comma-separated, e.g. csv,json).
        #[arg(long, value_name = "EXT,EXT", value_delimiter = ',')]
        result_types: Vec<String>,
        /// Output policy: integer cells 0 < v < K in CSV or JSON results fail.
        #[arg(long, value_name = "K")]
        min_count: Option<u64>,
        /// Output policy: the largest share (0 to 1) of the results' and
        /// logs' bytes that may be copied from the inputs.
        #[arg(long, value_name = "SHARE")]
        max_copied_share: Option<f64>,
        /// Output policy: who may release or reject held results
        /// (repeatable); results failing a check are held for them.
        #[arg(long = "reviewer", value_name = "NAME")]
        reviewers: Vec<String>,
        /// Output policy from a TOML file (`release`, `max_result_bytes`,
        /// `file_types`, `min_count`, `max_copied_share`, `reviewers`); the
        /// flags above override it.
        #[arg(long, value_name = "FILE.toml")]
        output_policy: Option<PathBuf>,
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

impl AssetCommand {
    /// Registers the dataset (and its DID on-chain in chain mode); prints its DID.
    ///
    /// # Errors
    /// As [`add_dataset`] and [`add_dataset_on_chain`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let AssetCommand::Add {
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
            release,
            max_result_bytes,
            result_types,
            min_count,
            max_copied_share,
            reviewers,
            output_policy,
            chain_rpc,
            contracts,
            price,
            price_token,
            provider_key_file,
            provider_keystore,
        } = self;
        let output = output_policy_of(
            output_policy.as_deref(),
            release.as_deref(),
            max_result_bytes,
            result_types,
            min_count,
            max_copied_share,
            reviewers,
        )?;
        let offer = super::catalog::Offer {
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
            output,
        };
        match (chain_rpc, contracts) {
            (Some(rpc), Some(contracts)) => super::shared::provider_key(
                &data_dir,
                provider_key_file.as_deref(),
                provider_keystore.as_deref(),
            )
            .and_then(|key| {
                print_line(super::catalog::add_dataset_on_chain(
                    &data_dir,
                    &path,
                    &name,
                    &allow_images,
                    &offer,
                    &super::catalog::OnChain {
                        rpc,
                        contracts,
                        key,
                    },
                ))
            }),
            _ => print_line(super::catalog::add_dataset(
                &data_dir,
                &path,
                &name,
                &allow_images,
                &offer,
            )),
        }
    }
}

/// `insitu workflow`.
#[derive(Subcommand, Debug, Clone)]
pub enum WorkflowCommand {
    /// Register a workflow (its metadata, or a DDO holding it); prints its DID.
    Add {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        #[arg(long, value_name = "WORKFLOW.json")]
        file: PathBuf,
    },
}

impl WorkflowCommand {
    /// Registers the workflow; prints its DID.
    ///
    /// # Errors
    /// As [`add_workflow`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let WorkflowCommand::Add { data_dir, file } = self;
        print_line(add_workflow(&data_dir, &file))
    }
}

/// `insitu algorithm`.
#[derive(Subcommand, Debug, Clone)]
pub enum AlgorithmCommand {
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

impl AlgorithmCommand {
    /// Registers the algorithm asset; prints its DID.
    ///
    /// # Errors
    /// As [`add_algorithm`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let AlgorithmCommand::Add {
            data_dir,
            image,
            name,
        } = self;
        print_line(add_algorithm(&data_dir, &image, &name))
    }
}

/// `insitu agreement`.
#[derive(Subcommand, Debug, Clone)]
pub enum AgreementCommand {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Compute,
    Access,
}

impl AgreementCommand {
    /// Grants a local agreement, or (chain mode, as the consumer) creates
    /// and pays one; prints its id.
    ///
    /// # Errors
    /// As [`grant`], [`grant_access`] and [`super::consumer::create_agreement`].
    pub fn execute(self) -> anyhow::Result<bool> {
        match self {
            AgreementCommand::Grant {
                data_dir,
                consumer,
                dataset,
                service,
                workflow,
                timeout,
            } => print_line(match (service, workflow) {
                (Service::Compute, Some(workflow)) => {
                    grant(&data_dir, &consumer, &dataset, &workflow, timeout)
                }
                (Service::Compute, None) => Err(anyhow::anyhow!(
                    "a compute agreement names the workflow it runs: add --workflow DID"
                )),
                (Service::Access, None) => grant_access(&data_dir, &consumer, &dataset, timeout),
                (Service::Access, Some(_)) => Err(anyhow::anyhow!(
                    "an access agreement downloads the dataset's files and runs no workflow: drop --workflow"
                )),
            }),
            AgreementCommand::Create {
                chain_rpc,
                contracts,
                key,
                dataset,
                provider,
                price,
                price_token,
                service,
            } => print_line(super::consumer::create_agreement(
                &chain_rpc,
                &contracts,
                &key,
                &dataset,
                &provider,
                &super::consumer::Payment {
                    price,
                    token: price_token,
                    access: service == Service::Access,
                },
            )),
        }
    }
}

/// `insitu downloads`.
#[derive(Subcommand, Debug, Clone)]
pub enum DownloadsCommand {
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

impl DownloadsCommand {
    /// Prints the recorded downloads.
    ///
    /// # Errors
    /// As [`downloads`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let DownloadsCommand::List {
            data_dir,
            dataset,
            limit,
            json,
        } = self;
        print_line(downloads(&data_dir, dataset.as_deref(), limit, json))
    }
}

/// The output policy `insitu asset add` was given: the file's, then the
/// flags over it; validated.
///
/// # Errors
/// An unreadable or malformed file; a bad value (what and how to fix it).
fn output_policy_of(
    file: Option<&Path>,
    release: Option<&str>,
    max_result_bytes: Option<u64>,
    result_types: Vec<String>,
    min_count: Option<u64>,
    max_copied_share: Option<f64>,
    reviewers: Vec<String>,
) -> anyhow::Result<insitu_runtime::airlock::OutputPolicy> {
    use insitu_runtime::airlock::{OutputPolicy, Release};
    let mut p = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the output policy {}", f.display()))?;
            toml::from_str::<OutputPolicy>(&text).map_err(|e| {
                anyhow::anyhow!(
                    "the output policy {} is not valid: {e}; keys: release, max_result_bytes, file_types, min_count, max_copied_share, reviewers",
                    f.display()
                )
            })?
        }
        None => OutputPolicy::default(),
    };
    match release {
        None => {}
        Some("auto") => p.release = Release::Auto,
        Some("review") => p.release = Release::Review,
        Some(other) => anyhow::bail!("--release must be `auto` or `review`, not `{other}`"),
    }
    p.max_result_bytes = max_result_bytes.or(p.max_result_bytes);
    if !result_types.is_empty() {
        p.file_types = result_types;
    }
    p.min_count = min_count.or(p.min_count);
    p.max_copied_share = max_copied_share.or(p.max_copied_share);
    if !reviewers.is_empty() {
        p.reviewers = reviewers;
    }
    Ok(p.validated()?)
}
