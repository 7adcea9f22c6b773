//! containerd over its gRPC socket: content, images, snapshots, diff, containers, tasks,
//! leases. Every request carries the node's containerd namespace; nothing here knows
//! about Allocs.

use super::{RuntimeError, TaskState};
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, MountsRequest,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    container::Runtime, containers_client::ContainersClient, content_client::ContentClient,
    diff_client::DiffClient, images_client::ImagesClient, leases_client::LeasesClient,
    tasks_client::TasksClient, version_client::VersionClient, ApplyRequest, Container,
    CreateContainerRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteTaskRequest, GetImageRequest, GetRequest, Image, InfoRequest, KillRequest,
    ListContainersRequest, ReadContentRequest, StartRequest, UpdateImageRequest, UpdateRequest,
    WaitRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{self, transport::Channel, Code, Request};
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// The snapshotter every image is unpacked into and every container runs on.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime shim.
const RUNC: &str = "io.containerd.runc.v2";
/// Bytes per content write message.
const CHUNK: usize = 1 << 20;

/// A connection to containerd, scoped to one containerd namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

/// A container as containerd lists it.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    /// The container id.
    pub id: String,
    /// Its labels (mill's carry the alloc's identity).
    pub labels: HashMap<String, String>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status (128 + signal for a signalled process).
    pub code: u32,
}

