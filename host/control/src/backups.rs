//! Backups and restores in local mode: the repositories this host knows (their specs, with
//! secrets, in `<home>/secrets/repos.json`, 0600), the backup operation (the addon's `backup`
//! hook streams into an object of the repository through `shoal-backup`'s pipeline, with
//! progress events), verification, deletion, and restoring a backup into a new cluster. The
//! engine-specific part — what to run — is the addon's; this module only moves and checks
//! bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_api::{
    ApiError, BackupObjectView, BackupView, OpView, RepoCheckView, RepoSpec, RepoView,
    ScheduleView, VerifyView,
};
use shoal_backup::{Manifest, Repository, StoredObject};
use shoal_runtime::wit::{self, BackupKind};
use shoal_runtime::{CallContext, HostSink, HostSource};

use crate::controller::Controller;
use crate::error::{At, ControlError};
use crate::events::Level;
use crate::secrets::Credentials;
use crate::store::{now_ms, BackupRow, ClusterRow, Desired, Health, InstanceRow, Phase, Role};

/// zstd level of backup objects: fast, as `zstd -1`.
const ZSTD_LEVEL: i32 = 1;
/// How often a running backup or restore reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// One configured repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RepoEntry {
    spec: RepoSpec,
    default: bool,
}

fn repos_path(home: &Path) -> PathBuf {
    home.join("secrets").join("repos.json")
}

fn load_repos(home: &Path) -> Result<BTreeMap<String, RepoEntry>, ApiError> {
    match std::fs::read(repos_path(home)) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            ApiError::internal(format!("{} is damaged: {e}", repos_path(home).display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ApiError::internal(format!(
            "cannot read {}: {e}",
            repos_path(home).display()
        ))),
    }
}

fn repos_lock(home: &Path) -> Result<std::fs::File, ApiError> {
    crate::secrets::lock(home, "repos")
        .map_err(|e| ApiError::internal(format!("cannot lock the repository list: {e}")))
}

fn save_repos(home: &Path, repos: &BTreeMap<String, RepoEntry>) -> Result<(), ApiError> {
    let body = serde_json::to_vec_pretty(repos).map_err(|e| ApiError::internal(e.to_string()))?;
    crate::secrets::write_private(home, &repos_path(home), &body)
        .map_err(|e| ApiError::internal(format!("cannot store repositories: {e}")))
}

fn valid_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} name {name:?} must be 1 to 63 lowercase letters, digits or '-', not \
             starting with '-'"
        )))
    }
}

fn repo_failed(e: shoal_backup::RepoError) -> ApiError {
    match e {
        shoal_backup::RepoError::Invalid(m) => ApiError::invalid(m),
        shoal_backup::RepoError::NotFound(k) => {
            ApiError::not_found(format!("object {k} is missing from the repository"))
        }
        other => ApiError::conflict(other.to_string()),
    }
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

impl Controller {
    /// The backup repositories this host knows.
    pub fn repos(&self) -> Repositories<'_> {
        Repositories { c: self }
    }

    /// The backup schedules of this host's clusters.
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules { c: self }
    }
}

/// The backup repositories (kept in `<home>/repositories.json`, private): add one after
/// checking it works, list, check, remove one that holds no backup, open one by name.
pub struct Repositories<'a> {
    c: &'a Controller,
}

impl Repositories<'_> {
    /// The repository named `name`, opened.
    pub(crate) fn open(&self, name: &str) -> Result<Repository, ApiError> {
        let repos = load_repos(&self.c.home)?;
        let e = repos.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "no backup repository named {name:?} (see `shoal backup-repo list`)"
            ))
        })?;
        Repository::open(name, &e.spec).map_err(repo_failed)
    }

    /// The default repository's name.
    pub(crate) fn default_name(&self) -> Result<String, ApiError> {
        let repos = load_repos(&self.c.home)?;
        repos
            .iter()
            .find(|(_, e)| e.default)
            .or_else(|| repos.iter().next())
            .map(|(n, _)| n.clone())
            .ok_or_else(|| {
                ApiError::invalid(
                    "no backup repository is configured; add one with `shoal backup-repo add`",
                )
            })
    }

    /// Add a repository after checking it works (a write, read and delete of a probe object).
    pub async fn add(
        &self,
        name: &str,
        spec: RepoSpec,
        default: bool,
    ) -> Result<RepoCheckView, ApiError> {
        valid_name("repository", name)?;
        spec.validate().map_err(ApiError::invalid)?;
        if load_repos(&self.c.home)?.contains_key(name) {
            return Err(ApiError::conflict(format!(
                "a backup repository named {name:?} exists already"
            )));
        }
        let repo = Repository::open(name, &spec).map_err(repo_failed)?;
        let check = repo.check().await.map_err(|e| {
            ApiError::conflict(format!("the repository does not work, not added: {e}"))
        })?;
        // Read, change and write the list under its lock: concurrent adds each see the
        // others' results, and of two adds of one name exactly one wins.
        let _lock = repos_lock(&self.c.home)?;
        let mut repos = load_repos(&self.c.home)?;
        if let Some(e) = repos.get(name) {
            return Err(ApiError::conflict(format!(
                "a backup repository named {name:?} exists already ({}); nothing changed",
                e.spec.describe()
            )));
        }
        let default = default || repos.is_empty();
        if default {
            for e in repos.values_mut() {
                e.default = false;
            }
        }
        repos.insert(name.to_string(), RepoEntry { spec, default });
        save_repos(&self.c.home, &repos)?;
        Ok(RepoCheckView {
            name: name.to_string(),
            location: repo.spec.describe(),
            write_ms: check.write_ms,
            read_ms: check.read_ms,
            delete_ms: check.delete_ms,
        })
    }

    pub fn list(&self) -> Result<Vec<RepoView>, ApiError> {
        let backups = self.c.db(|s| s.backups(None))?;
        Ok(load_repos(&self.c.home)?
            .into_iter()
            .map(|(name, e)| RepoView {
                backups: backups.iter().filter(|b| b.view.repo == name).count() as u32,
                location: e.spec.describe(),
                default: e.default,
                name,
            })
            .collect())
    }

    pub async fn check(&self, name: &str) -> Result<RepoCheckView, ApiError> {
        let repo = self.open(name)?;
        let c = repo.check().await.map_err(repo_failed)?;
        Ok(RepoCheckView {
            name: name.to_string(),
            location: repo.spec.describe(),
            write_ms: c.write_ms,
            read_ms: c.read_ms,
            delete_ms: c.delete_ms,
        })
    }

    /// Forget a repository (refused while backups are recorded in it).
    pub fn remove(&self, name: &str) -> Result<RepoView, ApiError> {
        let _lock = repos_lock(&self.c.home)?;
        let mut repos = load_repos(&self.c.home)?;
        let Some(e) = repos.get(name).cloned() else {
            return Err(ApiError::not_found(format!(
                "no backup repository named {name:?}"
            )));
        };
        let n = self
            .c
            .db(|s| s.backups(None))?
            .iter()
            .filter(|b| b.view.repo == name)
            .count();
        if n > 0 {
            return Err(ApiError::conflict(format!(
                "repository {name} holds {n} backup(s); delete them first"
            )));
        }
        repos.remove(name);
        if e.default {
            if let Some(first) = repos.values_mut().next() {
                first.default = true;
            }
        }
        save_repos(&self.c.home, &repos)?;
        Ok(RepoView {
            name: name.to_string(),
            location: e.spec.describe(),
            default: e.default,
            backups: 0,
        })
    }
}

