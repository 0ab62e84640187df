//! The embedded state store: SQLite in `<home>/state.db` (WAL mode, synchronous writes),
//! schema versions applied by numbered migrations in one transaction each. It holds clusters,
//! instances (with their port reservations and process identities), operations and events.
//! Secrets are not here (see `secrets`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use shoal_api::{ClusterSpec, EventView, OpState, OpView};
use shoal_local::ProcessId;

/// Schema migrations, in order; the database's `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        engine TEXT NOT NULL,
        version TEXT NOT NULL,
        spec TEXT NOT NULL,
        addon_digest TEXT NOT NULL,
        state TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE instances (
        cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        ordinal INTEGER NOT NULL,
        role TEXT NOT NULL,
        host TEXT NOT NULL,
        ports TEXT NOT NULL,
        dir TEXT NOT NULL,
        desired TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        start_time INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        health TEXT NOT NULL DEFAULT 'unknown',
        observed_role TEXT,
        writable INTEGER,
        lag_bytes INTEGER,
        position INTEGER,
        detail TEXT NOT NULL DEFAULT '',
        probed_ms INTEGER,
        PRIMARY KEY (cluster, name)
     );
     CREATE TABLE ports (
        port INTEGER PRIMARY KEY,
        cluster TEXT NOT NULL,
        instance TEXT NOT NULL
     );
     CREATE TABLE ops (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster TEXT NOT NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        created_ms INTEGER NOT NULL,
        finished_ms INTEGER
     );
     CREATE INDEX ops_cluster ON ops(cluster, id);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster TEXT NOT NULL,
        instance TEXT,
        ms INTEGER NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
     );
     CREATE INDEX events_cluster ON events(cluster, id);",
    // 2: the engine term each probe reports (stable endpoints reserve ports under the
    // instance names "@rw" and "@ro").
    "ALTER TABLE instances ADD COLUMN term INTEGER;",
    // 3: backups. The view holds what `describe` shows; the manifest is the one stored next
    // to the backup's objects. `spec` is the cluster spec at backup time (for restores).
    "CREATE TABLE backups (
        id TEXT PRIMARY KEY,
        cluster TEXT NOT NULL,
        repo TEXT NOT NULL,
        state TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        view TEXT NOT NULL,
        manifest TEXT,
        spec TEXT NOT NULL
     );
     CREATE INDEX backups_cluster ON backups(cluster, started_ms);",
    // 4: backup schedules, one per cluster and method.
    "CREATE TABLE schedules (
        cluster TEXT NOT NULL,
        method TEXT NOT NULL,
        view TEXT NOT NULL,
        next_ms INTEGER NOT NULL,
        PRIMARY KEY (cluster, method)
     );",
    // 5: continuous archiving: one row per archived cluster (its settings), one per stored
    // unit (WAL segment, binlog file) with its checksum.
    "CREATE TABLE archives (
        cluster TEXT PRIMARY KEY,
        view TEXT NOT NULL
     );
     CREATE TABLE archive_units (
        cluster TEXT NOT NULL,
        name TEXT NOT NULL,
        stored_ms INTEGER NOT NULL,
        view TEXT NOT NULL,
        PRIMARY KEY (cluster, name)
     );
     CREATE INDEX archive_units_time ON archive_units(cluster, stored_ms);",
    // 6: configuration history, one row per applied version of a cluster's parameters and
    // resources.
    "CREATE TABLE config_versions (
        cluster TEXT NOT NULL,
        version INTEGER NOT NULL,
        view TEXT NOT NULL,
        PRIMARY KEY (cluster, version)
     );",
    // 7: every cluster ever created gets a uid that is never reused (the registry keeps
    // deleted clusters as tombstones), and what belongs to one cluster (events, operations,
    // backups, schedules, archive settings and units) carries it: a new cluster with a
    // deleted one's name inherits nothing. Names of clusters deleted before this version
    // get one tombstone each. Schedules and archive settings of deleted clusters go.
    "CREATE TABLE registry (
        uid INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        engine TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        deleted_ms INTEGER,
        kept_dir TEXT,
        os_user TEXT
     );
     CREATE UNIQUE INDEX registry_live ON registry(name) WHERE deleted_ms IS NULL;
     INSERT INTO registry (name, engine, created_ms)
        SELECT name, engine, created_ms FROM clusters ORDER BY created_ms, name;
     INSERT INTO registry (name, engine, created_ms, deleted_ms)
        SELECT DISTINCT cluster, '', 0, 0 FROM (
            SELECT cluster FROM events UNION SELECT cluster FROM ops
            UNION SELECT cluster FROM backups UNION SELECT cluster FROM archive_units)
        WHERE cluster NOT IN (SELECT name FROM clusters);
     ALTER TABLE clusters ADD COLUMN uid INTEGER NOT NULL DEFAULT 0;
     UPDATE clusters SET uid = (SELECT r.uid FROM registry r WHERE r.name = clusters.name);
     CREATE UNIQUE INDEX clusters_uid ON clusters(uid);
     ALTER TABLE events ADD COLUMN cluster_uid INTEGER NOT NULL DEFAULT 0;
     UPDATE events SET cluster_uid = (SELECT r.uid FROM registry r WHERE r.name = events.cluster);
     CREATE INDEX events_uid ON events(cluster_uid, id);
     ALTER TABLE ops ADD COLUMN cluster_uid INTEGER NOT NULL DEFAULT 0;
     UPDATE ops SET cluster_uid = (SELECT r.uid FROM registry r WHERE r.name = ops.cluster);
     UPDATE ops SET state = 'failed', reason = 'its cluster was deleted'
        WHERE state IN ('pending', 'running') AND cluster NOT IN (SELECT name FROM clusters);
     CREATE INDEX ops_uid ON ops(cluster_uid, id);
     ALTER TABLE backups ADD COLUMN cluster_uid INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE backups ADD COLUMN origin TEXT NOT NULL DEFAULT 'manual';
     UPDATE backups SET cluster_uid = (SELECT r.uid FROM registry r WHERE r.name = backups.cluster);
     DELETE FROM schedules WHERE cluster NOT IN (SELECT name FROM clusters);
     ALTER TABLE schedules ADD COLUMN cluster_uid INTEGER NOT NULL DEFAULT 0;
     UPDATE schedules SET cluster_uid = (SELECT c.uid FROM clusters c WHERE c.name = schedules.cluster);
     DELETE FROM archives WHERE cluster NOT IN (SELECT name FROM clusters);
     CREATE TABLE units (
        cluster_uid INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        name TEXT NOT NULL,
        stored_ms INTEGER NOT NULL,
        view TEXT NOT NULL,
        PRIMARY KEY (cluster_uid, name)
     );
     INSERT INTO units (cluster_uid, cluster, name, stored_ms, view)
        SELECT (SELECT r.uid FROM registry r WHERE r.name = u.cluster), cluster, name, stored_ms, view
        FROM archive_units u;
     DROP TABLE archive_units;
     CREATE INDEX units_time ON units(cluster_uid, stored_ms);",
    // The shard of an instance in a sharded cluster.
    "ALTER TABLE instances ADD COLUMN shard INTEGER;",
    // An operation run as a step of another (a roll's switchover) names that one.
    "ALTER TABLE ops ADD COLUMN parent INTEGER;",
];

