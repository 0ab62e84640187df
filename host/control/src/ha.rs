//! High availability, decided by the host for every engine alike; the engine-specific steps
//! are addon hooks (probe, promote, demote, switchover, rebuild, set-sync).
//!
//! * **Failover** (operation `failover`): fence the old primary (kill its process group; in
//!   local mode the host is its parent, so a dead one is known at once), pick the replica
//!   with the highest change-log position (in `sync` mode only if enough replicas answered to
//!   be sure it holds every acknowledged commit; in `async` mode only within
//!   `max-lag-on-failover`), elect it in the coordination store (compare-and-set: the term
//!   bump is the fencing token), promote it, re-point the stable endpoints and the other
//!   replicas, then rebuild the old primary as a replica.
//! * **Switchover**: demote the primary (read-only, follow the candidate), let the addon end
//!   its sessions and wait for the candidate to catch up, stop it cleanly, elect and promote
//!   the candidate, rebuild the old primary as a replica.
//! * **Rebuild**: the addon's rewind plan, else a fresh copy with the run-spec's init.
//!
//! Every step is an event with its time since the fault was detected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::{ApiError, OpView, ReplicationMode};
use shoal_dcs::{Coordinator, DcsError, Leader};
use shoal_runtime::wit;

use crate::controller::Controller;
use crate::engines;
use crate::error::{At, ControlError, Failure};
use crate::events::Level;
use crate::quantity;
use crate::secrets::Credentials;
use crate::store::{ClusterRow, Desired, Health, InstanceRow, Phase, Role};

/// Pauses between attempts to re-point a replica whose `demote` failed retryably (the last
/// entry ends the attempts): about 10 s in all before it is copied afresh instead.
const REPOINT_RETRIES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(6),
    Duration::ZERO,
];

/// How long a killed or stopped engine process may take to be gone from the kernel.
pub(crate) const GONE_WITHIN: Duration = Duration::from_secs(15);

fn ttl(c: &Controller) -> Duration {
    Duration::from_millis(c.cfg.ha.lease_ttl_ms)
}

fn rows(
    c: &Controller,
    name: &str,
) -> Result<(ClusterRow, Vec<InstanceRow>, Credentials), ControlError> {
    Ok((
        crate::ops::cluster(c, name)?,
        crate::ops::instances(c, name)?,
        crate::ops::creds(c, name)?,
    ))
}

