//! Shoal addon for etcd: a quorum cluster. etcd elects its own leader (Raft); Shoal starts the
//! members with the full member list, probes each for its role, term and the engine's own view
//! of the membership, routes the read-write endpoint to the leader, and restarts members that
//! crash. Shoal never promotes or fences here: `promote`, `demote`, `switchover` and
//! `rebuild` are not this addon's business and stay unsupported.
//!
//! Everything goes through etcd's JSON gateway on the client port (`/v3/...`), so the addon
//! needs no etcdctl inside the sandbox. Accounts: the platform account `shoal` and the users'
//! `root` both hold etcd's `root` role; `post-provision` turns authentication on once both
//! exist. See docs/engines/etcd.md.

mod gateway;

use std::time::Duration;

use gateway::{base64, u64_field, unbase64, Answer, Gateway};
use serde_json::{json, Value as Json};
use shoal_sdk::host::Exec;
use shoal_sdk::methods::{Method, Methods};
use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

/// Connect, read and write deadline: below the probe's 1 s hook deadline.
const IO_TIMEOUT: Duration = Duration::from_millis(800);

/// Longest a membership or account change may wait for the Raft commit.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a read of the snapshot stream may wait for the next message.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The logical backup method (every key, written back through a new quorum's leader).
const KEYS: &str = "keys";

/// The physical backup method (etcd's own snapshot, restored into every new member).
const SNAPSHOT: &str = "snapshot";

/// Stages the snapshot a restore reads from stdin: `$1` the staging directory (made
/// private), `$2` the file.
const STAGE: &str = "set -eu; umask 077; mkdir -p \"$1\"; cat > \"$2\"";

/// Moves the member directory `etcdctl snapshot restore` made (`$1/member`) into the data
/// directory `$2`.
const ADOPT: &str = "set -eu; mv \"$1/member\" \"$2/member\"";

/// Removes the staging directory `$1`.
const CLEAN: &str = "rm -rf \"$1\"";

struct Etcd {
    /// The kept connection (the probe loop reuses it every second).
    conn: Option<Gateway>,
}

/// What `status` and `member/list` say about one member, combined.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    me: u64,
    leader: u64,
    term: u64,
    index: u64,
    alarms: Vec<String>,
    /// The engine's membership: (id, name, learner).
    members: Vec<(u64, String, bool)>,
}

