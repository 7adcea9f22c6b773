//! What a rolling update costs beyond the containers themselves: a `mill deploy` that
//! changes the env of a 5-replica service (image present, `/health` baked into it so
//! it is healthy at start, SIGTERM handled), timed from the POST to the stream's `done`, against the sum over the 5
//! replicas of (container start + first successful HTTP probe) measured with `ctr run -d`
//! of the same image and command on the same containerd, in the same run. mill's overhead
//! is `deploy / sum - 1` (target ≤ 10%). Needs root and containerd (as the e2e tests);
//! run with `cargo bench --bench rollout`.
//!
//! The node logs its `mill::timeline` debug events (every controller write with its
//! latency, probe results, barrier progress, the agent's container steps and status
//! writes); the bench prints those of the last rollout in ms from the POST, and per
//! round how many writes it took and how long they held the loop and the agent.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::containerd::Containerd;
use support::images;
use support::node::{http_get, MillNode, TOKEN};

/// Replicas of the service, and containers per reference round.
const REPLICAS: usize = 5;
/// Rollouts measured (each against a reference round right after it).
const ROUNDS: usize = 5;
/// The most one step may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(120);
/// How often the reference polls for its first HTTP answer.
const POLL: Duration = Duration::from_millis(2);
/// The service's command: busybox httpd, exiting at once on SIGTERM (as a well-behaved
/// app does), so stopping an old replica costs what the app needs, not the stop grace.
/// `/www/health` is in the image, so the app is healthy as soon as httpd listens (the
/// workload of issue #5); the shell stays as PID 1 because httpd ignores SIGTERM there.
const COMMAND: &str = "trap 'exit 0' TERM; httpd -f -p $PORT -h /www & wait";

fn config(round: usize) -> String {
    format!(
        r#"service "web" {{
  image    = "mill.test/httpd:1"
  command  = ["/bin/sh", "-c", "{}"]
  port     = 8080
  replicas = {REPLICAS}
  cpu      = 0.1
  memory   = "32M"
  env {{
    ROUND = "{round}"
  }}

  health {{
    path     = "/health"
    interval = "1s"
    timeout  = "1s"
  }}
}}
"#,
        COMMAND.replace('"', "\\\"")
    )
}

/// POSTs `text` to `/v1/deploy` and reads the SSE stream to its `done`; the elapsed time
/// and whether it succeeded.
async fn deploy(node: &MillNode, text: String) -> (Duration, bool) {
    let began = Instant::now();
    let mut answer = reqwest::Client::new()
        .post(node.url("/v1/deploy"))
        .bearer_auth(TOKEN)
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body(text)
        .send()
        .await
        .expect("the node answers");
    if !answer.status().is_success() {
        panic!(
            "deploy refused: {}",
            answer.text().await.unwrap_or_default()
        );
    }
    let mut stream = String::new();
    let done = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = answer.chunk().await.expect("the stream reads") {
            stream.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = stream.find("event: done") {
                let rest = &stream[at..];
                if let Some(end) = rest.find("\n\n") {
                    return rest[..end].contains("\"success\":true");
                }
            }
        }
        panic!("the deploy stream ended without done:\n{stream}");
    })
    .await
    .unwrap_or_else(|_| panic!("the deploy took over {DEADLINE:?}"));
    (began.elapsed(), done)
}

/// One reference round: `REPLICAS` containers started one after the other with `ctr run
/// -d`, each timed from the run to its first HTTP 200; their sum.
fn reference_round(ctd: &Containerd, namespace: &str, round: usize) -> Duration {
    let runtime = tokio::runtime::Handle::current();
    let mut sum = Duration::ZERO;
    for replica in 0..REPLICAS {
        let port = support::free_port();
        let id = format!("ref-{round}-{replica}");
        let env = format!("PORT={port}");
        let began = Instant::now();
        ctd.ctr_ok(
            namespace,
            &[
                "run",
                "-d",
                "--net-host",
                "--env",
                &env,
                "mill.test/httpd:1",
                &id,
                "/bin/sh",
                "-c",
                COMMAND,
            ],
        );
        let deadline = Instant::now() + DEADLINE;
        while !runtime.block_on(async {
            http_get(port, "/health")
                .await
                .is_some_and(|(code, _)| code == 200)
        }) {
            assert!(Instant::now() < deadline, "ctr run took over {DEADLINE:?}");
            std::thread::sleep(POLL);
        }
        sum += began.elapsed();
        ctd.ctr(namespace, &["tasks", "kill", "-s", "SIGKILL", &id]);
        while !ctd
            .ctr(namespace, &["tasks", "delete", &id])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "ctr task of {id} never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
        ctd.ctr_ok(namespace, &["containers", "rm", &id]);
    }
    sum
}