/// Test hook: with `SHOAL_FAILPOINT=NAME:MS` in the daemon's environment, pause MS
/// milliseconds at the step called NAME, so a test can kill the host exactly there.
pub(crate) async fn failpoint(name: &str) {
    let Ok(v) = std::env::var("SHOAL_FAILPOINT") else {
        return;
    };
    if let Some(ms) = v
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tracing::warn!("failpoint {name}: pausing {ms} ms");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn since(t0: Instant) -> String {
    format!("{} ms", t0.elapsed().as_millis())
}

// ----- submitting -----

impl Controller {
    /// Validate and queue a switchover of `name` to `to` (or the most caught-up replica).
    pub async fn switchover(
        self: &Arc<Self>,
        name: &str,
        to: Option<&str>,
    ) -> Result<OpView, ApiError> {
        let c = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        self.refuse_for_quorum(
            &c,
            "no switchover (the engine elects its leaders; Shoal never promotes here)",
        )?;
        let all = self.db(|s| s.instances(name))?;
        if all.len() < 2 {
            return Err(ApiError::invalid(format!(
                "cluster {name} has a single instance; a switchover needs a replica (scale it up first)"
            )));
        }
        let primary = all
            .iter()
            .find(|i| i.role == Role::Primary)
            .ok_or_else(|| ApiError::conflict(format!("cluster {name} has no primary now")))?;
        let candidate = match to {
            Some(t) => all.iter().find(|i| i.name == t).ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
                ApiError::not_found(format!(
                    "cluster {name} has no instance {t:?}; its instances: {}",
                    names.join(", ")
                ))
            })?,
            None => all
                .iter()
                .filter(|i| i.role != Role::Primary && i.health == Health::Healthy)
                .max_by_key(|i| i.position.unwrap_or(0))
                .ok_or_else(|| {
                    ApiError::conflict(format!(
                        "cluster {name} has no healthy replica to switch to"
                    ))
                })?,
        };
        if candidate.name == primary.name {
            return Err(ApiError::invalid(format!(
                "{} is already the primary of {name}",
                candidate.name
            )));
        }
        check_candidate(&c, primary, candidate).map_err(ApiError::conflict)?;
        self.submit(
            name,
            crate::operation::Op::Switchover {
                from: primary.name.clone(),
                to: candidate.name.clone(),
                resume: false,
            },
        )
    }

    /// Validate and queue a rebuild of replica `instance`.
    pub fn rebuild(self: &Arc<Self>, name: &str, instance: &str) -> Result<OpView, ApiError> {
        let c = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        let addon = self.addon(&c.engine)?;
        if c.spec.shards.is_some() {
            // A shard member is replaced: forgotten, fresh data, a copy of its shard's primary.
            let all = self.db(|s| s.instances(name))?;
            crate::sharded::check_replace(&crate::sharded::seen(&*self.nodes, &all), instance)
                .map_err(|e| ApiError::invalid(format!("cannot replace it: {e}")))?;
            return self.submit(
                name,
                crate::operation::Op::Rebuild {
                    instance: instance.to_string(),
                },
            );
        }
        if crate::topology::family(addon.manifest()) == crate::topology::Family::Quorum {
            // A quorum member is replaced: out of the membership, fresh data, back in.
            let all = self.db(|s| s.instances(name))?;
            crate::topology::check_replace(&crate::topology::voters(&*self.nodes, &all), instance)
                .map_err(|e| ApiError::invalid(format!("cannot replace it: {e}")))?;
            return self.submit(
                name,
                crate::operation::Op::Rebuild {
                    instance: instance.to_string(),
                },
            );
        }
        let all = self.db(|s| s.instances(name))?;
        let i = all.iter().find(|i| i.name == instance).ok_or_else(|| {
            ApiError::not_found(format!("cluster {name} has no instance {instance:?}"))
        })?;
        if i.role == Role::Primary {
            return Err(ApiError::invalid(format!(
                "{instance} is the primary of {name}; switch over first, then rebuild it"
            )));
        }
        if !all
            .iter()
            .any(|p| p.role == Role::Primary && p.state == Phase::Running)
        {
            return Err(ApiError::conflict(format!(
                "cluster {name} has no running primary to rebuild {instance} from"
            )));
        }
        self.submit(
            name,
            crate::operation::Op::Rebuild {
                instance: instance.to_string(),
            },
        )
    }
}

impl Controller {
    /// Validate and queue the recovery of a quorum that is lost (see [`crate::ops`]'s
    /// `recover`): only a quorum cluster, only while its quorum is lost, only with the
    /// explicit flag.
    pub fn recover(self: &Arc<Self>, name: &str, force: bool) -> Result<OpView, ApiError> {
        let c = self
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))?;
        let addon = self.addon(&c.engine)?;
        if crate::topology::family_of(addon.manifest(), &c.spec) != crate::topology::Family::Quorum
        {
            return Err(ApiError::invalid(format!(
                "{name} is not a quorum cluster: recover brings back a quorum that lost its \
                 majority (a primary-replica cluster fails over instead)"
            )));
        }
        let all = self.db(|s| s.instances(name))?;
        if let Some(q) = crate::topology::state_of(&all).filter(|q| q.has_quorum) {
            return Err(ApiError::invalid(format!(
                "{name} has its quorum ({q}): nothing to recover; replace single members with \
                 `shoal cluster rebuild`"
            )));
        }
        if !force {
            return Err(ApiError::invalid(format!(
                "recovering {name} restarts its most advanced member alone as a new cluster \
                 and gives the others fresh copies of it: writes that only the lost members \
                 had are gone. Run again with --force-new-cluster to do it"
            )));
        }
        self.submit(name, crate::operation::Op::Recover {})
    }

    /// Refuse `what` for a quorum cluster, naming the rule.
    pub(crate) fn refuse_for_quorum(&self, c: &ClusterRow, what: &str) -> Result<(), ApiError> {
        let addon = self.addon(&c.engine)?;
        match crate::topology::family_of(addon.manifest(), &c.spec) {
            crate::topology::Family::Quorum => Err(ApiError::invalid(format!(
                "{} runs {} as a quorum: {what}",
                c.name, c.engine
            ))),
            crate::topology::Family::Sharded => Err(ApiError::invalid(format!(
                "{} runs {} sharded, and the engine fails each shard over itself: {what}",
                c.name, c.engine
            ))),
            crate::topology::Family::PrimaryReplica => Ok(()),
        }
    }
}

