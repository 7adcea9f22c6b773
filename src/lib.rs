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

/// An error and its causes on one line (`error sending request: ...: connection reset`).
pub(crate) fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
