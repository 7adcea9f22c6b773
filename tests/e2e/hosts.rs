//! Test hosts: network namespaces with an address each on a bridge of the test's own.
//!
//! A [`Network`] owns one bridge and one /24 (`10.A.B.0/24`, the bridge itself at `.1`);
//! the subnet is reserved by creating the bridge, whose name encodes it, so concurrent
//! tests (separate processes under nextest) never share one: `ip link add` of an existing
//! name fails and the next subnet is tried. Each [`Host`] is a network namespace joined
//! to the bridge by a veth pair, at `.10`, `.11`, ... Dropping the network (also while
//! panicking) deletes the namespaces, veths and the bridge.

use std::process::Command;

/// How many /24s the tests may use: `10.64.0.0` to `10.127.255.0`.
const SUBNETS: u32 = 64 * 256;

/// A bridge and the hosts on it.
pub struct Network {
    /// The bridge's name (`mtXXXX`, the subnet index in hex).
    pub bridge: String,
    /// The bridge's (the test process's) own address, `10.A.B.1`.
    pub gateway: String,
    index: u32,
    hosts: Vec<String>,
}

/// One test host: a network namespace with one address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    /// Its address on the bridge.
    pub ip: String,
}

impl Host {
    /// `/run/netns/NAME`: what `MILL_NETNS_PATH` names so containers join this host.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// Runs `ip args...`; the error names the command and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (install iproute2: scripts/setup): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

impl Network {
    /// Makes a bridge on a free /24 and brings it up with its `.1` address.
    pub fn new() -> Network {
        super::support::require(&["ip"]);
        // Start where this process's pid points, so parallel tests rarely contend.
        let start = std::process::id() * 7 % SUBNETS;
        for step in 0..SUBNETS {
            let index = (start + step) % SUBNETS;
            let bridge = format!("mt{index:04x}");
            match ip(&["link", "add", &bridge, "type", "bridge"]) {
                Ok(()) => {}
                Err(e) if e.contains("File exists") => continue,
                Err(e) => panic!("cannot make the test bridge: {e}"),
            }
            let network = Network {
                gateway: format!("{}.1", Self::prefix_of(index)),
                bridge,
                index,
                hosts: Vec::new(),
            };
            ip_ok(&[
                "addr",
                "add",
                &format!("{}/24", network.gateway),
                "dev",
                &network.bridge,
            ]);
            ip_ok(&["link", "set", &network.bridge, "up"]);
            return network;
        }
        panic!("every test subnet 10.64.0.0/10 is taken; delete stale bridges (ip link show type bridge | grep mt)");
    }

    fn prefix_of(index: u32) -> String {
        format!("10.{}.{}", 64 + index / 256, index % 256)
    }

    /// A new host at `.10 + n` (n = hosts made so far), its loopback up.
    pub fn host(&mut self) -> Host {
        let n = self.hosts.len();
        let name = format!("{}-h{n}", self.bridge);
        let outside = format!("{}h{n}", self.bridge);
        let inside = format!("{}g{n}", self.bridge);
        let ip_addr = format!("{}.{}", Self::prefix_of(self.index), 10 + n);
        ip_ok(&["netns", "add", &name]);
        self.hosts.push(name.clone());
        ip_ok(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip_ok(&["link", "set", &outside, "master", &self.bridge]);
        ip_ok(&["link", "set", &outside, "up"]);
        ip_ok(&["link", "set", &inside, "netns", &name]);
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend_from_slice(args);
            ip_ok(&full);
        };
        exec(&["addr", "add", &format!("{ip_addr}/24"), "dev", &inside]);
        exec(&["link", "set", &inside, "up"]);
        exec(&["link", "set", "lo", "up"]);
        exec(&["route", "add", "default", "via", &self.gateway]);
        Host { name, ip: ip_addr }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        for name in &self.hosts {
            ip(&["netns", "del", name]).ok();
        }
        ip(&["link", "del", &self.bridge]).ok();
    }
}
