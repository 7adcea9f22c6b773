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