impl Controller {
    /// The backups of this host's clusters.
    pub fn backups(self: &Arc<Self>) -> Backups<'_> {
        Backups { c: self }
    }
}

/// Backups: take one (queued as an operation), list, describe, delete (its objects with it),
/// verify (checksums, and optionally a restore test), and restore one into a new cluster.
pub struct Backups<'a> {
    c: &'a Arc<Controller>,
}

impl Backups<'_> {
    /// Validate a backup request and queue it; `origin` is `manual` (a user asked) or
    /// `schedule`.
    pub fn create(
        &self,
        cluster: &str,
        method: Option<&str>,
        repo: Option<&str>,
        origin: &str,
    ) -> Result<OpView, ApiError> {
        let method = self.c.method_of(cluster, method)?;
        let repo = match repo {
            Some(r) => r.to_string(),
            None => self.c.repos().default_name()?,
        };
        self.c.repos().open(&repo)?;
        self.c.submit(
            cluster,
            crate::operation::Op::Backup {
                method: method.name,
                repo,
                origin: Some(origin.to_string()),
            },
        )
    }

    pub fn list(&self, cluster: Option<&str>) -> Result<Vec<BackupView>, ApiError> {
        Ok(self
            .c
            .db(|s| s.backups(cluster))?
            .into_iter()
            .map(|b| b.view)
            .collect())
    }

    fn row(&self, id: &str) -> Result<BackupRow, ApiError> {
        self.c.db(|s| s.backup(id))?.ok_or_else(|| {
            ApiError::not_found(format!(
                "no backup with id {id:?} (see `shoal backup list`)"
            ))
        })
    }

    pub fn describe(&self, id: &str) -> Result<BackupView, ApiError> {
        Ok(self.row(id)?.view)
    }

    /// Delete a backup's objects, then its record.
    pub async fn delete(&self, id: &str) -> Result<BackupView, ApiError> {
        let b = self.row(id)?;
        if b.view.state == "running" {
            return Err(ApiError::conflict(format!("backup {id} is still running")));
        }
        let repo = self.c.repos().open(&b.view.repo)?;
        for o in &b.view.objects {
            repo.delete(&o.key).await.map_err(repo_failed)?;
        }
        repo.delete(&Manifest::key(&b.view.cluster, id))
            .await
            .map_err(repo_failed)?;
        self.c.db(|s| s.delete_backup(id))?;
        crate::secrets::remove_for_backup(&self.c.home, id);
        self.c.event(
            &b.view.cluster,
            None,
            Level::Info,
            format!("backup {id} deleted from repository {}", b.view.repo),
        );
        crate::archive::prune_units(self.c, &b.view.cluster, b.cluster_uid).await;
        let mut v = b.view;
        v.state = "deleted".into();
        Ok(v)
    }

    /// Read every object of a backup whole and check its size, checksum and compression.
    pub async fn verify(&self, id: &str) -> Result<VerifyView, ApiError> {
        let b = self.row(id)?;
        let Some(m) = b.manifest else {
            return Err(ApiError::conflict(format!(
                "backup {id} is {}, not completed: nothing to verify",
                b.view.state
            )));
        };
        let repo = self.c.repos().open(&b.view.repo)?;
        let t = Instant::now();
        // The manifest stored next to the objects must be the one recorded here.
        let stored = repo
            .get(&Manifest::key(&m.cluster, &m.id))
            .await
            .map_err(|e| ApiError::failed(format!("backup {id}: {e}")))?;
        let stored: Manifest = serde_json::from_slice(&stored).map_err(|e| {
            ApiError::failed(format!(
                "backup {id}: manifest {} is damaged: {e}",
                Manifest::key(&m.cluster, &m.id)
            ))
        })?;
        if stored != m {
            return Err(ApiError::failed(format!(
                "backup {id}: manifest {} differs from the one recorded at backup time",
                Manifest::key(&m.cluster, &m.id)
            )));
        }
        let mut bytes = 0;
        for o in &m.objects {
            bytes += shoal_backup::verify_object(&repo, o)
                .await
                .map_err(|e| ApiError::failed(format!("backup {id}: {e}")))?;
        }
        Ok(VerifyView {
            id: id.to_string(),
            objects: m.objects.iter().map(object_view).collect(),
            bytes,
            ms: t.elapsed().as_millis() as u64,
            restore_test: None,
        })
    }

    /// Validate a restore and queue the creation of cluster `name` from backup `id` (and, with
    /// `to_unix_ms`, the source cluster's archive replayed up to that moment).
    pub async fn restore(
        &self,
        name: &str,
        id: &str,
        replicas: Option<u32>,
        to_unix_ms: Option<i64>,
    ) -> Result<OpView, ApiError> {
        let b = self.row(id)?;
        let Some(m) = &b.manifest else {
            return Err(ApiError::conflict(format!(
                "backup {id} is {}, not completed: it cannot be restored",
                b.view.state
            )));
        };
        let addon = self.c.addon(&m.engine)?;
        let Some(method) = addon
            .manifest()
            .backup_methods
            .iter()
            .find(|x| x.name == m.method)
        else {
            return Err(ApiError::invalid(format!(
                "the loaded {} addon has no backup method {:?} to restore this backup with",
                m.engine, m.method
            )));
        };
        if let Some(t) = to_unix_ms {
            if !method.point_in_time {
                return Err(ApiError::invalid(format!(
                    "backup {id} was made with method {:?}, which does not combine with the \
                     archive for a point-in-time restore; restore from a {} backup",
                    m.method,
                    addon
                        .manifest()
                        .backup_methods
                        .iter()
                        .filter(|x| x.point_in_time)
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                )));
            }
            self.check_restore_time(&b.view, t)?;
        }
        // A physical copy restored into a quorum starts with its source's platform account:
        // refused up front, nothing created, when this host does not keep it.
        if method.kind != BackupKind::Logical
            && crate::topology::family(addon.manifest()) == crate::topology::Family::Quorum
        {
            kept_source_account(self.c, id).map_err(ApiError::invalid)?;
        }
        self.c.repos().open(&b.view.repo)?;
        let mut spec = b.spec.clone();
        spec.name = name.to_string();
        spec.version = Some(m.engine_version.clone());
        if let Some(r) = replicas {
            spec.replicas = r;
        }
        self.c
            .create_with(
                spec,
                serde_json::json!({ "restore": id, "to_unix_ms": to_unix_ms }),
            )
            .await
    }

    /// Whether the archive of `b`'s cluster can carry a restore of `b` to `t`: after the
    /// backup finished, not in the future, and not past what is archived.
    fn check_restore_time(&self, b: &BackupView, t: i64) -> Result<(), ApiError> {
        let cluster = &b.cluster;
        let finished = b.finished_unix_ms.unwrap_or(b.started_unix_ms);
        if t > now_ms() {
            return Err(ApiError::invalid(format!(
                "restore time {} is in the future",
                rfc3339(t)
            )));
        }
        if t < finished {
            let earlier = self.list(Some(cluster))?.into_iter().rfind(|x| {
                x.state == "completed"
                    && x.method == b.method
                    && x.finished_unix_ms.is_some_and(|f| f <= t)
            });
            return Err(ApiError::invalid(match earlier {
                Some(e) => format!(
                    "restore time {} is before backup {} finished ({}): restore from backup {} \
                     (finished {}) instead",
                    rfc3339(t),
                    b.id,
                    rfc3339(finished),
                    e.id,
                    rfc3339(e.finished_unix_ms.unwrap_or(0))
                ),
                None => format!(
                    "restore time {} is before the oldest backup of {cluster} that can reach it \
                     ({} finished {}): nothing older is kept",
                    rfc3339(t),
                    b.id,
                    rfc3339(finished)
                ),
            }));
        }
        let uid = self
            .c
            .db(|s| s.backup(&b.id))?
            .map_or(-1, |r| r.cluster_uid);
        let units = self.c.db(|s| s.units(uid))?;
        if let Some(gap) = archive_gap(&units, b.started_unix_ms, t) {
            return Err(ApiError::invalid(format!(
                "archiving of {cluster} was switched on at {}, after backup {} started ({}): \
                 what the engine wrote in between is not in the archive, so no restore from \
                 that backup reaches {}. Restore from a backup taken after {}",
                rfc3339(gap),
                b.id,
                rfc3339(b.started_unix_ms),
                rfc3339(t),
                rfc3339(gap)
            )));
        }
        let last = units
            .iter()
            .filter(|u| u.stored_unix_ms >= b.started_unix_ms)
            .map(|u| u.stored_unix_ms)
            .max();
        match last {
            None => Err(ApiError::invalid(format!(
                "cluster {cluster} has no archive stored since backup {} started: switch \
                 archiving on (shoal backup archive {cluster}) before the backup, and restore \
                 to a time after that",
                b.id
            ))),
            Some(l) if t > l => Err(ApiError::invalid(format!(
                "the archive of {cluster} reaches only to {} (its newest unit); restore time {} \
                 is past it: pick an earlier time, or wait for the next unit",
                rfc3339(l),
                rfc3339(t)
            ))),
            Some(_) => Ok(()),
        }
    }
}

