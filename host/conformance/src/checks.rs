//! The kit's judgements, as pure functions with their tests beside them: whether the roles
//! the probes report fit the topology the manifest declares, which value a parameter is
//! changed to and which value must be refused, the size of the cluster each topology is
//! tried at, whether metric names follow the rules, and whether hooks kept their deadlines.

use shoal_api::{HookStatView, InstanceView, MetricSample};
use shoal_runtime::wit::{ParamSpec, ParamType, RoleSpec, Topology, TopologyKind, Value};

/// Members (and shards) a cluster of `t` is created with: the smallest that exercises the
/// topology (two members for failover, three voters for a quorum, three shards of two).
pub fn size_for(t: &Topology) -> (u32, Option<u32>) {
    let clamp = |n: u32| n.clamp(t.min_members, t.max_members.max(t.min_members));
    match t.kind {
        TopologyKind::Standalone => (clamp(1), None),
        TopologyKind::PrimaryReplica => (clamp(2), None),
        TopologyKind::Quorum => (clamp(3), None),
        // Three shards: an engine whose shard primaries vote on a failover needs a majority
        // of them alive when one dies.
        TopologyKind::Sharded => (clamp(2), Some(3)),
    }
}

/// Whether what the probes report fits topology `t` with role specs `roles`: every
/// instance healthy in a role of the topology, writable only in a writable role, at most
/// one holder of an exclusive role and exactly one writable member per group (the whole
/// cluster, or each shard) when the topology has a writable role.
pub fn roles_fit(
    t: &Topology,
    roles: &[RoleSpec],
    instances: &[InstanceView],
) -> Result<(), String> {
    if instances.is_empty() {
        return Err("no instances".into());
    }
    for i in instances {
        if i.health != "healthy" {
            return Err(format!("{} is {} ({})", i.name, i.health, i.detail));
        }
        let Some(role) = i.observed_role.as_deref() else {
            return Err(format!("{} has reported no role yet", i.name));
        };
        if !t.roles.iter().any(|r| r == role) {
            return Err(format!(
                "{} reports role {role:?}, which the {:?} topology does not have ({})",
                i.name,
                t.kind,
                t.roles.join(", ")
            ));
        }
        let spec = roles.iter().find(|r| r.name == role);
        if i.writable == Some(true) && !spec.is_some_and(|s| s.writable) {
            return Err(format!(
                "{} reports itself writable in role {role:?}, which the manifest says is read-only",
                i.name
            ));
        }
    }
    let mut groups: Vec<Option<u32>> = instances.iter().map(|i| i.shard).collect();
    groups.sort();
    groups.dedup();
    let has_writable_role = t
        .roles
        .iter()
        .any(|r| roles.iter().any(|s| &s.name == r && s.writable));
    for g in groups {
        let members: Vec<&InstanceView> = instances.iter().filter(|i| i.shard == g).collect();
        let group = g
            .map(|s| format!("shard {s}"))
            .unwrap_or("the cluster".into());
        for spec in roles.iter().filter(|s| s.exclusive) {
            let holders: Vec<&str> = members
                .iter()
                .filter(|i| i.observed_role.as_deref() == Some(spec.name.as_str()))
                .map(|i| i.name.as_str())
                .collect();
            if holders.len() > 1 {
                return Err(format!(
                    "{group} has {} holders of exclusive role {:?}: {}",
                    holders.len(),
                    spec.name,
                    holders.join(", ")
                ));
            }
        }
        let writers = members.iter().filter(|i| i.writable == Some(true)).count();
        if has_writable_role && writers != 1 {
            return Err(format!(
                "{group} has {writers} writable members (want exactly one)"
            ));
        }
    }
    Ok(())
}

/// The writable member of `instances` (of the first group that has one).
pub fn writer(instances: &[InstanceView]) -> Option<&InstanceView> {
    instances.iter().find(|i| i.writable == Some(true))
}

