//! Sizes as Kubernetes quantities (`512M`, `5Gi`) and durations (`500ms`, `1h30m`).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Suffixes of a byte quantity and their multipliers, largest first.
const UNITS: [(&str, u64); 8] = [
    ("Ti", 1 << 40),
    ("T", 1_000_000_000_000),
    ("Gi", 1 << 30),
    ("G", 1_000_000_000),
    ("Mi", 1 << 20),
    ("M", 1_000_000),
    ("Ki", 1 << 10),
    ("K", 1_000),
];

/// Why a size or duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// A number of bytes, written as a Kubernetes quantity: `K M G T` are powers of 1000,
/// `Ki Mi Gi Ti` powers of 1024, no suffix means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "invalid size {s:?}: expected a number with an optional unit K, M, G, T, Ki, Mi, Gi or Ti (e.g. \"512M\", \"5Gi\")"
            ))
        };
        let s_trim = s.trim();
        let (number, multiplier) = UNITS
            .iter()
            .find_map(|(suffix, m)| s_trim.strip_suffix(suffix).map(|n| (n, *m)))
            .unwrap_or((s_trim, 1));
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(ParseError(format!("size {s:?} is too large")));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact form: the largest unit that divides the size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut best: Option<(&str, u64)> = None;
        for (suffix, m) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(m) && best.is_none_or(|(_, b)| m > b) {
                best = Some((suffix, m));
            }
        }
        match best {
            Some((suffix, m)) => write!(f, "{}{}", self.0 / m, suffix),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A size as a Kubernetes quantity: K, M, G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024.",
            "pattern": "^[0-9]+(\\.[0-9]+)?(K|M|G|T|Ki|Mi|Gi|Ti)?$"
        })
    }
}

/// A span of time, written `500ms`, `10s`, `2m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// The standard library duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "invalid duration {s:?}: expected a number with a unit ms, s, m or h (e.g. \"500ms\", \"10s\", \"1h30m\")"
            ))
        };
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = std::time::Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => std::time::Duration::from_millis(value),
                "s" => std::time::Duration::from_secs(value),
                "m" => std::time::Duration::from_secs(value.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(value.saturating_mul(3600)),
                _ => return Err(bad()),
            };
            total = total.checked_add(part).ok_or_else(bad)?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    /// The canonical form: `1h30m`, `10s`, `1s500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as 500ms, 10s, 2m or 1h30m.",
            "pattern": "^([0-9]+(ms|s|m|h))+$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_kubernetes_quantities() {
        for (text, bytes) in [
            ("128M", 128_000_000),
            ("1G", 1_000_000_000),
            ("5Gi", 5 << 30),
            ("512Mi", 512 << 20),
            ("1024", 1024),
            ("1.5Gi", 3 << 29),
            ("2T", 2_000_000_000_000),
            ("4Ki", 4096),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "M", "12X", "-1G", "1 G", "1e3", "Gi5"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_print_in_their_shortest_exact_form() {
        for (bytes, text) in [
            (512_000_000, "512M"),
            (5 << 30, "5Gi"),
            (1000, "1K"),
            (1500, "1500"),
            (0, "0"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)));
        }
    }

    #[test]
    fn durations_parse_and_print_round_trip() {
        for (text, ms) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h30m", 5_400_000),
            ("1s500ms", 1500),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), text);
        }
        for bad in ["", "10", "s", "10x", "1.5s", "-1s", "10 s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
        }
    }
}
