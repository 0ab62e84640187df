//! Which HA family a cluster belongs to, read from its addon's manifest, and the pure rules of
//! the quorum family: the sizes a quorum may have, whether a quorum stands, which member
//! leads. The primary-replica family's decisions live in `ha`; a quorum cluster is never
//! promoted or fenced by the host (the engine elects its own leader).

use shoal_runtime::wit;

use crate::store::{Desired, Health, InstanceRow, Phase, Role};

/// How a cluster is kept available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One writable primary the host elects, fences and promotes; read-only replicas.
    PrimaryReplica,
    /// Every member votes and the engine elects its leader; the host probes, routes and
    /// restarts, never promotes.
    Quorum,
    /// Shards, each a replica group the engine fails over itself; the host makes one engine
    /// cluster of them (`form-shards`), probes, routes, restarts and replaces members.
    Sharded,
}

impl Family {
    /// The engine elects leaders; the host never promotes or fences.
    pub fn engine_elects(self) -> bool {
        matches!(self, Family::Quorum | Family::Sharded)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::PrimaryReplica => "primary-replica",
            Family::Quorum => "quorum",
            Family::Sharded => "sharded",
        })
    }
}

/// The family of a cluster: sharded when its spec asks for shards, else its engine's
/// ([`family`]).
pub fn family_of(m: &wit::AddonManifest, spec: &shoal_api::ClusterSpec) -> Family {
    if spec.shards.is_some() {
        Family::Sharded
    } else {
        family(m)
    }
}

/// The family of an engine: quorum when its manifest declares a quorum topology and no
/// standalone or primary-replica one; primary-replica otherwise (a standalone engine is a
/// primary without replicas).
pub fn family(m: &wit::AddonManifest) -> Family {
    let has = |k: wit::TopologyKind| m.topologies.iter().any(|t| t.kind == k);
    if has(wit::TopologyKind::Quorum)
        && !has(wit::TopologyKind::PrimaryReplica)
        && !has(wit::TopologyKind::Standalone)
    {
        Family::Quorum
    } else {
        Family::PrimaryReplica
    }
}

/// A topology kind as the manifest spells it.
pub fn kind_name(k: wit::TopologyKind) -> &'static str {
    match k {
        wit::TopologyKind::Standalone => "standalone",
        wit::TopologyKind::PrimaryReplica => "primary-replica",
        wit::TopologyKind::Quorum => "quorum",
        wit::TopologyKind::Sharded => "sharded",
    }
}

/// The sharded topology the manifest declares, if any.
pub fn sharded_topology(m: &wit::AddonManifest) -> Option<&wit::Topology> {
    m.topologies
        .iter()
        .find(|t| t.kind == wit::TopologyKind::Sharded)
}

/// The quorum topology the manifest declares, if any.
pub fn quorum_topology(m: &wit::AddonManifest) -> Option<&wit::Topology> {
    m.topologies
        .iter()
        .find(|t| t.kind == wit::TopologyKind::Quorum)
}

/// Why a quorum or sharded change is refused: the rule it breaks, with the members and
/// counts involved. Refused changes change nothing; the message is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{engine} runs a quorum of {min} to {max} members (got {got})")]
    QuorumSize {
        engine: String,
        min: u32,
        max: u32,
        got: u32,
    },
    #[error(
        "{engine} is a quorum: its member count must be odd, so that a majority survives a \
         split (got {got}; use {} or {})",
        got - 1,
        got + 1
    )]
    EvenQuorum { engine: String, got: u32 },
    #[error(
        "the quorum does not stand now ({healthy} of {members} members healthy, {needed} \
         needed): a membership change could not be committed; bring the members back first"
    )]
    QuorumDown {
        healthy: usize,
        members: usize,
        needed: usize,
    },
    #[error(
        "removing {member} would leave {healthy_after} healthy of {members_after} members, \
         fewer than the {needed} a quorum needs"
    )]
    RemovalLosesQuorum {
        member: String,
        healthy_after: usize,
        members_after: usize,
        needed: usize,
    },
    #[error("no member {member:?}; the members: {}", members.join(", "))]
    NoSuchMember {
        member: String,
        members: Vec<String>,
    },
    #[error(
        "replacing {member} needs {needed} healthy other members of {members} to commit it \
         and copy the data from; {healthy} are healthy"
    )]
    ReplaceLosesQuorum {
        member: String,
        needed: usize,
        members: usize,
        healthy: usize,
    },
    #[error("shards must be between 1 and {max} (got {got})")]
    ShardCount { max: u32, got: u32 },
    #[error(
        "{engine} runs {min} to {max} members per shard (replicas counts the members of each \
         shard; got {got})"
    )]
    ShardSize {
        engine: String,
        min: u32,
        max: u32,
        got: u32,
    },
    #[error("{member} is not a member of this sharded cluster")]
    NotAShardMember { member: String },
    #[error(
        "{member} cannot be replaced: no other member of shard {shard} is a healthy primary \
         to copy its data from (replacing it would lose the shard's data; bring a member of \
         the shard back first)"
    )]
    NoShardSource { member: String, shard: u32 },
    #[error(
        "shard {shard}: removing {member} would take the shard's primary; fail it over first \
         or keep {members} members"
    )]
    RemovesShardPrimary {
        shard: u32,
        member: String,
        members: usize,
    },
    #[error("shard {shard}: removing {member} would leave no healthy member")]
    EmptiesShard { shard: u32, member: String },
}

