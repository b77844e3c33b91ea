//! The composition root: builds a provider from a [`ServeConfig`] — the
//! data dir's lock, the store (failing what a crash left), the keys, the
//! sandbox, the backends (in-process wasm, then Kubernetes or Podman for
//! native images), the pipeline, the permissions (local agreements or the
//! chain) and [`Executions`], the owner of executions' lives. Nothing here
//! speaks HTTP; [`crate::http`] serves what this builds.

use crate::auth::Tokens;
use crate::config::ServeConfig;
use crate::ddo::Services;
use insitu_runtime::datadir::DataDir;
use insitu_runtime::executions::{Capacity, Executions};
use insitu_runtime::image::{BlobStore, Puller};
use insitu_runtime::permissions::{LocalAgreements, Permissions};
use insitu_runtime::pipeline::{ImageResolver, Pipeline};
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::sandbox::{Sandbox, SandboxConfig};
use insitu_runtime::store::Store;
use std::path::Path;
use std::sync::Arc;

/// What a provider is made of, built by [`Provider::open`].
pub struct Provider {
    pub dir: DataDir,
    pub store: Arc<Store>,
    pub pipeline: Arc<Pipeline>,
    pub permissions: Arc<dyn Permissions>,
    pub executions: Executions,
    pub tokens: Tokens,
    /// What served DDOs' services point at.
    pub services: Services,
    /// The chain mode's client, whose payments are to be watched.
    pub chain: Option<Arc<insitu_chain::Chain>>,
}

/// The access-token signer of the provider whose data dir is `dir`
/// (`token.key`, created on first use); `insitu admin token` issues with it.
///
/// # Errors
/// When the key cannot be read or created.
pub fn tokens_of(dir: &Path) -> anyhow::Result<Tokens> {
    let token_key = ProviderKey::load_or_create(&DataDir::new(dir).token_key())?;
    Ok(Tokens::new(
        token_key
            .personal_sign(b"insitu access tokens")?
            .into_bytes(),
    ))
}

impl Provider {
    /// Builds the provider of `config`: locks the data dir, opens the store
    /// (failing executions a crash left), loads or creates the keys, starts
    /// the workers. Must run within a tokio runtime (the Kubernetes client
    /// lives on it).
    ///
    /// # Errors
    /// When the data dir is locked by another process, or the database, keys,
    /// sandbox, backends or chain client cannot be set up.
    pub fn open(config: &ServeConfig) -> anyhow::Result<Provider> {
        std::fs::create_dir_all(&config.data_dir)?;
        // Absolute: pods mount its directories by path.
        let dir = DataDir::new(std::fs::canonicalize(&config.data_dir)?);
        let lock_path = dir.lock();
        let lock = std::fs::File::create(&lock_path)?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "data dir {} is in use by another insitu server (lock {}); stop it or choose another --data-dir",
                dir.root().display(),
                lock_path.display()
            );
        }
        let store = Arc::new(Store::open(dir.database())?);
        let failed = store.recover()?;
        if failed > 0 {
            tracing::warn!(
                executions = failed,
                "executions left unfinished by the previous run were marked failed"
            );
        }
        let swept = insitu_runtime::pipeline::sweep_updates(&dir);
        if swept > 0 {
            tracing::warn!(
                updates = swept,
                "deleted federated updates the previous run left unmasked"
            );
        }
        let uncreated = insitu_runtime::pipeline::sweep_uncreated(&dir, &store)?;
        if uncreated > 0 {
            tracing::warn!(
                directories = uncreated,
                "deleted the working directories of executions whose creation the previous run never committed"
            );
        }
        let key = match &config.provider_key {
            Some(k) => k.clone(),
            None => ProviderKey::load_or_create(&dir.provider_key())?,
        };
        let tokens = tokens_of(dir.root())?;
        config.limits.check_within(&config.max)?;
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            max: config.max,
            concurrency: config.workers as u32 * 2,
            cache_dir: Some(dir.modules()),
            ..SandboxConfig::default()
        })?);
        let backends = backends(config, &dir, &sandbox)?;
        let pipeline = Arc::new(Pipeline {
            sandbox,
            store: store.clone(),
            puller: Puller::new(BlobStore::open(dir.blobs())?),
            images: ImageResolver {
                layouts: config.layouts.clone(),
                insecure: config.insecure_registries.clone(),
                auth: None,
            },
            dir: dir.clone(),
            limits: config.limits,
            key: key.clone(),
            caches: Default::default(),
            backends,
        });
        let contracts = match &config.chain {
            Some(c) => Some(insitu_chain::Addresses::from_file(&c.contracts)?),
            None => None,
        };
        let services = Services {
            base: config.public_url.clone().unwrap_or_default(),
            provider: key.address(),
            contracts: contracts.clone(),
        };
        let mut chain = None;
        let permissions: Arc<dyn Permissions> = match (&config.permissions, &config.chain) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => {
                let addresses = contracts.expect("read above");
                let client = Arc::new(insitu_chain::Chain::connect_with(
                    &c.rpc, addresses, &key, c.tx,
                )?);
                tracing::info!(rpc = %c.rpc, provider = %key.address(), "chain mode: agreements on-chain");
                chain = Some(client.clone());
                Arc::new(insitu_chain::ChainAgreements::new(
                    client,
                    store.clone(),
                    c.cache_ttl,
                ))
            }
            (None, None) => Arc::new(LocalAgreements {
                store: store.clone(),
            }),
        };
        let executions = Executions::start(
            pipeline.clone(),
            permissions.clone(),
            Capacity {
                workers: config.workers,
                queue: config.queue,
            },
            Some(lock),
        )?;
        // Registered images compile before their first execution.
        insitu_runtime::warm::Warmer::start(&pipeline)?;
        {
            // The catalog's search index, built off the request path.
            let store = store.clone();
            std::thread::Builder::new()
                .name("insitu-index".into())
                .spawn(move || {
                    let t = std::time::Instant::now();
                    match store.index_catalog() {
                        Ok(()) => tracing::debug!(
                            seconds = t.elapsed().as_secs_f64(),
                            "catalog indexed for search"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot index the catalog; searches will retry")
                        }
                    }
                })?;
        }
        Ok(Provider {
            dir,
            store,
            pipeline,
            permissions,
            executions,
            tokens,
            services,
            chain,
        })
    }
}

