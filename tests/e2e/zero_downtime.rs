//! Zero failed requests (issue #6): a steady load through the ingress proxy of every node
//! (keep-alive and new-connection requests, from the test process over the bridge) and
//! through the service VIP from inside a container (`prober`, a busybox shell loop with
//! `nc` in one test host, reading `${service.web.address}`; its counts come back through
//! `/v1/logs`), while `web` (3 replicas, one per node) goes through (a) a rolling update,
//! (b) a failing revision rolled back automatically, (c) a drain of one node. Every
//! request must answer 2xx and none may fail in transport; both are counted per phase.

use super::harness::{phase, summary, Cluster, Verdicts, TOKEN, WITHIN};
use super::support::eventually;
use mill_crds::AllocPhase;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Offered requests per second per node's ingress (half keep-alive, half new connections).
const RATE_PER_NODE: u32 = 100;
/// Load workers per node: every other one opens a new connection per request.
const WORKERS_PER_NODE: u32 = 4;
/// Answered requests every (node, connection kind) must see after each phase's operation
/// ends, so each phase covers a settled stretch too, not just the operation.
const AFTER_EACH: usize = 100;
/// The phases; the load runs through all of them without a pause.
const PHASES: [&str; 4] = ["warm-up", "rolling update", "rollback", "drain"];
/// The prober reports its running counts every this many requests.
const REPORT_EVERY: u32 = 10;

/// The web service: busybox httpd serving `note` at `/` (after `command`, a shell step that
/// may exit first), a route `web.test`. Each replica takes ~100 req/s: half a CPU and
/// SPEC's default probe timeout, so probes do not time out on a loaded 2-core machine
/// (three failed probes in a row take a replica out of routing, legitimately; that is
/// not what this test is about).
fn web(image: &str, note: &str, command: Option<&str>) -> String {
    let serve = format!(
        "mkdir -p /www && echo {note} > /www/index.html && echo ok > /www/health && exec httpd -f -p $PORT -h /www"
    );
    let command = command.map_or(serve.clone(), |decide| format!("{decide} && {serve}"));
    format!(
        r#"service "web" {{
  image    = "{image}"
  command  = ["/bin/sh", "-c", "{command}"]
  port     = 8080
  replicas = 3
  cpu      = 0.5
  memory   = "32M"
  health {{
    path     = "/health"
    interval = "1s"
    timeout  = "2s"
  }}
  route "web.test" {{
    path = "/"
  }}
}}
"#
    )
}

/// The VIP client: resolves `${service.web.address}` with busybox's nslookup against the
/// node's DNS, then loops `GET /` over a new connection each (`nc`, busybox-static's wget
/// has no resolver without glibc's NSS) and prints `prober ok=N fail=M` every
/// [`REPORT_EVERY`] requests and each failure (the first 20) as `prober failure: ...`.
/// It serves `/health` with httpd once the name resolved, and starts counting once web
/// answered through the VIP the first time (the two services are deployed together, so
/// the prober may start before web's replicas are routed).
const PROBER_SCRIPT: &str = r#"host=$(echo $ADDR | busybox cut -d: -f1)
port=$(echo $ADDR | busybox cut -d: -f2)
until ip=$(busybox nslookup $host | busybox sed -n 's/^Address: *\([0-9.]*\)$/\1/p' | busybox tail -n 1) && [ -n "$ip" ]; do echo "prober waiting for $host"; sleep 0.5; done
echo "prober resolved $host to $ip, port $port"
mkdir -p /www && echo ok > /www/health
httpd -f -p $PORT -h /www &
get() { printf 'GET / HTTP/1.0\r\nHost: web.test\r\n\r\n' | busybox nc -w 10 $ip $port | busybox head -n 1; }
until get | busybox grep -q '^HTTP/1.. 2'; do echo "prober waiting for web's first answer"; sleep 0.2; done
echo "prober reached web"
ok=0
fail=0
n=0
while true; do
  r=$(get)
  case "$r" in
    "HTTP/1."?" 2"*) ok=$((ok+1)) ;;
    "") fail=$((fail+1)); [ $fail -le 20 ] && echo "prober failure: transport error (no answer)" ;;
    *) fail=$((fail+1)); [ $fail -le 20 ] && echo "prober failure: $r" ;;
  esac
  n=$((n+1))
  [ $((n % REPORT)) -eq 0 ] && echo "prober ok=$ok fail=$fail"
