//! The verbs on resources: get, list, create, update, patch, delete, deletecollection,
//! and the `/status` subresource; translated to store reads and transactions.
//!
//! Every write runs the same pipeline before anything is proposed — parse, check
//! apiVersion/kind/name/namespace against the URL, unknown fields (`fieldValidation`),
//! the typed check, size — so bad input never reaches the store.

use super::objects::{self, name_of, rv_of};
use super::patch::{self, PatchType};
use super::request::{self, flag, Params, Representation, ResourceRef, Target};
use super::resources::ResourceKind;
use super::selectors::Selectors;
use super::status::{self, ApiError, Cause};
use super::validation;
use super::{discovery, respond, table, watch, ApiState};
use crate::store::{Applied, Key, Op, Part, StoreError, Txn};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest request body read at all; objects are limited further by
/// [`validation::MAX_OBJECT_BYTES`] once parsed.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How often a patch is retried when the object changes under it.
const PATCH_ATTEMPTS: usize = 5;

/// How often an update without a resourceVersion (unconditional: Kubernetes retries it
/// until it applies) is retried when the object changes under it. Each round of
/// contending writers lets at least one of them through, so this bounds only a pathological
/// pile-up.
const UNCONDITIONAL_ATTEMPTS: usize = 32;

/// The one handler behind `/api/...` and `/apis/...`.
pub async fn serve(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&state, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

fn read_only(method: &Method, doc: Value) -> Result<Response, ApiError> {
    if method == Method::GET {
        Ok(respond::ok(&doc))
    } else {
        Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on discovery documents"
        )))
    }
}

async fn handle(
    state: &Arc<ApiState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let target = request::parse_path(&state.registry, uri.path())?;
    let r = match target {
        Target::ApiVersions => {
            return read_only(method, discovery::api_versions(&state.server_address))
        }
        Target::CoreResources => {
            return read_only(method, discovery::resource_list(&state.registry, ""))
        }
        Target::Groups => return read_only(method, discovery::group_list(&state.registry)),
        Target::Group(g) => return read_only(method, discovery::group(&state.registry, g)),
        Target::GroupResources(g) => {
            return read_only(method, discovery::resource_list(&state.registry, g))
        }
        Target::Resource(r) => r,
    };
    let params = Params::from_uri(uri)?;
    let req = Req {
        state,
        r,
        params,
        headers,
    };
    let body = || async {
        axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::too_large(format!(
                    "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
                ))
            })
    };
    match (method.clone(), r.name) {
        (Method::GET, None) if flag(&req.params.watch) => req.watch().await,
        (Method::GET, None) => req.list().await,
        (Method::GET, Some(name)) => req.get(name).await,
        (Method::POST, None) => req.create(&body().await?).await,
        (Method::PUT, Some(name)) => req.update(name, &body().await?).await,
        (Method::PATCH, Some(name)) => req.patch(name, &body().await?).await,
        (Method::DELETE, Some(name)) => req.delete(name, &body().await?).await,
        (Method::DELETE, None) => req.delete_collection().await,
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

/// One resource request.
struct Req<'a> {
    state: &'a Arc<ApiState>,
    r: ResourceRef<'a>,
    params: Params,
    headers: &'a HeaderMap,
}

/// A continue token: where the previous page ended and the rv the list started at.
#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    namespace: Option<String>,
    name: String,
}

impl Continue {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(token: &str) -> Result<Continue, ApiError> {
        URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| ApiError::bad_request(format!("invalid continue token {token:?}")))
    }
}

/// Where a write came from, for the shared write pipeline.
enum Write<'o> {
    Create,
    Update { existing: &'o Value },
}