/// Whether `candidate` may become the primary now: running, healthy, and (async mode) within
/// `max-lag-on-failover` of the primary's last position.
fn check_candidate(
    c: &ClusterRow,
    primary: &InstanceRow,
    cand: &InstanceRow,
) -> Result<(), String> {
    if cand.state != Phase::Running || cand.health != Health::Healthy {
        return Err(format!(
            "{} is not a healthy running replica (state {}, health {}: {})",
            cand.name, cand.state, cand.health, cand.detail
        ));
    }
    let max = quantity::parse_bytes("ha.max-lag-on-failover", &c.spec.ha.max_lag_on_failover)?;
    let lag = lag_behind(primary, cand);
    if lag > max {
        return Err(format!(
            "{} is {lag} bytes behind {} (more than max-lag-on-failover {})",
            cand.name, primary.name, c.spec.ha.max_lag_on_failover
        ));
    }
    Ok(())
}

/// Bytes `cand` is behind `primary`, by their last probes.
fn lag_behind(primary: &InstanceRow, cand: &InstanceRow) -> u64 {
    crate::primary_replica::lag_behind(primary.position, cand.position, cand.lag_bytes)
}

// ----- building blocks -----

/// Kill `i`'s whole process group now (a hung or dead primary): it can never write again.
pub(crate) async fn fence(c: &Controller, i: &mut InstanceRow, why: &str) {
    let mut how = String::from("process already gone");
    if let Some(p) = i.process {
        if c.nodes.is_running(p) {
            let n = c.nodes.kill(p);
            how = format!(
                "killed pid {} and its {} descendant(s)",
                p.pid,
                n.saturating_sub(1)
            );
        }
        let n = c.nodes.kill_leftovers(p);
        if n > 0 {
            how.push_str(&format!(", and {n} leftover process(es)"));
        }
        // Gone from the kernel, not only exited (a zombie of a process an earlier host
        // started lingers until init reaps it), so nothing — a lock file check, a rewind —
        // mistakes it for alive.
        if !c.nodes.wait_gone(p, GONE_WITHIN).await {
            how.push_str(&format!(" (still not gone after {GONE_WITHIN:?})"));
        }
    }
    i.process = None;
    i.state = Phase::Fenced;
    i.health = Health::Unhealthy;
    c.save(i);
    c.observe(i);
    c.drop_live(&i.cluster, &i.name);
    let _ = std::fs::remove_file(i.pid_file());
    c.event(
        &i.cluster,
        Some(&i.name),
        Level::Warning,
        format!("fenced ({why}): {how}"),
    );
}

/// Set synchronous replication on every running instance when the cluster is in sync mode
/// (replicas carry the setting too, so a promoted one enforces it from its first commit).
pub(crate) async fn apply_sync(c: &Controller, cl: &ClusterRow, cr: &Credentials) {
    apply_sync_to(c, cl, cr, None).await
}

/// [`apply_sync`] on instance `only` alone (one that just started: engines that keep the
/// setting in memory only lost it), or on every running instance.
pub(crate) async fn apply_sync_to(
    c: &Controller,
    cl: &ClusterRow,
    cr: &Credentials,
    only: Option<&str>,
) {
    if cl.spec.ha.mode != ReplicationMode::Sync {
        return;
    }
    let all = c.db(|s| s.instances(&cl.name)).unwrap_or_default();
    let chosen = |i: &&InstanceRow| i.state == Phase::Running && only.is_none_or(|n| n == i.name);
    for i in all.iter().filter(chosen) {
        let Ok(hooks) = c.hooks(cl, i, &all, cr) else {
            return;
        };
        if let Err(e) = hooks.set_sync(cl.spec.ha.sync_quorum).await {
            c.event(
                &cl.name,
                Some(&i.name),
                Level::Error,
                format!("cannot configure synchronous replication: {e}"),
            );
        }
    }
}

