//! Redis Cluster, the addon's sharded topology: which hash slots a shard serves, what a
//! node's `CLUSTER NODES` line says, and `form-shards` — introduce every member to the
//! others (`CLUSTER MEET`), forget nodes that are no longer members, give each shard's
//! primary the slots of its share (`CLUSTER ADDSLOTSRANGE`), make the shard's other members
//! its replicas (`CLUSTER REPLICATE`), and wait until every node says the cluster is `ok`.
//! Failover inside a shard is Redis Cluster's own (a replica is elected by the primaries).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shoal_sdk::prelude::*;

use shoal_sdk::resp::{Conn, Info, Reply};

/// Hash slots of a Redis Cluster.
pub const SLOTS: u32 = 16_384;

/// The slots shard `shard` of `shards` serves: its `shard`-th `shards`-th of the keyspace.
pub fn slot_range(shard: u32, shards: u32) -> (u32, u32) {
    let lo = shard * SLOTS / shards;
    let hi = (shard + 1) * SLOTS / shards - 1;
    (lo, hi)
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    /// `host:port` (the bus port and hostname after `@`/`,` cut off).
    pub addr: String,
    pub myself: bool,
    pub master: bool,
    /// Flagged failed (`fail`) or without an address (`noaddr`).
    pub failed: bool,
    /// The primary a replica follows (`-` for a primary).
    pub master_id: Option<String>,
    pub slots: BTreeSet<u32>,
}

