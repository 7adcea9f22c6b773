//! A 3-node store cluster in one process: real openraft, real sled in temp dirs, real HTTP
//! on 127.0.0.1 ephemeral ports (each node serves `Store::router()` with axum).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use mill::store::{
    Applied, EventType, Key, Op, Part, Role, Rv, Store, StoreConfig, StoreError, Txn, Watch,
    FROM_HEADER,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TOKEN: &str = "test-token";
/// Election timeout of the test clusters (small, so failover tests are quick).
const ELECTION_TIMEOUT_MS: u64 = 400;
/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);
const SERVICES: &str = "mill.dev/services";

/// Nodes whose links are cut: requests to them and from them are refused.
type Cut = Arc<Mutex<HashSet<u64>>>;

struct Node {
    id: u64,
    addr: String,
    dir: PathBuf,
    store: Option<Store>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

struct Cluster {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    snapshot_threshold: u64,
    snapshot_log_keep: u64,
    watch_window: usize,
    cut: Cut,
}

impl Cluster {
    async fn start(
        snapshot_threshold: u64,
        snapshot_log_keep: u64,
        watch_window: usize,
    ) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            _tmp: tmp,
            snapshot_threshold,
            snapshot_log_keep,
            watch_window,
            cut: Arc::default(),
        };
        for id in 1..=3 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let dir = cluster._tmp.path().join(format!("node-{id}"));
            cluster.nodes.push(Node {
                id,
                addr,
                dir,
                store: None,
                server: None,
            });
            cluster.boot(id, listener).await;
        }
        cluster.store(1).bootstrap().await.unwrap();
        eventually("node 1 leads", || async {
            cluster.store(1).raft_info().role == Role::Leader
        })
        .await;
        for id in 2..=3 {
            let addr = cluster.node(id).addr.clone();
            cluster.store(1).add_voter(id, addr).await.unwrap();
        }
        eventually("every node sees three voters", || async {
            (1..=3).all(|id| cluster.store(id).raft_info().voters.len() == 3)
        })
        .await;
        cluster
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn store(&self, id: u64) -> Store {
        self.node(id).store.clone().expect("node is up")
    }

    /// Opens node `id`'s store from its data dir and serves its router on `listener`.
    async fn boot(&mut self, id: u64, listener: TcpListener) -> Store {
        let store = self.open(id).await;
        self.serve(id, listener, store.clone());
        store
    }

    async fn open(&mut self, id: u64) -> Store {
        let node = &self.nodes[(id - 1) as usize];
        let store = Store::open(StoreConfig {
            data_dir: node.dir.clone(),
            node_id: id,
            api_addr: node.addr.clone(),
            token: TOKEN.into(),
            election_timeout_ms: ELECTION_TIMEOUT_MS,
            snapshot_threshold: self.snapshot_threshold,
            snapshot_log_keep: self.snapshot_log_keep,
            watch_window: self.watch_window,
        })
        .await
        .unwrap();
        self.nodes[(id - 1) as usize].store = Some(store.clone());
        store
    }

    fn serve(&mut self, id: u64, listener: TcpListener, store: Store) {
        let cut = self.cut.clone();
        let router = store
            .router()
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                let cut = cut.clone();
                async move { refuse_cut_links(id, cut, req, next).await }
            }));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .await
                .unwrap();
        });
        self.nodes[(id - 1) as usize].server = Some((stop, server));
    }

    /// Shuts node `id` down: store first, then its HTTP server.
    async fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(store) = node.store.take() {
            store.shutdown().await.unwrap();
        }
        if let Some((stop, server)) = node.server.take() {
            stop.send(()).ok();
            server.abort();
            server.await.ok();
        }
    }

    /// Restarts node `id` from its data dir on its old address.
    async fn restart(&mut self, id: u64) -> Store {
        let listener = TcpListener::bind(&self.node(id).addr).await.unwrap();
        self.boot(id, listener).await
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.store.as_ref())
            .map(|s| s.raft_info())
            .find(|i| i.role == Role::Leader)
            .map(|i| i.node_id)
    }

    async fn wait_leader(&self) -> u64 {
        eventually("a leader is elected", || async { self.leader().is_some() }).await;
        self.leader().unwrap()
    }

    fn follower(&self) -> u64 {
        let leader = self.leader();
        self.nodes
            .iter()
            .find(|n| n.store.is_some() && Some(n.id) != leader)
            .map(|n| n.id)
            .unwrap()
    }

    fn set_cut(&self, id: u64, cut: bool) {
        let mut set = self.cut.lock().unwrap();
        if cut {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    async fn shutdown(mut self) {
        for id in 1..=3 {
            self.kill(id).await;
        }
    }
}

async fn refuse_cut_links(me: u64, cut: Cut, req: Request, next: Next) -> Response {
    let from: Option<u64> = req
        .headers()
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let refused = {
        let cut = cut.lock().unwrap();
        cut.contains(&me) || from.is_some_and(|f| cut.contains(&f))
    };
    if refused {
        return (StatusCode::SERVICE_UNAVAILABLE, "link cut by the test").into_response();
    }
    next.run(req).await
}

/// Polls `condition` until it holds; fails the test after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn key(name: &str) -> Key {
    Key {
        resource: SERVICES.into(),
        namespace: Some("default".into()),
        name: name.into(),
    }
}