/// Have the primary keep a slot (or the engine's equivalent) for every other member, and
/// make every running replica follow it.
async fn repoint(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    primary: &InstanceRow,
    cr: &Credentials,
    t0: Instant,
) -> Result<(), String> {
    let all = c.db(|s| s.instances(&cl.name)).map_err(|e| e.message)?;
    for r in all.iter().filter(|i| i.name != primary.name) {
        if let Err(e) = c.hooks(cl, primary, &all, cr)?.member_join(r).await {
            return Err(format!(
                "member-join of {} on {}: {e}",
                r.name, primary.name
            ));
        }
        if r.state != Phase::Running {
            continue;
        }
        // A retryable failure (a slow STOP of the applier under load, a connection reset) is
        // retried before the replica's data is given up for a fresh copy.
        let mut outcome = Err(None);
        for (attempt, pause) in REPOINT_RETRIES.iter().enumerate() {
            let r2 = c
                .hooks(cl, r, &all, cr)?
                .with_dirs()
                .demote(Some(primary))
                .await;
            match r2 {
                Ok(()) => {
                    outcome = Ok(());
                    break;
                }
                Err(e) if e.is_retryable() && attempt + 1 < REPOINT_RETRIES.len() => {
                    c.event(
                        &cl.name,
                        Some(&r.name),
                        Level::Warning,
                        format!(
                            "re-pointing to {} failed, retrying in {pause:?}: {e}",
                            primary.name
                        ),
                    );
                    tokio::time::sleep(*pause).await;
                }
                Err(e) => {
                    outcome = Err(Some(e));
                    break;
                }
            }
        }
        match outcome.map_err(|e| e.map_or_else(|| "no attempt".to_string(), |e| e.to_string())) {
            Ok(()) => c.event(
                &cl.name,
                Some(&r.name),
                Level::Info,
                format!("now follows {} (+{})", primary.name, since(t0)),
            ),
            Err(e) => {
                c.event(
                    &cl.name,
                    Some(&r.name),
                    Level::Warning,
                    format!("cannot re-point to {}: {e}; rebuilding it", primary.name),
                );
                if let Err(e) = c.rebuild(&cl.name, &r.name) {
                    c.event(
                        &cl.name,
                        Some(&r.name),
                        Level::Error,
                        format!("cannot rebuild it: {e}"),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Run `cmds` (from the addon) as the engine user with the engine's programs.
async fn run_commands(
    c: &Controller,
    cl: &ClusterRow,
    i: &InstanceRow,
    cmds: &[wit::Command],
) -> Result<(), String> {
    let addon = c.addon(&cl.engine).map_err(|e| e.message)?;
    let search = engines::binaries(&c.cfg, addon, &cl.version);
    for cmd in cmds {
        let spec = crate::node::process_spec(&search, cmd, i, c.users.of(cl)?)?;
        c.nodes
            .run(&spec, Duration::from_millis(c.cfg.init_timeout_ms))
            .await
            .map_err(|e| format!("{}: {e}", cmd.program))?;
    }
    Ok(())
}

/// Re-seed the stopped replica `i` from `primary` and start it: the addon's rewind plan
/// first; if that fails or the instance will not come up on it, a fresh copy (the old data
/// directory is kept aside as `data.before-rebuild`).
async fn rebuild_from(
    c: &Controller,
    cl: &ClusterRow,
    i: &mut InstanceRow,
    primary: &InstanceRow,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let t0 = Instant::now();
    if i.process.is_some() {
        c.stop_process(cl, i, cr).await?;
    }
    i.role = Role::Replica;
    i.state = Phase::Rebuilding;
    c.save(i);
    let all = c
        .db(|s| s.instances(&cl.name))
        .map_err(|e| Failure::Store(e.message))
        .on(&cl.name, &i.name)?;
    let mut rewound = false;
    if !crate::node::is_empty(&i.data_dir()) {
        let plan = c
            .hooks(cl, i, &all, cr)
            .on(&cl.name, &i.name)?
            .with_process_paths()
            .rebuild(primary)
            .await;
        match plan {
            Ok(cmds) if !cmds.is_empty() => match run_commands(c, cl, i, &cmds).await {
                Ok(()) => {
                    rewound = true;
                    c.event(
                        &cl.name,
                        Some(&i.name),
                        Level::Info,
                        format!("rewound onto {} in {}", primary.name, since(t0)),
                    );
                }
                Err(e) => c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Warning,
                    format!("rewind failed, copying afresh instead: {e}"),
                ),
            },
            Ok(_) => {}
            Err(e) if e.is_unsupported() => {}
            Err(e) => c.event(
                &cl.name,
                Some(&i.name),
                Level::Warning,
                format!("rebuild plan failed, copying afresh instead: {e}"),
            ),
        }
    }
    if rewound {
        match c.bring_up(cl, i, &all, cr).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                c.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Warning,
                    format!(
                        "did not come up after the rewind, copying afresh: {}",
                        e.failure
                    ),
                );
                if i.process.is_some() {
                    c.stop_process(cl, i, cr).await?;
                }
            }
        }
    }
    set_aside(i).on(&cl.name, &i.name)?;
    i.state = Phase::Rebuilding;
    c.save(i);
    c.bring_up(cl, i, &all, cr).await?;
    c.event(
        &cl.name,
        Some(&i.name),
        Level::Info,
        format!("re-copied from {} in {}", primary.name, since(t0)),
    );
    Ok(())
}

/// Move the data directory aside (replacing an older one set aside) and leave an empty one.
pub(crate) fn set_aside(i: &InstanceRow) -> Result<(), String> {
    let data = i.data_dir();
    // Nothing to keep (a rebuild run again after an interruption): the copy set aside the
    // first time stays.
    if !data.exists() || crate::node::is_empty(&data) {
        return Ok(());
    }
    let aside = i.dir.join("data.before-rebuild");
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(|e| format!("{}: {e}", aside.display()))?;
    }
    if data.exists() {
        std::fs::rename(&data, &aside).map_err(|e| format!("{}: {e}", data.display()))?;
    }
    Ok(())
}

/// The last elected leader of `cluster` in the coordination store (live lease or not).
async fn leader_named(c: &Controller, cluster: &str) -> Result<Option<Leader>, String> {
    match c.dcs.leader(cluster).await {
        Ok(l) => Ok(l.map(|(l, _)| l)),
        Err(e) => Err(e.to_string()),
    }
}

/// Elect `to` after `from` (compare-and-set on the leader record).
async fn elect(c: &Controller, cluster: &str, from: &str, to: &str) -> Result<Leader, String> {
    let current = leader_named(c, cluster).await?;
    let expected = match &current {
        Some(l) if l.holder == to => return Ok(l.clone()),
        Some(l) if l.holder != from => {
            return Err(format!(
                "the coordination store names {} (term {}) as leader, not {from}; not acting",
                l.holder, l.term
            ))
        }
        other => other.clone(),
    };
    c.dcs
        .elect(cluster, expected.as_ref(), to, ttl(c))
        .await
        .map_err(|e| match e {
            DcsError::Conflict(m) => format!("lost the election race: {m}"),
            e => e.to_string(),
        })
}

async fn promote(
    c: &Controller,
    cl: &ClusterRow,
    cand: &mut InstanceRow,
    term: u64,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let at = |f: Failure| ControlError::on(&cl.name, &cand.name, f);
    let all = c
        .db(|s| s.instances(&cl.name))
        .map_err(|e| at(Failure::Store(e.message)))?;
    c.hooks(cl, cand, &all, cr)
        .map_err(|e| at(e.into()))?
        .with_dirs()
        .promote(term)
        .await
        .map_err(|e| {
            at(Failure::Hook {
                hook: "promote",
                source: e,
            })
        })
}

// ----- operations -----

/// Fail over from `old` (detected at `detected_ms`, for `reason`). Idempotent: a host that
/// restarts mid-failover runs it again and continues from what the store says.
pub(crate) async fn failover(
    c: &Arc<Controller>,
    cluster: &str,
    old: &str,
    reason: &str,
) -> Result<(), ControlError> {
    let t0 = Instant::now();
    let (cl, all, cr) = rows(c, cluster)?;
    let Some(mut old_row) = all.iter().find(|i| i.name == old).cloned() else {
        return Err(ControlError::on(
            cluster,
            old,
            "no longer part of the cluster",
        ));
    };
    let leader = leader_named(c, cluster).await.of(cluster)?;
    let resumed = leader.as_ref().is_some_and(|l| l.holder != old);
    if old_row.role != Role::Primary && !resumed {
        c.event(
            cluster,
            Some(old),
            Level::Info,
            "no longer the primary; nothing to fail over",
        );
        return Ok(());
    }
    if old_row.state != Phase::Fenced {
        fence(c, &mut old_row, reason).await;
    }
    c.refresh_routes(cluster).await;
    failpoint("failover-fenced").await;

    // The candidate: elected already (resumed), else the best replica that answers now.
    let cand_name = match &leader {
        Some(l) if resumed => {
            c.event(
                cluster,
                Some(&l.holder),
                Level::Info,
                format!(
                    "resuming the failover: {} was elected in term {}",
                    l.holder, l.term
                ),
            );
            l.holder.clone()
        }
        _ => match choose(c, &cl, &old_row, &all, &cr, t0).await {
            Ok(name) => name,
            Err(e) => {
                // Nobody was elected: the old primary is still the leader of its term, so
                // the safe way back is to restart it (the supervisor does, with backoff).
                c.event(cluster, None, Level::Error, format!("no failover: {e}"));
                old_row.state = Phase::Crashed;
                c.save(&old_row);
                c.event(
                    cluster,
                    Some(old),
                    Level::Warning,
                    "no replica can take over; the old primary, still the elected leader, \
                     will be restarted",
                );
                return Err(ControlError::on(cluster, old, format!("no failover: {e}")));
            }
        },
    };
    let Some(mut cand) = c
        .db(|s| s.instances(cluster))
        .map_err(|e| Failure::Store(e.message))
        .of(cluster)?
        .into_iter()
        .find(|i| i.name == cand_name)
    else {
        return Err(ControlError::on(
            cluster,
            &cand_name,
            "the candidate vanished",
        ));
    };
    let new = elect(c, cluster, old, &cand.name).await.of(cluster)?;
    c.event(
        cluster,
        Some(&cand.name),
        Level::Info,
        format!("elected leader in term {} (+{})", new.term, since(t0)),
    );
    failpoint("failover-elected").await;
    old_row.role = Role::Replica;
    c.save(&old_row);
    cand.role = Role::Primary;
    c.save(&cand);
    promote(c, &cl, &mut cand, new.term, &cr).await?;
    c.refresh_routes(cluster).await;
    c.event(
        cluster,
        Some(&cand.name),
        Level::Info,
        format!(
            "promoted; writes go to it now (+{} after detection)",
            since(t0)
        ),
    );
    repoint(c, &cl, &cand, &cr, t0).await.of(cluster)?;
    apply_sync(c, &cl, &cr).await;
    // The old primary comes back as a replica of the new one.
    let mut old_row = c
        .db(|s| s.instances(cluster))
        .map_err(|e| Failure::Store(e.message))
        .of(cluster)?
        .into_iter()
        .find(|i| i.name == old)
        .ok_or("the old primary vanished")
        .on(cluster, old)?;
    if old_row.desired == Desired::Running {
        if let Err(e) = rebuild_from(c, &cl, &mut old_row, &cand, &cr).await {
            old_row.state = Phase::Failed;
            c.save(&old_row);
            c.event(
                cluster,
                Some(old),
                Level::Error,
                format!(
                    "could not rebuild as a replica: {}; `shoal cluster rebuild {cluster} {old}` \
                     retries",
                    e.failure
                ),
            );
        }
        apply_sync(c, &cl, &cr).await;
    }
    c.refresh_routes(cluster).await;
    c.event(
        cluster,
        None,
        Level::Info,
        format!("failover from {old} to {} done in {}", cand.name, since(t0)),
    );
    Ok(())
}

/// The replica to promote after `old` failed, by fresh probes.
async fn choose(
    c: &Controller,
    cl: &ClusterRow,
    old: &InstanceRow,
    all: &[InstanceRow],
    cr: &Credentials,
    t0: Instant,
) -> Result<String, String> {
    let replicas: Vec<&InstanceRow> = all
        .iter()
        .filter(|i| i.name != old.name && i.desired == Desired::Running)
        .collect();
    let mut answered = Vec::new();
    let mut why = Vec::new();
    for r in &replicas {
        let mut r = (*r).clone();
        if !(r.state == Phase::Running && c.nodes.alive(&r)) {
            why.push(format!("{} is {}", r.name, r.state));
            continue;
        }
        match c.probe_once(cl, &mut r, all, cr).await {
            Ok(rep) if rep.health != wit::Health::Unhealthy => {
                c.save(&r);
                answered.push(r);
            }
            Ok(rep) => why.push(format!("{} is unhealthy: {}", r.name, rep.detail)),
            Err(e) => why.push(format!("{}: {e}", r.name)),
        }
    }
    let sync = cl.spec.ha.mode == ReplicationMode::Sync;
    let rules = crate::primary_replica::Rules {
        sync,
        sync_quorum: cl.spec.ha.sync_quorum,
        may_fall_back: c
            .addon(&cl.engine)
            .map(|a| a.manifest().sync_replication == wit::SyncSupport::MayFallBack)
            .unwrap_or(true),
        max_lag: quantity::parse_bytes("ha.max-lag-on-failover", &cl.spec.ha.max_lag_on_failover)?,
    };
    let seen: Vec<crate::primary_replica::Answered> = answered
        .iter()
        .map(|r| crate::primary_replica::Answered {
            name: &r.name,
            ordinal: r.ordinal,
            position: r.position,
            lag_bytes: r.lag_bytes,
        })
        .collect();
    let choice = crate::primary_replica::choose(&seen, replicas.len(), old.position, rules, &why)
        .map_err(|e| {
        if e.contains("bytes behind") {
            format!(
                "{e} (max-lag-on-failover {})",
                cl.spec.ha.max_lag_on_failover
            )
        } else {
            e
        }
    })?;
    if let Some(lag) = choice.lag {
        // Asynchronous replication, or synchronous replication that may have fallen back
        // to asynchronous: no quorum guarantee, so the candidate was held to the lag limit.
        c.event(
            &cl.name,
            Some(&choice.name),
            Level::Info,
            format!(
                "candidate: {} bytes behind the old primary's last probe ({}: commits \
                 after it may be lost) (+{})",
                lag,
                if sync {
                    "synchronous replication may have fallen back to asynchronous"
                } else {
                    "async mode"
                },
                since(t0)
            ),
        );
    }
    Ok(choice.name)
}

/// Planned switchover from `from` to `to`.
pub(crate) async fn switchover(
    c: &Arc<Controller>,
    cluster: &str,
    from: &str,
    to: &str,
) -> Result<(), ControlError> {
    let t0 = Instant::now();
    let (cl, all, cr) = rows(c, cluster)?;
    let mut old = all
        .iter()
        .find(|i| i.name == from && i.role == Role::Primary)
        .cloned()
        .ok_or("no longer the primary; nothing switched")
        .on(cluster, from)?;
    let mut cand = all
        .iter()
        .find(|i| i.name == to)
        .cloned()
        .ok_or("no longer part of the cluster")
        .on(cluster, to)?;
    // Fresh look at both before touching anything.
    c.probe_once(&cl, &mut old, &all, &cr).await?;
    c.probe_once(&cl, &mut cand, &all, &cr).await?;
    check_candidate(&cl, &old, &cand).on(cluster, to)?;
    // 1. Fence the primary: read-only, following the candidate from its next start.
    c.hooks(&cl, &old, &all, &cr)
        .on(cluster, from)?
        .with_dirs()
        .demote(Some(&cand))
        .await
        .map_err(|e| {
            ControlError::on(
                cluster,
                from,
                Failure::Hook {
                    hook: "demote",
                    source: e,
                },
            )
        })?;
    // 2. No new writes through the endpoint; sessions ended; candidate caught up.
    let mut fenced = old.clone();
    fenced.state = Phase::Switching;
    c.save(&fenced);
    c.refresh_routes(cluster).await;
    // (An engine without the hook has nothing to wait for: `Ran::Unsupported`.)
    if let Err(e) = c
        .hooks(&cl, &old, &all, &cr)
        .on(cluster, from)?
        .switchover(&cand)
        .await
    {
        fenced.state = Phase::Running;
        c.save(&fenced);
        // Lift the fence: the old primary stays the primary.
        let leader = leader_named(c, cluster).await.ok().flatten();
        let term = leader.map(|l| l.term).unwrap_or(0);
        let _ = promote(c, &cl, &mut old.clone(), term, &cr).await;
        c.refresh_routes(cluster).await;
        return Err(ControlError::on(
            cluster,
            from,
            Failure::Hook {
                hook: "switchover (refused)",
                source: e,
            },
        ));
    }
    c.event(
        cluster,
        Some(from),
        Level::Info,
        format!("writes stopped, {to} caught up (+{})", since(t0)),
    );
    // 3. Stop the old primary cleanly (its last WAL reaches the candidate).
    c.stop_process(&cl, &mut fenced, &cr).await?;
    // 4. Elect and promote.
    let new = elect(c, cluster, from, to).await.of(cluster)?;
    fenced.role = Role::Replica;
    fenced.state = Phase::Fenced;
    c.save(&fenced);
    cand.role = Role::Primary;
    c.save(&cand);
    promote(c, &cl, &mut cand, new.term, &cr).await?;
    c.refresh_routes(cluster).await;
    c.event(
        cluster,
        Some(to),
        Level::Info,
        format!(
            "primary in term {}; writes were unavailable for {}",
            new.term,
            since(t0)
        ),
    );
    repoint(c, &cl, &cand, &cr, t0).await.of(cluster)?;
    apply_sync(c, &cl, &cr).await;
    rebuild_from(c, &cl, &mut fenced, &cand, &cr).await?;
    apply_sync(c, &cl, &cr).await;
    c.refresh_routes(cluster).await;
    c.event(
        cluster,
        None,
        Level::Info,
        format!("switchover from {from} to {to} done in {}", since(t0)),
    );
    Ok(())
}

/// A switchover from `from` to `to` that a previous host left unfinished. When the
/// coordination store already names `to` the leader, finish it (promote, re-point, rebuild
/// the old primary); otherwise `from` is still the leader: put it back as the writable
/// primary (started if it was stopped, its fence lifted) and switch over again.
pub(crate) async fn resume_switchover(
    c: &Arc<Controller>,
    cluster: &str,
    from: &str,
    to: &str,
) -> Result<(), ControlError> {
    let t0 = Instant::now();
    let (cl, all, cr) = rows(c, cluster)?;
    let leader = leader_named(c, cluster).await.of(cluster)?;
    let find = |all: &[InstanceRow], n: &str| {
        all.iter()
            .find(|i| i.name == n)
            .cloned()
            .ok_or("no longer part of the cluster")
            .on(cluster, n)
    };
    if let Some(l) = leader.as_ref().filter(|l| l.holder == to) {
        let mut cand = find(&all, to)?;
        cand.role = Role::Primary;
        c.save(&cand);
        promote(c, &cl, &mut cand, l.term, &cr).await?;
        c.refresh_routes(cluster).await;
        repoint(c, &cl, &cand, &cr, t0).await.of(cluster)?;
        apply_sync(c, &cl, &cr).await;
        let all = c
            .db(|s| s.instances(cluster))
            .map_err(|e| Failure::Store(e.message))
            .of(cluster)?;
        let mut old = find(&all, from)?;
        let serving = old.state == Phase::Running && c.nodes.alive(&old);
        if old.role != Role::Replica || !serving {
            old.role = Role::Replica;
            c.save(&old);
            rebuild_from(c, &cl, &mut old, &cand, &cr).await?;
        }
        c.refresh_routes(cluster).await;
        c.event(
            cluster,
            None,
            Level::Info,
            format!("the interrupted switchover from {from} to {to} is finished ({to} leads in term {})", l.term),
        );
        return Ok(());
    }
    let mut old = find(&all, from)?;
    old.role = Role::Primary;
    if c.nodes.alive(&old) {
        old.state = Phase::Running;
        c.save(&old);
    } else {
        old.process = None;
        c.save(&old);
        c.bring_up(&cl, &mut old, &all, &cr).await?;
    }
    let term = leader.map(|l| l.term).unwrap_or(0);
    promote(c, &cl, &mut old, term, &cr).await?;
    c.refresh_routes(cluster).await;
    c.event(
        cluster,
        Some(from),
        Level::Warning,
        format!(
            "the interrupted switchover left {from} fenced or stopped; it is the writable \
             primary again; switching over to {to} again"
        ),
    );
    switchover(c, cluster, from, to).await
}

/// Forced rebuild of a replica.
pub(crate) async fn rebuild(
    c: &Arc<Controller>,
    cluster: &str,
    instance: &str,
) -> Result<(), ControlError> {
    let (cl, all, cr) = rows(c, cluster)?;
    let addon = c.addon(&cl.engine).map_err(|e| e.message).of(cluster)?;
    if cl.spec.shards.is_some() {
        return crate::ops::replace_shard_member(c, &cl, instance, &cr).await;
    }
    if crate::topology::family(addon.manifest()) == crate::topology::Family::Quorum {
        return crate::ops::replace_member(c, &cl, instance, &cr).await;
    }
    let primary = all
        .iter()
        .find(|i| i.role == Role::Primary && i.state == Phase::Running)
        .cloned()
        .ok_or("the cluster has no running primary")
        .of(cluster)?;
    let mut i = all
        .iter()
        .find(|i| i.name == instance)
        .cloned()
        .ok_or("no longer part of the cluster")
        .on(cluster, instance)?;
    if i.role == Role::Primary {
        return Err(ControlError::on(
            cluster,
            instance,
            "became the primary; not rebuilding it",
        ));
    }
    c.refresh_routes(cluster).await;
    rebuild_from(c, &cl, &mut i, &primary, &cr).await?;
    // Its slot on the primary (member-join is idempotent).
    repoint(c, &cl, &primary, &cr, Instant::now())
        .await
        .of(cluster)?;
    apply_sync(c, &cl, &cr).await;
    c.refresh_routes(cluster).await;
    Ok(())
}

/// Renew the leader lease of the healthy primary `holder`, electing it at term 1 the first
/// time. A conflict (the store names another leader) is returned for reconciliation.
pub(crate) async fn keep_leader(
    c: &Controller,
    cluster: &str,
    holder: &str,
) -> Result<Leader, DcsError> {
    c.dcs.keep_leader(cluster, holder, ttl(c)).await
}
