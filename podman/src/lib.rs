//! Native (non-wasm) images as Podman containers on the provider's own
//! machine: the third [`Backend`], for providers with one machine and no
//! cluster (Ocean's C2D offers a plain Docker engine for the same need).
//!
//! A stage runs with the guest contract of the wasm sandbox and of the
//! Kubernetes pods (`insitu-kubernetes`): each input read-only at
//! `/data/inputs/N`, `/data/outputs` and `/data/logs` writable, the
//! contract's arguments (`--inputN=… --output=… --logs=…` then the stage's
//! own), and nothing else — no environment (`--unsetenv-all`), no network
//! (`--network=none`), a read-only root filesystem with a small tmpfs `/tmp`,
//! every capability dropped, `no-new-privileges`, an unprivileged user, memory
//! and pids limits. The image is pulled by digest and its digest checked
//! before it runs; the wall-time limit and stops are enforced here (SIGKILL),
//! stdout and stderr are copied into the logs dir within the log quota (a
//! flood kills the container), and the output quota is checked at the end.
//! Outcomes map as for pods: exit code, OOM → `memory_exceeded`, deadline →
//! `timed_out`, pull or digest failure → `rejected`. Containers carry the
//! label `insitu.execution` and are removed on every end;
//! [`PodmanBackend::reconcile`] removes those a crash left behind.
//!
//! Everything goes through the `podman` command line (4.x), as an operator
//! would type it; no socket or service is needed. Podman runs as the user
//! insitu runs as — rootless for an ordinary user — except that rootless
//! Podman on a cgroup v1 host is refused ([`PodmanBackend::check`]): it would
//! ignore the memory and pids limits.

use insitu_runtime::backend::StopHandle;
use insitu_runtime::backend::{Backend, StageCode, StageJob, bytes_under};
use insitu_runtime::outcome::{Outcome, RunReport};
use insitu_runtime::permissions::BoxFuture;
use insitu_runtime::{Error, Status};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The label every container of insitu carries: the execution's id.
pub const LABEL: &str = "insitu.execution";

/// How the provider runs Podman (`[podman]` in the config file).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The `podman` binary. Default `podman` (on `PATH`).
    pub binary: PathBuf,
    /// The OCI runtime (`--runtime`), e.g. `runc` where crun cannot use the
    /// host's cgroups. Default: Podman's own choice.
    pub runtime: Option<String>,
    /// `user:group` the container runs as. Default `65534:65534` (nobody).
    pub user: String,
    /// Most processes and threads of a container. Default 256.
    pub pids_limit: u32,
    /// Size of the container's writable `/tmp` (tmpfs), bytes. Default 64 MiB.
    pub tmp_bytes: u64,
    /// Registries pulled from over plain HTTP (`--tls-verify=false`),
    /// `host[:port]`.
    pub insecure_registries: Vec<String>,
    /// A `containers.conf` for every Podman call (`CONTAINERS_CONF`), e.g.
    /// one with `[containers] default_ulimits = []` where insitu itself runs
    /// without `CAP_SYS_RESOURCE` (containers in a sandbox). Default: Podman's.
    pub containers_conf: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            binary: "podman".into(),
            runtime: None,
            user: "65534:65534".into(),
            pids_limit: 256,
            tmp_bytes: 64 << 20,
            insecure_registries: Vec::new(),
            containers_conf: None,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct PodmanBackend {
    pub settings: Settings,
    /// Images already pulled and checked (`repository@sha256:…`): a
    /// digest-pinned image never changes, so later stages skip the pull.
    pulled: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// How a container's run ended, as this backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Exited,
    Deadline,
    Stopped,
    LogFlood,
}

impl PodmanBackend {
    pub fn new(settings: Settings) -> PodmanBackend {
        PodmanBackend {
            settings,
            pulled: Default::default(),
        }
    }

    /// Its [`Backend::name`].
    pub const NAME: &'static str = "podman";

