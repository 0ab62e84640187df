//! The engines this host knows: every addon found in the configured addon files and
//! directories, loaded and verified at start, by engine name; and where each engine version's
//! programs are (operator config first, then the addon's suggestions, then `PATH`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_api::EngineView;
use shoal_local::BinarySearch;
use shoal_runtime::{AddonRuntime, LoadedAddon};

use crate::config::HostConfig;

/// Loaded engines by name.
#[derive(Clone, Default)]
pub struct Engines {
    by_name: BTreeMap<String, LoadedAddon>,
}

impl Engines {
    /// Load every addon in `paths` (files, or directories of `*.wasm`). A file that fails to
    /// load is reported and skipped; two addons for the same engine are an error.
    pub async fn load(
        rt: &AddonRuntime,
        paths: &[PathBuf],
    ) -> Result<(Engines, Vec<String>), String> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| format!("cannot read addon directory {}: {e}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "wasm"))
                    .collect();
                entries.sort();
                files.extend(entries);
            } else if p.is_file() {
                files.push(p.clone());
            }
        }
        let mut engines = Engines::default();
        let mut problems = Vec::new();
        for f in files {
            match rt.load_file(&f).await {
                Ok(addon) => {
                    let name = addon.engine().to_string();
                    if let Some(other) = engines.by_name.get(&name) {
                        return Err(format!(
                            "two addons for engine {name}: {} and {}; keep one",
                            other.info().origin,
                            f.display()
                        ));
                    }
                    engines.by_name.insert(name, addon);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok((engines, problems))
    }

    /// The addon for `engine`.
    pub fn get(&self, engine: &str) -> Option<&LoadedAddon> {
        self.by_name.get(engine)
    }

    /// Every engine name.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Summaries for `shoal engines`.
    pub fn views(&self) -> Vec<EngineView> {
        self.by_name
            .values()
            .map(|a| {
                let m = a.manifest();
                EngineView {
                    engine: m.engine.clone(),
                    display_name: m.display_name.clone(),
                    versions: m.versions.iter().map(|v| v.version.clone()).collect(),
                    default_version: m
                        .versions
                        .iter()
                        .find(|v| v.is_default)
                        .map(|v| v.version.clone())
                        .unwrap_or_default(),
                    addon_version: m.addon_version.clone(),
                    digest: format!("sha256:{}", a.info().digest),
                    origin: a.info().origin.clone(),
                }
            })
            .collect()
    }
}

/// Where `engine` `version`'s programs are looked for: the operator's directory, then the
/// addon's suggestions; `PATH` only when neither names a directory.
pub fn binaries(cfg: &HostConfig, addon: &LoadedAddon, version: &str) -> BinarySearch {
    let engine = addon.engine();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(b) = cfg.engines.get(engine).and_then(|v| v.get(version)) {
        dirs.push(b.bin_dir.clone());
    }
    let declared = addon
        .manifest()
        .versions
        .iter()
        .find(|v| v.version == version);
    if let Some(v) = declared {
        dirs.extend(v.binary_paths.iter().map(|p| Path::new(p).to_path_buf()));
    }
    BinarySearch {
        what: format!("{engine} {version}"),
        use_path: dirs.is_empty(),
        dirs,
        packages: declared.map(|v| v.packages.clone()).unwrap_or_default(),
    }
}
