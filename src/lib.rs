//! mill: a container orchestrator for small clusters. This crate is the `mill` binary's
//! library: the `.mill` config, the replicated store, the API server, the node daemon and
//! the command-line client.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod net;
pub mod store;
