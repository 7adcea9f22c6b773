//! `mill secret set|get|list|delete`: one-value secrets through `/v1/secrets` (what
//! `${secret(NAME)}` in a `.mill` file reads). `list` never shows values.

use super::client::Client;
use super::output::{self, Format};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Read;

/// `mill secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret.
    ///
    /// Example: `mill secret set DB_URL postgres://db:5432/app`, or
    /// `printf %s "$PW" | mill secret set DB_PASSWORD -` to keep it out of shell history.
    Set {
        /// The secret's name (`[A-Za-z0-9._-]+`).
        name: String,
        /// The value; `-` reads it from standard input.
        value: String,
    },
    /// Print a secret's value.
    ///
    /// Example: `mill secret get DB_URL`
    Get {
        /// The secret's name.
        name: String,
    },
    /// List the secrets' names (never their values).
    ///
    /// Example: `mill secret list -n staging`
    List,
    /// Delete a secret.
    ///
    /// Example: `mill secret delete DB_URL`
    Delete {
        /// The secret's name.
        name: String,
    },
}

/// Runs one `mill secret` command.
pub async fn run(
    client: &Client,
    command: &SecretCommand,
    namespace: &str,
    format: Format,
) -> anyhow::Result<()> {
    let ns = [("namespace", namespace)];
    match command {
        SecretCommand::Set { name, value } => {
            let value = if value == "-" {
                let mut read = String::new();
                std::io::stdin().read_to_string(&mut read)?;
                read
            } else {
                value.clone()
            };
            let path = format!("/v1/secrets/{name}?namespace={namespace}");
            let _: Value = client
                .call(Method::PUT, &path, Some(&json!({ "value": value })))
                .await?;
            println!("secret \"{name}\" set");
        }
        SecretCommand::Get { name } => {
            let request = client
                .request(Method::GET, &format!("/v1/secrets/{name}"))
                .query(&ns);
            let secret: Value = client.json(request).await?;
            match format {
                Format::Json => print!("{}", output::json(&secret)),
                _ => println!("{}", secret["value"].as_str().unwrap_or_default()),
            }
        }
        SecretCommand::List => {
            let request = client.request(Method::GET, "/v1/secrets").query(&ns);
            let secrets: Value = client.json(request).await?;
            let names: Vec<String> = secrets
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| output::cell(&s["name"]))
                .collect();
            match format {
                Format::Json => print!("{}", output::json(&secrets)),
                _ if names.is_empty() => {
                    eprintln!("No secrets in namespace \"{namespace}\".")
                }
                _ => {
                    let rows: Vec<Vec<String>> = names.into_iter().map(|n| vec![n]).collect();
                    print!("{}", output::table(&["NAME".to_string()], &rows));
                }
            }
        }
        SecretCommand::Delete { name } => {
            let request = client
                .request(Method::DELETE, &format!("/v1/secrets/{name}"))
                .query(&ns);
            let _: Value = client.json(request).await?;
            println!("secret \"{name}\" deleted");
        }
    }
    Ok(())
}
