//! Continuous archiving in local mode: which clusters are archived and into which repository,
//! the archiver that ships every finished unit (WAL segment, binlog file) an engine leaves in
//! its instance's archive directory into the repository through the addon's
//! `archive-continuous` hook (compressed and checksummed like backups), the record of stored
//! units, pruning the units no kept backup needs, and staging units for a point-in-time
//! restore. What a unit is and how it is replayed is the addon's; this module moves and checks
//! bytes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shoal_api::{ApiError, ArchiveUnitView, ArchiveView, BackupObjectView};
use shoal_backup::{Repository, StoredObject};
use shoal_runtime::wit::{self, BackupKind};
use shoal_runtime::HostSink;

use crate::controller::Controller;
use crate::events::Level;
use crate::secrets::Credentials;
use crate::store::{now_ms, ClusterRow, InstanceRow, Phase};

/// zstd level of archive units (as backups).
const ZSTD_LEVEL: i32 = 1;
/// How often an instance with nothing visibly waiting is asked anyway (see [`poll_due`]).
const POLL_EMPTY: std::time::Duration = std::time::Duration::from_secs(2);
/// Units shipped from one instance in one pass before the others get their turn.
const UNITS_PER_PASS: usize = 64;
/// Units stored this long before a backup started are older than anything it needs (slack
/// for clocks of hosts sharing a home).
const PRUNE_SLACK_MS: i64 = 5_000;