impl Controller {
    /// The backup method `name` of `cluster`'s addon, or its full one when none is named.
    fn method_of(&self, cluster: &str, name: Option<&str>) -> Result<wit::BackupMethod, ApiError> {
        let cl = self
            .db(|s| s.cluster(cluster))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {cluster:?}")))?;
        let addon = self.addon(&cl.engine)?;
        let methods = &addon.manifest().backup_methods;
        if methods.is_empty() {
            return Err(ApiError::invalid(format!(
                "the {} addon declares no backup method",
                cl.engine
            )));
        }
        let m = match name {
            Some(m) => methods.iter().find(|x| x.name == m).ok_or_else(|| {
                let names: Vec<&str> = methods.iter().map(|m| m.name.as_str()).collect();
                ApiError::invalid(format!(
                    "unknown backup method {m:?} for {}; it has: {}",
                    cl.engine,
                    names.join(", ")
                ))
            })?,
            // The manifest's first method taken once (every addon lists its default first).
            None => methods
                .iter()
                .find(|m| m.kind != BackupKind::Continuous)
                .unwrap_or(&methods[0]),
        };
        if m.kind == BackupKind::Continuous {
            return Err(ApiError::invalid(format!(
                "{} is a continuous method: it is archived all the time, not taken once",
                m.name
            )));
        }
        Ok(m.clone())
    }

    /// The context of a backup or restore call on `i`: its ports, the engine user, the engine
    /// version's programs and the system's, and progress into `progress`.
    pub(crate) fn bulk_ctx(
        &self,
        cl: &ClusterRow,
        i: &InstanceRow,
        all: &[InstanceRow],
        total: Arc<Mutex<Option<u64>>>,
    ) -> Result<CallContext, String> {
        let addon = self.addon(&cl.engine).map_err(|e| e.message)?;
        let mut ctx = self.call_ctx(i, all, false);
        let search = crate::engines::binaries(&self.cfg, addon, &cl.version);
        ctx.exec_dirs = search.dirs.clone();
        ctx.exec_dirs
            .extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
        ctx.progress = Some(Arc::new(move |p: &shoal_runtime::Progress| {
            if p.total.is_some() {
                *total.lock().unwrap_or_else(|e| e.into_inner()) = p.total;
            }
        }));
        Ok(ctx)
    }
}

/// Backup schedules: one per cluster and method (cron, repository, retention, optional
/// restore test of each backup), fired by the scheduler in this module.
pub struct Schedules<'a> {
    c: &'a Controller,
}

impl Schedules<'_> {
    /// Create or replace the schedule of a cluster and method.
    pub fn set(&self, mut v: ScheduleView) -> Result<ScheduleView, ApiError> {
        let m = self.c.method_of(
            &v.cluster,
            Some(v.method.as_str()).filter(|m| !m.is_empty()),
        )?;
        v.method = m.name;
        match &v.repo {
            Some(r) => {
                self.c.repos().open(r)?;
            }
            None => {
                self.c.repos().default_name()?;
            }
        }
        if v.keep == Some(0) {
            return Err(ApiError::invalid(
                "--keep must be at least 1 (the newest backup is always kept)",
            ));
        }
        if let Some(a) = &v.max_age {
            parse_age(a)?;
        }
        if let Some(w) = &v.pitr_window {
            parse_age(w)?;
        }
        let cron = parse_cron(&v.cron)?;
        v.next_unix_ms = next_fire(&cron, &v.cron, now_ms())?;
        self.c.db(|s| s.put_schedule(&v, v.next_unix_ms))?;
        self.c.event(
            &v.cluster,
            None,
            Level::Info,
            format!(
                "backup schedule {} ({}): {}{}{}{}",
                v.method,
                v.repo.as_deref().unwrap_or("default repository"),
                v.cron,
                v.keep.map(|k| format!(", keep {k}")).unwrap_or_default(),
                v.max_age
                    .as_deref()
                    .map(|a| format!(", max age {a}"))
                    .unwrap_or_default(),
                v.pitr_window
                    .as_deref()
                    .map(|w| format!(", point-in-time window {w}"))
                    .unwrap_or_default()
            ),
        );
        Ok(v)
    }

    pub fn remove(&self, cluster: &str, method: Option<&str>) -> Result<(), ApiError> {
        let m = self.c.method_of(cluster, method)?;
        if self.c.db(|s| s.delete_schedule(cluster, &m.name))? == 0 {
            return Err(ApiError::not_found(format!(
                "cluster {cluster} has no {} backup schedule",
                m.name
            )));
        }
        self.c.event(
            cluster,
            None,
            Level::Info,
            format!("backup schedule {} removed", m.name),
        );
        Ok(())
    }

    pub fn list(&self, cluster: Option<&str>) -> Result<Vec<ScheduleView>, ApiError> {
        Ok(self
            .c
            .db(|s| s.schedules(cluster))?
            .into_iter()
            .map(|(mut v, next)| {
                v.next_unix_ms = next;
                v
            })
            .collect())
    }
}

