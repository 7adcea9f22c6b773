//! HCL syntax: the `.mill` text as an hcl-edit tree, which keeps the byte spans that
//! diagnostics need.

use hcl_edit::structure::Body;
use std::collections::HashMap;

/// A parsed HCL body and the attributes hcl-edit would have rejected as redefined.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The body of the file. Redefined attribute keys in it carry placeholder names.
    pub body: Body,
    /// The text the body was parsed from: the source with redefined keys renamed, byte for
    /// byte as long, so every span also holds in the original source.
    pub text: String,
    /// Byte offset of each redefined attribute key → its real name.
    pub redefined: HashMap<usize, String>,
}

/// A syntax error as hcl-edit reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Byte offset; hcl-edit clamps it to the last byte for errors at the end of input.
    pub offset: usize,
    /// hcl-edit's description.
    pub message: String,
}

/// How many redefined attributes are renamed before giving up and reporting the parser's
/// error; bounds the re-parsing of pathological input.
const MAX_REDEFINED: usize = 64;

/// Parses `source` as an HCL body.
///
/// hcl-edit stops at the first redefined attribute (`image` set twice), which would hide
/// every other error of the file. So each redefined key is renamed to a placeholder of the
/// same byte length and the text parsed again; the caller reports the duplicates from
/// [`Tree::redefined`] along with everything else.
pub(crate) fn parse(source: &str) -> Result<Tree, SyntaxError> {
    let mut text = source.to_string();
    let mut redefined: HashMap<usize, String> = HashMap::new();
    let mut placeholders_used: usize = 0;
    loop {
        let err = match hcl_edit::parser::parse_body(&text) {
            Ok(body) => {
                return Ok(Tree {
                    body,
                    text,
                    redefined,
                })
            }
            Err(err) => err,
        };
        let syntax_error = SyntaxError {
            line: err.location().line(),
            col: err.location().column(),
            offset: err.location().offset(),
            message: err.message().to_string(),
        };
        if !err.message().contains("redefined attribute") || redefined.len() >= MAX_REDEFINED {
            return Err(syntax_error);
        }
        let offset = err.location().offset();
        let key_len = text.get(offset..).map_or(0, |rest| {
            rest.find(|c: char| !is_ident_char(c)).unwrap_or(rest.len())
        });
        if key_len == 0 {
            return Err(syntax_error);
        }
        // A placeholder may collide with a real key of the same body. The parser then
        // flags the later of the two; if that is the real key, the placeholder before it
        // is what must move.
        let flagged = text.get(offset..offset + key_len).unwrap_or_default();
        let target = redefined
            .keys()
            .copied()
            .find(|&o| o < offset && text.get(o..o + key_len) == Some(flagged))
            .unwrap_or(offset);
        let Some(placeholder) = placeholder(key_len, placeholders_used) else {
            return Err(syntax_error);
        };
        placeholders_used += 1;
        let original = source.get(target..target + key_len).unwrap_or_default();
        redefined
            .entry(target)
            .or_insert_with(|| original.to_string());
        text.replace_range(target..target + key_len, &placeholder);
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// The `n`th placeholder identifier of exactly `len` bytes (ASCII), if there is one.
fn placeholder(len: usize, n: usize) -> Option<String> {
    const ALPHABET: &[u8] = b"_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    if len == 1 {
        return ALPHABET.get(n).map(|&c| char::from(c).to_string());
    }
    // `_` then `n` in base 36, padded with `_`: no real key of a config looks like that.
    let digits = radix36(n);
    (digits.len() < len).then(|| format!("_{digits:_>width$}", width = len - 1))
}

fn radix36(mut n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redefined_attributes_are_renamed_and_remembered() {
        let source = "a {\n  image = \"x\"\n  image = \"y\"\n  image = \"z\"\n}\n";
        let tree = parse(source).unwrap();
        assert_eq!(tree.text.len(), source.len());
        let mut offsets: Vec<_> = tree.redefined.into_iter().collect();
        offsets.sort();
        let later: Vec<_> = source
            .match_indices("image")
            .skip(1)
            .map(|(i, k)| (i, k.to_string()))
            .collect();
        assert_eq!(offsets, later);
    }

    #[test]
    fn single_character_keys_get_distinct_placeholders() {
        let source = "env {\n  a = \"1\"\n  a = \"2\"\n  a = \"3\"\n  _ = \"4\"\n}\n";
        let tree = parse(source).unwrap();
        let mut names: Vec<_> = tree.redefined.into_values().collect();
        names.sort();
        assert_eq!(names, ["a", "a"]);
    }

    #[test]
    fn other_syntax_errors_are_reported_with_their_position() {
        let err = parse("service \"web\" {\n  image = \n}\n").unwrap_err();
        assert_eq!((err.line, err.col), (2, 11));
    }

    #[test]
    fn placeholders_have_the_requested_length() {
        assert_eq!(placeholder(5, 0).as_deref(), Some("____0"));
        assert_eq!(placeholder(3, 37).as_deref(), Some("_11"));
        assert_eq!(placeholder(2, 36), None);
        assert_eq!(placeholder(1, 1).as_deref(), Some("a"));
    }
}
