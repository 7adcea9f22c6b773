//! `mill deploy [-f FILE] [--dry-run] [--detach]` and `mill apply -f FILE`.
//!
//! A `.mill` file is posted to `POST /v1/deploy`; the answer is the deploy's SSE stream,
//! printed one line per step (SPEC §8). `mill apply` of a `.yaml`/`.json` manifest of mill
//! kinds goes to the Kubernetes-shaped API instead (create, or replace what exists).

use super::client::{Client, ClientError};
use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

/// What `mill deploy` was asked.
pub struct DeployArgs<'a> {
    /// `--address`.
    pub address: &'a str,
    /// `--token`.
    pub token: Option<&'a str>,
    /// `-n`.
    pub namespace: &'a str,
    /// `-f`.
    pub file: &'a Path,
    /// `--dry-run`: print the diff, change nothing.
    pub dry_run: bool,
    /// `--detach`: return once the deploy is accepted.
    pub detach: bool,
}

/// `mill deploy`, and `mill apply` of a `.mill` file.
pub fn deploy(args: &DeployArgs<'_>) -> anyhow::Result<ExitCode> {
    let client = Client::new(args.address, args.token)?;
    let source = std::fs::read_to_string(args.file).with_context(|| {
        format!(
            "cannot read {}; pass the config with -f FILE",
            args.file.display()
        )
    })?;
    let file_name = args.file.display().to_string();
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut query = vec![("namespace", args.namespace), ("file", file_name.as_str())];
        if args.dry_run {
            query.push(("dryRun", "true"));
        }
        let request = client
            .request(Method::POST, "/v1/deploy")
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(source);
        let answer = client.send_raw(request).await?;
        match answer.status().as_u16() {
            200 => {}
            401 => return Err(ClientError::Unauthorized.into()),
            400 => {
                let body: Value = answer.json().await.unwrap_or_default();
                eprintln!(
                    "{}",
                    body["error"].as_str().unwrap_or("the config is invalid")
                );
                for d in body["details"].as_array().into_iter().flatten() {
                    eprintln!(
                        "{file_name}:{}:{}: {}",
                        d["line"],
                        d["col"],
                        d["message"].as_str().unwrap_or_default()
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
            code => {
                let body: Value = answer.json().await.unwrap_or_default();
                anyhow::bail!(
                    "the deploy was refused (HTTP {code}): {}",
                    body["error"].as_str().unwrap_or("no reason given")
                );
            }
        }
        if args.dry_run {
            let body: Value = answer.json().await?;
            print_diff(&body);
            return Ok(ExitCode::SUCCESS);
        }
        if args.detach {
            let name = answer
                .headers()
                .get("x-mill-deploy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("deploy")
                .to_string();
            println!("{name} started; it goes on in the cluster (see: mill get deploy {name})");
            return Ok(ExitCode::SUCCESS);
        }
        follow(answer).await
    })
}

fn print_diff(body: &Value) {
    for change in body["changes"].as_array().into_iter().flatten() {
        let kind = change["kind"].as_str().unwrap_or_default();
        let name = change["name"].as_str().unwrap_or_default();
        let what = match change["change"].as_str().unwrap_or_default() {
            "new" => "will be created",
            "unchanged" => "unchanged",
            "rollout" => "will roll out a new revision",
            "scale" => "will be updated in place",
            "routes" => "routes will be updated",
            "changed" => "will be replaced",
            "removed" => "will be removed",
            other => other,
        };
        let prefix = if kind == "task" { "task " } else { "" };
        println!("  {prefix}{name}: {what}");
    }
    println!("dry run: nothing was changed");
}

/// Prints the SSE stream of a deploy until its `done`.
async fn follow(mut answer: reqwest::Response) -> anyhow::Result<ExitCode> {
    let mut buffer = String::new();
    let mut progress = Progress::default();
    loop {
        let chunk = answer.chunk().await.context(
            "lost the connection to the cluster; the deploy goes on there (see: mill get deploys)",
        )?;
        let Some(chunk) = chunk else {
            anyhow::bail!(
                "the cluster ended the stream before the deploy finished; it goes on there (see: mill get deploys)"
            );
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if let Some(code) = progress.message(&message) {
                return Ok(code);
            }
        }
    }
}

/// What the stream said so far.
#[derive(Default)]
struct Progress {
    services: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl Progress {
    /// Prints one SSE message; the exit code once it was `done`.
    fn message(&mut self, message: &str) -> Option<ExitCode> {
        let mut event = "message";
        let mut data = String::new();
        for line in message.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim());
            }
        }
        let data: Value = serde_json::from_str(&data).unwrap_or_default();
        let service = data["service"].as_str().unwrap_or_default().to_string();
        match event {
            "progress" => {
                if !service.is_empty() {
                    self.services.insert(service.clone());
                }
                if let Some(line) = progress_line(&service, &data) {
                    println!("{line}");
                }
                None
            }
            "failed" => {
                self.services.insert(service.clone());
                self.failed.insert(service.clone());
                let reason = data["reason"].as_str().unwrap_or("no reason given");
                println!("  {service}: failed: {reason}");
                None
            }
            "done" => {
                let elapsed = data["elapsed"].as_f64().unwrap_or(0.0);
                if data["success"].as_bool() == Some(true) {
                    println!("deployed ({elapsed:.1}s)");
                    Some(ExitCode::SUCCESS)
                } else {
                    if self.failed.len() < self.services.len() {
                        println!("deploy finished with errors");
                    } else {
                        println!("deploy failed");
                    }
                    Some(ExitCode::FAILURE)
                }
            }
            _ => None,
        }
    }
}

