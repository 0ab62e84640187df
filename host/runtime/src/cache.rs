//! The on-disk cache of compiled addon code. An entry is keyed by the sha256 of the wasm bytes
//! and the engine's compatibility hash (wasmtime version, target and every codegen setting),
//! so a changed engine configuration never loads a stale artifact. Entries are written
//! atomically (temporary file, then rename) with a sha256 sidecar that is checked before the
//! artifact is mapped: a truncated or tampered file is recompiled, never executed.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where compiled artifacts of one engine configuration live.
#[derive(Debug, Clone)]
pub(crate) struct CodeCache {
    dir: PathBuf,
    compat: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Compiled now (and stored in the cache, if one is configured).
    Compiled,
    /// Mapped from a verified cache entry.
    Cache,
}

impl CodeCache {
    /// A cache under `dir` for `engine`'s configuration. Creates the directory (mode 0700) if
    /// missing; refuses an existing one that is not owned by this user or that others can
    /// write, since whoever can write the cache can make the host run their machine code.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let meta = std::fs::metadata(dir)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} must be a directory owned by uid {me} and not writable by group or others \
                     (found uid {}, mode {:o})",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(CodeCache {
            dir: dir.to_path_buf(),
            compat: format!("{:016x}", h.finish()),
        })
    }

    fn artifact(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", self.compat))
    }

    /// The component for `wasm`, from the cache when a verified entry exists, else compiled
    /// (and stored). Cache trouble is logged and never fails a load that compilation can do.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(Component, CodeSource)> {
        let path = self.artifact(wasm_sha256);
        if let Some(component) = self.try_cached(engine, &path) {
            return Ok((component, CodeSource::Cache));
        }
        let bytes = engine.precompile_component(wasm)?;
        if let Err(e) = write_atomic(&path, &bytes) {
            tracing::warn!("cannot store compiled addon in {}: {e}", path.display());
        }
        // Deserialize what was just produced in this process: the same path a cache hit takes.
        // SAFETY: `bytes` came from `precompile_component` of this very engine.
        let component = unsafe { Component::deserialize(engine, &bytes)? };
        Ok((component, CodeSource::Compiled))
    }

    fn try_cached(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let sidecar = checksum_path(path);
        let expected = std::fs::read_to_string(&sidecar).ok()?;
        let bytes = std::fs::read(path).ok()?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if expected.trim() != actual {
            tracing::warn!(
                "compiled addon {} does not match its checksum; recompiling",
                path.display()
            );
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(&sidecar);
            return None;
        }
        // SAFETY: the artifact was written by this cache into a directory only this user can
        // write (checked in `open`), for an engine with the same compatibility hash, and its
        // bytes match the checksum written alongside it. wasmtime additionally checks the
        // header and version.
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "cannot load compiled addon {}: {e:#}; recompiling",
                    path.display()
                );
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }
}

fn checksum_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Write `bytes` to `path` and its checksum sidecar, each via a temporary file and rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let put = |target: &Path, data: &[u8]| -> std::io::Result<()> {
        let mut tmp = tempfile_in(dir)?;
        tmp.1.write_all(data)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, target)
    };
    put(path, bytes)?;
    put(
        &checksum_path(path),
        hex::encode(Sha256::digest(bytes)).as_bytes(),
    )
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}
