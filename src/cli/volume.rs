//! `mill volume list|delete` through `/v1/volumes` (a volume a service still mounts is
//! not deleted: the server answers 409 and says which service).

use super::client::Client;
use super::output::{self, Format};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

/// `mill volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List the volumes: state, node, cloud id.
    ///
    /// Example: `mill volume list -n staging`
    List,
    /// Delete a volume no service uses any more.
    ///
    /// Example: `mill volume delete pgdata`
    Delete {
        /// The volume's name.
        name: String,
    },
}

/// Runs one `mill volume` command.
pub async fn run(
    client: &Client,
    command: &VolumeCommand,
    namespace: &str,
    format: Format,
) -> anyhow::Result<()> {
    let ns = [("namespace", namespace)];
    match command {
        VolumeCommand::List => {
            let request = client.request(Method::GET, "/v1/volumes").query(&ns);
            let volumes: Value = client.json(request).await?;
            let items: Vec<&Value> = volumes.as_array().into_iter().flatten().collect();
            match format {
                Format::Json => print!("{}", output::json(&volumes)),
                _ if items.is_empty() => {
                    eprintln!("No volumes in namespace \"{namespace}\".")
                }
                _ => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|v| {
                            ["name", "state", "node", "cloud_id"]
                                .iter()
                                .map(|f| output::cell(&v[*f]))
                                .collect()
                        })
                        .collect();
                    let headers = ["NAME", "STATE", "NODE", "CLOUD ID"].map(String::from);
                    print!("{}", output::table(&headers, &rows));
                }
            }
        }
        VolumeCommand::Delete { name } => {
            let request = client
                .request(Method::DELETE, &format!("/v1/volumes/{name}"))
                .query(&ns);
            let _: Value = client.json(request).await?;
            println!("volume \"{name}\" deleted");
        }
    }
    Ok(())
}
