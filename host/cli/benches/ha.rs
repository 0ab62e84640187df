//! High-availability benchmark (not a test: it prints, it never asserts timings).
//!
//! `cargo bench -p shoal-cli --bench ha -- [TRIALS]` (default 20) against a real `shoal serve`
//! and real PostgreSQL 15, a writer committing continuously through the read-write endpoint:
//!
//! * TRIALS × kill -9 of the primary (sync mode, 3 instances): detection (kill → failover
//!   started), promotion (kill → promoted), write unavailability (last commit before the kill →
//!   first after), acknowledged commits lost; p50 / p99 / max;
//! * TRIALS / 4 frozen primaries (every process SIGSTOPped), TRIALS / 4 partitioned ones
//!   (iptables DROP on the primary's port; the bench runs in a network namespace of its own):
//!   time to a new leader, write unavailability, commits lost;
//! * TRIALS / 4 frozen primaries again with the default probe interval (1 s);
//! * TRIALS / 4 losses of the acting host of two on one etcd (daemon and primary killed at
//!   once): time until the other host elected and promoted a new leader;
//! * TRIALS / 2 switchovers: write pause and command time;
//! * pgbench TPS through the read-write endpoint vs directly to the primary (ratio);
//! * host CPU per probe with kept addon instances (one open connection) vs a fresh addon
//!   instance per probe (a new connection each time), same clusters, same interval;
//! * TRIALS / 2 × kill -9 of the etcd leader (a quorum of 3) under a writer: write
//!   unavailability through Shoal's read-write endpoint, side by side with the same etcd
//!   started by this bench with the same flags and no Shoal (the writer given every
//!   member's address, as etcd clients are); acknowledged writes lost in each.
//!   `-- quorum [TRIALS]` runs only these;
//! * `-- fleet [N]` (only this, not in the default run: it starts N Redis servers): the
//!   supervisor's cost with N (default 400) single-instance Redis clusters probed every
//!   second — `shoal serve`'s share of a core, CPU per probe, its RSS and the endpoint
//!   process's.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn row(name: &str, v: &[f64], unit: &str) {
    let mut v = v.to_vec();
    println!(
        "{name:<34} p50 {:>8.1} {unit}  p99 {:>8.1} {unit}  max {:>8.1} {unit}  (n={})",
        pct(&mut v, 50.0),
        pct(&mut v, 99.0),
        pct(&mut v, 100.0),
        v.len()
    );
}

/// Event time of the first event after `after_ms` whose message contains `needle`.
fn event_ms(h: &Host, name: &str, after_ms: i64, needle: &str) -> Option<i64> {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["cluster", "events", name, "--limit", "200", "-o", "json"]))
            .ok()?;
    v.as_array()?
        .iter()
        .filter(|e| e["unix_ms"].as_i64().unwrap_or(0) >= after_ms)
        .find(|e| e["message"].as_str().unwrap_or("").contains(needle))
        .and_then(|e| e["unix_ms"].as_i64())
}

