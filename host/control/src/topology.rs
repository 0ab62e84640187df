//! Which HA family a cluster belongs to, read from its addon's manifest, and the pure rules of
//! the quorum family: the sizes a quorum may have, whether a quorum stands, which member
//! leads. The primary-replica family's decisions live in `ha`; a quorum cluster is never
//! promoted or fenced by the host (the engine elects its own leader).

use shoal_runtime::wit;

use crate::store::{Desired, InstanceRow};

/// The role recorded for every member of a quorum cluster: the host does not decide who
/// leads, so the row holds no leader/follower role; the probe's `observed_role` does.
pub const MEMBER: &str = "member";

/// How a cluster is kept available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One writable primary the host elects, fences and promotes; read-only replicas.
    PrimaryReplica,
    /// Every member votes and the engine elects its leader; the host probes, routes and
    /// restarts, never promotes.
    Quorum,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::PrimaryReplica => "primary-replica",
            Family::Quorum => "quorum",
        })
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

/// The quorum topology the manifest declares, if any.
pub fn quorum_topology(m: &wit::AddonManifest) -> Option<&wit::Topology> {
    m.topologies
        .iter()
        .find(|t| t.kind == wit::TopologyKind::Quorum)
}

/// Whether a quorum of `members` voting members may be created: odd (an even count
/// tolerates no more failures than the odd one below it and can split evenly) and within
/// the sizes the addon allows.
pub fn check_size(engine: &str, members: u32, min: u32, max: u32) -> Result<(), String> {
    if members < min || members > max {
        return Err(format!(
            "{engine} runs a quorum of {min} to {max} members (got {members})"
        ));
    }
    if members.is_multiple_of(2) {
        return Err(format!(
            "{engine} is a quorum: its member count must be odd, so that a majority \
             survives a split (got {members}; use {} or {})",
            members - 1,
            members + 1
        ));
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

/// The quorum state of a cluster's instance rows; `None` when they are not quorum members.
/// A member counts as healthy when it runs and its last probe was healthy.
pub fn state_of(rows: &[InstanceRow]) -> Option<QuorumState> {
    let members: Vec<MemberSeen> = rows
        .iter()
        .filter(|i| i.role == MEMBER && i.desired == Desired::Running)
        .map(|i| MemberSeen {
            name: &i.name,
            healthy: i.state == "running" && i.health == "healthy",
            leads: i.writable == Some(true),
            term: i.term,
        })
        .collect();
    (!members.is_empty()).then(|| quorum_state(&members))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = check_size("etcd", 4, 1, 7).unwrap_err();
        assert!(e.contains("odd") && e.contains("use 3 or 5"), "{e}");
        let e = check_size("etcd", 9, 1, 7).unwrap_err();
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