    fn podman(&self) -> Command {
        let mut c = Command::new(&self.settings.binary);
        if let Some(conf) = &self.settings.containers_conf {
            c.env("CONTAINERS_CONF", conf);
        }
        if let Some(r) = &self.settings.runtime {
            c.args(["--runtime", r]);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs `podman args…` and waits, blocking the thread (start-up only).
    fn output_now(&self, args: &[&str]) -> Result<String, Error> {
        let mut c = std::process::Command::new(&self.settings.binary);
        if let Some(conf) = &self.settings.containers_conf {
            c.env("CONTAINERS_CONF", conf);
        }
        if let Some(r) = &self.settings.runtime {
            c.args(["--runtime", r]);
        }
        let out = c
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| unavailable(&self.settings.binary, e))?;
        answer(args, out)
    }

    async fn output(&self, args: &[&str]) -> Result<String, Error> {
        let out = self
            .podman()
            .args(args)
            .output()
            .await
            .map_err(|e| unavailable(&self.settings.binary, e))?;
        answer(args, out)
    }

    /// Podman's version and mode, if it answers and can enforce the limits.
    /// Rootless Podman (insitu running as an ordinary user) is used as is,
    /// except on a cgroup v1 host, where it silently ignores memory and pids
    /// limits: that is refused. Blocks.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming what is wrong and what to do.
    pub fn check(&self) -> Result<String, Error> {
        let info = self.output_now(&[
            "info",
            "--format",
            "{{.Version.Version}} {{.Host.Security.Rootless}} {{.Host.CgroupsVersion}}",
        ])?;
        let mut parts = info.split_whitespace();
        let (version, rootless, cgroups) = (
            parts.next().unwrap_or("?").to_string(),
            parts.next() == Some("true"),
            parts.next().unwrap_or("?").to_string(),
        );
        if rootless && cgroups == "v1" {
            return Err(Error::Unavailable(format!(
                "Podman {version} runs rootless on a cgroup v1 host, where it ignores memory and pids limits; \
                 run insitu as root there, or on a cgroup v2 host (systemd.unified_cgroup_hierarchy=1)"
            )));
        }
        Ok(format!(
            "{version} ({}, cgroups {cgroups})",
            if rootless { "rootless" } else { "rootful" }
        ))
    }

    /// Removes every container labelled by insitu whose execution is not in
    /// `running`; returns how many. Call it when the gateway starts, before
    /// executions run. Blocks.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Podman cannot list or remove them.
    pub fn reconcile(&self, running: &[String]) -> Result<usize, Error> {
        let list = self.output_now(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{index .Labels \"{LABEL}\"}}}}"),
        ])?;
        let mut removed = 0;
        for line in list.lines() {
            let mut parts = line.split_whitespace();
            let (Some(id), execution) = (parts.next(), parts.next().unwrap_or_default()) else {
                continue;
            };
            if running.iter().any(|r| r == execution) {
                continue;
            }
            self.output_now(&["rm", "-f", "-t", "0", id])?;
            tracing::info!(
                container = id,
                execution,
                "removed a container a previous run left"
            );
            removed += 1;
        }
        Ok(removed)
    }

    /// Pulls `job.image` (`repository@sha256:…`) and checks that what Podman
    /// holds is that digest.
    async fn pull(&self, job: &StageJob) -> Result<(), Error> {
        if insitu_runtime::sync::lock(&self.pulled).contains(&job.image) {
            return Ok(());
        }
        let reject = |reason: String| Error::Rejected {
            digest: job.checksum.clone(),
            reason,
        };
        let registry = job.image.split('/').next().unwrap_or_default();
        let insecure = self
            .settings
            .insecure_registries
            .iter()
            .any(|r| r == registry);
        let mut args = vec!["pull", "--quiet"];
        if insecure {
            args.push("--tls-verify=false");
        }
        args.push(&job.image);
        self.output(&args)
            .await
            .map_err(|e| reject(format!("the image cannot be pulled: {e}")))?;
        let digest = self
            .output(&["image", "inspect", "--format", "{{.Digest}}", &job.image])
            .await
            .map_err(|e| reject(format!("the pulled image cannot be inspected: {e}")))?;
        if digest != job.checksum {
            return Err(reject(format!(
                "podman holds {digest} for {}, not the workflow's checksum {}",
                job.image, job.checksum
            )));
        }
        insitu_runtime::sync::lock(&self.pulled).insert(job.image.clone());
        Ok(())
    }

