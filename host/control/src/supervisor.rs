//! Supervision: at start, re-adopt instances whose processes still run (same pid and start
//! time: never restarted) and settle operations a previous host left unfinished; then, every
//! probe interval, probe each running instance through its kept addon instance and restart
//! any whose process has died, with exponential backoff (1 s doubling to 60 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::OpState;
use shoal_runtime::wit;
use tokio::time::Instant;

use crate::controller::Controller;
use crate::secrets;
use crate::store::{now_ms, ClusterRow, Desired, InstanceRow};

/// Store what a probe said on the row.
pub(crate) fn record_probe(i: &mut InstanceRow, r: &wit::RoleReport) {
    i.health = match r.health {
        wit::Health::Healthy => "healthy",
        wit::Health::Degraded => "degraded",
        wit::Health::Unhealthy => "unhealthy",
        wit::Health::Starting => "starting",
    }
    .into();
    i.observed_role = Some(r.role.clone());
    i.writable = Some(r.writable);
    i.lag_bytes = r.lag_bytes;
    i.position = r.position;
    i.detail = r.detail.clone();
    i.probed_ms = Some(now_ms());
}

/// Re-adopt running instances and settle interrupted operations. Returns how many instances
/// were re-adopted.
pub fn adopt(c: &Arc<Controller>) -> usize {
    for op in c.db(|s| s.unfinished_ops()).unwrap_or_default() {
        let reason = if op.state == OpState::Running {
            "the Shoal host stopped during this operation; check `describe` and run it again"
        } else {
            "the Shoal host stopped before this operation began; run it again"
        };
        let _ = c.db(|s| s.set_op(op.id, OpState::Failed, Some(reason)));
        c.event(
            &op.cluster,
            None,
            "warning",
            format!("{} (op {}): {reason}", op.kind, op.id),
        );
    }
    let mut adopted = 0;
    for cl in c.db(|s| s.clusters()).unwrap_or_default() {
        for mut i in c.db(|s| s.instances(&cl.name)).unwrap_or_default() {
            if i.desired != Desired::Running {
                continue;
            }
            match i.process {
                Some(p) if p.is_running() => {
                    adopted += 1;
                    i.state = "running".into();
                    c.save(&i);
                    c.event(
                        &cl.name,
                        Some(&i.name),
                        "info",
                        format!("re-adopted running process (pid {})", p.pid),
                    );
                }
                _ => {
                    i.state = "crashed".into();
                    c.save(&i);
                    c.event(
                        &cl.name,
                        Some(&i.name),
                        "warning",
                        "not running after the host restarted; starting it",
                    );
                }
            }
        }
    }
    adopted
}

/// Backoff state of one instance.
struct Backoff {
    next: Instant,
    delay: Duration,
}