/// Where a cluster is, as a whole. Operations own `Creating`, `Updating`, `Stopped`,
/// `Deleting` and `Failed`; the supervisor owns `Running`, `Degraded` and `QuorumLost`
/// (from its probes, [`ClusterState::observed`]) and never overwrites an operation's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Its create operation is under way.
    Creating,
    /// Every instance that should run does, healthy.
    Running,
    /// Some instance that should run does not, or is unhealthy.
    Degraded,
    /// A quorum cluster without a majority of voting members: it takes no writes.
    QuorumLost,
    /// An operation is changing it (scale, restart, parameters, rebuild, …).
    Updating,
    /// Stopped on request.
    Stopped,
    /// Being deleted.
    Deleting,
    /// An operation failed and left it as it was; see its events.
    Failed,
}

impl ClusterState {
    /// The stored (and shown) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Creating => "creating",
            ClusterState::Running => "running",
            ClusterState::Degraded => "degraded",
            ClusterState::QuorumLost => "quorum-lost",
            ClusterState::Updating => "updating",
            ClusterState::Stopped => "stopped",
            ClusterState::Deleting => "deleting",
            ClusterState::Failed => "failed",
        }
    }

    /// The state stored as `s`; an unknown name (a newer Shoal's) reads as degraded, which
    /// the supervisor settles from its next probes.
    pub fn parse(s: &str) -> ClusterState {
        match s {
            "creating" => ClusterState::Creating,
            "running" => ClusterState::Running,
            "quorum-lost" => ClusterState::QuorumLost,
            "updating" => ClusterState::Updating,
            "stopped" => ClusterState::Stopped,
            "deleting" => ClusterState::Deleting,
            "failed" => ClusterState::Failed,
            _ => ClusterState::Degraded,
        }
    }

    /// Whether the supervisor sets this state from its probes (an operation's state it
    /// leaves alone).
    pub fn is_observed(self) -> bool {
        matches!(
            self,
            ClusterState::Running | ClusterState::Degraded | ClusterState::QuorumLost
        )
    }

    /// The state the probes say: quorum lost above all, else running when every instance
    /// that should run does and is healthy, else degraded.
    pub fn observed(all_serving: bool, quorum_lost: bool) -> ClusterState {
        if quorum_lost {
            ClusterState::QuorumLost
        } else if all_serving {
            ClusterState::Running
        } else {
            ClusterState::Degraded
        }
    }
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role the host gives an instance row (what it *observed* the engine doing is the
/// probe's `observed_role`, named by the addon's manifest). Primary and replica are role
/// names every primary-replica and sharded manifest declares (the loader checks: `primary`
/// writable and exclusive, `replica` not writable); a quorum or shard member's leader is
/// the engine's to elect, so its row says only that it is a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The writable primary the host elected (primary-replica family).
    Primary,
    /// A read-only replica of the primary (primary-replica family).
    Replica,
    /// A voting member of a quorum; the engine elects the leader.
    Member,
    /// A member of one shard's replica group; the engine fails the shard over.
    ShardMember,
}

impl Role {
    /// The stored name, and the role name hooks see in `instance.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Member => "member",
            Role::ShardMember => "shard-member",
        }
    }

    /// The role stored as `s`; an unknown name (a newer Shoal's) reads as a replica, which
    /// the host neither writes to nor fences.
    pub fn parse(s: &str) -> Role {
        match s {
            "primary" => Role::Primary,
            "member" => Role::Member,
            "shard-member" => Role::ShardMember,
            _ => Role::Replica,
        }
    }

    /// Whether the engine, not the host, decides who leads (a quorum or shard member): the
    /// host never promotes, fences or records a leader for it.
    pub fn engine_elected(self) -> bool {
        matches!(self, Role::Member | Role::ShardMember)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance is in its life, as the host last set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Allocated, never started.
    Pending,
    /// Its `init` commands run (an empty data directory being seeded).
    Initializing,
    /// Started, not yet ready.
    Starting,
    /// Ready and serving.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped on purpose.
    Stopped,
    /// Its process exited without being asked to; the supervisor restarts it.
    Crashed,
    /// A start or restore failed; left alone until an operation acts on it.
    Failed,
    /// Killed and kept down so it cannot take writes (a failed-over primary).
    Fenced,
    /// Being copied afresh from the primary.
    Rebuilding,
    /// Taking part in a switchover.
    Switching,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Initializing => "initializing",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Crashed => "crashed",
            Phase::Failed => "failed",
            Phase::Fenced => "fenced",
            Phase::Rebuilding => "rebuilding",
            Phase::Switching => "switching",
        }
    }

    /// The phase stored as `s`; an unknown name (a newer Shoal's) reads as crashed, which
    /// the supervisor restarts.
    pub fn parse(s: &str) -> Phase {
        match s {
            "pending" => Phase::Pending,
            "initializing" => Phase::Initializing,
            "starting" => Phase::Starting,
            "running" => Phase::Running,
            "stopping" => Phase::Stopping,
            "stopped" => Phase::Stopped,
            "failed" => Phase::Failed,
            "fenced" => Phase::Fenced,
            "rebuilding" => Phase::Rebuilding,
            "switching" => Phase::Switching,
            _ => Phase::Crashed,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an instance's last probe said of its health (`unknown` before any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    /// Serving in its role.
    Healthy,
    /// Serving, but something is off.
    Degraded,
    /// Not serving (or its probe failed).
    Unhealthy,
    /// Starting up or recovering.
    Starting,
}

impl Health {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
            Health::Starting => "starting",
        }
    }

    /// The health stored as `s` (anything else reads as unknown).
    pub fn parse(s: &str) -> Health {
        match s {
            "healthy" => Health::Healthy,
            "degraded" => Health::Degraded,
            "unhealthy" => Health::Unhealthy,
            "starting" => Health::Starting,
            _ => Health::Unknown,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backup as stored.
#[derive(Debug, Clone)]
pub struct BackupRow {
    pub view: shoal_api::BackupView,
    /// Set once the backup completed.
    pub manifest: Option<shoal_backup::Manifest>,
    /// The cluster's spec when the backup was taken.
    pub spec: ClusterSpec,
    /// The uid of the cluster it was taken of.
    pub cluster_uid: i64,
}

fn backup_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<BackupRow>> {
    let view: String = r.get(0)?;
    let manifest: Option<String> = r.get(1)?;
    let spec: String = r.get(2)?;
    let cluster_uid: i64 = r.get(3)?;
    Ok((|| {
        Ok(BackupRow {
            view: serde_json::from_str(&view)?,
            manifest: manifest.as_deref().map(serde_json::from_str).transpose()?,
            spec: serde_json::from_str(&spec)?,
            cluster_uid,
        })
    })())
}

/// Instance name under which a cluster's read-write endpoint port is reserved.
pub const RW_ENDPOINT: &str = "@rw";
/// Instance name under which a cluster's read-only endpoint port is reserved.
pub const RO_ENDPOINT: &str = "@ro";

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or holds something unreadable.
    #[error("state store: {0}")]
    Failed(String),
    /// A name or port that must be unique is taken (another request got there first).
    #[error("{0}")]
    Taken(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Failed(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Failed(format!("bad stored JSON: {e}"))
    }
}

/// Whether `e` is a UNIQUE or PRIMARY KEY violation.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A cluster as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRow {
    pub name: String,
    pub engine: String,
    pub version: String,
    pub spec: ClusterSpec,
    pub addon_digest: String,
    pub state: ClusterState,
    pub created_ms: i64,
    /// Never reused, not even after the cluster is deleted (see the registry).
    pub uid: i64,
    /// The OS user its engine processes run as (none: the host's engine user).
    pub os_user: Option<String>,
}

/// A deleted cluster as the registry remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tombstone {
    pub uid: i64,
    pub name: String,
    pub engine: String,
    pub deleted_ms: Option<i64>,
    /// Where its data was kept (none: purged).
    pub kept_dir: Option<PathBuf>,
    pub os_user: Option<String>,
}

