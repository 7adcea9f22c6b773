//! The state machine's contents and the pure, deterministic apply of a [`Txn`].
//!
//! Nothing here does I/O: [`apply`] reads the current [`Objects`] and returns the changes
//! one log entry makes (or the error that aborts it); the caller persists them, installs
//! them with [`Objects::apply_changes`] and hands them to the watch hub. Every rule of the
//! CONTRACT in the module doc of `store` lives here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::types::{Applied, EventType, Key, Op, Part, Rv, StoreError, Txn};

/// All objects of the state machine, with an index from owner uid to its dependents
/// (for ownerReference cascading without scanning every object).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Objects {
    by_key: BTreeMap<Key, Arc<Value>>,
    dependents: HashMap<String, BTreeSet<Key>>,
}

/// One object change made by an entry (or a snapshot install), before it becomes an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub key: Key,
    pub kind: EventType,
    /// The object after the change; for `Deleted` its last state, rv set to the deleting index.
    pub object: Arc<Value>,
}

impl Objects {
    /// The stored object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.by_key.get(key)
    }

    /// Objects of `resource` (in `namespace`, or in all when `None`), sorted by key.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let start = Key {
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
            name: String::new(),
        };
        self.by_key
            .range(start..)
            .take_while(|(k, _)| {
                k.resource == resource
                    && namespace.is_none_or(|ns| k.namespace.as_deref() == Some(ns))
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.by_key.iter()
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Stores `object` at `key`, replacing what was there.
    pub fn insert(&mut self, key: Key, object: Arc<Value>) {
        self.unindex(&key);
        for uid in owner_uids(&object) {
            self.dependents
                .entry(uid.to_string())
                .or_default()
                .insert(key.clone());
        }
        self.by_key.insert(key, object);
    }

    /// Removes the object at `key`, if any.
    pub fn remove(&mut self, key: &Key) {
        self.unindex(key);
        self.by_key.remove(key);
    }

    /// Installs the result of [`apply`] (or [`diff`]).
    pub fn apply_changes(&mut self, changes: &[Change]) {
        for change in changes {
            match change.kind {
                EventType::Added | EventType::Modified => {
                    self.insert(change.key.clone(), change.object.clone())
                }
                EventType::Deleted => self.remove(&change.key),
            }
        }
    }

    fn unindex(&mut self, key: &Key) {
        let Some(old) = self.by_key.get(key) else {
            return;
        };
        for uid in owner_uids(old) {
            if let Some(set) = self.dependents.get_mut(uid) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(uid);
                }
            }
        }
    }
}

impl FromIterator<(Key, Arc<Value>)> for Objects {
    fn from_iter<I: IntoIterator<Item = (Key, Arc<Value>)>>(iter: I) -> Self {
        let mut objects = Objects::default();
        for (key, object) in iter {
            objects.insert(key, object);
        }
        objects
    }
}

/// Applies `txn` as the log entry at index `rv` to `objects` (without changing them):
/// returns what the proposer gets back and the changes to install, or the error of the
/// first failing op (then nothing changes).
pub(crate) fn apply(
    objects: &Objects,
    txn: &Txn,
    rv: Rv,
) -> Result<(Applied, Vec<Change>), StoreError> {
    let mut overlay = Overlay {
        base: objects,
        staged: BTreeMap::new(),
        touched: Vec::new(),
        rv,
        now: &txn.now,
    };
    let mut results = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        let stored = match op {
            Op::Create { key, object } => overlay.create(key, object)?,
            Op::Update {
                key,
                object,
                expected_rv,
                part,
            } => overlay.update(key, object, *expected_rv, *part)?,
            Op::Delete {
                key,
                expected_rv,
                expected_uid,
            } => overlay.delete(key, *expected_rv, expected_uid.as_deref())?,
        };
        results.push(stored.map(|v| Value::clone(&v)));
    }
    let changes = overlay.finish();
    Ok((
        Applied {
            rv,
            objects: results,
        },
        changes,
    ))
}

