//! The ingress proxy end to end: a real `mill init` node (controllers on, agent on a
//! private containerd, host networking) with `--http-addr` on a loopback port of the
//! test's own, and busybox containers deployed through `mill deploy`:
//! - requests route by Host (any case, with a port) and the longest path prefix, over
//!   HTTP/1.1 and HTTP/2 (h2c); unknown hosts get 404, a route without backends 503; the
//!   backend sees `X-Forwarded-For/Proto/Host` (busybox httpd's CGI echoes its
//!   environment); the per-route metrics count them;
//! - a rolling update under a steady load (keep-alive and fresh connections) fails no
//!   request;
//! - a backend whose server died while the table still lists it is retried on another;
//! - a WebSocket (a busybox `nc` shell script answering the upgrade, then `cat`) is
//!   tunnelled through a route with `websocket = true` and survives an unrelated route
//!   change; a route without it refuses the upgrade.

#[path = "support/mod.rs"]
mod support;

use kube::api::{Api, ListParams};
use mill_crds::{Alloc, AllocPhase};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cli::mill;
use support::containerd::Containerd;
use support::eventually;
use support::images;
use support::node::{MillNode, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything container-related on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(120);
const IMAGE: &str = "mill.test/httpd:1";

/// A loopback address of this test's own, port 53 (what resolv.conf can name).
fn dns_addr() -> SocketAddr {
    let n = support::free_port();
    SocketAddr::from(([127, 53, (n >> 8) as u8, (n & 0xff) as u8 | 1], 53))
}

/// A node and its proxy's address.
struct Node {
    node: MillNode,
    proxy: String,
    dir: tempfile::TempDir,
    _ctd: Containerd,
}

impl Node {
    async fn start() -> Node {
        let ctd = Containerd::start();
        // Below the ephemeral range, so no port of the node, proxy or client collides.
        let first = 20_000 + support::free_port() % 12_000;
        let ports = format!("{first}-{}", first + 50);
        let dns = dns_addr().to_string();
        let proxy = format!("127.0.0.1:{}", support::free_port());
        let node = MillNode::start(
            &ctd,
            &[
                ("MILL_RUN_CONTROLLERS", "1"),
                ("MILL_WATCHDOG_TICK_MS", "200"),
                ("MILL_PORT_RANGE", &ports),
                ("MILL_STOP_GRACE_MS", "1000"),
                ("MILL_DRAIN_GRACE_MS", "10000"),
                ("MILL_DNS_ADDR", &dns),
                ("MILL_HTTP_ADDR", &proxy),
            ],
        )
        .await;
        let archive = images::build(&images::httpd(IMAGE), ctd.dir.path());
        node.load_image(&archive);
        Node {
            node,
            proxy,
            dir: tempfile::tempdir().unwrap(),
            _ctd: ctd,
        }
    }

    /// `mill deploy` of `text`; asserts it succeeded.
    async fn deploy(&self, text: &str) {
        let file = self.dir.path().join("proxy.mill");
        std::fs::write(&file, text).unwrap();
        let out = mill(
            &self.node.url(""),
            &["deploy", "-f", file.to_str().unwrap()],
        )
        .await;
        if !out.status.success() {
            self.dump().await;
        }
        assert!(
            out.status.success(),
            "deploy failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    /// The node's log, container logs and allocs, to say why something failed.
    async fn dump(&self) {
        eprintln!("--- node log ---\n{}", self.node.log());
        for entry in walkdir::WalkDir::new(&self.node.data_dir)
            .into_iter()
            .flatten()
        {
            let path = entry.path();
            if entry.file_type().is_file() && path.to_string_lossy().contains("logs") {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("--- {} ---\n{log}", path.display());
            }
        }
        if let Ok(list) = self.allocs().list(&ListParams::default()).await {
            eprintln!("allocs: {:#?}", list.items);
        }
    }

    fn allocs(&self) -> Api<Alloc> {
        Api::namespaced(self.node.client(), "default")
    }

    async fn allocs_of(&self, service: &str) -> Vec<Alloc> {
        self.allocs()
            .list(&ListParams::default().labels(&format!("mill.dev/owner={service}")))
            .await
            .unwrap()
            .items
    }

    /// GET through the proxy with `Host: host`: status and body, `None` on a transport
    /// error.
    async fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        get_with(&reqwest::Client::new(), &self.proxy, host, path, &[]).await
    }
}

async fn get_with(
    client: &reqwest::Client,
    proxy: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut request = client
        .get(format!("http://{proxy}{path}"))
        .header(reqwest::header::HOST, host)
        .timeout(Duration::from_secs(10));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// A busybox httpd service writing `files` (path under /www → content) before it
/// serves; `extra` is more HCL inside the block (routes, health, replicas).
fn httpd_service(name: &str, files: &[(&str, &str)], extra: &str) -> String {
    let mut script = String::from("mkdir -p /www/cgi-bin && echo ok > /www/health");
    for (path, content) in files {
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        script.push_str(&format!(
            " && mkdir -p /www/{dir} && echo {content} > /www/{path}"
        ));
    }
    script.push_str(" && printf '#!/bin/sh\\\\necho Content-Type: text/plain\\\\necho\\\\nenv\\\\n' > /www/cgi-bin/env && busybox chmod +x /www/cgi-bin/env && exec httpd -f -p $PORT -h /www");
    format!(
        r#"service "{name}" {{
  image    = "{IMAGE}"
  command  = ["/bin/sh", "-c", "{script}"]
  port     = 8080
  cpu      = 0.1
  memory   = "32M"
{extra}
}}
"#
    )
}

fn route(host: &str, path: &str) -> String {
    format!("  route \"{host}\" {{\n    path = \"{path}\"\n  }}\n")
}

const HEALTH: &str =
    "  health {\n    path     = \"/health\"\n    interval = \"2s\"\n    timeout  = \"1s\"\n  }\n";

#[tokio::test(flavor = "multi_thread")]
async fn requests_route_by_host_and_longest_prefix_with_forwarded_headers() {
    let node = Node::start().await;
    let front = httpd_service(
        "front",
        &[
            ("index.html", "front"),
            ("api/who.txt", "front-not-api"),
            ("apix", "front-apix"),
        ],
        &format!("{}{HEALTH}", route("shop.test", "/")),
    );
    let api = httpd_service(
        "api",
        &[("api/who.txt", "api")],
        &format!("{}{HEALTH}", route("shop.test", "/api")),
    );
    let other = httpd_service(
        "other",
        &[("index.html", "other")],
        &format!("{}{HEALTH}", route("other.test", "/")),
    );
    let empty = httpd_service(
        "empty",
        &[],
        &format!("  replicas = 0\n{}", route("empty.test", "/")),
    );
    node.deploy(&format!("{front}\n{api}\n{other}\n{empty}"))
        .await;

    // The deploy returns once the allocs are routed on every node: the proxy has them.
    let expect = [
        ("shop.test", "/", 200, "front"),
        ("SHOP.Test:80", "/", 200, "front"),
        ("shop.test.", "/api/who.txt", 200, "api"),
        ("shop.test", "/apix", 200, "front-apix"),
        ("other.test", "/", 200, "other"),
    ];
    for (host, path, status, body) in expect {
        let got = node.get(host, path).await;
        let got = got.map(|(s, b)| (s, b.trim().to_string()));
        assert_eq!(
            got,
            Some((status, body.to_string())),
            "GET {path} with Host {host}"
        );
    }
    let (status, body) = node.get("nowhere.test", "/").await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no route for nowhere.test/"), "{body}");
    let (status, body) = node.get("empty.test", "/").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("service empty has no healthy instance"),
        "{body}"
    );

    // The backend sees where the request came from.
    let (status, env) = get_with(
        &reqwest::Client::new(),
        &node.proxy,
        "shop.test:8000",
        "/cgi-bin/env",
        &[
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{env}");
    for line in [
        "HTTP_X_FORWARDED_FOR=10.9.9.9, 127.0.0.1",
        "HTTP_X_FORWARDED_PROTO=http",
        "HTTP_X_FORWARDED_HOST=shop.test:8000",
        "HTTP_HOST=shop.test:8000",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing in:\n{env}");
    }

    // HTTP/2 with prior knowledge routes by the :authority.
    assert_eq!(
        h2_get(&node.proxy, "http://shop.test/api/who.txt").await,
        (200, "api\n".into())
    );

    // The per-route metrics counted them.
    let metrics = reqwest::Client::new()
        .get(node.node.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"mill_proxy_requests_total{namespace="default",service="api",route="shop.test/api",code="2xx"}"#,
        r#"mill_proxy_requests_total{namespace="default",service="empty",route="empty.test/",code="5xx"} 1"#,
        r#"mill_proxy_latency_seconds_count{namespace="default",service="front",route="shop.test/"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing in:\n{metrics}");
    }
}

/// One GET over HTTP/2 (h2c, prior knowledge): status and body.
async fn h2_get(proxy: &str, uri: &str) -> (u16, String) {
    use hyper::body::Body;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake with the proxy");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(String::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .expect("an HTTP/2 answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.expect("the body reads").into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// What a load generator saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
    bodies: Mutex<BTreeSet<String>>,
}

/// Requests through the proxy at about `rate` per second from `workers` loops, half of
/// them over one keep-alive connection each, half on a new connection per request, until
/// `stop` is set.
fn load(
    proxy: String,
    host: &'static str,
    rate: u32,
    workers: u32,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let proxy = proxy.clone();
            let stop = stop.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let fresh = w % 2 == 1;
                let client = if fresh {
                    reqwest::Client::builder().pool_max_idle_per_host(0)
                } else {
                    reqwest::Client::builder()
                }
                .build()
                .unwrap();
                let mut tick =
                    tokio::time::interval(Duration::from_secs(1) * workers / rate.max(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let kind = if fresh {
                        "new connection"
                    } else {
                        "keep-alive"
                    };
                    match get_with(&client, &proxy, host, "/", &[]).await {
                        Some((200..=299, body)) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let mut bodies = tally.bodies.lock().unwrap();
                            if !bodies.contains(body.trim()) {
                                bodies.insert(body.trim().to_string());
                            }
                        }
                        Some((status, body)) => tally
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("{kind}: {status} {}", body.trim())),
                        None => tally
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("{kind}: transport error")),
                    }
                }
            })
        })
        .collect()
}

