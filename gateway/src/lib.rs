//! The `insitu` command line. `main.rs` only parses arguments; each command
//! lives in [`commands`].

pub mod commands;