/// The changes that turn `old` into `new`, as events at `rv` (a snapshot install):
/// objects only in `new` are `Added`, differing ones `Modified`, objects only in `old`
/// `Deleted` (with their resourceVersion set to `rv`). Sorted by key.
pub(crate) fn diff(old: &Objects, new: &Objects, rv: Rv) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut old_iter = old.by_key.iter().peekable();
    let mut new_iter = new.by_key.iter().peekable();
    loop {
        let ordering = match (old_iter.peek(), new_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ok, _)), Some((nk, _))) => ok.cmp(nk),
        };
        match ordering {
            std::cmp::Ordering::Less => {
                if let Some((key, object)) = old_iter.next() {
                    changes.push(Change {
                        key: key.clone(),
                        kind: EventType::Deleted,
                        object: Arc::new(with_rv(object, rv)),
                    });
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((key, object)) = new_iter.next() {
                    changes.push(Change {
                        key: key.clone(),
                        kind: EventType::Added,
                        object: object.clone(),
                    });
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((key, before)), Some((_, after))) = (old_iter.next(), new_iter.next())
                {
                    if before != after {
                        changes.push(Change {
                            key: key.clone(),
                            kind: EventType::Modified,
                            object: after.clone(),
                        });
                    }
                }
            }
        }
    }
    changes
}

/// What one entry has done to a key so far.
enum Staged {
    Present(Arc<Value>),
    /// Removed; holds the last state (rv already set to the entry's index).
    Removed(Arc<Value>),
}

/// The objects as the ops of one entry see them: the base plus what earlier ops staged.
struct Overlay<'a> {
    base: &'a Objects,
    staged: BTreeMap<Key, Staged>,
    /// Keys in the order the entry first touched them (the order of its events).
    touched: Vec<Key>,
    rv: Rv,
    now: &'a str,
}