fn web(note: &str) -> String {
    format!(
        r#"service "web" {{
  image    = "{IMAGE}"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo {note} > /www/index.html && echo ok > /www/health && exec httpd -f -p $PORT -h /www"]
  port     = 8080
  replicas = 3
  cpu      = 0.1
  memory   = "32M"
{HEALTH}{}
}}
"#,
        route("web.test", "/")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_under_load_fails_no_request() {
    let node = Node::start().await;
    node.deploy(&web("v1")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let began = Instant::now();
    let workers = load(
        node.proxy.clone(),
        "web.test",
        300,
        8,
        stop.clone(),
        tally.clone(),
    );
    let at_least = |n: usize| {
        let tally = tally.clone();
        async move {
            eventually(WITHIN, &format!("{n} answered requests"), || async {
                (tally.ok.load(Ordering::Relaxed) >= n).then_some(())
            })
            .await
        }
    };
    at_least(200).await;
    // Every replica replaced, one at a time, while the load runs.
    node.deploy(&web("v2")).await;
    let after = tally.ok.load(Ordering::Relaxed);
    at_least(after + 200).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let took = began.elapsed();
    let ok = tally.ok.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap().clone();
    let bodies = tally.bodies.lock().unwrap().clone();
    eprintln!(
        "{ok} requests answered 2xx, {} failed, in {took:?} ({:.0} req/s)",
        failures.len(),
        ok as f64 / took.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(20)]
    );
    assert_eq!(
        bodies,
        BTreeSet::from(["v1".to_string(), "v2".to_string()]),
        "the load saw both revisions"
    );
    let allocs = node.allocs_of("web").await;
    let running: Vec<&Alloc> = allocs
        .iter()
        .filter(|a| {
            a.status
                .as_ref()
                .is_some_and(|s| s.phase == AllocPhase::Healthy)
        })
        .collect();
    assert_eq!(running.len(), 3, "three healthy replicas after the rollout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_whose_server_died_is_retried_on_another() {
    let node = Node::start().await;
    // Each replica serves its alloc id; GET /cgi-bin/die makes that replica's httpd exit
    // while its container keeps running (and healthy: the next probe is a minute away),
    // so the routing table still lists a backend that refuses connections.
    let die = "printf '#!/bin/sh\\\\necho Content-Type: text/plain\\\\necho\\\\necho dying\\\\nbusybox touch /tmp/die\\\\n' > /www/cgi-bin/die && busybox chmod +x /www/cgi-bin/die";
    let config = format!(
        r#"service "flaky" {{
  image    = "{IMAGE}"
  command  = ["/bin/sh", "-c", "mkdir -p /www/cgi-bin && echo $MILL_ALLOC_ID > /www/index.html && echo ok > /www/health && {die}; httpd -f -p $PORT -h /www & pid=$!; while [ ! -e /tmp/die ]; do sleep 0.1; done; kill $pid; exec sleep 100000"]
  port     = 8080
  replicas = 2
  cpu      = 0.1
  memory   = "32M"
  health {{
    path     = "/health"
    interval = "60s"
    timeout  = "1s"
  }}
{}
}}
"#,
        route("flaky.test", "/")
    );
    node.deploy(&config).await;
    let allocs = node.allocs_of("flaky").await;
    let address = |a: &Alloc| a.status.as_ref().unwrap().address.clone().unwrap();
    assert_eq!(allocs.len(), 2);

    let (status, body) = node.get("flaky.test", "/cgi-bin/die").await.unwrap();
    assert_eq!((status, body.trim()), (200, "dying"));
    let dead = eventually(WITHIN, "one replica refusing connections", || async {
        for alloc in &allocs {
            if TcpStream::connect(address(alloc)).await.is_err() {
                return Some(alloc.metadata.name.clone().unwrap());
            }
        }
        None
    })
    .await;

    // Sequential requests take the replicas in turn; every one that picks the dead one
    // is retried on the live one.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for i in 0..40 {
        let got = get_with(&client, &node.proxy, "flaky.test", "/", &[]).await;
        let (status, body) = got.unwrap_or_else(|| panic!("request {i}: transport error"));
        assert_eq!(status, 200, "request {i}: {body}");
        assert_ne!(
            body.trim(),
            dead,
            "request {i} answered by the dead replica"
        );
    }
    let still = node.allocs().get(&dead).await.unwrap();
    assert_eq!(
        still.status.unwrap().phase,
        AllocPhase::Healthy,
        "the dead replica stayed in the table throughout, so the retries were exercised"
    );
}

