//! The local API of `shoal serve`: JSON lines over a Unix socket in the Shoal home directory
//! (mode 0600, so only its owner can drive the host). A client writes one [`Request`] as a
//! line; the server answers with zero or more [`Reply::Event`] / [`Reply::Log`] lines (for
//! requests that stream) and ends with exactly one [`Reply::Ok`] or [`Reply::Error`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// File name of the socket inside the Shoal home.
pub const SOCKET: &str = "shoal.sock";

/// Environment variable naming the socket of one particular daemon (overrides the home's).
pub const SOCKET_ENV: &str = "SHOAL_SOCKET";

/// What a user asks for when creating a cluster (also the `-f spec.yaml` format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Cluster name: 1-40 lowercase letters, digits and dashes, starting with a letter.
    pub name: String,
    /// Engine name of a loaded addon ("postgresql").
    pub engine: String,
    /// Engine version; the addon's default when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// Number of instances (1 = standalone; more = a primary and replicas). With `shards`,
    /// the number of members of each shard.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Shards, for an engine with a sharded topology: the data split `shards` ways, each
    /// shard `replicas` members the engine fails over itself. Absent: not sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Resources per instance.
    #[serde(default)]
    pub resources: ResourceSpec,
    /// Engine parameters by name, as text ("shared_buffers: 256MB").
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// High availability: replication mode and failover limits.
    #[serde(default)]
    pub ha: HaSpec,
}

fn one() -> u32 {
    1
}

/// How a cluster with replicas is kept available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HaSpec {
    /// `async` (default): commits return before replicas have them; a failover may lose at
    /// most `max-lag-on-failover` bytes. `sync`: a commit returns only once `sync-quorum`
    /// replicas hold it durably, and only such a replica is promoted: no acknowledged commit
    /// is lost. Writes wait while fewer than `sync-quorum` replicas are connected.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// How many replicas must confirm a commit in `sync` mode. Default 1.
    #[serde(default = "one")]
    pub sync_quorum: u32,
    /// In `async` mode, the most a failover candidate may be behind the old primary's last
    /// known position ("16Mi", "1G", bytes). A failover with no candidate that close does
    /// not happen (the cluster stays degraded and says why). Default 16Mi.
    #[serde(default = "default_max_lag")]
    pub max_lag_on_failover: String,
    /// Whether Shoal fails over at all. Default true.
    #[serde(default = "yes")]
    pub auto_failover: bool,
}

fn default_max_lag() -> String {
    "16Mi".into()
}

fn yes() -> bool {
    true
}

impl Default for HaSpec {
    fn default() -> Self {
        HaSpec {
            mode: ReplicationMode::Async,
            sync_quorum: 1,
            max_lag_on_failover: default_max_lag(),
            auto_failover: true,
        }
    }
}

/// Replication mode of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    #[default]
    Async,
    Sync,
}

/// Resources per instance, as users write them: CPU "500m" or "2", memory and storage
/// "512Mi", "4Gi", "10G".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub storage: Option<String>,
}

// ---- Backups -------------------------------------------------------------------------

