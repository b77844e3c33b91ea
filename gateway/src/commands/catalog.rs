//! `insitu asset add`, `insitu workflow add`, `insitu agreement grant`: the
//! provider's catalog and local agreements in `<data-dir>/insitu.db`. Each
//! prints one line whose last word is the new identifier.

use anyhow::Context;
use insitu_runtime::store::Store;
use insitu_runtime::workflow::Did;
use std::path::Path;

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
    /// The price of each service, in the currency's smallest unit.
    pub price: Option<String>,
    /// The ERC-20 token of the price (`None`: native currency).
    pub price_token: Option<String>,
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
    let did = open(data_dir)?.register_dataset(&insitu_runtime::store::DatasetSpec {
        name,
        path,
        allowed_images: &allowed,
        timeout_secs: offer.timeout_secs,
        server: offer.server,
        price: offer.price.clone(),
        price_token: offer.price_token.clone(),
        access: offer.access,
        did: None,
        deterministic: offer.deterministic,
        about: offer.about.clone(),
    })?;
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
    use insitu_runtime::store::DatasetSpec;
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
        super::runtime()?.block_on(client.register_did(seed.into(), Default::default()))?;
    let did = insitu_chain::did_of(did);
    store.register_dataset(&DatasetSpec {
        name,
        path,
        allowed_images: &allowed,
        timeout_secs: offer.timeout_secs,
        server: offer.server,
        price: offer.price.clone(),
        price_token: offer.price_token.clone(),
        access: offer.access,
        did: Some(did.clone()),
        deterministic: offer.deterministic,
        about: offer.about.clone(),
    })?;
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
