//! PostgreSQL's parameter schema and config files. Defaults not fixed in the schema are
//! derived from the instance's memory: shared_buffers a quarter of it, effective_cache_size
//! three quarters, maintenance_work_mem a sixteenth, work_mem what is left per connection.

use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
/// Settings a hot standby may not hold lower than its primary (it refuses to start).
pub const STANDBY_MINIMUMS: &[&str] = &["max_connections", "max_wal_senders"];

/// Memory assumed when the host sets none.
const DEFAULT_MEMORY: i64 = 512 * MIB;

/// The parameters users may set (from `addon.toml`). Sizes without a default are derived
/// from memory ([`Sizes`]).
pub fn schema() -> Vec<ParamSpec> {
    shoal_sdk::manifest_file!("addon.toml").parameters
}

/// A size setting in kB, PostgreSQL's unit for memory.
fn kb(bytes: i64) -> String {
    format!("{}kB", (bytes / 1024).max(64))
}

/// The memory settings: the user's values, else derived from the instance's memory.
pub struct Sizes {
    pub memory: i64,
    pub shared_buffers: i64,
    pub effective_cache_size: i64,
    pub maintenance_work_mem: i64,
    pub work_mem: i64,
}

impl Sizes {
    pub fn of(resources: &Resources, p: &Lookup<'_>) -> HookResult<Sizes> {
        let memory = match resources.memory_bytes {
            0 => DEFAULT_MEMORY,
            m => i64::try_from(m).unwrap_or(i64::MAX),
        };
        let derived = |name: &str, fallback: i64| -> HookResult<i64> {
            match p.get(name) {
                Some(_) => p.int(name),
                None => Ok(fallback),
            }
        };
        let max_connections = p.int("max_connections")?;
        let shared_buffers = derived("shared_buffers", (memory / 4).clamp(16 * MIB, 8 * GIB))?;
        Ok(Sizes {
            memory,
            shared_buffers,
            effective_cache_size: derived("effective_cache_size", (memory * 3 / 4).max(16 * MIB))?,
            maintenance_work_mem: derived(
                "maintenance_work_mem",
                (memory / 16).clamp(16 * MIB, 2 * GIB),
            )?,
            work_mem: derived(
                "work_mem",
                ((memory - shared_buffers) / (max_connections * 3)).clamp(MIB, 256 * MIB),
            )?,
        })
    }

