//! The quorum topology on a real engine (etcd, from Debian's etcd-server): members created
//! together with the full member list, roles from the engine's own probes, the read-write
//! endpoint following the engine's leader, a killed leader replaced by the engine's own
//! election with no acknowledged write lost, the killed member restarted, and the operations
//! that make no sense for a quorum refused without changing anything; both backup methods
//! restored into a new quorum.

mod common;

use std::time::{Duration, Instant};

use common::etcd::*;
use common::*;
use serde_json::{json, Value as Json};

/// Every acknowledged write is among the keys the cluster holds.
fn assert_none_lost(acked: &[(u64, Instant)], have: &std::collections::BTreeSet<u64>) {
    let lost: Vec<u64> = acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !have.contains(n))
        .collect();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
}

/// Every `w/` key and its value (as the gateway sends them, base64), in key order.
fn values(port: u16, token: &str) -> Vec<(String, String)> {
    let v = etcd(
        port,
        "/v3/kv/range",
        &json!({ "key": b64("w/"), "range_end": b64("w0") }),
        Some(token),
    )
    .expect("range");
    v["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                kv["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The member the cluster's description names as leader, with its pid, once there is one
/// and every member is healthy.
fn leader_of(h: &Host, name: &str) -> (String, u32, Json) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let d = h.describe(name);
        let healthy = d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "running" && i["health"] == "healthy");
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

#[test]
fn an_etcd_quorum_elects_its_own_leader_and_a_killed_leader_loses_no_acknowledged_write() {
    let h = Host::start_with((24000, 24099), &["shoal_addon_etcd.wasm"], None);

    // Bad input first: nothing may be created.
    refused(
        &h,
        &[
            "cluster",
            "create",
            "ev",
            "--engine",
            "etcd",
            "--replicas",
            "4",
        ],
        "must be odd",
    );
    refused(
        &h,
        &[
            "cluster",
            "create",
            "ev",
            "--engine",
            "etcd",
            "--replicas",
            "9",
        ],
        "1 to 7 members",
    );
    refused(
        &h,
        &[
            "cluster",
            "create",
            "ev",
            "--engine",
            "etcd",
            "--set",
            "heartbeat-interval=500ms",
            "--set",
            "election-timeout=1s",
        ],
        "5 heartbeat intervals",
    );
    assert_eq!(json(&h, &["cluster", "list"]).as_array().unwrap().len(), 0);

    h.ok(&[
        "cluster",
        "create",
        "ec",
        "--engine",
        "etcd",
        "--replicas",
        "3",
    ]);
    let (leader, pid, d) = leader_of(&h, "ec");
    assert_eq!(d["topology"], "quorum", "{d:#}");
    assert_eq!(
        d["quorum"].as_str().unwrap(),
        format!("quorum 3/3, leader {leader}")
    );
    let members = d["instances"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let leads: Vec<&Json> = members
        .iter()
        .filter(|i| i["observed_role"] == "leader")
        .collect();
    assert_eq!(leads.len(), 1, "{d:#}");
    assert!(members.iter().all(|i| i["role"] == "member"), "{d:#}");
    let text = h.ok(&["cluster", "describe", "ec"]);
    assert!(text.contains("quorum 3/3, leader"), "{text}");

    // Authentication is on: nothing without an account, the platform's own never handed out.
    let rw = rw_port(&d);
    let anonymous = etcd(
        rw,
        "/v3/kv/put",
        &json!({ "key": b64("x"), "value": b64("y") }),
        None,
    );
    assert!(anonymous.is_err(), "{anonymous:?}");
    let pw = password(&h, "ec");
    let platform = h.platform_password("ec");
    assert_ne!(pw, platform);
    assert!(login(rw, "root", &platform).is_err());

    // The read-write endpoint leads to the leader: its status names itself as leader.
    let status = etcd(rw, "/v3/maintenance/status", &json!({}), None).unwrap();
    assert_eq!(status["header"]["member_id"], status["leader"], "{status}");

    // Operations a quorum does not take are refused, and change nothing.
    refused(&h, &["cluster", "switchover", "ec"], "quorum");
    refused(
        &h,
        &["cluster", "scale", "ec", "--replicas", "4"],
        "must be odd",
    );
    refused(&h, &["cluster", "rebuild", "ec", "ec-9"], "no member");
    assert_eq!(h.describe("ec")["instances"].as_array().unwrap().len(), 3);

    // Kill -9 the leader under a writer through the read-write endpoint.
    let w = etcd_writer(rw, &pw);
    std::thread::sleep(Duration::from_millis(700));
    let killed = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    // A new election: a higher term with a leader (which may be the killed member again,
    // if Shoal restarted it before the others' election timeout ran out and it won).
    let term = d["term"].as_u64().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        let d = h.describe("ec");
        if let (Some(l), Some(t)) = (d["leader"].as_str(), d["term"].as_u64()) {
            if t > term {
                break l.to_string();
            }
        }
        assert!(Instant::now() < until, "no new election: {d:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "etcd leader {leader} killed: {new_leader} leads after {:?}",
        killed.elapsed()
    );
    // Writes come back through the same endpoint.
    let until = Instant::now() + Duration::from_secs(20);
    while !w
        .acked()
        .iter()
        .any(|(_, t)| *t > killed + Duration::from_secs(1))
    {
        assert!(
            Instant::now() < until,
            "no write acknowledged after the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let acked = w.finish();
    eprintln!(
        "etcd leader killed: longest write pause {:?}",
        longest_gap(&acked)
    );
    assert!(acked.len() > 10, "{} writes", acked.len());

    // The killed member is restarted and rejoins; the quorum is whole again.
    let (_, _, d) = leader_of(&h, "ec");
    assert_eq!(
        d["quorum"].as_str().unwrap().split(',').next(),
        Some("quorum 3/3")
    );
    let events = h.ok(&["cluster", "events", "ec"]);
    assert!(events.contains("restarting"), "{events}");
    assert!(
        !events.contains("failover"),
        "Shoal must not fail a quorum over: {events}"
    );

    // No acknowledged write is lost.
    let token = login(rw, "root", &pw).unwrap();
    let have = stored(rw, &token).expect("range");
    assert_none_lost(&acked, &have);

    // A backup of every key, restored into a new quorum: the same keys.
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
    h.ok(&["backup", "create", "ec"]);
    let b = json(&h, &["backup", "list", "--cluster", "ec"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(b["method"], "keys", "{b:#}");
    let id = b["id"].as_str().unwrap().to_string();
    // It restores into a throwaway member too.
    h.ok(&["backup", "verify", &id, "--restore"]);
    h.ok(&["cluster", "restore", "er", "--from-backup", &id]);
    let (_, _, restored) = leader_of(&h, "er");
    assert_eq!(restored["instances"].as_array().unwrap().len(), 3);
    let er_pw = password(&h, "er");
    let er_token = login(rw_port(&restored), "root", &er_pw).unwrap();
    assert_eq!(stored(rw_port(&restored), &er_token).expect("range"), have);
    h.ok(&["cluster", "delete", "er", "--purge", "--yes"]);

    // etcd's own snapshot (physical), restored into every member of a new quorum before it
    // starts: the same keys, and the source's platform account (the snapshot carries its
    // hash) given the new cluster's own password once the quorum leads.
    let t = Instant::now();
    h.ok(&["backup", "create", "ec", "--method", "snapshot"]);
    let b = json(&h, &["backup", "list", "--cluster", "ec"])
        .as_array()
        .unwrap()
        .iter()
        .rfind(|b| b["method"] == "snapshot")
        .unwrap()
        .clone();
    assert_eq!(
        (b["state"].as_str(), b["kind"].as_str()),
        (Some("completed"), Some("full")),
        "{b:#}"
    );
    let snap = b["id"].as_str().unwrap().to_string();
    let kept = h
        .home
        .path()
        .join("secrets")
        .join("backups")
        .join(format!("{snap}.json"));
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!((mode(&kept), mode(kept.parent().unwrap())), (0o600, 0o700));
    let verified = h.ok(&["backup", "verify", &snap, "--restore"]);
    assert!(verified.contains("restores"), "{verified}");
    h.ok(&["cluster", "restore", "es", "--from-backup", &snap]);
    let (_, _, restored) = leader_of(&h, "es");
    assert_eq!(restored["instances"].as_array().unwrap().len(), 3);
    let es_rw = rw_port(&restored);
    let es_token = login(es_rw, "root", &password(&h, "es")).unwrap();
    assert_eq!(stored(es_rw, &es_token).expect("range"), have);
    let token = login(rw, "root", &pw).unwrap();
    assert_eq!(values(es_rw, &es_token), values(rw, &token));
    etcd(
        es_rw,
        "/v3/kv/put",
        &json!({ "key": b64("restored"), "value": b64("1") }),
        Some(&es_token),
    )
    .unwrap();
    let (es_platform, ec_platform) = (h.platform_password("es"), h.platform_password("ec"));
    assert_ne!(es_platform, ec_platform);
    login(es_rw, "shoal", &es_platform).unwrap();
    assert!(login(es_rw, "shoal", &ec_platform).is_err());
    h.ok(&["cluster", "delete", "es", "--purge", "--yes"]);
    // Without the kept account (a backup from before it was kept, or from another host):
    // refused up front, nothing created.
    let moved = kept.with_extension("moved");
    std::fs::rename(&kept, &moved).unwrap();
    refused(
        &h,
        &["cluster", "restore", "en", "--from-backup", &snap],
        "(keys)",
    );
    assert!(json(&h, &["cluster", "list"])
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["name"] != "en"));
    // Deleting the backup forgets the account kept for it.
    std::fs::rename(&moved, &kept).unwrap();
    h.ok(&["backup", "delete", &snap, "--yes"]);
    assert!(!kept.exists(), "{} outlived its backup", kept.display());
    eprintln!(
        "snapshot backup, restore test, restore into a new quorum and refusal in {:?}",
        t.elapsed()
    );

    // Scale 3 -> 5 -> 3, one member at a time: etcd's own membership follows.
    let engine_members = |h: &Host| -> usize {
        let d = h.describe("ec");
        let v = etcd(rw_port(&d), "/v3/cluster/member/list", &json!({}), None).unwrap();
        v["members"].as_array().unwrap().len()
    };
    h.ok(&["cluster", "scale", "ec", "--replicas", "5"]);
    let (_, _, d) = leader_of(&h, "ec");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 5/5"),
        "{d:#}"
    );
    assert_eq!(engine_members(&h), 5);
    h.ok(&["cluster", "scale", "ec", "--replicas", "3"]);
    let (_, _, d) = leader_of(&h, "ec");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 3/3"),
        "{d:#}"
    );
    assert_eq!(engine_members(&h), 3);
    assert_eq!(d["replicas"], 3);
    let token = login(rw, "root", &pw).unwrap();
    assert_eq!(stored(rw, &token).expect("range"), have);

    // A member whose data is lost: killed, its data wiped. etcd refuses to run on it (its
    // Raft log is gone), so after three failed restarts Shoal replaces it: out of the
    // membership, fresh data, back in, the data copied from the others.
    let victim = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["observed_role"] == "follower")
        .unwrap()
        .clone();
    let vname = victim["name"].as_str().unwrap().to_string();
    let data = std::path::PathBuf::from(victim["data_dir"].as_str().unwrap());
    unsafe {
        libc::kill(victim["pid"].as_u64().unwrap() as i32, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(100));
    for e in std::fs::read_dir(&data).unwrap().flatten() {
        std::fs::remove_dir_all(e.path()).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let events = h.ok(&["cluster", "events", "ec"]);
        if events.contains("replacing it") {
            break;
        }
        assert!(Instant::now() < until, "{vname} never replaced: {events}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(Duration::from_secs(60), "the replacement settled", || {
        h.describe("ec")["last_op"]["state"] == "succeeded"
    });
    let (_, _, d) = leader_of(&h, "ec");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 3/3"),
        "{d:#}"
    );
    assert_eq!(engine_members(&h), 3);
    // The replaced member serves every key (a serializable read of its own copy).
    let port = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == vname.as_str())
        .unwrap()["ports"]["client"]
        .as_u64()
        .unwrap() as u16;
    let token = login(port, "root", &pw).unwrap();
    let own = etcd(
        port,
        "/v3/kv/range",
        &json!({ "key": b64("w/"), "range_end": b64("w0"), "count_only": true,
                 "serializable": true }),
        Some(&token),
    )
    .unwrap();
    assert_eq!(own["count"].as_str().unwrap(), have.len().to_string());

    // A parameter that needs a restart rolls the members one at a time; the quorum holds.
    let out = h.shoal(&["cluster", "config", "set", "ec", "election-timeout=1500ms"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, d) = leader_of(&h, "ec");
    for i in d["instances"].as_array().unwrap() {
        let pid = i["pid"].as_u64().unwrap();
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(cmdline.contains("--election-timeout=1500"), "{cmdline:?}");
    }

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
    let (_, _, d) = leader_of(&h, "ec");
    assert_eq!(
        pids(&d),
        before,
        "the members were restarted, not re-adopted"
    );

    // The users' password rotates (etcd replicates accounts; every member is told anyway).
    h.ok(&["cluster", "password", "ec"]);
    let pw2 = password(&h, "ec");
    assert_ne!(pw2, pw);
    assert!(login(rw, "root", &pw).is_err());
    let pw = pw2;
    login(rw, "root", &pw).unwrap();

    // Stop and start: the members come back together and elect again.
    h.ok(&["cluster", "stop", "ec"]);
    h.ok(&["cluster", "start", "ec"]);
    let (_, _, d) = leader_of(&h, "ec");
    let (_, after_start) = stored_eventually(rw_port(&d), "root", &pw);
    assert_eq!(after_start.len(), have.len());

    // Two of three members frozen: the quorum is lost (a state and an event), and back when
    // they thaw. Nothing is promoted meanwhile.
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
        h.ok(&["cluster", "events", "ec"]).contains("quorum lost")
    });
    let d = h.describe("ec");
    assert!(d["quorum"].as_str().unwrap().contains("lost"), "{d:#}");
    // (The cluster's state follows at the end of the supervisor's tick.)
    wait_until(Duration::from_secs(10), "ec quorum-lost", || {
        h.describe("ec")["state"] == "quorum-lost"
    });
    for p in &frozen {
        unsafe {
            libc::kill(*p, libc::SIGCONT);
        }
    }
    wait_until(Duration::from_secs(30), "the quorum is back", || {
        h.ok(&["cluster", "events", "ec"]).contains("quorum back")
    });
    leader_of(&h, "ec");

    h.ok(&["cluster", "delete", "ec", "--purge", "--yes"]);
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}/clusters/ec", h.home.path().display())])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "etcd processes left behind");
}

