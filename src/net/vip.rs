//! The VIP balancer (SPEC §5): a TCP listener on every service's `VIP:port` on this node,
//! each connection sent to the service's backend (cluster-wide) with the fewest
//! connections in flight through this node; a failed connect moves on to the next
//! backend. A connection, once made, is copied byte for byte until either side closes,
//! whatever happens to the table afterwards: a backend leaving the table gets no new
//! connections, the ones in flight finish.
//!
//! `127.77.x.y` is on loopback (Linux routes all of 127/8 locally), so binding needs no
//! address set up. Listeners bind with `SO_REUSEPORT`, so several nodes sharing one
//! network namespace (nodes on one host) can all serve the same `VIP:port`.

use super::table::{Backend, Routing};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// How the balancer connects.
#[derive(Debug, Clone)]
pub struct VipConfig {
    /// `MILL_VIP_CONNECT_TIMEOUT_MS` (2000): one connect attempt to a backend.
    pub connect_timeout: Duration,
}

/// Keeps one listener per `(VIP, port)` of the table, until the process ends.
pub fn run(routing: Routing, config: VipConfig) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = routing.changes();
        let mut listeners: BTreeMap<SocketAddr, Listener> = BTreeMap::new();
        // Addresses that could not be bound: said once, retried with every table.
        let mut failed: BTreeSet<SocketAddr> = BTreeSet::new();
        let rotation = Arc::new(AtomicUsize::new(0));
        loop {
            let table = routing.load();
            listeners.retain(|addr, _| table.vips.contains_key(addr));
            failed.retain(|addr| table.vips.contains_key(addr));
            for addr in table.vips.keys() {
                if listeners.contains_key(addr) {
                    continue;
                }
                match bind(*addr) {
                    Ok(listener) => {
                        tracing::debug!("VIP {addr}: listening");
                        failed.remove(addr);
                        let task = tokio::spawn(accept(
                            listener,
                            *addr,
                            routing.clone(),
                            config.clone(),
                            rotation.clone(),
                        ));
                        listeners.insert(*addr, Listener(task));
                    }
                    Err(err) => {
                        if failed.insert(*addr) {
                            tracing::warn!(
                                "cannot listen on service address {addr}: {err}; is another process bound to it?"
                            );
                        }
                    }
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}

/// An accept loop; stops when the service leaves the table (dropped).
struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept(
    listener: TcpListener,
    addr: SocketAddr,
    routing: Routing,
    config: VipConfig,
    rotation: Arc<AtomicUsize>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let routing = routing.clone();
                let config = config.clone();
                let turn = rotation.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    relay(client, addr, &routing, &config, turn).await;
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: the next accept may work.
                tracing::warn!("VIP {addr}: accept failed: {err}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Connects `client` to a backend of the service at `addr` and copies both ways.
async fn relay(
    mut client: TcpStream,
    addr: SocketAddr,
    routing: &Routing,
    config: &VipConfig,
    turn: usize,
) {
    let table = routing.load();
    let Some(service) = table.vips.get(&addr).and_then(|s| table.services.get(s)) else {
        return;
    };
    let candidates = least_loaded_first(&service.backends, turn);
    let service = service.name.clone();
    drop(table);
    for backend in candidates {
        // Counted from before the connect, and only to a backend still in the newest
        // table once counted: a barrier answer that left this backend out of the table
        // either saw this count or made us skip it, so a drain never misses a connection.
        let in_flight = backend.load.start();
        if !still_routed(routing, &service, &backend) {
            continue;
        }
        let connected =
            tokio::time::timeout(config.connect_timeout, TcpStream::connect(backend.address)).await;
        match connected {
            Ok(Ok(mut upstream)) => {
                upstream.set_nodelay(true).ok();
                client.set_nodelay(true).ok();
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!("VIP {addr} → {}: {err}", backend.address);
                }
                drop(in_flight);
                return;
            }
            Ok(Err(err)) => {
                tracing::debug!("VIP {addr}: cannot connect to {}: {err}", backend.address)
            }
            Err(_) => tracing::debug!("VIP {addr}: connect to {} timed out", backend.address),
        }
    }
    tracing::debug!("VIP {addr}: no backend accepted the connection");
}

fn still_routed(routing: &Routing, service: &super::table::Name, backend: &Backend) -> bool {
    routing
        .load()
        .services
        .get(service)
        .is_some_and(|s| s.backends.iter().any(|b| b.alloc == backend.alloc))
}

/// The backends in the order to try them: fewest in flight first; ties in turn, so idle
/// backends share sequential connections.
fn least_loaded_first(backends: &[Backend], turn: usize) -> Vec<Backend> {
    let n = backends.len().max(1);
    let mut order: Vec<(u32, usize, &Backend)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.load.in_flight(), (i + n - turn % n) % n, b))
        .collect();
    order.sort_by_key(|(load, tie, _)| (*load, *tie));
    order.into_iter().map(|(_, _, b)| b.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::table::{Load, Name};

    fn backend(name: &str) -> Backend {
        Backend {
            alloc: Name {
                namespace: "default".into(),
                name: name.into(),
            },
            node: "node-1".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            load: Arc::new(Load::default()),
        }
    }

    fn names(backends: &[Backend]) -> Vec<String> {
        backends.iter().map(|b| b.alloc.name.clone()).collect()
    }

    #[tokio::test]
    async fn a_failed_connect_moves_on_to_the_next_backend() {
        use crate::net::table::{RoutingTable, ServiceRoutes};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A port nothing listens on any more.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = live.accept().await {
                stream.write_all(b"live").await.ok();
            }
        });
        let name = Name {
            namespace: "default".into(),
            name: "web".into(),
        };
        let mut backends = vec![backend("dead"), backend("live")];
        backends[0].address = dead;
        backends[1].address = live_addr;
        let vip: SocketAddr = SocketAddr::new([127, 77, 254, 253].into(), dead.port());
        let mut table = RoutingTable::default();
        table.vips.insert(vip, name.clone());
        table.services.insert(
            name.clone(),
            Arc::new(ServiceRoutes {
                name,
                vip: None,
                port: vip.port(),
                routes: Vec::new(),
                backends,
            }),
        );
        let _balancer = run(
            Routing::fixed(table),
            VipConfig {
                connect_timeout: Duration::from_secs(5),
            },
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut answers = Vec::new();
        while answers.len() < 4 {
            match TcpStream::connect(vip).await {
                Ok(mut stream) => {
                    let mut text = String::new();
                    stream.read_to_string(&mut text).await.unwrap();
                    answers.push(text);
                }
                Err(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the VIP never listened"
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
        assert_eq!(
            answers, ["live"; 4],
            "every connection reaches the live backend"
        );
    }

    #[test]
    fn the_least_loaded_backend_comes_first_and_idle_ones_take_turns() {
        let backends = vec![backend("a"), backend("b"), backend("c")];
        let firsts: Vec<String> = (0..3)
            .map(|turn| names(&least_loaded_first(&backends, turn))[0].clone())
            .collect();
        assert_eq!(firsts, ["a", "b", "c"]);
        let _busy_a = backends[0].load.start();
        let _busy_b = backends[1].load.start();
        let _busy_b2 = backends[1].load.start();
        assert_eq!(names(&least_loaded_first(&backends, 0)), ["c", "a", "b"]);
    }
}