/// Whether an instance should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub cluster: String,
    pub name: String,
    pub ordinal: u32,
    /// Role the host assigned.
    pub role: Role,
    pub host: String,
    pub ports: BTreeMap<String, u16>,
    /// The instance's directory (data/, config/, log/ inside).
    pub dir: PathBuf,
    pub desired: Desired,
    pub state: Phase,
    pub process: Option<ProcessId>,
    pub restarts: u32,
    pub health: Health,
    pub observed_role: Option<String>,
    pub writable: Option<bool>,
    pub lag_bytes: Option<u64>,
    pub position: Option<u64>,
    pub detail: String,
    pub probed_ms: Option<i64>,
    /// Engine term/timeline from the last probe.
    pub term: Option<u64>,
    /// In a sharded cluster, the instance's shard (fixed when it is allocated).
    pub shard: Option<u32>,
}

impl InstanceRow {
    /// A new member `name` (ordinal `ordinal`, role `role`) of `cluster` living in `dir`,
    /// on this host: meant to run, not started yet, no ports yet, nothing observed.
    pub fn new(cluster: &str, name: &str, ordinal: u32, role: Role, dir: PathBuf) -> InstanceRow {
        InstanceRow {
            cluster: cluster.into(),
            name: name.into(),
            ordinal,
            role,
            host: "127.0.0.1".into(),
            ports: Default::default(),
            dir,
            desired: Desired::Running,
            state: Phase::Pending,
            process: None,
            restarts: 0,
            health: Health::Unknown,
            observed_role: None,
            writable: None,
            lag_bytes: None,
            position: None,
            detail: String::new(),
            probed_ms: None,
            term: None,
            shard: None,
        }
    }
}

impl InstanceRow {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }
    /// Where the engine leaves finished archive units for the host to ship.
    pub fn archive_dir(&self) -> PathBuf {
        self.dir.join("archive")
    }
    /// Where a point-in-time restore stages the archive units it replays.
    pub fn staged_archive_dir(&self) -> PathBuf {
        self.dir.join("restore-archive")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log").join("server.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("server.pid")
    }
    /// The port clients use.
    pub fn client_port(&self) -> Option<u16> {
        self.ports
            .get("client")
            .copied()
            .or_else(|| self.ports.values().next().copied())
    }
}

