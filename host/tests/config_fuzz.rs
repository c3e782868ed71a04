//! Property tests of the config loader: malformed TOML, wrong types, unknown
//! keys, invalid domain and repeater names and huge values, made by
//! mutating the reference config (`examples/repeaterd.toml`) or from
//! scratch. `Config::parse` must never panic, and whenever it refuses a text
//! the error must point at a line inside the text, and at the mutated key
//! when the mutation replaced one value.

use std::path::Path;

use proptest::prelude::*;
use repeaterd::config::{Config, ConfigError};

const REFERENCE: &str = include_str!("../../examples/repeaterd.toml");

/// Values of the wrong type, out of range, or huge.
const BAD_VALUES: &[&str] = &[
    "\"text\"",
    "-1",
    "0",
    "1e400",
    "-0.0",
    "nan",
    "inf",
    "99999999999999999999999",
    "9223372036854775807",
    "4294967296",
    "true",
    "[1, 2]",
    "[]",
    "{ a = 1 }",
    "\"\"",
    "\"-5s\"",
    "\"0s\"",
    "\"99999999999999999999d\"",
    "\"18446744073709551615s\"",
    "\"1h1h\"",
    "\"5 parsecs\"",
    "1979-05-27T07:32:00Z",
    "\"\\u0000\"",
    "'''multi\nline'''",
    "\"Bad Domain!\"",
    "\"-leading-dash\"",
    "\"über\"",
    "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
    "\"ftp://example.com/x\"",
    "\"http://\"",
    "\"not-an-ip/99\"",
    "[\"10.0.0.0/33\"]",
];

/// Text spliced in anywhere to break the syntax.
const GARBAGE: &[&str] = &[
    "[",
    "]]",
    "=",
    "\"",
    "[[repeater]]",
    "[dispatch]",
    "zzz_unknown_key = 1",
    "\n[unknown_table]\nx = 1\n",
    "\ndispatch.concurrency = 3\n",
    "\u{0}",
    "\u{feff}",
    "# comment",
    "\n[[repeater]]\ndomain = \"x\"\n",
    "\n[[repeater]]\ndomain = \"UPPER\"\nname = \"n\"\nurl = \"http://127.0.0.1:1/\"\nplugin = \"json-forward\"\n",
];

/// Lines of the reference that set a value: (line index, key).
fn value_lines() -> Vec<(usize, String)> {
    REFERENCE
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let line = line.trim_start();
            if line.starts_with('#') || line.starts_with('[') {
                return None;
            }
            let (key, _) = line.split_once('=')?;
            Some((index, key.trim().to_owned()))
        })
        .collect()
}

/// The 1-based line of the table header (`[x]` or `[[x]]`) that encloses
/// 1-based line `line` of `text`.
fn enclosing_table(text: &str, line: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .take(line)
        .filter(|(_, l)| l.trim_start().starts_with('['))
        .map(|(index, _)| index + 1)
        .last()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/repeaterd/fuzz.toml"))
}