fn progress_line(service: &str, data: &Value) -> Option<String> {
    let text = match data["phase"].as_str()? {
        "scheduled" => format!("scheduled on {}", data["node"].as_str().unwrap_or("a node")),
        "pulling" => "pulling the image".to_string(),
        "starting" => "starting".to_string(),
        "healthy" => format!("healthy ({:.1}s)", data["elapsed"].as_f64().unwrap_or(0.0)),
        "routed" => "routed".to_string(),
        "stopped" => "old instance stopped".to_string(),
        "rolling_back" => "rolling back".to_string(),
        "rolled_back" => "rolled back".to_string(),
        "removed" => "removed".to_string(),
        "unchanged" => "unchanged".to_string(),
        _ => return None,
    };
    Some(format!("  {service}: {text}"))
}

/// `mill apply -f FILE`: a `.mill` deploys; `.yaml`/`.yml`/`.json` manifests of mill kinds
/// are created (or replaced) through the Kubernetes-shaped API.
pub fn apply(args: &DeployArgs<'_>) -> anyhow::Result<ExitCode> {
    let extension = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if !matches!(extension, "yaml" | "yml" | "json") {
        return deploy(args);
    }
    let client = Client::new(args.address, args.token)?;
    let text = std::fs::read_to_string(args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document)
            .with_context(|| format!("{} is not valid YAML/JSON", args.file.display()))?;
        if value.is_null() {
            continue;
        }
        objects.push(serde_json::to_value(value)?);
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        for object in objects {
            apply_object(&client, args.namespace, object).await?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn apply_object(client: &Client, namespace: &str, mut object: Value) -> anyhow::Result<()> {
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    if api_version != "mill.dev/v1" {
        anyhow::bail!(
            "mill apply takes manifests of mill kinds (apiVersion mill.dev/v1), not {api_version:?} {kind}; use kubectl for others"
        );
    }
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("a {kind} manifest has no metadata.name"))?
        .to_string();
    let plural = format!("{}s", kind.to_lowercase());
    let collection = if kind == "Node" {
        format!("/apis/mill.dev/v1/{plural}")
    } else {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(namespace)
            .to_string();
        object["metadata"]["namespace"] = Value::String(ns.clone());
        format!("/apis/mill.dev/v1/namespaces/{ns}/{plural}")
    };
    let created = client
        .send_raw(client.request(Method::POST, &collection).json(&object))
        .await?;
    let label = format!("{}/{name}", kind.to_lowercase());
    match created.status().as_u16() {
        200 | 201 => {
            println!("{label} created");
            return Ok(());
        }
        401 => return Err(ClientError::Unauthorized.into()),
        409 => {}
        code => anyhow::bail!("{label}: HTTP {code}: {}", status_message(created).await),
    }
    let url = format!("{collection}/{name}");
    let current: Value = client.get(&url).await?;
    object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    let replaced = client
        .send_raw(client.request(Method::PUT, &url).json(&object))
        .await?;
    if replaced.status().is_success() {
        println!("{label} configured");
        Ok(())
    } else {
        let code = replaced.status().as_u16();
        anyhow::bail!("{label}: HTTP {code}: {}", status_message(replaced).await)
    }
}

async fn status_message(answer: reqwest::Response) -> String {
    let body: Value = answer.json().await.unwrap_or_default();
    body["message"]
        .as_str()
        .unwrap_or("no reason given")
        .to_string()
}
