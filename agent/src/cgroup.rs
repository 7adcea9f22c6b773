//! A container's cgroup: whether the kernel's OOM killer struck it, and signalling every
//! process in it. cgroup v2 and v1 alike.

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

/// The v1 hierarchies whose `cgroup.procs` lists a container's processes, in the order tried
/// (runc's cgroupfs driver puts the container in each under the same path).
const V1_HIERARCHIES: [&str; 4] = ["pids", "memory", "cpu", "freezer"];

/// Sends `signal` to every process of the cgroup at `path`, as `runc kill --all` does
/// (read `cgroup.procs`, signal each pid), without the `runc` process that containerd's
/// kill runs for it (~11 ms of a rolling update's step, benches/README.md). Returns how
/// many processes were signalled; an error when the cgroup cannot be read or lists none,
/// so the caller falls back to containerd. Like runc's SIGTERM, it does not freeze the
/// cgroup first: a child forked after the read misses the signal, and goes when the
/// container's init exits (the kernel kills the rest of its pid namespace) or at the
/// stop grace's SIGKILL.
pub fn signal_all(path: &str, signal: i32) -> std::io::Result<usize> {
    let path = path.trim_start_matches('/');
    let candidates = std::iter::once(Path::new(ROOT).join(path)).chain(
        V1_HIERARCHIES
            .iter()
            .map(|h| Path::new(ROOT).join(h).join(path)),
    );
    let procs = candidates
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .find(|text| !text.trim().is_empty())
        .ok_or_else(|| std::io::Error::other(format!("no processes listed in cgroup /{path}")))?;
    let mut signalled = 0;
    for pid in pids(&procs) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        if unsafe { libc::kill(pid, signal) } == 0 {
            signalled += 1;
        }
    }
    if signalled == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(signalled)
}

/// The pids of a `cgroup.procs` file (never 0 or negative: those would signal groups).
fn pids(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 0)
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

    #[test]
    fn pids_skip_what_would_signal_a_process_group() {
        let listed: Vec<i32> = pids("12\n0\n-1\n\n 345 \nx\n").collect();
        assert_eq!(listed, vec![12, 345]);
    }

    #[test]
    fn a_cgroup_that_does_not_exist_is_an_error_not_a_signal() {
        assert!(signal_all("/mill-test/no-such-container", 0).is_err());
    }
}
