//! The ingress HTTP proxy (SPEC §5) on `--http-addr`: HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge) from clients, HTTP/1.1 with pooled keep-alive connections to backends.
//!
//! - **Threads**: each listener gets threads of its own, one per core (nginx's
//!   `worker_processes auto`), each a single-threaded tokio runtime; the accept loop hands
//!   connections to them in turn. A client connection, its requests and the upstream
//!   connections they use live on one thread, so forwarding a request wakes no other thread
//!   (on the daemon's shared multi-threaded runtime, cross-thread wakeups and task hops
//!   were most of the cost: `benches/README.md`). `Proxy::serve_connection` serves any
//!   byte stream (TCP, TLS) on any runtime.
//! - **Upstream connections**: HTTP/1.1, pooled per proxy thread (thread-local lists: no
//!   lock), keyed by the backend's alloc and address, the most recently used first, at most
//!   `POOL_MAX` (256) per thread and kind. A request without a body and without an upgrade
//!   (nearly all) goes through the proxy's own client (`upstream`: request head encoded
//!   with the forwarded headers, response head parsed with httparse, the body read from the
//!   connection as the client's response body polls it, all in the client connection's
//!   task: no second task, queue or channel per request). A request with a body or a
//!   WebSocket upgrade goes through hyper's `client::conn::http1` (the request body
//!   streamed while the response comes; a connection's task runs on the thread that opened
//!   it). A connection goes back to the pool when its response body ended (and the
//!   request's body went out in full, and the backend keeps it alive); a pooled connection
//!   the backend closed meanwhile is detected before use, and one that takes nothing
//!   (closed as the request was handed to it) gets the request again on a new connection
//!   to the same backend (a bodiless idempotent request also when it went out and nothing
//!   came back).
//! - **Routing**: the Host (URI authority for HTTP/2 and absolute-form requests, else the
//!   `Host` header; port and a trailing dot stripped, case-insensitive) and the longest
//!   matching path prefix across every service's routes. A prefix matches at a segment
//!   boundary: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; a prefix ending in
//!   `/` matches everything below it. No match → 404; a route whose service has no backend
//!   → 503. The index is rebuilt from the routing table the first time a request sees a
//!   new table, so a request always routes by the newest table (what the routing barrier
//!   reports as applied).
//! - **Backends**: the fewest requests in flight through this node first, ties taken in
//!   turn. Each request holds its backend's [`Load`](super::table::Load) from before the
//!   connect until the response body ends (or the WebSocket tunnel closes), so drain waits
//!   for streaming bodies too; the count starts before the backend is checked against the
//!   newest table, so the barrier's in-flight answer cannot miss a request that picked a
//!   backend from an older one (which then moves on). A backend that leaves the table
//!   keeps what is in flight:
//!   the request holds its own `Arc<Load>` and connection, nothing is cut.
//! - **Retries**: a failed connect (refused, reset, timed out: nothing was sent) moves on
//!   to the next backend, up to [`MAX_ATTEMPTS`] backends. Any other failure before a
//!   response head is retried only for idempotent methods whose request body was not
//!   streamed yet (empty, or never polled); everything else answers 502.
//! - **Headers**: `X-Forwarded-For` gets the client's IP appended, `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are set (overwritten); `Host` is passed on unchanged. Hop-by-hop
//!   headers (`Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
//!   `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`,
//!   `Upgrade`) are dropped in both directions; each hop frames bodies itself. A backend's
//!   `Connection: close` therefore does not close the client's connection.
//! - **WebSocket**: an HTTP/1.1 `Upgrade: websocket` request is tunnelled (both sides
//!   upgraded with `hyper::upgrade`, bytes copied until either side closes) only on a route
//!   with `websocket = true`; elsewhere it is refused with 400. A tunnel lives on its own
//!   task and ignores later table changes. Other `Upgrade` values (h2c) are dropped as
//!   hop-by-hop and the request is proxied as a plain one.
//! - **Limits**: bodies are streamed both ways, never buffered, so there is no body size
//!   limit (backends enforce their own); client headers are bounded by hyper's defaults,
//!   a backend's response head read by `upstream` by 64 KiB and 100 headers. Timeouts:
//!   connect `MILL_PROXY_CONNECT_TIMEOUT_MS` (2000, then the next backend), response head
//!   `MILL_PROXY_RESPONSE_TIMEOUT_MS` (60000, then 504, not retried; for bodiless requests
//!   checked on the proxy thread's tick of 1/32 of it, `deadline`, so it fires up to
//!   1/16 late, instead of a tokio timer per request), client idle
//!   `MILL_PROXY_IDLE_TIMEOUT_MS` (60000: a client connection with no request in flight
//!   that long after its last response ended, waiting for the next request or the rest of
//!   its headers, is closed; one timer per connection, HTTP/1.1 and HTTP/2, none once a
//!   WebSocket tunnel runs on it). Idle upstream connections are closed after 3/4 to all
//!   of [`POOL_IDLE`] (a tick count, no clock read per request). Bodies and tunnels have no
//!   timeout (long polls, streams).
//! - **Metrics**: `mill_proxy_requests_total{namespace,service,route,code}` (`code` is
//!   the class, `2xx`…`5xx`) and `mill_proxy_latency_seconds{namespace,service,route}`
//!   (request → response head) for every request that matched a route.

use super::table::{Backend, InFlight, Load, Routing, RoutingTable, ServiceRoutes};
use arc_swap::ArcSwap;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as up;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

mod deadline;
mod upstream;

use deadline::within;

/// The most backends one request tries.
pub const MAX_ATTEMPTS: usize = 4;
/// How long an idle upstream connection stays pooled.
pub const POOL_IDLE: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's timeouts (`MILL_PROXY_*`, from the daemon's knobs).
#[derive(Debug, Clone)]
pub struct ProxyKnobs {
    /// `MILL_PROXY_CONNECT_TIMEOUT_MS` (2000): one connect attempt to a backend.
    pub connect_timeout: Duration,
    /// `MILL_PROXY_RESPONSE_TIMEOUT_MS` (60000): request sent → response head.
    pub response_timeout: Duration,
    /// `MILL_PROXY_IDLE_TIMEOUT_MS` (60000): a client connection's wait for the next
    /// request's headers.
    pub idle_timeout: Duration,
}

