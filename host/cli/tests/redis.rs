//! The Redis addon end to end: a real `shoal serve`, real Redis 7.0 servers. A primary and
//! two replicas replicate a write; a kill -9 of the primary fails over to a replica that
//! holds the data and the old primary comes back as a replica; a switchover moves the
//! primary role with nothing lost; an RDB backup restores into a new cluster with the same
//! data; a dynamic parameter applies live (same processes), a static one rolls the cluster;
//! bad input is refused naming the parameter, changing nothing.

use std::time::Duration;

mod common;
use common::*;

/// (name, client port, role) of every instance, and the cluster's password.
fn instances(h: &Host, name: &str) -> (Vec<(String, u64, String)>, String) {
    (ports(&h.describe(name)), password(h, name))
}

/// `INFO replication`'s role on `port` ("master" or "slave").
fn role(port: u64, pw: &str) -> String {
    let info = redis_cli(port, pw, &["INFO", "replication"]).unwrap();
    info.lines()
        .find_map(|l| l.trim().strip_prefix("role:"))
        .unwrap_or("?")
        .to_string()
}

#[test]
fn replicas_follow_the_primary_and_a_killed_primary_fails_over_to_one_that_has_the_data() {
    let h = start_redis_host((24100, 24124));
    let d = create_redis(&h, "r", 3, &[]);
    let (all, pw) = instances(&h, "r");
    assert_eq!(all.len(), 3);
    assert_eq!(all.iter().filter(|(_, _, r)| r == "primary").count(), 1);
    let (primary, pid, pport) = primary_of(&d);

    // A write through the read-write endpoint is readable on the primary and both replicas;
    // replicas refuse writes.
    let rw = rw_port(&d) as u64;
    assert_eq!(redis_cli(rw, &pw, &["SET", "k", "v1"]).unwrap(), "OK");
    for i in 1..=100 {
        redis_cli(pport, &pw, &["SET", &format!("n:{i}"), &i.to_string()]).unwrap();
    }
    for (_, port, _) in &all {
        redis_eventually(*port, &pw, &["GET", "k"], "v1");
        redis_eventually(*port, &pw, &["DBSIZE"], "101");
    }
    let replica = all.iter().find(|(_, _, r)| r == "replica").unwrap();
    let refused = redis_cli(replica.1, &pw, &["SET", "k", "no"]).unwrap_err();
    assert!(refused.contains("READONLY"), "{refused}");
    // The managed password is required.
    assert!(redis_cli(pport, "wrong", &["PING"]).is_err());

    // Metrics of every instance, read now through the addon (the host knows no names).
    let m = json(&h, &["cluster", "metrics", "r"]);
    let of = |inst: &str, metric: &str| metric_of(&m, inst, metric);
    assert_eq!(of(&primary, "redis_connected_slaves"), Some(2.0), "{m:#}");
    let prom = h.ok(&["cluster", "metrics", "r", "--prometheus"]);
    assert!(
        prom.contains("# TYPE redis_commands_processed_total counter"),
        "{prom}"
    );
    assert!(
        prom.contains(&format!(
            "redis_connected_slaves{{cluster=\"r\",instance=\"{primary}\"}} 2"
        )),
        "{prom}"
    );
    assert!(!h.shoal(&["cluster", "metrics", "nope"]).status.success());

    // kill -9 of the primary under a writer through the read-write endpoint: a replica is
    // promoted and has every key; the old primary comes back as a replica of it.
    let writer = Writer::redis(rw_port(&d), &pw);
    wait_until(Duration::from_secs(10), "500 writes", || {
        writer.acked().len() >= 500
    });
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let d = wait_new_primary(&h, "r", &primary);
    let (new_primary, _, nport) = primary_of(&d);
    assert_ne!(new_primary, primary);
    let new_port = nport as u16;
    wait_until(
        Duration::from_secs(20),
        "200 writes on the new primary",
        || writer_acked_by(&writer, new_port) >= 200,
    );
    let (acked, servers) = writer.finish_with_servers();
    assert_eq!(role(nport, &pw), "master");
    assert_eq!(redis_cli(nport, &pw, &["GET", "k"]).unwrap(), "v1");
    assert_eq!(redis_cli(nport, &pw, &["GET", "n:100"]).unwrap(), "100");
    // Acknowledged-write accounting. Redis replication is asynchronous: writes the old
    // primary acknowledged after its last replicated offset may be lost. Replication is
    // ordered, so what is lost is a suffix of the old primary's acknowledgements; nothing the
    // new primary acknowledged is lost.
    let lost = lost_redis(new_port, &pw, &acked);
    let (old_acks, new_acks) = check_async_loss(&acked, &servers, new_port, &lost, 200);
    eprintln!(
        "kill -9 under a writer: {} writes acknowledged by the old primary, {} by the new one, \
         {} acknowledged writes lost (asynchronous replication)",
        old_acks,
        new_acks,
        lost.len()
    );
    let events = h.ok(&["cluster", "events", "r", "--limit", "50"]);
    assert!(events.contains("failover"), "{events}");
    // Writes go to the new primary and reach everyone; the old primary is rebuilt as a
    // replica by a full resync and holds exactly the new primary's data.
    let rw = rw_port(&d) as u64;
    assert_eq!(redis_cli(rw, &pw, &["SET", "after", "yes"]).unwrap(), "OK");
    let size = redis_cli(nport, &pw, &["DBSIZE"]).unwrap();
    for (name, port, _) in ports(&d) {
        redis_eventually(port, &pw, &["GET", "after"], "yes");
        redis_eventually(port, &pw, &["DBSIZE"], &size);
        if name == primary {
            assert_eq!(role(port, &pw), "slave", "{name} came back as a replica");
            redis_eventually(port, &pw, &["GET", "k"], "v1");
            if let Some(n) = lost.first() {
                assert_eq!(
                    redis_cli(port, &pw, &["EXISTS", &format!("w:{n}")]).unwrap(),
                    "0"
                );
            }
        }
    }
}

