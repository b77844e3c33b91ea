//! `insitu demo`: runs the example algorithms on generated sample data through
//! the sandbox and prints what happened.

use insitu_examples::ALL;
use insitu_runtime::Status;
use insitu_runtime::sandbox::{JobSpec, StopHandle};

/// Runs every example; returns whether all succeeded.
///
/// # Errors
/// Host-side failures (temp dirs, sandbox setup).
pub fn execute() -> anyhow::Result<bool> {
    let work = tempfile::Builder::new().prefix("insitu-demo-").tempdir()?;
    let sandbox = super::local_sandbox(None)?;
    let rt = super::runtime()?;
    println!(
        "insitu demo: running {} example algorithms in the wasm sandbox\n",
        ALL.len()
    );
    let mut all_ok = true;
    for example in ALL {
        let dir = work.path().join(example.name);
        let (data, output, logs) = (dir.join("data"), dir.join("output"), dir.join("logs"));
        insitu_examples::write_sample(example.sample, &data)?;
        for d in [&output, &logs] {
            std::fs::create_dir_all(d)?;
        }
        let module = sandbox.prepare(example.wasm)?;
        let mut spec = JobSpec::new(example.name, output.clone(), logs.clone()).input(data);
        spec.args = example.args.iter().map(|s| s.to_string()).collect();
        let report = rt.block_on(sandbox.run(&module, &spec, &StopHandle::default()))?;
        println!(
            "{:<13} {} ({:?}) in {} ms, {} bytes of output, module {}",
            example.name,
            report.status.as_str(),
            report.outcome,
            report.duration_ms,
            report.output_bytes,
            &report.module_digest[..19],
        );
        match std::fs::read_to_string(output.join(example.result)) {
            Ok(text) => {
                let shown: String = text.chars().take(360).collect();
                let more = if text.len() > shown.len() {
                    "\n  …"
                } else {
                    ""
                };
                println!(
                    "  {}: {}{more}\n",
                    example.result,
                    shown.replace('\n', "\n  ")
                );
            }
            Err(e) => println!("  no {}: {e}\n", example.result),
        }
        if report.status != Status::Succeeded {
            all_ok = false;
            println!("  error: {}", report.error.unwrap_or_default());
        }
    }
    println!(
        "{}",
        if all_ok {
            "all examples succeeded"
        } else {
            "some examples FAILED"
        }
    );
    Ok(all_ok)
}
