//! Supervision: at start, re-adopt instances whose processes still run (same pid and start
//! time: never restarted) and settle operations a previous host left unfinished; then, every
//! probe interval, probe each running instance through its kept addon instance and restart
//! any whose process has died, with exponential backoff (1 s doubling to 60 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::OpState;
use shoal_runtime::wit;
use tokio::time::Instant;

use shoal_dcs::Coordinator;

use crate::controller::Controller;
use crate::error::ControlError;
use crate::events::Level;
use crate::ha;
use crate::operation::{Op, Settle};
use crate::primary_replica::{self, Verdict};
use crate::secrets;
use crate::store::{now_ms, ClusterRow, ClusterState, Desired, Health, InstanceRow, Phase, Role};
use crate::topology::{self, Family};

/// Store what a probe said on the row.
pub(crate) fn record_probe(i: &mut InstanceRow, r: &wit::RoleReport) {
    i.health = match r.health {
        wit::Health::Healthy => Health::Healthy,
        wit::Health::Degraded => Health::Degraded,
        wit::Health::Unhealthy => Health::Unhealthy,
        wit::Health::Starting => Health::Starting,
    };
    i.observed_role = Some(r.role.clone());
    i.writable = Some(r.writable);
    i.lag_bytes = r.lag_bytes;
    i.position = r.position;
    i.detail = r.detail.clone();
    i.term = r.term;
    i.probed_ms = Some(now_ms());
}

/// At start: take the manager lease of every cluster it can, and re-adopt those clusters.
/// Returns how many instances were re-adopted. A cluster another host manages is left to it
/// (this host stands by and adopts it if that host's lease lapses).
pub async fn adopt(c: &Arc<Controller>) -> usize {
    let mut adopted = 0;
    for cl in c.db(|s| s.clusters()).unwrap_or_default() {
        let (managing, _) = c.take_management(&cl.name).await;
        if managing {
            adopted += adopt_cluster(c, &cl);
        } else {
            let holder = c.dcs.manager(&cl.name).await.ok().flatten();
            c.event(
                &cl.name,
                None,
                Level::Info,
                format!(
                    "host {} stands by: {}",
                    c.host_id,
                    holder.map_or("no host manages this cluster".into(), |h| format!(
                        "host {h} manages this cluster"
                    ))
                ),
            );
        }
    }
    adopted
}

/// Take over `cl` (at start, or from a host whose manager lease lapsed): settle the
/// operations left unfinished, re-adopt instances whose processes still run (same pid and
/// start time), and mark the others for a restart — or, for a dead primary with a live
/// replica, for a failover. Returns how many instances were re-adopted.
pub(crate) fn adopt_cluster(c: &Arc<Controller>, cl: &ClusterRow) -> usize {
    // Steps of an operation (a roll's switchover) are settled with that operation.
    let _ = c.db(|s| s.fail_interrupted_steps());
    let interrupted: Vec<shoal_api::OpView> = c
        .db(|s| s.unfinished_ops())
        .unwrap_or_default()
        .into_iter()
        .filter(|op| op.cluster == cl.name)
        .collect();
    // A backup the previous host was taking never completed.
    for mut b in c.db(|s| s.backups(Some(&cl.name))).unwrap_or_default() {
        if b.view.state == "running" {
            b.view.state = "failed".into();
            b.view.reason = Some("the Shoal host stopped during this backup".into());
            b.view.finished_unix_ms = Some(now_ms());
            let _ = c.db(|s| s.put_backup(&b));
        }
    }
    let mut adopted = 0;
    let all = c.db(|s| s.instances(&cl.name)).unwrap_or_default();
    let replica_up = |me: &InstanceRow| {
        all.iter()
            .any(|r| r.name != me.name && r.desired == Desired::Running && c.nodes.alive(r))
    };
    for i in all.iter().filter(|i| i.desired == Desired::Running) {
        let mut i = i.clone();
        match i.process {
            Some(p) if c.nodes.is_running(p) => {
                adopted += 1;
                i.state = Phase::Running;
                c.save(&i);
                c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Info,
                    format!("re-adopted running process (pid {})", p.pid),
                );
            }
            _ if matches!(i.state, Phase::Fenced | Phase::Failed) => {}
            // The supervisor's next tick fails it over, as for any primary found dead.
            _ if i.role == Role::Primary && fails_over(cl, &all) && replica_up(&i) => {
                i.state = Phase::Running;
                c.save(&i);
                c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Warning,
                    "the primary was not running when this host took over; failing over",
                );
            }
            _ => {
                i.state = Phase::Crashed;
                c.save(&i);
                c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Warning,
                    "not running when this host took over; starting it",
                );
            }
        }
    }
    // Then the operations it left unfinished, in the order they were asked for (each runs
    // after the instances above are settled).
    for op in &interrupted {
        settle_interrupted(c, cl, op);
    }
    adopted
}

