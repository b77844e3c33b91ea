//! `insitu exec` and `insitu executions list|status|logs|stop`: the
//! consumer's client, on [`crate::client::Consumer`]. It signs the grants,
//! executes, shows status changes and the guest's progress (a progress bar
//! on a terminal, plain lines otherwise, on stderr), streams the logs with
//! `--follow` (on stdout), downloads the results (resumable, each file's
//! sha256 checked against the receipt) and verifies the receipt.
//!
//! Exit codes: 0 the execution succeeded (and, with `--verify`, its receipt
//! verified); 1 it failed or was stopped, or its receipt did not verify;
//! 2 a usage, auth or connection error (the message says which).

use crate::client::{ClientError, Consumer};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use insitu_runtime::receipt::ProviderKey;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// `insitu exec`: as a consumer, execute a workflow at a gateway, show its
/// progress, download and verify the results.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecCommand {
    #[command(flatten)]
    pub at: ExecutionsAt,
    /// The workflow DID to execute.
    #[arg(long)]
    pub workflow: String,
    /// Stream the guest's logs to stdout while it runs.
    #[arg(long)]
    pub follow: bool,
    /// Download the result files into DIR (resumable, each file's sha256
    /// checked against the receipt) and the receipt to DIR.receipt.json.
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
    /// Verify the receipt (and the downloaded files), as insitu verify does.
    #[arg(long)]
    pub verify: bool,
    /// With --verify: the provider's address the receipt must be signed by.
    #[arg(long, value_name = "ADDRESS", requires = "verify")]
    pub provider: Option<String>,
}

fn consumer(gateway: &str, key: &Path) -> anyhow::Result<Consumer> {
    let hex = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read the key {}", key.display()))?;
    let key = ProviderKey::from_hex(hex.trim())
        .with_context(|| format!("{} is not a secp256k1 key in hex", key.display()))?;
    if !(gateway.starts_with("http://") || gateway.starts_with("https://")) {
        bail!("--gateway must be an http:// or https:// URL, not `{gateway}`");
    }
    Ok(Consumer::new(gateway.trim_end_matches('/'), key))
}

/// A refusal as one line: the gateway's message, not its JSON.
fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused { what, status, body } => anyhow::anyhow!(
            "{what} refused ({status}): {}",
            body["message"].as_str().unwrap_or(&body.to_string())
        ),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Shows status changes and progress on stderr.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    last_status: String,
    last_progress: Option<(u64, u64)>,
}

