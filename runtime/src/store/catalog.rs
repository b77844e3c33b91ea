//! The catalog: datasets, algorithms, workflows and results with their
//! DDOs, and the catalog's search.

use super::*;

/// Kinds of catalog entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    Dataset,
    Workflow,
    Algorithm,
    Result,
}

impl AssetKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AssetKind::Dataset => "dataset",
            AssetKind::Workflow => "workflow",
            AssetKind::Algorithm => "algorithm",
            AssetKind::Result => "result",
        }
    }
}

/// A dataset the provider computes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub did: Did,
    pub name: String,
    /// The local directory (never published).
    pub path: PathBuf,
    /// Image checksums its compute service allows; empty allows none.
    pub allowed_images: Vec<String>,
    /// The resources its compute service offers each stage.
    pub server: Server,
    /// Its compute service requires deterministic mode (`"deterministic":
    /// true` in the compute service's attributes).
    pub deterministic: bool,
    /// It offers its files for download (an `access` service).
    pub access: bool,
}

/// What [`Store::register_dataset`] records.
#[derive(Debug, Clone)]
pub struct DatasetSpec<'a> {
    pub name: &'a str,
    /// The local directory (never published).
    pub path: &'a Path,
    /// Image manifest checksums the compute service allows.
    pub allowed_images: &'a [String],
    /// The compute service's time-out, seconds.
    pub timeout_secs: u64,
    pub server: Server,
    /// The price of each service offered (in the token's smallest unit, as
    /// a decimal string), paid into escrow in chain mode.
    pub price: Option<String>,
    /// The ERC-20 token `price` is in (`0x` address); `None`: the chain's
    /// native currency.
    pub price_token: Option<String>,
    /// Offer the dataset's files for download (an `access` service); off by
    /// default: in situ computation is the default promise.
    pub access: bool,
    /// The DID to register it under (chain mode: the DID registered on-chain);
    /// `None` draws a random one.
    pub did: Option<Did>,
    /// Stages reading it run in deterministic mode.
    pub deterministic: bool,
    /// What the catalog shows and searches besides the name.
    pub about: About,
}

/// A catalog search ([`Store::search`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Search {
    /// Words to find (runs of letters and digits, any case; each matches as
    /// a prefix; all must match). Empty lists everything.
    pub text: String,
    /// `dataset`, `workflow`, `algorithm` or `result`.
    pub kind: Option<String>,
    /// Tags the asset must all carry.
    pub tags: Vec<String>,
    /// The owner of results.
    pub owner: Option<String>,
    /// Only assets offering this service (`compute`, `access`).
    pub service: Option<String>,
    /// Compute price bounds (wei).
    pub price_min: Option<f64>,
    pub price_max: Option<f64>,
    pub sort: Sort,
    /// Who searches: their results are found too.
    pub viewer: Option<String>,
    /// Results per page (Nevermined's `offset`), at most [`Search::MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// 1-based.
    pub page: usize,
}

impl Search {
    pub const MAX_PAGE_SIZE: usize = 500;
}

/// The order of search results after relevance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Relevance,
    Newest,
    Oldest,
    Name,
}

/// A dataset's descriptive metadata (Nevermined's `main.author`,
/// `additionalInformation.description` and `.tags`), searched by
/// [`Store::search`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct About {
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub author: Option<String>,
}

/// The resources a dataset's compute service offers a stage — the first of
/// `supportedServers` in its DDO (`memory`, `disk`, `maxExecutionTime`).
/// Each one that is set caps the provider's limit for stages reading the
/// dataset; none can raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Server {
    /// Linear memory, bytes.
    pub memory: Option<u64>,
    /// Output quota, bytes.
    pub disk: Option<u64>,
    /// Wall time, seconds.
    pub max_execution_time: Option<u64>,
}

impl Server {
    /// `limits` with each limit lowered to this server's where it is lower.
    pub fn cap(&self, mut limits: crate::sandbox::Limits) -> crate::sandbox::Limits {
        if let Some(m) = self.memory {
            limits.memory = limits.memory.min(m);
        }
        if let Some(d) = self.disk {
            limits.output_quota = limits.output_quota.min(d);
        }
        if let Some(t) = self.max_execution_time {
            limits.timeout = limits.timeout.min(std::time::Duration::from_secs(t));
        }
        limits
    }