/// Settle operation `op` of `cl`, which a previous host left pending or running, and say so.
fn settle_interrupted(c: &Arc<Controller>, cl: &ClusterRow, op: &shoal_api::OpView) {
    let params = c.db(|s| s.op_params(op.id)).unwrap_or_default();
    let began = op.state == OpState::Running;
    let typed = Op::from_stored(&op.kind, &params);
    let (next, did) = match typed.as_ref().map(Op::settle) {
        Ok(Settle::Finish) => match typed {
            // A switchover cut midway continues from where it stood.
            Ok(Op::Switchover { from, to, .. }) => (
                Op::Switchover {
                    from,
                    to,
                    resume: true,
                },
                "finishing it",
            ),
            Ok(other) => (other, "finishing it"),
            Err(_) => return,
        },
        Ok(Settle::Undo) => (
            Op::Delete { purge: true },
            "undoing it: the cluster is deleted with what it made; create it again",
        ),
        Ok(Settle::Fail) | Err(_) => {
            let reason = match (&typed, began) {
                (Err(e), _) => {
                    format!("the Shoal host stopped during an operation it cannot read ({e})")
                }
                (Ok(_), true) => {
                    "the Shoal host stopped during this operation; run it again".into()
                }
                (Ok(_), false) => {
                    "the Shoal host stopped before this operation began; run it again".into()
                }
            };
            let _ = c.db(|s| s.set_op(op.id, OpState::Failed, Some(&reason)));
            c.event(
                &op.cluster,
                None,
                Level::Warning,
                format!("{} (op {}): {reason}", op.kind, op.id),
            );
            return;
        }
    };
    let _ = c.db(|s| {
        s.set_op(
            op.id,
            OpState::Failed,
            Some(&format!("interrupted by a host restart; {did}")),
        )
    });
    // A create never finished has nothing a user relies on yet; its state says why it goes.
    if matches!(next, Op::Delete { .. }) && op.kind == "create" {
        let _ = c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Creating));
    }
    match c.submit_resumed(&op.cluster, next) {
        Ok(new) => c.event(
            &op.cluster,
            None,
            Level::Warning,
            format!(
                "{} (op {}) was interrupted by a host restart; {did} (op {})",
                op.kind, op.id, new.id
            ),
        ),
        Err(e) => c.event(
            &op.cluster,
            None,
            Level::Error,
            format!(
                "{} (op {}) was interrupted by a host restart and cannot be settled: {e}",
                op.kind, op.id
            ),
        ),
    }
}

/// A probe unanswered this long (or a whole interval, if longer) counts as a miss at every
/// tick until it ends.
const OVERDUE: Duration = Duration::from_secs(1);

/// Longest tick while a primary is suspect (its last probe failed).
const SUSPECT_TICK: Duration = Duration::from_millis(500);

/// Backoff state of one instance.
struct Backoff {
    next: Instant,
    delay: Duration,
}

