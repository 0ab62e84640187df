//! Operations: create, scale, stop, start, restart and delete, each run to the end or to a
//! failure with a reason, one at a time per cluster (in the order they were asked for), every
//! step recorded as an event.

use std::sync::Arc;

use shoal_api::OpState;

use shoal_dcs::Coordinator;

use crate::controller::Controller;
use crate::error::{At, ControlError, Failure};
use crate::events::Level;
use crate::hooks::Ran;
use crate::operation::Op;
use crate::primary_replica::{self, Sequence};
use crate::secrets::{self, Credentials};
use crate::store::{ClusterRow, ClusterState, Desired, Health, InstanceRow, Phase, Role};
use crate::topology::{self, Family};

/// Run operation `id` (waits for the cluster's earlier operations first).
pub async fn run(c: Arc<Controller>, id: i64) {
    let Ok(op) = c.op_view(id) else { return };
    let lock = c.lock(&op.cluster);
    let _guard = lock.lock().await;
    if let Err(e) = c.db(|s| s.set_op(id, OpState::Running, None)) {
        tracing::error!("op {id}: {e}");
        return;
    }
    let params = c.db(|s| s.op_params(id)).unwrap_or_default();
    let typed = Op::from_stored(&op.kind, &params);
    let result: Result<(), ControlError> = match &typed {
        Err(e) => Err(ControlError::of(&op.cluster, e.clone())),
        Ok(Op::Create {
            restore,
            to_unix_ms,
        }) => {
            create(
                &c,
                &op.cluster,
                restore.as_deref().map(|id| (id, *to_unix_ms)),
            )
            .await
        }
        Ok(Op::Backup { .. }) => crate::backups::run_backup(&c, &op.cluster, &params).await,
        Ok(Op::Reconfigure(p)) => crate::reconfigure::run(&c, &op.cluster, p, id).await,
        Ok(Op::Scale { replicas }) => scale(&c, &op.cluster, *replicas).await,
        Ok(Op::Password {}) => crate::accounts::run(&c, &op.cluster).await,
        Ok(Op::Recover {}) => recover(&c, &op.cluster).await,
        Ok(Op::Stop {}) => stop(&c, &op.cluster).await,
        Ok(Op::Start {}) => start(&c, &op.cluster).await,
        Ok(Op::Restart {}) => restart(&c, &op.cluster).await,
        Ok(Op::Delete { purge }) => delete(&c, &op.cluster, *purge).await,
        Ok(Op::Failover { old, reason }) => crate::ha::failover(&c, &op.cluster, old, reason).await,
        Ok(Op::Switchover {
            from,
            to,
            resume: true,
        }) => crate::ha::resume_switchover(&c, &op.cluster, from, to).await,
        Ok(Op::Switchover { from, to, .. }) => {
            crate::ha::switchover(&c, &op.cluster, from, to).await
        }
        Ok(Op::Rebuild { instance }) => crate::ha::rebuild(&c, &op.cluster, instance).await,
    };
    c.refresh_routes(&op.cluster).await;
    match result {
        Ok(()) => {
            let _ = c.db(|s| s.set_op(id, OpState::Succeeded, None));
            c.event(
                &op.cluster,
                None,
                Level::Info,
                format!("{} succeeded", op.kind),
            );
        }
        Err(e) => {
            let reason = e.within_cluster();
            let _ = c.db(|s| s.set_op(id, OpState::Failed, Some(&reason)));
            // A failed HA operation leaves the cluster serving as well as it can; the
            // supervisor reports it degraded or running.
            // A failed reconfigure has put the previous configuration back.
            if !typed.as_ref().is_ok_and(Op::failure_keeps_cluster_state) {
                let _ = c.db(|s| s.set_cluster_state(&op.cluster, ClusterState::Failed));
            }
            c.event(
                &op.cluster,
                None,
                Level::Error,
                format!("{} failed: {reason}", op.kind),
            );
        }
    }
}

/// The stored row of cluster `name`, or an error naming it.
pub(crate) fn cluster(c: &Controller, name: &str) -> Result<ClusterRow, ControlError> {
    c.db(|s| s.cluster(name))
        .of(name)?
        .ok_or("it no longer exists")
        .of(name)
}

/// The stored instances of cluster `name`.
pub(crate) fn instances(c: &Controller, name: &str) -> Result<Vec<InstanceRow>, ControlError> {
    c.db(|s| s.instances(name)).of(name)
}

/// The platform account of cluster `name`.
pub(crate) fn creds(c: &Controller, name: &str) -> Result<Credentials, ControlError> {
    secrets::load(&c.home, name)
        .map_err(|e| format!("cannot read its credentials: {e}"))
        .of(name)
}

/// Allocate and record a new instance with the next ordinal.
fn add_instance(
    c: &Controller,
    cl: &ClusterRow,
    role: Role,
    shard: Option<u32>,
) -> Result<InstanceRow, ControlError> {
    let existing = instances(c, &cl.name)?;
    let ordinal = existing.iter().map(|i| i.ordinal + 1).max().unwrap_or(0);
    let addon = c.addon(&cl.engine).of(&cl.name)?;
    let names: Vec<String> = addon
        .manifest()
        .ports
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let names = if names.is_empty() {
        vec!["client".to_string()]
    } else {
        names
    };
    let range = c.cfg.port_range[0]..=c.cfg.port_range[1];
    let name = match shard {
        Some(n) => format!("{}-s{n}-{ordinal}", cl.name),
        None => format!("{}-{ordinal}", cl.name),
    };
    let mut row = InstanceRow::new(
        &cl.name,
        &name,
        ordinal,
        role,
        c.cluster_dir(&cl.name).join(&name),
    );
    row.shard = shard;
    // Allocate and reserve under one hold of the store: another cluster's operation cannot
    // take the same ports in between.
    let allocated = c
        .db(|s| {
            let reserved = s.reserved_ports()?;
            match shoal_local::ports::allocate(&range, &reserved, names.len()) {
                Ok(ports) => {
                    row.ports = names.iter().cloned().zip(ports).collect();
                    s.insert_instance(&row)?;
                    Ok(Ok(()))
                }
                Err(e) => Ok(Err(e.to_string())),
            }
        })
        .of(&cl.name)?;
    allocated.on(&cl.name, &name)?;
    c.event(
        &cl.name,
        Some(&name),
        Level::Info,
        format!("allocated as {role}, ports {:?}", row.ports),
    );
    Ok(row)
}

