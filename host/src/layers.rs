//! The dependency rule of `ARCHITECTURE.md`, enforced. The table of which
//! module may use which is written once, in that file; these tests read it
//! from there and check every source file under `host/src/` against it.
//!
//! A module's imports are the `crate::<module>` paths in its files (for the
//! binary, `main.rs` and `cli/`, the `repeaterd::<module>` paths), grouped
//! ones (`crate::{config, store::Lease}`) and paths written inline included,
//! test code included; comment lines are skipped. Within one module, the
//! files directly in its folder must not import each other in a cycle
//! (`use super::<file>` at the top of a file, or `crate::<module>::<file>`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// This file: test code, not a module of the rule.
const THIS_FILE: &str = "layers.rs";

/// The module the binary's own files (`main.rs`, `cli/`) belong to.
const BINARY: &str = "cli";

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The table of `ARCHITECTURE.md`: each module and the modules it may use.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() == 2 && cells[0].trim() == "module" && cells[1].trim() == "may use" {
            in_table = true;
            continue;
        }
        if !in_table || cells.iter().all(|cell| cell.trim().starts_with("---")) {
            continue;
        }
        if !line.trim_start().starts_with('|') {
            break;
        }
        let names = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let module = names(cells[0]);
        assert_eq!(
            module.len(),
            1,
            "ARCHITECTURE.md: a row names no module: {line}"
        );
        let may_use = names(cells.get(1).copied().unwrap_or_default());
        rows.insert(module[0].clone(), may_use.into_iter().collect());
    }
    assert!(
        !rows.is_empty(),
        "ARCHITECTURE.md has no `| module | may use |` table"
    );
    rows
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The modules under `host/src/` with their files: one per folder or file,
/// `main.rs` counting as part of the binary's module.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            modules.entry(name).or_default().extend(rust_files(&path));
        } else if name == "main.rs" {
            modules.entry(BINARY.to_owned()).or_default().push(path);
        } else if let Some(stem) = name.strip_suffix(".rs")
            && name != "lib.rs"
            && name != THIS_FILE
        {
            modules.entry(stem.to_owned()).or_default().push(path);
        }
    }
    modules
}

/// One import found in a file: the 1-based line and the first path segment
/// after the prefix.
#[derive(Debug, PartialEq, Eq)]
struct Import {
    line: usize,
    name: String,
}

/// The text with comment lines blanked (kept as empty lines, so offsets
/// still map to the right line numbers).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The first identifier of `text`, if it starts with one.
fn leading_ident(text: &str) -> Option<&str> {
    let text = text.trim_start();
    let end = text
        .bytes()
        .position(|b| !is_ident(b))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// Every path starting with `prefix` (`crate::`, `repeaterd::`,
/// `super::`) in `text`, by its first segment; a group (`prefix{a, b::C}`)
/// yields each of its members' first segments.
fn imports(text: &str, prefix: &str) -> Vec<Import> {
    let text = without_comments(text);
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b':') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group_at = at + prefix.len() + 1;
            // A member's first segment, on the line where the member starts.
            let member = |start: usize, end: usize| {
                let text = &group[start..end];
                let indent = text.len() - text.trim_start().len();
                leading_ident(text).map(|name| Import {
                    line: line_of(group_at + start + indent),
                    name: name.to_owned(),
                })
            };
            // Members of the group at depth 0, up to its closing brace.
            let mut depth = 0usize;
            let mut member_start = 0;
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.extend(member(member_start, i));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(member(member_start, i));
                        member_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else if let Some(name) = leading_ident(rest) {
            found.push(Import {
                line: line_of(at),
                name: name.to_owned(),
            });
        }
    }
    found
}

fn shown(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    path.strip_prefix(&root)
        .unwrap_or(&path)
        .display()
        .to_string()
}

#[test]
fn every_module_has_a_row_and_every_row_is_a_module() {
    let table = allowed();
    let modules = modules();
    let in_table: BTreeSet<&String> = table.keys().collect();
    let on_disk: BTreeSet<&String> = modules.keys().collect();
    assert_eq!(
        on_disk, in_table,
        "the modules under host/src/ and the rows of ARCHITECTURE.md's table differ"
    );
    for (module, may_use) in &table {
        for other in may_use {
            assert!(
                table.contains_key(other),
                "ARCHITECTURE.md: {module} may use {other}, which is no module"
            );
        }
    }
}

#[test]
fn modules_import_only_what_the_table_allows() {
    let table = allowed();
    let mut refused = Vec::new();
    for (module, files) in modules() {
        let Some(may_use) = table.get(&module) else {
            continue; // reported by the test above
        };
        let prefix = if module == BINARY {
            "repeaterd::"
        } else {
            "crate::"
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for import in imports(&text, prefix) {
                let other = &import.name;
                // In the binary, `crate::` is the binary's own code.
                if other == &module || !table.contains_key(other) {
                    continue;
                }
                if !may_use.contains(other) {
                    refused.push(format!(
                        "{}:{}: {module} uses {other}, which ARCHITECTURE.md does not allow (it may use: {})",
                        shown(&file),
                        import.line,
                        may_use.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    assert!(refused.is_empty(), "\n{}\n", refused.join("\n"));
}

#[test]
fn the_files_of_a_module_import_each_other_in_no_cycle() {
    for (module, _) in modules() {
        let dir = src_dir().join(&module);
        if !dir.is_dir() {
            continue;
        }
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.extension().is_some_and(|ext| ext == "rs") && stem != "mod" {
                files.insert(stem, path);
            }
        }
        let mut uses: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (stem, path) in &files {
            let text = std::fs::read_to_string(path).unwrap();
            // `super::` means the module only at a file's top level.
            let top: String = text
                .lines()
                .map(|line| {
                    if line.starts_with(char::is_whitespace) {
                        ""
                    } else {
                        line
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let names = imports(&top, "super::")
                .into_iter()
                .chain(imports(&text, &format!("crate::{module}::")))
                .map(|import| import.name)
                .filter(|name| name != stem && files.contains_key(name));
            uses.insert(stem, names.collect());
        }
        if let Some(cycle) = find_cycle(&uses) {
            panic!(
                "the files of host/src/{module}/ import each other in a cycle: {}",
                cycle.join(" -> ")
            );
        }
    }
}

/// A cycle in `graph`, as the names along it with the first repeated last.
fn find_cycle(graph: &BTreeMap<&str, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_scan_finds_inline_grouped_and_multi_line_paths_but_not_comments() {
    let text = "use crate::model::Millis;\n\
                // use crate::store::Store;\n\
                use crate::{\n    config::Config,\n    schedule::{Aimd, Backoff},\n};\n\
                fn f() { crate::telemetry::Metrics::new(); $crate::api::x(); }\n\
                use other_crate::dispatch;\n";
    let found: Vec<(usize, String)> = imports(text, "crate::")
        .into_iter()
        .map(|import| (import.line, import.name))
        .collect();
    assert_eq!(
        found,
        [
            (1, "model".to_owned()),
            (4, "config".to_owned()),
            (5, "schedule".to_owned()),
            (7, "telemetry".to_owned()),
            (7, "api".to_owned()),
        ]
    );
    let mut graph: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    graph.insert("engine", ["call".to_owned()].into());
    graph.insert("call", ["engine".to_owned()].into());
    graph.insert("load", ["call".to_owned()].into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "call".to_owned(),
            "engine".to_owned(),
            "call".to_owned()
        ])
    );
    graph.insert("engine", BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
}
