//! The ingress proxy against nginx: `wrk` (64 connections, 2 threads, a 3-byte response)
//! through mill's proxy and through Debian's nginx configured as a reverse proxy
//! (`worker_processes` = mill's proxy threads, one single-threaded runtime each = the
//! cores), both to the same backend (a keep-alive hyper server in this process, one
//! thread), both setting the same forwarded headers, rounds interleaved in the same run.
//! Also the backend measured directly, for scale. Needs `wrk` and `nginx` on PATH
//! (`scripts/setup`) and root only for nginx's default user; no containerd (the backend is
//! registered as an alloc placed on a node that does not run it, with its address in the
//! status). Run with `cargo bench --bench proxy` (`-- --quick` for one short round).
//! `MILL_BENCH_ALSO=label=/path/to/mill,...` adds a node per other build, measured in the
//! same rounds (a before/after in one run).
//!
//! Besides requests/s and latency, each round reads the CPU time (user and system, from
//! `/proc`) that mill's proxy threads and nginx's workers used during it and prints it per
//! request: on a shared machine the throughput moves with everyone else's load, the CPU a
//! request costs much less.

#[path = "../tests/support/mod.rs"]
mod support;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mill_crds::{Alloc, Service};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::node::MillNode;

/// wrk's connections and threads.
const CONNECTIONS: u32 = 64;
const WRK_THREADS: u32 = 2;
const HOST: &str = "bench.test";

