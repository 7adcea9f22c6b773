//! What a valid `.mill` file becomes: `ServiceSpec`s and `TaskSpec`s with SPEC §1's
//! defaults, strings as written.

use mill::config::{self, Config, Offline};

fn parse(source: &str) -> Config {
    match config::parse("test.mill", source, &Offline) {
        Ok(config) => config,
        Err(invalid) => panic!("{invalid}"),
    }
}

#[test]
fn a_minimal_service_and_task_get_the_spec_defaults() {
    let config = parse(
        "service \"web\" {\n  image = \"web:1\"\n  port = 8080\n  health {\n    path = \"/h\"\n  }\n  route \"a.example.com\" {}\n  volume \"tmp\" {\n    path = \"/tmp\"\n    ephemeral = true\n  }\n}\ntask \"job\" {\n  image = \"job:1\"\n}\n",
    );
    let (name, web) = &config.services[0];
    assert_eq!(name, "web");
    assert_eq!(web.command, None);
    assert_eq!(web.replicas, 1);
    assert_eq!(web.cpu, 0.25);
    assert_eq!(web.memory.to_string(), "256M");
    assert!(web.env.is_empty());
    let health = web.health.as_ref().unwrap();
    assert_eq!(health.interval.to_string(), "10s");
    assert_eq!(health.timeout.to_string(), "2s");
    assert_eq!(health.failure_threshold, 3);
    assert_eq!(web.routes[0].path, "/");
    assert!(!web.routes[0].websocket);
    assert_eq!(web.volumes[0].size, None);
    assert_eq!(web.update.max_parallel, 1);
    assert_eq!(web.update.health_timeout.to_string(), "30s");
    assert!(web.update.auto_rollback);
    let (name, job) = &config.tasks[0];
    assert_eq!(name, "job");
    assert_eq!(job.cpu, 0.25);
    assert_eq!(job.memory.to_string(), "256M");
    assert_eq!(job.timeout.to_string(), "1h");
}

#[test]
fn interpolation_and_shell_variables_are_kept_as_written() {
    let config = parse(
        "service \"web\" {\n  image = \"web:1\"\n  port = 80\n  command = [\"sh\", \"-c\", \"exec web --port $PORT --db ${secret(DB_URL)}\"]\n  env {\n    A = \"tcp://${ service.web.address }/x\"\n    B = \"$${secret(LITERAL)} $HOME ${HOME}\"\n    C = \"quote\\\" and ${secret(office.database-url)}\"\n  }\n}\n",
    );
    let web = &config.services[0].1;
    assert_eq!(
        web.command.as_deref().unwrap()[2],
        "exec web --port $PORT --db ${secret(DB_URL)}"
    );
    assert_eq!(web.env["A"], "tcp://${service.web.address}/x");
    assert_eq!(web.env["B"], "${secret(LITERAL)} $HOME ${HOME}");
    assert_eq!(web.env["C"], "quote\" and ${secret(office.database-url)}");
}

#[test]
fn services_and_tasks_keep_file_order() {
    let config = parse(include_str!("../examples/app.mill"));
    let services: Vec<&str> = config.services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(services, ["web", "api", "cache"]);
    let tasks: Vec<&str> = config.tasks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(tasks, ["report"]);
    let api = &config.services[1].1;
    assert_eq!(api.env["DATABASE_URL"], "${secret(DB_URL)}");
    assert_eq!(api.memory.to_string(), "512Mi");
    assert_eq!(api.update.health_timeout.to_string(), "1m");
    assert_eq!(api.volumes.len(), 2);
    assert_eq!(config.tasks[0].1.timeout.to_string(), "30m");
}

#[test]
fn the_hello_example_runs_busybox_httpd_on_the_assigned_port() {
    let config = parse(include_str!("../examples/hello.mill"));
    let hello = &config.services[0].1;
    assert_eq!(hello.image, "127.0.0.1:5000/mill/busybox:latest");
    assert!(hello
        .command
        .as_ref()
        .unwrap()
        .join(" ")
        .contains("httpd -f -p $PORT"));
    assert_eq!(hello.health.as_ref().unwrap().path, "/");
}