/// The role and health a probe reports for what it saw; `host_members` are the names Shoal
/// knows (this instance and its members).
fn report(seen: &Seen, host_members: &[String]) -> RoleReport {
    let name_of = |id: u64| {
        seen.members
            .iter()
            .find(|(m, _, _)| *m == id)
            .map(|(_, n, _)| {
                if n.is_empty() {
                    format!("{id:x}")
                } else {
                    n.clone()
                }
            })
            .unwrap_or_else(|| format!("{id:x}"))
    };
    let learner = seen
        .members
        .iter()
        .any(|(id, _, learner)| *id == seen.me && *learner);
    let role = if seen.leader != 0 && seen.leader == seen.me {
        "leader"
    } else if learner {
        "learner"
    } else {
        "follower"
    };
    let voters = seen.members.iter().filter(|(_, _, l)| !l).count();
    let mut engine_names: Vec<&str> = seen
        .members
        .iter()
        .map(|(_, n, _)| n.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    engine_names.sort_unstable();
    let mut shoal_names: Vec<&str> = host_members.iter().map(String::as_str).collect();
    shoal_names.sort_unstable();
    let (health, detail) = if seen.leader == 0 {
        (
            Health::Unhealthy,
            format!(
                "no leader (term {}): fewer than a quorum of {} members reach each other",
                seen.term,
                voters / 2 + 1
            ),
        )
    } else if !seen.alarms.is_empty() {
        (
            Health::Degraded,
            format!(
                "alarm {} (leader {})",
                seen.alarms.join(", "),
                name_of(seen.leader)
            ),
        )
    } else if engine_names.len() == seen.members.len() && engine_names != shoal_names {
        (
            Health::Degraded,
            format!(
                "etcd's membership ({}) differs from Shoal's ({})",
                engine_names.join(", "),
                shoal_names.join(", ")
            ),
        )
    } else {
        (
            Health::Healthy,
            format!(
                "{role}; leader {}, term {}, {voters} voting member(s)",
                name_of(seen.leader),
                seen.term
            ),
        )
    };
    RoleReport {
        role: role.into(),
        writable: role == "leader",
        term: Some(seen.term),
        lag_bytes: None,
        lag_ms: None,
        health,
        position: Some(seen.index),
        detail,
    }
}

fn is_auth_disabled(message: &str) -> bool {
    message.contains("authentication is not enabled")
}

fn already_exists(message: &str) -> bool {
    message.contains("already exists")
}

/// Where markers are kept, apart from users' keys.
const MARKERS: &str = "shoal/markers/";

impl Etcd {
    /// POST to `instance` on the kept connection; a failure on a reused connection is tried
    /// once more on a fresh one.
    fn post(
        &mut self,
        instance: &Instance,
        path: &str,
        body: &Json,
        token: Option<&str>,
        timeout: Duration,
    ) -> HookResult<Answer> {
        let addr = instance.address();
        if let Some(conn) = self.conn.as_mut().filter(|c| c.peer() == addr) {
            match conn.post(path, body, token) {
                Ok(a) => return Ok(a),
                Err(e) => shoal_sdk::debug!("etcd {addr}: reconnecting after: {e}"),
            }
        }
        self.conn = None;
        let mut conn = Gateway::connect(&instance.endpoint, timeout)
            .map_err(|e| HookError::from(e).context(format!("connect {addr}")))?;
        let answer = conn
            .post(path, body, token)
            .map_err(|e| HookError::from(e).context(format!("{addr}{path}")))?;
        if timeout == IO_TIMEOUT {
            self.conn = Some(conn);
        }
        Ok(answer)
    }

    /// [`Self::post`] where a gRPC error is a failure (unavailable ones retryable).
    fn ok(
        &mut self,
        instance: &Instance,
        path: &str,
        body: &Json,
        token: Option<&str>,
    ) -> HookResult<Json> {
        match self.post(instance, path, body, token, WRITE_TIMEOUT)? {
            Answer::Ok(j) => Ok(j),
            Answer::Error { code, message } => Err(grpc_error(path, code, &message)),
        }
    }

    /// A token for the platform account, or `None` while authentication is off.
    fn token(&mut self, instance: &Instance) -> HookResult<Option<String>> {
        let user = shoal_sdk::accounts::platform_user(instance)?;
        let password = shoal_sdk::accounts::platform_password(instance)?;
        let body = json!({ "name": user, "password": password });
        match self.post(
            instance,
            "/v3/auth/authenticate",
            &body,
            None,
            WRITE_TIMEOUT,
        )? {
            Answer::Ok(j) => Ok(j.get("token").and_then(Json::as_str).map(str::to_string)),
            Answer::Error { message, .. } if is_auth_disabled(&message) => Ok(None),
            Answer::Error { code, message } => {
                Err(grpc_error("/v3/auth/authenticate", code, &message))
            }
        }
    }

    /// Create `name` with `password`, or change its password when it exists; then grant it
    /// `role` (an existing grant is kept).
    fn set_user(
        &mut self,
        instance: &Instance,
        token: Option<&str>,
        name: &str,
        password: &str,
        role: &str,
    ) -> HookResult<()> {
        // Every change to etcd's auth store (a password, a grant) makes every client log in
        // again: change nothing that is already so (this runs at every member start).
        let roles = match self.post(
            instance,
            "/v3/auth/user/get",
            &json!({ "name": name }),
            token,
            WRITE_TIMEOUT,
        )? {
            Answer::Ok(j) => Some(
                j.get("roles")
                    .and_then(Json::as_array)
                    .map(|r| r.iter().filter_map(Json::as_str).any(|r| r == role))
                    .unwrap_or(false),
            ),
            Answer::Error { .. } => None,
        };
        if roles == Some(true) {
            let login = json!({ "name": name, "password": password });
            if let Answer::Ok(_) = self.post(
                instance,
                "/v3/auth/authenticate",
                &login,
                None,
                WRITE_TIMEOUT,
            )? {
                return Ok(());
            }
        }
        let body = json!({ "name": name, "password": password });
        match self.post(instance, "/v3/auth/user/add", &body, token, WRITE_TIMEOUT)? {
            Answer::Ok(_) => {}
            Answer::Error { message, .. } if already_exists(&message) => {
                self.ok(instance, "/v3/auth/user/changepw", &body, token)?;
            }
            Answer::Error { code, message } => {
                return Err(grpc_error("/v3/auth/user/add", code, &message))
            }
        }
        // A changed password ends that user's sessions, `token` among them when it is the
        // user's own (the platform account given a new password): grant only what is missing.
        if roles != Some(true) {
            let grant = json!({ "user": name, "role": role });
            self.ok(instance, "/v3/auth/user/grant", &grant, token)?;
        }
        Ok(())
    }

    /// A role named `role` with `permission` (READ or READWRITE) on every key.
    fn ensure_role(
        &mut self,
        instance: &Instance,
        token: Option<&str>,
        role: &str,
        permission: &str,
    ) -> HookResult<()> {
        match self.post(
            instance,
            "/v3/auth/role/add",
            &json!({ "name": role }),
            token,
            WRITE_TIMEOUT,
        )? {
            Answer::Ok(_) => {}
            Answer::Error { message, .. } if already_exists(&message) => {}
            Answer::Error { code, message } => {
                return Err(grpc_error("/v3/auth/role/add", code, &message))
            }
        }
        // Key "\0" with range end "\0": every key.
        let all = base64(b"\0");
        let body = json!({
            "name": role,
            "perm": { "permType": permission, "key": all, "range_end": all },
        });
        self.ok(instance, "/v3/auth/role/grant", &body, token)?;
        Ok(())
    }

    /// The id of the member named `name` or (added but never started, so still nameless)
    /// listening on `peer_url`.
    fn member_id(
        &mut self,
        instance: &Instance,
        name: &str,
        peer_url: &str,
    ) -> HookResult<Option<u64>> {
        let list = self.ok(instance, "/v3/cluster/member/list", &json!({}), None)?;
        Ok(list
            .get("members")
            .and_then(Json::as_array)
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m.get("name").and_then(Json::as_str) == Some(name)
                        || m.get("peerURLs")
                            .and_then(Json::as_array)
                            .is_some_and(|u| u.iter().any(|u| u.as_str() == Some(peer_url)))
                })
            })
            .map(|m| u64_field(m, "/ID")))
    }

    /// A read-only request on the kept connection, under the probe's deadline.
    fn read(&mut self, instance: &Instance, path: &str) -> HookResult<Json> {
        match self.post(instance, path, &json!({}), None, IO_TIMEOUT)? {
            Answer::Ok(j) => Ok(j),
            Answer::Error { code, message } => Err(grpc_error(path, code, &message)),
        }
    }

    /// The store's current revision and how many keys it holds at it.
    fn count_all(&mut self, instance: &Instance) -> HookResult<(u64, u64)> {
        let token = self.token(instance)?;
        let all = base64(b"\0");
        let count = self.ok(
            instance,
            "/v3/kv/range",
            &json!({ "key": all, "range_end": all, "count_only": true }),
            token.as_deref(),
        )?;
        Ok((
            u64_field(&count, "/header/revision"),
            u64_field(&count, "/count"),
        ))
    }

    /// `snapshot` backup: etcd's own snapshot of `instance`'s store, streamed from
    /// `/v3/maintenance/snapshot` into the sink as etcd sends it (the database followed by
    /// its SHA-256, which `etcdctl snapshot restore` checks); nothing is staged on the
    /// member. The revision the member had when the stream began is recorded.
    fn snapshot_backup(
        &mut self,
        instance: &Instance,
        _params: &[Param],
        into: &mut SinkWriter<'_>,
    ) -> HookResult<BackupInfo> {
        use std::io::Write;
        let (revision, _) = self.count_all(instance)?;
        let token = self.token(instance)?;
        let status = self.read(instance, "/v3/maintenance/status")?;
        let server = status
            .get("version")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let size = u64_field(&status, "/dbSize");
        let addr = instance.address();
        let path = "/v3/maintenance/snapshot";
        let mut conn = Gateway::connect(&instance.endpoint, STREAM_TIMEOUT)
            .map_err(|e| HookError::from(e).context(format!("connect {addr}")))?;
        let mut written = 0u64;
        let end = conn
            .post_stream(path, &json!({}), token.as_deref(), |result| {
                let Some(blob) = result.get("blob").and_then(Json::as_str) else {
                    return Ok(());
                };
                let bytes = unbase64(blob).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a snapshot message not in base64",
                    )
                })?;
                into.write_all(&bytes)?;
                written += bytes.len() as u64;
                shoal_sdk::host::progress(written, Some(size), "snapshot");
                Ok(())
            })
            .map_err(|e| HookError::from(e).context(format!("{addr}{path}")))?;
        if let Some(Answer::Error { code, message }) = end {
            return Err(grpc_error(path, code, &message));
        }
        // The database (at least a page) and its 32-byte SHA-256.
        if written <= 32 {
            return Err(HookError::failed(format!(
                "{addr}{path}: the snapshot stream ended after {written} bytes"
            )));
        }
        Ok(BackupInfo {
            method: SNAPSHOT.into(),
            engine_version: instance.engine_version.clone(),
            start_position: Some(revision.to_string()),
            end_position: None,
            labels: vec![
                ("tool".into(), path.into()),
                ("revision".into(), revision.to_string()),
                ("bytes".into(), written.to_string()),
                ("server-version".into(), server),
            ],
        })
    }

    fn seen(&mut self, instance: &Instance) -> HookResult<Seen> {
        let status = self.read(instance, "/v3/maintenance/status")?;
        let list = self.read(instance, "/v3/cluster/member/list")?;
        let members = list
            .get("members")
            .and_then(Json::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        (
                            u64_field(m, "/ID"),
                            m.get("name")
                                .and_then(Json::as_str)
                                .unwrap_or("")
                                .to_string(),
                            m.get("isLearner").and_then(Json::as_bool).unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let alarms = status
            .get("errors")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Seen {
            me: u64_field(&status, "/header/member_id"),
            leader: u64_field(&status, "/leader"),
            term: u64_field(&status, "/raftTerm"),
            index: u64_field(&status, "/raftIndex"),
            alarms,
            members,
        })
    }
}