#[test]
fn etcd_3_5_from_the_second_version_runs_a_quorum_of_five_and_survives_its_leader() {
    let h = Host::start_with((24100, 24199), &["shoal_addon_etcd.wasm"], None);
    h.ok(&[
        "cluster",
        "create",
        "e5",
        "--engine",
        "etcd",
        "--version",
        "3.5",
        "--replicas",
        "5",
    ]);
    let (leader, pid, d) = leader_of(&h, "e5");
    assert_eq!(
        d["quorum"].as_str().unwrap(),
        format!("quorum 5/5, leader {leader}")
    );
    let status = etcd(rw_port(&d), "/v3/maintenance/status", &json!({}), None).unwrap();
    assert!(
        status["version"].as_str().unwrap().starts_with("3.5."),
        "{status}"
    );
    let pw = password(&h, "e5");
    let w = etcd_writer(rw_port(&d), &pw);
    std::thread::sleep(Duration::from_millis(500));
    let term = d["term"].as_u64().unwrap();
    let killed = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(30), "a new election", || {
        h.describe("e5")["term"].as_u64().unwrap_or(0) > term
    });
    wait_until(Duration::from_secs(20), "writes back", || {
        w.acked().iter().any(|(_, t)| *t > killed)
    });
    let acked = w.finish();
    let (_, _, d) = leader_of(&h, "e5");
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 5/5"),
        "{d:#}"
    );
    let (_, have) = stored_eventually(rw_port(&d), "root", &pw);
    assert_none_lost(&acked, &have);
    h.ok(&["cluster", "delete", "e5", "--purge", "--yes"]);
}