fn service(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "mill.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": { "image": image },
    })
}

fn txn(op: Op) -> Txn {
    Txn {
        ops: vec![op],
        now: "2026-01-01T00:00:00Z".into(),
    }
}

async fn create(store: &Store, name: &str, image: &str) -> Applied {
    store
        .propose(txn(Op::Create {
            key: key(name),
            object: service(name, image),
        }))
        .await
        .unwrap()
}

async fn update(
    store: &Store,
    name: &str,
    image: &str,
    expected_rv: Option<Rv>,
) -> Result<Applied, StoreError> {
    store
        .propose(txn(Op::Update {
            key: key(name),
            object: service(name, image),
            expected_rv,
            part: Part::Main,
        }))
        .await
}

async fn delete(store: &Store, name: &str) -> Applied {
    store
        .propose(txn(Op::Delete {
            key: key(name),
            expected_rv: None,
            expected_uid: None,
        }))
        .await
        .unwrap()
}

fn image_of(store: &Store, name: &str) -> Option<String> {
    store
        .get(&key(name))
        .and_then(|o| o["spec"]["image"].as_str().map(str::to_string))
}

/// name → image of every service, as a node's list shows them.
fn contents(store: &Store) -> BTreeMap<String, Value> {
    store
        .list(SERVICES, None)
        .0
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap().to_string(),
                Value::clone(o),
            )
        })
        .collect()
}

/// What a client builds from a watch: name → last object, and the last rv seen.
#[derive(Default)]
struct Model {
    objects: BTreeMap<String, Value>,
    last_rv: Rv,
    /// How many events came at the same rv, at most: above 1 only for a snapshot's diff,
    /// since every write of these tests changes one object.
    most_at_one_rv: usize,
    at_last_rv: usize,
}

impl Model {
    fn absorb(&mut self, event: mill::store::Event) {
        assert!(event.rv >= self.last_rv, "events arrive in rv order");
        self.at_last_rv = if event.rv == self.last_rv {
            self.at_last_rv + 1
        } else {
            1
        };
        self.most_at_one_rv = self.most_at_one_rv.max(self.at_last_rv);
        self.last_rv = event.rv;
        match event.kind {
            EventType::Added | EventType::Modified => {
                self.objects
                    .insert(event.key.name, Value::clone(&event.object));
            }
            EventType::Deleted => {
                self.objects.remove(&event.key.name);
            }
        }
    }

