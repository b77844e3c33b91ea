//! End-to-end tests of the sandbox: the examples, the guest contract, limits,
//! and hostile guests. One test binary (build time matters on small machines).

mod contract;
mod determinism;
mod federated;
mod hostile;
mod images;
mod pipeline;

use insitu_runtime::RunReport;
use insitu_runtime::sandbox::{JobSpec, Limits, Sandbox, SandboxConfig, StopHandle};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One pooled sandbox shared by the tests, as in a server.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            concurrency: 8,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

/// A job's directories in a temp dir; `secret.txt` lives outside every mount.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub input: PathBuf,
    pub output: PathBuf,
    pub logs: PathBuf,
}

#[allow(clippy::new_without_default)]
impl Dirs {
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        let output = tmp.path().join("output");
        let logs = tmp.path().join("logs");
        for d in [&input, &output, &logs, &input.join("sub")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(input.join("data.txt"), "hello world\nHello insitu\n").unwrap();
        std::fs::write(input.join("sub/more.txt"), "world\n").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "the provider's secret").unwrap();
        Dirs {
            tmp,
            input,
            output,
            logs,
        }
    }

    pub fn spec(&self, name: &str, args: &[&str]) -> JobSpec {
        let mut spec =
            JobSpec::new(name, self.output.clone(), self.logs.clone()).input(self.input.clone());
        spec.args = args.iter().map(|s| s.to_string()).collect();
        spec
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.join("stdout.log")).unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.join("stderr.log")).unwrap()
    }
}

/// Prepares and runs `wasm` for `spec`.
pub async fn run(wasm: &[u8], spec: &JobSpec) -> RunReport {
    let module = sandbox().prepare(wasm).expect("prepare");
    sandbox()
        .run(&module, spec, &StopHandle::default())
        .await
        .expect("run")
}

pub fn limits() -> Limits {
    Limits::default()
}
