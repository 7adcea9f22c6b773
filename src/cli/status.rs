//! `mill status`: the cluster at a glance, from `/v1/status`, `/v1/services`,
//! `/v1/tasks` and `/v1/nodes`: a CLUSTER line, then SERVICES (healthy/desired replicas,
//! cpu and memory its allocs use, req/s and p99 through the ingress proxy), TASKS and NODES
//! (status, cpu and memory reserved/total, allocs).
//!
//! A service's cpu, memory, req/s and p99 come from every ready node's `/v1/metrics`
//! (`mill_alloc_cpu_usage` and `mill_alloc_memory_bytes`, which each node exports for the
//! allocs it runs; `mill_proxy_requests_total`, `mill_proxy_latency_seconds`), scraped
//! twice [`WINDOW`] apart: usage is the second reading, req/s and p99 are those of the
//! window, all summed over the nodes (`-` when no node answered or, for usage, before the
//! agents' first samples; p99 `-` without traffic).

use super::client::Client;
use super::output::{self, Format};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long `mill status` watches the proxies' counters for req/s and p99.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One service's figures, summed over nodes: proxy requests, the latency histogram's
/// cumulative bucket counts by upper bound, and its allocs' usage (cores, bytes) if sampled.
#[derive(Debug, Default, Clone, PartialEq)]
struct Traffic {
    requests: f64,
    buckets: BTreeMap<String, f64>,
    cpu: Option<f64>,
    memory: Option<f64>,
}

/// The labels of a sample line (`name{k="v",...} value`), its name and value.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (name, rest) = line.split_once('{')?;
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let mut key = String::new();
    let end = loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => break i,
            ',' => {}
            '=' => {
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    match chars.next()?.1 {
                        '\\' => value.push(chars.next()?.1),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(std::mem::take(&mut key), value);
            }
            c => key.push(c),
        }
    };
    let value = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The proxy counters and alloc usage of `namespace`'s services in one node's metrics text.
fn proxy_traffic(text: &str, namespace: &str, into: &mut BTreeMap<String, Traffic>) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        if labels.get("namespace").map(String::as_str) != Some(namespace) {
            continue;
        }
        let Some(service) = labels.get("service") else {
            continue;
        };
        let traffic = into.entry(service.clone()).or_default();
        match name {
            "mill_proxy_requests_total" => traffic.requests += value,
            "mill_proxy_latency_seconds_bucket" => {
                if let Some(le) = labels.get("le") {
                    *traffic.buckets.entry(le.clone()).or_default() += value;
                }
            }
            "mill_alloc_cpu_usage" => *traffic.cpu.get_or_insert(0.0) += value,
            "mill_alloc_memory_bytes" => *traffic.memory.get_or_insert(0.0) += value,
            _ => {}
        }
    }
}

/// What happened between two readings: (requests per second, p99 upper bound).
fn window(before: &Traffic, after: &Traffic, seconds: f64) -> (f64, Option<f64>) {
    let rate = (after.requests - before.requests).max(0.0) / seconds.max(f64::EPSILON);
    let delta = |le: &str| {
        after.buckets.get(le).copied().unwrap_or(0.0)
            - before.buckets.get(le).copied().unwrap_or(0.0)
    };
    let total = delta("+Inf");
    if total <= 0.0 {
        return (rate, None);
    }
    let mut bounds: Vec<f64> = after
        .buckets
        .keys()
        .filter_map(|le| le.parse::<f64>().ok())
        .filter(|b| b.is_finite())
        .collect();
    bounds.sort_by(f64::total_cmp);
    let p99 = bounds.into_iter().find(|b| {
        let le = after
            .buckets
            .keys()
            .find(|k| k.parse::<f64>().ok() == Some(*b))
            .cloned()
            .unwrap_or_default();
        delta(&le) >= 0.99 * total
    });
    // Slower than the largest bound: say so with infinity.
    (rate, Some(p99.unwrap_or(f64::INFINITY)))
}

fn latency(seconds: f64) -> String {
    if seconds.is_infinite() {
        "slow".to_string()
    } else if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1}s")
    }
}

/// Every ready node's proxy counters of `namespace`, or `None` if no node answered.
async fn scrape(
    client: &Client,
    nodes: &[Value],
    namespace: &str,
) -> Option<BTreeMap<String, Traffic>> {
    let mut traffic = BTreeMap::new();
    let mut answered = false;
    for node in nodes.iter().filter(|n| n["status"] == "ready") {
        let Some(address) = node["address"].as_str() else {
            continue;
        };
        let at = client.at(&format!("http://{address}"));
        let Ok(answer) = at.send(at.request(Method::GET, "/v1/metrics")).await else {
            continue;
        };
        if let Ok(text) = answer.text().await {
            answered = true;
            proxy_traffic(&text, namespace, &mut traffic);
        }
    }
    answered.then_some(traffic)
}

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

