//! mill's store against etcd 3.4, side by side in one run on one machine.
//!
//! Both run on loopback as 1 node and as 3 nodes, driven by the same HTTP client at the
//! same concurrency: mill through its Kubernetes API (create = POST a Task, update =
//! PUT it), etcd through its HTTP/JSON gateway (`/v3/kv/put`, default fsync). Watch
//! latency is write start → event at a watcher on another member (`/v3/watch` for etcd).
//!
//! `cargo bench --bench store` (needs `etcd` on PATH: `scripts/setup` installs it).
//! `-- --quick` runs fewer writes and one round; `-- --size 3` only the 3-node clusters;
//! `-- --rounds N` (3) how many times each system runs every phase, alternating which one
//! goes first. Throughputs are the rounds' medians; the watch percentiles are over every
//! round's samples. mill runs with its default election timeout; each mill watch line
//! says which member led and in which term. `MILL_BENCH_SAMPLES=DIR` writes every watch
//! round's samples (start as Unix time, latency ms) to a file per system and round.

#[allow(dead_code)]
#[path = "../tests/cluster/harness.rs"]
mod harness;

use base64::Engine;
use harness::{task, Cluster, TOKEN};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A system under test: a set of member URLs and how to write to / watch it.
enum System {
    Mill(Cluster),
    Etcd(Etcd),
}

impl System {
    fn name(&self) -> String {
        match self {
            System::Mill(c) => format!("mill  {} node(s)", c.nodes.len()),
            System::Etcd(e) => format!("etcd  {} node(s)", e.urls.len()),
        }
    }

    fn members(&self) -> usize {
        match self {
            System::Mill(c) => c.nodes.len(),
            System::Etcd(e) => e.urls.len(),
        }
    }

    /// One write of `key` = `value` through member `m`; `create` is the first write.
    async fn put(
        &self,
        http: &reqwest::Client,
        m: usize,
        key: &str,
        value: &str,
        create: bool,
    ) -> bool {
        let resp = match self {
            System::Mill(c) => {
                let base = c.nodes[m].url("/apis/mill.dev/v1/namespaces/default/tasks");
                let object = task(key, value);
                let req = if create {
                    http.post(base)
                } else {
                    http.put(format!("{base}/{key}"))
                };
                req.bearer_auth(TOKEN).json(&object).send().await
            }
            System::Etcd(e) => {
                let body =
                    json!({"key": B64.encode(format!("/bench/{key}")), "value": B64.encode(value)});
                http.post(format!("{}/v3/kv/put", e.urls[m]))
                    .json(&body)
                    .send()
                    .await
            }
        };
        resp.is_ok_and(|r| r.status().is_success())
    }

    /// mill's leader (member index) and term as member 0 sees them; `None` for etcd.
    async fn leadership(&self) -> Option<(usize, u64)> {
        let System::Mill(c) = self else { return None };
        let info: Value = c
            .http
            .get(c.nodes[0].url("/internal/node/info"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let leader = info["leader_addr"].as_str()?;
        let member = c.nodes.iter().position(|n| n.addr() == leader)?;
        Some((member, info["term"].as_u64()?))
    }

    /// A streaming watch on member `m`; every event's value goes to `seen`.
    async fn watch(
        &self,
        http: &reqwest::Client,
        m: usize,
        seen: Arc<Mutex<HashMap<String, Instant>>>,
    ) {
        let resp = match self {
            System::Mill(c) => {
                let (_, rv) = list_rv(
                    http,
                    &c.nodes[m].url("/apis/mill.dev/v1/namespaces/default/tasks"),
                )
                .await;
                let url = c.nodes[m].url(&format!(
                    "/apis/mill.dev/v1/namespaces/default/tasks?watch=true&resourceVersion={rv}"
                ));
                http.get(url).bearer_auth(TOKEN).send().await
            }
            System::Etcd(e) => {
                let body = json!({"create_request": {"key": B64.encode("/bench/"), "range_end": B64.encode("/bench0")}});
                http.post(format!("{}/v3/watch", e.urls[m]))
                    .json(&body)
                    .send()
                    .await
            }
        };
        let Ok(mut resp) = resp else { return };
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let now = Instant::now();
                let values: Vec<String> = match self {
                    System::Mill(_) => event["object"]["spec"]["image"]
                        .as_str()
                        .map(str::to_string)
                        .into_iter()
                        .collect(),
                    System::Etcd(_) => event["result"]["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["kv"]["value"].as_str())
                        .filter_map(|v| B64.decode(v).ok())
                        .filter_map(|v| String::from_utf8(v).ok())
                        .collect(),
                };
                let mut seen = seen.lock().unwrap();
                for v in values {
                    seen.entry(v).or_insert(now);
                }
            }
        }
    }
}

async fn list_rv(http: &reqwest::Client, url: &str) -> (usize, String) {
    let list: Value = http
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        list["items"].as_array().map_or(0, Vec::len),
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string(),
    )
}

