//! Errors found in a `.mill` file, with their position and the offending source line.

use serde::Serialize;
use std::fmt;

/// One problem in a `.mill` file, at a 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The 1-based line.
    pub line: usize,
    /// The 1-based column, in characters.
    pub col: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
    /// The text of the line, for rendering; not part of the wire format.
    #[serde(skip)]
    pub source_line: String,
}

impl Diagnostic {
    /// The diagnostic as `FILE:LINE:COL: message`, then the source line with a caret under
    /// the column.
    pub fn render(&self, file: &str) -> String {
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        // Tabs keep their width on the caret line so the caret lands under the column.
        let pad: String = self
            .source_line
            .chars()
            .take(self.col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!(
            "{file}:{line}:{col}: {message}\n {number} | {source}\n {gutter} | {pad}^",
            line = self.line,
            col = self.col,
            message = self.message,
            source = self.source_line,
        )
    }
}

/// A `.mill` file that failed to parse or validate: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// The file's name as the user gave it.
    pub file: String,
    /// Every problem, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Invalid {
    /// Every diagnostic rendered, separated by blank lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            f.write_str(&diagnostic.render(&self.file))?;
        }
        Ok(())
    }
}

/// Maps byte offsets of a source text to lines and columns.
#[derive(Debug)]
pub(crate) struct SourceMap<'a> {
    source: &'a str,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(source: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceMap {
            source,
            line_starts,
        }
    }

    /// The text of 1-based line `line`, without its line ending; empty past the end.
    pub(crate) fn line_text(&self, line: usize) -> &'a str {
        let Some(&start) = self.line_starts.get(line.wrapping_sub(1)) else {
            return "";
        };
        let end = self
            .line_starts
            .get(line)
            .map_or(self.source.len(), |next| next - 1);
        self.source
            .get(start..end.max(start))
            .unwrap_or("")
            .trim_end_matches('\r')
    }

    /// The 1-based line and column (in characters) of byte `offset`, clamped to the text.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(0);
        let col = self
            .source
            .get(start..offset)
            .map_or(offset - start, |text| text.chars().count());
        (line.max(1), col + 1)
    }

    /// A diagnostic at byte `offset`.
    pub(crate) fn at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(offset);
        self.at_line_col(line, col, message)
    }

    /// A diagnostic at a line and column that some other tool computed.
    pub(crate) fn at_line_col(
        &self,
        line: usize,
        col: usize,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            line,
            col,
            message: message.into(),
            source_line: self.line_text(line).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_character_columns() {
        let map = SourceMap::new("ab\nçd\n\nx");
        for (offset, want) in [
            (0, (1, 1)),
            (1, (1, 2)),
            (2, (1, 3)),
            (3, (2, 1)),
            (5, (2, 2)), // after the two-byte 'ç'
            (7, (3, 1)),
            (8, (4, 1)),
            (99, (4, 2)),
        ] {
            assert_eq!(map.position(offset), want, "offset {offset}");
        }
        assert_eq!(map.line_text(2), "çd");
        assert_eq!(map.line_text(3), "");
        assert_eq!(map.line_text(9), "");
    }

    #[test]
    fn rendering_shows_the_line_and_a_caret_under_the_column() {
        let map = SourceMap::new("service \"web\" {\n  port = 0\n}\n");
        let text = map
            .at(25, "\"port\" must be between 1 and 65535, found 0")
            .render("a.mill");
        assert_eq!(
            text,
            "a.mill:2:10: \"port\" must be between 1 and 65535, found 0\n 2 |   port = 0\n   |          ^"
        );
    }
}
