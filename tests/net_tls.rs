//! TLS on the ingress end to end: a real `mill init` node with `--http-addr` and
//! `--https-addr` on loopback ports of the test's own and `--acme-directory` pointing at
//! a real pebble (Debian's `pebble`) on loopback:
//! - pebble resolves the route host through `pebble-challtestsrv`'s mock DNS (every A
//!   query answers 127.0.0.1, no AAAA) and validates HTTP-01 on the node's `--http-addr`
//!   port (pebble's `httpPort`); its own directory certificate comes from a CA the test
//!   makes with rcgen, which the node trusts through `MILL_ACME_CA_FILE`;
//! - the route host's certificate is issued by pebble's intermediate (fetched from
//!   pebble's management endpoint) and verifies to pebble's root with the right SNI, both
//!   with rustls and with curl over HTTP/1.1 and HTTP/2 (ALPN); the backend (a raw TCP
//!   responder of the test, written as the alloc's address the way the agent would)
//!   sees `X-Forwarded-Proto: https`;
//! - an unknown SNI gets a self-signed certificate for that name;
//! - with the renewal window forced wider than pebble's validity
//!   (`MILL_ACME_RENEW_BEFORE_SECS`) the certificate is renewed: a new serial is served.
//!
//! No containers: the test writes the Service and a healthy Alloc itself. Fails loudly
//! when pebble or curl is missing.

#[path = "support/mod.rs"]
mod support;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::eventually;
use support::node::{MillNode, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WITHIN: Duration = Duration::from_secs(120);
const HOST: &str = "app.mill-tls.test";

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// pebble and its mock DNS, with the CA the test made for pebble's HTTPS.
struct Pebble {
    dir: tempfile::TempDir,
    directory: String,
    management: String,
    _dns: Process,
    _pebble: Process,
}

impl Pebble {
    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Starts pebble validating HTTP-01 on `http_port`.
    async fn start(http_port: u16) -> Pebble {
        let listen = format!("127.0.0.1:{}", support::free_port());
        Pebble::start_at(tempfile::tempdir().unwrap(), &listen, http_port).await
    }

    /// Starts pebble in `dir` with its directory on `listen`, validating HTTP-01 on
    /// `http_port`; the CA of its HTTPS is `dir/ca.pem`.
    async fn start_at(dir: tempfile::TempDir, listen: &str, http_port: u16) -> Pebble {
        // pebble's own HTTPS: a leaf for localhost/127.0.0.1 signed by a test CA.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "net_tls test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();

        let dns_port = free_udp_port();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args([
                "-management",
                &format!("127.0.0.1:{}", support::free_port()),
            ])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log("dns.log"))
            .stderr(log("dns.log"))
            .spawn()
            .expect("pebble-challtestsrv starts");
        let dns = Process(dns);

        let management = format!("127.0.0.1:{}", support::free_port());
        let config = json!({"pebble": {
            "listenAddress": listen,
            "managementListenAddress": management,
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": support::free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleeps before validation, no spurious badNonce, and a fresh
            // authorization (so a fresh HTTP-01 challenge) for every order.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.log"))
            .spawn()
            .expect("pebble starts");
        let pebble = Pebble {
            directory: format!("https://{listen}/dir"),
            management: format!("https://{management}"),
            _dns: dns,
            _pebble: Process(pebble),
            dir,
        };
        let url = pebble.directory.clone();
        eventually(WITHIN, "pebble's directory to serve", || async {
            curl(&["--cacert", path(&pebble.ca_file()), &url]).ok()
        })
        .await;
        pebble
    }

    /// A PEM from pebble's management endpoint (`/roots/0`, `/intermediates/0`).
    fn management(&self, what: &str) -> String {
        let url = format!("{}/{what}", self.management);
        curl(&["--cacert", path(&self.ca_file()), &url])
            .unwrap_or_else(|e| panic!("pebble's {url}: {e}"))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

/// Runs curl (silent, failing on HTTP errors) and returns its stdout.
fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A backend answering every request with the request's head as the body.
async fn echo_backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    head.len()
                );
                stream.write_all(answer.as_bytes()).await.ok();
                stream.write_all(&head).await.ok();
                stream.shutdown().await.ok();
            });
        }
    });
    port
}