/// The supervision loop; runs until the process ends.
pub async fn run(c: Arc<Controller>) {
    let interval = Duration::from_millis(c.cfg.probe_interval_ms);
    let mut backoff: HashMap<(String, String), Backoff> = HashMap::new();
    loop {
        tokio::time::sleep(interval).await;
        let clusters = c.db(|s| s.clusters()).unwrap_or_default();
        let mut probes = Vec::new();
        for cl in clusters {
            // Skip clusters with an operation in progress: the operation owns them.
            let lock = c.lock(&cl.name);
            let Ok(guard) = lock.try_lock_owned() else {
                continue;
            };
            let Ok(creds) = secrets::load(&c.home, &cl.name) else {
                continue;
            };
            let all = c.db(|s| s.instances(&cl.name)).unwrap_or_default();
            for i in all.iter().filter(|i| i.desired == Desired::Running) {
                let alive = i.process.is_some_and(|p| p.is_running());
                let key = (cl.name.clone(), i.name.clone());
                if alive && i.state == "running" {
                    probes.push((cl.clone(), i.clone(), all.clone(), creds.clone()));
                    continue;
                }
                if alive {
                    continue;
                }
                let b = backoff.entry(key.clone()).or_insert(Backoff {
                    next: Instant::now(),
                    delay: Duration::from_secs(1),
                });
                if Instant::now() < b.next {
                    continue;
                }
                if let Some(old) = i.process {
                    let n = old.kill_leftovers();
                    if n > 0 {
                        c.event(
                            &cl.name,
                            Some(&i.name),
                            "warning",
                            format!("killed {n} leftover process(es) of the exited server"),
                        );
                    }
                }
                let mut row = i.clone();
                row.restarts += 1;
                row.state = "crashed".into();
                row.health = "unhealthy".into();
                row.process = None;
                c.save(&row);
                c.drop_live(&cl.name, &row.name);
                c.event(
                    &cl.name,
                    Some(&row.name),
                    "warning",
                    format!(
                        "process is not running; restarting (restart {}): {}",
                        row.restarts,
                        last_line(&shoal_local::log_tail(&row.log_file(), 400))
                    ),
                );
                match c.bring_up(&cl, &mut row, &all, &creds).await {
                    Ok(()) => {
                        backoff.remove(&key);
                    }
                    Err(e) => {
                        let b = backoff.entry(key).or_insert(Backoff {
                            next: Instant::now(),
                            delay: Duration::from_secs(1),
                        });
                        b.next = Instant::now() + b.delay;
                        c.event(
                            &cl.name,
                            Some(&row.name),
                            "error",
                            format!("restart failed, next try in {:?}: {e}", b.delay),
                        );
                        b.delay = (b.delay * 2).min(Duration::from_secs(60));
                        row.state = "crashed".into();
                        c.save(&row);
                    }
                }
            }
            drop(guard);
        }
        for (cl, i, all, creds) in probes {
            probe_live(&c, &cl, i, &all, &creds).await;
        }
        refresh_cluster_states(&c);
    }
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").to_string()
}

/// Probe `i` on its kept addon instance and record the result.
async fn probe_live(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    mut i: InstanceRow,
    all: &[InstanceRow],
    creds: &secrets::Credentials,
) {
    let Ok(addon) = c.addon(&cl.engine) else {
        return;
    };
    let key = (cl.name.clone(), i.name.clone());
    let live = {
        let mut map = c.live.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| Arc::new(addon.live(c.call_ctx(&i, all, false))))
            .clone()
    };
    let inst = c.wit_instance(cl, &i, creds, false);
    let result = live
        .call()
        .probe(&inst, &Controller::members_of(&i, all))
        .await;
    // Re-read: an operation may have changed the row meanwhile.
    let Ok(current) = c.db(|s| s.instances(&cl.name)) else {
        return;
    };
    let Some(fresh) = current.into_iter().find(|x| x.name == i.name) else {
        return;
    };
    if fresh.state != "running" {
        return;
    }
    i = fresh;
    match result {
        Ok(r) => {
            let was = i.health.clone();
            record_probe(&mut i, &r);
            if was != i.health && was != "unknown" {
                c.event(
                    &cl.name,
                    Some(&i.name),
                    "info",
                    format!("health {was} -> {}: {}", i.health, r.detail),
                );
            }
        }
        Err(e) => {
            if i.health != "unhealthy" {
                c.event(
                    &cl.name,
                    Some(&i.name),
                    "warning",
                    format!("probe failed: {e}"),
                );
            }
            i.health = "unhealthy".into();
            i.detail = e.to_string();
            i.probed_ms = Some(now_ms());
        }
    }
    c.save(&i);
}

/// A cluster is running when every instance that should run does and is healthy, degraded
/// when some do not; states owned by operations (creating, updating, deleting, failed) stay.
fn refresh_cluster_states(c: &Arc<Controller>) {
    for cl in c.db(|s| s.clusters()).unwrap_or_default() {
        if !matches!(cl.state.as_str(), "running" | "degraded") {
            continue;
        }
        let all = c.db(|s| s.instances(&cl.name)).unwrap_or_default();
        let ok = all
            .iter()
            .filter(|i| i.desired == Desired::Running)
            .all(|i| i.state == "running" && i.health == "healthy");
        let want = if ok { "running" } else { "degraded" };
        if want != cl.state {
            let _ = c.db(|s| s.set_cluster_state(&cl.name, want));
            c.event(
                &cl.name,
                None,
                if ok { "info" } else { "warning" },
                format!("cluster {want}"),
            );
        }
    }
}
