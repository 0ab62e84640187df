//! ZooKeeper 3.8 (Debian's `zookeeper`, Java 17) as a quorum cluster: an ensemble of three
//! elects its own leader, the read-write endpoint follows it, a leader killed under a writer
//! loses no acknowledged write, a logical backup restores into a new ensemble, the ensemble
//! scales 3 → 5 → 3 and a member is replaced by dynamic reconfiguration.

mod common;
#[path = "common/zookeeper.rs"]
mod zookeeper_client;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use zookeeper_client::*;

/// The member the description names as leader, with its pid, once every member is healthy.
fn leader_of(h: &Host, name: &str) -> (String, u32, Json) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let d = h.describe(name);
        let healthy = d["instances"].as_array().is_some_and(|a| {
            a.iter()
                .all(|i| i["state"] == "running" && i["health"] == "healthy")
        });
        if let (true, Some(l)) = (healthy, d["leader"].as_str()) {
            let pid = d["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == l)
                .and_then(|i| i["pid"].as_u64())
                .unwrap() as u32;
            return (l.to_string(), pid, d);
        }
        assert!(Instant::now() < until, "no healthy leader: {d:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn client_port(d: &Json, name: &str) -> u16 {
    d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()["ports"]["client"]
        .as_u64()
        .unwrap() as u16
}

#[test]
fn a_zookeeper_ensemble_loses_no_acknowledged_write_and_reconfigures_its_membership() {
    let started = Instant::now();
    let h = Host::start_with((24200, 24299), &["shoal_addon_zookeeper.wasm"], None);

    // Parameters are checked before anything is made.
    refused(
        &h,
        &[
            "cluster",
            "create",
            "zb",
            "--engine",
            "zookeeper",
            "--set",
            "init-limit=2",
            "--set",
            "sync-limit=5",
        ],
        "less than sync-limit",
    );
    assert_eq!(json(&h, &["cluster", "list"]).as_array().unwrap().len(), 0);

    h.ok(&[
        "cluster",
        "create",
        "zc",
        "--engine",
        "zookeeper",
        "--replicas",
        "3",
        "--set",
        "tick-time=500ms",
    ]);
    let (leader, pid, d) = leader_of(&h, "zc");
    eprintln!(
        "zookeeper: 3 members up, {leader} leads, after {:?}",
        started.elapsed()
    );
    assert_eq!(d["topology"], "quorum", "{d:#}");
    assert_eq!(
        d["quorum"].as_str().unwrap(),
        format!("quorum 3/3, leader {leader}")
    );
    let members = d["instances"].as_array().unwrap();
    assert_eq!(
        members
            .iter()
            .filter(|i| i["observed_role"] == "leader")
            .count(),
        1,
        "{d:#}"
    );
    // The parameter reached zoo.cfg; no password in any member's command line.
    let platform = h.platform_password("zc");
    for i in members {
        let pid = i["pid"].as_u64().unwrap();
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!cmdline.contains(&platform), "{cmdline:?}");
        assert!(cmdline.contains("-Xmx256m"), "{cmdline:?}");
    }
    let rw = rw_port(&d);
    assert!(four(rw, "srvr").unwrap().contains("Mode: leader"));
    assert!(four(rw, "conf").unwrap().contains("tickTime=500"));
    // Metrics of every member from `mntr`, through the addon.
    let m = json(&h, &["cluster", "metrics", "zc"]);
    assert_eq!(
        metric_of(&m, &leader, "zookeeper_leader"),
        Some(1.0),
        "{m:#}"
    );
    assert_eq!(
        metric_of(&m, &leader, "zookeeper_synced_followers"),
        Some(2.0),
        "{m:#}"
    );
    assert!(metric_of(&m, &leader, "zookeeper_znode_count").unwrap_or(0.0) >= 4.0);
    // Four-letter words outside the allow-list are refused.
    assert!(!four(rw, "dump").unwrap_or_default().contains("Sessions"));

    // Accounts: anonymous clients may not write at the root; the users' admin may.
    let pw = password(&h, "zc");
    assert_ne!(pw, platform);
    let mut anon = zk(rw, None).unwrap();
    let denied = anon.create("/x", b"", &open_to(""));
    assert!(
        matches!(denied, Err(ZkError::Code(-102)) | Err(ZkError::Code(-114))),
        "{denied:?}"
    );
    let mut admin = zk(rw, Some(("admin", &pw))).unwrap();
    admin.create("/w", b"", &open_to("admin")).unwrap();
    admin.close();
    assert!(zk(rw, Some(("admin", "wrong")))
        .and_then(|mut s| s
            .create("/y", b"", &open_to("admin"))
            .map_err(|e| e.to_string()))
        .is_err());

    // Kill -9 the leader under a writer through the read-write endpoint.
    let w = zk_writer(rw, "admin", &pw);
    wait_until(Duration::from_secs(10), "writes", || w.acked().len() > 20);
    let term = d["term"].as_u64().unwrap();
    let killed = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(30), "a new epoch with a leader", || {
        let d = h.describe("zc");
        d["leader"].is_string() && d["term"].as_u64().unwrap_or(0) > term
    });
    wait_until(Duration::from_secs(20), "writes after the kill", || {
        w.acked()
            .iter()
            .filter(|(_, t)| *t > killed + Duration::from_millis(500))
            .count()
            >= 10
    });
    let acked = w.finish();
    eprintln!(
        "zookeeper leader {leader} killed: {} writes, longest pause {:?}",
        acked.len(),
        longest_gap(&acked)
    );
    let (_, _, d) = leader_of(&h, "zc");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 3/3"),
        "{d:#}"
    );
    let events = h.ok(&["cluster", "events", "zc"]);
    assert!(!events.contains("failover"), "{events}");
    let have = stored(rw, "admin", &pw).unwrap();
    let lost: Vec<u64> = acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !have.contains(n))
        .collect();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");

    // A logical backup of every znode, restored into a new ensemble: the same znodes.
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
    h.ok(&["backup", "create", "zc"]);
    let b = json(&h, &["backup", "list", "--cluster", "zc"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(b["method"], "znodes", "{b:#}");
    let id = b["id"].as_str().unwrap().to_string();
    h.ok(&["cluster", "restore", "zr", "--from-backup", &id]);
    let (_, _, restored) = leader_of(&h, "zr");
    assert_eq!(restored["instances"].as_array().unwrap().len(), 3);
    let zr_pw = password(&h, "zr");
    assert_eq!(stored(rw_port(&restored), "admin", &zr_pw).unwrap(), have);
    // The restored znodes belong to the new cluster's account.
    let mut s = zk(rw_port(&restored), Some(("admin", &zr_pw))).unwrap();
    let acl = s.get_acl("/w").unwrap();
    s.close();
    assert_eq!(acl.len(), 1, "{acl:?}");
    assert_eq!(acl[0].id, jute::digest("admin", &zr_pw));
    h.ok(&["cluster", "delete", "zr", "--purge", "--yes"]);
    // It restores into a throwaway single member too (an ensemble of one).
    h.ok(&["backup", "verify", &id, "--restore"]);
    // ZooKeeper's own files (snapshots and transaction logs, a tar of version-2), loaded and
    // replayed by the addon into a new ensemble: the same znodes.
    h.ok(&["backup", "create", "zc", "--method", "snapshot"]);
    let b = json(&h, &["backup", "list", "--cluster", "zc"])
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["method"] == "snapshot")
        .unwrap()
        .clone();
    let id = b["id"].as_str().unwrap().to_string();
    h.ok(&["cluster", "restore", "zs", "--from-backup", &id]);
    let (_, _, restored) = leader_of(&h, "zs");
    let zs_pw = password(&h, "zs");
    assert_eq!(stored(rw_port(&restored), "admin", &zs_pw).unwrap(), have);
    h.ok(&["cluster", "delete", "zs", "--purge", "--yes"]);
    eprintln!("zookeeper: backups restored after {:?}", started.elapsed());

    // Scale 3 -> 5 -> 3, one member at a time: ZooKeeper's membership follows (reconfig).
    h.ok(&["cluster", "scale", "zc", "--replicas", "5"]);
    let (_, _, d) = leader_of(&h, "zc");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 5/5"),
        "{d:#}"
    );
    assert_eq!(engine_members(rw_port(&d)).len(), 5);
    h.ok(&["cluster", "scale", "zc", "--replicas", "3"]);
    let (_, _, d) = leader_of(&h, "zc");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 3/3"),
        "{d:#}"
    );
    assert_eq!(engine_members(rw_port(&d)).len(), 3);
    assert_eq!(stored(rw_port(&d), "admin", &pw).unwrap(), have);
    eprintln!("zookeeper: scaled 3-5-3 after {:?}", started.elapsed());

    // Replace a follower: out of the membership, fresh data, back in, synced from the leader.
    let victim = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["observed_role"] == "follower")
        .unwrap()
        .clone();
    let vname = victim["name"].as_str().unwrap().to_string();
    h.ok(&["cluster", "rebuild", "zc", &vname]);
    wait_until(Duration::from_secs(60), "the replacement settled", || {
        h.describe("zc")["last_op"]["state"] == "succeeded"
    });
    let events = h.ok(&["cluster", "events", "zc"]);
    assert!(events.contains("left the membership"), "{events}");
    let (_, _, d) = leader_of(&h, "zc");
    assert_eq!(engine_members(rw_port(&d)).len(), 3);
    let port = client_port(&d, &vname);
    let mut got = BTreeSet::new();
    wait_until(
        Duration::from_secs(20),
        "the replaced member has every znode",
        || {
            got = stored(port, "admin", &pw).unwrap_or_default();
            got == have
        },
    );
    eprintln!("zookeeper: {vname} replaced after {:?}", started.elapsed());

    // A member whose data is lost (frozen, its data wiped, killed): the supervisor restarts
    // it on empty data (init writes its server id again) and ZooKeeper syncs it from the
    // leader; it serves every znode.
    let victim = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["observed_role"] == "follower")
        .unwrap()
        .clone();
    let vname = victim["name"].as_str().unwrap().to_string();
    let vpid = victim["pid"].as_u64().unwrap() as i32;
    let data = std::path::PathBuf::from(victim["data_dir"].as_str().unwrap());
    unsafe {
        libc::kill(vpid, libc::SIGSTOP);
    }
    for e in std::fs::read_dir(&data).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }
    unsafe {
        libc::kill(vpid, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(60), "the wiped member back", || {
        let d = h.describe("zc");
        d["instances"].as_array().unwrap().iter().any(|i| {
            i["name"] == vname.as_str()
                && i["health"] == "healthy"
                && i["pid"].as_u64().is_some_and(|p| p as i32 != vpid)
        })
    });
    let (_, _, d) = leader_of(&h, "zc");
    let port = client_port(&d, &vname);
    wait_until(
        Duration::from_secs(20),
        "the wiped member has every znode",
        || stored(port, "admin", &pw).unwrap_or_default() == have,
    );
    assert_eq!(engine_members(port).len(), 3);
    eprintln!(
        "zookeeper: {vname} back from lost data after {:?}",
        started.elapsed()
    );

    // A restart-class parameter rolls onto every member, one at a time, after the
    // reconfigurations rewrote their zoo.cfg: each comes back with it and the membership.
    h.ok(&["cluster", "config", "set", "zc", "tick-time=1s"]);
    let (_, _, d) = leader_of(&h, "zc");
    for i in d["instances"].as_array().unwrap() {
        let port = i["ports"]["client"].as_u64().unwrap() as u16;
        let conf = four(port, "conf").unwrap();
        assert!(conf.contains("tickTime=1000"), "{conf}");
        assert_eq!(engine_members(port).len(), 3, "{conf}");
    }
    eprintln!("zookeeper: parameter rolled after {:?}", started.elapsed());

    // The users' password rotates: the old one no longer writes, the new one reaches the
    // znodes the old one made (their ACLs were given the new digest).
    h.ok(&["cluster", "password", "zc"]);
    let pw2 = password(&h, "zc");
    assert_ne!(pw2, pw);
    let rw = rw_port(&d);
    let mut old = zk(rw, Some(("admin", &pw))).unwrap();
    let denied = old.create("/old", b"", &open_to("admin"));
    assert!(matches!(denied, Err(ZkError::Code(-102))), "{denied:?}");
    assert_eq!(stored(rw, "admin", &pw2).unwrap(), have);
    let pw = pw2;

    // A host killed and started again re-adopts the running members.
    let pids = |d: &Json| -> Vec<u64> {
        d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["pid"].as_u64().unwrap())
            .collect()
    };
    let before = pids(&d);
    let mut h = h;
    h.kill_serve();
    h.spawn_serve();
    let (_, _, d) = leader_of(&h, "zc");
    assert_eq!(
        pids(&d),
        before,
        "the members were restarted, not re-adopted"
    );

    // Stop and start: the members come back together, elect again and keep every znode.
    h.ok(&["cluster", "stop", "zc"]);
    h.ok(&["cluster", "start", "zc"]);
    let (_, _, d) = leader_of(&h, "zc");
    assert_eq!(stored(rw_port(&d), "admin", &pw).unwrap(), have);
    eprintln!(
        "zookeeper: stopped and started after {:?}",
        started.elapsed()
    );

    // Two of three members frozen: the quorum is lost (a state and an event), and back when
    // they thaw.
    let frozen: Vec<i32> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|i| i["pid"].as_u64().unwrap() as i32)
        .collect();
    for p in &frozen {
        unsafe {
            libc::kill(*p, libc::SIGSTOP);
        }
    }
    wait_until(Duration::from_secs(30), "the quorum is lost", || {
        h.ok(&["cluster", "events", "zc"]).contains("quorum lost")
    });
    for p in &frozen {
        unsafe {
            libc::kill(*p, libc::SIGCONT);
        }
    }
    wait_until(Duration::from_secs(30), "the quorum is back", || {
        h.ok(&["cluster", "events", "zc"]).contains("quorum back")
    });
    let (_, _, d) = leader_of(&h, "zc");
    assert_eq!(stored(rw_port(&d), "admin", &pw).unwrap(), have);

    h.ok(&["cluster", "delete", "zc", "--purge", "--yes"]);
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}/clusters/", h.home.path().display())])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "ZooKeeper processes left behind");
    eprintln!("zookeeper: done in {:?}", started.elapsed());
}

