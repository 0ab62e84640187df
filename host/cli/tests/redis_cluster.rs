//! The sharded topology end to end on Redis Cluster (real Redis 7.0 servers through a real
//! `shoal serve`): 3 shards × (a primary and a replica) covering all 16,384 slots; a kill -9
//! of a shard's primary under a writer (each write confirmed by a replica with `WAIT`) →
//! Redis elects the replica, the host sees it and routes to it, and no acknowledged write is
//! lost; the killed node comes back as a replica, and a rebuild replaces it with a fresh copy;
//! a backup holds one RDB per shard and restores into a new sharded cluster with the same
//! keys; a replica is added to every shard; bad input is refused, changing nothing.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// `redis-cli -c` (following the cluster's redirections) on 127.0.0.1:`port`.
fn cluster_cli(port: u64, password: &str, args: &[&str]) -> String {
    let o = Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "default", "--no-auth-warning"])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// (name, shard, client port, pid, writable) of every instance.
fn members(d: &serde_json::Value) -> Vec<(String, u64, u16, u64, bool)> {
    d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["shard"].as_u64().expect("every member has a shard"),
                i["ports"]["client"].as_u64().unwrap() as u16,
                i["pid"].as_u64().unwrap_or(0),
                i["writable"] == true,
            )
        })
        .collect()
}

/// The client port of the node serving `slot`, from `CLUSTER NODES` of the first node
/// among `ports` that answers.
fn owner(ports: &[u16], password: &str, slot: u32) -> Result<u16, String> {
    for p in ports {
        let Ok(mut c) = RespConn::connect(*p, password) else {
            continue;
        };
        let Ok(text) = c.call(&["CLUSTER", "NODES"]) else {
            continue;
        };
        for line in text.join("").lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let covers = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u32>().is_ok_and(|a| a <= slot)
                        && b.parse::<u32>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u32>() == Ok(slot),
            });
            if covers {
                let port = f[1].split(['@', ',']).next().unwrap_or("");
                return port
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad address {port}"));
            }
        }
    }
    Err(format!("no node serves slot {slot}"))
}

/// A writer of `SET {w}:n 1` (one slot, so one shard) to whichever node serves it, each
/// acknowledged only once a replica has it (`WAIT 1 1000`).
fn cluster_writer(ports: Vec<u16>, password: &str, slot: u32) -> Writer {
    let pw = password.to_string();
    Writer::start_with(1, move || {
        let port = owner(&ports, &pw, slot)?;
        let mut c = RespConn::connect(port, &pw)?;
        Ok(Box::new(move |n: u64| -> Result<u16, String> {
            c.call(&["SET", &format!("{{w}}:{n}"), "1"])?;
            let copies: u64 = c
                .call(&["WAIT", "1", "1000"])?
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if copies == 0 {
                return Err("no replica confirmed the write".into());
            }
            Ok(port)
        }) as Commit)
    })
}

