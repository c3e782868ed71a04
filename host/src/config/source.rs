//! Where each key of a config file is: the `toml` parser's spans of every
//! key and table, by dotted key path, so every error can say which key on
//! which line was wrong, including errors found after parsing (duplicates,
//! cross-field checks) that carry only a path.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One key, table header or array-of-tables element of the file.
#[derive(Debug, Clone)]
struct Entry {
    /// Dotted path, with 0-based indexes for array elements:
    /// `dispatch.concurrency`, `repeater[1].auth.type`.
    path: String,
    /// Where the key is written (for an array element, its `[[...]]` header).
    key: Range<usize>,
    /// Where the value is written (for a table, its `[...]` header).
    value: Range<usize>,
    /// True for a table or array element opened by a `[...]` header line.
    header: bool,
}

/// The spans of a parsed config file, by key path.
#[derive(Debug, Clone)]
pub(crate) struct SourceIndex {
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    /// Every key in document order of the parser's tables.
    entries: Vec<Entry>,
}

impl SourceIndex {
    /// Indexes `root`, the document `text` parsed (or, after a syntax
    /// error, as much of it as the parser recovered).
    pub(crate) fn new(text: &str, root: &DeTable<'_>) -> SourceIndex {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut entries = Vec::new();
        index_table(text, root, "", &mut entries);
        SourceIndex {
            line_starts,
            entries,
        }
    }

    /// The 1-based line and column of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line = line.max(1);
        (line, offset - self.line_starts[line - 1] + 1)
    }

    /// The key path written at byte `offset`: the deepest key or table
    /// header covering it. Otherwise (a key the parser refused, such as a
    /// duplicate) the table whose header precedes it, with the key written
    /// at `span` appended when `text` there is a bare key.
    pub(crate) fn path_at(&self, text: &str, span: Range<usize>) -> String {
        let offset = span.start;
        let covering = self
            .entries
            .iter()
            .filter(|e| e.key.contains(&offset) || e.value.contains(&offset))
            .max_by_key(|e| e.path.len());
        if let Some(entry) = covering {
            return entry.path.clone();
        }
        let table = self
            .entries
            .iter()
            .filter(|e| e.header && e.value.start <= offset)
            .max_by_key(|e| e.value.start)
            .map_or("", |e| e.path.as_str());
        let written = text.get(span).unwrap_or_default().trim();
        let bare_key = !written.is_empty()
            && written
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match (table, bare_key) {
            (table, true) if !table.is_empty() => format!("{table}.{written}"),
            (_, true) => written.to_owned(),
            (table, false) => table.to_owned(),
        }
    }

    /// The 1-based line and column of exactly this key path, if the file
    /// writes it.
    pub(crate) fn position_of_exact(&self, path: &str) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| self.position(e.key.start))
    }

    /// The 1-based line and column of a key path: where it is written, else
    /// where its nearest enclosing table or key is.
    pub(crate) fn position_of(&self, path: &str) -> Option<(usize, usize)> {
        let mut candidate = path;
        loop {
            if let Some(position) = self.position_of_exact(candidate) {
                return Some(position);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

/// Adds the entries of `table`, whose path is `prefix`, and of every table
/// inside it.
fn index_table(text: &str, table: &DeTable<'_>, prefix: &str, entries: &mut Vec<Entry>) {
    let is_header =
        |span: &Range<usize>| text.get(span.clone()).is_some_and(|s| s.starts_with('['));
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        entries.push(Entry {
            path: path.clone(),
            key: key.span(),
            value: value.span(),
            header: matches!(value.get_ref(), DeValue::Table(_)) && is_header(&value.span()),
        });
        match value.get_ref() {
            DeValue::Table(inner) => index_table(text, inner, &path, entries),
            DeValue::Array(elements) => {
                for (i, element) in elements.iter().enumerate() {
                    // Only tables: a value inside a plain list is reported
                    // at the list's key.
                    let DeValue::Table(inner) = element.get_ref() else {
                        continue;
                    };
                    let path = format!("{path}[{i}]");
                    entries.push(Entry {
                        path: path.clone(),
                        key: element.span(),
                        value: element.span(),
                        header: is_header(&element.span()),
                    });
                    index_table(text, inner, &path, entries);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> SourceIndex {
        let (root, errors) = DeTable::parse_recoverable(text);
        assert!(errors.is_empty(), "{errors:?}");
        SourceIndex::new(text, root.get_ref())
    }

    #[test]
    fn finds_keys_in_tables_array_tables_and_dotted_headers() {
        let text = "top = 1\n[dispatch]\n# note\nconcurrency = 7\n\n[[repeater]]\nname = \"a\"\n[[repeater]]\nname = \"b\"\n[repeater.auth]\ntype = \"bearer\"\n[security.domain_tokens]\nacme = \"X\"\n";
        let index = index(text);
        let line = |path| index.position_of(path).map(|(line, _)| line);
        assert_eq!(line("top"), Some(1));
        assert_eq!(line("dispatch.concurrency"), Some(4));
        assert_eq!(line("repeater[0]"), Some(6));
        assert_eq!(line("repeater[0].name"), Some(7));
        assert_eq!(line("repeater[1].name"), Some(9));
        assert_eq!(line("repeater[1].auth.type"), Some(11));
        assert_eq!(line("security.domain_tokens.acme"), Some(13));
        // A key not written: the table enclosing it.
        assert_eq!(line("repeater[1].url"), Some(8));
        assert_eq!(line("server.listen"), None);
        assert_eq!(index.position_of_exact("repeater[1].url"), None);
        assert_eq!(index.position_of("dispatch.concurrency"), Some((4, 1)));
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            index.path_at(text, start..start + needle.len())
        };
        assert_eq!(at("concurrency"), "dispatch.concurrency");
        assert_eq!(at("\"bearer\""), "repeater[1].auth.type");
        assert_eq!(at("[repeater.auth]"), "repeater[1].auth");
        assert_eq!(index.position(0), (1, 1));
    }

    #[test]
    fn a_key_the_parser_refused_is_placed_in_its_table() {
        let text = "[dispatch]\nconcurrency = 3\nconcurrency = 4\n";
        let (root, errors) = DeTable::parse_recoverable(text);
        let span = errors[0].span().expect("a duplicate key has a span");
        let index = SourceIndex::new(text, root.get_ref());
        assert_eq!(index.position(span.start).0, 3);
        assert_eq!(index.path_at(text, span), "dispatch.concurrency");
    }
}