impl Default for ProxyKnobs {
    fn default() -> Self {
        ProxyKnobs {
            connect_timeout: Duration::from_millis(2000),
            response_timeout: Duration::from_millis(60_000),
            idle_timeout: Duration::from_millis(60_000),
        }
    }
}

/// Where and how the proxy serves.
#[derive(Clone)]
pub struct ProxyConfig {
    /// `--http-addr`.
    pub addr: SocketAddr,
    /// Timeouts.
    pub knobs: ProxyKnobs,
    /// The node's metrics, if it keeps any.
    pub metrics: Option<crate::metrics::Metrics>,
    /// The node's certificates and ACME HTTP-01 answers (`net::tls`).
    pub tls: Option<Arc<super::tls::Tls>>,
    /// Whether this listener speaks TLS (`--https-addr`), with certificates by SNI from
    /// `tls`; `X-Forwarded-Proto` says `https` then.
    pub https: bool,
}

/// Binds `config.addr` and serves the proxy on it until the process ends; returns the
/// bound address (useful with port 0).
///
/// The proxy runs on threads of its own, one per core (what nginx's `worker_processes
/// auto` gets), each a single-threaded tokio runtime with its own copy of the proxy's
/// state (route index, turn): a client connection, its requests and the upstream
/// connections they use stay on one thread, so a request wakes no other thread and writes
/// no memory another thread uses but its backend's in-flight count and the metrics.
/// Accepting happens on the caller's runtime, which hands each connection to the threads
/// in turn.
pub async fn serve(routing: Routing, config: ProxyConfig) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let proxies = (0..threads)
        .map(|_| Proxy::new(routing.clone(), &config).map(Arc::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    let scheme = if proxies[0].acceptor.is_some() {
        "https"
    } else {
        "http"
    };
    let workers = proxies
        .into_iter()
        .enumerate()
        .map(|(i, proxy)| worker(i, proxy))
        .collect::<std::io::Result<Vec<_>>>()?;
    tracing::info!("ingress proxy listening on {scheme}://{addr} ({threads} threads)");
    tokio::spawn(accept(listener, workers));
    Ok(addr)
}

/// Where the accept loop hands a connection to a proxy thread.
type Handoff = tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>;

/// Starts proxy thread `i`: it serves the connections sent to the returned handoff.
fn worker(i: usize, proxy: Arc<Proxy>) -> std::io::Result<Handoff> {
    let (handoff, mut connections) = tokio::sync::mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("mill-proxy-{i}"))
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(sweep_pool());
                tokio::spawn(deadline::tick(deadline::tick_for(
                    proxy.knobs.response_timeout,
                )));
                while let Some((stream, peer)) = connections.recv().await {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            tokio::spawn(proxy.clone().serve_tcp(stream, peer));
                        }
                        Err(err) => {
                            tracing::warn!("ingress proxy: cannot serve {peer}: {err}")
                        }
                    }
                }
            })
        })?;
    Ok(handoff)
}