#[test]
fn redis_cluster_shards_fail_over_rebuild_back_up_restore_and_grow() {
    let h = Host::start_with(
        (24400, 24469),
        &["shoal_addon_redis.wasm", "shoal_addon_etcd.wasm"],
        None,
    );
    // Bad input, refused before anything exists.
    let create = |name: &str, extra: &[&str]| {
        let mut a = vec!["cluster", "create", name, "--engine", "redis"];
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = create("bad", &["--shards", "3", "--replicas", "9"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&h, &args, "1 to 5 members per shard");
    let args = create("bad", &["--shards", "65"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&h, &args, "shards must be between 1 and 64");
    refused(
        &h,
        &[
            "cluster",
            "create",
            "bad",
            "--engine",
            "etcd",
            "--shards",
            "2",
            "--replicas",
            "3",
        ],
        "has no sharded topology",
    );
    assert_eq!(
        json(&h, &["cluster", "list"]),
        serde_json::json!([]),
        "nothing created"
    );

    let t = Instant::now();
    h.ok(&[
        "cluster",
        "create",
        "rc",
        "--engine",
        "redis",
        "--shards",
        "3",
        "--replicas",
        "2",
    ]);
    let d = h.wait_healthy("rc");
    eprintln!("3 shards x 2 members healthy in {:?}", t.elapsed());
    assert_eq!(d["topology"], "sharded", "{d:#}");
    let all = members(&d);
    assert_eq!(all.len(), 6);
    for s in 0..3 {
        assert_eq!(all.iter().filter(|m| m.1 == s).count(), 2, "shard {s}");
        assert_eq!(
            all.iter().filter(|m| m.1 == s && m.4).count(),
            1,
            "shard {s} has one primary: {d:#}"
        );
    }
    let summary = d["shards"].as_str().unwrap();
    assert!(
        summary.starts_with("3 shards: shard 0 2/2, primary "),
        "{summary}"
    );
    let text = h.ok(&["cluster", "describe", "rc"]);
    assert!(text.contains("3 shards"), "{text}");
    let pw = password(&h, "rc");
    let node_ports: Vec<u16> = all.iter().map(|m| m.2).collect();
    let info = cluster_cli(node_ports[0] as u64, &pw, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_known_nodes:6"), "{info}");
    // Users cannot change the cluster's shape (administrative CLUSTER subcommands).
    let o = cluster_cli(node_ports[0] as u64, &pw, &["CLUSTER", "FORGET", "x"]);
    assert!(o.contains("NOPERM"), "{o}");
    for i in 0..200 {
        assert_eq!(
            cluster_cli(node_ports[0] as u64, &pw, &["SET", &format!("k:{i}"), "v"]),
            "OK"
        );
    }
    // The read-write endpoint leads to a primary (a seed for cluster-aware clients).
    let rw = rw_port(&d) as u64;
    assert_eq!(cluster_cli(rw, &pw, &["GET", "k:7"]), "v");

    // Kill -9 the primary of the writer's shard.
    let slot: u32 = cluster_cli(rw, &pw, &["CLUSTER", "KEYSLOT", "{w}"])
        .parse()
        .unwrap();
    let victim_port = owner(&node_ports, &pw, slot).unwrap();
    let victim = all.iter().find(|m| m.2 == victim_port).unwrap().clone();
    let w = cluster_writer(node_ports.clone(), &pw, slot);
    wait_until(Duration::from_secs(20), "writes acknowledged", || {
        w.acked().len() > 50
    });
    let killed = Instant::now();
    unsafe {
        libc::kill(victim.3 as i32, libc::SIGKILL);
    }
    let mut new_primary = String::new();
    wait_until(
        Duration::from_secs(60),
        "the shard's replica taking its writes, seen by the host",
        || {
            let d = h.describe("rc");
            match members(&d)
                .into_iter()
                .find(|m| m.1 == victim.1 && m.4 && m.0 != victim.0)
            {
                Some(m) => {
                    new_primary = m.0;
                    true
                }
                None => false,
            }
        },
    );
    let events = h.ok(&["cluster", "events", "rc"]);
    assert!(
        events.contains("left down until the engine elects a replica"),
        "{events}"
    );
    eprintln!(
        "shard {} primary {} killed: {new_primary} serves it after {:?}",
        victim.1,
        victim.0,
        killed.elapsed()
    );
    wait_until(Duration::from_secs(30), "writes after the failover", || {
        w.acked()
            .iter()
            .any(|(_, t)| *t > killed + Duration::from_secs(1))
    });
    let (acked, servers) = w.finish_with_servers();
    let new_port = members(&h.describe("rc"))
        .into_iter()
        .find(|m| m.0 == new_primary)
        .unwrap()
        .2;
    assert!(
        servers.contains(&new_port),
        "the writer followed the new primary"
    );
    let mut c = RespConn::connect(new_port, &pw).unwrap();
    let present: std::collections::HashSet<u64> = c
        .call(&["KEYS", "{w}:*"])
        .unwrap()
        .iter()
        .filter_map(|k| k.strip_prefix("{w}:")?.parse().ok())
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !present.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost",
        lost.len(),
        acked.len()
    );
    eprintln!(
        "{} writes acknowledged, 0 lost, longest pause {:?}",
        acked.len(),
        longest_gap(&acked)
    );
    wait_until(
        Duration::from_secs(30),
        "the shards whole again, as an event",
        || {
            h.ok(&["cluster", "events", "rc"])
                .contains("every shard has its primary")
        },
    );
    // The killed node is restarted by the host and comes back as its shard's replica.
    wait_until(
        Duration::from_secs(60),
        "the killed node back as a replica",
        || {
            let d = h.describe("rc");
            d["instances"].as_array().unwrap().iter().any(|i| {
                i["name"] == victim.0.as_str()
                    && i["health"] == "healthy"
                    && i["observed_role"] == "replica"
            })
        },
    );
    // The shard's only primary cannot be replaced (its data would be lost)…
    refused(
        &h,
        &["cluster", "rebuild", "rc", &new_primary],
        "no other member of shard",
    );
    // …its replica can: forgotten, started empty, a fresh copy of the shard's primary.
    h.ok(&["cluster", "rebuild", "rc", &victim.0]);
    let d = h.wait_healthy("rc");
    let rebuilt = members(&d).into_iter().find(|m| m.0 == victim.0).unwrap();
    assert!(!rebuilt.4, "the rebuilt node is a replica");
    let want = cluster_cli(new_port as u64, &pw, &["DBSIZE"]);
    wait_until(
        Duration::from_secs(20),
        "the rebuilt replica's copy",
        || cluster_cli(rebuilt.2 as u64, &pw, &["DBSIZE"]) == want,
    );
    let info = cluster_cli(rebuilt.2 as u64, &pw, &["CLUSTER", "INFO"]);
    assert!(
        info.contains("cluster_known_nodes:6"),
        "old identity forgotten: {info}"
    );

    // A backup: one RDB per shard, each restore-tested; restored into a new sharded cluster.
    let total = |ports: &[u16], pw: &str| -> u64 {
        ports
            .iter()
            .filter(|p| cluster_cli(**p as u64, pw, &["ROLE"]).starts_with("master"))
            .map(|p| {
                cluster_cli(*p as u64, pw, &["DBSIZE"])
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    let keys = total(&node_ports, &pw);
    assert!(keys >= 200, "{keys}");
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
    let out = h.ok(&["backup", "create", "rc"]);
    let id = out.lines().last().unwrap().trim().to_string();
    let b = json(&h, &["backup", "describe", &id]);
    assert_eq!(b["state"], "completed", "{b:#}");
    assert_eq!(b["objects"].as_array().unwrap().len(), 3, "{b:#}");
    let verified = h.ok(&["backup", "verify", &id, "--restore"]);
    assert!(verified.contains("shard 2"), "{verified}");
    h.ok(&["cluster", "restore", "rc2", "--from-backup", &id]);
    let d2 = h.wait_healthy("rc2");
    assert_eq!(d2["topology"], "sharded");
    let pw2 = password(&h, "rc2");
    let ports2: Vec<u16> = members(&d2).iter().map(|m| m.2).collect();
    wait_until(Duration::from_secs(20), "every key restored", || {
        total(&ports2, &pw2) == keys
    });
    assert_eq!(cluster_cli(ports2[0] as u64, &pw2, &["GET", "k:199"]), "v");
    let info = cluster_cli(ports2[0] as u64, &pw2, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    // A backup of another shape is refused for a sharded restore, naming the rule.
    refused(
        &h,
        &[
            "cluster",
            "restore",
            "rc3",
            "--from-backup",
            &id,
            "--replicas",
            "9",
        ],
        "members per shard",
    );

    // A replica added to every shard.
    h.ok(&["cluster", "scale", "rc2", "--replicas", "3"]);
    let d2 = h.wait_healthy("rc2");
    let m2 = members(&d2);
    assert_eq!(m2.len(), 9);
    for s in 0..3 {
        assert_eq!(m2.iter().filter(|m| m.1 == s).count(), 3);
    }
    let info = cluster_cli(ports2[0] as u64, &pw2, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_known_nodes:9"), "{info}");
    assert!(d2["shards"].as_str().unwrap().contains("3/3"), "{d2:#}");
    // And back: the newest replica of every shard leaves and is forgotten by the others.
    h.ok(&["cluster", "scale", "rc2", "--replicas", "2"]);
    let d2 = h.wait_healthy("rc2");
    let m2 = members(&d2);
    assert_eq!(m2.len(), 6);
    for s in 0..3 {
        assert_eq!(m2.iter().filter(|m| m.1 == s && m.4).count(), 1, "{d2:#}");
    }
    wait_until(
        Duration::from_secs(20),
        "the removed nodes forgotten",
        || {
            cluster_cli(m2[0].2 as u64, &pw2, &["CLUSTER", "INFO"])
                .contains("cluster_known_nodes:6")
        },
    );
    assert_eq!(
        total(&m2.iter().map(|m| m.2).collect::<Vec<_>>(), &pw2),
        keys
    );

    // A parameter that needs a restart rolls through every member, shard primaries included
    // (a clean stop saves, so a primary back in place keeps its keys): every shard keeps a
    // primary, no key is lost, every node runs the new value.
    h.ok(&["cluster", "config", "set", "rc2", "databases=32"]);
    let d2 = h.wait_healthy("rc2");
    let rolled = members(&d2);
    // (Read as the platform account: the users' has no CONFIG.)
    let ppw = h.platform_password("rc2");
    for (before, after) in m2.iter().zip(&rolled) {
        assert_eq!(before.0, after.0);
        assert_ne!(before.3, after.3, "{} was not restarted", after.0);
        let got = redis_cli_as(
            after.2 as u64,
            "shoal",
            &ppw,
            &["CONFIG", "GET", "databases"],
        )
        .unwrap();
        assert_eq!(got.lines().nth(1), Some("32"), "{}: {got}", after.0);
    }
    for s in 0..3 {
        assert_eq!(
            rolled.iter().filter(|m| m.1 == s && m.4).count(),
            1,
            "{d2:#}"
        );
    }
    let ports2: Vec<u16> = rolled.iter().map(|m| m.2).collect();
    wait_until(Duration::from_secs(20), "every key after the roll", || {
        total(&ports2, &pw2) == keys
    });
}