impl<'a> Req<'a> {
    fn kind(&self) -> &'a ResourceKind {
        self.r.kind
    }

    fn key(&self, namespace: Option<&str>, name: &str) -> Key {
        Key {
            resource: self.kind().store_resource(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    fn object_key(&self, name: &str) -> Key {
        self.key(self.r.namespace, name)
    }

    fn representation(&self) -> Representation {
        request::representation(
            self.headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        )
    }

    fn store_error(&self, err: StoreError, name: &str) -> ApiError {
        ApiError::from_store(err, self.kind(), name)
    }

    /// The client's view of a stored object (Secrets unsealed, type meta filled in).
    fn present(&self, stored: &Value) -> Result<Value, ApiError> {
        present(self.state, self.kind(), stored)
    }

    /// Makes the local replica current enough for the request's resourceVersion: unset
    /// is a linearizable read, `0` is served locally, `N` waits for `N`.
    async fn consistent_read(&self) -> Result<(), ApiError> {
        let store = &self.state.store;
        match self.params.resource_version.as_deref() {
            None | Some("") => {
                store
                    .read_barrier()
                    .await
                    .map_err(|e| self.store_error(e, ""))?;
            }
            Some("0") => {}
            Some(rv) => {
                let wanted: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?;
                if store.applied_rv() < wanted {
                    let now = store
                        .read_barrier()
                        .await
                        .map_err(|e| self.store_error(e, ""))?;
                    if now < wanted {
                        return Err(ApiError::timeout(format!(
                            "Too large resource version: {wanted}, current: {now}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn one(&self, obj: Value, code: StatusCode) -> Response {
        let body = match self.representation() {
            Representation::Object => obj,
            Representation::Metadata => table::partial_metadata(&obj),
            Representation::Table => {
                let rv = objects::meta_str(&obj, "resourceVersion")
                    .unwrap_or_default()
                    .to_string();
                table::table(self.kind(), &[&obj], &rv, None)
            }
        };
        respond::json(code, &body)
    }

    async fn get(&self, name: &str) -> Result<Response, ApiError> {
        self.consistent_read().await?;
        let stored = self
            .state
            .store
            .get(&self.object_key(name))
            .ok_or_else(|| ApiError::not_found(self.kind(), name))?;
        Ok(self.one(self.present(&stored)?, StatusCode::OK))
    }

    fn selectors(&self) -> Result<Selectors, ApiError> {
        Selectors::parse(
            self.params.label_selector.as_deref(),
            self.params.field_selector.as_deref(),
            self.kind(),
        )
    }

    async fn list(&self) -> Result<Response, ApiError> {
        let selectors = self.selectors()?;
        let resume = self
            .params
            .continue_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Continue::decode)
            .transpose()?;
        if resume.is_none() {
            self.consistent_read().await?;
        }
        let (items, rv) = self
            .state
            .store
            .list(&self.kind().store_resource(), self.r.namespace);
        // A continued list reports the rv its first page was read at, so a watch from it
        // misses nothing that changed between pages.
        let list_rv = resume.as_ref().map_or(rv, |c| c.rv);
        let limit = self.params.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut page = Vec::new();
        let mut more = false;
        for item in items.iter() {
            let position = (
                item["metadata"]["namespace"].as_str().map(str::to_string),
                name_of(item).unwrap_or_default().to_string(),
            );
            if let Some(c) = &resume {
                if position <= (c.namespace.clone(), c.name.clone()) {
                    continue;
                }
            }
            let obj = self.present(item)?;
            if !selectors.matches(&obj) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push((position, obj));
        }
        let token = match (more, page.last()) {
            (true, Some(((namespace, name), _))) => Some(
                Continue {
                    rv: list_rv,
                    namespace: namespace.clone(),
                    name: name.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        let objects: Vec<Value> = page.into_iter().map(|(_, o)| o).collect();
        let rv = list_rv.to_string();
        let body = match self.representation() {
            Representation::Table => {
                let refs: Vec<&Value> = objects.iter().collect();
                table::table(self.kind(), &refs, &rv, token.as_deref())
            }
            Representation::Metadata => {
                let mut list = list_doc(
                    "PartialObjectMetadataList",
                    "meta.k8s.io/v1",
                    &rv,
                    token.as_deref(),
                );
                list["items"] = objects.iter().map(table::partial_metadata).collect();
                list
            }
            Representation::Object => {
                let mut list = list_doc(
                    &self.kind().list_kind(),
                    &self.kind().api_version(),
                    &rv,
                    token.as_deref(),
                );
                list["items"] = Value::Array(objects);
                list
            }
        };
        Ok(respond::ok(&body))
    }

    async fn watch(&self) -> Result<Response, ApiError> {
        let selectors = self.selectors()?;
        watch::serve(
            self.state.clone(),
            self.kind().clone(),
            self.r.namespace.map(str::to_string),
            &self.params,
            selectors,
            self.representation(),
        )
        .await
    }

    /// The `fieldValidation` check: unknown fields are an error (Strict), a warning
    /// (Warn, the default) or ignored.
    fn check_fields(&self, obj: &Value) -> Result<Vec<String>, ApiError> {
        let mode = self.params.field_validation.as_deref().unwrap_or("Warn");
        if mode == "Ignore" {
            return Ok(Vec::new());
        }
        let unknown = validation::unknown_fields(obj, self.kind());
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        if mode == "Strict" {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                list.join(", "),
                kind = self.kind().kind,
                version = self.kind().version,
            )));
        }
        Ok(unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect())
    }

    /// apiVersion and kind must match the URL; missing ones are filled in.
    fn check_type(&self, obj: &mut Value) -> Result<(), ApiError> {
        let kind = self.kind();
        let expected_version = kind.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = json!(expected_version),
            Some(v) if v == expected_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({expected_version})"
                )))
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(kind.kind),
            Some(k) if k == kind.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    kind.kind
                )))
            }
        }
        Ok(())
    }

    /// The namespace in the body must be the URL's (or absent, then it is set).
    fn check_namespace(&self, obj: &mut Value) -> Result<(), ApiError> {
        let body_ns = objects::meta_str(obj, "namespace").filter(|n| !n.is_empty());
        match (self.kind().namespaced, self.r.namespace, body_ns) {
            (true, Some(url), Some(body)) if url != body => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            (true, Some(url), _) => {
                objects::metadata_mut(obj).insert("namespace".into(), json!(url));
                Ok(())
            }
            (true, None, _) => Err(ApiError::method_not_allowed(
                "namespaced objects are written inside their namespace: /namespaces/{namespace}/...",
            )),
            (false, _, _) => {
                objects::metadata_mut(obj).remove("namespace");
                Ok(())
            }
        }
    }

    /// Namespaced writes need their namespace to exist (`default` always does).
    fn check_namespace_exists(&self) -> Result<(), ApiError> {
        let Some(ns) = self.r.namespace.filter(|_| self.kind().namespaced) else {
            return Ok(());
        };
        if ns == "default" {
            return Ok(());
        }
        let key = Key {
            resource: "/namespaces".into(),
            namespace: None,
            name: ns.to_string(),
        };
        if self.state.store.get(&key).is_some() {
            return Ok(());
        }
        let namespaces = self
            .state
            .registry
            .find("", "namespaces")
            .ok_or_else(|| ApiError::internal("the namespace kind is not registered"))?;
        Err(ApiError::not_found(namespaces, ns))
    }

    /// The shared write pipeline: validates `obj` and returns it as it will be stored
    /// (sealed, for Secrets) plus the client's view and any warnings.
    fn prepare(&self, mut obj: Value, write: Write<'_>) -> Result<Prepared, ApiError> {
        let kind = self.kind();
        self.check_type(&mut obj)?;
        self.check_namespace(&mut obj)?;
        let warnings = self.check_fields(&obj)?;
        let name = name_of(&obj).unwrap_or_default().to_string();
        if let Some(cause) = validation::name_problem(kind, &name) {
            return Err(ApiError::invalid(kind, &name, vec![cause]));
        }
        if let Some(ns) = self.r.namespace.filter(|_| kind.namespaced) {
            if !validation::valid_namespace(ns) {
                return Err(ApiError::invalid(
                    kind,
                    &name,
                    vec![Cause::invalid(
                        "metadata.namespace",
                        format!("Invalid value: \"{ns}\": a namespace must be a DNS label"),
                    )],
                ));
            }
        }
        objects::clean_metadata(&mut obj);
        let meta = objects::metadata_mut(&mut obj);
        meta.remove("generation");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        match write {
            Write::Create => {
                meta.remove("resourceVersion");
                meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
                if kind.is_namespace() && obj["status"]["phase"].is_null() {
                    obj["status"] = json!({"phase": "Active"});
                }
                if kind.is_secret() && obj.get("type").is_none_or(Value::is_null) {
                    obj["type"] = json!("Opaque");
                }
            }
            Write::Update { existing } => {
                for field in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                ] {
                    match existing["metadata"].get(field) {
                        Some(v) => {
                            meta.insert(field.into(), v.clone());
                        }
                        None => {
                            meta.remove(field);
                        }
                    }
                }
                if kind.is_secret() && obj.get("type").is_none_or(Value::is_null) {
                    obj["type"] = existing.get("type").cloned().unwrap_or(json!("Opaque"));
                }
            }
        }
        if let Some(normalize) = kind.normalizer {
            obj = normalize(&obj).map_err(|cause| ApiError::invalid(kind, &name, vec![cause]))?;
        }
        let view = obj.clone();
        if kind.is_secret() {
            let previous = match write {
                Write::Update { existing } => Some(existing),
                Write::Create => None,
            };
            self.state
                .secrets
                .seal(&mut obj, previous)
                .map_err(|e| match e {
                    super::secrets::SealError::BadBase64 { .. } => {
                        ApiError::bad_request(e.to_string())
                    }
                    _ => {
                        ApiError::invalid(kind, &name, vec![Cause::invalid("data", e.to_string())])
                    }
                })?;
        }
        let size = serde_json::to_vec(&obj)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > validation::MAX_OBJECT_BYTES {
            return Err(ApiError::too_large(format!(
                "{} \"{name}\" is {size} bytes; objects are limited to {} bytes",
                kind.group_resource(),
                validation::MAX_OBJECT_BYTES
            )));
        }
        Ok(Prepared {
            name,
            stored: obj,
            view,
            warnings,
        })
    }

    async fn propose(&self, ops: Vec<Op>, name: &str) -> Result<Applied, ApiError> {
        let txn = Txn {
            ops,
            now: objects::now_rfc3339(),
        };
        self.state
            .store
            .propose(txn)
            .await
            .map_err(|e| self.store_error(e, name))
    }

    fn written(
        &self,
        applied: &Applied,
        prepared: &Prepared,
        code: StatusCode,
    ) -> Result<Response, ApiError> {
        let obj = match applied.objects.first() {
            Some(Some(obj)) => self.present(obj)?,
            _ => prepared.view.clone(),
        };
        Ok(with_warnings(self.one(obj, code), &prepared.warnings))
    }

    async fn create(&self, body: &[u8]) -> Result<Response, ApiError> {
        if self.r.status {
            return Err(ApiError::method_not_allowed(
                "create is not supported on /status",
            ));
        }
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mut obj = request::parse_object(content_type, body)?;
        generate_name(&mut obj);
        self.create_object(obj).await
    }

    async fn create_object(&self, obj: Value) -> Result<Response, ApiError> {
        if name_of(&obj).is_none() {
            let kind = self.kind();
            return Err(ApiError::invalid(
                kind,
                "",
                vec![Cause {
                    field: "metadata.name".into(),
                    reason: "FieldValueRequired",
                    message: "Required value: name or generateName is required".into(),
                }],
            ));
        }
        let prepared = self.prepare(obj, Write::Create)?;
        self.check_namespace_exists()?;
        if self.params.dry_run() {
            return Ok(with_warnings(
                self.one(prepared.view.clone(), StatusCode::CREATED),
                &prepared.warnings,
            ));
        }
        let key = self.object_key(&prepared.name);
        let applied = self
            .propose(
                vec![Op::Create {
                    key,
                    object: prepared.stored.clone(),
                }],
                &prepared.name,
            )
            .await?;
        self.written(&applied, &prepared, StatusCode::CREATED)
    }

    /// The object as the leader last committed it: read-modify-write verbs (patch,
    /// delete with preconditions) must not decide on a stale local replica.
    async fn latest(&self, name: &str) -> Result<Value, ApiError> {
        self.state
            .store
            .read_barrier()
            .await
            .map_err(|e| self.store_error(e, name))?;
        self.existing(name)
    }

    fn existing(&self, name: &str) -> Result<Value, ApiError> {
        self.state
            .store
            .get(&self.object_key(name))
            .map(|v| (*v).clone())
            .ok_or_else(|| ApiError::not_found(self.kind(), name))
    }

    fn check_name(&self, obj: &Value, name: &str) -> Result<(), ApiError> {
        match name_of(obj) {
            Some(body) if body != name => Err(ApiError::bad_request(format!(
                "the name of the object ({body}) does not match the name on the URL ({name})"
            ))),
            _ => Ok(()),
        }
    }

    async fn update(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mut obj = request::parse_object(content_type, body)?;
        self.check_name(&obj, name)?;
        objects::metadata_mut(&mut obj).insert("name".into(), json!(name));
        let expected = rv_of(&obj).map_err(ApiError::bad_request)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The store applies an update only if the object still has the rv it was
            // based on (a compare-and-swap at apply time), so the local replica serves as
            // the base whenever it holds a version the write may build on: the one the
            // client named, or, without one, whatever is here. If the leader has moved
            // on, the swap fails and nothing is written. Only a base that cannot be
            // right (missing here, or not the version the client named), a retry and a dry
            // run (which proposes nothing) cost a read barrier first, so their answer is
            // decided on the leader's latest state.
            let local = match self.state.store.get(&self.object_key(name)) {
                Some(local)
                    if attempt == 1
                        && !self.params.dry_run()
                        && expected.is_none_or(|rv| rv_of(&local).ok().flatten() == Some(rv)) =>
                {
                    Some((*local).clone())
                }
                _ => None,
            };
            let existing = match local {
                Some(local) => local,
                None => self.latest(name).await?,
            };
            match self.replace(name, obj.clone(), &existing, expected).await {
                // Without a resourceVersion an update is unconditional (Kubernetes retries
                // it on the latest object); with one, a conflict is the answer.
                Err(err)
                    if err.reason == "Conflict"
                        && expected.is_none()
                        && attempt < UNCONDITIONAL_ATTEMPTS =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    /// Writes `obj` over `existing` (the main resource or, on `/status`, only status),
    /// conditional on `expected` rv.
    async fn replace(
        &self,
        name: &str,
        obj: Value,
        existing: &Value,
        expected: Option<u64>,
    ) -> Result<Response, ApiError> {
        let current_rv = rv_of(existing).ok().flatten();
        if expected.is_some() && expected != current_rv {
            return Err(ApiError::conflict(self.kind(), name));
        }
        let view_existing = self.present(existing)?;
        let (candidate, part) = if self.r.status {
            let mut merged = view_existing.clone();
            merged["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            if merged["status"].is_null() {
                if let Some(map) = merged.as_object_mut() {
                    map.remove("status");
                }
            }
            (merged, Part::Status)
        } else {
            let mut main = obj;
            // Main-resource writes never change status: keep the stored one.
            match view_existing.get("status") {
                Some(status) => main["status"] = status.clone(),
                None => {
                    if let Some(map) = main.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            (main, Part::Main)
        };
        let prepared = self.prepare(candidate, Write::Update { existing })?;
        if self.params.dry_run() {
            let mut view = prepared.view.clone();
            if let Some(rv) = current_rv {
                objects::metadata_mut(&mut view)
                    .insert("resourceVersion".into(), json!(rv.to_string()));
            }
            return Ok(with_warnings(
                self.one(view, StatusCode::OK),
                &prepared.warnings,
            ));
        }
        let key = self.object_key(name);
        let applied = self
            .propose(
                vec![Op::Update {
                    key,
                    object: prepared.stored.clone(),
                    expected_rv: expected.or(current_rv),
                    part,
                }],
                name,
            )
            .await?;
        self.written(&applied, &prepared, StatusCode::OK)
    }

    async fn patch(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let patch_type = PatchType::from_content_type(content_type, self.kind())?;
        let doc = patch::parse_body(patch_type, body)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let existing = match self.latest(name).await {
                Ok(existing) => existing,
                // Server-side apply creates what is missing.
                Err(err)
                    if patch_type == PatchType::Apply
                        && err.code == StatusCode::NOT_FOUND
                        && !self.r.status =>
                {
                    if !doc.is_object() {
                        return Err(ApiError::bad_request("an apply patch must be an object"));
                    }
                    self.check_name(&doc, name)?;
                    let mut obj = doc.clone();
                    objects::metadata_mut(&mut obj).insert("name".into(), json!(name));
                    return self.create_object(obj).await;
                }
                Err(err) => return Err(err),
            };
            let current = self.present(&existing)?;
            let patched = patch::apply(patch_type, &current, &doc)?;
            self.check_name(&patched, name)?;
            let pinned = rv_of(&patched).map_err(ApiError::bad_request)?;
            let current_rv = rv_of(&current).ok().flatten();
            // A patch that names a resourceVersion is conditional on it; others are
            // retried on the latest object when it changes underneath.
            let explicit = pinned != current_rv;
            if explicit {
                return Err(ApiError::conflict(self.kind(), name));
            }
            match self.replace(name, patched, &existing, current_rv).await {
                Err(err) if err.reason == "Conflict" && attempt < PATCH_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn delete(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let kind = self.kind();
        if self.r.status {
            return Err(ApiError::method_not_allowed(
                "delete is not supported on /status",
            ));
        }
        let options = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            request::parse_json(body)?
        };
        if kind.is_namespace() && name == "default" {
            return Err(ApiError::forbidden(
                "namespaces \"default\" is forbidden: this namespace may not be deleted",
            ));
        }
        let dry_run = self.params.dry_run()
            || options["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        let existing = self.latest(name).await?;
        let uid = objects::meta_str(&existing, "uid").map(str::to_string);
        let rv = rv_of(&existing).ok().flatten();
        let pre = &options["preconditions"];
        if let Some(want) = pre["uid"].as_str() {
            if Some(want) != uid.as_deref() {
                return Err(ApiError::conflict_because(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                        uid.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(want) = pre["resourceVersion"].as_str() {
            if Some(want.to_string()) != rv.map(|r| r.to_string()) {
                return Err(ApiError::conflict_because(kind, name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                    rv.map(|r| r.to_string()).unwrap_or_default()
                )));
            }
        }
        let view = self.present(&existing)?;
        if dry_run {
            return Ok(self.one(view, StatusCode::OK));
        }
        let mut ops = Vec::new();
        if kind.is_namespace() {
            ops.extend(self.namespace_contents(name));
        }
        ops.push(Op::Delete {
            key: self.object_key(name),
            expected_rv: pre["resourceVersion"].as_str().and(rv),
            expected_uid: pre["uid"].as_str().map(str::to_string),
        });
        let applied = self.propose(ops, name).await?;
        match applied.objects.last() {
            // Finalizers pending: the object stays, marked for deletion.
            Some(Some(obj)) => Ok(self.one(self.present(obj)?, StatusCode::OK)),
            _ => Ok(respond::ok(&status::success(kind, name, uid.as_deref()))),
        }
    }

    /// Deletes of everything inside namespace `ns` (deleting a namespace deletes its
    /// contents in the same transaction).
    fn namespace_contents(&self, ns: &str) -> Vec<Op> {
        let mut ops = Vec::new();
        for kind in self.state.registry.all().iter().filter(|k| k.namespaced) {
            let (items, _) = self.state.store.list(&kind.store_resource(), Some(ns));
            for item in items {
                if let Some(name) = name_of(&item) {
                    ops.push(Op::Delete {
                        key: Key {
                            resource: kind.store_resource(),
                            namespace: Some(ns.to_string()),
                            name: name.to_string(),
                        },
                        expected_rv: None,
                        expected_uid: None,
                    });
                }
            }
        }
        ops
    }

    async fn delete_collection(&self) -> Result<Response, ApiError> {
        let kind = self.kind();
        if kind.is_namespace() {
            return Err(ApiError::method_not_allowed(
                "deletecollection is not supported on namespaces",
            ));
        }
        let selectors = self.selectors()?;
        self.consistent_read().await?;
        let (items, rv) = self
            .state
            .store
            .list(&kind.store_resource(), self.r.namespace);
        let mut ops = Vec::new();
        let mut deleted = Vec::new();
        for item in items.iter() {
            let obj = self.present(item)?;
            if !selectors.matches(&obj) {
                continue;
            }
            let name = name_of(&obj).unwrap_or_default().to_string();
            ops.push(Op::Delete {
                key: self.key(obj["metadata"]["namespace"].as_str(), &name),
                expected_rv: None,
                expected_uid: None,
            });
            deleted.push(obj);
        }
        let mut list_rv = rv;
        if !ops.is_empty() && !self.params.dry_run() {
            list_rv = self.propose(ops, "").await?.rv;
        }
        let mut list = list_doc(
            &kind.list_kind(),
            &kind.api_version(),
            &list_rv.to_string(),
            None,
        );
        list["items"] = Value::Array(deleted);
        Ok(respond::ok(&list))
    }
}

/// A validated object ready to propose.
struct Prepared {
    name: String,
    /// What goes to the store (Secrets sealed).
    stored: Value,
    /// What the client sees.
    view: Value,
    /// `fieldValidation=Warn` warnings.
    warnings: Vec<String>,
}

/// The client's view of a stored object.
pub fn present(state: &ApiState, kind: &ResourceKind, stored: &Value) -> Result<Value, ApiError> {
    let mut obj = if kind.is_secret() {
        state
            .secrets
            .unseal(stored)
            .map_err(|e| ApiError::internal(e.to_string()))?
    } else {
        stored.clone()
    };
    if obj.get("apiVersion").is_none() {
        obj["apiVersion"] = json!(kind.api_version());
    }
    if obj.get("kind").is_none() {
        obj["kind"] = json!(kind.kind);
    }
    Ok(obj)
}

fn list_doc(kind: &str, api_version: &str, rv: &str, token: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(token) = token {
        metadata["continue"] = json!(token);
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": []})
}

/// Fills `metadata.name` from `generateName` plus a random suffix, as Kubernetes does.
fn generate_name(obj: &mut Value) {
    if name_of(obj).is_some() {
        return;
    }
    let Some(prefix) = objects::meta_str(obj, "generateName").map(str::to_string) else {
        return;
    };
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    objects::metadata_mut(obj).insert("name".into(), json!(format!("{prefix}{suffix}")));
}

/// Adds `Warning` headers (`fieldValidation=Warn`), which kubectl prints.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        if let Ok(value) =
            HeaderValue::from_str(&format!("299 - \"{}\"", warning.replace('"', "'")))
        {
            response.headers_mut().append("Warning", value);
        }
    }
    response
}
