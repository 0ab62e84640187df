//! The operations a cluster runs, one typed value each: its kind with its payload. The store
//! keeps an operation as its kind's name and its payload as JSON (the names and fields older
//! homes hold); [`Op::from_stored`] reads it back, refusing what it does not know.

use serde::{Deserialize, Serialize};

/// One operation and what it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "kebab-case")]
pub enum Op {
    /// Make the cluster; from backup `restore` (up to `to_unix_ms` of its archive) if given.
    Create {
        #[serde(default)]
        restore: Option<String>,
        #[serde(default)]
        to_unix_ms: Option<i64>,
    },
    /// Back up with `method` into repository `repo`; `origin` "schedule" or "manual".
    Backup {
        method: String,
        repo: String,
        #[serde(default)]
        origin: Option<String>,
    },
    /// Roll the cluster to a new configuration (the payload `reconfigure` defines).
    Reconfigure(serde_json::Value),
    /// Change the member count (per shard, in a sharded cluster).
    Scale {
        replicas: u32,
    },
    /// Rotate the users' password.
    Password {},
    /// Bring a lost quorum back from its most advanced member.
    Recover {},
    Stop {},
    Start {},
    /// Rolling restart.
    Restart {},
    Delete {
        #[serde(default)]
        purge: bool,
    },
    /// Replace the failed primary `old`.
    Failover {
        old: String,
        #[serde(default)]
        reason: String,
    },
    /// Move the primary role from `from` to `to`; `resume`: finish one a host restart cut.
    Switchover {
        from: String,
        to: String,
        #[serde(default)]
        resume: bool,
    },
    /// Re-seed (or, where the engine elects, replace) `instance`.
    Rebuild {
        instance: String,
    },
}

/// What happens to an operation a previous host left unfinished, so that desired state,
/// observed state and the processes agree again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Run it again from the start: it is idempotent, or continues from what it finds (a
    /// failover from the coordination store, a scale from the instances there are, a
    /// configuration change rolls every instance to its target and only then stores it).
    Finish,
    /// Take it back: a create that never finished is deleted with what it made.
    Undo,
    /// It cannot be repeated by itself (a backup): recorded as failed.
    Fail,
}

impl Op {
    /// The stored name of its kind ("create", "switchover").
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Backup { .. } => "backup",
            Op::Reconfigure(_) => "reconfigure",
            Op::Scale { .. } => "scale",
            Op::Password {} => "password",
            Op::Recover {} => "recover",
            Op::Stop {} => "stop",
            Op::Start {} => "start",
            Op::Restart {} => "restart",
            Op::Delete { .. } => "delete",
            Op::Failover { .. } => "failover",
            Op::Switchover { .. } => "switchover",
            Op::Rebuild { .. } => "rebuild",
        }
    }

    /// The stored payload.
    pub fn params(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("params").cloned())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// The operation stored as `kind` with `params`.
    pub fn from_stored(kind: &str, params: &serde_json::Value) -> Result<Op, String> {
        let params = if params.is_null() {
            serde_json::json!({})
        } else {
            params.clone()
        };
        serde_json::from_value(serde_json::json!({ "kind": kind, "params": params }))
            .map_err(|e| format!("operation {kind:?} cannot be read: {e}"))
    }

    /// Whether a failure of it leaves the cluster's state to the supervisor (the cluster
    /// still serves as well as it can) instead of marking the cluster failed.
    pub fn failure_keeps_cluster_state(&self) -> bool {
        matches!(
            self,
            Op::Delete { .. }
                | Op::Failover { .. }
                | Op::Switchover { .. }
                | Op::Rebuild { .. }
                | Op::Reconfigure(_)
                | Op::Password {}
                | Op::Recover {}
        )
    }

    /// How the operation is settled when a host restart interrupted it.
    pub fn settle(&self) -> Settle {
        match self {
            Op::Create { .. } => Settle::Undo,
            Op::Backup { .. } => Settle::Fail,
            _ => Settle::Finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_read_back_what_older_homes_stored() {
        let cases = [
            (
                "create",
                json!({}),
                Op::Create {
                    restore: None,
                    to_unix_ms: None,
                },
            ),
            (
                "create",
                json!({ "restore": "b1", "to_unix_ms": 5 }),
                Op::Create {
                    restore: Some("b1".into()),
                    to_unix_ms: Some(5),
                },
            ),
            (
                "backup",
                json!({ "method": "rdb", "repo": "r", "origin": "schedule" }),
                Op::Backup {
                    method: "rdb".into(),
                    repo: "r".into(),
                    origin: Some("schedule".into()),
                },
            ),
            ("scale", json!({ "replicas": 3 }), Op::Scale { replicas: 3 }),
            (
                "delete",
                json!({ "purge": true }),
                Op::Delete { purge: true },
            ),
            ("stop", json!({}), Op::Stop {}),
            ("stop", serde_json::Value::Null, Op::Stop {}),
            (
                "failover",
                json!({ "old": "a-0", "reason": "exited" }),
                Op::Failover {
                    old: "a-0".into(),
                    reason: "exited".into(),
                },
            ),
            (
                "switchover",
                json!({ "from": "a-0", "to": "a-1", "resume": true }),
                Op::Switchover {
                    from: "a-0".into(),
                    to: "a-1".into(),
                    resume: true,
                },
            ),
            (
                "rebuild",
                json!({ "instance": "a-1" }),
                Op::Rebuild {
                    instance: "a-1".into(),
                },
            ),
            (
                "reconfigure",
                json!({ "target": { "x": 1 } }),
                Op::Reconfigure(json!({ "target": { "x": 1 } })),
            ),
        ];
        for (kind, params, want) in cases {
            let op = Op::from_stored(kind, &params).unwrap();
            assert_eq!(op, want, "{kind} {params}");
            assert_eq!(op.kind(), kind);
            // Stored again, it reads back the same.
            assert_eq!(Op::from_stored(op.kind(), &op.params()).unwrap(), op);
        }
    }

    #[test]
    fn unknown_or_malformed_operations_are_refused_by_name() {
        let e = Op::from_stored("teleport", &json!({})).unwrap_err();
        assert!(e.contains("teleport"), "{e}");
        let e = Op::from_stored("scale", &json!({ "replicas": "many" })).unwrap_err();
        assert!(e.contains("scale"), "{e}");
    }

    #[test]
    fn interrupted_operations_are_undone_failed_or_finished() {
        assert_eq!(
            Op::Create {
                restore: None,
                to_unix_ms: None
            }
            .settle(),
            Settle::Undo
        );
        let backup = Op::Backup {
            method: "m".into(),
            repo: "r".into(),
            origin: None,
        };
        assert_eq!(backup.settle(), Settle::Fail);
        assert_eq!(Op::Recover {}.settle(), Settle::Finish);
        assert_eq!(Op::Scale { replicas: 1 }.settle(), Settle::Finish);
        assert!(Op::Recover {}.failure_keeps_cluster_state());
        assert!(!Op::Scale { replicas: 1 }.failure_keeps_cluster_state());
    }
}