impl Overlay<'_> {
    fn get(&self, key: &Key) -> Option<Arc<Value>> {
        match self.staged.get(key) {
            Some(Staged::Present(v)) => Some(v.clone()),
            Some(Staged::Removed(_)) => None,
            None => self.base.get(key).cloned(),
        }
    }

    fn stage(&mut self, key: &Key, staged: Staged) {
        if self.staged.insert(key.clone(), staged).is_none() {
            self.touched.push(key.clone());
        }
    }

    fn create(&mut self, key: &Key, object: &Value) -> Result<Option<Arc<Value>>, StoreError> {
        if self.get(key).is_some() {
            return Err(StoreError::AlreadyExists(key.clone()));
        }
        let mut object = object.clone();
        let meta = metadata_mut(&mut object, key)?;
        meta.remove("deletionTimestamp");
        meta.insert("generation".into(), Value::from(1u64));
        meta.insert("resourceVersion".into(), Value::from(self.rv.to_string()));
        let object = Arc::new(object);
        self.stage(key, Staged::Present(object.clone()));
        Ok(Some(object))
    }

    fn update(
        &mut self,
        key: &Key,
        object: &Value,
        expected_rv: Option<Rv>,
        part: Part,
    ) -> Result<Option<Arc<Value>>, StoreError> {
        let current = self
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        check_rv(key, &current, expected_rv)?;
        if let Some(uid) = meta_str(object, "uid") {
            check_uid(key, &current, uid)?;
        }
        let mut next = match part {
            Part::Main => {
                let mut next = object.clone();
                let current_meta = current
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let meta = metadata_mut(&mut next, key)?;
                // Identity, lifecycle and versioning belong to the store, not the writer.
                for field in [
                    "uid",
                    "name",
                    "namespace",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "generation",
                    "resourceVersion",
                ] {
                    match current_meta.get(field) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                set_field(&mut next, "status", current.get("status").cloned());
                next
            }
            Part::Status => {
                let mut next = Value::clone(&current);
                set_field(&mut next, "status", object.get("status").cloned());
                next
            }
        };
        if next == *current {
            // Nothing changed: like Kubernetes, no new resourceVersion and no event.
            return Ok(Some(current));
        }
        let bump = part == Part::Main && spec_changed(&current, &next);
        let meta = metadata_mut(&mut next, key)?;
        if bump {
            let generation = meta.get("generation").and_then(Value::as_u64).unwrap_or(0);
            meta.insert("generation".into(), Value::from(generation + 1));
        }
        meta.insert("resourceVersion".into(), Value::from(self.rv.to_string()));
        if is_deleting(&next) && finalizers(&next).is_empty() {
            self.remove(key, &next);
            return Ok(None);
        }
        let next = Arc::new(next);
        self.stage(key, Staged::Present(next.clone()));
        Ok(Some(next))
    }

    fn delete(
        &mut self,
        key: &Key,
        expected_rv: Option<Rv>,
        expected_uid: Option<&str>,
    ) -> Result<Option<Arc<Value>>, StoreError> {
        let current = self
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        check_rv(key, &current, expected_rv)?;
        if let Some(uid) = expected_uid {
            check_uid(key, &current, uid)?;
        }
        Ok(self.delete_object(key, &current))
    }

    /// Deletes an existing object: marks it (finalizers pending) or removes it.
    fn delete_object(&mut self, key: &Key, current: &Arc<Value>) -> Option<Arc<Value>> {
        if finalizers(current).is_empty() {
            self.remove(key, current);
            return None;
        }
        if is_deleting(current) {
            return Some(current.clone());
        }
        let mut next = Value::clone(current);
        set_meta(&mut next, "deletionTimestamp", Value::from(self.now));
        set_meta(
            &mut next,
            "resourceVersion",
            Value::from(self.rv.to_string()),
        );
        let next = Arc::new(next);
        self.stage(key, Staged::Present(next.clone()));
        Some(next)
    }

    /// Removes an object and (background propagation) deletes its dependents.
    fn remove(&mut self, key: &Key, last: &Value) {
        self.stage(key, Staged::Removed(Arc::new(with_rv(last, self.rv))));
        let Some(uid) = meta_str(last, "uid") else {
            return;
        };
        for dependent in self.dependents_of(uid) {
            if let Some(current) = self.get(&dependent) {
                self.delete_object(&dependent, &current);
            }
        }
    }

    /// Present objects whose ownerReferences name `uid`, sorted by key.
    fn dependents_of(&self, uid: &str) -> BTreeSet<Key> {
        let indexed = self.base.dependents.get(uid).into_iter().flatten();
        indexed
            .chain(self.staged.keys())
            .filter(|key| {
                self.get(key)
                    .is_some_and(|v| owner_uids(&v).any(|owner| owner == uid))
            })
            .cloned()
            .collect()
    }

    fn finish(self) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.touched.len());
        for key in self.touched {
            let before = self.base.get(&key);
            let change = match (before, self.staged.get(&key)) {
                (None, Some(Staged::Present(after))) => Some((EventType::Added, after.clone())),
                (Some(before), Some(Staged::Present(after))) => {
                    (before != after).then(|| (EventType::Modified, after.clone()))
                }
                (Some(_), Some(Staged::Removed(last))) => Some((EventType::Deleted, last.clone())),
                (None, Some(Staged::Removed(_))) | (_, None) => None,
            };
            if let Some((kind, object)) = change {
                changes.push(Change { key, kind, object });
            }
        }
        changes
    }
}