/// How to reach a repository. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RepoSpec {
    /// A directory on this machine (or a mounted network file system).
    Fs { path: PathBuf },
    /// An S3-compatible bucket.
    S3 {
        /// `http(s)://host:port` of an S3-compatible server; none: AWS S3 of `region`.
        #[serde(default)]
        endpoint: Option<String>,
        bucket: String,
        #[serde(default = "default_region")]
        region: String,
        /// Key prefix inside the bucket (a folder).
        #[serde(default)]
        prefix: Option<String>,
        access_key_id: String,
        secret_access_key: String,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

impl RepoSpec {
    /// Check the spec without touching the network or the disk.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            RepoSpec::Fs { path } => {
                if !path.is_absolute() {
                    return Err(format!(
                        "fs repository path {} must be absolute",
                        path.display()
                    ));
                }
            }
            RepoSpec::S3 {
                endpoint,
                bucket,
                region,
                prefix,
                access_key_id,
                secret_access_key,
            } => {
                if let Some(e) = endpoint {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        return Err(format!(
                            "s3 endpoint {e:?} must start with http:// or https://"
                        ));
                    }
                }
                let ok_bucket = (3..=63).contains(&bucket.len())
                    && bucket.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    });
                if !ok_bucket {
                    return Err(format!(
                        "s3 bucket {bucket:?} must be 3 to 63 lowercase letters, digits, '-' or '.'"
                    ));
                }
                if region.is_empty() {
                    return Err("s3 region must not be empty".into());
                }
                if prefix.as_deref().is_some_and(|p| p.contains("..")) {
                    return Err("s3 prefix must not contain '..'".into());
                }
                if access_key_id.is_empty() || secret_access_key.is_empty() {
                    return Err("s3 needs an access key id and a secret access key".into());
                }
            }
        }
        Ok(())
    }

    /// Where it is, without secrets.
    pub fn describe(&self) -> String {
        match self {
            RepoSpec::Fs { path } => format!("fs {}", path.display()),
            RepoSpec::S3 {
                endpoint,
                bucket,
                prefix,
                ..
            } => format!(
                "s3 {}/{bucket}{}",
                endpoint.as_deref().unwrap_or("aws"),
                prefix
                    .as_deref()
                    .map(|p| format!("/{p}"))
                    .unwrap_or_default()
            ),
        }
    }
}

impl std::fmt::Debug for RepoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoSpec({})", self.describe())
    }
}

/// A backup repository as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoView {
    pub name: String,
    /// Where it is, without secrets.
    pub location: String,
    /// Backups go here when a request names no repository.
    pub default: bool,
    /// Backups recorded in it.
    pub backups: u32,
}

/// What a repository check measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoCheckView {
    pub name: String,
    pub location: String,
    pub write_ms: u64,
    pub read_ms: u64,
    pub delete_ms: u64,
}

/// One stored object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupObjectView {
    pub key: String,
    /// Bytes before compression.
    pub size: u64,
    /// Bytes stored (zstd).
    pub stored_size: u64,
    pub sha256: String,
}

/// A backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupView {
    pub id: String,
    pub cluster: String,
    pub repo: String,
    pub method: String,
    /// The method's kind: full, logical, …
    pub kind: String,
    /// running, completed, failed, deleted.
    pub state: String,
    pub reason: Option<String>,
    pub started_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
    pub engine: String,
    pub engine_version: String,
    pub addon_version: String,
    pub addon_digest: String,
    pub source_instance: String,
    pub start_position: Option<String>,
    pub end_position: Option<String>,
    pub size: u64,
    pub stored_size: u64,
    pub objects: Vec<BackupObjectView>,
    /// `manual` (asked for by a user) or `schedule` (taken by the cluster's schedule).
    /// Retention deletes only the schedule's own backups unless it was set with
    /// `--include-manual`; a manual backup is kept until it is deleted.
    #[serde(default = "manual")]
    pub origin: String,
    /// The last restore test (`backup verify --restore`), if any.
    #[serde(default)]
    pub restore_test: Option<RestoreTestView>,
}

fn manual() -> String {
    "manual".into()
}

/// What a restore test proved: the backup was restored into a throwaway instance, which
/// started and answered its engine's health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTestView {
    pub at_unix_ms: i64,
    /// Whether the restored instance started and was healthy.
    pub passed: bool,
    /// What happened (the probe's detail, or why it failed).
    pub detail: String,
    /// Milliseconds from the first byte read to a healthy probe.
    pub ms: u64,
}