/// A shell script that answers a WebSocket upgrade (with the right accept key) and then
/// echoes every byte: what `busybox nc -ll -e` runs per connection.
const WS_SCRIPT: &str = r#"key=
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(printf '%s' "$line" | busybox cut -d' ' -f2) ;; esac
done
accept=$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "$key" | busybox sha1sum | busybox cut -d' ' -f1 | busybox xxd -r -p | busybox base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
exec cat
"#;

/// `text` as an HCL string literal's content.
fn hcl_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn ws_config(plain_routes: &[&str]) -> String {
    let ws = format!(
        r#"service "ws" {{
  image    = "{IMAGE}"
  command  = ["/bin/sh", "-c", "printf '%s' \"$WS\" > /ws.sh && exec busybox nc -ll -p $PORT -e /bin/sh /ws.sh"]
  port     = 8080
  cpu      = 0.1
  memory   = "32M"
  env {{
    WS = "{}"
  }}
  route "ws.test" {{
    websocket = true
  }}
}}
"#,
        hcl_escape(WS_SCRIPT)
    );
    let routes: String = plain_routes.iter().map(|h| route(h, "/")).collect();
    let plain = httpd_service(
        "plain",
        &[("index.html", "plain")],
        &format!("{routes}{HEALTH}"),
    );
    format!("{ws}\n{plain}")
}

