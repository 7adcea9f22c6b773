//! Interpolation inside `env` values and `command` arguments.
//!
//! `${secret(NAME)}` and `${service.NAME.address}` are mill's; everything else — `$PORT`,
//! `${HOME}` — is plain text handed to the container untouched. Parsing happens at
//! validation (to check references) and on the node at container start (to resolve them).

use std::fmt;

/// One piece of an interpolated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text, including any `$VAR` the container's shell will expand.
    Text(String),
    /// `${secret(NAME)}`: the secret's value.
    Secret(String),
    /// `${service.NAME.address}`: the service's stable in-cluster address.
    ServiceAddress(String),
}

/// A malformed `${secret(..)}` or `${service..}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset of the `$` that starts the bad reference.
    pub offset: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TemplateError {}

/// Whether `name` is a valid secret name (`[A-Za-z0-9._-]+`).
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `name` is a DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters),
/// the rule for names of services, tasks and volumes.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Splits `s` into text and references.
pub fn parse(s: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    let mut offset = 0;
    while let Some(i) = rest.find("${") {
        let inner = &rest[i + 2..];
        let reference = if inner.starts_with("secret(") {
            Some(parse_secret(inner, offset + i)?)
        } else if inner.starts_with("service.") {
            Some(parse_service(inner, offset + i)?)
        } else {
            None
        };
        match reference {
            Some((part, len)) => {
                text.push_str(&rest[..i]);
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(part);
                let consumed = i + 2 + len;
                rest = &rest[consumed..];
                offset += consumed;
            }
            None => {
                text.push_str(&rest[..i + 2]);
                rest = &rest[i + 2..];
                offset += i + 2;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// Parses `secret(NAME)}` at the start of `inner`; returns the part and bytes consumed.
fn parse_secret(inner: &str, offset: usize) -> Result<(Part, usize), TemplateError> {
    let err = |message: String| TemplateError { offset, message };
    let body = &inner["secret(".len()..];
    let close = body.find(")}").ok_or_else(|| {
        err("unterminated secret reference: expected ${secret(NAME)}".to_string())
    })?;
    let name = body[..close].trim();
    if !is_secret_name(name) {
        return Err(err(format!(
            "invalid secret name {name:?} in ${{secret(..)}}: secret names use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok((Part::Secret(name.to_string()), "secret(".len() + close + 2))
}

/// Parses `service.NAME.address}` at the start of `inner`.
fn parse_service(inner: &str, offset: usize) -> Result<(Part, usize), TemplateError> {
    let err = |message: String| TemplateError { offset, message };
    let close = inner.find('}').ok_or_else(|| {
        err("unterminated service reference: expected ${service.NAME.address}".to_string())
    })?;
    let reference = &inner[..close];
    let name = reference
        .strip_prefix("service.")
        .and_then(|r| r.strip_suffix(".address"))
        .ok_or_else(|| {
            err(format!(
                "invalid service reference ${{{reference}}}: expected ${{service.NAME.address}}"
            ))
        })?;
    if !is_dns_label(name) {
        return Err(err(format!(
            "invalid service name {name:?} in ${{service.{name}.address}}: service names are DNS labels (lowercase letters, digits and '-')"
        )));
    }
    Ok((Part::ServiceAddress(name.to_string()), close + 1))
}

/// Joins parts back into a string, resolving each reference with the given functions.
pub fn render<E>(
    parts: &[Part],
    mut secret: impl FnMut(&str) -> Result<String, E>,
    mut service_address: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Secret(name) => out.push_str(&secret(name)?),
            Part::ServiceAddress(name) => out.push_str(&service_address(name)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Part::*;

    fn text(s: &str) -> Part {
        Text(s.to_string())
    }

    #[test]
    fn references_are_parsed_and_shell_variables_left_alone() {
        let cases: Vec<(&str, Vec<Part>)> = vec![
            ("plain", vec![text("plain")]),
            ("", vec![]),
            ("$PORT", vec![text("$PORT")]),
            ("${HOME}/x", vec![text("${HOME}/x")]),
            ("${secret(DB_URL)}", vec![Secret("DB_URL".into())]),
            (
                "tcp://${service.ojd.address}",
                vec![text("tcp://"), ServiceAddress("ojd".into())],
            ),
            (
                "a${secret(office.database-url)}b${service.x-1.address}$PORT",
                vec![
                    text("a"),
                    Secret("office.database-url".into()),
                    text("b"),
                    ServiceAddress("x-1".into()),
                    text("$PORT"),
                ],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn malformed_references_are_errors_with_their_offset() {
        for (input, offset, needle) in [
            ("x${secret(DB_URL}", 1, "unterminated secret"),
            ("${secret(bad name)}", 0, "invalid secret name"),
            ("${secret()}", 0, "invalid secret name"),
            ("ab${service.web}", 2, "expected ${service.NAME.address}"),
            ("${service.Web.address}", 0, "DNS labels"),
            ("${service.web.address", 0, "unterminated service"),
        ] {
            let err = parse(input).unwrap_err();
            assert_eq!(err.offset, offset, "{input:?}");
            assert!(err.message.contains(needle), "{input:?}: {}", err.message);
        }
    }

    #[test]
    fn render_resolves_references() {
        let parts = parse("u=${secret(a)}@${service.db.address}/$X").unwrap();
        let out: Result<String, ()> = render(
            &parts,
            |n| Ok(format!("<{n}>")),
            |n| Ok(format!("{n}.mill:5432")),
        );
        assert_eq!(out.unwrap(), "u=<a>@db.mill:5432/$X");
    }

    #[test]
    fn dns_labels_and_secret_names() {
        for ok in ["a", "web", "x-1", "a0"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", long.as_str()] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_secret_name("office.database-url"));
        assert!(is_secret_name("DB_URL"));
        assert!(!is_secret_name("a b"));
    }
}
