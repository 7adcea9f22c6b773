//! mill: a container orchestrator for small clusters. This crate is the `mill` binary's
//! library: the `.mill` config, the command-line client and (later) the daemon.

pub mod api;
pub mod cli;
pub mod config;
pub mod store;
