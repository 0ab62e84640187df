//! The kit's data accounting: markers written through the daemon (`MarkerWrite`, the addon's
//! `write-marker` hook) and read back (`MarkerRead`), a writer that keeps writing while a
//! member is killed, and the judgement of what went missing ([`judge_loss`], pure, with its
//! tests beside it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::{Client, MarkersView, Request};

/// How long before a kill an acknowledged write may be lost when nothing promises more (no
/// quorum, no synchronous replication): what an async replica or an fsync-every-second log
/// may be behind.
pub const LOSS_WINDOW: Duration = Duration::from_secs(3);

/// Keys read per request.
const READ_CHUNK: usize = 500;

/// The value the kit writes under `key` (so reading back checks the value, not only the key).
pub fn value_of(key: &str) -> String {
    format!("kept {key}")
}

/// The daemon's socket, for marker calls from any task.
#[derive(Clone)]
pub struct Markers {
    socket: PathBuf,
}

/// A marker call's failure.
#[derive(Debug)]
pub enum MarkerError {
    /// The addon has no markers (`unsupported`).
    Unsupported(String),
    Other(String),
}

impl std::fmt::Display for MarkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarkerError::Unsupported(m) | MarkerError::Other(m) => f.write_str(m),
        }
    }
}

impl Markers {
    pub fn new(home: &Path) -> Markers {
        Markers {
            socket: home.join(shoal_api::SOCKET),
        }
    }

    async fn call(&self, req: &Request) -> Result<MarkersView, MarkerError> {
        let mut c = Client::connect_socket(&self.socket)
            .await
            .map_err(|e| MarkerError::Other(e.to_string()))?;
        c.call_as(req, |_| {}).await.map_err(|e| {
            let text = e.to_string();
            if text.contains(shoal_runtime::UNSUPPORTED_TEXT) {
                MarkerError::Unsupported(text)
            } else {
                MarkerError::Other(text)
            }
        })
    }

    /// Write marker `key` to `cluster`; the member that acknowledged it.
    pub async fn write(&self, cluster: &str, key: &str) -> Result<String, MarkerError> {
        let v = self
            .call(&Request::MarkerWrite {
                name: cluster.to_string(),
                key: key.to_string(),
                value: value_of(key),
            })
            .await?;
        Ok(v.instance)
    }

