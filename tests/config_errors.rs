//! Malformed `.mill` files: each is rejected with the exact position and message a user
//! sees, and every error of a file is reported at once.

use mill::config::{self, ClusterSnapshot, Config, Invalid, Offline};
use mill_crds::{ByteSize, NodeResources};

const FILE: &str = "app.mill";

/// A cluster with two secrets, one service outside the file, and two unequal nodes.
fn cluster() -> ClusterSnapshot {
    ClusterSnapshot {
        secrets: ["DB_URL", "office.database-url"].map(String::from).into(),
        services: ["billing"].map(String::from).into(),
        nodes: vec![
            NodeResources {
                cpu: 4.0,
                memory: ByteSize(8_000_000_000),
            },
            NodeResources {
                cpu: 8.0,
                memory: ByteSize(2_000_000_000),
            },
        ],
    }
}

/// A service "web" with image (line 2) and port (line 3); `body` starts on line 4.
fn service(body: &str) -> String {
    format!("service \"web\" {{\n  image = \"web:1\"\n  port  = 8080\n{body}}}\n")
}

fn check(source: &str) -> Result<Config, Invalid> {
    config::parse(FILE, source, &cluster())
}

fn errors(source: &str) -> Vec<(usize, usize, String)> {
    match check(source) {
        Ok(_) => Vec::new(),
        Err(invalid) => invalid
            .diagnostics
            .iter()
            .map(|d| (d.line, d.col, d.message.clone()))
            .collect(),
    }
}

/// `source` is rejected with exactly this one error, rendered as `file:line:col: message`
/// above the offending line.
fn assert_rejected(source: &str, line: usize, col: usize, message: &str) {
    let invalid = match check(source) {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(invalid) => invalid,
    };
    let got: Vec<_> = invalid
        .diagnostics
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(got, vec![(line, col, message)], "source:\n{source}");
    let rendered = invalid.to_string();
    assert!(
        rendered.contains(&format!("{FILE}:{line}:{col}: {message}")),
        "{rendered}"
    );
    let source_line = source.lines().nth(line - 1).unwrap_or_default();
    assert!(rendered.contains(source_line), "{rendered}");
}

macro_rules! rejects {
    ($($name:ident: $source:expr => ($line:expr, $col:expr, $message:expr);)*) => {
        $(
            #[test]
            fn $name() {
                assert_rejected(&$source, $line, $col, $message);
            }
        )*
    };
}

