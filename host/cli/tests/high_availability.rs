//! High availability end to end: a real `shoal serve` and real PostgreSQL 15 processes, a
//! writer committing continuously through the stable read-write endpoint, and real faults
//! (kill -9, SIGSTOP of the whole server). Checks: every acknowledged commit survives in
//! synchronous mode, exactly one writable primary afterwards, the old primary returns as a
//! replica, switchovers in both directions lose nothing, refusals change nothing. Timings are
//! printed, never asserted.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Wait until the store names a leader other than `old` and the writer has committed on it.
fn wait_new_leader(
    h: &Host,
    name: &str,
    old: &str,
    w: &Writer,
    since: Instant,
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let d = h.describe(name);
        let moved = d["leader"].as_str().is_some_and(|l| l != old);
        let wrote = w.acked().last().is_some_and(|(_, t)| *t > since);
        if moved && wrote {
            return d;
        }
        assert!(
            Instant::now() < until,
            "no new leader in 60 s: {d:#}\n{}",
            h.ok(&["cluster", "events", name])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exactly one instance accepts writes (every instance that answers is asked).
fn assert_one_writable_primary(h: &Host, name: &str) {
    let d = h.describe(name);
    let uri = h.uri(name);
    let mut writable = Vec::new();
    for (inst, port, _) in ports(&d) {
        if let Ok(r) = psql(
            &instance_uri(&uri, port),
            "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'",
        ) {
            if r == "t" {
                writable.push(inst);
            }
        }
    }
    assert_eq!(writable.len(), 1, "writable primaries: {writable:?}\n{d:#}");
}

/// The old primary `old` is back as a healthy replica of the new one, with the writer's
/// last acknowledged commit `last`.
fn rejoined_as_replica(h: &Host, name: &str, old: &str, old_port: u64, last: u64) {
    let d = h.wait_healthy(name);
    let back = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == old)
        .unwrap();
    assert_eq!(back["role"], "replica", "{d:#}");
    eventually(
        &instance_uri(&h.uri(name), old_port),
        &format!("SELECT count(*) FROM w WHERE n = {last}"),
        "1",
    );
}

/// kill -9 of the primary's postmaster under a writer; returns the commits lost.
fn kill_primary_under_load(h: &Host, name: &str) -> (Vec<u64>, Duration) {
    let d = h.describe(name);
    let (old, pid, old_port) = primary_of(&d);
    let w = Writer::start(rw_port(&d), &password(h, name));
    std::thread::sleep(Duration::from_millis(800));
    assert!(!w.acked().is_empty(), "the writer commits before the fault");
    let killed = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let d = wait_new_leader(h, name, &old, &w, killed);
    assert_eq!(d["term"], 2, "one election: {d:#}");
    std::thread::sleep(Duration::from_millis(500));
    let acked = w.finish();
    let gap = longest_gap(&acked);
    let lost = lost(h, name, &acked);
    eprintln!(
        "{name}: {} commits acknowledged, {} lost, writes unavailable {gap:?} (kill -9 to first commit on {})",
        acked.len(),
        lost.len(),
        d["leader"]
    );
    assert_one_writable_primary(h, name);
    rejoined_as_replica(h, name, &old, old_port, acked.last().unwrap().0);
    (lost, gap)
}

#[test]
fn sync_mode_failover_after_kill_9_keeps_every_acknowledged_commit() {
    let h = Host::start((22000, 22099));
    create_cluster(&h, "sy", 3, "  mode: sync\n  sync-quorum: 1");
    let standbys = psql(&h.uri("sy"), "SHOW synchronous_standby_names").unwrap();
    assert!(standbys.starts_with("ANY 1 ("), "{standbys}");
    let (lost, _) = kill_primary_under_load(&h, "sy");
    assert!(
        lost.is_empty(),
        "acknowledged commits lost in sync mode: {lost:?}"
    );
    let events = h.ok(&["cluster", "events", "sy"]);
    for step in [
        "fenced",
        "elected leader in term 2",
        "promoted",
        "now follows",
        "failover from",
    ] {
        assert!(events.contains(step), "no {step:?} event:\n{events}");
    }
}

#[test]
fn a_primary_started_by_an_earlier_host_is_rewound_not_copied_after_a_kill() {
    // Issue 14: a killed postmaster that an earlier `shoal serve` started is re-parented to
    // PID 1 and lingers as a zombie; the rewind ran before it was gone ("lock file
    // postmaster.pid already exists") and fell back to a full copy every time.
    let mut h = Host::start((25400, 25419));
    create_cluster(&h, "ad", 2, "  max-lag-on-failover: 64Mi");
    h.kill_serve();
    h.spawn_serve();
    let d = h.wait_healthy("ad");
    let events = h.ok(&["cluster", "events", "ad"]);
    assert!(events.contains("re-adopted running process"), "{events}");
    let (old, _, _) = primary_of(&d);
    let (lost, _) = kill_primary_under_load(&h, "ad");
    eprintln!("ad: {} lost (async)", lost.len());
    let events = h.ok(&["cluster", "events", "ad", "--limit", "500"]);
    let about_old: Vec<&str> = events.lines().filter(|l| l.contains(&old)).collect();
    assert!(
        about_old.iter().any(|l| l.contains("rewound onto")),
        "the old primary was not rewound:\n{events}"
    );
    assert!(
        !about_old
            .iter()
            .any(|l| l.contains("copying afresh") || l.contains("re-copied")),
        "the old primary was copied afresh:\n{}",
        about_old.join("\n")
    );
}

#[test]
fn the_stable_endpoints_keep_serving_while_the_host_is_down() {
    // Issue 14: killing only `shoal serve` cost up to 5 s of write unavailability, because
    // the endpoints lived inside it. Their own process outlives it.
    let mut h = Host::start((25420, 25439));
    let d = create_cluster(&h, "ep", 2, "  max-lag-on-failover: 64Mi");
    let rw = rw_port(&d);
    let pw = password(&h, "ep");
    let before = endpoint_pids(h.home.path());
    assert_eq!(before.len(), 1, "one endpoint process: {before:?}");
    let w = Writer::start(rw, &pw);
    wait_until(Duration::from_secs(10), "writes", || w.acked().len() >= 50);
    h.kill_serve();
    let down = Instant::now();
    // While no host runs: the writer's session goes on, and new sessions get through.
    wait_until(Duration::from_secs(10), "writes with the host down", || {
        w.acked().iter().filter(|(_, t)| *t > down).count() >= 200
    });
    let uri = format!("postgresql://postgres:{pw}@127.0.0.1:{rw}/postgres");
    for _ in 0..5 {
        psql(&uri, "SELECT 1").expect("a new session through the endpoint, host down");
    }
    h.spawn_serve();
    h.wait_healthy("ep");
    let acked = w.finish();
    assert!(
        lost(&h, "ep", &acked).is_empty(),
        "nothing acknowledged is lost"
    );
    assert_eq!(
        endpoint_pids(h.home.path()),
        before,
        "the same endpoint process serves on"
    );
    eprintln!(
        "ep: longest write pause across the host restart {:?}",
        longest_gap(&acked)
    );
    // The host back in charge still re-points the endpoint (a switchover).
    let old = primary_of(&h.describe("ep")).0;
    h.ok(&["cluster", "switchover", "ep"]);
    let d = h.wait_healthy("ep");
    assert_ne!(primary_of(&d).0, old);
    eventually(&uri, "SELECT pg_is_in_recovery()", "f");
}

#[test]
fn async_mode_failover_reports_its_loss_bound() {
    let h = Host::start((22100, 22199));
    create_cluster(&h, "as", 2, "  max-lag-on-failover: 1Mi");
    let (lost, _) = kill_primary_under_load(&h, "as");
    let events = h.ok(&["cluster", "events", "as"]);
    assert!(
        events.contains("bytes behind the old primary's last probe"),
        "{events}"
    );
    eprintln!("async mode lost {} acknowledged commit(s)", lost.len());
}

#[test]
fn switchover_both_ways_under_load_loses_nothing_and_bad_requests_change_nothing() {
    let h = Host::start((22200, 22299));
    let d = create_cluster(&h, "sw", 3, "  max-lag-on-failover: 256Ki");
    h.ok(&["cluster", "create", "solo", "--engine", "postgresql"]);
    let (p0, _, _) = primary_of(&d);
    let names: Vec<String> = ports(&d).into_iter().map(|(n, _, _)| n).collect();
    let other = names.iter().find(|n| **n != p0).unwrap().clone();

    // Refusals: clear, exit 2, nothing changes.
    for (args, want) in [
        (vec!["switchover", "solo"], "single instance"),
        (
            vec!["switchover", "sw", "--to", "sw-9"],
            "no instance \"sw-9\"",
        ),
        (
            vec!["switchover", "sw", "--to", p0.as_str()],
            "already the primary",
        ),
        (vec!["switchover", "nope"], "no cluster named"),
        (vec!["rebuild", "sw", p0.as_str()], "is the primary"),
    ] {
        let mut a = vec!["cluster"];
        a.extend(args.iter());
        let o = h.shoal(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
        assert!(err.contains(want), "{a:?}: {err}");
    }
    assert_eq!(h.describe("sw")["term"], 1, "refusals change nothing");

    // Both directions under a writer.
    let w = Writer::start(rw_port(&d), &password(&h, "sw"));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    h.ok(&["cluster", "switchover", "sw", "--to", &other]);
    eprintln!("switchover to {other}: {:?}", t.elapsed());
    let d = h.describe("sw");
    assert_eq!(d["leader"], other.as_str());
    assert_eq!(d["term"], 2);
    std::thread::sleep(Duration::from_millis(500));
    h.wait_healthy("sw");
    let t = Instant::now();
    h.ok(&["cluster", "switchover", "sw", "--to", &p0]);
    eprintln!("switchover back to {p0}: {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let acked = w.finish();
    let lost = lost(&h, "sw", &acked);
    eprintln!(
        "switchovers: {} commits, {} lost, longest write pause {:?}",
        acked.len(),
        lost.len(),
        longest_gap(&acked)
    );
    assert!(lost.is_empty(), "a switchover lost commits: {lost:?}");
    assert_eq!(h.describe("sw")["term"], 3);
    assert_one_writable_primary(&h, "sw");
    let d = h.wait_healthy("sw");

    // A lagging candidate is refused: freeze its WAL receiver, write past the limit.
    let uri = h.uri("sw");
    let lagger = ports(&d)
        .into_iter()
        .find(|(n, _, r)| *n != p0 && r == "replica")
        .unwrap();
    let receiver = psql(
        &instance_uri(&uri, lagger.1),
        "SELECT pid FROM pg_stat_wal_receiver",
    )
    .unwrap();
    let rpid: i32 = receiver.parse().unwrap();
    unsafe {
        libc::kill(rpid, libc::SIGSTOP);
    }
    psql(
        &uri,
        "INSERT INTO w SELECT g FROM generate_series(1000000, 1030000) g",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let o = h.shoal(&["cluster", "switchover", "sw", "--to", &lagger.0]);
    unsafe {
        libc::kill(rpid, libc::SIGCONT);
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("behind"), "{err}");
    assert_eq!(h.describe("sw")["leader"], p0.as_str());

    // A forced rebuild of a replica brings it back healthy and caught up.
    h.ok(&["cluster", "rebuild", "sw", &lagger.0]);
    h.wait_healthy("sw");
    eventually(
        &instance_uri(&uri, lagger.1),
        "SELECT count(*) FROM w WHERE n = 1030000",
        "1",
    );
}

#[test]
fn a_hung_primary_is_fenced_and_failed_over_and_never_writes_again() {
    let h = Host::start((22300, 22399));
    let d = create_cluster(&h, "hung", 2, "  max-lag-on-failover: 16Mi");
    let (old, pid, old_port) = primary_of(&d);
    let w = Writer::start(rw_port(&d), &password(&h, "hung"));
    std::thread::sleep(Duration::from_millis(500));
    // Freeze the whole server, postmaster and every worker (each in a session of its own),
    // as the cgroup freezer would: it holds its port and connections but answers nothing.
    let frozen = server_processes(pid);
    assert!(frozen.len() > 3, "{frozen:?}");
    let stopped = Instant::now();
    for p in &frozen {
        unsafe {
            libc::kill(*p as i32, libc::SIGSTOP);
        }
    }
    let d = wait_new_leader(&h, "hung", &old, &w, stopped);
    eprintln!("hung primary: new leader after {:?}", stopped.elapsed());
    let acked = w.finish();
    for p in &frozen {
        unsafe {
            libc::kill(*p as i32, libc::SIGCONT);
        }
    }
    for p in &frozen {
        assert!(!alive(*p), "process {p} of the fenced primary survived");
    }
    assert_eq!(d["term"], 2);
    let events = h.ok(&["cluster", "events", "hung"]);
    assert!(events.contains("consecutive probes failed"), "{events}");
    // A probe that times out says so (WASI reported it as "os error 29", an I/O error).
    assert!(!events.contains("os error 29"), "{events}");
    // Whatever answers on the old port now is a read-only replica.
    h.wait_healthy("hung");
    let r = psql(
        &instance_uri(&h.uri("hung"), old_port),
        "INSERT INTO w VALUES (-1)",
    );
    assert!(r.is_err(), "the old primary accepted a write");
    assert_one_writable_primary(&h, "hung");
    eprintln!(
        "hung primary: longest write pause {:?}",
        longest_gap(&acked)
    );
}

#[test]
fn with_etcd_as_the_coordination_store_a_failover_elects_through_it() {
    let etcd = shoal_tests::Etcd::start();
    let h = Host::start_configured(
        (22400, 22499),
        &format!(
            "[ha]\ndcs = \"etcd\"\netcd_endpoints = [\"{}\"]\n",
            etcd.url
        ),
    );
    let d = create_cluster(&h, "et", 2, "  max-lag-on-failover: 16Mi");
    assert_eq!(d["term"], 1);
    kill_primary_under_load(&h, "et");
    // The term lives in etcd: read it back with etcdctl.
    let o = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.url,
            "get",
            "/shoal/clusters/et/term",
            "--print-value-only",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["term"], 2, "{v}");
}

/// `shoal serve` killed in the middle of a failover (paused there by a failpoint), then
/// restarted: the failover is finished with the election already made, never a second one.
fn host_killed_mid_failover(step: &str, wait_for: &str, ports: (u16, u16)) {
    let mut h = Host::start(ports);
    h.kill_serve();
    h.failpoint = Some(format!("{step}:30000"));
    h.spawn_serve();
    let d = create_cluster(&h, "mid", 3, "  mode: sync");
    let (old, pid, old_port) = primary_of(&d);
    let uri = h.uri("mid");
    psql(&uri, "INSERT INTO w VALUES (1)").unwrap();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while !h.ok(&["cluster", "events", "mid"]).contains(wait_for) {
        assert!(Instant::now() < until, "never reached {wait_for:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The host dies inside the failover; its successor runs without the failpoint.
    h.kill_serve();
    h.failpoint = None;
    h.spawn_serve();
    let until = Instant::now() + Duration::from_secs(60);
    let d = loop {
        let d = h.describe("mid");
        let done = d["last_op"]["kind"] == "failover" && d["last_op"]["state"] == "succeeded";
        if done {
            break d;
        }
        assert!(Instant::now() < until, "failover not finished: {d:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(d["term"], 2, "exactly one election: {d:#}");
    assert_ne!(d["leader"], old.as_str());
    let events = h.ok(&["cluster", "events", "mid"]);
    assert!(
        events.contains("interrupted by a host restart; finishing it"),
        "{events}"
    );
    assert_one_writable_primary(&h, "mid");
    h.wait_healthy("mid");
    eventually(
        &instance_uri(&h.uri("mid"), old_port),
        "SELECT count(*) FROM w WHERE n = 1",
        "1",
    );
}

#[test]
fn a_host_killed_after_fencing_finishes_the_failover_on_restart() {
    host_killed_mid_failover("failover-fenced", "fenced (", (22500, 22599));
}

#[test]
fn a_host_killed_after_the_election_keeps_it_and_finishes() {
    host_killed_mid_failover(
        "failover-elected",
        "elected leader in term 2",
        (22600, 22699),
    );
}

#[test]
fn a_partitioned_primary_is_fenced_and_no_second_primary_appears() {
    // The test's own network namespace: the firewall rules below touch nothing else.
    private_network();
    let h = Host::start((22700, 22799));
    let d = create_cluster(&h, "part", 3, "  mode: sync");
    let (old, pid, old_port) = primary_of(&d);
    let w = Writer::start(rw_port(&d), &password(&h, "part"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.acked().is_empty(), "the writer commits before the fault");
    // Cut the primary off the network: its process runs on, answering nobody.
    let cut = Instant::now();
    partition("-A", old_port);
    let d = wait_new_leader(&h, "part", &old, &w, cut);
    eprintln!("partitioned primary: new leader after {:?}", cut.elapsed());
    assert!(!alive(pid), "the partitioned primary was not fenced");
    // The partition heals; the old primary must come back as a replica, never a writer.
    partition("-D", old_port);
    std::thread::sleep(Duration::from_millis(300));
    let acked = w.finish();
    assert_eq!(d["term"], 2, "one election: {d:#}");
    let events = h.ok(&["cluster", "events", "part"]);
    assert!(events.contains("consecutive probes failed"), "{events}");
    let lost = lost(&h, "part", &acked);
    eprintln!(
        "partitioned primary: {} commits acknowledged, {} lost, longest write pause {:?}",
        acked.len(),
        lost.len(),
        longest_gap(&acked)
    );
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    rejoined_as_replica(&h, "part", &old, old_port, acked.last().unwrap().0);
    let r = psql(
        &instance_uri(&h.uri("part"), old_port),
        "INSERT INTO w VALUES (-1)",
    );
    assert!(r.is_err(), "the old primary accepted a write");
    assert_one_writable_primary(&h, "part");
}

#[test]
fn two_hosts_on_one_etcd_one_acts_and_the_other_takes_over_when_it_is_lost() {
    let etcd = shoal_tests::Etcd::start();
    let cfg = format!(
        "[ha]\ndcs = \"etcd\"\netcd_endpoints = [\"{}\"]\nlease_ttl_ms = 3000\n",
        etcd.url
    );
    let mut h = Host::start_as((22800, 22899), &cfg, "host-a");
    let d = create_cluster(&h, "two", 3, "  mode: sync");
    assert_eq!(d["manager"], "host-a", "{d:#}");
    // A second host on the same home stands by: it reads the same state, changes nothing.
    let b = h.spawn_peer("host-b");
    let seen = b.describe("two");
    assert_eq!(seen["manager"], "host-a");
    assert_eq!(seen["leader"], d["leader"]);
    let o = b.shoal(&["cluster", "switchover", "two"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("managed by host host-a"), "{err}");
    // Only host-a acts: the second daemon with host-a's name is refused.
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["serve", "--host-id", "host-a"])
        .env("SHOAL_HOME", h.home.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs its own --host-id"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Host A is lost with the primary it ran: its daemon and the server die together.
    let (old, pid, old_port) = primary_of(&d);
    let w = Writer::start(rw_port(&d), &password(&h, "two"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.acked().is_empty(), "the writer commits before the fault");
    let lost_at = Instant::now();
    h.kill_serve();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let until = Instant::now() + Duration::from_secs(60);
    let d = loop {
        let d = b.describe("two");
        let moved = d["leader"].as_str().is_some_and(|l| l != old);
        let wrote = w.acked().last().is_some_and(|(_, t)| *t > lost_at);
        if moved && wrote {
            break d;
        }
        assert!(Instant::now() < until, "host-b never took over: {d:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "host lost: host-b manages, new leader {} writable after {:?}",
        d["leader"],
        lost_at.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    let acked = w.finish();
    assert_eq!(d["manager"], "host-b", "{d:#}");
    assert_eq!(d["term"], 2, "one election: {d:#}");
    // host-b took the home's socket over: plain commands reach it.
    let until = Instant::now() + Duration::from_secs(10);
    while !h.shoal(&["cluster", "engines"]).status.success() {
        assert!(
            Instant::now() < until,
            "host-b never took over the home's socket"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = h.ok(&["cluster", "events", "two"]);
    assert!(
        events.contains("host host-b manages this cluster now"),
        "{events}"
    );
    let lost = lost(&h, "two", &acked);
    eprintln!(
        "host lost: {} commits acknowledged, {} lost, longest write pause {:?}",
        acked.len(),
        lost.len(),
        longest_gap(&acked)
    );
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    assert_one_writable_primary(&h, "two");
    rejoined_as_replica(&h, "two", &old, old_port, acked.last().unwrap().0);
    drop(b);
}
