//! The primary-replica family's failover decision, pure: given what the replicas that answered
//! said, which one is promoted, or why none may be. `ha::failover` probes, fences and acts;
//! this module only decides, so every branch has a table test beside it. (The quorum family's
//! rules are in `topology`.)

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
}
