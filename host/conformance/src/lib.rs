//! The addon conformance kit (`shoal addon test FILE.wasm`): engine-neutral scenarios, derived
//! from what an addon's manifest declares, run against the real engine through a real Shoal
//! host of the kit's own (see `daemon`). Each declared topology is created and its probed
//! roles checked; a crashed member or leader is killed (SIGKILL) and must come back, with a
//! new writer where the topology has one; switchover, every parameter (out-of-range values
//! refused, dynamic ones applied and read back, one restart parameter rolled), metric names,
//! and every backup method restored into a new cluster. The result is a table of scenario →
//! pass / fail / not declared / not checked, with times; it passes only when nothing fails.
//!
//! Data is accounted for through the addon's marker hooks (`write-marker`, `read-markers`,
//! API 0.2.0; see `markers`): a round trip; writes under load while the writer is killed,
//! with nothing acknowledged lost where a quorum promises it and otherwise only writes from
//! the last moments before the kill; markers written before a switchover and before each
//! backup found afterwards (in the restored cluster for a backup). An addon without markers
//! gets those checks reported as not declared.
//!
//! At the end, every hook call the run made is checked against its deadline (the host's own
//! per-hook counts).
//!
//! Not yet checked (said in the report, never passed silently): continuous (point-in-time)
//! backup methods.

mod checks;
mod daemon;
mod markers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use shoal_api::{
    BackupView, ClusterSpec, ClusterView, ConfigPlanView, ConfigView, HaSpec, HookStatView,
    InstanceMetrics, OpView, ReplicationMode, RepoSpec, Request,
};
use shoal_runtime::wit::{
    AddonManifest, ApplyMode, BackupKind, SyncSupport, Topology, TopologyKind,
};

pub use checks::{bad_metric_names, changed_value, refused_value, roles_fit, size_for};
use daemon::Daemon;
use markers::{MarkerError, Markers};

/// How long a create, restore or rolling change may take.
const OPERATION_BOUND: Duration = Duration::from_secs(300);
/// How long probes may take to show every member healthy in a fitting role.
const SETTLE_BOUND: Duration = Duration::from_secs(90);
/// How long a topology may go without a writer after its writer is killed.
const NEW_WRITER_BOUND: Duration = Duration::from_secs(90);

/// What the kit could not even start.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("setting up the kit's host: {0}")]
    Setup(String),
}

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The manifest does not declare what the scenario needs.
    NotDeclared,
    /// Declared, but this kit version cannot check it (the detail says why).
    NotChecked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::NotDeclared => "not declared",
            Outcome::NotChecked => "not checked",
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub outcome: Outcome,
    pub seconds: f64,
    pub detail: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub engine: String,
    pub version: String,
    pub addon: String,
    pub scenarios: Vec<Scenario>,
    /// The kit's home, when kept (`--keep`).
    pub home: Option<PathBuf>,
}

impl Report {
    /// Every declared capability passed (or could not be checked, as said).
    pub fn passed(&self) -> bool {
        self.scenarios.iter().all(|s| s.outcome != Outcome::Fail)
    }
}

/// What to test and how.
pub struct Options {
    /// The `shoal` program (it runs `shoal serve` for the kit).
    pub shoal_exe: PathBuf,
    /// More of the kit host's `config.toml` (the operator's `[runtime]` grants), as TOML.
    pub host_config: String,
    /// The addon file.
    pub addon: PathBuf,
    /// Its manifest (already loaded and verified by the caller).
    pub manifest: AddonManifest,
    /// Engine version to test (default: the manifest's default).
    pub version: Option<String>,
    /// Ports the kit's instances may take.
    pub ports: (u16, u16),
    /// Keep the kit's home (state, logs, data) instead of removing it.
    pub keep: bool,
}

/// A cluster the kit made for a topology, and whether it came up right.
struct Made {
    name: String,
    topology: Topology,
    ok: bool,
    /// Created with synchronous replication: a kill may lose nothing acknowledged.
    sync: bool,
}

struct Kit<'a> {
    d: Daemon,
    markers: Markers,
    /// Whether the addon keeps markers (known after the round trip).
    has_markers: bool,
    m: &'a AddonManifest,
    version: String,
    report: Vec<Scenario>,
    progress: &'a mut dyn FnMut(&Scenario),
}

