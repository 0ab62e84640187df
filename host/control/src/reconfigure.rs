//! Parameters and resources of running clusters: showing the effective configuration with
//! where each value comes from, validating a change set as a whole (nothing stored when any of
//! it is wrong), and applying it — live through the addon's `apply-dynamic` (read back), or by
//! a rolling restart (replicas, then a switchover, then the old primary) that stops at the
//! first instance that does not come back healthy and puts the previous configuration back on
//! every instance it touched. Only a change that went through is stored, as a new version in
//! the cluster's configuration history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::{
    ApiError, ConfigChangeView, ConfigParamView, ConfigPlanView, ConfigVersionView, ConfigView,
    OpView, ResourceSpec,
};
use shoal_runtime::wit::{self, ApplyMode, ChangeEffect, Param, ParamChange, ParamType, Value};
use shoal_runtime::CallContext;

use crate::controller::Controller;
use crate::error::{At, ControlError};
use crate::events::Level;
use crate::secrets::Credentials;
use crate::store::{now_ms, ClusterRow, ClusterState, Desired, InstanceRow, Phase, Role};

/// How long a restarted instance has to report healthy before the roll stops.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// A value as users write it: sizes and durations in the largest whole unit.
fn show(ty: &ParamType, v: &Value) -> String {
    match (ty, v) {
        (_, Value::Boolean(b)) => if *b { "on" } else { "off" }.into(),
        (_, Value::Text(t)) => t.clone(),
        (_, Value::Float(f)) => f.to_string(),
        (ParamType::SizeBytes(_), Value::Integer(b)) => {
            for (unit, n) in [("GB", 1i64 << 30), ("MB", 1 << 20), ("kB", 1 << 10)] {
                if *b != 0 && b % n == 0 {
                    return format!("{}{unit}", b / n);
                }
            }
            format!("{b}B")
        }
        (ParamType::DurationMs(_), Value::Integer(ms)) => {
            for (unit, n) in [("h", 3_600_000i64), ("min", 60_000), ("s", 1000)] {
                if *ms > 0 && ms % n == 0 {
                    return format!("{}{unit}", ms / n);
                }
            }
            format!("{ms}ms")
        }
        (_, Value::Integer(i)) => i.to_string(),
    }
}

fn apply_name(a: ApplyMode) -> &'static str {
    match a {
        ApplyMode::Dynamic => "dynamic",
        ApplyMode::Restart => "restart",
        ApplyMode::Immutable => "immutable",
    }
}

/// What a queued reconfigure operation carries.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Target {
    parameters: BTreeMap<String, String>,
    resources: ResourceSpec,
    restart: bool,
    /// The primary restarts first, in place (a limit replicas may not hold lower, lowered).
    #[serde(default)]
    primary_first: bool,
    reason: String,
}

impl Controller {
    /// The configuration service of this host's clusters.
    pub fn configuration(self: &Arc<Self>) -> Configuration<'_> {
        Configuration { c: self }
    }
}

/// A cluster's configuration: show it and its history, validate and queue a change of
/// parameters or resources (or only say what it would do), roll back to a version. The
/// change itself runs as a `reconfigure` operation ([`run`]).
pub struct Configuration<'a> {
    c: &'a Arc<Controller>,
}