async fn accept(listener: TcpListener, workers: Vec<Handoff>) {
    let mut next = 0;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                stream.set_nodelay(true).ok();
                match stream.into_std() {
                    Ok(stream) => {
                        // A thread that is gone (it panicked) gets no more connections.
                        let _ = workers[next % workers.len()].send((stream, peer));
                        next += 1;
                    }
                    Err(err) => tracing::warn!("ingress proxy: cannot serve {peer}: {err}"),
                }
            }
            Err(err) => {
                // Out of file descriptors and the like: the next accept may work.
                tracing::warn!("ingress proxy: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

type ServerBuilder = hyper_util::server::conn::auto::Builder<TokioExecutor>;

/// The proxy's shared state.
pub(crate) struct Proxy {
    routing: Routing,
    index: ArcSwap<Index>,
    server: ServerBuilder,
    knobs: ProxyKnobs,
    metrics: Option<crate::metrics::Metrics>,
    turn: AtomicUsize,
    tls: Option<Arc<super::tls::Tls>>,
    /// Set on the HTTPS listener: the TLS handshake before HTTP.
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// The routes of one table, by host.
struct Index {
    table: Arc<RoutingTable>,
    hosts: HashMap<String, Vec<Arc<RouteEntry>>>,
}

/// One route of one service.
struct RouteEntry {
    path: String,
    websocket: bool,
    service: Arc<ServiceRoutes>,
    metrics: Option<RouteMetrics>,
}

impl Index {
    fn build(table: Arc<RoutingTable>, metrics: Option<&crate::metrics::Metrics>) -> Index {
        let mut hosts: HashMap<String, Vec<Arc<RouteEntry>>> = HashMap::new();
        for service in table.services.values() {
            for route in &service.routes {
                let host = normalize_host(&route.host).into_owned();
                let path = if route.path.is_empty() {
                    "/".to_string()
                } else {
                    route.path.clone()
                };
                let metrics = metrics.map(|m| RouteMetrics::new(m, service, &host, &path));
                hosts.entry(host).or_default().push(Arc::new(RouteEntry {
                    path,
                    websocket: route.websocket,
                    service: service.clone(),
                    metrics,
                }));
            }
        }
        // Longest prefix first; the services' order (namespace, name) breaks ties.
        for entries in hosts.values_mut() {
            entries.sort_by_key(|e| std::cmp::Reverse(e.path.len()));
        }
        Index { table, hosts }
    }

    fn find(&self, host: &str, path: &str) -> Option<&Arc<RouteEntry>> {
        self.hosts
            .get(host)?
            .iter()
            .find(|e| prefix_matches(&e.path, path))
    }
}

/// Whether route prefix `prefix` covers request path `path` (at a segment boundary).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let path = if path.is_empty() { "/" } else { path };
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// A host as routes name it: lower case, without port or trailing dot.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.trim();
    let host = if host.starts_with('[') {
        // [v6]:port
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// The metric handles of one route.
struct RouteMetrics {
    requests: crate::metrics::ProxyRequests,
    labels: Vec<(String, String)>,
    by_class: [OnceLock<Counter>; 5],
    latency: Histogram,
}

impl RouteMetrics {
    fn new(
        metrics: &crate::metrics::Metrics,
        service: &ServiceRoutes,
        host: &str,
        path: &str,
    ) -> RouteMetrics {
        let (requests, latency) = metrics.proxy();
        let labels = vec![
            ("namespace".to_string(), service.name.namespace.clone()),
            ("service".to_string(), service.name.name.clone()),
            ("route".to_string(), format!("{host}{path}")),
        ];
        let latency = latency.get_or_create(&labels).clone();
        RouteMetrics {
            requests,
            labels,
            by_class: Default::default(),
            latency,
        }
    }

    fn observe(&self, status: StatusCode, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize;
        self.by_class[class - 1]
            .get_or_init(|| {
                let mut labels = self.labels.clone();
                labels.push(("code".to_string(), format!("{class}xx")));
                self.requests.get_or_create(&labels).clone()
            })
            .inc();
        self.latency.observe(took.as_secs_f64());
    }
}

/// Headers dropped between hops (besides those `Connection` names).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup per name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether the request asks for a WebSocket upgrade (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade: websocket`).
fn wants_websocket(req: &Request<Incoming>) -> bool {
    let token = |name: &HeaderName, want: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    req.version() == Version::HTTP_11
        && token(&header::CONNECTION, "upgrade")
        && token(&header::UPGRADE, "websocket")
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// A short text answer of the proxy's own.
fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Full(Some(Bytes::from(message + "\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Proxy {
    fn new(routing: Routing, config: &ProxyConfig) -> std::io::Result<Proxy> {
        let acceptor = match (&config.tls, config.https) {
            (Some(tls), true) => Some(tls.acceptor().map_err(std::io::Error::other)?),
            (None, true) => {
                return Err(std::io::Error::other("HTTPS needs the node's certificates"))
            }
            _ => None,
        };
        let mut server = ServerBuilder::new(TokioExecutor::new());
        // The idle timeout is the connection's own (`Watched`): one timer per connection
        // instead of hyper's header-read timer per request.
        server.http1().header_read_timeout(None).keep_alive(true);

        server.http2().timer(TokioTimer::new());
        let index = Index::build(routing.load(), config.metrics.as_ref());
        Ok(Proxy {
            routing,
            index: ArcSwap::from_pointee(index),
            server,
            knobs: config.knobs.clone(),
            metrics: config.metrics.clone(),
            turn: AtomicUsize::new(0),
            tls: config.tls.clone(),
            acceptor,
        })
    }

    /// Serves one accepted TCP connection: after a TLS handshake on the HTTPS listener.
    async fn serve_tcp(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        match self.acceptor.clone() {
            None => self.serve_connection(stream, peer).await,
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => self.serve_connection(tls, peer).await,
                Err(err) => tracing::debug!("ingress proxy: TLS handshake with {peer}: {err}"),
            },
        }
    }

    /// Serves one client connection until it closes: any byte stream (TCP, TLS) on any
    /// tokio runtime.
    pub(crate) async fn serve_connection<I>(self: Arc<Self>, io: I, peer: SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let io = Watched::new(io, activity.clone(), self.knobs.idle_timeout);
        // Once per connection.
        let client = Arc::new(Client {
            proxy: self.clone(),
            ip: forwarded_ip(peer),
            activity,
        });
        let service = hyper::service::service_fn(move |req| {
            let client = client.clone();
            async move {
                let active = client.activity.start();
                let response = client.proxy.handle(req, &client.ip).await;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // A tunnel now: no idle timeout from here on.
                    client.activity.upgraded.store(true, Ordering::Relaxed);
                }
                Ok::<_, Infallible>(response.map(|body| ClientBody {
                    body,
                    _active: active,
                }))
            }
        });
        let served = self
            .server
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await;
        if let Err(err) = served {
            tracing::debug!("ingress proxy: connection from {peer}: {err}");
        }
    }

    /// The index of the current table, rebuilt if the table changed.
    fn index(&self) -> Arc<Index> {
        let table = self.routing.peek();
        let index = self.index.load_full();
        if Arc::ptr_eq(&index.table, &table) {
            return index;
        }
        let fresh = Arc::new(Index::build(Arc::clone(&table), self.metrics.as_ref()));
        self.index.store(fresh.clone());
        fresh
    }

    /// Whether `backend` (of `service` in `table`) is still a backend of `service` in the
    /// newest table.
    fn listed(
        &self,
        table: &Arc<RoutingTable>,
        service: &ServiceRoutes,
        backend: &Backend,
    ) -> bool {
        let newest = self.routing.peek();
        Arc::ptr_eq(&newest, table)
            || newest.services.get(&service.name).is_some_and(|s| {
                s.backends
                    .iter()
                    .any(|b| Arc::ptr_eq(&b.load, &backend.load))
            })
    }

    /// One request from a client whose IP (as `X-Forwarded-For` shows it) is `ip`.
    async fn handle(&self, req: Request<Incoming>, ip: &HeaderValue) -> Response<ProxyBody> {
        let began = Instant::now();
        if let Some(answer) = self
            .tls
            .as_ref()
            .and_then(|t| t.challenge(req.uri().path()))
        {
            // ACME HTTP-01 (`net::tls`): answered for any Host, before routing.
            let mut response = Response::new(ProxyBody::Full(Some(Bytes::from(answer))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return response;
        }
        let raw_host = match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let Some(raw_host) = raw_host.filter(|h| h.to_str().is_ok()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "the request names no host: send a Host header".into(),
            );
        };
        let host_text = raw_host.to_str().unwrap_or_default();
        let host = normalize_host(host_text);
        let index = self.index();
        let Some(route) = index.find(&host, req.uri().path()) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no route for {host}{}", req.uri().path()),
            );
        };
        let response = if !wants_websocket(&req)
            && req.body().is_end_stream()
            && req.method() != Method::CONNECT
        {
            self.forward_bodiless(req, ip, &raw_host, &index.table, route)
                .await
        } else {
            // Boxed: hyper's client and the connect it may need make a large future, which
            // would otherwise be moved into place for every request.
            Box::pin(self.forward(req, ip, &raw_host, &index.table, route)).await
        };
        if let Some(metrics) = &route.metrics {
            metrics.observe(response.status(), began.elapsed());
        }
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        ip: &HeaderValue,
        raw_host: &HeaderValue,
        table: &Arc<RoutingTable>,
        route: &RouteEntry,
    ) -> Response<ProxyBody> {
        let service = &route.service;
        let host_text = raw_host.to_str().unwrap_or_default();
        let websocket = wants_websocket(&req);
        if websocket && !route.websocket {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "route {}{} of service {} does not allow WebSocket upgrades (set websocket = true on the route)",
                    normalize_host(host_text),
                    route.path,
                    service.name.name
                ),
            );
        }
        if service.backends.is_empty() {
            return no_backend(service);
        }
        let (mut parts, body) = req.into_parts();
        let downstream = if websocket {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        forwarded_headers(&mut headers, ip, raw_host);
        if self.acceptor.is_some() {
            static PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
            headers.insert(PROTO.clone(), HeaderValue::from_static("https"));
        }
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, raw_host.clone());
        }
        if let (true, Some(value)) = (websocket, upgrade_value) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, value);
        }
        // Backends get the origin form (`/path?query`), also of absolute-form and HTTP/2
        // requests.
        let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
            std::mem::take(&mut parts.uri)
        } else {
            match parts.uri.path_and_query() {
                Some(pq) => Uri::from(pq.clone()),
                None => Uri::from_static("/"),
            }
        };
        let retry_after_send = idempotent(&parts.method);
        let mut head = Some(Head {
            method: parts.method,
            uri,
            headers,
        });
        let body = UpSource::new(body);
        let mut attempts =
            Attempts::new(&service.backends, self.turn.fetch_add(1, Ordering::Relaxed));
        while let Some((backend, in_flight)) = attempts.next(self, table, service) {
            let attempt = attempts.number();
            // Keep a copy only if a failure after sending may be retried elsewhere.
            let keep = retry_after_send && !attempts.is_last();
            match self
                .exchange(backend, &mut head, keep, &body, attempt)
                .await
            {
                Exchange::Answered(response, sender) => {
                    return respond(response, in_flight, backend, sender, &body, downstream)
                }
                Exchange::NotSent(error) => attempts.last_error = error,
                Exchange::Failed(error) => {
                    attempts.last_error = error;
                    if !(retry_after_send && body.replayable()) || head.is_none() {
                        break;
                    }
                }
                Exchange::TimedOut => return self.timed_out(backend),
            }
        }
        attempts.bad_gateway(service)
    }

    /// [`forward`](Self::forward) for a request without a body or upgrade, with the
    /// proxy's own HTTP/1.1 client (`upstream`) in this task; the same choice of backends
    /// and the same retry rules.
    async fn forward_bodiless(
        &self,
        req: Request<Incoming>,
        ip: &HeaderValue,
        raw_host: &HeaderValue,
        table: &Arc<RoutingTable>,
        route: &RouteEntry,
    ) -> Response<ProxyBody> {
        let service = &route.service;
        if service.backends.is_empty() {
            return no_backend(service);
        }
        let (mut parts, _) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let request = upstream::Request {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            ip,
            host: raw_host,
            proto: if self.acceptor.is_some() {
                "https"
            } else {
                "http"
            },
        };
        self.forward_raw(&request, table, service).await
    }

    async fn forward_raw(
        &self,
        request: &upstream::Request<'_>,
        table: &Arc<RoutingTable>,
        service: &ServiceRoutes,
    ) -> Response<ProxyBody> {
        let retry_after_send = idempotent(request.method);
        let mut attempts =
            Attempts::new(&service.backends, self.turn.fetch_add(1, Ordering::Relaxed));
        while let Some((backend, in_flight)) = attempts.next(self, table, service) {
            match self.exchange_raw(backend, request, retry_after_send).await {
                RawExchange::Answered(conn, answer) => {
                    return raw_respond(conn, answer, in_flight, backend)
                }
                RawExchange::NotSent(error) => attempts.last_error = error,
                RawExchange::Failed(error) => {
                    attempts.last_error = error;
                    if !retry_after_send {
                        break;
                    }
                }
                RawExchange::TimedOut => return self.timed_out(backend),
            }
        }
        attempts.bad_gateway(service)
    }

    fn timed_out(&self, backend: &Backend) -> Response<ProxyBody> {
        text(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "{} did not answer within {:?}",
                backend.alloc.name, self.knobs.response_timeout
            ),
        )
    }

    /// One bodiless request to one backend, on a pooled connection of this thread or a
    /// new one. A pooled connection the backend closed as the request went out gets it
    /// once more on a new connection, if that is safe: nothing went out, or the request
    /// is idempotent and nothing came back.
    async fn exchange_raw(
        &self,
        backend: &Backend,
        request: &upstream::Request<'_>,
        idempotent: bool,
    ) -> RawExchange {
        let mut pooled = checkout(&RAW_POOL, backend);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                // Boxed: a connect's future is large and rare with keep-alive.
                None => match Box::pin(self.connect_tcp(backend)).await {
                    Ok(stream) => upstream::Conn::new(stream),
                    Err(error) => return RawExchange::NotSent(error),
                },
            };
            let outcome = {
                let sent = std::pin::pin!(upstream::send(&mut conn, request));
                within(self.knobs.response_timeout, sent).await
            };
            match outcome {
                Err(_) => return RawExchange::TimedOut,
                Ok(Ok(answer)) => return RawExchange::Answered(conn, answer),
                Ok(Err(err)) => {
                    tracing::debug!("ingress proxy: {} failed: {}", backend.address, err.message);
                    if reused && !err.received && (!err.written || idempotent) {
                        continue;
                    }
                    let message = format!("{} failed: {}", backend.alloc.name, err.message);
                    return if err.written {
                        RawExchange::Failed(message)
                    } else {
                        RawExchange::NotSent(message)
                    };
                }
            }
        }
    }

    /// One request to one backend, on a pooled connection of this thread or a new one.
    /// `head` is taken (copied if `keep`) and put back when the request was not sent.
    async fn exchange(
        &self,
        backend: &Backend,
        head: &mut Option<Head>,
        keep: bool,
        body: &UpSource,
        attempt: usize,
    ) -> Exchange {
        // A pooled connection the backend closed meanwhile takes nothing: then once more
        // on a new one.
        let mut pooled = true;
        loop {
            let sender = match pooled.then(|| checkout(&POOL, backend)).flatten() {
                Some(mut sender) => match sender.ready().await {
                    Ok(()) => Some(sender),
                    Err(_) => continue,
                },
                None => None,
            };
            let reused = sender.is_some();
            let mut sender = match sender {
                Some(sender) => sender,
                None => match self.connect(backend).await {
                    Ok(sender) => sender,
                    Err(error) => return Exchange::NotSent(error),
                },
            };
            pooled = false;
            let Some(taken) = (if keep { head.clone() } else { head.take() }) else {
                return Exchange::Failed(format!("{} failed", backend.alloc.name));
            };
            let mut request = Request::new(body.attempt(attempt));
            *request.method_mut() = taken.method;
            *request.uri_mut() = taken.uri;
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = taken.headers;
            let sent = tokio::time::timeout(
                self.knobs.response_timeout,
                sender.try_send_request(request),
            );
            match sent.await {
                Ok(Ok(response)) => return Exchange::Answered(response, sender),
                Ok(Err(mut err)) => {
                    if let Some(request) = err.take_message() {
                        // Nothing went out: the request is whole again.
                        let (parts, _) = request.into_parts();
                        *head = Some(Head {
                            method: parts.method,
                            uri: parts.uri,
                            headers: parts.headers,
                        });
                        let err = err.into_error();
                        tracing::debug!("ingress proxy: {} took nothing: {err}", backend.address);
                        if reused {
                            continue;
                        }
                        return Exchange::NotSent(format!(
                            "{} failed: {}",
                            backend.alloc.name,
                            crate::source_chain(&err)
                        ));
                    }
                    let err = err.into_error();
                    tracing::debug!("ingress proxy: {} failed: {err}", backend.address);
                    return Exchange::Failed(format!(
                        "{} failed: {}",
                        backend.alloc.name,
                        crate::source_chain(&err)
                    ));
                }
                Err(_) => return Exchange::TimedOut,
            }
        }
    }

    /// A new TCP connection to `backend` (`TCP_NODELAY` set).
    async fn connect_tcp(&self, backend: &Backend) -> Result<TcpStream, String> {
        let stream = match tokio::time::timeout(
            self.knobs.connect_timeout,
            TcpStream::connect(backend.address),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(cannot_connect(backend, &err)),
            Err(_) => {
                return Err(cannot_connect(
                    backend,
                    &format_args!("no answer within {:?}", self.knobs.connect_timeout),
                ))
            }
        };
        stream.set_nodelay(true).ok();
        Ok(stream)
    }

    /// A new HTTP/1.1 connection to `backend`, driven by a task of its own on this thread.
    async fn connect(&self, backend: &Backend) -> Result<up::SendRequest<UpBody>, String> {
        let stream = self.connect_tcp(backend).await?;
        let (sender, connection) = up::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| cannot_connect(backend, &crate::source_chain(&err)))?;
        let address = backend.address;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!("ingress proxy: connection to {address}: {err}");
            }
        });
        Ok(sender)
    }
}

