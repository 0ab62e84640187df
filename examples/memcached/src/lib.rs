//! A minimal Shoal addon for memcached: how to run it, a probe that really talks to it, and
//! metrics from `stats`. `docs/addon-guide.md` walks through this file line by line.
//!
//! The probe keeps its connection in `self`, so on a long-lived addon instance (the host's
//! probe loop) it opens one connection and reuses it; on a fresh instance it simply connects.

use std::time::Duration;

use shoal_sdk::net::LineConn;
use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

/// Deadline for connect, read and write. Below the probe's 1 s hook deadline, so a silent
/// server gives a clean `retryable` error instead of a killed call.
const IO_TIMEOUT: Duration = Duration::from_millis(500);

struct Memcached {
    /// An open connection and the address it goes to, kept between calls.
    conn: Option<LineConn>,
}

impl Memcached {
    /// Run `f` on a connection to `instance`, reusing the cached one. A failure on a reused
    /// connection (the server restarted, the connection went stale) is retried once on a new one.
    fn with_conn<T>(
        &mut self,
        instance: &Instance,
        mut f: impl FnMut(&mut LineConn) -> std::io::Result<T>,
    ) -> HookResult<T> {
        let addr = instance.address();
        if let Some(conn) = self.conn.as_mut().filter(|c| c.peer() == addr) {
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => shoal_sdk::debug!("memcached {addr}: reconnecting after: {e}"),
            }
        }
        self.conn = None;
        let mut conn = LineConn::connect(&instance.endpoint, IO_TIMEOUT)
            .map_err(|e| HookError::from(e).context(format!("connect {addr}")))?;
        let v = f(&mut conn).map_err(|e| HookError::from(e).context(&addr))?;
        self.conn = Some(conn);
        Ok(v)
    }

    /// `stats` as name/value pairs.
    fn stats(&mut self, instance: &Instance) -> HookResult<Vec<(String, String)>> {
        let lines = self.with_conn(instance, |c| {
            c.send("stats")?;
            c.read_until("END", 500)
        })?;
        Ok(lines
            .iter()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("STAT"), Some(name), Some(value)) => {
                        Some((name.to_string(), value.to_string()))
                    }
                    _ => None,
                }
            })
            .collect())
    }
}

/// The `stats` fields exported as metrics: (stat name, kind, help).
const METRICS: &[(&str, MetricKind, &str)] = &[
    (
        "uptime",
        MetricKind::Gauge,
        "Seconds since the server started.",
    ),
    (
        "curr_connections",
        MetricKind::Gauge,
        "Open client connections.",
    ),
    (
        "total_connections",
        MetricKind::Counter,
        "Connections accepted since start.",
    ),
    ("curr_items", MetricKind::Gauge, "Items stored."),
    ("bytes", MetricKind::Gauge, "Bytes used by items."),
    (
        "limit_maxbytes",
        MetricKind::Gauge,
        "Memory limit in bytes.",
    ),
    ("cmd_get", MetricKind::Counter, "Get commands."),
    ("cmd_set", MetricKind::Counter, "Set commands."),
    ("get_hits", MetricKind::Counter, "Gets that found an item."),
    (
        "get_misses",
        MetricKind::Counter,
        "Gets that found nothing.",
    ),
    (
        "evictions",
        MetricKind::Counter,
        "Items evicted to make room.",
    ),
];

impl Engine for Memcached {
    fn new() -> Self {
        Memcached { conn: None }
    }