/// The stored resourceVersion of an object (0 if it has none).
pub(crate) fn rv_of(object: &Value) -> Rv {
    meta_str(object, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn check_rv(key: &Key, current: &Value, expected: Option<Rv>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != rv_of(current) => Err(StoreError::Conflict {
            key: key.clone(),
            message: format!(
                "the object has been modified (resourceVersion {} is not the expected {expected}); \
                 read it again and retry",
                rv_of(current)
            ),
        }),
        _ => Ok(()),
    }
}

fn check_uid(key: &Key, current: &Value, expected: &str) -> Result<(), StoreError> {
    let stored = meta_str(current, "uid").unwrap_or_default();
    if stored == expected {
        return Ok(());
    }
    Err(StoreError::Conflict {
        key: key.clone(),
        message: format!("uid precondition failed: expected {expected}, stored {stored}"),
    })
}

/// Whether a Main update changed what `generation` counts: `spec`, or for kinds without
/// one (core Secret, ConfigMap) everything outside metadata and status.
fn spec_changed(before: &Value, after: &Value) -> bool {
    if before.get("spec").is_some() || after.get("spec").is_some() {
        return before.get("spec") != after.get("spec");
    }
    let content = |v: &Value| -> Map<String, Value> {
        let mut map = v.as_object().cloned().unwrap_or_default();
        for field in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(field);
        }
        map
    };
    content(before) != content(after)
}

fn metadata_mut<'v>(
    object: &'v mut Value,
    key: &Key,
) -> Result<&'v mut Map<String, Value>, StoreError> {
    object
        .as_object_mut()
        .and_then(|o| o.get_mut("metadata"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Internal(format!("{key:?}: the object has no metadata map")))
}

fn meta_str<'v>(object: &'v Value, field: &str) -> Option<&'v str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn set_field(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(v) => map.insert(field.to_string(), v),
            None => map.remove(field),
        };
    }
}

fn finalizers(object: &Value) -> &[Value] {
    object
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn is_deleting(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|v| !v.is_null())
}

fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    object
        .get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

/// Sets a metadata field; objects in the store always have a metadata map (create and
/// update insist), so a value without one is left alone.
fn set_meta(object: &mut Value, field: &str, value: Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(field.to_string(), value);
    }
}