/// A gRPC error from the gateway as a hook error: unavailable (14), deadline exceeded (4)
/// and "no leader" are retryable, the rest failures.
fn grpc_error(path: &str, code: i64, message: &str) -> HookError {
    let text = format!("{path}: {message}");
    if matches!(code, 4 | 14) || message.contains("no leader") || message.contains("timed out") {
        HookError::Retryable(text)
    } else {
        HookError::Failed(text)
    }
}

/// `name=http://host:peer` for one member.
fn peer_entry(name: &str, host: &str, ports: &[NamedPort]) -> HookResult<String> {
    let peer = ports
        .iter()
        .find(|p| p.name == "peer")
        .map(|p| p.port)
        .ok_or_else(|| HookError::invalid(format!("{name} has no port named \"peer\"")))?;
    Ok(format!("{name}={}", url(host, peer)))
}

/// This member's peer URL and the initial membership (`name=peer-url`, sorted) of it and
/// `members`: what `run-spec` starts a new member with and a snapshot restore writes.
fn initial_cluster(instance: &Instance, members: &[Member]) -> HookResult<(String, Vec<String>)> {
    let me = peer_entry(&instance.name, &instance.endpoint.host, &instance.ports)?;
    let peer_url = me
        .split_once('=')
        .map(|(_, u)| u.to_string())
        .unwrap_or_default();
    let mut initial = vec![me];
    for m in members {
        initial.push(peer_entry(&m.name, &m.endpoint.host, &m.ports)?);
    }
    initial.sort();
    Ok((peer_url, initial))
}

