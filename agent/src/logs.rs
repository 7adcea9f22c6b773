//! Per-alloc logs on this node: the files the log driver writes
//! (`<data-dir>/logs/<namespace>/<alloc>/`), a bounded in-memory tail of each running
//! alloc fed by a follower that reads the files as they grow, and the node-wide size
//! and age limits.

use crate::logdriver::{DriverSettings, StoredLine, CURRENT, SETTINGS};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, watch};

/// Lines each running alloc keeps in memory.
pub const RING: usize = 2000;

/// One log line as the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    /// RFC 3339 UTC.
    pub ts: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line.
    pub line: String,
    /// The alloc's name.
    pub alloc: String,
}

/// `(namespace, alloc name)`.
type AllocKey = (String, String);

struct Followed {
    ring: Mutex<VecDeque<LogLine>>,
    lines: broadcast::Sender<LogLine>,
    stop: watch::Sender<bool>,
}

/// The node's log store.
#[derive(Clone)]
pub struct LogStore {
    root: PathBuf,
    max_bytes: u64,
    retention: Duration,
    poll: Duration,
    followed: Arc<Mutex<HashMap<AllocKey, Arc<Followed>>>>,
}

impl LogStore {
    /// A store under `root` with a node-wide byte cap and an age limit; followers look
    /// for new lines every `poll`.
    pub fn new(root: PathBuf, max_bytes: u64, retention: Duration, poll: Duration) -> LogStore {
        LogStore {
            root,
            max_bytes,
            retention,
            poll,
            followed: Arc::default(),
        }
    }

    /// The directory of one alloc's logs.
    pub fn dir(&self, namespace: &str, alloc: &str) -> PathBuf {
        self.root.join(namespace).join(alloc)
    }

    /// Creates the alloc's log directory and the driver's settings in it.
    pub fn prepare(&self, namespace: &str, alloc: &str) -> std::io::Result<PathBuf> {
        let dir = self.dir(namespace, alloc);
        std::fs::create_dir_all(&dir)?;
        let settings = DriverSettings {
            rotate_bytes: (self.max_bytes / 64).clamp(64 << 10, 64 << 20),
        };
        std::fs::write(
            dir.join(SETTINGS),
            serde_json::to_vec(&settings).map_err(std::io::Error::other)?,
        )?;
        Ok(dir)
    }

    /// Starts following an alloc's files (idempotent): its recent lines go into memory
    /// and to live subscribers.
    pub fn follow(&self, namespace: &str, alloc: &str) {
        let key = (namespace.to_string(), alloc.to_string());
        let mut map = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&key) {
            return;
        }
        let (lines, _) = broadcast::channel(1024);
        let (stop, stopped) = watch::channel(false);
        let followed = Arc::new(Followed {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            lines,
            stop,
        });
        map.insert(key, followed.clone());
        let dir = self.dir(namespace, alloc);
        let alloc = alloc.to_string();
        let poll = self.poll;
        tokio::spawn(follow_files(dir, alloc, followed, stopped, poll));
    }

    /// Stops following an alloc (after a last read of what it wrote).
    pub fn unfollow(&self, namespace: &str, alloc: &str) {
        let key = (namespace.to_string(), alloc.to_string());
        if let Some(f) = self
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
        {
            f.stop.send_replace(true);
        }
    }

    /// The last `n` lines, and a live subscription if the alloc is followed.
    pub fn tail(
        &self,
        namespace: &str,
        alloc: &str,
        n: usize,
    ) -> (Vec<LogLine>, Option<broadcast::Receiver<LogLine>>) {
        let key = (namespace.to_string(), alloc.to_string());
        let followed = self
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(f) = followed {
            // Subscribe before reading the ring so no line falls between the two.
            let rx = f.lines.subscribe();
            let ring = f.ring.lock().unwrap_or_else(|p| p.into_inner());
            if n <= ring.len() || ring.len() < RING {
                let skip = ring.len().saturating_sub(n);
                return (ring.iter().skip(skip).cloned().collect(), Some(rx));
            }
            drop(ring);
            return (read_tail(&self.dir(namespace, alloc), alloc, n), Some(rx));
        }
        (read_tail(&self.dir(namespace, alloc), alloc, n), None)
    }

    /// Whether any logs exist for the alloc.
    pub fn exists(&self, namespace: &str, alloc: &str) -> bool {
        self.dir(namespace, alloc).is_dir()
    }

    /// Enforces the age limit and the node-wide byte cap: rotated files past retention
    /// go, directories of allocs not in `live` go once their newest file is past
    /// retention, then the oldest files go until the total fits.
    pub fn enforce(&self, live: &HashSet<(String, String)>) {
        let now = SystemTime::now();
        let old = |t: SystemTime| now.duration_since(t).unwrap_or_default() > self.retention;
        let mut files: Vec<(SystemTime, u64, PathBuf, bool)> = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(&self.root) else {
            return;
        };
        for ns in namespaces.flatten() {
            let Ok(allocs) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for alloc in allocs.flatten() {
                let key = (
                    ns.file_name().to_string_lossy().into_owned(),
                    alloc.file_name().to_string_lossy().into_owned(),
                );
                let is_live = live.contains(&key);
                let mut newest = SystemTime::UNIX_EPOCH;
                let mut entries = Vec::new();
                for file in std::fs::read_dir(alloc.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let name = file.file_name().to_string_lossy().into_owned();
                    if !name.ends_with(".log") {
                        continue;
                    }
                    let Ok(meta) = file.metadata() else { continue };
                    let modified = meta.modified().unwrap_or(now);
                    newest = newest.max(modified);
                    entries.push((modified, meta.len(), file.path(), name == CURRENT));
                }
                if !is_live && old(newest) {
                    std::fs::remove_dir_all(alloc.path()).ok();
                    continue;
                }
                for (modified, len, path, current) in entries {
                    if !current && old(modified) {
                        std::fs::remove_file(&path).ok();
                    } else {
                        // A live alloc's current file is never removed.
                        files.push((modified, len, path, current && is_live));
                    }
                }
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort_by_key(|f| f.0);
        for (_, len, path, protected) in files {
            if total <= self.max_bytes {
                break;
            }
            if !protected && std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}

fn parse(line: &str, alloc: &str) -> Option<LogLine> {
    let stored: StoredLine = serde_json::from_str(line).ok()?;
    Some(LogLine {
        ts: stored.ts,
        stream: stored.stream,
        line: stored.line,
        alloc: alloc.to_string(),
    })
}

/// The log files of a directory, oldest first (rotated by name, then current).
fn files_in_order(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u128, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let nanos = name.strip_suffix(".log")?.parse().ok()?;
            Some((nanos, e.path()))
        })
        .collect();
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(dir.join(CURRENT));
    out
}

/// The last `n` lines from the files.
fn read_tail(dir: &Path, alloc: &str, n: usize) -> Vec<LogLine> {
    read_files(files_in_order(dir), alloc, n)
}

/// The last `n` lines of the rotated files only.
fn read_tail_rotated(dir: &Path, alloc: &str, n: usize) -> Vec<LogLine> {
    let mut files = files_in_order(dir);
    files.pop();
    read_files(files, alloc, n)
}

fn read_files(files: Vec<PathBuf>, alloc: &str, n: usize) -> Vec<LogLine> {
    let mut out: VecDeque<LogLine> = VecDeque::new();
    for path in files {
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Some(l) = parse(&line, alloc) {
                out.push_back(l);
                if out.len() > n {
                    out.pop_front();
                }
            }
        }
    }
    out.into()
}

