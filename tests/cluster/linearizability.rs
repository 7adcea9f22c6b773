//! A linearizability check of a register history recorded against a real cluster while
//! its leader is killed and nodes restart. The checker is the Wing–Gong / Lowe search
//! (as in porcupine): linearize calls one at a time, backtrack when a return is reached
//! before its call was linearized, memoize (linearized set, state).

use crate::harness::{eventually, task, Cluster, TOKEN};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// One operation on a register (a Task's `spec.image`).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Write(String),
    Read,
    /// Compare-and-set: if the value is `.0`, make it `.1`.
    Cas(String, String),
}

/// What a client saw; `None` = unknown (timeout, 5xx): it may or may not have happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    Value(Option<String>),
    Cas(bool),
}

#[derive(Debug, Clone)]
pub struct Call {
    pub op: Op,
    pub outcome: Option<Outcome>,
    pub start: u64,
    /// `u64::MAX` when the outcome is unknown.
    pub end: u64,
}

/// Applies `op` to `state`; `None` if the observed outcome is impossible from `state`.
fn step(state: &Option<String>, op: &Op, outcome: &Option<Outcome>) -> Option<Option<String>> {
    match (op, outcome) {
        (Op::Write(v), _) => Some(Some(v.clone())),
        (Op::Read, Some(Outcome::Value(v))) => (v == state).then(|| state.clone()),
        (Op::Read, _) => Some(state.clone()),
        (Op::Cas(from, to), Some(Outcome::Cas(true))) => {
            (state.as_deref() == Some(from)).then(|| Some(to.clone()))
        }
        (Op::Cas(from, _), Some(Outcome::Cas(false))) => {
            (state.as_deref() != Some(from)).then(|| state.clone())
        }
        (Op::Cas(from, to), _) => Some(if state.as_deref() == Some(from) {
            Some(to.clone())
        } else {
            state.clone()
        }),
    }
}

/// Whether `history` (one register, initially `initial`) is linearizable.
pub fn is_linearizable(history: &[Call], initial: Option<String>) -> bool {
    // Events: (time, is_return, call index); calls before returns at equal times.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, c) in history.iter().enumerate() {
        events.push((c.start, false, i));
        events.push((c.end, true, i));
    }
    events.sort();
    let n = events.len();
    // A doubly linked list over event positions, with a head sentinel at n.
    let mut next: Vec<usize> = (1..=n).chain([0]).collect();
    let mut prev: Vec<usize> = std::iter::once(n).chain(0..n - 1).chain([n - 1]).collect();
    next[n] = if n > 0 { 0 } else { n };
    if n > 0 {
        prev[0] = n;
        next[n - 1] = n;
        prev[n] = n - 1;
    }
    let mut ret_pos = vec![0; history.len()];
    for (pos, (_, is_ret, i)) in events.iter().enumerate() {
        if *is_ret {
            ret_pos[*i] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        next[prev[p]] = next[p];
        prev[next[p]] = prev[p];
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        next[prev[p]] = p;
        prev[next[p]] = p;
    };
    // The set of linearized calls as a bitset: the memo key is (set, state).
    let mut linearized = vec![0u64; history.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state = initial;
    let mut entry = next[n];
    while next[n] != n {
        let (_, is_ret, i) = events[entry];
        if !is_ret {
            let call = &history[i];
            if let Some(new_state) = step(&state, &call.op, &call.outcome) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), new_state.clone())) {
                    stack.push((entry, state));
                    state = new_state;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_pos[i]);
                    entry = next[n];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = next[entry];
        } else {
            let Some((call_pos, old_state)) = stack.pop() else {
                return false;
            };
            let i = events[call_pos].2;
            linearized[i / 64] &= !(1 << (i % 64));
            state = old_state;
            relink(&mut next, &mut prev, ret_pos[i]);
            relink(&mut next, &mut prev, call_pos);
            entry = next[call_pos];
        }
    }
    true
}

#[test]
fn the_checker_accepts_a_linearizable_history_and_rejects_a_stale_read() {
    let c = |op, outcome, start, end| Call {
        op,
        outcome,
        start,
        end,
    };
    let w = |v: &str| Op::Write(v.to_string());
    let val = |v: &str| Some(Outcome::Value(Some(v.to_string())));
    // Overlapping write and read: either order is fine.
    let ok = vec![
        c(w("a"), Some(Outcome::Ok), 0, 10),
        c(Op::Read, val("a"), 5, 6),
    ];
    assert!(is_linearizable(&ok, None));
    // A read that starts after write "b" returned but sees "a": stale.
    let stale = vec![
        c(w("a"), Some(Outcome::Ok), 0, 1),
        c(w("b"), Some(Outcome::Ok), 2, 3),
        c(Op::Read, val("a"), 4, 5),
    ];
    assert!(!is_linearizable(&stale, None));
    // Two CAS from the same value cannot both succeed.
    let double = vec![
        c(w("a"), Some(Outcome::Ok), 0, 1),
        c(
            Op::Cas("a".into(), "b".into()),
            Some(Outcome::Cas(true)),
            2,
            5,
        ),
        c(
            Op::Cas("a".into(), "c".into()),
            Some(Outcome::Cas(true)),
            2,
            5,
        ),
    ];
    assert!(!is_linearizable(&double, None));
    // An unknown write may have happened: a later read may see it or not.
    let unknown = vec![
        c(w("a"), Some(Outcome::Ok), 0, 1),
        c(w("b"), None, 2, u64::MAX),
        c(Op::Read, val("b"), 3, 4),
        c(Op::Read, val("b"), 5, 6),
    ];
    assert!(is_linearizable(&unknown, None));
}