/// Waits until the node's containerd namespace holds just the `REPLICAS` serving
/// containers (the agent removes ended ones once its starts are over).
fn settle(ctd: &Containerd, namespace: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let listed = ctd.ctr_ok(namespace, &["containers", "ls", "-q"]);
        if listed.lines().filter(|l| !l.trim().is_empty()).count() == REPLICAS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node still has old containers after {DEADLINE:?}:\n{listed}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node's `mill::timeline` events written since `offset` of its log, each as (ms
/// since `since`, message).
fn timeline(log: &str, offset: usize, since: jiff::Timestamp) -> Vec<(f64, String)> {
    let mut events = Vec::new();
    for line in log.get(offset..).unwrap_or_default().lines() {
        let plain = strip_ansi(line);
        let Some((_, message)) = plain.split_once("mill::timeline: ") else {
            continue;
        };
        let Some(at) = plain
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let ms = at.duration_since(since).as_secs_f64() * 1000.0;
        events.push((ms, message.to_string()));
    }
    events
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes in a timeline, and the ms they took: (controller writes, agent status writes).
fn write_costs(events: &[(f64, String)]) -> ((usize, f64), (usize, f64)) {
    let took = |m: &str| {
        m.rsplit_once(" took ")
            .and_then(|(_, t)| t.trim_end_matches(" ms").parse::<f64>().ok())
    };
    let (mut controller, mut agent) = ((0, 0.0), (0, 0.0));
    for (_, message) in events {
        let Some(ms) = took(message) else { continue };
        let side = if message.starts_with("agent status") {
            &mut agent
        } else {
            &mut controller
        };
        side.0 += 1;
        side.1 += ms;
    }
    (controller, agent)
}

/// The issue's own measure, from the rollout itself: per new replica, from `agent starts`
/// to its first passing probe (container start + first successful probe, as they went in
/// this rollout), summed; and how many replicas that covers.
fn in_run_starts(events: &[(f64, String)]) -> (usize, Duration) {
    let mut started: Vec<(&str, f64)> = Vec::new();
    let mut total = 0.0;
    let mut count = 0;
    for (at, message) in events {
        if let Some(name) = message.strip_prefix("agent starts ") {
            started.push((name, *at));
        } else if let Some(rest) = message.strip_prefix("probe ") {
            let (Some((name, _)), true) = (rest.split_once(' '), rest.ends_with(": Passed")) else {
                continue;
            };
            if let Some(i) = started.iter().position(|(n, _)| *n == name) {
                total += at - started.swap_remove(i).1;
                count += 1;
            }
        }
    }
    (count, Duration::from_secs_f64(total / 1000.0))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let ctd = Containerd::start();
    let archive = images::build_with_files(
        &images::httpd("mill.test/httpd:1"),
        &[images::HEALTH_FILE],
        ctd.dir.path(),
    );
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 100);
    let node = MillNode::start(
        &ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_PORT_RANGE", &ports),
            ("RUST_LOG", "info,openraft=error,mill::timeline=debug"),
        ],
    )
    .await;
    node.load_image(&archive);
    let reference_ns = "bench-ref";
    ctd.ctr_ok(
        reference_ns,
        &["images", "import", &archive.display().to_string()],
    );

    let (first_deploy, ok) = deploy(&node, config(0)).await;
    assert!(ok, "the first deploy failed:\n{}", node.log());
    println!(
        "first deploy of {REPLICAS} replicas: {:.0} ms",
        ms(first_deploy)
    );

    let (mut rollouts, mut references, mut in_runs) = (vec![], vec![], vec![]);
    let mut last = Vec::new();
    for round in 1..=ROUNDS {
        let offset = node.log().len();
        let posted = jiff::Timestamp::now();
        let (took, ok) = deploy(&node, config(round)).await;
        assert!(ok, "rollout {round} failed:\n{}", node.log());
        rollouts.push(took);
        let events = timeline(&node.log(), offset, posted);
        // The reference runs on the same containerd once the node has removed the old
        // replicas' containers, so neither side's work overlaps the other's.
        tokio::task::block_in_place(|| settle(&ctd, &node.namespace));
        let reference = tokio::task::block_in_place(|| reference_round(&ctd, reference_ns, round));
        references.push(reference);
        let ((writes, writes_ms), (statuses, statuses_ms)) = write_costs(&events);
        let (replicas, in_run) = in_run_starts(&events);
        assert_eq!(
            replicas, REPLICAS,
            "round {round}: a start or probe is missing from the timeline"
        );
        in_runs.push(in_run);
        println!(
            "  round {round}: rollout {:7.0} ms   sum of {REPLICAS} × (ctr run -d → first HTTP) {:7.0} ms   \
             in the rollout, sum of {REPLICAS} × (agent start → first passing probe) {:7.0} ms   \
             controller writes {writes} ({writes_ms:.0} ms), agent status writes {statuses} ({statuses_ms:.0} ms)",
            ms(took),
            ms(reference),
            ms(in_run)
        );
        last = events;
    }
    println!("timeline of the last rollout (ms from the POST):");
    for (at, message) in &last {
        println!("  {at:8.1}  {message}");
    }
    let (rollout, reference, in_run) = (median(rollouts), median(references), median(in_runs));
    println!("rolling update of {REPLICAS} replicas, median of {ROUNDS} rounds:");
    for (what, base) in [
        ("ctr run -d reference", reference),
        ("its own starts + probes", in_run),
    ] {
        println!(
            "  mill deploy {:7.0} ms   {what} {:7.0} ms   ratio {:.2}   overhead {:+.0}%",
            ms(rollout),
            ms(base),
            ms(rollout) / ms(base),
            (ms(rollout) / ms(base) - 1.0) * 100.0
        );
    }
}
