//! Parameters end to end on real PostgreSQL 15: dynamic changes applied live (same
//! postmaster), static ones rolled through the cluster (replicas, switchover, old primary)
//! while a writer keeps committing, a value the server refuses at start-up rolled back with
//! nothing stored, bad input refused naming the parameter, history and rollback, vertical
//! scaling through the same path.

use std::time::Duration;

mod common;
use common::*;

/// `SHOW setting` on every instance of `name`.
fn on_every_instance(h: &Host, name: &str, setting: &str) -> Vec<String> {
    let uri = h.uri(name);
    ports(&h.describe(name))
        .into_iter()
        .map(|(_, port, _)| psql(&instance_uri(&uri, port), &format!("SHOW {setting}")).unwrap())
        .collect()
}

/// The effective value and source of `param` as `shoal cluster config` shows them.
fn shown(h: &Host, name: &str, param: &str) -> (String, String) {
    let v = json(h, &["cluster", "config", name]);
    let p = v["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == param)
        .unwrap_or_else(|| panic!("{param} not shown: {v:#}"));
    (
        p["value"].as_str().unwrap_or("-").to_string(),
        p["source"].as_str().unwrap().to_string(),
    )
}

fn postmaster_start(uri: &str) -> String {
    psql(uri, "SELECT pg_postmaster_start_time()").unwrap()
}

#[test]
fn dynamic_changes_apply_live_and_static_ones_roll_the_cluster_under_a_writer() {
    let h = Host::start((24000, 24039));
    let d = create_pg(&h, "src", 3, &["--set", "work_mem=8MB"]);
    assert_eq!(shown(&h, "src", "work_mem"), ("8MB".into(), "user".into()));
    assert_eq!(
        shown(&h, "src", "max_connections"),
        ("100".into(), "default".into())
    );
    assert_eq!(
        shown(&h, "src", "shared_buffers"),
        ("128MB".into(), "derived".into())
    );
    assert_eq!(on_every_instance(&h, "src", "work_mem"), ["8MB"; 3]);

    // Dynamic: live on every instance, the same postmaster.
    let uri = h.uri("src");
    let started = postmaster_start(&uri);
    let out = h.shoal(&["cluster", "config", "set", "src", "work_mem=16MB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("work_mem: 8MB -> 16MB (dynamic)"), "{err}");
    assert!(err.contains("applies live"), "{err}");
    assert_eq!(on_every_instance(&h, "src", "work_mem"), ["16MB"; 3]);
    assert_eq!(postmaster_start(&uri), started);

    // A dry run says a restart is needed and changes nothing.
    let out = h.shoal(&[
        "cluster",
        "config",
        "set",
        "src",
        "shared_buffers=192MB",
        "--dry-run",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("shared_buffers: 128MB -> 192MB (restart)"),
        "{err}"
    );
    assert!(err.contains("rolling restart"), "{err}");
    assert_eq!(on_every_instance(&h, "src", "shared_buffers"), ["128MB"; 3]);

    // Static: a rolling restart under a writer; the primary is away only for the switchover.
    psql(&uri, "CREATE TABLE w (n bigint PRIMARY KEY)").unwrap();
    let w = Writer::start(rw_port(&d), &password(&h, "src"));
    std::thread::sleep(Duration::from_millis(500));
    h.ok(&[
        "cluster",
        "config",
        "set",
        "src",
        "shared_buffers=192MB",
        "max_connections=150",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let acked = w.finish();
    assert!(acked.len() > 100, "{} commits", acked.len());
    assert!(lost(&h, "src", &acked).is_empty());
    assert_eq!(on_every_instance(&h, "src", "shared_buffers"), ["192MB"; 3]);
    assert_eq!(on_every_instance(&h, "src", "max_connections"), ["150"; 3]);
    let (old_primary, _, _) = primary_of(&d);
    let (new_primary, _, _) = primary_of(&h.describe("src"));
    assert_ne!(
        old_primary, new_primary,
        "the primary's restart is a switchover"
    );
    // …recorded as an operation of its own, a step of the reconfigure, which stays the
    // cluster's last operation.
    let events = h.ok(&["cluster", "events", "src"]);
    assert!(
        events.contains("started as a step of op") && events.contains("switchover (op"),
        "{events}"
    );
    assert_eq!(h.describe("src")["last_op"]["kind"], "reconfigure");
    // Commits stopped once, for the switchover (the gap is reported, not judged: no timing
    // thresholds in tests).
    eprintln!("longest write gap: {:?}", longest_gap(&acked));

    // History and rollback.
    let hist = json(&h, &["cluster", "config", "history", "src"]);
    let reasons: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "created",
            "set work_mem=16MB",
            "set max_connections=150 shared_buffers=192MB"
        ]
    );
    // Lowering max_connections: a hot standby may not run below its primary, so the primary
    // goes first this time.
    let out = h.shoal(&["cluster", "config", "rollback", "src"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("max_connections: 150 -> 100 (restart, primary first)"),
        "{err}"
    );
    assert_eq!(on_every_instance(&h, "src", "shared_buffers"), ["128MB"; 3]);
    assert_eq!(on_every_instance(&h, "src", "max_connections"), ["100"; 3]);
    assert_eq!(on_every_instance(&h, "src", "work_mem"), ["16MB"; 3]);
    h.ok(&["cluster", "config", "rollback", "src", "--to", "1"]);
    assert_eq!(on_every_instance(&h, "src", "work_mem"), ["8MB"; 3]);
    let hist = json(&h, &["cluster", "config", "history", "src"]);
    assert_eq!(hist[4]["reason"], "rollback to 1");
    assert_eq!(shown(&h, "src", "work_mem"), ("8MB".into(), "user".into()));
}

#[test]
fn a_value_the_server_refuses_at_start_is_rolled_back_and_never_stored() {
    let h = Host::start((24040, 24069));
    let d = create_pg(&h, "src", 3, &[]);
    let (primary, primary_pid, _) = primary_of(&d);
    // Within the schema, but more shared memory than this machine has.
    let o = h.shoal(&["cluster", "config", "set", "src", "shared_buffers=64GB"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("did not come back healthy"), "{err}");
    assert!(err.contains("never saw the change"), "{err}");
    // The first replica took the hit; it runs the old configuration again.
    let d = h.wait_healthy("src");
    assert_eq!(on_every_instance(&h, "src", "shared_buffers"), ["128MB"; 3]);
    let (still, pid, _) = primary_of(&d);
    assert_eq!(
        (still, pid),
        (primary, primary_pid),
        "the primary was never touched"
    );
    assert_eq!(
        shown(&h, "src", "shared_buffers"),
        ("128MB".into(), "derived".into())
    );
    let hist = json(&h, &["cluster", "config", "history", "src"]);
    assert_eq!(hist.as_array().unwrap().len(), 1, "{hist:#}");
    let events = h.ok(&["cluster", "events", "src", "--limit", "200"]);
    assert!(events.contains("rolling back"), "{events}");
}

#[test]
fn bad_parameter_input_is_refused_naming_it_and_vertical_scaling_rolls() {
    let h = Host::start((24070, 24099));
    refused(
        &h,
        &[
            "cluster",
            "create",
            "bad",
            "--engine",
            "postgresql",
            "--set",
            "max_connections=lots",
        ],
        "max_connections",
    );
    assert!(!h.ok(&["cluster", "list"]).contains("bad"));
    create_pg(&h, "src", 1, &[]);
    let work_mem = on_every_instance(&h, "src", "work_mem");
    for (args, want) in [
        (vec!["set", "src", "nope=1"], "nope"),
        (vec!["set", "src", "max_connections=abc"], "max_connections"),
        (vec!["set", "src", "max_connections=5"], "outside"),
        (vec!["set", "src", "work_mem=12XB"], "work_mem"),
        (vec!["set", "src", "locale=C.UTF-8"], "immutable"),
        (vec!["set", "src", "io_method=sync"], "only in 18"),
        (
            vec!["set", "src", "synchronous_commit=maybe"],
            "synchronous_commit",
        ),
        // One bad entry among good ones: nothing of it is applied.
        (
            vec!["set", "src", "work_mem=32MB", "max_connections=abc"],
            "max_connections",
        ),
        (vec!["set", "src", "work_mem"], "NAME=VALUE"),
        (vec!["unset", "src", "nope"], "nope"),
        (vec!["set", "src", "max_connections=100"], "would change"),
        (vec!["rollback", "src"], "nothing to roll back"),
        (
            vec!["rollback", "src", "--to", "7"],
            "no configuration version 7",
        ),
    ] {
        let mut a = vec!["cluster", "config"];
        a.extend(args.iter().copied());
        refused(&h, &a, want);
    }
    assert!(h
        .shoal(&["cluster", "config", "nope"])
        .status
        .code()
        .is_some_and(|c| c != 0));
    assert_eq!(on_every_instance(&h, "src", "work_mem"), work_mem);
    assert_eq!(
        json(&h, &["cluster", "config", "history", "src"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    refused(
        &h,
        &["cluster", "scale", "src", "--memory", "lots"],
        "memory",
    );

    // Vertical scaling: memory-derived settings follow, through a (here single-instance)
    // restart.
    let out = h.shoal(&["cluster", "scale", "src", "--memory", "1Gi", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("shared_buffers: 128MB -> 256MB (restart)"),
        "{err}"
    );
    assert_eq!(on_every_instance(&h, "src", "shared_buffers"), ["128MB"]);
    h.ok(&["cluster", "scale", "src", "--memory", "1Gi"]);
    assert_eq!(on_every_instance(&h, "src", "shared_buffers"), ["256MB"]);
    assert_eq!(
        shown(&h, "src", "shared_buffers"),
        ("256MB".into(), "derived".into())
    );
    let v = json(&h, &["cluster", "config", "src"]);
    assert_eq!(v["resources"]["memory"], "1Gi");
    let names: Vec<&str> = v["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"io_method"),
        "a PostgreSQL 18 parameter on 15: {names:?}"
    );

    // A parameter of one engine version only: PostgreSQL 18's io_method.
    create_pg(
        &h,
        "new",
        1,
        &["--version", "18", "--set", "io_method=sync"],
    );
    assert_eq!(on_every_instance(&h, "new", "io_method"), ["sync"]);
    assert_eq!(
        shown(&h, "new", "io_method"),
        ("sync".into(), "user".into())
    );
    h.ok(&["cluster", "config", "unset", "new", "io_method"]);
    assert_eq!(on_every_instance(&h, "new", "io_method"), ["worker"]);
    assert_eq!(shown(&h, "new", "io_method"), ("-".into(), "engine".into()));
}
