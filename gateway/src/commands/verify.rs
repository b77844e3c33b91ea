//! `insitu verify`: a consumer (or anyone) checks a receipt with no server —
//! its hash and signature, the expected provider, the downloaded files, the
//! on-chain commitment, and with `--reproduce` a local re-run of a
//! deterministic execution. One line per check on stdout; the command
//! succeeds iff every check holds.

use anyhow::Context;
use insitu_runtime::image::{BlobStore, Puller};
use insitu_runtime::pipeline::ImageResolver;
use insitu_runtime::verify::{self, Report, Reproduction};
use std::path::PathBuf;

/// `insitu verify`: what to check.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VerifyCommand {
    /// The receipt: the `receipt` of GET …/compute/results/{id} saved as JSON
    /// (or the whole response), or its receipt.intoto.json (DSSE envelope).
    #[arg(long, value_name = "FILE")]
    pub receipt: PathBuf,
    /// The provider's address it must be signed by.
    #[arg(long, value_name = "0xADDRESS")]
    pub provider: Option<String>,
    /// The downloaded result files: each must match the receipt, and no other may be there.
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// Check that the receipt's hash is committed on-chain (with --contracts).
    #[arg(long, value_name = "URL", requires = "contracts")]
    pub chain_rpc: Option<String>,
    /// The contracts' addresses (JSON: name → address).
    #[arg(long, value_name = "FILE", requires = "chain_rpc")]
    pub contracts: Option<PathBuf>,
    /// Re-run the (deterministic) execution locally and compare every digest.
    #[arg(long, requires = "inputs")]
    pub reproduce: bool,
    /// With --reproduce: a dataset directory, one per dataset of the receipt, in its order.
    #[arg(long = "input", value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// With --reproduce: an OCI layout searched for the stages' images before registries.
    #[arg(long = "image-layout", value_name = "DIR")]
    pub layouts: Vec<PathBuf>,
    /// Allow plain HTTP for this registry (repeatable).
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
}

impl VerifyCommand {
    /// Prints one line per check; `Ok(true)` iff all hold.
    ///
    /// # Errors
    /// As [`VerifyCommand::report`].
    pub fn execute(self) -> anyhow::Result<bool> {
        let report = self.report(super::shared::default_cache_dir())?;
        for check in &report.checks {
            println!("{check}");
        }
        Ok(report.ok())
    }

    /// Runs every check asked for and returns the report; `cache_dir` holds
    /// `--reproduce`'s blobs and modules (`None`: a temporary directory).
    ///
    /// # Errors
    /// An unreadable or malformed receipt file; host failures of `--reproduce`.
    pub fn report(&self, cache_dir: Option<PathBuf>) -> anyhow::Result<Report> {
        let args = self;
        let text = std::fs::read(&args.receipt)
            .with_context(|| format!("cannot read the receipt {}", args.receipt.display()))?;
        let (receipt, enveloped) = verify::parse(&text)
            .with_context(|| format!("{} is not a receipt", args.receipt.display()))?;
        let mut report = Report::default();
        if let Some(signer) = enveloped {
            let ok = signer.eq_ignore_ascii_case(&receipt.signer);
            report.push(
                "envelope",
                ok,
                if ok {
                    format!("DSSE envelope signed by {signer}")
                } else {
                    format!(
                        "the DSSE envelope is signed by {signer}, the receipt inside by {}",
                        receipt.signer
                    )
                },
            );
        }
        report.checks.extend(
            verify::verify(&receipt, args.provider.as_deref(), args.files.as_deref()).checks,
        );
        let rt = super::shared::runtime()?;
        if let (Some(rpc), Some(contracts)) = (&args.chain_rpc, &args.contracts) {
            let addresses = insitu_chain::Addresses::from_file(contracts)?;
            // Reads only: a throwaway key, never used to send anything.
            let chain = insitu_chain::Chain::connect(
                rpc,
                addresses,
                &insitu_runtime::receipt::ProviderKey::random(),
            )?;
            report
                .checks
                .push(rt.block_on(insitu_chain::verify_committed(&chain, &receipt)));
        }
        if args.reproduce {
            let inputs = &args.inputs;
            let temp = tempfile::Builder::new()
                .prefix("insitu-verify-")
                .tempdir()?;
            let cache = cache_dir.unwrap_or_else(|| temp.path().join("cache"));
            let sandbox = super::shared::local_sandbox(Some(&cache))?;
            let puller = Puller::new(BlobStore::open(cache.join("blobs"))?);
            let images = ImageResolver {
                layouts: args.layouts.clone(),
                insecure: args.insecure_registry.clone(),
                auth: None,
            };
            let work = temp.path().join("work");
            let reproduced = rt.block_on(verify::reproduce(
                &receipt,
                &Reproduction {
                    sandbox: &sandbox,
                    puller: &puller,
                    images: &images,
                    inputs,
                    work: &work,
                },
            ))?;
            report.checks.extend(reproduced.checks);
        }
        Ok(report)
    }
}
