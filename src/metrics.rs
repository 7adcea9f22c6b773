//! The node's Prometheus metrics (SPEC §8), served as text at `/metrics` and `/v1/metrics`.
//!
//! Three sources:
//! - figures read from the store at each scrape (the store is replicated, so every node
//!   answers for the whole cluster): nodes' cpu and memory, allocs' restarts, tasks' runs,
//!   and this node's Raft term, commit and applied index;
//! - figures of this node's own containers, from its agent's [`mill_agent::usage::Meter`]:
//!   `mill_alloc_cpu_usage` (cores) and `mill_alloc_memory_bytes` (working set) of the
//!   allocs running here, only on the node that runs them (usage is not replicated: it
//!   changes every few seconds, and every node's `/metrics` is scraped anyway), and
//!   `mill_tasks_duration_seconds` of the task runs that ended here (each run ends on one
//!   node, once, so summing over nodes counts every run once);
//! - figures counted in this process: the controllers' plans and failed writes (a
//!   [`mill_controllers::metrics::Metrics`] the daemon hands the controllers' loop), the
//!   latency of API writes (propose → applied, as a client sees it), of the store's entries
//!   this node proposed as the leader (`mill_store_apply_seconds`), and the ingress proxy's
//!   `mill_proxy_*` (fed by `net::proxy`).

use crate::store::{Role, Store};
use mill_crds::{Alloc, Node, Task};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `Content-Type` of the answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;
/// `mill_proxy_requests_total`'s family.
pub type ProxyRequests = Family<Labels, Counter>;