    /// The options, image and arguments of `podman run` / `podman create`
    /// for `job` (see the module documentation).
    pub fn container_args(&self, job: &StageJob, name: &str) -> Vec<String> {
        let s = &self.settings;
        let limits = &job.spec.limits;
        let mut a: Vec<String> = [
            "--name",
            name,
            "--label",
            &format!("{LABEL}={}", job.execution),
            "--label",
            &format!("insitu.stage={}", job.stage),
            "--network=none",
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs",
            &format!("/tmp:rw,nosuid,nodev,size={}", s.tmp_bytes),
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            "--user",
            &s.user,
            "--memory",
            &limits.memory.to_string(),
            "--memory-swap",
            &limits.memory.to_string(),
            "--pids-limit",
            &s.pids_limit.to_string(),
            "--unsetenv-all",
            "--hostname",
            "insitu",
            "--log-driver=none",
            "--pull=never",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        for (n, input) in job.spec.inputs.iter().enumerate() {
            a.push("--volume".into());
            a.push(format!("{}:/data/inputs/{}:ro", input.display(), n + 1));
        }
        for (dir, at) in [
            (&job.spec.output, "/data/outputs"),
            (&job.spec.logs, "/data/logs"),
        ] {
            a.push("--volume".into());
            a.push(format!("{}:{at}:rw", dir.display()));
        }
        a.push(job.image.clone());
        a.extend((1..=job.spec.inputs.len()).map(|n| format!("--input{n}=/data/inputs/{n}")));
        a.push("--output=/data/outputs".into());
        a.push("--logs=/data/logs".into());
        a.extend(job.spec.args.iter().cloned());
        a
    }

    async fn run_stage(&self, job: &StageJob, stop: &StopHandle) -> Result<RunReport, Error> {
        let started = Instant::now();
        if !matches!(job.code, StageCode::Native) {
            return Err(Error::BadImage {
                digest: job.checksum.clone(),
                reason: "a wasm module reached the podman backend".into(),
            });
        }
        if let Err(e) = self.pull(job).await {
            return match e {
                Error::Rejected { reason, .. } => {
                    Ok(report(job, Outcome::Rejected, None, Some(reason), started))
                }
                e => Err(e),
            };
        }
        // The container's user writes the output and logs dirs.
        for dir in [&job.spec.output, &job.spec.logs] {
            open_up(dir)?;
        }
        let name = format!("insitu-{}-stage-{}", job.execution, job.stage);
        let ran = self.attach(job, &name, stop).await;
        if ran.is_err() {
            // `run --rm` removes it on every end it sees; this covers ours.
            let _ = self.output(&["rm", "-f", "-t", "0", &name]).await;
        }
        let (end, code) = ran?;
        let limits = &job.spec.limits;
        if end == End::Exited && code == Some(125) {
            // Podman's own failure (not the container's): its message is
            // the tail of what it wrote to stderr.
            let err = std::fs::read_to_string(job.spec.logs.join("stderr.log")).unwrap_or_default();
            let last = err.lines().last().unwrap_or("no message").to_string();
            return Err(Error::Unavailable(format!(
                "podman run {}: {last}",
                job.image
            )));
        }
        // `run --rm` leaves no container to inspect: a SIGKILL insitu did
        // not send, with a memory limit set, is the kernel's OOM killer (pids
        // and file limits fail calls, they do not kill).
        let oom = code == Some(137);
        let (outcome, exit_code, error) = match end {
            End::Stopped => (Outcome::Stopped, None, Some("stopped on request".into())),
            End::Deadline => (
                Outcome::TimedOut,
                None,
                Some(format!(
                    "time limit of {} s reached",
                    limits.timeout.as_secs_f64()
                )),
            ),
            End::LogFlood => (
                Outcome::LogQuotaExceeded,
                None,
                Some(format!(
                    "the logs went above their quota of {} bytes",
                    limits.log_quota
                )),
            ),
            End::Exited if oom && memory_hit(job) => (
                Outcome::MemoryExceeded,
                None,
                Some(format!(
                    "the container was OOM-killed: it used more than its {} bytes of memory",
                    limits.memory
                )),
            ),
            End::Exited => (
                Outcome::Exited,
                code,
                code.filter(|c| *c != 0)
                    .map(|c| format!("the container exited with code {c}")),
            ),
        };
        let mut r = report(job, outcome, exit_code, error, started);
        if r.outcome == Outcome::Exited
            && r.exit_code == Some(0)
            && r.output_bytes > limits.output_quota
        {
            r.outcome = Outcome::OutputQuotaExceeded;
            r.error = Some(format!(
                "the output holds {} bytes, above its quota of {}",
                r.output_bytes, limits.output_quota
            ));
            r.status = r.outcome.status(None);
        }
        Ok(r)
    }

    /// Runs the container attached (`podman run --rm`), copies its stdout
    /// and stderr into the logs dir within the quota, and waits for its end,
    /// the deadline or a stop (then kills it). Returns how it ended and the
    /// exit code `podman run` reported.
    async fn attach(
        &self,
        job: &StageJob,
        name: &str,
        stop: &StopHandle,
    ) -> Result<(End, Option<i32>), Error> {
        let mut child = self
            .podman()
            .args(["run", "--rm"])
            .args(self.container_args(job, name))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable(&self.settings.binary, e))?;
        let budget =
            std::sync::Arc::new(std::sync::atomic::AtomicU64::new(job.spec.limits.log_quota));
        let copy = |from: Option<Box<dyn AsyncRead + Unpin + Send>>, file: &str| {
            let path = job.spec.logs.join(file);
            let budget = budget.clone();
            async move {
                let Some(mut from) = from else {
                    return Ok(true);
                };
                let mut to = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| Error::io("create", &path, e))?;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = from.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return Ok::<_, Error>(true);
                    }
                    let left = budget.load(std::sync::atomic::Ordering::SeqCst);
                    let keep = (n as u64).min(left) as usize;
                    to.write_all(&buf[..keep])
                        .await
                        .map_err(|e| Error::io("write", &path, e))?;
                    budget.fetch_sub(keep as u64, std::sync::atomic::Ordering::SeqCst);
                    if keep < n {
                        return Ok(false);
                    }
                }
            }
        };
        let out = copy(boxed(child.stdout.take()), "stdout.log");
        let err = copy(boxed(child.stderr.take()), "stderr.log");
        let logs = async {
            let (a, b) = tokio::join!(out, err);
            Ok::<_, Error>(a? && b?)
        };
        let deadline = tokio::time::sleep(job.spec.limits.timeout);
        tokio::pin!(logs, deadline);
        let end = tokio::select! {
            r = &mut logs => match r? {
                true => End::Exited,
                false => End::LogFlood,
            },
            _ = &mut deadline => End::Deadline,
            _ = stop.wait() => End::Stopped,
        };
        if end != End::Exited {
            let _ = self.output(&["kill", "--signal", "KILL", name]).await;
        }
        let status = child
            .wait()
            .await
            .map_err(|e| unavailable(&self.settings.binary, e))?;
        Ok((end, status.code()))
    }
}

