//! A minimal Shoal addon for memcached: how to run it, a probe that really talks to it, and
//! metrics from `stats`. Its manifest is `addon.toml`; `docs/addon-guide.md` walks through
//! both files. No markers (the kit's data checks): a cache that a restart empties keeps none.

use std::time::Duration;

use shoal_sdk::metrics::{counter, gauge, Stat};
use shoal_sdk::net::LineConn;
use shoal_sdk::params::Lookup;
use shoal_sdk::prelude::*;

/// Deadline for connect, read and write: below the probe's 1 s deadline, so a silent
/// server gives a clean `retryable` error instead of a killed call.
const IO_TIMEOUT: Duration = Duration::from_millis(500);

fn connect(instance: &Instance) -> std::io::Result<LineConn> {
    LineConn::connect(&instance.endpoint, IO_TIMEOUT)
}

/// The `stats` fields exported as metrics.
const METRICS: &[Stat] = &[
    gauge(
        "uptime",
        "uptime_seconds",
        "Seconds since the server started.",
    ),
    gauge(
        "curr_connections",
        "current_connections",
        "Open client connections.",
    ),
    counter(
        "total_connections",
        "connections",
        "Connections accepted since start.",
    ),
    gauge("curr_items", "current_items", "Items stored."),
    gauge("bytes", "item_bytes", "Bytes used by items."),
    gauge("limit_maxbytes", "limit_bytes", "Memory limit in bytes."),
    counter("cmd_get", "get_commands", "Get commands."),
    counter("cmd_set", "set_commands", "Set commands."),
    counter("get_hits", "get_hits", "Gets that found an item."),
    counter("get_misses", "get_misses", "Gets that found nothing."),
    counter("evictions", "evictions", "Items evicted to make room."),
];

struct Memcached {
    /// Kept between calls on a long-lived addon instance (the host's probe loop).
    conn: Kept<LineConn>,
}

impl Engine for Memcached {
    fn new() -> Self {
        Memcached { conn: Kept::new() }
    }

    fn manifest(&self) -> AddonManifest {
        shoal_sdk::manifest_file!("addon.toml")
    }

    fn run_spec(
        &mut self,
        instance: &Instance,
        _: &[Member],
        params: &[Param],
    ) -> HookResult<RunPlan> {
        let schema = self.manifest().parameters;
        let p = Lookup::new(&schema, params);
        let port = instance.need_port("client")?;
        let mut plan = RunPlan::server(
            "memcached",
            [
                "-l".into(),
                instance.endpoint.host.clone(),
                format!("-p{port}"),
                "-U0".into(),
                format!("-m{}", (p.int("memory-limit")? >> 20).max(1)),
                format!("-c{}", p.int("max-connections")?),
                format!("-t{}", p.int("threads")?),
            ],
        );
        plan.image = Some("docker.io/library/memcached:1.6".into());
        Ok(plan)
    }

    fn probe(&mut self, instance: &Instance, _: &[Member]) -> HookResult<RoleReport> {
        let reply = self
            .conn
            .with(instance, connect, |c| c.request("version"))?;
        let version = reply
            .strip_prefix("VERSION ")
            .ok_or_else(|| HookError::failed(format!("unexpected reply to version: {reply:?}")))?;
        Ok(RoleReport::healthy(
            "standalone",
            true,
            format!("memcached {version}"),
        ))
    }

    fn metrics(&mut self, instance: &Instance) -> HookResult<Vec<Sample>> {
        let lines = self.conn.with(instance, connect, |c| {
            c.send("stats")?;
            c.read_until("END", 500)
        })?;
        // "STAT <name> <value>" lines.
        let stat = |name: &str| {
            lines.iter().find_map(|l| {
                let (n, v) = l.strip_prefix("STAT ")?.split_once(' ')?;
                (n == name).then_some(v)
            })
        };
        let mut m = Metrics::new("memcached");
        m.from_stats(stat, METRICS);
        m.finish()
    }
}

shoal_sdk::export_engine!(Memcached);
