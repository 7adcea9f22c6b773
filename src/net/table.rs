//! The routing table: what DNS, the VIP balancer and (later) the ingress proxy of this node
//! route to, computed from the store's Services, Allocs and Nodes.
//!
//! One task ([`follow`]) owns the objects it watched and rebuilds an immutable
//! [`RoutingTable`] after every batch of watch events, published behind an `ArcSwap` so
//! readers never lock. The table says up to which store revision it is current
//! ([`RoutingTable::revision`]): the routing barrier's answer.
//!
//! Why the store's watch and not a kube reflector: a node that catches up by snapshot gets
//! the snapshot's difference as synthetic events from the watch hub, and the hub's
//! `applied` revision moves only after the events of that revision were handed to the
//! watchers. So "read the store's applied revision, then drain the watches" gives a table
//! that has seen every change up to that revision, including changes to kinds it does not
//! care about (a Deploy, a heartbeat): the barrier never waits for an event that does not
//! concern routing.
//!
//! Backends are the allocs the controllers are about to route or route: service allocs
//! that are healthy, wanted running and not draining (DESIGN's barrier: an alloc is marked
//! `Routed=True` only after every node's table has it, so the table must not wait for that
//! mark; a draining alloc leaves the table at once, and is marked unrouted after every
//! node applied that).

use crate::store::{Event, EventType, Rv, Store};
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use mill_crds::{Alloc, AllocPhase, DesiredState, Node, OwnerKind, Route, Service};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

const SERVICES: &str = "mill.dev/services";
const ALLOCS: &str = "mill.dev/allocs";
const NODES: &str = "mill.dev/nodes";

/// A namespaced name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// One immutable version of this node's routing state.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// The store revision this table has applied: every change at or below it is in it.
    pub revision: Rv,
    /// Every service, by namespace and name.
    pub services: BTreeMap<Name, Arc<ServiceRoutes>>,
    /// Every placed alloc (services and tasks): its node's address, for
    /// `<alloc-id>.mill`.
    pub allocs: HashMap<Name, IpAddr>,
    /// `(VIP, port)` → service, for the VIP listeners.
    pub vips: BTreeMap<SocketAddr, Name>,
    /// The in-flight counters of every active service alloc, routed or draining: what
    /// the barrier reports, so a drain waits for connections that outlive routing.
    pub loads: BTreeMap<Name, Arc<Load>>,
}

/// What one service routes: its stable address, its ingress routes and its backends.
#[derive(Debug)]
pub struct ServiceRoutes {
    /// The service.
    pub name: Name,
    /// Its virtual IP, once the controllers allocated it.
    pub vip: Option<Ipv4Addr>,
    /// The service port (the VIP's port).
    pub port: u16,
    /// Its ingress routes (Host + path prefix + websocket), for the proxy.
    pub routes: Vec<Route>,
    /// Where traffic goes: healthy, running, not draining allocs.
    pub backends: Vec<Backend>,
}

/// One alloc traffic may go to.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The alloc.
    pub alloc: Name,
    /// The node it runs on.
    pub node: String,
    /// `node-ip:host-port`.
    pub address: SocketAddr,
    /// Connections (VIP) and requests (proxy) in flight to it through this node.
    pub load: Arc<Load>,
}

/// The in-flight counter of one backend; shared by every table version that has it.
/// Sequentially consistent, so that "count, then check the backend is still in the
/// newest table" (VIP, proxy) and "publish a table, then read the counts" (the barrier)
/// cannot both miss each other.
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicU32,
}

