//! A backup counts only if it restores, whatever role its source had: backups taken from a
//! former primary (after a switchover, as a rolling restart does) restore into writable
//! clusters on PostgreSQL (plainly and to a point in time), MariaDB and Redis; `backup
//! verify --restore` proves it for every engine and method through a throwaway instance that
//! is gone afterwards, and fails (exit 1, nothing left running) for a damaged backup; a
//! schedule set with `--verify` restore-tests what it takes.

use std::time::Duration;

mod common;
use common::*;

fn add_repo(h: &Host) -> std::path::PathBuf {
    let dir = h.home.path().join("repo");
    h.ok(&[
        "backup-repo",
        "add",
        "local",
        "--type",
        "fs",
        "--path",
        dir.to_str().unwrap(),
    ]);
    dir
}

/// The id of the newest backup of `cluster`.
fn newest(h: &Host, cluster: &str) -> serde_json::Value {
    json(h, &["backup", "list", "--cluster", cluster])
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

/// `backup verify ID --restore` passes and leaves nothing behind.
fn restore_tested(h: &Host, id: &str) {
    let v = json(h, &["backup", "verify", id, "--restore"]);
    assert_eq!(v["restore_test"]["passed"], true, "{v:#}");
    nothing_left(h);
    let b = json(h, &["backup", "describe", id]);
    assert_eq!(b["restore_test"]["passed"], true, "{b:#}");
}

/// No throwaway instance is left: no directory, no process, no port.
fn nothing_left(h: &Host) {
    let tests = h.home.path().join("restore-tests");
    let left: Vec<String> = std::fs::read_dir(&tests)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // This host's throwaway servers only (the other test runs its own meanwhile).
    let procs = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(tests.display().to_string())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&procs.stdout).trim().is_empty(),
        "a throwaway server still runs"
    );
}

const NOW: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

