//! The pure rules of the sharded topology: the shard counts and shard sizes a cluster may
//! have, what each shard's members' last probes say (who leads it, whether it serves), which
//! member may be replaced, and the steps of a change of shard size. A shard's failover is
//! the engine's (the host never promotes or fences a shard member); the acts live in `ops`.

use std::collections::BTreeMap;

use crate::store::{Desired, Health, InstanceRow, Phase, Role};
use crate::topology::Refusal;

/// The most shards a cluster may have (a documented default: the host allocates every
/// member of every shard on one machine).
pub const MAX_SHARDS: u32 = 64;

/// Whether `shards` shards of `per_shard` members each may be created: at least one shard,
/// at most [`MAX_SHARDS`], each shard within the sizes the addon's sharded topology allows.
pub fn check_shape(
    engine: &str,
    shards: u32,
    per_shard: u32,
    min: u32,
    max: u32,
) -> Result<(), Refusal> {
    if shards == 0 || shards > MAX_SHARDS {
        return Err(Refusal::ShardCount {
            max: MAX_SHARDS,
            got: shards,
        });
    }
    if per_shard < min || per_shard > max {
        return Err(Refusal::ShardSize {
            engine: engine.into(),
            min,
            max,
            got: per_shard,
        });
    }
    Ok(())
}

/// One member of a shard as the host last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    pub name: &'a str,
    pub shard: u32,
    pub ordinal: u32,
    /// Its process runs and its last probe was healthy.
    pub healthy: bool,
    /// Its last probe said it takes the shard's writes.
    pub writable: bool,
}

/// One shard's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    pub index: u32,
    pub members: usize,
    pub healthy: usize,
    /// The member that takes the shard's writes, when exactly one healthy member does.
    pub primary: Option<String>,
}

impl std::fmt::Display for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} {}/{}", self.index, self.healthy, self.members)?;
        match &self.primary {
            Some(p) => write!(f, ", primary {p}"),
            None => f.write_str(", no primary"),
        }
    }
}

/// Every shard's state, by shard index.
pub fn shards(members: &[Seen<'_>]) -> Vec<ShardState> {
    let mut by: BTreeMap<u32, Vec<&Seen>> = BTreeMap::new();
    for m in members {
        by.entry(m.shard).or_default().push(m);
    }
    by.into_iter()
        .map(|(index, ms)| {
            let writers: Vec<&&Seen> = ms.iter().filter(|m| m.healthy && m.writable).collect();
            ShardState {
                index,
                members: ms.len(),
                healthy: ms.iter().filter(|m| m.healthy).count(),
                primary: match writers.as_slice() {
                    [one] => Some(one.name.to_string()),
                    _ => None,
                },
            }
        })
        .collect()
}

/// A sharded cluster's state in one line ("3 shards: shard 0 2/2, primary r-s0-0; …"),
/// and whether every shard serves (has its primary).
pub fn summary(states: &[ShardState]) -> (String, bool) {
    let parts: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    (
        format!("{} shards: {}", states.len(), parts.join("; ")),
        states.iter().all(|s| s.primary.is_some()),
    )
}

/// The members of a sharded cluster among its instance rows, as [`shards`] takes them.
pub fn seen<'a>(nodes: &dyn crate::nodes::Nodes, rows: &'a [InstanceRow]) -> Vec<Seen<'a>> {
    rows.iter()
        .filter(|i| i.role == Role::ShardMember && i.desired == Desired::Running)
        .filter_map(|i| {
            Some(Seen {
                name: &i.name,
                shard: i.shard?,
                ordinal: i.ordinal,
                healthy: i.state == Phase::Running && i.health == Health::Healthy && nodes.alive(i),
                writable: i.writable == Some(true),
            })
        })
        .collect()
}

/// The shard states of a cluster's instance rows; `None` when they are not sharded.
pub fn state_of(nodes: &dyn crate::nodes::Nodes, rows: &[InstanceRow]) -> Option<Vec<ShardState>> {
    let members = seen(nodes, rows);
    (!members.is_empty()).then(|| shards(&members))
}

