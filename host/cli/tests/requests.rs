//! Requests that must not do more (or other) than asked, found by a hostile new-user pass:
//! a deleted cluster's schedule must not fire for (and prune the backups of) a new cluster of
//! its name; a dry run changes nothing; concurrent requests get clean answers; memory is
//! checked against the machine; bad input (negative counts, endless spec files, huge inputs,
//! a parameter given twice) is refused with a clear message and exit code 2, changing nothing.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

fn backups(h: &Host) -> Vec<serde_json::Value> {
    json(h, &["backup", "list"]).as_array().unwrap().clone()
}

#[test]
fn a_new_cluster_with_a_deleted_ones_name_inherits_no_schedule_no_events_and_no_retention() {
    let h = start_redis_host((25100, 25124));
    let repo = h.home.path().join("repo");
    h.ok(&[
        "backup-repo",
        "add",
        "local",
        "--type",
        "fs",
        "--path",
        repo.to_str().unwrap(),
    ]);
    create_redis(&h, "sx", 1, &["--set", "appendonly=on"]);
    h.ok(&[
        "backup",
        "schedule",
        "sx",
        "--cron",
        "*/2 * * * * *",
        "--keep",
        "1",
        "--method",
        "aof",
    ]);
    wait_until(Duration::from_secs(30), "a scheduled backup", || {
        backups(&h).iter().any(|b| b["state"] == "completed")
    });
    h.ok(&["backup", "schedule", "sx", "--off", "--method", "aof"]);
    std::thread::sleep(Duration::from_millis(1500));
    h.ok(&[
        "backup",
        "schedule",
        "sx",
        "--cron",
        "*/2 * * * * *",
        "--keep",
        "1",
        "--method",
        "aof",
    ]);
    h.ok(&["cluster", "delete", "sx", "--purge", "--yes"]);
    // The schedule went with the cluster; what it took stays.
    assert_eq!(json(&h, &["backup", "schedules"]), serde_json::json!([]));
    let old: Vec<String> = backups(&h)
        .iter()
        .filter(|b| b["state"] == "completed")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(old.len(), 1, "{:?}", backups(&h));
    // A schedule of a cluster that does not exist cannot be set, and says so.
    refused(
        &h,
        &["backup", "schedule", "sx", "--cron", "0 3 * * *"],
        "no cluster",
    );

    // A new cluster of the same name: nothing fires for it, nothing of the old one's is
    // deleted, and its events are its own.
    let d = create_redis(&h, "sx", 1, &["--set", "appendonly=on"]);
    assert_ne!(d["uid"], serde_json::Value::Null);
    std::thread::sleep(Duration::from_secs(5));
    let now = backups(&h);
    assert_eq!(now.len(), 1, "no backup of the new cluster: {now:?}");
    assert_eq!(
        now[0]["id"],
        old[0].as_str(),
        "the old one's only copy is kept"
    );
    let events = h.ok(&["cluster", "events", "sx", "--limit", "1000"]);
    assert!(!events.contains("retention"), "{events}");
    assert!(!events.contains("backup schedule"), "{events}");
    // Its own manual backups are its own: a schedule set now prunes only what it takes.
    h.ok(&["backup", "create", "sx", "--method", "aof"]);
    h.ok(&[
        "backup",
        "schedule",
        "sx",
        "--cron",
        "*/2 * * * * *",
        "--keep",
        "1",
        "--method",
        "aof",
    ]);
    wait_until(Duration::from_secs(30), "scheduled backups pruned", || {
        let e = h.ok(&["cluster", "events", "sx", "--limit", "1000"]);
        e.matches("scheduled aof backup").count() >= 3 && e.contains("retention: deleted")
    });
    h.ok(&["backup", "schedule", "sx", "--off", "--method", "aof"]);
    std::thread::sleep(Duration::from_millis(1500));
    let all = backups(&h);
    let completed = |origin: &str| {
        all.iter()
            .filter(|b| b["state"] == "completed" && b["origin"] == origin)
            .count()
    };
    assert!(all.iter().any(|b| b["id"] == old[0].as_str()), "{all:?}");
    assert_eq!(completed("manual"), 1, "{all:?}");
    // The deleted cluster's one, the newest of the schedule's, and at most one that finished
    // after the schedule was switched off (no retention ran for it then).
    let scheduled = completed("schedule");
    assert!((2..=3).contains(&scheduled), "{all:?}");
}