#[test]
fn a_switchover_moves_the_primary_role_and_loses_nothing() {
    let h = start_redis_host((24125, 24149));
    let d = create_redis(&h, "s", 3, &[]);
    let pw = password(&h, "s");
    let (old, _, _) = primary_of(&d);
    let rw = rw_port(&d) as u64;
    for i in 1..=500 {
        redis_cli(rw, &pw, &["SET", &format!("k:{i}"), &i.to_string()]).unwrap();
    }
    let target = ports(&d)
        .into_iter()
        .find(|(_, _, r)| r == "replica")
        .unwrap()
        .0;
    // Under a writer through the read-write endpoint: the switchover loses no acknowledged
    // write (the old primary is fenced and the candidate catches up before it is promoted).
    let writer = Writer::redis(rw_port(&d), &pw);
    wait_until(Duration::from_secs(10), "500 writes", || {
        writer.acked().len() >= 500
    });
    h.ok(&["cluster", "switchover", "s", "--to", &target]);
    let d = wait_new_primary(&h, "s", &old);
    let (now, _, nport) = primary_of(&d);
    assert_eq!(now, target);
    wait_until(
        Duration::from_secs(20),
        "200 writes on the new primary",
        || writer_acked_by(&writer, nport as u16) >= 200,
    );
    let acked = writer.finish();
    let lost = lost_redis(nport as u16, &pw, &acked);
    assert!(
        lost.is_empty(),
        "switchover lost acknowledged writes {lost:?}"
    );
    eprintln!(
        "switchover under a writer: {} writes, 0 lost, longest gap {:?}",
        acked.len(),
        longest_gap(&acked)
    );
    assert_eq!(role(nport, &pw), "master");
    let size = redis_cli(nport, &pw, &["DBSIZE"]).unwrap();
    for (_, port, _) in ports(&d) {
        redis_eventually(port, &pw, &["DBSIZE"], &size);
        redis_eventually(port, &pw, &["GET", "k:500"], "500");
    }
    // The old primary follows the new one and refuses writes.
    let old_port = ports(&d).into_iter().find(|(n, _, _)| *n == old).unwrap().1;
    assert_eq!(role(old_port, &pw), "slave");
    assert!(redis_cli(old_port, &pw, &["SET", "x", "1"])
        .unwrap_err()
        .contains("READONLY"));
    assert_eq!(
        redis_cli(rw_port(&d) as u64, &pw, &["SET", "x", "1"]).unwrap(),
        "OK"
    );
}