/// Add one replica: the primary admits it (member-join), then it is seeded and started.
async fn add_replica(
    c: &Controller,
    cl: &ClusterRow,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let mut row = add_instance(c, cl, Role::Replica, None)?;
    let all = instances(c, &cl.name)?;
    let primary = all
        .iter()
        .find(|i| i.role == Role::Primary)
        .ok_or("the cluster has no primary to add a replica to")
        .of(&cl.name)?
        .clone();
    c.hooks(cl, &primary, &all, cr)
        .of(&cl.name)?
        .member_join(&row)
        .await
        .map_err(Failure::hook("member-join"))
        .on(&cl.name, &primary.name)?;
    c.bring_up(cl, &mut row, &all, cr).await
}

/// Run `step` as a step of operation `parent` (which holds the cluster): recorded as an
/// operation of its own that names its parent, with its events (`shoal cluster events`), so
/// that what a roll did is on record as what it was. Steps never show as a cluster's last
/// operation and are settled with their parent after a host restart. Only steps that run no
/// steps themselves: a switchover.
pub(crate) async fn run_step(
    c: &Arc<Controller>,
    cluster: &str,
    parent: i64,
    step: Op,
) -> Result<(), ControlError> {
    let id = c
        .db(|s| s.insert_step(cluster, step.kind(), &step.params(), parent))
        .of(cluster)?;
    c.event(
        cluster,
        None,
        Level::Info,
        format!("{} (op {id}) started as a step of op {parent}", step.kind()),
    );
    let result = match &step {
        Op::Switchover { from, to, .. } => crate::ha::switchover(c, cluster, from, to).await,
        other => Err(ControlError::of(
            cluster,
            format!("{} cannot run as a step", other.kind()),
        )),
    };
    match &result {
        Ok(()) => {
            let _ = c.db(|s| s.set_op(id, OpState::Succeeded, None));
            c.event(
                cluster,
                None,
                Level::Info,
                format!("{} (op {id}) succeeded", step.kind()),
            );
        }
        Err(e) => {
            let reason = e.within_cluster();
            let _ = c.db(|s| s.set_op(id, OpState::Failed, Some(&reason)));
            c.event(
                cluster,
                None,
                Level::Error,
                format!("{} (op {id}) failed: {reason}", step.kind()),
            );
        }
    }
    result
}

/// Create cluster `name`; `restore`: from this backup (and up to this moment of its cluster's
/// archive).
async fn create(
    c: &Arc<Controller>,
    name: &str,
    restore: Option<(&str, Option<i64>)>,
) -> Result<(), ControlError> {
    let cl = cluster(c, name)?;
    let addon = c.addon(&cl.engine).of(name)?;
    // A create resumed after a host restart keeps the secrets it generated.
    let all_secrets = match secrets::load_all(&c.home, name) {
        Ok(s) => s,
        Err(_) => {
            let admin = addon.manifest().admin_user.as_deref().unwrap_or("admin");
            let s = secrets::ClusterSecrets::generate(admin)
                .map_err(|e| format!("cannot generate passwords: {e}"))
                .of(name)?;
            secrets::save(&c.home, name, &s)
                .map_err(|e| format!("cannot store credentials: {e}"))
                .of(name)?;
            s
        }
    };
    let cr = all_secrets.platform().clone();
    c.prepare_cluster_dir(&cl).of(name)?;
    if let Some(shards) = cl.spec.shards {
        create_sharded(c, &cl, &cr, shards, restore.map(|(id, _)| id)).await?;
        c.db(|s| s.set_cluster_state(name, ClusterState::Running))
            .of(name)?;
        return Ok(());
    }
    if topology::family(addon.manifest()) == Family::Quorum {
        if let Some((id, _)) = restore {
            if crate::backups::restores_before_start(c, id).of(name)? {
                create_quorum_from_copy(c, &cl, all_secrets, id).await?;
                c.db(|s| s.set_cluster_state(name, ClusterState::Running))
                    .of(name)?;
                return Ok(());
            }
        }
        create_quorum(c, &cl, &cr).await?;
        if let Some((id, _)) = restore {
            let all = instances(c, name)?;
            let leader = topology::state_of(&all)
                .and_then(|q| q.leader)
                .and_then(|l| all.iter().find(|i| i.name == l))
                .ok_or("the new quorum has no leader to restore into")
                .of(name)?;
            crate::backups::restore_into(c, &cl, leader, &cr, id, None, None)
                .await
                .on(name, &leader.name)?;
        }
        c.db(|s| s.set_cluster_state(name, ClusterState::Running))
            .of(name)?;
        return Ok(());
    }
    let mut primary = add_instance(c, &cl, Role::Primary, None)?;
    let before_start = match restore {
        Some((id, _)) => crate::backups::restores_before_start(c, id).of(name)?,
        None => false,
    };
    if let (Some((id, to)), true) = (restore, before_start) {
        // A physical copy goes into the empty data directory; the server then starts on it.
        c.prepare_dirs(&cl, &primary)?;
        if let Err(e) = crate::backups::restore_into(c, &cl, &primary, &cr, id, to, None).await {
            // Never start anything on a failed restore (the supervisor skips failed
            // instances).
            primary.state = Phase::Failed;
            c.save(&primary);
            return Err(ControlError::on(name, &primary.name, e));
        }
    }
    let all = instances(c, name)?;
    c.bring_up(&cl, &mut primary, &all, &cr).await?;
    if let (Some((id, _)), false) = (restore, before_start) {
        // A logical dump goes into the running server.
        if let Err(e) = crate::backups::restore_into(c, &cl, &primary, &cr, id, None, None).await {
            let _ = c.stop_process(&cl, &mut primary, &cr).await;
            primary.state = Phase::Failed;
            c.save(&primary);
            return Err(ControlError::on(name, &primary.name, e));
        }
    }
    crate::ha::failpoint("create-primary-up").await;
    let all = instances(c, name)?;
    let ran = c
        .hooks(&cl, &primary, &all, &cr)
        .of(name)?
        .post_provision()
        .await
        .map_err(Failure::hook("post-provision"))
        .on(name, &primary.name)?;
    if ran == Ran::Yes {
        c.event(
            name,
            Some(&primary.name),
            Level::Info,
            "post-provision done",
        );
    }
    for _ in 1..cl.spec.replicas {
        add_replica(c, &cl, &cr).await?;
    }
    // The first leader, at term 1.
    if let Err(e) = crate::ha::keep_leader(c, name, &primary.name).await {
        return Err(ControlError::on(
            name,
            &primary.name,
            format!("cannot record the leader in the coordination store: {e}"),
        ));
    }
    crate::ha::apply_sync(c, &cl, &cr).await;
    c.db(|s| s.set_cluster_state(name, ClusterState::Running))
        .of(name)?;
    Ok(())
}