/// What the supervisor remembers between ticks.
#[derive(Default)]
struct Memory {
    backoff: HashMap<(String, String), Backoff>,
    /// Consecutive failed probes of each instance.
    misses: HashMap<(String, String), u32>,
    /// When each cluster's leader and manager leases were last renewed.
    renewed: HashMap<String, Instant>,
    /// Probes in flight (they may outlive a tick), and when each started.
    probes: tokio::task::JoinSet<(Probe, ProbeResult)>,
    inflight: HashMap<(String, String), Instant>,
    /// Which instance each probe task is for (to clean up after a task that panicked).
    tasks: HashMap<tokio::task::Id, (String, String)>,
    /// Primaries whose last probe failed: the supervisor ticks faster until they answer or
    /// are failed over.
    suspects: std::collections::HashSet<(String, String)>,
    /// Quorum clusters whose healthy members are no majority (said once, and again when the
    /// quorum is back).
    quorum_lost: std::collections::HashSet<String>,
    /// Sharded clusters with a shard that has no primary (said once, and again when every
    /// shard has one).
    shard_down: std::collections::HashSet<String>,
    /// Dead shard primaries left down while the engine elects a replica, since when.
    handover: HashMap<(String, String), Instant>,
}

impl Memory {
    /// How long to sleep before the next tick: the (jittered) interval, shorter while a
    /// primary is suspect, and never past the moment an in-flight probe turns overdue.
    fn next_tick(&self, interval: Duration, jittered: Duration) -> Duration {
        let mut wait = jittered;
        if !self.suspects.is_empty() {
            wait = wait.min((interval / 2).min(SUSPECT_TICK));
        }
        let now = Instant::now();
        let overdue = interval.max(OVERDUE);
        if let Some(due) = self
            .inflight
            .values()
            .map(|started| *started + overdue)
            .filter(|due| *due > now)
            .min()
        {
            wait = wait.min(due - now + Duration::from_millis(5));
        }
        wait
    }
}

type ProbeResult = Option<Result<wit::RoleReport, String>>;

/// A probe to run this tick.
struct Probe {
    cl: ClusterRow,
    i: InstanceRow,
    all: Vec<InstanceRow>,
    creds: secrets::Credentials,
}

/// The supervision loop; runs until the process ends. Ticks every probe interval (±10 %
/// jitter) and at once when an engine process exits.
pub async fn run(c: Arc<Controller>) {
    let interval = Duration::from_millis(c.cfg.probe_interval_ms);
    let mut mem = Memory::default();
    // The endpoint process may serve clusters deleted while no host ran.
    let names: Vec<String> = c
        .db(|s| s.clusters())
        .unwrap_or_default()
        .into_iter()
        .map(|cl| cl.name)
        .collect();
    if let Err(e) = c.endpoints.retain(names).await {
        tracing::error!("stable endpoints: {e}");
    }
    for cl in c.db(|s| s.clusters()).unwrap_or_default() {
        c.refresh_routes(&cl.name).await;
    }
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = 0.9 + f64::from(nanos % 1000) / 5000.0;
        let wait = mem.next_tick(interval, interval.mul_f64(jitter));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = c.wake.notified() => {}
        }
        tick(&c, &mut mem).await;
    }
}

/// Whether `cl` is kept available by failover ([`primary_replica::fails_over`]).
fn fails_over(cl: &ClusterRow, all: &[InstanceRow]) -> bool {
    primary_replica::fails_over(cl.spec.ha.auto_failover, all)
}

/// Fence `i` and queue a failover from it.
fn start_failover(c: &Arc<Controller>, cl: &ClusterRow, i: &InstanceRow, reason: String) {
    if let Err(e) = c.submit(
        &cl.name,
        crate::operation::Op::Failover {
            old: i.name.clone(),
            reason,
        },
    ) {
        c.event(
            &cl.name,
            Some(&i.name),
            Level::Error,
            format!("cannot start a failover: {e}"),
        );
    }
}