/// A backup schedule of one cluster and method, with its retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub cluster: String,
    pub method: String,
    /// Repository (none: the default one when it fires).
    pub repo: Option<String>,
    /// Cron expression: 5 fields (minute hour day month weekday), or 6 with seconds first; UTC.
    pub cron: String,
    /// Completed backups of this cluster and method to keep (the newest).
    pub keep: Option<u32>,
    /// Delete completed backups older than this (`30d`, `12h`, `90m`, `45s`).
    pub max_age: Option<String>,
    /// Keep every point in time of this last stretch restorable (`7d`): the backup a restore
    /// to its oldest moment starts from is never deleted, whatever `keep` and `max_age` say.
    #[serde(default)]
    pub pitr_window: Option<String>,
    /// When it fires next (Unix ms).
    #[serde(default)]
    pub next_unix_ms: i64,
    /// Whether retention also deletes manual backups of the cluster and method (default: it
    /// deletes only the schedule's own).
    #[serde(default)]
    pub include_manual: bool,
    /// Whether every backup the schedule takes is restore-tested at once (`backup verify
    /// --restore`); a failed test is an error event and the backup is marked untested.
    #[serde(default)]
    pub verify: bool,
}

/// One parameter of a cluster as `shoal cluster config` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigParamView {
    pub name: String,
    /// The effective value as text (none: the engine's own default applies).
    pub value: Option<String>,
    /// `user` (set on the cluster), `default` (the addon's schema default) or `derived` (the
    /// addon derives it from the resources or other parameters).
    pub source: String,
    /// `dynamic`, `restart` or `immutable`.
    pub apply: String,
    pub description: String,
}

/// The configuration of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    pub cluster: String,
    /// Version in the cluster's configuration history.
    pub version: u32,
    pub resources: ResourceSpec,
    pub params: Vec<ConfigParamView>,
}

/// One parameter changing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChangeView {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
    /// `dynamic` (applied live) or `restart` (a rolling restart).
    pub effect: String,
}

/// What a configuration change does; with the operation that does it unless a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPlanView {
    pub cluster: String,
    pub changes: Vec<ConfigChangeView>,
    /// Resources before and after (equal unless resized).
    pub resources_from: ResourceSpec,
    pub resources_to: ResourceSpec,
    /// Whether the instances restart (one at a time, with a switchover for the primary).
    pub restart: bool,
    /// Whether the primary restarts first, in place (writes pause for its restart): a limit
    /// replicas may not hold lower than their primary is being lowered.
    #[serde(default)]
    pub primary_first: bool,
    pub op: Option<OpView>,
}

/// What a change of the number of instances does; with the operation unless a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalePlanView {
    pub cluster: String,
    pub from: u32,
    pub to: u32,
    /// Instances that would be added (by name) or removed (newest replicas first; never the
    /// primary).
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub op: Option<OpView>,
}

/// One version of a cluster's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersionView {
    pub version: u32,
    pub at_unix_ms: i64,
    pub parameters: BTreeMap<String, String>,
    pub resources: ResourceSpec,
    /// What made it ("created", "set work_mem=16MB", "rollback to 2", "resize memory=2Gi").
    pub reason: String,
}

/// Continuous archiving of one cluster (WAL segments, binlog files) into a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveView {
    pub cluster: String,
    pub repo: String,
    /// The addon's continuous backup method.
    pub method: String,
    /// Whether units are being shipped now (off: the stored ones are kept for restores).
    pub enabled: bool,
    /// When archiving was (last) switched on.
    pub since_unix_ms: i64,
    /// Units stored, their bytes before and after compression.
    pub units: u64,
    pub size: u64,
    pub stored_size: u64,
    pub first_unit: Option<String>,
    pub last_unit: Option<String>,
    /// When the newest unit was stored.
    pub last_stored_unix_ms: Option<i64>,
    /// The last shipping failure, until a unit ships again.
    pub error: Option<String>,
}

