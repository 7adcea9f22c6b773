//! `mill image load FILE`: import an OCI archive into every live node, by posting it to
//! each node's agent (`POST /internal/agent/images/load` on the node's API address).

use super::client::Client;
use anyhow::Context;
use reqwest::Method;
use std::path::Path;
use std::process::ExitCode;

/// Loads `file` into every node that is not down; exit 1 if any node failed.
pub fn load(address: &str, token: Option<&str>, file: &Path) -> anyhow::Result<ExitCode> {
    let client = Client::new(address, token)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let nodes: serde_json::Value = client.get("/apis/mill.dev/v1/nodes").await?;
        let mut failed = false;
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        for node in items {
            let name = node["metadata"]["name"].as_str().unwrap_or("?").to_string();
            if node["status"]["state"] == "down" {
                eprintln!("  {name}: skipped (down)");
                continue;
            }
            let Some(api) = node["spec"]["apiAddress"].as_str() else {
                continue;
            };
            let node_client = client.at(&format!("http://{api}"));
            let answer = node_client
                .request(Method::POST, "/internal/agent/images/load")
                .body(bytes.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let images: Vec<String> = body["images"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect();
                    println!("  {name}: loaded {}", images.join(", "));
                }
                Ok(r) => {
                    failed = true;
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    eprintln!("  {name}: {}", body["error"].as_str().unwrap_or("failed"));
                }
                Err(e) => {
                    failed = true;
                    eprintln!("  {name}: cannot reach {api}: {e}");
                }
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