    /// As parameters, by name.
    pub fn params(&self) -> [(&'static str, i64); 4] {
        [
            ("shared_buffers", self.shared_buffers),
            ("effective_cache_size", self.effective_cache_size),
            ("maintenance_work_mem", self.maintenance_work_mem),
            ("work_mem", self.work_mem),
        ]
    }
}

/// postgresql.conf for `instance` with the effective parameters `p`.
pub fn postgresql_conf(instance: &Instance, p: &Lookup<'_>) -> HookResult<String> {
    let sizes = Sizes::of(&instance.resources, p)?;
    let memory = sizes.memory;
    let max_connections = p.int("max_connections")?;
    let synchronous_commit = p.text("synchronous_commit")?;
    // Settings that depend on the cluster's archiving and on the engine version.
    let mut tail = archive_settings(instance, p)?;
    if instance.engine_version == "18" {
        if let Some(Value::Text(m)) = p.get("io_method") {
            tail.push_str(&format!("io_method = '{m}'\n"));
        }
    }
    Ok(format!(
        "# Rendered by Shoal from the PostgreSQL addon for {name} ({memory_mib} MiB); \
         edits here are overwritten.\n\
         # Per-node settings (port, listen address, file locations) are on the command line.\n\
         max_connections = {max_connections}\n\
         shared_buffers = {sb}\n\
         effective_cache_size = {ecs}\n\
         work_mem = {wm}\n\
         maintenance_work_mem = {mwm}\n\
         wal_level = replica\n\
         max_wal_senders = {senders}\n\
         max_replication_slots = {senders}\n\
         wal_keep_size = {keep}MB\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_log_hints = on\n\
         # Reconnect quickly to a new primary after a failover or switchover.\n\
         wal_retrieve_retry_interval = 1s\n\
         synchronous_commit = {synchronous_commit}\n\
         statement_timeout = {st}\n\
         log_min_duration_statement = {lmds}\n\
         password_encryption = scram-sha-256\n\
         logging_collector = off\n\
         log_destination = 'stderr'\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n\
         log_timezone = 'UTC'\n\
         timezone = 'UTC'\n\
         {tail}",
        name = instance.name,
        memory_mib = memory / MIB,
        sb = kb(sizes.shared_buffers),
        ecs = kb(sizes.effective_cache_size),
        wm = kb(sizes.work_mem),
        mwm = kb(sizes.maintenance_work_mem),
        senders = p.int("max_wal_senders")?,
        keep = p.int("wal_keep_size")? / MIB,
        st = p.int("statement_timeout")?,
        lmds = p.int("log_min_duration_statement")?,
    ))
}

/// Whether pg_settings' `setting` in `unit` is the value `want` the host asked for, as the
/// rendered file spells it (sizes to the kB or the setting's unit, durations to the unit).
pub fn setting_matches(want: &Value, setting: &str, unit: &str) -> bool {
    match want {
        Value::Boolean(b) => setting == if *b { "on" } else { "off" },
        Value::Text(t) => setting == t,
        Value::Float(f) => setting.parse::<f64>().is_ok_and(|s| (s - f).abs() < 1e-9),
        Value::Integer(v) => {
            let Ok(s) = setting.parse::<i64>() else {
                return false;
            };
            let scale = match unit {
                "" => return s == *v,
                "B" => 1,
                "kB" => 1024,
                "8kB" => 8192,
                "MB" => MIB,
                "GB" => GIB,
                "ms" => 1,
                "s" => 1000,
                "min" => 60_000,
                _ => return false,
            };
            // Flooring to the kB when rendered, then to the unit by the server.
            let tolerance = scale.max(if unit.ends_with('B') { 1024 } else { 1 });
            (s == -1 && *v == -1) || (s.saturating_mul(scale) - v).abs() < tolerance
        }
    }
}

/// Continuous archiving: the server is always started with `archive_mode = on` (changing it
/// needs a restart) and the command is switched by a reload. While the cluster is archived,
/// every finished WAL segment (and timeline history file) is copied into the host's archive
/// directory (`.part` first, then renamed, so the host never sees half a file); otherwise it
/// is let go at once.
fn archive_settings(instance: &Instance, p: &Lookup<'_>) -> HookResult<String> {
    // Rendered whether or not the cluster is archived, so that the value a user set is the
    // one the server reports (a dynamic change is read back); it only matters while archived.
    let timeout = format!("archive_timeout = {}\n", p.int("archive_timeout")? / 1000);
    let Some(dir) = instance.archive_dir.as_deref() else {
        return Ok(format!(
            "archive_mode = on\narchive_command = '/bin/true'\n{timeout}"
        ));
    };
    if !dir.starts_with('/')
        || dir
            .chars()
            .any(|c| matches!(c, '\'' | '%' | '"' | '\\' | '$' | '`') || c.is_control())
    {
        return Err(HookError::invalid(format!(
            "archive directory {dir:?} must be an absolute path without quotes, '%', '$' or \
             backslashes"
        )));
    }
    Ok(format!(
        "archive_mode = on\n\
         archive_command = 'cp %p \"{dir}/%f.part\" && mv -f \"{dir}/%f.part\" \"{dir}/%f\"'\n\
         {timeout}"
    ))
}

/// pg_hba.conf: password (SCRAM) logins and replication from loopback and from every member.
pub fn pg_hba_conf(instance: &Instance, members: &[Member]) -> String {
    let mut hosts: Vec<String> = vec!["127.0.0.1/32".into(), "::1/128".into()];
    for host in
        std::iter::once(&instance.endpoint.host).chain(members.iter().map(|m| &m.endpoint.host))
    {
        let cidr = if host.contains(':') {
            format!("{host}/128")
        } else {
            format!("{host}/32")
        };
        if !hosts.contains(&cidr) {
            hosts.push(cidr);
        }
    }
    let mut s = String::from(
        "# Rendered by Shoal: SCRAM logins and replication from loopback and cluster members.\n\
         # TYPE  DATABASE     USER  ADDRESS  METHOD\n",
    );
    for h in &hosts {
        s.push_str(&format!("host    all          all   {h}  scram-sha-256\n"));
        s.push_str(&format!("host    replication  all   {h}  scram-sha-256\n"));
    }
    s
}

/// Escape `:` and `\` for a .pgpass field.
pub fn pgpass_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}
