//! What a deploy of a config changes, compared with the stored specs of its namespace.

use super::Config;
use mill_crds::{Route, ServiceSpec, TaskSpec};

/// How one service of a deploy compares with what is stored (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceChange {
    /// Not stored yet: created, its replicas started.
    New,
    /// Stored exactly as configured: left untouched.
    Unchanged,
    /// Something that shapes the container changed — anything of
    /// [`ServiceSpec::template`]: image, command, env, cpu, memory, port, health, volumes.
    /// A new revision, rolled out replica by replica. Changes of replicas, routes or the
    /// update policy made at the same time ride along with the rollout.
    Rollout,
    /// Only fields that need no new container changed; the spec is stored and applied
    /// without restarting anything. [`InPlace::SCALE_ONLY`] and [`InPlace::ROUTES_ONLY`]
    /// are the common cases; scaling and re-routing together set both flags.
    InPlace(InPlace),
    /// Stored, but absent from the config: removed, its allocs drained and stopped.
    Removed,
}

/// Which container-neutral parts of a service changed (at least one is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlace {
    /// `replicas` changed: scale up or down, no restarts.
    pub replicas: bool,
    /// The routes changed: update the routing tables only.
    pub routes: bool,
    /// Only the `update` block changed: stored for the next rollout; nothing running is
    /// touched, since the policy governs rollouts, not containers.
    pub update_policy: bool,
}

impl InPlace {
    /// Only `replicas` changed.
    pub const SCALE_ONLY: InPlace = InPlace {
        replicas: true,
        routes: false,
        update_policy: false,
    };
    /// Only the routes changed.
    pub const ROUTES_ONLY: InPlace = InPlace {
        replicas: false,
        routes: true,
        update_policy: false,
    };
}

/// How one task template of a deploy compares with what is stored. Task runs in progress
/// keep the spec they started with, so a change needs no rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskChange {
    /// Not stored yet.
    New,
    /// Stored exactly as configured.
    Unchanged,
    /// Stored with a different spec: replaced for future runs.
    Changed,
    /// Stored, but absent from the config: removed.
    Removed,
}

/// The change of every service and task: those of the config in file order, then the
/// removed ones in stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Each service's name and change.
    pub services: Vec<(String, ServiceChange)>,
    /// Each task template's name and change.
    pub tasks: Vec<(String, TaskChange)>,
}

/// Compares `config` with the stored services and tasks of its namespace.
pub fn diff(
    config: &Config,
    stored_services: &[(String, ServiceSpec)],
    stored_tasks: &[(String, TaskSpec)],
) -> Diff {
    let mut services: Vec<(String, ServiceChange)> = config
        .services
        .iter()
        .map(|(name, spec)| {
            let change = match find(stored_services, name) {
                None => ServiceChange::New,
                Some(stored) => service_change(stored, spec),
            };
            (name.clone(), change)
        })
        .collect();
    services.extend(removed(
        stored_services,
        &config.services,
        ServiceChange::Removed,
    ));
    let mut tasks: Vec<(String, TaskChange)> = config
        .tasks
        .iter()
        .map(|(name, spec)| {
            let change = match find(stored_tasks, name) {
                None => TaskChange::New,
                Some(stored) if stored == spec => TaskChange::Unchanged,
                Some(_) => TaskChange::Changed,
            };
            (name.clone(), change)
        })
        .collect();
    tasks.extend(removed(stored_tasks, &config.tasks, TaskChange::Removed));
    Diff { services, tasks }
}

fn find<'a, T>(specs: &'a [(String, T)], name: &str) -> Option<&'a T> {
    specs.iter().find(|(n, _)| n == name).map(|(_, spec)| spec)
}

fn removed<T, C: Copy>(
    stored: &[(String, T)],
    configured: &[(String, T)],
    change: C,
) -> Vec<(String, C)> {
    stored
        .iter()
        .filter(|(name, _)| find(configured, name).is_none())
        .map(|(name, _)| (name.clone(), change))
        .collect()
}

fn service_change(stored: &ServiceSpec, new: &ServiceSpec) -> ServiceChange {
    // The order of volume and route blocks in the file carries no meaning.
    let template = |spec: &ServiceSpec| {
        let mut template = spec.template();
        template.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        template
    };
    if template(stored) != template(new) {
        return ServiceChange::Rollout;
    }
    let change = InPlace {
        replicas: stored.replicas != new.replicas,
        routes: sorted_routes(&stored.routes) != sorted_routes(&new.routes),
        update_policy: stored.update != new.update,
    };
    if change.replicas || change.routes || change.update_policy {
        ServiceChange::InPlace(change)
    } else {
        ServiceChange::Unchanged
    }
}