/// Whether a unit name is safe as the last part of an object key and a file name.
fn safe_unit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Key of a stored unit of cluster `cluster` (uid `uid`: a later cluster of the same name,
/// whose units have the same names, never overwrites it).
pub(crate) fn unit_key(cluster: &str, uid: i64, name: &str) -> String {
    format!("{cluster}/archive-{uid}/{name}.zst")
}

pub(crate) fn unit_object(u: &ArchiveUnitView) -> StoredObject {
    StoredObject {
        key: u.object.key.clone(),
        size: u.object.size,
        stored_size: u.object.stored_size,
        sha256: u.object.sha256.clone(),
    }
}

/// (cluster, instance).
type Slot = (String, String);

/// What the archiver keeps in memory, written only here: which clusters are archived now
/// (read back from the store at start), the unit each instance stored last (handed back to
/// the addon as `after`), when each instance with nothing visibly waiting was last asked,
/// and whether a pass runs.
#[derive(Debug, Default)]
pub(crate) struct ArchiverState {
    clusters: Mutex<HashSet<String>>,
    last: Mutex<HashMap<Slot, String>>,
    asked: Mutex<HashMap<Slot, Instant>>,
    busy: AtomicBool,
}

impl ArchiverState {
    /// The state of a host whose store archives `clusters`.
    pub(crate) fn new(clusters: HashSet<String>) -> ArchiverState {
        ArchiverState {
            clusters: Mutex::new(clusters),
            ..Default::default()
        }
    }

    /// Whether `cluster` is archived continuously now.
    pub(crate) fn is_on(&self, cluster: &str) -> bool {
        lock(&self.clusters).contains(cluster)
    }

    fn set(&self, cluster: &str, on: bool) {
        let mut set = lock(&self.clusters);
        if on {
            set.insert(cluster.to_string());
        } else {
            set.remove(cluster);
        }
    }

    fn clusters(&self) -> Vec<String> {
        lock(&self.clusters).iter().cloned().collect()
    }

    /// Claim the next pass: false while one runs or when nothing is archived.
    fn start_pass(&self) -> bool {
        !lock(&self.clusters).is_empty() && !self.busy.swap(true, Ordering::AcqRel)
    }

    fn pass_done(&self) {
        self.busy.store(false, Ordering::Release);
    }

    fn last(&self, slot: &Slot) -> Option<String> {
        lock(&self.last).get(slot).cloned()
    }

    fn stored(&self, slot: Slot, unit: String) {
        lock(&self.last).insert(slot, unit);
    }

    /// Whether `slot` is due to be asked again (at most once per `every`); marks it asked.
    fn ask_due(&self, slot: Slot, every: std::time::Duration) -> bool {
        let mut asked = lock(&self.asked);
        let now = Instant::now();
        match asked.get(&slot) {
            Some(t) if now.duration_since(*t) < every => false,
            _ => {
                asked.insert(slot, now);
                true
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Whether `cluster` is archived continuously now.
    pub(crate) fn archived(&self, cluster: &str) -> bool {
        self.archiver.is_on(cluster)
    }

    /// The continuous backup method of `engine`'s addon.
    fn continuous_method(&self, engine: &str) -> Result<wit::BackupMethod, ApiError> {
        let addon = self.addon(engine)?;
        addon
            .manifest()
            .backup_methods
            .iter()
            .find(|m| m.kind == BackupKind::Continuous)
            .cloned()
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "the {engine} addon has no continuous backup method: its clusters cannot be \
                     archived or restored to a point in time"
                ))
            })
    }

    /// Switch continuous archiving of `cluster` on (into `repo`, else the one it used, else
    /// the default repository) or off. Running instances are reconfigured at once; the units
    /// stored so far stay (restores need them).
    pub async fn archive_set(
        self: &Arc<Self>,
        cluster: &str,
        repo: Option<&str>,
        on: bool,
    ) -> Result<ArchiveView, ApiError> {
        let cl = self
            .db(|s| s.cluster(cluster))?
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {cluster:?}")))?;
        let method = self.continuous_method(&cl.engine)?;
        let existing = self.db(|s| s.archives(Some(cluster)))?.into_iter().next();
        let view = if on {
            let repo_name = match (repo, &existing) {
                (Some(r), _) => r.to_string(),
                (None, Some(a)) => a.repo.clone(),
                (None, None) => self.repos().default_name()?,
            };
            self.repos().open(&repo_name)?;
            let since = match &existing {
                Some(a) if a.enabled && a.repo == repo_name => a.since_unix_ms,
                _ => now_ms(),
            };
            ArchiveView {
                cluster: cluster.to_string(),
                repo: repo_name,
                method: method.name.clone(),
                enabled: true,
                since_unix_ms: since,
                units: 0,
                size: 0,
                stored_size: 0,
                first_unit: None,
                last_unit: None,
                last_stored_unix_ms: None,
                error: None,
            }
        } else {
            let Some(mut a) = existing else {
                return Err(ApiError::conflict(format!(
                    "cluster {cluster} is not archived continuously"
                )));
            };
            a.enabled = false;
            a.error = None;
            a
        };
        self.db(|s| s.put_archive(&view))?;
        self.archiver.set(cluster, on);
        self.event(
            cluster,
            None,
            Level::Info,
            if on {
                format!(
                    "continuous archiving ({}) on, into repository {}",
                    view.method, view.repo
                )
            } else {
                "continuous archiving off (stored units are kept)".to_string()
            },
        );
        self.reconfigure_running(&cl).await;
        self.archive_list(Some(cluster))?
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("the archive settings vanished"))
    }

    /// Archiving settings with their unit statistics.
    pub fn archive_list(&self, cluster: Option<&str>) -> Result<Vec<ArchiveView>, ApiError> {
        let mut out = self.db(|s| s.archives(cluster))?;
        for a in &mut out {
            let uid = self.db(|s| s.uid_of(&a.cluster))?.unwrap_or(-1);
            let units = self.db(|s| s.units(uid))?;
            a.units = units.len() as u64;
            a.size = units.iter().map(|u| u.object.size).sum();
            a.stored_size = units.iter().map(|u| u.object.stored_size).sum();
            a.first_unit = units.first().map(|u| u.name.clone());
            a.last_unit = units.last().map(|u| u.name.clone());
            a.last_stored_unix_ms = units.last().map(|u| u.stored_unix_ms);
        }
        Ok(out)
    }

    /// Render the config of every running instance of `cl` again and have the addon apply
    /// it live (archiving settings are reloadable).
    async fn reconfigure_running(&self, cl: &ClusterRow) {
        let Ok(addon) = self.addon(&cl.engine) else {
            return;
        };
        let Ok(creds) = crate::secrets::load(&self.home, &cl.name) else {
            return;
        };
        let all = self.db(|s| s.instances(&cl.name)).unwrap_or_default();
        for i in all.iter().filter(|i| i.state == Phase::Running) {
            let r = match self.render(cl, i, &all, &creds).await {
                Ok(()) => addon
                    .call(&self.call_ctx(i, &all, false))
                    .apply_dynamic(&self.wit_instance(cl, i, &creds, false), &[])
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = r {
                self.event(
                    &cl.name,
                    Some(&i.name),
                    Level::Error,
                    format!("cannot apply the archiving settings: {e}"),
                );
            }
        }
    }

    /// Record an archiving failure on the cluster's settings (an event only when it changes).
    fn archive_error(&self, a: &ArchiveView, error: Option<String>) {
        if a.error == error {
            return;
        }
        let mut v = a.clone();
        v.error = error.clone();
        let _ = self.db(|s| s.put_archive(&v));
        match error {
            Some(e) => self.event(&a.cluster, None, Level::Error, format!("archiving: {e}")),
            None => self.event(&a.cluster, None, Level::Info, "archiving: shipping again"),
        }
    }
}