/// A value for parameter `p` near its default and inside its bounds but different from it,
/// as users write it; none for text parameters and parameters without a default.
pub fn changed_value(p: &ParamSpec) -> Option<String> {
    // Zero usually means "off"; the smallest step from it (1 ms, 1 byte) is rarely what
    // the engine counts in, so a zero default goes to one whole unit (a minute, a MiB).
    let ranged = |d: i64, min: i64, max: i64, unit: i64| {
        if d == 0 {
            return Some(unit.clamp(min, max))
                .filter(|v| *v != 0)
                .map(|v| v.to_string());
        }
        let up = d.checked_mul(2).filter(|v| *v <= max && *v > d);
        let step = d.checked_add(1).filter(|v| *v <= max);
        let down = d.checked_sub(1).filter(|v| *v >= min);
        match (up, step, down) {
            (Some(v), _, _) | (None, Some(v), _) | (None, None, Some(v)) => Some(v.to_string()),
            _ => None,
        }
    };
    match (&p.type_, p.default_value.as_ref()?) {
        (ParamType::Boolean, Value::Boolean(b)) => Some((!b).to_string()),
        (ParamType::Integer(r), Value::Integer(d)) => {
            let v = d
                .checked_add(1)
                .filter(|v| *v <= r.max)
                .or(d.checked_sub(1).filter(|v| *v >= r.min))?;
            Some(v.to_string())
        }
        (ParamType::SizeBytes(r), Value::Integer(d)) => ranged(*d, r.min, r.max, 1 << 20),
        (ParamType::DurationMs(r), Value::Integer(d)) => ranged(*d, r.min, r.max, 60_000),
        (ParamType::Float(r), Value::Float(d)) => {
            let v = if d + 1.0 <= r.max { d + 1.0 } else { d - 1.0 };
            (v >= r.min).then(|| v.to_string())
        }
        (ParamType::Choice(words), Value::Text(d)) => words.iter().find(|w| *w != d).cloned(),
        _ => None,
    }
}

/// A value the host must refuse for `p` (outside its bounds or its words), as users write
/// it; none for free text.
pub fn refused_value(p: &ParamSpec) -> Option<String> {
    match &p.type_ {
        ParamType::Boolean => Some("maybe".into()),
        ParamType::Integer(r) | ParamType::SizeBytes(r) | ParamType::DurationMs(r) => {
            r.max.checked_add(1).map(|v| v.to_string())
        }
        ParamType::Float(r) => Some((r.max * 2.0 + 1.0).to_string()),
        ParamType::Choice(words) => {
            let mut w = String::from("not-a-choice");
            while words.contains(&w) {
                w.push('x');
            }
            Some(w)
        }
        ParamType::Text => None,
    }
}

