//! Service networking on every node (SPEC §5): the routing table, DNS, the VIP balancer
//! and the node side of the routing barrier.
//!
//! - [`table`]: one task follows the store's Services, Allocs and Nodes and publishes an
//!   immutable [`table::RoutingTable`] (services with VIP, port, ingress routes and
//!   backends with in-flight counters; alloc addresses) behind an `ArcSwap`, with the
//!   store revision it has applied. Everything below reads it lock-free; the ingress
//!   proxy will too.
//! - [`dns`]: hickory-server on `--dns-addr`, zone `mill.` from the table, the rest
//!   forwarded upstream.
//! - [`vip`]: a TCP listener per service `VIP:port`, least outstanding connections.
//! - [`proxy`]: the ingress HTTP proxy on `--http-addr` (Host + longest path prefix,
//!   least in flight, retries on connect failure, WebSocket where a route allows it).
//! - [`tls`]: the certificates the proxy serves on `--https-addr` (by SNI, from Secrets in
//!   `mill-system`, a self-signed rcgen fallback per host) and the ACME HTTP-01 answers.
//! - [`acme`]: the leader's task ordering and renewing route hosts' certificates.
//! - [`barrier`]: `GET /internal/routing/applied`, the long-poll the controllers' routing
//!   barrier asks every live node.

pub mod acme;
pub mod barrier;
pub mod dns;
pub mod proxy;
pub mod table;
pub mod tls;
pub mod vip;

use crate::store::Store;
use std::net::SocketAddr;
use std::time::Duration;

/// The timings of the node's networking (`MILL_*`, from the daemon's knobs).
#[derive(Debug, Clone)]
pub struct NetKnobs {
    /// `MILL_DNS_FORWARD_TIMEOUT_MS` (2000): one upstream resolver's time to answer.
    pub dns_forward_timeout: Duration,
    /// `MILL_VIP_CONNECT_TIMEOUT_MS` (2000): one connect attempt to a backend.
    pub vip_connect_timeout: Duration,
    /// `MILL_ROUTING_POLL_MS` (10): how often a waiting barrier request asks the table to
    /// catch up with store writes that sent it no event.
    pub routing_poll: Duration,
    /// The ingress proxy's timeouts (`MILL_PROXY_*`).
    pub proxy: proxy::ProxyKnobs,
    /// The leader's ACME timings (`MILL_ACME_*`).
    pub acme: acme::AcmeKnobs,
}

/// What the daemon tells the node's networking.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Where DNS listens.
    pub dns_addr: SocketAddr,
    /// Whether a DNS address that cannot be served is an error (an explicit
    /// `--dns-addr`) or only a warning (the default `<advertise>:53`, which may be taken
    /// or need privileges): the node then runs without DNS for its containers.
    pub dns_required: bool,
    /// The host's resolv.conf, whose nameservers get the names outside `mill.`.
    pub resolv_conf: String,
    /// Where the ingress proxy listens.
    pub http_addr: SocketAddr,
    /// Whether an HTTP address that cannot be served is an error (an explicit
    /// `--http-addr`) or only a warning (the default `0.0.0.0:80`).
    pub http_required: bool,
    /// Where the ingress proxy serves HTTPS.
    pub https_addr: SocketAddr,
    /// Whether an HTTPS address that cannot be served is an error (an explicit
    /// `--https-addr`) or only a warning (the default `0.0.0.0:443`).
    pub https_required: bool,
    /// The cluster's secret key: the certificates' Secrets are sealed with it.
    pub secret_key: [u8; 32],
    /// The node's metrics, which the proxy counts in.
    pub metrics: Option<crate::metrics::Metrics>,
    /// The cluster token guarding the barrier route.
    pub token: String,
    /// Timings.
    pub knobs: NetKnobs,
}

/// The node's networking, running.
pub struct Net {
    /// The routing table's handle.
    pub routing: table::Routing,
    /// The certificates and challenges the proxy serves.
    pub tls: std::sync::Arc<tls::Tls>,
    /// The node RPC routes (the routing barrier), to merge into the API router.
    pub router: axum::Router,
}

/// Why networking could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The DNS address is taken or not local.
    #[error("cannot serve DNS on {addr}: {source}")]
    Dns {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The ingress proxy's HTTPS address is taken or not local.
    #[error("cannot serve the ingress proxy's HTTPS on {addr}: {source}")]
    Https {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The ingress proxy's address is taken or not local.
    #[error("cannot serve the ingress proxy on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the table, DNS (when configured), the VIP listeners and the ingress proxy.
pub async fn start(store: Store, config: NetConfig) -> Result<Net, NetError> {
    let routing = table::follow(store.clone());
    let addr = config.dns_addr;
    let dns = dns::DnsConfig {
        addr,
        upstreams: dns::upstreams(&config.resolv_conf, addr),
        forward_timeout: config.knobs.dns_forward_timeout,
    };
    match dns::serve(dns, routing.clone()).await {
        Ok(()) => {}
        Err(source) if config.dns_required => return Err(NetError::Dns { addr, source }),
        Err(err) => tracing::warn!(
            "cannot serve DNS on {addr}: {err}; containers on this node cannot resolve .mill names (pass --dns-addr)"
        ),
    }
    vip::run(
        routing.clone(),
        vip::VipConfig {
            connect_timeout: config.knobs.vip_connect_timeout,
        },
    );
    let tls = tls::follow(store, crate::api::SecretBox::new(&config.secret_key));
    let http = proxy::ProxyConfig {
        addr: config.http_addr,
        knobs: config.knobs.proxy.clone(),
        metrics: config.metrics.clone(),
        tls: Some(tls.clone()),
        https: false,
    };
    match proxy::serve(routing.clone(), http.clone()).await {
        Ok(_) => {}
        Err(source) if config.http_required => {
            return Err(NetError::Http {
                addr: config.http_addr,
                source,
            })
        }
        Err(err) => tracing::warn!(
            "cannot serve the ingress proxy on {}: {err}; this node routes no HTTP (pass --http-addr)",
            config.http_addr
        ),
    }
    let https = proxy::ProxyConfig {
        addr: config.https_addr,
        https: true,
        ..http
    };
    match proxy::serve(routing.clone(), https).await {
        Ok(_) => {}
        Err(source) if config.https_required => {
            return Err(NetError::Https {
                addr: config.https_addr,
                source,
            })
        }
        Err(err) => tracing::warn!(
            "cannot serve the ingress proxy's HTTPS on {}: {err}; this node routes no HTTPS (pass --https-addr)",
            config.https_addr
        ),
    }
    let router = barrier::router(routing.clone(), config.token, config.knobs.routing_poll);
    Ok(Net {
        routing,
        tls,
        router,
    })
}
