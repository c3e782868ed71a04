//! Maps positions in the TOML text to lines and dotted key paths, so every
//! error can say which key on which line was wrong, including errors found
//! after parsing (duplicates, cross-field checks) that carry only a path.

/// A light index of a config file's lines: which key path each line sets.
#[derive(Debug, Clone)]
pub(crate) struct SourceIndex {
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    /// Per line (0-based): the key path set or opened there, if any.
    line_paths: Vec<Option<String>>,
}

impl SourceIndex {
    pub(crate) fn new(text: &str) -> SourceIndex {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut line_paths = Vec::with_capacity(line_starts.len());
        let mut table = String::new();
        // Array-of-table names seen so far and their current index.
        let mut arrays: Vec<(String, usize)> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim();
            let path = if let Some(name) = trimmed
                .strip_prefix("[[")
                .and_then(|rest| rest.split("]]").next())
            {
                let name = unquote_path(name);
                let index = match arrays.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, i)) => {
                        *i += 1;
                        *i
                    }
                    None => {
                        arrays.push((name.clone(), 0));
                        0
                    }
                };
                table = format!("{name}[{index}]");
                Some(table.clone())
            } else if let Some(name) = trimmed
                .strip_prefix('[')
                .and_then(|rest| rest.split(']').next())
            {
                let name = unquote_path(name);
                // A sub-table of the current array element: `[repeater.auth]`.
                table = arrays
                    .iter()
                    .filter(|(array, _)| name.starts_with(&format!("{array}.")))
                    .max_by_key(|(array, _)| array.len())
                    .map(|(array, i)| format!("{array}[{i}]{}", &name[array.len()..]))
                    .unwrap_or(name);
                Some(table.clone())
            } else if !trimmed.starts_with('#') && trimmed.contains('=') {
                let key = unquote_path(trimmed.split('=').next().unwrap_or_default());
                Some(if table.is_empty() {
                    key
                } else {
                    format!("{table}.{key}")
                })
            } else {
                None
            };
            line_paths.push(path);
        }
        SourceIndex {
            line_starts,
            line_paths,
        }
    }

    /// The 1-based line and column of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line = line.max(1);
        (line, offset - self.line_starts[line - 1] + 1)
    }

    /// The key path set on a 1-based line, if the line sets one.
    pub(crate) fn path_at(&self, line: usize) -> Option<&str> {
        self.line_paths.get(line.wrapping_sub(1))?.as_deref()
    }

    /// The 1-based line setting exactly this key path, if any.
    pub(crate) fn line_of_exact(&self, path: &str) -> Option<usize> {
        self.line_paths
            .iter()
            .position(|p| p.as_deref() == Some(path))
            .map(|index| index + 1)
    }

    /// The 1-based line of a key path: the line setting it, else the line
    /// of its nearest enclosing table or key.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut candidate = path;
        loop {
            if let Some(index) = self
                .line_paths
                .iter()
                .position(|p| p.as_deref() == Some(candidate))
            {
                return Some(index + 1);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

/// `a . "b c"` → `a.b c`: good enough for locating keys.
fn unquote_path(raw: &str) -> String {
    raw.split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_keys_in_tables_and_array_tables() {
        let text = "top = 1\n[dispatch]\n# note\nconcurrency = 7\n\n[[repeater]]\nname = \"a\"\n[[repeater]]\nname = \"b\"\n[repeater.auth]\ntype = \"bearer\"\n";
        let index = SourceIndex::new(text);
        assert_eq!(index.line_of("top"), Some(1));
        assert_eq!(index.line_of("dispatch.concurrency"), Some(4));
        assert_eq!(index.line_of("repeater[0].name"), Some(7));
        assert_eq!(index.line_of("repeater[1].name"), Some(9));
        assert_eq!(index.line_of("repeater[1].auth.type"), Some(11));
        assert_eq!(index.line_of("repeater[1].url"), Some(8));
        assert_eq!(index.path_at(4), Some("dispatch.concurrency"));
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(text.find("concurrency").unwrap()), (4, 1));
    }
}