    /// Absorbs events until the model equals `target` (or the watch ends).
    async fn follow_until(&mut self, watch: &mut Watch, target: &BTreeMap<String, Value>) {
        let until = Instant::now() + DEADLINE;
        while &self.objects != target {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, watch.next()).await {
                Ok(Some(event)) => self.absorb(event),
                Ok(None) => panic!("the watch ended before converging"),
                Err(_) => panic!(
                    "the watch did not converge: {:?} vs {target:?}",
                    self.objects.keys()
                ),
            }
        }
    }

    /// Absorbs everything until the watch ends (its node shut down).
    async fn follow_to_end(&mut self, watch: &mut Watch) {
        while let Ok(Some(event)) = tokio::time::timeout(DEADLINE, watch.next()).await {
            self.absorb(event);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_are_visible_after_read_barrier_on_every_node() {
    let cluster = Cluster::start(5000, 1000, 1000).await;
    let follower = cluster.follower();
    let leader = cluster.wait_leader().await;

    let on_follower = create(&cluster.store(follower), "from-follower", "v1").await;
    // Read-your-writes on the proposing node, without a barrier.
    assert_eq!(
        image_of(&cluster.store(follower), "from-follower").as_deref(),
        Some("v1")
    );
    let on_leader = create(&cluster.store(leader), "from-leader", "v1").await;
    assert!(on_leader.rv > on_follower.rv);

    for id in 1..=3 {
        let store = cluster.store(id);
        let rv = store.read_barrier().await.unwrap();
        assert!(
            rv >= on_leader.rv,
            "node {id} applied {rv} < {}",
            on_leader.rv
        );
        assert_eq!(
            image_of(&store, "from-follower").as_deref(),
            Some("v1"),
            "node {id}"
        );
        assert_eq!(
            image_of(&store, "from-leader").as_deref(),
            Some("v1"),
            "node {id}"
        );
        let stored = store.get(&key("from-leader")).unwrap();
        assert_eq!(
            stored["metadata"]["resourceVersion"],
            on_leader.rv.to_string()
        );
        let info = store.raft_info();
        assert_eq!(info.leader_id, Some(leader));
        assert!(store.applied_rv() >= on_leader.rv, "node {id}");
        assert!(info.applied_index > 0 && info.commit_index >= info.applied_index);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_conflicts_also_through_forwarding() {
    let cluster = Cluster::start(5000, 1000, 1000).await;
    let follower = cluster.store(cluster.follower());

    let created = create(&follower, "svc", "v1").await;
    let updated = update(&follower, "svc", "v2", Some(created.rv))
        .await
        .unwrap();
    assert_eq!(
        updated.objects[0].as_ref().unwrap()["metadata"]["generation"],
        2
    );

    let stale = update(&follower, "svc", "v3", Some(created.rv)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let exists = follower
        .propose(txn(Op::Create {
            key: key("svc"),
            object: service("svc", "v9"),
        }))
        .await;
    assert!(
        matches!(exists, Err(StoreError::AlreadyExists(_))),
        "{exists:?}"
    );
    assert_eq!(image_of(&follower, "svc").as_deref(), Some("v2"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_rv_then_follows_live_without_gaps_or_duplicates() {
    let cluster = Cluster::start(5000, 1000, 1000).await;
    let follower = cluster.store(cluster.follower());
    let leader = cluster.store(cluster.wait_leader().await);

    let first = create(&leader, "a", "v1").await;
    let second = update(&leader, "a", "v2", None).await.unwrap();
    let created = create(&leader, "b", "v1").await;
    follower.read_barrier().await.unwrap();

    let mut watch = follower.watch(SERVICES, Some("default"), first.rv).unwrap();
    let mut other_ns = follower.watch(SERVICES, Some("elsewhere"), 0).unwrap();
    let third = delete(&leader, "a").await;
    let fourth = create(&follower, "c", "v1").await;

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((event.rv, event.kind, event.key.name.clone()));
    }
    assert_eq!(
        seen,
        vec![
            (second.rv, EventType::Modified, "a".to_string()),
            (created.rv, EventType::Added, "b".to_string()),
            (third.rv, EventType::Deleted, "a".to_string()),
            (fourth.rv, EventType::Added, "c".to_string()),
        ]
    );
    // Nothing more is pending, and the other namespace saw nothing.
    create(&leader, "d", "v1").await;
    let next = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.key.name, "d");
    assert!(tokio::time::timeout(POLL, other_ns.next()).await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_an_rv_older_than_the_window_is_expired() {
    let cluster = Cluster::start(5000, 1000, 5).await;
    let leader = cluster.store(cluster.wait_leader().await);
    let first = create(&leader, "s0", "v1").await;
    for i in 1..10 {
        create(&leader, &format!("s{i}"), "v1").await;
    }
    let expired = leader
        .watch(SERVICES, None, first.rv)
        .err()
        .expect("expired");
    assert_eq!(expired.requested, first.rv);
    assert!(expired.oldest > first.rv);
    let (_, rv) = leader.list(SERVICES, None);
    assert!(leader.watch(SERVICES, None, rv).is_ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_accepts_writes_after_the_leader_shuts_down() {
    let mut cluster = Cluster::start(5000, 1000, 1000).await;
    let old = cluster.wait_leader().await;
    create(&cluster.store(old), "before", "v1").await;

    cluster.kill(old).await;
    eventually("a new leader is elected", || async {
        cluster.leader().is_some_and(|l| l != old)
    })
    .await;
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    // Propose on either survivor: the write is forwarded to the new leader if needed.
    let after = create(&cluster.store(survivors[0]), "after", "v1").await;
    for &id in &survivors {
        let store = cluster.store(id);
        assert!(store.read_barrier().await.unwrap() >= after.rv);
        assert_eq!(image_of(&store, "before").as_deref(), Some("v1"));
        assert_eq!(image_of(&store, "after").as_deref(), Some("v1"));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_from_its_data_dir() {
    let mut cluster = Cluster::start(5000, 1000, 1000).await;
    let id = cluster.follower();
    let written = create(&cluster.store(id), "kept", "v1").await;
    cluster.kill(id).await;
    let leader = cluster.store(cluster.wait_leader().await);
    let while_down = create(&leader, "while-down", "v1").await;

    let store = cluster.restart(id).await;
    // The state on disk is there before Raft catches up.
    assert!(store.applied_rv() >= written.rv);
    assert_eq!(image_of(&store, "kept").as_deref(), Some("v1"));
    assert!(store.read_barrier().await.unwrap() >= while_down.rv);
    assert_eq!(image_of(&store, "while-down").as_deref(), Some("v1"));
    assert_eq!(store.raft_info().voters.len(), 3);
    // Bootstrapping a resumed member changes nothing.
    store.bootstrap().await.unwrap();
    cluster.shutdown().await;
}

/// Writes that make a node that missed them need a snapshot: creates, updates, deletes.
async fn churn(store: &Store, round: &str) {
    for i in 0..40 {
        create(store, &format!("{round}-{i}"), "v1").await;
    }
    for i in 0..40 {
        if i % 3 == 0 {
            delete(store, &format!("{round}-{i}")).await;
        } else if i % 3 == 1 {
            update(store, &format!("{round}-{i}"), "v2", None)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_by_snapshot_and_its_rewatch_converges() {
    let mut cluster = Cluster::start(50, 10, 1000).await;
    let id = cluster.follower();
    let leader = cluster.store(cluster.wait_leader().await);
    churn(&leader, "early").await;
    let lagging = cluster.store(id);
    lagging.read_barrier().await.unwrap();

    // A client watches the node from the start, until the node goes down.
    let mut model = Model::default();
    let mut watch = lagging.watch(SERVICES, None, 0).unwrap();
    model.follow_until(&mut watch, &contents(&lagging)).await;
    cluster.kill(id).await;
    model.follow_to_end(&mut watch).await;

    churn(&leader, "late").await;
    delete(&leader, "early-1").await;
    let leader_snapshot = leader.snapshot_rv().expect("the leader built a snapshot");
    assert!(leader_snapshot > model.last_rv);

    // The node comes back; the client rewatches from the last rv it saw.
    let store = cluster.restart(id).await;
    let mut watch = store.watch(SERVICES, None, model.last_rv).unwrap();
    store.read_barrier().await.unwrap();
    assert!(store.snapshot_rv().expect("installed a snapshot") > model.last_rv);
    let target = contents(&leader);
    assert_eq!(contents(&store), target);
    model.follow_until(&mut watch, &target).await;
    assert!(
        model.most_at_one_rv > 1,
        "the watch got the snapshot's diff"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_catches_up_by_snapshot_and_its_open_watch_converges() {
    let cluster = Cluster::start(50, 10, 1000).await;
    let id = cluster.follower();
    let leader_id = cluster.wait_leader().await;
    let leader = cluster.store(leader_id);
    churn(&leader, "early").await;
    let lagging = cluster.store(id);
    lagging.read_barrier().await.unwrap();
    let mut model = Model::default();
    let mut watch = lagging.watch(SERVICES, None, 0).unwrap();
    model.follow_until(&mut watch, &contents(&lagging)).await;

    let cut_at = model.last_rv;
    cluster.set_cut(id, true);
    let others: Vec<u64> = (1..=3).filter(|&n| n != id).collect();
    let writer = cluster.store(others[0]);
    churn(&writer, "late").await;
    delete(&writer, "early-2").await;
    eventually("the others built a snapshot past the cut node", || async {
        others.iter().all(|&n| {
            cluster
                .store(n)
                .snapshot_rv()
                .is_some_and(|s| s > model.last_rv)
        })
    })
    .await;

    cluster.set_cut(id, false);
    let target = contents(&writer);
    // The same watch, open all along, delivers the snapshot's diff and what follows.
    model.follow_until(&mut watch, &target).await;
    lagging.read_barrier().await.unwrap();
    assert!(lagging.snapshot_rv().expect("installed a snapshot") > cut_at);
    assert!(
        model.most_at_one_rv > 1,
        "the watch got the snapshot's diff"
    );
    assert_eq!(contents(&lagging), contents(&cluster.store(others[0])));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_forwarded_from_a_follower_and_take_effect() {
    let cluster = Cluster::start(5000, 1000, 1000).await;
    let leader = cluster.wait_leader().await;
    // The member to remove is not the leader; the caller is the remaining follower.
    let removed = (1..=3).find(|&id| id != leader).unwrap();
    let caller = (1..=3).find(|&id| id != leader && id != removed).unwrap();

    cluster.store(caller).remove_member(removed).await.unwrap();
    eventually("the others see two voters", || async {
        [leader, caller].iter().all(|&id| {
            cluster
                .store(id)
                .raft_info()
                .voters
                .iter()
                .all(|(v, _)| *v != removed)
        })
    })
    .await;
    let written = create(&cluster.store(caller), "after-removal", "v1").await;
    assert!(cluster.store(leader).read_barrier().await.unwrap() >= written.rv);

    let addr = cluster.node(removed).addr.clone();
    cluster
        .store(caller)
        .add_voter(removed, addr)
        .await
        .unwrap();
    let back = cluster.store(removed);
    eventually("the re-added node is a voter again", || async {
        back.raft_info().voters.len() == 3
    })
    .await;
    assert!(back.read_barrier().await.unwrap() >= written.rv);
    assert_eq!(image_of(&back, "after-removal").as_deref(), Some("v1"));
    cluster.shutdown().await;
}
