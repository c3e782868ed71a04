//! The component files of the plugin versions the registry keeps, so a
//! restart finds the versions repeaters ran before it (a pin to an older
//! version, a repeater the newest version refused).
//!
//! Layout: `<dir>/<plugin name>/<sha256 hex>.wasm`, one file per kept
//! version of a user plugin (built-ins come from the binary). A file's
//! modification time is when its version last became the newest, so the
//! versions come back in the order they arrived. A file is removed when its
//! version is dropped from the registry.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// One kept version found on disk.
#[derive(Debug)]
pub(super) struct KeptFile {
    pub name: String,
    pub sha256: String,
    pub bytes: Vec<u8>,
    /// When the version last became the newest.
    pub arrived: SystemTime,
}

fn version_path(dir: &Path, name: &str, sha256: &str) -> PathBuf {
    dir.join(name).join(format!("{sha256}.wasm"))
}

/// Keeps `bytes` as version `sha256` of `name`, marked as arrived now. The
/// write goes through a temporary file and a rename, so a crash leaves
/// either the whole file or none.
pub(super) fn keep(dir: &Path, name: &str, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let path = version_path(dir, name, sha256);
    if let Ok(file) = std::fs::File::options().write(true).open(&path) {
        // Already kept: only its arrival moves.
        return file.set_modified(SystemTime::now());
    }
    let parent = dir.join(name);
    std::fs::create_dir_all(&parent)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".keep-")
        .suffix(".tmp")
        .tempfile_in(&parent)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// Forgets version `sha256` of `name`; a missing file is not an error.
pub(super) fn discard(dir: &Path, name: &str, sha256: &str) -> std::io::Result<()> {
    match std::fs::remove_file(version_path(dir, name, sha256)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Every kept version under `dir`, oldest arrival first. Files whose name
/// is not a plugin name and a sha256, or whose bytes no longer hash to their
/// name, are skipped with a warning and left for the operator to inspect.
pub(super) fn read_all(dir: &Path) -> Vec<KeptFile> {
    let mut kept = Vec::new();
    let Ok(names) = std::fs::read_dir(dir) else {
        return kept;
    };
    for plugin_dir in names.filter_map(Result::ok) {
        let Some(name) = plugin_dir.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if super::registry::check_name(&name).is_err() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(plugin_dir.path()) else {
            continue;
        };
        for file in files.filter_map(Result::ok) {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let Some(sha256) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let read = std::fs::read(&path).and_then(|bytes| {
                let arrived = file.metadata()?.modified()?;
                Ok((bytes, arrived))
            });
            match read {
                Ok((bytes, arrived)) if hex::encode(Sha256::digest(&bytes)) == sha256 => {
                    kept.push(KeptFile {
                        name: name.clone(),
                        sha256: sha256.to_owned(),
                        bytes,
                        arrived,
                    });
                }
                Ok(_) => tracing::warn!(path = %path.display(),
                    "a kept plugin version does not hash to its file name; not loaded"),
                Err(error) => tracing::warn!(path = %path.display(), %error,
                    "a kept plugin version could not be read; not loaded"),
            }
        }
    }
    kept.sort_by(|a, b| (a.arrived, &a.name).cmp(&(b.arrived, &b.name)));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn kept_versions_come_back_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (b"one".as_slice(), b"two".as_slice());
        keep(dir.path(), "relay", &sha(one), one).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        keep(dir.path(), "relay", &sha(two), two).unwrap();
        let order =
            |dir: &Path| -> Vec<Vec<u8>> { read_all(dir).into_iter().map(|k| k.bytes).collect() };
        assert_eq!(order(dir.path()), vec![one.to_vec(), two.to_vec()]);

        // Keeping `one` again makes it the latest arrival.
        std::thread::sleep(std::time::Duration::from_millis(20));
        keep(dir.path(), "relay", &sha(one), one).unwrap();
        assert_eq!(order(dir.path()), vec![two.to_vec(), one.to_vec()]);

        discard(dir.path(), "relay", &sha(two)).unwrap();
        discard(dir.path(), "relay", &sha(two)).unwrap();
        assert_eq!(order(dir.path()), vec![one.to_vec()]);
    }

    #[test]
    fn files_that_do_not_match_their_name_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"good".as_slice();
        keep(dir.path(), "relay", &sha(good), good).unwrap();
        std::fs::write(
            dir.path()
                .join("relay")
                .join(format!("{}.wasm", sha(b"other"))),
            b"tampered",
        )
        .unwrap();
        std::fs::write(dir.path().join("relay").join("notes.wasm"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        let kept = read_all(dir.path());
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].name.as_str(), kept[0].bytes.as_slice()),
            ("relay", good)
        );
    }
}