/// The answer for a route whose service has no backend.
fn no_backend(service: &ServiceRoutes) -> Response<ProxyBody> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "service {} has no healthy instance right now; retry shortly",
            service.name.name
        ),
    )
}

/// Why a connection to `backend` was not made, logged.
fn cannot_connect(backend: &Backend, err: &dyn std::fmt::Display) -> String {
    tracing::debug!(
        "ingress proxy: cannot connect to {}: {err}",
        backend.address
    );
    format!("cannot connect to {}: {err}", backend.alloc.name)
}

/// The backends one request tried, in order (no allocation).
#[derive(Default)]
struct Tried {
    list: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    fn push(&mut self, i: usize) {
        if self.len < MAX_ATTEMPTS {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

/// The backends one request may still try, at most [`MAX_ATTEMPTS`], and why the last one
/// tried gave no answer.
struct Attempts<'s> {
    backends: &'s [Backend],
    tried: Tried,
    turn: usize,
    left: usize,
    last_error: String,
}

impl<'s> Attempts<'s> {
    fn new(backends: &'s [Backend], turn: usize) -> Self {
        Attempts {
            backends,
            tried: Tried::default(),
            turn,
            left: backends.len().min(MAX_ATTEMPTS),
            last_error: String::new(),
        }
    }

    /// The next backend to send to (least in flight, ties in turn), counted in flight.
    /// Counted first, then checked against the newest table: a backend that left it
    /// meanwhile gets nothing new (and uses up an attempt), and one still listed is
    /// counted before any barrier answer that could let its drain end.
    fn next(
        &mut self,
        proxy: &Proxy,
        table: &Arc<RoutingTable>,
        service: &ServiceRoutes,
    ) -> Option<(&'s Backend, InFlight)> {
        while self.left > 0 {
            self.left -= 1;
            let i = pick(self.backends, self.tried.as_slice(), self.turn)?;
            self.tried.push(i);
            let backend = &self.backends[i];
            let in_flight = backend.load.start();
            if proxy.listed(table, service, backend) {
                return Some((backend, in_flight));
            }
            drop(in_flight);
            self.last_error = format!("{} left the routing table", backend.alloc.name);
        }
        None
    }

    /// The attempt the backend [`next`](Self::next) gave is, from 0.
    fn number(&self) -> usize {
        self.tried.len.saturating_sub(1)
    }

    /// Whether the backend [`next`](Self::next) gave is the last this request may try.
    fn is_last(&self) -> bool {
        self.left == 0
    }

    /// The answer once no backend answered.
    fn bad_gateway(self, service: &ServiceRoutes) -> Response<ProxyBody> {
        text(
            StatusCode::BAD_GATEWAY,
            format!("service {}: {}", service.name.name, self.last_error),
        )
    }
}

/// What one bodiless request to one backend came to (`upstream`).
enum RawExchange {
    /// A response head, and the connection its body comes on.
    Answered(upstream::Conn, upstream::Answer),
    /// Nothing was sent (connect failed, or the connection took nothing).
    NotSent(String),
    /// Sent, at least in part, and no response head.
    Failed(String),
    /// No response head within the response timeout.
    TimedOut,
}

/// The client's answer from a backend's response head read by `upstream`.
fn raw_respond(
    conn: upstream::Conn,
    answer: upstream::Answer,
    in_flight: InFlight,
    backend: &Backend,
) -> Response<ProxyBody> {
    let body = upstream::RawBody::new(
        conn,
        &answer,
        in_flight,
        backend.address,
        backend.load.clone(),
    );
    let mut response = Response::new(ProxyBody::Raw(body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    strip_hop_by_hop(response.headers_mut());
    response
}

/// What the requests of one client connection share.
struct Client {
    proxy: Arc<Proxy>,
    /// The client's IP as `X-Forwarded-For` shows it.
    ip: HeaderValue,
    activity: Arc<Activity>,
}

/// When a client connection was last busy: its idle timeout counts from the end of its
/// last response while no request is in flight.
struct Activity {
    /// Requests whose response (body included) has not ended.
    in_flight: AtomicU32,
    /// When the last response ended, in milliseconds since `epoch`.
    last: AtomicU64,
    /// A WebSocket tunnel: no timeout.
    upgraded: AtomicBool,
    epoch: tokio::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicU32::new(0),
            last: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// When the connection stops being busy, if nothing is in flight now.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        (self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// One request of a client connection, until its response ended.
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let at = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last.store(at, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection's bytes, closed (a read error) once it has been idle for the idle
/// timeout: no request in flight and none started since the last response ended (waiting
/// for the next request, or for the rest of its headers). One timer per connection, moved
/// only when it fires.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether `timer` holds this task's waker for its current deadline.
    armed: bool,
}

impl<I> Watched<I> {
    fn new(io: I, activity: Arc<Activity>, timeout: Duration) -> Watched<I> {
        Watched {
            io,
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// The read would block: the timer decides whether it ever may again.
    fn idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.armed && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Poll::Pending;
            }
            if self.activity.upgraded.load(Ordering::Relaxed) {
                // Tunnels have no timeout: the timer stays fired, never polled again.
                self.armed = true;
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            let until = match self.activity.idle_since() {
                Some(since) => since + self.timeout,
                None => now + self.timeout,
            };
            if until <= now {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("idle for {:?} (MILL_PROXY_IDLE_TIMEOUT_MS)", self.timeout),
                )));
            }
            self.timer.as_mut().reset(until);
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.idle(cx),
            ready => ready,
        }
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The body of a client's answer, holding its request's [`Active`] until it ends.
struct ClientBody {
    body: ProxyBody,
    _active: Active,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What one request to one backend came to.
enum Exchange {
    /// A response head (and the connection, for the pool).
    Answered(Response<Incoming>, up::SendRequest<UpBody>),
    /// Nothing was sent (connect failed, or the connection took nothing).
    NotSent(String),
    /// Sent, at least in part, and no response head.
    Failed(String),
    /// No response head within the response timeout.
    TimedOut,
}

/// The request line and headers of a forwarded request.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// The client's answer from the backend's; a 101 to a WebSocket request starts the
/// tunnel.
fn respond(
    mut response: Response<Incoming>,
    in_flight: InFlight,
    backend: &Backend,
    sender: up::SendRequest<UpBody>,
    body: &UpSource,
    downstream: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    if downstream.is_some() && response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        let (mut head, _) = response.into_parts();
        let upgrade = head.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut head.headers);
        if let Some(value) = upgrade {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(header::UPGRADE, value);
        }
        let address = backend.address;
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let Some(downstream) = downstream else {
                return;
            };
            match tokio::try_join!(downstream, upstream) {
                Ok((client, server)) => {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut server).await
                    {
                        tracing::debug!("ingress proxy: WebSocket to {address}: {err}");
                    }
                }
                Err(err) => tracing::debug!("ingress proxy: WebSocket to {address}: {err}"),
            }
        });
        return Response::from_parts(head, ProxyBody::Full(None));
    }
    let (mut head, incoming) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Response::from_parts(
        head,
        ProxyBody::Upstream(UpstreamBody {
            body: incoming,
            in_flight: Some(in_flight),
            reuse: Some(Reuse {
                sender,
                address: backend.address,
                load: backend.load.clone(),
                sent: body.sent_flag(),
            }),
        }),
    )
}

