//! `mill kubeconfig`: a kubeconfig that makes the real `kubectl` talk to the cluster.

use crate::daemon::Identity;
use std::path::Path;
use std::process::ExitCode;

/// Prints a kubeconfig for this node (from its data dir) or for `--address`/`--token`.
pub fn run(data_dir: &Path, address: &str, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let (server, token, ca) = match Identity::load(data_dir)? {
        Some(identity) if token.is_none_or(|t| t == identity.token) => (
            format!("https://{}", identity.advertised_api()),
            identity.token,
            Some(identity.ca_cert),
        ),
        _ => match token {
            Some(token) => (address.to_string(), token.to_string(), None),
            None => anyhow::bail!(
                "no cluster token: run this on a node (with --data-dir {}), or pass --token/MILL_TOKEN and --address",
                data_dir.display()
            ),
        },
    };
    print!("{}", render(&server, &token, ca.as_deref()));
    Ok(ExitCode::SUCCESS)
}

/// The kubeconfig text for `server` with bearer `token`, trusting `ca_pem` if given.
/// (kubectl sends the token only over https.)
pub fn render(server: &str, token: &str, ca_pem: Option<&str>) -> String {
    use base64::Engine;
    let mut cluster = serde_json::json!({ "server": server });
    if let Some(ca) = ca_pem {
        cluster["certificate-authority-data"] =
            base64::engine::general_purpose::STANDARD.encode(ca).into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mill", "cluster": cluster}],
        "users": [{"name": "mill", "user": {"token": token}}],
        "contexts": [{"name": "mill", "context": {"cluster": "mill", "user": "mill", "namespace": "default"}}],
        "current-context": "mill",
    });
    // A JSON value of strings and maps always serialises.
    serde_yaml::to_string(&doc).expect("kubeconfig serialises")
}
