//! Shoal addon for Apache ZooKeeper 3.8: a quorum cluster (an "ensemble"). ZooKeeper elects
//! its own leader (Zab); Shoal starts the members with the full server list, probes each with
//! the `srvr` and `conf` four-letter words for its mode, zxid and the engine's own view of
//! the membership, routes the read-write endpoint to the leader, and restarts members that
//! crash. Membership changes (scale, replacing a member) are ZooKeeper's dynamic
//! reconfiguration (`reconfig`), sent by the addon's own wire client ([`jute`]) as the
//! platform account, which is ZooKeeper's super user (its digest in zoo.cfg, never a
//! password). Users get a digest account holding every permission on `/`. Backups are
//! logical: every persistent znode, walked through the leader, written back into a new
//! ensemble. See docs/engines/zookeeper.md.

pub mod files;
pub mod jute;

use std::io::Write;
use std::time::Duration;

use jute::{Acl, Session, ZkError};
use serde_json::json;
use shoal_sdk::methods::{Method, Methods};
use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

/// Connect, read and write deadline of the probe's four-letter words.
const IO_TIMEOUT: Duration = Duration::from_millis(800);

/// Deadline of one request of a membership, account, backup or restore call.
const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// The four-letter words the probe uses: the only ones zoo.cfg allows.
const FOUR_LETTER_WORDS: &str = "srvr,mntr,ruok,conf";

/// Largest answer to a four-letter word read (`mntr` is ~2 KiB; `conf` grows with the
/// ensemble).
const MAX_FOUR_LETTER_ANSWER: usize = 1 << 20;

/// Where Debian's `zookeeper` package puts the server and what it needs besides.
const CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// The backup methods: the tree walked through the client protocol, and ZooKeeper's own
/// files.
const ZNODES: &str = "znodes";
const SNAPSHOT: &str = "snapshot";

struct ZooKeeper;

/// The server id (`myid`) of the instance named `name`: its ordinal plus one ("zk-0" → 1).
/// Shoal never reuses a name inside a running cluster, so ids never collide.
pub fn server_id(name: &str) -> HookResult<u64> {
    name.rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map(|n| n + 1)
        .ok_or_else(|| {
            HookError::invalid(format!(
                "instance name {name:?} does not end in -<ordinal>; cannot derive its server id"
            ))
        })
}

fn named_port(ports: &[NamedPort], who: &str, name: &str) -> HookResult<u16> {
    ports
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.port)
        .ok_or_else(|| HookError::invalid(format!("{who} has no port named {name:?}")))
}

/// `server.N=host:quorum:election:participant;host:client` for one member.
pub fn server_line(name: &str, host: &str, client: u16, ports: &[NamedPort]) -> HookResult<String> {
    let id = server_id(name)?;
    let peer = named_port(ports, name, "peer")?;
    let election = named_port(ports, name, "election")?;
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(format!(
        "server.{id}={h}:{peer}:{election}:participant;{h}:{client}"
    ))
}

/// The whole zoo.cfg of `instance`.
pub fn zoo_cfg(
    instance: &Instance,
    members: &[Member],
    p: &Lookup<'_>,
    data_dir: &str,
) -> HookResult<String> {
    let mut servers = vec![(
        server_id(&instance.name)?,
        server_line(
            &instance.name,
            &instance.endpoint.host,
            instance.endpoint.port,
            &instance.ports,
        )?,
    )];
    for m in members {
        servers.push((
            server_id(&m.name)?,
            server_line(&m.name, &m.endpoint.host, m.endpoint.port, &m.ports)?,
        ));
    }
    servers.sort();
    let user = shoal_sdk::accounts::platform_user(instance)?;
    let password = shoal_sdk::accounts::platform_password(instance)?;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("# Written by Shoal before every start; ZooKeeper rewrites it after a reconfig.".into());
    line(format!("dataDir={data_dir}"));
    line(format!("clientPortAddress={}", instance.endpoint.host));
    line(format!("clientPort={}", instance.endpoint.port));
    line(format!("tickTime={}", p.int("tick-time")?));
    line(format!("initLimit={}", p.int("init-limit")?));
    line(format!("syncLimit={}", p.int("sync-limit")?));
    line(format!("maxClientCnxns={}", p.int("max-client-cnxns")?));
    line(format!(
        "autopurge.snapRetainCount={}",
        p.int("autopurge-snap-retain-count")?
    ));
    line(format!(
        "autopurge.purgeInterval={}",
        p.int("autopurge-purge-interval")?
    ));
    line(format!("snapCount={}", p.int("snap-count")?));
    // Dynamic reconfiguration, for any ensemble size (one member included).
    line("reconfigEnabled=true".into());
    line("standaloneEnabled=false".into());
    line(format!("4lw.commands.whitelist={FOUR_LETTER_WORDS}"));
    line("admin.enableServer=false".into());
    // The platform account is the super user: its digest (a hash), read by ZooKeeper as the
    // system property zookeeper.DigestAuthenticationProvider.superDigest.
    line(format!(
        "DigestAuthenticationProvider.superDigest={}",
        jute::digest(user, password)
    ));
    for (_, s) in servers {
        line(s);
    }
    Ok(out)
}

/// What `srvr` says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Srvr {
    /// leader, follower, observer, standalone, read-only; empty when not serving.
    pub mode: String,
    pub zxid: u64,
    pub outstanding: u64,
    pub nodes: u64,
    pub version: String,
}