#[test]
fn rdb_and_aof_backups_restore_into_new_clusters_with_the_same_data() {
    let h = start_redis_host((24150, 24174));
    let d = create_redis(&h, "src", 2, &[]);
    let pw = password(&h, "src");
    let rw = rw_port(&d) as u64;
    for i in 1..=1000 {
        redis_cli(rw, &pw, &["SET", &format!("k:{i}"), &format!("v{i}")]).unwrap();
    }
    redis_cli(rw, &pw, &["RPUSH", "list", "a", "b", "c"]).unwrap();
    // The backup is taken from the replica: wait until it has everything.
    for (_, port, _) in ports(&d) {
        redis_eventually(port, &pw, &["DBSIZE"], "1001");
    }
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
    let out = h.ok(&["backup", "create", "src"]);
    let id = out.lines().last().unwrap().trim().to_string();
    let b = json(&h, &["backup", "describe", &id]);
    assert_eq!(b["state"], "completed", "{b:#}");
    assert_eq!(b["method"], "rdb");
    assert_eq!(
        b["source_instance"], "src-1",
        "a healthy replica is preferred"
    );
    assert!(h.ok(&["backup", "verify", &id]).contains("verified"));

    h.ok(&[
        "cluster",
        "restore",
        "copy",
        "--from-backup",
        &id,
        "--replicas",
        "2",
    ]);
    let c = h.wait_healthy("copy");
    let cpw = password(&h, "copy");
    assert_ne!(cpw, pw, "the restored cluster has its own password");
    for (_, port, _) in ports(&c) {
        redis_eventually(port, &cpw, &["DBSIZE"], "1001");
        redis_eventually(port, &cpw, &["GET", "k:1000"], "v1000");
        redis_eventually(port, &cpw, &["LRANGE", "list", "0", "-1"], "a\nb\nc");
    }
    // The restored primary takes writes.
    assert_eq!(
        redis_cli(rw_port(&c) as u64, &cpw, &["SET", "new", "1"]).unwrap(),
        "OK"
    );

    // The aof method: a rewrite, then appendonlydir as a tar; the restore loads it.
    redis_cli(rw, &pw, &["SET", "after-rdb", "yes"]).unwrap();
    for (_, port, _) in ports(&d) {
        redis_eventually(port, &pw, &["DBSIZE"], "1002");
    }
    let out = h.ok(&["backup", "create", "src", "--method", "aof"]);
    let aof = out.lines().last().unwrap().trim().to_string();
    let b = json(&h, &["backup", "describe", &aof]);
    assert_eq!(b["state"], "completed", "{b:#}");
    assert_eq!(b["method"], "aof");
    h.ok(&["cluster", "restore", "fromaof", "--from-backup", &aof]);
    let c = h.wait_healthy("fromaof");
    let cpw = password(&h, "fromaof");
    let (_, _, port) = primary_of(&c);
    redis_eventually(port, &cpw, &["DBSIZE"], "1002");
    redis_eventually(port, &cpw, &["GET", "after-rdb"], "yes");
    redis_eventually(port, &cpw, &["LRANGE", "list", "0", "-1"], "a\nb\nc");

    // With appendonly off there is no AOF to back up: refused, naming the way out.
    h.ok(&["cluster", "config", "set", "copy", "appendonly=false"]);
    let o = h.shoal(&["backup", "create", "copy", "--method", "aof"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("appendonly"), "{err}");
    // A method the addon does not have is refused before anything runs.
    refused(
        &h,
        &["backup", "create", "src", "--method", "snapshot"],
        "snapshot",
    );
}

#[test]
fn parameters_apply_live_or_by_a_rolling_restart_and_bad_input_is_refused() {
    let h = start_redis_host((24175, 24199));
    let d = create_redis(&h, "p", 3, &["--set", "maxmemory=64MB"]);
    let pw = password(&h, "p");
    let pids: Vec<u64> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    // The users' account has no CONFIG (it would show the platform's password): read the
    // settings as the platform account, and check that the users' cannot.
    let denied = redis_cli(ports(&d)[0].1, &pw, &["CONFIG", "GET", "masterauth"]).unwrap_err();
    assert!(denied.contains("NOPERM"), "{denied}");
    let ppw = h.platform_password("p");
    let config_get = |port: u64, name: &str| {
        redis_cli_as(port, "shoal", &ppw, &["CONFIG", "GET", name])
            .unwrap()
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    for (_, port, _) in ports(&d) {
        assert_eq!(config_get(port, "maxmemory"), (64u64 << 20).to_string());
        assert_eq!(config_get(port, "maxmemory-policy"), "noeviction");
    }

    // Dynamic: CONFIG SET on every instance, the same processes.
    h.ok(&[
        "cluster",
        "config",
        "set",
        "p",
        "maxmemory-policy=allkeys-lru",
    ]);
    let d = h.wait_healthy("p");
    for (_, port, _) in ports(&d) {
        assert_eq!(config_get(port, "maxmemory-policy"), "allkeys-lru");
    }
    let after: Vec<u64> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, after, "a dynamic change restarts nothing");

    // Static: a rolling restart (with a switchover) brings databases=32 everywhere.
    redis_cli(rw_port(&d) as u64, &pw, &["SET", "kept", "yes"]).unwrap();
    h.ok(&["cluster", "config", "set", "p", "databases=32"]);
    let d = h.wait_healthy("p");
    for (_, port, _) in ports(&d) {
        assert_eq!(config_get(port, "databases"), "32");
        redis_eventually(port, &pw, &["GET", "kept"], "yes");
    }

    // Bad input: refused with exit code 2 naming the parameter; nothing changes.
    refused(&h, &["cluster", "config", "set", "p", "nope=1"], "nope");
    refused(
        &h,
        &["cluster", "config", "set", "p", "databases=many"],
        "databases",
    );
    refused(
        &h,
        &["cluster", "config", "set", "p", "maxmemory-policy=lru"],
        "maxmemory-policy",
    );
    refused(
        &h,
        &["cluster", "config", "set", "p", "timeout=1500ms"],
        "timeout",
    );
    refused(
        &h,
        &["cluster", "config", "set", "p", "appendonly=maybe"],
        "appendonly",
    );
    let o = h.shoal(&[
        "cluster",
        "create",
        "bad",
        "--engine",
        "redis",
        "--set",
        "io-threads=0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("io-threads"));
    // Redis has no synchronous replication: its manifest says so and the host refuses
    // ha.mode sync at create instead of failing later.
    let spec = h.home.path().join("sync.yaml");
    std::fs::write(
        &spec,
        "name: sy\nengine: redis\nreplicas: 3\nha:\n  mode: sync\n",
    )
    .unwrap();
    refused(
        &h,
        &["cluster", "create", "-f", spec.to_str().unwrap()],
        "no synchronous replication",
    );
    assert!(
        !h.shoal(&["cluster", "describe", "sy"]).status.success(),
        "a refused create left a cluster behind"
    );
    let d = h.describe("p");
    for (_, port, _) in ports(&d) {
        assert_eq!(config_get(port, "maxmemory-policy"), "allkeys-lru");
        assert_eq!(config_get(port, "databases"), "32");
    }
}