done
"#;

fn hcl_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn prober() -> String {
    format!(
        r#"service "prober" {{
  image    = "IMAGE"
  command  = ["/bin/sh", "-c", "printf '%s' \"$SCRIPT\" > /prober.sh && exec /bin/sh /prober.sh"]
  port     = 8090
  cpu      = 0.5
  memory   = "32M"
  env {{
    ADDR   = "${{service.web.address}}"
    REPORT = "{REPORT_EVERY}"
    SCRIPT = "{}"
  }}
  health {{
    path     = "/health"
    interval = "1s"
    timeout  = "1s"
  }}
}}
"#,
        hcl_escape(PROBER_SCRIPT)
    )
}

/// The whole config: `web` as given and the unchanged prober.
fn config(cluster: &Cluster, web: String) -> String {
    format!("{web}\n{}", prober().replace("IMAGE", &cluster.images.v1))
}

/// What one (node, connection kind) saw in one phase.
#[derive(Default, Clone, Debug)]
struct Book {
    ok: usize,
    /// Status code (or `transport`) → count, failures only.
    failed: BTreeMap<String, usize>,
    first_errors: Vec<String>,
    bodies: BTreeSet<String>,
}

impl Book {
    fn failures(&self) -> usize {
        self.failed.values().sum()
    }
}

/// The load's books: `[phase][node * 2 + kind]`, kind 0 keep-alive, 1 new connection.
struct Tally {
    phase: AtomicUsize,
    books: Vec<Vec<Mutex<Book>>>,
}

const KINDS: [&str; 2] = ["keep-alive", "new connection"];

impl Tally {
    fn new(nodes: usize) -> Tally {
        Tally {
            phase: AtomicUsize::new(0),
            books: (0..PHASES.len())
                .map(|_| (0..nodes * 2).map(|_| Mutex::default()).collect())
                .collect(),
        }
    }

    fn book(&self, phase: usize, node: usize, kind: usize) -> Book {
        self.books[phase][node * 2 + kind].lock().unwrap().clone()
    }

    /// The smallest count of answered requests over every (node, kind) in `phase`.
    fn min_ok(&self, phase: usize) -> usize {
        self.books[phase]
            .iter()
            .map(|b| b.lock().unwrap().ok)
            .min()
            .unwrap_or(0)
    }
}

/// The load workers through every node's ingress (`IP:80`, `Host: web.test`).
fn load(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut workers = Vec::new();
    for (node, n) in cluster.nodes.iter().enumerate() {
        let url = format!("http://{}:80/", n.host.ip);
        for w in 0..WORKERS_PER_NODE {
            let kind = (w % 2) as usize;
            let (url, stop, tally) = (url.clone(), stop.clone(), tally.clone());
            workers.push(tokio::spawn(async move {
                let builder = reqwest::Client::builder().timeout(Duration::from_secs(20));
                let client = if kind == 1 {
                    builder.pool_max_idle_per_host(0)
                } else {
                    builder
                }
                .build()
                .unwrap();
                let mut tick = tokio::time::interval(
                    Duration::from_secs(1) * WORKERS_PER_NODE / RATE_PER_NODE,
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let phase = tally.phase.load(Ordering::SeqCst);
                    let answer = client
                        .get(&url)
                        .header(reqwest::header::HOST, "web.test")
                        .send()
                        .await;
                    let outcome = match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.text().await {
                                Ok(body) if (200..300).contains(&status) => Ok(body),
                                Ok(body) => Err((status.to_string(), body)),
                                Err(e) => Err(("transport".into(), format!("body: {e:#}"))),
                            }
                        }
                        Err(e) => Err(("transport".into(), format!("{e:#}"))),
                    };
                    let mut book = tally.books[phase][node * 2 + kind].lock().unwrap();
                    match outcome {
                        Ok(body) => {
                            book.ok += 1;
                            if !book.bodies.contains(body.trim()) {
                                book.bodies.insert(body.trim().to_string());
                            }
                        }
                        Err((what, detail)) => {
                            *book.failed.entry(what.clone()).or_default() += 1;
                            if book.first_errors.len() < 5 {
                                book.first_errors.push(format!("{what}: {}", detail.trim()));
                            }
                        }
                    }
                }
            }));
        }
    }
    workers
}