/// Whether member `name` may be replaced (taken out of the engine cluster, given fresh
/// data, admitted again as a copy of its shard): another member of its shard must be
/// healthy and take the shard's writes, since the new copy is made from it.
pub fn check_replace(members: &[Seen<'_>], name: &str) -> Result<(), Refusal> {
    let me = members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Refusal::NotAShardMember {
            member: name.into(),
        })?;
    let source = members
        .iter()
        .any(|m| m.shard == me.shard && m.name != name && m.healthy && m.writable);
    if !source {
        return Err(Refusal::NoShardSource {
            member: name.into(),
            shard: me.shard,
        });
    }
    Ok(())
}

/// How long the host leaves a dead shard primary down so the engine can elect one of its
/// replicas (a documented default): restarted before that, it would come back as the
/// shard's primary with whatever it had persisted (nothing, with persistence off) and its
/// replicas would copy that.
pub const HANDOVER: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the restart of dead member `dead` waits: it was its shard's primary (its last
/// probe said it took writes), another member of the shard runs healthy, none has taken
/// over yet, and it has been down less than [`HANDOVER`]. Once a replica leads, the dead
/// member restarts and rejoins as a replica.
/// `alive`: whether a row's process runs.
pub fn hold_restart(
    dead: &InstanceRow,
    all: &[InstanceRow],
    down_for: std::time::Duration,
    alive: impl Fn(&InstanceRow) -> bool,
) -> bool {
    if dead.role != Role::ShardMember || dead.writable != Some(true) || down_for >= HANDOVER {
        return false;
    }
    let others = || {
        all.iter().filter(|r| {
            r.name != dead.name && r.shard == dead.shard && r.state == Phase::Running && alive(r)
        })
    };
    let replica_up = others().any(|r| r.health == Health::Healthy || r.health == Health::Degraded);
    let taken_over = others().any(|r| r.writable == Some(true));
    replica_up && !taken_over
}

/// One step of a change of shard size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add a member to this shard (it starts empty and copies the shard's primary).
    Add(u32),
    /// Remove this member (never a shard's primary).
    Remove(String),
}

