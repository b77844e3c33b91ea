//! A real OCI registry (Debian's `docker-registry`, distribution 2.8) for
//! tests: started on a random loopback port with a temporary storage dir,
//! stopped by PID when dropped; and `skopeo` as an independent client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user of [`Registry::start_with_auth`].
pub const AUTH_USER: &str = "tester";
/// Their password.
pub const AUTH_PASSWORD: &str = "s3cret";
/// Their htpasswd line (bcrypt of the password; a fixture, not a secret).
const AUTH_HTPASSWD: &str = "tester:$2b$12$I73gkT6b3NIc5W3VPUWqcOfHPLLjOeP5qdmJSonf5S8DN7TXcKCk2";

/// A running registry.
pub struct Registry {
    pub port: u16,
    pub storage: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers.
    ///
    /// # Panics
    /// When `docker-registry` is missing (run `scripts/setup`) or does not start.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// Starts a registry that requires HTTP basic auth as [`AUTH_USER`] /
    /// [`AUTH_PASSWORD`].
    pub fn start_with_auth() -> Registry {
        Registry::start_with(Some(AUTH_HTPASSWD))
    }

    fn start_with(htpasswd: Option<&str>) -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = storage.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.path().join("data").display()
        );
        if let Some(line) = htpasswd {
            let file = storage.path().join("htpasswd");
            std::fs::write(&file, format!("{line}\n")).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: insitu-test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start `docker-registry`; install it with scripts/setup (apt-get install docker-registry)");
        let registry = Registry {
            port,
            storage,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let ready = if htpasswd.is_some() { 401 } else { 200 };
        while get(port, "/v2/") != Some(ready) {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP status of `GET path` on the loopback port, if it answers.
pub fn get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Runs `skopeo` and returns its stdout.
///
/// # Panics
/// When skopeo is missing (run `scripts/setup`) or fails.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("cannot run `skopeo`; install it with scripts/setup (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An HTTP server that answers every request with a 307 redirect to the same
/// path on `localhost:<target>` (another host name than the `127.0.0.1` it is
/// reached by). Stops when dropped.
pub struct Redirector {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Redirector {
    pub fn start(target_port: u16) -> Redirector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://localhost:{target_port}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Redirector { port, stop }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
