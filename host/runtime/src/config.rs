//! Operator configuration of the addon runtime: caps on what any addon may ask for, the
//! capabilities the operator grants, the compiled-code cache and the instance pool. Every
//! field has a documented default ([`RuntimeConfig::default`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wit::Hook;

/// How the runtime allocates instance memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Use wasmtime's pooling allocator when the machine allows the address-space reservation,
    /// else fall back to on-demand allocation with a warning.
    Auto,
    /// Always allocate on demand (slower instantiation, no up-front reservation).
    Off,
}

/// What the operator grants addons beyond their own instances' addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// Programs addons may run through `host.exec*`, by name, when their manifest declares
    /// them. The value is an absolute path, or none / an empty string to search
    /// [`Grants::exec_search_path`].
    pub exec: BTreeMap<String, Option<PathBuf>>,
    /// Directories searched for granted programs without an explicit path.
    pub exec_search_path: Vec<PathBuf>,
    /// Extra addresses addons may connect to, when their manifest declares them
    /// (`capability::connect`).
    pub connect: Vec<SocketAddr>,
    /// Whether addons that declare `name-lookup` may resolve host names.
    pub name_lookup: bool,
    /// sha256 digests (hex) of the addon files these grants are for. Empty: any addon that
    /// calls itself by this engine name. Set it: an addon can name itself anything.
    pub digests: Vec<String>,
}

/// Configuration of an [`crate::AddonRuntime`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Directory for compiled addon code, keyed by wasm sha256 and engine compatibility.
    /// `None` disables the disk cache (every load compiles). Default: none.
    pub cache_dir: Option<PathBuf>,
    /// Instance allocation strategy. Default: [`Pooling::Auto`].
    pub pooling: Pooling,
    /// Most addon instances alive at once (pool size; live instances count too). Default 2000.
    pub max_instances: u32,
    /// Linear memory cap of a call when the manifest asks for nothing. Default 64 MiB.
    pub default_memory_bytes: u64,
    /// Highest memory cap a manifest may ask for. Default 512 MiB.
    pub max_memory_bytes: u64,
    /// Highest deadline a manifest may ask for. Default 24 h.
    #[serde(with = "duration_ms")]
    pub max_timeout: Duration,
    /// Deadlines used when a manifest declares none for a hook (see [`default_timeout`]).
    /// Overrides per hook name ("probe" → 2000 ms).
    #[serde(with = "duration_ms_map")]
    pub default_timeouts: BTreeMap<String, Duration>,
    /// Bytes of log lines (the `log` import plus stdout and stderr) kept per call; the rest is
    /// dropped and counted. Default 1 MiB.
    pub log_budget_bytes: u64,
    /// Longest single log line; longer lines are cut. Default 8 KiB.
    pub log_line_bytes: usize,
    /// Most bytes of stdout and of stderr captured from an `exec` child. Default 16 MiB.
    pub exec_capture_bytes: usize,
    /// Calls after which a long-lived addon instance is replaced by a fresh one. Default 10 000.
    pub live_recycle_calls: u64,
    /// Granularity of CPU deadlines (epoch tick). Default 10 ms.
    #[serde(with = "duration_ms")]
    pub epoch_tick: Duration,
    /// Capabilities granted to addons, by engine name; `"*"` applies to every addon.
    pub grants: BTreeMap<String, Grants>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            pooling: Pooling::Auto,
            max_instances: 2000,
            default_memory_bytes: 64 << 20,
            max_memory_bytes: 512 << 20,
            max_timeout: Duration::from_secs(24 * 3600),
            default_timeouts: BTreeMap::new(),
            log_budget_bytes: 1 << 20,
            log_line_bytes: 8 << 10,
            exec_capture_bytes: 16 << 20,
            live_recycle_calls: 10_000,
            epoch_tick: Duration::from_millis(10),
            grants: BTreeMap::new(),
        }
    }
}

