//! The OCI runtime spec of an alloc's container: the image config merged with the alloc
//! as Docker merges them, cgroup limits, the node's network, resolv.conf and volumes.
//! Pure: everything it needs is passed in.

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount,
    MountBuilder, RootBuilder, Spec,
};
use std::path::{Path, PathBuf};

/// The CFS period the cpu quota is a share of (µs).
pub const CPU_PERIOD: u64 = 100_000;
/// The PATH a container gets when its image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// The path inside the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything that shapes one container, resolved (secrets and references rendered).
#[derive(Debug, Clone)]
pub struct ContainerShape<'a> {
    /// The image's config.
    pub image: &'a ImageConfiguration,
    /// The alloc's command, replacing the image's entrypoint and cmd.
    pub command: Option<Vec<String>>,
    /// Environment the alloc adds or overrides, in order.
    pub env: Vec<(String, String)>,
    /// CPU cores (cgroup quota).
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory: u64,
    /// The container's hostname.
    pub hostname: String,
    /// The network namespace to join; `None` is the host's network.
    pub netns: Option<&'a Path>,
    /// The cgroup path.
    pub cgroups_path: String,
    /// Bind mounts (resolv.conf, volumes).
    pub mounts: Vec<BindMount>,
}

/// Why no spec could be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the alloc nor the image says what to run.
    #[error("nothing to run: the alloc has no command and the image no entrypoint or cmd")]
    NoCommand,
    /// The image's user is not numeric.
    #[error("image user {0:?} is not numeric (uid[:gid]); set a numeric USER in the image")]
    User(String),
    /// oci-spec rejected a value.
    #[error("invalid runtime spec: {0}")]
    Invalid(String),
}

/// The process arguments: the alloc's command if it has one, else entrypoint + cmd.
pub fn process_args(image: &ImageConfiguration, command: Option<&[String]>) -> Vec<String> {
    if let Some(command) = command.filter(|c| !c.is_empty()) {
        return command.to_vec();
    }
    let config = image.config().as_ref();
    let mut args: Vec<String> = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    args.extend(config.and_then(|c| c.cmd().clone()).unwrap_or_default());
    args
}

/// The image's env with the alloc's entries added or overriding by name; a PATH always.
pub fn merge_env(image: &ImageConfiguration, ours: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<String> = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    for (key, value) in ours {
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{key}={value}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

/// The cgroup cpu quota (µs per [`CPU_PERIOD`]) for `cpu` cores.
pub fn cpu_quota(cpu: f64) -> i64 {
    ((cpu * CPU_PERIOD as f64).round() as i64).max(1000)
}

fn user(image: &ImageConfiguration) -> Result<(u32, u32), SpecError> {
    let Some(user) = image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .filter(|u| !u.is_empty())
    else {
        return Ok((0, 0));
    };
    let (uid, gid) = user.split_once(':').unwrap_or((&user, "0"));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => Err(SpecError::User(user)),
    }
}

/// Builds the runtime spec.
pub fn build(shape: &ContainerShape<'_>) -> Result<Spec, SpecError> {
    let invalid = |e: oci_spec::OciSpecError| SpecError::Invalid(e.to_string());
    let args = process_args(shape.image, shape.command.as_deref());
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let (uid, gid) = user(shape.image)?;
    let cwd = shape
        .image
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut spec = Spec::default();
    spec.set_hostname(Some(shape.hostname.clone()));
    // Writable root (oci-spec defaults to read-only): containers write where they like,
    // into their own overlay snapshot.
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(invalid)?,
    ));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(merge_env(shape.image, &shape.env)));
    process.set_cwd(cwd.into());
    let mut process_user = process.user().clone();
    process_user.set_uid(uid);
    process_user.set_gid(gid);
    process.set_user(process_user);
    spec.set_process(Some(process));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for bind in &shape.mounts {
        let mut options = vec!["rbind".to_string()];
        options.push(if bind.read_only { "ro" } else { "rw" }.to_string());
        mounts.push(
            MountBuilder::default()
                .destination(bind.destination.clone())
                .typ("bind")
                .source(bind.source.clone())
                .options(options)
                .build()
                .map_err(invalid)?,
        );
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|mut ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                // Host networking: no network namespace of its own, or the given one.
                let path = shape.netns?;
                ns.set_path(Some(path.to_path_buf()));
            }
            Some(ns)
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    let mut resources: LinuxResources = linux.resources().clone().unwrap_or_default();
    resources.set_cpu(Some(
        LinuxCpuBuilder::default()
            .quota(cpu_quota(shape.cpu))
            .period(CPU_PERIOD)
            .build()
            .map_err(invalid)?,
    ));
    let limit = i64::try_from(shape.memory).unwrap_or(i64::MAX);
    resources.set_memory(Some(
        LinuxMemoryBuilder::default()
            .limit(limit)
            .swap(limit)
            .build()
            .map_err(invalid)?,
    ));
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(PathBuf::from(&shape.cgroups_path)));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd_as_docker_does() {
        let img = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"]}}"#,
        );
        let none = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let cmd_only = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Cmd":["sh"]}}"#,
        );
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        type Case<'a> = (&'a ImageConfiguration, Option<Vec<String>>, Vec<String>);
        let cases: Vec<Case> = vec![
            (&img, None, s(&["/bin/app", "--serve"])),
            (
                &img,
                Some(s(&["/bin/sh", "-c", "x"])),
                s(&["/bin/sh", "-c", "x"]),
            ),
            (&img, Some(vec![]), s(&["/bin/app", "--serve"])),
            (&cmd_only, None, s(&["sh"])),
            (&none, None, vec![]),
        ];
        for (image, command, want) in cases {
            assert_eq!(process_args(image, command.as_deref()), want);
        }
    }

    #[test]
    fn alloc_env_overrides_image_env_by_name() {
        let img = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Env":["PATH=/bin","MODE=image","KEEP=1"]}}"#,
        );
        let ours = vec![
            ("MODE".to_string(), "alloc".to_string()),
            ("PORT".to_string(), "20001".to_string()),
        ];
        assert_eq!(
            merge_env(&img, &ours),
            vec!["PATH=/bin", "KEEP=1", "MODE=alloc", "PORT=20001"]
        );
        let bare = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        assert_eq!(merge_env(&bare, &[])[0], DEFAULT_PATH);
    }

    #[test]
    fn cpu_quota_is_cores_times_the_period() {
        assert_eq!(cpu_quota(0.25), 25_000);
        assert_eq!(cpu_quota(2.0), 200_000);
        assert_eq!(cpu_quota(0.001), 1000);
    }

    #[test]
    fn host_network_drops_the_network_namespace_and_netns_joins_one() {
        let img = image(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Cmd":["sh"]}}"#,
        );
        let mut shape = ContainerShape {
            image: &img,
            command: None,
            env: vec![],
            cpu: 0.5,
            memory: 64 << 20,
            hostname: "a".into(),
            netns: None,
            cgroups_path: "/mill/a".into(),
            mounts: vec![],
        };
        let spec = build(&shape).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(namespaces
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Network));
        let path = PathBuf::from("/run/netns/h1");
        shape.netns = Some(&path);
        let spec = build(&shape).unwrap();
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let net = namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(net.path().as_deref(), Some(path.as_path()));
    }
}