/// When archiving was switched on between a backup's start (`from`) and a restore target
/// (`to`), if it was: the archive has a gap there (the units it shipped say since when it
/// was on), and a replay from that backup cannot cross it.
fn archive_gap(units: &[shoal_api::ArchiveUnitView], from: i64, to: i64) -> Option<i64> {
    units
        .iter()
        .filter_map(|u| u.archiving_since_unix_ms)
        .filter(|since| *since > from && *since <= to)
        .min()
}

/// Parse a cron expression: 5 fields (minute hour day month weekday) or 6 (seconds first).
fn parse_cron(expr: &str) -> Result<croner::Cron, ApiError> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(ApiError::invalid(format!(
            "cron {expr:?} must have 5 fields (minute hour day month weekday) or 6 (seconds \
             first)"
        )));
    }
    let mut c = croner::Cron::new(expr);
    if fields == 6 {
        c.with_seconds_optional();
    }
    c.parse()
        .map_err(|e| ApiError::invalid(format!("cron {expr:?}: {e}")))
}

/// When `cron` fires next after `after_ms` (UTC).
fn next_fire(cron: &croner::Cron, expr: &str, after_ms: i64) -> Result<i64, ApiError> {
    let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms)
        .ok_or_else(|| ApiError::internal("the clock is out of range"))?;
    cron.find_next_occurrence(&after, false)
        .map(|t| t.timestamp_millis())
        .map_err(|e| ApiError::invalid(format!("cron {expr:?} never fires: {e}")))
}

/// `30d`, `12h`, `90m`, `45s`, `2w` in ms.
fn parse_age(s: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "max age {s:?} must be a number and a unit: s, m, h, d or w (e.g. 30d)"
        ))
    };
    let (n, unit) = s.trim().split_at(s.trim().len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(ms).ok_or_else(bad)
}

/// Queue the backups whose schedule is due, for clusters this host manages. A schedule whose
/// previous backup is still queued or running skips this turn (backups never pile up).
pub(crate) fn fire_schedules(c: &Arc<Controller>) {
    let now = now_ms();
    let Ok(all) = c.db(|s| s.schedules(None)) else {
        return;
    };
    for (v, next) in all {
        if next > now || !c.manages(&v.cluster) {
            continue;
        }
        let following = parse_cron(&v.cron)
            .and_then(|cron| next_fire(&cron, &v.cron, now))
            .unwrap_or(now + 3_600_000);
        let _ = c.db(|s| s.put_schedule(&v, following));
        let pending = c
            .db(|s| s.unfinished_ops())
            .unwrap_or_default()
            .into_iter()
            .any(|op| op.cluster == v.cluster && op.kind == "backup");
        if pending {
            c.event(
                &v.cluster,
                None,
                Level::Warning,
                format!(
                    "scheduled {} backup skipped: the previous one is still running",
                    v.method
                ),
            );
            continue;
        }
        match c
            .backups()
            .create(&v.cluster, Some(&v.method), v.repo.as_deref(), "schedule")
        {
            Ok(op) => c.event(
                &v.cluster,
                None,
                Level::Info,
                format!(
                    "scheduled {} backup ({}) queued as operation {}",
                    v.method, v.cron, op.id
                ),
            ),
            Err(e) => c.event(
                &v.cluster,
                None,
                Level::Error,
                format!("scheduled {} backup not started: {}", v.method, e.message),
            ),
        }
    }
}

/// After a completed backup: delete the completed backups of the same cluster (this one, by
/// uid: never one of an earlier cluster of the name) and method that its schedule no longer
/// keeps (beyond `keep`, or older than `max-age`). Only the schedule's own backups count
/// unless it was set with `include-manual`; the newest completed one is never deleted.
async fn apply_retention(c: &Arc<Controller>, cl: &ClusterRow, method: &str) {
    let cluster = cl.name.as_str();
    let Ok(schedules) = c.db(|s| s.schedules(Some(cluster))) else {
        return;
    };
    let Some((v, _)) = schedules.into_iter().find(|(v, _)| v.method == method) else {
        return;
    };
    let done: Vec<BackupView> = c
        .db(|s| s.backups_of(cl.uid))
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.view)
        .filter(|b| b.method == method && (v.include_manual || b.origin == "schedule"))
        .collect();
    for (id, why) in expired(&done, &v, now_ms()) {
        match c.backups().delete(&id).await {
            Ok(_) => c.event(
                cluster,
                None,
                Level::Info,
                format!("retention: deleted backup {id} ({why})"),
            ),
            Err(e) => c.event(
                cluster,
                None,
                Level::Warning,
                format!("retention: cannot delete backup {id}: {}", e.message),
            ),
        }
    }
}

/// Which completed backups schedule `v` no longer keeps at `now`, and why. The newest
/// completed backup is always kept, and so is every backup a restore to a moment inside the
/// point-in-time window needs (those that finished inside it, and the newest one that
/// finished before it began).
fn expired(backups: &[BackupView], v: &ScheduleView, now: i64) -> Vec<(String, String)> {
    let max_age = v.max_age.as_deref().and_then(|a| parse_age(a).ok());
    let mut done: Vec<&BackupView> = backups.iter().filter(|b| b.state == "completed").collect();
    done.sort_by_key(|b| std::cmp::Reverse(b.started_unix_ms));
    let window_start = v
        .pitr_window
        .as_deref()
        .and_then(|w| parse_age(w).ok())
        .map(|w| now - w);
    // The index of the oldest backup the window needs.
    let needed_to = window_start.map(|start| {
        done.iter()
            .position(|b| b.finished_unix_ms.unwrap_or(b.started_unix_ms) <= start)
            .unwrap_or(done.len())
    });
    let mut out = Vec::new();
    for (n, b) in done.iter().enumerate().skip(1) {
        if needed_to.is_some_and(|to| n <= to) {
            continue;
        }
        if v.keep.is_some_and(|k| n >= k as usize) {
            out.push((
                b.id.clone(),
                format!("beyond the newest {}", v.keep.unwrap_or(0)),
            ));
        } else if max_age.is_some_and(|a| now - b.started_unix_ms > a) {
            out.push((
                b.id.clone(),
                format!("older than {}", v.max_age.as_deref().unwrap_or("")),
            ));
        }
    }
    out
}

fn object_view(o: &StoredObject) -> BackupObjectView {
    BackupObjectView {
        key: o.key.clone(),
        size: o.size,
        stored_size: o.stored_size,
        sha256: o.sha256.clone(),
    }
}

