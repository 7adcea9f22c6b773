//! The real `kubectl` (1.32) against mill's API server.

mod common;

use common::Harness;

#[test]
fn api_resources_lists_mill_kinds_with_short_names() {
    let h = Harness::start();
    let out = h.ok(&["api-resources"]);
    println!("{out}");
    for (name, short) in [
        ("services", "svc"),
        ("nodes", "no"),
        ("volumes", "vol"),
        ("namespaces", "ns"),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from api-resources:\n{out}"));
        assert!(line.split_whitespace().any(|w| w == short), "{line}");
    }
    for name in ["tasks", "allocs", "deploys", "secrets"] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
}

const WEB: &str = "apiVersion: mill.dev/v1
kind: Service
metadata:
  name: web
spec:
  image: registry.example.com/web:v1
  port: 8080
  replicas: 2
";

#[test]
fn get_services_prints_printer_columns_and_yaml() {
    let h = Harness::start();
    let file = h.write("web.yaml", WEB);
    h.ok(&["apply", "-f", file.to_str().unwrap()]);
    let table = h.ok(&["get", "services"]);
    println!("{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "IMAGE", "REPLICAS", "HEALTHY", "REVISION", "AGE"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["web", "registry.example.com/web:v1", "2"]);
    let wide = h.ok(&["get", "svc", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("PORT"), "{wide}");
    assert!(wide.contains("8080"), "{wide}");
    let yaml = h.ok(&["get", "service", "web", "-o", "yaml"]);
    println!("{yaml}");
    for expected in [
        "apiVersion: mill.dev/v1",
        "kind: Service",
        "name: web",
        "uid:",
        "resourceVersion:",
        "creationTimestamp:",
        "generation: 1",
        "image: registry.example.com/web:v1",
        "memory: 256M",
    ] {
        assert!(yaml.contains(expected), "{expected} missing in\n{yaml}");
    }
}

#[test]
fn apply_twice_creates_then_configures() {
    let h = Harness::start();
    let file = h.write("web.yaml", WEB);
    let first = h.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(first.trim(), "service.mill.dev/web created");
    let unchanged = h.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(unchanged.trim(), "service.mill.dev/web unchanged");
    let file = h.write("web.yaml", &WEB.replace("replicas: 2", "replicas: 3"));
    let second = h.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(second.trim(), "service.mill.dev/web configured");
    let replicas = h.ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]);
    assert_eq!(replicas, "3 2");
}

#[test]
fn patch_and_edit_change_the_stored_service() {
    let h = Harness::start();
    let file = h.write("web.yaml", WEB);
    h.ok(&["apply", "-f", file.to_str().unwrap()]);
    let out = h.ok(&[
        "patch",
        "svc",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ]);
    assert_eq!(out.trim(), "service.mill.dev/web patched");
    let out = h.ok(&[
        "patch",
        "svc",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/image","value":"web:v2"}]"#,
    ]);
    assert_eq!(out.trim(), "service.mill.dev/web patched");
    assert_eq!(
        h.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.spec.image}"
        ]),
        "5 web:v2"
    );
    let err = h.fails(&["patch", "svc", "web", "-p", r#"{"spec":{"replicas":6}}"#]);
    assert!(
        err.contains("UnsupportedMediaType")
            || err.contains("unknown format")
            || err.contains("not supported"),
        "{err}"
    );
    let editor = h.write(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/replicas: 5/replicas: 7/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = h
        .kubectl()
        .args(["edit", "svc", "web"])
        .env("KUBE_EDITOR", &editor)
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "service.mill.dev/web edited"
    );
    assert_eq!(
        h.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.replicas}"]),
        "7"
    );
}

#[test]
fn delete_removes_the_service() {
    let h = Harness::start();
    let file = h.write("web.yaml", WEB);
    h.ok(&["apply", "-f", file.to_str().unwrap()]);
    let out = h.ok(&["delete", "svc", "web"]);
    assert_eq!(out.trim(), "service.mill.dev \"web\" deleted");
    let err = h.fails(&["get", "svc", "web"]);
    assert!(err.contains("services.mill.dev \"web\" not found"), "{err}");
    assert!(h
        .stored("mill.dev/services", Some("default"), "web")
        .is_none());
}

