//! DNS throughput: dnsperf (Debian's `dnsperf`) against a real `mill init` node's DNS for
//! `NAME.mill` A (the service VIP) and SRV (three routed allocs, with their A records in
//! the additional section), over UDP, for [`SECONDS`] each. Prints queries/s, average
//! latency and lost queries per query type. Reference: CoreDNS's published ~33,700 QPS on
//! 2 vCPUs. The node runs without containerd: the bench writes the Service and its allocs
//! (placed on a second, fictional node) the way the controllers and that node's agent
//! would. Run with `cargo bench --bench dns`.

#[path = "../tests/support/mod.rs"]
mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use mill_crds::{Alloc, Node, Service};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::node::MillNode;

/// How long dnsperf runs per query type.
const SECONDS: u32 = 10;
/// dnsperf clients (sockets), threads and outstanding queries.
const CLIENTS: u32 = 8;
const THREADS: u32 = 2;
const OUTSTANDING: u32 = 500;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    support::require(&["dnsperf"]);
    let n = support::free_port();
    let dns = SocketAddr::from(([127, 53, (n >> 8) as u8, (n & 0xff) as u8 | 1], 53));
    let dns_flag = dns.to_string();
    let node = MillNode::start_on(
        std::path::Path::new("/nonexistent/containerd.sock"),
        &[("MILL_DNS_ADDR", &dns_flag), ("RUST_LOG", "warn")],
    )
    .await;
    let client = node.client();
    let pp = PatchParams::default();

    let nodes: Api<Node> = Api::all(client.clone());
    let other: Node = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Node",
        "metadata": {"name": "node-2"},
        "spec": {"raftId": 2, "address": "127.0.0.2", "apiAddress": "127.0.0.2:4400"},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &other).await.unwrap();

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"image": "busybox", "port": 8080},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let status = json!({"status": {"virtualIp": "127.77.0.10"}});
    services
        .patch_status("web", &pp, &Patch::Merge(&status))
        .await
        .unwrap();

    let allocs: Api<Alloc> = Api::namespaced(client.clone(), "default");
    for i in 1..=3u16 {
        let name = format!("web-1-{i}");
        let port = 20_000 + i;
        let alloc: Alloc = serde_json::from_value(json!({
            "apiVersion": "mill.dev/v1", "kind": "Alloc",
            "metadata": {"name": name, "labels": {"mill.dev/owner": "web"}},
            "spec": {
                "owner": {"kind": "service", "name": "web"}, "service": "web", "revision": 1,
                "template": {"image": "busybox", "cpu": 0.1, "memory": "32M", "port": 8080},
                "nodeName": "node-2", "hostPort": port,
            },
        }))
        .unwrap();
        allocs.create(&PostParams::default(), &alloc).await.unwrap();
        let status =
            json!({"status": {"phase": "healthy", "address": format!("127.0.0.2:{port}")}});
        allocs
            .patch_status(&name, &pp, &Patch::Merge(&status))
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    // The table is current once dnsperf's own probe answers three SRV records.
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv_count(&dns).await < 3 {
        assert!(
            Instant::now() < deadline,
            "mill's DNS on {dns} did not answer three SRV records for web.mill within 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "dnsperf against mill's DNS ({dns}), {SECONDS}s per type, {CLIENTS} clients, {THREADS} threads, {OUTSTANDING} outstanding"
    );
    for (label, line) in [
        ("web.mill A", "web.mill A"),
        ("web.mill SRV", "web.mill SRV"),
    ] {
        let file = dir.path().join("queries.txt");
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let out = Command::new("dnsperf")
            .args(["-s", &dns.ip().to_string(), "-p", &dns.port().to_string()])
            .arg("-d")
            .arg(&file)
            .args(["-l", &SECONDS.to_string()])
            .args(["-c", &CLIENTS.to_string(), "-T", &THREADS.to_string()])
            .args(["-q", &OUTSTANDING.to_string()])
            .output()
            .expect("dnsperf runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "dnsperf failed:\n{text}");
        let field = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| format!("{name}: ? (dnsperf said:\n{text})"))
        };
        println!(
            "{label:14} {} | {} | {}",
            field("Queries per second:"),
            field("Average Latency"),
            field("Queries lost:")
        );
    }
    println!("reference: CoreDNS's published ~33,700 QPS on 2 vCPUs");
    drop(node);
}

/// How many SRV records `web.mill` answers, by one raw UDP query.
async fn srv_count(dns: &SocketAddr) -> usize {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("web.mill.").unwrap(),
        RecordType::SRV,
    ));
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return 0;
    };
    if socket.send_to(&query.to_vec().unwrap(), dns).await.is_err() {
        return 0;
    }
    let mut buffer = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer)).await {
        Ok(Ok((n, _))) => Message::from_vec(&buffer[..n])
            .map(|m| m.answers.len())
            .unwrap_or(0),
        _ => 0,
    }
}