/// `snapshot` restore into `instance`'s empty data directory (a host path: the programs
/// run on the host as the engine's user). The stream is staged in a private file,
/// `etcdctl snapshot restore` (which checks the snapshot's SHA-256) writes a member of the
/// new cluster from it — this member and `members` as the initial membership, the cluster's
/// name as the token, exactly as `run-spec` starts them — and its `member` directory is
/// moved into the data directory. The staging goes whatever happened.
fn snapshot_restore(
    instance: &Instance,
    members: &[Member],
    info: &BackupInfo,
    from: &mut SourceReader<'_>,
) -> HookResult<()> {
    let data = instance
        .data_dir
        .clone()
        .ok_or_else(|| HookError::invalid("the host gave no data directory"))?;
    let staging = format!("{data}/snapshot-restore");
    let file = format!("{staging}/snapshot.db");
    let out = format!("{staging}/out");
    let want: Option<u64> = info
        .labels
        .iter()
        .find(|(k, _)| k == "bytes")
        .and_then(|(_, v)| v.parse().ok());
    let result = (|| -> HookResult<()> {
        let staged = Exec::new("sh")
            .args(["-c", STAGE, "shoal-etcd-stage", &staging, &file])
            .run_from(from)?
            .ok_or_failed("staging the snapshot")?;
        if let Some(want) = want.filter(|w| *w != staged.streamed_bytes) {
            return Err(HookError::failed(format!(
                "the backup holds {} bytes of snapshot, its record says {want}",
                staged.streamed_bytes
            )));
        }
        let (peer_url, initial) = initial_cluster(instance, members)?;
        Exec::new("etcdctl")
            .args(["snapshot", "restore", &file])
            .args(["--name", &instance.name])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &instance.cluster])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--data-dir", &out])
            .run()?
            .ok_or_failed("etcdctl snapshot restore")?;
        Exec::new("sh")
            .args(["-c", ADOPT, "shoal-etcd-adopt", &out, &data])
            .run()?
            .ok_or_failed("moving the restored member into the data directory")?;
        shoal_sdk::info!(
            "{}: snapshot restored as one of {} member(s)",
            instance.name,
            initial.len()
        );
        Ok(())
    })();
    let _ = Exec::new("sh")
        .args(["-c", CLEAN, "shoal-etcd-clean", &staging])
        .run();
    result
}

