//! The provider's settings: [`ServeConfig`] and its parts, with their
//! defaults ([`serve`]); [`layers`] reads them from a TOML file, `INSITU_*`
//! environment variables and flags; [`crate::provider`] builds the provider
//! from them.

mod layers;
mod serve;

pub use layers::*;
pub use serve::*;
