//! Container start latency: an Alloc written (already scheduled, image present) to
//! `healthy`/`running` and to the first successful HTTP response on its port, side by side
//! with `ctr run -d` of the same image polled by the same client. Prints both medians and
//! the ratio. Needs root and containerd (as the e2e tests); run with
//! `cargo bench --bench agent`.

#[path = "../tests/support/mod.rs"]
mod support;

use mill_crds::AllocPhase;
use std::time::{Duration, Instant};
use support::containerd::Containerd;
use support::images;
use support::node::{http_get, service_spec, MillNode};

/// Runs per side.
const RUNS: usize = 10;
/// The most one start may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often both sides poll.
const POLL: Duration = Duration::from_millis(2);

async fn until<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "a start took over {DEADLINE:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn http_ok(port: u16) -> Option<()> {
    http_get(port, "/health")
        .await
        .filter(|(c, _)| *c == 200)
        .map(|_| ())
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
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    let node = MillNode::start(&ctd, &[("MILL_STOP_GRACE_MS", "200")]).await;
    node.load_image(&archive);
    let ctr_ns = "bench-ctr";
    ctd.ctr_ok(
        ctr_ns,
        &["images", "import", &archive.display().to_string()],
    );

    let (mut mill_running, mut mill_http, mut ctr_running, mut ctr_http) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..RUNS {
        // mill: write the Alloc, wait for its status, then for HTTP.
        let port = 21000 + i as u16;
        let name = format!("bench-{i}");
        let allocs = node.allocs();
        let began = Instant::now();
        node.create_alloc(&name, service_spec("mill.test/httpd:1", port))
            .await;
        until(|| {
            let allocs = allocs.clone();
            let name = name.clone();
            async move {
                let phase = allocs.get(&name).await.ok()?.status?.phase;
                matches!(phase, AllocPhase::Running | AllocPhase::Healthy).then_some(())
            }
        })
        .await;
        mill_running.push(began.elapsed());
        until(|| http_ok(port)).await;
        mill_http.push(began.elapsed());
        node.delete_alloc(&name).await;
        until(|| async { ctd.containers(&node.namespace).is_empty().then_some(()) }).await;

        // ctr run -d: the same image, host network, same port.
        let port = 22000 + i as u16;
        let id = format!("ctr-{i}");
        let began = Instant::now();
        let env = format!("PORT={port}");
        ctd.ctr_ok(
            ctr_ns,
            &[
                "run",
                "-d",
                "--net-host",
                "--env",
                &env,
                "mill.test/httpd:1",
                &id,
            ],
        );
        ctr_running.push(began.elapsed());
        until(|| http_ok(port)).await;
        ctr_http.push(began.elapsed());
        ctd.ctr(ctr_ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
        until(|| async {
            ctd.ctr(ctr_ns, &["tasks", "delete", &id])
                .status
                .success()
                .then_some(())
        })
        .await;
        ctd.ctr_ok(ctr_ns, &["containers", "rm", &id]);
    }
    let (mr, mh, cr, ch) = (
        median(mill_running),
        median(mill_http),
        median(ctr_running),
        median(ctr_http),
    );
    println!("container start, median of {RUNS} runs (image present, host network):");
    println!(
        "  to running:     mill {:7.1} ms   ctr run -d {:7.1} ms   ratio {:.2}",
        ms(mr),
        ms(cr),
        ms(mr) / ms(cr)
    );
    println!(
        "  to first HTTP:  mill {:7.1} ms   ctr run -d {:7.1} ms   ratio {:.2}",
        ms(mh),
        ms(ch),
        ms(mh) / ms(ch)
    );
}