impl From<Refusal> for String {
    fn from(r: Refusal) -> String {
        r.to_string()
    }
}

/// Whether a quorum of `members` voting members may be created: odd (an even count
/// tolerates no more failures than the odd one below it and can split evenly) and within
/// the sizes the addon allows.
pub fn check_size(engine: &str, members: u32, min: u32, max: u32) -> Result<(), Refusal> {
    if members < min || members > max {
        return Err(Refusal::QuorumSize {
            engine: engine.into(),
            min,
            max,
            got: members,
        });
    }
    if members.is_multiple_of(2) {
        return Err(Refusal::EvenQuorum {
            engine: engine.into(),
            got: members,
        });
    }
    Ok(())
}

/// Votes needed to elect a leader and commit among `voters` members.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// One member of a quorum as the host last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSeen<'a> {
    pub name: &'a str,
    /// Its process runs and its last probe was healthy.
    pub healthy: bool,
    /// Its last probe said it leads (writable).
    pub leads: bool,
    /// The engine's term it reported.
    pub term: Option<u64>,
}

/// A quorum's state in one line and the facts behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    pub members: usize,
    pub healthy: usize,
    /// The leader, when exactly one healthy member leads at the highest term seen.
    pub leader: Option<String>,
    pub term: Option<u64>,
    /// A majority of members is healthy.
    pub has_quorum: bool,
}

impl std::fmt::Display for QuorumState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quorum {}/{}", self.healthy, self.members)?;
        match &self.leader {
            Some(l) => write!(f, ", leader {l}")?,
            None => f.write_str(", no leader")?,
        }
        if !self.has_quorum {
            write!(
                f,
                " (lost: {} of {} needed)",
                self.healthy,
                majority(self.members)
            )?;
        }
        Ok(())
    }
}

/// What the members' last probes say about the quorum. A member that claims to lead at a
/// term below another's is a deposed leader that has not noticed yet: not the leader.
pub fn quorum_state(members: &[MemberSeen<'_>]) -> QuorumState {
    let healthy = members.iter().filter(|m| m.healthy).count();
    let term = members.iter().filter_map(|m| m.term).max();
    let leaders: Vec<&MemberSeen> = members
        .iter()
        .filter(|m| m.healthy && m.leads && m.term == term)
        .collect();
    QuorumState {
        members: members.len(),
        healthy,
        leader: match leaders.as_slice() {
            [one] => Some(one.name.to_string()),
            _ => None,
        },
        term,
        has_quorum: !members.is_empty() && healthy >= majority(members.len()),
    }
}

/// One step of a quorum's membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Admit a new member (member-join on the leader), then start it.
    Add,
    /// Take this member out of the membership (member-leave on another member, while it still
    /// runs: the quorum must commit its removal), then stop and delete it.
    Remove(String),
}

/// A member as a scale plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter<'a> {
    pub name: &'a str,
    pub ordinal: u32,
    pub healthy: bool,
    pub leads: bool,
}

