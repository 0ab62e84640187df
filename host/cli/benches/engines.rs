//! HA and backup benchmark of the engines beyond PostgreSQL (not a test: it prints, it never
//! asserts timings). The same measurements as the `ha` and `backup` benches, through the same
//! host code, so the figures compare across engines:
//!
//! `cargo bench -p shoal-cli --bench engines --features shoal-sdk/postgres,shoal-sdk/mysql -- [ENGINE] [TRIALS] [MIB]`
//! (ENGINE `redis`, `mariadb` or `all`, default all; 10 failover trials; about 512 MiB of data)
//!
//! * TRIALS × kill -9 of the primary of a 3-instance cluster under write load (the measured
//!   writer plus LOAD_WRITERS more through the read-write endpoint, so replicas apply
//!   continuously, as in production): detection (kill → failover requested), promotion
//!   (kill → promoted), write unavailability (last write the old primary acknowledged →
//!   first the new one did), acknowledged writes lost; p50 / p99 / max; and how many healthy
//!   replicas had to be copied afresh instead of re-pointed;
//! * TRIALS / 2 switchovers under the writer: longest write pause, command time, writes lost;
//! * backup of one instance loaded with MIB of data: the engine's raw dump to /dev/null and
//!   through `zstd -1 | sha256sum` (the baselines, same server, alternating rounds) against a
//!   Shoal backup (zstd -1 and sha256 while streaming) to a directory repository; MiB/s over
//!   the size Shoal records (the raw dump's size);
//! * restore of that backup into a new cluster (verified, started) against
//!   `zstd -dc | sha256sum` of the stored object.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

/// What the bench needs to know about one engine; everything else goes through the host.
struct EngineBench {
    engine: &'static str,
    label: &'static str,
    wasm: &'static str,
    /// Extra `cluster create` flags of every cluster.
    create: &'static [&'static str],
    /// Prepare a new cluster's primary at `port` for the writer (its table).
    prepare: fn(port: u16, password: &str),
    /// A writer through `port` whose first value is `first`.
    writer: fn(port: u16, password: &str, first: u64) -> Writer,
    /// How many of `acked` are missing on the server at `port`.
    lost: fn(port: u16, password: &str, acked: &[(u64, Instant)]) -> usize,
    /// Fill the server at `port` with about `mib` MiB.
    load: fn(port: u16, password: &str, mib: u64),
    /// A shell command writing the engine's own full dump of the server at `port` to stdout,
    /// as the platform account, whose password it finds in `SECRET_ENV` (never in argv).
    raw_dump: fn(port: u16) -> String,
    /// The environment variable the raw dump's tool reads the password from.
    secret_env: &'static str,
    /// What the raw dump is, for the report.
    raw_label: &'static str,
}

const REDIS: EngineBench = EngineBench {
    engine: "redis",
    label: "Redis 7.0",
    wasm: "shoal_addon_redis.wasm",
    create: &["--memory", "2Gi"],
    prepare: |_, _| {},
    writer: Writer::redis_at,
    lost: |port, pw, acked| lost_redis(port, pw, acked).len(),
    load: |port, pw, mib| {
        // 1 KiB values over a keyspace of `keys` random keys (about 63 % distinct).
        let n = (mib * 1024 * 16 / 10).to_string();
        let o = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--user",
                "default",
            ])
            .args([
                "-a", pw, "-t", "set", "-n", &n, "-r", &n, "-d", "1024", "-P", "32", "-q",
            ])
            .output()
            .expect("redis-benchmark (apt-get install redis-tools)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    },
    raw_dump: |port| {
        format!(
            "redis-cli -h 127.0.0.1 -p {port} --user shoal --no-auth-warning --rdb - \
             2>/dev/null"
        )
    },
    secret_env: "REDISCLI_AUTH",
    raw_label: "redis-cli --rdb -",
};