/// Parse a `srvr` answer; `None` when the server says it is not serving requests.
pub fn parse_srvr(text: &str) -> Option<Srvr> {
    if text.contains("not currently serving requests") {
        return None;
    }
    let mut s = Srvr::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Mode" => s.mode = v.to_string(),
            "Zxid" => {
                s.zxid = u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(0);
            }
            "Outstanding" => s.outstanding = v.parse().unwrap_or(0),
            "Node count" => s.nodes = v.parse().unwrap_or(0),
            "Zookeeper version" => {
                s.version = v.split([',', '-']).next().unwrap_or("").trim().to_string();
            }
            _ => {}
        }
    }
    if s.mode.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// The membership in a `conf` answer or the /zookeeper/config znode: (id, spec) of every
/// `server.N=` line, and the config version.
pub fn parse_membership(text: &str) -> (Vec<(u64, String)>, Option<u64>) {
    let mut servers = Vec::new();
    let mut version = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("server.") {
            if let Some((id, spec)) = rest.split_once('=') {
                if let Ok(id) = id.parse() {
                    servers.push((id, spec.to_string()));
                }
            }
        } else if let Some(v) = line.strip_prefix("version=") {
            version = u64::from_str_radix(v.trim(), 16).ok();
        }
    }
    servers.sort();
    (servers, version)
}

/// The role report for what a member said; `shoal_ids` are the server ids of the names Shoal
/// knows (this instance and its members).
pub fn report(srvr: Option<&Srvr>, me: u64, engine_ids: &[u64], shoal_ids: &[u64]) -> RoleReport {
    let Some(s) = srvr else {
        return RoleReport {
            role: "follower".into(),
            writable: false,
            term: None,
            lag_bytes: None,
            lag_ms: None,
            health: Health::Unhealthy,
            position: None,
            detail: format!(
                "not serving requests: no leader (fewer than a quorum of {} members reach \
                 each other)",
                shoal_ids.len() / 2 + 1
            ),
        };
    };
    let role = match s.mode.as_str() {
        "leader" | "standalone" => "leader",
        "observer" => "observer",
        _ => "follower",
    };
    let mut engine: Vec<u64> = engine_ids.to_vec();
    engine.sort_unstable();
    let mut shoal: Vec<u64> = shoal_ids.to_vec();
    shoal.sort_unstable();
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    if !engine.is_empty() && !engine.contains(&me) {
        // Started but not admitted yet: a non-voting follower until `reconfig -add` (which
        // member-join sends when the host calls it again once the member runs).
        return RoleReport {
            role: "observer".into(),
            writable: false,
            term: Some(s.zxid >> 32),
            lag_bytes: None,
            lag_ms: None,
            health: Health::Healthy,
            position: Some(s.zxid),
            detail: format!(
                "a non-voting follower: not in ZooKeeper's membership (servers {}) yet",
                list(&engine)
            ),
        };
    }
    let (health, detail) = if !engine.is_empty() && engine != shoal {
        (
            Health::Degraded,
            format!(
                "ZooKeeper's membership (servers {}) differs from Shoal's (servers {})",
                list(&engine),
                list(&shoal)
            ),
        )
    } else {
        (
            Health::Healthy,
            format!(
                "{role}; epoch {}, zxid 0x{:x}, {} znodes, {} outstanding",
                s.zxid >> 32,
                s.zxid,
                s.nodes,
                s.outstanding
            ),
        )
    };
    RoleReport {
        role: role.into(),
        writable: role == "leader",
        term: Some(s.zxid >> 32),
        lag_bytes: None,
        lag_ms: None,
        health,
        position: Some(s.zxid),
        detail,
    }
}

/// Send a four-letter word and read the answer to the end (the server closes).
fn four_letter(endpoint: &Endpoint, word: &str) -> HookResult<String> {
    shoal_sdk::net::ask_and_read_to_close(endpoint, word, IO_TIMEOUT, MAX_FOUR_LETTER_ANSWER)
        .map_err(|e| HookError::from(e).context(format!("{word} at {endpoint}")))
}

/// A ZooKeeper error as a hook error: connection trouble and a busy or quorum-less ensemble
/// are retryable, the rest failures.
fn zk_error(what: &str, e: ZkError) -> HookError {
    use jute::code;
    let text = format!("{what}: {e}");
    match e {
        ZkError::Io(io) => HookError::from(io).context(what),
        ZkError::Code(
            code::CONNECTION_LOSS
            | code::OPERATION_TIMEOUT
            | code::NEW_CONFIG_NO_QUORUM
            | code::RECONFIG_IN_PROGRESS
            | code::SESSION_EXPIRED
            | -120
            | -121,
        ) => HookError::Retryable(text),
        _ => HookError::Failed(text),
    }
}

/// A session with `instance` authenticated as the platform account (ZooKeeper's super user).
fn super_session(instance: &Instance) -> HookResult<Session> {
    let user = shoal_sdk::accounts::platform_user(instance)?;
    let password = shoal_sdk::accounts::platform_password(instance)?;
    let addr = instance.address();
    let mut s = Session::connect(&instance.endpoint, WRITE_TIMEOUT)
        .map_err(|e| zk_error(&format!("connect {addr}"), e))?;
    s.auth_digest(user, password)
        .map_err(|e| zk_error(&format!("authenticate at {addr}"), e))?;
    Ok(s)
}

/// The committed membership as the instance knows it (the /zookeeper/config znode).
fn engine_membership(s: &mut Session) -> HookResult<Vec<(u64, String)>> {
    let (data, _) = s
        .get_data("/zookeeper/config")
        .map_err(|e| zk_error("read /zookeeper/config", e))?;
    Ok(parse_membership(&String::from_utf8_lossy(&data)).0)
}

/// Whether a `host:peer:election[:type];client` spec is a voting member.
pub fn is_participant(spec: &str) -> bool {
    let server = spec.split(';').next().unwrap_or(spec);
    !server.ends_with(":observer")
}