/// The state database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Open (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| usize::try_from(v).unwrap_or(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Failed(format!(
                "the database is at schema version {version}, newer than this Shoal knows ({}); \
                 run a newer Shoal",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    // ----- clusters -----

    /// Insert a cluster (a new uid in the registry, never reused), the ports of its stable
    /// endpoints and its create operation in one transaction; returns (uid, op id). With
    /// `os_user_prefix`, the cluster's OS user is the prefix and its uid ("shoal-c17"). A name
    /// or port taken meanwhile (a concurrent request) is [`StoreError::Taken`].
    pub fn insert_cluster(
        &mut self,
        c: &ClusterRow,
        endpoints: Option<(u16, u16)>,
        op_params: &serde_json::Value,
        os_user_prefix: Option<&str>,
    ) -> Result<(i64, i64)> {
        let taken = |e: rusqlite::Error, what: String| {
            if is_unique_violation(&e) {
                StoreError::Taken(what)
            } else {
                e.into()
            }
        };
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO registry (name, engine, created_ms) VALUES (?1, ?2, ?3)",
            params![c.name, c.engine, c.created_ms],
        )
        .map_err(|e| taken(e, format!("a cluster named {:?} already exists", c.name)))?;
        let uid = tx.last_insert_rowid();
        let os_user = os_user_prefix.map(|p| format!("{p}{uid}"));
        tx.execute(
            "UPDATE registry SET os_user = ?2 WHERE uid = ?1",
            params![uid, os_user],
        )?;
        tx.execute(
            "INSERT INTO clusters (name, engine, version, spec, addon_digest, state, created_ms, uid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.name,
                c.engine,
                c.version,
                serde_json::to_string(&c.spec)?,
                c.addon_digest,
                c.state.as_str(),
                c.created_ms,
                uid
            ],
        )
        .map_err(|e| taken(e, format!("a cluster named {:?} already exists", c.name)))?;
        if let Some((rw, ro)) = endpoints {
            for (port, what) in [(rw, RW_ENDPOINT), (ro, RO_ENDPOINT)] {
                tx.execute(
                    "INSERT INTO ports (port, cluster, instance) VALUES (?1, ?2, ?3)",
                    params![port, c.name, what],
                )
                .map_err(|e| taken(e, format!("port {port} was taken meanwhile; try again")))?;
            }
        }
        tx.execute(
            "INSERT INTO ops (cluster, kind, params, state, created_ms, cluster_uid)
             VALUES (?1, 'create', ?2, 'pending', ?3, ?4)",
            params![c.name, op_params.to_string(), now_ms(), uid],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok((uid, id))
    }

    const CLUSTER_COLUMNS: &'static str = "c.name, c.engine, c.version, c.spec, c.addon_digest, \
        c.state, c.created_ms, c.uid, r.os_user FROM clusters c JOIN registry r ON r.uid = c.uid";

    fn cluster_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ClusterRow, String)> {
        let spec: String = r.get(3)?;
        Ok((
            ClusterRow {
                name: r.get(0)?,
                engine: r.get(1)?,
                version: r.get(2)?,
                spec: ClusterSpec::default(),
                addon_digest: r.get(4)?,
                state: ClusterState::parse(&r.get::<_, String>(5)?),
                created_ms: r.get(6)?,
                uid: r.get(7)?,
                os_user: r.get(8)?,
            },
            spec,
        ))
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRow>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {} WHERE c.name = ?1", Self::CLUSTER_COLUMNS),
                params![name],
                Self::cluster_from,
            )
            .optional()?;
        row.map(|(mut c, spec)| {
            c.spec = serde_json::from_str(&spec)?;
            Ok(c)
        })
        .transpose()
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {} ORDER BY c.name", Self::CLUSTER_COLUMNS))?;
        let rows = stmt.query_map([], Self::cluster_from)?;
        let mut out = Vec::new();
        for r in rows {
            let (mut c, spec) = r?;
            c.spec = serde_json::from_str(&spec)?;
            out.push(c);
        }
        Ok(out)
    }

    /// The uid of the live cluster `name`, else of the newest deleted one of that name (whose
    /// events and history are what `name` refers to then).
    pub fn uid_of(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT uid FROM registry WHERE name = ?1
                 ORDER BY deleted_ms IS NULL DESC, uid DESC LIMIT 1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Clusters of this name deleted without their data (kept at `kept_dir`).
    pub fn kept(&self, name: &str) -> Result<Vec<Tombstone>> {
        let mut st = self.conn.prepare(
            "SELECT uid, name, engine, deleted_ms, kept_dir, os_user FROM registry
             WHERE name = ?1 AND deleted_ms IS NOT NULL AND kept_dir IS NOT NULL ORDER BY uid",
        )?;
        let rows = st.query_map(params![name], |r| {
            Ok(Tombstone {
                uid: r.get(0)?,
                name: r.get(1)?,
                engine: r.get(2)?,
                deleted_ms: r.get(3)?,
                kept_dir: r.get::<_, Option<String>>(4)?.map(PathBuf::from),
                os_user: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// A registry entry for a throwaway instance that is no cluster (a restore test): its
    /// events get a uid of their own. Returns the uid.
    pub fn register_scratch(&self, name: &str, engine: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO registry (name, engine, created_ms) VALUES (?1, ?2, ?3)",
            params![name, engine, now_ms()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The throwaway instance of [`Self::register_scratch`] is gone.
    pub fn finish_scratch(&self, uid: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE registry SET deleted_ms = ?2 WHERE uid = ?1",
            params![uid, now_ms()],
        )?;
        Ok(())
    }

    /// Reserve `ports` for `instance` of `cluster` (a throwaway instance without a row).
    pub fn reserve_ports(&mut self, cluster: &str, instance: &str, ports: &[u16]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for p in ports {
            tx.execute(
                "INSERT INTO ports (port, cluster, instance) VALUES (?1, ?2, ?3)",
                params![p, cluster, instance],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Free every port reserved under `cluster`'s name.
    pub fn release_ports(&self, cluster: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM ports WHERE cluster = ?1", params![cluster])?;
        Ok(())
    }

    /// Forget where a deleted cluster's data was kept (it was purged).
    pub fn purged(&self, uid: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE registry SET kept_dir = NULL WHERE uid = ?1",
            params![uid],
        )?;
        Ok(())
    }

    pub fn set_cluster_state(&self, name: &str, state: ClusterState) -> Result<()> {
        self.conn.execute(
            "UPDATE clusters SET state = ?2 WHERE name = ?1",
            params![name, state.as_str()],
        )?;
        Ok(())
    }

    pub fn set_cluster_spec(&self, name: &str, spec: &ClusterSpec) -> Result<()> {
        self.conn.execute(
            "UPDATE clusters SET spec = ?2 WHERE name = ?1",
            params![name, serde_json::to_string(spec)?],
        )?;
        Ok(())
    }

    /// Remove a cluster with its instances, port reservations, configuration history, backup
    /// schedules and archive settings, and mark it deleted in the registry (its data kept at
    /// `kept_dir`, if any). Events, operations, backups and archive units stay under its uid.
    pub fn delete_cluster(&mut self, name: &str, kept_dir: Option<&Path>) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM ports WHERE cluster = ?1", params![name])?;
        tx.execute("DELETE FROM instances WHERE cluster = ?1", params![name])?;
        tx.execute(
            "DELETE FROM config_versions WHERE cluster = ?1",
            params![name],
        )?;
        tx.execute("DELETE FROM schedules WHERE cluster = ?1", params![name])?;
        tx.execute("DELETE FROM archives WHERE cluster = ?1", params![name])?;
        tx.execute(
            "UPDATE registry SET deleted_ms = ?2, kept_dir = ?3
             WHERE name = ?1 AND deleted_ms IS NULL",
            params![name, now_ms(), kept_dir.map(|d| d.display().to_string())],
        )?;
        tx.execute("DELETE FROM clusters WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(())
    }

    // ----- instances and ports -----

    /// Ports reserved by any instance.
    pub fn reserved_ports(&self) -> Result<BTreeSet<u16>> {
        let mut stmt = self.conn.prepare("SELECT port FROM ports")?;
        let ports = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        let mut out = BTreeSet::new();
        for p in ports {
            if let Ok(p) = u16::try_from(p?) {
                out.insert(p);
            }
        }
        Ok(out)
    }

    /// The stable endpoint ports of a cluster: (read-write, read-only).
    pub fn endpoints(&self, cluster: &str) -> Result<(Option<u16>, Option<u16>)> {
        let get = |what: &str| -> Result<Option<u16>> {
            Ok(self
                .conn
                .query_row(
                    "SELECT port FROM ports WHERE cluster = ?1 AND instance = ?2",
                    params![cluster, what],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .and_then(|p| u16::try_from(p).ok()))
        };
        Ok((get(RW_ENDPOINT)?, get(RO_ENDPOINT)?))
    }

    /// Insert an instance and reserve its ports, atomically.
    pub fn insert_instance(&mut self, i: &InstanceRow) -> Result<()> {
        let tx = self.conn.transaction()?;
        for port in i.ports.values() {
            tx.execute(
                "INSERT INTO ports (port, cluster, instance) VALUES (?1, ?2, ?3)",
                params![port, i.cluster, i.name],
            )?;
        }
        tx.execute(
            "INSERT INTO instances (cluster, name, ordinal, role, host, ports, dir, desired, state,
                                    shard)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                i.cluster,
                i.name,
                i.ordinal,
                i.role.as_str(),
                i.host,
                serde_json::to_string(&i.ports)?,
                i.dir.display().to_string(),
                i.desired.as_str(),
                i.state.as_str(),
                i.shard
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Write what the host decides about an instance: its role, desired state, phase,
    /// process and restart count. What probes observe is written by [`Self::record_observed`]
    /// alone (one writer per fact: an operation's save never overwrites a probe's finding,
    /// nor a probe an operation's decision).
    pub fn update_instance(&self, i: &InstanceRow) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET role = ?3, desired = ?4, state = ?5, pid = ?6, start_time = ?7,
                restarts = ?8
             WHERE cluster = ?1 AND name = ?2",
            params![
                i.cluster,
                i.name,
                i.role.as_str(),
                i.desired.as_str(),
                i.state.as_str(),
                i.process.map(|p| p.pid),
                i.process
                    .map(|p| i64::try_from(p.start_time).unwrap_or(i64::MAX)),
                i.restarts,
            ],
        )?;
        Ok(())
    }

    /// Write what was observed of an instance: health, role, writability, lag, position,
    /// term, the probe's detail and when.
    pub fn record_observed(&self, i: &InstanceRow) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET health = ?3, observed_role = ?4, writable = ?5, lag_bytes = ?6,
                position = ?7, detail = ?8, probed_ms = ?9, term = ?10
             WHERE cluster = ?1 AND name = ?2",
            params![
                i.cluster,
                i.name,
                i.health.as_str(),
                i.observed_role,
                i.writable,
                i.lag_bytes.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                i.position.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                i.detail,
                i.probed_ms,
                i.term.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
            ],
        )?;
        Ok(())
    }

    /// Remove an instance and free its ports.
    pub fn delete_instance(&mut self, cluster: &str, name: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM ports WHERE cluster = ?1 AND instance = ?2",
            params![cluster, name],
        )?;
        tx.execute(
            "DELETE FROM instances WHERE cluster = ?1 AND name = ?2",
            params![cluster, name],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The instances of `cluster`, by ordinal.
    pub fn instances(&self, cluster: &str) -> Result<Vec<InstanceRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT cluster, name, ordinal, role, host, ports, dir, desired, state, pid, start_time,
                    restarts, health, observed_role, writable, lag_bytes, position, detail, probed_ms,
                    term, shard
             FROM instances WHERE cluster = ?1 ORDER BY ordinal",
        )?;
        let rows = stmt.query_map(params![cluster], |r| {
            let ports: String = r.get(5)?;
            let dir: String = r.get(6)?;
            let desired: String = r.get(7)?;
            let pid: Option<i64> = r.get(9)?;
            let start: Option<i64> = r.get(10)?;
            Ok((
                InstanceRow {
                    cluster: r.get(0)?,
                    name: r.get(1)?,
                    ordinal: r.get(2)?,
                    role: Role::parse(&r.get::<_, String>(3)?),
                    host: r.get(4)?,
                    ports: BTreeMap::new(),
                    dir: PathBuf::from(dir),
                    desired: if desired == "stopped" {
                        Desired::Stopped
                    } else {
                        Desired::Running
                    },
                    state: Phase::parse(&r.get::<_, String>(8)?),
                    process: match (pid, start) {
                        (Some(pid), Some(start)) => Some(ProcessId {
                            pid: u32::try_from(pid).unwrap_or(0),
                            start_time: u64::try_from(start).unwrap_or(0),
                        }),
                        _ => None,
                    },
                    restarts: r.get(11)?,
                    health: Health::parse(&r.get::<_, String>(12)?),
                    observed_role: r.get(13)?,
                    writable: r.get(14)?,
                    lag_bytes: r.get::<_, Option<i64>>(15)?.map(|v| v.max(0) as u64),
                    position: r.get::<_, Option<i64>>(16)?.map(|v| v.max(0) as u64),
                    detail: r.get(17)?,
                    probed_ms: r.get(18)?,
                    term: r.get::<_, Option<i64>>(19)?.map(|v| v.max(0) as u64),
                    shard: r.get(20)?,
                },
                ports,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (mut i, ports) = r?;
            i.ports = serde_json::from_str(&ports)?;
            out.push(i);
        }
        Ok(out)
    }

    // ----- operations -----

    /// Queue an operation on the live cluster `cluster`.
    pub fn insert_op(&self, cluster: &str, kind: &str, params: &serde_json::Value) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO ops (cluster, kind, params, state, created_ms, cluster_uid)
             VALUES (?1, ?2, ?3, 'pending', ?4, COALESCE((SELECT uid FROM clusters WHERE name = ?1), 0))",
            params![cluster, kind, params.to_string(), now_ms()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Move an operation to `state`, with a reason.
    pub fn set_op(&self, id: i64, state: OpState, reason: Option<&str>) -> Result<()> {
        let finished = state.is_final().then(now_ms);
        self.conn.execute(
            "UPDATE ops SET state = ?2, reason = ?3, finished_ms = COALESCE(?4, finished_ms) WHERE id = ?1",
            params![id, state.as_str(), reason, finished],
        )?;
        Ok(())
    }

    fn op_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpView> {
        let state: String = r.get(3)?;
        Ok(OpView {
            id: r.get(0)?,
            cluster: r.get(1)?,
            kind: r.get(2)?,
            state: OpState::parse(&state).unwrap_or(OpState::Failed),
            reason: r.get(4)?,
            created_unix_ms: r.get(5)?,
            finished_unix_ms: r.get(6)?,
        })
    }

    pub fn op(&self, id: i64) -> Result<Option<OpView>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, cluster, kind, state, reason, created_ms, finished_ms FROM ops WHERE id = ?1",
                params![id],
                Self::op_from,
            )
            .optional()?)
    }

    /// The uid of the cluster an operation belongs to.
    pub fn op_cluster_uid(&self, id: i64) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT cluster_uid FROM ops WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?)
    }

    /// The parameters an operation was queued with.
    pub fn op_params(&self, id: i64) -> Result<serde_json::Value> {
        let text: String =
            self.conn
                .query_row("SELECT params FROM ops WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Record or update a backup.
    pub fn put_backup(&self, b: &BackupRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO backups (id, cluster, repo, state, started_ms, view, manifest, spec,
                                  cluster_uid, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(id) DO UPDATE SET state = ?4, view = ?6, manifest = ?7",
            params![
                b.view.id,
                b.view.cluster,
                b.view.repo,
                b.view.state,
                b.view.started_unix_ms,
                serde_json::to_string(&b.view)?,
                b.manifest.as_ref().map(serde_json::to_string).transpose()?,
                serde_json::to_string(&b.spec)?,
                b.cluster_uid,
                b.view.origin,
            ],
        )?;
        Ok(())
    }

    /// A backup by id.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRow>> {
        self.conn
            .query_row(
                "SELECT view, manifest, spec, cluster_uid FROM backups WHERE id = ?1",
                params![id],
                backup_row,
            )
            .optional()?
            .transpose()
    }

    /// Backups, oldest first; of clusters named `cluster` (every one that had the name), or
    /// of every cluster.
    pub fn backups(&self, cluster: Option<&str>) -> Result<Vec<BackupRow>> {
        let mut st = self.conn.prepare(
            "SELECT view, manifest, spec, cluster_uid FROM backups
             WHERE ?1 IS NULL OR cluster = ?1 ORDER BY started_ms, id",
        )?;
        let rows = st.query_map(params![cluster], backup_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// The backups of the one cluster with uid `uid`, oldest first.
    pub fn backups_of(&self, uid: i64) -> Result<Vec<BackupRow>> {
        let mut st = self.conn.prepare(
            "SELECT view, manifest, spec, cluster_uid FROM backups
             WHERE cluster_uid = ?1 ORDER BY started_ms, id",
        )?;
        let rows = st.query_map(params![uid], backup_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Record or replace a schedule; `next_ms` is when it fires next.
    /// (Only a live cluster has schedules; they are deleted with it.)
    pub fn put_schedule(&self, v: &shoal_api::ScheduleView, next_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO schedules (cluster, method, view, next_ms, cluster_uid)
             SELECT ?1, ?2, ?3, ?4, uid FROM clusters WHERE name = ?1
             ON CONFLICT(cluster, method) DO UPDATE SET view = ?3, next_ms = ?4",
            params![v.cluster, v.method, serde_json::to_string(v)?, next_ms],
        )?;
        Ok(())
    }

    /// Schedules with when each fires next; of one cluster, or of every cluster.
    pub fn schedules(&self, cluster: Option<&str>) -> Result<Vec<(shoal_api::ScheduleView, i64)>> {
        let mut st = self.conn.prepare(
            "SELECT view, next_ms FROM schedules WHERE ?1 IS NULL OR cluster = ?1
             ORDER BY cluster, method",
        )?;
        let rows = st.query_map(params![cluster], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (v, next) = r?;
            out.push((serde_json::from_str(&v)?, next));
        }
        Ok(out)
    }

    pub fn delete_schedule(&self, cluster: &str, method: &str) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM schedules WHERE cluster = ?1 AND method = ?2",
            params![cluster, method],
        )?)
    }

    /// Record or replace the archiving settings of a cluster (the unit statistics in the view
    /// are computed from the units when read).
    pub fn put_archive(&self, v: &shoal_api::ArchiveView) -> Result<()> {
        self.conn.execute(
            "INSERT INTO archives (cluster, view) VALUES (?1, ?2)
             ON CONFLICT(cluster) DO UPDATE SET view = ?2",
            params![v.cluster, serde_json::to_string(v)?],
        )?;
        Ok(())
    }

    /// Archiving settings; of one cluster, or of every cluster.
    pub fn archives(&self, cluster: Option<&str>) -> Result<Vec<shoal_api::ArchiveView>> {
        self.views(
            "SELECT view FROM archives WHERE ?1 IS NULL OR cluster = ?1 ORDER BY cluster",
            cluster,
        )
    }

    /// The JSON views a one-parameter query selects, decoded.
    fn views<T: serde::de::DeserializeOwned>(&self, sql: &str, p: Option<&str>) -> Result<Vec<T>> {
        let mut st = self.conn.prepare(sql)?;
        let rows = st.query_map(params![p], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    /// Record a stored archive unit of cluster `uid` (again: the newer copy wins).
    pub fn put_unit(&self, uid: i64, cluster: &str, u: &shoal_api::ArchiveUnitView) -> Result<()> {
        self.conn.execute(
            "INSERT INTO units (cluster_uid, cluster, name, stored_ms, view) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(cluster_uid, name) DO UPDATE SET stored_ms = ?4, view = ?5",
            params![uid, cluster, u.name, u.stored_unix_ms, serde_json::to_string(u)?],
        )?;
        Ok(())
    }

    /// The stored archive units of cluster `uid`, oldest first.
    pub fn units(&self, uid: i64) -> Result<Vec<shoal_api::ArchiveUnitView>> {
        let mut st = self
            .conn
            .prepare("SELECT view FROM units WHERE cluster_uid = ?1 ORDER BY stored_ms, name")?;
        let rows = st.query_map(params![uid], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    /// Record a version of a cluster's configuration.
    pub fn put_config_version(
        &self,
        cluster: &str,
        v: &shoal_api::ConfigVersionView,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO config_versions (cluster, version, view) VALUES (?1, ?2, ?3)",
            params![cluster, v.version, serde_json::to_string(v)?],
        )?;
        Ok(())
    }

    /// A cluster's configuration versions, oldest first.
    pub fn config_versions(&self, cluster: &str) -> Result<Vec<shoal_api::ConfigVersionView>> {
        self.views(
            "SELECT view FROM config_versions WHERE cluster = ?1 ORDER BY version",
            Some(cluster),
        )
    }

    pub fn delete_unit(&self, uid: i64, name: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM units WHERE cluster_uid = ?1 AND name = ?2",
            params![uid, name],
        )?;
        Ok(())
    }

    pub fn delete_backup(&self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM backups WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn last_op(&self, cluster: &str) -> Result<Option<OpView>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, cluster, kind, state, reason, created_ms, finished_ms FROM ops
                 WHERE cluster_uid = (SELECT uid FROM clusters WHERE name = ?1)
                   AND parent IS NULL
                 ORDER BY id DESC LIMIT 1",
                params![cluster],
                Self::op_from,
            )
            .optional()?)
    }

    /// Whether `cluster` has an operation that has not ended.
    pub fn busy(&self, cluster: &str) -> Result<Option<OpView>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, cluster, kind, state, reason, created_ms, finished_ms FROM ops
                 WHERE cluster_uid = (SELECT uid FROM clusters WHERE name = ?1)
                   AND state IN ('pending', 'running') ORDER BY id LIMIT 1",
                params![cluster],
                Self::op_from,
            )
            .optional()?)
    }

    /// Operations left unfinished by a previous host process, oldest first.
    pub fn unfinished_ops(&self) -> Result<Vec<OpView>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, cluster, kind, state, reason, created_ms, finished_ms FROM ops
             WHERE state IN ('pending', 'running') AND parent IS NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], Self::op_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Record operation `kind` as a step of operation `parent`, already running; its id.
    pub fn insert_step(
        &self,
        cluster: &str,
        kind: &str,
        params: &serde_json::Value,
        parent: i64,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO ops (cluster, kind, params, state, created_ms, cluster_uid, parent)
             VALUES (?1, ?2, ?3, 'running', ?4,
                     COALESCE((SELECT uid FROM clusters WHERE name = ?1), 0), ?5)",
            params![cluster, kind, params.to_string(), now_ms(), parent],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Steps a host restart cut short: failed, naming the operation that settles them.
    pub fn fail_interrupted_steps(&self) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE ops SET state = 'failed', finished_ms = ?1,
                 reason = 'interrupted by a host restart; settled with operation ' || parent
             WHERE parent IS NOT NULL AND state IN ('pending', 'running')",
            params![now_ms()],
        )?)
    }

    // ----- events -----

    /// Record an event.
    pub fn add_event(
        &self,
        cluster: &str,
        instance: Option<&str>,
        level: &str,
        message: &str,
    ) -> Result<(i64, EventView)> {
        let ms = now_ms();
        let uid = self.uid_of(cluster)?.unwrap_or(0);
        self.conn.execute(
            "INSERT INTO events (cluster, instance, ms, level, message, cluster_uid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![cluster, instance, ms, level, message, uid],
        )?;
        Ok((
            self.conn.last_insert_rowid(),
            EventView {
                unix_ms: ms,
                cluster: cluster.into(),
                instance: instance.map(str::to_string),
                level: level.into(),
                message: message.into(),
            },
        ))
    }

    fn event_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, EventView)> {
        Ok((
            r.get(0)?,
            EventView {
                cluster: r.get(1)?,
                instance: r.get(2)?,
                unix_ms: r.get(3)?,
                level: r.get(4)?,
                message: r.get(5)?,
            },
        ))
    }

    /// The last `limit` events of `cluster` (the live one, else the newest deleted one of
    /// that name), oldest first, with their ids.
    pub fn events(&self, cluster: &str, limit: u32) -> Result<Vec<(i64, EventView)>> {
        let uid = self.uid_of(cluster)?.unwrap_or(-1);
        let mut stmt = self.conn.prepare(
            "SELECT id, cluster, instance, ms, level, message FROM events WHERE cluster_uid = ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![uid, limit], Self::event_from)?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Events of cluster `uid` after event id `after`.
    pub fn events_after(&self, uid: i64, after: i64) -> Result<Vec<(i64, EventView)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, cluster, instance, ms, level, message FROM events
             WHERE cluster_uid = ?1 AND id > ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![uid, after], Self::event_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The id of the newest event (0 when none).
    pub fn last_event_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
impl InstanceRow {
    /// A row for unit tests: member `name` (ordinal `ordinal`, role `role`) of `cluster`,
    /// meant to run and running, no ports, nothing observed yet.
    pub(crate) fn for_test(cluster: &str, name: &str, ordinal: u32, role: Role) -> InstanceRow {
        let mut i = InstanceRow::new(cluster, name, ordinal, role, PathBuf::from("/x").join(name));
        i.state = Phase::Running;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_state_reads_back_as_stored_and_the_probes_decide_only_their_own() {
        use ClusterState::*;
        for st in [
            Creating, Running, Degraded, QuorumLost, Updating, Stopped, Deleting, Failed,
        ] {
            assert_eq!(ClusterState::parse(st.as_str()), st);
        }
        assert_eq!(ClusterState::parse("from-a-newer-shoal"), Degraded);
        // Quorum lost outranks everything; else all serving is running.
        assert_eq!(ClusterState::observed(true, false), Running);
        assert_eq!(ClusterState::observed(false, false), Degraded);
        assert_eq!(ClusterState::observed(true, true), QuorumLost);
        assert_eq!(ClusterState::observed(false, true), QuorumLost);
        // The supervisor leaves an operation's state alone.
        for st in [Creating, Updating, Stopped, Deleting, Failed] {
            assert!(!st.is_observed(), "{st}");
        }
    }

    fn cluster(name: &str) -> ClusterRow {
        ClusterRow {
            name: name.into(),
            engine: "postgresql".into(),
            version: "15".into(),
            spec: ClusterSpec {
                name: name.into(),
                engine: "postgresql".into(),
                replicas: 3,
                ..Default::default()
            },
            addon_digest: "d".into(),
            state: ClusterState::Creating,
            created_ms: now_ms(),
            uid: 0,
            os_user: None,
        }
    }

    fn instance(cluster: &str, name: &str, port: u16) -> InstanceRow {
        let mut i = InstanceRow::for_test(cluster, name, 0, Role::Primary);
        i.ports = [("client".to_string(), port)].into();
        i.state = Phase::Pending;
        i
    }

    #[test]
    fn clusters_instances_ports_ops_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let op = {
            let mut s = Store::open(&db).unwrap();
            let (uid, op) = s
                .insert_cluster(&cluster("pg"), None, &serde_json::json!({}), Some("u-"))
                .unwrap();
            assert_eq!(
                s.cluster("pg").unwrap().unwrap().os_user,
                Some(format!("u-{uid}"))
            );
            let mut i = instance("pg", "pg-0", 15000);
            s.insert_instance(&i).unwrap();
            i.process = Some(ProcessId {
                pid: 42,
                start_time: 7,
            });
            i.state = Phase::Running;
            s.update_instance(&i).unwrap();
            s.set_op(op, OpState::Succeeded, None).unwrap();
            s.add_event("pg", Some("pg-0"), "info", "started").unwrap();
            // A duplicate name and a taken port are refused and change nothing.
            assert!(matches!(
                s.insert_cluster(&cluster("pg"), None, &serde_json::json!({}), None),
                Err(StoreError::Taken(_))
            ));
            assert!(s.insert_instance(&instance("pg", "pg-1", 15000)).is_err());
            assert!(s.instances("pg").unwrap().len() == 1);
            op
        };
        let mut s = Store::open(&db).unwrap();
        assert_eq!(s.cluster("pg").unwrap().unwrap().spec.replicas, 3);
        let i = &s.instances("pg").unwrap()[0];
        assert_eq!(i.process.unwrap().pid, 42);
        assert_eq!(s.reserved_ports().unwrap(), [15000].into());
        assert_eq!(s.op(op).unwrap().unwrap().state, OpState::Succeeded);
        assert_eq!(s.events("pg", 10).unwrap()[0].1.message, "started");
        s.delete_cluster("pg", None).unwrap();
        assert!(s.reserved_ports().unwrap().is_empty());
        assert!(s.cluster("pg").unwrap().is_none());
    }

    #[test]
    fn a_new_cluster_with_a_deleted_ones_name_inherits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.db")).unwrap();
        let (old, _) = s
            .insert_cluster(
                &cluster("sx"),
                Some((15001, 15002)),
                &serde_json::json!({}),
                None,
            )
            .unwrap();
        s.add_event("sx", None, "info", "old event").unwrap();
        let sched = shoal_api::ScheduleView {
            cluster: "sx".into(),
            method: "rdb".into(),
            repo: None,
            cron: "* * * * *".into(),
            keep: Some(1),
            max_age: None,
            pitr_window: None,
            next_unix_ms: 0,
            include_manual: false,
            verify: false,
        };
        s.put_schedule(&sched, 0).unwrap();
        s.put_archive(&shoal_api::ArchiveView {
            cluster: "sx".into(),
            repo: "r".into(),
            method: "wal".into(),
            enabled: true,
            since_unix_ms: 0,
            units: 0,
            size: 0,
            stored_size: 0,
            first_unit: None,
            last_unit: None,
            last_stored_unix_ms: None,
            error: None,
        })
        .unwrap();
        let kept = dir.path().join("kept");
        s.delete_cluster("sx", Some(&kept)).unwrap();
        // Deleted: its events are still what the name refers to; no schedule or archive.
        assert_eq!(s.events("sx", 10).unwrap().len(), 1);
        assert!(s.schedules(None).unwrap().is_empty());
        assert!(s.archives(None).unwrap().is_empty());
        assert_eq!(
            s.kept("sx").unwrap()[0].kept_dir.as_deref(),
            Some(kept.as_path())
        );
        // The same name again: a new uid, no events, and the endpoint ports are free again.
        let (new, _) = s
            .insert_cluster(
                &cluster("sx"),
                Some((15001, 15002)),
                &serde_json::json!({}),
                None,
            )
            .unwrap();
        assert!(new > old);
        assert!(s.events("sx", 10).unwrap().is_empty());
        assert!(s.busy("sx").unwrap().is_some(), "its own create op");
        // A schedule set for the new cluster carries its uid; a stale one never fires for it.
        s.put_schedule(&sched, 0).unwrap();
        assert_eq!(s.schedules(Some("sx")).unwrap().len(), 1);
        s.purged(old).unwrap();
        assert!(s.kept("sx").unwrap().is_empty());
    }

    #[test]
    fn migrating_an_old_home_gives_deleted_names_their_own_uid() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        {
            // Schema 6 with a live cluster "a" and leftovers of a deleted "b".
            let mut c = Connection::open(&db).unwrap();
            let tx = c.transaction().unwrap();
            for sql in &MIGRATIONS[..6] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 6).unwrap();
            tx.execute_batch(
                "INSERT INTO clusters VALUES ('a', 'e', '1', '{\"name\":\"a\",\"engine\":\"e\"}', 'd', 'running', 1);
                 INSERT INTO events (cluster, instance, ms, level, message) VALUES ('a', NULL, 1, 'info', 'x');
                 INSERT INTO events (cluster, instance, ms, level, message) VALUES ('b', NULL, 1, 'info', 'y');
                 INSERT INTO schedules VALUES ('b', 'm', '{}', 0);
                 INSERT INTO ops (cluster, kind, params, state, created_ms) VALUES ('b', 'backup', '{}', 'running', 1);",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&db).unwrap();
        let a = s.cluster("a").unwrap().unwrap();
        assert!(a.uid > 0);
        assert_ne!(s.uid_of("b").unwrap(), Some(a.uid));
        assert_eq!(s.events("a", 10).unwrap()[0].1.message, "x");
        assert_eq!(s.events("b", 10).unwrap()[0].1.message, "y");
        assert!(
            s.schedules(None).unwrap().is_empty(),
            "orphan schedule removed"
        );
        assert!(s.unfinished_ops().unwrap().is_empty(), "orphan op settled");
    }

    #[test]
    fn decisions_and_observations_have_one_writer_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("shoal.db")).unwrap();
        s.insert_cluster(&cluster("pg"), None, &serde_json::json!({}), None)
            .unwrap();
        let row = instance("pg", "pg-0", 15000);
        s.insert_instance(&row).unwrap();
        // A probe's finding and an operation's decision, each made on its own copy.
        let mut probed = row.clone();
        probed.health = Health::Healthy;
        probed.writable = Some(true);
        probed.detail = "primary".into();
        let mut decided = row.clone();
        decided.state = Phase::Stopping;
        decided.desired = Desired::Stopped;
        s.record_observed(&probed).unwrap();
        s.update_instance(&decided).unwrap();
        let got = &s.instances("pg").unwrap()[0];
        assert_eq!(
            (got.state, got.desired),
            (Phase::Stopping, Desired::Stopped)
        );
        assert_eq!(
            got.health,
            Health::Healthy,
            "the decision kept the observation"
        );
        assert_eq!(got.writable, Some(true));
        assert_eq!(got.detail, "primary");
        // And the other way round.
        s.record_observed(&row).unwrap();
        let got = &s.instances("pg").unwrap()[0];
        assert_eq!(
            got.state,
            Phase::Stopping,
            "the observation kept the decision"
        );
        assert_eq!(got.health, Health::Unknown);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        Store::open(&db).unwrap();
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        let err = Store::open(&db).err().unwrap().to_string();
        assert!(err.contains("newer than this Shoal knows"), "{err}");
    }
}