async fn tick(c: &Arc<Controller>, mem: &mut Memory) {
    let ttl = Duration::from_millis(c.cfg.ha.lease_ttl_ms);
    let clusters = c.db(|s| s.clusters()).unwrap_or_default();
    mem.suspects
        .retain(|(name, _)| clusters.iter().any(|cl| &cl.name == name));
    // Leases first, apart from operations (a long one must not let the lease lapse).
    for cl in &clusters {
        // Only the host holding the manager lease acts on a cluster; a host whose lease
        // lapsed stops acting, and one that takes a lapsed lease over adopts the cluster.
        let renew = mem
            .renewed
            .get(&cl.name)
            .is_none_or(|t| t.elapsed() >= ttl / 3);
        if renew {
            let (managing, before) = c.take_management(&cl.name).await;
            mem.renewed.insert(cl.name.clone(), Instant::now());
            if before != Some(managing) {
                if managing {
                    if before.is_some() {
                        c.event(
                            &cl.name,
                            None,
                            Level::Info,
                            format!("host {} manages this cluster now", c.host_id),
                        );
                        adopt_cluster(c, cl);
                    }
                } else {
                    c.event(
                        &cl.name,
                        None,
                        Level::Warning,
                        format!(
                            "host {} no longer manages this cluster (another host does, or \
                             the coordination store is unreachable)",
                            c.host_id
                        ),
                    );
                    if let Err(e) = c.endpoints.remove(&cl.name).await {
                        tracing::warn!(cluster = %cl.name, "stable endpoints: {e}");
                    }
                    for i in c.db(|s| s.instances(&cl.name)).unwrap_or_default() {
                        c.drop_live(&cl.name, &i.name);
                        mem.misses.remove(&(cl.name.clone(), i.name.clone()));
                    }
                }
            }
        }
    }
    let mut probes = Vec::new();
    for cl in clusters {
        // Skip clusters with an operation in progress: the operation owns them.
        let lock = c.lock(&cl.name);
        let Ok(guard) = lock.try_lock_owned() else {
            continue;
        };
        if c.db(|s| s.busy(&cl.name)).ok().flatten().is_some() {
            continue;
        }
        if !c.manages(&cl.name) {
            continue;
        }
        let Ok(creds) = secrets::load(&c.home, &cl.name) else {
            continue;
        };
        let all = c.db(|s| s.instances(&cl.name)).unwrap_or_default();
        // The members of a quorum that must come back wait for each other: restarted
        // together after this loop.
        let quorum = c
            .addon(&cl.engine)
            .is_ok_and(|a| topology::family(a.manifest()) == Family::Quorum);
        let mut together = Vec::new();
        for i in all
            .iter()
            .filter(|i| i.role != Role::Primary || i.state != Phase::Running)
        {
            mem.suspects.remove(&(cl.name.clone(), i.name.clone()));
        }
        for i in all.iter().filter(|i| i.desired == Desired::Running) {
            let alive = c.nodes.alive(i);
            let key = (cl.name.clone(), i.name.clone());
            if alive {
                if let Some(p) = i.process {
                    c.watch_exit(p);
                }
                if i.state == Phase::Running {
                    probes.push(Probe {
                        cl: cl.clone(),
                        i: i.clone(),
                        all: all.clone(),
                        creds: creds.clone(),
                    });
                }
                continue;
            }
            if matches!(i.state, Phase::Fenced | Phase::Failed) {
                continue;
            }
            let tail = last_line(&shoal_local::log_tail(&i.log_file(), 400));
            // A dead primary with replicas: fail over at once (no probe misses needed).
            let replica_up = all
                .iter()
                .any(|r| r.name != i.name && r.state == Phase::Running && c.nodes.alive(r));
            if primary_replica::fail_over_at_exit(i, fails_over(&cl, &all), replica_up) {
                start_failover(c, &cl, i, format!("process exited: {tail}"));
                continue;
            }
            // A dead shard primary stays down until the engine elects a replica in its place
            // (restarted first, it would lead again with only what it persisted).
            let first = !mem.handover.contains_key(&key);
            let since = *mem.handover.entry(key.clone()).or_insert_with(Instant::now);
            let alive = |r: &InstanceRow| c.nodes.alive(r);
            if crate::sharded::hold_restart(i, &all, since.elapsed(), alive) {
                if first {
                    mark_crashed(c, &cl.name, i.clone());
                    c.event(
                        &cl.name,
                        Some(&i.name),
                        Level::Warning,
                        format!(
                            "this shard primary's process exited ({tail}); left down until \
                             the engine elects a replica in its place (at most {} s), then \
                             restarted to rejoin as a replica",
                            crate::sharded::HANDOVER.as_secs()
                        ),
                    );
                }
                continue;
            }
            mem.handover.remove(&key);
            let b = mem.backoff.entry(key.clone()).or_insert(Backoff {
                next: Instant::now(),
                delay: Duration::from_secs(1),
            });
            if Instant::now() < b.next {
                continue;
            }
            if let Some(old) = i.process {
                let n = c.nodes.kill_leftovers(old);
                if n > 0 {
                    c.event(
                        &cl.name,
                        Some(&i.name),
                        Level::Warning,
                        format!("killed {n} leftover process(es) of the exited server"),
                    );
                }
                // Its pid gone from the kernel (not a lingering zombie) before a restart
                // reads its lock files.
                c.nodes.wait_gone(old, ha::GONE_WITHIN).await;
            }
            let mut row = i.clone();
            row.restarts += 1;
            let mut row = mark_crashed(c, &cl.name, row);
            c.event(
                &cl.name,
                Some(&row.name),
                Level::Warning,
                format!(
                    "process is not running; restarting (restart {}): {tail}",
                    row.restarts
                ),
            );
            if quorum {
                together.push(row);
                continue;
            }
            let result = c.bring_up(&cl, &mut row, &all, &creds).await;
            restarted(c, mem, &cl.name, &row.name, result);
        }
        if !together.is_empty() {
            for (name, result) in
                crate::ops::bring_up_together(c, &cl, together, &all, &creds).await
            {
                restarted(c, mem, &cl.name, &name, result);
            }
        }
        drop(guard);
    }
    // Probe concurrently: one hung instance must not delay the others. A probe may outlive
    // the tick; one still unanswered after OVERDUE (or a whole interval) counts as a miss at
    // every tick until it ends (a frozen server is noticed without waiting for timeouts).
    let interval = Duration::from_millis(c.cfg.probe_interval_ms);
    // (probe, result, whether the probe is still running).
    let mut results: Vec<(Probe, ProbeResult, bool)> = Vec::new();
    while let Some(done) = mem.probes.try_join_next_with_id() {
        finished(mem, done, &mut results);
    }
    let mut fresh = std::collections::HashSet::new();
    for p in probes {
        let key = (p.cl.name.clone(), p.i.name.clone());
        if let Some(started) = mem.inflight.get(&key) {
            let waited = started.elapsed();
            if waited >= interval.max(OVERDUE) {
                let overdue = Some(Err(format!("no answer after {} ms", waited.as_millis())));
                results.push((p, overdue, true));
            }
            continue;
        }
        mem.inflight.insert(key.clone(), Instant::now());
        let c = c.clone();
        let task = mem.probes.spawn(async move {
            let r = probe_live(&c, &p.cl, p.i.clone(), &p.all, &p.creds).await;
            (p, r)
        });
        fresh.insert(task.id());
        mem.tasks.insert(task.id(), key);
    }
    // Most probes answer in milliseconds: take what arrives within most of an interval, but
    // wait only for this tick's probes (an older, hung one must not hold every tick up).
    let deadline = tokio::time::Instant::now() + interval.mul_f64(0.8);
    while !fresh.is_empty() {
        match tokio::time::timeout_at(deadline, mem.probes.join_next_with_id()).await {
            Ok(Some(done)) => {
                match &done {
                    Ok((id, _)) => fresh.remove(id),
                    Err(e) => fresh.remove(&e.id()),
                };
                finished(mem, done, &mut results)
            }
            Ok(None) | Err(_) => break,
        }
    }
    for (p, r, _) in results {
        judge(c, mem, &p, r, ttl).await;
    }
    for cl in c.db(|s| s.clusters()).unwrap_or_default() {
        c.refresh_routes(&cl.name).await;
    }
    refresh_cluster_states(c, mem);
    crate::backups::fire_schedules(c);
    crate::archive::kick_archiver(c);
}

