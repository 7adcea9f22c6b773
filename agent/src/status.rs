//! Writing Alloc status through the `/status` subresource (JSON merge patches: only the
//! fields named change; conditions written by the health controller are left alone).

use crate::Ctx;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use mill_crds::Alloc;
use serde_json::json;

/// The tracing target of the rollout's timeline (`benches/rollout.rs` collects it).
pub const TIMELINE: &str = "mill::timeline";

/// Attempts per status write before giving up (the next write or resync corrects it).
const ATTEMPTS: u32 = 3;

/// The current time as Kubernetes writes it (RFC 3339 UTC, whole seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Merges `status` into the alloc's status.
pub async fn write_alloc(ctx: &Ctx, alloc: &Alloc, status: serde_json::Value) {
    let namespace = alloc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Alloc> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = alloc.name_any();
    let patch = json!({ "status": status });
    let began = std::time::Instant::now();
    for attempt in 1..=ATTEMPTS {
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(
                    target: TIMELINE,
                    "agent status {name} {} took {:.1} ms",
                    patch["status"]["phase"],
                    began.elapsed().as_secs_f64() * 1000.0
                );
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!("cannot write the status of alloc {namespace}/{name}: {e}");
            }
            Err(_) => tokio::time::sleep(ctx.config.timings.containerd_retry / 4).await,
        }
    }
}