/// What a TLS handshake with `sni` showed: the chain and the ALPN protocol.
struct Handshake {
    chain: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
}

/// Accepts any certificate: to look at the self-signed fallback.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS handshake with `addr` for `sni`, verifying against `root` (or accepting any
/// certificate when `None`).
async fn handshake(addr: &str, sni: &str, root: Option<&str>) -> Result<Handshake, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match root {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    Ok(Handshake {
        chain: session
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect(),
        alpn: session.alpn_protocol().map(|p| p.to_vec()),
    })
}

/// (serial, not-after, issuer, subject, DNS names) of a DER certificate.
fn facts(der: &[u8]) -> (String, i64, String, String, Vec<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        cert.raw_serial_as_string(),
        cert.validity().not_after.timestamp(),
        cert.issuer().to_string(),
        cert.subject().to_string(),
        names,
    )
}

async fn send(http: &reqwest::Client, method: reqwest::Method, url: String, body: Value) -> Value {
    let mut request = http.request(method, &url).bearer_auth(TOKEN);
    if url.ends_with("/status") {
        request = request
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string());
    } else {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status}: {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn route_hosts_get_acme_certificates_by_sni_with_a_self_signed_fallback_and_renewal() {
    for tool in ["pebble", "pebble-challtestsrv", "curl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed; run scripts/setup (Debian packages pebble, curl)"
        );
    }
    let http_port = support::free_port();
    let https = format!("127.0.0.1:{}", support::free_port());
    let pebble = Pebble::start(http_port).await;
    let n = support::free_port();
    let dns = SocketAddr::from(([127, 55, (n >> 8) as u8, (n & 0xff) as u8 | 1], 53)).to_string();
    let http_addr = format!("127.0.0.1:{http_port}");
    let ca_file = pebble.ca_file();
    let no_containerd = pebble.dir.path().join("no-containerd.sock");
    let node = MillNode::start_on(
        &no_containerd,
        &[
            ("MILL_DNS_ADDR", &dns),
            ("MILL_HTTP_ADDR", &http_addr),
            ("MILL_HTTPS_ADDR", &https),
            ("MILL_ACME_DIRECTORY", &pebble.directory),
            ("MILL_ACME_EMAIL", "ops@mill-tls.test"),
            ("MILL_ACME_CA_FILE", path(&ca_file)),
            ("MILL_ACME_POLL_MS", "1000"),
            ("MILL_ACME_RETRY_MS", "1000"),
            // Wider than any certificate pebble issues: every certificate is due again.
            ("MILL_ACME_RENEW_BEFORE_SECS", "3153600000"),
        ],
    )
    .await;

    // A service routing HOST to the test's backend, as controllers and agent would write it.
    let backend = echo_backend().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = node.url("/apis/mill.dev/v1/namespaces/default");
    send(
        &http,
        reqwest::Method::POST,
        format!("{base}/services"),
        json!({
            "apiVersion": "mill.dev/v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"image": "busybox", "port": 8080, "routes": [{"host": HOST, "path": "/"}]},
        }),
    )
    .await;
    send(
        &http,
        reqwest::Method::POST,
        format!("{base}/allocs"),
        json!({
            "apiVersion": "mill.dev/v1", "kind": "Alloc",
            "metadata": {"name": "web-1-1", "labels": {"mill.dev/owner": "web"}},
            "spec": {
                "owner": {"kind": "service", "name": "web"}, "service": "web", "revision": 1,
                "template": {"image": "busybox", "cpu": 0.1, "memory": "32M", "port": 8080},
                "nodeName": "node-1", "hostPort": backend,
            },
        }),
    )
    .await;
    send(
        &http,
        reqwest::Method::PATCH,
        format!("{base}/allocs/web-1-1/status"),
        json!({"status": {"phase": "healthy", "address": format!("127.0.0.1:{backend}")}}),
    )
    .await;

    // Pebble's CA: the served chain must verify to its root, through its intermediate.
    let root = pebble.management("roots/0");
    let intermediate = pebble.management("intermediates/0");
    let intermediate_der = CertificateDer::from_pem_slice(intermediate.as_bytes()).unwrap();
    let (_, _, _, intermediate_subject, _) = facts(&intermediate_der);

    let first = eventually(
        WITHIN,
        "a certificate from pebble served for HOST",
        || async { handshake(&https, HOST, Some(&root)).await.ok() },
    )
    .await;
    assert_eq!(first.alpn.as_deref(), Some(&b"h2"[..]), "ALPN offers h2");
    let (serial, not_after, issuer, _, names) = facts(&first.chain[0]);
    assert_eq!(
        issuer, intermediate_subject,
        "issued by pebble's intermediate"
    );
    assert_eq!(names, [HOST]);
    assert_eq!(
        first.chain.get(1).map(|c| c.as_ref()),
        Some(intermediate_der.as_ref()),
        "the chain carries pebble's intermediate"
    );

    // curl verifies the chain on its own, over HTTP/1.1 and HTTP/2, and the backend is
    // told the request came over HTTPS.
    let root_file = pebble.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let port = https.rsplit(':').next().unwrap();
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let url = format!("https://{HOST}:{port}/hello");
    for version in ["--http1.1", "--http2"] {
        let body = curl(&[
            version,
            "--resolve",
            &resolve,
            "--cacert",
            path(&root_file),
            &url,
        ])
        .unwrap_or_else(|e| panic!("curl {version} {url}: {e}"));
        let body = body.to_ascii_lowercase();
        assert!(
            body.contains("x-forwarded-proto: https"),
            "{version}: the backend saw {body}"
        );
        assert!(body.starts_with("get /hello http/1.1"), "{body}");
    }

    // An SNI without a certificate gets a self-signed one for that name.
    let unknown = "unknown.mill-tls.test";
    assert!(
        handshake(&https, unknown, Some(&root)).await.is_err(),
        "the fallback must not verify against pebble's root"
    );
    let fallback = handshake(&https, unknown, None).await.unwrap();
    let (_, _, fallback_issuer, fallback_subject, fallback_names) = facts(&fallback.chain[0]);
    assert_eq!(fallback_issuer, fallback_subject, "self-signed");
    assert_eq!(fallback_names, [unknown]);
    assert_eq!(fallback.chain.len(), 1);

    // Renewal: the window covers the whole validity, so the leader orders again and every
    // node's proxy swaps to the new certificate.
    let renewed = eventually(WITHIN, "a renewed certificate for HOST", || async {
        let shown = handshake(&https, HOST, Some(&root)).await.ok()?;
        let facts = facts(&shown.chain[0]);
        (facts.0 != serial).then_some(facts)
    })
    .await;
    assert!(renewed.1 >= not_after, "the renewal expires no earlier");
    assert_eq!(renewed.2, intermediate_subject);

    // Keys stay out of the logs; the certificate's Secret lives in mill-system.
    let secret = send(
        &http,
        reqwest::Method::GET,
        node.url(&format!(
            "/api/v1/namespaces/mill-system/secrets/tls-{HOST}"
        )),
        Value::Null,
    )
    .await;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(secret["data"]["tls.key"].is_string());
    let log = node.log();
    assert!(!log.contains("PRIVATE KEY"), "a key reached the node's log");
    assert!(
        log.contains(&format!("ACME: certificate for {HOST} issued")),
        "{log}\npebble:\n{}",
        pebble.log()
    );
}

