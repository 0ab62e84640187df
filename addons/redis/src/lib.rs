//! The Redis addon: how to run `redis-server` (every setting in a rendered `redis.conf` in the
//! config directory, nothing in the data directory), asynchronous replication with
//! `replicaof`, probes, promotion, fencing and switchover over RESP, RDB backups streamed by
//! `redis-cli --rdb -`, restores into a stopped data directory, and parameters applied live
//! with `CONFIG SET` and read back with `CONFIG GET`.
//!
//! Accounts: the platform account (`instance.credentials`, user `shoal`) is an ACL user in
//! `redis.conf` with every command; the hooks use it and replicas authenticate to their
//! primary with it (`masteruser`, `masterauth`). Users get Redis's `default` user, which
//! `redis.conf` leaves switched off until `account-provision` (called by the host on every
//! instance after it starts: ACL users are per server) gives it its password and every
//! command but the administrative ones (`-@admin`: CONFIG, ACL, REPLICAOF, FAILOVER,
//! SHUTDOWN, DEBUG, MODULE, SAVE, …), so no user can lift a fence, change the topology or
//! read the platform's password.

use std::time::{Duration, Instant};

use shoal_sdk::methods::{Method, Methods};
use shoal_sdk::metrics::{counter, gauge, Stat};
use shoal_sdk::prelude::*;

mod cluster;
mod config;

use shoal_sdk::resp::{self, Conn, Info, Reply};

/// Connect, read and write timeout of the probe and of short commands: a healthy server
/// answers in microseconds, a frozen one must be noticed before the probe's 2 s deadline.
const IO_TIMEOUT: Duration = Duration::from_millis(1000);
/// What the users' account may run: everything but the administrative commands, with the
/// harmless read-only ones among those given back.
pub const USER_COMMANDS: &str = "+@all -@admin +role +client|list +slowlog|get +slowlog|len \
     +latency|latest +latency|history +latency|doctor +latency|histogram +latency|graph \
     +lastsave";
/// `min-replicas-to-write` while fenced: no write is ever accepted (NOREPLICAS).
const FENCE: i64 = i32::MAX as i64;
/// How long a fence also pauses writes (`CLIENT PAUSE … WRITE`): clients wait instead of
/// failing, and expiry and eviction stop, so the replication offset holds still while a
/// switchover waits for the candidate. The `min-replicas-to-write` fence outlives it.
const PAUSE_MS: u64 = 60_000;
/// How long a switchover waits for the candidate to reach the old primary's offset.
const CATCH_UP: Duration = Duration::from_secs(30);

struct Redis {
    /// A connection kept between calls of a live instance (the probe loop).
    conn: Option<Conn>,
}

use shoal_sdk::accounts::{platform_password as password, platform_user};

/// (user, password) of the platform account, which the hooks authenticate as.
fn auth(instance: &Instance) -> HookResult<(&str, &str)> {
    Ok((platform_user(instance)?, password(instance)?))
}