/// The log lines of prober alloc `alloc` with their timestamps, through `/v1/logs` of
/// node 1 (the alloc, not the service: a replacement prober would count from 0 again).
async fn prober_lines(cluster: &Cluster, alloc: &str) -> Option<Vec<(String, String)>> {
    let answer = cluster
        .http
        .get(cluster.nodes[0].url(&format!("/v1/logs/{alloc}")))
        .query(&[("tail", "100000")])
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let text = answer.text().await.ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .filter_map(|v| {
                let line = v["line"].as_str()?.to_string();
                Some((v["ts"].as_str().unwrap_or_default().to_string(), line))
            })
            .collect(),
    )
}

/// What the prober reported so far: its last `ok`, `fail` counts, its failure lines and
/// when each report was logged (a long gap between two says VIP requests were slow).
#[derive(Debug, Clone, Default)]
struct Probed {
    ok: u64,
    fail: u64,
    failures: Vec<String>,
    reported_at: Vec<jiff::Timestamp>,
}

impl Probed {
    /// The longest time between two reports after `earlier`'s last one, up to this one's.
    fn longest_gap_since(&self, earlier: &Probed) -> Duration {
        let from = earlier.reported_at.len().saturating_sub(1);
        self.reported_at[from.min(self.reported_at.len())..]
            .windows(2)
            .map(|w| Duration::try_from(w[1].duration_since(w[0])).unwrap_or_default())
            .max()
            .unwrap_or_default()
    }
}

fn parse_probed(lines: &[(String, String)]) -> Probed {
    let mut probed = Probed::default();
    for (ts, line) in lines {
        if let Some(rest) = line.strip_prefix("prober ok=") {
            let mut parts = rest.split(" fail=");
            if let (Some(ok), Some(fail)) = (parts.next(), parts.next()) {
                probed.ok = ok.trim().parse().unwrap_or(probed.ok);
                probed.fail = fail.trim().parse().unwrap_or(probed.fail);
            }
            if let Ok(at) = ts.parse() {
                probed.reported_at.push(at);
            }
        } else if line.starts_with("prober failure") {
            probed.failures.push(line.clone());
        }
    }
    probed
}

/// Waits until the prober's report shows more than `past` answered requests.
async fn probed_past(cluster: &Cluster, alloc: &str, past: u64) -> Probed {
    eventually(
        WITHIN,
        &format!("the prober to report more than {past} answered VIP requests"),
        || async {
            let probed = parse_probed(&prober_lines(cluster, alloc).await?);
            (probed.ok > past).then_some(probed)
        },
    )
    .await
}

/// Waits until every (node, kind) answered `count` requests in `phase`.
async fn answered(tally: &Tally, phase: usize, count: usize) {
    eventually(
        WITHIN,
        &format!(
            "{count} answered requests per node and kind in phase {}",
            PHASES[phase]
        ),
        || async { (tally.min_ok(phase) >= count).then_some(()) },
    )
    .await
}

/// Every alloc of web with its phase, reason, restarts and conditions: what a failure
/// report shows (a replica that left routing for a failed probe says so here).
async fn allocs_report(cluster: &Cluster) -> String {
    let allocs = cluster.allocs("web").await;
    let mut lines = Vec::new();
    for (alloc, line) in allocs.iter().zip(summary(&allocs)) {
        let status = alloc.status.as_ref();
        let conditions: Vec<String> = status
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| format!("{}={} {:?}", c.type_, c.status, c.message))
                    .collect()
            })
            .unwrap_or_default();
        lines.push(format!(
            "    {line} restarts={} conditions={conditions:?}",
            status.map_or(0, |s| s.restarts)
        ));
    }
    lines.join("\n")
}