/// The general contract: an error names a line inside the text (or a
/// secret's variable), and its message is not empty.
fn check_error(text: &str, err: &ConfigError) -> Result<(), TestCaseError> {
    let shown = err.to_string();
    match err {
        ConfigError::Invalid { line, message, .. } => {
            let lines = text.lines().count().max(1) + 1;
            prop_assert!(
                (1..=lines).contains(line),
                "error line {line} is outside the text's {lines} lines: {shown}"
            );
            prop_assert!(!message.is_empty(), "empty message: {shown}");
            prop_assert!(
                shown.contains(&format!("fuzz.toml:{line}:")),
                "the message does not show file and line: {shown}"
            );
        }
        ConfigError::MissingSecret { var, .. } => {
            prop_assert!(
                shown.contains(var.as_str()),
                "secret error hides the variable: {shown}"
            );
        }
        ConfigError::Read { .. } => prop_assert!(false, "parse reported a read error: {shown}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any text at all: parse or a located error, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(err) = parse(&text) {
            check_error(&text, &err)?;
        }
    }

    /// TOML-looking noise built from the config's own tokens.
    #[test]
    fn token_soup_never_panics(
        tokens in prop::collection::vec(
            prop::sample::select(vec![
                "[server]", "[dispatch]", "[[repeater]]", "[repeater.auth]", "\n", " = ", "=",
                "listen", "max_inflight", "domain", "name", "url", "plugin", "timeout",
                "retry_schedule", "concurrency", "\"30s\"", "\"x\"", "1", "-1", "[", "]",
                "{", "}", ",", "\"", "'", "#", "type", "\"bearer\"", "token_env",
            ]),
            0..60,
        )
    ) {
        let text: String = tokens.concat();
        if let Err(err) = parse(&text) {
            check_error(&text, &err)?;
        }
    }

    /// One value of the reference config replaced by a wrong, out-of-range
    /// or huge one: refused with the line or the key of that value, or
    /// accepted (some replacements are valid).
    #[test]
    fn a_bad_value_is_refused_at_its_key(
        choice in any::<prop::sample::Index>(),
        value in prop::sample::select(BAD_VALUES.to_vec()),
    ) {
        let lines = value_lines();
        let (index, key) = &lines[choice.index(lines.len())];
        let mut text: Vec<String> = REFERENCE.lines().map(str::to_owned).collect();
        text[*index] = format!("{key} = {value}");
        let text = text.join("\n");
        if let Err(err) = parse(&text) {
            check_error(&text, &err)?;
            let shown = err.to_string();
            let at_line = err.line() == Some(index + 1);
            let names_key = err.key().is_some_and(|k| k.rsplit('.').next() == Some(key.as_str()) || k.ends_with(&format!(".{key}")))
                || shown.contains(&format!("`{key}`")) || shown.contains(key.as_str());
            // Values inside a tagged table (`[repeater.auth]`) are reported
            // at the table's header: accept the header enclosing the line.
            let at_table = err.line().is_some_and(|line| enclosing_table(&text, index + 1) == Some(line));
            prop_assert!(
                at_line || names_key || at_table,
                "replacing line {} (`{key}`) with {value:?} gave an error naming neither: {shown}",
                index + 1
            );
        }
    }

    /// Garbage spliced in at a random place, a line dropped or doubled, or
    /// the text cut short.
    #[test]
    fn a_damaged_reference_never_panics(
        at in any::<prop::sample::Index>(),
        garbage in prop::sample::select(GARBAGE.to_vec()),
        how in 0u8..4,
    ) {
        let mut text = REFERENCE.to_owned();
        let mut cut = at.index(text.len() + 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        match how {
            0 => text.insert_str(cut, garbage),
            1 => text.truncate(cut),
            2 => {
                let lines: Vec<&str> = REFERENCE.lines().collect();
                let drop = at.index(lines.len());
                text = lines.iter().enumerate().filter(|(i, _)| *i != drop).map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
            }
            _ => {
                let lines: Vec<&str> = REFERENCE.lines().collect();
                let twice = at.index(lines.len());
                let mut out: Vec<&str> = Vec::new();
                for (i, line) in lines.iter().enumerate() {
                    out.push(line);
                    if i == twice {
                        out.push(line);
                    }
                }
                text = out.join("\n");
            }
        }
        if let Err(err) = parse(&text) {
            check_error(&text, &err)?;
        }
    }

    /// Domain and repeater names outside the slug rule are refused, naming
    /// the repeater's key.
    #[test]
    fn invalid_names_are_refused(
        name in prop_oneof![
            Just(String::new()),
            "[A-Z][a-z]{0,8}",
            "-[a-z]{1,8}",
            "[a-z]{1,4}[ _./!@][a-z]{1,4}",
            "[a-z]{64,80}",
            "[a-z]{1,4}[éü♥]",
        ],
        field in prop::sample::select(vec!["domain", "name"]),
    ) {
        let text = format!(
            "[[repeater]]\ndomain = {domain:?}\nname = {rname:?}\nurl = \"https://example.com/hook\"\nplugin = \"json-forward\"\n",
            domain = if field == "domain" { name.as_str() } else { "acme" },
            rname = if field == "name" { name.as_str() } else { "crm" },
        );
        let err = parse(&text).expect_err("an invalid name must be refused");
        check_error(&text, &err)?;
        let shown = err.to_string();
        prop_assert!(shown.contains(field), "the error does not name `{field}`: {shown}");
    }
}

/// The reference itself parses (the mutations start from a valid text).
#[test]
fn the_reference_config_parses() {
    if let Err(err) = parse(REFERENCE) {
        panic!("examples/repeaterd.toml does not parse: {err}");
    }
    assert!(
        value_lines().len() > 30,
        "too few values found in the reference"
    );
}
