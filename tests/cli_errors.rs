//! The CLI's answers that need no containers, against a real `mill init` node whose agent
//! has no containerd: every error path prints its message and exit code (unreachable, no
//! token, wrong token, not found, conflict, invalid config, usage), secrets never show
//! their values in `list` or in the daemon's log, `-o json` parses, and the stable
//! outputs match the golden files under `tests/golden/` (`UPDATE_GOLDEN=1` rewrites them).

#[path = "support/mod.rs"]
mod support;

use kube::api::{Api, PostParams};
use mill_crds::{Service, Volume};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use support::node::{MillNode, TOKEN};
use tokio::process::Command;

/// Generous bound for one CLI run on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(60);

/// Runs the CLI with `token` (None: no token at all).
async fn mill_as(address: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mill"));
    command.args(["--address", address]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command
        .args(args)
        .env_remove("MILL_ADDRESS")
        .env_remove("MILL_TOKEN")
        .kill_on_drop(true);
    tokio::time::timeout(WITHIN, command.output())
        .await
        .unwrap_or_else(|_| panic!("mill {args:?} did not finish within {WITHIN:?}"))
        .unwrap()
}

async fn mill(address: &str, args: &[&str]) -> Output {
    mill_as(address, Some(TOKEN), args).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit `code` and that stderr contains every one of `words`.
fn fails_with(out: &Output, code: i32, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    for word in words {
        assert!(err.contains(word), "stderr lacks {word:?}:\n{err}");
    }
    assert!(
        err.lines().count() <= 3,
        "an error is one or two lines, never a dump:\n{err}"
    );
}

/// Compares `actual` with `tests/golden/NAME`, or rewrites it under `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_errors_say_what_to_do_and_secrets_stay_secret() {
    let node = MillNode::start_on(Path::new("/nonexistent/containerd.sock"), &[]).await;
    let address = node.url("");

    // Unreachable: a port nobody listens on.
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    let out = mill(&nowhere, &["get", "allocs"]).await;
    fails_with(&out, 1, &["is mill running?", &nowhere, "MILL_ADDRESS"]);

    // No token, wrong token.
    let out = mill_as(&address, None, &["get", "allocs"]).await;
    fails_with(&out, 1, &["set MILL_TOKEN or pass --token"]);
    let out = mill_as(&address, Some("wrong"), &["secret", "list"]).await;
    fails_with(&out, 1, &["refused the token", "MILL_TOKEN"]);

    // Usage errors exit 2.
    let out = mill(&address, &["get"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = mill(&address, &["get", "allocs", "-o", "xml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = mill(&address, &["get", "gizmos"]).await;
    fails_with(&out, 1, &["unknown kind \"gizmos\"", "allocs"]);

    // Not found.
    let out = mill(&address, &["get", "svc", "nope"]).await;
    fails_with(
        &out,
        1,
        &["service \"nope\" not found", "mill get services"],
    );
    let out = mill(&address, &["describe", "alloc", "nope"]).await;
    fails_with(&out, 1, &["alloc \"nope\" not found"]);
    let out = mill(&address, &["delete", "svc", "nope"]).await;
    fails_with(&out, 1, &["service \"nope\" not found"]);
    let out = mill(&address, &["secret", "get", "nope"]).await;
    fails_with(&out, 1, &["secret \"nope\" not found", "mill secret list"]);
    let out = mill(&address, &["logs", "nope"]).await;
    fails_with(&out, 1, &["no service, alloc or task named \"nope\""]);
    let out = mill(&address, &["volume", "delete", "nope"]).await;
    fails_with(&out, 1, &["volume \"nope\" not found"]);

    // Invalid config.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mill");
    std::fs::write(&bad, "service \"web\" {\n  port = \"eighty\"\n}\n").unwrap();
    let out = mill(&address, &["deploy", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );

    // Conflict: a volume a service mounts is not deleted.
    let volumes: Api<Volume> = Api::namespaced(node.client(), "default");
    let volume: Volume = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Volume",
        "metadata": {"name": "pgdata"},
        "spec": {"size": "1Gi", "provider": "local", "service": "db"},
    }))
    .unwrap();
    volumes
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(node.client(), "default");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "db"},
        "spec": {"image": "postgres:16", "port": 5432,
                 "volumes": [{"name": "pgdata", "path": "/var/lib/postgresql"}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let out = mill(&address, &["volume", "delete", "pgdata"]).await;
    fails_with(
        &out,
        1,
        &["volume \"pgdata\" is used by service db", "deploy first"],
    );
    let out = mill(&address, &["volume", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    golden("volume_list.txt", &stdout(&out));
    let out = mill(&address, &["--json", "volume", "list"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).expect("volume list --json parses");
    assert_eq!(listed[0]["name"], "pgdata");
    assert_eq!(listed[0]["state"], "detached");

    // -o name is stable.
    let out = mill(&address, &["get", "ns", "-o", "name"]).await;
    golden("get_namespaces_name.txt", &stdout(&out));
    let out = mill(&address, &["get", "svc,", "-o", "name"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = mill(&address, &["get", "svc", "-o", "name"]).await;
    golden("get_services_name.txt", &stdout(&out));

    // Secrets: set, get, list (names only), delete; the value never reaches a log line.
    let value = "s3cr3t-value-that-must-not-leak";
    for name in ["DB_URL", "api.key"] {
        let out = mill(&address, &["secret", "set", name, value]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = mill(&address, &["secret", "get", "DB_URL"]).await;
    assert_eq!(stdout(&out), format!("{value}\n"));
    // `-` reads the value from standard input (kept out of shell history).
    let mut piped = std::process::Command::new(env!("CARGO_BIN_EXE_mill"))
        .args(["--address", &address, "--token", TOKEN])
        .args(["secret", "set", "from-stdin", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        piped
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
    }
    assert!(piped.wait_with_output().unwrap().status.success());
    let out = mill(&address, &["secret", "get", "from-stdin"]).await;
    assert_eq!(stdout(&out), format!("{value}\n"));
    let out = mill(&address, &["secret", "delete", "from-stdin"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mill(&address, &["secret", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains(value));
    golden("secret_list.txt", &stdout(&out));
    let out = mill(&address, &["--json", "secret", "list"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).expect("secret list --json parses");
    assert_eq!(listed, json!([{"name": "DB_URL"}, {"name": "api.key"}]));
    let out = mill(&address, &["get", "secrets", "-o", "json"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).expect("get -o json parses");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    let out = mill(&address, &["secret", "delete", "api.key"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mill(&address, &["secret", "get", "api.key"]).await;
    fails_with(&out, 1, &["not found"]);
    let out = mill(&address, &["secret", "set", "bad name!", "x"]).await;
    fails_with(&out, 1, &["invalid secret name"]);
    assert!(
        !node.log().contains(value),
        "the daemon logged a secret value"
    );

    // Completion scripts.
    for shell in ["bash", "zsh", "fish"] {
        let out = mill(&address, &["completion", shell]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("secret"),
            "{shell} completion names commands"
        );
    }
    let out = mill(&address, &["completion", "bash"]).await;
    golden("completion_bash_head.txt", &head(&stdout(&out), 3));
}

fn head(text: &str, lines: usize) -> String {
    text.lines().take(lines).map(|l| format!("{l}\n")).collect()
}

#[test]
fn every_cli_command_help_has_a_purpose_and_an_example() {
    let commands: &[&[&str]] = &[
        &["get"],
        &["describe"],
        &["delete"],
        &["logs"],
        &["status"],
        &["completion"],
        &["secret", "set"],
        &["secret", "get"],
        &["secret", "list"],
        &["secret", "delete"],
        &["volume", "list"],
        &["volume", "delete"],
    ];
    for command in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mill"))
            .args(*command)
            .arg("--help")
            // The help names the values of these; the golden file has none.
            .env_remove("MILL_ADDRESS")
            .env_remove("MILL_TOKEN")
            .env_remove("MILL_DATA_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "mill {command:?} --help");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let purpose = help.lines().next().unwrap_or_default();
        assert!(
            purpose.len() > 10 && !purpose.starts_with("Usage"),
            "mill {command:?} --help starts with its purpose:\n{help}"
        );
        assert!(
            help.contains("Example: `mill "),
            "mill {command:?} --help shows an example:\n{help}"
        );
        if *command == ["get"] {
            golden("help_get.txt", &help);
        }
    }
}