/// Start an archiver pass unless one is running or nothing is archived.
pub(crate) fn kick_archiver(c: &Arc<Controller>) {
    if !c.archiver.start_pass() {
        return;
    }
    let c = c.clone();
    tokio::spawn(async move {
        archive_pass(&c).await;
        c.archiver.pass_done();
    });
}

/// Whether `dir` holds a file the engine may have finished (anything but work in progress
/// is worth asking the addon about).
fn has_waiting(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                !n.starts_with('.') && !n.ends_with(".part")
            })
        })
        .unwrap_or(false)
}

/// Some engines keep finished units where the host cannot see them (in their data
/// directory) and only the addon can tell: the running instance of the role the continuous
/// method archives from is asked every [`POLL_EMPTY`] even when its archive directory is
/// empty.
fn poll_due(c: &Controller, cl: &ClusterRow, i: &InstanceRow) -> bool {
    if i.state != Phase::Running {
        return false;
    }
    let Ok(addon) = c.addon(&cl.engine) else {
        return false;
    };
    let archives_here = addon.manifest().backup_methods.iter().any(|m| {
        m.kind == BackupKind::Continuous && m.target_role.as_deref() == Some(i.role.as_str())
    });
    if !archives_here {
        return false;
    }
    c.archiver
        .ask_due((cl.name.clone(), i.name.clone()), POLL_EMPTY)
}

/// Ship what is waiting in the archive directories of the clusters this host manages.
async fn archive_pass(c: &Arc<Controller>) {
    for cluster in c.archiver.clusters() {
        if !c.manages(&cluster) {
            continue;
        }
        let (Ok(Some(cl)), Ok(Some(a))) = (
            c.db(|s| s.cluster(&cluster)),
            c.db(|s| s.archives(Some(&cluster)))
                .map(|v| v.into_iter().next()),
        ) else {
            continue;
        };
        if !a.enabled {
            continue;
        }
        let repo = match c.repos().open(&a.repo) {
            Ok(r) => r,
            Err(e) => {
                c.archive_error(&a, Some(e.message));
                continue;
            }
        };
        let Ok(creds) = crate::secrets::load(&c.home, &cluster) else {
            continue;
        };
        let all = c.db(|s| s.instances(&cluster)).unwrap_or_default();
        let mut error = None;
        let mut shipped = false;
        for i in &all {
            if !has_waiting(&i.archive_dir()) && !poll_due(c, &cl, i) {
                continue;
            }
            for _ in 0..UNITS_PER_PASS {
                match ship_one(c, &cl, &a, &repo, i, &all, &creds).await {
                    Ok(true) => shipped = true,
                    Ok(false) => break,
                    Err(e) => {
                        error = Some(format!("{}: {e}", i.name));
                        break;
                    }
                }
            }
        }
        if error.is_some() || shipped {
            c.archive_error(&a, error);
        }
    }
}