/// Sends a WebSocket upgrade for `host` through the proxy; the stream and the answer's
/// head.
async fn upgrade(proxy: &str, host: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("the proxy answers the upgrade")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

async fn echo(stream: &mut TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("the tunnel echoes")
        .expect("the tunnel stays open");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_survives_route_changes_and_needs_a_route_that_allows_it() {
    let node = Node::start().await;
    node.deploy(&ws_config(&["plain.test"])).await;

    // nc listens a moment after the container starts (it has no health check).
    let (mut tunnel, head) = eventually(WITHIN, "the WebSocket upgrade answered", || async {
        let (stream, head) = upgrade(&node.proxy, "ws.test").await;
        head.starts_with("HTTP/1.1 101").then_some((stream, head))
    })
    .await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    // RFC 6455's example key and its accept value: the backend's own handshake came through.
    assert!(
        lower.contains(&"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_ascii_lowercase()),
        "{head}"
    );
    assert_eq!(echo(&mut tunnel, "hello\n").await, "hello\n");

    // An unrelated route change (a new route on another service) swaps the table.
    node.deploy(&ws_config(&["plain.test", "plain2.test"]))
        .await;
    eventually(WITHIN, "the new route served", || async {
        let got = node.get("plain2.test", "/").await?;
        (got.0 == 200 && got.1.trim() == "plain").then_some(())
    })
    .await;
    assert_eq!(echo(&mut tunnel, "still here\n").await, "still here\n");

    // A route without `websocket = true` refuses the upgrade.
    let (_, head) = upgrade(&node.proxy, "plain.test").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(echo(&mut tunnel, "bye\n").await, "bye\n");
}