/// Who runs stages, in order of preference: the in-process sandbox, and
/// Kubernetes (before it, for wasm too, when asked) or Podman for native
/// images. What a previous run left on the cluster or host is removed.
fn backends(
    config: &ServeConfig,
    dir: &DataDir,
    sandbox: &Arc<Sandbox>,
) -> anyhow::Result<Vec<Arc<dyn insitu_runtime::backend::Backend>>> {
    let mut backends = Pipeline::local(sandbox);
    if let Some(k) = &config.kubernetes {
        let backend = Arc::new(kubernetes_backend(k, dir)?);
        let reconciler = backend.clone();
        tokio::spawn(async move {
            match reconciler.reconcile(&[]).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    objects = n,
                    "kubernetes: removed what the previous run left"
                ),
                Err(e) => tracing::error!(error = %e, "kubernetes: cannot reconcile"),
            }
        });
        tracing::info!(namespace = %k.namespace, wasm = k.wasm, "kubernetes backend: native images run as pods");
        if k.wasm {
            backends.insert(0, backend);
        } else {
            backends.push(backend);
        }
    } else if let Some(p) = &config.podman {
        let backend = Arc::new(insitu_podman::PodmanBackend::new(p.clone()));
        let version = backend.check()?;
        // Nothing runs yet: every labelled container is a crash's leftover.
        match backend.reconcile(&[])? {
            0 => {}
            n => tracing::warn!(containers = n, "podman: removed what the previous run left"),
        }
        tracing::info!(version, "podman backend: native images run as containers");
        backends.push(backend);
    }
    Ok(backends)
}

/// The Kubernetes backend for `settings`; must run on the gateway's runtime
/// (the client's connection pool lives there).
fn kubernetes_backend(
    settings: &insitu_kubernetes::KubeSettings,
    dir: &DataDir,
) -> anyhow::Result<insitu_kubernetes::KubeBackend> {
    settings.check()?;
    // Reading the kubeconfig is async; do it on a thread of its own, as
    // this function may be called from within the runtime.
    let config = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| Ok(rt.block_on(settings.config())?))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("reading the kubeconfig panicked"))?
    })?;
    let client = insitu_kubernetes::client(config)?;
    Ok(insitu_kubernetes::KubeBackend::new(
        client,
        settings.clone(),
        dir.clone(),
    )?)
}
