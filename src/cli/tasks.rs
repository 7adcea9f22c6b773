//! `mill spawn`, `mill ps`, `mill kill` (SPEC §7), over `/v1/tasks`.
//!
//! `spawn` prints the new run's id and returns at once (the run goes on in the cluster);
//! `ps` lists the namespace's task runs; `kill` stops one and waits until it has ended.

use super::client::Client;
use super::nodes::human_bytes;
use comfy_table::{presets, Table};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

/// How often `kill` looks at the run again.
const POLL: Duration = Duration::from_millis(300);

/// What `mill spawn` was asked.
pub struct SpawnArgs<'a> {
    /// A task a deploy defined.
    pub task: Option<&'a str>,
    /// Or an image to run inline.
    pub image: Option<&'a str>,
    /// `--cpu`.
    pub cpu: Option<f64>,
    /// `--memory`.
    pub memory: Option<&'a str>,
    /// `--timeout`.
    pub timeout: Option<&'a str>,
    /// `--env K=V`.
    pub env: &'a [String],
    /// `-- COMMAND ARG...`.
    pub command: &'a [String],
}

fn env_map(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("--env takes KEY=VALUE, not {pair:?}"),
        })
        .collect()
}

/// `mill spawn TASK | --image IMG ...`: prints the run's id.
pub async fn spawn(
    client: &Client,
    namespace: &str,
    args: &SpawnArgs<'_>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "env": env_map(args.env)? });
    if let Some(task) = args.task {
        body["task"] = json!(task);
    }
    if let Some(image) = args.image {
        body["image"] = json!(image);
        if !args.command.is_empty() {
            body["command"] = json!(args.command);
        }
        if let Some(cpu) = args.cpu {
            body["cpu"] = json!(cpu);
        }
        if let Some(memory) = args.memory {
            body["memory"] = json!(memory);
        }
        if let Some(timeout) = args.timeout {
            body["timeout"] = json!(timeout);
        }
    }
    let path = format!("/v1/tasks/spawn?namespace={namespace}");
    let answer: Value = client.call(Method::POST, &path, Some(&body)).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}", answer["id"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// `mill ps`.
pub async fn ps(client: &Client, namespace: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let runs: Value = client
        .get(&format!("/v1/tasks?namespace={namespace}"))
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "ID", "TASK", "NODE", "STATUS", "EXIT", "ADDRESS", "CPU", "MEMORY", "STARTED",
    ]);
    for run in runs.as_array().into_iter().flatten() {
        let text = |field: &str| run[field].as_str().unwrap_or("-").to_string();
        let mut status = text("status");
        if let Some(reason) = run["reason"].as_str() {
            status = format!("{status}: {reason}");
        }
        table.add_row([
            text("id"),
            text("name"),
            text("node"),
            status,
            run["exit_code"]
                .as_i64()
                .map_or("-".to_string(), |c| c.to_string()),
            text("address"),
            run["cpu"].to_string(),
            human_bytes(run["memory"].as_u64().unwrap_or(0)),
            text("started_at"),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// `mill kill TASK_ID`: returns once the run has ended.
pub async fn kill(
    client: &Client,
    namespace: &str,
    id: &str,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/tasks/{id}?namespace={namespace}");
    let mut run: Value = client.call::<(), _>(Method::DELETE, &path, None).await?;
    while !matches!(run["status"].as_str(), Some("stopped" | "failed")) {
        tokio::time::sleep(POLL).await;
        run = client.get(&path).await?;
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        println!("{id}: {}", run["status"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}