/// Ask the addon for the next unit of `i` and store it; whether one was shipped.
async fn ship_one(
    c: &Arc<Controller>,
    cl: &ClusterRow,
    a: &ArchiveView,
    repo: &Repository,
    i: &InstanceRow,
    all: &[InstanceRow],
    creds: &Credentials,
) -> Result<bool, String> {
    let addon = c.addon(&cl.engine).map_err(|e| e.message)?.clone();
    let slot = (cl.name.clone(), i.name.clone());
    let after = c.archiver.last(&slot);
    let incoming = format!("{}/archive-{}/incoming-{}.zst", cl.name, cl.uid, i.name);
    let (writer, pending) = shoal_backup::write_object(repo, &incoming, ZSTD_LEVEL);
    let dir = i.archive_dir();
    let mut ctx = c.bulk_ctx(cl, i, all, Default::default())?;
    ctx = ctx.preopen(dir.clone(), dir.display().to_string(), true);
    let inst = c.wit_instance(cl, i, creds, true);
    let result = addon
        .call(&ctx)
        .archive_continuous(&inst, after.as_deref(), HostSink::new(writer))
        .await;
    let unit = match result {
        Ok((Some(u), sink)) => {
            drop(sink);
            u
        }
        Ok((None, sink)) => {
            drop(sink);
            pending.abort().await;
            return Ok(false);
        }
        Err(e) => {
            pending.abort().await;
            return Err(e.to_string());
        }
    };
    if !safe_unit_name(&unit.name) {
        pending.abort().await;
        return Err(format!(
            "the addon named an archive unit {:?}; names are letters, digits, '.', '_' and '-'",
            unit.name
        ));
    }
    let obj = pending.finish().await.map_err(|e| e.to_string())?;
    let key = unit_key(&cl.name, cl.uid, &unit.name);
    repo.rename(&obj.key, &key)
        .await
        .map_err(|e| e.to_string())?;
    let view = ArchiveUnitView {
        archiving_since_unix_ms: Some(a.since_unix_ms),
        name: unit.name.clone(),
        instance: i.name.clone(),
        repo: a.repo.clone(),
        stored_unix_ms: now_ms(),
        start_position: unit.start_position,
        end_position: unit.end_position,
        end_unix_ms: unit.end_unix_ms,
        object: BackupObjectView {
            key,
            size: obj.size,
            stored_size: obj.stored_size,
            sha256: obj.sha256,
        },
    };
    c.db(|s| s.put_unit(cl.uid, &cl.name, &view))
        .map_err(|e| e.message)?;
    c.archiver.stored(slot, unit.name);
    Ok(true)
}

/// Delete the stored units of cluster `uid` (named `cluster`) older than every completed
/// backup of it a point-in-time restore could start from (none such: nothing is deleted).
pub(crate) async fn prune_units(c: &Arc<Controller>, cluster: &str, uid: i64) {
    let Ok(backups) = c.db(|s| s.backups_of(uid)) else {
        return;
    };
    let Some(oldest) = backups
        .iter()
        .filter(|b| b.view.state == "completed" && b.view.kind != "logical")
        .map(|b| b.view.started_unix_ms)
        .min()
    else {
        return;
    };
    let Ok(units) = c.db(|s| s.units(uid)) else {
        return;
    };
    let old: Vec<&ArchiveUnitView> = units
        .iter()
        .filter(|u| u.stored_unix_ms < oldest - PRUNE_SLACK_MS)
        .collect();
    if old.is_empty() {
        return;
    }
    let mut deleted = 0u64;
    let mut bytes = 0u64;
    for u in old {
        let Ok(repo) = c.repos().open(&u.repo) else {
            continue;
        };
        match repo.delete(&u.object.key).await {
            Ok(()) => {
                let _ = c.db(|s| s.delete_unit(uid, &u.name));
                deleted += 1;
                bytes += u.object.stored_size;
            }
            Err(e) => {
                c.event(
                    cluster,
                    None,
                    Level::Warning,
                    format!("retention: cannot delete archive unit {}: {e}", u.name),
                );
                break;
            }
        }
    }
    c.event(
        cluster,
        None,
        Level::Info,
        format!(
            "retention: deleted {deleted} archive unit(s) ({} stored) older than the oldest \
             backup",
            crate::backups::mib(bytes)
        ),
    );
}