/// Reads a target's user and system CPU ticks so far.
type CpuTicks = dyn Fn() -> Option<(u64, u64)>;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// Requests answered in the run.
    requests: u64,
    /// The target's CPU time per request in the run (user, system), if known.
    cpu: Option<(Duration, Duration)>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, seconds) = if quick { (1, 3) } else { (3, 10) };
    support::require(&["wrk", "nginx"]);
    let load_before = loadavg();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = start_backend();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());

    // mill: a node whose table routes bench.test to the backend; one more per build in
    // `MILL_BENCH_ALSO` (`label=/path/to/mill,...`), to compare builds in the same run.
    let mut builds = vec![("mill".to_string(), None)];
    if let Ok(also) = std::env::var("MILL_BENCH_ALSO") {
        for entry in also.split(',').filter(|e| !e.is_empty()) {
            let (label, path) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("MILL_BENCH_ALSO: {entry:?} is not label=/path/to/mill"));
            builds.push((format!("mill {label}"), Some(path.to_string())));
        }
    }
    let default_binary = std::env::var_os("MILL_BENCH_BINARY");
    let mut nodes = Vec::new();
    for (label, binary) in builds {
        // support::node starts `MILL_BENCH_BINARY` if set.
        match (&binary, &default_binary) {
            (Some(path), _) => std::env::set_var("MILL_BENCH_BINARY", path),
            (None, Some(path)) => std::env::set_var("MILL_BENCH_BINARY", path),
            (None, None) => std::env::remove_var("MILL_BENCH_BINARY"),
        }
        let http = format!("127.0.0.1:{}", support::free_port());
        let dns = format!("127.0.0.1:{}", support::free_port());
        let node = runtime.block_on(async {
            let node = MillNode::start_on(
                Path::new("/nonexistent/containerd.sock"),
                &[("MILL_HTTP_ADDR", &http), ("MILL_DNS_ADDR", &dns)],
            )
            .await;
            register(&node, backend).await;
            wait_for(&http).await;
            node
        });
        nodes.push((label, http, node));
    }

    // nginx: the same route to the same backend.
    let dir = tempfile::tempdir().unwrap();
    let nginx_addr = format!("127.0.0.1:{}", support::free_port());
    let mut nginx = start_nginx(dir.path(), &nginx_addr, backend, threads);
    runtime.block_on(wait_for(&nginx_addr));

    let nginx_pid = nginx.id();
    let mut targets: Vec<(&str, &str, Box<CpuTicks>)> = nodes
        .iter()
        .map(|(label, http, node)| {
            let pid = pid_serving(&node.addr);
            let cpu: Box<CpuTicks> =
                Box::new(move || threads_cpu(pid, |name| name.starts_with("mill-proxy-")));
            (label.as_str(), http.as_str(), cpu)
        })
        .collect();
    // nginx second: the first mill target and nginx alternate as before.
    targets.insert(
        1,
        (
            "nginx",
            nginx_addr.as_str(),
            Box::new(move || children_cpu(nginx_pid)),
        ),
    );
    let backend_addr = backend.to_string();
    for (_, addr, _) in &targets {
        wrk(addr, 2, None); // warm-up: connections, pools, caches
    }
    let direct = wrk(&backend_addr, seconds, None);
    let mut runs: Vec<(String, Vec<Run>)> = targets
        .iter()
        .map(|(n, _, _)| (n.to_string(), Vec::new()))
        .collect();
    for _ in 0..rounds {
        for (i, (_, addr, cpu)) in targets.iter().enumerate() {
            runs[i].1.push(wrk(addr, seconds, Some(&**cpu)));
        }
    }
    stop(&mut nginx);
    drop(targets);
    drop(nodes);
    let load_after = loadavg();

    println!(
        "\nproxy: wrk -t{WRK_THREADS} -c{CONNECTIONS} -d{seconds}s, {rounds} interleaved rounds, {threads} proxy threads / nginx workers\n"
    );
    println!("load average (1, 5, 15 min): {load_before} before, {load_after} after\n");
    println!("| target | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    let mut medians = Vec::new();
    for (name, list) in &runs {
        let m = median(list);
        medians.push(m);
        println!(
            "| {name} (median round) | {:.0} | {:.2?} | {:.2?} | {} |",
            m.rps, m.p50, m.p99, m.errors
        );
        let each: Vec<String> = list.iter().map(|r| format!("{:.0}", r.rps)).collect();
        println!("| {name} rounds | {} | | | |", each.join(", "));
    }
    println!(
        "| backend direct | {:.0} | {:.2?} | {:.2?} | {} |",
        direct.rps, direct.p50, direct.p99, direct.errors
    );
    let nginx = medians[1];
    for (i, (name, _)) in runs.iter().enumerate().filter(|(i, _)| *i != 1) {
        let mill = medians[i];
        println!(
            "\n{name} / nginx: requests/s {:.2}×, p99 {:.2}× (target ≥ 1.0× and ≤ 1.0×)",
            mill.rps / nginx.rps,
            mill.p99.as_secs_f64() / nginx.p99.as_secs_f64()
        );
    }
    println!("\nCPU per request (user + system), each round:");
    let mut cpu_medians = Vec::new();
    for (name, list) in &runs {
        let each: Vec<String> = list
            .iter()
            .map(|r| match r.cpu {
                Some((user, system)) => format!(
                    "{:.1} + {:.1} µs",
                    user.as_secs_f64() * 1e6,
                    system.as_secs_f64() * 1e6
                ),
                None => "unknown".to_string(),
            })
            .collect();
        println!("  {name}: {}", each.join(" · "));
        let mut users: Vec<f64> = list
            .iter()
            .filter_map(|r| r.cpu.map(|(u, _)| u.as_secs_f64()))
            .collect();
        let mut totals: Vec<f64> = list
            .iter()
            .filter_map(|r| r.cpu.map(|(u, s)| (u + s).as_secs_f64()))
            .collect();
        users.sort_by(f64::total_cmp);
        totals.sort_by(f64::total_cmp);
        cpu_medians.push((
            users.get(users.len() / 2).copied(),
            totals.get(totals.len() / 2).copied(),
        ));
    }
    if let (Some(nu), Some(nt)) = cpu_medians[1] {
        for (i, (name, _)) in runs.iter().enumerate().filter(|(i, _)| *i != 1) {
            if let (Some(mu), Some(mt)) = cpu_medians[i] {
                println!(
                    "{name} / nginx CPU per request (medians): user {:.2}×, user + system {:.2}×",
                    mu / nu,
                    mt / nt
                );
            }
        }
    }
}

/// The pid of the `mill` process whose API listens on `api_addr` (from its command line).
fn pid_serving(api_addr: &str) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == api_addr.as_bytes())
        {
            return pid;
        }
    }
    panic!("no process serves the mill API on {api_addr}")
}

/// `getconf CLK_TCK` (100 on Linux).
fn clock_ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `utime` and `stime` (clock ticks) of a `/proc/.../stat` line.
fn stat_times(stat: &str) -> Option<(u64, u64)> {
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// User and system CPU ticks of `pid`'s threads whose name passes `keep`.
fn threads_cpu(pid: u32, keep: impl Fn(&str) -> bool) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !keep(name.trim()) {
            continue;
        }
        let (user, system) = stat_times(&std::fs::read_to_string(path.join("stat")).ok()?)?;
        total.0 += user;
        total.1 += system;
    }
    Some(total)
}