const MARIADB: EngineBench = EngineBench {
    engine: "mariadb",
    label: "MariaDB 10.11",
    wasm: "shoal_addon_mysql.wasm",
    create: &["--memory", "2Gi"],
    prepare: |port, pw| {
        for sql in [
            "CREATE DATABASE IF NOT EXISTS app",
            "CREATE TABLE IF NOT EXISTS app.w (n BIGINT PRIMARY KEY)",
        ] {
            mariadb_sql(u64::from(port), pw, sql).expect("prepare the writer's table");
        }
    },
    writer: Writer::mariadb_at,
    lost: |port, pw, acked| lost_mariadb(port, pw, acked).len(),
    load: |port, pw, mib| {
        // Rows of about 1 KiB (an InnoDB table of about `mib` MiB of data), in batches.
        let port = u64::from(port);
        mariadb_sql(
            port,
            pw,
            "CREATE TABLE IF NOT EXISTS app.big (id BIGINT PRIMARY KEY, v VARBINARY(1100))",
        )
        .expect("create app.big");
        let rows = mib * 1024;
        let mut from = 1;
        while from <= rows {
            let to = (from + 49_999).min(rows);
            mariadb_sql(
                port,
                pw,
                &format!(
                    "INSERT INTO app.big SELECT seq, RANDOM_BYTES(1000) FROM app.seq_{from}_to_{to}"
                ),
            )
            .expect("load app.big");
            from = to + 1;
        }
    },
    raw_dump: |port| {
        format!(
            "mariadb-backup --no-defaults --backup --stream=xbstream --parallel=2 \
             --host=127.0.0.1 --port={port} --user=shoal --target-dir=/tmp 2>/dev/null"
        )
    },
    secret_env: "MYSQL_PWD",
    raw_label: "mariadb-backup --stream",
};

/// The time of day of an event line ("11:07:06.949 info …") in ms since midnight UTC.
fn event_line_ms(line: &str) -> Option<i64> {
    let t = line.split_whitespace().next()?;
    let (hms, ms) = t.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn row(name: &str, v: &[f64], unit: &str) {
    let mut v = v.to_vec();
    println!(
        "{name:<38} p50 {:>8.1} {unit}  p99 {:>8.1} {unit}  max {:>8.1} {unit}  (n={})",
        pct(&mut v, 50.0),
        pct(&mut v, 99.0),
        pct(&mut v, 100.0),
        v.len()
    );
}

fn median(v: &mut [f64]) -> f64 {
    pct(v, 50.0)
}

/// Event time of the first event after `after_ms` whose message contains `needle`.
fn event_ms(h: &Host, name: &str, after_ms: i64, needle: &str) -> Option<i64> {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["cluster", "events", name, "--limit", "200", "-o", "json"]))
            .ok()?;
    v.as_array()?
        .iter()
        .filter(|e| e["unix_ms"].as_i64().unwrap_or(0) >= after_ms)
        .find(|e| e["message"].as_str().unwrap_or("").contains(needle))
        .and_then(|e| e["unix_ms"].as_i64())
}

