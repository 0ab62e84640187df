//! The primary-replica family's decisions, pure: what one probe answer means (keep the
//! leader lease, count a miss, fail the primary over, fence a member that claims to be a
//! primary it is not: [`judge`]), whether a member whose process is gone is failed over at
//! once ([`fail_over_at_exit`]), which replica a failover promotes or why none may be
//! ([`choose`]), and the order members are stopped, started and restarted in ([`order`]).
//! The supervisor and `ha` probe, fence and act; this module only decides, so every branch
//! has a table test beside it. (The quorum family's rules are in `topology`, the sharded
//! ones in `sharded`.)

use crate::store::{Desired, InstanceRow, Phase, Role};

/// What a probe of one member said, as the supervisor's judgement needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No answer (an error or a timeout).
    Missed,
    /// It answered: whether it takes writes and whether it calls itself the primary.
    Answered { writable: bool, says_primary: bool },
}

/// What the supervisor does about one probe answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing beyond recording the answer.
    Fine,
    /// The primary missed a probe, fewer than the limit in a row: it is a suspect.
    Suspect,
    /// The primary missed the limit of probes in a row and the cluster fails over: fence it
    /// and fail over (the count starts again).
    FailOver,
    /// The primary answered: keep (renew) its leader lease.
    KeepLease,
    /// A member the host does not hold as the primary says it is a writable primary (two
    /// writers): fence it and rebuild it as a replica.
    FenceUnexpectedPrimary,
}

/// Judge one probe answer of member `role` (`engine_elected`: its engine elects its own
/// leaders, so a member that leads is the engine's business), `misses` its misses in a row
/// counting this one, `limit` the `failover_after_probes` setting, `fails_over` whether the
/// cluster is kept available by failover ([`fails_over`]).
pub fn judge(
    role: Role,
    engine_elected: bool,
    answer: Answer,
    misses: u32,
    limit: u32,
    fails_over: bool,
) -> Verdict {
    let primary = role == Role::Primary;
    match answer {
        Answer::Missed if primary && misses >= limit && fails_over => Verdict::FailOver,
        Answer::Missed if primary => Verdict::Suspect,
        Answer::Missed => Verdict::Fine,
        Answer::Answered { .. } if primary => Verdict::KeepLease,
        Answer::Answered {
            writable: true,
            says_primary: true,
        } if !engine_elected => Verdict::FenceUnexpectedPrimary,
        Answer::Answered { .. } => Verdict::Fine,
    }
}

/// Whether a cluster is kept available by failover: automatic failover on and at least two
/// members that should run.
pub fn fails_over(auto_failover: bool, all: &[InstanceRow]) -> bool {
    auto_failover && all.iter().filter(|i| i.desired == Desired::Running).count() >= 2
}

/// Whether member `i`, whose process is gone, is failed over at once (no probe misses
/// needed): a running primary of a cluster that fails over while another member runs
/// (`replica_up`). Anything else is restarted (or held: `sharded::hold_restart`).
pub fn fail_over_at_exit(i: &InstanceRow, fails_over: bool, replica_up: bool) -> bool {
    i.role == Role::Primary && i.state == Phase::Running && fails_over && replica_up
}

/// An operation that goes through every member one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// Replicas first (the newest first), the primary last: it serves until the end.
    Stop,
    /// The primary first (replicas follow it), then the replicas by ordinal.
    Start,
    /// Replicas by ordinal, the primary last (one restart of the writer).
    Restart,
}

/// Put `rows` in the order `seq` goes through them.
pub fn order(rows: &mut [InstanceRow], seq: Sequence) {
    match seq {
        Sequence::Stop => {
            rows.sort_by_key(|i| (i.role == Role::Primary, std::cmp::Reverse(i.ordinal)))
        }
        Sequence::Start => rows.sort_by_key(|i| (i.role != Role::Primary, i.ordinal)),
        Sequence::Restart => rows.sort_by_key(|i| (i.role == Role::Primary, i.ordinal)),
    }
}

/// A replica that answered the failover's probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<'a> {
    pub name: &'a str,
    pub ordinal: u32,
    /// Its position in the engine's change log.
    pub position: Option<u64>,
    /// The lag it reported itself, when it has no position.
    pub lag_bytes: Option<u64>,
}

/// What the cluster's HA settings allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Synchronous replication: an acknowledged commit is on `sync_quorum` replicas.
    pub sync: bool,
    pub sync_quorum: u32,
    /// The engine's synchronous replication may fall back to asynchronous (then the lag
    /// limit applies even in sync mode).
    pub may_fall_back: bool,
    /// `ha.max-lag-on-failover`, in bytes.
    pub max_lag: u64,
}

/// The replica to promote, and how far behind the old primary's last position it is when
/// the lag limit applied (asynchronous replication, or synchronous that may have fallen back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub name: String,
    pub lag: Option<u64>,
}