/// One `mill` process of a 3-node cluster, with ingress addresses of its own.
struct Member {
    api: String,
    https: String,
    http_port: u16,
    log: PathBuf,
    _child: Process,
}

impl Member {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn start(dir: &Path, i: u8, join: Option<&str>, env: &[(&str, &str)]) -> Member {
        let api = format!("127.0.0.1:{}", support::free_port());
        let http_port = support::free_port();
        let https = format!("127.0.0.1:{}", support::free_port());
        let n = support::free_port();
        let dns = SocketAddr::from(([127, 56, (n >> 8) as u8, (n as u8 & 0xf0) | (i + 1)], 53));
        let log = dir.join(format!("node-{i}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_mill"));
        command.arg("--data-dir").arg(dir.join(format!("node-{i}")));
        match join {
            None => command.args(["init", "--token", TOKEN]),
            Some(member) => command.args(["join", member, "--token", TOKEN]),
        };
        command
            .args(["--advertise", "127.0.0.1", "--api-addr", &api])
            .args(["--dns-addr", &dns.to_string()])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--https-addr", &https])
            .args(["--containerd-socket", "/nonexistent/containerd.sock"])
            .env("MILL_ELECTION_TIMEOUT_MS", "500")
            .env("MILL_RUN_CONTROLLERS", "0")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        let member = Member {
            api,
            https,
            http_port,
            log,
            _child: Process(command.spawn().expect("mill starts")),
        };
        let line = if join.is_some() {
            "Joined cluster"
        } else {
            "To join another node"
        };
        eventually(WITHIN, &format!("{} to serve", member.api), || async {
            member.log_text().contains(line).then_some(())
        })
        .await;
        member
    }