impl Display {
    fn new() -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(1000);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix:>10} [{bar:30}] {percent:>3}% {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Display {
            bar,
            last_status: String::new(),
            last_progress: None,
        }
    }

    fn status(&mut self, status: &str) {
        if status == self.last_status {
            return;
        }
        self.last_status = status.to_string();
        match &self.bar {
            Some(b) => b.set_prefix(status.to_string()),
            None => eprintln!("status: {status}"),
        }
    }

    /// `p` is `{stage, fraction, message}` (the API's progress).
    fn progress(&mut self, p: &Value) {
        let (Some(stage), Some(fraction)) = (p["stage"].as_u64(), p["fraction"].as_f64()) else {
            return;
        };
        let permille = (fraction.clamp(0.0, 1.0) * 1000.0).round() as u64;
        if self.last_progress == Some((stage, permille)) {
            return;
        }
        self.last_progress = Some((stage, permille));
        let message = p["message"].as_str().unwrap_or_default();
        match &self.bar {
            Some(b) => {
                b.set_position(permille);
                b.set_message(format!("stage {stage}: {message}"));
            }
            None => eprintln!("progress: stage {stage} {:.0}% {message}", fraction * 100.0),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs `insitu exec`; `Ok(true)` when the execution succeeded (and
/// verified, if asked).
///
/// # Errors
/// Usage, auth and connection errors (exit code 2).
pub fn run(args: &ExecCommand) -> anyhow::Result<bool> {
    let (agreement, c) = (
        &args.at.agreement,
        consumer(&args.at.gateway, &args.at.key)?,
    );
    let results = super::shared::runtime()?.block_on(async {
        let t = c
            .token(&c.claims(agreement, &args.workflow, None))
            .await
            .map_err(explain)?;
        let (id, t) = c
            .execute_for(&t, agreement, &args.workflow)
            .await
            .map_err(explain)?;
        eprintln!("execution {id} queued at {}", c.base);
        let mut display = Display::new();
        if args.follow {
            follow(&c, &t, &id, &mut display).await?;
        }
        let status = wait(&c, &t, &id, &mut display).await?;
        display.finish();
        let state = status["workflowStatus"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if state != "succeeded" {
            let reason = status["execution"]["reason"]
                .as_str()
                .unwrap_or("no reason given");
            eprintln!("execution {id} {state}: {reason}");
            return Ok(None);
        }
        let did = status["workflowStatus"]["did"].as_str().unwrap_or_default();
        println!("execution {id} succeeded: result {did}");
        let results = c.get(&t, &format!("results/{id}")).await.map_err(explain)?;
        if let Some(dir) = &args.download {
            download(&c, &t, &id, &results, dir).await?;
        }
        Ok::<_, anyhow::Error>(Some((id, results)))
    })?;
    let Some((id, results)) = results else {
        return Ok(false);
    };
    if args.verify {
        let temp = tempfile::tempdir()?;
        let file = match &args.download {
            Some(dir) => receipt_path(dir),
            None => {
                let f = temp.path().join("results.json");
                std::fs::write(&f, serde_json::to_vec(&results)?)?;
                f
            }
        };
        let report = super::verify::VerifyCommand {
            receipt: file,
            provider: args.provider.clone(),
            files: args.download.clone(),
            ..Default::default()
        }
        .report(None)?;
        for check in &report.checks {
            println!("{check}");
        }
        if !report.ok() {
            eprintln!("the receipt of execution {id} does not verify");
            return Ok(false);
        }
    }
    Ok(true)
}

/// Polls status until the execution ends; shows changes and progress.
async fn wait(c: &Consumer, t: &str, id: &str, d: &mut Display) -> anyhow::Result<Value> {
    loop {
        let s = c.get(t, &format!("status/{id}")).await.map_err(explain)?;
        let state = s["workflowStatus"]["status"].as_str().unwrap_or_default();
        d.status(state);
        d.progress(&s["progress"]);
        if ["succeeded", "failed", "stopped"].contains(&state) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Streams `logs?follow=true` until its `end` event: guest output to
/// stdout, progress to the display.
async fn follow(c: &Consumer, t: &str, id: &str, d: &mut Display) -> anyhow::Result<()> {
    let r = c
        .http
        .get(format!(
            "{}/api/v1/node/services/compute/logs/{id}?follow=true",
            c.base
        ))
        .bearer_auth(t)
        .send()
        .await
        .context("following the logs")?;
    if !r.status().is_success() {
        bail!("following the logs refused ({})", r.status());
    }
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.context("following the logs")?);
        // Events end with a blank line.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 2);
            let (mut event, mut data) = ("message", String::new());
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event {
                "log" => {
                    let text = v["content"].as_str().unwrap_or_default();
                    if let Some(b) = &d.bar {
                        b.suspend(|| print!("{text}"));
                    } else {
                        print!("{text}");
                    }
                    let _ = std::io::stdout().flush();
                }
                "progress" => d.progress(&v),
                "end" => return Ok(()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A result path as a relative path under the download dir, refusing
/// anything that could leave it.
fn safe_relative(path: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!(
            "the gateway listed a result file `{path}` that is not a plain relative path; refusing to write it"
        );
    }
    Ok(p.to_path_buf())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Where `--download DIR` keeps the receipt: `DIR.receipt.json`, beside
/// the directory, so that the directory holds exactly the files the receipt
/// names (`insitu verify --receipt DIR.receipt.json --files DIR`).
pub fn receipt_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".receipt.json");
    dir.with_file_name(name)
}

/// Downloads every result file into `dir` and writes the receipt to
/// [`receipt_path`]. A file already there with the listed sha256 is skipped; a
/// partial `NAME.part` from an interrupted run is resumed with a Range
/// request; each file's sha256 is checked before it takes its name.
async fn download(
    c: &Consumer,
    t: &str,
    id: &str,
    results: &Value,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = results["files"].as_array().cloned().unwrap_or_default();
    for f in &files {
        let (Some(path), Some(want)) = (f["path"].as_str(), f["sha256"].as_str()) else {
            continue;
        };
        let size = f["size"].as_u64().unwrap_or(0);
        let target = dir.join(safe_relative(path)?);
        if target.is_file() && sha256_file(&target)? == want {
            eprintln!("{path}: already downloaded");
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let part = PathBuf::from(format!("{}.part", target.display()));
        let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if have > size {
            std::fs::remove_file(&part)?;
            have = 0;
        }
        if have < size {
            let mut request = c
                .http
                .get(format!(
                    "{}/api/v1/node/services/compute/results/{id}/{path}",
                    c.base
                ))
                .bearer_auth(t);
            if have > 0 {
                request = request.header("range", format!("bytes={have}-"));
            }
            let r = request
                .send()
                .await
                .with_context(|| format!("downloading {path}"))?;
            let resumed = r.status().as_u16() == 206;
            if !r.status().is_success() {
                bail!("downloading {path} refused ({})", r.status());
            }
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(resumed)
                .truncate(!resumed)
                .open(&part)?;
            if resumed {
                eprintln!("{path}: resuming at byte {have}");
            }
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                out.write_all(&chunk.with_context(|| format!("downloading {path}"))?)?;
            }
            out.sync_all()?;
        }
        let got = sha256_file(&part)?;
        if got != want {
            std::fs::remove_file(&part)?;
            bail!(
                "{path}: the download hashes to {got}, the receipt lists {want}; deleted it, run again"
            );
        }
        std::fs::rename(&part, &target)?;
        eprintln!("{path}: {size} bytes, sha256 ok");
    }
    std::fs::write(receipt_path(dir), serde_json::to_vec_pretty(results)?)?;
    Ok(())
}

/// Which gateway, as which consumer, under which agreement: what `insitu
/// exec` and every `insitu executions` verb need.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecutionsAt {
    /// The gateway's base URL.
    #[arg(long, value_name = "URL")]
    pub gateway: String,
    /// The consumer's key file (hex).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The agreement id (0x + 64 hex) the executions run under.
    #[arg(long)]
    pub agreement: String,
}

/// `insitu executions`: one call with a grant under the agreement.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ExecutionsCommand {
    /// The consumer's executions at the gateway.
    List {
        #[command(flatten)]
        at: ExecutionsAt,
        /// A workflow of the agreement (the grant to list is an execute grant).
        #[arg(long)]
        workflow: String,
    },
    /// One execution's status, stages, progress and receipt (JSON).
    Status {
        #[command(flatten)]
        at: ExecutionsAt,
        id: String,
    },
    /// One execution's logs so far.
    Logs {
        #[command(flatten)]
        at: ExecutionsAt,
        id: String,
    },
    /// Stop one execution.
    Stop {
        #[command(flatten)]
        at: ExecutionsAt,
        id: String,
    },
}

/// Runs an `insitu executions` verb; prints the gateway's JSON answer
/// (logs: the text).
///
/// # Errors
/// Usage, auth and connection errors.
pub fn executions(cmd: &ExecutionsCommand) -> anyhow::Result<bool> {
    let (ExecutionsCommand::List { at, .. }
    | ExecutionsCommand::Status { at, .. }
    | ExecutionsCommand::Logs { at, .. }
    | ExecutionsCommand::Stop { at, .. }) = cmd;
    let (gateway, agreement) = (at.gateway.as_str(), at.agreement.as_str());
    let c = consumer(gateway, &at.key)?;
    super::shared::runtime()?.block_on(async {
        let (workflow, id) = match cmd {
            ExecutionsCommand::List { workflow, .. } => (workflow.as_str(), None),
            ExecutionsCommand::Status { id, .. }
            | ExecutionsCommand::Logs { id, .. }
            | ExecutionsCommand::Stop { id, .. } => ("", Some(id.as_str())),
        };
        let t = c
            .token(&c.claims(agreement, workflow, id))
            .await
            .map_err(explain)?;
        match cmd {
            ExecutionsCommand::List { .. } => {
                let v = c.get(&t, "list").await.map_err(explain)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            ExecutionsCommand::Status { id, .. } => {
                let v = c.get(&t, &format!("status/{id}")).await.map_err(explain)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            ExecutionsCommand::Logs { id, .. } => {
                let v = c.get(&t, &format!("logs/{id}")).await.map_err(explain)?;
                for stage in v["logs"].as_array().into_iter().flatten() {
                    print!("{}", stage["content"].as_str().unwrap_or_default());
                }
            }
            ExecutionsCommand::Stop { id, .. } => {
                let r = c
                    .http
                    .delete(format!("{}/api/v1/node/services/compute/stop/{id}", c.base))
                    .bearer_auth(&t)
                    .send()
                    .await
                    .context("stop")?;
                let status = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!(
                        "stop refused ({status}): {}",
                        v["message"].as_str().unwrap_or_default()
                    );
                }
                println!("{}", v["text"].as_str().unwrap_or_default());
            }
        }
        Ok(true)
    })
}