/// The healthy alloc of `service` (one replica) and the index of the node that runs it.
async fn only_alloc(cluster: &Cluster, service: &str) -> (String, usize) {
    let allocs = cluster.allocs(service).await;
    let alloc = allocs
        .iter()
        .find(|a| phase(a) == AllocPhase::Healthy)
        .unwrap_or_else(|| panic!("no healthy {service} alloc: {:#?}", summary(&allocs)));
    let name = alloc.spec.node_name.clone().unwrap();
    let node = (0..cluster.nodes.len())
        .find(|i| name == format!("node-{}", i + 1))
        .unwrap_or_else(|| panic!("{service} runs on unknown node {name}"));
    (alloc.metadata.name.clone().unwrap(), node)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_fails_during_a_rolling_update_a_rollback_and_a_drain() {
    // Drains end as soon as nothing is in flight; the grace is only the bound.
    let cluster = Cluster::start(&[("MILL_DRAIN_GRACE_MS", "5000")]).await;
    let images = &cluster.images;
    cluster
        .deploy(&config(&cluster, web(&images.v1, "v1", None)))
        .await
        .assert_success();
    let placed = cluster.wait_settled("web", &images.v1, 3).await;
    let spread: BTreeSet<_> = placed
        .iter()
        .filter_map(|a| a.spec.node_name.clone())
        .collect();
    assert_eq!(
        spread.len(),
        3,
        "one web replica per node: {:#?}",
        summary(&placed)
    );
    let (prober, prober_node) = only_alloc(&cluster, "prober").await;
    let mut probed = vec![probed_past(&cluster, &prober, 0).await];

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::new(cluster.nodes.len()));
    let began = Instant::now();
    let mut phase_started = vec![began];
    let workers = load(&cluster, stop.clone(), tally.clone());
    answered(&tally, 0, 50).await;

    // (a) A rolling update of the 3 replicas.
    let next = |tally: &Tally, probed: &mut Vec<Probed>, started: &mut Vec<Instant>, p: Probed| {
        tally.phase.fetch_add(1, Ordering::SeqCst);
        probed.push(p);
        started.push(Instant::now());
    };
    let now = parse_probed(&prober_lines(&cluster, &prober).await.unwrap_or_default());
    next(&tally, &mut probed, &mut phase_started, now);
    let run = cluster
        .deploy_via(1, &config(&cluster, web(&images.v2, "v2", None)))
        .await;
    run.assert_success();
    let update_phases = run.phases("web");
    cluster.wait_settled("web", &images.v2, 3).await;
    answered(&tally, 1, AFTER_EACH).await;

    // (b) A revision whose first replica starts and serves, the next ones fail: the
    // rollout fails and rolls back to v2, replacing the replica that had moved.
    let verdicts = Verdicts::start(&cluster, &["ok", "fail"]).await;
    let decide = format!(
        "v=$(busybox wget -q -O - {}); [ \\\"$v\\\" = ok ] || exit 3",
        verdicts.url
    );
    let now = probed_past(&cluster, &prober, probed.last().unwrap().ok).await;
    next(&tally, &mut probed, &mut phase_started, now);
    let run = cluster
        .deploy_via(2, &config(&cluster, web(&images.v3, "v3", Some(&decide))))
        .await;
    assert_eq!(run.status, 200, "{run:#?}");
    assert!(
        !run.success(),
        "the failing revision must fail the deploy: {run:#?}"
    );
    let rollback_phases = run.phases("web");
    assert!(
        rollback_phases.iter().any(|p| p == "rolled_back"),
        "the deploy rolled web back: {rollback_phases:?}"
    );
    cluster.wait_settled("web", &images.v2, 3).await;
    answered(&tally, 2, AFTER_EACH).await;

    // (c) A drain of a node that neither leads nor runs the prober.
    let leader = cluster.wait_leader().await;
    let victim = (0..3)
        .find(|&i| i != leader && i != prober_node)
        .expect("a node that neither leads nor runs the prober");
    let name = format!("node-{}", victim + 1);
    let via = (victim + 1) % 3;
    let now = probed_past(&cluster, &prober, probed.last().unwrap().ok).await;
    next(&tally, &mut probed, &mut phase_started, now);
    let answer = cluster
        .http
        .post(cluster.nodes[via].url(&format!("/v1/nodes/{name}/drain")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    assert_eq!(code, 200, "drain {name}: {}", answer.text().await.unwrap());
    eventually(WITHIN, &format!("{name} drained"), || async {
        let allocs = cluster.allocs("web").await;
        let live: Vec<_> = allocs.iter().filter(|a| !phase(a).is_terminal()).collect();
        let done = live.len() == 3
            && live.iter().all(|a| {
                phase(a) == AllocPhase::Healthy && a.spec.node_name.as_deref() != Some(&name)
            });
        done.then_some(())
    })
    .await;
    answered(&tally, 3, AFTER_EACH).await;
    let last = probed_past(&cluster, &prober, probed.last().unwrap().ok).await;
    probed.push(last);
    phase_started.push(Instant::now());

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // The report: per phase, per node and kind, and the prober's share.
    let mut report = Vec::new();
    let mut failed = false;
    for (p, label) in PHASES.iter().enumerate() {
        let took = phase_started[p + 1] - phase_started[p];
        let mut total = 0;
        let mut lines = Vec::new();
        for node in 0..cluster.nodes.len() {
            for (kind, kind_name) in KINDS.iter().enumerate() {
                let book = tally.book(p, node, kind);
                total += book.ok + book.failures();
                failed |= book.failures() > 0;
                lines.push(format!(
                    "    node-{} {kind_name}: {} ok, {} failed {:?}, first errors {:?}, bodies {:?}",
                    node + 1,
                    book.ok,
                    book.failures(),
                    book.failed,
                    book.first_errors,
                    book.bodies
                ));
            }
        }
        let vip_ok = probed[p + 1].ok - probed[p].ok;
        let vip_fail = probed[p + 1].fail - probed[p].fail;
        let vip_lines = &probed[p + 1].failures[probed[p].failures.len()..];
        let vip_gap = probed[p + 1].longest_gap_since(&probed[p]);
        failed |= vip_fail > 0 || !vip_lines.is_empty();
        report.push(format!(
            "  {label}: {total} ingress requests in {took:.1?} ({:.0}/s); VIP from the prober: {vip_ok} ok, {vip_fail} failed (about: it reports every {REPORT_EVERY}; longest gap between reports {vip_gap:.1?}), {vip_lines:?}\n{}",
            total as f64 / took.as_secs_f64(),
            lines.join("\n")
        ));
    }
    let report = format!(
        "{}\n  web's phases: rolling update {:?}; rollback {:?}\n  web's allocs now:\n{}",
        report.join("\n"),
        update_phases,
        rollback_phases,
        allocs_report(&cluster).await
    );
    eprintln!("zero-downtime load:\n{report}");
    assert!(!failed, "requests failed:\n{report}");
    let (still, _) = only_alloc(&cluster, "prober").await;
    assert_eq!(
        still, prober,
        "the prober was replaced mid-test, so its counts cover only part of the run:\n{report}"
    );
    for p in 0..PHASES.len() {
        assert!(
            probed[p + 1].ok > probed[p].ok,
            "the prober answered no VIP request in phase {}:\n{report}",
            PHASES[p]
        );
    }
    let bodies: BTreeSet<String> = (0..PHASES.len())
        .flat_map(|p| {
            (0..cluster.nodes.len())
                .flat_map(|n| (0..2).map(move |k| (n, k)))
                .flat_map(|(n, k)| tally.book(p, n, k).bodies)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        bodies.contains("v1") && bodies.contains("v2"),
        "the load saw the rolling update's revisions: {bodies:?}"
    );
}
