//! What this node's containers use, and how long its task runs took: the agent's figures
//! for the node's `/metrics` (the crate knows nothing of Prometheus; the daemon reads a
//! [`Meter`] when scraped and hands it a callback for ended runs).
//!
//! Usage is read from the cgroup files of each container, every heartbeat interval. The
//! agent names the cgroup itself (`cgroupsPath` = `/<containerd namespace>/<container id>`,
//! runc's cgroupfs driver), so no lookup is needed, and reading two small files is
//! simpler and cheaper than containerd's `Tasks.Metrics`, whose answer is a `typeurl` Any of
//! containerd's cgroups protobufs (which containerd-client does not ship). cgroup v2
//! (`cpu.stat` `usage_usec`, `memory.current`) and v1 (`cpuacct.usage`,
//! `memory.usage_in_bytes`) alike; memory is the working set (usage minus inactive page
//! cache, as `kubectl top` shows it); cpu is cores, the usage delta between two samples
//! over the time between them, so an alloc's first cpu figure comes one interval after it
//! started. Allocs that ended or left this node drop out at the next sample.

use crate::{supervisor, Ctx};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use mill_crds::{Alloc, AllocPhase};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The cgroup filesystem root.
const ROOT: &str = "/sys/fs/cgroup";

/// What one running alloc uses.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocUsage {
    /// The alloc's namespace.
    pub namespace: String,
    /// The alloc's name.
    pub alloc: String,
    /// The owning service (`spec.service`); empty for task runs.
    pub service: String,
    /// CPU cores used over the last interval; `None` until two samples exist.
    pub cpu: Option<f64>,
    /// Working-set memory, in bytes.
    pub memory: u64,
}

/// One task run that ended on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    /// The run's namespace.
    pub namespace: String,
    /// The task (the owner's name).
    pub task: String,
    /// From its start to its end.
    pub took: Duration,
}

type OnTaskEnd = Box<dyn Fn(&TaskRun) + Send + Sync>;

/// The agent's measurements; clones share them.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

struct Inner {
    samples: RwLock<Vec<AllocUsage>>,
    on_task_end: OnTaskEnd,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new(|_| {})
    }
}

impl Meter {
    /// A meter that calls `on_task_end` once for every task run that ends on this node.
    pub fn new(on_task_end: impl Fn(&TaskRun) + Send + Sync + 'static) -> Meter {
        Meter {
            inner: Arc::new(Inner {
                samples: RwLock::new(Vec::new()),
                on_task_end: Box::new(on_task_end),
            }),
        }
    }

    /// The newest usage of every running alloc of this node.
    pub fn samples(&self) -> Vec<AllocUsage> {
        self.inner
            .samples
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn publish(&self, samples: Vec<AllocUsage>) {
        if let Ok(mut current) = self.inner.samples.write() {
            *current = samples;
        }
    }

    /// A task run ended (called once per run, by its supervisor).
    pub(crate) fn task_ended(&self, run: &TaskRun) {
        (self.inner.on_task_end)(run);
    }
}

/// The cgroup path of an alloc's container (as the runtime spec's `cgroupsPath`).
pub fn cgroups_path(containerd_namespace: &str, container_id: &str) -> String {
    format!("/{containerd_namespace}/{container_id}")
}

/// Cumulative cpu time and working-set memory of one cgroup, as read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    cpu_nanos: u64,
    memory: u64,
}

