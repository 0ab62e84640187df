//! Operations a host restart interrupts are finished or undone, never left stuck: `shoal
//! serve` is killed (SIGKILL) at a chosen step (a failpoint holds the operation there), a new
//! one starts on the same home, and desired state, observed state and the processes agree
//! again — an interrupted create is undone (the name free again), a scale and a rolling
//! configuration change are finished, a replica whose copy was interrupted is copied again
//! rather than started on half a copy — each saying what it did.

use std::time::Duration;

mod common;
use common::*;

/// Restart the daemon with `failpoint` (`STEP:MS`) set, or none.
fn restart_with(h: &mut Host, failpoint: Option<&str>) {
    h.kill_serve();
    h.failpoint = failpoint.map(str::to_string);
    h.spawn_serve();
}

/// Wait until an event of `cluster` contains `needle`.
fn wait_event(h: &Host, cluster: &str, needle: &str) {
    wait_until(Duration::from_secs(60), needle, || {
        h.shoal(&["cluster", "events", cluster, "--limit", "500"])
            .stdout
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    });
}

/// Wait until `cluster`'s last operation has ended; its final view.
fn wait_settled(h: &Host, cluster: &str) -> serde_json::Value {
    let mut d = h.describe(cluster);
    wait_until(Duration::from_secs(120), "the resumed operation", || {
        d = h.describe(cluster);
        matches!(
            d["last_op"]["state"].as_str(),
            Some("succeeded") | Some("failed")
        )
    });
    d
}

#[test]
fn an_interrupted_create_is_undone_and_the_name_is_free_again() {
    let mut h = Host::start((25500, 25519));
    restart_with(&mut h, Some("create-primary-up:30000"));
    h.ok(&[
        "cluster",
        "create",
        "ic",
        "--engine",
        "postgresql",
        "--replicas",
        "2",
        "--no-wait",
    ]);
    wait_event(&h, "ic", "ready");
    restart_with(&mut h, None);
    wait_until(Duration::from_secs(60), "the create undone", || {
        h.ok(&["cluster", "list", "-o", "json"]).trim() == "[]"
    });
    let events = h.ok(&["cluster", "events", "ic", "--limit", "500"]);
    assert!(
        events.contains("was interrupted by a host restart; undoing it"),
        "{events}"
    );
    assert!(h.pids().is_empty(), "no process of the undone create");
    // The name can be used again at once.
    create_pg(&h, "ic", 1, &[]);
}

#[test]
fn an_interrupted_scale_and_rolling_change_are_finished() {
    let mut h = Host::start((25520, 25559));
    create_pg(&h, "is", 1, &[]);
    create_pg(&h, "ir", 3, &[]);
    psql(&h.uri("is"), "CREATE TABLE t AS SELECT 1 AS x").unwrap();

    // A scale 1 -> 3, interrupted once the first replica is up.
    restart_with(&mut h, Some("scale-added:30000"));
    h.ok(&["cluster", "scale", "is", "--replicas", "3", "--no-wait"]);
    wait_event(&h, "is", "ready");
    wait_until(Duration::from_secs(30), "is-1 up", || {
        h.describe("is")["instances"].as_array().unwrap().len() == 2
    });
    // A restart-class change rolling through ir, interrupted after its first replica.
    h.ok(&[
        "cluster",
        "config",
        "set",
        "ir",
        "shared_buffers=96MB",
        "--no-wait",
    ]);
    wait_event(&h, "ir", "restarting with the new configuration");
    restart_with(&mut h, None);

    let d = wait_settled(&h, "is");
    assert_eq!(d["last_op"]["state"], "succeeded", "{d:#}");
    let d = h.wait_healthy("is");
    assert_eq!(d["replicas"], 3, "the spec says what runs: {d:#}");
    assert_eq!(d["instances"].as_array().unwrap().len(), 3);
    wait_until(Duration::from_secs(10), "is running", || {
        h.describe("is")["state"] == "running"
    });
    for (_, port, _) in ports(&d) {
        eventually(
            &instance_uri(&h.uri("is"), port),
            "SELECT count(*) FROM t",
            "1",
        );
    }
    let events = h.ok(&["cluster", "events", "is", "--limit", "500"]);
    assert!(
        events.contains("interrupted by a host restart; finishing it"),
        "{events}"
    );

    let d = wait_settled(&h, "ir");
    assert_eq!(d["last_op"]["state"], "succeeded", "{d:#}");
    let d = h.wait_healthy("ir");
    let uri = h.uri("ir");
    for (inst, port, _) in ports(&d) {
        assert_eq!(
            psql(&instance_uri(&uri, port), "SHOW shared_buffers").unwrap(),
            "96MB",
            "{inst} runs what the configuration says"
        );
    }
    let shown = json(&h, &["cluster", "config", "ir"]);
    let sb = shown["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "shared_buffers")
        .unwrap()
        .clone();
    assert_eq!(sb["value"], "96MB", "{sb}");
}

#[test]
fn a_replica_whose_copy_was_interrupted_is_copied_again_not_started_on_half_a_copy() {
    let mut h = start_mariadb_host((25560, 25579));
    create_mariadb(&h, "mi", 1, &[]);
    let pw = password(&h, "mi");
    let d = h.describe("mi");
    mariadb_sql(rw_port(&d) as u64, &pw, "INSERT INTO app.w VALUES (7)").unwrap();
    // The copy (mariadb-backup --backup) has run; its --prepare has not.
    restart_with(&mut h, Some("init-step:30000"));
    h.ok(&["cluster", "scale", "mi", "--replicas", "2", "--no-wait"]);
    wait_event(&h, "mi", "running mariadb-backup");
    std::thread::sleep(Duration::from_secs(3));
    restart_with(&mut h, None);
    let d = wait_settled(&h, "mi");
    assert_eq!(d["last_op"]["state"], "succeeded", "{d:#}");
    let d = h.wait_healthy("mi");
    assert_eq!(d["instances"].as_array().unwrap().len(), 2);
    for (_, port, _) in ports(&d) {
        mariadb_eventually(port, &pw, "SELECT COUNT(*) FROM app.w WHERE n = 7", "1");
    }
    let events = h.ok(&["cluster", "events", "mi", "--limit", "500"]);
    eprintln!("{events}");
    assert!(
        events.contains("left half made by an interrupted operation")
            || events.contains("its initialization was interrupted"),
        "{events}"
    );
}