/// Report progress of a stream every [`PROGRESS_EVERY`] until `done` fires.
fn progress_events(
    c: &Arc<Controller>,
    cluster: &str,
    what: &'static str,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    total: Arc<Mutex<Option<u64>>>,
) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let c = c.clone();
    let cluster = cluster.to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = &mut rx => return,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
            }
            let done = bytes.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = done as f64 / secs;
            let total = *total.lock().unwrap_or_else(|p| p.into_inner());
            let tail = match total {
                Some(t) if t > done && rate > 0.0 => format!(
                    " of about {} ({:.0}%), ETA {:.0} s",
                    mib(t),
                    done as f64 * 100.0 / t as f64,
                    (t - done) as f64 / rate
                ),
                _ => String::new(),
            };
            c.event(
                &cluster,
                None,
                Level::Info,
                format!(
                    "{what}: {}{tail}, {:.0} MiB/s",
                    mib(done),
                    rate / (1 << 20) as f64
                ),
            );
        }
    });
    tx
}

/// The instance a backup of `method` reads: a healthy running replica when the method
/// prefers one (the least lagging), else the primary.
fn backup_source<'a>(
    nodes: &dyn crate::nodes::Nodes,
    all: &'a [InstanceRow],
    target_role: Option<&str>,
) -> Option<&'a InstanceRow> {
    let running = |i: &&InstanceRow| {
        i.desired == Desired::Running && i.state == Phase::Running && nodes.alive(i)
    };
    if target_role == Some("replica") {
        if let Some(r) = all
            .iter()
            .filter(running)
            .filter(|i| i.role == Role::Replica && i.health == Health::Healthy)
            .min_by_key(|i| i.lag_bytes.unwrap_or(u64::MAX))
        {
            return Some(r);
        }
    }
    // A quorum's leader (whose reads are the quorum's), else any healthy member.
    let leader = crate::topology::state_of(all).and_then(|q| q.leader);
    all.iter()
        .filter(running)
        .find(|i| i.role == Role::Primary || leader.as_deref() == Some(i.name.as_str()))
}

/// The member a sharded cluster's backup reads for one shard (given that shard's rows): a
/// healthy running replica (the shard's primary keeps serving undisturbed), else its primary.
fn shard_source<'a>(
    nodes: &dyn crate::nodes::Nodes,
    members: &'a [InstanceRow],
) -> Option<&'a InstanceRow> {
    let running = |i: &&InstanceRow| {
        i.desired == Desired::Running
            && i.state == Phase::Running
            && nodes.alive(i)
            && i.health == Health::Healthy
    };
    members
        .iter()
        .filter(running)
        .find(|i| i.writable == Some(false))
        .or_else(|| {
            members
                .iter()
                .filter(running)
                .find(|i| i.writable == Some(true))
        })
}

/// The backup operation: stream the addon's backup of one instance into the repository.
pub(crate) async fn run_backup(
    c: &Arc<Controller>,
    cluster: &str,
    params: &serde_json::Value,
) -> Result<(), ControlError> {
    let arg = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (method, repo_name) = (arg("method"), arg("repo"));
    let origin = match arg("origin").as_str() {
        "schedule" => "schedule",
        _ => "manual",
    };
    let cl = crate::ops::cluster(c, cluster)?;
    let addon = c.addon(&cl.engine).of(cluster)?.clone();
    let m = addon
        .manifest()
        .backup_methods
        .iter()
        .find(|x| x.name == method)
        .cloned()
        .ok_or_else(|| format!("the addon has no backup method {method:?}"))
        .of(cluster)?;
    let repo = c.repos().open(&repo_name).of(cluster)?;
    let all = crate::ops::instances(c, cluster)?;
    // A sharded cluster: one part per shard, each read from a member of its shard.
    let sources: Vec<InstanceRow> = match cl.spec.shards {
        Some(n) => (0..n)
            .map(|shard| {
                let members: Vec<InstanceRow> = all
                    .iter()
                    .filter(|i| i.shard == Some(shard))
                    .cloned()
                    .collect();
                shard_source(&*c.nodes, &members)
                    .cloned()
                    .ok_or_else(|| format!("shard {shard} has no running member to back up"))
            })
            .collect::<Result<_, _>>()
            .of(cluster)?,
        None => vec![backup_source(&*c.nodes, &all, m.target_role.as_deref())
            .ok_or("no running instance to back up")
            .of(cluster)?
            .clone()],
    };
    let src = sources[0].clone();
    let creds = crate::ops::creds(c, cluster)?;
    let started = now_ms();
    let stamp = utc_stamp(started);
    let id = format!("{cluster}-{stamp}-{method}");
    let key = format!("{cluster}/{id}/data.zst");
    let mut view = BackupView {
        id: id.clone(),
        cluster: cluster.to_string(),
        repo: repo_name.clone(),
        method: method.clone(),
        kind: kind_name(m.kind).into(),
        state: "running".into(),
        reason: None,
        started_unix_ms: started,
        finished_unix_ms: None,
        engine: cl.engine.clone(),
        engine_version: cl.version.clone(),
        addon_version: addon.manifest().addon_version.clone(),
        addon_digest: addon.info().digest.clone(),
        source_instance: sources
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        start_position: None,
        end_position: None,
        size: 0,
        stored_size: 0,
        objects: vec![],
        origin: origin.into(),
        restore_test: None,
    };
    let mut row = BackupRow {
        view: view.clone(),
        manifest: None,
        spec: cl.spec.clone(),
        cluster_uid: cl.uid,
    };
    c.db(|s| s.put_backup(&row)).of(cluster)?;
    c.event(
        cluster,
        Some(&src.name),
        Level::Info,
        format!(
            "backup {id}: {method} of {} into repository {repo_name} ({})",
            view.source_instance,
            repo.spec.describe()
        ),
    );
    let fail = |reason: String, mut row: BackupRow| {
        crate::secrets::remove_for_backup(&c.home, &id);
        row.view.state = "failed".into();
        row.view.reason = Some(reason.clone());
        row.view.finished_unix_ms = Some(now_ms());
        let _ = c.db(|s| s.put_backup(&row));
        Err(ControlError::of(cluster, format!("backup {id}: {reason}")))
    };
    // A physical copy carries the source's accounts, its platform account's password with
    // them: kept beside the host's secrets for as long as the backup lives, so that a cluster
    // restored from it can log in before it gets its own.
    if m.kind != BackupKind::Logical {
        if let Err(e) = crate::secrets::keep_for_backup(&c.home, &id, &creds) {
            return fail(
                format!("cannot keep the source's platform account for a restore: {e}"),
                row,
            );
        }
    }
    let t = Instant::now();
    let mut parts: Vec<(wit::BackupInfo, StoredObject)> = Vec::new();
    for source in &sources {
        let key = match source.shard {
            Some(n) if cl.spec.shards.is_some() => format!("{cluster}/{id}/shard-{n}.zst"),
            _ => key.clone(),
        };
        let (writer, pending) = shoal_backup::write_object(&repo, &key, ZSTD_LEVEL);
        let total = Arc::new(Mutex::new(None));
        let stop = progress_events(c, cluster, "backup", pending.raw_bytes(), total.clone());
        let ctx = c
            .bulk_ctx(&cl, source, &all, total)
            .on(cluster, &source.name)?;
        let inst = c.wit_instance(&cl, source, &creds, true);
        let result = addon
            .call(&ctx)
            .backup(&inst, &method, &[], HostSink::new(writer))
            .await;
        let _ = stop.send(());
        let (info, sink) = match result {
            Ok(x) => x,
            Err(e) => {
                pending.abort().await;
                for (_, o) in &parts {
                    let _ = repo.delete(&o.key).await;
                }
                return fail(format!("{}: {e}", source.name), row);
            }
        };
        drop(sink);
        match pending.finish().await {
            Ok(o) => parts.push((info, o)),
            Err(e) => {
                for (_, o) in &parts {
                    let _ = repo.delete(&o.key).await;
                }
                return fail(e.to_string(), row);
            }
        }
    }
    let Some((info, obj)) = parts.first().cloned() else {
        return fail("nothing was backed up".into(), row);
    };
    let objects: Vec<StoredObject> = parts.iter().map(|(_, o)| o.clone()).collect();
    // Each part's own labels (an RDB's length, …) as `part<n>.<label>` for its restore.
    let mut labels = info.labels.clone();
    if parts.len() > 1 {
        for (n, (pi, _)) in parts.iter().enumerate() {
            for (k, v) in &pi.labels {
                labels.push((format!("part{n}.{k}"), v.clone()));
            }
        }
    }
    let finished = now_ms();
    let manifest = Manifest {
        format: shoal_backup::manifest::FORMAT,
        id: id.clone(),
        cluster: cluster.to_string(),
        engine: cl.engine.clone(),
        engine_version: info.engine_version.clone(),
        addon_digest: view.addon_digest.clone(),
        addon_version: view.addon_version.clone(),
        method: method.clone(),
        kind: view.kind.clone(),
        source_instance: src.name.clone(),
        started_unix_ms: started,
        finished_unix_ms: finished,
        start_position: info.start_position.clone(),
        end_position: info.end_position.clone(),
        labels,
        compression: "zstd".into(),
        objects: objects.clone(),
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| e.to_string())
        .of(cluster)?;
    if let Err(e) = repo.put(&Manifest::key(cluster, &id), body.into()).await {
        for o in &objects {
            let _ = repo.delete(&o.key).await;
        }
        return fail(format!("storing the manifest: {e}"), row);
    }
    let secs = t.elapsed().as_secs_f64().max(0.001);
    view.state = "completed".into();
    view.finished_unix_ms = Some(finished);
    view.start_position = info.start_position;
    view.end_position = info.end_position;
    view.size = objects.iter().map(|o| o.size).sum();
    view.stored_size = objects.iter().map(|o| o.stored_size).sum();
    view.objects = objects.iter().map(object_view).collect();
    row.view = view;
    row.manifest = Some(manifest);
    c.db(|s| s.put_backup(&row)).of(cluster)?;
    c.event(
        cluster,
        Some(&src.name),
        Level::Info,
        format!(
            "backup {id} completed: {} read, {} stored ({:.1}x), {:.0} MiB/s, {} object(s), \
             sha256 {}",
            mib(row.view.size),
            mib(row.view.stored_size),
            row.view.size as f64 / row.view.stored_size.max(1) as f64,
            row.view.size as f64 / secs / (1 << 20) as f64,
            objects.len(),
            &obj.sha256[..16]
        ),
    );
    apply_retention(c, &cl, &method).await;
    // A schedule set with --verify proves each backup it takes restores.
    let verify = origin == "schedule"
        && c.db(|s| s.schedules(Some(cluster)))
            .unwrap_or_default()
            .iter()
            .any(|(v, _)| v.method == method && v.verify);
    if verify {
        let (c, id) = (c.clone(), id.clone());
        tokio::spawn(async move {
            let _ = c.restore_test(&id).await;
        });
    }
    Ok(())
}

