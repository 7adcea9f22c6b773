//! `mill rollout status|history|undo SERVICE` (SPEC §4), over `GET /v1/rollout/{service}`
//! and `POST /v1/rollout/{service}/undo`.
//!
//! `status` prints where the service's rollout stands and, while one is in progress, follows
//! it until it completes (exit 0) or its revision fails (exit 1). `history` lists the
//! retained revisions. `undo` rolls out the template of an earlier revision (default: the
//! newest older one that did not fail) and follows it like a deploy.

use super::client::Client;
use super::deploy::{follow_deploy, Progress, Words};
use super::restart::deploy_of;
use comfy_table::{presets, Table};
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// How often `rollout status` reads the service again while a rollout runs.
const POLL: Duration = Duration::from_millis(300);

async fn show(client: &Client, namespace: &str, service: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(&format!("/v1/rollout/{service}?namespace={namespace}"))
        .await?)
}

fn summary(state: &Value) -> String {
    let service = state["service"].as_str().unwrap_or_default();
    let healthy = &state["replicas"]["healthy"];
    let desired = &state["replicas"]["desired"];
    let line = match (
        state["revision"].as_i64(),
        state["target_revision"].as_i64(),
    ) {
        (_, None) => format!("{service}: no revision yet"),
        (Some(r), Some(t)) if r == t => {
            format!("{service}: revision {r}, {healthy}/{desired} healthy")
        }
        (serving, Some(t)) => {
            let from = serving.map_or(String::new(), |r| format!(" (from revision {r})"));
            format!("{service}: rolling out revision {t}{from}, {healthy}/{desired} healthy")
        }
    };
    match state["message"].as_str() {
        Some(message) => format!("{line}\n  {message}"),
        None => line,
    }
}

fn failure_of(state: &Value, revision: i64) -> Option<String> {
    state["history"]
        .as_array()?
        .iter()
        .find(|r| r["revision"].as_i64() == Some(revision))?["failure"]
        .as_str()
        .map(str::to_string)
}

/// `mill rollout status SERVICE`.
pub async fn status(
    client: &Client,
    namespace: &str,
    service: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut state = show(client, namespace, service).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(target) = state["target_revision"].as_i64() else {
        println!("{}", summary(&state));
        return Ok(ExitCode::SUCCESS);
    };
    let mut printed = String::new();
    loop {
        let line = summary(&state);
        if line != printed {
            println!("{line}");
            printed = line;
        }
        if let Some(reason) = failure_of(&state, target) {
            println!("revision {target} failed: {reason}");
            return Ok(ExitCode::FAILURE);
        }
        if state["revision"].as_i64() == Some(target) {
            println!("rollout complete");
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(POLL).await;
        state = show(client, namespace, service).await?;
    }
}

/// `mill rollout history SERVICE`.
pub async fn history(
    client: &Client,
    namespace: &str,
    service: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let state = show(client, namespace, service).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state["history"])?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["REVISION", "CREATED", "CAUSE", "IMAGE", "STATE"]);
    for revision in state["history"].as_array().into_iter().flatten() {
        let text = |field: &str| revision[field].as_str().unwrap_or("").to_string();
        let cause = match (revision["restart"].as_bool(), text("cause")) {
            (Some(true), cause) if cause.starts_with("restart-") => "restart".to_string(),
            (_, cause) if cause.is_empty() => "-".to_string(),
            (_, cause) => cause,
        };
        let mut state = Vec::new();
        if revision["serving"].as_bool() == Some(true) {
            state.push("serving".to_string());
        }
        if revision["target"].as_bool() == Some(true) && revision["serving"].as_bool() != Some(true)
        {
            state.push("rolling out".to_string());
        }
        if let Some(failure) = revision["failure"].as_str() {
            state.push(format!("failed: {failure}"));
        }
        table.add_row([
            revision["revision"].to_string(),
            text("created_at"),
            cause,
            text("image"),
            state.join(", "),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// `mill rollout undo SERVICE [--to-revision N]`.
pub async fn undo(
    client: &Client,
    namespace: &str,
    service: &str,
    to_revision: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/rollout/{service}/undo?namespace={namespace}");
    if let Some(n) = to_revision {
        path.push_str(&format!("&toRevision={n}"));
    }
    let answer: Value = client.call::<(), _>(Method::POST, &path, None).await?;
    let deploy = deploy_of(&answer)?;
    let words = Words {
        done: "rolled back",
        failed: "rollback failed",
        partial: "rollback finished with errors",
    };
    follow_deploy(client, namespace, &deploy, Progress::new(words)).await
}