/// One stored unit of a continuous archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveUnitView {
    pub name: String,
    /// The instance it was shipped from.
    pub instance: String,
    /// The repository holding it.
    pub repo: String,
    pub stored_unix_ms: i64,
    pub start_position: Option<String>,
    pub end_position: Option<String>,
    pub end_unix_ms: Option<u64>,
    pub object: BackupObjectView,
    /// When the archiving that shipped it was (last) switched on: the archive is continuous
    /// only from there (what the engine wrote while it was off is not in it).
    #[serde(default)]
    pub archiving_since_unix_ms: Option<i64>,
}

/// The result of verifying a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyView {
    pub id: String,
    /// Every object read whole, its checksum and its compression frames checked.
    pub objects: Vec<BackupObjectView>,
    pub bytes: u64,
    pub ms: u64,
    /// With `--restore`: the restore test (it passed, or the request failed).
    #[serde(default)]
    pub restore_test: Option<RestoreTestView>,
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Is the daemon there? Answers with [`ServerInfo`].
    Ping,
    /// The engines the daemon has loaded.
    Engines,
    /// Create a cluster; answers with the [`OpView`] of the create operation.
    Create {
        spec: ClusterSpec,
    },
    /// Delete a cluster; `purge` removes its data too.
    Delete {
        name: String,
        purge: bool,
    },
    /// Remove the data and credentials kept by earlier `delete` (without `--purge`) of
    /// clusters named `name`; answers with the directories removed.
    PurgeKept {
        name: String,
    },
    Stop {
        name: String,
    },
    Start {
        name: String,
    },
    /// Rolling restart: replicas first, the primary last.
    Restart {
        name: String,
    },
    /// Change the number of instances; answers with a [`ScalePlanView`] (with the operation
    /// unless `dry_run`).
    Scale {
        name: String,
        replicas: u32,
        #[serde(default)]
        dry_run: bool,
    },
    List,
    Describe {
        name: String,
    },
    /// Recent events of a cluster.
    Events {
        name: String,
        limit: u32,
    },
    /// Read every running instance's metrics now (the addon's `metrics` hook).
    Metrics {
        name: String,
    },
    /// Store a marker (a small key/value kept apart from users' data) through the addon's
    /// `write-marker` hook on the member that takes writes; answered once the engine
    /// acknowledged it. The conformance kit counts lost writes with these.
    MarkerWrite {
        name: String,
        key: String,
        value: String,
    },
    /// How the hook calls of engine `engine`'s addon went since it was loaded: per hook,
    /// calls, failures, deadline hits, the longest and mean call against its deadline.
    HookStats {
        engine: String,
    },
    /// Read markers back through `read-markers` on the member that takes writes, or on
    /// `instance`.
    MarkerRead {
        name: String,
        keys: Vec<String>,
        #[serde(default)]
        instance: Option<String>,
    },
    /// The last `lines` lines of an instance's log (all instances when none), then new lines
    /// while `follow`.
    Logs {
        name: String,
        instance: Option<String>,
        lines: u32,
        follow: bool,
    },
    /// Connection details of a cluster's primary.
    Connect {
        name: String,
    },
    /// Rotate the password of the account users get: to `password`, or a new random one.
    /// Answers with the [`OpView`] of the operation that sets it on every instance.
    Password {
        name: String,
        #[serde(default)]
        password: Option<String>,
    },
    /// Stream the events of an operation's cluster until the operation ends; answers with the
    /// final [`OpView`].
    Wait {
        op: i64,
    },
    /// Add a backup repository (`default`: the one backups go to unless told).
    RepoAdd {
        name: String,
        spec: RepoSpec,
        default: bool,
    },
    RepoList,
    /// Write, read back and delete a probe object.
    RepoCheck {
        name: String,
    },
    /// Forget a repository that holds no backups.
    RepoRemove {
        name: String,
    },
    /// Back up a cluster; answers with the [`OpView`] of the backup operation.
    BackupCreate {
        cluster: String,
        method: Option<String>,
        repo: Option<String>,
    },
    BackupList {
        cluster: Option<String>,
    },
    BackupDescribe {
        id: String,
    },
    /// Delete a backup's objects and its record.
    BackupDelete {
        id: String,
    },
    /// Read every object of a backup and check it; answers with a [`VerifyView`].
    /// Check a backup's objects; with `restore`, also restore it into a throwaway instance
    /// and check that it starts healthy (events stream while it runs).
    BackupVerify {
        id: String,
        #[serde(default)]
        restore: bool,
    },
    /// The cluster's parameters: effective values, their source and apply class.
    ConfigShow {
        name: String,
    },
    /// Set and unset parameters in one validated, transactional change; answers with a
    /// [`ConfigPlanView`] (with the operation unless `dry_run`).
    ConfigSet {
        name: String,
        #[serde(default)]
        set: BTreeMap<String, String>,
        #[serde(default)]
        unset: Vec<String>,
        #[serde(default)]
        dry_run: bool,
    },
    ConfigHistory {
        name: String,
    },
    /// Go back to version `to` (default: the one before the current).
    ConfigRollback {
        name: String,
        to: Option<u32>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Change the resources of every instance (a rolling restart; memory-derived settings
    /// follow).
    Resize {
        name: String,
        cpu: Option<String>,
        memory: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Switch continuous archiving of a cluster on (into `repo`, else the default one) or
    /// off; answers with the [`ArchiveView`].
    ArchiveSet {
        cluster: String,
        repo: Option<String>,
        on: bool,
    },
    ArchiveList {
        cluster: Option<String>,
    },
    /// Create or replace the schedule of (`schedule.cluster`, `schedule.method`).
    ScheduleSet {
        schedule: ScheduleView,
    },
    /// Remove a schedule.
    ScheduleRemove {
        cluster: String,
        method: String,
    },
    ScheduleList {
        cluster: Option<String>,
    },
    /// Create cluster `name` from backup `backup`; answers with the create [`OpView`].
    Restore {
        name: String,
        backup: String,
        replicas: Option<u32>,
        /// Replay the cluster's continuous archive on top of the backup up to this moment.
        #[serde(default)]
        to_unix_ms: Option<i64>,
    },
    /// Planned change of primary, to `to` or the best replica.
    Switchover {
        name: String,
        to: Option<String>,
    },
    /// Re-seed a replica from the primary (rewind, else a fresh copy).
    Rebuild {
        name: String,
        instance: String,
    },
    /// Lost quorum: restart the most advanced member alone as a new one-member cluster
    /// keeping its data, then add the others back with fresh data. `force_new_cluster`
    /// must be true (writes only the lost members had are gone).
    Recover {
        name: String,
        #[serde(default)]
        force_new_cluster: bool,
    },
}

/// One line from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(ApiError),
    Event(EventView),
    Log(LogLine),
}

/// What kind of error, so the CLI can choose an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request was wrong; nothing changed.
    Invalid,
    NotFound,
    /// It conflicts with existing state (duplicate name, data left over, busy).
    Conflict,
    /// What was asked for was done and found a problem (a backup that does not verify).
    Failed,
    /// The daemon failed.
    Internal,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn invalid(m: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorKind::Invalid,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorKind::NotFound,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorKind::Conflict,
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorKind::Internal,
            message: m.into(),
        }
    }
    pub fn failed(m: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorKind::Failed,
            message: m.into(),
        }
    }
}