/// The steps that give every shard `target` members, or why not: a size outside the
/// addon's `min..max`; a removal that would take a shard's primary or leave it without a
/// healthy member. Removed first: unhealthy members, then the newest.
pub fn plan_resize(
    engine: &str,
    members: &[Seen<'_>],
    target: u32,
    min: u32,
    max: u32,
) -> Result<Vec<Step>, Refusal> {
    if target < min || target > max {
        return Err(Refusal::ShardSize {
            engine: engine.into(),
            min,
            max,
            got: target,
        });
    }
    let mut by: BTreeMap<u32, Vec<&Seen>> = BTreeMap::new();
    for m in members {
        by.entry(m.shard).or_default().push(m);
    }
    let target = target as usize;
    let mut steps = Vec::new();
    for (shard, mut ms) in by {
        if ms.len() < target {
            steps.extend(std::iter::repeat_n(Step::Add(shard), target - ms.len()));
            continue;
        }
        ms.sort_by_key(|m| (m.writable, m.healthy, std::cmp::Reverse(m.ordinal)));
        let mut left = ms.iter().filter(|m| m.healthy).count();
        for m in ms.iter().take(ms.len() - target) {
            if m.writable {
                return Err(Refusal::RemovesShardPrimary {
                    shard,
                    member: m.name.to_string(),
                    members: ms.len(),
                });
            }
            left -= usize::from(m.healthy);
            if left == 0 {
                return Err(Refusal::EmptiesShard {
                    shard,
                    member: m.name.to_string(),
                });
            }
            steps.push(Step::Remove(m.name.to_string()));
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, shard: u32, ordinal: u32, healthy: bool, writable: bool) -> Seen<'_> {
        Seen {
            name,
            shard,
            ordinal,
            healthy,
            writable,
        }
    }

    #[test]
    fn shapes_outside_the_addons_sizes_are_refused() {
        let cases = [
            (3, 2, Ok(())),
            (1, 1, Ok(())),
            (0, 2, Err("shards must be between 1 and 64 (got 0)")),
            (65, 2, Err("shards must be between 1 and 64 (got 65)")),
            (3, 0, Err("redis runs 1 to 5 members per shard")),
            (3, 6, Err("redis runs 1 to 5 members per shard")),
        ];
        for (shards, per, want) in cases {
            let got = check_shape("redis", shards, per, 1, 5);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{shards}x{per}"),
                Err(w) => assert!(got.unwrap_err().to_string().contains(w), "{shards}x{per}"),
            }
        }
    }

    #[test]
    fn each_shard_has_a_primary_only_when_exactly_one_healthy_member_writes() {
        type Case<'a> = (Vec<Seen<'a>>, Vec<Option<&'a str>>, bool);
        let cases: Vec<Case> = vec![
            // Healthy: each shard's primary.
            (
                vec![
                    m("a0", 0, 0, true, true),
                    m("a1", 0, 1, true, false),
                    m("b0", 1, 2, true, true),
                    m("b1", 1, 3, true, false),
                ],
                vec![Some("a0"), Some("b0")],
                true,
            ),
            // Shard 1's primary killed, its replica not yet promoted by the engine.
            (
                vec![
                    m("a0", 0, 0, true, true),
                    m("b0", 1, 2, false, true),
                    m("b1", 1, 3, true, false),
                ],
                vec![Some("a0"), None],
                false,
            ),
            // The engine promoted the replica.
            (
                vec![
                    m("a0", 0, 0, true, true),
                    m("b0", 1, 2, false, false),
                    m("b1", 1, 3, true, true),
                ],
                vec![Some("a0"), Some("b1")],
                true,
            ),
            // Two writers in one shard (a partition): no primary routed to.
            (
                vec![m("a0", 0, 0, true, true), m("a1", 0, 1, true, true)],
                vec![None],
                false,
            ),
        ];
        for (members, want, whole) in cases {
            let st = shards(&members);
            let got: Vec<Option<&str>> = st.iter().map(|s| s.primary.as_deref()).collect();
            assert_eq!(got, want);
            assert_eq!(summary(&st).1, whole);
        }
        let st = shards(&[m("a0", 0, 0, true, true), m("a1", 0, 1, false, false)]);
        assert_eq!(summary(&st).0, "1 shards: shard 0 1/2, primary a0");
    }

    #[test]
    fn a_member_is_replaced_only_while_its_shard_has_another_healthy_primary() {
        let members = [
            m("a0", 0, 0, true, true),
            m("a1", 0, 1, false, false),
            m("b0", 1, 2, true, true),
            m("b1", 1, 3, true, false),
        ];
        assert_eq!(check_replace(&members, "a1"), Ok(()));
        assert_eq!(check_replace(&members, "b1"), Ok(()));
        let e = check_replace(&members, "a0").unwrap_err().to_string();
        assert!(e.contains("no other member of shard 0"), "{e}");
        let e = check_replace(&members, "b0").unwrap_err().to_string();
        assert!(e.contains("shard 1"), "{e}");
        assert!(check_replace(&members, "zz").is_err());
    }

    fn row(name: &str, shard: u32, state: &str, health: &str, writable: bool) -> InstanceRow {
        InstanceRow {
            cluster: "r".into(),
            name: name.into(),
            ordinal: 0,
            role: Role::ShardMember,
            host: "127.0.0.1".into(),
            ports: Default::default(),
            dir: "/nonexistent".into(),
            desired: Desired::Running,
            state: crate::store::Phase::parse(state),
            process: None,
            restarts: 0,
            health: crate::store::Health::parse(health),
            observed_role: None,
            writable: Some(writable),
            lag_bytes: None,
            position: None,
            detail: String::new(),
            probed_ms: None,
            term: None,
            shard: Some(shard),
        }
    }

    /// Nodes whose processes run when their pid is in the list (no process is touched).
    struct Fake(Vec<u32>);

    impl crate::nodes::Nodes for Fake {
        fn start(&self, _: &shoal_local::ProcessSpec) -> Result<shoal_local::ProcessId, String> {
            Err("not in a test".into())
        }
        fn run<'a>(
            &'a self,
            _: &'a shoal_local::ProcessSpec,
            _: std::time::Duration,
        ) -> crate::nodes::NodeFuture<'a, Result<(), String>> {
            Box::pin(async { Err("not in a test".into()) })
        }
        fn is_running(&self, p: shoal_local::ProcessId) -> bool {
            self.0.contains(&p.pid)
        }
        fn stop(
            &self,
            _: shoal_local::ProcessId,
            _: i32,
            _: std::time::Duration,
        ) -> crate::nodes::NodeFuture<'_, bool> {
            Box::pin(async { false })
        }
        fn kill(&self, _: shoal_local::ProcessId) -> usize {
            0
        }
        fn kill_leftovers(&self, _: shoal_local::ProcessId) -> usize {
            0
        }
        fn wait_gone(
            &self,
            _: shoal_local::ProcessId,
            _: std::time::Duration,
        ) -> crate::nodes::NodeFuture<'_, bool> {
            Box::pin(async { true })
        }
        fn exited(&self, _: shoal_local::ProcessId) -> crate::nodes::NodeFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    #[test]
    fn a_member_whose_process_is_gone_is_not_healthy_whatever_its_last_probe_said() {
        let with_pid = |name: &str, shard: u32, pid: u32, writable: bool| {
            let mut r = row(name, shard, "running", "healthy", writable);
            r.process = Some(shoal_local::ProcessId { pid, start_time: 1 });
            r
        };
        let rows = [
            with_pid("a0", 0, 10, true),
            with_pid("a1", 0, 11, false),
            with_pid("b0", 1, 20, true),
            with_pid("b1", 1, 21, false),
        ];
        // Every process runs: both shards whole, and a replica may be replaced.
        let all = Fake(vec![10, 11, 20, 21]);
        assert!(seen(&all, &rows).iter().all(|m| m.healthy));
        assert_eq!(check_replace(&seen(&all, &rows), "a1"), Ok(()));
        // Shard 1's primary process died before a probe noticed: replacing its replica
        // would leave the shard with no copy, and is refused.
        let b0_gone = Fake(vec![10, 11, 21]);
        let members = seen(&b0_gone, &rows);
        assert!(!members.iter().find(|m| m.name == "b0").unwrap().healthy);
        assert!(check_replace(&members, "b1").is_err());
        assert_eq!(check_replace(&members, "a1"), Ok(()));
    }

    #[test]
    fn a_dead_shard_primary_waits_for_the_engine_to_elect_its_replica() {
        use std::time::Duration;
        let alive = |r: &InstanceRow| r.state == Phase::Running;
        let dead = row("a0", 0, "crashed", "unhealthy", true);
        let cases = [
            // Its replica runs and has not taken over: wait.
            (
                row("a1", 0, "running", "degraded", false),
                Duration::from_secs(2),
                true,
            ),
            // The engine elected the replica: restart (it rejoins as a replica).
            (
                row("a1", 0, "running", "healthy", true),
                Duration::from_secs(2),
                false,
            ),
            // No live replica: nobody else can serve the shard, restart at once.
            (
                row("a1", 0, "crashed", "unhealthy", false),
                Duration::from_secs(2),
                false,
            ),
            // The engine did not elect one in time: restart anyway.
            (row("a1", 0, "running", "degraded", false), HANDOVER, false),
            // Another shard's member does not count.
            (
                row("b1", 1, "running", "healthy", false),
                Duration::from_secs(2),
                false,
            ),
        ];
        for (other, down, want) in cases {
            let all = [dead.clone(), other.clone()];
            assert_eq!(
                hold_restart(&dead, &all, down, alive),
                want,
                "{other:?} after {down:?}"
            );
        }
        // A dead replica restarts at once.
        let replica = row("a1", 0, "crashed", "unhealthy", false);
        let all = [row("a0", 0, "running", "healthy", true), replica.clone()];
        assert!(!hold_restart(&replica, &all, Duration::ZERO, alive));
    }

    #[test]
    fn resizing_adds_to_every_shard_and_never_removes_a_primary() {
        let members = [
            m("a0", 0, 0, true, true),
            m("a1", 0, 1, true, false),
            m("b0", 1, 2, true, true),
            m("b1", 1, 3, false, false),
        ];
        assert_eq!(
            plan_resize("redis", &members, 3, 1, 5),
            Ok(vec![Step::Add(0), Step::Add(1)])
        );
        assert_eq!(
            plan_resize("redis", &members, 1, 1, 5),
            Ok(vec![Step::Remove("a1".into()), Step::Remove("b1".into())])
        );
        assert_eq!(plan_resize("redis", &members, 2, 1, 5), Ok(vec![]));
        assert!(plan_resize("redis", &members, 6, 1, 5).is_err());
        // A shard whose only healthy member is a replica: its primary cannot go.
        let members = [m("a0", 0, 0, false, false), m("a1", 0, 1, true, true)];
        assert_eq!(
            plan_resize("redis", &members, 1, 1, 5),
            Ok(vec![Step::Remove("a0".into())])
        );
        let members = [m("a0", 0, 0, true, true), m("a1", 0, 1, true, true)];
        let e = plan_resize("redis", &members, 1, 1, 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("primary"), "{e}");
    }
}
