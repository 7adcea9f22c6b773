//! `mill status`: the cluster at a glance, from `/v1/status`, `/v1/services`,
//! `/v1/tasks` and `/v1/nodes`: a CLUSTER line, then SERVICES (healthy/desired replicas,
//! cpu and memory reserved, req/s and p99 once the proxy measures them), TASKS and NODES
//! (status, cpu and memory used/total, allocs).

use super::client::Client;
use super::output::{self, Format};
use reqwest::Method;
use serde_json::{json, Value};

/// Bytes in binary units, as people read memory (`512Mi`, `3.8Gi`).
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut value = n.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn cores(n: f64) -> String {
    format!("{n:.1}")
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// `mill status`.
pub async fn run(client: &Client, namespace: &str, format: Format) -> anyhow::Result<()> {
    let ns = [("namespace", namespace)];
    let status: Value = client.get("/v1/status").await?;
    let services: Value = client
        .json(client.request(Method::GET, "/v1/services").query(&ns))
        .await?;
    let tasks: Value = client
        .json(client.request(Method::GET, "/v1/tasks").query(&ns))
        .await?;
    let nodes: Value = client.get("/v1/nodes").await?;
    if format == Format::Json {
        let all = json!({"status": status, "services": services, "tasks": tasks, "nodes": nodes});
        print!("{}", output::json(&all));
        return Ok(());
    }
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (cpu_total, cpu_free) = (
        number(&status["cpu_total"]),
        number(&status["cpu_available"]),
    );
    let (memory_total, memory_free) = (
        number(&status["memory_total_bytes"]),
        number(&status["memory_available_bytes"]),
    );
    let mut text = format!(
        "CLUSTER   {} node{}, leader {}, {} service{}, {} task{}, cpu {}/{} used, memory {}/{} used\n",
        status["node_count"],
        if status["node_count"] == 1 { "" } else { "s" },
        status["leader"].as_str().unwrap_or("none"),
        status["service_count"],
        if status["service_count"] == 1 { "" } else { "s" },
        status["task_count"],
        if status["task_count"] == 1 { "" } else { "s" },
        cores(cpu_total - cpu_free),
        cores(cpu_total),
        bytes(memory_total - memory_free),
        bytes(memory_total),
    );
    let service_rows: Vec<Vec<String>> = items(&services)
        .iter()
        .map(|s| {
            let allocations = items(&s["allocations"]);
            let cpu: f64 = allocations.iter().map(|a| number(&a["cpu"])).sum();
            let memory: f64 = allocations.iter().map(|a| number(&a["memory"])).sum();
            vec![
                output::cell(&s["name"]),
                format!("{}/{}", s["replicas"]["healthy"], s["replicas"]["desired"]),
                cores(cpu),
                bytes(memory),
                // Filled from the proxy's metrics once the proxy exists.
                "-".to_string(),
                "-".to_string(),
            ]
        })
        .collect();
    let task_rows: Vec<Vec<String>> = items(&tasks)
        .iter()
        .map(|t| {
            vec![
                output::cell(&t["id"]),
                output::cell(&t["node"]),
                output::cell(&t["status"]),
                t["started_at"]
                    .as_str()
                    .map(output::age)
                    .unwrap_or_default(),
                t["reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let node_rows: Vec<Vec<String>> = items(&nodes)
        .iter()
        .map(|n| {
            let (cpu, cpu_free) = (number(&n["cpu_total"]), number(&n["cpu_available"]));
            let (memory, memory_free) = (
                number(&n["memory_total_bytes"]),
                number(&n["memory_available_bytes"]),
            );
            vec![
                output::cell(&n["id"]),
                output::cell(&n["status"]),
                format!("{}/{}", cores(cpu - cpu_free), cores(cpu)),
                format!("{}/{}", bytes(memory - memory_free), bytes(memory)),
                output::cell(&n["alloc_count"]),
            ]
        })
        .collect();
    let headers = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut block = |title: &str, columns: &[&str], rows: &[Vec<String>]| {
        text.push_str(&format!("\n{title}\n"));
        if rows.is_empty() {
            text.push_str("  (none)\n");
        } else {
            for line in output::table(&headers(columns), rows).lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
    };
    block(
        "SERVICES",
        &["NAME", "HEALTHY", "CPU", "MEMORY", "REQ/S", "P99"],
        &service_rows,
    );
    block(
        "TASKS",
        &["ID", "NODE", "STATUS", "AGE", "REASON"],
        &task_rows,
    );
    block(
        "NODES",
        &["NAME", "STATUS", "CPU", "MEMORY", "ALLOCS"],
        &node_rows,
    );
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn memory_reads_in_binary_units() {
        assert_eq!(bytes(0.0), "0");
        assert_eq!(bytes(32.0 * 1024.0 * 1024.0), "32Mi");
        assert_eq!(bytes(3.8 * 1024.0 * 1024.0 * 1024.0), "3.8Gi");
    }
}