/// User and system CPU ticks of `pid`'s child processes (nginx's workers).
fn children_cpu(pid: u32) -> Option<(u64, u64)> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let mut total = (0, 0);
    for child in children.split_whitespace() {
        let (user, system) =
            stat_times(&std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?)?;
        total.0 += user;
        total.1 += system;
    }
    Some(total)
}

/// The machine's load averages, as `uptime` shows them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|err| format!("(cannot read /proc/loadavg: {err})"))
}

/// The round with the median requests/s.
fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    sorted[sorted.len() / 2]
}

/// A keep-alive HTTP/1.1 server answering `ok\n` to everything, on one thread of its own.
fn start_backend() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).ok();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                "ok\n".to_string(),
                            ))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

/// A Service routing `bench.test` and one Healthy alloc of it at `backend`, placed on a
/// node that does not exist (so no agent runs it; the table takes the status address).
async fn register(node: &MillNode, backend: std::net::SocketAddr) {
    let client = node.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"image": "bench", "port": 8080, "routes": [{"host": HOST, "path": "/"}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let allocs: Api<Alloc> = Api::namespaced(client, "default");
    let alloc: Alloc = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Alloc",
        "metadata": {"name": "bench-1-1", "namespace": "default"},
        "spec": {
            "owner": {"kind": "service", "name": "bench"},
            "service": "bench",
            "template": {"image": "bench", "cpu": 0.1, "memory": "32M"},
            "nodeName": "elsewhere",
            "hostPort": backend.port(),
        },
    }))
    .unwrap();
    allocs.create(&PostParams::default(), &alloc).await.unwrap();
    let status = json!({"status": {"phase": "healthy", "address": backend.to_string()}});
    allocs
        .patch_status("bench-1-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Waits until `addr` answers 200 for `Host: bench.test`.
async fn wait_for(addr: &str) {
    let client = reqwest::Client::new();
    support::eventually(
        Duration::from_secs(60),
        &format!("{addr} to proxy"),
        || async {
            let response = client
                .get(format!("http://{addr}/"))
                .header(reqwest::header::HOST, HOST)
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
}

fn start_nginx(dir: &Path, listen: &str, backend: std::net::SocketAddr, workers: usize) -> Child {
    let d = dir.display();
    let conf = format!(
        r#"worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream backend {{
    server {backend};
    keepalive 128;
  }}
  server {{
    listen {listen} reuseport;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
    }}
  }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx starts")
}

/// SIGQUIT (graceful) to our nginx master, which ends its workers.
fn stop(nginx: &mut Child) {
    Command::new("kill")
        .args(["-QUIT", &nginx.id().to_string()])
        .status()
        .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = nginx.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx.kill().ok();
    nginx.wait().ok();
}

/// One wrk run against `addr`; with `cpu`, the target's CPU time per request in it.
fn wrk(addr: &str, seconds: u32, cpu: Option<&CpuTicks>) -> Run {
    let before = cpu.and_then(|f| f());
    let out = Command::new("wrk")
        .args([
            &format!("-t{WRK_THREADS}"),
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("wrk runs");
    let after = cpu.and_then(|f| f());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let mut run = parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"));
    if let (Some(before), Some(after)) = (before, after) {
        let hz = clock_ticks_per_second();
        let per =
            |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz / run.requests.max(1) as f64);
        run.cpu = Some((
            per(after.0.saturating_sub(before.0)),
            per(after.1.saturating_sub(before.1)),
        ));
    }
    run
}

fn parse_wrk(text: &str) -> Option<Run> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let rps: f64 = field("Requests/sec:")?.parse().ok()?;
    // "245623 requests in 10.01s, 20.38MB read"
    let requests: u64 = text
        .lines()
        .find(|l| l.contains(" requests in "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let p50 = latency(&field("50%")?)?;
    let p99 = latency(&field("99%")?)?;
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect A, read B, write C, timeout D".
    let mut errors = field("Non-2xx or 3xx responses:").map_or(0, |v| v.parse().unwrap_or(0));
    if let Some(socket) = field("Socket errors:") {
        errors += socket
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(Run {
        rps,
        p50,
        p99,
        errors,
        requests,
        cpu: None,
    })
}

/// `612.00us`, `3.21ms`, `1.02s`.
fn latency(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 1e-6)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1.0)
    } else {
        return None;
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}