/// Bytes `cand` is behind a primary last seen at `primary_position`.
pub fn lag_behind(primary_position: Option<u64>, position: Option<u64>, lag: Option<u64>) -> u64 {
    match (primary_position, position) {
        (Some(p), Some(r)) => p.saturating_sub(r),
        (Some(_), None) => u64::MAX,
        _ => lag.unwrap_or(0),
    }
}

/// Choose the failover candidate among `answered` (of `replicas` that should run), the old
/// primary last seen at `old_position`; `why_not` says why the others did not answer. The
/// most advanced replica wins (the lowest ordinal among equals). In sync mode enough replicas
/// must have answered that one of them surely holds every acknowledged commit
/// (`replicas - sync_quorum + 1`); without that guarantee the winner must be within the lag
/// limit.
pub fn choose(
    answered: &[Answered<'_>],
    replicas: usize,
    old_position: Option<u64>,
    rules: Rules,
    why_not: &[String],
) -> Result<Choice, String> {
    if replicas == 0 {
        return Err("the cluster has no replica".into());
    }
    let best = answered
        .iter()
        .max_by_key(|r| (r.position.unwrap_or(0), std::cmp::Reverse(r.ordinal)))
        .ok_or_else(|| format!("no replica answered ({})", why_not.join("; ")))?;
    if rules.sync {
        let need = replicas + 1 - rules.sync_quorum.max(1) as usize;
        if answered.len() < need {
            return Err(format!(
                "sync mode: only {} of {replicas} replicas answered, {need} needed to be sure \
                 no acknowledged commit is lost ({})",
                answered.len(),
                why_not.join("; ")
            ));
        }
    }
    if rules.sync && !rules.may_fall_back {
        return Ok(Choice {
            name: best.name.to_string(),
            lag: None,
        });
    }
    let lag = lag_behind(old_position, best.position, best.lag_bytes);
    if lag > rules.max_lag {
        return Err(format!(
            "the best replica {} is {lag} bytes behind the old primary's last known position",
            best.name
        ));
    }
    Ok(Choice {
        name: best.name.to_string(),
        lag: Some(lag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, ordinal: u32, position: u64) -> Answered<'_> {
        Answered {
            name,
            ordinal,
            position: Some(position),
            lag_bytes: None,
        }
    }

    const ASYNC: Rules = Rules {
        sync: false,
        sync_quorum: 0,
        may_fall_back: false,
        max_lag: 1000,
    };

    #[test]
    fn the_most_advanced_replica_wins_and_ties_go_to_the_lowest_ordinal() {
        let c = choose(
            &[r("a-1", 1, 500), r("a-2", 2, 900)],
            2,
            Some(900),
            ASYNC,
            &[],
        );
        assert_eq!(
            c.unwrap(),
            Choice {
                name: "a-2".into(),
                lag: Some(0)
            }
        );
        let c = choose(
            &[r("a-2", 2, 900), r("a-1", 1, 900)],
            2,
            Some(950),
            ASYNC,
            &[],
        );
        assert_eq!(
            c.unwrap(),
            Choice {
                name: "a-1".into(),
                lag: Some(50)
            }
        );
    }

    #[test]
    fn a_candidate_past_the_lag_limit_is_refused() {
        let e = choose(&[r("a-1", 1, 100)], 1, Some(5000), ASYNC, &[]).unwrap_err();
        assert!(e.contains("4900 bytes behind"), "{e}");
        // No position of its own: its reported lag counts; none at all: unknown = refused.
        let own = Answered {
            name: "a-1",
            ordinal: 1,
            position: None,
            lag_bytes: Some(10),
        };
        assert!(choose(std::slice::from_ref(&own), 1, None, ASYNC, &[]).is_ok());
        assert!(choose(&[own], 1, Some(10), ASYNC, &[]).is_err());
    }

    #[test]
    fn nobody_answering_says_why() {
        let e = choose(&[], 2, Some(1), ASYNC, &["a-1 is crashed".into()]).unwrap_err();
        assert!(e.contains("no replica answered (a-1 is crashed)"), "{e}");
        assert!(choose(&[], 0, None, ASYNC, &[])
            .unwrap_err()
            .contains("no replica"));
    }

    #[test]
    fn sync_mode_needs_enough_answers_to_hold_every_acknowledged_commit() {
        let strict = Rules {
            sync: true,
            sync_quorum: 1,
            may_fall_back: false,
            max_lag: 0,
        };
        // 2 replicas, quorum 1: both must answer (the commit may be on either).
        let e = choose(
            &[r("a-1", 1, 10)],
            2,
            Some(99),
            strict,
            &["a-2: timeout".into()],
        )
        .unwrap_err();
        assert!(e.contains("only 1 of 2 replicas answered, 2 needed"), "{e}");
        // Both answered: the lag limit does not apply (the most advanced has every commit).
        let c = choose(
            &[r("a-1", 1, 10), r("a-2", 2, 20)],
            2,
            Some(99),
            strict,
            &[],
        );
        assert_eq!(
            c.unwrap(),
            Choice {
                name: "a-2".into(),
                lag: None
            }
        );
        // Quorum 2 of 2: one answer is enough.
        let q2 = Rules {
            sync_quorum: 2,
            ..strict
        };
        assert!(choose(&[r("a-1", 1, 10)], 2, Some(10), q2, &[]).is_ok());
        // An engine whose sync replication may fall back is held to the lag limit too.
        let fallback = Rules {
            may_fall_back: true,
            max_lag: 5,
            ..strict
        };
        let e = choose(
            &[r("a-1", 1, 10), r("a-2", 2, 20)],
            2,
            Some(99),
            fallback,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("79 bytes behind"), "{e}");
    }

    #[test]
    fn a_probe_answer_is_judged_by_role_misses_and_settings() {
        use Answer::*;
        use Verdict::*;
        let said = |writable, says_primary| Answered {
            writable,
            says_primary,
        };
        // (role, engine elects, answer, misses in a row, limit 3, fails over) -> verdict
        let table = [
            // The leader killed or hung: suspect until the limit, then failover.
            (Role::Primary, false, Missed, 1, true, Suspect),
            (Role::Primary, false, Missed, 2, true, Suspect),
            (Role::Primary, false, Missed, 3, true, FailOver),
            (Role::Primary, false, Missed, 7, true, FailOver),
            // No failover (auto-failover off, or nobody to take over): only a suspect.
            (Role::Primary, false, Missed, 3, false, Suspect),
            // A replica's misses never fail anything over.
            (Role::Replica, false, Missed, 9, true, Fine),
            // The primary answers: its lease is kept, whatever it says.
            (Role::Primary, false, said(true, true), 0, true, KeepLease),
            (Role::Primary, false, said(false, false), 0, true, KeepLease),
            // A partitioned old primary that came back writable as a replica: two writers.
            (
                Role::Replica,
                false,
                said(true, true),
                0,
                true,
                FenceUnexpectedPrimary,
            ),
            (
                Role::Replica,
                false,
                said(true, true),
                0,
                false,
                FenceUnexpectedPrimary,
            ),
            // Read-only, or writable without calling itself primary: fine.
            (Role::Replica, false, said(false, true), 0, true, Fine),
            (Role::Replica, false, said(true, false), 0, true, Fine),
            (Role::Replica, false, said(false, false), 0, true, Fine),
            // A quorum or shard member that leads is the engine's business.
            (Role::Member, true, said(true, true), 0, true, Fine),
            (Role::ShardMember, true, said(true, true), 0, true, Fine),
        ];
        for (role, elected, answer, misses, fails, want) in table {
            assert_eq!(
                judge(role, elected, answer, misses, 3, fails),
                want,
                "{role:?} {answer:?} misses {misses} fails over {fails}"
            );
        }
    }

    fn row(name: &str, ordinal: u32, role: Role, should_run: bool) -> InstanceRow {
        let mut i = InstanceRow::for_test("c", name, ordinal, role);
        if !should_run {
            i.desired = Desired::Stopped;
        }
        i
    }

    #[test]
    fn a_dead_primary_fails_over_at_once_only_with_someone_to_take_over() {
        let p = row("c-0", 0, Role::Primary, true);
        let r = row("c-1", 1, Role::Replica, true);
        let both = [p.clone(), r.clone()];
        assert!(fails_over(true, &both));
        assert!(!fails_over(false, &both), "auto-failover off");
        assert!(!fails_over(true, &both[..1]), "a single member");
        let stopped_replica = [p.clone(), row("c-1", 1, Role::Replica, false)];
        assert!(
            !fails_over(true, &stopped_replica),
            "the replica should not run"
        );
        assert!(fail_over_at_exit(&p, true, true));
        assert!(
            !fail_over_at_exit(&p, true, false),
            "no replica up: restart it"
        );
        assert!(!fail_over_at_exit(&p, false, true));
        assert!(!fail_over_at_exit(&r, true, true), "a replica is restarted");
        let mut starting = p.clone();
        starting.state = Phase::Starting;
        assert!(
            !fail_over_at_exit(&starting, true, true),
            "not yet running: its start failed, it is not a lost primary"
        );
    }

    #[test]
    fn members_are_gone_through_in_a_safe_order() {
        let mut rows = vec![
            row("c-2", 2, Role::Replica, true),
            row("c-0", 0, Role::Replica, true),
            row("c-1", 1, Role::Primary, true),
            row("c-3", 3, Role::Replica, true),
        ];
        let names = |rows: &[InstanceRow]| rows.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        order(&mut rows, Sequence::Stop);
        assert_eq!(names(&rows), ["c-3", "c-2", "c-0", "c-1"]);
        order(&mut rows, Sequence::Start);
        assert_eq!(names(&rows), ["c-1", "c-0", "c-2", "c-3"]);
        order(&mut rows, Sequence::Restart);
        assert_eq!(names(&rows), ["c-0", "c-2", "c-3", "c-1"]);
    }
}
