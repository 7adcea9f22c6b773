//! `mill kubeconfig`: a kubeconfig that makes the real `kubectl` talk to the cluster.

use crate::daemon::Identity;
use std::path::Path;
use std::process::ExitCode;

/// Prints a kubeconfig for this node (from its data dir) or for `--address`/`--token`.
pub fn run(data_dir: &Path, address: &str, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let (server, token) = match (Identity::load(data_dir)?, token) {
        (_, Some(token)) => (address.to_string(), token.to_string()),
        (Some(identity), None) => (format!("http://{}", identity.advertised_api()), identity.token),
        (None, None) => anyhow::bail!(
            "no cluster token: run this on a node (with --data-dir {}), or pass --token/MILL_TOKEN and --address",
            data_dir.display()
        ),
    };
    print!("{}", render(&server, &token));
    Ok(ExitCode::SUCCESS)
}

/// The kubeconfig text for `server` with bearer `token`.
pub fn render(server: &str, token: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mill", "cluster": {"server": server}}],
        "users": [{"name": "mill", "user": {"token": token}}],
        "contexts": [{"name": "mill", "context": {"cluster": "mill", "user": "mill", "namespace": "default"}}],
        "current-context": "mill",
    });
    // A JSON value of strings and maps always serialises.
    serde_yaml::to_string(&doc).expect("kubeconfig serialises")
}