/// About the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub home: String,
    pub pid: u32,
    /// Whether resource limits are enforced, and if not why.
    pub resource_limits: String,
    /// The OS user engines run as.
    pub engine_user: String,
    /// This host's name in the coordination store's manager leases.
    #[serde(default)]
    pub host_id: String,
}

/// A loaded engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineView {
    pub engine: String,
    pub display_name: String,
    pub versions: Vec<String>,
    pub default_version: String,
    pub addon_version: String,
    pub digest: String,
    pub origin: String,
}

/// State of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Pending => "pending",
            OpState::Running => "running",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<OpState> {
        [
            OpState::Pending,
            OpState::Running,
            OpState::Succeeded,
            OpState::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// Whether the operation has ended.
    pub fn is_final(self) -> bool {
        matches!(self, OpState::Succeeded | OpState::Failed)
    }
}

/// An operation on a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpView {
    pub id: i64,
    pub cluster: String,
    /// create, delete, stop, start, restart, scale.
    pub kind: String,
    pub state: OpState,
    /// Why it failed (or what it is doing).
    pub reason: Option<String>,
    pub created_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
}

/// One instance of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub name: String,
    /// Role the host assigned (primary / replica).
    pub role: String,
    /// pending, initializing, starting, running, stopping, stopped, crashed, failed.
    pub state: String,
    pub pid: Option<u32>,
    pub host: String,
    pub ports: BTreeMap<String, u16>,
    /// Health from the last probe (healthy, degraded, unhealthy, starting, unknown).
    pub health: String,
    /// Role the last probe reported.
    pub observed_role: Option<String>,
    pub writable: Option<bool>,
    pub lag_bytes: Option<u64>,
    pub detail: String,
    pub restarts: u32,
    pub data_dir: String,
    pub log_file: String,
    pub probed_unix_ms: Option<i64>,
    /// Engine term/timeline the last probe reported.
    pub term: Option<u64>,
    /// Change-log position the last probe reported.
    pub position: Option<u64>,
    /// In a sharded cluster, the instance's shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
}

