//! Backups end to end: a real `shoal serve`, real PostgreSQL 15, a directory repository and
//! an S3-compatible server (moto) on loopback. Physical and logical backups restore into new
//! clusters holding exactly the source's data; a damaged object fails verification and the
//! restore naming it, with nothing started; an unreachable repository fails the backup,
//! leaving no usable backup; bad input changes nothing.

use std::time::Duration;

mod common;
use common::*;

/// Row count and a checksum over every row of the test table.
const CHECK: &str =
    "SELECT count(*) || ':' || md5(string_agg(id || '=' || v, ',' ORDER BY id)) FROM t";

fn fail(h: &Host, args: &[&str]) -> String {
    let o = h.shoal(args);
    assert!(!o.status.success(), "shoal {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Add directory repository `local` under the host's home; returns its directory.
fn add_fs_repo(h: &Host) -> std::path::PathBuf {
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

/// Add repository `s3` on the test's S3 server (the secret comes from the environment).
fn add_s3_repo(h: &Host, s3: &shoal_tests::S3Server) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "backup-repo",
            "add",
            "s3",
            "--type",
            "s3",
            "--endpoint",
            &s3.endpoint,
            "--bucket",
            &s3.bucket,
            "--prefix",
            "shoal",
            "--access-key-id",
            "test",
        ])
        .env("SHOAL_HOME", h.home.path())
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A loaded two-instance cluster; returns its checksum.
fn loaded_cluster(h: &Host, name: &str) -> String {
    create_pg(h, name, 2, &[]);
    let uri = h.uri(name);
    psql(
        &uri,
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g",
    )
    .unwrap();
    psql(&uri, "CREATE INDEX ON t (v)").unwrap();
    psql(&uri, CHECK).unwrap()
}

/// Back `cluster` up; returns the backup's id.
fn backup(h: &Host, cluster: &str, extra: &[&str]) -> String {
    let mut args = vec!["backup", "create", cluster];
    args.extend(extra);
    let out = h.ok(&args);
    out.lines().last().unwrap_or("").trim().to_string()
}

/// Restore `id` into a one-instance cluster `name`; returns its checksum.
fn restored(h: &Host, id: &str, name: &str) -> String {
    h.ok(&[
        "cluster",
        "restore",
        name,
        "--from-backup",
        id,
        "--replicas",
        "1",
    ]);
    h.wait_healthy(name);
    psql(&h.uri(name), CHECK).unwrap()
}

#[test]
fn physical_and_logical_backups_to_both_repository_kinds_restore_the_same_data() {
    let h = Host::start((23500, 23549));
    let s3 = shoal_tests::S3Server::start();
    let want = loaded_cluster(&h, "src");
    assert!(want.starts_with("300000:"), "{want}");

    let dir = add_fs_repo(&h);
    add_s3_repo(&h, &s3);
    let repos = json(&h, &["backup-repo", "list"]);
    assert_eq!(repos.as_array().unwrap().len(), 2);
    assert_eq!(repos[0]["name"], "local");
    assert_eq!(
        repos[0]["default"], true,
        "the first repository is the default"
    );
    let check = h.ok(&["backup-repo", "check", "s3"]);
    assert!(check.contains("works"), "{check}");

    // Physical into the default (directory) repository, taken from the replica.
    let id = backup(&h, "src", &[]);
    let b = json(&h, &["backup", "describe", &id]);
    assert_eq!(b["state"], "completed", "{b:#}");
    assert_eq!(b["method"], "physical");
    assert_eq!(b["repo"], "local");
    assert_eq!(
        b["source_instance"], "src-1",
        "a healthy replica is preferred"
    );
    assert!(
        b["start_position"]
            .as_str()
            .is_some_and(|p| p.contains('/')),
        "{b:#}"
    );
    assert!(b["stored_size"].as_u64().unwrap() < b["size"].as_u64().unwrap());
    let sha = b["objects"][0]["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);
    let key = b["objects"][0]["key"].as_str().unwrap().to_string();
    assert!(dir.join(&key).is_file(), "{key}");
    assert!(h.ok(&["backup", "verify", &id]).contains("verified"));
    assert_eq!(restored(&h, &id, "from-local"), want);

    // Physical into S3, and a logical one there too.
    let id = backup(&h, "src", &["--repo", "s3"]);
    assert_eq!(json(&h, &["backup", "describe", &id])["repo"], "s3");
    assert_eq!(restored(&h, &id, "from-s3"), want);
    let id = backup(&h, "src", &["--repo", "s3", "--method", "logical"]);
    assert_eq!(json(&h, &["backup", "describe", &id])["kind"], "logical");
    assert_eq!(restored(&h, &id, "from-dump"), want);

    let all = json(&h, &["backup", "list", "--cluster", "src"]);
    assert_eq!(all.as_array().unwrap().len(), 3);
    // Deleting removes the objects too.
    let first = all[0]["id"].as_str().unwrap().to_string();
    h.ok(&["backup", "delete", &first, "--yes"]);
    assert!(!dir.join(&key).exists(), "{key} survived the delete");
    assert!(fail(&h, &["backup", "describe", &first]).contains("no backup"));
}

#[test]
fn a_damaged_or_missing_object_fails_verify_and_restore_by_name_and_nothing_starts() {
    let h = Host::start((23550, 23589));
    loaded_cluster(&h, "src");
    let dir = add_fs_repo(&h);
    let id = backup(&h, "src", &[]);
    let key = json(&h, &["backup", "describe", &id])["objects"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    // One flipped byte in the middle of the stored object.
    let path = dir.join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let err = fail(&h, &["backup", "verify", &id]);
    assert!(err.contains(&key) && err.contains("damaged"), "{err}");
    let err = fail(&h, &["cluster", "restore", "dst", "--from-backup", &id]);
    assert!(err.contains(&key), "{err}");
    let d = h.describe("dst");
    assert_eq!(d["state"], "failed", "{d:#}");
    for i in d["instances"].as_array().unwrap() {
        assert!(i["pid"].is_null(), "an instance started: {d:#}");
        let data = std::path::Path::new(i["data_dir"].as_str().unwrap());
        assert!(
            std::fs::read_dir(data)
                .map(|mut e| e.next().is_none())
                .unwrap_or(true),
            "data left in {}",
            data.display()
        );
    }
    // The supervisor never starts it either.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(h.describe("dst")["instances"][0]["pid"].is_null());

    // A missing object is named as well.
    std::fs::remove_file(&path).unwrap();
    let err = fail(&h, &["backup", "verify", &id]);
    assert!(err.contains(&key) && err.contains("missing"), "{err}");
}

#[test]
fn an_unreachable_or_full_repository_fails_the_backup_and_leaves_no_usable_backup() {
    private_mounts();
    let h = Host::start((23590, 23599));
    h.ok(&["cluster", "create", "src", "--engine", "postgresql"]);
    h.wait_healthy("src");
    let mut s3 = shoal_tests::S3Server::start();
    add_s3_repo(&h, &s3);
    s3.kill();
    let o = h.shoal(&["backup", "create", "src"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("repository s3"), "{err}");
    let all = json(&h, &["backup", "list"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["state"], "failed");
    assert!(all[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    // A failed backup cannot be restored or verified.
    let id = all[0]["id"].as_str().unwrap();
    assert!(
        fail(&h, &["cluster", "restore", "dst", "--from-backup", id]).contains("not completed")
    );
    assert!(fail(&h, &["backup", "verify", id]).contains("not completed"));
    let err = fail(&h, &["backup-repo", "check", "s3"]);
    assert!(err.contains("repository s3"), "{err}");

    // A repository whose disk fills up mid-backup: failed, and nothing of it left there.
    let small = h.home.path().join("small");
    small_disk(&small, "1m");
    h.ok(&[
        "backup-repo",
        "add",
        "small",
        "--type",
        "fs",
        "--path",
        small.to_str().unwrap(),
    ]);
    let o = h.shoal(&["backup", "create", "src", "--repo", "small"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("space"), "{err}");
    let all = json(&h, &["backup", "list"]);
    let states: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "failed"], "{all:#}");
    let mut left = Vec::new();
    let mut dirs = vec![small.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                left.push(e.path());
            }
        }
    }
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
}

#[test]
fn bad_backup_input_is_refused_clearly_and_changes_nothing() {
    let h = Host::start((23600, 23619));
    h.ok(&["cluster", "create", "src", "--engine", "postgresql"]);
    h.wait_healthy("src");
    // No repository yet.
    assert!(fail(&h, &["backup", "create", "src"]).contains("backup-repo add"));
    let dir = h.home.path().join("repo");
    for (args, want) in [
        (
            vec![
                "backup-repo",
                "add",
                "x",
                "--type",
                "fs",
                "--path",
                "relative",
            ],
            "absolute",
        ),
        (
            vec![
                "backup-repo",
                "add",
                "Bad/Name",
                "--type",
                "fs",
                "--path",
                "/tmp/x",
            ],
            "name",
        ),
        (vec!["backup-repo", "add", "x", "--type", "fs"], "--path"),
        (
            vec![
                "backup-repo",
                "add",
                "x",
                "--type",
                "s3",
                "--bucket",
                "b-b-b",
                "--access-key-id",
                "a",
            ],
            "AWS_SECRET_ACCESS_KEY",
        ),
    ] {
        let err = fail(&h, &args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(json(&h, &["backup-repo", "list"]), serde_json::json!([]));
    assert_eq!(add_fs_repo(&h), dir);
    for (args, want) in [
        (vec!["backup", "create", "nope"], "no cluster named"),
        (
            vec!["backup", "create", "src", "--method", "snapshot"],
            "unknown backup method",
        ),
        (
            vec!["backup", "create", "src", "--repo", "elsewhere"],
            "no backup repository named",
        ),
        (vec!["backup", "describe", "nope"], "no backup"),
        (vec!["backup", "verify", "nope"], "no backup"),
        (vec!["backup", "delete", "nope", "--yes"], "no backup"),
        (
            vec!["cluster", "restore", "dst", "--from-backup", "nope"],
            "no backup",
        ),
        (
            vec![
                "backup-repo",
                "add",
                "local",
                "--type",
                "fs",
                "--path",
                "/tmp/y",
            ],
            "exists already",
        ),
        (
            vec!["backup-repo", "remove", "nope"],
            "no backup repository",
        ),
    ] {
        refused(&h, &args, want);
    }
    assert_eq!(json(&h, &["backup", "list"]), serde_json::json!([]));
    // Restoring into a name in use changes nothing.
    let id = backup(&h, "src", &[]);
    let err = fail(&h, &["cluster", "restore", "src", "--from-backup", &id]);
    assert!(err.contains("already exists"), "{err}");
    assert!(fail(&h, &["backup-repo", "remove", "local"]).contains("holds 1 backup"));
    assert_eq!(json(&h, &["cluster", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn scheduled_backups_fire_on_their_cron_and_retention_keeps_the_newest() {
    let h = Host::start((23620, 23639));
    h.ok(&["cluster", "create", "src", "--engine", "postgresql"]);
    h.wait_healthy("src");
    let dir = add_fs_repo(&h);
    for (args, want) in [
        (vec!["--cron", "not a cron at all"], "cron"),
        (vec!["--cron", "* * *"], "5 fields"),
        (vec!["--cron", "*/2 * * * * *", "--keep", "0"], "at least 1"),
        (
            vec!["--cron", "*/2 * * * * *", "--max-age", "3x"],
            "max age",
        ),
        (
            vec!["--cron", "*/2 * * * * *", "--method", "nope"],
            "unknown backup method",
        ),
        (
            vec!["--cron", "*/2 * * * * *", "--repo", "nope"],
            "no backup repository",
        ),
        (vec![], "--cron"),
    ] {
        let mut a = vec!["backup", "schedule", "src"];
        a.extend(args.iter());
        refused(&h, &a, want);
    }
    assert!(
        fail(&h, &["backup", "schedule", "nope", "--cron", "0 3 * * *"]).contains("no cluster")
    );
    assert_eq!(json(&h, &["backup", "schedules"]), serde_json::json!([]));

    // A manual backup first: a schedule's retention never deletes it (issue 14: a --keep 2
    // schedule deleted a manual backup taken 5 s earlier).
    h.ok(&["backup", "create", "src"]);
    let manual = json(&h, &["backup", "list", "--cluster", "src"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Every 2 s, keeping the newest 2.
    h.ok(&[
        "backup",
        "schedule",
        "src",
        "--cron",
        "*/2 * * * * *",
        "--keep",
        "2",
    ]);
    let listed = json(&h, &["backup", "schedules"]);
    assert_eq!(listed[0]["method"], "physical");
    assert_eq!(listed[0]["keep"], 2);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = h.ok(&["cluster", "events", "src", "--limit", "500"]);
        let fired = events.matches("scheduled physical backup").count();
        let pruned = events.matches("retention: deleted backup").count();
        if fired >= 4 && pruned >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "schedule did not fire: {events}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    h.ok(&["backup", "schedule", "src", "--off"]);
    // Let a backup already queued finish, then count.
    std::thread::sleep(Duration::from_millis(1500));
    let all = json(&h, &["backup", "list", "--cluster", "src"]);
    let done: Vec<&serde_json::Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "completed")
        .collect();
    assert_eq!(
        done.len(),
        3,
        "two of the schedule's and the manual one: {all:#}"
    );
    assert!(
        done.iter()
            .any(|b| b["id"] == manual.as_str() && b["origin"] == "manual"),
        "the manual backup is kept: {all:#}"
    );
    assert_eq!(
        done.iter().filter(|b| b["origin"] == "schedule").count(),
        2,
        "{all:#}"
    );
    // Only the kept backups have objects left in the repository.
    let mut manifests = Vec::new();
    for e in std::fs::read_dir(dir.join("src")).unwrap().flatten() {
        if e.path().join("manifest.json").exists() {
            manifests.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    manifests.sort();
    let mut kept: Vec<String> = done
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    kept.sort();
    assert_eq!(manifests, kept);
    let n = all.as_array().unwrap().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        json(&h, &["backup", "list"]).as_array().unwrap().len(),
        n,
        "fired after --off"
    );
    assert!(
        fail(&h, &["backup", "schedule", "src", "--off"]).contains("no physical backup schedule")
    );
}

/// The moment of the server's clock, RFC 3339 UTC with microseconds.
const NOW: &str = "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Wait until the archive of `cluster` holds unit `name` (or a later one).
fn wait_archived(h: &Host, cluster: &str, name: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = json(h, &["backup", "archives", "--cluster", cluster]);
        if a[0]["last_unit"].as_str().is_some_and(|l| l >= name) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "unit {name} not archived: {a:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn point_in_time_restore_replays_the_archive_to_exactly_the_moment_asked() {
    let h = Host::start((23640, 23699));
    create_pg(&h, "src", 2, &[]);
    add_fs_repo(&h);
    assert!(fail(&h, &["backup", "archive", "nope"]).contains("no cluster"));
    assert!(h
        .ok(&["backup", "archive", "src"])
        .contains("archived continuously"));
    let uri = h.uri("src");
    psql(&uri, "CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    let base = backup(&h, "src", &[]);
    let logical = backup(&h, "src", &["--method", "logical"]);

    // Rows before T, T, rows after T; then close the segment so it is shipped.
    psql(
        &uri,
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    )
    .unwrap();
    let at_t = psql(&uri, CHECK).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let t = psql(&uri, NOW).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    psql(
        &uri,
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1001, 2000) g",
    )
    .unwrap();
    let seg = psql(&uri, "SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    wait_archived(&h, "src", &seg);

    // Refused: a time before the backup, in the future, not a time; a logical base.
    let before = psql(&uri, "SELECT '2000-01-01T00:00:00Z'").unwrap();
    for (args, want) in [
        (vec!["--from-backup", &base, "--to-time", &before], "before"),
        (
            vec!["--from-backup", &base, "--to-time", "2999-01-01T00:00:00Z"],
            "in the future",
        ),
        (
            vec!["--from-backup", &base, "--to-time", "yesterday"],
            "not a time",
        ),
        (
            vec!["--from-backup", &logical, "--to-time", &t],
            "does not combine",
        ),
    ] {
        let mut a = vec!["cluster", "restore", "bad"];
        a.extend(args.iter().copied());
        refused(&h, &a, want);
    }
    assert!(fail(&h, &["cluster", "describe", "bad"]).contains("no cluster"));

    // To T: exactly the rows committed before it, and a writable primary.
    h.ok(&[
        "cluster",
        "restore",
        "pitr",
        "--from-backup",
        &base,
        "--to-time",
        &t,
        "--replicas",
        "1",
    ]);
    h.wait_healthy("pitr");
    let pitr = h.uri("pitr");
    assert_eq!(psql(&pitr, CHECK).unwrap(), at_t);
    assert!(at_t.starts_with("1000:"), "{at_t}");
    psql(&pitr, "INSERT INTO t VALUES (0, 'new')").unwrap();
    let events = h.ok(&["cluster", "events", "pitr", "--limit", "100"]);
    assert!(events.contains("archive unit(s)"), "{events}");

    // A newer backup makes the older one and the units before it unneeded: deleting it
    // deletes those units, and T is no longer reachable.
    let units_before = json(&h, &["backup", "archives"])[0]["units"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5500));
    let newer = backup(&h, "src", &[]);
    h.ok(&["backup", "delete", &base, "--yes"]);
    let a = json(&h, &["backup", "archives"]);
    let units_after = a[0]["units"].as_u64().unwrap();
    assert!(units_after < units_before, "{units_before} before: {a:#}");
    refused(
        &h,
        &[
            "cluster",
            "restore",
            "late",
            "--from-backup",
            &newer,
            "--to-time",
            &t,
        ],
        "before",
    );

    // Off: the stored units stay, and nothing more is shipped.
    psql(&uri, "INSERT INTO t VALUES (4000, 'x')").unwrap();
    let seg = psql(&uri, "SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    wait_archived(&h, "src", &seg);
    let a = json(&h, &["backup", "archives"]);
    let units_on = a[0]["units"].as_u64().unwrap();
    assert!(units_on > units_after, "{a:#}");
    assert!(h
        .ok(&["backup", "archive", "src", "--off"])
        .contains("kept"));
    psql(&uri, "INSERT INTO t VALUES (5000, 'x')").unwrap();
    psql(&uri, "SELECT pg_switch_wal()").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let a = json(&h, &["backup", "archives"]);
    assert_eq!(a[0]["enabled"], false);
    assert_eq!(a[0]["units"].as_u64().unwrap(), units_on, "{a:#}");
}
