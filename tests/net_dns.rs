//! The node's DNS end to end: a real `mill init` node (controllers on, agent on a private
//! containerd) serving zone `mill.` on a loopback address of the test's own. A deployed
//! service's name answers its VIP (A) and its routed allocs (SRV, with their A records),
//! alloc ids answer their node, over UDP and TCP alike; a scale and a rollout show in the
//! answers.

#[path = "support/mod.rs"]
mod support;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use kube::api::{Api, ListParams};
use mill_crds::{Alloc, AllocPhase, Service};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
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

fn web(image: &str, replicas: u32, greeting: &str) -> String {
    format!(
        r#"service "web" {{
  image    = "{image}"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo {greeting} > /www/index.html && exec httpd -f -p $PORT -h /www"]
  port     = 8080
  replicas = {replicas}
  cpu      = 0.1
  memory   = "32M"

  health {{
    path     = "/"
    interval = "2s"
    timeout  = "1s"
  }}
}}
"#
    )
}

async fn deploy(node: &MillNode, file: &std::path::Path, text: &str) {
    std::fs::write(file, text).unwrap();
    let out = mill(&node.url(""), &["deploy", "-f", file.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "deploy failed:\n{}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
}

/// One DNS query, over TCP or UDP.
async fn query(server: SocketAddr, name: &str, kind: RecordType, tcp: bool) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(hickory_proto::op::Query::query(
        Name::from_ascii(name).unwrap(),
        kind,
    ));
    let bytes = message.to_vec().unwrap();
    let exchange = async {
        if tcp {
            let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
            stream
                .write_all(&(bytes.len() as u16).to_be_bytes())
                .await
                .unwrap();
            stream.write_all(&bytes).await.unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut answer).await.unwrap();
            answer
        } else {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.send_to(&bytes, server).await.unwrap();
            let mut answer = vec![0u8; 65_535];
            let (n, _) = socket.recv_from(&mut answer).await.unwrap();
            answer.truncate(n);
            answer
        }
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no DNS answer from {server} for {name} {kind}"));
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, message.metadata.id);
    answer
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// `(target, port)` of every SRV answer.
fn srv_records(message: &Message) -> BTreeSet<(String, u16)> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_ascii(), srv.port)),
            _ => None,
        })
        .collect()
}

/// The healthy, not draining allocs of `web` as `(NAME.mill., host port)`.
async fn healthy_web(node: &MillNode, revision: Option<i64>) -> BTreeSet<(String, u16)> {
    let allocs: Api<Alloc> = Api::namespaced(node.client(), "default");
    let list = allocs
        .list(&ListParams::default().labels("mill.dev/owner=web"))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|a| {
            a.status
                .as_ref()
                .is_some_and(|s| s.phase == AllocPhase::Healthy)
                && !a.spec.draining
                && revision.is_none_or(|r| a.spec.revision == r)
        })
        .map(|a| {
            (
                format!("{}.mill.", a.metadata.name.clone().unwrap()),
                a.spec.host_port.unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_answers_services_and_allocs_and_follows_scale_and_rollout() {
    let ctd = Containerd::start();
    let dns = dns_addr();
    // A port range of this test's own, below Linux's ephemeral ports (32768 and up): an
    // outgoing connection's local port would make httpd's bind fail.
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 50);
    let dns_flag = dns.to_string();
    let node = MillNode::start(
        &ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_WATCHDOG_TICK_MS", "200"),
            ("MILL_PORT_RANGE", &ports),
            ("MILL_STOP_GRACE_MS", "1000"),
            ("MILL_DRAIN_GRACE_MS", "1000"),
            ("MILL_DNS_ADDR", &dns_flag),
        ],
    )
    .await;
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    node.load_image(&archive);
    let image = "mill.test/httpd:1";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.mill");

    deploy(&node, &file, &web(image, 2, "v1")).await;
    let services: Api<Service> = Api::namespaced(node.client(), "default");
    let vip: Ipv4Addr = eventually(WITHIN, "the service's VIP", || async {
        let service = services.get("web").await.ok()?;
        service.status?.virtual_ip?.parse().ok()
    })
    .await;
    assert_eq!(vip.octets()[..2], [127, 77], "VIPs come from 127.77.0.0/16");

    for tcp in [false, true] {
        for name in ["web.mill.", "web.default.mill.", "WEB.Mill."] {
            let answer = query(dns, name, RecordType::A, tcp).await;
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert!(answer.metadata.authoritative, "mill. is mill's own zone");
            assert_eq!(a_records(&answer), vec![vip], "{name} over tcp={tcp}");
        }
    }

    // SRV: one record per healthy alloc, each target answering the node's address.
    let want = healthy_web(&node, None).await;
    assert_eq!(want.len(), 2);
    let answer = eventually(WITHIN, "SRV of both replicas", || async {
        let answer = query(dns, "web.mill.", RecordType::SRV, true).await;
        (srv_records(&answer) == want).then_some(answer)
    })
    .await;
    let additional: BTreeSet<String> = answer
        .additionals
        .iter()
        .filter(|r| matches!(r.data, RData::A(a) if a.0 == Ipv4Addr::LOCALHOST))
        .map(|r| r.name.to_ascii())
        .collect();
    let targets: BTreeSet<String> = want.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(additional, targets, "SRV targets come with their A records");
    for (target, _) in &want {
        let answer = query(dns, target, RecordType::A, false).await;
        assert_eq!(
            a_records(&answer),
            vec![Ipv4Addr::LOCALHOST],
            "an alloc id answers its node's address"
        );
    }
    let missing = query(dns, "nothing-here.mill.", RecordType::A, false).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    let other_namespace = query(dns, "web.elsewhere.mill.", RecordType::A, true).await;
    assert_eq!(
        other_namespace.metadata.response_code,
        ResponseCode::NXDomain
    );

    // A scale shows in SRV.
    deploy(&node, &file, &web(image, 3, "v1")).await;
    eventually(WITHIN, "SRV of three replicas", || async {
        let want = healthy_web(&node, None).await;
        let answer = query(dns, "web.mill.", RecordType::SRV, false).await;
        (want.len() == 3 && srv_records(&answer) == want).then_some(())
    })
    .await;

    // A rollout: in the end SRV names exactly the new revision's allocs; the VIP stays.
    deploy(&node, &file, &web(image, 3, "v2")).await;
    let revision = services
        .get("web")
        .await
        .unwrap()
        .status
        .and_then(|s| s.revision)
        .unwrap();
    eventually(WITHIN, "SRV of the new revision only", || async {
        let want = healthy_web(&node, Some(revision)).await;
        let answer = query(dns, "web.mill.", RecordType::SRV, true).await;
        (want.len() == 3 && srv_records(&answer) == want).then_some(())
    })
    .await;
    let answer = query(dns, "web.mill.", RecordType::A, false).await;
    assert_eq!(a_records(&answer), vec![vip], "a rollout keeps the VIP");
}