/// An idle upstream connection of this thread: hyper's (`C` = its `SendRequest`) or the
/// proxy's own (`upstream::Conn`).
struct Idle<C> {
    address: SocketAddr,
    load: Arc<Load>,
    conn: C,
    /// The pool's tick when it went idle.
    since: u64,
}

/// What a pooled connection can say about itself.
trait Pooled {
    /// Whether the backend closed it.
    fn is_closed(&self) -> bool;
}

impl Pooled for up::SendRequest<UpBody> {
    fn is_closed(&self) -> bool {
        up::SendRequest::is_closed(self)
    }
}

impl Pooled for upstream::Conn {
    fn is_closed(&self) -> bool {
        upstream::Conn::is_closed(self)
    }
}

/// The most idle upstream connections one proxy thread keeps (of each kind).
const POOL_MAX: usize = 256;
/// The pool's clock ticks this many times per [`POOL_IDLE`]: a connection idle for
/// `POOL_TICKS` ticks (3/4 to all of `POOL_IDLE`) is closed. A tick count instead of a clock
/// read for every check-in and checkout.
const POOL_TICKS: u64 = 4;

type Pool<C> = std::cell::RefCell<Vec<Idle<C>>>;

thread_local! {
    /// Each proxy thread pools its own upstream connections: checking one out takes no
    /// lock and its connection task runs on the same thread.
    static POOL: Pool<up::SendRequest<UpBody>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The proxy's own connections (`upstream`), for requests without a body.
    static RAW_POOL: Pool<upstream::Conn> = const { std::cell::RefCell::new(Vec::new()) };
    /// The pool's clock (`sweep_pool` moves it).
    static POOL_TICK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether an idle connection has been idle too long.
fn expired(since: u64, now: u64) -> bool {
    now.saturating_sub(since) >= POOL_TICKS
}

/// An idle connection to `backend` (the same alloc at the same address), newest first.
fn checkout<C: Pooled + 'static>(
    pool: &'static std::thread::LocalKey<Pool<C>>,
    backend: &Backend,
) -> Option<C> {
    let now = POOL_TICK.get();
    pool.with_borrow_mut(|pool| {
        while let Some(at) = pool
            .iter()
            .rposition(|i| i.address == backend.address && Arc::ptr_eq(&i.load, &backend.load))
        {
            let idle = pool.swap_remove(at);
            if !idle.conn.is_closed() && !expired(idle.since, now) {
                return Some(idle.conn);
            }
        }
        None
    })
}

