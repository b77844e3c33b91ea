//! The runtime's error type. Each variant carries what failed, where, and the
//! detail needed to fix it; the gateway maps them to HTTP in one place.

use std::path::PathBuf;

/// Errors from preparing or running a stage.
///
/// A guest misbehaving is *not* an error: it is a [`crate::Outcome`] in the
/// [`crate::RunReport`]. Errors are for the host side: bad job specifications,
/// modules refused before they run, and I/O failures of the provider's disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module was refused before running (not wasm, precompiled native code,
    /// imports networking or something insitu does not provide, fails validation).
    #[error("module {digest} rejected: {reason}")]
    Rejected { digest: String, reason: String },

    /// A limit asked for a job exceeds the provider's maximum.
    #[error(
        "{what} of {requested} is above the provider's maximum of {maximum}; ask for at most {maximum}"
    )]
    LimitAboveMaximum {
        what: &'static str,
        requested: String,
        maximum: String,
    },

    /// A receipt or attestation file is malformed (not what was signed is a
    /// failing [`crate::verify::Check`], not this).
    #[error("receipt: {0}")]
    Receipt(String),

    /// A job specification is unusable (missing input dir, non-empty output, ...).
    #[error("invalid job: {0}")]
    InvalidJob(String),

    /// The provider's disk (the data dir) is full. Nothing half-written is
    /// kept; retrying once space is freed works.
    #[error("the provider's disk is full: cannot {action} {}; free space in the data dir, then retry", path.display())]
    DiskFull { action: String, path: PathBuf },

    /// A host-side I/O operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The wasmtime engine could not be configured (e.g. the pooling allocator
    /// cannot reserve its address space).
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),

    /// Bytes did not hash to the digest they were expected to have.
    #[error(
        "{what} has digest {actual}, expected {expected}; the content changed or the checksum is wrong — nothing was stored"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A blob's size differs from its descriptor, or exceeds the provider's maximum.
    #[error("{what}: {reason}")]
    BlobSize { what: String, reason: String },

    /// An image reference without a checksum, or malformed.
    #[error("image reference `{reference}`: {reason}")]
    Reference { reference: String, reason: String },

    /// The registry or layout could not serve what was asked.
    #[error("{source_name}: {reason}")]
    Source { source_name: String, reason: String },

    /// The image is not something insitu can run (media types, layers, platforms).
    #[error("image {digest}: {reason}")]
    BadImage { digest: String, reason: String },

    /// A tar layer or archive (`layer` names it: `layer sha256:…`, `archive PATH`)
    /// holds an entry that could escape or harm the extraction root.
    #[error("{layer}: refusing unsafe entry `{entry}`: {reason}")]
    UnsafeArchive {
        layer: String,
        entry: String,
        reason: String,
    },

    /// A status change that [`crate::Status::transition`] does not allow.
    #[error("execution status cannot go from `{}` to `{}`{}", from.as_str(), to.as_str(), if from.is_terminal() { format!("; {} is final", from.as_str()) } else { String::new() })]
    Transition {
        from: crate::Status,
        to: crate::Status,
    },

    /// The state database failed.
    #[error("database {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },

    /// Something asked for by identifier does not exist.
    #[error("unknown {what} `{id}`{hint}")]
    NotFound {
        what: &'static str,
        id: String,
        hint: &'static str,
    },

    /// A value given by a user is malformed.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// An encrypted key file (Web3 Secret Storage) could not be read,
    /// decrypted or written.
    #[error("keystore {}: {reason}", path.display())]
    Keystore { path: PathBuf, reason: String },

    /// The agreement or a dataset's compute service does not permit this.
    #[error("not permitted: {0}")]
    Denied(String),

    /// A service the provider depends on (the chain's RPC endpoint) cannot be
    /// reached or answered wrongly; retrying later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The execution queue is full; nothing was created. Retry shortly.
    #[error("the execution queue is full; retry after the Retry-After delay")]
    Busy,

    /// The provider is shutting down and takes no new executions.
    #[error("the provider is shutting down and takes no new executions; retry when it is back")]
    ShuttingDown,

    /// A workflow document is malformed; `path` is a JSON path into it.
    #[error("workflow {path}: {reason}")]
    Workflow { path: String, reason: String },

    /// A size or duration could not be parsed.
    #[error("invalid {what} `{input}`: {hint}")]
    Parse {
        what: &'static str,
        input: String,
        hint: &'static str,
    },
}

impl Error {
    /// An I/O failure doing `action` on `path`; a full disk or quota becomes
    /// [`Error::DiskFull`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return Error::DiskFull {
                action: action.to_string(),
                path: path.into(),
            };
        }
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