/// Fetch the units of cluster `uid` a point-in-time restore of a backup that started at
/// `from_ms` may replay into `dir` (each file given to `owner`, who replays it), each read
/// through its checksum; the first damaged or missing one fails the restore, naming it.
/// Returns how many units and bytes were staged.
pub(crate) async fn stage_units(
    c: &Arc<Controller>,
    uid: i64,
    from_ms: i64,
    dir: &Path,
    owner: Option<shoal_local::RunAs>,
) -> Result<(usize, u64), String> {
    let units = c.db(|s| s.units(uid)).map_err(|e| e.message)?;
    let mut count = 0;
    let mut bytes = 0;
    for u in units
        .iter()
        .filter(|u| u.stored_unix_ms >= from_ms - PRUNE_SLACK_MS)
    {
        let repo = c.repos().open(&u.repo).map_err(|e| e.message)?;
        let (mut reader, verdict) = shoal_backup::read_object(&repo, &unit_object(u))
            .await
            .map_err(|e| format!("archive unit {}: {e}", u.name))?;
        let path = dir.join(&u.name);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let copied = tokio::io::copy(&mut reader, &mut file).await;
        let size = verdict
            .check()
            .await
            .map_err(|e| format!("archive unit {}: {e}", u.name))?;
        copied.map_err(|e| format!("{}: {e}", path.display()))?;
        if size != u.object.size {
            return Err(format!(
                "archive unit {} is damaged: it decompresses to {size} bytes, {} were stored",
                u.name, u.object.size
            ));
        }
        file.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        shoal_local::users::chown(&path, owner).map_err(|e| e.to_string())?;
        count += 1;
        bytes += size;
    }
    Ok((count, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_plain_file_names() {
        assert!(safe_unit_name("000000010000000000000003"));
        assert!(safe_unit_name("00000002.history"));
        assert!(safe_unit_name("000000010000000000000005.partial"));
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "x y",
            "naïve",
            &"0".repeat(129),
        ] {
            assert!(!safe_unit_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn one_archiver_pass_at_a_time_and_only_with_something_archived() {
        let st = ArchiverState::new(HashSet::new());
        assert!(!st.start_pass(), "nothing archived: no pass");
        st.set("orders", true);
        assert!(st.is_on("orders") && !st.is_on("users"));
        assert!(st.start_pass());
        assert!(!st.start_pass(), "a second pass while one runs");
        st.pass_done();
        assert!(st.start_pass());
        st.pass_done();
        st.set("orders", false);
        assert!(!st.start_pass());
        assert_eq!(st.clusters(), Vec::<String>::new());
    }

    #[test]
    fn an_idle_instance_is_asked_at_most_once_per_interval_and_remembers_its_last_unit() {
        let st = ArchiverState::default();
        let slot = ("orders".to_string(), "orders-0".to_string());
        let every = std::time::Duration::from_secs(3600);
        assert!(st.ask_due(slot.clone(), every));
        assert!(!st.ask_due(slot.clone(), every));
        assert!(st.ask_due(slot.clone(), std::time::Duration::ZERO));
        assert_eq!(st.last(&slot), None);
        st.stored(slot.clone(), "000000010000000000000003".into());
        assert_eq!(st.last(&slot).as_deref(), Some("000000010000000000000003"));
    }
}