impl Kit<'_> {
    fn record(&mut self, name: impl Into<String>, started: Instant, r: Result<String, Verdict>) {
        let (outcome, detail) = match r {
            Ok(d) => (Outcome::Pass, d),
            Err(Verdict::Fail(d)) => (Outcome::Fail, d),
            Err(Verdict::NotDeclared(d)) => (Outcome::NotDeclared, d),
            Err(Verdict::NotChecked(d)) => (Outcome::NotChecked, d),
        };
        let s = Scenario {
            name: name.into(),
            outcome,
            seconds: started.elapsed().as_secs_f64(),
            detail,
        };
        (self.progress)(&s);
        self.report.push(s);
    }

    async fn describe(&self, name: &str) -> Result<ClusterView, String> {
        self.d
            .call(&Request::Describe {
                name: name.to_string(),
            })
            .await
    }

    /// Wait until `name`'s probes fit `t`; the view then.
    async fn settled(
        &self,
        name: &str,
        t: &Topology,
        within: Duration,
    ) -> Result<ClusterView, String> {
        let until = Instant::now() + within;
        loop {
            let v = self.describe(name).await?;
            let fit = checks::roles_fit(t, &self.m.roles, &v.instances);
            match fit {
                Ok(()) => return Ok(v),
                Err(e) if Instant::now() >= until => {
                    return Err(format!("after {within:?}: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    async fn op(&self, req: &Request) -> Result<OpView, String> {
        let op: OpView = self.d.call(req).await?;
        self.d.wait(&op, OPERATION_BOUND).await
    }

    /// Create a cluster of topology `t`.
    async fn create(&self, name: &str, t: &Topology) -> Result<String, String> {
        let (replicas, shards) = checks::size_for(t);
        self.create_spec(
            ClusterSpec {
                name: name.to_string(),
                engine: self.m.engine.clone(),
                version: Some(self.version.clone()),
                replicas,
                shards,
                ..ClusterSpec::default()
            },
            t,
        )
        .await
    }

    /// Create the cluster `spec` of topology `t` and wait until its roles fit.
    async fn create_spec(&self, spec: ClusterSpec, t: &Topology) -> Result<String, String> {
        let (name, shards) = (spec.name.clone(), spec.shards);
        let name = name.as_str();
        let started = Instant::now();
        self.op(&Request::Create { spec }).await?;
        let created = started.elapsed();
        let v = self.settled(name, t, SETTLE_BOUND).await?;
        Ok(format!(
            "{} member(s){} ready in {:.1} s, roles fit after {:.1} s",
            v.instances.len(),
            shards
                .map(|s| format!(" in {s} shards"))
                .unwrap_or_default(),
            created.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ))
    }

    /// SIGKILL the writer (or the only member) while markers are being written; a member
    /// must take writes again, every member come back, and the acknowledged markers be there
    /// (see `markers::judge_loss`).
    async fn crash(&self, made: &Made) -> Result<String, String> {
        let load = self
            .has_markers
            .then(|| self.markers.start_load(&made.name, "load"));
        if load.is_some() {
            // Some writes acknowledged before the kill.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let v = self.describe(&made.name).await?;
        let victim = checks::writer(&v.instances)
            .or(v.instances.first())
            .cloned()
            .ok_or("no instance to kill")?;
        let pid = victim
            .pid
            .ok_or_else(|| format!("{} has no process", victim.name))?;
        // SAFETY: kill only sends a signal to an engine process of the kit's own cluster.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            return Err(format!(
                "cannot kill {} (pid {pid}): {}",
                victim.name,
                std::io::Error::last_os_error()
            ));
        }
        let killed = Instant::now();
        let killed_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let has_writer = made
            .topology
            .roles
            .iter()
            .any(|r| self.m.roles.iter().any(|s| &s.name == r && s.writable));
        let mut writer_after = None;
        if has_writer {
            let until = killed + NEW_WRITER_BOUND;
            loop {
                let now = self.describe(&made.name).await?;
                // Seen by a probe after the kill, healthy and taking writes: the old member
                // restarted, or another one.
                let back = now.instances.iter().find(|i| {
                    i.writable == Some(true)
                        && i.health == "healthy"
                        && i.shard == victim.shard
                        && i.probed_unix_ms.is_some_and(|t| t > killed_ms)
                        && (i.name != victim.name || i.pid.is_some_and(|p| Some(p) != victim.pid))
                });
                if let Some(w) = back {
                    writer_after = Some((w.name.clone(), killed.elapsed()));
                    break;
                }
                if Instant::now() >= until {
                    return Err(format!(
                        "no member took writes within {NEW_WRITER_BOUND:?} of killing {}",
                        victim.name
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        self.settled(&made.name, &made.topology, OPERATION_BOUND)
            .await?;
        let data = match load {
            Some(load) => {
                // Writes taken by whoever took over, before the load stops.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (acked, failed) = load.finish().await;
                let key_of = |k: &str| k.split('@').next().unwrap_or(k).to_string();
                let keys: Vec<String> = acked.iter().map(|(k, _)| key_of(k)).collect();
                let (missing, who) = self
                    .markers
                    .missing(&made.name, &keys, None)
                    .await
                    .map_err(|e| format!("reading the markers back: {e}"))?;
                let lost: Vec<(String, Instant)> = acked
                    .into_iter()
                    .filter(|(k, _)| missing.contains(&key_of(k)))
                    .collect();
                let must_keep_all = made.sync || made.topology.kind == TopologyKind::Quorum;
                markers::judge_loss(&lost, killed, must_keep_all)?;
                let by: std::collections::BTreeSet<&str> = lost
                    .iter()
                    .filter_map(|(k, _)| k.split('@').nth(1))
                    .collect();
                format!(
                    "; {} writes acknowledged under load ({failed} refused while it was down), {} lost{}{} (read on {who})",
                    keys.len(),
                    lost.len(),
                    if by.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", acknowledged by {}",
                            by.into_iter().collect::<Vec<_>>().join(", ")
                        )
                    },
                    if must_keep_all {
                        " (none may be)"
                    } else {
                        " (asynchronous: allowed within 3 s of the kill)"
                    }
                )
            }
            None => String::new(),
        };
        Ok(match writer_after {
            Some((w, t)) => format!(
                "killed {} (pid {pid}); {w} took writes again after {:.1} s; all members fit again after {:.1} s{data}",
                victim.name,
                t.as_secs_f64(),
                killed.elapsed().as_secs_f64()
            ),
            None => format!(
                "killed {} (pid {pid}); back after {:.1} s{data}",
                victim.name,
                killed.elapsed().as_secs_f64()
            ),
        })
    }

    async fn switchover(&self, made: &Made) -> Result<String, String> {
        let written = self.write_markers(&made.name, "switch", 20).await?;
        let before = self.describe(&made.name).await?;
        let old = checks::writer(&before.instances)
            .map(|i| i.name.clone())
            .ok_or("no primary before the switchover")?;
        self.op(&Request::Switchover {
            name: made.name.clone(),
            to: None,
        })
        .await?;
        let after = self
            .settled(&made.name, &made.topology, SETTLE_BOUND)
            .await?;
        let new = checks::writer(&after.instances)
            .map(|i| i.name.clone())
            .ok_or("no primary after the switchover")?;
        if new == old {
            return Err(format!("{old} is still the primary"));
        }
        let kept = self.kept(&made.name, &written).await?;
        Ok(format!("{old} -> {new}{kept}"))
    }

    /// Write `n` markers before a planned change (none when the addon keeps none).
    async fn write_markers(
        &self,
        cluster: &str,
        prefix: &str,
        n: usize,
    ) -> Result<Vec<String>, String> {
        if !self.has_markers {
            return Ok(Vec::new());
        }
        self.markers
            .write_all(cluster, prefix, n)
            .await
            .map_err(|e| format!("writing markers before it: {e}"))
    }

    /// Check that every one of `keys` is in `cluster` now: a note for the report.
    async fn kept(&self, cluster: &str, keys: &[String]) -> Result<String, String> {
        if keys.is_empty() {
            return Ok(String::new());
        }
        let (missing, who) = self
            .markers
            .missing(cluster, keys, None)
            .await
            .map_err(|e| format!("reading the markers back: {e}"))?;
        if !missing.is_empty() {
            return Err(format!(
                "{} of {} markers written before are missing on {who}: {}",
                missing.len(),
                keys.len(),
                missing
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(format!(
            "; all {} markers written before read back on {who}",
            keys.len()
        ))
    }

    /// Write markers and read them back on the writer: whether the addon keeps markers.
    async fn round_trip(&self, cluster: &str) -> Result<String, Verdict> {
        let started = Instant::now();
        let keys = match self.markers.write_all(cluster, "trip", 50).await {
            Ok(k) => k,
            Err(MarkerError::Unsupported(_)) => {
                return Err(Verdict::NotDeclared(
                    "the addon keeps no markers (write-marker is unsupported)".into(),
                ))
            }
            Err(e) => return Err(Verdict::Fail(format!("writing markers: {e}"))),
        };
        let wrote = started.elapsed();
        let kept = self.kept(cluster, &keys).await.map_err(Verdict::Fail)?;
        Ok(format!(
            "50 markers written in {:.2} s ({:.0} acknowledged writes/s){kept}",
            wrote.as_secs_f64(),
            50.0 / wrote.as_secs_f64().max(1e-3)
        ))
    }

    async fn config(&self, name: &str) -> Result<ConfigView, String> {
        self.d
            .call(&Request::ConfigShow {
                name: name.to_string(),
            })
            .await
    }

    async fn set(&self, name: &str, param: &str, value: Option<&str>) -> Result<(), String> {
        let (set, unset) = match value {
            Some(v) => ([(param.to_string(), v.to_string())].into(), vec![]),
            None => (Default::default(), vec![param.to_string()]),
        };
        let plan: ConfigPlanView = self
            .d
            .call(&Request::ConfigSet {
                name: name.to_string(),
                set,
                unset,
                dry_run: false,
            })
            .await?;
        if let Some(op) = plan.op {
            self.d.wait(&op, OPERATION_BOUND).await?;
        }
        Ok(())
    }

    fn params_for_version(&self) -> Vec<&shoal_runtime::wit::ParamSpec> {
        self.m
            .parameters
            .iter()
            .filter(|p| p.versions.is_empty() || p.versions.contains(&self.version))
            .collect()
    }

    async fn refused(&self, name: &str) -> Result<String, Verdict> {
        let before = self.config(name).await.map_err(Verdict::Fail)?;
        let mut accepted = Vec::new();
        let mut tried = 0;
        for p in self.params_for_version() {
            let Some(v) = checks::refused_value(p) else {
                continue;
            };
            tried += 1;
            if self.set(name, &p.name, Some(&v)).await.is_ok() {
                accepted.push(format!("{}={v}", p.name));
            }
        }
        if tried == 0 {
            return Err(Verdict::NotDeclared("no bounded parameters".into()));
        }
        let after = self.config(name).await.map_err(Verdict::Fail)?;
        if !accepted.is_empty() {
            return Err(Verdict::Fail(format!(
                "accepted out of bounds: {}",
                accepted.join(", ")
            )));
        }
        if after.version != before.version {
            return Err(Verdict::Fail(format!(
                "the configuration changed ({} -> {}) though every change was refused",
                before.version, after.version
            )));
        }
        Ok(format!(
            "{tried} out-of-bounds values refused, nothing changed"
        ))
    }

    async fn dynamic(&self, name: &str) -> Result<String, Verdict> {
        let mut failed = Vec::new();
        let mut done = Vec::new();
        for p in self.params_for_version() {
            if p.apply != ApplyMode::Dynamic {
                continue;
            }
            let Some(v) = checks::changed_value(p) else {
                continue;
            };
            match self.set(name, &p.name, Some(&v)).await {
                Ok(()) => done.push(format!("{}={v}", p.name)),
                Err(e) => failed.push(format!("{}={v}: {e}", p.name)),
            }
            // Back to the default before the next one.
            if let Err(e) = self.set(name, &p.name, None).await {
                failed.push(format!("unset {}: {e}", p.name));
            }
        }
        if done.is_empty() && failed.is_empty() {
            return Err(Verdict::NotDeclared(
                "no dynamic parameter with a default to vary".into(),
            ));
        }
        if !failed.is_empty() {
            return Err(Verdict::Fail(failed.join("; ")));
        }
        Ok(format!(
            "{} applied live and read back, then unset: {}",
            done.len(),
            done.join(", ")
        ))
    }

    async fn rolled(&self, made: &Made) -> Result<String, Verdict> {
        let Some((p, v)) = self
            .params_for_version()
            .into_iter()
            .filter(|p| p.apply == ApplyMode::Restart)
            .find_map(|p| checks::changed_value(p).map(|v| (p, v)))
        else {
            return Err(Verdict::NotDeclared(
                "no restart parameter with a default to vary".into(),
            ));
        };
        self.set(&made.name, &p.name, Some(&v))
            .await
            .map_err(Verdict::Fail)?;
        self.settled(&made.name, &made.topology, SETTLE_BOUND)
            .await
            .map_err(Verdict::Fail)?;
        let shown = self.config(&made.name).await.map_err(Verdict::Fail)?;
        let source = shown
            .params
            .iter()
            .find(|c| c.name == p.name)
            .map(|c| c.source.clone())
            .unwrap_or_default();
        if source != "user" {
            return Err(Verdict::Fail(format!(
                "{} is not shown as set after the roll",
                p.name
            )));
        }
        self.set(&made.name, &p.name, None)
            .await
            .map_err(Verdict::Fail)?;
        self.settled(&made.name, &made.topology, SETTLE_BOUND)
            .await
            .map_err(Verdict::Fail)?;
        Ok(format!("{}={v} rolled onto every member and back", p.name))
    }

    async fn metrics(&self, made: &Made) -> Result<String, Verdict> {
        let all: Vec<InstanceMetrics> = self
            .d
            .call(&Request::Metrics {
                name: made.name.clone(),
            })
            .await
            .map_err(Verdict::Fail)?;
        let unsupported = all.iter().all(|i| {
            i.error
                .as_deref()
                .is_some_and(|e| e.contains(shoal_runtime::UNSUPPORTED_TEXT))
        });
        if unsupported {
            return Err(Verdict::NotDeclared(
                "the metrics hook is not written".into(),
            ));
        }
        if let Some(i) = all.iter().find(|i| i.error.is_some()) {
            return Err(Verdict::Fail(format!(
                "{}: {}",
                i.instance,
                i.error.clone().unwrap_or_default()
            )));
        }
        let samples: Vec<_> = all.iter().flat_map(|i| i.samples.clone()).collect();
        if samples.is_empty() {
            return Err(Verdict::Fail("no samples".into()));
        }
        let bad = checks::bad_metric_names(&self.m.engine, &samples);
        if !bad.is_empty() {
            return Err(Verdict::Fail(format!(
                "{} name(s) break the rules: {}",
                bad.len(),
                bad.join("; ")
            )));
        }
        Ok(format!(
            "{} samples from {} member(s), names follow the rules",
            samples.len(),
            all.len()
        ))
    }

    async fn backup(&self, source: &Made, method: &str, n: usize) -> Result<String, String> {
        let written = self
            .write_markers(&source.name, &format!("backup{n}"), 20)
            .await?;
        if !written.is_empty() {
            // On every member first, whichever one the method backs up.
            let members: Vec<String> = self
                .describe(&source.name)
                .await?
                .instances
                .into_iter()
                .map(|i| i.name)
                .collect();
            self.markers
                .replicated(&source.name, &written, &members, SETTLE_BOUND)
                .await?;
        }
        let started = Instant::now();
        self.op(&Request::BackupCreate {
            cluster: source.name.clone(),
            method: Some(method.to_string()),
            repo: None,
        })
        .await?;
        let took = started.elapsed();
        let list: Vec<BackupView> = self
            .d
            .call(&Request::BackupList {
                cluster: Some(source.name.clone()),
            })
            .await?;
        let b = list
            .iter()
            .filter(|b| b.method == method && b.state == "completed")
            .max_by_key(|b| b.started_unix_ms)
            .ok_or_else(|| format!("no completed {method} backup listed"))?;
        let target = format!("kit-restored-{n}");
        let restore_started = Instant::now();
        self.op(&Request::Restore {
            name: target.clone(),
            backup: b.id.clone(),
            replicas: None,
            to_unix_ms: None,
        })
        .await?;
        let view = self.describe(&target).await?;
        let topology = self
            .m
            .topologies
            .iter()
            .find(|t| topology_name(t.kind) == view.topology)
            .or_else(|| {
                self.m
                    .topologies
                    .iter()
                    .find(|t| view.instances.len() == 1 && t.kind == TopologyKind::Standalone)
            })
            .unwrap_or(&source.topology)
            .clone();
        self.settled(&target, &topology, SETTLE_BOUND).await?;
        let restored = restore_started.elapsed();
        let kept = self.kept(&target, &written).await?;
        let deleted: OpView = self
            .d
            .call(&Request::Delete {
                name: target.clone(),
                purge: true,
            })
            .await?;
        self.d.wait(&deleted, OPERATION_BOUND).await?;
        Ok(format!(
            "{} of {} bytes from {} in {:.1} s; restored into {target} ({} member(s)) in {:.1} s{kept}",
            b.id,
            b.size,
            b.source_instance,
            took.as_secs_f64(),
            view.instances.len(),
            restored.as_secs_f64()
        ))
    }
}

/// The name `describe` gives a topology kind.
fn topology_name(k: TopologyKind) -> &'static str {
    match k {
        TopologyKind::Standalone => "standalone",
        TopologyKind::PrimaryReplica => "primary-replica",
        TopologyKind::Quorum => "quorum",
        TopologyKind::Sharded => "sharded",
    }
}

/// A scenario's end other than a pass.
enum Verdict {
    Fail(String),
    NotDeclared(String),
    NotChecked(String),
}

/// Run every scenario; `progress` sees each result as it is known.
pub async fn run(opts: Options, progress: &mut dyn FnMut(&Scenario)) -> Result<Report, KitError> {
    let m = &opts.manifest;
    let version = opts
        .version
        .clone()
        .or_else(|| {
            m.versions
                .iter()
                .find(|v| v.is_default)
                .map(|v| v.version.clone())
        })
        .ok_or_else(|| KitError::Setup("the manifest names no default version".into()))?;
    if !m.versions.iter().any(|v| v.version == version) {
        return Err(KitError::Setup(format!(
            "version {version:?} is not one of the addon's: {}",
            m.versions
                .iter()
                .map(|v| v.version.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut d = Daemon::start(
        &opts.shoal_exe,
        &opts.addon,
        opts.ports,
        &opts.host_config,
        opts.keep,
    )?;
    d.ready(Duration::from_secs(60)).await?;
    let markers = Markers::new(d.home());
    let mut kit = Kit {
        d,
        markers,
        has_markers: false,
        m,
        version: version.clone(),
        report: Vec::new(),
        progress,
    };

    // Every declared topology, created and probed.
    let mut made: Vec<Made> = Vec::new();
    for t in &m.topologies {
        let name = format!("kit-{}", topology_name(t.kind));
        let started = Instant::now();
        let r = kit.create(&name, t).await;
        let ok = r.is_ok();
        kit.record(
            format!("create {}", topology_name(t.kind)),
            started,
            r.map_err(Verdict::Fail),
        );
        made.push(Made {
            name,
            topology: t.clone(),
            ok,
            sync: false,
        });
    }
    let usable: Vec<&Made> = made.iter().filter(|c| c.ok).collect();
    let first = usable.first().copied();
    // The replicated cluster, when there is one: parameters roll across it and backups
    // come from it, whatever role their source has.
    let main = usable
        .iter()
        .copied()
        .find(|c| c.topology.kind != TopologyKind::Standalone)
        .or(first);

    // Data in and out, before anything else: it says whether the other scenarios account
    // for data too.
    if let Some(c) = first {
        let started = Instant::now();
        let r = kit.round_trip(&c.name).await;
        kit.has_markers = r.is_ok();
        kit.record("data round trip (markers)", started, r);
    }

    for c in &usable {
        let started = Instant::now();
        let r = kit.metrics(c).await;
        kit.record(
            format!("metrics {}", topology_name(c.topology.kind)),
            started,
            r,
        );
    }

    if let Some(c) = first {
        let started = Instant::now();
        let r = kit.refused(&c.name).await;
        kit.record("parameters out of bounds refused", started, r);
        let started = Instant::now();
        let r = kit.dynamic(&c.name).await;
        kit.record("dynamic parameters applied", started, r);
    }
    if let Some(c) = main {
        let started = Instant::now();
        let r = kit.rolled(c).await;
        kit.record("restart parameter rolled", started, r);
    }

    // Backups, each restored into a new cluster.
    let methods: Vec<_> = m.backup_methods.clone();
    if methods.is_empty() {
        kit.record(
            "backup",
            Instant::now(),
            Err(Verdict::NotDeclared("no backup methods".into())),
        );
    } else if let Some(src) = main {
        let repo = kit.d.home().join("repo");
        let added: Result<serde_json::Value, String> = kit
            .d
            .call(&Request::RepoAdd {
                name: "kit".into(),
                spec: RepoSpec::Fs { path: repo },
                default: true,
            })
            .await;
        for (n, b) in methods.iter().enumerate() {
            let started = Instant::now();
            let r = if b.kind == BackupKind::Continuous {
                Err(Verdict::NotChecked(
                    "continuous archiving (restore to a time) is not checked by this kit version"
                        .into(),
                ))
            } else {
                match &added {
                    Err(e) => Err(Verdict::Fail(format!("cannot add a repository: {e}"))),
                    Ok(_) => kit.backup(src, &b.name, n).await.map_err(Verdict::Fail),
                }
            };
            kit.record(format!("backup {} and restore", b.name), started, r);
        }
    }

    // Planned and unplanned changes of the writer last: they change the clusters.
    for c in &usable {
        if c.topology.kind == TopologyKind::PrimaryReplica {
            let started = Instant::now();
            let r = kit.switchover(c).await.map_err(Verdict::Fail);
            kit.record("switchover primary-replica", started, r);
        }
    }
    for c in &usable {
        let started = Instant::now();
        let r = kit.crash(c).await.map_err(Verdict::Fail);
        let what = if c.topology.kind == TopologyKind::Standalone {
            "crash (SIGKILL) and restart"
        } else {
            "writer killed (SIGKILL), writes resume"
        };
        kit.record(
            format!("{what} {}", topology_name(c.topology.kind)),
            started,
            r,
        );
    }

    // Synchronous replication, where the engine promises it without falling back: a kill
    // of the primary under load may lose nothing acknowledged.
    let pr = m
        .topologies
        .iter()
        .find(|t| t.kind == TopologyKind::PrimaryReplica);
    match (pr, m.sync_replication) {
        (Some(t), SyncSupport::Strict) if kit.has_markers => {
            let started = Instant::now();
            let name = "kit-sync".to_string();
            let replicas = 3.clamp(t.min_members, t.max_members.max(t.min_members));
            let spec = ClusterSpec {
                name: name.clone(),
                engine: m.engine.clone(),
                version: Some(version.clone()),
                replicas,
                ha: HaSpec {
                    mode: ReplicationMode::Sync,
                    ..HaSpec::default()
                },
                ..ClusterSpec::default()
            };
            let made = Made {
                name,
                topology: t.clone(),
                ok: true,
                sync: true,
            };
            let r = match kit.create_spec(spec, t).await {
                Ok(_) => kit.crash(&made).await,
                Err(e) => Err(format!("creating a synchronous cluster: {e}")),
            };
            kit.record(
                "primary killed under synchronous replication, nothing lost",
                started,
                r.map_err(Verdict::Fail),
            );
        }
        (Some(_), SyncSupport::Strict) => kit.record(
            "primary killed under synchronous replication, nothing lost",
            Instant::now(),
            Err(Verdict::NotDeclared("the addon keeps no markers".into())),
        ),
        (Some(_), _) => kit.record(
            "primary killed under synchronous replication, nothing lost",
            Instant::now(),
            Err(Verdict::NotDeclared(format!(
                "synchronous replication is {:?}, not strict",
                m.sync_replication
            ))),
        ),
        (None, _) => {}
    }

    // Every hook the run called ended within its deadline (the manifest's, capped by the
    // operator's), as the kit's host counted them.
    let started = Instant::now();
    let stats: Result<Vec<HookStatView>, String> = kit
        .d
        .call(&Request::HookStats {
            engine: m.engine.clone(),
        })
        .await;
    kit.record(
        "hooks within their deadlines",
        started,
        stats
            .and_then(|s| checks::deadlines_kept(&s))
            .map_err(Verdict::Fail),
    );

    let started = Instant::now();
    let problems = kit.d.delete_all().await;
    kit.record(
        "clusters deleted",
        started,
        if problems.is_empty() {
            Ok("every cluster deleted with its data".into())
        } else {
            Err(Verdict::Fail(problems.join("; ")))
        },
    );
    let home = kit.d.kept_home();
    Ok(Report {
        engine: m.engine.clone(),
        version,
        addon: opts.addon.display().to_string(),
        scenarios: kit.report,
        home,
    })
}
