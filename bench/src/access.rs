//! `insitu-bench access`: download throughput of a 1 GiB dataset file
//! (`INSITU_BENCH_ACCESS_MIB` to change) under an access agreement,
//! `GET /api/v1/node/services/access/{agreement}/0` from an in-process
//! gateway, against the same file from static file servers on the same
//! disk: nginx (sendfile; `nginx` on PATH, Debian's `nginx-light`) and
//! Python's `http.server`. Every download is `curl -o /dev/null`, five
//! times each after one warm-up (the file is in the page cache for all).

use anyhow::{Context, bail};
use insitu_gateway::config::ServeConfig;
use insitu_gateway::http::Local;
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::store::{About, DatasetSpec};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A child process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `url` answers.
fn wait_up(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-r", "0-0", url])
            .status()?
            .success();
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Downloads `url` with curl to /dev/null `runs` times (after one warm-up);
/// returns the speeds in bytes per second, checking each got `size` bytes.
fn curl(url: &str, auth: Option<&str>, size: u64, runs: usize) -> anyhow::Result<Vec<f64>> {
    let mut speeds = Vec::new();
    for i in 0..=runs {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
        ]);
        if let Some(t) = auth {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c.arg(url).output().context("curl")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut parts = text.split_whitespace();
        let got: u64 = parts.next().unwrap_or("0").parse()?;
        let secs: f64 = parts.next().unwrap_or("0").parse()?;
        if got != size {
            bail!("{url}: got {got} bytes, expected {size}");
        }
        if i > 0 {
            speeds.push(size as f64 / secs);
        }
    }
    speeds.sort_by(f64::total_cmp);
    Ok(speeds)
}

fn gbps(speeds: &[f64]) -> String {
    let median = speeds[speeds.len() / 2];
    format!(
        "{:.2} GB/s (min {:.2}, max {:.2})",
        median / 1e9,
        speeds[0] / 1e9,
        speeds[speeds.len() - 1] / 1e9
    )
}

pub fn access() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("INSITU_BENCH_ACCESS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    println!("## Access download of a {mib} MiB file, curl to /dev/null, median of 5");
    let tmp = tempfile::tempdir()?;
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files)?;
    {
        use std::io::Write;
        let block: Vec<u8> = (0..4u32 << 20).map(|i| (i * 2_654_435_761) as u8).collect();
        let mut f = std::io::BufWriter::new(std::fs::File::create(files.join("big.bin"))?);
        for _ in 0..size / block.len() as u64 {
            f.write_all(&block)?;
        }
        f.write_all(&block[..(size % block.len() as u64) as usize])?;
        f.flush()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let local = rt.block_on(async {
        let mut config = ServeConfig::new(tmp.path().join("data"));
        config.workers = 1;
        Local::start(&config, Duration::from_secs(1)).await
    })?;
    let store = local.gateway.store.clone();
    let dataset = store.register_dataset(&DatasetSpec {
        name: "big",
        path: &files,
        allowed_images: &[],
        timeout_secs: 3600,
        server: Default::default(),
        price: None,
        price_token: None,
        access: true,
        did: None,
        deterministic: false,
        about: About::default(),
    })?;
    let consumer = ProviderKey::random();
    let agreement = store.grant_access(&consumer.address(), &dataset, 3600)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let grant = insitu_gateway::auth::make_grant(
        &consumer,
        &json!({"iss": consumer.address(), "aud": insitu_gateway::auth::AUD_ACCESS, "sub": agreement,
                "did": dataset, "eths": "personal", "iat": now, "exp": now + 3600}),
    )?;
    let out = Command::new("curl")
        .args([
            "-s",
            &format!("{}/api/v1/node/services/oauth/token", local.base),
            "-d",
            "client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "-d",
            &format!("client_assertion={grant}"),
        ])
        .output()?;
    let token: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let token = token["access_token"]
        .as_str()
        .context("no access token")?
        .to_string();
    let gateway = curl(
        &format!("{}/api/v1/node/services/access/{agreement}/0", local.base),
        Some(&token),
        size,
        5,
    )?;
    println!("| insitu access route | {} |", gbps(&gateway));

    let nginx = nginx(tmp.path(), &files)?;
    let anchor = match &nginx {
        Some((_server, url)) => {
            let s = curl(url, None, size, 5)?;
            println!("| nginx 1.22 (sendfile) | {} |", gbps(&s));
            Some(s)
        }
        None => {
            println!("| nginx | not on PATH (apt-get install nginx-light) |");
            None
        }
    };
    let port = free_port()?;
    let _python = Server(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&files)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("python3 -m http.server")?,
    );
    let url = format!("http://127.0.0.1:{port}/big.bin");
    wait_up(&url)?;
    let python = curl(&url, None, size, 5)?;
    println!("| python3 -m http.server | {} |", gbps(&python));
    let median = |s: &[f64]| s[s.len() / 2];
    if let Some(a) = anchor {
        println!(
            "\ninsitu / nginx = {:.2} (target >= 0.80)",
            median(&gateway) / median(&a)
        );
    }
    println!(
        "insitu / python http.server = {:.2}",
        median(&gateway) / median(&python)
    );
    let recorded = store.downloads(Some(&dataset), 100)?;
    println!(
        "downloads recorded: {} ({} complete)\n",
        recorded.len(),
        recorded.iter().filter(|d| d.complete).count()
    );
    rt.block_on(local.stop())?;
    Ok(())
}

/// nginx serving `root` on a free loopback port, its files under `dir`.
fn nginx(dir: &Path, root: &Path) -> anyhow::Result<Option<(Server, String)>> {
    if Command::new("nginx").arg("-v").output().is_err() {
        return Ok(None);
    }
    let port = free_port()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on;\n\
               client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi;\n\
               uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {r}; }} }}\n",
            p = prefix.display(),
            r = root.display()
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nginx")?;
    let server = Server(child);
    let url = format!("http://127.0.0.1:{port}/big.bin");
    wait_up(&url)?;
    Ok(Some((server, url)))
}