#[test]
fn postgresql_backups_of_a_former_primary_restore_plainly_and_to_a_point_in_time() {
    let h = Host::start((25300, 25349));
    add_repo(&h);
    create_pg(&h, "pgb", 2, &[]);
    let uri = h.uri("pgb");
    psql(&uri, "CREATE TABLE t (id int primary key, v text)").unwrap();
    psql(
        &uri,
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    )
    .unwrap();
    // A backup taken while nothing is archived yet.
    h.ok(&["backup", "create", "pgb"]);
    let early = newest(&h, "pgb")["id"].as_str().unwrap().to_string();
    // The old primary (pgb-0) is demoted; the next backup is taken from it (the only
    // replica), carrying its demotion's read-only fence.
    h.ok(&["cluster", "switchover", "pgb"]);
    let d = h.wait_healthy("pgb");
    assert_eq!(primary_of(&d).0, "pgb-1");
    // Archiving switched on after the switchover: the new timeline's history file was
    // written before anything was archived (issue 14: restores to a time then ended early).
    h.ok(&["backup", "archive", "pgb"]);
    h.ok(&["backup", "create", "pgb"]);
    let b = newest(&h, "pgb");
    assert_eq!(b["source_instance"], "pgb-0", "{b:#}");
    let id = b["id"].as_str().unwrap().to_string();
    let uri = h.uri("pgb");
    psql(&uri, "INSERT INTO t VALUES (1001, 'in the archive')").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let target = psql(&uri, NOW).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    psql(&uri, "INSERT INTO t VALUES (1002, 'after the target')").unwrap();
    let seg = psql(&uri, "SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    wait_until(
        Duration::from_secs(60),
        "the archive past the target",
        || {
            let a = json(&h, &["backup", "archives", "--cluster", "pgb"]);
            a[0]["last_unit"]
                .as_str()
                .is_some_and(|l| l >= seg.as_str())
        },
    );

    restore_tested(&h, &id);

    // The early backup cannot reach the target: archiving began after it (and the timeline
    // changed in between). Refused up front, naming the gap, instead of a replay that ends
    // short of the target.
    refused(
        &h,
        &[
            "cluster",
            "restore",
            "gap",
            "--from-backup",
            &early,
            "--to-time",
            &target,
        ],
        "was switched on",
    );

    // A plain restore: writable, every row.
    h.ok(&["cluster", "restore", "pgr", "--from-backup", &id]);
    let r = h.uri("pgr");
    assert_eq!(
        psql(&r, "SHOW default_transaction_read_only").unwrap(),
        "off"
    );
    assert_eq!(psql(&r, "SELECT count(*) FROM t").unwrap(), "1000");
    psql(&r, "INSERT INTO t VALUES (5000, 'writable')").unwrap();
    // To a point in time, from the same backup.
    h.ok(&[
        "cluster",
        "restore",
        "pgt",
        "--from-backup",
        &id,
        "--to-time",
        &target,
    ]);
    let r = h.uri("pgt");
    assert_eq!(
        psql(&r, "SHOW default_transaction_read_only").unwrap(),
        "off"
    );
    assert_eq!(psql(&r, "SELECT count(*) FROM t").unwrap(), "1001");
    psql(&r, "INSERT INTO t VALUES (5000, 'writable')").unwrap();

    // A logical backup is restore-tested too.
    h.ok(&["backup", "create", "pgb", "--method", "logical"]);
    let id = newest(&h, "pgb")["id"].as_str().unwrap().to_string();
    restore_tested(&h, &id);

    // A damaged backup does not restore: exit 1, the reason, nothing left running.
    h.ok(&["backup", "create", "pgb"]);
    let b = newest(&h, "pgb");
    let key = b["objects"][0]["key"].as_str().unwrap();
    let object = h.home.path().join("repo").join(key);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let o = h.shoal(&["backup", "verify", b["id"].as_str().unwrap(), "--restore"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    nothing_left(&h);
    // A failed restore keeps what is needed to find out why.
    let o = h.shoal(&[
        "cluster",
        "restore",
        "bad",
        "--from-backup",
        b["id"].as_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let inst = h.home.path().join("clusters/bad/bad-0");
    let log = std::fs::read_to_string(inst.join("log/restore.log")).unwrap();
    assert!(log.contains(key), "{log}");
    assert!(
        crate_empty(&inst.join("data")),
        "nothing starts on a failed restore"
    );
    h.ok(&["cluster", "delete", "bad", "--purge", "--yes"]);
}

fn crate_empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn mariadb_and_redis_backups_of_a_former_primary_restore() {
    let h = Host::start_with(
        (25350, 25399),
        &["shoal_addon_mysql.wasm", "shoal_addon_redis.wasm"],
        None,
    );
    add_repo(&h);

    // MariaDB: a physical backup from the demoted primary.
    create_mariadb(&h, "mb", 2, &[]);
    let pw = password(&h, "mb");
    let d = h.describe("mb");
    let rw = rw_port(&d) as u64;
    mariadb_sql(rw, &pw, "CREATE TABLE app.t (id INT PRIMARY KEY)").unwrap();
    mariadb_sql(
        rw,
        &pw,
        "INSERT INTO app.t SELECT seq FROM app.seq_1_to_500",
    )
    .unwrap();
    h.ok(&["cluster", "switchover", "mb"]);
    h.wait_healthy("mb");
    h.ok(&["backup", "create", "mb"]);
    let b = newest(&h, "mb");
    assert_eq!(b["source_instance"], "mb-0", "{b:#}");
    let id = b["id"].as_str().unwrap().to_string();
    restore_tested(&h, &id);
    h.ok(&["cluster", "restore", "mr", "--from-backup", &id]);
    let d = h.wait_healthy("mr");
    let rpw = password(&h, "mr");
    let port = rw_port(&d) as u64;
    assert_eq!(mariadb_sql(port, &rpw, "SELECT @@read_only").unwrap(), "0");
    assert_eq!(
        mariadb_sql(port, &rpw, "SELECT COUNT(*) FROM app.t").unwrap(),
        "500"
    );
    mariadb_sql(port, &rpw, "INSERT INTO app.t VALUES (9999)").unwrap();
    h.ok(&["backup", "create", "mb", "--method", "logical"]);
    restore_tested(&h, newest(&h, "mb")["id"].as_str().unwrap());

    // Redis: an RDB backup from the demoted primary, and a schedule that restore-tests what
    // it takes.
    create_redis(&h, "rb", 2, &[]);
    let pw = password(&h, "rb");
    let d = h.describe("rb");
    for i in 0..200 {
        redis_cli(rw_port(&d) as u64, &pw, &["SET", &format!("k{i}"), "v"]).unwrap();
    }
    h.ok(&["cluster", "switchover", "rb"]);
    h.wait_healthy("rb");
    h.ok(&["backup", "create", "rb"]);
    let b = newest(&h, "rb");
    assert_eq!(b["source_instance"], "rb-0", "{b:#}");
    let id = b["id"].as_str().unwrap().to_string();
    restore_tested(&h, &id);
    h.ok(&["cluster", "restore", "rr", "--from-backup", &id]);
    let d = h.wait_healthy("rr");
    let rpw = password(&h, "rr");
    assert_eq!(
        redis_cli(rw_port(&d) as u64, &rpw, &["DBSIZE"]).unwrap(),
        "200"
    );
    assert_eq!(
        redis_cli(rw_port(&d) as u64, &rpw, &["SET", "w", "1"]).unwrap(),
        "OK"
    );

    h.ok(&[
        "backup",
        "schedule",
        "rb",
        "--cron",
        "*/3 * * * * *",
        "--keep",
        "2",
        "--verify",
    ]);
    wait_until(
        Duration::from_secs(60),
        "a scheduled backup restore-tested",
        || {
            json(&h, &["backup", "list", "--cluster", "rb"])
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["origin"] == "schedule" && b["restore_test"]["passed"] == true)
        },
    );
    h.ok(&["backup", "schedule", "rb", "--off"]);
    std::thread::sleep(Duration::from_secs(3));
    let events = h.ok(&["cluster", "events", "rb", "--limit", "500"]);
    assert!(!events.contains("FAILED"), "{events}");
    nothing_left(&h);
}
