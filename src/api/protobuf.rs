//! Request bodies in Kubernetes' protobuf encoding, for the core kinds.
//!
//! kubectl's typed clients (`kubectl create secret`, `kubectl create namespace`) send
//! `application/vnd.kubernetes.protobuf` bodies; they accept JSON answers. This decodes
//! the `k8s\0` envelope (`runtime.Unknown`) and the fields of `Secret` and `Namespace`
//! that a client may set into the JSON object the rest of the API works with.

use super::status::ApiError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

/// The content type of protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: [u8; 4] = [0x6b, 0x38, 0x73, 0x00];

/// One protobuf field value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf request body is malformed")
}

fn varint(buf: &mut &[u8]) -> Result<u64, ApiError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or_else(malformed)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed())
}

/// The fields of one message, in order.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ApiError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let wire = match tag & 7 {
            0 => Wire::Varint(varint(&mut buf)?),
            1 | 5 => {
                let width = if tag & 7 == 1 { 8 } else { 4 };
                buf = buf.get(width..).ok_or_else(malformed)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| malformed())?;
                let (bytes, rest) = (buf.get(..len).ok_or_else(malformed)?, &buf[len..]);
                buf = rest;
                Wire::Bytes(bytes)
            }
            _ => return Err(malformed()),
        };
        out.push((tag >> 3, wire));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

/// A `map<string, V>` entry: key (1) and value (2).
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(
    map: &mut Map<String, Value>,
    field: &str,
    bytes: &[u8],
    base64: bool,
) -> Result<(), ApiError> {
    let (key, value) = entry(bytes)?;
    let value = if base64 {
        STANDARD.encode(value)
    } else {
        text(value)?
    };
    let target = map.entry(field).or_insert_with(|| json!({}));
    if let Some(obj) = target.as_object_mut() {
        obj.insert(key, Value::String(value));
    }
    Ok(())
}

fn push_string(map: &mut Map<String, Value>, field: &str, bytes: &[u8]) -> Result<(), ApiError> {
    let target = map.entry(field).or_insert_with(|| json!([]));
    if let Some(list) = target.as_array_mut() {
        list.push(Value::String(text(bytes)?));
    }
    Ok(())
}

fn owner_reference(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut owner = Map::new();
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => drop(owner.insert("kind".into(), json!(text(b)?))),
            (3, Wire::Bytes(b)) => drop(owner.insert("name".into(), json!(text(b)?))),
            (4, Wire::Bytes(b)) => drop(owner.insert("uid".into(), json!(text(b)?))),
            (5, Wire::Bytes(b)) => drop(owner.insert("apiVersion".into(), json!(text(b)?))),
            (6, Wire::Varint(v)) => drop(owner.insert("controller".into(), json!(v != 0))),
            (7, Wire::Varint(v)) => drop(owner.insert("blockOwnerDeletion".into(), json!(v != 0))),
            _ => {}
        }
    }
    Ok(Value::Object(owner))
}

fn object_meta(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut meta = Map::new();
    for (n, w) in fields(bytes)? {
        let name = match n {
            1 => "name",
            2 => "generateName",
            3 => "namespace",
            5 => "uid",
            6 => "resourceVersion",
            _ => "",
        };
        match (n, w) {
            (1 | 2 | 3 | 5 | 6, Wire::Bytes(b)) => drop(meta.insert(name.into(), json!(text(b)?))),
            (11, Wire::Bytes(b)) => insert_entry(&mut meta, "labels", b, false)?,
            (12, Wire::Bytes(b)) => insert_entry(&mut meta, "annotations", b, false)?,
            (13, Wire::Bytes(b)) => {
                let owner = owner_reference(b)?;
                let list = meta.entry("ownerReferences").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(owner);
                }
            }
            (14, Wire::Bytes(b)) => push_string(&mut meta, "finalizers", b)?,
            _ => {}
        }
    }
    Ok(Value::Object(meta))
}

fn secret(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut obj = Map::new();
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => drop(obj.insert("metadata".into(), object_meta(b)?)),
            (2, Wire::Bytes(b)) => insert_entry(&mut obj, "data", b, true)?,
            (3, Wire::Bytes(b)) => drop(obj.insert("type".into(), json!(text(b)?))),
            (4, Wire::Bytes(b)) => insert_entry(&mut obj, "stringData", b, false)?,
            (5, Wire::Varint(v)) => drop(obj.insert("immutable".into(), json!(v != 0))),
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

fn namespace(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut obj = Map::new();
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => drop(obj.insert("metadata".into(), object_meta(b)?)),
            (2, Wire::Bytes(b)) => {
                let mut spec = Map::new();
                for (n, w) in fields(b)? {
                    if let (1, Wire::Bytes(f)) = (n, w) {
                        push_string(&mut spec, "finalizers", f)?;
                    }
                }
                obj.insert("spec".into(), Value::Object(spec));
            }
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

/// Decodes a protobuf request body of a core kind into its JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let raw = body.strip_prefix(&MAGIC).ok_or_else(malformed)?;
    let (mut api_version, mut kind, mut payload) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(raw)? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                for (n, w) in fields(type_meta)? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = text(b)?,
                        (2, Wire::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => payload = b,
            _ => {}
        }
    }
    let mut obj = match kind.as_str() {
        "Secret" => secret(payload)?,
        "Namespace" => namespace(payload)?,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "protobuf bodies of kind {other:?} are not supported; send application/json"
            )))
        }
    };
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_protobuf_secret_decodes_into_json_with_base64_data() {
        let meta = [
            field(1, b"s"),
            field(3, b"default"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
            field(3, b"Opaque"),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "s", "namespace": "default", "labels": {"app": "web"}},
                "data": {"k": "dg=="},
            })
        );
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
    }
}