impl Configuration<'_> {
    fn cluster_row(&self, name: &str) -> Result<ClusterRow, ApiError> {
        self.c
            .db(|s| s.cluster(name))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))
    }

    /// The effective configuration of `name`.
    pub async fn show(&self, name: &str) -> Result<ConfigView, ApiError> {
        let cl = self.cluster_row(name)?;
        let addon = self.c.addon(&cl.engine)?;
        let (_, resources, params) = self.c.validate_spec(&cl.spec).await?;
        let effective = addon
            .call(&CallContext::default())
            .effective(&params, self.wit_resources(resources))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let out = addon
            .manifest()
            .parameters
            .iter()
            .filter(|s| crate::controller::for_version(s, &cl.version))
            .map(|s| {
                let value = effective
                    .iter()
                    .find(|p| p.name == s.name)
                    .map(|p| &p.value);
                let source = if cl.spec.parameters.contains_key(&s.name) {
                    "user"
                } else if value.is_some() && value == s.default_value.as_ref() {
                    "default"
                } else if value.is_some() {
                    "derived"
                } else {
                    "engine"
                };
                ConfigParamView {
                    name: s.name.clone(),
                    value: match cl.spec.parameters.get(&s.name) {
                        Some(text) => Some(text.clone()),
                        None => value.map(|v| show(&s.type_, v)),
                    },
                    source: source.into(),
                    apply: apply_name(s.apply).into(),
                    description: s.description.clone(),
                }
            })
            .collect();
        Ok(ConfigView {
            cluster: name.to_string(),
            version: self.history(name)?.last().map_or(1, |v| v.version),
            resources: cl.spec.resources.clone(),
            params: out,
        })
    }

    /// The configuration history of `name`, oldest first (version 1 is the configuration it
    /// was created with).
    pub fn history(&self, name: &str) -> Result<Vec<ConfigVersionView>, ApiError> {
        let cl = self.cluster_row(name)?;
        let mut v = self.c.db(|s| s.config_versions(name))?;
        if v.is_empty() {
            v.push(ConfigVersionView {
                version: 1,
                at_unix_ms: cl.created_ms,
                parameters: cl.spec.parameters.clone(),
                resources: cl.spec.resources.clone(),
                reason: "created".into(),
            });
        }
        Ok(v)
    }

    /// Validate `set`/`unset` as one change and queue it (or, with `dry_run`, only say what
    /// it would do).
    pub async fn set(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        dry_run: bool,
    ) -> Result<ConfigPlanView, ApiError> {
        let cl = self.cluster_row(name)?;
        if set.is_empty() && unset.is_empty() {
            return Err(ApiError::invalid(
                "nothing to change: give NAME=VALUE or --unset NAME",
            ));
        }
        let mut parameters = cl.spec.parameters.clone();
        for n in &unset {
            if set.contains_key(n) {
                return Err(ApiError::invalid(format!("{n} is both set and unset")));
            }
            self.schema_entry(&cl.engine, n)?;
            parameters.remove(n);
        }
        let mut words = Vec::new();
        for (k, v) in &set {
            words.push(format!("{k}={v}"));
            parameters.insert(k.clone(), v.clone());
        }
        words.extend(unset.iter().map(|n| format!("-{n}")));
        let reason = format!("set {}", words.join(" "));
        self.plan(&cl, parameters, cl.spec.resources.clone(), reason, dry_run)
            .await
    }

    /// Go back to configuration version `to` (default: the one before the current).
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u32>,
        dry_run: bool,
    ) -> Result<ConfigPlanView, ApiError> {
        let cl = self.cluster_row(name)?;
        let history = self.history(name)?;
        let current = history.last().map_or(1, |v| v.version);
        let want = match to {
            Some(t) => t,
            None if current > 1 => current - 1,
            None => {
                return Err(ApiError::invalid(format!(
                    "cluster {name} has one configuration version only; nothing to roll back to"
                )))
            }
        };
        let v = history.iter().find(|v| v.version == want).ok_or_else(|| {
            ApiError::not_found(format!(
                "cluster {name} has no configuration version {want} (it has 1 to {current})"
            ))
        })?;
        self.plan(
            &cl,
            v.parameters.clone(),
            v.resources.clone(),
            format!("rollback to {want}"),
            dry_run,
        )
        .await
    }

    /// Change the CPU and memory of every instance of `name`.
    pub async fn resize(
        &self,
        name: &str,
        cpu: Option<String>,
        memory: Option<String>,
        dry_run: bool,
    ) -> Result<ConfigPlanView, ApiError> {
        let cl = self.cluster_row(name)?;
        if cpu.is_none() && memory.is_none() {
            return Err(ApiError::invalid(
                "nothing to change: give --cpu and/or --memory",
            ));
        }
        let mut r = cl.spec.resources.clone();
        let mut words = Vec::new();
        if let Some(c) = cpu {
            words.push(format!("cpu={c}"));
            r.cpu = Some(c);
        }
        if let Some(m) = memory {
            words.push(format!("memory={m}"));
            r.memory = Some(m);
        }
        let reason = format!("resize {}", words.join(" "));
        self.plan(&cl, cl.spec.parameters.clone(), r, reason, dry_run)
            .await
    }

    fn schema_entry(&self, engine: &str, name: &str) -> Result<wit::ParamSpec, ApiError> {
        let addon = self.c.addon(engine)?;
        let schema = &addon.manifest().parameters;
        schema
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = schema.iter().map(|s| s.name.as_str()).collect();
                ApiError::invalid(format!(
                    "{engine} has no parameter {name:?} (it has: {})",
                    known.join(", ")
                ))
            })
    }

    /// Check the whole new configuration (schema, the addon's rules, immutability), say what
    /// changes and how, and queue it unless `dry_run`. Nothing is stored here.
    async fn plan(
        &self,
        cl: &ClusterRow,
        parameters: BTreeMap<String, String>,
        resources: ResourceSpec,
        reason: String,
        dry_run: bool,
    ) -> Result<ConfigPlanView, ApiError> {
        let addon = self.c.addon(&cl.engine)?;
        let mut spec = cl.spec.clone();
        spec.parameters = parameters;
        spec.resources = resources;
        let (_, old_res, old) = self.c.validate_spec(&cl.spec).await?;
        let (_, new_res, new) = self.c.validate_spec(&spec).await?;
        let ctx = CallContext::default();
        let call = addon.call(&ctx);
        let before = call
            .effective(&old, self.wit_resources(old_res))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let after = call
            .effective(&new, self.wit_resources(new_res))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let changes = param_changes(&before, &after);
        // Immutable parameters keep their effective value.
        for ch in &changes {
            let spec = addon
                .manifest()
                .parameters
                .iter()
                .find(|s| s.name == ch.name);
            if spec.is_some_and(|s| s.apply == ApplyMode::Immutable) {
                return Err(ApiError::invalid(format!(
                    "parameter {} is immutable: it is fixed when the cluster is created",
                    ch.name
                )));
            }
        }
        let classified = if changes.is_empty() {
            vec![]
        } else {
            call.classify(&changes)
                .await
                .map_err(|e| ApiError::invalid(e.to_string()))?
        };
        let resized = cl.spec.resources != spec.resources;
        let restart = resized || classified.iter().any(|c| c.effect != ChangeEffect::Dynamic);
        let primary_first = classified
            .iter()
            .any(|c| c.effect == ChangeEffect::RestartPrimaryFirst);
        let schema = &addon.manifest().parameters;
        let text = |v: &Option<Value>, n: &str| {
            v.as_ref().map(|v| {
                schema
                    .iter()
                    .find(|s| s.name == n)
                    .map_or_else(|| format!("{v:?}"), |s| show(&s.type_, v))
            })
        };
        let view_changes: Vec<ConfigChangeView> = changes
            .iter()
            .map(|ch| ConfigChangeView {
                name: ch.name.clone(),
                old: text(&ch.old_value, &ch.name),
                new: text(&ch.new_value, &ch.name),
                effect: match classified.iter().find(|c| c.name == ch.name) {
                    Some(c) if c.effect == ChangeEffect::RestartPrimaryFirst => {
                        "restart, primary first"
                    }
                    Some(c) if c.effect == ChangeEffect::Restart => "restart",
                    _ if resized => "restart",
                    _ => "dynamic",
                }
                .into(),
            })
            .collect();
        if view_changes.is_empty() && !resized {
            return Err(ApiError::invalid(format!(
                "no parameter of {} would change: the new configuration equals the current one",
                cl.name
            )));
        }
        let mut plan = ConfigPlanView {
            cluster: cl.name.clone(),
            changes: view_changes,
            resources_from: cl.spec.resources.clone(),
            resources_to: spec.resources.clone(),
            restart,
            primary_first,
            op: None,
        };
        if dry_run {
            return Ok(plan);
        }
        if let Some(op) = self
            .c
            .db(|s| s.unfinished_ops())?
            .into_iter()
            .find(|o| o.cluster == cl.name && o.kind == "reconfigure")
        {
            return Err(ApiError::conflict(format!(
                "a configuration change of {} is already under way (operation {})",
                cl.name, op.id
            )));
        }
        let target = Target {
            parameters: spec.parameters,
            resources: spec.resources,
            restart,
            primary_first,
            reason,
        };
        let params =
            serde_json::to_value(&target).map_err(|e| ApiError::internal(e.to_string()))?;
        let op: OpView = self
            .c
            .submit(&cl.name, crate::operation::Op::Reconfigure(params))?;
        plan.op = Some(op);
        Ok(plan)
    }

    fn wit_resources(&self, r: crate::controller::Resources) -> wit::Resources {
        wit::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            storage_bytes: r.storage_bytes,
        }
    }
}

