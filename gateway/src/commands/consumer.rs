//! The consumer's side, for scripts and `curl` users: `insitu key new`,
//! `insitu grant` (a Nevermined JWT grant, as the JS SDK signs it) and
//! `insitu sign` (EIP-191 `personal_sign`, e.g. of an agreement id for the
//! seed spec's `exec` form).

use super::shared::print_line;
use crate::auth::{AUD_COMPUTE, AUD_EXECUTE, make_grant};
use anyhow::{Context, bail};
use insitu_runtime::receipt::ProviderKey;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Creates a secp256k1 key file (mode 0600): hex, or with `keystore` an
/// encrypted keystore with the password in `INSITU_KEYSTORE_PASSWORD` —
/// of a fresh key, or of the hex key in `from`; returns its address.
///
/// # Errors
/// When the file exists (never overwritten), cannot be written, or a
/// keystore's password is not set.
pub fn new_key(path: &Path, keystore: bool, from: Option<&Path>) -> anyhow::Result<String> {
    if path.exists() {
        bail!(
            "{} already exists; keys are never overwritten (its address: insitu key address {})",
            path.display(),
            path.display()
        );
    }
    if keystore {
        let password = super::shared::keystore_password().ok_or_else(|| {
            anyhow::anyhow!("set the keystore's password in INSITU_KEYSTORE_PASSWORD")
        })?;
        let key = match from {
            Some(f) => ProviderKey::open(f, None)?,
            None => ProviderKey::random(),
        };
        key.write_keystore(path, &password)?;
        return Ok(key.address());
    }
    Ok(ProviderKey::load_or_create(path)?.address())
}

/// The address of the key in `path`.
///
/// # Errors
/// When the file is missing or not a key.
pub fn address(path: &Path) -> anyhow::Result<String> {
    Ok(load(path)?.address())
}

/// A key file: hex, or a keystore opened with `INSITU_KEYSTORE_PASSWORD`.
fn load(path: &Path) -> anyhow::Result<ProviderKey> {
    Ok(ProviderKey::open(
        path,
        super::shared::keystore_password().as_deref(),
    )?)
}