/// The SHA-256 of a password in hex, as ACL rules take it (`#<hex>`): the password itself
/// never reaches the server or a config file that way.
pub fn password_hash(password: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a failed call was the server refusing the credentials (it answered: alive).
fn refused(e: &HookError) -> bool {
    matches!(e, HookError::Failed(m) if m.contains("WRONGPASS") || m.contains("NOAUTH"))
}

/// A fresh connection to `endpoint` with the instance's credentials.
fn connect_to(endpoint: &Endpoint, instance: &Instance) -> HookResult<Conn> {
    Conn::connect(endpoint, Some(auth(instance)?), IO_TIMEOUT)
}

/// A short line for errors: the replication fields that matter.
fn replication_summary(info: &Info) -> String {
    [
        "role",
        "master_host",
        "master_port",
        "master_link_status",
        "master_repl_offset",
    ]
    .iter()
    .filter_map(|k| info.get(k).map(|v| format!("{k}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}

/// Redis's settings on a live connection: `CONFIG SET`, `CONFIG GET`.
struct Live<'a>(&'a mut Conn);

impl shoal_sdk::params::LiveSettings for Live<'_> {
    fn engine(&self) -> &str {
        "Redis"
    }
    fn set(&mut self, name: &str, value: &Value) -> HookResult<()> {
        self.0
            .call(&["CONFIG", "SET", name, &config::redis_value(name, value)])
            .map(|_| ())
            .map_err(|e| HookError::failed(e.to_string()))
    }
    fn get(&mut self, name: &str) -> HookResult<String> {
        Ok(match self.0.call(&["CONFIG", "GET", name])? {
            Reply::Array(Some(items)) => items.get(1).and_then(Reply::text).unwrap_or_default(),
            _ => String::new(),
        })
    }
    fn shown(&self, name: &str, value: &Value) -> String {
        config::redis_value(name, value)
    }
    fn matches(&self, name: &str, want: &Value, got: &str) -> bool {
        config::matches(name, want, got)
    }
}

/// Where a marker is kept: apart from users' keys.
fn marker_key(key: &str) -> String {
    format!("{}:marker:{key}", shoal_sdk::markers::NAMESPACE)
}

/// The member a Redis Cluster error sends a key to (`MOVED <slot> <host>:<port>`).
fn moved_to(e: &HookError) -> Option<Endpoint> {
    let HookError::Failed(m) = e else { return None };
    let addr = m.split("MOVED ").nth(1)?.split_whitespace().nth(1)?;
    let (host, port) = addr.rsplit_once(':')?;
    Some(Endpoint {
        host: host.trim_matches(['[', ']']).to_string(),
        port: port.parse().ok()?,
    })
}

impl Redis {
    /// Run a command about one key on `instance`, following Redis Cluster's redirection to
    /// the member that serves the key's slot.
    fn keyed(&mut self, instance: &Instance, args: &[&str]) -> HookResult<Reply> {
        let first = self.with(instance, |c| c.call(args));
        match first.as_ref().err().and_then(moved_to) {
            Some(to) => connect_to(&to, instance)?.call(args),
            None => first,
        }
    }

    /// A connection to `instance`, reusing the kept one when it still answers.
    fn conn(&mut self, instance: &Instance) -> HookResult<&mut Conn> {
        let addr = instance.address();
        let reusable = match self.conn.as_mut() {
            Some(c) if c.peer() == addr => c.call(&["PING"]).is_ok(),
            _ => false,
        };
        if !reusable {
            self.conn = None;
            self.conn = Some(connect_to(&instance.endpoint, instance)?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| HookError::failed("no connection"))
    }

    /// The role report `INFO` gives (`fenced`: min-replicas-to-write is at the fence).
    fn report(&self, info: &Info, peer: &str, fenced: bool) -> HookResult<RoleReport> {
        let version = info.get("redis_version").unwrap_or("?").to_string();
        let position = info
            .int("master_repl_offset")
            .map(|v| u64::try_from(v).unwrap_or(0));
        let loading = info.get("loading") == Some("1");
        match info.get("role") {
            Some("master") => {
                let replicas = info.int("connected_slaves").unwrap_or(0);
                Ok(RoleReport {
                    role: "primary".into(),
                    writable: !fenced && !loading,
                    term: None,
                    lag_bytes: None,
                    lag_ms: None,
                    health: if loading {
                        Health::Starting
                    } else {
                        Health::Healthy
                    },
                    position,
                    detail: if fenced {
                        format!("Redis {version}, primary fenced (writes refused)")
                    } else if loading {
                        format!("Redis {version}, primary loading its data")
                    } else {
                        format!("Redis {version}, primary with {replicas} replica(s)")
                    },
                })
            }
            Some("slave") => {
                let from = format!(
                    "{}:{}",
                    info.get("master_host").unwrap_or("?"),
                    info.get("master_port").unwrap_or("?")
                );
                let link_up = info.get("master_link_status") == Some("up");
                let syncing = info.get("master_sync_in_progress") == Some("1");
                // After a full sync with appendonly on, a replica rewrites its append-only
                // file and ignores SIGTERM until that ends ("Writing initial AOF, can't
                // exit"): it is not ready before that.
                let rewriting = info.get("aof_enabled") == Some("1")
                    && (info.get("aof_rewrite_in_progress") == Some("1")
                        || info.get("aof_rewrite_scheduled") == Some("1"));
                let (health, detail) = if loading {
                    (
                        Health::Starting,
                        format!("Redis {version}, replica loading its data"),
                    )
                } else if link_up && rewriting {
                    (
                        Health::Starting,
                        format!(
                            "Redis {version}, replica of {from}, rewriting its append-only file"
                        ),
                    )
                } else if link_up {
                    let io = info.int("master_last_io_seconds_ago").unwrap_or(-1);
                    (
                        Health::Healthy,
                        format!(
                            "Redis {version}, replica of {from}, link up (last I/O {io} s ago)"
                        ),
                    )
                } else if syncing {
                    (
                        Health::Starting,
                        format!("Redis {version}, replica of {from}, full sync in progress"),
                    )
                } else {
                    let down = info.int("master_link_down_since_seconds").unwrap_or(-1);
                    (
                        Health::Degraded,
                        format!("Redis {version}, replica of {from}, link down (for {down} s)"),
                    )
                };
                Ok(RoleReport {
                    role: "replica".into(),
                    writable: false,
                    term: None,
                    lag_bytes: None,
                    lag_ms: None,
                    health,
                    position,
                    detail,
                })
            }
            other => Err(HookError::failed(format!(
                "{peer}: INFO replication reports role {other:?}"
            ))),
        }
    }

    /// Run `f` on the connection to `instance`; a failure drops the kept connection.
    fn with<T>(
        &mut self,
        instance: &Instance,
        f: impl FnOnce(&mut Conn) -> HookResult<T>,
    ) -> HookResult<T> {
        let r = f(self.conn(instance)?);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// How long an AOF backup waits for the rewrite that starts it.
const REWRITE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `aof` backup: rewrite the append-only file, then stream `appendonlydir` (base,
/// increments, manifest) as a tar. A write during the copy lands in the increment file and
/// is either in the copy or not; a torn last command is cut off at load
/// (`aof-load-truncated yes`, Redis's default).
fn aof_backup(
    _: &mut Redis,
    instance: &Instance,
    _params: &[Param],
    into: &mut SinkWriter<'_>,
) -> HookResult<BackupInfo> {
    let data = instance.need_data_dir()?;
    let mut c = connect_to(&instance.endpoint, instance)?;
    let info = c.info(&["server", "persistence", "replication"])?;
    if info.int("aof_enabled") != Some(1) {
        return Err(HookError::invalid(format!(
            "method aof needs appendonly yes on {} (it is off); use method rdb, or \
             `shoal cluster config set {} appendonly=true` first",
            instance.name, instance.cluster
        )));
    }
    let version = info.get("redis_version").unwrap_or("?").to_string();
    let offset = info.get("master_repl_offset").map(str::to_string);
    if let Err(e) = c.ok(&["BGREWRITEAOF"]) {
        // One already running is as good; anything else is a failure.
        if !e.to_string().contains("already in progress") {
            return Err(e.context("BGREWRITEAOF"));
        }
    }
    let until = Instant::now() + REWRITE_TIMEOUT;
    loop {
        let p = c.info(&["persistence"])?;
        if p.int("aof_rewrite_in_progress") == Some(0) && p.int("aof_rewrite_scheduled") == Some(0)
        {
            if p.get("aof_last_bgrewrite_status") != Some("ok") {
                return Err(HookError::failed(format!(
                    "the AOF rewrite on {} failed (aof_last_bgrewrite_status {})",
                    instance.name,
                    p.get("aof_last_bgrewrite_status").unwrap_or("?")
                )));
            }
            break;
        }
        if Instant::now() > until {
            return Err(HookError::failed(format!(
                "the AOF rewrite on {} did not finish in {} s",
                instance.name,
                REWRITE_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    shoal_sdk::host::progress(0, None, &format!("aof backup of {}", instance.name));
    let out = Exec::new("tar")
        .args(["-C", data, "-cf", "-", "appendonlydir"])
        .run_into(into)?
        .ok_or_failed("tar of appendonlydir")?;
    shoal_sdk::info!(
        "aof backup of {}: {} bytes of tar",
        instance.name,
        out.streamed_bytes
    );
    Ok(BackupInfo {
        method: "aof".into(),
        engine_version: instance.engine_version.clone(),
        start_position: offset,
        end_position: None,
        labels: vec![
            ("tool".into(), "BGREWRITEAOF + tar appendonlydir".into()),
            ("redis-version".into(), version),
        ],
    })
}

/// `aof` restore: unpack `appendonlydir` into the stopped data directory and check it with
/// `redis-check-aof` before the server loads it. The restored cluster must run with
/// appendonly yes (a restore copies the source's parameters, where it was on).
fn aof_restore(
    _: &mut Redis,
    instance: &Instance,
    _members: &[Member],
    _info: &BackupInfo,
    from: &mut SourceReader<'_>,
    _recovery_follows: bool,
) -> HookResult<()> {
    let data = instance.need_data_dir()?;
    Exec::new("tar")
        .args(["-C", data, "-xf", "-", "appendonlydir"])
        .run_from(from)?
        .ok_or_failed("tar -x of appendonlydir")?;
    let manifest = format!("{data}/appendonlydir/appendonly.aof.manifest");
    let check = Exec::new("redis-check-aof").arg(&manifest).run()?;
    let said = check.stdout_text();
    if check.exit_code != Some(0) || !said.contains("is valid") {
        let last: Vec<&str> = said.lines().rev().take(3).collect();
        return Err(HookError::failed(format!(
            "redis-check-aof finds the restored append-only file damaged: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    Ok(())
}

/// The backup methods (`addon.toml`'s `[[backup-methods]]`).
const METHODS: Methods<Redis> = Methods(&[
    Method {
        name: "rdb",
        backup: rdb_backup,
        restore: rdb_restore,
    },
    Method {
        name: "aof",
        backup: aof_backup,
        restore: aof_restore,
    },
]);

/// `rdb` backup: `redis-cli --rdb` streams a fresh snapshot from the server.
fn rdb_backup(
    _: &mut Redis,
    instance: &Instance,
    _params: &[Param],
    into: &mut SinkWriter<'_>,
) -> HookResult<BackupInfo> {
    let (user, pw) = auth(instance)?;
    let (offset, version, used) = {
        let mut c = connect_to(&instance.endpoint, instance)?;
        let info = c.info(&["server", "replication", "memory"])?;
        (
            info.get("master_repl_offset").map(str::to_string),
            info.get("redis_version").unwrap_or("?").to_string(),
            info.int("used_memory_dataset")
                .and_then(|v| u64::try_from(v).ok()),
        )
    };
    shoal_sdk::host::progress(0, used, &format!("rdb backup of {}", instance.name));
    let ep = &instance.endpoint;
    // The password goes by environment, not on the command line (ps would show it).
    let out = Exec::new("redis-cli")
        .args([
            "-h",
            &ep.host,
            "-p",
            &ep.port.to_string(),
            "--user",
            user,
            "--no-auth-warning",
            "--rdb",
            "-",
        ])
        .env("REDISCLI_AUTH", pw)
        .run_into(into)?
        .ok_or_failed("redis-cli --rdb")?;
    // "Transfer finished with success after 189 bytes". With a diskless sync redis-cli
    // also writes the 40-byte end mark to stdout (it can only cut it off a file); the
    // restore keeps the first N bytes.
    let log = String::from_utf8_lossy(&out.stderr);
    let rdb_bytes = log
        .lines()
        .find_map(|l| l.split_once("Transfer finished with success after "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            HookError::failed(format!(
                "redis-cli did not report a finished transfer: {}",
                log.trim()
            ))
        })?;
    if rdb_bytes == 0 || out.streamed_bytes < rdb_bytes {
        return Err(HookError::failed(format!(
            "redis-cli reported {rdb_bytes} bytes of RDB but {} reached the backup",
            out.streamed_bytes
        )));
    }
    shoal_sdk::info!(
        "rdb backup of {}: {rdb_bytes} bytes of RDB ({} streamed)",
        instance.name,
        out.streamed_bytes
    );
    Ok(BackupInfo {
        method: "rdb".into(),
        engine_version: instance.engine_version.clone(),
        start_position: offset,
        end_position: None,
        labels: vec![
            ("tool".into(), "redis-cli --rdb".into()),
            ("rdb-bytes".into(), rdb_bytes.to_string()),
            ("redis-version".into(), version),
        ],
    })
}

/// `rdb` restore: the RDB into the stopped data directory, checked with redis-check-rdb.
fn rdb_restore(
    _: &mut Redis,
    instance: &Instance,
    _members: &[Member],
    info: &BackupInfo,
    from: &mut SourceReader<'_>,
    _recovery_follows: bool,
) -> HookResult<()> {
    let data = instance.need_data_dir()?;
    let dump = format!("{data}/dump.rdb");
    Exec::new("dd")
        .args([format!("of={dump}"), "bs=1M".into(), "status=none".into()])
        .run_from(from)?
        .ok_or_failed("dd")?;
    // Keep exactly the RDB: a diskless sync's end mark follows it in the stream.
    if let Some((_, n)) = info.labels.iter().find(|(k, _)| k == "rdb-bytes") {
        let n: u64 = n
            .parse()
            .map_err(|_| HookError::invalid(format!("label rdb-bytes is {n:?}")))?;
        Exec::new("truncate")
            .args(["-s".to_string(), n.to_string(), dump.clone()])
            .run_ok()?;
    }
    let magic = Exec::new("dd")
        .args([format!("if={dump}"), "bs=5".into(), "count=1".into()])
        .arg("status=none")
        .run_ok()?;
    if magic.stdout != b"REDIS" {
        return Err(HookError::failed(format!(
            "the backup is not an RDB file: it starts with {:?}, not \"REDIS\"",
            String::from_utf8_lossy(&magic.stdout)
        )));
    }
    let check = Exec::new("redis-check-rdb").arg(&dump).run()?;
    if check.exit_code != Some(0) {
        let said = check.stdout_text();
        let last: Vec<&str> = said.lines().rev().take(3).collect();
        return Err(HookError::failed(format!(
            "redis-check-rdb finds the restored RDB damaged: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    // With appendonly on, Redis 7 loads the append-only file, not dump.rdb; an old-style
    // appendonly.aof (an RDB is one, as its preamble) is taken over into appendonlydir at
    // the first start. With appendonly off it is ignored.
    Exec::new("dd")
        .args([
            format!("if={dump}"),
            format!("of={data}/appendonly.aof"),
            "bs=1M".into(),
            "status=none".into(),
        ])
        .run_ok()?;
    Ok(())
}

impl Engine for Redis {
    const BACKUP_METHODS: Methods<Self> = METHODS;

    fn new() -> Self {
        Redis { conn: None }
    }

    fn manifest(&self) -> AddonManifest {
        shoal_sdk::manifest_file!("addon.toml")
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        _params: &[Param],
    ) -> HookResult<RunPlan> {
        let conf = instance.need_config_dir()?;
        instance.need_data_dir()?;
        Ok(RunPlan {
            server: Command {
                program: "redis-server".into(),
                args: vec![format!("{conf}/redis.conf")],
                env: vec![],
            },
            // Nothing to initialise: a primary starts empty (or from a restored dump.rdb),
            // a replica gets its data from its primary by a full sync at its first start.
            init: vec![],
            readiness: Readiness::Probe,
            // SIGTERM: Redis waits (shutdown-timeout, 10 s) for lagging replicas, then saves.
            stop_signal: StopSignal::Term,
            stop_timeout_ms: 60_000,
            unprivileged: true,
            image: Some(format!(
                "docker.io/library/redis:{}",
                instance.engine_version
            )),
        })
    }

    fn render_config(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<Vec<File>> {
        let conf = config::redis_conf(instance, members, params, auth(instance)?)?;
        Ok(vec![File {
            path: "redis.conf".into(),
            contents: conf.into_bytes(),
            // It holds the password.
            mode: 0o600,
        }])
    }

    fn post_provision(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<()> {
        // The platform account comes from redis.conf; check that it works.
        self.with(instance, |c| c.ok(&["PING"]))
    }

    fn account_provision(&mut self, instance: &Instance, account: &Account) -> HookResult<()> {
        let name = &account.credentials.username;
        shoal_sdk::accounts::check_user_account(instance, name)?;
        let commands = match account.role {
            AccountRole::Superuser | AccountRole::ReadWrite => USER_COMMANDS,
            AccountRole::ReadOnly => "+@read +@connection -@admin",
            AccountRole::Monitor => "+info +ping +client|list +slowlog|get +latency|latest",
            AccountRole::Replication => {
                return Err(HookError::invalid(
                    "Redis replicas authenticate with the platform account; no other \
                     replication account exists",
                ))
            }
        };
        // ACL users live in each server's memory: set it on every instance (the host calls
        // this on each after it starts). The hash, not the password, goes over the wire.
        let mut args: Vec<String> = vec![
            "ACL".into(),
            "SETUSER".into(),
            name.clone(),
            "reset".into(),
            "on".into(),
            format!("#{}", password_hash(&account.credentials.password)),
            "~*".into(),
            "&*".into(),
        ];
        args.extend(commands.split_whitespace().map(str::to_string));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.with(instance, |c| c.ok(&argv))
    }

    fn pre_terminate(&mut self, _instance: &Instance, _members: &[Member]) -> HookResult<()> {
        Ok(())
    }

    fn member_join(
        &mut self,
        _instance: &Instance,
        _joining: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        // A Redis primary admits any replica that authenticates; nothing to prepare.
        Ok(())
    }

    fn member_leave(
        &mut self,
        instance: &Instance,
        leaving: &Member,
        members: &[Member],
    ) -> HookResult<()> {
        if instance.shard.is_some() {
            // Redis Cluster remembers every node it met: the others forget this one.
            return cluster::forget(instance, leaving, members, auth(instance)?, IO_TIMEOUT);
        }
        Ok(())
    }

    fn form_shards(&mut self, instance: &Instance, members: &[Member]) -> HookResult<()> {
        cluster::form(instance, members, auth(instance)?, IO_TIMEOUT).map(|_| ())
    }

    fn probe(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<RoleReport> {
        // A server that refuses the platform account answered: alive, degraded.
        if let Err(e) = self.conn(instance) {
            self.conn = None;
            if refused(&e) {
                return Ok(shoal_sdk::accounts::credentials_refused(instance, e));
            }
            return Err(e);
        }
        let sharded = instance.shard.is_some();
        let replies = self.with(instance, |c| {
            if sharded {
                c.pipeline(&[
                    &["INFO", "server", "replication", "persistence"],
                    &["CONFIG", "GET", "min-replicas-to-write"],
                    &["CLUSTER", "INFO"],
                    &["CLUSTER", "NODES"],
                ])
            } else {
                c.pipeline(&[
                    &["INFO", "server", "replication", "persistence"],
                    &["CONFIG", "GET", "min-replicas-to-write"],
                ])
            }
        })?;
        // Redis Cluster: the node's view of the cluster (state, its slots, the epoch).
        let cluster_view = sharded.then(|| {
            let text = |n: usize| replies.get(n).and_then(Reply::text).unwrap_or_default();
            cluster::probe_view(&Info::parse(&text(2)), &cluster::parse_nodes(&text(3)))
        });
        let peer = instance.address();
        let info = match replies.first() {
            Some(Reply::Error(e)) => return Err(resp::server_error(&peer, &["INFO"], e)),
            Some(r) => Info::parse(&r.text().unwrap_or_default()),
            None => return Err(HookError::failed("INFO: no reply")),
        };
        let fenced = match replies.get(1) {
            Some(Reply::Array(Some(items))) => items
                .get(1)
                .and_then(Reply::text)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v >= FENCE),
            _ => false,
        };
        let mut report = self.report(&info, &peer, fenced)?;
        if let Some((ok, has_slots, line, epoch)) = cluster_view {
            // A primary takes its shard's writes only while the cluster is whole and it
            // serves slots; a formed node in a failed cluster is degraded.
            report.writable = report.writable && ok && has_slots;
            report.term = epoch;
            if !ok && !line.starts_with("not yet") && report.health == Health::Healthy {
                report.health = Health::Degraded;
            }
            report.detail = format!("{}; {line}", report.detail);
        }
        Ok(report)
    }

    fn promote(&mut self, instance: &Instance, _term: u64, _members: &[Member]) -> HookResult<()> {
        self.with(instance, |c| {
            // Stop following (keeps the data and the replication history, so the other
            // replicas can continue from it with a partial resync), then lift any fence.
            c.ok(&["REPLICAOF", "NO", "ONE"])?;
            c.ok(&["CONFIG", "SET", "min-replicas-to-write", "0"])?;
            c.ok(&["CLIENT", "UNPAUSE"])?;
            let info = c.info(&["replication"])?;
            if info.get("role") != Some("master") {
                return Err(HookError::retryable(format!(
                    "{}: still not a primary after REPLICAOF NO ONE: {}",
                    c.peer(),
                    replication_summary(&info)
                )));
            }
            Ok(())
        })
    }

    fn demote(
        &mut self,
        instance: &Instance,
        new_primary: Option<&Member>,
        _members: &[Member],
    ) -> HookResult<()> {
        let pw = password(instance)?.to_string();
        self.with(instance, |c| {
            let info = c.info(&["replication"])?;
            if info.get("role") == Some("master") {
                // A primary is fenced in place: every write is refused from now on
                // (NOREPLICAS), and for a while writes wait instead (CLIENT PAUSE WRITE), which
                // also stops expiry and eviction so its offset holds still. It does not follow
                // `new_primary` now (that one may still be replicating from it): the host
                // stops it and starts it again as a replica of the new primary.
                c.ok(&["CONFIG", "SET", "min-replicas-to-write", &FENCE.to_string()])?;
                c.ok(&["CLIENT", "PAUSE", &PAUSE_MS.to_string(), "WRITE"])?;
                return Ok(());
            }
            // A replica (always read-only) follows the new primary: with the same
            // replication history a partial resync, otherwise a full one.
            if let Some(p) = new_primary {
                c.ok(&["CONFIG", "SET", "masterauth", &pw])?;
                let port = p.endpoint.port.to_string();
                let same = info.get("master_host") == Some(p.endpoint.host.as_str())
                    && info.get("master_port") == Some(port.as_str());
                if !same {
                    c.ok(&["REPLICAOF", &p.endpoint.host, &port])?;
                }
            }
            Ok(())
        })
    }

    fn switchover(
        &mut self,
        instance: &Instance,
        candidate: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        // The host has fenced this primary (demote): no write is taken any more. Wait until
        // the candidate has processed the whole replication stream up to here.
        let (target, me) = self.with(instance, |c| {
            let info = c.info(&["replication"])?;
            if info.get("role") != Some("master") {
                return Err(HookError::failed(format!(
                    "{} is not a primary: {}",
                    instance.name,
                    replication_summary(&info)
                )));
            }
            let target = info
                .int("master_repl_offset")
                .ok_or_else(|| HookError::failed("INFO replication has no master_repl_offset"))?;
            Ok((target, instance.endpoint.clone()))
        })?;
        let mut cand = connect_to(&candidate.endpoint, instance)
            .map_err(|e| e.context(format!("candidate {}", candidate.name)))?;
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let info = cand
                .info(&["replication"])
                .map_err(|e| e.context(format!("candidate {}", candidate.name)))?;
            let follows = info.get("role") == Some("slave")
                && info.get("master_host") == Some(me.host.as_str())
                && info.get("master_port") == Some(me.port.to_string().as_str());
            if !follows {
                return Err(HookError::failed(format!(
                    "{} does not follow {}: {}",
                    candidate.name,
                    instance.name,
                    replication_summary(&info)
                )));
            }
            let offset = info.int("master_repl_offset").unwrap_or(-1);
            if info.get("master_link_status") == Some("up") && offset >= target {
                // Lift the write pause; `min-replicas-to-write` keeps refusing writes. The
                // host stops this primary next, and a paused Redis holds its shutdown until
                // the replicas' periodic acknowledgement (up to 1 s): its request for an
                // acknowledgement is itself a paused write.
                self.with(instance, |c| c.ok(&["CLIENT", "UNPAUSE"]))
                    .map_err(|e| e.context("CLIENT UNPAUSE after the candidate caught up"))?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HookError::retryable(format!(
                    "{} is still {} bytes behind {} after {} s",
                    candidate.name,
                    target - offset,
                    instance.name,
                    CATCH_UP.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn rebuild(
        &mut self,
        _instance: &Instance,
        _source: &Member,
        _members: &[Member],
    ) -> HookResult<Vec<Command>> {
        // Nothing to rewind: the host moves the old data aside and starts the instance as a
        // replica of `source` (its rendered replicaof), which loads a full copy by itself.
        Ok(vec![])
    }

    fn set_sync(
        &mut self,
        _instance: &Instance,
        standbys: &[Member],
        quorum: u32,
    ) -> HookResult<()> {
        if standbys.is_empty() || quorum == 0 {
            return Ok(());
        }
        // min-replicas-to-write only refuses writes while too few replicas are connected;
        // it never waits for one to hold a write, so it is not synchronous replication.
        Err(HookError::invalid(
            "Redis has no synchronous replication: a write is acknowledged before any replica \
             has it (WAIT is per client); run Redis clusters with ha.mode async",
        ))
    }

    fn validate(&mut self, params: &[Param]) -> HookResult<Vec<ParamError>> {
        Ok(config::validate(params))
    }

    fn apply_dynamic(&mut self, instance: &Instance, changes: &[ParamChange]) -> HookResult<()> {
        let schema = config::schema();
        let defaults = shoal_sdk::params::Lookup::new(&schema, &[]);
        let wanted = shoal_sdk::params::wanted(changes, |name| {
            Ok(config::effective_value(
                &defaults,
                name,
                &instance.resources,
            ))
        })?;
        self.with(instance, |c| {
            shoal_sdk::params::apply_and_read_back(&mut Live(c), &wanted, Duration::ZERO)
        })
    }

    fn effective(&mut self, params: &[Param], resources: &Resources) -> HookResult<Vec<Param>> {
        Ok(config::effective(params, resources))
    }

    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let info = self.with(instance, |c| {
            c.info(&["clients", "memory", "stats", "replication"])
        })?;
        let mut m = Metrics::new("redis");
        m.from_stats(|stat| info.get(stat), STATS);
        m.finish()
    }

    fn write_marker(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        key: &str,
        value: &str,
    ) -> HookResult<()> {
        // Apart from users' keys; as durable as any write (the cluster's appendfsync).
        self.keyed(instance, &["SET", &marker_key(key), value])
            .map(|_| ())
    }

    fn read_markers(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        keys: &[String],
    ) -> HookResult<Vec<Option<String>>> {
        keys.iter()
            .map(|k| Ok(self.keyed(instance, &["GET", &marker_key(k)])?.text()))
            .collect()
    }
}

/// What `metrics` reads from `INFO`.
const STATS: &[Stat] = &[
    gauge(
        "connected_clients",
        "connected_clients",
        "Client connections.",
    ),
    gauge("used_memory", "used_memory", "Bytes allocated by Redis."),
    gauge("maxmemory", "maxmemory", "Memory limit (0: none)."),
    counter(
        "total_connections_received",
        "connections_received",
        "Connections accepted.",
    ),
    counter(
        "total_commands_processed",
        "commands_processed",
        "Commands processed.",
    ),
    counter(
        "keyspace_hits",
        "keyspace_hits",
        "Lookups that found a key.",
    ),
    counter(
        "keyspace_misses",
        "keyspace_misses",
        "Lookups that found nothing.",
    ),
    counter("expired_keys", "expired_keys", "Keys expired."),
    counter("evicted_keys", "evicted_keys", "Keys evicted at maxmemory."),
    gauge(
        "connected_slaves",
        "connected_slaves",
        "Replicas connected.",
    ),
    gauge(
        "master_repl_offset",
        "master_repl_offset",
        "Replication offset (bytes of the replication stream).",
    ),
];

shoal_sdk::export_engine!(Redis);

#[cfg(test)]
mod tests {
    #[test]
    fn the_backup_methods_are_the_manifests() {
        super::METHODS
            .check(&shoal_sdk::manifest_file!("addon.toml"))
            .unwrap();
    }
}