    /// The tighter of two servers, limit by limit.
    pub fn min(&self, other: &Server) -> Server {
        let pick = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Server {
            memory: pick(self.memory, other.memory),
            disk: pick(self.disk, other.disk),
            max_execution_time: pick(self.max_execution_time, other.max_execution_time),
        }
    }

    fn is_set(&self) -> bool {
        *self != Server::default()
    }

    /// The DDO's `supportedServers` entry.
    pub(super) fn to_ddo(self) -> Value {
        let mut v = json!({"serverId": "1", "serverType": "wasm", "cpu": "1", "gpu": "0"});
        if let Some(m) = self.memory {
            v["memory"] = json!(ddo_size(m));
        }
        if let Some(d) = self.disk {
            v["disk"] = json!(ddo_size(d));
        }
        if let Some(t) = self.max_execution_time {
            v["maxExecutionTime"] = json!(t);
        }
        v
    }

    pub(super) fn from_ddo(v: &Value) -> Server {
        Server {
            memory: v["memory"].as_str().and_then(parse_ddo_size),
            disk: v["disk"].as_str().and_then(parse_ddo_size),
            max_execution_time: v["maxExecutionTime"].as_u64(),
        }
    }
}

/// Sizes as Nevermined DDOs write them: `8gb`, `512mb` (binary multiples).
pub(super) fn ddo_size(bytes: u64) -> String {
    for (unit, n) in [
        ("tb", 1u64 << 40),
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
    ] {
        if bytes >= n && bytes.is_multiple_of(n) {
            return format!("{}{unit}", bytes / n);
        }
    }
    format!("{bytes}b")
}

