//! `repeaterd plugin new`: writes a plugin project in Rust, Python or
//! JavaScript that builds with one command and passes its own tests.
//!
//! Every file comes from inside the binary, so a project can be made
//! anywhere, offline: the WIT interface, the Python and JavaScript example
//! forwarders of `examples/plugins/` (their sources, pinned tool versions
//! and build scripts), and for Rust a copy of the SDK's sources
//! (`plugins/sdk`), which is not published to a registry, so the project
//! depends on it by path. Templates of our own (`templates/`) hold the
//! parts that name the project.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The languages a plugin project can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust with the repeaterd plugin SDK.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// One file of a project: where it goes, what it holds, and whether it is
/// a script to run.
struct ProjectFile {
    path: &'static str,
    text: String,
    executable: bool,
}

impl ProjectFile {
    fn new(path: &'static str, text: &str) -> Self {
        Self {
            path,
            text: text.to_owned(),
            executable: false,
        }
    }

    fn script(path: &'static str, text: &str) -> Self {
        Self {
            executable: true,
            ..Self::new(path, text)
        }
    }
}

const WIT: &str = include_str!("../../../wit/v0.1/plugin.wit");
const EVENT: &str = include_str!("../../../examples/plugins/python/event.json");

/// The name the JavaScript example's package has; the project's name
/// replaces it.
const JS_EXAMPLE_PACKAGE: &str = r#""name": "forward""#;

/// Writes a `language` plugin project named `name` into `dir` (default
/// `./<name>`) and says how to build it.
pub fn new_project(language: Language, name: &str, dir: Option<PathBuf>) -> anyhow::Result<()> {
    check_slug(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = project_files(language, name);
    write_project(&dir, &files)?;
    let build = match language {
        Language::Rust => "cargo build --release --target wasm32-wasip2",
        Language::Python | Language::Js => "./build.sh",
    };
    println!("wrote {} files into {}", files.len(), dir.display());
    println!("build it: cd {} && {build}", dir.display());
    println!("then read its README.md: tests, plugin check, plugin run");
    Ok(())
}

/// A project name is a slug: it names the plugin file, the package and
/// the directory, so it must suit all three.
fn check_slug(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "plugin name {name:?} is not a slug: use 1 to 63 lowercase letters, digits and \
             hyphens, starting with a letter and not ending with a hyphen (e.g. \"crm-forward\")"
        );
    }
    Ok(())
}

/// The files of a project, named and ready to write.
fn project_files(language: Language, name: &str) -> Vec<ProjectFile> {
    let named = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
    };
    let mut files = vec![
        ProjectFile::new("wit/v0.1/plugin.wit", WIT),
        ProjectFile::new("event.json", EVENT),
    ];
    match language {
        Language::Rust => files.extend([
            ProjectFile::new(
                "README.md",
                &named(include_str!("templates/rust/README.md")),
            ),
            ProjectFile::new(
                "Cargo.toml",
                &named(include_str!("templates/rust/Cargo.toml")),
            ),
            ProjectFile::new("src/lib.rs", &named(include_str!("templates/rust/lib.rs"))),
            ProjectFile::new(".gitignore", include_str!("templates/rust/gitignore")),
            // The toolchain this repository builds plugins with, and the
            // wasm target, which rustup then installs by itself.
            ProjectFile::new(
                "rust-toolchain.toml",
                include_str!("../../../rust-toolchain.toml"),
            ),
            // The SDK finds the WIT at `../../wit/v0.1` from its own
            // directory, in this repository and in the project alike.
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/Cargo.toml",
                include_str!("templates/rust/sdk-Cargo.toml"),
            ),
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/src/lib.rs",
                include_str!("../../../plugins/sdk/src/lib.rs"),
            ),
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/src/classify.rs",
                include_str!("../../../plugins/sdk/src/classify.rs"),
            ),
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/src/log.rs",
                include_str!("../../../plugins/sdk/src/log.rs"),
            ),
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/src/plugin.rs",
                include_str!("../../../plugins/sdk/src/plugin.rs"),
            ),
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/src/testing.rs",
                include_str!("../../../plugins/sdk/src/testing.rs"),
            ),
            ProjectFile::new(
                "vendor/repeater-plugin-sdk/src/types.rs",
                include_str!("../../../plugins/sdk/src/types.rs"),
            ),
        ]),
        Language::Python => files.extend([
            ProjectFile::new(
                "README.md",
                &named(include_str!("templates/python/README.md")),
            ),
            ProjectFile::new(
                "app.py",
                include_str!("../../../examples/plugins/python/app.py"),
            ),
            ProjectFile::new(
                "test_app.py",
                include_str!("../../../examples/plugins/python/test_app.py"),
            ),
            ProjectFile::new(
                "requirements.txt",
                include_str!("../../../examples/plugins/python/requirements.txt"),
            ),
            ProjectFile::script(
                "build.sh",
                include_str!("../../../examples/plugins/python/build.sh"),
            ),
            ProjectFile::new(
                ".gitignore",
                include_str!("../../../examples/plugins/python/.gitignore"),
            ),
        ]),
        Language::Js => files.extend([
            ProjectFile::new("README.md", &named(include_str!("templates/js/README.md"))),
            ProjectFile::new(
                "package.json",
                &js_package_named(
                    include_str!("../../../examples/plugins/javascript/package.json"),
                    name,
                ),
            ),
            ProjectFile::new(
                "package-lock.json",
                &js_package_named(
                    include_str!("../../../examples/plugins/javascript/package-lock.json"),
                    name,
                ),
            ),
            ProjectFile::new(
                "build.mjs",
                include_str!("../../../examples/plugins/javascript/build.mjs"),
            ),
            ProjectFile::script(
                "build.sh",
                include_str!("../../../examples/plugins/javascript/build.sh"),
            ),
            ProjectFile::new(
                "src/plugin.js",
                include_str!("../../../examples/plugins/javascript/src/plugin.js"),
            ),
            ProjectFile::new(
                "test/plugin.test.js",
                include_str!("../../../examples/plugins/javascript/test/plugin.test.js"),
            ),
            ProjectFile::new(
                "stubs/log.mjs",
                include_str!("../../../examples/plugins/javascript/stubs/log.mjs"),
            ),
            ProjectFile::new(
                "stubs/wit-imports.mjs",
                include_str!("../../../examples/plugins/javascript/stubs/wit-imports.mjs"),
            ),
            ProjectFile::new(
                ".gitignore",
                include_str!("../../../examples/plugins/javascript/.gitignore"),
            ),
        ]),
    }
    files
}