/// The parameters whose effective value differs between `before` and `after`.
fn param_changes(before: &[Param], after: &[Param]) -> Vec<ParamChange> {
    let mut names: Vec<&str> = before
        .iter()
        .chain(after.iter())
        .map(|p| p.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| {
            let old = before.iter().find(|p| p.name == n).map(|p| p.value.clone());
            let new = after.iter().find(|p| p.name == n).map(|p| p.value.clone());
            (old != new).then(|| ParamChange {
                name: n.to_string(),
                old_value: old,
                new_value: new,
            })
        })
        .collect()
}

/// The reconfigure operation: apply the queued configuration, then store it.
pub(crate) async fn run(
    c: &Arc<Controller>,
    name: &str,
    params: &serde_json::Value,
    op: i64,
) -> Result<(), ControlError> {
    let target: Target = serde_json::from_value(params.clone())
        .map_err(|e| format!("the operation's parameters are unreadable: {e}"))
        .of(name)?;
    let old = crate::ops::cluster(c, name)?;
    let cr = crate::ops::creds(c, name)?;
    let mut new = old.clone();
    new.spec.parameters = target.parameters.clone();
    new.spec.resources = target.resources.clone();
    let before = c.params_of(&old).of(name)?;
    let after = c.params_of(&new).of(name)?;
    let changes = param_changes(&before, &after);
    if target.restart {
        roll(c, &old, &new, &cr, target.primary_first, op).await?;
    } else {
        live(c, &old, &new, &cr, &changes).await?;
    }
    let mut history = c.configuration().history(name).of(name)?;
    let version = history.last().map_or(1, |v| v.version) + 1;
    let v = ConfigVersionView {
        version,
        at_unix_ms: now_ms(),
        parameters: target.parameters,
        resources: target.resources,
        reason: target.reason.clone(),
    };
    history.push(v);
    c.db(|s| {
        s.set_cluster_spec(name, &new.spec)?;
        for v in &history {
            s.put_config_version(name, v)?;
        }
        Ok(())
    })
    .of(name)?;
    c.event(
        name,
        None,
        Level::Info,
        format!(
            "configuration version {version} applied ({})",
            target.reason
        ),
    );
    Ok(())
}

