//! The coordination store (DCS): who leads each cluster, and which Shoal host acts for it.
//!
//! * A cluster's **leader lease** names the instance that is its primary and the **term** it
//!   was elected in. Terms only grow; every election bumps the term, and the term is the
//!   fencing token handed to the engine when it is promoted. The lease expires unless the
//!   acting host renews it (while the primary is healthy).
//! * A cluster's **manager lease** names the Shoal host that may act on it (probe decisions,
//!   failover). With several hosts on one etcd, exactly one holds it at a time; when that host
//!   dies its lease runs out and another takes over.
//!
//! Two backends implement [`Coordinator`]: [`embedded::Embedded`] (SQLite, one host) and
//! [`etcd::Etcd`] (etcd v3 through its JSON gateway). [`Dcs`] is either, chosen by config.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod embedded;
pub mod etcd;

/// The elected leader of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    /// Instance name.
    pub holder: String,
    /// The term it was elected in.
    pub term: u64,
}

/// A coordination failure.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// Someone else changed the record first; nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The store could not be reached or answered wrongly.
    #[error("coordination store: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, DcsError>;

/// What every backend provides. All writes are compare-and-set: a caller acting on a stale
/// view gets [`DcsError::Conflict`] and changes nothing.
#[allow(async_fn_in_trait)]
pub trait Coordinator {
    /// The last elected leader of `cluster` and whether its lease is still live.
    async fn leader(&self, cluster: &str) -> Result<Option<(Leader, bool)>>;

    /// Renew (or re-take, after it lapsed) the lease of the current leader `holder`. Never
    /// changes the holder or the term: fails with `Conflict` if `holder` is not the last
    /// elected leader. The first call for a cluster elects `holder` at term 1.
    async fn keep_leader(&self, cluster: &str, holder: &str, ttl: Duration) -> Result<Leader>;

    /// Elect `to` at the next term, if the last elected leader is still `expected` (compare
    /// and set). Returns the new leader.
    async fn elect(
        &self,
        cluster: &str,
        expected: Option<&Leader>,
        to: &str,
        ttl: Duration,
    ) -> Result<Leader>;

    /// Take or renew the manager lease of `cluster` for host `owner`. True when `owner`
    /// holds it now; false when another host's lease is live.
    async fn manage(&self, cluster: &str, owner: &str, ttl: Duration) -> Result<bool>;

    /// The host whose manager lease of `cluster` is live, if any.
    async fn manager(&self, cluster: &str) -> Result<Option<String>>;

    /// Forget `cluster` (deleted).
    async fn forget(&self, cluster: &str) -> Result<()>;
}

/// The configured backend.
pub enum Dcs {
    Embedded(embedded::Embedded),
    Etcd(etcd::Etcd),
}

impl Dcs {
    /// Which backend, for messages.
    pub fn describe(&self) -> String {
        match self {
            Dcs::Embedded(_) => "embedded".into(),
            Dcs::Etcd(e) => format!("etcd at {}", e.endpoints().join(",")),
        }
    }
}

impl Coordinator for Dcs {
    async fn leader(&self, cluster: &str) -> Result<Option<(Leader, bool)>> {
        match self {
            Dcs::Embedded(d) => d.leader(cluster).await,
            Dcs::Etcd(d) => d.leader(cluster).await,
        }
    }
    async fn keep_leader(&self, cluster: &str, holder: &str, ttl: Duration) -> Result<Leader> {
        match self {
            Dcs::Embedded(d) => d.keep_leader(cluster, holder, ttl).await,
            Dcs::Etcd(d) => d.keep_leader(cluster, holder, ttl).await,
        }
    }
    async fn elect(
        &self,
        cluster: &str,
        expected: Option<&Leader>,
        to: &str,
        ttl: Duration,
    ) -> Result<Leader> {
        match self {
            Dcs::Embedded(d) => d.elect(cluster, expected, to, ttl).await,
            Dcs::Etcd(d) => d.elect(cluster, expected, to, ttl).await,
        }
    }
    async fn manage(&self, cluster: &str, owner: &str, ttl: Duration) -> Result<bool> {
        match self {
            Dcs::Embedded(d) => d.manage(cluster, owner, ttl).await,
            Dcs::Etcd(d) => d.manage(cluster, owner, ttl).await,
        }
    }
    async fn manager(&self, cluster: &str) -> Result<Option<String>> {
        match self {
            Dcs::Embedded(d) => d.manager(cluster).await,
            Dcs::Etcd(d) => d.manager(cluster).await,
        }
    }
    async fn forget(&self, cluster: &str) -> Result<()> {
        match self {
            Dcs::Embedded(d) => d.forget(cluster).await,
            Dcs::Etcd(d) => d.forget(cluster).await,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
