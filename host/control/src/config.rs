//! Configuration of the Shoal host: where its home is, which addons it loads, where engine
//! programs live, the port range instances get ports from, and the addon runtime's settings.
//! Read from `<home>/config.toml` when present; every field has a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_runtime::RuntimeConfig;

/// Where one engine version's programs are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineBinaries {
    /// Directory holding the version's programs (`initdb`, `postgres`, …).
    pub bin_dir: PathBuf,
}

/// The host's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Addon files or directories of `*.wasm` addons to load at start. Default: `<home>/addons`.
    pub addons: Vec<PathBuf>,
    /// Ports instances get, inclusive. Default 15000–19999, below the kernel's ephemeral range.
    pub port_range: [u16; 2],
    /// When the host runs as root, engines run unprivileged, each cluster as its own OS user
    /// named `<engine_user>-<6 hex digits of the home>-<cluster uid>` (created when the
    /// cluster is created, removed with `delete --purge`), so that no cluster (nor a
    /// database superuser in it) can reach another's files. Clusters created before that
    /// run as `<engine_user>` itself. At most 16 characters. Default `shoal`.
    pub engine_user: String,
    /// Engine programs by engine and version, searched before the addon's own suggestions:
    /// `[engines.postgresql."18"] bin_dir = "/opt/pg18/bin"`.
    pub engines: BTreeMap<String, BTreeMap<String, EngineBinaries>>,
    /// How often each running instance is probed, in ms. Default 1000.
    pub probe_interval_ms: u64,
    /// How long an instance may take to become ready after its process starts, in ms.
    /// Default 120 000.
    pub ready_timeout_ms: u64,
    /// How long init commands (initdb, a base backup from the primary) may take, in ms.
    /// Default 3 600 000.
    pub init_timeout_ms: u64,
    /// The addon runtime (sandbox caps, grants, compiled-code cache).
    pub runtime: RuntimeConfig,
    /// High availability: failover triggers and the coordination store.
    pub ha: HaConfig,
}

/// How this host decides failovers and where it coordinates with other hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// Consecutive failed probes of a primary whose process is still alive (hung,
    /// unreachable) before it is fenced and failed over. A primary whose process exits is
    /// failed over at once. Default 2.
    pub failover_after_probes: u32,
    /// Leader and manager lease time to live, in ms. Default 5000 (etcd rounds below 2 s up).
    pub lease_ttl_ms: u64,
    /// Coordination store: "embedded" (SQLite in the home; one host) or "etcd".
    pub dcs: String,
    /// etcd client URLs (http://HOST:PORT) when `dcs = "etcd"`.
    pub etcd_endpoints: Vec<String>,
    /// This host's name in manager leases. Default: the machine's hostname and the home.
    pub host_id: Option<String>,
}

impl HaConfig {
    /// This host's name: the configured one, else the machine's hostname and the home.
    pub fn host_id(&self, home: &std::path::Path) -> String {
        self.host_id.clone().unwrap_or_else(|| {
            let name = std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{name}:{}", home.display())
        })
    }
}

/// `s` with every character but ASCII letters, digits, `-`, `_` and `.` replaced by `_`.
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.') {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            failover_after_probes: 2,
            lease_ttl_ms: 5000,
            dcs: "embedded".into(),
            etcd_endpoints: Vec::new(),
            host_id: None,
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            addons: Vec::new(),
            port_range: [15000, 19999],
            engine_user: "shoal".into(),
            engines: BTreeMap::new(),
            probe_interval_ms: 1000,
            ready_timeout_ms: 120_000,
            init_timeout_ms: 3_600_000,
            runtime: RuntimeConfig::default(),
            ha: HaConfig::default(),
        }
    }
}

impl HostConfig {
    /// Read `<home>/config.toml` (or `path` when given); the defaults when the file is absent.
    pub fn load(home: &Path, path: Option<&Path>) -> Result<HostConfig, String> {
        let file = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| home.join("config.toml"));
        let mut cfg = match std::fs::read_to_string(&file) {
            Ok(text) => toml::from_str::<HostConfig>(&text)
                .map_err(|e| format!("{}: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_none() => {
                HostConfig::default()
            }
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        if cfg.addons.is_empty() {
            cfg.addons.push(home.join("addons"));
        }
        if cfg.runtime.cache_dir.is_none() {
            cfg.runtime.cache_dir = Some(home.join("cache").join("compiled"));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.port_range;
        if lo == 0 || lo > hi {
            return Err(format!(
                "port_range [{lo}, {hi}] must be 1 <= first <= last"
            ));
        }
        if !shoal_local::users::valid_user_name(&self.engine_user) || self.engine_user.len() > 16 {
            return Err(format!(
                "engine_user {:?} must be a user name of at most 16 lowercase letters, digits, \
                 '-' or '_' (cluster users add 15 characters to it)",
                self.engine_user
            ));
        }
        if self.probe_interval_ms < 100 {
            return Err("probe_interval_ms must be at least 100".into());
        }
        if self.ha.failover_after_probes == 0 {
            return Err("ha.failover_after_probes must be at least 1".into());
        }
        if self.ha.lease_ttl_ms < 1000 {
            return Err("ha.lease_ttl_ms must be at least 1000".into());
        }
        if let Some(id) = &self.ha.host_id {
            if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "ha.host_id {id:?} must be 1 to 200 printable characters"
                ));
            }
        }
        match self.ha.dcs.as_str() {
            "embedded" => {}
            "etcd" if self.ha.etcd_endpoints.is_empty() => {
                return Err("ha.dcs = \"etcd\" needs ha.etcd_endpoints".into())
            }
            "etcd" => {}
            other => {
                return Err(format!(
                    "ha.dcs must be \"embedded\" or \"etcd\", not {other:?}"
                ))
            }
        }
        self.runtime.validate()
    }
}

/// The default home: `$SHOAL_HOME`; as root `/var/lib/shoal` (engines run as an unprivileged
/// user, who cannot enter root's home); else `$XDG_DATA_HOME/shoal` or `~/.local/share/shoal`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SHOAL_HOME") {
        return PathBuf::from(h);
    }
    if shoal_local::users::is_root() {
        return PathBuf::from("/var/lib/shoal");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("shoal");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local").join("share").join("shoal")
}