rejects! {
    invalid_hcl_is_reported_at_the_parsers_position:
        "service \"web\" {\n  image = \n}\n"
        => (2, 11, "invalid HCL: invalid expression; expected `\"`, `[`, `{`, `-`, `!`, `(`, `_`, `<`, letter or digit");
    an_unclosed_block_is_invalid_hcl:
        "service \"web\" {\n  image = \"a\"\n"
        => (3, 1, "invalid HCL: invalid block body; expected `}`, newline or identifier");
    a_misspelled_field_gets_a_did_you_mean_hint:
        service("  replica = 2\n")
        => (4, 3, "unknown field \"replica\" in service \"web\", did you mean \"replicas\"?");
    a_misspelled_block_gets_a_did_you_mean_hint:
        service("  helth {\n    path = \"/\"\n  }\n")
        => (4, 3, "unknown block \"helth\" in service \"web\", did you mean \"health\"?");
    a_misspelled_top_level_block_gets_a_did_you_mean_hint:
        "servce \"web\" {}\n"
        => (1, 1, "unknown block \"servce\" in the file, did you mean \"service\"?");
    an_unknown_field_far_from_any_lists_the_known_ones:
        service("  colour = \"red\"\n")
        => (4, 3, "unknown field \"colour\" in service \"web\"; expected one of: image, command, port, replicas, cpu, memory, env, health, route, volume, update");
    a_task_has_no_port:
        "task \"job\" {\n  image = \"job:1\"\n  port  = 80\n}\n"
        => (3, 3, "unknown field \"port\" in task \"job\"; expected one of: image, command, cpu, memory, timeout, env");
    a_service_without_image_is_reported_at_its_label:
        "service \"web\" {\n  port = 80\n}\n"
        => (1, 9, "service \"web\": missing required field \"image\"");
    a_service_without_port_is_reported_at_its_label:
        "service \"web\" {\n  image = \"web:1\"\n}\n"
        => (1, 9, "service \"web\": missing required field \"port\"");
    a_health_check_without_path_is_reported_at_the_block:
        service("  health {\n    interval = \"5s\"\n  }\n")
        => (4, 3, "health of service \"web\": missing required field \"path\"");
    a_volume_without_path_is_reported_at_its_label:
        service("  volume \"data\" {\n    size = \"1Gi\"\n  }\n")
        => (4, 10, "volume \"data\" of service \"web\": missing required field \"path\"");
    a_quoted_port_is_a_type_error:
        "service \"web\" {\n  image = \"web:1\"\n  port  = \"8080\"\n}\n"
        => (3, 11, "\"port\" must be an integer, found a string");
    port_zero_is_out_of_range:
        "service \"web\" {\n  image = \"web:1\"\n  port  = 0\n}\n"
        => (3, 11, "\"port\" must be between 1 and 65535, found 0");
    port_above_65535_is_out_of_range:
        "service \"web\" {\n  image = \"web:1\"\n  port  = 65536\n}\n"
        => (3, 11, "\"port\" must be between 1 and 65535, found 65536");
    negative_replicas_are_out_of_range:
        service("  replicas = -1\n")
        => (4, 14, "\"replicas\" must be 0 or more, found -1");
    fractional_replicas_are_rejected:
        service("  replicas = 1.5\n")
        => (4, 14, "\"replicas\" must be a whole number, found 1.5");
    zero_cpu_is_rejected:
        service("  cpu = 0\n")
        => (4, 9, "\"cpu\" must be greater than 0, found 0");
    quoted_cpu_is_a_type_error:
        service("  cpu = \"0.5\"\n")
        => (4, 9, "\"cpu\" must be a number of cores such as 0.5, found a string");
    a_malformed_memory_size_says_what_sizes_look_like:
        service("  memory = \"lots\"\n")
        => (4, 12, "\"memory\": invalid size \"lots\": expected a number with an optional unit K, M, G, T, Ki, Mi, Gi or Ti (e.g. \"512M\", \"5Gi\")");
    a_bare_number_memory_is_a_type_error:
        service("  memory = 512\n")
        => (4, 12, "\"memory\" must be a size such as \"512M\", found a number");
    zero_memory_is_rejected:
        service("  memory = \"0\"\n")
        => (4, 12, "\"memory\" must be greater than 0");
    a_malformed_duration_says_what_durations_look_like:
        service("  health {\n    path     = \"/\"\n    interval = \"10\"\n  }\n")
        => (6, 16, "\"interval\": invalid duration \"10\": expected a number with a unit ms, s, m or h (e.g. \"500ms\", \"10s\", \"1h30m\")");
    a_zero_task_timeout_is_rejected:
        "task \"job\" {\n  image   = \"job:1\"\n  timeout = \"0s\"\n}\n"
        => (3, 13, "\"timeout\" must be greater than 0");
    failure_threshold_below_one_is_rejected:
        service("  health {\n    path              = \"/\"\n    failure_threshold = 0\n  }\n")
        => (6, 25, "\"failure_threshold\" must be 1 or more, found 0");
    max_parallel_below_one_is_rejected:
        service("  update {\n    max_parallel = 0\n  }\n")
        => (5, 20, "\"max_parallel\" must be 1 or more, found 0");
    a_quoted_bool_is_a_type_error:
        service("  update {\n    auto_rollback = \"yes\"\n  }\n")
        => (5, 21, "\"auto_rollback\" must be true or false, found a string");
    a_health_path_must_start_with_a_slash:
        service("  health {\n    path = \"healthz\"\n  }\n")
        => (5, 12, "health path must start with \"/\", found \"healthz\"");
    a_route_path_must_start_with_a_slash:
        service("  route \"a.example.com\" {\n    path = \"api\"\n  }\n")
        => (5, 12, "route path must start with \"/\", found \"api\"");
    a_route_host_must_be_a_hostname:
        service("  route \"a example\" {}\n")
        => (4, 9, "invalid route host \"a example\": expected a hostname such as \"app.example.com\"");
    a_service_name_must_be_a_dns_label:
        "service \"Web\" {\n  image = \"web:1\"\n  port  = 80\n}\n"
        => (1, 9, "invalid service name \"Web\": use a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters");
    a_task_name_must_be_a_dns_label:
        "task \"nightly_report\" {\n  image = \"job:1\"\n}\n"
        => (1, 6, "invalid task name \"nightly_report\": use a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters");
    a_volume_name_must_be_a_dns_label:
        service("  volume \"Data\" {\n    path = \"/data\"\n    size = \"1Gi\"\n  }\n")
        => (4, 10, "invalid volume name \"Data\": use a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters");
    a_duplicate_service_name_points_at_the_first:
        format!("{}{}", service(""), service(""))
        => (5, 9, "duplicate service \"web\" (first defined on line 1)");
    a_duplicate_task_name_points_at_the_first:
        "task \"job\" {\n  image = \"a\"\n}\ntask \"job\" {\n  image = \"b\"\n}\n"
        => (4, 6, "duplicate task \"job\" (first defined on line 1)");
    a_field_set_twice_is_a_duplicate:
        service("  image = \"web:2\"\n")
        => (4, 3, "duplicate field \"image\" (first set on line 2)");
    an_environment_variable_set_twice_is_a_duplicate:
        service("  env {\n    A = \"1\"\n    A = \"2\"\n  }\n")
        => (6, 5, "duplicate environment variable \"A\" (first set on line 5)");
    a_second_health_block_is_a_duplicate:
        service("  health {\n    path = \"/a\"\n  }\n  health {\n    path = \"/b\"\n  }\n")
        => (7, 3, "duplicate block \"health\" in service \"web\"");
    a_malformed_service_reference_points_into_the_string:
        service("  env {\n    API = \"http://${service.api}/v1\"\n  }\n")
        => (5, 19, "invalid service reference ${service.api}: expected ${service.NAME.address}");
    a_malformed_reference_in_a_command_points_into_the_argument:
        service("  command = [\"run\", \"--db=${service.DB.address}\"]\n")
        => (4, 27, "invalid service name \"DB\" in ${service.DB.address}: service names are DNS labels (lowercase letters, digits and '-')");
    a_reference_to_an_unknown_service_is_rejected:
        service("  env {\n    API = \"http://${service.api.address}\"\n  }\n")
        => (5, 19, "service \"api\" not found (referenced by service \"web\")");
    a_missing_secret_names_the_service_that_references_it:
        "service \"myapp\" {\n  image = \"app:1\"\n  port  = 80\n  env {\n    DATABASE = \"${secret(DB_URL_2)}\"\n  }\n}\n"
        => (5, 17, "secret \"DB_URL_2\" not found (referenced by service \"myapp\")");
    a_missing_secret_of_a_task_names_the_task:
        "task \"job\" {\n  image = \"job:1\"\n  command = [\"job\", \"--token=${secret(TOKEN)}\"]\n}\n"
        => (3, 30, "secret \"TOKEN\" not found (referenced by task \"job\")");
    a_persistent_volume_needs_a_size:
        service("  volume \"data\" {\n    path = \"/data\"\n  }\n")
        => (4, 10, "persistent volume \"data\" needs a size: add size = \"1Gi\", or ephemeral = true for scratch space");
    a_volume_mounted_by_two_services_is_rejected:
        format!(
            "{}service \"db\" {{\n  image = \"db:1\"\n  port  = 5432\n  volume \"data\" {{\n    path = \"/d\"\n    size = \"1G\"\n  }}\n}}\n",
            service("  volume \"data\" {\n    path = \"/data\"\n    size = \"1G\"\n  }\n")
        )
        => (12, 10, "volume \"data\" is already mounted by service \"web\" (line 4): a volume belongs to one service");
    two_services_claiming_the_same_host_and_path_conflict:
        format!(
            "{}service \"api\" {{\n  image = \"api:1\"\n  port  = 3000\n  route \"shop.example.com\" {{}}\n}}\n",
            service("  route \"shop.example.com\" {\n    path = \"/\"\n  }\n")
        )
        => (11, 9, "route \"shop.example.com\" path \"/\" is already claimed by service \"web\" (line 4)");
    cpu_beyond_every_node_is_rejected:
        service("  cpu = 16\n")
        => (4, 9, "service \"web\" needs 16 cpu per replica, more than any node has (largest: 8)");
    memory_beyond_every_node_is_rejected:
        "task \"job\" {\n  image  = \"job:1\"\n  memory = \"16G\"\n}\n"
        => (3, 12, "task \"job\" needs 16G memory per run, more than any node has (largest: 8G)");
    cpu_and_memory_that_no_single_node_has_together_are_rejected:
        service("  cpu    = 6\n  memory = \"4G\"\n")
        => (1, 9, "service \"web\" needs 6 cpu and 4G memory per replica, but no node has both");
    a_number_as_env_value_is_rejected_with_a_quoting_hint:
        service("  env {\n    PORT_HINT = 8080\n  }\n")
        => (5, 17, "environment variable \"PORT_HINT\" must be a string, found a number (quote it: \"8080\")");
    a_command_must_be_a_list:
        service("  command = \"serve --port 80\"\n")
        => (4, 13, "\"command\" must be a list of strings such as [\"/bin/sh\", \"-c\", \"...\"], found a string");
    an_empty_command_is_rejected:
        service("  command = []\n")
        => (4, 13, "\"command\" must not be empty: leave it out to run the image's entrypoint");
    a_number_in_a_command_is_rejected_with_a_quoting_hint:
        service("  command = [\"sleep\", 5]\n")
        => (4, 23, "command arguments must be strings, found a number (quote it: \"5\")");
    the_image_cannot_use_interpolation:
        "service \"web\" {\n  image = \"web:${secret(TAG)}\"\n  port  = 80\n}\n"
        => (2, 16, "\"image\" cannot use interpolation: only env values and command arguments are interpolated");
    an_unquoted_image_gets_a_quoting_hint:
        "service \"web\" {\n  image = nginx\n  port  = 80\n}\n"
        => (2, 11, "\"image\" must be a string, found a bare word (write \"nginx\" in quotes)");
    a_service_block_needs_a_name:
        "service {\n  image = \"web:1\"\n  port  = 80\n}\n"
        => (1, 1, "service block needs a name: write service \"NAME\" { ... }");
    a_health_block_takes_no_label:
        service("  health \"web\" {\n    path = \"/\"\n  }\n")
        => (4, 10, "health block takes no label: write health { ... }");
    a_field_written_as_a_block_is_explained:
        service("  replicas {\n  }\n")
        => (4, 3, "\"replicas\" is a field, not a block: write replicas = ...");
    a_block_written_as_a_field_is_explained:
        service("  env = { A = \"1\" }\n")
        => (4, 3, "\"env\" is a block, not a field: write env { ... }");
    a_secret_name_with_a_space_is_an_hcl_error_with_a_reference_hint:
        service("  env {\n    DB = \"${secret(DB URL)}\"\n  }\n")
        => (5, 23, "invalid HCL: expected `)` or expression; inside \"${...}\" write ${secret(NAME)} or ${service.NAME.address}, or $${ for a literal \"${\"");
    template_directives_are_rejected:
        service("  env {\n    A = \"%{ if true }x%{ endif }\"\n  }\n")
        => (5, 10, "template directives (%{ ... }) are not supported: write %%{ for a literal %{");
}