#[test]
fn a_lost_quorum_is_recovered_only_on_request_from_its_most_advanced_member() {
    let h = Host::start_with((24200, 24260), &["shoal_addon_etcd.wasm"], None);
    h.ok(&[
        "cluster",
        "create",
        "er",
        "--engine",
        "etcd",
        "--replicas",
        "3",
    ]);
    let (_, _, d) = leader_of(&h, "er");
    let pw = password(&h, "er");
    let w = etcd_writer(rw_port(&d), &pw);
    wait_until(Duration::from_secs(20), "writes acknowledged", || {
        w.acked().len() >= 50
    });
    let acked = w.finish();
    // A quorum that stands is not "recovered"; nor is one without the explicit flag.
    refused(&h, &["cluster", "recover", "er"], "has its quorum");
    // Two members frozen (alive, so never restarted): the quorum is lost.
    let d = h.describe("er");
    let frozen: Vec<(String, i32)> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["observed_role"] != "leader")
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["pid"].as_u64().unwrap() as i32,
            )
        })
        .collect();
    assert_eq!(frozen.len(), 2, "{d:#}");
    for (_, p) in &frozen {
        unsafe {
            libc::kill(*p, libc::SIGSTOP);
        }
    }
    wait_until(Duration::from_secs(30), "the quorum is lost", || {
        h.ok(&["cluster", "events", "er"]).contains("quorum lost")
    });
    refused(&h, &["cluster", "recover", "er"], "--force-new-cluster");
    // With the flag: the survivor restarts alone, the others come back with fresh copies.
    let t = Instant::now();
    h.ok(&["cluster", "recover", "er", "--force-new-cluster"]);
    let (_, _, d) = leader_of(&h, "er");
    eprintln!("quorum recovered in {:?}: {}", t.elapsed(), d["quorum"]);
    assert!(
        d["quorum"].as_str().unwrap().starts_with("quorum 3/3"),
        "{d:#}"
    );
    // One member kept its data (the most advanced; the frozen ones had as much); the two
    // others were dropped, their data set aside, and fresh members took their places.
    let events = h.ok(&["cluster", "events", "er"]);
    assert!(
        events.contains("recovering the quorum from er-"),
        "{events}"
    );
    assert_eq!(
        events.matches("dropped from the quorum").count(),
        2,
        "{events}"
    );
    let set_aside = std::fs::read_dir(h.home.path().join("clusters").join("er"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains(".before-recovery-")
        })
        .count();
    assert_eq!(set_aside, 2);
    // Everything acknowledged before is there, and the cluster takes writes again.
    let (token, have) = stored_eventually(rw_port(&d), "root", &pw);
    assert_none_lost(&acked, &have);
    etcd(
        rw_port(&d),
        "/v3/kv/put",
        &json!({ "key": b64("after"), "value": b64("1") }),
        Some(&token),
    )
    .unwrap();
    h.ok(&["cluster", "delete", "er", "--purge", "--yes"]);
    for (_, p) in &frozen {
        assert!(!alive(*p as u32), "a frozen member was left behind");
    }
}