fn with_rv(object: &Value, rv: Rv) -> Value {
    let mut object = object.clone();
    set_meta(&mut object, "resourceVersion", Value::from(rv.to_string()));
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn key(name: &str) -> Key {
        Key {
            resource: "mill.dev/services".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn secret_key(name: &str) -> Key {
        Key {
            resource: "/secrets".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    /// A service object as the API layer would propose it.
    fn service(name: &str, image: &str) -> Value {
        json!({
            "apiVersion": "mill.dev/v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": format!("uid-{name}"),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": { "image": image },
        })
    }

    fn with_meta(mut object: Value, field: &str, value: Value) -> Value {
        object["metadata"][field] = value;
        object
    }

    fn owned_by(object: Value, owner: &str) -> Value {
        with_meta(
            object,
            "ownerReferences",
            json!([{ "apiVersion": "mill.dev/v1", "kind": "Service", "name": owner, "uid": format!("uid-{owner}") }]),
        )
    }

    fn txn(ops: Vec<Op>) -> Txn {
        Txn {
            ops,
            now: NOW.into(),
        }
    }

    fn create(key: Key, object: Value) -> Op {
        Op::Create { key, object }
    }

    fn update(key: Key, object: Value, expected_rv: Option<Rv>, part: Part) -> Op {
        Op::Update {
            key,
            object,
            expected_rv,
            part,
        }
    }

    fn delete(key: Key) -> Op {
        Op::Delete {
            key,
            expected_rv: None,
            expected_uid: None,
        }
    }

    /// Applies `setup` (one txn per entry, rv 1, 2, ...) and returns the objects.
    fn objects_after(setup: &[Txn]) -> Objects {
        let mut objects = Objects::default();
        for (i, t) in setup.iter().enumerate() {
            let (_, changes) = apply(&objects, t, i as Rv + 1).expect("setup txn applies");
            objects.apply_changes(&changes);
        }
        objects
    }

    fn kinds(changes: &[Change]) -> Vec<(EventType, String)> {
        changes
            .iter()
            .map(|c| (c.kind, c.key.name.clone()))
            .collect()
    }

    struct Case {
        name: &'static str,
        setup: Vec<Txn>,
        txn: Txn,
        /// The events the entry (at rv 10) makes, or the error it fails with.
        expect: Result<Vec<(EventType, &'static str)>, &'static str>,
        /// Checks on the objects after applying.
        check: fn(&Objects),
    }

    fn no_check(_: &Objects) {}

    fn meta<'a>(objects: &'a Objects, k: &Key, field: &str) -> &'a Value {
        &objects.get(k).expect("object exists")["metadata"][field]
    }

    #[test]
    fn apply_follows_the_contract() {
        use EventType::*;
        let cases = vec![
            Case {
                name: "create sets resourceVersion to the index and generation 1",
                setup: vec![],
                txn: txn(vec![create(
                    key("a"),
                    with_meta(service("a", "v1"), "generation", json!(7)),
                )]),
                expect: Ok(vec![(Added, "a")]),
                check: |o| {
                    assert_eq!(meta(o, &key("a"), "resourceVersion"), "10");
                    assert_eq!(meta(o, &key("a"), "generation"), 1);
                },
            },
            Case {
                name: "create of an existing key is AlreadyExists",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![create(key("a"), service("a", "v2"))]),
                expect: Err("AlreadyExists"),
                check: |o| assert_eq!(o.get(&key("a")).unwrap()["spec"]["image"], "v1"),
            },
            Case {
                name: "update with a stale resourceVersion is a Conflict",
                setup: vec![
                    txn(vec![create(key("a"), service("a", "v1"))]),
                    txn(vec![update(key("a"), service("a", "v2"), None, Part::Main)]),
                ],
                txn: txn(vec![update(
                    key("a"),
                    service("a", "v3"),
                    Some(1),
                    Part::Main,
                )]),
                expect: Err("Conflict"),
                check: |o| assert_eq!(o.get(&key("a")).unwrap()["spec"]["image"], "v2"),
            },
            Case {
                name: "spec change with the current resourceVersion bumps generation",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![update(
                    key("a"),
                    service("a", "v2"),
                    Some(1),
                    Part::Main,
                )]),
                expect: Ok(vec![(Modified, "a")]),
                check: |o| {
                    assert_eq!(meta(o, &key("a"), "generation"), 2);
                    assert_eq!(meta(o, &key("a"), "resourceVersion"), "10");
                },
            },
            Case {
                name: "label change keeps generation but takes a new resourceVersion",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![update(
                    key("a"),
                    with_meta(service("a", "v1"), "labels", json!({"tier": "web"})),
                    None,
                    Part::Main,
                )]),
                expect: Ok(vec![(Modified, "a")]),
                check: |o| {
                    assert_eq!(meta(o, &key("a"), "generation"), 1);
                    assert_eq!(meta(o, &key("a"), "labels")["tier"], "web");
                    assert_eq!(meta(o, &key("a"), "resourceVersion"), "10");
                },
            },
            Case {
                name: "main update keeps the stored status and the store-owned metadata",
                setup: vec![
                    txn(vec![create(key("a"), service("a", "v1"))]),
                    txn(vec![update(
                        key("a"),
                        json!({"status": {"ready": 1}}),
                        None,
                        Part::Status,
                    )]),
                ],
                txn: txn(vec![update(
                    key("a"),
                    with_meta(
                        with_meta(
                            json!({"metadata": {"name": "a"}, "spec": {"image": "v2"}, "status": {"ready": 99}}),
                            "uid",
                            json!("uid-a"),
                        ),
                        "creationTimestamp",
                        json!("1999-01-01T00:00:00Z"),
                    ),
                    None,
                    Part::Main,
                )]),
                expect: Ok(vec![(Modified, "a")]),
                check: |o| {
                    let a = o.get(&key("a")).unwrap();
                    assert_eq!(a["status"]["ready"], 1);
                    assert_eq!(a["metadata"]["creationTimestamp"], "2026-01-01T00:00:00Z");
                    assert_eq!(a["metadata"]["namespace"], "default");
                },
            },
            Case {
                name: "an update naming another uid is a Conflict",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![update(
                    key("a"),
                    with_meta(service("a", "v2"), "uid", json!("uid-other")),
                    None,
                    Part::Main,
                )]),
                expect: Err("Conflict"),
                check: no_check,
            },
            Case {
                name: "status update changes only status and keeps generation",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![update(
                    key("a"),
                    with_meta(
                        json!({"metadata": {}, "spec": {"image": "v9"}, "status": {"phase": "ok"}}),
                        "labels",
                        json!({"x": "y"}),
                    ),
                    None,
                    Part::Status,
                )]),
                expect: Ok(vec![(Modified, "a")]),
                check: |o| {
                    let a = o.get(&key("a")).unwrap();
                    assert_eq!(a["status"]["phase"], "ok");
                    assert_eq!(a["spec"]["image"], "v1");
                    assert!(a["metadata"].get("labels").is_none());
                    assert_eq!(a["metadata"]["generation"], 1);
                },
            },
            Case {
                name: "an update that changes nothing makes no event and keeps the resourceVersion",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![update(
                    key("a"),
                    service("a", "v1"),
                    Some(1),
                    Part::Main,
                )]),
                expect: Ok(vec![]),
                check: |o| assert_eq!(meta(o, &key("a"), "resourceVersion"), "1"),
            },
            Case {
                name: "for kinds without spec, data changes bump generation",
                setup: vec![txn(vec![create(
                    secret_key("s"),
                    json!({"kind": "Secret", "metadata": {"name": "s", "uid": "u"}, "data": {"k": "MQ=="}}),
                )])],
                txn: txn(vec![update(
                    secret_key("s"),
                    json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "Mg=="}}),
                    None,
                    Part::Main,
                )]),
                expect: Ok(vec![(Modified, "s")]),
                check: |o| assert_eq!(meta(o, &secret_key("s"), "generation"), 2),
            },
            Case {
                name: "for kinds without spec, annotation changes keep generation",
                setup: vec![txn(vec![create(
                    secret_key("s"),
                    json!({"kind": "Secret", "metadata": {"name": "s", "uid": "u"}, "data": {"k": "MQ=="}}),
                )])],
                txn: txn(vec![update(
                    secret_key("s"),
                    json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {"a": "b"}}, "data": {"k": "MQ=="}}),
                    None,
                    Part::Main,
                )]),
                expect: Ok(vec![(Modified, "s")]),
                check: |o| assert_eq!(meta(o, &secret_key("s"), "generation"), 1),
            },
            Case {
                name: "update of a missing object is NotFound",
                setup: vec![],
                txn: txn(vec![update(key("a"), service("a", "v1"), None, Part::Main)]),
                expect: Err("NotFound"),
                check: no_check,
            },
            Case {
                name: "delete without finalizers removes the object",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![delete(key("a"))]),
                expect: Ok(vec![(Deleted, "a")]),
                check: |o| assert!(o.get(&key("a")).is_none()),
            },
            Case {
                name: "delete with a wrong uid precondition is a Conflict",
                setup: vec![txn(vec![create(key("a"), service("a", "v1"))])],
                txn: txn(vec![Op::Delete {
                    key: key("a"),
                    expected_rv: None,
                    expected_uid: Some("uid-other".into()),
                }]),
                expect: Err("Conflict"),
                check: |o| assert!(o.get(&key("a")).is_some()),
            },
            Case {
                name: "delete with a stale rv precondition is a Conflict",
                setup: vec![
                    txn(vec![create(key("a"), service("a", "v1"))]),
                    txn(vec![update(key("a"), service("a", "v2"), None, Part::Main)]),
                ],
                txn: txn(vec![Op::Delete {
                    key: key("a"),
                    expected_rv: Some(1),
                    expected_uid: Some("uid-a".into()),
                }]),
                expect: Err("Conflict"),
                check: no_check,
            },
            Case {
                name: "delete with finalizers sets deletionTimestamp from the txn",
                setup: vec![txn(vec![create(
                    key("a"),
                    with_meta(
                        service("a", "v1"),
                        "finalizers",
                        json!(["mill.dev/volumes"]),
                    ),
                )])],
                txn: txn(vec![delete(key("a"))]),
                expect: Ok(vec![(Modified, "a")]),
                check: |o| {
                    assert_eq!(meta(o, &key("a"), "deletionTimestamp"), NOW);
                    assert_eq!(meta(o, &key("a"), "resourceVersion"), "10");
                },
            },
            Case {
                name: "deleting an object already being deleted changes nothing",
                setup: vec![
                    txn(vec![create(
                        key("a"),
                        with_meta(service("a", "v1"), "finalizers", json!(["f"])),
                    )]),
                    txn(vec![delete(key("a"))]),
                ],
                txn: txn(vec![delete(key("a"))]),
                expect: Ok(vec![]),
                check: |o| assert_eq!(meta(o, &key("a"), "resourceVersion"), "2"),
            },
            Case {
                name: "emptying the finalizers of an object being deleted removes it",
                setup: vec![
                    txn(vec![create(
                        key("a"),
                        with_meta(service("a", "v1"), "finalizers", json!(["f"])),
                    )]),
                    txn(vec![delete(key("a"))]),
                ],
                txn: txn(vec![update(
                    key("a"),
                    with_meta(service("a", "v1"), "finalizers", json!([])),
                    None,
                    Part::Main,
                )]),
                expect: Ok(vec![(Deleted, "a")]),
                check: |o| assert!(o.get(&key("a")).is_none()),
            },
            Case {
                name: "removing an owner removes its dependents, recursively",
                setup: vec![txn(vec![
                    create(key("owner"), service("owner", "v1")),
                    create(key("child"), owned_by(service("child", "v1"), "owner")),
                    create(
                        key("grandchild"),
                        owned_by(service("grandchild", "v1"), "child"),
                    ),
                    create(key("stranger"), service("stranger", "v1")),
                ])],
                txn: txn(vec![delete(key("owner"))]),
                expect: Ok(vec![
                    (Deleted, "owner"),
                    (Deleted, "child"),
                    (Deleted, "grandchild"),
                ]),
                check: |o| {
                    assert_eq!(o.len(), 1);
                    assert!(o.get(&key("stranger")).is_some());
                },
            },
            Case {
                name: "dependents with finalizers are marked deleting, not removed",
                setup: vec![txn(vec![
                    create(key("owner"), service("owner", "v1")),
                    create(
                        key("child"),
                        with_meta(
                            owned_by(service("child", "v1"), "owner"),
                            "finalizers",
                            json!(["f"]),
                        ),
                    ),
                    create(
                        key("grandchild"),
                        owned_by(service("grandchild", "v1"), "child"),
                    ),
                ])],
                txn: txn(vec![delete(key("owner"))]),
                expect: Ok(vec![(Deleted, "owner"), (Modified, "child")]),
                check: |o| {
                    assert_eq!(meta(o, &key("child"), "deletionTimestamp"), NOW);
                    assert!(o.get(&key("grandchild")).is_some());
                },
            },
            Case {
                name: "an owner marked deleting does not cascade until it is removed",
                setup: vec![txn(vec![
                    create(
                        key("owner"),
                        with_meta(service("owner", "v1"), "finalizers", json!(["f"])),
                    ),
                    create(key("child"), owned_by(service("child", "v1"), "owner")),
                ])],
                txn: txn(vec![delete(key("owner"))]),
                expect: Ok(vec![(Modified, "owner")]),
                check: |o| assert!(o.get(&key("child")).is_some()),
            },
            Case {
                name: "dependents created in the same txn are cascaded too",
                setup: vec![txn(vec![create(key("owner"), service("owner", "v1"))])],
                txn: txn(vec![
                    create(key("child"), owned_by(service("child", "v1"), "owner")),
                    delete(key("owner")),
                ]),
                expect: Ok(vec![(Deleted, "owner")]),
                check: |o| assert_eq!(o.len(), 0),
            },
            Case {
                name: "a txn is all-or-nothing",
                setup: vec![],
                txn: txn(vec![
                    create(key("a"), service("a", "v1")),
                    update(key("missing"), service("missing", "v1"), None, Part::Main),
                ]),
                expect: Err("NotFound"),
                check: |o| assert_eq!(o.len(), 0),
            },
            Case {
                name: "later ops of a txn see earlier ones; events coalesce per object",
                setup: vec![],
                txn: txn(vec![
                    create(key("a"), service("a", "v1")),
                    update(key("a"), service("a", "v2"), Some(10), Part::Main),
                ]),
                expect: Ok(vec![(Added, "a")]),
                check: |o| {
                    assert_eq!(o.get(&key("a")).unwrap()["spec"]["image"], "v2");
                    assert_eq!(meta(o, &key("a"), "generation"), 2);
                },
            },
        ];
        for case in cases {
            let mut objects = objects_after(&case.setup);
            let before = objects.clone();
            let outcome = apply(&objects, &case.txn, 10);
            match (&outcome, &case.expect) {
                (Ok((applied, changes)), Ok(expected)) => {
                    let expected: Vec<_> =
                        expected.iter().map(|(k, n)| (*k, n.to_string())).collect();
                    assert_eq!(kinds(changes), expected, "{}", case.name);
                    assert_eq!(applied.rv, 10, "{}", case.name);
                    assert_eq!(applied.objects.len(), case.txn.ops.len(), "{}", case.name);
                    objects.apply_changes(changes);
                }
                (Err(e), Err(expected)) => {
                    assert!(
                        format!("{e:?}").starts_with(expected),
                        "{}: {e:?}",
                        case.name
                    );
                    assert_eq!(objects, before, "{}", case.name);
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
            }
            (case.check)(&objects);
        }
    }

    #[test]
    fn deleted_events_carry_the_last_state_at_the_deleting_index() {
        let objects = objects_after(&[txn(vec![create(key("a"), service("a", "v1"))])]);
        let (applied, changes) = apply(&objects, &txn(vec![delete(key("a"))]), 7).unwrap();
        assert_eq!(applied.objects, vec![None]);
        assert_eq!(changes[0].object["metadata"]["resourceVersion"], "7");
        assert_eq!(changes[0].object["spec"]["image"], "v1");
    }

    #[test]
    fn list_is_scoped_by_resource_and_namespace_and_sorted() {
        let other_ns = Key {
            namespace: Some("prod".into()),
            ..key("b")
        };
        let objects = objects_after(&[txn(vec![
            create(key("b"), service("b", "v1")),
            create(key("a"), service("a", "v1")),
            create(other_ns, service("b", "v1")),
            create(secret_key("s"), json!({"metadata": {"name": "s"}})),
        ])]);
        let names = |list: Vec<Arc<Value>>| -> Vec<String> {
            list.iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            names(objects.list("mill.dev/services", Some("default"))),
            ["a", "b"]
        );
        assert_eq!(names(objects.list("mill.dev/services", None)).len(), 3);
        assert_eq!(names(objects.list("/secrets", None)), ["s"]);
        assert!(objects.list("mill.dev/allocs", None).is_empty());
    }

    #[test]
    fn diff_turns_old_contents_into_new_ones() {
        let old = objects_after(&[txn(vec![
            create(key("gone"), service("gone", "v1")),
            create(key("same"), service("same", "v1")),
            create(key("changed"), service("changed", "v1")),
        ])]);
        let new = objects_after(&[txn(vec![
            create(key("same"), service("same", "v1")),
            create(key("changed"), service("changed", "v2")),
            create(key("new"), service("new", "v1")),
        ])]);
        let changes = diff(&old, &new, 50);
        use EventType::*;
        assert_eq!(
            kinds(&changes),
            vec![
                (Modified, "changed".to_string()),
                (Deleted, "gone".to_string()),
                (Added, "new".to_string())
            ]
        );
        assert_eq!(changes[1].object["metadata"]["resourceVersion"], "50");
        let mut replayed = old.clone();
        replayed.apply_changes(&changes);
        assert_eq!(replayed, new);
    }
}