#[test]
fn every_error_of_a_file_is_reported_in_file_order() {
    let source = "\
service \"Web\" {
  imgae = \"web:1\"
  port  = 0
  env {
    DB = \"${secret(MISSING)}\"
  }
  health {
    path = \"health\"
  }
}
task \"job\" {
  image   = \"job:1\"
  timeout = \"soon\"
}
";
    let want = vec![
        (1, 9, "service \"Web\": missing required field \"image\"".to_string()),
        (1, 9, "invalid service name \"Web\": use a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters".to_string()),
        (2, 3, "unknown field \"imgae\" in service \"Web\", did you mean \"image\"?".to_string()),
        (3, 11, "\"port\" must be between 1 and 65535, found 0".to_string()),
        (5, 11, "secret \"MISSING\" not found (referenced by service \"Web\")".to_string()),
        (8, 12, "health path must start with \"/\", found \"health\"".to_string()),
        (13, 13, "\"timeout\": invalid duration \"soon\": expected a number with a unit ms, s, m or h (e.g. \"500ms\", \"10s\", \"1h30m\")".to_string()),
    ];
    assert_eq!(errors(source), want);
    let rendered = check(source).unwrap_err().to_string();
    for (line, col, message) in &want {
        assert!(
            rendered.contains(&format!("{FILE}:{line}:{col}: {message}")),
            "{rendered}"
        );
    }
}