#[test]
fn an_ensemble_of_one_grows_to_three_and_back() {
    let h = Host::start_with((24300, 24399), &["shoal_addon_zookeeper.wasm"], None);
    h.ok(&[
        "cluster",
        "create",
        "zo",
        "--engine",
        "zookeeper",
        "--replicas",
        "1",
    ]);
    let (leader, _, d) = leader_of(&h, "zo");
    assert_eq!(
        d["quorum"].as_str().unwrap(),
        format!("quorum 1/1, leader {leader}")
    );
    let pw = password(&h, "zo");
    let rw = rw_port(&d);
    let mut s = zk(rw, Some(("admin", &pw))).unwrap();
    s.create("/w", b"", &open_to("admin")).unwrap();
    for n in 1..=20u64 {
        s.create(&format!("/w/{n:08}"), b"1", &open_to("admin"))
            .unwrap();
    }
    s.close();
    let have: BTreeSet<u64> = (1..=20).collect();

    // One voter cannot commit a membership of two before the second member runs: that one
    // is admitted right after its start; the third joins the usual way.
    h.ok(&["cluster", "scale", "zo", "--replicas", "3"]);
    let (_, _, d) = leader_of(&h, "zo");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 3/3"),
        "{d:#}"
    );
    for i in d["instances"].as_array().unwrap() {
        let port = i["ports"]["client"].as_u64().unwrap() as u16;
        assert_eq!(
            engine_members(port).len(),
            3,
            "{}",
            four(port, "conf").unwrap()
        );
        assert!(
            i["observed_role"] == "leader" || i["observed_role"] == "follower",
            "{d:#}"
        );
        wait_until(
            Duration::from_secs(20),
            "every znode on each member",
            || stored(port, "admin", &pw).unwrap_or_default() == have,
        );
    }

    h.ok(&["cluster", "scale", "zo", "--replicas", "1"]);
    let (_, _, d) = leader_of(&h, "zo");
    assert_eq!(d["instances"].as_array().unwrap().len(), 1);
    assert_eq!(engine_members(rw_port(&d)).len(), 1);
    assert_eq!(stored(rw_port(&d), "admin", &pw).unwrap(), have);
    h.ok(&["cluster", "delete", "zo", "--purge", "--yes"]);
}