/// Metric samples whose names break the rules (`<engine>_` prefix, snake_case, `_total` for
/// counters only, base units): one line each.
pub fn bad_metric_names(engine: &str, samples: &[MetricSample]) -> Vec<String> {
    use shoal_sdk::telemetry::MetricKind;
    let mut bad = Vec::new();
    for s in samples {
        let kind = if s.kind == "counter" {
            MetricKind::Counter
        } else {
            MetricKind::Gauge
        };
        match shoal_sdk::metrics::metric_name(engine, &s.name, kind) {
            Ok(full) if full == s.name => {}
            Ok(full) => bad.push(format!("{} ({}) should be named {full}", s.name, s.kind)),
            Err(e) => bad.push(e),
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// Whether every hook ended within its deadline: the hooks that hit it (one line each), or
/// a summary naming the hook that came closest.
pub fn deadlines_kept(stats: &[HookStatView]) -> Result<String, String> {
    let hit: Vec<String> = stats
        .iter()
        .filter(|s| s.deadline_hits > 0)
        .map(|s| {
            format!(
                "{}: {} of {} call(s) stopped at its {} ms deadline",
                s.hook, s.deadline_hits, s.calls, s.limit_ms
            )
        })
        .collect();
    if !hit.is_empty() {
        return Err(hit.join("; "));
    }
    let calls: u64 = stats.iter().map(|s| s.calls).sum();
    let closest = stats.iter().max_by(|a, b| {
        let share = |s: &HookStatView| s.max_ms as f64 / s.limit_ms.max(1) as f64;
        share(a).total_cmp(&share(b))
    });
    Ok(match closest {
        Some(c) => format!(
            "{calls} calls of {} hooks, none stopped; closest: {} at most {} ms of its {} ms ({:.0} %)",
            stats.len(),
            c.hook,
            c.max_ms,
            c.limit_ms,
            100.0 * c.max_ms as f64 / c.limit_ms.max(1) as f64
        ),
        None => "no hook calls counted".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_runtime::wit::{ApplyMode, IntRange};
    use std::collections::BTreeMap;

    fn role(name: &str, writable: bool, exclusive: bool) -> RoleSpec {
        RoleSpec {
            name: name.into(),
            writable,
            votes: false,
            exclusive,
            description: String::new(),
        }
    }

    fn inst(name: &str, role: &str, writable: bool, shard: Option<u32>) -> InstanceView {
        InstanceView {
            name: name.into(),
            role: role.into(),
            state: "running".into(),
            pid: Some(1),
            host: "127.0.0.1".into(),
            ports: BTreeMap::new(),
            health: "healthy".into(),
            observed_role: Some(role.into()),
            writable: Some(writable),
            lag_bytes: None,
            detail: String::new(),
            restarts: 0,
            data_dir: String::new(),
            log_file: String::new(),
            probed_unix_ms: None,
            term: None,
            position: None,
            shard,
        }
    }

    fn pr() -> (Topology, Vec<RoleSpec>) {
        (
            Topology {
                kind: TopologyKind::PrimaryReplica,
                roles: vec!["primary".into(), "replica".into()],
                min_members: 2,
                max_members: 5,
                description: String::new(),
            },
            vec![role("primary", true, true), role("replica", false, false)],
        )
    }

    #[test]
    fn roles_must_fit_the_topology() {
        let (t, roles) = pr();
        let good = [
            inst("a", "primary", true, None),
            inst("b", "replica", false, None),
        ];
        assert!(roles_fit(&t, &roles, &good).is_ok());
        let cases: Vec<(Vec<InstanceView>, &str)> = vec![
            (
                vec![
                    inst("a", "primary", true, None),
                    inst("b", "primary", true, None),
                ],
                "exclusive",
            ),
            (
                vec![
                    inst("a", "replica", false, None),
                    inst("b", "replica", false, None),
                ],
                "0 writable",
            ),
            (
                vec![
                    inst("a", "primary", true, None),
                    inst("b", "replica", true, None),
                ],
                "read-only",
            ),
            (
                vec![
                    inst("a", "primary", true, None),
                    inst("b", "leader", false, None),
                ],
                "does not have",
            ),
            (vec![], "no instances"),
        ];
        for (instances, want) in cases {
            let e = roles_fit(&t, &roles, &instances).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut sick = good.clone();
        sick[1].health = "unhealthy".into();
        assert!(roles_fit(&t, &roles, &sick)
            .unwrap_err()
            .contains("unhealthy"));
    }

    #[test]
    fn each_shard_needs_its_own_writer() {
        let (mut t, roles) = pr();
        t.kind = TopologyKind::Sharded;
        let ok = [
            inst("a", "primary", true, Some(0)),
            inst("b", "replica", false, Some(0)),
            inst("c", "primary", true, Some(1)),
            inst("d", "replica", false, Some(1)),
        ];
        assert!(roles_fit(&t, &roles, &ok).is_ok());
        let mut bad = ok.clone();
        bad[2] = inst("c", "replica", false, Some(1));
        assert!(roles_fit(&t, &roles, &bad).unwrap_err().contains("shard 1"));
    }

    fn param(ty: ParamType, default: Option<Value>) -> ParamSpec {
        ParamSpec {
            name: "p".into(),
            type_: ty,
            default_value: default,
            apply: ApplyMode::Dynamic,
            description: String::new(),
            versions: vec![],
        }
    }

    #[test]
    fn changed_values_stay_inside_the_bounds_and_refused_ones_outside() {
        let int = |min, max, d| {
            param(
                ParamType::Integer(IntRange { min, max }),
                Some(Value::Integer(d)),
            )
        };
        assert_eq!(changed_value(&int(0, 10, 5)).as_deref(), Some("6"));
        assert_eq!(changed_value(&int(0, 10, 10)).as_deref(), Some("9"));
        assert_eq!(changed_value(&int(7, 7, 7)), None);
        let size = param(
            ParamType::SizeBytes(IntRange {
                min: 1,
                max: 1 << 30,
            }),
            Some(Value::Integer(1 << 20)),
        );
        assert_eq!(changed_value(&size).as_deref(), Some("2097152"));
        let off = param(
            ParamType::DurationMs(IntRange {
                min: 0,
                max: 3_600_000,
            }),
            Some(Value::Integer(0)),
        );
        assert_eq!(
            changed_value(&off).as_deref(),
            Some("60000"),
            "a minute, not 1 ms"
        );
        let b = param(ParamType::Boolean, Some(Value::Boolean(false)));
        assert_eq!(changed_value(&b).as_deref(), Some("true"));
        let c = param(
            ParamType::Choice(vec!["a".into(), "b".into()]),
            Some(Value::Text("a".into())),
        );
        assert_eq!(changed_value(&c).as_deref(), Some("b"));
        assert_eq!(
            changed_value(&param(ParamType::Text, Some(Value::Text("x".into())))),
            None
        );
        assert_eq!(changed_value(&param(ParamType::Boolean, None)), None);

        assert_eq!(refused_value(&int(0, 10, 5)).as_deref(), Some("11"));
        assert_eq!(refused_value(&b).as_deref(), Some("maybe"));
        assert_eq!(refused_value(&c).as_deref(), Some("not-a-choice"));
        assert_eq!(refused_value(&param(ParamType::Text, None)), None);
    }

    #[test]
    fn deadlines_are_judged_per_hook() {
        let stat = |hook: &str, hits, max_ms, limit_ms| HookStatView {
            hook: hook.into(),
            calls: 10,
            failures: hits,
            deadline_hits: hits,
            max_ms,
            mean_ms: max_ms / 2,
            limit_ms,
        };
        let ok = [stat("probe", 0, 40, 1000), stat("backup", 0, 900, 60_000)];
        let d = deadlines_kept(&ok).unwrap();
        assert!(
            d.contains("closest: probe at most 40 ms of its 1000 ms (4 %)"),
            "{d}"
        );
        let bad = [stat("probe", 2, 1000, 1000), stat("metrics", 0, 3, 5000)];
        let e = deadlines_kept(&bad).unwrap_err();
        assert!(e.contains("probe: 2 of 10"), "{e}");
    }

    #[test]
    fn metric_names_are_judged_by_the_sdk_rule() {
        let s = |name: &str, kind: &str| MetricSample {
            name: name.into(),
            kind: kind.into(),
            value: 1.0,
            labels: vec![],
            help: String::new(),
        };
        let samples = [
            s("demo_items", "gauge"),
            s("demo_hits_total", "counter"),
            s("demo_hits", "counter"),
            s("demo_wait_ms", "gauge"),
            s("other_items", "gauge"),
        ];
        let bad = bad_metric_names("demo", &samples);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("demo_hits_total")), "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("base units")), "{bad:?}");
        assert!(
            bad.iter().any(|b| b.contains("demo_other_items")),
            "{bad:?}"
        );
    }
}