fn kind_name(k: BackupKind) -> &'static str {
    match k {
        BackupKind::Full => "full",
        BackupKind::Incremental => "incremental",
        BackupKind::Differential => "differential",
        BackupKind::Continuous => "continuous",
        BackupKind::Logical => "logical",
    }
}

/// RFC 3339 UTC with milliseconds ("2026-11-24T08:02:59.540Z") of a Unix time in ms.
pub(crate) fn rfc3339(ms: i64) -> String {
    let s = utc_stamp(ms);
    format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15],
        &s[15..18]
    )
}

/// `YYYYMMDDTHHMMSSmmmZ` of a Unix time in ms (UTC).
fn utc_stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y%m%dt%H%M%S%3fz").to_string())
        .unwrap_or_else(|| format!("{ms}"))
}

/// The labels the addon gave the backup of part `part` (stored as `part<n>.<label>`), or
/// every label when the backup is one part.
fn part_labels(labels: &[(String, String)], part: Option<u32>) -> Vec<(String, String)> {
    let Some(n) = part else {
        return labels.to_vec();
    };
    let prefix = format!("part{n}.");
    let own: Vec<(String, String)> = labels
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
        .collect();
    let per_part = |k: &str| {
        k.strip_prefix("part")
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(d, _)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    if labels.iter().any(|(k, _)| per_part(k)) {
        own
    } else {
        labels.to_vec()
    }
}

/// Whether backup `id` can seed a sharded cluster of `shards` shards: it must come from a
/// sharded cluster of as many shards (each part holds its shard's share of the keyspace).
pub(crate) fn check_shard_parts(c: &Controller, id: &str, shards: u32) -> Result<(), String> {
    let b = c
        .db(|s| s.backup(id))
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("backup {id} no longer exists"))?;
    let parts = b.manifest.as_ref().map(|m| m.objects.len()).unwrap_or(0);
    match b.spec.shards {
        Some(n) if n == shards && parts == n as usize => Ok(()),
        Some(n) => Err(format!(
            "backup {id} holds {n} shard(s); restore it into a cluster of {n} shards \
             (--shards {n})"
        )),
        None => Err(format!(
            "backup {id} is of a cluster that is not sharded; a sharded cluster restores only \
             a backup of a sharded cluster with as many shards"
        )),
    }
}