fn checkin<C: 'static>(
    pool: &'static std::thread::LocalKey<Pool<C>>,
    address: SocketAddr,
    load: Arc<Load>,
    conn: C,
) {
    // Not during the thread's teardown (then the connection just closes).
    let since = POOL_TICK.try_with(|t| t.get()).unwrap_or_default();
    let _ = pool.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push(Idle {
            address,
            load,
            conn,
            since,
        });
    });
}

/// Gives a connection of the proxy's own client back to this thread's pool.
fn checkin_raw(key: &RawPoolKey, conn: upstream::Conn) {
    checkin(&RAW_POOL, key.address, key.load.clone(), conn);
}

/// Which backend a connection of the proxy's own client belongs to.
struct RawPoolKey {
    address: SocketAddr,
    load: Arc<Load>,
}

/// Moves this thread's pool clock every [`POOL_IDLE`] / [`POOL_TICKS`] and closes the
/// upstream connections idle for [`POOL_TICKS`] ticks, forever.
async fn sweep_pool() {
    fn sweep<C: Pooled + 'static>(pool: &'static std::thread::LocalKey<Pool<C>>, now: u64) {
        let gone: Vec<Idle<C>> = pool.with_borrow_mut(|pool| {
            let (keep, gone) = std::mem::take(pool)
                .into_iter()
                .partition(|i| !i.conn.is_closed() && !expired(i.since, now));
            *pool = keep;
            gone
        });
        drop(gone);
    }
    let mut every = tokio::time::interval(POOL_IDLE / POOL_TICKS as u32);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let now = POOL_TICK.get() + 1;
        POOL_TICK.set(now);
        sweep(&POOL, now);
        sweep(&RAW_POOL, now);
    }
}

