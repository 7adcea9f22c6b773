//! The real `kubectl` (1.32) against mill's API server.

mod common;

use common::Harness;

#[test]
fn api_resources_lists_mill_kinds_with_short_names() {
    let h = Harness::start();
    let out = h.ok(&["api-resources"]);
    println!("{out}");
    for (name, short) in [("services", "svc"), ("nodes", "no"), ("volumes", "vol"), ("namespaces", "ns")] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from api-resources:\n{out}"));
        assert!(line.split_whitespace().any(|w| w == short), "{line}");
    }
    for name in ["tasks", "allocs", "deploys", "secrets"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name} missing:\n{out}");
    }
}

