//! The API test harness: a real single-node store (temp data dir, `Store::open` +
//! `bootstrap`) and the API router served on `127.0.0.1:0`, on a runtime of its own so
//! tests may block on `kubectl` freely; plus a kubeconfig pointing at it.
//!
//! The port speaks TLS (self-signed, trusted by the kubeconfig) and plain HTTP: kubectl
//! sends its bearer token only over `https://`, kube-rs here has no TLS backend.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use mill::api::{ApiConfig, ApiTuning};
use mill::store::{Key, Store, StoreConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The cluster token of every harness.
pub const TOKEN: &str = "test-token-0123456789";

/// How long a harness waits for its store to elect itself and create `default`.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Knobs a test may change.
#[derive(Debug, Clone)]
pub struct Options {
    /// The store's watch window (events retained for replay).
    pub watch_window: usize,
    /// How often watches get bookmarks.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            watch_window: 10_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running API server on a real store.
pub struct Harness {
    /// `http://127.0.0.1:PORT` (kube-rs).
    pub url: String,
    /// `https://127.0.0.1:PORT` (kubectl).
    pub https_url: String,
    /// A kubeconfig for `url` with [`TOKEN`].
    pub kubeconfig: PathBuf,
    /// A fresh kubectl discovery cache for this harness.
    pub cache_dir: PathBuf,
    /// The store, for assertions on what was (not) stored.
    pub store: Store,
    /// The runtime serving the API; dropped (and the server with it) with the harness.
    runtime: Option<tokio::runtime::Runtime>,
    dir: tempfile::TempDir,
}

impl Harness {
    /// Starts a harness with default options.
    pub fn start() -> Harness {
        Harness::start_with(Options::default())
    }

    /// Starts a harness with `options`.
    pub fn start_with(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data_dir = dir.path().join("data");
        let identity =
            mill::api::tls::TlsIdentity::self_signed(&["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        // Blocking on the harness runtime from a thread of its own works both from plain
        // tests and from inside a `#[tokio::test]`.
        let (addr, store) = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(serve(data_dir, options, identity.clone())))
                .join()
                .unwrap()
        });
        let url = format!("http://{addr}");
        let https_url = format!("https://{addr}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(&https_url, TOKEN, &identity.cert_pem),
        )
        .unwrap();
        let cache_dir = dir.path().join("kube-cache");
        Harness {
            url,
            https_url,
            kubeconfig,
            cache_dir,
            store,
            runtime: Some(runtime),
            dir,
        }
    }

    /// A scratch directory of this harness.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to a file in the harness dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The real kubectl, pointed at this harness with a fresh discovery cache.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs `kubectl args...` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.kubectl().args(args).output().unwrap()
    }

    /// Runs kubectl and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl and asserts it failed; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The stored object at `resource`/`namespace`/`name`, as the store holds it.
    pub fn stored(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<serde_json::Value> {
        self.store
            .get(&Key {
                resource: resource.to_string(),
                namespace: namespace.map(str::to_string),
                name: name.to_string(),
            })
            .map(|v| (*v).clone())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let store = self.store.clone();
            std::thread::spawn(move || {
                runtime.block_on(async move {
                    let _ = store.shutdown().await;
                });
                runtime.shutdown_background();
            })
            .join()
            .ok();
        }
    }
}

/// A kubeconfig for `server` with bearer `token`, trusting `ca_pem` (the shape
/// `mill kubeconfig` should print).
pub fn kubeconfig_text(server: &str, token: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mill\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: mill\n  user:\n    token: {token}\ncontexts:\n- name: mill\n  context:\n    cluster: mill\n    user: mill\n    namespace: default\ncurrent-context: mill\n"
    )
}

async fn serve(
    data_dir: PathBuf,
    options: Options,
    identity: mill::api::tls::TlsIdentity,
) -> (std::net::SocketAddr, Store) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Store::open(StoreConfig {
        data_dir,
        node_id: 1,
        api_addr: addr.to_string(),
        token: TOKEN.to_string(),
        election_timeout_ms: 300,
        snapshot_threshold: 5000,
        snapshot_log_keep: 1000,
        watch_window: options.watch_window,
    })
    .await
    .unwrap();
    store.bootstrap().await.unwrap();
    let app = mill::api::router_with(
        store.clone(),
        ApiConfig {
            token: TOKEN.to_string(),
            secret_key: [42; 32],
            server_address: addr.to_string(),
        },
        ApiTuning {
            bookmark_interval: options.bookmark_interval,
            default_namespace_retry: Duration::from_millis(50),
        },
    );
    tokio::spawn(async move {
        let _ = mill::api::tls::serve(listener, app, &identity).await;
    });
    let deadline = Instant::now() + START_DEADLINE;
    let default = Key {
        resource: "/namespaces".into(),
        namespace: None,
        name: "default".into(),
    };
    while store.get(&default).is_none() {
        assert!(
            Instant::now() < deadline,
            "the store never created namespace default"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, store)
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub fn poll<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
