//! The `insitu` command line and (growing) HTTP gateway. `main.rs` only parses
//! arguments; each command lives in [`commands`]; [`auth`] verifies Nevermined
//! JWT grants and issues access tokens.

pub mod auth;
pub mod client;
pub mod commands;
pub mod config;
pub mod ddo;
pub mod error;
pub mod http;
pub mod ids;
pub mod provider;