fn url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// The backup methods (`addon.toml`'s `[[backup-methods]]`).
const METHODS: Methods<Etcd> = Methods(&[
    Method {
        name: KEYS,
        backup: Etcd::keys_backup,
        restore: Etcd::keys_restore,
    },
    Method {
        name: SNAPSHOT,
        backup: Etcd::snapshot_backup,
        restore: |_, instance, members, info, from, _| {
            snapshot_restore(instance, members, info, from)
        },
    },
]);

impl Etcd {
    /// Every key and value at one revision, 100 keys a page, as JSON lines
    /// `{"key": base64, "value": base64}`.
    fn keys_backup(
        &mut self,
        instance: &Instance,
        _params: &[Param],
        into: &mut SinkWriter<'_>,
    ) -> HookResult<BackupInfo> {
        use std::io::Write;
        let token = self.token(instance)?;
        let all = base64(b"\0");
        let (revision, total) = self.count_all(instance)?;
        // The manifest's version (a restore creates its cluster with it); the server's own
        // goes into the labels.
        let server = self
            .read(instance, "/v3/maintenance/status")
            .ok()
            .and_then(|s| s.get("version").and_then(Json::as_str).map(str::to_string))
            .unwrap_or_default();
        let mut from = all.clone();
        let mut written = 0u64;
        loop {
            let page = self.ok(
                instance,
                "/v3/kv/range",
                &json!({ "key": from, "range_end": all, "limit": 100,
                         "revision": revision.to_string() }),
                token.as_deref(),
            )?;
            let kvs = page
                .get("kvs")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            let mut last = None;
            for kv in &kvs {
                let key = kv.get("key").and_then(Json::as_str).unwrap_or("");
                let value = kv.get("value").and_then(Json::as_str).unwrap_or("");
                let line = json!({ "key": key, "value": value }).to_string();
                into.write_all(line.as_bytes())
                    .and_then(|()| into.write_all(b"\n"))
                    .map_err(|e| HookError::failed(format!("writing the backup: {e}")))?;
                written += 1;
                last = Some(key.to_string());
            }
            shoal_sdk::host::progress(written, Some(total), "keys");
            let more = page.get("more").and_then(Json::as_bool).unwrap_or(false);
            match (more, last) {
                (true, Some(key)) => {
                    // The next page starts just after the last key.
                    let mut next = unbase64(&key)
                        .ok_or_else(|| HookError::failed("etcd sent a key not in base64"))?;
                    next.push(0);
                    from = base64(&next);
                }
                _ => break,
            }
        }
        Ok(BackupInfo {
            method: KEYS.into(),
            engine_version: instance.engine_version.clone(),
            start_position: Some(revision.to_string()),
            end_position: Some(revision.to_string()),
            labels: vec![
                ("keys".into(), written.to_string()),
                ("revision".into(), revision.to_string()),
                ("server-version".into(), server),
            ],
        })
    }