/// etcd members on loopback, each with its own data dir.
struct Etcd {
    urls: Vec<String>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start(size: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut children = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).unwrap();
            children.push(
                Command::new("etcd")
                    .args(["--name", &format!("e{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("e{i}")))
                    .args([
                        "--listen-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                    ])
                    .args([
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                    ])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                    ])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-state", "new", "--log-level", "error"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd on PATH (scripts/setup installs etcd-server)"),
            );
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect();
        let http = reqwest::Client::new();
        for url in &urls {
            harness::eventually(Duration::from_secs(30), "etcd to serve", || async {
                let body = json!({"key": B64.encode("/ready"), "value": B64.encode("1")});
                let resp = http
                    .post(format!("{url}/v3/kv/put"))
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                resp.status().is_success().then_some(())
            })
            .await;
        }
        Etcd {
            urls,
            children,
            _dir: dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Throughput and latency percentiles of one load phase.
struct Figures {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `total` writes by `concurrency` clients spread over the members.
async fn load(
    system: &System,
    prefix: &str,
    concurrency: usize,
    total: usize,
    create: bool,
) -> Figures {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> =
        futures::future::join_all((0..concurrency).map(|_| async {
            let mut latencies = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let key = format!("{prefix}-{i}");
                let t = Instant::now();
                if system
                    .put(&http, i % system.members(), &key, &format!("v{i}"), create)
                    .await
                {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }))
        .await;
    let elapsed = started.elapsed();
    let mut all: Vec<Duration> = results
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    all.sort();
    Figures {
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        errors: results.iter().map(|(_, e)| e).sum(),
    }
}

/// Write start → event at a watcher on member 0, for `count` sequential writes of `key`
/// via the last member; the latencies, sorted.
async fn watch_latency(system: &System, key: &str, count: usize) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let watcher = {
        let seen = seen.clone();
        let http = http.clone();
        async move { system.watch(&http, 0, seen).await }
    };
    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await; // let the watch connect
        let mut sent = Vec::new();
        for i in 0..count {
            let value = format!("w{i}");
            let t = Instant::now();
            system
                .put(&http, system.members() - 1, key, &value, i == 0)
                .await;
            sent.push((value, t));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    };
    let sent = tokio::select! {
        sent = writer => sent,
        _ = watcher => panic!("watch ended early"),
    };
    let seen = seen.lock().unwrap();
    let samples: Vec<(Instant, Duration)> = sent
        .iter()
        .filter_map(|(v, t)| seen.get(v).map(|r| (*t, r.saturating_duration_since(*t))))
        .collect();
    if let Some(dir) = std::env::var_os("MILL_BENCH_SAMPLES") {
        // One line per watched write: when it started (Unix time, s), its latency (ms).
        let (now, clock) = (Instant::now(), std::time::SystemTime::now());
        let epoch = clock.duration_since(std::time::UNIX_EPOCH).unwrap();
        let lines: String = samples
            .iter()
            .map(|(t, d)| {
                let at = epoch.saturating_sub(now.duration_since(*t)).as_secs_f64();
                format!("{at:.4} {:.3}\n", d.as_secs_f64() * 1000.0)
            })
            .collect();
        let name = format!(
            "{}-{key}.txt",
            system.name().replace(' ', "").replace("(s)", "")
        );
        std::fs::write(std::path::Path::new(&dir).join(name), lines).unwrap();
    }
    let mut latencies: Vec<Duration> = samples.into_iter().map(|(_, d)| d).collect();
    latencies.sort();
    assert!(
        latencies.len() * 10 >= count * 9,
        "watcher missed events: {} of {count}",
        latencies.len()
    );
    latencies
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let arg = |name: &str| {
        args.iter().position(|a| a == name).map(|i| {
            args.get(i + 1)
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{name} takes a number, e.g. {name} 3"))
        })
    };
    let sizes: Vec<usize> = arg("--size").map_or(vec![1, 3], |size| vec![size]);
    // Rounds alternate the systems (mill first, then etcd first, ...), so a machine that
    // gets busier or quieter during the run moves both alike.
    let rounds = arg("--rounds").unwrap_or(if quick { 1 } else { 3 }).max(1);
    let (n1, n64, nw) = if quick {
        (100, 600, 100)
    } else {
        // 1,000 watched writes per round, so the watch p99 is not the 3rd worst.
        (300, 3000, 1000)
    };
    println!("| system | round | phase | clients | ops/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for size in sizes {
        let systems = [
            // mill's default election timeout (the test harness's is shorter), as etcd
            // runs with its defaults.
            System::Mill(Cluster::start(size, &[("MILL_ELECTION_TIMEOUT_MS", "1000")]).await),
            System::Etcd(Etcd::start(size).await),
        ];
        // Per system: creates/s and updates/s at 64 clients of every round, and every
        // watch sample of every round.
        let mut creates = [Vec::new(), Vec::new()];
        let mut updates = [Vec::new(), Vec::new()];
        let mut watched: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for s in order {
                let system = &systems[s];
                for (phase, create) in [("create", true), ("update", false)] {
                    for (clients, total) in [(1, n1), (64, n64)] {
                        // Updates rewrite the keys this round's create phase made.
                        let prefix = format!("r{round}k{clients}");
                        let f = load(system, &prefix, clients, total, create).await;
                        println!(
                            "| {} | {} | {phase} | {clients} | {:.0} | {} | {} | {} |",
                            system.name(),
                            round + 1,
                            f.ops_per_sec,
                            ms(f.p50),
                            ms(f.p99),
                            f.errors
                        );
                        if clients == 64 {
                            let into = if create { &mut creates } else { &mut updates };
                            into[s].push(f.ops_per_sec);
                        }
                    }
                }
                let before = system.leadership().await;
                let latencies = watch_latency(system, &format!("watched-{round}"), nw).await;
                let after = system.leadership().await;
                println!(
                    "| {} | {} | watch latency | 1 | - | {} | {} | 0 |{}",
                    system.name(),
                    round + 1,
                    ms(percentile(&latencies, 0.5)),
                    ms(percentile(&latencies, 0.99)),
                    match (before, after) {
                        (None, None) => String::new(),
                        (Some(b), Some(a)) if b == a =>
                            format!(" leader: member {}, term {}", b.0, b.1),
                        (b, a) => format!(" leader changed: {b:?} -> {a:?} (member, term)"),
                    }
                );
                watched[s].extend(latencies);
            }
        }
        for w in &mut watched {
            w.sort();
        }
        let p = |s: usize, q: f64| percentile(&watched[s], q);
        summary.push(format!(
            "{size} node(s), {rounds} round(s), mill/etcd: creates/s at 64 clients {:.2} ({:.0} / {:.0}, medians); \
             updates/s at 64 clients {:.2} ({:.0} / {:.0}); watch p99 {:.2} ({} / {}; p50 {} / {}, over {} writes each)",
            median(creates[0].clone()) / median(creates[1].clone()),
            median(creates[0].clone()),
            median(creates[1].clone()),
            median(updates[0].clone()) / median(updates[1].clone()),
            median(updates[0].clone()),
            median(updates[1].clone()),
            p(0, 0.99).as_secs_f64() / p(1, 0.99).as_secs_f64(),
            ms(p(0, 0.99)),
            ms(p(1, 0.99)),
            ms(p(0, 0.5)),
            ms(p(1, 0.5)),
            watched[0].len(),
        ));
    }
    println!();
    for line in summary {
        println!("{line}");
    }
}