/// The steps that take a quorum of `members` to `target` members, one member at a time, or
/// why not. Refused: a size the addon does not allow (see [`check_size`]), a quorum that
/// does not stand now (each step must be committed by a majority), and a removal that would
/// leave fewer healthy members than the smaller quorum needs. Removed first: unhealthy
/// members, then followers, newest first; the leader last. An addition makes the new member
/// count toward the majority before it runs: when the healthy members are not a majority of
/// the larger membership (1 → 2), the cluster takes no writes until the new member has
/// started, which the plan says in `notes`.
pub fn plan_scale(
    engine: &str,
    members: &[Voter<'_>],
    target: u32,
    min: u32,
    max: u32,
) -> Result<(Vec<Step>, Vec<String>), Refusal> {
    check_size(engine, target, min, max)?;
    let n = members.len();
    let healthy = members.iter().filter(|m| m.healthy).count();
    if healthy < majority(n) {
        return Err(Refusal::QuorumDown {
            healthy,
            members: n,
            needed: majority(n),
        });
    }
    let target = target as usize;
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    if target > n {
        // Each added member is healthy before the next is added.
        for (up, size) in (healthy..).zip(n + 1..=target) {
            if up < majority(size) {
                notes.push(format!(
                    "growing to {size} members: {up} healthy of the {} needed, so no writes \
                     until the new member has started",
                    majority(size)
                ));
            }
            steps.push(Step::Add);
        }
        return Ok((steps, notes));
    }
    let mut order: Vec<&Voter> = members.iter().collect();
    order.sort_by_key(|m| (m.healthy, m.leads, std::cmp::Reverse(m.ordinal)));
    let (mut size, mut up) = (n, healthy);
    for m in order.into_iter().take(n - target) {
        let after = up - usize::from(m.healthy);
        if after < majority(size - 1) {
            return Err(Refusal::RemovalLosesQuorum {
                member: m.name.to_string(),
                healthy_after: after,
                members_after: size - 1,
                needed: majority(size - 1),
            });
        }
        steps.push(Step::Remove(m.name.to_string()));
        size -= 1;
        up = after;
    }
    Ok((steps, notes))
}

/// Whether member `name` may be replaced (taken out of the membership, given fresh data,
/// admitted again): the other members alone must be a healthy majority, since they commit
/// both changes and hold the data the new copy is made from.
pub fn check_replace(members: &[Voter<'_>], name: &str) -> Result<(), Refusal> {
    if !members.iter().any(|m| m.name == name) {
        return Err(Refusal::NoSuchMember {
            member: name.into(),
            members: members.iter().map(|m| m.name.to_string()).collect(),
        });
    }
    let others = members
        .iter()
        .filter(|m| m.name != name && m.healthy)
        .count();
    let need = majority(members.len());
    if others < need {
        return Err(Refusal::ReplaceLosesQuorum {
            member: name.into(),
            needed: need,
            members: members.len(),
            healthy: others,
        });
    }
    Ok(())
}

/// A member with data, as a lost quorum's recovery weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor<'a> {
    pub name: &'a str,
    /// The engine position (raft index) it last reported.
    pub position: u64,
    /// It answered the probe made for this recovery (its position is current, and it will
    /// be stopped cleanly, keeping what it reported); a hung member's position is from an
    /// earlier probe, and it is killed, losing what it had not written down.
    pub answered: bool,
    pub healthy: bool,
    pub alive: bool,
    pub ordinal: u32,
}

/// The member a lost quorum is recovered from: the most advanced position; among equals one
/// that answered now, then a healthy one, a running one, the oldest.
pub fn pick_survivor<'a>(members: &[Survivor<'a>]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| {
            (
                m.position,
                m.answered,
                m.healthy,
                m.alive,
                std::cmp::Reverse(m.ordinal),
            )
        })
        .map(|m| m.name)
}

/// The members of a quorum cluster's rows as a scale plan sees them.
pub fn voters<'a>(nodes: &dyn crate::nodes::Nodes, rows: &'a [InstanceRow]) -> Vec<Voter<'a>> {
    let leader = state_of(rows).and_then(|q| q.leader);
    rows.iter()
        .filter(|i| i.role == Role::Member && i.desired == Desired::Running)
        .map(|i| Voter {
            name: &i.name,
            ordinal: i.ordinal,
            healthy: i.state == Phase::Running && i.health == Health::Healthy && nodes.alive(i),
            leads: leader.as_deref() == Some(i.name.as_str()),
        })
        .collect()
}