/// Parse `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags: Vec<&str> = f[2].split(',').collect();
            let addr = f[1].split(['@', ',']).next().unwrap_or("").to_string();
            let mut slots = BTreeSet::new();
            for s in &f[8..] {
                if s.starts_with('[') {
                    continue; // a slot being migrated
                }
                match s.split_once('-') {
                    Some((a, b)) => {
                        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                            slots.extend(a..=b);
                        }
                    }
                    None => {
                        if let Ok(a) = s.parse::<u32>() {
                            slots.insert(a);
                        }
                    }
                }
            }
            Some(NodeLine {
                id: f[0].to_string(),
                addr,
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"noaddr"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// Contiguous runs of `slots` as (first, last).
pub fn ranges(slots: &BTreeSet<u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &s in slots {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// What a probe adds in cluster mode: (cluster state ok, the node has slots, a one-line
/// summary, the cluster's current epoch).
pub fn probe_view(info: &Info, nodes: &[NodeLine]) -> (bool, bool, String, Option<u64>) {
    let ok = info.get("cluster_state") == Some("ok");
    let known = info.int("cluster_known_nodes").unwrap_or(0);
    let me = nodes.iter().find(|n| n.myself);
    let slots = me.map(|n| n.slots.len()).unwrap_or(0);
    let epoch = info
        .int("cluster_current_epoch")
        .and_then(|v| u64::try_from(v).ok());
    let line = if known <= 1 {
        "not yet part of a cluster (waiting for form-shards)".to_string()
    } else {
        format!(
            "cluster {}, {known} nodes, {slots} slot(s) here",
            info.get("cluster_state").unwrap_or("?")
        )
    };
    (ok, slots > 0, line, epoch)
}

/// A member of the cluster being formed.
struct Node<'a> {
    name: &'a str,
    shard: u32,
    endpoint: &'a Endpoint,
    bus: u16,
    conn: Conn,
    id: String,
}

fn nodes_of(c: &mut Conn) -> HookResult<Vec<NodeLine>> {
    let text = c
        .call(&["CLUSTER", "NODES"])?
        .text()
        .ok_or_else(|| HookError::failed(format!("{}: CLUSTER NODES: no text", c.peer())))?;
    Ok(parse_nodes(&text))
}

/// `CLUSTER INFO` as name/value pairs.
pub fn cluster_info(c: &mut Conn) -> HookResult<Info> {
    let r: Reply = c.call(&["CLUSTER", "INFO"])?;
    Ok(Info::parse(&r.text().unwrap_or_default()))
}

/// Retry `f` every 200 ms until it returns `Some` or `deadline` passes; then a retryable
/// error saying what did not happen.
fn wait_for<T>(
    deadline: Instant,
    what: &str,
    mut f: impl FnMut() -> HookResult<Option<T>>,
) -> HookResult<T> {
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(HookError::retryable(format!("{what}: not yet")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `form-shards`: see the module documentation. `me` is the member the host called it on;
/// `members` the others; every one carries its shard.
pub fn form(
    me: &Instance,
    members: &[Member],
    auth: (&str, &str),
    timeout: Duration,
) -> HookResult<String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(45);
    let bus = |ports: &[NamedPort], name: &str| -> HookResult<u16> {
        ports
            .iter()
            .find(|p| p.name == "bus")
            .map(|p| p.port)
            .ok_or_else(|| HookError::invalid(format!("{name}: no port named \"bus\"")))
    };
    let mut all: Vec<(&str, u32, &Endpoint, u16)> = vec![(
        me.name.as_str(),
        me.shard
            .ok_or_else(|| HookError::invalid("form-shards: the instance has no shard"))?,
        &me.endpoint,
        bus(&me.ports, &me.name)?,
    )];
    for m in members {
        let shard = m
            .shard
            .ok_or_else(|| HookError::invalid(format!("form-shards: {} has no shard", m.name)))?;
        all.push((m.name.as_str(), shard, &m.endpoint, bus(&m.ports, &m.name)?));
    }
    let shards = all.iter().map(|a| a.1).max().unwrap_or(0) + 1;
    for s in 0..shards {
        if !all.iter().any(|a| a.1 == s) {
            return Err(HookError::invalid(format!(
                "form-shards: shard {s} of {shards} has no member"
            )));
        }
    }
    let mut nodes = Vec::new();
    for (name, shard, endpoint, bus) in all {
        let mut conn = Conn::connect(endpoint, Some(auth), timeout)
            .map_err(|e| HookError::retryable(format!("{name}: {e}")))?;
        let id = conn
            .call(&["CLUSTER", "MYID"])?
            .text()
            .ok_or_else(|| HookError::failed(format!("{name}: CLUSTER MYID: no text")))?;
        nodes.push(Node {
            name,
            shard,
            endpoint,
            bus,
            conn,
            id,
        });
    }
    let ids: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    // Forget nodes that are no longer members (a replaced member's old identity), on every
    // node within the 60 s Redis keeps a forgotten node banned.
    let mut strangers = BTreeSet::new();
    for n in nodes.iter_mut() {
        for l in nodes_of(&mut n.conn)? {
            if !ids.contains(&l.id) {
                strangers.insert(l.id);
            }
        }
    }
    for id in &strangers {
        for n in nodes.iter_mut() {
            // "Unknown node" where it was already forgotten: fine.
            let _ = n.conn.call(&["CLUSTER", "FORGET", id]);
        }
    }
    // Introduce everyone to the first node; gossip does the rest.
    let (first, rest) = nodes
        .split_first_mut()
        .ok_or_else(|| HookError::invalid("form-shards: no members"))?;
    for n in rest.iter() {
        let (port, busport) = (n.endpoint.port.to_string(), n.bus.to_string());
        first
            .conn
            .ok(&["CLUSTER", "MEET", &n.endpoint.host, &port, &busport])?;
    }
    for n in nodes.iter_mut() {
        let name = n.name.to_string();
        wait_for(deadline, &format!("{name} knowing every member"), || {
            let seen: BTreeSet<String> = nodes_of(&mut n.conn)?
                .into_iter()
                .filter(|l| !l.failed && !l.addr.starts_with(":"))
                .map(|l| l.id)
                .collect();
            Ok(ids.is_subset(&seen).then_some(()))
        })?;
    }
    // Each shard's primary: the member already serving slots of it, else its first.
    let view = nodes_of(&mut nodes[0].conn)?;
    let owner: BTreeMap<u32, String> = view
        .iter()
        .filter(|l| l.master && !l.failed)
        .flat_map(|l| l.slots.iter().map(move |s| (*s, l.id.clone())))
        .collect();
    let mut primaries: BTreeMap<u32, String> = BTreeMap::new();
    for s in 0..shards {
        let mut of: Vec<&Node> = nodes.iter().filter(|n| n.shard == s).collect();
        of.sort_by(|a, b| a.name.cmp(b.name));
        let serving = of.iter().find(|n| {
            view.iter()
                .any(|l| l.id == n.id && l.master && !l.slots.is_empty())
        });
        let p = serving.or(of.first()).map(|n| n.id.clone());
        if let Some(p) = p {
            primaries.insert(s, p);
        }
    }
    // Give each primary the slots of its share that nobody serves.
    let mut assigned = 0usize;
    for (s, pid) in &primaries {
        let (lo, hi) = slot_range(*s, shards);
        let missing: BTreeSet<u32> = (lo..=hi).filter(|x| !owner.contains_key(x)).collect();
        let Some(n) = nodes.iter_mut().find(|n| &n.id == pid) else {
            continue;
        };
        for (a, b) in ranges(&missing) {
            let (a, b) = (a.to_string(), b.to_string());
            n.conn.ok(&["CLUSTER", "ADDSLOTSRANGE", &a, &b])?;
        }
        assigned += missing.len();
    }
    // The others of each shard follow its primary (once they know it).
    for n in nodes.iter_mut() {
        let Some(pid) = primaries.get(&n.shard).cloned() else {
            continue;
        };
        if n.id == pid {
            continue;
        }
        let name = n.name.to_string();
        wait_for(
            deadline,
            &format!("{name} following its shard's primary"),
            || {
                let me = nodes_of(&mut n.conn)?.into_iter().find(|l| l.myself);
                if me.as_ref().and_then(|l| l.master_id.as_deref()) == Some(pid.as_str()) {
                    return Ok(Some(()));
                }
                match n.conn.call(&["CLUSTER", "REPLICATE", &pid]) {
                    Ok(_) => Ok(Some(())),
                    // It does not know the primary's role yet: gossip is still under way.
                    Err(_) => Ok(None),
                }
            },
        )?;
    }
    // Whole: every node says the cluster is ok and every replica's link is up.
    for n in nodes.iter_mut() {
        let name = n.name.to_string();
        wait_for(
            deadline,
            &format!("{name} reporting the cluster ok"),
            || {
                let cluster = cluster_info(&mut n.conn)?;
                let repl = n.conn.info(&["replication"])?;
                let linked = repl.get("role") == Some("master")
                    || repl.get("master_link_status") == Some("up");
                Ok((cluster.get("cluster_state") == Some("ok") && linked).then_some(()))
            },
        )?;
    }
    Ok(format!(
        "{} nodes in {shards} shard(s); {assigned} slot(s) assigned, {} stale node(s) \
         forgotten, in {:.1} s",
        nodes.len(),
        strangers.len(),
        started.elapsed().as_secs_f64()
    ))
}

/// `member-leave` in cluster mode: every reachable member forgets the node at `leaving`'s
/// address (it was stopped first).
pub fn forget(
    me: &Instance,
    leaving: &Member,
    members: &[Member],
    auth: (&str, &str),
    timeout: Duration,
) -> HookResult<()> {
    let gone = leaving.endpoint.to_string();
    let mut endpoints: Vec<&Endpoint> = vec![&me.endpoint];
    endpoints.extend(
        members
            .iter()
            .filter(|m| m.name != leaving.name)
            .map(|m| &m.endpoint),
    );
    let mut ids = BTreeSet::new();
    let mut conns = Vec::new();
    for e in endpoints {
        let Ok(mut c) = Conn::connect(e, Some(auth), timeout) else {
            continue; // down: it learns by gossip, or form-shards forgets it later
        };
        for l in nodes_of(&mut c)? {
            if l.addr == gone && !l.myself {
                ids.insert(l.id);
            }
        }
        conns.push(c);
    }
    for id in &ids {
        for c in conns.iter_mut() {
            let _ = c.call(&["CLUSTER", "FORGET", id]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_slots_without_gaps_or_overlap() {
        for shards in 1..=7 {
            let mut next = 0;
            for s in 0..shards {
                let (lo, hi) = slot_range(s, shards);
                assert_eq!(lo, next, "{s} of {shards}");
                next = hi + 1;
            }
            assert_eq!(next, SLOTS);
        }
        assert_eq!(slot_range(0, 3), (0, 5460));
        assert_eq!(slot_range(2, 3), (10922, 16383));
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host.example replica e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 10923 [10924->-abc]
6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 master,fail,noaddr - 1426238316232 1426238315000 5 disconnected
";
        let n = parse_nodes(text);
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].addr, "127.0.0.1:30004");
        assert!(!n[0].master && !n[0].myself);
        assert_eq!(
            n[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(n[1].slots.len(), 10922 - 5461 + 1);
        assert!(n[2].myself && n[2].master && n[2].master_id.is_none());
        assert_eq!(n[2].slots.len(), 5462);
        assert!(n[3].failed);
        assert_eq!(ranges(&n[2].slots), vec![(0, 5460), (10923, 10923)]);
    }
}