    /// A "snapshot" backup: into this member's empty data directory, the whole membership
    /// given (none started). A "keys" backup: every key into the running cluster, 100 to a
    /// transaction, and the count checked.
    fn keys_restore(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        info: &BackupInfo,
        from: &mut SourceReader<'_>,
        _recovery_follows: bool,
    ) -> HookResult<()> {
        use std::io::BufRead;
        let token = self.token(instance)?;
        let mut ops = Vec::new();
        let mut restored = 0u64;
        let want: Option<u64> = info
            .labels
            .iter()
            .find(|(k, _)| k == "keys")
            .and_then(|(_, v)| v.parse().ok());
        let flush = |this: &mut Self, ops: &mut Vec<Json>| -> HookResult<()> {
            if ops.is_empty() {
                return Ok(());
            }
            this.ok(
                instance,
                "/v3/kv/txn",
                &json!({ "success": ops }),
                token.as_deref(),
            )?;
            ops.clear();
            Ok(())
        };
        for line in std::io::BufReader::new(from).lines() {
            let line = line.map_err(|e| HookError::failed(format!("reading the backup: {e}")))?;
            if line.is_empty() {
                continue;
            }
            let kv: Json = serde_json::from_str(&line)
                .map_err(|e| HookError::failed(format!("a line of the backup is not JSON: {e}")))?;
            ops.push(json!({ "requestPut": { "key": kv["key"], "value": kv["value"] } }));
            restored += 1;
            if ops.len() == 100 {
                flush(self, &mut ops)?;
                shoal_sdk::host::progress(restored, want, "keys");
            }
        }
        flush(self, &mut ops)?;
        if let Some(want) = want.filter(|w| *w != restored) {
            return Err(HookError::failed(format!(
                "the backup holds {restored} keys, its record says {want}"
            )));
        }
        Ok(())
    }
}

impl Engine for Etcd {
    const BACKUP_METHODS: Methods<Self> = METHODS;

    fn new() -> Self {
        Etcd { conn: None }
    }

    fn manifest(&self) -> AddonManifest {
        shoal_sdk::manifest_file!("addon.toml")
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<RunPlan> {
        let schema = self.manifest().parameters;
        let p = Lookup::new(&schema, params);
        let host = &instance.endpoint.host;
        let client = url(host, instance.endpoint.port);
        let (peer_url, initial) = initial_cluster(instance, members)?;
        // A member that joins a running cluster (scale, replacement) starts "existing";
        // at creation no member has answered a probe yet. Ignored once data exists.
        let state = if members.iter().any(|m| m.healthy) {
            "existing"
        } else {
            "new"
        };
        let data = instance
            .data_dir
            .clone()
            .ok_or_else(|| HookError::invalid("the host gave no data directory"))?;
        let retention_ms = p.int("auto-compaction-retention")?;
        let mut args = vec![
            format!("--name={}", instance.name),
            format!("--data-dir={data}"),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={}", initial.join(",")),
            // Read only when the data directory is empty (a member's first start).
            format!("--initial-cluster-state={state}"),
            format!("--initial-cluster-token={}", instance.cluster),
            format!("--heartbeat-interval={}", p.int("heartbeat-interval")?),
            format!("--election-timeout={}", p.int("election-timeout")?),
            format!("--quota-backend-bytes={}", p.int("quota-backend-bytes")?),
            // A member back from a restart asks before it calls an election, so it does not
            // depose a healthy leader (etcd 3.5's default; off in 3.4).
            "--pre-vote=true".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ];
        if retention_ms > 0 {
            args.push("--auto-compaction-mode=periodic".into());
            args.push(format!("--auto-compaction-retention={retention_ms}ms"));
        }
        Ok(RunPlan {
            server: Command {
                program: "etcd".into(),
                args,
                env: vec![],
            },
            init: vec![],
            // Ready when it has a leader: the members come up together and elect one.
            readiness: Readiness::Probe,
            stop_signal: StopSignal::Term,
            stop_timeout_ms: 10000,
            unprivileged: true,
            image: Some("gcr.io/etcd-development/etcd:v3.4.23".into()),
        })
    }

    fn recover_quorum(&mut self, instance: &Instance, params: &[Param]) -> HookResult<RunPlan> {
        // etcd's documented way out of a lost quorum: the member restarts as a one-member
        // cluster keeping its data (its membership rewritten to itself alone).
        let mut plan = self.run_spec(instance, &[], params)?;
        plan.server.args.push("--force-new-cluster".into());
        Ok(plan)
    }

    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let status = self.read(instance, "/v3/maintenance/status")?;
        let (revision, keys) = self.count_all(instance)?;
        let member = u64_field(&status, "/header/member_id");
        let leader = u64_field(&status, "/leader");
        let f = |pointer: &str| u64_field(&status, pointer) as f64;
        let mut m = Metrics::new("etcd");
        m.gauge("db_size_bytes", "Size of the backend database file.", f("/dbSize"))
            .gauge(
                "db_size_in_use_bytes",
                "Bytes of the backend database in use (the rest is free pages a defragmentation returns).",
                f("/dbSizeInUse"),
            )
            .gauge("keys", "Keys in the store.", keys as f64)
            .gauge("revision", "The store's revision.", revision as f64)
            .gauge("raft_term", "The member's Raft term.", f("/raftTerm"))
            .gauge("raft_index", "The member's Raft log index.", f("/raftIndex"))
            .gauge(
                "raft_applied_index",
                "The Raft index the member has applied.",
                f("/raftAppliedIndex"),
            )
            .gauge(
                "is_leader",
                "1 when this member leads the cluster.",
                if member != 0 && member == leader { 1.0 } else { 0.0 },
            );
        m.finish()
    }