impl Load {
    /// What is in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts one connection or request until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// One connection or request in flight; ends when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The handle readers hold: the current table, and a way to wait for a revision.
#[derive(Clone)]
pub struct Routing {
    table: Arc<ArcSwap<RoutingTable>>,
    revision: watch::Receiver<Rv>,
    nudge: Arc<Notify>,
}

impl Routing {
    /// The current table (lock-free).
    pub fn load(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The current table without touching its reference count, which every thread
    /// shares: for a quick look on a hot path (hold it briefly, never across an await).
    pub fn peek(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// A receiver that sees every new table's revision.
    pub fn changes(&self) -> watch::Receiver<Rv> {
        self.revision.clone()
    }

    /// Asks the table task to catch up with the store's applied revision now, even if no
    /// event concerned it (the barrier asks for revisions of other kinds' writes too).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }
}

/// Starts the task that keeps the table current with `store`; returns its handle once the
/// first table (from a full list) is published.
pub fn follow(store: Store) -> Routing {
    let mut state = State::default();
    let feeds = [SERVICES, ALLOCS, NODES].map(|resource| Feed::open(&store, resource, &mut state));
    let first = state.build(store.applied_rv().max(state.listed));
    let revision = first.revision;
    let table = Arc::new(ArcSwap::from_pointee(first));
    let (tx, rx) = watch::channel(revision);
    let nudge = Arc::new(Notify::new());
    let routing = Routing {
        table: table.clone(),
        revision: rx,
        nudge: nudge.clone(),
    };
    tokio::spawn(run(store, state, feeds, table, tx, nudge));
    routing
}

async fn run(
    store: Store,
    mut state: State,
    mut feeds: [Feed; 3],
    table: Arc<ArcSwap<RoutingTable>>,
    tx: watch::Sender<Rv>,
    nudge: Arc<Notify>,
) {
    let mut revision = table.load().revision;
    // A feed reopened and ended again before any event: the store closed its watches.
    let mut fresh = [false; 3];
    loop {
        let [a, b, c] = &mut feeds;
        let first = tokio::select! {
            e = a.watch.next() => Some((0, e)),
            e = b.watch.next() => Some((1, e)),
            e = c.watch.next() => Some((2, e)),
            () = nudge.notified() => None,
        };
        // Every event at or below `applied` is already queued in the feeds (the hub
        // publishes before it moves `applied`), so draining them now makes the table
        // current up to `applied`.
        let applied = store.applied_rv();
        let mut changed = false;
        let mut reopen = [false; 3];
        if let Some((i, event)) = first {
            match event {
                Some(event) => {
                    fresh[i] = false;
                    changed |= state.apply(&event);
                }
                None => reopen[i] = true,
            }
        }
        for (i, feed) in feeds.iter_mut().enumerate() {
            while !reopen[i] {
                match feed.watch.next().now_or_never() {
                    Some(Some(event)) => {
                        fresh[i] = false;
                        changed |= state.apply(&event);
                    }
                    Some(None) => reopen[i] = true,
                    None => break,
                }
            }
        }
        for (i, feed) in feeds.iter_mut().enumerate() {
            if reopen[i] {
                if fresh[i] {
                    tracing::debug!("routing table: the store closed its watches");
                    return;
                }
                // Fell a whole watch window behind: relist and follow again.
                *feed = Feed::open(&store, feed.resource, &mut state);
                fresh[i] = true;
                changed = true;
            }
        }
        let newest = applied.max(state.newest).max(state.listed);
        if changed || newest > revision {
            revision = newest;
            table.store(Arc::new(state.build(revision)));
            tx.send_replace(revision);
        }
    }
}

/// One resource's watch.
struct Feed {
    resource: &'static str,
    watch: crate::store::Watch,
}

impl Feed {
    /// Lists `resource` into `state` and watches from the list's revision.
    fn open(store: &Store, resource: &'static str, state: &mut State) -> Feed {
        loop {
            let (objects, rv) = store.list(resource, None);
            state.replace(resource, &objects);
            state.listed = state.listed.max(rv);
            match store.watch(resource, None, rv) {
                Ok(watch) => return Feed { resource, watch },
                // The list and the watch straddled a snapshot install: list again.
                Err(expired) => tracing::debug!("routing table: {resource} watch: {expired}"),
            }
        }
    }
}

/// The objects the table is computed from, as this task last saw them.
#[derive(Default)]
struct State {
    services: BTreeMap<Name, Service>,
    allocs: BTreeMap<Name, Alloc>,
    nodes: BTreeMap<String, Node>,
    /// In-flight counters by alloc, kept across rebuilds while the alloc is active.
    loads: BTreeMap<Name, Arc<Load>>,
    /// The newest event revision applied.
    newest: Rv,
    /// The newest list revision.
    listed: Rv,
}

impl State {
    fn replace(&mut self, resource: &str, objects: &[Arc<Value>]) {
        match resource {
            SERVICES => self.services = parse_all(objects),
            ALLOCS => self.allocs = parse_all(objects),
            _ => {
                self.nodes = parse_all::<Node>(objects)
                    .into_iter()
                    .map(|(k, v)| (k.name, v))
                    .collect()
            }
        }
    }

    /// Applies one event; whether it may change the table.
    fn apply(&mut self, event: &Event) -> bool {
        self.newest = self.newest.max(event.rv);
        let name = Name {
            namespace: event.key.namespace.clone().unwrap_or_default(),
            name: event.key.name.clone(),
        };
        let deleted = event.kind == EventType::Deleted;
        match event.key.resource.as_str() {
            SERVICES => upsert(&mut self.services, name, &event.object, deleted),
            ALLOCS => upsert(&mut self.allocs, name, &event.object, deleted),
            NODES => upsert(&mut self.nodes, name.name, &event.object, deleted),
            _ => return false,
        }
        true
    }

    fn build(&mut self, revision: Rv) -> RoutingTable {
        let node_ip = |node: &str| -> Option<IpAddr> {
            self.nodes
                .get(node)
                .and_then(|n| n.spec.address.parse().ok())
        };
        let mut loads = BTreeMap::new();
        let mut backends: BTreeMap<Name, Vec<Backend>> = BTreeMap::new();
        let mut allocs = HashMap::new();
        for (name, alloc) in &self.allocs {
            let Some(node) = alloc.spec.node_name.as_deref() else {
                continue;
            };
            let status = alloc.status.clone().unwrap_or_default();
            let address: Option<SocketAddr> = status
                .address
                .as_deref()
                .and_then(|a| a.parse().ok())
                .or_else(|| Some(SocketAddr::new(node_ip(node)?, alloc.spec.host_port?)));
            if let Some(ip) = node_ip(node).or(address.map(|a| a.ip())) {
                allocs.insert(name.clone(), ip);
            }
            let active =
                alloc.spec.desired_state == DesiredState::Running && !status.phase.is_terminal();
            if alloc.spec.owner.kind != OwnerKind::Service || !active {
                continue;
            }
            let load = self.loads.get(name).cloned().unwrap_or_default();
            loads.insert(name.clone(), load.clone());
            let routable = status.phase == AllocPhase::Healthy && !alloc.spec.draining;
            if let (true, Some(address)) = (routable, address) {
                let service = Name {
                    namespace: name.namespace.clone(),
                    name: alloc.spec.owner.name.clone(),
                };
                backends.entry(service).or_default().push(Backend {
                    alloc: name.clone(),
                    node: node.to_string(),
                    address,
                    load,
                });
            }
        }
        self.loads.clone_from(&loads);
        let mut services = BTreeMap::new();
        let mut vips = BTreeMap::new();
        for (name, service) in &self.services {
            let vip: Option<Ipv4Addr> = service
                .status
                .as_ref()
                .and_then(|s| s.virtual_ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            if let Some(vip) = vip {
                vips.insert(SocketAddr::new(vip.into(), service.spec.port), name.clone());
            }
            let routes = ServiceRoutes {
                name: name.clone(),
                vip,
                port: service.spec.port,
                routes: service.spec.routes.clone(),
                backends: backends.remove(name).unwrap_or_default(),
            };
            services.insert(name.clone(), Arc::new(routes));
        }
        RoutingTable {
            revision,
            services,
            allocs,
            vips,
            loads,
        }
    }
}

fn upsert<K: Ord, T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<K, T>,
    key: K,
    object: &Value,
    deleted: bool,
) {
    if deleted {
        map.remove(&key);
        return;
    }
    match serde_json::from_value(object.clone()) {
        Ok(parsed) => {
            map.insert(key, parsed);
        }
        Err(err) => {
            tracing::warn!("routing table: skipping an object it cannot read: {err}");
            map.remove(&key);
        }
    }
}

fn parse_all<T: serde::de::DeserializeOwned + kube::Resource>(
    objects: &[Arc<Value>],
) -> BTreeMap<Name, T> {
    objects
        .iter()
        .filter_map(|o| match serde_json::from_value::<T>((**o).clone()) {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                tracing::warn!("routing table: skipping an object it cannot read: {err}");
                None
            }
        })
        .map(|o| {
            let meta = o.meta();
            let name = Name {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            };
            (name, o)
        })
        .collect()
}

#[cfg(test)]
impl Routing {
    /// A handle on a fixed table, for tests of the readers.
    pub(crate) fn fixed(table: RoutingTable) -> Routing {
        let (tx, rx) = watch::channel(table.revision);
        // Never changes, never closes: readers wait for a next table that never comes.
        std::mem::forget(tx);
        Routing {
            table: Arc::new(ArcSwap::from_pointee(table)),
            revision: rx,
            nudge: Arc::new(Notify::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(rv: Rv, resource: &str, object: Value) -> Event {
        let meta = &object["metadata"];
        Event {
            rv,
            kind: EventType::Added,
            key: crate::store::Key {
                resource: resource.to_string(),
                namespace: meta["namespace"].as_str().map(str::to_string),
                name: meta["name"].as_str().unwrap_or_default().to_string(),
            },
            object: Arc::new(object),
        }
    }

    fn alloc(name: &str, phase: &str, draining: bool, desired: &str) -> Value {
        json!({
            "apiVersion": "mill.dev/v1", "kind": "Alloc",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "owner": {"kind": "service", "name": "web"},
                "template": {"image": "busybox", "cpu": 0.1, "memory": "32M"},
                "nodeName": "node-1", "hostPort": 20001,
                "draining": draining, "desiredState": desired,
            },
            "status": {"phase": phase, "address": "10.0.0.1:20001"},
        })
    }

    fn state() -> State {
        let mut state = State::default();
        state.apply(&event(
            1,
            NODES,
            json!({"apiVersion": "mill.dev/v1", "kind": "Node", "metadata": {"name": "node-1"},
                   "spec": {"raftId": 1, "address": "10.0.0.1", "apiAddress": "10.0.0.1:4400"}}),
        ));
        state.apply(&event(
            2,
            SERVICES,
            json!({"apiVersion": "mill.dev/v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"image": "busybox", "port": 8080},
                   "status": {"virtualIp": "127.77.0.9"}}),
        ));
        state
    }

    fn backends(table: &RoutingTable) -> Vec<String> {
        let web = Name {
            namespace: "default".into(),
            name: "web".into(),
        };
        table.services[&web]
            .backends
            .iter()
            .map(|b| b.alloc.name.clone())
            .collect()
    }

    #[test]
    fn healthy_running_not_draining_allocs_are_backends_before_they_are_marked_routed() {
        let mut state = state();
        for (i, (name, phase, draining, desired)) in [
            ("healthy", "healthy", false, "Running"),
            ("starting", "running", false, "Running"),
            ("draining", "healthy", true, "Running"),
            ("stopping", "healthy", false, "Stopped"),
            ("failed", "failed", false, "Running"),
        ]
        .into_iter()
        .enumerate()
        {
            state.apply(&event(
                10 + i as Rv,
                ALLOCS,
                alloc(name, phase, draining, desired),
            ));
        }
        let table = state.build(20);
        assert_eq!(table.revision, 20);
        assert_eq!(backends(&table), ["healthy"]);
        let vip: SocketAddr = "127.77.0.9:8080".parse().unwrap();
        assert_eq!(table.vips[&vip].name, "web");
        let active: Vec<&str> = table.loads.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(
            active,
            ["draining", "healthy", "starting"],
            "in-flight counters are kept for every active alloc, draining ones too"
        );
        let by_name = |n: &str| Name {
            namespace: "default".into(),
            name: n.into(),
        };
        assert_eq!(
            table.allocs[&by_name("failed")],
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "every placed alloc answers its node's address"
        );
    }

    #[test]
    fn an_in_flight_counter_survives_a_rebuild_and_the_alloc_leaving_the_backends() {
        let mut state = state();
        state.apply(&event(10, ALLOCS, alloc("a", "healthy", false, "Running")));
        let table = state.build(10);
        let web = &table.services.values().next().unwrap().backends[0];
        let _connection = web.load.start();
        state.apply(&event(11, ALLOCS, alloc("a", "healthy", true, "Running")));
        let table = state.build(11);
        assert!(
            backends(&table).is_empty(),
            "a draining alloc leaves at once"
        );
        let load = table.loads.values().next().unwrap();
        assert_eq!(load.in_flight(), 1, "the connection in flight still counts");
    }
}