/// A cluster, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Never reused, not even after the cluster is deleted.
    #[serde(default)]
    pub uid: i64,
    /// The OS user its engine runs as (none: the host's engine user).
    #[serde(default)]
    pub os_user: Option<String>,
    pub name: String,
    pub engine: String,
    pub version: String,
    pub replicas: u32,
    /// creating, running, degraded, stopped, failed, deleting, updating.
    pub state: String,
    pub resources: ResourceSpec,
    /// Whether resource limits are enforced for it, and if not why.
    pub resource_limits: String,
    pub parameters: BTreeMap<String, String>,
    pub instances: Vec<InstanceView>,
    pub addon_digest: String,
    pub created_unix_ms: i64,
    /// The last operation.
    pub last_op: Option<OpView>,
    pub ha: HaSpec,
    /// How it is kept available: "primary-replica" (Shoal elects, fences, promotes),
    /// "quorum" (the engine elects its leader) or "sharded" (shards the engine fails over).
    #[serde(default)]
    pub topology: String,
    /// A quorum's state in one line: "quorum 3/3, leader etcd-1".
    #[serde(default)]
    pub quorum: Option<String>,
    /// A sharded cluster's shards in one line: "3 shards: shard 0 2/2, primary r-s0-0; …".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<String>,
    /// The elected leader and its term (the fencing token), from the coordination store; in
    /// a quorum, the engine's leader and term as its members report them.
    pub leader: Option<String>,
    pub term: Option<u64>,
    /// The Shoal host whose manager lease of this cluster is live: the one that acts on it.
    #[serde(default)]
    pub manager: Option<String>,
    /// Stable endpoints: read-write (always the primary) and read-only (the replicas).
    pub read_write: Option<String>,
    pub read_only: Option<String>,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub unix_ms: i64,
    pub cluster: String,
    pub instance: Option<String>,
    /// info, warning, error.
    pub level: String,
    pub message: String,
}

/// Markers as one instance read them (`MarkerRead`), or the instance that acknowledged a
/// `MarkerWrite` (with no values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkersView {
    pub instance: String,
    /// One per key asked for, in order; `None` for a key the instance does not have.
    #[serde(default)]
    pub values: Vec<Option<String>>,
}

/// How one hook's calls went (`HookStats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatView {
    pub hook: String,
    pub calls: u64,
    pub failures: u64,
    /// Calls stopped at their deadline.
    pub deadline_hits: u64,
    pub max_ms: u64,
    pub mean_ms: u64,
    /// The hook's deadline.
    pub limit_ms: u64,
}