/// Wait until every instance is running and healthy and the writer's target has a primary.
fn settled(h: &Host, name: &str) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let d = h.describe(name);
        let all = d["instances"].as_array().cloned().unwrap_or_default();
        if !all.is_empty()
            && all
                .iter()
                .all(|i| i["state"] == "running" && i["health"] == "healthy")
            && all.iter().any(|i| i["role"] == "primary")
        {
            return d;
        }
        assert!(Instant::now() < until, "{name} did not settle: {d:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writers besides the measured one during failover trials.
const LOAD_WRITERS: u64 = 3;

fn failovers(e: &EngineBench, ports: (u16, u16), trials: usize) {
    let h = Host::start_with(ports, &[e.wasm], None);
    let name = "hb";
    let mut args = vec![
        "cluster",
        "create",
        name,
        "--engine",
        e.engine,
        "--replicas",
        "3",
    ];
    args.extend(e.create);
    h.ok(&args);
    let pw = password(&h, name);
    (e.prepare)(rw_port(&settled(&h, name)), &pw);
    let (mut detect, mut promote, mut unavail, mut lost_n) = (vec![], vec![], vec![], vec![]);
    let mut recopies = vec![];
    for t in 0..trials {
        let d = settled(&h, name);
        let term = d["term"].as_u64().unwrap_or(0);
        let (old, pid, old_port) = primary_of(&d);
        let w = (e.writer)(rw_port(&d), &pw, (t as u64 + 1) * 1_000_000);
        let load: Vec<Writer> = (1..=LOAD_WRITERS)
            .map(|k| (e.writer)(rw_port(&d), &pw, (t as u64 + 1) * 1_000_000 + k * 100_000))
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        let kill_ms = now_ms();
        let killed = Instant::now();
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let until = Instant::now() + Duration::from_secs(60);
        let new_port = loop {
            let d = h.describe(name);
            if d["term"].as_u64().unwrap_or(0) > term
                && w.acked().last().is_some_and(|(_, at)| *at > killed)
            {
                break primary_of(&d).2 as u16;
            }
            if Instant::now() > until {
                eprintln!("trial {t}: no failover within 60 s; stopping");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(200));
        let (acked, servers) = w.finish_with_servers();
        let load_writes: usize = load.into_iter().map(|l| l.finish().len()).sum();
        // Healthy replicas copied afresh instead of re-pointed (the old primary aside).
        settled(&h, name);
        let events = h.ok(&["cluster", "events", name, "--limit", "200"]);
        let recopied = events
            .lines()
            .filter(|l| l.contains("re-copied from") && !l.contains(&format!(" {old} ")))
            .filter(|l| event_line_ms(l).is_some_and(|ms| ms >= kill_ms % 86_400_000))
            .count();
        recopies.push(recopied as f64);
        let on_old = |k: usize| servers.get(k).is_some_and(|p| u64::from(*p) == old_port);
        let before = (0..acked.len())
            .rev()
            .find(|&k| on_old(k))
            .map(|k| acked[k].1);
        let after = (0..acked.len())
            .find(|&k| !on_old(k) && acked[k].1 > killed)
            .map(|k| acked[k].1);
        match (before, after) {
            (Some(b), Some(a)) => unavail.push((a - b).as_secs_f64() * 1000.0),
            _ => eprintln!("trial {t}: no write on one side of the failover"),
        }
        if let Some(at) = event_ms(&h, name, kill_ms - 5, "failover requested") {
            detect.push((at - kill_ms) as f64);
        }
        if let Some(at) = event_ms(&h, name, kill_ms - 5, "promoted; writes go to it now") {
            promote.push((at - kill_ms) as f64);
        }
        let l = (e.lost)(new_port, &pw, &acked);
        lost_n.push(l as f64);
        eprintln!(
            "{} trial {}/{trials}: {old} killed; {} writes measured (+{load_writes} by the \
             load), {l} lost, {recopied} healthy replica(s) copied afresh",
            e.engine,
            t + 1,
            acked.len()
        );
    }
    let (mut pause, mut took, mut sw_lost) = (vec![], vec![], vec![]);
    for k in 0..(trials / 2).max(1) {
        let d = settled(&h, name);
        let (p, _, _) = primary_of(&d);
        let to = ports_of(&d, &p);
        let w = (e.writer)(rw_port(&d), &pw, (trials + k + 1) as u64 * 1_000_000);
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let o = h.shoal(&["cluster", "switchover", name, "--to", &to.0]);
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
        let acked = w.finish();
        if !o.status.success() {
            eprintln!("switchover failed: {}", String::from_utf8_lossy(&o.stderr));
            continue;
        }
        pause.push(longest_gap(&acked).as_secs_f64() * 1000.0);
        sw_lost.push((e.lost)(to.1, &pw, &acked) as f64);
    }
    eprintln!(
        "{}: events of the last switchover:\n{}",
        e.engine,
        h.ok(&["cluster", "events", name, "--limit", "12"])
    );
    println!(
        "\n{}: failover after kill -9 of the primary (3 instances, async mode):",
        e.label
    );
    row("detection (kill -> failover start)", &detect, "ms");
    row("promotion (kill -> promoted)", &promote, "ms");
    row("write unavailability", &unavail, "ms");
    row("acknowledged writes lost", &lost_n, "");
    row("healthy replicas copied afresh", &recopies, "");
    println!("{}: switchover under a writer:", e.label);
    row("write pause", &pause, "ms");
    row("command time", &took, "ms");
    row("acknowledged writes lost", &sw_lost, "");
}

/// A replica of `d` other than `primary`: (name, client port).
fn ports_of(d: &serde_json::Value, primary: &str) -> (String, u16) {
    ports(d)
        .into_iter()
        .find(|(n, _, _)| n != primary)
        .map(|(n, p, _)| (n, p as u16))
        .unwrap_or_default()
}

/// Run `sh -c script`; the seconds it took, or None on failure.
fn timed_sh(script: &str, env: (&str, &str)) -> Option<f64> {
    let t = Instant::now();
    let o = Command::new("sh")
        .args(["-c", script])
        .env(env.0, env.1)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "failed: {script}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return None;
    }
    Some(t.elapsed().as_secs_f64())
}

fn backups(e: &EngineBench, ports: (u16, u16), mib: u64, rounds: usize) {
    let h = Host::start_with(ports, &[e.wasm], None);
    let name = "bb";
    let mut args = vec![
        "cluster",
        "create",
        name,
        "--engine",
        e.engine,
        "--replicas",
        "1",
    ];
    args.extend(e.create);
    h.ok(&args);
    let d = settled(&h, name);
    let pw = password(&h, name);
    let (_, _, port) = primary_of(&d);
    (e.prepare)(port as u16, &pw);
    let t = Instant::now();
    (e.load)(port as u16, &pw, mib);
    eprintln!("{}: loaded in {:.1} s", e.engine, t.elapsed().as_secs_f64());
    let repo = h.home.path().join("repo");
    h.ok(&[
        "backup-repo",
        "add",
        "local",
        "--type",
        "fs",
        "--path",
        repo.to_str().unwrap_or_default(),
    ]);
    let raw_cmd = (e.raw_dump)(port as u16);
    let secret = (e.secret_env, h.platform_password(name));
    let secret = (secret.0, secret.1.as_str());
    let (mut raw, mut pipe, mut shoal) = (vec![], vec![], vec![]);
    let (mut size, mut last_id) = (0u64, String::new());
    for r in 0..rounds {
        if let Some(t) = timed_sh(&format!("{raw_cmd} > /dev/null"), secret) {
            raw.push(t);
        }
        if let Some(t) = timed_sh(
            &format!("{raw_cmd} | zstd -1 -q | sha256sum > /dev/null"),
            secret,
        ) {
            pipe.push(t);
        }
        let t = Instant::now();
        let out = h.ok(&["backup", "create", name]);
        shoal.push(t.elapsed().as_secs_f64());
        last_id = out.lines().last().unwrap_or("").trim().to_string();
        let b: serde_json::Value =
            serde_json::from_str(&h.ok(&["backup", "describe", &last_id, "-o", "json"]))
                .unwrap_or_default();
        size = b["size"].as_u64().unwrap_or(0);
        eprintln!("{} backup round {}/{rounds} done", e.engine, r + 1);
    }
    let mb = size as f64 / (1 << 20) as f64;
    let rate = |v: &mut Vec<f64>| mb / median(v);
    let (r_raw, r_pipe, r_shoal) = (rate(&mut raw), rate(&mut pipe), rate(&mut shoal));
    println!(
        "\n{}: backup of {mb:.0} MiB (the dump's size), median of {rounds}:",
        e.label
    );
    println!("raw {:<36} {r_raw:>8.0} MiB/s", e.raw_label);
    println!(
        "{:<40} {r_pipe:>8.0} MiB/s",
        format!("{} | zstd -1 | sha256sum", e.raw_label)
    );
    println!(
        "{:<40} {r_shoal:>8.0} MiB/s",
        "Shoal backup (zstd -1 + sha256)"
    );
    println!(
        "Shoal vs raw {:.2}x, vs the shell pipeline {:.2}x",
        r_shoal / r_raw,
        r_shoal / r_pipe
    );

    let b: serde_json::Value =
        serde_json::from_str(&h.ok(&["backup", "describe", &last_id, "-o", "json"]))
            .unwrap_or_default();
    let object = repo.join(b["objects"][0]["key"].as_str().unwrap_or_default());
    let (mut pipe_r, mut shoal_r) = (vec![], vec![]);
    for r in 0..rounds {
        if let Some(t) = timed_sh(
            &format!(
                "sha256sum {o} > /dev/null & zstd -dc -q {o} > /dev/null; wait",
                o = object.display()
            ),
            ("SHOAL_BENCH", "1"),
        ) {
            pipe_r.push(t);
        }
        let restored = format!("restored-{r}");
        let t = Instant::now();
        // The restored cluster takes the source's spec (resources, parameters).
        h.ok(&[
            "cluster",
            "restore",
            &restored,
            "--from-backup",
            &last_id,
            "--replicas",
            "1",
        ]);
        shoal_r.push(t.elapsed().as_secs_f64());
        h.ok(&["cluster", "delete", &restored, "--purge", "--yes"]);
    }
    let (p, s) = (rate(&mut pipe_r), rate(&mut shoal_r));
    println!("{}: restore of {mb:.0} MiB, median of {rounds}:", e.label);
    println!("{:<40} {p:>8.0} MiB/s", "sha256sum & zstd -dc > /dev/null");
    println!(
        "{:<40} {s:>8.0} MiB/s",
        "Shoal cluster restore (verified, started)"
    );
    println!("Shoal vs the shell pipeline {:.2}x", s / p);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let which = args
        .iter()
        .find(|a| a.parse::<u64>().is_err())
        .cloned()
        .unwrap_or_else(|| "all".into());
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let trials = numbers.first().copied().unwrap_or(10) as usize;
    let mib = numbers.get(1).copied().unwrap_or(512);
    let engines: Vec<&EngineBench> = [&REDIS, &MARIADB]
        .into_iter()
        .filter(|e| which == "all" || which == e.engine)
        .collect();
    if engines.is_empty() {
        eprintln!("unknown engine {which:?}: redis, mariadb or all");
        std::process::exit(2);
    }
    println!("engines benchmark: {trials} failover trials, {mib} MiB backups");
    for (k, e) in engines.iter().enumerate() {
        let base = 23900 + 20 * k as u16;
        failovers(e, (base, base + 9), trials);
        backups(e, (base + 10, base + 19), mib, 3);
    }
}
