//! The node's port pool: which host ports live allocs hold. The scheduler assigns ports;
//! the agent only refuses to start a second live alloc on a port that is taken.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// An inclusive range of host ports (`20000-29999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port.
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 20000,
            last: 29999,
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid port range {s:?}: expected FIRST-LAST, e.g. 20000-29999");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Ports held by live allocs, by alloc uid.
#[derive(Debug, Clone, Default)]
pub struct PortsInUse {
    holders: HashMap<u16, String>,
}

impl PortsInUse {
    /// Records that `uid` holds `port`; false (and nothing changes) if another alloc does.
    pub fn claim(&mut self, port: u16, uid: &str) -> bool {
        match self.holders.get(&port) {
            Some(holder) if holder != uid => false,
            _ => {
                self.holders.insert(port, uid.to_string());
                true
            }
        }
    }

    /// The alloc holding `port`.
    pub fn holder(&self, port: u16) -> Option<&str> {
        self.holders.get(&port).map(String::as_str)
    }

    /// Releases whatever `uid` holds.
    pub fn release(&mut self, uid: &str) {
        self.holders.retain(|_, h| h != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject_nonsense() {
        assert_eq!(
            "20000-29999".parse::<PortRange>().unwrap(),
            PortRange::default()
        );
        for bad in ["", "20000", "3-1", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_port_has_one_holder_until_released() {
        let mut ports = PortsInUse::default();
        assert!(ports.claim(20001, "a"));
        assert!(ports.claim(20001, "a"));
        assert!(!ports.claim(20001, "b"));
        assert_eq!(ports.holder(20001), Some("a"));
        ports.release("a");
        assert!(ports.claim(20001, "b"));
    }
}