fn sorted_routes(routes: &[Route]) -> Vec<&Route> {
    let mut sorted: Vec<&Route> = routes.iter().collect();
    sorted.sort_by(|a, b| (&a.host, &a.path, a.websocket).cmp(&(&b.host, &b.path, b.websocket)));
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;
    use mill_crds::{ByteSize, HealthCheck, VolumeMount};

    fn web() -> ServiceSpec {
        let spec = serde_json::json!({
            "image": "web:1",
            "port": 8080,
            "replicas": 2,
            "routes": [
                {"host": "a.example.com"},
                {"host": "b.example.com", "path": "/api"}
            ],
            "volumes": [
                {"name": "data", "path": "/data", "size": "1Gi"},
                {"name": "tmp", "path": "/tmp", "ephemeral": true}
            ]
        });
        serde_json::from_value(spec).unwrap()
    }

    fn config(services: Vec<(&str, ServiceSpec)>, tasks: Vec<(&str, TaskSpec)>) -> Config {
        Config {
            services: services
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect(),
            tasks: tasks.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
        }
    }

    fn task(image: &str) -> TaskSpec {
        serde_json::from_value(serde_json::json!({ "image": image })).unwrap()
    }

    #[test]
    fn each_service_change_is_classified_by_what_it_touches() {
        let edit = |f: fn(&mut ServiceSpec)| {
            let mut spec = web();
            f(&mut spec);
            spec
        };
        let cases: Vec<(&str, ServiceSpec, ServiceChange)> = vec![
            ("same spec", web(), ServiceChange::Unchanged),
            (
                "routes and volumes reordered",
                edit(|s| {
                    s.routes.reverse();
                    s.volumes.reverse();
                }),
                ServiceChange::Unchanged,
            ),
            (
                "image",
                edit(|s| s.image = "web:2".into()),
                ServiceChange::Rollout,
            ),
            (
                "command",
                edit(|s| s.command = Some(vec!["serve".into()])),
                ServiceChange::Rollout,
            ),
            (
                "env",
                edit(|s| {
                    s.env.insert("A".into(), "1".into());
                }),
                ServiceChange::Rollout,
            ),
            ("cpu", edit(|s| s.cpu = 1.0), ServiceChange::Rollout),
            (
                "memory",
                edit(|s| s.memory = ByteSize(1 << 30)),
                ServiceChange::Rollout,
            ),
            ("port", edit(|s| s.port = 9090), ServiceChange::Rollout),
            (
                "health",
                edit(|s| {
                    s.health = Some(
                        serde_json::from_value::<HealthCheck>(serde_json::json!({"path": "/h"}))
                            .unwrap(),
                    )
                }),
                ServiceChange::Rollout,
            ),
            (
                "volume size",
                edit(|s| s.volumes[0].size = Some(ByteSize(2 << 30))),
                ServiceChange::Rollout,
            ),
            (
                "volume added",
                edit(|s| {
                    s.volumes.push(VolumeMount {
                        name: "more".into(),
                        path: "/more".into(),
                        size: Some(ByteSize(1 << 30)),
                        ephemeral: false,
                    })
                }),
                ServiceChange::Rollout,
            ),
            (
                "image and replicas",
                edit(|s| {
                    s.image = "web:2".into();
                    s.replicas = 5;
                }),
                ServiceChange::Rollout,
            ),
            (
                "replicas",
                edit(|s| s.replicas = 3),
                ServiceChange::InPlace(InPlace::SCALE_ONLY),
            ),
            (
                "scaled to zero",
                edit(|s| s.replicas = 0),
                ServiceChange::InPlace(InPlace::SCALE_ONLY),
            ),
            (
                "route path",
                edit(|s| s.routes[1].path = "/v2".into()),
                ServiceChange::InPlace(InPlace::ROUTES_ONLY),
            ),
            (
                "route websocket",
                edit(|s| s.routes[0].websocket = true),
                ServiceChange::InPlace(InPlace::ROUTES_ONLY),
            ),
            (
                "route removed",
                edit(|s| {
                    s.routes.pop();
                }),
                ServiceChange::InPlace(InPlace::ROUTES_ONLY),
            ),
            (
                "replicas and routes",
                edit(|s| {
                    s.replicas = 4;
                    s.routes.clear();
                }),
                ServiceChange::InPlace(InPlace {
                    replicas: true,
                    routes: true,
                    update_policy: false,
                }),
            ),
            (
                "update policy",
                edit(|s| s.update.max_parallel = 2),
                ServiceChange::InPlace(InPlace {
                    replicas: false,
                    routes: false,
                    update_policy: true,
                }),
            ),
        ];
        let stored = vec![("web".to_string(), web())];
        for (what, spec, want) in cases {
            let got = diff(&config(vec![("web", spec)], vec![]), &stored, &[]);
            assert_eq!(got.services, vec![("web".to_string(), want)], "{what}");
        }
    }

    #[test]
    fn new_services_come_in_file_order_and_removed_ones_last() {
        let stored = vec![
            ("old".to_string(), web()),
            ("web".to_string(), web()),
            ("gone".to_string(), web()),
        ];
        let got = diff(
            &config(
                vec![("zeta", web()), ("web", web()), ("alpha", web())],
                vec![],
            ),
            &stored,
            &[],
        );
        assert_eq!(
            got.services,
            vec![
                ("zeta".to_string(), ServiceChange::New),
                ("web".to_string(), ServiceChange::Unchanged),
                ("alpha".to_string(), ServiceChange::New),
                ("old".to_string(), ServiceChange::Removed),
                ("gone".to_string(), ServiceChange::Removed),
            ]
        );
    }

    #[test]
    fn each_task_change_is_classified() {
        let stored = vec![
            ("same".to_string(), task("a:1")),
            ("edited".to_string(), task("a:1")),
            ("gone".to_string(), task("a:1")),
        ];
        let got = diff(
            &config(
                vec![],
                vec![
                    ("same", task("a:1")),
                    ("edited", task("a:2")),
                    ("fresh", task("a:1")),
                ],
            ),
            &[],
            &stored,
        );
        assert_eq!(
            got.tasks,
            vec![
                ("same".to_string(), TaskChange::Unchanged),
                ("edited".to_string(), TaskChange::Changed),
                ("fresh".to_string(), TaskChange::New),
                ("gone".to_string(), TaskChange::Removed),
            ]
        );
    }

    #[test]
    fn an_empty_config_removes_everything_stored() {
        let got = diff(
            &config(vec![], vec![]),
            &[("web".to_string(), web())],
            &[("job".to_string(), task("a:1"))],
        );
        assert_eq!(
            got.services,
            vec![("web".to_string(), ServiceChange::Removed)]
        );
        assert_eq!(got.tasks, vec![("job".to_string(), TaskChange::Removed)]);
    }
}
