//! A local OCI registry: Debian's `docker-registry` on a loopback port with a temp
//! config and storage; images pushed into it with `skopeo`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the registry may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running registry.
pub struct Registry {
    /// `IP:PORT`.
    pub host: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// Starts one on a free loopback port and waits until it listens.
    pub fn start() -> Registry {
        Registry::start_at(format!("127.0.0.1:{}", super::free_port()))
    }

    /// Starts one listening on `host` (`IP:PORT`, e.g. a test bridge's address) and waits
    /// until it listens.
    pub fn start_at(host: String) -> Registry {
        super::require(&["docker-registry", "skopeo"]);
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let registry = Registry { host, dir, child };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let ok = std::net::TcpStream::connect(&registry.host).is_ok();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {} within {START_DEADLINE:?}",
                registry.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Pushes an OCI archive as `IP:PORT/<repo_tag>`; returns that reference.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> String {
        let reference = format!("{}/{repo_tag}", self.host);
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo runs");
        assert!(
            out.status.success(),
            "skopeo copy to {reference} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