/// Reads `8gb`, `512mb`, `160GB`, `1GiB`, `4096`; `None` when it is none of these.
pub(super) fn parse_ddo_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").map_or(t.clone(), |x| format!("{x}b"));
    let (num, mult) = [
        ("tb", 1u64 << 40),
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("b", 1),
    ]
    .iter()
    .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim().to_string(), *m)))
    .unwrap_or((t.clone(), 1));
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Store {
    pub(super) fn insert_asset(
        &self,
        did: &Did,
        kind: AssetKind,
        ddo: &Value,
        path: Option<&Path>,
    ) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO assets (did, kind, ddo, path, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    did.as_str(),
                    kind.as_str(),
                    ddo.to_string(),
                    path.map(|p| p.display().to_string()),
                    now_ms() as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Registers a local dataset directory with a compute service allowing
    /// `allowed_images` (image manifest checksums). Returns its DID.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] when `path` is not a directory; [`Error::Reference`]
    /// for a malformed checksum; [`Error::Store`].
    pub fn add_dataset(
        &self,
        name: &str,
        path: &Path,
        allowed_images: &[String],
        timeout_secs: u64,
    ) -> Result<Did, Error> {
        self.add_dataset_on(name, path, allowed_images, timeout_secs, &Server::default())
    }

    /// [`Store::add_dataset`] whose compute service also offers `server`
    /// (recorded as `supportedServers` when any limit is set).
    ///
    /// # Errors
    /// As [`Store::add_dataset`].
    pub fn add_dataset_on(
        &self,
        name: &str,
        path: &Path,
        allowed_images: &[String],
        timeout_secs: u64,
        server: &Server,
    ) -> Result<Did, Error> {
        self.register_dataset(&DatasetSpec {
            name,
            path,
            allowed_images,
            timeout_secs,
            server: *server,
            price: None,
            price_token: None,
            access: false,
            did: None,
            deterministic: false,
            about: About::default(),
        })
    }

    /// Registers a dataset as `spec` describes; returns its DID.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] when the path is not a directory;
    /// [`Error::Reference`] for a malformed checksum; [`Error::Store`]
    /// (including a DID already registered).
    pub fn register_dataset(&self, spec: &DatasetSpec<'_>) -> Result<Did, Error> {
        let path = std::fs::canonicalize(spec.path)
            .map_err(|e| Error::io("open dataset", spec.path, e))?;
        if !path.is_dir() {
            return Err(Error::InvalidJob(format!(
                "dataset {} is not a directory",
                path.display()
            )));
        }
        for c in spec.allowed_images {
            crate::image::check_digest(c)?;
        }
        let did = match &spec.did {
            Some(d) => d.clone(),
            None => Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed"),
        };
        let mut environment = json!({
            "supportedContainers": spec.allowed_images.iter().map(|c| json!({"checksum": c})).collect::<Vec<_>>(),
        });
        if spec.server.is_set() {
            environment["supportedServers"] = json!([spec.server.to_ddo()]);
        }
        let mut compute = json!({
            "name": "compute", "timeout": spec.timeout_secs,
            "provider": {"environment": environment},
        });
        if let Some(price) = &spec.price {
            if !(!price.is_empty()
                && price.len() <= 78
                && price.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(Error::Invalid {
                    what: "price",
                    value: price.clone(),
                    reason: "expected an amount in the token's smallest unit (digits only)",
                });
            }
            compute["price"] = json!(price);
        }
        if let Some(token) = &spec.price_token {
            if spec.price.is_none() {
                return Err(Error::Invalid {
                    what: "price token",
                    value: token.clone(),
                    reason: "a token needs a price too (--price)",
                });
            }
            compute["priceToken"] = json!(parse_address(token)?);
        }
        if spec.deterministic {
            compute["deterministic"] = json!(true);
        }
        let mut metadata = json!({"main": {"type": "dataset", "name": spec.name,
                                           "dateCreated": rfc3339(now_ms() / 1000)}});
        if let Some(a) = &spec.about.author {
            metadata["main"]["author"] = json!(a);
        }
        if spec.about.description.is_some() || !spec.about.tags.is_empty() {
            metadata["additionalInformation"] = json!({"description": spec.about.description.clone().unwrap_or_default(),
                       "tags": spec.about.tags});
        }
        let mut services = vec![
            json!({"type": "metadata", "index": 0, "attributes": metadata}),
            json!({"type": "compute", "index": 1, "attributes": {"main": compute}}),
        ];
        if spec.access {
            // The files a grantee downloads by index (names relative to the
            // dataset; the directory itself is never published).
            services[0]["attributes"]["main"]["files"] = json!(access::list_files(&path)?);
            let mut main = json!({"name": "access", "timeout": spec.timeout_secs});
            for key in ["price", "priceToken"] {
                if let Some(v) = compute.get(key) {
                    main[key] = v.clone();
                }
            }
            services.push(json!({"type": "access", "index": 2, "attributes": {"main": main}}));
        }
        let ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": services,
        });
        self.insert_asset(&did, AssetKind::Dataset, &ddo, Some(&path))?;
        Ok(did)
    }

    /// Registers an algorithm asset: the image `reference`
    /// (`host/repo[:tag]@sha256:…`, pinned by digest) named `name`; returns
    /// its DID. A workflow stage whose `transformation.id` is this DID must
    /// run the same image checksum.
    ///
    /// # Errors
    /// [`Error::Reference`] without a digest or with a malformed one;
    /// [`Error::Store`].
    pub fn add_algorithm(&self, name: &str, reference: &str) -> Result<Did, Error> {
        self.add_algorithm_as(name, reference, None)
    }

    /// [`Store::add_algorithm`] published by consumer `owner` (recorded as
    /// `main.owner`).
    ///
    /// # Errors
    /// As [`Store::add_algorithm`]; [`Error::Invalid`] for the address.
    pub fn add_algorithm_as(
        &self,
        name: &str,
        reference: &str,
        owner: Option<&str>,
    ) -> Result<Did, Error> {
        let owner = owner.map(parse_address).transpose()?;
        let (image, checksum) = reference.rsplit_once('@').ok_or_else(|| Error::Reference {
            reference: reference.to_string(),
            reason: "an algorithm is pinned by digest: append @sha256:<digest> (insitu inspect prints it)".into(),
        })?;
        crate::image::check_digest(checksum)?;
        let (image, tag) = match image.rsplit_once(':') {
            Some((i, t)) if !t.contains('/') => (i, t),
            _ => (image, ""),
        };
        let did = Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed");
        let mut ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": [{"type": "metadata", "index": 0, "attributes": {"main": {
                "type": "algorithm", "name": name, "dateCreated": rfc3339(now_ms() / 1000),
                "algorithm": {"container": {"image": image, "tag": tag, "checksum": checksum}},
            }}}],
        });
        if let Some(o) = owner {
            ddo["service"][0]["attributes"]["main"]["owner"] = json!(o);
        }
        self.insert_asset(&did, AssetKind::Algorithm, &ddo, None)?;
        Ok(did)
    }

    /// The image checksum of algorithm asset `did`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not an algorithm.
    pub fn algorithm_checksum(&self, did: &Did) -> Result<String, Error> {
        let ddo = self.expect_kind(did, AssetKind::Algorithm)?;
        Ok(ddo
            .pointer("/service/0/attributes/main/algorithm/container/checksum")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Registers a workflow (validated); returns its DID.
    ///
    /// # Errors
    /// [`Error::Workflow`] for invalid documents; [`Error::NotFound`] when a
    /// stage reads a dataset the catalog does not have; [`Error::Store`].
    pub fn add_workflow(&self, doc: &Value) -> Result<Did, Error> {
        self.add_workflow_as(doc, None)
    }

    /// [`Store::add_workflow`] published by consumer `owner` (lowercase
    /// address, recorded as `main.owner`): the consumer may execute it under
    /// any agreement of theirs covering the datasets it reads.
    ///
    /// # Errors
    /// As [`Store::add_workflow`]; [`Error::Invalid`] for the address.
    pub fn add_workflow_as(&self, doc: &Value, owner: Option<&str>) -> Result<Did, Error> {
        let owner = owner.map(parse_address).transpose()?;
        let workflow = Workflow::from_value(doc)?;
        for (i, stage) in workflow.stages.iter().enumerate() {
            if let Some(algorithm) = &stage.transformation {
                let path = format!("$.main.workflow.stages[{i}].transformation.id");
                let checksum = self.algorithm_checksum(algorithm).map_err(|_| Error::Workflow {
                    path: path.clone(),
                    reason: format!(
                        "{algorithm} is not an algorithm asset of this provider (insitu algorithm add registers one)"
                    ),
                })?;
                if checksum != stage.container.checksum {
                    return Err(Error::Workflow {
                        path,
                        reason: format!(
                            "algorithm {algorithm} is the image {checksum}, but the stage runs {}; use the algorithm's checksum or another algorithm",
                            stage.container.checksum
                        ),
                    });
                }
            }
        }
        for d in workflow.datasets() {
            // A dataset, or a result (an input of its owner's executions).
            if !matches!(self.ddo(d)?.0, AssetKind::Dataset | AssetKind::Result) {
                self.dataset(d)?;
            }
        }
        let did = Did::parse(&format!("did:nv:{}", random_hex32()?)).expect("well-formed");
        let main = doc.get("main").cloned().unwrap_or_else(|| {
            doc.get("service")
                .and_then(Value::as_array)
                .and_then(|s| {
                    s.iter().find_map(|s| {
                        s.pointer("/attributes/main")
                            .filter(|m| m["type"] == "workflow")
                    })
                })
                .cloned()
                .unwrap_or(Value::Null)
        });
        let mut main = main;
        match (&owner, main.as_object_mut()) {
            (Some(o), Some(m)) => {
                m.insert("owner".into(), json!(o));
            }
            // Only a consumer's publication names an owner.
            (None, Some(m)) => {
                m.remove("owner");
            }
            _ => {}
        }
        let ddo = json!({
            "@context": "https://w3id.org/did/v1",
            "id": did,
            "service": [{"type": "metadata", "index": 0, "attributes": {"main": main}}],
        });
        self.insert_asset(&did, AssetKind::Workflow, &ddo, None)?;
        Ok(did)
    }

    /// The consumer who published workflow `did` (`None`: the provider's).
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not a workflow.
    pub fn workflow_owner(&self, did: &Did) -> Result<Option<String>, Error> {
        Ok(self
            .expect_kind(did, AssetKind::Workflow)?
            .pointer("/service/0/attributes/main/owner")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The DDO and kind of any asset.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    pub fn ddo(&self, did: &Did) -> Result<(AssetKind, Value), Error> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT kind, ddo FROM assets WHERE did = ?1",
                params![did.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let (kind, ddo) = row.ok_or_else(|| Error::NotFound {
            what: "DID",
            id: did.to_string(),
            hint: "; register it first (insitu asset add / insitu workflow add)",
        })?;
        let kind = match kind.as_str() {
            "dataset" => AssetKind::Dataset,
            "workflow" => AssetKind::Workflow,
            "algorithm" => AssetKind::Algorithm,
            _ => AssetKind::Result,
        };
        let ddo = serde_json::from_str(&ddo).map_err(|e| Error::Store {
            path: self.path.clone(),
            reason: format!("the DDO of {did} is not JSON: {e}"),
        })?;
        Ok((kind, ddo))
    }

    pub(super) fn expect_kind(&self, did: &Did, want: AssetKind) -> Result<Value, Error> {
        let (kind, ddo) = self.ddo(did)?;
        if kind != want {
            return Err(Error::NotFound {
                what: match want {
                    AssetKind::Dataset => "dataset",
                    AssetKind::Workflow => "workflow",
                    AssetKind::Algorithm => "algorithm",
                    AssetKind::Result => "result",
                },
                id: did.to_string(),
                hint: "; the DID names an asset of another kind",
            });
        }
        Ok(ddo)
    }

    /// The local directory of an asset (datasets, results).
    pub(super) fn asset_path(&self, did: &Did) -> Result<String, Error> {
        self.conn()
            .query_row(
                "SELECT path FROM assets WHERE did = ?1",
                params![did.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// A registered dataset.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not a dataset; [`Error::Store`].
    pub fn dataset(&self, did: &Did) -> Result<Dataset, Error> {
        let ddo = self.expect_kind(did, AssetKind::Dataset)?;
        let path = self.asset_path(did)?;
        let allowed_images = ddo
            .pointer("/service/1/attributes/main/provider/environment/supportedContainers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["checksum"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Dataset {
            did: did.clone(),
            name: ddo
                .pointer("/service/0/attributes/main/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            path: PathBuf::from(path),
            allowed_images,
            server: ddo
                .pointer("/service/1/attributes/main/provider/environment/supportedServers/0")
                .map(Server::from_ddo)
                .unwrap_or_default(),
            deterministic: ddo.pointer("/service/1/attributes/main/deterministic")
                == Some(&Value::Bool(true)),
            access: access::offers_access(&ddo),
        })
    }

    /// A result asset used as an input of a later execution by `consumer`:
    /// as a [`Dataset`] whose directory is the result's files, whose allowed
    /// images, resources and deterministic mode are those of the datasets it
    /// was computed from (all of them, through results of results: data
    /// derived from a dataset stays under its compute service).
    ///
    /// # Errors
    /// [`Error::NotFound`] when `did` is not a result; [`Error::Denied`] when
    /// it belongs to another consumer or a dataset it came from is gone.
    pub fn result_as_dataset(&self, did: &Did, consumer: &str) -> Result<Dataset, Error> {
        let ddo = self.expect_kind(did, AssetKind::Result)?;
        let main = ddo
            .pointer("/service/0/attributes/main")
            .cloned()
            .unwrap_or(Value::Null);
        if !main["owner"]
            .as_str()
            .is_some_and(|o| o.eq_ignore_ascii_case(consumer))
        {
            return Err(Error::Denied(format!(
                "result {did} is not {consumer}'s: a result is an input only of its owner's executions"
            )));
        }
        let path = self.asset_path(did)?;
        // The datasets it came from, through results of results.
        let mut sources: Vec<Dataset> = Vec::new();
        let mut todo: Vec<(Value, usize)> = vec![(main["provenance"]["inputs"].clone(), 0)];
        while let Some((inputs, depth)) = todo.pop() {
            for d in inputs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let Ok(d) = Did::parse(d) else { continue };
                match self.ddo(&d) {
                    Ok((AssetKind::Dataset, _)) => {
                        if !sources.iter().any(|s| s.did == d) {
                            sources.push(self.dataset(&d)?);
                        }
                    }
                    Ok((AssetKind::Result, r)) if depth < 32 => todo.push((
                        r.pointer("/service/0/attributes/main/provenance/inputs")
                            .cloned()
                            .unwrap_or(Value::Null),
                        depth + 1,
                    )),
                    _ => {
                        return Err(Error::Denied(format!(
                            "result {did} was computed from {d}, which this provider no longer has as a dataset; its compute service cannot be checked"
                        )));
                    }
                }
            }
        }
        let Some(first) = sources.first() else {
            return Err(Error::Denied(format!(
                "result {did} records no dataset it was computed from"
            )));
        };
        Ok(Dataset {
            did: did.clone(),
            name: main["name"].as_str().unwrap_or("").to_string(),
            path: PathBuf::from(path),
            allowed_images: first
                .allowed_images
                .iter()
                .filter(|i| sources.iter().all(|s| s.allowed_images.contains(i)))
                .cloned()
                .collect(),
            server: sources
                .iter()
                .fold(Server::default(), |s, d| s.min(&d.server)),
            deterministic: sources.iter().any(|s| s.deterministic),
            access: false,
        })
    }

    /// Brings the search index up to date with the catalog (a server calls
    /// it at start, so the first search does not pay for indexing every
    /// asset; searches call it for the assets added since).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn index_catalog(&self) -> Result<(), Error> {
        // Locks in this order everywhere: the index, then the connection.
        let mut index = crate::sync::lock(&self.index);
        let conn = self.conn();
        self.catch_up(&conn, &mut index)
    }

    pub(super) fn catch_up(
        &self,
        conn: &Connection,
        index: &mut index::Index,
    ) -> Result<(), Error> {
        let mut st = conn
            .prepare_cached(
                "SELECT rowid, did, kind, ddo FROM assets WHERE rowid > ?1 ORDER BY rowid",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st
            .query(params![index.last_rowid])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let (rowid, did, kind, ddo): (i64, String, String, String) = (
                r.get(0).map_err(|e| self.err(e))?,
                r.get(1).map_err(|e| self.err(e))?,
                r.get(2).map_err(|e| self.err(e))?,
                r.get(3).map_err(|e| self.err(e))?,
            );
            index.add(rowid, &did, &kind, &ddo);
        }
        Ok(())
    }

    /// Searches the catalog: full text over name, description, tags and
    /// author (an in-memory index, ranked by BM25F with the name weighing
    /// most; an exact name first; see `index`), filtered by `query`. Datasets, workflows and
    /// algorithms are public; a result is found only by its owner
    /// (`query.viewer`). Returns one page of DDOs and the total.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn search(&self, query: &Search) -> Result<(Vec<Value>, u64), Error> {
        let mut index = crate::sync::lock(&self.index);
        {
            // The connection only while catching up: the ranking needs none.
            let conn = self.conn();
            self.catch_up(&conn, &mut index)?;
        }
        let (dids, total) = index.search(query);
        drop(index);
        let conn = self.conn();
        let mut results = Vec::with_capacity(dids.len());
        let mut ddo = conn
            .prepare_cached("SELECT ddo FROM assets WHERE did = ?1")
            .map_err(|e| self.err(e))?;
        for did in &dids {
            let text: String = ddo
                .query_row(params![did], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            results.push(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        Ok((results, total))
    }

    /// The images registered after asset row `after`, and the last row
    /// read (pass it back next time; start with 0): every stage image of a
    /// workflow and every algorithm asset's image as `(reference,
    /// checksum)`, and every image a dataset allows as `("", checksum)` (a
    /// dataset names checksums only; local layouts serve them by checksum).
    /// Results and unparsable documents are skipped.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn images_registered_after(
        &self,
        after: i64,
    ) -> Result<(Vec<(String, String)>, i64), Error> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT rowid, kind, ddo FROM assets WHERE rowid > ?1 AND kind != 'result' ORDER BY rowid",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st.query(params![after]).map_err(|e| self.err(e))?;
        let (mut images, mut last) = (Vec::new(), after);
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let (rowid, kind, ddo): (i64, String, String) = (
                r.get(0).map_err(|e| self.err(e))?,
                r.get(1).map_err(|e| self.err(e))?,
                r.get(2).map_err(|e| self.err(e))?,
            );
            last = rowid;
            let Ok(ddo) = serde_json::from_str::<Value>(&ddo) else {
                continue;
            };
            match kind.as_str() {
                "workflow" => {
                    if let Ok(w) = Workflow::from_value(&ddo) {
                        images.extend(
                            w.stages
                                .iter()
                                .map(|s| (s.container.reference(), s.container.checksum.clone())),
                        );
                    }
                }
                "algorithm" => {
                    let c = ddo.pointer("/service/0/attributes/main/algorithm/container");
                    let field = |k: &str| {
                        c.and_then(|c| c.get(k))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    let container = crate::workflow::Container {
                        image: field("image"),
                        tag: field("tag"),
                        checksum: field("checksum"),
                    };
                    images.push((container.reference(), container.checksum));
                }
                _ => {
                    let allowed = ddo
                        .pointer("/service")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|s| {
                            s.pointer("/attributes/main/provider/environment/supportedContainers")
                        })
                        .filter_map(Value::as_array)
                        .flatten()
                        .filter_map(|c| c["checksum"].as_str());
                    images.extend(allowed.map(|c| (String::new(), c.to_string())));
                }
            }
        }
        Ok((images, last))
    }

    /// A registered workflow, parsed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Workflow`] if it no longer validates.
    pub fn workflow(&self, did: &Did) -> Result<Workflow, Error> {
        Workflow::from_value(&self.expect_kind(did, AssetKind::Workflow)?)
    }
}