/// The metrics of one instance, as its addon read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceMetrics {
    pub instance: String,
    pub role: String,
    /// Samples; empty when `error` says why none could be read.
    pub samples: Vec<MetricSample>,
    pub error: Option<String>,
}

/// One metric sample in Prometheus form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub name: String,
    /// gauge or counter.
    pub kind: String,
    pub value: f64,
    pub labels: Vec<(String, String)>,
    pub help: String,
}

/// A log line of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance: String,
    pub line: String,
}

/// How to reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectInfo {
    pub cluster: String,
    pub instance: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Connection URI, when the engine has one.
    pub uri: Option<String>,
    /// A command that opens an interactive client, when the engine has one.
    pub shell: Vec<String>,
    /// The stable read-write endpoint (HOST:PORT), which follows the primary across
    /// failovers; `host`/`port` above are this endpoint when it exists.
    pub read_write: Option<String>,
    /// The stable read-only endpoint, spread over healthy replicas.
    pub read_only: Option<String>,
    /// The read-only endpoint's connection URI.
    pub read_only_uri: Option<String>,
}

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach shoal serve at {path}: {source} ({})",
        connect_hint(source)
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("connection to shoal serve lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("shoal serve sent something unreadable: {0}")]
    Protocol(String),
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// What to do about a socket that cannot be reached.
fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "the daemon runs, but its socket is its owner's alone: run this as the user that \
             started `shoal serve` (root for the default home)"
        }
        _ => "start it with `shoal serve`, or set SHOAL_HOME to its home",
    }
}

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connect to the daemon whose home is `home` (its socket there), or to the one whose
    /// socket `$SHOAL_SOCKET` names (a second host on a shared home listens on its own).
    pub async fn connect(home: &Path) -> Result<Client, ClientError> {
        let path = match std::env::var_os(SOCKET_ENV) {
            Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
            _ => home.join(SOCKET),
        };
        Client::connect_socket(&path).await
    }

    /// Connect to the daemon listening on socket `path` (whatever `$SHOAL_SOCKET` says).
    pub async fn connect_socket(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Send `req` and return the final answer, passing every streamed line to `each`.
    pub async fn call(
        &mut self,
        req: &Request,
        mut each: impl FnMut(&Reply),
    ) -> Result<serde_json::Value, ClientError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        loop {
            let mut buf = String::new();
            if self.reader.read_line(&mut buf).await? == 0 {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "shoal serve closed the connection",
                )));
            }
            let reply: Reply = serde_json::from_str(&buf)
                .map_err(|e| ClientError::Protocol(format!("{e}: {buf}")))?;
            match reply {
                Reply::Ok(v) => return Ok(v),
                Reply::Error(e) => return Err(ClientError::Api(e)),
                other => each(&other),
            }
        }
    }

    /// Send `req` and decode the final answer as `T`.
    pub async fn call_as<T: serde::de::DeserializeOwned>(
        &mut self,
        req: &Request,
        each: impl FnMut(&Reply),
    ) -> Result<T, ClientError> {
        let v = self.call(req, each).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let r = Request::Scale {
            name: "pg".into(),
            replicas: 3,
            dry_run: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"request":"scale","name":"pg","replicas":3,"dry_run":false}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let e = Reply::Error(ApiError::invalid("bad"));
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), e);
    }

    #[test]
    fn specs_default_to_one_replica_and_refuse_unknown_fields() {
        let s: ClusterSpec = serde_json::from_str(r#"{"name":"a","engine":"postgresql"}"#).unwrap();
        assert_eq!(s.replicas, 1);
        assert!(
            serde_json::from_str::<ClusterSpec>(r#"{"name":"a","engine":"x","replica":3}"#)
                .is_err()
        );
    }
}
