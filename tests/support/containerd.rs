//! A private containerd per test: its own config, root, state and socket under a temp
//! dir; runc and overlayfs. Dropping it kills every task it ran, its shims and itself,
//! and unmounts what it mounted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long containerd may take to answer after it starts.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running private containerd.
pub struct Containerd {
    /// Its gRPC socket.
    pub socket: PathBuf,
    /// Where it keeps everything.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Starts one and waits until it answers.
    pub fn start() -> Containerd {
        super::require(&["containerd", "runc", "ctr", "containerd-shim-runc-v2"]);
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("mill-ctd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = dir.path();
        let socket = root.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"#,
            root = root.display(),
            sock = socket.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(root.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let ctd = Containerd { socket, dir, child };
        let deadline = Instant::now() + START_DEADLINE;
        while !ctd.ctr("default", &["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {START_DEADLINE:?}; its log:\n{}",
                ctd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ctd
    }

    /// Runs `ctr -a SOCKET -n NAMESPACE args...`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(namespace)
            .args(args)
            .output()
            .expect("ctr runs")
    }

    /// `ctr ... args` that must succeed; its stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr(namespace, args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Tasks of a namespace: (container id, pid, status).
    pub fn tasks(&self, namespace: &str) -> Vec<(String, u32, String)> {
        // Lenient (no panic): also used while dropping.
        String::from_utf8_lossy(&self.ctr(namespace, &["tasks", "ls"]).stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.parse().ok()?,
                    f.next()?.to_string(),
                ))
            })
            .collect()
    }

    /// Container ids of a namespace.
    pub fn containers(&self, namespace: &str) -> Vec<String> {
        self.ctr_ok(namespace, &["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// containerd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Pids of the shims serving this containerd (their command line names its socket).
    fn shims(&self) -> Vec<u32> {
        let needle = self.socket.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let text = String::from_utf8_lossy(&cmdline);
                (text.contains("containerd-shim") && text.contains(&needle)).then_some(pid)
            })
            .collect()
    }
}

fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        Command::new("umount").arg("-l").arg(p).status().ok();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let namespaces = self.ctr("default", &["namespaces", "ls", "-q"]);
        for ns in String::from_utf8_lossy(&namespaces.stdout).lines() {
            for (id, _, _) in self.tasks(ns) {
                self.ctr(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", &id]);
            }
        }
        for pid in self.shims() {
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .ok();
        }
        self.child.kill().ok();
        self.child.wait().ok();
        unmount_under(self.dir.path());
    }
}
