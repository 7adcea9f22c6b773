//! Service VIPs end to end on a real `mill init` node (controllers on, agent on a private
//! containerd, host networking): a container reaches another service through
//! `${service.NAME.address}` (its resolv.conf names the node's DNS, the name answers the
//! VIP, the node's VIP listener balances to the backend); connections through a VIP
//! spread over the replicas; a connection in flight survives its backend leaving the
//! table in a rollout, and the old alloc is stopped once that connection ends.

#[path = "support/mod.rs"]
mod support;

use kube::api::{Api, ListParams};
use mill_crds::{Alloc, AllocPhase, DesiredState, Service};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use support::cli::mill;
use support::containerd::Containerd;
use support::eventually;
use support::images;
use support::node::MillNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound for anything container-related on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(120);

/// A loopback address of this test's own, port 53 (what resolv.conf can name).
fn dns_addr() -> SocketAddr {
    let n = support::free_port();
    SocketAddr::from(([127, 53, (n >> 8) as u8, (n & 0xff) as u8 | 1], 53))
}

async fn deploy(node: &MillNode, file: &std::path::Path, text: &str) {
    std::fs::write(file, text).unwrap();
    let out = mill(&node.url(""), &["deploy", "-f", file.to_str().unwrap()]).await;
    if !out.status.success() {
        dump(node).await;
    }
    assert!(
        out.status.success(),
        "deploy failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The node's log, container logs and allocs, to say why something failed.
async fn dump(node: &MillNode) {
    eprintln!("--- node log ---\n{}", node.log());
    for entry in walkdir::WalkDir::new(&node.data_dir).into_iter().flatten() {
        let path = entry.path();
        if entry.file_type().is_file() && path.to_string_lossy().contains("logs") {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", path.display());
        }
    }
    let allocs: Api<Alloc> = Api::namespaced(node.client(), "default");
    if let Ok(list) = allocs.list(&ListParams::default()).await {
        eprintln!("allocs: {:#?}", list.items);
    }
}

async fn start_node(ctd: &Containerd, drain_grace: &str) -> MillNode {
    // A port range of this test's own, below Linux's ephemeral ports (32768 and up): an
    // outgoing connection's local port would make httpd's bind fail.
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 50);
    let dns = dns_addr().to_string();
    MillNode::start(
        ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_WATCHDOG_TICK_MS", "200"),
            ("MILL_PORT_RANGE", &ports),
            ("MILL_STOP_GRACE_MS", "1000"),
            ("MILL_DRAIN_GRACE_MS", drain_grace),
            ("MILL_DNS_ADDR", &dns),
        ],
    )
    .await
}

async fn vip_of(node: &MillNode, service: &str) -> String {
    let services: Api<Service> = Api::namespaced(node.client(), "default");
    eventually(WITHIN, &format!("the VIP of {service}"), || async {
        services.get(service).await.ok()?.status?.virtual_ip
    })
    .await
}

/// A service serving its alloc id at `/` (and `/health`).
fn whoami(name: &str, image: &str, replicas: u32, revision_note: &str) -> String {
    format!(
        r#"service "{name}" {{
  image    = "{image}"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo $MILL_ALLOC_ID > /www/index.html && echo {revision_note} > /www/health && exec httpd -f -p $PORT -h /www"]
  port     = 8080
  replicas = {replicas}
  cpu      = 0.1
  memory   = "32M"

  health {{
    path     = "/health"
    interval = "2s"
    timeout  = "1s"
  }}
}}
"#
    )
}

/// One HTTP/1.0 GET over a fresh connection to `addr`: the body.
async fn get(addr: &str) -> Option<String> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .ok()?
    .ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .ok()?
        .ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    ok(head).then(|| body.trim().to_string())
}

/// Whether an HTTP answer's status line says 200.
fn ok(answer: &str) -> bool {
    answer
        .lines()
        .next()
        .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"))
}