/// Apply `changes` live on every running instance; on a failure, put `old` back on each
/// instance touched and fail naming the instance.
async fn live(
    c: &Arc<Controller>,
    old: &ClusterRow,
    new: &ClusterRow,
    cr: &Credentials,
    changes: &[ParamChange],
) -> Result<(), ControlError> {
    let all = crate::ops::instances(c, &new.name)?;
    let running: Vec<&InstanceRow> = all.iter().filter(|i| i.state == Phase::Running).collect();
    let undo: Vec<ParamChange> = changes
        .iter()
        .map(|ch| ParamChange {
            name: ch.name.clone(),
            old_value: ch.new_value.clone(),
            new_value: ch.old_value.clone(),
        })
        .collect();
    for (n, i) in running.iter().enumerate() {
        if let Err(e) = apply_live(c, new, i, &all, cr, changes).await {
            for j in &running[..=n] {
                if let Err(u) = apply_live(c, old, j, &all, cr, &undo).await {
                    c.event(
                        &old.name,
                        Some(&j.name),
                        Level::Error,
                        format!("cannot put the previous configuration back: {u}"),
                    );
                }
            }
            return Err(ControlError::on(
                &new.name,
                &i.name,
                format!("{e}; the previous configuration is back on every instance"),
            ));
        }
        c.event(
            &new.name,
            Some(&i.name),
            Level::Info,
            format!("applied live: {}", names(changes)),
        );
    }
    Ok(())
}

