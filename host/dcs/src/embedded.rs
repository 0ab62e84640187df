//! The embedded coordination store: one SQLite file in the Shoal home, for a single host.
//! Every write is one transaction, so a crash leaves the previous or the next record, never a
//! mix; terms survive restarts.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{now_ms, Coordinator, DcsError, Leader, Result};

/// SQLite-backed [`Coordinator`].
pub struct Embedded {
    conn: Mutex<Connection>,
}

fn err(e: rusqlite::Error) -> DcsError {
    DcsError::Unavailable(e.to_string())
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

impl Embedded {
    /// Open (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Embedded> {
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS leaders (
                cluster TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                term INTEGER NOT NULL,
                expires_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS managers (
                cluster TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                expires_ms INTEGER NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Embedded {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c).map_err(err)
    }

    fn read(c: &Connection, cluster: &str) -> rusqlite::Result<Option<(Leader, i64)>> {
        c.query_row(
            "SELECT holder, term, expires_ms FROM leaders WHERE cluster = ?1",
            params![cluster],
            |r| {
                Ok((
                    Leader {
                        holder: r.get(0)?,
                        term: r.get::<_, i64>(1)? as u64,
                    },
                    r.get(2)?,
                ))
            },
        )
        .optional()
    }
}

impl Coordinator for Embedded {
    async fn leader(&self, cluster: &str) -> Result<Option<(Leader, bool)>> {
        let now = now_ms();
        Ok(self
            .with(|c| Self::read(c, cluster))?
            .map(|(l, exp)| (l, exp > now)))
    }

    async fn keep_leader(&self, cluster: &str, holder: &str, ttl: Duration) -> Result<Leader> {
        let now = now_ms();
        let expires = now + ttl_ms(ttl);
        let outcome = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = Self::read(&tx, cluster)?;
            let out = match current {
                None => {
                    tx.execute(
                        "INSERT INTO leaders (cluster, holder, term, expires_ms) VALUES (?1, ?2, 1, ?3)",
                        params![cluster, holder, expires],
                    )?;
                    Ok(Leader {
                        holder: holder.into(),
                        term: 1,
                    })
                }
                Some((l, _)) if l.holder == holder => {
                    tx.execute(
                        "UPDATE leaders SET expires_ms = ?2 WHERE cluster = ?1",
                        params![cluster, expires],
                    )?;
                    Ok(l)
                }
                Some((l, _)) => Err(l),
            };
            tx.commit()?;
            Ok(out)
        })?;
        outcome.map_err(|l| {
            DcsError::Conflict(format!(
                "{} is not the leader of {cluster}: {} is, in term {}",
                holder, l.holder, l.term
            ))
        })
    }

    async fn elect(
        &self,
        cluster: &str,
        expected: Option<&Leader>,
        to: &str,
        ttl: Duration,
    ) -> Result<Leader> {
        let expires = now_ms() + ttl_ms(ttl);
        let outcome = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = Self::read(&tx, cluster)?.map(|(l, _)| l);
            if current.as_ref() != expected {
                return Ok(Err(current));
            }
            let term = current.map(|l| l.term).unwrap_or(0) + 1;
            tx.execute(
                "INSERT INTO leaders (cluster, holder, term, expires_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(cluster) DO UPDATE SET holder = ?2, term = ?3, expires_ms = ?4",
                params![cluster, to, term as i64, expires],
            )?;
            tx.commit()?;
            Ok(Ok(Leader {
                holder: to.into(),
                term,
            }))
        })?;
        outcome.map_err(|current| {
            DcsError::Conflict(format!(
                "the leader of {cluster} changed meanwhile (now {})",
                current
                    .map(|l| format!("{} in term {}", l.holder, l.term))
                    .unwrap_or_else(|| "none".into())
            ))
        })
    }

    async fn manage(&self, cluster: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let expires = now + ttl_ms(ttl);
        self.with(|c| {
            let n = c.execute(
                "INSERT INTO managers (cluster, owner, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(cluster) DO UPDATE SET owner = ?2, expires_ms = ?3
                 WHERE managers.owner = ?2 OR managers.expires_ms <= ?4",
                params![cluster, owner, expires, now],
            )?;
            Ok(n == 1)
        })
    }

    async fn manager(&self, cluster: &str) -> Result<Option<String>> {
        let now = now_ms();
        self.with(|c| {
            c.query_row(
                "SELECT owner FROM managers WHERE cluster = ?1 AND expires_ms > ?2",
                params![cluster, now],
                |r| r.get(0),
            )
            .optional()
        })
    }

    async fn forget(&self, cluster: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM leaders WHERE cluster = ?1", params![cluster])?;
            c.execute("DELETE FROM managers WHERE cluster = ?1", params![cluster])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn terms_only_grow_and_elections_are_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let d = Embedded::open(&dir.path().join("dcs.db")).unwrap();
        let ttl = Duration::from_secs(5);
        let l1 = d.keep_leader("pg", "pg-0", ttl).await.unwrap();
        assert_eq!(l1.term, 1);
        assert!(d.keep_leader("pg", "pg-1", ttl).await.is_err());
        let l2 = d.elect("pg", Some(&l1), "pg-1", ttl).await.unwrap();
        assert_eq!((l2.holder.as_str(), l2.term), ("pg-1", 2));
        // A second actor with the stale view changes nothing.
        assert!(matches!(
            d.elect("pg", Some(&l1), "pg-2", ttl).await,
            Err(DcsError::Conflict(_))
        ));
        drop(d);
        let d = Embedded::open(&dir.path().join("dcs.db")).unwrap();
        let (l, live) = d.leader("pg").await.unwrap().unwrap();
        assert_eq!(l, l2);
        assert!(live);
    }

    #[tokio::test]
    async fn one_manager_until_its_lease_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = Embedded::open(&dir.path().join("dcs.db")).unwrap();
        let short = Duration::from_millis(200);
        assert!(d.manage("pg", "host-a", short).await.unwrap());
        assert!(!d.manage("pg", "host-b", short).await.unwrap());
        assert!(d.manage("pg", "host-a", short).await.unwrap());
        assert_eq!(d.manager("pg").await.unwrap().as_deref(), Some("host-a"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            d.manager("pg").await.unwrap(),
            None,
            "a lapsed lease names nobody"
        );
        assert!(d.manage("pg", "host-b", short).await.unwrap());
        assert_eq!(d.manager("pg").await.unwrap().as_deref(), Some("host-b"));
        assert!(!d.manage("pg", "host-a", short).await.unwrap());
    }
}