#[test]
fn a_dry_run_changes_nothing_whatever_the_command() {
    let h = Host::start((25125, 25149));
    let d = create_pg(&h, "dr", 3, &[]);
    let pids = |d: &serde_json::Value| -> Vec<u64> {
        d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["pid"].as_u64().unwrap())
            .collect()
    };
    let before = pids(&d);
    let o = h.shoal(&["cluster", "scale", "dr", "--replicas", "1", "--dry-run"]);
    assert!(o.status.success());
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("removes dr-2, dr-1") && said.contains("dry run"),
        "{said}"
    );
    let o = h.shoal(&["cluster", "scale", "dr", "--replicas", "5", "--dry-run"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("adds dr-3, dr-4"));
    h.ok(&["cluster", "scale", "dr", "--memory", "512Mi", "--dry-run"]);
    h.ok(&[
        "cluster",
        "config",
        "set",
        "dr",
        "work_mem=8MB",
        "--dry-run",
    ]);
    h.ok(&[
        "cluster",
        "config",
        "set",
        "dr",
        "shared_buffers=64MB",
        "--dry-run",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let after = h.wait_healthy("dr");
    assert_eq!(
        pids(&after),
        before,
        "every instance is still the same process"
    );
    assert_eq!(after["instances"].as_array().unwrap().len(), 3);
    assert_eq!(after["resources"]["memory"], serde_json::Value::Null);
    assert_eq!(
        json(&h, &["cluster", "config", "history", "dr"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Scaling to the size it has is refused as bad input, not queued.
    refused(
        &h,
        &["cluster", "scale", "dr", "--replicas", "3"],
        "nothing to change",
    );
}

#[test]
fn concurrent_requests_get_one_clean_answer_each() {
    let h = Host::start_with((25150, 25199), &["shoal_example_memcached.wasm"], None);
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("SHOAL_HOME", h.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two creates of one name at once: one cluster, one clear refusal (exit 2).
    let a = spawn(&["cluster", "create", "dup", "--engine", "memcached"]);
    let b = spawn(&["cluster", "create", "dup", "--engine", "memcached"]);
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "{codes:?}"
    );
    let loser = outs.iter().find(|o| o.status.code() == Some(2)).unwrap();
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert!(!err.contains("UNIQUE constraint"), "{err}");
    assert_eq!(json(&h, &["cluster", "list"]).as_array().unwrap().len(), 1);

    // Four repositories added at once: all four, none lost.
    let dirs = tempfile::tempdir().unwrap();
    let adds: Vec<_> = (0..4)
        .map(|n| {
            let path = dirs.path().join(format!("r{n}"));
            spawn(&[
                "backup-repo",
                "add",
                &format!("r{n}"),
                "--type",
                "fs",
                "--path",
                path.to_str().unwrap(),
            ])
        })
        .collect();
    for a in adds {
        let o = a.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        json(&h, &["backup-repo", "list"]).as_array().unwrap().len(),
        4
    );
    // Two adds of one name with different paths: exactly one wins; the list says which.
    let p1 = dirs.path().join("same-1");
    let p2 = dirs.path().join("same-2");
    let x = spawn(&[
        "backup-repo",
        "add",
        "same",
        "--type",
        "fs",
        "--path",
        p1.to_str().unwrap(),
    ]);
    let y = spawn(&[
        "backup-repo",
        "add",
        "same",
        "--type",
        "fs",
        "--path",
        p2.to_str().unwrap(),
    ]);
    let outs = [x.wait_with_output().unwrap(), y.wait_with_output().unwrap()];
    let won: Vec<&std::process::Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one add of \"same\" succeeds");
    let lost = outs.iter().find(|o| !o.status.success()).unwrap();
    assert_eq!(lost.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&lost.stderr).contains("exists already"));
    let list = json(&h, &["backup-repo", "list"]);
    let same = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "same")
        .unwrap();
    let winner_path = if String::from_utf8_lossy(&won[0].stdout).contains("same-1") {
        "same-1"
    } else {
        "same-2"
    };
    assert!(
        same["location"].as_str().unwrap().contains(winner_path),
        "the one that said \"added\" is the one kept: {same}"
    );
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let h = Host::start_with((25200, 25219), &["shoal_example_memcached.wasm"], None);
    fn create<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["cluster", "create", "m", "--engine", "memcached"];
        a.extend(extra);
        a
    }
    // Memory the machine does not have, or that nothing runs in.
    refused(
        &h,
        &create(&["--memory", "999999Ti"]),
        "more than this machine has",
    );
    refused(
        &h,
        &create(&["--memory", "2Ti"]),
        "more than this machine has",
    );
    refused(&h, &create(&["--memory", "1"]), "below the least");
    let spec = h.home.path().join("big.yaml");
    std::fs::write(
        &spec,
        "name: m\nengine: memcached\nresources:\n  memory: 999999Ti\n",
    )
    .unwrap();
    refused(
        &h,
        &["cluster", "create", "-f", spec.to_str().unwrap()],
        "more than this machine has",
    );
    // Negative and zero counts: said plainly, not clap's "unexpected argument".
    refused(&h, &create(&["--replicas", "-1"]), "-1 is not allowed");
    refused(&h, &create(&["--replicas", "0"]), "0 is not allowed");
    refused(
        &h,
        &["cluster", "events", "m", "--limit", "-5"],
        "-5 is not allowed",
    );
    // A spec file that never ends is not read forever.
    let t = std::time::Instant::now();
    refused(
        &h,
        &["cluster", "create", "-f", "/dev/zero"],
        "larger than 1 MiB",
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // A parameter given twice: which one was meant?
    refused(
        &h,
        &create(&["--set", "memory-limit=64MB", "--set", "memory-limit=128MB"]),
        "given twice",
    );
    // A huge input is not echoed back whole.
    let huge = "x".repeat(100_000);
    let o = h.shoal(&create(&["--memory", &huge]));
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stderr.len() < 2000, "{} bytes of error", o.stderr.len());
    let o = h.shoal(&["cluster", "create", &huge, "--engine", "memcached"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stderr.len() < 2000, "{} bytes of error", o.stderr.len());
    // Nothing was created by any of it.
    assert_eq!(h.ok(&["cluster", "list", "-o", "json"]).trim(), "[]");
    assert!(!h.home.path().join("clusters").join("m").exists());
    // A good create, followed later: --no-wait, then `cluster wait`, with -o json.
    let queued = json(
        &h,
        &[
            "cluster",
            "create",
            "m",
            "--engine",
            "memcached",
            "--no-wait",
        ],
    );
    let id = queued["id"].as_i64().unwrap().to_string();
    let done = json(&h, &["cluster", "wait", &id]);
    assert_eq!(done["state"], "succeeded", "{done}");
    refused(&h, &["cluster", "wait", "0"], "0 is not allowed");
}