/// What running one operation told the client.
enum Sent {
    /// The request never reached a server (connection refused): it did not happen.
    Not,
    /// It was sent; `None` = outcome unknown (timeout, 5xx, connection lost).
    Outcome(Option<Outcome>),
}

/// Runs `op` on register `key` through node `node`.
async fn run(cluster: &Cluster, node: usize, key: &str, op: &Op) -> Sent {
    let url = cluster.nodes[node].url(&format!("/apis/mill.dev/v1/namespaces/default/tasks/{key}"));
    let http = &cluster.http;
    let request = match op {
        Op::Write(v) => http.put(url).json(&task(key, v)),
        Op::Read => http.get(url),
        Op::Cas(from, to) => {
            let patch = json!([
                {"op": "test", "path": "/spec/image", "value": from},
                {"op": "replace", "path": "/spec/image", "value": to},
            ]);
            http.patch(url)
                .header("content-type", "application/json-patch+json")
                .body(patch.to_string())
        }
    };
    let resp = match request.bearer_auth(TOKEN).send().await {
        Ok(resp) => resp,
        Err(e) if e.is_connect() => return Sent::Not,
        Err(_) => return Sent::Outcome(None),
    };
    let status = resp.status().as_u16();
    Sent::Outcome(match (op, status) {
        (Op::Write(_), 200) => Some(Outcome::Ok),
        (Op::Read, 200) => resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .map(|body| Outcome::Value(body["spec"]["image"].as_str().map(str::to_string))),
        (Op::Cas(..), 200) => Some(Outcome::Cas(true)),
        // The test op failed against the value the server read: a definite "no".
        (Op::Cas(..), 422) => Some(Outcome::Cas(false)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn history_under_leader_kills_and_restarts_is_linearizable() {
    let cluster = Cluster::start(3, &[]).await;
    let keys = ["reg-a", "reg-b"];
    for key in keys {
        let resp = cluster.put_task(0, key, "v0", None).await.unwrap();
        assert_eq!(resp.status(), 201);
    }
    let epoch = Instant::now();
    let clients = 4;
    let max_ops_per_client = 150;
    let done = std::sync::atomic::AtomicBool::new(false);
    let history = std::sync::Mutex::new(vec![Vec::<Call>::new(); keys.len()]);
    let (cluster_ref, history_ref, done_ref) = (&cluster, &history, &done);
    let workers = (0..clients).map(|c| async move {
        // The last value this client saw per key: its CAS guesses.
        let mut last_seen = vec!["v0".to_string(); keys.len()];
        for n in 0..max_ops_per_client {
            if done_ref.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            // Pace the clients so their operations span the faults.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let k = (c + n) % keys.len();
            let node = (c * 7 + n) % 3;
            let op = match (c + n / 2) % 3 {
                0 => Op::Write(format!("c{c}-{n}")),
                1 => Op::Read,
                _ => Op::Cas(last_seen[k].clone(), format!("c{c}-{n}-cas")),
            };
            let start = epoch.elapsed().as_micros() as u64;
            let sent =
                tokio::time::timeout(Duration::from_secs(5), run(cluster_ref, node, keys[k], &op))
                    .await;
            let outcome = match sent {
                Ok(Sent::Not) => continue,
                Ok(Sent::Outcome(outcome)) => outcome,
                Err(_) => None,
            };
            let end = if outcome.is_some() {
                epoch.elapsed().as_micros() as u64
            } else {
                u64::MAX
            };
            match (&op, &outcome) {
                (Op::Read, None) => continue, // an unknown read constrains nothing
                (Op::Read, Some(Outcome::Value(Some(v)))) => last_seen[k] = v.clone(),
                (Op::Write(v), Some(_)) => last_seen[k] = v.clone(),
                (Op::Cas(_, v), Some(Outcome::Cas(true))) => last_seen[k] = v.clone(),
                _ => {}
            }
            history_ref.lock().unwrap()[k].push(Call {
                op,
                outcome,
                start,
                end,
            });
        }
    });
    // Kill the leader while the clients run, bring it back, then restart a follower.
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let leader = eventually(Duration::from_secs(10), "a leader", || cluster_ref.leader()).await;
        cluster_ref.nodes[leader].kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster_ref.nodes[leader].restart().await;
        let leader = eventually(Duration::from_secs(10), "a leader", || cluster_ref.leader()).await;
        let follower = (leader + 1) % 3;
        cluster_ref.nodes[follower].kill();
        cluster_ref.nodes[follower].restart().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        done_ref.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(chaos, futures::future::join_all(workers));
    let histories = history.into_inner().unwrap();
    for (k, h) in histories.iter().enumerate() {
        let unknown = h.iter().filter(|c| c.outcome.is_none()).count();
        let cas_ok = h
            .iter()
            .filter(|c| c.outcome == Some(Outcome::Cas(true)))
            .count();
        eprintln!(
            "{}: {} operations, {unknown} with unknown outcome, {cas_ok} successful CAS",
            keys[k],
            h.len()
        );
        assert!(h.len() > 10, "too few operations recorded on {}", keys[k]);
        assert!(
            is_linearizable(h, Some("v0".into())),
            "history of {} is not linearizable: {h:#?}",
            keys[k]
        );
    }
}
