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

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyArgs {
    /// The receipt: the `receipt` of GET …/compute/results/{id} (or that whole
    /// response), or its `receipt.intoto.json` envelope.
    pub receipt: PathBuf,
    /// The provider's address the receipt must be signed by.
    pub provider: Option<String>,
    /// The downloaded result files.
    pub files: Option<PathBuf>,
    /// Chain: the JSON-RPC endpoint and the contracts' addresses.
    pub chain: Option<(String, PathBuf)>,
    /// Re-run the execution locally with these datasets (in the receipt's order).
    pub reproduce: Option<Vec<PathBuf>>,
    /// Where `--reproduce` finds images before registries.
    pub layouts: Vec<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// Blob and module caches (`None`: a temporary directory).
    pub cache_dir: Option<PathBuf>,
}

/// Runs every check `args` asks for and returns the report (the caller
/// prints it and maps [`Report::ok`] to the exit code).
///
/// # Errors
/// An unreadable or malformed receipt file; host failures of `--reproduce`.
pub fn run(args: &VerifyArgs) -> anyhow::Result<Report> {
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
    report
        .checks
        .extend(verify::verify(&receipt, args.provider.as_deref(), args.files.as_deref()).checks);
    let rt = super::runtime()?;
    if let Some((rpc, contracts)) = &args.chain {
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
    if let Some(inputs) = &args.reproduce {
        let temp = tempfile::Builder::new()
            .prefix("insitu-verify-")
            .tempdir()?;
        let cache = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("cache"));
        let sandbox = super::local_sandbox(Some(&cache))?;
        let puller = Puller::new(BlobStore::open(cache.join("blobs"))?);
        let images = ImageResolver {
            layouts: args.layouts.clone(),
            insecure: args.insecure_registries.clone(),
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