impl Containerd {
    /// Connects to the socket and checks that containerd answers.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, RuntimeError> {
        let unreachable = |e: &dyn std::fmt::Display| RuntimeError::Unreachable {
            socket: socket.display().to_string(),
            message: e.to_string(),
        };
        if !socket.exists() {
            return Err(unreachable(&"no such socket"));
        }
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| unreachable(&e))?;
        let runtime = Containerd {
            channel,
            namespace: namespace.to_string(),
        };
        VersionClient::new(runtime.channel.clone())
            .version(())
            .await
            .map_err(|e| unreachable(&e.message()))?;
        Ok(runtime)
    }

    /// Whether containerd still answers.
    pub async fn ping(&self) -> bool {
        VersionClient::new(self.channel.clone())
            .version(())
            .await
            .is_ok()
    }

    fn request<T>(&self, message: T, lease: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        // Namespace and lease ids are validated label-like strings; a value that is not
        // valid header text would be rejected by containerd anyway, so it is left out.
        if let Ok(ns) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", ns);
        }
        if let Some(lease) = lease.and_then(|l| l.parse().ok()) {
            request.metadata_mut().insert("containerd-lease", lease);
        }
        request
    }

    // ---- leases ----

    /// A lease that keeps content and snapshots written under it from garbage collection
    /// until it is deleted (or expires after `ttl`, should the agent die first).
    pub async fn lease_create(&self, ttl: Duration) -> Result<String, RuntimeError> {
        let id = format!("mill-{}", uuid::Uuid::new_v4());
        let expire = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(ttl).unwrap_or_default())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            expire.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )]);
        LeasesClient::new(self.channel.clone())
            .create(self.request(CreateLeaseRequest { id, labels }, None))
            .await
            .map_err(rpc("create a lease"))?
            .into_inner()
            .lease
            .map(|l| l.id)
            .ok_or_else(|| RuntimeError::Protocol("lease create returned no lease".into()))
    }

    /// Ends a lease.
    pub async fn lease_delete(&self, id: &str) {
        let request = DeleteLeaseRequest {
            id: id.to_string(),
            sync: false,
        };
        if let Err(e) = LeasesClient::new(self.channel.clone())
            .delete(self.request(request, None))
            .await
        {
            tracing::debug!("cannot delete lease {id}: {}", e.message());
        }
    }

    // ---- content ----

    /// Whether the content store has the blob.
    pub async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        let request = InfoRequest {
            digest: digest.to_string(),
        };
        match ContentClient::new(self.channel.clone())
            .info(self.request(request, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(rpc("stat content")(s)),
        }
    }

    /// Reads a whole blob (manifests, configs: small).
    pub async fn content_read(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let request = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.request(request, None))
            .await
            .map_err(rpc("read content"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(rpc("read content"))?.data);
        }
        Ok(out)
    }

    /// Sets labels on a blob (garbage-collection references).
    pub async fn content_label(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = UpdateRequest {
            info: Some(containerd_client::services::v1::Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        ContentClient::new(self.channel.clone())
            .update(self.request(request, None))
            .await
            .map_err(rpc("label content"))?;
        Ok(())
    }

    /// Writes a blob from a stream of chunks; containerd verifies size and digest at
    /// commit. A blob that exists already counts as written.
    pub async fn content_write<S, E>(
        &self,
        lease: Option<&str>,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        mut data: S,
    ) -> Result<(), RuntimeError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let reference = format!("mill-{digest}");
        let base = WriteContentRequest {
            r#ref: reference,
            total: size,
            expected: digest.to_string(),
            ..Default::default()
        };
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let send = |tx: &mpsc::Sender<WriteContentRequest>, r: WriteContentRequest| {
            let tx = tx.clone();
            async move {
                tx.send(r)
                    .await
                    .map_err(|_| RuntimeError::Protocol("content write stream closed".into()))
            }
        };
        send(
            &tx,
            WriteContentRequest {
                action: WriteAction::Stat as i32,
                ..base.clone()
            },
        )
        .await?;
        let mut responses = match ContentClient::new(self.channel.clone())
            .write(self.request(outbound, lease))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(rpc("write content")(s)),
        };
        let mut next = async || match responses.next().await {
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(s)) if s.code() == Code::AlreadyExists => Ok(None),
            Some(Err(s)) => Err(rpc("write content")(s)),
            None => Err(RuntimeError::Protocol("content write ended early".into())),
        };
        if next().await?.is_none() {
            return Ok(());
        }
        let mut offset = 0i64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| RuntimeError::Fetch(e.to_string()))?;
            for piece in chunk.chunks(CHUNK) {
                send(
                    &tx,
                    WriteContentRequest {
                        action: WriteAction::Write as i32,
                        offset,
                        data: piece.to_vec(),
                        ..base.clone()
                    },
                )
                .await?;
                offset += piece.len() as i64;
                if next().await?.is_none() {
                    return Ok(());
                }
            }
        }
        send(
            &tx,
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                offset,
                labels,
                ..base
            },
        )
        .await?;
        next().await?;
        Ok(())
    }

    // ---- images ----

    /// The target descriptor of an image record, if it exists.
    pub async fn image_get(&self, name: &str) -> Result<Option<Descriptor>, RuntimeError> {
        let request = GetImageRequest {
            name: name.to_string(),
        };
        match ImagesClient::new(self.channel.clone())
            .get(self.request(request, None))
            .await
        {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc("get image")(s)),
        }
    }

    /// Creates or updates an image record pointing at `target`.
    pub async fn image_put(&self, name: &str, target: Descriptor) -> Result<(), RuntimeError> {
        let image = Image {
            name: name.to_string(),
            target: Some(target),
            ..Default::default()
        };
        let create = CreateImageRequest {
            image: Some(image.clone()),
            ..Default::default()
        };
        match ImagesClient::new(self.channel.clone())
            .create(self.request(create, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    ..Default::default()
                };
                ImagesClient::new(self.channel.clone())
                    .update(self.request(update, None))
                    .await
                    .map_err(rpc("update image"))?;
                Ok(())
            }
            Err(s) => Err(rpc("create image")(s)),
        }
    }

    // ---- snapshots and diff ----

    /// Whether a snapshot exists.
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let request = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.request(request, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(rpc("stat snapshot")(s)),
        }
    }

    /// Prepares an active snapshot on `parent`; returns its mounts.
    pub async fn snapshot_prepare(
        &self,
        lease: Option<&str>,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>, RuntimeError> {
        let request = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .prepare(self.request(request, lease))
            .await
        {
            Ok(r) => Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::AlreadyExists => self.snapshot_mounts(key).await,
            Err(s) => Err(rpc("prepare snapshot")(s)),
        }
    }

    /// The mounts of an active snapshot.
    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>, RuntimeError> {
        let request = MountsRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        Ok(SnapshotsClient::new(self.channel.clone())
            .mounts(self.request(request, None))
            .await
            .map_err(rpc("get snapshot mounts"))?
            .into_inner()
            .mounts)
    }

    /// Commits an active snapshot as `name`; an existing `name` counts as committed.
    pub async fn snapshot_commit(
        &self,
        lease: Option<&str>,
        name: &str,
        key: &str,
    ) -> Result<(), RuntimeError> {
        let request = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: name.to_string(),
            key: key.to_string(),
            ..Default::default()
        };
        match SnapshotsClient::new(self.channel.clone())
            .commit(self.request(request, lease))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                self.snapshot_remove(key).await;
                Ok(())
            }
            Err(s) => Err(rpc("commit snapshot")(s)),
        }
    }

    /// Removes a snapshot; a missing one is fine.
    pub async fn snapshot_remove(&self, key: &str) {
        let request = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        if let Err(s) = SnapshotsClient::new(self.channel.clone())
            .remove(self.request(request, None))
            .await
        {
            if s.code() != Code::NotFound {
                tracing::warn!("cannot remove snapshot {key}: {}", s.message());
            }
        }
    }

    /// Applies a layer blob onto mounts (the diff service unpacks it, decompressing as
    /// its media type says).
    pub async fn diff_apply(
        &self,
        lease: Option<&str>,
        layer: Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<(), RuntimeError> {
        let request = ApplyRequest {
            diff: Some(layer),
            mounts,
            ..Default::default()
        };
        DiffClient::new(self.channel.clone())
            .apply(self.request(request, lease))
            .await
            .map_err(rpc("apply a layer"))?;
        Ok(())
    }

    // ---- containers ----

    /// Creates a container record running `spec` (the OCI runtime spec as JSON).
    pub async fn container_create(
        &self,
        id: &str,
        image: &str,
        spec: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let container = Container {
            id: id.to_string(),
            image: image.to_string(),
            labels,
            runtime: Some(Runtime {
                name: RUNC.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(self.request(
                CreateContainerRequest {
                    container: Some(container),
                },
                None,
            ))
            .await
            .map_err(rpc("create the container"))?;
        Ok(())
    }

    /// Containers in the namespace matching a containerd filter (e.g. `labels."k"`).
    pub async fn container_list(&self, filter: &str) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let request = ListContainersRequest {
            filters: vec![filter.to_string()],
        };
        Ok(ContainersClient::new(self.channel.clone())
            .list(self.request(request, None))
            .await
            .map_err(rpc("list containers"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| ContainerRecord {
                id: c.id,
                labels: c.labels,
            })
            .collect())
    }

    /// Deletes a container record and its snapshot; missing ones are fine.
    pub async fn container_delete(&self, id: &str) -> Result<(), RuntimeError> {
        let request = DeleteContainerRequest { id: id.to_string() };
        match ContainersClient::new(self.channel.clone())
            .delete(self.request(request, None))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(rpc("delete the container")(s)),
        }
        self.snapshot_remove(id).await;
        Ok(())
    }

    // ---- tasks ----

    /// Creates the container's task (its process, not yet started) with stdout and stderr
    /// going to `log_uri`; returns its pid.
    pub async fn task_create(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        log_uri: &str,
    ) -> Result<u32, RuntimeError> {
        let request = CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            stdout: log_uri.to_string(),
            stderr: log_uri.to_string(),
            ..Default::default()
        };
        Ok(TasksClient::new(self.channel.clone())
            .create(self.request(request, None))
            .await
            .map_err(rpc("create the task"))?
            .into_inner()
            .pid)
    }

    /// Starts a created task; returns its pid.
    pub async fn task_start(&self, id: &str) -> Result<u32, RuntimeError> {
        let request = StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        Ok(TasksClient::new(self.channel.clone())
            .start(self.request(request, None))
            .await
            .map_err(rpc("start the task"))?
            .into_inner()
            .pid)
    }

    /// The task's state, or `None` when the container has no task.
    pub async fn task_get(&self, id: &str) -> Result<Option<TaskState>, RuntimeError> {
        let request = GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        match TasksClient::new(self.channel.clone())
            .get(self.request(request, None))
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                use containerd_client::types::v1::Status;
                match Status::try_from(p.status).unwrap_or(Status::Unknown) {
                    Status::Stopped => TaskState::Exited(Exit {
                        code: p.exit_status,
                    }),
                    Status::Created => TaskState::Created,
                    _ => TaskState::Running { pid: p.pid },
                }
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc("get the task")(s)),
        }
    }

    /// Sends a signal to the task's processes.
    pub async fn task_kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        let request = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all: true,
        };
        match TasksClient::new(self.channel.clone())
            .kill(self.request(request, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(rpc("signal the task")(s)),
        }
    }

    /// Waits until the task exits.
    pub async fn task_wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let request = WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        let response = TasksClient::new(self.channel.clone())
            .wait(self.request(request, None))
            .await
            .map_err(rpc("wait for the task"))?
            .into_inner();
        Ok(Exit {
            code: response.exit_status,
        })
    }

    /// Deletes an exited (or never started) task; a missing one is fine.
    pub async fn task_delete(&self, id: &str) -> Result<(), RuntimeError> {
        let request = DeleteTaskRequest {
            container_id: id.to_string(),
        };
        match TasksClient::new(self.channel.clone())
            .delete(self.request(request, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(rpc("delete the task")(s)),
        }
    }
}

/// Maps a gRPC status to a runtime error naming what was being done.
fn rpc(what: &'static str) -> impl Fn(tonic::Status) -> RuntimeError {
    move |s| RuntimeError::Rpc {
        what,
        message: s.message().to_string(),
        not_found: s.code() == Code::NotFound,
    }
}