async fn allocs_of(node: &MillNode, service: &str) -> Vec<Alloc> {
    let allocs: Api<Alloc> = Api::namespaced(node.client(), "default");
    allocs
        .list(&ListParams::default().labels(&format!("mill.dev/owner={service}")))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_reaches_another_service_through_its_address() {
    let ctd = Containerd::start();
    let node = start_node(&ctd, "1000").await;
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    node.load_image(&archive);
    // `client` is healthy only once it fetched backend's page through
    // ${service.backend.address} (backend.mill:8080 → the VIP → backend's alloc): the
    // name resolved by busybox's own resolver (nslookup) against the resolv.conf mill
    // wrote, and the page fetched with nc: busybox-static's wget crashes without glibc's
    // NSS libraries in the image (images with a libc resolve and fetch as usual).
    let config = r#"service "backend" {
  image    = "mill.test/httpd:1"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo from-backend > /www/index.html && exec httpd -f -p $PORT -h /www"]
  port     = 8080
  cpu      = 0.1
  memory   = "32M"
  health {
    path     = "/"
    interval = "2s"
  }
}

service "client" {
  image    = "mill.test/httpd:1"
  command  = ["/bin/sh", "-c", "mkdir -p /www && host=$(echo $BACKEND | busybox cut -d: -f1) && port=$(echo $BACKEND | busybox cut -d: -f2) && until ip=$(busybox nslookup $host | busybox sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p' | busybox tail -n 1) && [ -n \"$ip\" ] && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc $ip $port > /www/got.txt && busybox grep -q from-backend /www/got.txt; do echo waiting for $host at $ip; sleep 0.5; done; echo fetched $BACKEND at $ip; exec httpd -f -p $PORT -h /www"]
  port     = 8081
  cpu      = 0.1
  memory   = "32M"
  env {
    BACKEND = "${service.backend.address}"
  }
  health {
    path     = "/got.txt"
    interval = "2s"
  }
  update {
    health_timeout = "100s"
  }
}
"#;
    let dir = tempfile::tempdir().unwrap();
    deploy(&node, &dir.path().join("pair.mill"), config).await;
    let client = allocs_of(&node, "client")
        .await
        .into_iter()
        .find(|a| {
            a.status
                .as_ref()
                .is_some_and(|s| s.phase == AllocPhase::Healthy)
        })
        .expect("a healthy client alloc");
    let address = client.status.unwrap().address.unwrap();
    let got = reqwest::get(format!("http://{address}/got.txt"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(got.contains("from-backend"), "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vip_connections_spread_and_one_in_flight_survives_its_backend_leaving() {
    let ctd = Containerd::start();
    // Long enough that only the end of our connection can explain the old alloc's stop.
    let node = start_node(&ctd, "600000").await;
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    node.load_image(&archive);
    let image = "mill.test/httpd:1";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vip.mill");
    let both = |steady_note: &str| {
        format!(
            "{}\n{}",
            whoami("spread", image, 2, "v1"),
            whoami("steady", image, 1, steady_note)
        )
    };
    deploy(&node, &file, &both("v1")).await;

    // Sequential connections through the VIP reach both replicas.
    let spread = format!("{}:8080", vip_of(&node, "spread").await);
    let replicas: BTreeSet<String> = allocs_of(&node, "spread")
        .await
        .iter()
        .map(|a| a.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(replicas.len(), 2);
    let seen = std::sync::Mutex::new(BTreeSet::new());
    eventually(
        WITHIN,
        "connections through the VIP on both replicas",
        || async {
            if let Some(id) = get(&spread).await {
                seen.lock().unwrap().insert(id);
            }
            (*seen.lock().unwrap() == replicas).then_some(())
        },
    )
    .await;

    // A connection to `steady`'s one alloc, the request not finished yet.
    let steady = format!("{}:8080", vip_of(&node, "steady").await);
    let old = allocs_of(&node, "steady").await;
    assert_eq!(old.len(), 1);
    let old = old[0].metadata.name.clone().unwrap();
    let mut held = tokio::net::TcpStream::connect(&steady).await.unwrap();
    held.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();

    // A rollout replaces it: new connections go to the new alloc, the old one is out of
    // every table (Routed=False) but keeps running while our connection is open.
    // Detached: the deploy ends only once the old alloc is stopped, after our connection.
    std::fs::write(&file, both("v2")).unwrap();
    let out = mill(
        &node.url(""),
        &["deploy", "--detach", "-f", file.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    eventually(WITHIN, "the old alloc out of routing", || async {
        let allocs = allocs_of(&node, "steady").await;
        let alloc = allocs
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some(&old))?;
        let unrouted = alloc
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Routed" && c.status == "False");
        (alloc.spec.draining && unrouted).then_some(())
    })
    .await;
    let fresh = get(&steady)
        .await
        .expect("a new connection through the VIP");
    assert_ne!(fresh, old, "new connections go to the new alloc");
    let old_alloc = allocs_of(&node, "steady")
        .await
        .into_iter()
        .find(|a| a.metadata.name.as_deref() == Some(&old))
        .expect("the old alloc still exists");
    assert_eq!(
        old_alloc.spec.desired_state,
        DesiredState::Running,
        "an alloc with a connection in flight is not stopped before the drain grace"
    );
    held.write_all(b"Host: vip\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), held.read_to_string(&mut answer))
        .await
        .expect("the held connection answers")
        .unwrap();
    assert!(ok(&answer), "{answer}");
    assert_eq!(answer.split_once("\r\n\r\n").unwrap().1.trim(), old);
    drop(held);

    // With nothing in flight any more, the drain ends long before its grace.
    eventually(WITHIN, "the old alloc stopped once idle", || async {
        let allocs = allocs_of(&node, "steady").await;
        allocs
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some(&old))
            .is_none_or(|a| a.spec.desired_state == DesiredState::Stopped)
            .then_some(())
    })
    .await;
}