    /// Write `n` markers `<prefix>-<i>` one after another; all must be acknowledged.
    pub async fn write_all(
        &self,
        cluster: &str,
        prefix: &str,
        n: usize,
    ) -> Result<Vec<String>, MarkerError> {
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            let key = format!("{prefix}-{i:05}");
            self.write(cluster, &key).await?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Which of `keys` `cluster` (its writer, or `instance`) lacks or holds with another
    /// value, and who answered.
    pub async fn missing(
        &self,
        cluster: &str,
        keys: &[String],
        instance: Option<&str>,
    ) -> Result<(Vec<String>, String), MarkerError> {
        let mut missing = Vec::new();
        let mut who = String::new();
        for chunk in keys.chunks(READ_CHUNK) {
            let v = self
                .call(&Request::MarkerRead {
                    name: cluster.to_string(),
                    keys: chunk.to_vec(),
                    instance: instance.map(str::to_string),
                })
                .await?;
            who = v.instance;
            for (k, got) in chunk.iter().zip(v.values) {
                if got.as_deref() != Some(value_of(k).as_str()) {
                    missing.push(k.clone());
                }
            }
        }
        Ok((missing, who))
    }

    /// Wait until every one of `members` holds all `keys` (replicated), within `within`.
    pub async fn replicated(
        &self,
        cluster: &str,
        keys: &[String],
        members: &[String],
        within: Duration,
    ) -> Result<(), String> {
        let until = Instant::now() + within;
        for m in members {
            loop {
                match self.missing(cluster, keys, Some(m)).await {
                    Ok((gone, _)) if gone.is_empty() => break,
                    Ok((gone, _)) if Instant::now() >= until => {
                        return Err(format!(
                            "{m} still lacks {} of {} markers after {within:?}",
                            gone.len(),
                            keys.len()
                        ));
                    }
                    Err(e) if Instant::now() >= until => return Err(format!("{m}: {e}")),
                    _ => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
        }
        Ok(())
    }

    /// Start writing markers `<prefix>-<i>` to `cluster` as fast as they are acknowledged
    /// (failed writes are retried with the next key after a short pause).
    pub fn start_load(&self, cluster: &str, prefix: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let markers = self.clone();
        let (cluster, prefix, flag) = (cluster.to_string(), prefix.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0u64;
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let key = format!("{prefix}-{i:06}");
                i += 1;
                match markers.write(&cluster, &key).await {
                    Ok(by) => acked.push((format!("{key}@{by}"), Instant::now())),
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (acked, failed)
        });
        Load { stop, task }
    }
}

/// A running marker writer.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<(String, Instant)>, u64)>,
}

impl Load {
    /// Stop writing: every acknowledged key (as `key@member that acknowledged it`) with when
    /// it was acknowledged, and how many writes failed.
    pub async fn finish(self) -> (Vec<(String, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Whether the loss after a kill at `killed` is allowed: `lost` are acknowledged writes
/// (with when they were acknowledged) that are missing afterwards. With `must_keep_all`
/// (quorum) nothing may be lost. Otherwise (asynchronous replication, whose promise is a
/// bounded loss) only writes acknowledged within [`LOSS_WINDOW`] of the kill: just before
/// it (not yet replicated), or just after it by the restarted member before a failover
/// that was already under way replaced it.
pub fn judge_loss(
    lost: &[(String, Instant)],
    killed: Instant,
    must_keep_all: bool,
) -> Result<(), String> {
    if lost.is_empty() {
        return Ok(());
    }
    let names = |v: &[&(String, Instant)]| {
        v.iter()
            .take(5)
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if must_keep_all {
        let all: Vec<&(String, Instant)> = lost.iter().collect();
        return Err(format!(
            "{} acknowledged write(s) lost where none may be: {}",
            lost.len(),
            names(&all)
        ));
    }
    let distance = |t: Instant| {
        if t >= killed {
            t.duration_since(killed)
        } else {
            killed.duration_since(t)
        }
    };
    let outside: Vec<&(String, Instant)> = lost
        .iter()
        .filter(|(_, t)| distance(*t) > LOSS_WINDOW)
        .collect();
    if !outside.is_empty() {
        return Err(format!(
            "{} acknowledged write(s) lost from more than {LOSS_WINDOW:?} away from the kill: {}",
            outside.len(),
            names(&outside)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_judged_by_the_promise_and_the_window() {
        let killed = Instant::now();
        let at = |before_ms: u64| {
            (
                format!("k{before_ms}"),
                killed - Duration::from_millis(before_ms),
            )
        };
        assert!(judge_loss(&[], killed, true).is_ok());
        let recent = [at(200), at(900)];
        assert!(
            judge_loss(&recent, killed, false).is_ok(),
            "async may lose the last moment"
        );
        let e = judge_loss(&recent, killed, true).unwrap_err();
        assert!(
            e.contains("2 acknowledged write(s) lost where none may be"),
            "{e}"
        );
        let old = [at(200), at(10_000)];
        let e = judge_loss(&old, killed, false).unwrap_err();
        assert!(e.contains("k10000"), "{e}");
        let soon_after = [("after".to_string(), killed + Duration::from_millis(300))];
        assert!(judge_loss(&soon_after, killed, false).is_ok());
        let long_after = [("later".to_string(), killed + Duration::from_secs(10))];
        let e = judge_loss(&long_after, killed, false).unwrap_err();
        assert!(e.contains("later"), "{e}");
    }

    #[test]
    fn values_name_their_key() {
        assert_eq!(value_of("kit-1"), "kept kit-1");
    }
}