/// Change a quorum's member count one member at a time ([`topology::plan_scale`], planned
/// again from fresh probes), every member healthy with one leader between steps; the spec
/// follows each step, so an interruption leaves it true.
async fn scale_quorum(
    c: &Arc<Controller>,
    mut cl: ClusterRow,
    cr: &Credentials,
    target: u32,
) -> Result<(), ControlError> {
    let addon = c.addon(&cl.engine).of(&cl.name)?.clone();
    let q = topology::quorum_topology(addon.manifest())
        .ok_or("a quorum engine without a quorum topology")
        .of(&cl.name)?
        .clone();
    // Members an interrupted scale left half made never ran: they leave and go.
    for broken in instances(c, &cl.name)?
        .into_iter()
        .filter(|i| matches!(i.state, Phase::Pending | Phase::Initializing))
    {
        c.event(
            &cl.name,
            Some(&broken.name),
            Level::Warning,
            "left half made by an interrupted operation; removing it",
        );
        remove_instance(c, &cl, broken, cr).await?;
    }
    let all = probed(c, &cl, cr).await?;
    let (steps, notes) = topology::plan_scale(
        &cl.engine,
        &topology::voters(&*c.nodes, &all),
        target,
        q.min_members,
        q.max_members,
    )
    .of(&cl.name)?;
    for note in notes {
        c.event(&cl.name, None, Level::Warning, note);
    }
    for step in steps {
        match step {
            topology::Step::Add => {
                let mut row = add_instance(c, &cl, Role::Member, None)?;
                membership(c, &cl, &row, cr, true).await?;
                c.event(
                    &cl.name,
                    Some(&row.name),
                    Level::Info,
                    "admitted to the membership",
                );
                let all = instances(c, &cl.name)?;
                c.bring_up(&cl, &mut row, &all, cr).await?;
                // Again now that it runs (idempotent): an engine that admits only a running
                // member (ZooKeeper growing from one voter) does it now.
                membership(c, &cl, &row, cr, true).await?;
                crate::ha::failpoint("scale-added").await;
            }
            topology::Step::Remove(name) => {
                let v = instances(c, &cl.name)?
                    .into_iter()
                    .find(|i| i.name == name)
                    .ok_or_else(|| format!("{name} vanished"))
                    .of(&cl.name)?;
                remove_instance(c, &cl, v, cr).await?;
            }
        }
        let all = wait_quorum(c, &cl, cr).await?;
        cl.spec.replicas = all.len() as u32;
        c.db(|s| s.set_cluster_spec(&cl.name, &cl.spec))
            .of(&cl.name)?;
    }
    c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Running))
        .of(&cl.name)?;
    Ok(())
}

/// Replace quorum member `name`: out of the membership (committed by the others), stopped,
/// its data set aside (`data.before-rebuild`), admitted again and started on empty data (the
/// engine copies it from the others), then every member healthy with a leader.
pub(crate) async fn replace_member(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    name: &str,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let all = probed(c, cl, cr).await?;
    topology::check_replace(&topology::voters(&*c.nodes, &all), name).on(&cl.name, name)?;
    let mut v = all
        .iter()
        .find(|i| i.name == name)
        .cloned()
        .ok_or_else(|| format!("{name} is no longer part of {}", cl.name))
        .of(&cl.name)?;
    c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Updating))
        .of(&cl.name)?;
    membership(c, cl, &v, cr, false).await?;
    c.event(
        &cl.name,
        Some(name),
        Level::Info,
        "left the membership to be replaced",
    );
    c.stop_process(cl, &mut v, cr).await?;
    crate::ha::set_aside(&v).on(&cl.name, name)?;
    membership(c, cl, &v, cr, true).await?;
    c.event(
        &cl.name,
        Some(name),
        Level::Info,
        "admitted again with empty data (the old copy is in data.before-rebuild)",
    );
    v.desired = Desired::Running;
    let all = instances(c, &cl.name)?;
    c.bring_up(cl, &mut v, &all, cr).await?;
    membership(c, cl, &v, cr, true).await?;
    wait_quorum(c, cl, cr).await?;
    c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Running))
        .of(&cl.name)?;
    Ok(())
}

/// Probe every running member now (the supervisor leaves a cluster alone while an operation
/// runs) and store what each said; the fresh rows.
async fn probed(
    c: &Controller,
    cl: &ClusterRow,
    cr: &Credentials,
) -> Result<Vec<InstanceRow>, ControlError> {
    let all = instances(c, &cl.name)?;
    for mut i in all.clone() {
        if i.state != Phase::Running || !c.nodes.alive(&i) {
            continue;
        }
        if let Err(e) = c.probe_once(cl, &mut i, &all, cr).await {
            i.health = Health::Unhealthy;
            i.detail = e.failure.to_string();
            c.observe(&i);
        }
    }
    instances(c, &cl.name)
}