/// The platform account of physical backup `id`'s source cluster, kept by this host since
/// the backup was made ([`crate::secrets::keep_for_backup`]): a copy restored into a quorum
/// carries the source's accounts, and its members run with this account until the host
/// gives them their own. Missing (a backup made before Shoal kept it, or on another host):
/// why, and which logical method to restore from instead.
pub(crate) fn kept_source_account(c: &Controller, id: &str) -> Result<Credentials, String> {
    let e = match crate::secrets::kept_for_backup(&c.home, id) {
        Ok(cr) => return Ok(cr),
        Err(e) => e,
    };
    let b = c
        .db(|s| s.backup(id))
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("backup {id} no longer exists"))?;
    let logical: Vec<String> = c
        .addon(&b.view.engine)
        .map(|a| {
            a.manifest()
                .backup_methods
                .iter()
                .filter(|m| m.kind == BackupKind::Logical)
                .map(|m| m.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let instead = if logical.is_empty() {
        String::new()
    } else {
        format!(
            "; back {} up with a logical method ({}) and restore that",
            b.view.cluster,
            logical.join(" or ")
        )
    };
    Err(format!(
        "backup {id} is a physical copy that carries the accounts of {}: a quorum restored \
         from it starts with the source's platform account, which this host keeps only for \
         physical backups it made itself, and it has none for this one ({}: {e}){instead}",
        b.view.cluster,
        crate::secrets::backup_path(&c.home, id).display()
    ))
}

/// Whether backup `id` restores before the server first starts (a physical copy into the
/// empty data directory) rather than into the running server (a logical dump).
pub(crate) fn restores_before_start(c: &Controller, id: &str) -> Result<bool, String> {
    let b = c
        .db(|s| s.backup(id))
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("backup {id} no longer exists"))?;
    Ok(b.view.kind != "logical")
}

/// Restore backup `id` into instance `i` of the cluster being created: every object is read
/// through its checksum; a damaged or missing one fails the restore naming it. With
/// `to_unix_ms`, the source cluster's archive units are staged (each verified) and replayed
/// up to that moment. A failed restore leaves an empty data directory (nothing starts on
/// it), what it had restored so far set aside as `data.failed-restore`, and the whole
/// failure in `log/restore.log`, for diagnosis.
pub(crate) async fn restore_into(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    i: &InstanceRow,
    creds: &Credentials,
    id: &str,
    to_unix_ms: Option<i64>,
    part: Option<u32>,
) -> Result<(), String> {
    let staged = i.staged_archive_dir();
    let result = restore_steps(c, cl, i, creds, id, to_unix_ms, part).await;
    let _ = std::fs::remove_dir_all(&staged);
    if let Err(e) = &result {
        let log = i.dir.join("log").join("restore.log");
        let _ = std::fs::write(
            &log,
            format!(
                "{} restore of backup {id} failed:\n{e}\n",
                rfc3339(now_ms())
            ),
        );
        let mut kept = format!("the failure is in {}", log.display());
        if restores_before_start(c, id).unwrap_or(true) && !crate::node::is_empty(&i.data_dir()) {
            let aside = i.dir.join("data.failed-restore");
            let _ = std::fs::remove_dir_all(&aside);
            match std::fs::rename(i.data_dir(), &aside) {
                Ok(()) => {
                    let _ = crate::node::private_dir(&i.data_dir(), c.users.of(cl)?);
                    kept.push_str(&format!(", what was restored in {}", aside.display()));
                }
                Err(_) => empty_dir(&i.data_dir()),
            }
        }
        c.event(&cl.name, Some(&i.name), Level::Error, kept);
        // The first line says what failed; the rest (an engine's own output) is in the log.
        if let Some((first, _)) = e.split_once('\n') {
            return Err(format!(
                "{first} (the whole output is in {})",
                log.display()
            ));
        }
    }
    result
}

async fn restore_steps(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    i: &InstanceRow,
    creds: &Credentials,
    id: &str,
    to_unix_ms: Option<i64>,
    part: Option<u32>,
) -> Result<(), String> {
    let staged = &i.staged_archive_dir();
    let b = c
        .db(|s| s.backup(id))
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("backup {id} no longer exists"))?;
    let m = b
        .manifest
        .ok_or_else(|| format!("backup {id} is not completed"))?;
    let repo = c.repos().open(&b.view.repo).map_err(|e| e.message)?;
    let addon = c.addon(&cl.engine).map_err(|e| e.message)?.clone();
    let before_start = b.view.kind != "logical";
    if !before_start {
        // Into a running server: check everything before the first byte goes in.
        for o in &m.objects {
            shoal_backup::verify_object(&repo, o)
                .await
                .map_err(|e| format!("restore of backup {id} refused: {e}"))?;
        }
    }
    let all = c.db(|s| s.instances(&cl.name)).map_err(|e| e.message)?;
    let info = wit::BackupInfo {
        method: m.method.clone(),
        engine_version: m.engine_version.clone(),
        start_position: m.start_position.clone(),
        end_position: m.end_position.clone(),
        labels: part_labels(&m.labels, part),
    };
    let t = Instant::now();
    if let Some(to) = to_unix_ms {
        // The archive first: a damaged unit fails the restore before the big copy.
        let _ = std::fs::remove_dir_all(staged);
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(staged)
            .map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
        let (n, bytes) = crate::archive::stage_units(
            c,
            b.cluster_uid,
            b.view.started_unix_ms,
            staged,
            c.users.of(cl)?,
        )
        .await
        .map_err(|e| format!("restore of backup {id} to {} refused: {e}", rfc3339(to)))?;
        shoal_local::users::chown(staged, c.users.of(cl)?).map_err(|e| e.to_string())?;
        c.event(
            &cl.name,
            Some(&i.name),
            Level::Info,
            format!(
                "staged {n} archive unit(s) of {} ({}, every checksum verified) for a restore to {}",
                b.view.cluster,
                mib(bytes),
                rfc3339(to)
            ),
        );
    }
    // A sharded cluster's backup: object n is shard n's part.
    let objects: Vec<&shoal_backup::StoredObject> = m
        .objects
        .iter()
        .enumerate()
        .filter(|(n, _)| part.is_none_or(|p| p as usize == *n))
        .map(|(_, o)| o)
        .collect();
    if objects.is_empty() {
        return Err(format!(
            "backup {id} has no part for shard {}",
            part.unwrap_or(0)
        ));
    }
    for o in objects {
        c.event(
            &cl.name,
            Some(&i.name),
            Level::Info,
            format!(
                "restoring {} ({}) of backup {id} from repository {}",
                o.key,
                mib(o.size),
                b.view.repo
            ),
        );
        let (reader, verdict) = shoal_backup::read_object(&repo, o)
            .await
            .map_err(|e| format!("restore of backup {id}: {e}"))?;
        let total = Arc::new(Mutex::new(Some(o.size)));
        let source = HostSource::new(reader);
        let ctx = c.bulk_ctx(cl, i, &all, total)?;
        let inst = c.wit_instance(cl, i, creds, true);
        let result = addon
            .call(&ctx)
            .restore(
                &inst,
                &Controller::members_of(i, &all),
                &info,
                source,
                to_unix_ms.is_some(),
            )
            .await;
        let checked = verdict.check().await;
        match (result, checked) {
            (_, Err(e)) => return Err(format!("restore of backup {id} failed: {e}")),
            (Err(e), Ok(_)) => return Err(format!("restore of backup {id} failed: {e}")),
            (Ok(_), Ok(_)) => {}
        }
    }
    if let Some(to) = to_unix_ms {
        c.event(
            &cl.name,
            Some(&i.name),
            Level::Info,
            format!("replaying the archive up to {}", rfc3339(to)),
        );
        let ctx = c.bulk_ctx(cl, i, &all, Default::default())?;
        let inst = c.wit_instance(cl, i, creds, true);
        addon
            .call(&ctx)
            .restore_to_time(
                &inst,
                &info,
                &wit::RecoveryTarget::TimeUnixMs(to.max(0) as u64),
                &staged.display().to_string(),
            )
            .await
            .map_err(|e| format!("restore of backup {id} to {} failed: {e}", rfc3339(to)))?;
    }
    c.event(
        &cl.name,
        Some(&i.name),
        Level::Info,
        format!(
            "restored backup {id} ({}, every checksum verified) in {:.1} s",
            mib(m.size()),
            t.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Remove everything inside `dir` (the directory itself stays, with its owner and mode).
fn empty_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let _ = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_of_a_sharded_backup_gets_its_own_labels() {
        let l = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let stored = l(&[
            ("rdb-bytes", "10"),
            ("part0.rdb-bytes", "10"),
            ("part1.rdb-bytes", "20"),
        ]);
        assert_eq!(part_labels(&stored, Some(1)), l(&[("rdb-bytes", "20")]));
        assert_eq!(part_labels(&stored, Some(0)), l(&[("rdb-bytes", "10")]));
        assert_eq!(part_labels(&stored, Some(2)), l(&[]));
        assert_eq!(part_labels(&stored, None), stored);
        let single = l(&[("rdb-bytes", "10"), ("partial", "x")]);
        assert_eq!(part_labels(&single, Some(0)), single);
    }

    fn backup(id: &str, started: i64, state: &str) -> BackupView {
        BackupView {
            id: id.into(),
            cluster: "c".into(),
            repo: "r".into(),
            method: "physical".into(),
            kind: "full".into(),
            state: state.into(),
            reason: None,
            started_unix_ms: started,
            finished_unix_ms: None,
            engine: "e".into(),
            engine_version: "1".into(),
            addon_version: "1".into(),
            addon_digest: "d".into(),
            source_instance: "c-0".into(),
            start_position: None,
            end_position: None,
            size: 0,
            stored_size: 0,
            objects: vec![],
            origin: "schedule".into(),
            restore_test: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_counts_only_completed_backups() {
        let day = 86_400_000;
        let all = vec![
            backup("a", 0, "completed"),
            backup("b", day, "completed"),
            backup("c", 2 * day, "failed"),
            backup("d", 3 * day, "completed"),
            backup("e", 4 * day, "completed"),
        ];
        let mut v = ScheduleView {
            cluster: "c".into(),
            method: "physical".into(),
            repo: None,
            cron: "0 3 * * *".into(),
            keep: Some(2),
            max_age: None,
            pitr_window: None,
            next_unix_ms: 0,
            include_manual: false,
            verify: false,
        };
        let ids = |x: Vec<(String, String)>| x.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(ids(expired(&all, &v, 5 * day)), ["b", "a"]);
        v.keep = None;
        v.max_age = Some("36h".into());
        assert_eq!(ids(expired(&all, &v, 5 * day)), ["d", "b", "a"]);
        // Everything old: the newest stays all the same.
        assert_eq!(ids(expired(&all, &v, 50 * day)), ["d", "b", "a"]);
        assert_eq!(ids(expired(&all[..1], &v, 50 * day)), Vec::<String>::new());
    }

    #[test]
    fn a_point_in_time_window_keeps_the_backup_its_oldest_moment_needs() {
        let day = 86_400_000;
        let all: Vec<BackupView> = (0..6)
            .map(|n| backup(&format!("b{n}"), n * day, "completed"))
            .collect();
        let mut v = ScheduleView {
            cluster: "c".into(),
            method: "physical".into(),
            repo: None,
            cron: "0 3 * * *".into(),
            keep: Some(1),
            max_age: None,
            pitr_window: Some("2d".into()),
            next_unix_ms: 0,
            include_manual: false,
            verify: false,
        };
        let ids = |x: Vec<(String, String)>| x.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        // At day 5.5 the window starts at 3.5: b4 and b5 are inside it, b3 is the base of a
        // restore to 3.5; b2, b1, b0 go, though --keep 1 alone would keep only b5.
        assert_eq!(
            ids(expired(&all, &v, 5 * day + day / 2)),
            ["b2", "b1", "b0"]
        );
        // A window reaching before every backup keeps them all.
        v.pitr_window = Some("30d".into());
        assert_eq!(ids(expired(&all, &v, 5 * day)), Vec::<String>::new());
    }

    #[test]
    fn a_point_in_time_restore_cannot_cross_a_gap_in_the_archive() {
        let unit = |stored: i64, since: Option<i64>| shoal_api::ArchiveUnitView {
            name: format!("u{stored}"),
            instance: "c-0".into(),
            repo: "r".into(),
            stored_unix_ms: stored,
            start_position: None,
            end_position: None,
            end_unix_ms: None,
            object: BackupObjectView {
                key: "k".into(),
                size: 0,
                stored_size: 0,
                sha256: String::new(),
            },
            archiving_since_unix_ms: since,
        };
        // On since 10; the backup started at 20: no gap up to any target.
        let on = [unit(30, Some(10)), unit(40, Some(10))];
        assert_eq!(archive_gap(&on, 20, 50), None);
        // Switched on again at 60 (off in between): a target past 60 needs what is missing.
        let again = [unit(30, Some(10)), unit(70, Some(60))];
        assert_eq!(archive_gap(&again, 20, 50), None);
        assert_eq!(archive_gap(&again, 20, 80), Some(60));
        // Switched on only after the backup started.
        assert_eq!(archive_gap(&[unit(70, Some(60))], 20, 80), Some(60));
        // Units from before this was recorded say nothing.
        assert_eq!(archive_gap(&[unit(70, None)], 20, 80), None);
    }

    #[test]
    fn cron_and_ages_parse_or_say_why() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok());
        for bad in ["", "* * *", "61 * * * *", "a b c d e", "* * * * * * * *"] {
            assert!(parse_cron(bad).is_err(), "{bad:?}");
        }
        let c = parse_cron("0 3 * * *").unwrap();
        // 2026-11-24 05:30 UTC → next 2026-11-25 03:00 UTC.
        let next = next_fire(&c, "0 3 * * *", 1_795_498_200_123).unwrap();
        assert_eq!(utc_stamp(next), "20261125t030000000z");
        assert_eq!(parse_age("30d").unwrap(), 30 * 86_400_000);
        assert_eq!(parse_age("45s").unwrap(), 45_000);
        for bad in ["", "30", "d", "-1d", "3x", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stamps_are_utc_and_sortable() {
        assert_eq!(utc_stamp(0), "19700101t000000000z");
        // 2026-11-24 05:30:00.123 UTC
        assert_eq!(utc_stamp(1_795_498_200_123), "20261124t053000123z");
        assert!(utc_stamp(1_795_498_200_123) < utc_stamp(1_795_498_260_000));
        assert_eq!(rfc3339(1_795_498_200_123), "2026-11-24T05:30:00.123Z");
    }
}