    fn manifest(&self) -> AddonManifest {
        AddonManifest {
            engine: "memcached".into(),
            display_name: "Memcached".into(),
            description: "In-memory key-value cache (example addon).".into(),
            addon_version: "0.1.0".into(),
            versions: vec![EngineVersion {
                version: "1.6".into(),
                is_default: true,
                binary_paths: vec![],
                packages: vec!["memcached (Debian: apt-get install memcached)".into()],
            }],
            topologies: vec![Topology {
                kind: TopologyKind::Standalone,
                roles: vec!["standalone".into()],
                min_members: 1,
                max_members: 1,
                description: "One memcached server.".into(),
            }],
            roles: vec![RoleSpec {
                name: "standalone".into(),
                writable: true,
                votes: false,
                exclusive: false,
                description: "The only server; serves reads and writes.".into(),
            }],
            ports: vec![PortSpec {
                name: "client".into(),
                description: "memcached text and binary protocol.".into(),
            }],
            backup_methods: vec![],
            parameters: vec![
                ParamSpec {
                    name: "memory-limit".into(),
                    type_: ParamType::SizeBytes(IntRange {
                        min: 1 << 20,
                        max: 64 << 30,
                    }),
                    default_value: Some(Value::Integer(64 << 20)),
                    apply: ApplyMode::Restart,
                    description: "Item memory (-m), rounded down to whole MiB.".into(),
                    versions: vec![],
                },
                ParamSpec {
                    name: "max-connections".into(),
                    type_: ParamType::Integer(IntRange {
                        min: 16,
                        max: 65536,
                    }),
                    default_value: Some(Value::Integer(1024)),
                    apply: ApplyMode::Restart,
                    description: "Simultaneous client connections (-c).".into(),
                    versions: vec![],
                },
                ParamSpec {
                    name: "threads".into(),
                    type_: ParamType::Integer(IntRange { min: 1, max: 64 }),
                    default_value: Some(Value::Integer(4)),
                    apply: ApplyMode::Restart,
                    description: "Worker threads (-t).".into(),
                    versions: vec![],
                },
            ],
            capabilities: vec![],
            limits: vec![
                HookLimit {
                    hook: Hook::Probe,
                    timeout_ms: 1000,
                    memory_bytes: None,
                },
                HookLimit {
                    hook: Hook::Metrics,
                    timeout_ms: 2000,
                    memory_bytes: None,
                },
            ],
            client: Some(ClientInfo {
                uri_template: "memcached://{host}:{port}".into(),
                shell: vec![],
            }),
            admin_user: None,
            sync_replication: SyncSupport::None,
        }
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        _members: &[Member],
        params: &[Param],
    ) -> HookResult<RunPlan> {
        let schema = self.manifest().parameters;
        let p = Lookup::new(&schema, params);
        let port = instance
            .port("client")
            .ok_or_else(|| HookError::invalid("no port named \"client\" was allocated"))?;
        let args = vec![
            "-l".to_string(),
            instance.endpoint.host.clone(),
            "-p".into(),
            port.to_string(),
            "-U".into(),
            "0".into(),
            "-m".into(),
            (p.int("memory-limit")? >> 20).max(1).to_string(),
            "-c".into(),
            p.int("max-connections")?.to_string(),
            "-t".into(),
            p.int("threads")?.to_string(),
        ];
        Ok(RunPlan {
            server: Command {
                program: "memcached".into(),
                args,
                env: vec![],
            },
            init: vec![],
            readiness: Readiness::TcpPort("client".into()),
            stop_signal: StopSignal::Term,
            stop_timeout_ms: 5000,
            unprivileged: true,
            image: Some("docker.io/library/memcached:1.6".into()),
        })
    }

    fn probe(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<RoleReport> {
        let version = self.with_conn(instance, |c| c.request("version"))?;
        let version = version
            .strip_prefix("VERSION ")
            .ok_or_else(|| HookError::failed(format!("unexpected reply to version: {version:?}")))?
            .to_string();
        Ok(RoleReport {
            role: "standalone".into(),
            writable: true,
            term: None,
            lag_bytes: None,
            lag_ms: None,
            health: Health::Healthy,
            position: None,
            detail: format!("memcached {version}"),
        })
    }

    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let stats = self.stats(instance)?;
        let mut samples = Vec::new();
        for (name, kind, help) in METRICS {
            let Some((_, value)) = stats.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let value: f64 = value
                .parse()
                .map_err(|_| HookError::failed(format!("stat {name}: not a number: {value:?}")))?;
            samples.push(Sample {
                name: format!("memcached_{name}"),
                kind: *kind,
                value,
                labels: vec![],
                help: (*help).into(),
            });
        }
        Ok(samples)
    }
}

shoal_sdk::export_engine!(Memcached);