    fn probe(&mut self, instance: &Instance, members: &[Member]) -> HookResult<RoleReport> {
        let seen = self.seen(instance)?;
        let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        names.push(instance.name.clone());
        Ok(report(&seen, &names))
    }

    /// Once the members elected a leader: the platform account with the `root` role, the
    /// users' `root` (made by `account-provision` before) given it too, and authentication
    /// on. Run again (after a host restart) it only checks the platform account.
    fn post_provision(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<()> {
        if self.token(instance)?.is_some() {
            return Ok(());
        }
        let user = shoal_sdk::accounts::platform_user(instance)?.to_string();
        let password = shoal_sdk::accounts::platform_password(instance)?.to_string();
        self.set_user(instance, None, &user, &password, "root")?;
        self.ok(instance, "/v3/auth/enable", &json!({}), None)?;
        Ok(())
    }

    /// Add `joining` to the membership through `instance` (the leader), before it starts.
    /// Already a member (a retried call): nothing to do.
    fn member_join(
        &mut self,
        instance: &Instance,
        joining: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        let entry = peer_entry(&joining.name, &joining.endpoint.host, &joining.ports)?;
        let peer = entry.split_once('=').map(|(_, u)| u).unwrap_or_default();
        if self.member_id(instance, &joining.name, peer)?.is_some() {
            return Ok(());
        }
        let token = self.token(instance)?;
        self.ok(
            instance,
            "/v3/cluster/member/add",
            &json!({ "peerURLs": [peer] }),
            token.as_deref(),
        )?;
        Ok(())
    }

    /// Remove `leaving` from the membership through `instance`, while it still runs (the
    /// quorum commits its removal). Not a member (a retried call): nothing to do.
    fn member_leave(
        &mut self,
        instance: &Instance,
        leaving: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        let entry = peer_entry(&leaving.name, &leaving.endpoint.host, &leaving.ports)?;
        let peer = entry.split_once('=').map(|(_, u)| u).unwrap_or_default();
        let Some(id) = self.member_id(instance, &leaving.name, peer)? else {
            return Ok(());
        };
        let token = self.token(instance)?;
        self.ok(
            instance,
            "/v3/cluster/member/remove",
            &json!({ "ID": id.to_string() }),
            token.as_deref(),
        )?;
        Ok(())
    }

    fn account_provision(&mut self, instance: &Instance, account: &Account) -> HookResult<()> {
        let name = &account.credentials.username;
        if name == shoal_sdk::accounts::platform_user(instance)? {
            // Only the host asks for the platform's own account: a quorum restored from a
            // snapshot runs with the source's password (the snapshot holds its hash) until
            // the host gives it the new cluster's own, logging in with the source's.
            if account.role != AccountRole::Superuser {
                return Err(HookError::invalid(format!(
                    "{name} is the platform's own account and holds the root role"
                )));
            }
            let token = self.token(instance)?;
            return self.set_user(
                instance,
                token.as_deref(),
                name,
                &account.credentials.password,
                "root",
            );
        }
        shoal_sdk::accounts::check_user_account(instance, name)?;
        let token = self.token(instance)?;
        let role = match account.role {
            AccountRole::Superuser => "root".to_string(),
            AccountRole::ReadWrite => {
                self.ensure_role(instance, token.as_deref(), "readwrite", "READWRITE")?;
                "readwrite".into()
            }
            AccountRole::ReadOnly | AccountRole::Monitor => {
                self.ensure_role(instance, token.as_deref(), "readonly", "READ")?;
                "readonly".into()
            }
            AccountRole::Replication => {
                return Err(HookError::invalid(
                    "etcd members replicate through Raft; there is no replication account",
                ))
            }
        };
        self.set_user(
            instance,
            token.as_deref(),
            name,
            &account.credentials.password,
            &role,
        )
    }

    fn validate(&mut self, params: &[Param]) -> HookResult<Vec<ParamError>> {
        let schema = self.manifest().parameters;
        let mut errors = shoal_sdk::params::validate(&schema, params);
        if errors.is_empty() {
            let p = Lookup::new(&schema, params);
            let (beat, election) = (p.int("heartbeat-interval")?, p.int("election-timeout")?);
            if election < 5 * beat {
                errors.push(ParamError {
                    name: "election-timeout".into(),
                    message: format!(
                        "{election} ms is less than 5 heartbeat intervals ({} ms); etcd \
                         refuses to start",
                        5 * beat
                    ),
                });
            }
        }
        Ok(errors)
    }

    fn write_marker(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        key: &str,
        value: &str,
    ) -> HookResult<()> {
        // Apart from users' keys; acknowledged once a majority has it, like any put.
        let token = self.token(instance)?;
        let k = base64(format!("{MARKERS}{key}").as_bytes());
        self.ok(
            instance,
            "/v3/kv/put",
            &json!({ "key": k, "value": base64(value.as_bytes()) }),
            token.as_deref(),
        )
        .map(|_| ())
    }

    fn read_markers(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        keys: &[String],
    ) -> HookResult<Vec<Option<String>>> {
        // Every marker in one range (the kit writes a few thousand at most).
        let token = self.token(instance)?;
        let mut end = MARKERS.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let page = self.ok(
            instance,
            "/v3/kv/range",
            &json!({ "key": base64(MARKERS.as_bytes()), "range_end": base64(&end) }),
            token.as_deref(),
        )?;
        let found = page
            .get("kvs")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|kv| {
                let key = unbase64(kv.get("key")?.as_str()?)?;
                let value = unbase64(kv.get("value").and_then(Json::as_str).unwrap_or(""))?;
                let key = String::from_utf8(key).ok()?;
                Some((
                    key.strip_prefix(MARKERS)?.to_string(),
                    String::from_utf8(value).ok()?,
                ))
            });
        Ok(shoal_sdk::markers::in_key_order(keys, found))
    }
}