/// A client's IP as `X-Forwarded-For` shows it (IPv4 without its IPv6 mapping).
fn forwarded_ip(peer: SocketAddr) -> HeaderValue {
    let ip = peer.ip().to_canonical().to_string();
    HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For` (`ip` appended), `-Proto` and `-Host`.
fn forwarded_headers(headers: &mut HeaderMap, ip: &HeaderValue, raw_host: &HeaderValue) {
    static FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    static PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    let value = if headers.contains_key(&FOR) {
        let mut value = Vec::new();
        for previous in headers.get_all(&FOR) {
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(ip.as_bytes());
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| ip.clone())
    } else {
        ip.clone()
    };
    headers.insert(FOR.clone(), value);
    headers.insert(PROTO.clone(), HeaderValue::from_static("http"));
    headers.insert(HOST.clone(), raw_host.clone());
}

/// The untried backend with the fewest requests in flight; ties in turn.
fn pick(backends: &[Backend], tried: &[usize], turn: usize) -> Option<usize> {
    let n = backends.len();
    (0..n)
        .map(|k| (k + turn) % n)
        .filter(|i| !tried.contains(i))
        .min_by_key(|i| backends[*i].load.in_flight())
}

/// The request body, shared by the attempts: an attempt may take it only while no
/// earlier attempt streamed any of it.
struct UpSource {
    body: Option<Arc<Shared>>,
}

struct Shared {
    body: Mutex<Incoming>,
    /// Which attempt may poll it.
    owner: AtomicUsize,
    /// Whether a frame of it went out.
    started: AtomicBool,
    /// Whether all of it went out.
    finished: AtomicBool,
}

impl UpSource {
    fn new(body: Incoming) -> UpSource {
        let body = (!body.is_end_stream()).then(|| {
            Arc::new(Shared {
                body: Mutex::new(body),
                owner: AtomicUsize::new(0),
                started: AtomicBool::new(false),
                finished: AtomicBool::new(false),
            })
        });
        UpSource { body }
    }

    fn attempt(&self, attempt: usize) -> UpBody {
        match &self.body {
            None => UpBody::Empty,
            Some(shared) => {
                shared.owner.store(attempt, Ordering::SeqCst);
                UpBody::Stream {
                    shared: shared.clone(),
                    attempt,
                }
            }
        }
    }

    fn replayable(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(|s| !s.started.load(Ordering::SeqCst))
    }

    /// What tells whether the body went out in full (nothing: there was none).
    fn sent_flag(&self) -> Option<Arc<Shared>> {
        self.body.clone()
    }
}

/// The body of one upstream attempt.
enum UpBody {
    Empty,
    Stream { shared: Arc<Shared>, attempt: usize },
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Stream { shared, attempt } => {
                if shared.owner.load(Ordering::SeqCst) != *attempt {
                    return Poll::Ready(Some(Err("the request went to another backend".into())));
                }
                let mut body = shared.body.lock().unwrap_or_else(|e| e.into_inner());
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(frame)) => {
                        shared.started.store(true, Ordering::SeqCst);
                        Poll::Ready(Some(frame.map_err(Into::into)))
                    }
                    Poll::Ready(None) => {
                        shared.finished.store(true, Ordering::SeqCst);
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Stream { shared, .. } => shared
                .body
                .lock()
                .map(|b| b.size_hint())
                .unwrap_or_default(),
        }
    }
}

/// The body of the client's answer: the backend's, or the proxy's own.
enum ProxyBody {
    /// From the backend, through hyper's client.
    Upstream(UpstreamBody),
    /// From the backend, through the proxy's own client (`upstream`).
    Raw(upstream::RawBody),
    /// The proxy's own (or empty).
    Full(Option<Bytes>),
}

/// A backend's response body: holds its in-flight count until it ends, then gives the
/// connection back to the thread's pool (if the request went out in full, so the
/// connection is free for the next one).
struct UpstreamBody {
    body: Incoming,
    in_flight: Option<InFlight>,
    reuse: Option<Reuse>,
}

/// What a finished response gives back to the pool.
struct Reuse {
    sender: up::SendRequest<UpBody>,
    address: SocketAddr,
    load: Arc<Load>,
    /// The request body's state (none: it had none).
    sent: Option<Arc<Shared>>,
}

impl UpstreamBody {
    /// The body ended: the backend is done with this request.
    fn finish(&mut self) {
        self.in_flight.take();
        if let Some(reuse) = self.reuse.take() {
            let sent = reuse
                .sent
                .as_ref()
                .is_none_or(|s| s.finished.load(Ordering::SeqCst));
            if sent && !reuse.sender.is_closed() {
                checkin(&POOL, reuse.address, reuse.load, reuse.sender);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper may drop a body it knows has ended without polling it to the end.
        if self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => up.finish(),
                    Poll::Ready(Some(Err(_))) => {
                        up.in_flight.take();
                        up.reuse.take();
                    }
                    _ => {}
                }
                polled.map(|f| f.map(|f| f.map_err(Into::into)))
            }
            ProxyBody::Raw(raw) => Pin::new(raw).poll_frame(cx),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(up) => up.body.is_end_stream(),
            ProxyBody::Raw(raw) => raw.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(up) => up.body.size_hint(),
            ProxyBody::Raw(raw) => raw.size_hint(),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads from a client connection whose peer sends nothing until it ends.
    async fn read_until_end<I: tokio::io::AsyncRead + Unpin>(io: &mut I) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0; 16];
        while io.read(&mut buf).await? > 0 {}
        Ok(())
    }

    /// Reads until the connection ends; it must end with the idle timeout's error.
    async fn assert_times_out<I: tokio::io::AsyncRead + Unpin>(io: &mut I, what: &str) {
        let err = tokio::time::timeout(Duration::from_secs(30), read_until_end(io))
            .await
            .expect(what)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    }

    #[tokio::test]
    async fn an_idle_client_connection_times_out_but_not_while_a_request_is_in_flight() {
        let timeout = Duration::from_millis(100);
        // Idle from the start: closed with a timeout error.
        let (_peer, io) = tokio::io::duplex(64);
        let mut watched = Watched::new(io, Arc::new(Activity::default()), timeout);
        assert_times_out(&mut watched, "the idle timeout ends the read").await;

        // A request in flight for many timeouts: still open; idle again after it ends.
        let (_peer, io) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let active = activity.start();
        let mut watched = Watched::new(io, activity.clone(), timeout);
        let still = tokio::time::timeout(timeout * 5, read_until_end(&mut watched)).await;
        assert!(
            still.is_err(),
            "a connection with a request in flight was closed: {still:?}"
        );
        drop(active);
        assert_times_out(
            &mut watched,
            "the idle timeout ends the read once nothing is in flight",
        )
        .await;

        // A WebSocket tunnel: no timeout.
        let (_peer, io) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        activity.upgraded.store(true, Ordering::Relaxed);
        let mut watched = Watched::new(io, activity, timeout);
        let still = tokio::time::timeout(timeout * 5, read_until_end(&mut watched)).await;
        assert!(still.is_err(), "a tunnel was closed: {still:?}");
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches("/", "/anything/below"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(!prefix_matches("/api", "/"));
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("10.0.0.1:80"), "10.0.0.1");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-kept", "yes"),
            ("content-length", "3"),
        ] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let ip = forwarded_ip("[::ffff:127.0.0.2]:5000".parse().unwrap());
        assert_eq!(ip, "127.0.0.2");
        forwarded_headers(&mut headers, &ip, &HeaderValue::from_static("a.test:80"));
        assert_eq!(headers["x-forwarded-for"], "10.1.1.1, 127.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "a.test:80");
    }

    #[test]
    fn the_least_loaded_untried_backend_is_picked_and_ties_take_turns() {
        use crate::net::table::{Load, Name};
        let backend = |name: &str| Backend {
            alloc: Name {
                namespace: "default".into(),
                name: name.into(),
            },
            node: "node-1".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            load: Arc::new(Load::default()),
        };
        let backends = vec![backend("a"), backend("b"), backend("c")];
        let firsts: Vec<usize> = (0..3).map(|t| pick(&backends, &[], t).unwrap()).collect();
        assert_eq!(firsts, [0, 1, 2]);
        let _a = backends[0].load.start();
        let _b = backends[1].load.start();
        assert_eq!(pick(&backends, &[], 0), Some(2));
        assert_eq!(pick(&backends, &[2], 0), Some(0));
        assert_eq!(pick(&backends, &[0, 1, 2], 0), None);
    }
}