/// The quorum state of a cluster's instance rows; `None` when they are not quorum members.
/// A member counts as healthy when it runs and its last probe was healthy.
pub fn state_of(rows: &[InstanceRow]) -> Option<QuorumState> {
    let members: Vec<MemberSeen> = rows
        .iter()
        .filter(|i| i.role == Role::Member && i.desired == Desired::Running)
        .map(|i| MemberSeen {
            name: &i.name,
            healthy: i.state == Phase::Running && i.health == Health::Healthy,
            leads: i.writable == Some(true),
            term: i.term,
        })
        .collect();
    (!members.is_empty()).then(|| quorum_state(&members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_quorum_recovers_from_the_most_advanced_member_that_answered() {
        let m = |name, position, answered, ordinal| Survivor {
            name,
            position,
            answered,
            healthy: false,
            alive: true,
            ordinal,
        };
        // Two hung members (alive, silent) and the old leader, all at the same index: the
        // one that answered, whatever its ordinal (the hung ones are killed, and what they
        // had only in memory is gone).
        let tie = [
            m("e-0", 90, false, 0),
            m("e-1", 90, false, 1),
            m("e-2", 90, true, 2),
        ];
        assert_eq!(pick_survivor(&tie), Some("e-2"));
        // A member that reported more before it hung is still more advanced.
        let ahead = [m("e-0", 95, false, 0), m("e-2", 90, true, 2)];
        assert_eq!(pick_survivor(&ahead), Some("e-0"));
        // Among equals that all answered: the oldest.
        let all = [m("e-1", 7, true, 1), m("e-0", 7, true, 0)];
        assert_eq!(pick_survivor(&all), Some("e-0"));
        assert_eq!(pick_survivor(&[]), None);
    }

    fn m(name: &str, healthy: bool, leads: bool, term: u64) -> MemberSeen<'_> {
        MemberSeen {
            name,
            healthy,
            leads,
            term: Some(term),
        }
    }

    #[test]
    fn sizes_must_be_odd_and_allowed() {
        assert!(check_size("etcd", 1, 1, 7).is_ok());
        assert!(check_size("etcd", 3, 1, 7).is_ok());
        assert!(check_size("etcd", 7, 1, 7).is_ok());
        let e = check_size("etcd", 4, 1, 7).unwrap_err().to_string();
        assert!(e.contains("odd") && e.contains("use 3 or 5"), "{e}");
        let e = check_size("etcd", 9, 1, 7).unwrap_err().to_string();
        assert!(e.contains("1 to 7"), "{e}");
        assert!(check_size("etcd", 0, 1, 7).is_err());
        assert!(check_size("zk", 1, 3, 7).is_err());
    }

    #[test]
    fn majorities() {
        let table = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)];
        for (voters, need) in table {
            assert_eq!(majority(voters), need, "{voters}");
        }
    }

    #[test]
    fn the_quorum_in_one_line() {
        // Everyone up, e-1 leads.
        let s = quorum_state(&[
            m("e-0", true, false, 2),
            m("e-1", true, true, 2),
            m("e-2", true, false, 2),
        ]);
        assert_eq!(s.to_string(), "quorum 3/3, leader e-1");
        assert!(s.has_quorum);
        // The leader killed: two left, no leader yet, quorum holds.
        let s = quorum_state(&[
            m("e-0", true, false, 2),
            m("e-1", false, true, 2),
            m("e-2", true, false, 2),
        ]);
        assert_eq!(s.to_string(), "quorum 2/3, no leader");
        assert!(s.has_quorum);
        // A new leader at term 3 while the old one, partitioned, still says it leads.
        let s = quorum_state(&[
            m("e-0", true, true, 3),
            m("e-1", true, true, 2),
            m("e-2", true, false, 3),
        ]);
        assert_eq!(s.leader.as_deref(), Some("e-0"));
        // Two of three gone: lost.
        let s = quorum_state(&[
            m("e-0", true, false, 3),
            m("e-1", false, false, 3),
            m("e-2", false, false, 3),
        ]);
        assert!(!s.has_quorum);
        assert_eq!(s.to_string(), "quorum 1/3, no leader (lost: 1 of 2 needed)");
        // Five members, two down: still a quorum.
        let five: Vec<MemberSeen> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(n, name)| m(name, n < 3, n == 0, 7))
            .collect();
        let s = quorum_state(&five);
        assert!(s.has_quorum);
        assert_eq!(s.to_string(), "quorum 3/5, leader a");
    }

    fn v(name: &str, ordinal: u32, healthy: bool, leads: bool) -> Voter<'_> {
        Voter {
            name,
            ordinal,
            healthy,
            leads,
        }
    }

    #[test]
    fn scale_steps_one_member_at_a_time_and_never_lose_quorum() {
        let three = [
            v("e-0", 0, true, true),
            v("e-1", 1, true, false),
            v("e-2", 2, true, false),
        ];
        // 3 -> 5: two additions, no pause.
        let (steps, notes) = plan_scale("etcd", &three, 5, 1, 7).unwrap();
        assert_eq!(steps, vec![Step::Add, Step::Add]);
        assert!(notes.is_empty());
        // 3 -> 1: followers newest first; the leader stays.
        let (steps, _) = plan_scale("etcd", &three, 1, 1, 7).unwrap();
        assert_eq!(
            steps,
            vec![Step::Remove("e-2".into()), Step::Remove("e-1".into())]
        );
        // An even target, or one the addon does not allow: refused.
        assert!(matches!(
            plan_scale("etcd", &three, 4, 1, 7),
            Err(Refusal::EvenQuorum { got: 4, .. })
        ));
        assert!(plan_scale("etcd", &three, 9, 1, 7).is_err());
        // 3 -> 1 while a member is down: the down one goes first (its removal is committed
        // by the two that run), then a follower; with two down no quorum stands at all.
        let one_down = [
            v("e-0", 0, true, true),
            v("e-1", 1, false, false),
            v("e-2", 2, true, false),
        ];
        let (steps, _) = plan_scale("etcd", &one_down, 1, 1, 7).unwrap();
        assert_eq!(steps[0], Step::Remove("e-1".into()));
        let two_down = [
            v("e-0", 0, true, false),
            v("e-1", 1, false, false),
            v("e-2", 2, false, false),
        ];
        let e = plan_scale("etcd", &two_down, 5, 1, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not stand"), "{e}");
        // 5 -> 3 with two down: removing them keeps 3 of 3.
        let five: Vec<Voter> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(n, name)| v(name, n as u32, n < 3, n == 0))
            .collect();
        let (steps, _) = plan_scale("etcd", &five, 3, 1, 7).unwrap();
        assert_eq!(
            steps,
            vec![Step::Remove("e".into()), Step::Remove("d".into())]
        );
        // 5 -> 1 with two down: the down ones go first, so every step keeps a majority
        // (removing a follower before them would not).
        let (steps, _) = plan_scale("etcd", &five, 1, 1, 7).unwrap();
        let names: Vec<Step> = ["e", "d", "c", "b"]
            .iter()
            .map(|n| Step::Remove(n.to_string()))
            .collect();
        assert_eq!(steps, names);
        // 1 -> 3: the first addition pauses writes until the new member runs.
        let (steps, notes) = plan_scale("etcd", &[v("s-0", 0, true, true)], 3, 1, 7).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn a_member_is_replaced_only_while_the_others_hold_a_quorum() {
        let three = [
            v("e-0", 0, true, true),
            v("e-1", 1, false, false),
            v("e-2", 2, true, false),
        ];
        assert!(check_replace(&three, "e-1").is_ok());
        // Replacing a healthy one while another is down leaves one other: refused.
        let e = check_replace(&three, "e-0").unwrap_err().to_string();
        assert!(e.contains("needs 2 healthy other"), "{e}");
        // The only healthy member.
        let lone = [
            v("e-0", 0, true, true),
            v("e-1", 1, false, false),
            v("e-2", 2, false, false),
        ];
        assert!(check_replace(&lone, "e-0").is_err());
        assert!(matches!(
            check_replace(&three, "e-9"),
            Err(Refusal::NoSuchMember { .. })
        ));
        // A single-member quorum has nothing to copy from.
        assert!(check_replace(&[v("s-0", 0, true, true)], "s-0").is_err());
    }

    #[test]
    fn families_follow_the_manifest() {
        let t = |kind| wit::Topology {
            kind,
            roles: vec![],
            min_members: 1,
            max_members: 3,
            description: String::new(),
        };
        let mut m = wit::AddonManifest {
            engine: "x".into(),
            display_name: "X".into(),
            description: String::new(),
            addon_version: "0".into(),
            versions: vec![],
            topologies: vec![t(wit::TopologyKind::Quorum)],
            roles: vec![],
            ports: vec![],
            backup_methods: vec![],
            parameters: vec![],
            capabilities: vec![],
            limits: vec![],
            client: None,
            admin_user: None,
            sync_replication: wit::SyncSupport::None,
        };
        assert_eq!(family(&m), Family::Quorum);
        m.topologies.push(t(wit::TopologyKind::PrimaryReplica));
        assert_eq!(family(&m), Family::PrimaryReplica);
        m.topologies = vec![t(wit::TopologyKind::Standalone)];
        assert_eq!(family(&m), Family::PrimaryReplica);
    }
}
