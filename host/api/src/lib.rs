//! The local API of `shoal serve`: JSON lines over a Unix socket in the Shoal home directory
//! (mode 0600, so only its owner can drive the host). A client writes one [`Request`] as a
//! line; the server answers with zero or more [`Reply::Event`] / [`Reply::Log`] lines (for
//! requests that stream) and ends with exactly one [`Reply::Ok`] or [`Reply::Error`].

use std::collections::BTreeMap;
use std::path::Path;

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
    /// Number of instances (1 = standalone; more = a primary and replicas).
    #[serde(default = "one")]
    pub replicas: u32,
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
    Scale {
        name: String,
        replicas: u32,
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
    /// Stream the events of an operation's cluster until the operation ends; answers with the
    /// final [`OpView`].
    Wait {
        op: i64,
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
}

/// A cluster, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
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
    /// The elected leader and its term (the fencing token), from the coordination store.
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
        "cannot reach shoal serve at {path}: {source} (start it with `shoal serve`, or set \
         SHOAL_HOME to its home)"
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
        let stream = UnixStream::connect(&path)
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
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"request":"scale","name":"pg","replicas":3}"#);
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