#[test]
fn duplicates_do_not_hide_the_other_errors_of_the_file() {
    let source = service("  image    = \"web:2\"\n  replicas = -3\n  replicas = 2\n");
    assert_eq!(
        errors(&source),
        vec![
            (
                4,
                3,
                "duplicate field \"image\" (first set on line 2)".to_string()
            ),
            (
                5,
                14,
                "\"replicas\" must be 0 or more, found -3".to_string()
            ),
            (
                6,
                3,
                "duplicate field \"replicas\" (first set on line 5)".to_string()
            ),
        ]
    );
}

#[test]
fn references_to_services_of_the_namespace_and_existing_secrets_are_accepted() {
    let source = service(
        "  env {\n    BILLING = \"${service.billing.address}\"\n    SELF = \"${service.web.address}\"\n    DB = \"${secret(office.database-url)}\"\n  }\n",
    );
    assert_eq!(errors(&source), Vec::new());
}

#[test]
fn offline_validation_skips_secrets_and_capacity_but_checks_service_references() {
    let source = service(
        "  cpu = 64\n  env {\n    DB = \"${secret(ANY)}\"\n    BILLING = \"${service.billing.address}\"\n  }\n",
    );
    let invalid = config::parse(FILE, &source, &Offline).unwrap_err();
    let got: Vec<_> = invalid
        .diagnostics
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(
            7,
            16,
            "service \"billing\" not found (referenced by service \"web\")"
        )]
    );
}

#[test]
fn the_same_host_on_different_paths_is_not_a_conflict() {
    let source = service(
        "  route \"shop.example.com\" {}\n  route \"shop.example.com\" {\n    path = \"/api\"\n  }\n",
    );
    assert_eq!(errors(&source), Vec::new());
}

#[test]
fn invalid_utf8_is_reported_at_its_position() {
    let mut bytes = service("").into_bytes();
    bytes.insert(20, 0xff);
    let invalid = config::parse_bytes(FILE, &bytes, &Offline).unwrap_err();
    let d = &invalid.diagnostics[0];
    assert_eq!(
        (d.line, d.col, d.message.as_str()),
        (2, 5, "the file is not valid UTF-8")
    );
}
