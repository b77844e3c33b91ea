//! TLS for the process's HTTP clients: rustls with the *ring* provider.
//!
//! reqwest (under the registry client, the consumer client and the chain's
//! RPC client) is built without a crypto provider of its own, so that
//! aws-lc-rs — a large C build — is not part of insitu; the Kubernetes client
//! uses ring too. [`install`] makes ring the process's default provider; it
//! must run before a reqwest client is built (reqwest panics otherwise).

/// Installs ring as the process's default rustls crypto provider. Idempotent
/// and cheap: call it before building any HTTP client.
pub fn install() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way ring is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A reqwest client with [`install`] done first.
pub fn http_client() -> reqwest::Client {
    install();
    reqwest::Client::new()
}
