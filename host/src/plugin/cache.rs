//! Compiled-artifact cache: components are compiled once per content digest and engine
//! settings, kept in memory, and (when a directory is configured) stored as precompiled
//! artifacts so a restart loads them without compiling.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// SHA-256 of a component file, written `sha256:<hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest(pub String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }
    pub fn hex(&self) -> &str {
        self.0.trim_start_matches("sha256:")
    }
    /// Parses a pin from config: `sha256:<64 hex>` or bare hex.
    pub fn parse(text: &str) -> Result<Digest, String> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        if hex_part.len() != 64 || !hex_part.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "`{text}` is not a digest: expected sha256:<64 hex digits>"
            ));
        }
        Ok(Digest(format!("sha256:{}", hex_part.to_ascii_lowercase())))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a component came from: compiled now, or loaded from the memory or disk cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Compiled,
    Memory,
    Disk,
}

pub struct ArtifactCache {
    dir: Option<PathBuf>,
    /// Distinguishes artifacts of engines with different settings (fuel vs epoch).
    engine_tag: String,
    memory: Mutex<HashMap<Digest, Component>>,
}

impl ArtifactCache {
    pub fn new(dir: Option<PathBuf>, engine_tag: String) -> Self {
        ArtifactCache {
            dir,
            engine_tag,
            memory: Mutex::new(HashMap::new()),
        }
    }

    fn artifact_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| {
            d.join(format!(
                "{}-{}-{}.cwasm",
                digest.hex(),
                self.engine_tag,
                env!("CARGO_PKG_VERSION")
            ))
        })
    }

    /// The compiled component for `bytes` (whose digest is `digest`).
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(c) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            return Ok((c.clone(), CacheOutcome::Memory));
        }
        if let Some(path) = self.artifact_path(digest) {
            if path.exists() {
                // SAFETY: the file was written by `Component::serialize` of this host into a
                // directory the operator gave this host; wasmtime checks that the artifact
                // matches this engine's version and settings and refuses it otherwise.
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(c) => {
                        self.remember(digest, &c);
                        return Ok((c, CacheOutcome::Disk));
                    }
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        "compiled artifact unusable, compiling again: {e:#}"
                    ),
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = self.artifact_path(digest) {
            if let Err(e) = self.store(&component, &path) {
                tracing::warn!(path = %path.display(), "cannot cache compiled artifact: {e:#}");
            }
        }
        self.remember(digest, &component);
        Ok((component, CacheOutcome::Compiled))
    }

    fn remember(&self, digest: &Digest, component: &Component) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.clone(), component.clone());
    }

    /// Writes atomically: a crash never leaves a truncated artifact under the final name.
    fn store(&self, component: &Component, path: &std::path::Path) -> anyhow::Result<()> {
        let bytes = component.serialize()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A name of its own per writer: two engines (or test processes) compiling the same
        // component at once must not interleave their bytes in one temporary file.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("cwasm.{}-{n}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Drops the in-memory copies (the disk cache stays); for measuring cold loads.
    pub fn forget_memory(&self) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_accepts_prefixed_and_bare_hex() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.0).unwrap(), d);
        assert_eq!(Digest::parse(d.hex()).unwrap(), d);
        assert!(Digest::parse("sha256:xyz").is_err());
    }
}