/// The metrics this process counts; clones share them.
#[derive(Debug, Clone)]
pub struct Metrics {
    controllers: mill_controllers::metrics::Metrics,
    api_writes: Family<Labels, Histogram>,
    proxy_requests: Family<Labels, Counter>,
    proxy_latency: Family<Labels, Histogram>,
    meter: mill_agent::usage::Meter,
    task_duration: Family<Labels, Histogram>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn duration_histogram() -> Histogram {
    // 100 ms .. ~3.6 h (a task's default timeout is 1 h).
    Histogram::new(exponential_buckets(0.1, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let task_duration: Family<Labels, Histogram> =
            Family::new_with_constructor(duration_histogram);
        let meter = {
            let task_duration = task_duration.clone();
            mill_agent::usage::Meter::new(move |run| {
                task_duration
                    .get_or_create(&labels(&[
                        ("namespace", &run.namespace),
                        ("task", &run.task),
                    ]))
                    .observe(run.took.as_secs_f64());
            })
        };
        Metrics {
            controllers: mill_controllers::metrics::Metrics::default(),
            api_writes: Family::new_with_constructor(latency_histogram),
            proxy_requests: Family::default(),
            proxy_latency: Family::new_with_constructor(latency_histogram),
            meter,
            task_duration,
        }
    }
}

impl Metrics {
    /// The handle the controllers' loop counts in.
    pub fn controllers(&self) -> mill_controllers::metrics::Metrics {
        self.controllers.clone()
    }

    /// The handle this node's agent publishes usage and ended task runs on.
    pub fn agent_meter(&self) -> mill_agent::usage::Meter {
        self.meter.clone()
    }

    /// The families the ingress proxy counts in: requests and latency.
    pub fn proxy(&self) -> (ProxyRequests, Family<Labels, Histogram>) {
        (self.proxy_requests.clone(), self.proxy_latency.clone())
    }

    /// One API write (`verb` = the HTTP method) took `took` until the store answered.
    pub fn observe_api_write(&self, verb: &str, took: Duration) {
        self.api_writes
            .get_or_create(&vec![("verb".to_string(), verb.to_string())])
            .observe(took.as_secs_f64());
    }

    /// The whole exposition: this process' counters and the store's figures now.
    pub fn encode(&self, store: &Store) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("mill");
        registry.register(
            "proxy_requests",
            "Requests the ingress proxy answered on a route, by namespace, service, route and status class",
            self.proxy_requests.clone(),
        );
        registry.register(
            "proxy_latency_seconds",
            "Ingress proxy latency, request to response head, by namespace, service and route",
            self.proxy_latency.clone(),
        );
        registry.register(
            "tasks_duration_seconds",
            "How long the task runs that ended on this node took, start to end, by namespace and task",
            self.task_duration.clone(),
        );
        registry.register(
            "api_write_duration_seconds",
            "API writes from request to the store's answer (propose, commit, apply), by verb",
            self.api_writes.clone(),
        );
        registry.register(
            "store_apply_seconds",
            "Store entries this node proposed as the leader, from proposal to applied here",
            store.apply_latency(),
        );
        registry.register_collector(Box::new(Scrape {
            store: store.clone(),
            controllers: self.controllers.clone(),
            meter: self.meter.clone(),
        }));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// The figures read at scrape time.
struct Scrape {
    store: Store,
    controllers: mill_controllers::metrics::Metrics,
    meter: mill_agent::usage::Meter,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

fn objects<K: DeserializeOwned>(store: &Store, resource: &str) -> Vec<K> {
    store
        .list(resource, None)
        .0
        .iter()
        .filter_map(|o| serde_json::from_value(Value::clone(o)).ok())
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes one family of constant samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One number with no labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    sample: M,
) -> Result<(), std::fmt::Error> {
    let kind = sample.metric_type();
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    sample.encode(metric)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes: Vec<Node> = objects(&self.store, "mill.dev/nodes");
        let allocs: Vec<Alloc> = objects(&self.store, "mill.dev/allocs");
        let tasks: Vec<Task> = objects(&self.store, "mill.dev/tasks");

        // What live allocs reserve on each node.
        let mut used: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for alloc in &allocs {
            let live = !alloc.status.as_ref().is_some_and(|s| s.phase.is_terminal());
            if let (true, Some(node)) = (live, alloc.spec.node_name.as_deref()) {
                let entry = used.entry(node).or_default();
                entry.0 += alloc.spec.template.cpu;
                entry.1 += alloc.spec.template.memory.bytes();
            }
        }
        let mut cpu = Vec::new();
        let mut memory = Vec::new();
        for node in &nodes {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let allocatable = node
                .status
                .as_ref()
                .map(|s| (s.allocatable.cpu, s.allocatable.memory.bytes()))
                .unwrap_or_default();
            let (cpu_used, memory_used) = used.get(name).copied().unwrap_or_default();
            let node_labels = labels(&[("node", name)]);
            cpu.push((
                node_labels.clone(),
                ConstGauge::new((allocatable.0 - cpu_used).max(0.0)),
            ));
            memory.push((
                node_labels,
                ConstGauge::new(allocatable.1.saturating_sub(memory_used) as i64),
            ));
        }
        family(
            &mut encoder,
            "node_cpu_available",
            "CPU cores of a node not reserved by live allocs",
            MetricType::Gauge,
            cpu,
        )?;
        family(
            &mut encoder,
            "node_memory_available_bytes",
            "Memory of a node not reserved by live allocs, in bytes",
            MetricType::Gauge,
            memory,
        )?;
        let restarts = allocs.iter().map(|a| {
            let namespace = a.metadata.namespace.as_deref().unwrap_or_default();
            let name = a.metadata.name.as_deref().unwrap_or_default();
            let service = a.spec.service.as_deref().unwrap_or_default();
            let count = a.status.as_ref().map_or(0, |s| s.restarts.max(0) as u64);
            (
                labels(&[
                    ("namespace", namespace),
                    ("service", service),
                    ("alloc", name),
                ]),
                ConstCounter::new(count),
            )
        });
        family(
            &mut encoder,
            "alloc_restarts",
            "In-place restarts of an alloc's container",
            MetricType::Counter,
            restarts.collect::<Vec<_>>(),
        )?;
        let usage = self.meter.samples();
        let alloc_labels = |u: &mill_agent::usage::AllocUsage| {
            labels(&[
                ("namespace", &u.namespace),
                ("service", &u.service),
                ("alloc", &u.alloc),
            ])
        };
        family(
            &mut encoder,
            "alloc_cpu_usage",
            "CPU cores an alloc running on this node used over the agent's last sampling interval",
            MetricType::Gauge,
            usage
                .iter()
                .filter_map(|u| Some((alloc_labels(u), ConstGauge::new(u.cpu?))))
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut encoder,
            "alloc_memory_bytes",
            "Working-set memory of an alloc running on this node, in bytes",
            MetricType::Gauge,
            usage
                .iter()
                .map(|u| (alloc_labels(u), ConstGauge::new(u.memory as i64)))
                .collect::<Vec<_>>(),
        )?;
        let spawned = tasks.iter().map(|t| {
            let namespace = t.metadata.namespace.as_deref().unwrap_or_default();
            let name = t.metadata.name.as_deref().unwrap_or_default();
            let runs = t.status.as_ref().map_or(0, |s| s.runs.max(0) as u64);
            (
                labels(&[("namespace", namespace), ("task", name)]),
                ConstCounter::new(runs),
            )
        });
        family(
            &mut encoder,
            "tasks_spawned",
            "Runs spawned of a task",
            MetricType::Counter,
            spawned.collect::<Vec<_>>(),
        )?;

        let raft = self.store.raft_info();
        single(
            &mut encoder,
            "raft_term",
            "The current Raft term this node knows",
            ConstGauge::new(raft.term as i64),
        )?;
        single(
            &mut encoder,
            "raft_commit_index",
            "The highest log index this node knows to be committed",
            ConstGauge::new(raft.commit_index as i64),
        )?;
        single(
            &mut encoder,
            "raft_applied_index",
            "The highest log index applied to this node's state machine",
            ConstGauge::new(raft.applied_index as i64),
        )?;
        single(
            &mut encoder,
            "raft_leader",
            "1 while this node is the Raft leader",
            ConstGauge::new(i64::from(raft.role == Role::Leader)),
        )?;

        single(
            &mut encoder,
            "controller_reconciles",
            "Passes of every planner the controllers made on this node",
            ConstCounter::new(self.controllers.reconciles()),
        )?;
        single(
            &mut encoder,
            "controller_errors",
            "Controller writes that failed on this node",
            ConstCounter::new(self.controllers.errors()),
        )?;
        single(
            &mut encoder,
            "controller_queue_depth",
            "Writes the controllers' newest plan queued",
            ConstGauge::new(self.controllers.queue_depth() as i64),
        )?;
        Ok(())
    }
}
