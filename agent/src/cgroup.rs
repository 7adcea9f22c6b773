//! Reading a container's cgroup: whether the kernel's OOM killer struck it. cgroup v2
//! (`memory.events`) and v1 (`memory.oom_control`) alike.

use std::path::Path;

/// The cgroup filesystem root.
const ROOT: &str = "/sys/fs/cgroup";

/// Whether the cgroup at `path` (as in the runtime spec's `cgroupsPath`) saw an OOM kill.
pub fn oom_killed(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    let v2 = Path::new(ROOT).join(path).join("memory.events");
    let v1 = Path::new(ROOT)
        .join("memory")
        .join(path)
        .join("memory.oom_control");
    [v2, v1]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| oom_kills(&text) > 0)
}

/// The `oom_kill N` counter of a `memory.events` or `memory.oom_control` file.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counters_are_read_from_v1_and_v2_files() {
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kills(v2), 1);
        assert_eq!(oom_kills(v1), 2);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }
}