/// The example's `package.json` or `package-lock.json` with the project's
/// name in place of the example's.
fn js_package_named(text: &str, name: &str) -> String {
    text.replace(JS_EXAMPLE_PACKAGE, &format!(r#""name": "{name}""#))
}

/// Writes `files` under `dir`, which must not exist or be empty: a project
/// is never written over other files.
fn write_project(dir: &Path, files: &[ProjectFile]) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; choose another --dir or name",
                    dir.display()
                );
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", dir.display()));
        }
    }
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, &file.text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if file.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_slugs() {
        for good in ["a", "crm-forward", "x2", &"a".repeat(63)] {
            assert!(check_slug(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Crm",
            "2fast",
            "-a",
            "a-",
            "a_b",
            "a b",
            "../a",
            &"a".repeat(64),
        ] {
            let err = check_slug(bad).unwrap_err().to_string();
            assert!(err.contains("not a slug"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn every_placeholder_is_filled_and_the_project_is_named() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            let files = project_files(language, "crm-forward");
            for file in &files {
                assert!(!file.text.contains("{{"), "{language:?} {}", file.path);
            }
            let readme = files.iter().find(|f| f.path == "README.md").unwrap();
            assert!(readme.text.starts_with("# crm-forward\n"), "{language:?}");
            assert!(files.iter().any(|f| f.path == "wit/v0.1/plugin.wit"));
        }
        let rust = project_files(Language::Rust, "crm-forward");
        let manifest = rust.iter().find(|f| f.path == "Cargo.toml").unwrap();
        assert!(manifest.text.contains(r#"name = "crm-forward""#));
        let readme = rust.iter().find(|f| f.path == "README.md").unwrap();
        assert!(readme.text.contains("release/crm_forward.wasm"));

        let js = project_files(Language::Js, "crm-forward");
        for path in ["package.json", "package-lock.json"] {
            let file = js.iter().find(|f| f.path == path).unwrap();
            assert!(!file.text.contains(JS_EXAMPLE_PACKAGE), "{path}");
            assert!(file.text.contains(r#""name": "crm-forward""#), "{path}");
        }
    }

    #[test]
    fn the_sdk_copy_has_every_dependency_of_the_sdk() {
        let manifest = |text: &str| -> Vec<String> {
            let value: toml::Table = toml::from_str(text).unwrap();
            let mut names: Vec<String> = value["dependencies"]
                .as_table()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            manifest(include_str!("templates/rust/sdk-Cargo.toml")),
            manifest(include_str!("../../../plugins/sdk/Cargo.toml"))
        );
        let sdk_modules =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk/src"))
                .unwrap()
                .count();
        let copied = project_files(Language::Rust, "a")
            .iter()
            .filter(|f| f.path.starts_with("vendor/repeater-plugin-sdk/src/"))
            .count();
        assert_eq!(copied, sdk_modules, "every SDK source file is copied");
    }

    #[test]
    fn a_non_empty_directory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = write_project(dir.path(), &project_files(Language::Python, "a"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists and is not empty"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_project(&empty, &project_files(Language::Python, "a")).unwrap();
        let script = std::fs::metadata(empty.join("build.sh")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(script.permissions().mode() & 0o111, 0o111);
    }
}