#[test]
fn get_watch_shows_added_and_modified_events() {
    use std::io::{BufRead, BufReader};
    let h = Harness::start();
    let mut child = h
        .kubectl()
        .args(["get", "svc", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let file = h.write("web.yaml", WEB);
    // The watch may start after the first apply: keep changing until both kinds showed.
    h.ok(&["apply", "-f", file.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut replicas = 3;
    while !(seen.iter().any(|l: &String| l.starts_with("ADDED"))
        && seen.iter().any(|l| l.starts_with("MODIFIED")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "watch output so far: {seen:?}"
        );
        h.ok(&[
            "patch",
            "svc",
            "web",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#),
        ]);
        replicas += 1;
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            seen.push(line);
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let modified = seen.iter().find(|l| l.starts_with("MODIFIED")).unwrap();
    assert!(
        modified.contains("web") && modified.contains("registry.example.com/web:v1"),
        "{modified}"
    );
}

#[test]
fn secrets_are_created_read_back_and_sealed_at_rest() {
    let h = Harness::start();
    let out = h.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=k=v-plain-value",
    ]);
    assert_eq!(out.trim(), "secret/s created");
    let yaml = h.ok(&["get", "secret", "s", "-o", "yaml"]);
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode("v-plain-value");
    assert!(yaml.contains(&format!("k: {encoded}")), "{yaml}");
    let table = h.ok(&["get", "secrets"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TYPE", "DATA", "AGE"]);
    assert!(table.lines().nth(1).unwrap().starts_with("s "), "{table}");
    let stored =
        serde_json::to_string(&h.stored("/secrets", Some("default"), "s").unwrap()).unwrap();
    assert!(
        !stored.contains("v-plain-value") && !stored.contains(&encoded),
        "{stored}"
    );
}

#[test]
fn explain_service_spec_prints_field_docs() {
    let h = Harness::start();
    let out = h.ok(&["explain", "service.spec"]);
    println!("{out}");
    assert!(out.contains("KIND:") && out.contains("Service"), "{out}");
    assert!(
        out.contains("image") && out.contains("The OCI image reference to run."),
        "{out}"
    );
    assert!(out.contains("replicas"), "{out}");
}

#[test]
fn a_stale_update_is_refused_with_the_conflict_message() {
    let h = Harness::start();
    let file = h.write("web.yaml", WEB);
    h.ok(&["apply", "-f", file.to_str().unwrap()]);
    let current = h.ok(&["get", "svc", "web", "-o", "yaml"]);
    h.ok(&[
        "patch",
        "svc",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    let stale = h.write("stale.yaml", &current.replace("replicas: 2", "replicas: 9"));
    let err = h.fails(&["replace", "-f", stale.to_str().unwrap()]);
    assert!(err.contains("Operation cannot be fulfilled on services.mill.dev \"web\": the object has been modified; please apply your changes to the latest version and try again"), "{err}");
    assert_eq!(
        h.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
}

#[test]
fn allocs_are_filtered_by_node_name() {
    let h = Harness::start();
    let alloc = |name: &str, node: &str| {
        format!("apiVersion: mill.dev/v1\nkind: Alloc\nmetadata:\n  name: {name}\nspec:\n  owner: {{kind: service, name: web}}\n  service: web\n  nodeName: {node}\n  template: {{image: web:v1, cpu: 0.5, memory: 128M}}\n")
    };
    let file = h.write(
        "allocs.yaml",
        &format!(
            "{}---\n{}",
            alloc("web-a", "node-x"),
            alloc("web-b", "node-y")
        ),
    );
    h.ok(&["apply", "-f", file.to_str().unwrap()]);
    let out = h.ok(&["get", "allocs", "--field-selector", "spec.nodeName=node-x"]);
    println!("{out}");
    assert!(out.contains("web-a") && !out.contains("web-b"), "{out}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SERVICE", "NODE", "STATUS", "ADDRESS", "RESTARTS", "AGE"]
    );
    let err = h.fails(&["get", "svc", "--field-selector", "spec.image=x"]);
    assert!(
        err.contains("field label not supported: spec.image"),
        "{err}"
    );
}

#[test]
fn a_bad_manifest_is_refused_clearly_and_nothing_is_stored() {
    let h = Harness::start();
    let cases = [
        (
            "port.yaml",
            WEB.replace("port: 8080", "port: eighty"),
            "spec.port",
        ),
        (
            "field.yaml",
            WEB.replace("port: 8080", "port: 8080\n  imagee: typo"),
            "unknown field \"spec.imagee\"",
        ),
        (
            "name.yaml",
            WEB.replace("name: web", "name: Web_1"),
            "RFC 1123",
        ),
        (
            "missing.yaml",
            WEB.replace("  image: registry.example.com/web:v1\n", ""),
            "spec.image",
        ),
    ];
    for (name, text, expected) in cases {
        let file = h.write(name, &text);
        let err = h.fails(&["apply", "-f", file.to_str().unwrap()]);
        assert!(err.contains(expected), "{name}: {err}");
    }
    let (items, _) = h.store.list("mill.dev/services", None);
    assert!(items.is_empty(), "stored: {items:?}");
    let err = h.fails(&[
        "apply",
        "-n",
        "nope",
        "-f",
        h.write("ok.yaml", WEB).to_str().unwrap(),
    ]);
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
}

#[test]
fn namespaces_exist_list_and_describe() {
    let h = Harness::start();
    let out = h.ok(&["get", "ns"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "AGE"]);
    assert!(out.contains("default") && out.contains("Active"), "{out}");
    assert_eq!(
        h.ok(&["create", "namespace", "prod"]).trim(),
        "namespace/prod created"
    );
    h.ok(&[
        "apply",
        "-n",
        "prod",
        "-f",
        h.write("web.yaml", WEB).to_str().unwrap(),
    ]);
    let all = h.ok(&["get", "svc", "-A"]);
    assert!(all.lines().any(|l| l.starts_with("prod ")), "{all}");
    h.ok(&["describe", "namespace", "prod"]);
    let err = h.fails(&["delete", "namespace", "default"]);
    assert!(err.contains("forbidden"), "{err}");
}