/// Reads the cgroup at `path` (v2 first, then v1); `None` if it does not exist (yet).
fn read(path: &str) -> Option<Reading> {
    let path = path.trim_start_matches('/');
    let file = |dir: PathBuf, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let v2 = Path::new(ROOT).join(path);
    if let Some(current) = file(v2.clone(), "memory.current") {
        let cpu = file(v2.clone(), "cpu.stat").and_then(|t| stat(&t, "usage_usec"))?;
        let stat_text = file(v2, "memory.stat").unwrap_or_default();
        return Some(Reading {
            cpu_nanos: cpu.saturating_mul(1000),
            memory: working_set(current.trim().parse().ok()?, &stat_text, "inactive_file"),
        });
    }
    let memory_dir = Path::new(ROOT).join("memory").join(path);
    let usage: u64 = file(memory_dir.clone(), "memory.usage_in_bytes")?
        .trim()
        .parse()
        .ok()?;
    let stat_text = file(memory_dir, "memory.stat").unwrap_or_default();
    let cpu_nanos = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .find_map(|controller| {
            file(Path::new(ROOT).join(controller).join(path), "cpuacct.usage")
                .and_then(|t| t.trim().parse().ok())
        })?;
    Some(Reading {
        cpu_nanos,
        memory: working_set(usage, &stat_text, "total_inactive_file"),
    })
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Usage minus the inactive page cache the kernel reclaims first.
fn working_set(usage: u64, memory_stat: &str, inactive_key: &str) -> u64 {
    usage.saturating_sub(stat(memory_stat, inactive_key).unwrap_or(0))
}

/// Cores used between two readings `elapsed` apart; `None` if the counter went back (the
/// container's task was recreated) or no time passed.
fn cores(before: u64, after: u64, elapsed: Duration) -> Option<f64> {
    let used = after.checked_sub(before)?;
    let nanos = elapsed.as_nanos();
    (nanos > 0).then(|| used as f64 / nanos as f64)
}

/// Whether an alloc in `phase` has a container worth reading.
fn running(phase: AllocPhase) -> bool {
    matches!(
        phase,
        AllocPhase::Starting | AllocPhase::Running | AllocPhase::Healthy | AllocPhase::Stopping
    )
}

/// Samples the usage of this node's running allocs every heartbeat interval, forever.
pub async fn run(ctx: Arc<Ctx>, allocs: Store<Alloc>) {
    let mut tick = tokio::time::interval(ctx.config.timings.heartbeat_interval);
    let mut previous: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        tick.tick().await;
        let targets: Vec<(String, AllocUsage, String)> = allocs
            .state()
            .iter()
            .filter(|a| running(a.status.as_ref().map(|s| s.phase).unwrap_or_default()))
            .filter_map(|a| {
                let uid = a.metadata.uid.clone()?;
                let path = cgroups_path(
                    &ctx.config.containerd_namespace,
                    &supervisor::container_id(a),
                );
                let usage = AllocUsage {
                    namespace: a.namespace().unwrap_or_default(),
                    alloc: a.name_any(),
                    service: a.spec.service.clone().unwrap_or_default(),
                    cpu: None,
                    memory: 0,
                };
                Some((uid, usage, path))
            })
            .collect();
        let read_all = tokio::task::spawn_blocking(move || {
            targets
                .into_iter()
                .filter_map(|(uid, usage, path)| Some((uid, usage, read(&path)?, Instant::now())))
                .collect::<Vec<_>>()
        });
        let Ok(readings) = read_all.await else {
            continue;
        };
        let mut now_seen = HashMap::new();
        let mut samples = Vec::with_capacity(readings.len());
        for (uid, mut usage, reading, at) in readings {
            usage.memory = reading.memory;
            usage.cpu = previous
                .get(&uid)
                .and_then(|(cpu, then)| cores(*cpu, reading.cpu_nanos, at.duration_since(*then)));
            now_seen.insert(uid, (reading.cpu_nanos, at));
            samples.push(usage);
        }
        previous = now_seen;
        ctx.meter.publish(samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let v2 = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(stat(v2, "usage_usec"), Some(123456));
        assert_eq!(stat(v2, "usage"), None);
        assert_eq!(stat("", "usage_usec"), None);
    }

    #[test]
    fn working_set_leaves_out_inactive_page_cache() {
        let v1 = "cache 8192\nrss 4096\ninactive_file 100\ntotal_inactive_file 8192\n";
        assert_eq!(working_set(20480, v1, "total_inactive_file"), 12288);
        let v2 = "anon 4096\nfile 8192\ninactive_file 8192\n";
        assert_eq!(working_set(12288, v2, "inactive_file"), 4096);
        // A stat larger than the usage read a moment before it: never below zero.
        assert_eq!(working_set(100, v2, "inactive_file"), 0);
        assert_eq!(working_set(100, "", "inactive_file"), 100);
    }

    #[test]
    fn cores_are_the_usage_delta_over_the_time_between_samples() {
        let second = Duration::from_secs(1);
        assert_eq!(cores(0, 500_000_000, second), Some(0.5));
        assert_eq!(cores(1_000, 2_000_001_000, second * 2), Some(1.0));
        assert_eq!(cores(5_000, 1_000, second), None, "a recreated task");
        assert_eq!(cores(0, 1_000, Duration::ZERO), None);
    }

    #[test]
    fn a_missing_cgroup_reads_as_none() {
        assert_eq!(read("/mill-no-such-namespace/no-such-container"), None);
    }

    #[test]
    fn a_meter_hands_ended_runs_to_its_callback_and_replaces_samples() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let meter = {
            let seen = seen.clone();
            Meter::new(move |run| seen.lock().unwrap().push(run.clone()))
        };
        let run = TaskRun {
            namespace: "default".into(),
            task: "report".into(),
            took: Duration::from_millis(1500),
        };
        meter.task_ended(&run);
        assert_eq!(*seen.lock().unwrap(), vec![run]);
        let usage = |alloc: &str| AllocUsage {
            namespace: "default".into(),
            alloc: alloc.into(),
            service: "web".into(),
            cpu: Some(0.25),
            memory: 1 << 20,
        };
        meter.publish(vec![usage("web-1-0"), usage("web-1-1")]);
        meter.publish(vec![usage("web-1-1")]);
        assert_eq!(meter.samples(), vec![usage("web-1-1")]);
    }
}
