//! The on-disk cache of compiled plugins. Compiling a component takes tens
//! of milliseconds; loading a precompiled one well under one.
//!
//! Key: sha256 over the component's sha256, the wasmtime version and
//! wasmtime's hash of every engine setting that affects generated code.
//! An artefact is a small header (magic, format, payload length, payload
//! sha256) followed by `Component::serialize` output, written through a
//! temporary file and a rename so a reader never sees half a file.
//!
//! Deserializing compiled code trusts it completely, so only files this
//! daemon wrote into its own cache directory are ever deserialized, and
//! only after the header, length and checksum match; anything else is
//! deleted and the component recompiled. The checksum needs the bytes in
//! memory anyway, so they are deserialized from memory rather than mapped
//! again with `deserialize_file`.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::PluginError;

/// Marks a file as a repeaterd compiled-plugin artefact, format 1.
const MAGIC: &[u8; 8] = b"RPTDCW01";
/// Magic, payload length (u64 LE), payload sha256.
const HEADER_LEN: usize = 8 + 8 + 32;
/// The pinned wasmtime version; compiled code is only valid for it.
const WASMTIME_VERSION: &str = "48.0.8";

/// A directory of compiled plugins, with hit and miss counters.
#[derive(Debug)]
pub struct CodeCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CodeCache {
    /// Opens (creating if needed) the cache directory.
    pub fn open(dir: &Path) -> Result<Self, PluginError> {
        std::fs::create_dir_all(dir).map_err(|source| PluginError::Io {
            plugin: "(cache)".to_owned(),
            action: "creating cache directory",
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Loads that had to compile so far (absent or rejected artefacts).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// The cache key for a component with this sha256 on this engine.
    pub(crate) fn key(&self, engine: &Engine, component_sha256: &[u8; 32]) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let mut digest = hasher.0;
        digest.update(component_sha256);
        digest.update(WASMTIME_VERSION.as_bytes());
        hex::encode(digest.finalize())
    }

    /// Path of the artefact for `key`.
    pub fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The compiled component for `key`, if a valid artefact exists. A file
    /// that fails any check is deleted (and counted as a miss).
    pub(crate) fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.path_for(key);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot read cached plugin");
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let loaded = verified_payload(&bytes).and_then(|payload| {
            // SAFETY: `payload` is byte-for-byte what `store` wrote from
            // `Component::serialize` on an engine with the same codegen
            // settings (the key covers them): the header's length and
            // sha256 match, and only this daemon writes into this directory.
            unsafe { Component::deserialize(engine, payload) }
                .map_err(|e| format!("wasmtime refused it: {e:#}"))
        });
        match loaded {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "discarding corrupt cached plugin");
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot delete corrupt cached plugin");
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Writes the compiled component for `key`: temporary file, fsync, rename.
    pub(crate) fn store(&self, key: &str, component: &Component) -> Result<(), PluginError> {
        let path = self.path_for(key);
        let io_error = |action, source| PluginError::Io {
            plugin: "(cache)".to_owned(),
            action,
            path: path.display().to_string(),
            source,
        };
        let payload = component.serialize().map_err(|e| {
            PluginError::Engine(format!(
                "cannot serialize compiled plugin for {}: {e:#}",
                path.display()
            ))
        })?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        header.extend_from_slice(&Sha256::digest(&payload));
        let mut temp = tempfile::Builder::new()
            .prefix(".cwasm-")
            .tempfile_in(&self.dir)
            .map_err(|e| io_error("creating a temporary file for", e))?;
        temp.write_all(&header)
            .and_then(|()| temp.write_all(&payload))
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| io_error("writing", e))?;
        temp.persist(&path)
            .map_err(|e| io_error("renaming into place", e.error))?;
        Ok(())
    }
}

/// The payload of an artefact whose header, length and checksum are right.
fn verified_payload(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("missing or unknown header".to_owned());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    if Sha256::digest(payload).as_slice() != &bytes[16..48] {
        return Err("payload checksum does not match".to_owned());
    }
    Ok(payload)
}

/// Feeds `Hash` output into sha256, so the engine's compatibility hash
/// becomes part of a stable file name.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Unused: the digest is read from the inner state.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks_catch_truncation_and_flipped_bits() {
        let payload = b"compiled code".to_vec();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        file.extend_from_slice(&Sha256::digest(&payload));
        file.extend_from_slice(&payload);
        assert_eq!(verified_payload(&file).unwrap(), payload.as_slice());

        assert!(verified_payload(&file[..file.len() - 1]).is_err());
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(verified_payload(&flipped).is_err());
        assert!(verified_payload(b"garbage").is_err());
    }
}