shoal_sdk::export_engine!(Etcd);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_methods_are_the_manifests() {
        METHODS.check(&Etcd::new().manifest()).unwrap();
    }

    fn seen(me: u64, leader: u64) -> Seen {
        Seen {
            me,
            leader,
            term: 4,
            index: 17,
            alarms: vec![],
            members: vec![
                (1, "e-0".into(), false),
                (2, "e-1".into(), false),
                (3, "e-2".into(), false),
            ],
        }
    }

    fn names() -> Vec<String> {
        vec!["e-0".into(), "e-1".into(), "e-2".into()]
    }

    #[test]
    fn the_leader_is_the_writable_member() {
        let r = report(&seen(2, 2), &names());
        assert_eq!((r.role.as_str(), r.writable), ("leader", true));
        assert_eq!(r.health, Health::Healthy);
        assert_eq!((r.term, r.position), (Some(4), Some(17)));
        let r = report(&seen(1, 2), &names());
        assert_eq!((r.role.as_str(), r.writable), ("follower", false));
        assert!(r.detail.contains("leader e-1"), "{}", r.detail);
    }

    #[test]
    fn no_leader_is_unhealthy_and_names_the_quorum() {
        let r = report(&seen(1, 0), &names());
        assert_eq!(r.health, Health::Unhealthy);
        assert!(!r.writable);
        assert!(r.detail.contains("quorum of 2"), "{}", r.detail);
    }

    #[test]
    fn alarms_and_a_membership_shoal_does_not_know_degrade() {
        let mut s = seen(1, 1);
        s.alarms = vec!["NOSPACE".into()];
        assert_eq!(report(&s, &names()).health, Health::Degraded);
        let r = report(&seen(1, 1), &["e-0".into(), "e-1".into()]);
        assert_eq!(r.health, Health::Degraded);
        assert!(r.detail.contains("differs"), "{}", r.detail);
    }

    #[test]
    fn a_learner_says_so() {
        let mut s = seen(3, 1);
        s.members[2].2 = true;
        assert_eq!(report(&s, &names()).role, "learner");
    }

    #[test]
    fn errors_for_an_unavailable_cluster_are_retryable() {
        assert!(matches!(
            grpc_error("/x", 14, "unavailable"),
            HookError::Retryable(_)
        ));
        assert!(matches!(
            grpc_error("/x", 2, "etcdserver: no leader"),
            HookError::Retryable(_)
        ));
        assert!(matches!(
            grpc_error("/x", 9, "etcdserver: permission denied"),
            HookError::Failed(_)
        ));
    }
}