/// What a grant is for.
#[derive(Debug, Clone, Copy)]
pub enum GrantFor<'a> {
    /// Execute this workflow DID.
    Execute(&'a str),
    /// Watch, stop and download this execution.
    Execution(&'a str),
    /// Download this dataset's files (access agreements).
    Access(&'a str),
    /// Publish own workflows and algorithms (no agreement).
    Publish,
}

/// A signed grant for `agreement` and `target`, valid `ttl` seconds.
///
/// # Errors
/// When the key cannot be read.
pub fn grant(
    key: &Path,
    agreement: &str,
    target: GrantFor<'_>,
    ttl: u64,
) -> anyhow::Result<String> {
    let key = load(key)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({"iss": key.address(), "sub": agreement, "eths": "personal", "iat": now, "exp": now + ttl});
    match target {
        GrantFor::Execute(w) => {
            claims["aud"] = json!(AUD_EXECUTE);
            claims["did"] = json!(w);
        }
        GrantFor::Execution(e) => {
            claims["aud"] = json!(AUD_COMPUTE);
            claims["execution_id"] = json!(e);
        }
        GrantFor::Access(d) => {
            claims["aud"] = json!(crate::auth::AUD_ACCESS);
            claims["did"] = json!(d);
        }
        GrantFor::Publish => {
            claims["aud"] = json!(crate::auth::AUD_PUBLISH);
            if let Some(c) = claims.as_object_mut() {
                c.remove("sub");
            }
        }
    }
    Ok(make_grant(&key, &claims)?)
}

/// EIP-191 `personal_sign` of the text `message` as `0x` + 130 hex.
///
/// # Errors
/// When the key cannot be read.
pub fn sign(key: &Path, message: &str) -> anyhow::Result<String> {
    Ok(load(key)?.personal_sign(message.as_bytes())?)
}

/// The seed spec's exec form for `agreement` and `workflow`, signed with
/// `key` ([`crate::auth::exec_message`], a fresh random nonce, the time
/// `now`), as an `application/x-www-form-urlencoded` body for
/// `POST /api/v1/gateway/services/exec`.
///
/// # Errors
/// When the key cannot be read or the OS gives no randomness.
pub fn exec_form(key: &Path, agreement: &str, workflow: &str, now: u64) -> anyhow::Result<String> {
    let key = load(key)?;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let nonce = hex::encode(raw);
    let message = crate::auth::exec_message(agreement, workflow, &nonce, now);
    let signature = key.personal_sign(message.as_bytes())?;
    Ok(format!(
        "serviceAgreementId={}&consumerAddress={}&workflowDID={}&nonce={nonce}&timestamp={now}&signature={signature}",
        agreement.to_ascii_lowercase(),
        key.address(),
        workflow.to_ascii_lowercase()
    ))
}

/// What a consumer pays for an agreement.
#[derive(Debug, Clone)]
pub struct Payment {
    /// In the currency's smallest unit (wei), as the DDO's service lists it.
    pub price: String,
    /// The ERC-20 token's address; `None`: the native currency.
    pub token: Option<String>,
    /// An access agreement (download the files) instead of compute.
    pub access: bool,
}

/// `insitu agreement create`: as the consumer, creates a compute (or
/// access) agreement on-chain for `dataset` (a `did:nv:` DID registered
/// on-chain) paying `payment` to `provider`, and locks the payment (after
/// approving the token, for an ERC-20 price). Returns the line to print.
///
/// # Errors
/// Bad arguments, the key, the chain (unreachable, reverted).
pub fn create_agreement(
    rpc: &str,
    contracts: &Path,
    key: &Path,
    dataset: &str,
    provider: &str,
    payment: &Payment,
) -> anyhow::Result<String> {
    use alloy_primitives::{Address, U256};
    let key = load(key)?;
    let did = insitu_chain::did_bytes(
        &insitu_runtime::workflow::Did::parse(dataset).map_err(anyhow::Error::msg)?,
    );
    let provider: Address = provider
        .parse()
        .with_context(|| format!("--provider `{provider}` is not an address"))?;
    let amount: U256 = payment
        .price
        .parse()
        .with_context(|| format!("--price `{}` is not an amount in wei", payment.price))?;
    let token: Address = match &payment.token {
        Some(t) => t
            .parse()
            .with_context(|| format!("--price-token `{t}` is not an address"))?,
        None => Address::ZERO,
    };
    let chain =
        insitu_chain::Chain::connect(rpc, insitu_chain::Addresses::from_file(contracts)?, &key)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let price = insitu_chain::Price {
        token,
        amounts: vec![amount],
        receivers: vec![provider],
    };
    let service = if payment.access {
        insitu_chain::Service::Access
    } else {
        insitu_chain::Service::Compute
    };
    let id = super::shared::runtime()?.block_on(chain.create_and_pay(
        seed.into(),
        did,
        &price,
        service,
    ))?;
    Ok(format!("agreement created and paid: {id:#x}"))
}

/// `insitu key`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum KeyCommand {
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

impl KeyCommand {
    /// Creates a key file, or prints a key file's address.
    ///
    /// # Errors
    /// As [`new_key`] and [`address`].
    pub fn execute(self) -> anyhow::Result<bool> {
        match self {
            KeyCommand::New {
                file,
                keystore,
                from,
            } => print_line(new_key(&file, keystore, from.as_deref())),
            KeyCommand::Address { file } => print_line(address(&file)),
        }
    }
}

/// `insitu grant`.
#[derive(clap::Args, Debug, Clone)]
pub struct GrantCommand {
    /// The consumer's key file (hex).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The agreement id (0x + 64 hex).
    #[arg(long, required_unless_present = "publish")]
    pub agreement: Option<String>,
    /// Grant to execute this workflow DID.
    #[arg(
        long,
        conflicts_with_all = ["execution", "dataset", "publish"],
        required_unless_present_any = ["execution", "dataset", "publish"]
    )]
    pub workflow: Option<String>,
    /// Grant to publish own workflows and algorithms
    /// (POST /api/v1/metadata/assets/ddo); needs no agreement.
    #[arg(long, conflicts_with_all = ["execution", "dataset", "agreement"])]
    pub publish: bool,
    /// Grant to download this dataset's files (an access agreement).
    #[arg(long, conflicts_with = "execution")]
    pub dataset: Option<String>,
    /// Grant to watch, stop and download this execution.
    #[arg(long)]
    pub execution: Option<String>,
    /// Seconds the grant is valid.
    #[arg(long, default_value_t = 300)]
    pub ttl: u64,
}

impl GrantCommand {
    /// Prints the signed grant.
    ///
    /// # Errors
    /// As [`grant`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let target = match (&self.workflow, &self.execution, &self.dataset) {
            _ if self.publish => GrantFor::Publish,
            (Some(w), _, _) => GrantFor::Execute(w),
            (_, Some(e), _) => GrantFor::Execution(e),
            (_, _, Some(d)) => GrantFor::Access(d),
            _ => unreachable!("clap requires one of --workflow, --execution, --dataset, --publish"),
        };
        print_line(grant(
            &self.key,
            self.agreement.as_deref().unwrap_or_default(),
            target,
            self.ttl,
        ))
    }
}

/// Print the personal_sign (EIP-191) signature of a text; with --exec,
/// a signed exec form (agreement, workflow, fresh nonce, timestamp) for
/// POST /api/v1/gateway/services/exec.
#[derive(clap::Args, Debug, Clone)]
pub struct SignCommand {
    /// The key file (hex).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The text to sign.
    #[arg(required_unless_present = "exec")]
    pub message: Option<String>,
    /// Print the exec form body for this agreement and workflow instead.
    #[arg(long, num_args = 2, value_names = ["AGREEMENT", "WORKFLOW"], conflicts_with = "message")]
    pub exec: Option<Vec<String>>,
}

impl SignCommand {
    /// Prints the signature, or the signed exec form.
    ///
    /// # Errors
    /// As [`sign`] and [`exec_form`].
    pub fn execute(self) -> anyhow::Result<bool> {
        match (self.exec, self.message) {
            (Some(e), _) => print_line(exec_form(
                &self.key,
                &e[0],
                &e[1],
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )),
            (None, m) => print_line(sign(&self.key, &m.unwrap_or_default())),
        }
    }
}