/// Whether the stage's memory limit is one the kernel could have hit (a
/// SIGKILL with no OOM flag is only called OOM when a limit was set).
fn memory_hit(job: &StageJob) -> bool {
    job.spec.limits.memory > 0
}

fn answer(args: &[&str], out: std::process::Output) -> Result<String, Error> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(Error::Unavailable(format!(
            "podman {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn unavailable(binary: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!(
        "cannot run {}: {e}; install Podman (apt-get install podman) or set [podman] binary",
        binary.display()
    ))
}

/// Lets the container's unprivileged user write `dir` (one of this
/// execution's own directories).
fn open_up(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| Error::io("open up", dir, e))
}

fn report(
    job: &StageJob,
    outcome: Outcome,
    exit_code: Option<i32>,
    error: Option<String>,
    started: Instant,
) -> RunReport {
    let status: Status = outcome.status(exit_code);
    RunReport {
        status,
        outcome,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        module_digest: job.checksum.clone(),
        output_bytes: bytes_under(&job.spec.output),
        log_bytes: bytes_under(&job.spec.logs),
        peak_memory_bytes: None,
        fuel_consumed: None,
        error,
    }
}

/// A child's output pipe as the one type its log copier reads.
fn boxed<R: AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
) -> Option<Box<dyn AsyncRead + Unpin + Send>> {
    pipe.map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>)
}

impl Backend for PodmanBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run<'a>(
        &'a self,
        job: &'a StageJob,
        stop: &'a StopHandle,
    ) -> BoxFuture<'a, Result<RunReport, Error>> {
        Box::pin(self.run_stage(job, stop))
    }

    /// Native images only.
    fn accepts(&self, code: &StageCode) -> bool {
        matches!(code, StageCode::Native)
    }
}