async fn follow_files(
    dir: PathBuf,
    alloc: String,
    followed: Arc<Followed>,
    mut stopped: watch::Receiver<bool>,
    poll: Duration,
) {
    {
        // Rotated files into memory; current.log is then read through the same reader
        // that follows it, so no line falls between preload and follow.
        let mut ring = followed.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.extend(read_tail_rotated(&dir, &alloc, RING));
    }
    let current = dir.join(CURRENT);
    let mut reader: Option<(BufReader<std::fs::File>, u64)> = open_at_start(&current);
    let mut partial = String::new();
    loop {
        let stop = *stopped.borrow();
        // Read what the open file has; then, if current.log is another file (rotated),
        // switch to it from its start.
        if let Some((r, _)) = reader.as_mut() {
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        partial.push_str(&line);
                        if partial.ends_with('\n') {
                            if let Some(l) = parse(partial.trim_end(), &alloc) {
                                push(&followed, l);
                            }
                            partial.clear();
                        }
                    }
                }
            }
        }
        let now_inode = std::fs::metadata(&current).ok().map(|m| m.ino());
        let rotated = match (&reader, now_inode) {
            (Some((_, ino)), Some(now)) => *ino != now,
            (None, Some(_)) => true,
            _ => false,
        };
        if rotated {
            reader = std::fs::File::open(&current).ok().and_then(|f| {
                let ino = f.metadata().ok()?.ino();
                Some((BufReader::new(f), ino))
            });
            partial.clear();
            continue;
        }
        if stop {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stopped.changed() => {}
        }
    }
}

fn open_at_start(path: &Path) -> Option<(BufReader<std::fs::File>, u64)> {
    let file = std::fs::File::open(path).ok()?;
    let ino = file.metadata().ok()?.ino();
    Some((BufReader::new(file), ino))
}

fn push(followed: &Followed, line: LogLine) {
    let mut ring = followed.ring.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() == RING {
        ring.pop_front();
    }
    ring.push_back(line.clone());
    drop(ring);
    // No subscribers is fine.
    let _ = followed.lines.send(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_lines(path: &Path, lines: &[&str]) {
        let mut text = String::new();
        for l in lines {
            let stored = StoredLine {
                ts: "2026-01-01T00:00:00Z".into(),
                stream: "stdout".into(),
                line: l.to_string(),
            };
            text.push_str(&serde_json::to_string(&stored).unwrap());
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn tail_reads_rotated_files_then_current_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write_lines(&dir.path().join("100.log"), &["a", "b"]);
        write_lines(&dir.path().join("200.log"), &["c"]);
        write_lines(&dir.path().join(CURRENT), &["d", "e"]);
        let lines: Vec<String> = read_tail(dir.path(), "x", 4)
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(lines, vec!["b", "c", "d", "e"]);
    }

    #[test]
    fn enforce_removes_oldest_files_of_dead_allocs_first_and_keeps_live_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(
            dir.path().to_path_buf(),
            100,
            Duration::from_secs(3600),
            Duration::from_millis(10),
        );
        let live = store.dir("default", "live");
        let dead = store.dir("default", "dead");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join(CURRENT), vec![b'x'; 80]).unwrap();
        std::fs::write(live.join(CURRENT), vec![b'x'; 80]).unwrap();
        let keep = HashSet::from([("default".to_string(), "live".to_string())]);
        store.enforce(&keep);
        assert!(live.join(CURRENT).exists());
        assert!(!dead.join(CURRENT).exists());
    }
}
