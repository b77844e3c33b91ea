//! The HTTP routes, one module per API area: [`compute`] (execute, status,
//! logs, stop, list, results), [`oauth`] (grants for access tokens),
//! [`dashboard`] (the provider's page), [`review`] (held results),
//! [`metadata`] (DDOs and catalog
//! search), [`access`] (dataset downloads under access agreements),
//! [`federated`] (a participant's steps in federated rounds, the final
//! model's publication) and [`ops`] (health, metrics, the OpenAPI document).
//!
//! Routes speak HTTP only: they check who asks, call the runtime (an
//! execution's life is [`insitu_runtime::executions::Executions`]') and shape
//! the answer. They share plumbing through [`crate::http`]'s modules and
//! never import each other.

pub(crate) mod access;
pub(crate) mod compute;
pub(crate) mod dashboard;
pub(crate) mod federated;
pub(crate) mod metadata;
pub(crate) mod oauth;
pub(crate) mod ops;
pub(crate) mod review;
