//! `mill nodes`, `mill drain NODE`, `mill remove NODE`, `mill leave` (SPEC §6), over
//! `/v1/nodes`.
//!
//! `drain` makes the node unschedulable and waits, printing how many allocations are left
//! (and why a replacement cannot be placed, if the scheduler says so), until none is; `remove` takes a drained (or empty) node out of the cluster; `leave`
//! does both for the node `--address` points at (the one answering `/v1/status`).

use super::client::Client;
use comfy_table::{presets, Table};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

/// How often `drain` looks at the node again.
const POLL: Duration = Duration::from_millis(300);

/// Bytes as a short human size (`512Mi`, `3.8Gi`).
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() < 0.05 || value >= 100.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// `mill nodes`.
pub async fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let nodes: Value = client.get("/v1/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "ID",
        "ADDRESS",
        "STATUS",
        "CPU FREE",
        "MEMORY FREE",
        "ALLOCS",
    ]);
    for node in nodes.as_array().into_iter().flatten() {
        let text = |field: &str| node[field].as_str().unwrap_or("").to_string();
        let bytes = |field: &str| human_bytes(node[field].as_u64().unwrap_or(0));
        table.add_row([
            text("id"),
            text("address"),
            text("status"),
            format!(
                "{:.2}/{:.2}",
                node["cpu_available"].as_f64().unwrap_or(0.0),
                node["cpu_total"].as_f64().unwrap_or(0.0)
            ),
            format!(
                "{}/{}",
                bytes("memory_available_bytes"),
                bytes("memory_total_bytes")
            ),
            node["alloc_count"].to_string(),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

async fn node(client: &Client, id: &str) -> anyhow::Result<Value> {
    let nodes: Value = client.get("/v1/nodes").await?;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"].as_str() == Some(id))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("node {id} is no longer in the cluster (see: mill nodes)"))
}

/// `mill drain NODE`: returns once nothing runs on it any more.
pub async fn drain(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let answer: Value = client
        .call::<(), _>(Method::POST, &format!("/v1/nodes/{id}/drain"), None)
        .await?;
    if !json {
        println!("{id}: draining (no new allocations)");
    }
    let mut left = answer["alloc_count"].as_u64();
    let mut told = BTreeSet::new();
    loop {
        let current = node(client, id).await?;
        let count = current["alloc_count"].as_u64().unwrap_or(0);
        if count == 0 {
            if json {
                println!("{}", serde_json::to_string_pretty(&current)?);
            } else {
                println!("{id}: drained");
            }
            return Ok(ExitCode::SUCCESS);
        }
        if left != Some(count) && !json {
            println!("{id}: {count} allocation(s) left");
        }
        left = Some(count);
        if !json {
            for reason in unplaceable(client).await {
                if told.insert(reason.clone()) {
                    println!("{id}: waiting: {reason}");
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why replacements cannot be placed (the scheduler's `Scheduled=False` messages), so a
/// drain that cannot finish says what it waits for. Best effort: a failed read says nothing.
async fn unplaceable(client: &Client) -> Vec<String> {
    let Ok(allocs) = client.get::<Value>("/apis/mill.dev/v1/allocs").await else {
        return Vec::new();
    };
    let mut reasons = Vec::new();
    for alloc in allocs["items"].as_array().into_iter().flatten() {
        let conditions = alloc["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten();
        for condition in conditions {
            if condition["type"] == "Scheduled" && condition["status"] == "False" {
                let name = alloc["metadata"]["name"].as_str().unwrap_or_default();
                let message = condition["message"].as_str().unwrap_or("cannot be placed");
                reasons.push(format!("{name} cannot be placed: {message}"));
            }
        }
    }
    reasons
}

/// `mill remove NODE`.
pub async fn remove(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let answer: Value = client
        .call::<(), _>(Method::DELETE, &format!("/v1/nodes/{id}"), None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{id}: removed from the cluster");
    }
    Ok(ExitCode::SUCCESS)
}

/// `mill leave`: drain the node `--address` points at, then remove it.
pub async fn leave(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let status: Value = client.get("/v1/status").await?;
    let id = status["node"].as_str().map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!(
            "the node at --address does not know its own name yet; retry once it has joined"
        )
    })?;
    let drained = drain(client, &id, json).await?;
    if drained != ExitCode::SUCCESS {
        return Ok(drained);
    }
    remove(client, &id, json).await?;
    if !json {
        println!("{id} left the cluster; its mill process can be stopped now");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_as_short_binary_units() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(512 * 1024 * 1024), "512Mi");
        assert_eq!(human_bytes(3_984_588_800), "3.7Gi");
    }
}