/// Cores in use: millicores below one core (`3m`, as `kubectl top`), else `1.2`.
fn usage_cores(n: f64) -> String {
    if n < 0.9995 {
        format!("{:.0}m", n.max(0.0) * 1000.0)
    } else {
        format!("{n:.1}")
    }
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
    let node_list = nodes.as_array().cloned().unwrap_or_default();
    let started = Instant::now();
    let before = scrape(client, &node_list, namespace).await;
    tokio::time::sleep(WINDOW).await;
    let after = scrape(client, &node_list, namespace).await;
    let seconds = started.elapsed().as_secs_f64();
    let usage = |service: &str| -> (String, String) {
        let found = after.as_ref().and_then(|a| a.get(service));
        (
            found.and_then(|t| t.cpu).map_or("-".into(), usage_cores),
            found.and_then(|t| t.memory).map_or("-".into(), bytes),
        )
    };
    let traffic = |service: &str| -> (String, String) {
        let (Some(before), Some(after)) = (&before, &after) else {
            return ("-".into(), "-".into());
        };
        let none = Traffic::default();
        let (rate, p99) = window(
            before.get(service).unwrap_or(&none),
            after.get(service).unwrap_or(&none),
            seconds,
        );
        (format!("{rate:.1}"), p99.map_or("-".into(), latency))
    };
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
            let name = s["name"].as_str().unwrap_or_default();
            let (rate, p99) = traffic(name);
            let (cpu, memory) = usage(name);
            vec![
                output::cell(&s["name"]),
                format!("{}/{}", s["replicas"]["healthy"], s["replicas"]["desired"]),
                cpu,
                memory,
                rate,
                p99,
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
    use super::*;

    const BEFORE: &str = r#"# TYPE mill_proxy_requests_total counter
mill_proxy_requests_total{namespace="default",service="web",route="a.test/",code="2xx"} 10
mill_proxy_requests_total{namespace="default",service="web",route="a.test/api",code="5xx"} 2
mill_proxy_requests_total{namespace="other",service="web",route="b.test/",code="2xx"} 99
mill_proxy_latency_seconds_bucket{namespace="default",service="web",route="a.test/",le="0.001"} 0
mill_proxy_latency_seconds_bucket{namespace="default",service="web",route="a.test/",le="0.01"} 10
mill_proxy_latency_seconds_bucket{namespace="default",service="web",route="a.test/",le="0.1"} 12
mill_proxy_latency_seconds_bucket{namespace="default",service="web",route="a.test/",le="+Inf"} 12
"#;

    #[test]
    fn proxy_counters_are_summed_per_service_of_the_namespace() {
        let mut traffic = BTreeMap::new();
        proxy_traffic(BEFORE, "default", &mut traffic);
        assert_eq!(traffic.len(), 1);
        let web = &traffic["web"];
        assert_eq!(web.requests, 12.0);
        assert_eq!(web.buckets["0.01"], 10.0);
        assert_eq!(web.buckets["+Inf"], 12.0);
    }

    #[test]
    fn the_window_gives_the_rate_and_the_p99_bucket_bound() {
        let mut before = BTreeMap::new();
        proxy_traffic(BEFORE, "default", &mut before);
        let mut after = before.clone();
        let web = after.get_mut("web").unwrap();
        // 100 more requests in 2 s: 98 under 10 ms, 2 under 100 ms.
        web.requests += 100.0;
        *web.buckets.get_mut("0.01").unwrap() += 98.0;
        *web.buckets.get_mut("0.1").unwrap() += 100.0;
        *web.buckets.get_mut("+Inf").unwrap() += 100.0;
        let (rate, p99) = window(&before["web"], &after["web"], 2.0);
        assert_eq!(rate, 50.0);
        assert_eq!(p99, Some(0.1));
        assert_eq!(latency(0.1), "100ms");
        let (rate, p99) = window(&before["web"], &before["web"], 1.0);
        assert_eq!((rate, p99), (0.0, None));
    }

    #[test]
    fn alloc_usage_is_summed_per_service_of_the_namespace() {
        let text = r#"# TYPE mill_alloc_cpu_usage gauge
mill_alloc_cpu_usage{namespace="default",service="web",alloc="web-1-0"} 0.25
mill_alloc_cpu_usage{namespace="default",service="web",alloc="web-1-1"} 0.5
mill_alloc_memory_bytes{namespace="default",service="web",alloc="web-1-0"} 1048576
mill_alloc_memory_bytes{namespace="default",service="web",alloc="web-1-1"} 1048576
mill_alloc_memory_bytes{namespace="other",service="web",alloc="web-1-0"} 99
mill_alloc_memory_bytes{namespace="default",service="db",alloc="db-1-0"} 4096
"#;
        let mut figures = BTreeMap::new();
        proxy_traffic(text, "default", &mut figures);
        assert_eq!(figures["web"].cpu, Some(0.75));
        assert_eq!(figures["web"].memory, Some(2097152.0));
        // Memory sampled, cpu not yet (the first sample has no rate).
        assert_eq!(figures["db"].cpu, None);
        assert_eq!(figures["db"].memory, Some(4096.0));
        assert_eq!(usage_cores(0.0034), "3m");
        assert_eq!(usage_cores(0.75), "750m");
        assert_eq!(usage_cores(1.25), "1.2");
    }

    #[test]
    fn memory_reads_in_binary_units() {
        assert_eq!(bytes(0.0), "0");
        assert_eq!(bytes(32.0 * 1024.0 * 1024.0), "32Mi");
        assert_eq!(bytes(3.8 * 1024.0 * 1024.0 * 1024.0), "3.8Gi");
    }
}