fn names(changes: &[ParamChange]) -> String {
    changes
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn apply_live(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    i: &InstanceRow,
    all: &[InstanceRow],
    cr: &Credentials,
    changes: &[ParamChange],
) -> Result<(), String> {
    let addon = c.addon(&cl.engine).map_err(|e| e.message)?;
    c.render(cl, i, all, cr).await?;
    addon
        .call(&c.call_ctx(i, all, false))
        .apply_dynamic(&c.wit_instance(cl, i, cr, false), changes)
        .await
        .map_err(|e| e.to_string())
}

/// Restart every instance with `new`, one at a time: replicas first, then a switchover, then
/// the old primary — or, with `primary_first`, the primary in place and then the replicas.
/// The first instance that does not come back healthy stops the roll, and every instance
/// restarted so far (it included) is restarted again with `old`, in reverse order.
async fn roll(
    c: &Arc<Controller>,
    old: &ClusterRow,
    new: &ClusterRow,
    cr: &Credentials,
    primary_first: bool,
    op: i64,
) -> Result<(), ControlError> {
    let name = &new.name;
    let _ = c.db(|s| s.set_cluster_state(name, ClusterState::Updating));
    let all = crate::ops::instances(c, name)?;
    let mut order: Vec<InstanceRow> = all
        .iter()
        .filter(|i| i.role != Role::Primary)
        .cloned()
        .collect();
    order.sort_by_key(|i| i.ordinal);
    let primary = all.iter().find(|i| i.role == Role::Primary).cloned();
    let mut done: Vec<String> = Vec::new();
    let mut failure = None;
    // With the primary first, each replica must have replayed past the restarted primary's
    // start (where the engine records its new limits) before it restarts itself.
    let mut catch_up = None;
    if let (true, Some(p)) = (primary_first, &primary) {
        match restart_with(c, new, &p.name, cr, NEW).await {
            Ok(pos) => {
                done.push(p.name.clone());
                catch_up = pos;
            }
            Err(e) => failure = Some((p.name.clone(), e)),
        }
    }
    for i in &order {
        if failure.is_some() {
            break;
        }
        if let Some(pos) = catch_up {
            if let Err(e) = wait_caught_up(c, new, &i.name, cr, pos).await {
                failure = Some((i.name.clone(), e));
                break;
            }
        }
        if let Err(e) = restart_with(c, new, &i.name, cr, NEW).await {
            failure = Some((i.name.clone(), e));
            break;
        }
        done.push(i.name.clone());
        crate::ha::failpoint("roll-restarted").await;
    }
    if let (None, false, Some(p)) = (&failure, primary_first, &primary) {
        if let Some(to) = done.first() {
            // The primary's turn: hand the role to a replica that runs the new configuration.
            let step = crate::operation::Op::Switchover {
                from: p.name.clone(),
                to: to.clone(),
                resume: false,
            };
            if let Err(e) = crate::ops::run_step(c, name, op, step).await {
                failure = Some((
                    p.name.clone(),
                    format!("switchover to {to} failed: {}", e.within_cluster()),
                ));
            }
        }
        if failure.is_none() {
            match restart_with(c, new, &p.name, cr, NEW).await {
                Ok(_) => done.push(p.name.clone()),
                Err(e) => failure = Some((p.name.clone(), e)),
            }
        }
    }
    let Some((who, why)) = failure else {
        let _ = c.db(|s| s.set_cluster_state(name, ClusterState::Running));
        return Ok(());
    };
    c.event(
        name,
        Some(&who),
        Level::Error,
        format!("did not come back healthy with the new configuration: {why}; rolling back"),
    );
    let mut back = done.clone();
    if !back.contains(&who) {
        back.push(who.clone());
    }
    let mut unrolled = Vec::new();
    for n in back.iter().rev() {
        if let Err(e) = restart_with(c, old, n, cr, "the previous configuration").await {
            unrolled.push(format!("{n} ({e})"));
        }
    }
    let untouched = all.len() - back.len();
    let _ = c.db(|s| s.set_cluster_state(name, ClusterState::Running));
    Err(ControlError::on(
        name,
        &who,
        format!(
            "did not come back healthy with the new configuration: {why}. {} rolled back to \
             the previous configuration{}{}",
            back.join(", "),
            if untouched > 0 {
                format!("; {untouched} other instance(s) never saw the change")
            } else {
                String::new()
            },
            if unrolled.is_empty() {
                String::new()
            } else {
                format!("; could not roll back: {}", unrolled.join(", "))
            }
        ),
    ))
}

const NEW: &str = "the new configuration";

/// Probe replica `name` until it has replayed everything up to `position`.
async fn wait_caught_up(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    name: &str,
    cr: &Credentials,
    position: u64,
) -> Result<(), String> {
    let until = Instant::now() + HEALTHY_WITHIN;
    loop {
        let all = c.db(|s| s.instances(&cl.name)).map_err(|e| e.message)?;
        let mut i = all
            .iter()
            .find(|x| x.name == name)
            .cloned()
            .ok_or_else(|| format!("instance {name} vanished"))?;
        let last = match c.probe_once(cl, &mut i, &all, cr).await {
            Ok(r) if r.position.is_some_and(|p| p >= position) && r.lag_bytes.unwrap_or(0) == 0 => {
                return Ok(())
            }
            Ok(r) => format!("at position {:?}: {}", r.position, r.detail),
            Err(e) => e.failure.to_string(),
        };
        if Instant::now() > until {
            return Err(format!(
                "did not catch up with the restarted primary (position {position}) within {} s: \
                 {last}",
                HEALTHY_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stop instance `name`, start it with `cl`'s configuration (`which`, for the events) and
/// wait for a healthy probe; returns the position it reported.
async fn restart_with(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    name: &str,
    cr: &Credentials,
    which: &str,
) -> Result<Option<u64>, String> {
    let all = c.db(|s| s.instances(&cl.name)).map_err(|e| e.message)?;
    let mut i = all
        .iter()
        .find(|x| x.name == name)
        .cloned()
        .ok_or_else(|| format!("instance {name} vanished"))?;
    c.event(
        &cl.name,
        Some(name),
        Level::Info,
        format!("restarting with {which}"),
    );
    c.stop_process(cl, &mut i, cr).await?;
    i.desired = Desired::Running;
    c.save(&i);
    c.bring_up(cl, &mut i, &all, cr).await?;
    // The supervisor leaves a cluster alone while an operation runs: probe here.
    let until = Instant::now() + HEALTHY_WITHIN;
    loop {
        let last = match c.probe_once(cl, &mut i, &all, cr).await {
            Ok(r) if r.health == wit::Health::Healthy => {
                c.save(&i);
                return Ok(r.position);
            }
            Ok(r) => r.detail,
            Err(e) => e.failure.to_string(),
        };
        if Instant::now() > until {
            return Err(format!(
                "not healthy {} s after its start: {last}",
                HEALTHY_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