impl RuntimeConfig {
    /// Check the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_instances == 0 {
            return Err("max_instances must be at least 1".into());
        }
        if self.default_memory_bytes > self.max_memory_bytes {
            return Err(format!(
                "default_memory_bytes ({}) exceeds max_memory_bytes ({})",
                self.default_memory_bytes, self.max_memory_bytes
            ));
        }
        if self.default_memory_bytes < (1 << 20) {
            return Err("default_memory_bytes must be at least 1 MiB".into());
        }
        if self.epoch_tick.is_zero() || self.epoch_tick > Duration::from_secs(1) {
            return Err("epoch_tick must be between 1 ms and 1 s".into());
        }
        for name in self.default_timeouts.keys() {
            if Hook::from_name(name).is_none() {
                return Err(format!("default_timeouts: unknown hook {name:?}"));
            }
        }
        for (addon, g) in &self.grants {
            if addon == "*" && !g.digests.is_empty() {
                return Err("grants.\"*\".digests: pin digests on a named engine's grants".into());
            }
            for d in &g.digests {
                if d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!(
                        "grants.{addon}.digests: {d:?} is not a sha256 hex digest"
                    ));
                }
            }
            for (prog, path) in &g.exec {
                if prog.contains('/') || prog.is_empty() {
                    return Err(format!(
                        "grants.{addon}.exec: {prog:?} must be a program name, not a path"
                    ));
                }
                if let Some(p) = path.as_ref().filter(|p| !p.as_os_str().is_empty()) {
                    if !p.is_absolute() {
                        return Err(format!(
                            "grants.{addon}.exec.{prog}: path {} must be absolute",
                            p.display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The deadline of `hook` when the manifest declares none.
    pub fn default_timeout(&self, hook: Hook) -> Duration {
        self.default_timeouts
            .get(hook.name())
            .copied()
            .unwrap_or_else(|| default_timeout(hook))
    }

    /// The grants that apply to addon `engine`: its own entry merged over `"*"`.
    /// The engine's own search path comes first, so its programs win over same-named ones in
    /// the shared directories.
    pub fn grants_for(&self, engine: &str) -> Grants {
        let mut merged = self.grants.get("*").cloned().unwrap_or_default();
        if let Some(own) = self.grants.get(engine) {
            merged.exec.extend(own.exec.clone());
            let shared = std::mem::take(&mut merged.exec_search_path);
            merged.exec_search_path = own.exec_search_path.clone();
            merged.exec_search_path.extend(shared);
            merged.connect.extend(own.connect.iter().copied());
            merged.name_lookup |= own.name_lookup;
            merged.digests = own.digests.clone();
        }
        merged
    }
}

/// Built-in deadlines per hook: short for reads the host makes often, long for data movement.
pub fn default_timeout(hook: Hook) -> Duration {
    let secs = match hook {
        Hook::Manifest
        | Hook::Validate
        | Hook::Classify
        | Hook::Effective
        | Hook::RunSpec
        | Hook::RenderConfig => 5,
        Hook::Probe => 2,
        Hook::Metrics | Hook::WriteMarker | Hook::ReadMarkers => 5,
        Hook::PostProvision
        | Hook::PreTerminate
        | Hook::MemberJoin
        | Hook::MemberLeave
        | Hook::FormShards
        | Hook::AccountProvision
        | Hook::ApplyDynamic
        | Hook::Promote
        | Hook::Demote
        | Hook::SetSync
        | Hook::RecoverQuorum => 60,
        Hook::Switchover => 300,
        Hook::Rebuild
        | Hook::Backup
        | Hook::Restore
        | Hook::ArchiveContinuous
        | Hook::RestoreToTime => 3600,
    };
    Duration::from_secs(secs)
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod duration_ms_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let ms: BTreeMap<&String, u64> = m
            .iter()
            .map(|(k, v)| (k, u64::try_from(v.as_millis()).unwrap_or(u64::MAX)))
            .collect();
        ms.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let ms = BTreeMap::<String, u64>::deserialize(d)?;
        Ok(ms
            .into_iter()
            .map(|(k, v)| (k, Duration::from_millis(v)))
            .collect())
    }
}