/// Record that `row`'s process is gone (crashed, unhealthy, no pid) and drop its kept addon
/// instance; the row as saved.
fn mark_crashed(c: &Controller, cluster: &str, mut row: InstanceRow) -> InstanceRow {
    row.state = Phase::Crashed;
    row.health = Health::Unhealthy;
    row.process = None;
    c.save(&row);
    c.observe(&row);
    c.drop_live(cluster, &row.name);
    row
}

/// Book a restart's outcome: forget the backoff, or double it and say when the next try is.
fn restarted(
    c: &Arc<Controller>,
    mem: &mut Memory,
    cluster: &str,
    instance: &str,
    result: Result<(), ControlError>,
) {
    let key = (cluster.to_string(), instance.to_string());
    let Err(e) = result else {
        mem.backoff.remove(&key);
        return;
    };
    let b = mem.backoff.entry(key).or_insert(Backoff {
        next: Instant::now(),
        delay: Duration::from_secs(1),
    });
    b.next = Instant::now() + b.delay;
    c.event(
        cluster,
        Some(instance),
        Level::Error,
        format!("restart failed, next try in {:?}: {}", b.delay, e.failure),
    );
    let third = b.delay == Duration::from_secs(4);
    b.delay = (b.delay * 2).min(Duration::from_secs(60));
    // A quorum or shard member that fails to come back three times (its data lost or
    // diverged) is replaced, when the others can make it a fresh copy.
    let engine_elects = c
        .db(|s| s.cluster(cluster))
        .ok()
        .flatten()
        .and_then(|cl| {
            c.addon(&cl.engine)
                .ok()
                .map(|a| topology::family_of(a.manifest(), &cl.spec))
        })
        .is_some_and(Family::engine_elects);
    if third && engine_elects {
        match c.rebuild(cluster, instance) {
            Ok(op) => c.event(
                cluster,
                Some(instance),
                Level::Warning,
                format!(
                    "it failed to come back three times; replacing it (operation {})",
                    op.id
                ),
            ),
            Err(e) => c.event(
                cluster,
                Some(instance),
                Level::Error,
                format!("it failed to come back three times and cannot be replaced: {e}"),
            ),
        }
    }
    if let Some(mut row) = c
        .db(|s| s.instances(cluster))
        .unwrap_or_default()
        .into_iter()
        .find(|i| i.name == instance)
    {
        row.state = Phase::Crashed;
        c.save(&row);
    }
}