/// Whether `voters` voting members alone are a quorum of the membership with one more: a
/// reconfig adding a member that does not run yet commits only then.
pub fn can_admit_before_start(voters: usize) -> bool {
    // The new membership's quorum, (voters + 1) / 2 + 1, at most `voters`.
    voters > voters.div_ceil(2)
}

/// `reconfig -add` of the server `line`, retrying while the ensemble is busy or a member
/// just started is not yet synced.
fn admit(s: &mut Session, line: &str) -> HookResult<()> {
    let mut tries = 0;
    loop {
        match s.reconfig(line, "") {
            Ok(_) => return Ok(()),
            Err(e) => {
                let e = zk_error(&format!("reconfig -add {line}"), e);
                tries += 1;
                if !matches!(e, HookError::Retryable(_)) || tries >= 10 {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Join a znode path and a child name.
fn child_path(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// Replace the digest ids `old` by `new` in the ACL of every znode below the root (not the
/// root itself, nor `/zookeeper`).
fn redigest_tree(s: &mut Session, old: &[String], new: &str) -> HookResult<()> {
    let mut stack = vec!["/".to_string()];
    while let Some(path) = stack.pop() {
        let children = match s.get_children(&path) {
            Ok(c) => c,
            Err(ZkError::Code(jute::code::NO_NODE)) => continue,
            Err(e) => return Err(zk_error(&format!("getChildren {path}"), e)),
        };
        for c in children {
            let p = child_path(&path, &c);
            if p == "/zookeeper" {
                continue;
            }
            let acl = match s.get_acl(&p) {
                Ok(a) => a,
                Err(ZkError::Code(jute::code::NO_NODE)) => continue,
                Err(e) => return Err(zk_error(&format!("getACL {p}"), e)),
            };
            if acl
                .iter()
                .any(|a| a.scheme == "digest" && old.contains(&a.id))
            {
                let fixed: Vec<Acl> = acl
                    .into_iter()
                    .map(|mut a| {
                        if a.scheme == "digest" && old.contains(&a.id) {
                            a.id = new.to_string();
                        }
                        a
                    })
                    .collect();
                match s.set_acl(&p, &fixed) {
                    Ok(()) | Err(ZkError::Code(jute::code::NO_NODE)) => {}
                    Err(e) => return Err(zk_error(&format!("setACL {p}"), e)),
                }
            }
            stack.push(p);
        }
    }
    Ok(())
}

/// `snapshot` backup: a tar of the data directory's `version-2` (snapshots, transaction
/// logs, epochs), made by `tar` on the host as the engine's user while the member runs. The
/// zxid the member had processed before the copy is recorded: the restore checks that the
/// files reach it.
fn snapshot_backup(instance: &Instance, into: &mut SinkWriter<'_>) -> HookResult<BackupInfo> {
    let data = instance
        .data_dir
        .clone()
        .ok_or_else(|| HookError::invalid("the host gave no data directory"))?;
    let start = parse_srvr(&four_letter(&instance.endpoint, "srvr")?)
        .ok_or_else(|| HookError::retryable("the member is not serving requests"))?;
    shoal_sdk::host::progress(0, None, &format!("tar of {}/version-2", instance.name));
    let out = Exec::new("tar")
        .args(["-C", &data, "-cf", "-", "version-2"])
        .run_into(into)?;
    // 1: a file changed while tar read it (the open log grows); the restore reads logs up
    // to their last intact entry.
    if !matches!(out.exit_code, Some(0) | Some(1)) {
        return Err(HookError::failed(format!(
            "tar of version-2 failed ({:?}): {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(BackupInfo {
        method: SNAPSHOT.into(),
        engine_version: instance.engine_version.clone(),
        start_position: Some(format!("0x{:x}", start.zxid)),
        end_position: None,
        labels: vec![
            ("tool".into(), "tar of version-2".into()),
            ("zxid".into(), format!("{:x}", start.zxid)),
            ("server-version".into(), start.version),
            ("bytes".into(), out.streamed_bytes.to_string()),
        ],
    })
}

/// `snapshot` restore: load the files (the newest intact snapshot, the transactions logged
/// after it), check they reach the zxid the backup recorded, and create every persistent
/// znode (but `/zookeeper`) through `instance` with the ACL the new cluster's root carries.
fn snapshot_restore(
    instance: &Instance,
    info: &BackupInfo,
    from: &mut SourceReader<'_>,
) -> HookResult<()> {
    let (nodes, base, last) = files::load(std::io::BufReader::with_capacity(1 << 20, from))
        .map_err(|e| HookError::failed(format!("reading the snapshot backup: {e}")))?;
    let recorded = info
        .labels
        .iter()
        .find(|(k, _)| k == "zxid")
        .and_then(|(_, v)| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    // A new epoch's first zxid (counter 0) names no transaction.
    if recorded & 0xffff_ffff != 0 && last < recorded {
        return Err(HookError::failed(format!(
            "the backup's files reach zxid 0x{last:x}, but the member had processed 0x{recorded:x} \
             when the backup began: transactions are missing"
        )));
    }
    shoal_sdk::info!(
        "snapshot backup: snapshot 0x{base:x}, transactions replayed to 0x{last:x}, {} znodes",
        nodes.len()
    );
    let mut s = super_session(instance)?;
    let acl = s.get_acl("/").map_err(|e| zk_error("getACL /", e))?;
    let total = nodes.len() as u64;
    let mut done = 0u64;
    for (path, data) in &nodes {
        done += 1;
        if path == "/zookeeper" || path.starts_with("/zookeeper/") {
            continue;
        }
        if path == "/" {
            s.set_data("/", data)
                .map_err(|e| zk_error("setData /", e))?;
            continue;
        }
        match s.create(path, data, &acl) {
            Ok(_) => {}
            Err(ZkError::Code(jute::code::NODE_EXISTS)) => {
                s.set_data(path, data)
                    .map_err(|e| zk_error(&format!("setData {path}"), e))?;
            }
            Err(e) => return Err(zk_error(&format!("create {path}"), e)),
        }
        if done.is_multiple_of(100) {
            shoal_sdk::host::progress(done, Some(total), "znodes");
        }
    }
    s.close();
    Ok(())
}

/// The `mntr` answer as name → value (tab-separated lines).
pub fn parse_mntr(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The `mntr` fields exported as metrics: name, kind, help.
const MNTR_FIELDS: &[(&str, MetricKind, &str)] = &[
    ("zk_znode_count", MetricKind::Gauge, "Znodes in the tree."),
    (
        "zk_ephemerals_count",
        MetricKind::Gauge,
        "Ephemeral znodes.",
    ),
    ("zk_watch_count", MetricKind::Gauge, "Watches set."),
    (
        "zk_approximate_data_size",
        MetricKind::Gauge,
        "Bytes of znode data and paths.",
    ),
    (
        "zk_num_alive_connections",
        MetricKind::Gauge,
        "Client connections.",
    ),
    (
        "zk_outstanding_requests",
        MetricKind::Gauge,
        "Requests queued, not yet answered.",
    ),
    (
        "zk_avg_latency",
        MetricKind::Gauge,
        "Average request latency (ms).",
    ),
    (
        "zk_max_latency",
        MetricKind::Gauge,
        "Highest request latency (ms).",
    ),
    (
        "zk_packets_received",
        MetricKind::Counter,
        "Packets received.",
    ),
    ("zk_packets_sent", MetricKind::Counter, "Packets sent."),
    (
        "zk_synced_followers",
        MetricKind::Gauge,
        "Followers in sync with this leader (leader only).",
    ),
    (
        "zk_pending_syncs",
        MetricKind::Gauge,
        "Followers being synced (leader only).",
    ),
    ("zk_quorum_size", MetricKind::Gauge, "Votes a commit needs."),
];

/// Samples from a parsed `mntr`: the fields above (`zookeeper_…`, counters `…_total`) and
/// `zookeeper_leader` (1 on the leader).
pub fn samples(mntr: &std::collections::BTreeMap<String, String>) -> Vec<Sample> {
    let mut out: Vec<Sample> = MNTR_FIELDS
        .iter()
        .filter_map(|(field, kind, help)| {
            let value = mntr.get(*field)?.parse::<f64>().ok()?;
            let base = field.trim_start_matches("zk_");
            Some(Sample {
                name: match kind {
                    MetricKind::Counter => format!("zookeeper_{base}_total"),
                    MetricKind::Gauge => format!("zookeeper_{base}"),
                },
                kind: *kind,
                value,
                labels: vec![],
                help: (*help).into(),
            })
        })
        .collect();
    if let Some(state) = mntr.get("zk_server_state") {
        out.push(Sample {
            name: "zookeeper_leader".into(),
            kind: MetricKind::Gauge,
            value: if state == "leader" { 1.0 } else { 0.0 },
            labels: vec![],
            help: "1 on the ensemble's leader, 0 elsewhere.".into(),
        });
    }
    out
}

/// The backup methods (`addon.toml`'s `[[backup-methods]]`).
const METHODS: Methods<ZooKeeper> = Methods(&[
    Method {
        name: ZNODES,
        backup: znodes_backup,
        restore: znodes_restore,
    },
    Method {
        name: SNAPSHOT,
        backup: |_, instance, _, into| snapshot_backup(instance, into),
        restore: |_, instance, _, info, from, _| snapshot_restore(instance, info, from),
    },
]);

/// Every persistent znode below `/` (but `/zookeeper`), parents first, as JSON lines
/// `{"path": …, "data": base64}`.
fn znodes_backup(
    _: &mut ZooKeeper,
    instance: &Instance,
    _params: &[Param],
    into: &mut SinkWriter<'_>,
) -> HookResult<BackupInfo> {
    let start = parse_srvr(&four_letter(&instance.endpoint, "srvr")?)
        .ok_or_else(|| HookError::retryable("the member is not serving requests"))?;
    let mut s = super_session(instance)?;
    let mut stack = vec!["/".to_string()];
    let mut written = 0u64;
    while let Some(path) = stack.pop() {
        let (data, stat) = match s.get_data(&path) {
            Ok(d) => d,
            // Deleted while the walk ran.
            Err(ZkError::Code(jute::code::NO_NODE)) => continue,
            Err(e) => return Err(zk_error(&format!("getData {path}"), e)),
        };
        if stat.ephemeral_owner != 0 {
            continue;
        }
        let line = json!({ "path": path, "data": jute::base64(&data) }).to_string();
        into.write_all(line.as_bytes())
            .and_then(|()| into.write_all(b"\n"))
            .map_err(|e| HookError::failed(format!("writing the backup: {e}")))?;
        written += 1;
        if written.is_multiple_of(100) {
            shoal_sdk::host::progress(written, Some(start.nodes), "znodes");
        }
        if stat.num_children > 0 {
            let mut children = match s.get_children(&path) {
                Ok(c) => c,
                Err(ZkError::Code(jute::code::NO_NODE)) => continue,
                Err(e) => return Err(zk_error(&format!("getChildren {path}"), e)),
            };
            children.sort();
            for c in children.into_iter().rev() {
                let p = child_path(&path, &c);
                if p != "/zookeeper" {
                    stack.push(p);
                }
            }
        }
    }
    s.close();
    shoal_sdk::host::progress(written, Some(written), "znodes");
    let end = parse_srvr(&four_letter(&instance.endpoint, "srvr")?).unwrap_or_default();
    Ok(BackupInfo {
        method: ZNODES.into(),
        engine_version: instance.engine_version.clone(),
        start_position: Some(format!("0x{:x}", start.zxid)),
        end_position: Some(format!("0x{:x}", end.zxid.max(start.zxid))),
        labels: vec![
            ("znodes".into(), written.to_string()),
            ("server-version".into(), start.version),
        ],
    })
}

/// Create every znode of a "znodes" backup through `instance` (parents come first), with
/// the ACL the restored cluster's root has; an existing one gets the data. The count is
/// checked against the backup's record.
fn znodes_restore(
    _: &mut ZooKeeper,
    instance: &Instance,
    _members: &[Member],
    info: &BackupInfo,
    from: &mut SourceReader<'_>,
    _recovery_follows: bool,
) -> HookResult<()> {
    use std::io::BufRead;
    let want: Option<u64> = info
        .labels
        .iter()
        .find(|(k, _)| k == "znodes")
        .and_then(|(_, v)| v.parse().ok());
    let mut s = super_session(instance)?;
    let acl = s.get_acl("/").map_err(|e| zk_error("getACL /", e))?;
    let mut restored = 0u64;
    for line in std::io::BufReader::new(from).lines() {
        let line = line.map_err(|e| HookError::failed(format!("reading the backup: {e}")))?;
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| HookError::failed(format!("a line of the backup is not JSON: {e}")))?;
        let path = v
            .get("path")
            .and_then(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| HookError::failed("a line of the backup has no path"))?;
        let data = v
            .get("data")
            .and_then(|d| d.as_str())
            .and_then(jute::unbase64)
            .ok_or_else(|| HookError::failed(format!("{path}: data not in base64")))?;
        if path == "/" {
            s.set_data("/", &data)
                .map_err(|e| zk_error("setData /", e))?;
        } else {
            match s.create(path, &data, &acl) {
                Ok(_) => {}
                Err(ZkError::Code(jute::code::NODE_EXISTS)) => {
                    s.set_data(path, &data)
                        .map_err(|e| zk_error(&format!("setData {path}"), e))?;
                }
                Err(e) => return Err(zk_error(&format!("create {path}"), e)),
            }
        }
        restored += 1;
        if restored.is_multiple_of(100) {
            shoal_sdk::host::progress(restored, want, "znodes");
        }
    }
    s.close();
    if let Some(want) = want.filter(|w| *w != restored) {
        return Err(HookError::failed(format!(
            "the backup holds {restored} znodes, its record says {want}"
        )));
    }
    Ok(())
}

impl Engine for ZooKeeper {
    const BACKUP_METHODS: Methods<Self> = METHODS;

    fn new() -> Self {
        ZooKeeper
    }

    fn manifest(&self) -> AddonManifest {
        shoal_sdk::manifest_file!("addon.toml")
    }

    fn render_config(
        &mut self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> HookResult<Vec<File>> {
        let schema = params_schema();
        let p = Lookup::new(&schema, params);
        let data = instance
            .data_dir
            .clone()
            .ok_or_else(|| HookError::invalid("the host gave no data directory"))?;
        Ok(vec![File {
            path: "zoo.cfg".into(),
            contents: zoo_cfg(instance, members, &p, &data)?.into_bytes(),
            // It holds the super user's digest.
            mode: 0o600,
        }])
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        params: &[Param],
    ) -> HookResult<RunPlan> {
        let schema = params_schema();
        let p = Lookup::new(&schema, params);
        let data = instance
            .data_dir
            .clone()
            .ok_or_else(|| HookError::invalid("the host gave no data directory"))?;
        let conf = instance
            .config_dir
            .clone()
            .ok_or_else(|| HookError::invalid("the host gave no config directory"))?;
        let id = server_id(&instance.name)?;
        let heap_mb = (p.int("jvm-heap")? >> 20).max(32);
        Ok(RunPlan {
            server: Command {
                program: "java".into(),
                args: vec![
                    format!("-Xmx{heap_mb}m"),
                    // Small and quick on a small machine: one GC thread, C1 only.
                    "-XX:+UseSerialGC".into(),
                    "-XX:TieredStopAtLevel=1".into(),
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn".into(),
                    "-Dorg.slf4j.simpleLogger.logFile=System.err".into(),
                    "-cp".into(),
                    CLASSPATH.into(),
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                    format!("{conf}/zoo.cfg"),
                ],
                env: vec![],
            },
            // The server id lives in the data directory (ZooKeeper reads it only there):
            // written once, on empty data.
            init: vec![Command {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    "printf '%s\\n' \"$1\" > \"$2/myid\"".into(),
                    "write-myid".into(),
                    id.to_string(),
                    data,
                ],
                env: vec![],
            }],
            // Ready when it serves requests: a leader is elected.
            readiness: Readiness::Probe,
            stop_signal: StopSignal::Term,
            stop_timeout_ms: 10000,
            unprivileged: true,
            image: Some("zookeeper:3.8".into()),
        })
    }

    fn probe(&mut self, instance: &Instance, members: &[Member]) -> HookResult<RoleReport> {
        let srvr = parse_srvr(&four_letter(&instance.endpoint, "srvr")?);
        let mut shoal_ids = vec![server_id(&instance.name)?];
        for m in members {
            shoal_ids.push(server_id(&m.name)?);
        }
        let engine_ids: Vec<u64> = if srvr.is_some() {
            four_letter(&instance.endpoint, "conf")
                .map(|c| parse_membership(&c).0.into_iter().map(|(i, _)| i).collect())
                .unwrap_or_default()
        } else {
            vec![]
        };
        Ok(report(srvr.as_ref(), shoal_ids[0], &engine_ids, &shoal_ids))
    }

    /// `reconfig -add` of `joining` through `instance`, before it starts: the others are a
    /// quorum of the new membership, so the change commits without it. Already a member
    /// with the same address (a retried call): nothing to do.
    fn member_join(
        &mut self,
        instance: &Instance,
        joining: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        let line = server_line(
            &joining.name,
            &joining.endpoint.host,
            joining.endpoint.port,
            &joining.ports,
        )?;
        let id = server_id(&joining.name)?;
        let spec = line.split_once('=').map(|(_, s)| s).unwrap_or_default();
        let mut s = super_session(instance)?;
        let now = engine_membership(&mut s)?;
        if now.iter().any(|(i, sp)| *i == id && sp == spec) {
            s.close();
            return Ok(());
        }
        let voters = now
            .iter()
            .filter(|(i, sp)| *i != id && is_participant(sp))
            .count();
        if !can_admit_before_start(voters) && !joining.healthy {
            // ZooKeeper commits a reconfig only when a quorum of the new membership is
            // connected and synced: one voter cannot make two before the second runs. The
            // member starts as a non-voting follower (its zoo.cfg lists it); the host calls
            // member-join again once it runs, and it is added then: ZooKeeper's own
            // procedure.
            shoal_sdk::info!(
                "{}: admitted once it runs ({voters} voting member(s) cannot commit a \
                 membership of {} without it)",
                joining.name,
                voters + 1
            );
            s.close();
            return Ok(());
        }
        let r = admit(&mut s, &line);
        s.close();
        r
    }

    /// `reconfig -remove` of `leaving` through `instance`, while it still runs (the others
    /// commit it). Not a member (a retried call): nothing to do.
    fn member_leave(
        &mut self,
        instance: &Instance,
        leaving: &Member,
        _members: &[Member],
    ) -> HookResult<()> {
        let id = server_id(&leaving.name)?;
        let mut s = super_session(instance)?;
        let now = engine_membership(&mut s)?;
        if !now.iter().any(|(i, _)| *i == id) {
            s.close();
            return Ok(());
        }
        let r = s
            .reconfig("", &id.to_string())
            .map_err(|e| zk_error(&format!("reconfig -remove {id}"), e));
        s.close();
        r.map(|_| ())
    }

    /// The user's digest account: an entry `digest:name:hash` on the root znode's ACL with
    /// every permission (read-only and monitor accounts: READ), replacing the account's
    /// earlier entry and the open `world:anyone` one. ZooKeeper keeps no user list: an
    /// account is its digest in ACLs, and clients `addauth digest name:password`. A new
    /// password is given to every znode whose ACL names the old one.
    fn account_provision(&mut self, instance: &Instance, account: &Account) -> HookResult<()> {
        let name = &account.credentials.username;
        shoal_sdk::accounts::check_user_account(instance, name)?;
        let perms = match account.role {
            AccountRole::Superuser | AccountRole::ReadWrite => jute::PERM_ALL,
            AccountRole::ReadOnly | AccountRole::Monitor => jute::PERM_READ,
            AccountRole::Replication => {
                return Err(HookError::invalid(
                    "ZooKeeper members replicate through Zab; there is no replication account",
                ))
            }
        };
        let id = jute::digest(name, &account.credentials.password);
        let mut s = super_session(instance)?;
        let acl = s.get_acl("/").map_err(|e| zk_error("getACL /", e))?;
        let mine = format!("{name}:");
        let is_mine = |a: &Acl| a.scheme == "digest" && a.id.starts_with(&mine);
        // A new password: the account's znodes carry the old digest in their ACLs (`auth`
        // and `digest` ACLs store the hash); give them the new one, the root last, so that an
        // interrupted call finds the old digest on the root and walks again.
        let old: Vec<String> = acl
            .iter()
            .filter(|a| is_mine(a) && a.id != id)
            .map(|a| a.id.clone())
            .collect();
        if !old.is_empty() {
            redigest_tree(&mut s, &old, &id)?;
        }
        let mut want: Vec<Acl> = acl
            .iter()
            .filter(|a| !(a.scheme == "world" || is_mine(a)))
            .cloned()
            .collect();
        want.push(Acl {
            perms,
            scheme: "digest".into(),
            id,
        });
        if want != acl {
            s.set_acl("/", &want).map_err(|e| zk_error("setACL /", e))?;
        }
        s.close();
        Ok(())
    }

    /// `mntr` (allow-listed) on the client port.
    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let text = four_letter(&instance.endpoint, "mntr")?;
        if text.contains("not currently serving requests") {
            return Err(HookError::retryable(
                "the member is not serving requests (no quorum)",
            ));
        }
        Ok(samples(&parse_mntr(&text)))
    }

    fn validate(&mut self, params: &[Param]) -> HookResult<Vec<ParamError>> {
        let schema = params_schema();
        let mut errors = shoal_sdk::params::validate(&schema, params);
        if errors.is_empty() {
            errors.extend(cross_checks(&Lookup::new(&schema, params))?);
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
        // Apart from users' znodes, with the root's ACL; acknowledged once a quorum has it.
        let mut s = super_session(instance)?;
        let acl = s.get_acl("/").map_err(|e| zk_error("getACL /", e))?;
        let base = format!("/{}", shoal_sdk::markers::NAMESPACE);
        let path = format!("{base}/markers/{key}");
        for (p, data) in [
            (base.clone(), &b""[..]),
            (format!("{base}/markers"), &b""[..]),
            (path.clone(), value.as_bytes()),
        ] {
            match s.create(&p, data, &acl) {
                Ok(_) => {}
                Err(ZkError::Code(jute::code::NODE_EXISTS)) if p != path => {}
                Err(ZkError::Code(jute::code::NODE_EXISTS)) => {
                    s.set_data(&p, data)
                        .map_err(|e| zk_error(&format!("setData {p}"), e))?;
                }
                Err(e) => return Err(zk_error(&format!("create {p}"), e)),
            }
        }
        s.close();
        Ok(())
    }

    fn read_markers(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        keys: &[String],
    ) -> HookResult<Vec<Option<String>>> {
        let mut s = super_session(instance)?;
        // A follower may be behind the leader: catch up first.
        s.sync("/").map_err(|e| zk_error("sync", e))?;
        let base = format!("/{}/markers", shoal_sdk::markers::NAMESPACE);
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(match s.get_data(&format!("{base}/{k}")) {
                Ok((data, _)) => Some(String::from_utf8_lossy(&data).into_owned()),
                Err(ZkError::Code(jute::code::NO_NODE)) => None,
                Err(e) => return Err(zk_error(&format!("getData {base}/{k}"), e)),
            });
        }
        s.close();
        Ok(out)
    }
}

/// Rules between parameters the schema cannot state.
pub fn cross_checks(p: &Lookup<'_>) -> HookResult<Vec<ParamError>> {
    let mut errors = Vec::new();
    let (init, sync) = (p.int("init-limit")?, p.int("sync-limit")?);
    if init < sync {
        errors.push(ParamError {
            name: "init-limit".into(),
            message: format!(
                "{init} ticks is less than sync-limit ({sync}): a follower's first sync (a \
                 whole snapshot) would get less time than any later one"
            ),
        });
    }
    let tick = p.int("tick-time")?;
    if tick * sync > 60_000 {
        errors.push(ParamError {
            name: "sync-limit".into(),
            message: format!(
                "{sync} ticks of {tick} ms is more than a minute: a dead leader would go \
                 unnoticed that long"
            ),
        });
    }
    Ok(errors)
}

/// The parameter schema (zoo.cfg settings and the JVM heap).
pub fn params_schema() -> Vec<ParamSpec> {
    shoal_sdk::manifest_file!("addon.toml").parameters
}

shoal_sdk::export_engine!(ZooKeeper);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_methods_are_the_manifests() {
        METHODS.check(&ZooKeeper::new().manifest()).unwrap();
    }

    fn port(name: &str, port: u16) -> NamedPort {
        NamedPort {
            name: name.into(),
            port,
        }
    }

    fn instance(name: &str, base: u16) -> Instance {
        Instance {
            cluster: "zk".into(),
            component: "zookeeper".into(),
            name: name.into(),
            engine_version: "3.8".into(),
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port: base,
            },
            ports: vec![
                port("client", base),
                port("peer", base + 1),
                port("election", base + 2),
            ],
            data_dir: Some("/d".into()),
            config_dir: Some("/c".into()),
            archive_dir: None,
            role: None,
            shard: None,
            term: 0,
            credentials: Some(shoal_sdk::Credentials {
                username: "shoal".into(),
                password: "secret".into(),
            }),
            resources: Resources {
                cpu_millis: 0,
                memory_bytes: 0,
                storage_bytes: 0,
            },
        }
    }

    fn member(name: &str, base: u16) -> Member {
        let i = instance(name, base);
        Member {
            name: i.name,
            endpoint: i.endpoint,
            ports: i.ports,
            role: None,
            healthy: false,
            shard: None,
        }
    }

    #[test]
    fn server_ids_come_from_the_ordinal() {
        assert_eq!(server_id("zk-0").unwrap(), 1);
        assert_eq!(server_id("my-zk-12").unwrap(), 13);
        assert!(server_id("zk").is_err());
    }

    #[test]
    fn zoo_cfg_lists_every_server_and_no_password() {
        let schema = params_schema();
        let params = vec![Param {
            name: "tick-time".into(),
            value: Value::Integer(500),
        }];
        let p = Lookup::new(&schema, &params);
        let cfg = zoo_cfg(
            &instance("zk-1", 4000),
            &[member("zk-0", 3000), member("zk-2", 5000)],
            &p,
            "/d",
        )
        .unwrap();
        assert!(cfg.contains("\ntickTime=500\n"), "{cfg}");
        assert!(cfg.contains("\ninitLimit=10\n"), "{cfg}");
        assert!(
            cfg.contains("clientPort=4000\nclientPortAddress")
                || cfg.contains("clientPortAddress=127.0.0.1\nclientPort=4000")
        );
        assert!(cfg.contains("reconfigEnabled=true\nstandaloneEnabled=false"));
        assert!(cfg.contains("4lw.commands.whitelist=srvr,mntr,ruok,conf"));
        assert!(cfg.contains("admin.enableServer=false"));
        let servers: Vec<&str> = cfg.lines().filter(|l| l.starts_with("server.")).collect();
        assert_eq!(
            servers,
            [
                "server.1=127.0.0.1:3001:3002:participant;127.0.0.1:3000",
                "server.2=127.0.0.1:4001:4002:participant;127.0.0.1:4000",
                "server.3=127.0.0.1:5001:5002:participant;127.0.0.1:5000",
            ]
        );
        assert!(cfg.contains(
            "DigestAuthenticationProvider.superDigest=shoal:+IGACi6D91Ch462lsn2VNYTKUck="
        ));
        assert!(!cfg.contains("secret"), "{cfg}");
    }

    #[test]
    fn the_run_plan_writes_myid_and_keeps_secrets_out_of_argv() {
        let plan = ZooKeeper
            .run_spec(&instance("zk-2", 4000), &[], &[])
            .unwrap();
        assert_eq!(plan.server.program, "java");
        assert!(plan.server.args.contains(&"-Xmx256m".to_string()));
        assert_eq!(plan.server.args.last().unwrap(), "/c/zoo.cfg");
        assert!(!plan.server.args.iter().any(|a| a.contains("secret")));
        assert_eq!(plan.init[0].program, "sh");
        assert_eq!(plan.init[0].args[3..], ["3".to_string(), "/d".to_string()]);
    }

    const SRVR_LEADER: &str =
        "Zookeeper version: 3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
        Latency min/avg/max: 0/0.0/0\nReceived: 1\nSent: 0\nConnections: 1\nOutstanding: 2\n\
        Zxid: 0x300000007\nMode: leader\nNode count: 5\nProposal sizes last/min/max: -1/-1/-1\n";

    #[test]
    fn srvr_gives_mode_epoch_and_counter() {
        let s = parse_srvr(SRVR_LEADER).unwrap();
        assert_eq!(s.mode, "leader");
        assert_eq!(s.zxid, 0x300000007);
        assert_eq!((s.outstanding, s.nodes), (2, 5));
        assert_eq!(s.version, "3.8.0");
        assert_eq!(
            parse_srvr("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
    }

    const CONF: &str = "clientPort=23003\nserverId=3\nmembership: \n\
        server.1=127.0.0.1:23011:23021:participant;127.0.0.1:23001\n\
        server.2=127.0.0.1:23012:23022:participant;127.0.0.1:23002\n\
        server.3=127.0.0.1:23013:23023:participant;127.0.0.1:23003\n\
        version=100000002";

    #[test]
    fn conf_gives_the_membership_and_its_version() {
        let (servers, version) = parse_membership(CONF);
        assert_eq!(
            servers.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            servers[1].1,
            "127.0.0.1:23012:23022:participant;127.0.0.1:23002"
        );
        assert_eq!(version, Some(0x100000002));
    }

    #[test]
    fn the_leader_is_writable_and_its_epoch_is_the_term() {
        let s = parse_srvr(SRVR_LEADER).unwrap();
        let r = report(Some(&s), 3, &[1, 2, 3], &[3, 1, 2]);
        assert_eq!((r.role.as_str(), r.writable), ("leader", true));
        assert_eq!((r.term, r.position), (Some(3), Some(0x300000007)));
        assert_eq!(r.health, Health::Healthy);
        let f = Srvr {
            mode: "follower".into(),
            ..s.clone()
        };
        let r = report(Some(&f), 1, &[1, 2, 3], &[1, 2, 3]);
        assert_eq!((r.role.as_str(), r.writable), ("follower", false));
    }

    #[test]
    fn no_quorum_is_unhealthy_and_a_foreign_membership_degraded() {
        let r = report(None, 1, &[], &[1, 2, 3]);
        assert_eq!(r.health, Health::Unhealthy);
        assert!(r.detail.contains("quorum of 2"), "{}", r.detail);
        let s = parse_srvr(SRVR_LEADER).unwrap();
        let r = report(Some(&s), 1, &[1, 2], &[1, 2, 3]);
        assert_eq!(r.health, Health::Degraded);
        assert!(r.detail.contains("differs"), "{}", r.detail);
        // A member not admitted yet is a healthy non-voting follower.
        let r = report(Some(&s), 3, &[1, 2], &[1, 2, 3]);
        assert_eq!((r.role.as_str(), r.writable), ("observer", false));
        assert_eq!(r.health, Health::Healthy);
    }

    #[test]
    fn parameters_are_checked_across_fields() {
        let schema = params_schema();
        let bad = vec![
            Param {
                name: "init-limit".into(),
                value: Value::Integer(2),
            },
            Param {
                name: "sync-limit".into(),
                value: Value::Integer(5),
            },
        ];
        let errors = cross_checks(&Lookup::new(&schema, &bad)).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].name, "init-limit");
        assert!(cross_checks(&Lookup::new(&schema, &[])).unwrap().is_empty());
        let low = vec![Param {
            name: "autopurge-snap-retain-count".into(),
            value: Value::Integer(2),
        }];
        assert!(!shoal_sdk::params::validate(&schema, &low).is_empty());
    }

    #[test]
    fn mntr_becomes_samples() {
        let m = parse_mntr(
            "zk_version\t3.8.0\nzk_server_state\tleader\nzk_znode_count\t17\n\
             zk_packets_received\t42\nzk_synced_followers\t2\n",
        );
        let s = samples(&m);
        let get = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.value);
        assert_eq!(get("zookeeper_znode_count"), Some(17.0));
        assert_eq!(get("zookeeper_packets_received_total"), Some(42.0));
        assert_eq!(get("zookeeper_synced_followers"), Some(2.0));
        assert_eq!(get("zookeeper_leader"), Some(1.0));
        assert_eq!(get("zookeeper_version"), None);
    }

    #[test]
    fn one_voter_cannot_admit_a_member_that_does_not_run() {
        assert!(!can_admit_before_start(1));
        assert!(can_admit_before_start(2));
        assert!(can_admit_before_start(3));
        assert!(can_admit_before_start(4));
        assert!(is_participant("127.0.0.1:1:2:participant;127.0.0.1:3"));
        assert!(is_participant("127.0.0.1:1:2;127.0.0.1:3"));
        assert!(!is_participant("127.0.0.1:1:2:observer;127.0.0.1:3"));
    }

    #[test]
    fn child_paths_join_below_the_root() {
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
    }
}