    async fn leads(&self, http: &reqwest::Client) -> bool {
        let Ok(answer) = http
            .get(format!("http://{}/internal/node/info", self.api))
            .bearer_auth(TOKEN)
            .send()
            .await
        else {
            return false;
        };
        answer
            .json::<Value>()
            .await
            .is_ok_and(|info| info["role"] == "Leader")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_answers_the_challenge_and_every_node_serves_the_certificate() {
    for tool in ["pebble", "pebble-challtestsrv", "curl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed; run scripts/setup (Debian packages pebble, curl)"
        );
    }
    // pebble's address is fixed before the nodes start; pebble itself starts once the
    // cluster knows its leader, validating on a follower's --http-addr: the follower
    // must answer from the challenge the leader wrote to the store.
    let dir = tempfile::tempdir().unwrap();
    let pebble_dir = tempfile::tempdir().unwrap();
    let ca_file = pebble_dir.path().join("ca.pem");
    let listen = format!("127.0.0.1:{}", support::free_port());
    let directory = format!("https://{listen}/dir");
    let env = [
        ("MILL_ACME_DIRECTORY", directory.as_str()),
        ("MILL_ACME_CA_FILE", path(&ca_file)),
        ("MILL_ACME_POLL_MS", "1000"),
        ("MILL_ACME_RETRY_MS", "1000"),
    ];
    let first = Member::start(dir.path(), 0, None, &env).await;
    let mut members = vec![first];
    for i in 1..3u8 {
        let join = members[0].api.clone();
        members.push(Member::start(dir.path(), i, Some(&join), &env).await);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut follower = None;
    for (i, member) in members.iter().enumerate() {
        if !member.leads(&http).await {
            follower = Some(i);
        }
    }
    let follower = &members[follower.expect("a follower among 3 nodes")];
    let pebble = Pebble::start_at(pebble_dir, &listen, follower.http_port).await;

    send(
        &http,
        reqwest::Method::POST,
        format!(
            "http://{}/apis/mill.dev/v1/namespaces/default/services",
            members[0].api
        ),
        json!({
            "apiVersion": "mill.dev/v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"image": "busybox", "port": 8080, "routes": [{"host": HOST, "path": "/"}]},
        }),
    )
    .await;
    let root = pebble.management("roots/0");
    let mut serials = std::collections::BTreeSet::new();
    for member in &members {
        let shown = eventually(
            WITHIN,
            &format!("pebble's certificate for HOST on {}", member.https),
            || async { handshake(&member.https, HOST, Some(&root)).await.ok() },
        )
        .await;
        serials.insert(facts(&shown.chain[0]).0);
    }
    assert_eq!(serials.len(), 1, "every node serves the one certificate");
    let issued: usize = members
        .iter()
        .map(|m| {
            m.log_text()
                .matches(&format!("ACME: certificate for {HOST} issued"))
                .count()
        })
        .sum();
    assert_eq!(issued, 1, "one node ordered it, once");
    // The leader waited for every node to apply the challenge before pebble validated on
    // the follower: no order failed.
    for member in &members {
        let log = member.log_text();
        assert!(
            !log.contains("ACME: cannot get a certificate"),
            "{}: {log}\npebble:\n{}",
            member.api,
            pebble.log()
        );
    }
}