fn failovers(h: &Host, trials: usize) {
    let name = "bench";
    create_cluster(h, name, 3, "  mode: sync\n  sync-quorum: 1");
    let (mut detect, mut promote, mut unavail, mut lost_n) = (vec![], vec![], vec![], vec![]);
    for t in 0..trials {
        let d = h.wait_healthy(name);
        let term = d["term"].as_u64().unwrap_or(0);
        let (old, pid, old_port) = primary_of(&d);
        let w = Writer::start_at(rw_port(&d), &password(h, name), (t as u64 + 1) * 1_000_000);
        std::thread::sleep(Duration::from_millis(400));
        let kill_ms = now_ms();
        let killed = Instant::now();
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let d = h.describe(name);
            let moved = d["term"].as_u64().unwrap_or(0) > term;
            if moved && w.acked().last().is_some_and(|(_, at)| *at > killed) {
                break;
            }
            if Instant::now() > until {
                eprintln!("trial {t}: no failover within 60 s; stopping");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let (acked, servers) = w.finish_with_servers();
        // Last commit the old primary acknowledged → first one the new primary did.
        let on_old = |k: usize| servers.get(k).is_some_and(|p| u64::from(*p) == old_port);
        let before = (0..acked.len())
            .rev()
            .find(|&k| on_old(k))
            .map(|k| acked[k].1);
        let after = (0..acked.len())
            .find(|&k| !on_old(k) && acked[k].1 > killed)
            .map(|k| acked[k].1);
        match (before, after) {
            (Some(b), Some(a)) => unavail.push((a - b).as_secs_f64() * 1000.0),
            _ => eprintln!("trial {t}: no commit on one side of the failover"),
        }
        if let Some(e) = event_ms(h, name, kill_ms - 5, "failover requested") {
            detect.push((e - kill_ms) as f64);
        }
        if let Some(e) = event_ms(h, name, kill_ms - 5, "promoted; writes go to it now") {
            promote.push((e - kill_ms) as f64);
        }
        let l = lost(h, name, &acked);
        lost_n.push(l.len() as f64);
        eprintln!(
            "trial {}/{trials}: {old} killed; {} commits, {} lost",
            t + 1,
            acked.len(),
            l.len()
        );
    }
    h.wait_healthy(name);
    println!("\nfailover after kill -9 of the primary (sync mode, 3 x PostgreSQL 15):");
    row("detection (kill -> failover start)", &detect, "ms");
    row("promotion (kill -> promoted)", &promote, "ms");
    row("write unavailability", &unavail, "ms");
    row("acknowledged commits lost", &lost_n, "");

    let (mut pause, mut took) = (vec![], vec![]);
    for k in 0..(trials / 2).max(1) {
        let d = h.wait_healthy(name);
        let (p, _, _) = primary_of(&d);
        let to = ports(&d)
            .into_iter()
            .find(|(n, _, _)| *n != p)
            .map(|(n, _, _)| n)
            .unwrap_or_default();
        let w = Writer::start_at(
            rw_port(&d),
            &password(h, name),
            (trials as u64 + k as u64 + 1) * 1_000_000,
        );
        std::thread::sleep(Duration::from_millis(300));
        if w.acked().is_empty() {
            eprintln!("switchover trial: the writer has not committed yet");
        }
        let t = Instant::now();
        let o = h.shoal(&["cluster", "switchover", name, "--to", &to]);
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
        let acked = w.finish();
        if !o.status.success() {
            eprintln!("switchover failed: {}", String::from_utf8_lossy(&o.stderr));
            continue;
        }
        pause.push(longest_gap(&acked).as_secs_f64() * 1000.0);
        let l = lost(h, name, &acked);
        if !l.is_empty() {
            eprintln!("switchover lost {} commits", l.len());
        }
    }
    // Frozen primaries: every process SIGSTOPped (what the cgroup freezer does).
    let frozen = fault_trials(
        "frozen",
        (trials / 4).max(1),
        (trials as u64 * 2 + 1) * 1_000_000,
        &|| h.describe(name),
        &|acked| lost(h, name, acked).len(),
        &password(h, name),
        &mut freeze,
    );
    println!("\nfrozen primary (all its processes SIGSTOPped; probes every 300 ms, 2 misses):");
    frozen.print("freeze");
    // Partitioned primaries: every packet to or from its port dropped (this bench runs in a
    // network namespace of its own).
    let cut = fault_trials(
        "partition",
        (trials / 4).max(1),
        (trials as u64 * 3 + 1) * 1_000_000,
        &|| h.describe(name),
        &|acked| lost(h, name, acked).len(),
        &password(h, name),
        &mut |d| {
            let (_, _, port) = primary_of(d);
            partition("-A", port);
            Box::new(move || partition("-D", port))
        },
    );
    println!("\npartitioned primary (iptables DROP both ways; probes every 300 ms, 2 misses):");
    cut.print("partition");

    println!("\nswitchover under a writer:");
    row("write pause", &pause, "ms");
    row("command time", &took, "ms");
}

/// Freeze every process of the primary `d` shows (as the cgroup freezer would); returns how
/// to thaw them.
fn freeze(d: &serde_json::Value) -> Box<dyn FnOnce()> {
    let (_, pid, _) = primary_of(d);
    let procs = server_processes(pid);
    signal_all(&procs, libc::SIGSTOP);
    Box::new(move || signal_all(&procs, libc::SIGCONT))
}

/// Frozen primaries with the default probe interval (1 s).
fn frozen_at_default_interval(trials: usize) {
    let h = Host::start_configured((23400, 23499), "probe_interval_ms = 1000\n");
    let name = "dflt";
    create_cluster(&h, name, 3, "  mode: sync");
    let frozen = fault_trials(
        "frozen, 1 s probes",
        (trials / 4).max(1),
        1_000_000,
        &|| h.describe(name),
        &|acked| lost(&h, name, acked).len(),
        &password(&h, name),
        &mut freeze,
    );
    println!("\nfrozen primary with the default probe interval (1 s, 2 misses):");
    frozen.print("freeze");
}

fn signal_all(procs: &[u32], sig: i32) {
    for p in procs {
        unsafe {
            libc::kill(*p as i32, sig);
        }
    }
}

/// What repeated faults of one kind cost.
#[derive(Default)]
struct Faults {
    /// Fault → a new leader elected and promoted.
    leader: Vec<f64>,
    /// Last commit acknowledged by the old primary → first by the new one.
    unavail: Vec<f64>,
    lost: Vec<f64>,
}

impl Faults {
    fn print(&self, what: &str) {
        row(
            &format!("{what} -> new leader elected+promoted"),
            &self.leader,
            "ms",
        );
        row("write unavailability", &self.unavail, "ms");
        row("acknowledged commits lost", &self.lost, "");
    }
}

/// `n` trials of one fault under a writer (values from `first`): `inject` breaks the primary
/// `describe` shows and returns how to undo the fault once a new leader takes writes.
#[allow(clippy::type_complexity)]
fn fault_trials<'a>(
    label: &str,
    n: usize,
    first: u64,
    describe: &dyn Fn() -> serde_json::Value,
    lost_of: &dyn Fn(&[(u64, Instant)]) -> usize,
    password: &str,
    inject: &mut dyn FnMut(&serde_json::Value) -> Box<dyn FnOnce() + 'a>,
) -> Faults {
    let mut out = Faults::default();
    for k in 0..n {
        let until = Instant::now() + Duration::from_secs(60);
        let d = loop {
            let d = describe();
            let all = d["instances"].as_array().cloned().unwrap_or_default();
            if all
                .iter()
                .all(|i| i["state"] == "running" && i["health"] == "healthy")
            {
                break d;
            }
            if Instant::now() > until {
                eprintln!("{label} trial {k}: cluster not healthy within 60 s; stopping");
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let term = d["term"].as_u64().unwrap_or(0);
        let (_, _, old_port) = primary_of(&d);
        let w = Writer::start_at(rw_port(&d), password, first + k as u64 * 1_000_000);
        std::thread::sleep(Duration::from_millis(400));
        let at = Instant::now();
        let undo = inject(&d);
        let until = Instant::now() + Duration::from_secs(60);
        while describe()["term"].as_u64().unwrap_or(0) <= term {
            if Instant::now() > until {
                eprintln!("{label} trial {k}: no failover within 60 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        out.leader.push(at.elapsed().as_secs_f64() * 1000.0);
        let until = Instant::now() + Duration::from_secs(30);
        while w.acked().last().is_none_or(|(_, t)| *t <= at) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        undo();
        let (acked, servers) = w.finish_with_servers();
        let on_old = |i: usize| servers.get(i).is_some_and(|p| u64::from(*p) == old_port);
        let before = (0..acked.len())
            .rev()
            .find(|&i| on_old(i))
            .map(|i| acked[i].1);
        let after = (0..acked.len())
            .find(|&i| !on_old(i) && acked[i].1 > at)
            .map(|i| acked[i].1);
        if let (Some(b), Some(a)) = (before, after) {
            out.unavail.push((a - b).as_secs_f64() * 1000.0);
        }
        let l = lost_of(&acked);
        out.lost.push(l as f64);
        eprintln!(
            "{label} trial {}/{n}: {} commits, {l} lost",
            k + 1,
            acked.len()
        );
    }
    out
}

/// Two hosts on one etcd sharing the home: each trial loses the acting host together with
/// the primary it ran (daemon and server killed at once); the other host must take over. The
/// lost host comes back as the standby.
fn host_losses(trials: usize) {
    let etcd = shoal_tests::Etcd::start();
    let cfg = format!(
        "[ha]\ndcs = \"etcd\"\netcd_endpoints = [\"{}\"]\nlease_ttl_ms = 3000\n",
        etcd.url
    );
    let h = std::cell::RefCell::new(Host::start_as((23300, 23399), &cfg, "host-a"));
    let name = "hosts";
    create_cluster(&h.borrow(), name, 3, "  mode: sync");
    let b = std::cell::RefCell::new(Some(h.borrow().spawn_peer("host-b")));
    let pw = password(&h.borrow(), name);
    // Read through whichever daemon answers: the survivor takes the home's socket over.
    let describe = || loop {
        let o = h
            .borrow()
            .shoal(&["cluster", "describe", name, "-o", "json"]);
        if o.status.success() {
            if let Ok(v) = serde_json::from_slice(&o.stdout) {
                return v;
            }
        }
        if let Some(p) = b.borrow().as_ref() {
            let o = p.shoal(&["cluster", "describe", name, "-o", "json"]);
            if let Ok(v) = serde_json::from_slice(&o.stdout) {
                return v;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lost_of = |acked: &[(u64, Instant)]| loop {
        if h.borrow().shoal(&["cluster", "engines"]).status.success() {
            return lost(&h.borrow(), name, acked).len();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let losses = fault_trials(
        "host loss",
        (trials / 4).max(1),
        1_000_000,
        &describe,
        &lost_of,
        &pw,
        &mut |d| {
            let (_, pid, _) = primary_of(d);
            let acting = d["manager"].as_str().unwrap_or("").to_string();
            if acting == "host-a" {
                h.borrow_mut().kill_serve();
            } else {
                b.borrow_mut().take();
            }
            signal_all(&[pid], libc::SIGKILL);
            let (h, b) = (&h, &b);
            Box::new(move || {
                // The lost host returns, as the standby.
                if acting == "host-a" {
                    h.borrow_mut().spawn_serve();
                } else {
                    let peer = h.borrow().spawn_peer("host-b");
                    *b.borrow_mut() = Some(peer);
                }
            })
        },
    );
    println!(
        "\nloss of the acting host with its primary (two hosts on one etcd, lease 3 s, sync mode):"
    );
    losses.print("host loss");
}

fn pgbench_tps(uri: &str) -> Option<f64> {
    let o = Command::new("pgbench")
        .args(["-n", "-T", "8", "-c", "4", "-j", "2", uri])
        .output()
        .ok()?;
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
}

fn pgbench(h: &Host) {
    let name = "bench";
    let d = h.wait_healthy(name);
    let uri = h.uri(name);
    let (_, _, port) = primary_of(&d);
    let direct = instance_uri(&uri, port);
    let o = Command::new("pgbench")
        .args(["-i", "-q", "-s", "4", &direct])
        .output()
        .expect("pgbench (apt-get install postgresql-contrib or postgresql)");
    if !o.status.success() {
        eprintln!("pgbench -i failed: {}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    let (Some(proxied), Some(straight)) = (pgbench_tps(&uri), pgbench_tps(&direct)) else {
        eprintln!("pgbench did not report tps");
        return;
    };
    println!("\npgbench (4 clients, 8 s, TPC-B-like, sync mode):");
    println!(
        "read-write endpoint {proxied:>9.0} tps   direct to the primary {straight:>9.0} tps   ratio {:.2}x",
        proxied / straight
    );
}

/// CPU seconds used so far by process `pid` (user + system).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (indices 11 and 12 after the command name).
    (ticks(11) + ticks(12)) / 100.0
}

fn probe_cost(ports: (u16, u16), extra: &str, label: &str) -> f64 {
    let h = Host::start_configured(ports, extra);
    for c in ["p1", "p2", "p3"] {
        h.ok(&[
            "cluster",
            "create",
            c,
            "--engine",
            "postgresql",
            "--replicas",
            "3",
        ]);
    }
    for c in ["p1", "p2", "p3"] {
        h.wait_healthy(c);
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = h.serve_pid();
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(15));
    let (c1, secs) = (cpu_secs(pid), t0.elapsed().as_secs_f64());
    // 9 instances probed every 300 ms (the test hosts' interval).
    let probes = 9.0 * secs / 0.3;
    let per_probe_us = (c1 - c0) * 1e6 / probes;
    println!(
        "{label:<44} {:>7.0} µs host CPU per probe ({:.0} µs per instance per second)",
        per_probe_us,
        per_probe_us / 0.3
    );
    per_probe_us
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The supervisor's cost at fleet size: `n` single-instance Redis clusters probed every
/// second (the default interval): `shoal serve`'s share of one core, CPU per probe, RSS.
fn fleet_probe_cost(n: usize) {
    println!(
        "
supervisor cost, {n} single-instance Redis clusters probed every 1 s:"
    );
    let h = Host::start_with_config(
        (30000, 31999),
        &["shoal_addon_redis.wasm"],
        "probe_interval_ms = 1000\n",
    );
    let names: Vec<String> = (0..n).map(|k| format!("r{k}")).collect();
    let t0 = Instant::now();
    for name in &names {
        h.ok(&["cluster", "create", name, "--engine", "redis", "--no-wait"]);
    }
    let until = Instant::now() + Duration::from_secs(1200);
    loop {
        let list = json(&h, &["cluster", "list"]);
        let running = list
            .as_array()
            .map(|a| a.iter().filter(|c| c["state"] == "running").count())
            .unwrap_or(0);
        if running == n {
            break;
        }
        assert!(
            Instant::now() < until,
            "only {running} of {n} clusters running"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "created {n} clusters in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let pid = h.serve_pid();
    let (c0, t1) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let (c1, secs) = (cpu_secs(pid), t1.elapsed().as_secs_f64());
    let probes = n as f64 * secs;
    println!(
        "shoal serve: {:.1} % of one core, {:.3} ms CPU per probe, {:.0} MiB RSS",
        (c1 - c0) / secs * 100.0,
        (c1 - c0) * 1000.0 / probes,
        rss_mib(pid)
    );
    let endpoints: f64 = endpoint_pids(h.home.path()).into_iter().map(rss_mib).sum();
    println!("shoal endpoints (the stable endpoints' process): {endpoints:.0} MiB RSS");
}

/// Kill -9 the member with `pid` under `w` and wait for a write acknowledged after it;
/// the write unavailability (last ack before the kill → first after) in ms, and the writer's
/// acknowledged values.
fn kill_under_writer(pid: u32, w: Writer) -> Option<(f64, Vec<u64>)> {
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while !w.acked().iter().any(|(_, at)| *at > killed) {
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let acked = w.finish();
    let before = acked.iter().rev().find(|(_, at)| *at <= killed)?.1;
    let after = acked.iter().find(|(_, at)| *at > killed)?.1;
    Some((
        (after - before).as_secs_f64() * 1000.0,
        acked.iter().map(|(n, _)| *n).collect(),
    ))
}

/// How many of `acked` (trial `t`'s values) the cluster behind `port` lacks (asked for up
/// to 20 s while it settles).
fn etcd_lost(port: u16, user: &str, password: &str, acked: &[u64]) -> usize {
    let until = Instant::now() + Duration::from_secs(20);
    let token = loop {
        match etcd::login(port, user, password) {
            Ok(t) => break t,
            Err(e) if Instant::now() > until => panic!("cannot log in to count losses: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let have = loop {
        // A request the endpoint cut (a route moving) is asked again.
        match etcd::stored(port, &token) {
            Ok(have) => break have,
            Err(e) if Instant::now() > until => panic!("cannot read the keys back: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    acked.iter().filter(|n| !have.contains(n)).count()
}

/// The member ports and pids of a healthy quorum with a leader: (leader pid, rw port).
fn etcd_settled(h: &Host, name: &str) -> (u32, u16) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let d = h.describe(name);
        let whole = d["quorum"]
            .as_str()
            .is_some_and(|q| q.starts_with("quorum 3/3, leader"));
        if let (true, Some(l)) = (whole, d["leader"].as_str()) {
            let pid = d["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == l)
                .and_then(|i| i["pid"].as_u64())
                .unwrap_or(0) as u32;
            return (pid, rw_port(&d));
        }
        assert!(Instant::now() < until, "etcd quorum never settled: {d:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three etcd processes started by hand, with the flags the addon gives its members.
struct RawEtcd {
    dir: tempfile::TempDir,
    clients: Vec<u16>,
    peers: Vec<u16>,
    procs: Vec<std::process::Child>,
}

impl RawEtcd {
    fn start(from: u16) -> RawEtcd {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = (from..from + 200)
            .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .take(6);
        let mut next = || ports.next().expect("free ports");
        let (clients, peers): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (next(), next())).unzip();
        let mut raw = RawEtcd {
            dir,
            clients,
            peers,
            procs: Vec::new(),
        };
        for n in 0..3 {
            let child = raw.spawn(n);
            raw.procs.push(child);
        }
        raw
    }

    fn spawn(&self, n: usize) -> std::process::Child {
        let initial: Vec<String> = (0..3)
            .map(|k| format!("raw-{k}=http://127.0.0.1:{}", self.peers[k]))
            .collect();
        let client = format!("http://127.0.0.1:{}", self.clients[n]);
        let peer = format!("http://127.0.0.1:{}", self.peers[n]);
        let log = std::fs::File::create(self.dir.path().join(format!("raw-{n}.log"))).unwrap();
        Command::new("etcd")
            .args([
                format!("--name=raw-{n}"),
                format!(
                    "--data-dir={}",
                    self.dir.path().join(format!("d{n}")).display()
                ),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=raw".into(),
                "--heartbeat-interval=100".into(),
                "--election-timeout=1000".into(),
                "--quota-backend-bytes=2147483648".into(),
                "--pre-vote=true".into(),
                "--logger=zap".into(),
                "--log-outputs=stderr".into(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)")
    }

    /// The index of the member that leads once all three answer and agree on one.
    fn leader(&self) -> usize {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let seen: Vec<Option<(String, String)>> = self
                .clients
                .iter()
                .map(|p| {
                    let v = etcd::etcd(*p, "/v3/maintenance/status", &serde_json::json!({}), None)
                        .ok()?;
                    Some((
                        v["header"]["member_id"].as_str()?.to_string(),
                        v["leader"].as_str()?.to_string(),
                    ))
                })
                .collect();
            if seen.iter().all(|s| s.is_some()) {
                let seen: Vec<(String, String)> = seen.into_iter().flatten().collect();
                let leader = &seen[0].1;
                if leader != "0" && seen.iter().all(|(_, l)| l == leader) {
                    if let Some(k) = seen.iter().position(|(me, _)| me == leader) {
                        return k;
                    }
                }
            }
            assert!(Instant::now() < until, "raw etcd never agreed on a leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RawEtcd {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Kill -9 of the etcd leader under a writer, through Shoal and without it.
fn quorum_failovers(trials: usize) {
    println!(
        "
etcd quorum of 3, kill -9 of the leader under a writer ({trials} trials each):"
    );
    let (mut shoal, mut raw) = (Vec::new(), Vec::new());
    let (mut shoal_lost, mut raw_lost) = (0usize, 0usize);
    {
        let h = Host::start_with((23300, 23399), &["shoal_addon_etcd.wasm"], None);
        h.ok(&[
            "cluster",
            "create",
            "qb",
            "--engine",
            "etcd",
            "--replicas",
            "3",
        ]);
        let pw = password(&h, "qb");
        for t in 0..trials {
            let (pid, rw) = etcd_settled(&h, "qb");
            let w = etcd::etcd_writer_over(vec![rw], "root", &pw, (t as u64 + 1) * 1_000_000);
            match kill_under_writer(pid, w) {
                Some((gap, acked)) => {
                    shoal.push(gap);
                    shoal_lost += etcd_lost(rw, "root", &pw, &acked);
                }
                None => eprintln!("shoal trial {t}: writes never came back"),
            }
        }
    }
    {
        let mut r = RawEtcd::start(23400);
        let first = r.leader();
        let port = r.clients[first];
        for (path, body) in [
            (
                "/v3/auth/user/add",
                serde_json::json!({"name": "root", "password": "raw-pass"}),
            ),
            (
                "/v3/auth/user/grant",
                serde_json::json!({"user": "root", "role": "root"}),
            ),
            ("/v3/auth/enable", serde_json::json!({})),
        ] {
            etcd::etcd(port, path, &body, None).expect("raw etcd auth setup");
        }
        for t in 0..trials {
            let k = r.leader();
            let w = etcd::etcd_writer_over(
                r.clients.clone(),
                "root",
                "raw-pass",
                (t as u64 + 1) * 1_000_000,
            );
            let pid = r.procs[k].id();
            let result = kill_under_writer(pid, w);
            let _ = r.procs[k].wait();
            // A supervisor would start it again: the bench does, once writes are back.
            r.procs[k] = r.spawn(k);
            match result {
                Some((gap, acked)) => {
                    raw.push(gap);
                    let other = r.clients[(k + 1) % 3];
                    raw_lost += etcd_lost(other, "root", "raw-pass", &acked);
                }
                None => eprintln!("raw trial {t}: writes never came back"),
            }
        }
    }
    row("write unavailability, through Shoal", &shoal, "ms");
    row("write unavailability, etcd alone", &raw, "ms");
    let (mut a, mut b) = (shoal.clone(), raw.clone());
    println!(
        "Shoal adds (p50 - p50): {:.1} ms; acknowledged writes lost: {shoal_lost} through \
         Shoal, {raw_lost} alone",
        pct(&mut a, 50.0) - pct(&mut b, 50.0)
    );
}

fn main() {
    let only_quorum = std::env::args().any(|a| a == "quorum");
    if std::env::args().any(|a| a == "fleet") {
        let n = std::env::args()
            .skip(1)
            .find_map(|a| a.parse().ok())
            .unwrap_or(400);
        fleet_probe_cost(n);
        return;
    }
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    if only_quorum {
        quorum_failovers(trials);
        return;
    }
    // A network namespace of its own, for the partition trials' firewall rules.
    private_network();
    println!("HA benchmark: {trials} failover trials (pass a number to change)");
    {
        let h = Host::start((23000, 23099));
        failovers(&h, trials);
        pgbench(&h);
    }
    frozen_at_default_interval(trials);
    host_losses(trials);
    println!("\nprobe cost, 9 PostgreSQL instances probed every 300 ms:");
    let kept = probe_cost(
        (23100, 23199),
        "",
        "kept addon instance (one open connection)",
    );
    let fresh = probe_cost(
        (23200, 23299),
        "[runtime]\nlive_recycle_calls = 1\n",
        "fresh addon instance (new connection each)",
    );
    println!("ratio fresh / kept: {:.1}x", fresh / kept);
    quorum_failovers(trials / 2);
}