/// Book a finished probe task: forget it as in flight and keep its result.
fn finished(
    mem: &mut Memory,
    done: Result<(tokio::task::Id, (Probe, ProbeResult)), tokio::task::JoinError>,
    results: &mut Vec<(Probe, ProbeResult, bool)>,
) {
    let id = match &done {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    if let Some(key) = mem.tasks.remove(&id) {
        mem.inflight.remove(&key);
    }
    if let Ok((_, (p, r))) = done {
        results.push((p, r, false));
    }
}

/// Act on one probe result: count misses of a primary and fail it over after too many;
/// renew the healthy primary's leader lease; fence an instance whose claimed role contradicts
/// the coordination store.
async fn judge(c: &Arc<Controller>, mem: &mut Memory, p: &Probe, r: ProbeResult, ttl: Duration) {
    let Some(r) = r else { return };
    let key = (p.cl.name.clone(), p.i.name.clone());
    let lock = c.lock(&p.cl.name);
    let Ok(_guard) = lock.try_lock_owned() else {
        return;
    };
    if c.db(|s| s.busy(&p.cl.name)).ok().flatten().is_some() {
        return;
    }
    // Act on the current row only if it is still what was probed.
    let Some(i) = c
        .db(|s| s.instances(&p.cl.name))
        .unwrap_or_default()
        .into_iter()
        .find(|x| x.name == p.i.name && x.role == p.i.role && x.state == Phase::Running)
    else {
        return;
    };
    let limit = c.cfg.ha.failover_after_probes;
    let (answer, misses) = match &r {
        Err(_) => {
            let n = mem.misses.entry(key.clone()).or_insert(0);
            *n += 1;
            (primary_replica::Answer::Missed, *n)
        }
        Ok(rep) => {
            mem.misses.remove(&key);
            let says_primary = rep.role == Role::Primary.as_str();
            (
                primary_replica::Answer::Answered {
                    writable: rep.writable,
                    says_primary,
                },
                0,
            )
        }
    };
    let verdict = primary_replica::judge(
        i.role,
        i.role.engine_elected(),
        answer,
        misses,
        limit,
        fails_over(&p.cl, &p.all),
    );
    if !matches!(verdict, Verdict::Suspect) {
        mem.suspects.remove(&key);
    }
    match verdict {
        Verdict::Fine => {}
        Verdict::Suspect => {
            mem.suspects.insert(key.clone());
        }
        Verdict::FailOver => {
            mem.misses.remove(&key);
            let last = r.err().map(|e| e.to_string()).unwrap_or_default();
            start_failover(
                c,
                &p.cl,
                &i,
                format!("{limit} consecutive probes failed, the last: {last}"),
            );
        }
        Verdict::KeepLease => {
            let due = mem
                .renewed
                .get(&format!("{}/leader", p.cl.name))
                .is_none_or(|t| t.elapsed() >= ttl / 3);
            if due {
                match ha::keep_leader(c, &p.cl.name, &i.name).await {
                    Ok(_) => {
                        mem.renewed
                            .insert(format!("{}/leader", p.cl.name), Instant::now());
                    }
                    Err(shoal_dcs::DcsError::Conflict(why)) => {
                        c.event(
                            &p.cl.name,
                            Some(&i.name),
                            Level::Error,
                            format!("split brain averted: {why}; fencing it"),
                        );
                        fence_and_rebuild(
                            c,
                            &p.cl,
                            i,
                            "the coordination store names another leader",
                        )
                        .await;
                    }
                    Err(e) => {
                        c.event(
                            &p.cl.name,
                            Some(&i.name),
                            Level::Warning,
                            format!("cannot renew the leader lease: {e}"),
                        );
                    }
                }
            }
        }
        Verdict::FenceUnexpectedPrimary => {
            c.event(
                &p.cl.name,
                Some(&i.name),
                Level::Error,
                "claims to be a writable primary but is not the elected leader; fencing it",
            );
            fence_and_rebuild(c, &p.cl, i, "unexpected writable primary").await;
        }
    }
}

/// Fence `i` (kill it) and queue its rebuild as a replica of the elected leader.
async fn fence_and_rebuild(c: &Arc<Controller>, cl: &ClusterRow, mut i: InstanceRow, why: &str) {
    ha::fence(c, &mut i, why).await;
    i.role = Role::Replica;
    c.save(&i);
    if let Err(e) = c.rebuild(&cl.name, &i.name) {
        c.event(
            &cl.name,
            Some(&i.name),
            Level::Error,
            format!("cannot rebuild it: {e}"),
        );
    }
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").to_string()
}

/// Probe `i` on its kept addon instance and record the result; `None` when the row changed
/// meanwhile (an operation took over).
async fn probe_live(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    mut i: InstanceRow,
    all: &[InstanceRow],
    creds: &secrets::Credentials,
) -> Option<Result<wit::RoleReport, String>> {
    let addon = c.addon(&cl.engine).ok()?;
    let key = (cl.name.clone(), i.name.clone());
    let live = {
        let mut map = c.live.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| Arc::new(addon.live(c.call_ctx(&i, all, false))))
            .clone()
    };
    let inst = c.wit_instance(cl, &i, creds, false);
    let started = std::time::Instant::now();
    let result = live
        .call()
        .probe(&inst, &Controller::members_of(&i, all))
        .await
        .map_err(|e| e.to_string());
    tracing::debug!(instance = %i.name, ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "probe end");
    // Re-read: an operation may have changed the row meanwhile.
    let current = c.db(|s| s.instances(&cl.name)).ok()?;
    let fresh = current.into_iter().find(|x| x.name == i.name)?;
    if fresh.state != Phase::Running || fresh.role != i.role {
        return None;
    }
    i = fresh;
    match &result {
        Ok(r) => {
            let was = i.health;
            record_probe(&mut i, r);
            if was != i.health && was != Health::Unknown {
                c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Info,
                    format!("health {was} -> {}: {}", i.health, r.detail),
                );
            }
        }
        Err(e) => {
            if i.health != Health::Unhealthy {
                c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Warning,
                    format!("probe failed: {e}"),
                );
            }
            i.health = Health::Unhealthy;
            i.detail = e.clone();
            i.probed_ms = Some(now_ms());
        }
    }
    c.observe(&i);
    Some(result)
}