/// Wait until every member of the quorum is healthy and one leads (at most 60 s).
async fn wait_quorum(
    c: &Controller,
    cl: &ClusterRow,
    cr: &Credentials,
) -> Result<Vec<InstanceRow>, ControlError> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let all = probed(c, cl, cr).await?;
        let state = topology::state_of(&all);
        if let Some(q) = &state {
            if q.healthy == q.members && q.leader.is_some() {
                return Ok(all);
            }
        }
        if std::time::Instant::now() >= until {
            return Err(ControlError::of(
                &cl.name,
                format!(
                    "the quorum did not settle within 60 s: {}",
                    state.map(|q| q.to_string()).unwrap_or_default()
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Create a quorum: every member allocated first (each starts knowing all the others), all
/// started together (no member can elect a leader alone), then `post-provision` once on the
/// member that leads. The host records no leader: the engine elects it, and the probes say
/// who it is.
async fn create_quorum(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let mut rows = Vec::new();
    for _ in 0..cl.spec.replicas {
        rows.push(add_instance(c, cl, Role::Member, None)?);
    }
    let all = instances(c, &cl.name)?;
    for (_, result) in bring_up_together(c, cl, rows, &all, cr).await {
        result?;
    }
    crate::ha::failpoint("create-primary-up").await;
    post_provision_once(c, cl, cr).await
}

/// Create a quorum from physical backup `id`: every member allocated, the backup restored
/// into every member's empty data directory (the addon's `restore`, given the whole
/// membership) before any starts, then all started together as one cluster. A restore that
/// fails on any member starts none (its data set aside as [`crate::backups::restore_into`]
/// does). A physical copy carries the source's accounts, so the members first run with the
/// source's platform account (kept with the backup, and saved as the cluster's meanwhile);
/// once one leads, the platform account gets this cluster's own password
/// (`account-provision` of the platform account), the secrets are saved with it, and the
/// admin account and `post-provision` follow as at any create.
async fn create_quorum_from_copy(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    mut own: secrets::ClusterSecrets,
    id: &str,
) -> Result<(), ControlError> {
    let source = crate::backups::kept_source_account(c, id).of(&cl.name)?;
    // The cluster's own platform account (a create resumed after the switch to the source's
    // gets a fresh one).
    let platform = match own.platform.clone() {
        Some(p) if p != source => p,
        _ => Credentials {
            user: secrets::PLATFORM_USER.into(),
            password: secrets::generate_password()
                .map_err(|e| format!("cannot generate passwords: {e}"))
                .of(&cl.name)?,
        },
    };
    let mut running = own.clone();
    running.platform = Some(source.clone());
    secrets::save(&c.home, &cl.name, &running)
        .map_err(|e| format!("cannot store credentials: {e}"))
        .of(&cl.name)?;
    for _ in 0..cl.spec.replicas {
        add_instance(c, cl, Role::Member, None)?;
    }
    let all = instances(c, &cl.name)?;
    for i in &all {
        c.prepare_dirs(cl, i)?;
    }
    for i in &all {
        if let Err(e) = crate::backups::restore_into(c, cl, i, &source, id, None, None).await {
            // Nothing starts on a partial restore (the supervisor skips failed members).
            for mut m in all.clone() {
                m.state = Phase::Failed;
                c.save(&m);
            }
            return Err(ControlError::on(
                &cl.name,
                &i.name,
                format!("{e}; no member was started"),
            ));
        }
    }
    for (_, result) in bring_up_together(c, cl, all.clone(), &all, &source).await {
        result?;
    }
    crate::ha::failpoint("create-primary-up").await;
    let all = wait_quorum(c, cl, &source).await?;
    let leader = all
        .iter()
        .find(|i| i.writable == Some(true))
        .ok_or("the restored quorum has no leader")
        .of(&cl.name)?;
    c.provision_account(cl, leader, &all, &source, &platform)
        .await
        .map_err(|e| {
            format!(
                "giving the restored platform account its own password: {}",
                e.failure
            )
        })
        .on(&cl.name, &leader.name)?;
    own.platform = Some(platform.clone());
    secrets::save(&c.home, &cl.name, &own)
        .map_err(|e| {
            format!("cannot store credentials (the platform account already changed): {e}")
        })
        .of(&cl.name)?;
    c.event(
        &cl.name,
        Some(&leader.name),
        Level::Info,
        format!(
            "the platform account restored from backup {id} (the source's) has this \
             cluster's own password now"
        ),
    );
    c.provision_admin(cl, leader, &all, &platform).await?;
    post_provision_once(c, cl, &platform).await
}

/// `post-provision` once, on a member that takes writes (else the first): for clusters
/// whose engine elects its leaders.
async fn post_provision_once(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let all = instances(c, &cl.name)?;
    let first = all
        .iter()
        .find(|i| i.writable == Some(true))
        .or_else(|| all.first())
        .ok_or("the cluster has no members")
        .of(&cl.name)?;
    let ran = c
        .hooks(cl, first, &all, cr)
        .of(&cl.name)?
        .post_provision()
        .await
        .map_err(Failure::hook("post-provision"))
        .on(&cl.name, &first.name)?;
    if ran == Ran::Yes {
        c.event(
            &cl.name,
            Some(&first.name),
            Level::Info,
            "post-provision done",
        );
    }
    Ok(())
}

/// Recover a lost quorum: every member stopped; the most advanced one (the highest change-log
/// position its probes reported; on a tie, one that answered last) started alone by the addon's
/// `recover-quorum` plan until healthy, then stopped and started normally; the others' data
/// set aside (`<member>.before-recovery-<ms>`) and their rows removed; then the quorum grown back to
/// its size one member at a time (`member-join`, fresh data).
async fn recover(c: &Arc<Controller>, name: &str) -> Result<(), ControlError> {
    let cl = cluster(c, name)?;
    let cr = creds(c, name)?;
    let addon = c.addon(&cl.engine).of(name)?.clone();
    let size = cl.spec.replicas;
    let asked = crate::store::now_ms();
    let all = probed(c, &cl, &cr).await?;
    let alive = |i: &InstanceRow| c.nodes.alive(i);
    let candidates: Vec<topology::Survivor> = all
        .iter()
        .filter(|i| !crate::node::is_empty(&i.data_dir()))
        .map(|i| topology::Survivor {
            name: &i.name,
            position: i.position.unwrap_or(0),
            answered: i.probed_ms.is_some_and(|t| t >= asked),
            healthy: i.health == Health::Healthy,
            alive: alive(i),
            ordinal: i.ordinal,
        })
        .collect();
    let chosen = topology::pick_survivor(&candidates)
        .ok_or("no member has data to recover from")
        .of(name)?
        .to_string();
    let survivor = all
        .iter()
        .find(|i| i.name == chosen)
        .cloned()
        .ok_or("the survivor vanished")
        .of(name)?;
    c.event(
        name,
        Some(&survivor.name),
        Level::Warning,
        format!(
            "recovering the quorum from {} (position {}): it restarts alone as a new cluster",
            survivor.name,
            survivor.position.unwrap_or(0)
        ),
    );
    // All at once: a frozen member takes its whole stop timeout to go.
    let mut stops = tokio::task::JoinSet::new();
    for mut i in all.iter().filter(|i| alive(i)).cloned() {
        let (c, cl, cr) = (c.clone(), cl.clone(), cr.clone());
        stops.spawn(async move { c.stop_process(&cl, &mut i, &cr).await });
    }
    while let Some(done) = stops.join_next().await {
        done.map_err(|e| format!("stopping a member: {e}"))
            .of(name)??;
    }
    let mut s = instances(c, name)?
        .into_iter()
        .find(|i| i.name == survivor.name)
        .ok_or("the survivor vanished")
        .of(name)?;
    let plan = addon
        .call(&shoal_runtime::CallContext::default())
        .recover_quorum(
            &c.wit_instance(&cl, &s, &cr, true),
            &c.params_of(&cl).of(name)?,
        )
        .await
        .map_err(|e| {
            if e.is_unsupported() {
                Failure::Other(format!("{} has no way to recover a lost quorum", cl.engine))
            } else {
                Failure::hook("recover-quorum")(e)
            }
        })
        .on(name, &s.name)?;
    s.desired = Desired::Running;
    let alone = vec![s.clone()];
    c.bring_up_plan(&cl, &mut s, &alone, &cr, plan).await?;
    c.event(
        name,
        Some(&s.name),
        Level::Info,
        "running alone as a new one-member cluster",
    );
    c.stop_process(&cl, &mut s, &cr).await?;
    for mut lost in all.into_iter().filter(|i| i.name != survivor.name) {
        let data = lost.data_dir();
        // Beside the members (a new member may take the name later), never over an
        // earlier recovery's copy.
        let aside = lost.dir.with_file_name(format!(
            "{}.before-recovery-{}",
            lost.name,
            crate::store::now_ms()
        ));
        lost.desired = Desired::Stopped;
        c.save(&lost);
        if data.exists() && !crate::node::is_empty(&data) {
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(&data, &aside)
                .map_err(|source| Failure::Io {
                    path: data.clone(),
                    source,
                })
                .on(name, &lost.name)?;
        }
        c.db(|st| st.delete_instance(name, &lost.name)).of(name)?;
        let _ = std::fs::remove_dir_all(&lost.dir);
        c.event(
            name,
            Some(&lost.name),
            Level::Warning,
            format!(
                "dropped from the quorum; its data is in {}",
                aside.display()
            ),
        );
    }
    let all = instances(c, name)?;
    c.bring_up(&cl, &mut s, &all, &cr).await?;
    let mut cl = cl;
    cl.spec.replicas = 1;
    scale_quorum(c, cl, &cr, size).await
}

/// Create a sharded cluster: every member of every shard allocated (`replicas` per shard;
/// with `restore`, each shard's first member given its shard's part of the backup before it
/// starts), all started together, then made one engine cluster by `form-shards`, and
/// `post-provision` once.
async fn create_sharded(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    cr: &Credentials,
    shards: u32,
    restore: Option<&str>,
) -> Result<(), ControlError> {
    if let Some(id) = restore {
        crate::backups::check_shard_parts(c, id, shards).of(&cl.name)?;
    }
    // A create resumed after a host restart keeps the members it already allocated.
    let mut have = instances(c, &cl.name)?;
    for shard in 0..shards {
        let present = have.iter().filter(|i| i.shard == Some(shard)).count() as u32;
        for _ in present..cl.spec.replicas {
            add_instance(c, cl, Role::ShardMember, Some(shard))?;
        }
    }
    have = instances(c, &cl.name)?;
    if let Some(id) = restore {
        for shard in 0..shards {
            let Some(first) = have.iter().find(|i| i.shard == Some(shard)) else {
                continue;
            };
            if first.process.is_some() || !crate::node::is_empty(&first.data_dir()) {
                continue; // restored before an interruption
            }
            let mut first = first.clone();
            c.prepare_dirs(cl, &first)?;
            if let Err(e) =
                crate::backups::restore_into(c, cl, &first, cr, id, None, Some(shard)).await
            {
                first.state = Phase::Failed;
                c.save(&first);
                return Err(ControlError::on(&cl.name, &first.name, e));
            }
        }
    }
    let down: Vec<InstanceRow> = have.iter().filter(|i| !c.nodes.alive(i)).cloned().collect();
    for (_, result) in bring_up_together(c, cl, down, &have, cr).await {
        result?;
    }
    crate::ha::failpoint("create-primary-up").await;
    form_shards(c, cl, cr).await?;
    post_provision_once(c, cl, cr).await
}

/// Make one engine cluster of a sharded cluster's running members (`form-shards` on one of
/// them, retried while the engine says to try again), then wait until every shard has a
/// healthy primary and every member is healthy (at most 60 s).
pub(crate) async fn form_shards(
    c: &Controller,
    cl: &ClusterRow,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let mut waits = MEMBERSHIP_RETRIES.iter();
    loop {
        let all = probed(c, cl, cr).await?;
        let on = all
            .iter()
            .filter(|i| i.state == Phase::Running && c.nodes.alive(i))
            .min_by_key(|i| (i.writable != Some(true), i.ordinal))
            .ok_or("form-shards: no running member to ask")
            .of(&cl.name)?;
        match c.hooks(cl, on, &all, cr).of(&cl.name)?.form_shards().await {
            Ok(Ran::Yes) => {
                c.event(&cl.name, Some(&on.name), Level::Info, "shards formed");
                break;
            }
            Ok(Ran::Unsupported) => {
                return Err(ControlError::of(
                    &cl.name,
                    format!(
                        "{} declares a sharded topology but has no form-shards hook",
                        cl.engine
                    ),
                ))
            }
            Err(e) if e.is_retryable() && waits.len() > 0 => {
                let wait = waits.next().copied().unwrap_or(1);
                c.event(
                    &cl.name,
                    Some(&on.name),
                    Level::Info,
                    format!("form-shards: {e}; again in {wait} s"),
                );
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            }
            Err(e) => {
                return Err(ControlError::on(
                    &cl.name,
                    &on.name,
                    Failure::hook("form-shards")(e),
                ))
            }
        }
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let all = probed(c, cl, cr).await?;
        let states = crate::sharded::state_of(&*c.nodes, &all).unwrap_or_default();
        let (line, whole) = crate::sharded::summary(&states);
        if whole && states.iter().all(|s| s.healthy == s.members) {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(ControlError::of(
                &cl.name,
                format!("the shards did not settle within 60 s: {line}"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Give every shard `replicas` members ([`crate::sharded::plan_resize`]): new members start
/// empty and are made copies of their shard's primary by `form-shards`; removed ones (never
/// a primary) are stopped and forgotten by the engine cluster.
async fn scale_sharded(
    c: &Arc<Controller>,
    mut cl: ClusterRow,
    cr: &Credentials,
    replicas: u32,
) -> Result<(), ControlError> {
    let addon = c.addon(&cl.engine).of(&cl.name)?.clone();
    let t = topology::sharded_topology(addon.manifest())
        .ok_or("a sharded cluster's addon has no sharded topology")
        .of(&cl.name)?;
    let all = probed(c, &cl, cr).await?;
    let steps = crate::sharded::plan_resize(
        &cl.engine,
        &crate::sharded::seen(&*c.nodes, &all),
        replicas,
        t.min_members,
        t.max_members,
    )
    .of(&cl.name)?;
    let mut added = Vec::new();
    for step in &steps {
        match step {
            crate::sharded::Step::Add(shard) => {
                added.push(add_instance(c, &cl, Role::ShardMember, Some(*shard))?);
            }
            crate::sharded::Step::Remove(victim) => {
                let Some(v) = instances(c, &cl.name)?
                    .into_iter()
                    .find(|i| &i.name == victim)
                else {
                    continue;
                };
                remove_instance(c, &cl, v, cr).await?;
            }
        }
    }
    if !added.is_empty() {
        let all = instances(c, &cl.name)?;
        for (_, result) in bring_up_together(c, &cl, added, &all, cr).await {
            result?;
        }
        form_shards(c, &cl, cr).await?;
    }
    cl.spec.replicas = replicas;
    c.db(|s| s.set_cluster_spec(&cl.name, &cl.spec))
        .of(&cl.name)?;
    c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Running))
        .of(&cl.name)?;
    Ok(())
}

/// Replace member `name` of a sharded cluster: stopped, forgotten by the engine cluster, its
/// data set aside, started empty and made a copy of its shard's primary by `form-shards`.
pub(crate) async fn replace_shard_member(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    name: &str,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let all = probed(c, cl, cr).await?;
    crate::sharded::check_replace(&crate::sharded::seen(&*c.nodes, &all), name)
        .on(&cl.name, name)?;
    let mut v = all
        .iter()
        .find(|i| i.name == name)
        .cloned()
        .ok_or_else(|| format!("{name} is no longer part of {}", cl.name))
        .of(&cl.name)?;
    c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Updating))
        .of(&cl.name)?;
    c.stop_process(cl, &mut v, cr).await?;
    membership(c, cl, &v, cr, false).await?;
    crate::ha::set_aside(&v).on(&cl.name, name)?;
    c.event(
        &cl.name,
        Some(name),
        Level::Info,
        "forgotten by the engine cluster; starting with empty data (the old copy is in \
         data.before-rebuild)",
    );
    v.desired = Desired::Running;
    let all = instances(c, &cl.name)?;
    c.bring_up(cl, &mut v, &all, cr).await?;
    form_shards(c, cl, cr).await?;
    c.db(|s| s.set_cluster_state(&cl.name, ClusterState::Running))
        .of(&cl.name)?;
    Ok(())
}

/// Bring `rows` up at the same time (the members of a quorum wait for each other to elect a
/// leader before any is ready); each one's name and outcome.
pub(crate) async fn bring_up_together(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    rows: Vec<InstanceRow>,
    all: &[InstanceRow],
    cr: &Credentials,
) -> Vec<(String, Result<(), ControlError>)> {
    let mut set = tokio::task::JoinSet::new();
    for mut row in rows {
        let (c, cl, all, cr) = (c.clone(), cl.clone(), all.to_vec(), cr.clone());
        set.spawn(async move {
            let r = c.bring_up(&cl, &mut row, &all, &cr).await;
            (row.name, r)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap_or_else(|e| {
            let failed = ControlError::of(&cl.name, format!("a bring-up task failed: {e}"));
            (String::from("?"), Err(failed))
        }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn scale(c: &Arc<Controller>, name: &str, replicas: u32) -> Result<(), ControlError> {
    let mut cl = cluster(c, name)?;
    let cr = creds(c, name)?;
    let current = instances(c, name)?;
    c.db(|s| s.set_cluster_state(name, ClusterState::Updating))
        .of(name)?;
    let addon = c.addon(&cl.engine).of(name)?;
    if cl.spec.shards.is_some() {
        return scale_sharded(c, cl, &cr, replicas).await;
    }
    if topology::family(addon.manifest()) == Family::Quorum {
        return scale_quorum(c, cl, &cr, replicas).await;
    }
    // Instances an interrupted scale (or create) left half made: never started, or stopped
    // in their initialization. They go, and the plan is made from what is left.
    for broken in current.iter().filter(|i| {
        matches!(i.state, Phase::Pending | Phase::Initializing) && i.role != Role::Primary
    }) {
        c.event(
            name,
            Some(&broken.name),
            Level::Warning,
            "left half made by an interrupted operation; removing it",
        );
        remove_instance(c, &cl, broken.clone(), &cr).await?;
    }
    let current = instances(c, name)?;
    let (add, remove) = crate::controller::scale_plan(name, &current, replicas);
    for _ in &add {
        add_replica(c, &cl, &cr).await?;
        crate::ha::failpoint("scale-added").await;
    }
    for victim in remove {
        let Some(v) = instances(c, name)?.into_iter().find(|i| i.name == victim) else {
            continue;
        };
        remove_instance(c, &cl, v, &cr).await?;
    }
    cl.spec.replicas = replicas;
    c.db(|s| s.set_cluster_spec(name, &cl.spec)).of(name)?;
    crate::ha::apply_sync(c, &cl, &cr).await;
    c.db(|s| s.set_cluster_state(name, ClusterState::Running))
        .of(name)?;
    Ok(())
}

/// The member that admits or forgets others: the primary, or in a quorum the leader, else
/// any healthy running member; never `except`.
fn admitter<'a>(
    nodes: &dyn crate::nodes::Nodes,
    all: &'a [InstanceRow],
    except: &str,
) -> Option<&'a InstanceRow> {
    let running =
        |i: &&InstanceRow| i.name != except && i.state == Phase::Running && nodes.alive(i);
    let leader = topology::state_of(all).and_then(|q| q.leader);
    all.iter()
        .filter(running)
        .find(|i| i.role == Role::Primary)
        .or_else(|| {
            all.iter()
                .filter(running)
                .find(|i| leader.as_deref() == Some(i.name.as_str()))
        })
        .or_else(|| {
            all.iter()
                .filter(running)
                .find(|i| i.role.engine_elected() && i.health == Health::Healthy)
        })
}

/// Waits between tries of a membership hook that failed retryably (an election under way).
const MEMBERSHIP_RETRIES: [u64; 4] = [1, 2, 4, 8];

/// `member-join` (`join`) or `member-leave` of `v` on the admitting member, retried while the
/// engine says to try again; `Ok` when the addon has no such hook.
async fn membership(
    c: &Controller,
    cl: &ClusterRow,
    v: &InstanceRow,
    cr: &Credentials,
    join: bool,
) -> Result<(), ControlError> {
    let hook = if join { "member-join" } else { "member-leave" };
    let mut waits = MEMBERSHIP_RETRIES.iter();
    loop {
        let all = instances(c, &cl.name)?;
        let Some(admit) = admitter(&*c.nodes, &all, &v.name) else {
            return Err(ControlError::on(
                &cl.name,
                &v.name,
                format!("{hook}: no running member to ask"),
            ));
        };
        let hooks = c.hooks(cl, admit, &all, cr).of(&cl.name)?;
        let r = if join {
            hooks.member_join(v).await
        } else {
            hooks.member_leave(v).await
        };
        match r {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() && waits.len() > 0 => {
                let wait = waits.next().copied().unwrap_or(1);
                c.event(
                    &cl.name,
                    Some(&v.name),
                    Level::Info,
                    format!("{hook} on {}: {e}; again in {wait} s", admit.name),
                );
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            }
            Err(e) => {
                return Err(ControlError::on(
                    &cl.name,
                    &v.name,
                    format!("{hook} on {}: {e}", admit.name),
                ))
            }
        }
    }
}

/// pre-terminate, stop, member-leave on the primary, then free its ports and data. A quorum
/// member leaves the membership first, while it still runs (the quorum must commit its
/// removal: stopped first, the last two of a quorum could not).
async fn remove_instance(
    c: &Controller,
    cl: &ClusterRow,
    mut v: InstanceRow,
    cr: &Credentials,
) -> Result<(), ControlError> {
    let addon = c.addon(&cl.engine).of(&cl.name)?.clone();
    let quorum = topology::family(addon.manifest()) == Family::Quorum;
    let all = instances(c, &cl.name)?;
    v.desired = Desired::Stopped;
    c.save(&v);
    if quorum {
        membership(c, cl, &v, cr, false).await?;
        c.event(&cl.name, Some(&v.name), Level::Info, "left the membership");
    }
    pre_terminate(c, cl, &v, &all, cr).await;
    c.stop_process(cl, &mut v, cr).await?;
    if !quorum && admitter(&*c.nodes, &all, &v.name).is_some() {
        if let Err(e) = membership(c, cl, &v, cr, false).await {
            c.event(
                &cl.name,
                Some(&v.name),
                Level::Warning,
                e.failure.to_string(),
            );
        }
    }
    c.db(|s| s.delete_instance(&cl.name, &v.name))
        .of(&cl.name)?;
    if let Err(e) = std::fs::remove_dir_all(&v.dir) {
        c.event(
            &cl.name,
            Some(&v.name),
            Level::Warning,
            format!("cannot remove {}: {e}", v.dir.display()),
        );
    }
    c.event(&cl.name, Some(&v.name), Level::Info, "removed");
    Ok(())
}

/// The addon's pre-terminate for a running instance; best effort (a failure is an event).
async fn pre_terminate(
    c: &Controller,
    cl: &ClusterRow,
    i: &InstanceRow,
    all: &[InstanceRow],
    cr: &Credentials,
) {
    if !c.nodes.alive(i) {
        return;
    }
    let Ok(hooks) = c.hooks(cl, i, all, cr) else {
        return;
    };
    if let Err(e) = hooks.pre_terminate().await {
        c.event(
            &cl.name,
            Some(&i.name),
            Level::Warning,
            format!("pre-terminate: {e}"),
        );
    }
}

/// Stop every instance: replicas first, the primary last.
async fn stop(c: &Arc<Controller>, name: &str) -> Result<(), ControlError> {
    let cl = cluster(c, name)?;
    let cr = creds(c, name)?;
    let mut all = instances(c, name)?;
    primary_replica::order(&mut all, Sequence::Stop);
    for mut i in all {
        i.desired = Desired::Stopped;
        c.save(&i);
        c.stop_process(&cl, &mut i, &cr).await?;
    }
    c.db(|s| s.set_cluster_state(name, ClusterState::Stopped))
        .of(name)?;
    Ok(())
}

/// Start every instance: the primary first; the members of a quorum all at once.
async fn start(c: &Arc<Controller>, name: &str) -> Result<(), ControlError> {
    let cl = cluster(c, name)?;
    let cr = creds(c, name)?;
    let addon = c.addon(&cl.engine).of(name)?;
    if topology::family_of(addon.manifest(), &cl.spec).engine_elects() {
        let mut down = Vec::new();
        for mut i in instances(c, name)? {
            i.desired = Desired::Running;
            c.save(&i);
            if !c.nodes.alive(&i) {
                down.push(i);
            }
        }
        let all = instances(c, name)?;
        for (_, result) in bring_up_together(c, &cl, down, &all, &cr).await {
            result?;
        }
        c.db(|s| s.set_cluster_state(name, ClusterState::Running))
            .of(name)?;
        return Ok(());
    }
    let mut order = instances(c, name)?;
    primary_replica::order(&mut order, Sequence::Start);
    for i in order {
        let all = instances(c, name)?;
        let mut i = all
            .iter()
            .find(|x| x.name == i.name)
            .cloned()
            .ok_or("instance vanished")
            .of(name)?;
        i.desired = Desired::Running;
        c.save(&i);
        if c.nodes.alive(&i) {
            continue;
        }
        c.bring_up(&cl, &mut i, &all, &cr).await?;
    }
    c.db(|s| s.set_cluster_state(name, ClusterState::Running))
        .of(name)?;
    Ok(())
}

/// Rolling restart: one replica at a time (each back and ready before the next), then the
/// primary.
async fn restart(c: &Arc<Controller>, name: &str) -> Result<(), ControlError> {
    let cl = cluster(c, name)?;
    let cr = creds(c, name)?;
    let mut order = instances(c, name)?;
    primary_replica::order(&mut order, Sequence::Restart);
    c.db(|s| s.set_cluster_state(name, ClusterState::Updating))
        .of(name)?;
    for i in order {
        let all = instances(c, name)?;
        let mut i = all
            .iter()
            .find(|x| x.name == i.name)
            .cloned()
            .ok_or("instance vanished")
            .of(name)?;
        c.event(name, Some(&i.name), Level::Info, "restarting");
        c.stop_process(&cl, &mut i, &cr).await?;
        i.desired = Desired::Running;
        c.save(&i);
        c.bring_up(&cl, &mut i, &all, &cr).await?;
    }
    c.db(|s| s.set_cluster_state(name, ClusterState::Running))
        .of(name)?;
    Ok(())
}

/// Delete: pre-terminate and stop every instance, free every port; with `purge` remove the
/// data and credentials too.
async fn delete(c: &Arc<Controller>, name: &str, purge: bool) -> Result<(), ControlError> {
    let cl = cluster(c, name)?;
    c.db(|s| s.set_cluster_state(name, ClusterState::Deleting))
        .of(name)?;
    let cr = creds(c, name).ok();
    let mut all = instances(c, name)?;
    primary_replica::order(&mut all, Sequence::Stop);
    for mut i in all.clone() {
        i.desired = Desired::Stopped;
        c.save(&i);
        if let Some(cr) = &cr {
            pre_terminate(c, &cl, &i, &all, cr).await;
            c.stop_process(&cl, &mut i, cr).await?;
        } else if let Some(p) = i.process {
            p.stop(libc::SIGTERM, std::time::Duration::from_secs(30))
                .await;
        }
    }
    if let Err(e) = c.endpoints.remove(name).await {
        c.event(name, None, Level::Warning, format!("stable endpoints: {e}"));
    }
    if let Err(e) = c.dcs.forget(name).await {
        c.event(
            name,
            None,
            Level::Warning,
            format!("coordination store: {e}"),
        );
    }
    let dir = c.cluster_dir(name);
    let kept = if purge {
        remove_tree(&dir).of(name)?;
        secrets::remove(&c.home, name);
        None
    } else if dir.exists() {
        // Kept out of the way under its uid, so the name can be used again at once.
        let kept = c.kept_dir(name, cl.uid);
        std::fs::rename(&dir, &kept)
            .map_err(|e| format!("cannot move {} to {}: {e}", dir.display(), kept.display()))
            .of(name)?;
        secrets::keep(&c.home, name, cl.uid);
        Some(kept)
    } else {
        None
    };
    c.db(|s| s.delete_cluster(name, kept.as_deref())).of(name)?;
    c.users.forget(name);
    match &kept {
        None => {
            if let Some(u) = &cl.os_user {
                if let Err(e) = shoal_local::users::remove_user(u) {
                    c.event(name, None, Level::Warning, format!("OS user {u}: {e}"));
                }
            }
            c.event(name, None, Level::Info, "deleted with its data");
        }
        Some(k) => c.event(
            name,
            None,
            Level::Info,
            format!(
                "deleted; data kept at {} (`shoal cluster delete {name} --purge` removes it); \
                 the name can be used again",
                k.display()
            ),
        ),
    }
    Ok(())
}

impl Controller {
    /// Remove what earlier deletes (without `--purge`) of clusters named `name` kept: their
    /// data directories, credentials and OS users. Returns the directories removed.
    pub fn purge_kept(&self, name: &str) -> Result<Vec<String>, shoal_api::ApiError> {
        let kept = self.db(|s| s.kept(name))?;
        if kept.is_empty() {
            return Err(shoal_api::ApiError::not_found(format!(
                "no cluster named {name:?}, and no data kept from a deleted one"
            )));
        }
        let mut removed = Vec::new();
        for t in kept {
            if let Some(dir) = &t.kept_dir {
                remove_tree(dir).map_err(shoal_api::ApiError::internal)?;
                removed.push(dir.display().to_string());
            }
            secrets::remove_kept(&self.home, &t.name, t.uid);
            if let Some(u) = &t.os_user {
                if let Err(e) = shoal_local::users::remove_user(u) {
                    self.event(name, None, Level::Warning, format!("OS user {u}: {e}"));
                }
            }
            self.db(|s| s.purged(t.uid))?;
            self.event(
                name,
                None,
                Level::Info,
                format!(
                    "data kept from deleted cluster {name} (uid {}) removed",
                    t.uid
                ),
            );
        }
        Ok(removed)
    }
}

/// Remove a directory tree; one that is not there is not an error.
pub(crate) fn remove_tree(dir: &std::path::Path) -> Result<(), String> {
    std::fs::remove_dir_all(dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(format!("cannot remove {}: {e}", dir.display()))
        }
    })
}