/// A cluster is running when every instance that should run does and is healthy, degraded
/// when some do not; states owned by operations (creating, updating, deleting, failed) stay.
fn refresh_cluster_states(c: &Arc<Controller>, mem: &mut Memory) {
    for cl in c.db(|s| s.clusters()).unwrap_or_default() {
        if !cl.state.is_observed() {
            continue;
        }
        let all = c.db(|s| s.instances(&cl.name)).unwrap_or_default();
        let quorum = topology::state_of(&all);
        if let Some(q) = &quorum {
            if !q.has_quorum && mem.quorum_lost.insert(cl.name.clone()) {
                c.event(
                    &cl.name,
                    None,
                    Level::Error,
                    format!(
                        "quorum lost: {q}; it takes no writes until a majority of members \
                         answer (dead members are restarted; see docs/engines for recovery)"
                    ),
                );
            } else if q.has_quorum && mem.quorum_lost.remove(&cl.name) {
                c.event(&cl.name, None, Level::Info, format!("quorum back: {q}"));
            }
        }
        if let Some(shards) = crate::sharded::state_of(&*c.nodes, &all) {
            let (line, whole) = crate::sharded::summary(&shards);
            if !whole && mem.shard_down.insert(cl.name.clone()) {
                c.event(
                    &cl.name,
                    None,
                    Level::Error,
                    format!(
                        "a shard has no primary: {line}; the engine elects a replica where one \
                         is left (dead members are restarted)"
                    ),
                );
            } else if whole && mem.shard_down.remove(&cl.name) {
                c.event(
                    &cl.name,
                    None,
                    Level::Info,
                    format!("every shard has its primary: {line}"),
                );
            }
        }
        let ok = all
            .iter()
            .filter(|i| i.desired == Desired::Running)
            .all(|i| i.state == Phase::Running && i.health == Health::Healthy);
        let lost = quorum.as_ref().is_some_and(|q| !q.has_quorum);
        let want = ClusterState::observed(ok, lost);
        if want != cl.state {
            let _ = c.db(|s| s.set_cluster_state(&cl.name, want));
            let level = match want {
                ClusterState::Running => Level::Info,
                ClusterState::QuorumLost => Level::Error,
                _ => Level::Warning,
            };
            c.event(&cl.name, None, level, format!("cluster {want}"));
        }
    }
}
