//! Restore tests: a backup counts only if it restores. `shoal backup verify --restore` (and a
//! schedule set with `--verify`, after each backup it takes) restores the backup into a
//! throwaway instance — its own directory under `<home>/restore-tests`, its own port, the
//! backed-up cluster's OS user (the same tenant's data) and throwaway credentials (for a
//! physical copy of a quorum, the source's platform account the copy carries, kept with the
//! backup) — through the same code a real restore uses (checksums verified first, the
//! addon's `restore`, then the server started and its health probe), then removes it. The result is recorded on the
//! backup (`restore_test`) and as an event of its cluster; a failed test keeps the server's
//! log for diagnosis and names it.
//!
//! The instance never joins a cluster: it is known to the registry only (so its events have a
//! home), holds no place in the cluster list, and its port is reserved only while it runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use shoal_api::{ApiError, RestoreTestView};

use crate::controller::Controller;
use crate::events::Level;
use crate::secrets;
use crate::store::{now_ms, ClusterRow, InstanceRow, Role};
use crate::topology::{self, Family};

/// Where throwaway instances live: `<home>/restore-tests/<name>`.
fn tests_dir(c: &Controller) -> PathBuf {
    c.home.join("restore-tests")
}

impl Controller {
    /// Restore backup `id` into a throwaway instance and check that it starts and answers
    /// healthy; records the result on the backup. `Err` only when the test could not be run
    /// at all (an unknown backup); a backup that does not restore is `Ok` with `passed:
    /// false`.
    pub async fn restore_test(self: &Arc<Self>, id: &str) -> Result<RestoreTestView, ApiError> {
        let b = self.db(|s| s.backup(id))?.ok_or_else(|| {
            ApiError::not_found(format!(
                "no backup with id {id:?} (see `shoal backup list`)"
            ))
        })?;
        let Some(m) = &b.manifest else {
            return Err(ApiError::conflict(format!(
                "backup {id} is {}, not completed: nothing to test",
                b.view.state
            )));
        };
        self.addon(&m.engine)?;
        let t0 = Instant::now();
        let name = format!("restore-test-{}", now_ms());
        self.event(
            &b.view.cluster,
            None,
            Level::Info,
            format!("restore test of backup {id} started (events under {name})"),
        );
        // A sharded cluster's backup holds one part per shard: each is tested on its own.
        let parts: Vec<Option<u32>> = match b.spec.shards {
            Some(n) => (0..n).map(Some).collect(),
            None => vec![None],
        };
        let (mut passed, mut details) = (true, Vec::new());
        for part in parts {
            let (label, name) = match part {
                Some(n) => (format!("shard {n}: "), format!("{name}-s{n}")),
                None => (String::new(), name.clone()),
            };
            match self.run_restore_test(&name, &b, part).await {
                Ok(d) => details.push(format!("{label}{d}")),
                Err(e) => {
                    passed = false;
                    details.push(format!("{label}{e}"));
                    break;
                }
            }
        }
        let detail = details.join("; ");
        let view = RestoreTestView {
            at_unix_ms: now_ms(),
            passed,
            detail: detail.clone(),
            ms: t0.elapsed().as_millis() as u64,
        };
        // Recorded on the backup (re-read: retention or a delete may have raced).
        if let Some(mut row) = self.db(|s| s.backup(id))? {
            row.view.restore_test = Some(view.clone());
            self.db(|s| s.put_backup(&row))?;
        }
        self.event(
            &b.view.cluster,
            None,
            if passed { Level::Info } else { Level::Error },
            if passed {
                format!(
                    "restore test of backup {id} passed in {:.1} s: {detail}",
                    view.ms as f64 / 1000.0
                )
            } else {
                format!("restore test of backup {id} FAILED: {detail}")
            },
        );
        Ok(view)
    }

    /// The test itself: the throwaway instance from nothing to healthy, then gone. Returns
    /// the healthy probe's detail, or why it failed.
    async fn run_restore_test(
        self: &Arc<Self>,
        name: &str,
        b: &crate::store::BackupRow,
        part: Option<u32>,
    ) -> Result<String, String> {
        let m = b.manifest.as_ref().ok_or("the backup is not completed")?;
        let addon = self.addon(&m.engine).map_err(|e| e.message)?.clone();
        // The backed-up cluster's OS user when it still exists: the same tenant's data.
        let os_user = self
            .db(|s| s.clusters())
            .map_err(|e| e.message)?
            .into_iter()
            .find(|cl| cl.uid == b.cluster_uid)
            .and_then(|cl| cl.os_user);
        let uid = self
            .db(|s| s.register_scratch(name, &m.engine))
            .map_err(|e| e.message)?;
        let mut spec = b.spec.clone();
        spec.name = name.to_string();
        spec.replicas = 1;
        spec.shards = None;
        spec.ha = Default::default();
        let cl = ClusterRow {
            name: name.to_string(),
            engine: m.engine.clone(),
            version: m.engine_version.clone(),
            spec,
            addon_digest: addon.info().digest.clone(),
            state: crate::store::ClusterState::Creating,
            created_ms: now_ms(),
            uid,
            os_user,
        };
        let ports_wanted = addon.manifest().ports.len().max(1);
        let port_names: Vec<String> = if addon.manifest().ports.is_empty() {
            vec!["client".into()]
        } else {
            addon
                .manifest()
                .ports
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        let instance = format!("{name}-0");
        let range = self.cfg.port_range[0]..=self.cfg.port_range[1];
        let ports = self
            .db(|s| {
                let reserved = s.reserved_ports()?;
                match shoal_local::ports::allocate(&range, &reserved, ports_wanted) {
                    Ok(p) => {
                        s.reserve_ports(name, &instance, &p)?;
                        Ok(Ok(p))
                    }
                    Err(e) => Ok(Err(e.to_string())),
                }
            })
            .map_err(|e| e.message)??;
        let mut i = InstanceRow::new(
            name,
            &instance,
            0,
            Role::Primary,
            tests_dir(self).join(name).join(&instance),
        );
        i.ports = port_names.into_iter().zip(ports).collect();
        let result = self.restore_and_probe(&cl, &mut i, b, part).await;
        // Gone, whatever happened; a failure keeps the server's log.
        let kept_log = if result.is_err() {
            let to = tests_dir(self).join(format!("{name}.log"));
            std::fs::copy(i.log_file(), &to).ok().map(|_| to)
        } else {
            None
        };
        if i.process.is_some() {
            let cr = secrets::load(&self.home, name).unwrap_or(secrets::Credentials {
                user: String::new(),
                password: String::new(),
            });
            let _ = self.stop_process(&cl, &mut i, &cr).await;
        }
        let _ = crate::ops::remove_tree(&tests_dir(self).join(name));
        secrets::remove(&self.home, name);
        self.users.forget(name);
        let _ = self.db(|s| s.release_ports(name));
        let _ = self.db(|s| s.finish_scratch(uid));
        match (result, kept_log) {
            (Ok(d), _) => Ok(d),
            (Err(e), Some(log)) => Err(format!("{e} (the server's log: {})", log.display())),
            (Err(e), None) => Err(e),
        }
    }

    /// Restore into `i` the way a create from the backup does (a physical copy before the
    /// server first starts, a logical dump into the running server), then probe it.
    async fn restore_and_probe(
        self: &Arc<Self>,
        cl: &ClusterRow,
        i: &mut InstanceRow,
        b: &crate::store::BackupRow,
        part: Option<u32>,
    ) -> Result<String, String> {
        let addon = self.addon(&cl.engine).map_err(|e| e.message)?.clone();
        let admin = addon
            .manifest()
            .admin_user
            .clone()
            .unwrap_or_else(|| "admin".into());
        let id = b.view.id.as_str();
        let before_start = crate::backups::restores_before_start(self, id)?;
        let mut s = secrets::ClusterSecrets::generate(&admin)
            .map_err(|e| format!("cannot generate passwords: {e}"))?;
        if before_start && topology::family(addon.manifest()) == Family::Quorum {
            // A physical copy of a quorum carries its source's accounts: the throwaway member
            // runs with the source's platform account, as a restored quorum does at first.
            s.platform = Some(crate::backups::kept_source_account(self, id)?);
        }
        secrets::save(&self.home, &cl.name, &s)
            .map_err(|e| format!("cannot store credentials: {e}"))?;
        let cr = s.platform().clone();
        // Passable (not listable) by each throwaway instance's user, as `clusters/` is.
        crate::node::private_dir(&tests_dir(self), None)?;
        std::fs::set_permissions(
            tests_dir(self),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .map_err(|e| format!("cannot set the mode of {}: {e}", tests_dir(self).display()))?;
        crate::node::private_dir(&tests_dir(self).join(&cl.name), self.users.of(cl)?)?;
        if before_start {
            self.prepare_dirs(cl, i)?;
            crate::backups::restore_into(self, cl, i, &cr, id, None, part).await?;
        }
        let all = vec![i.clone()];
        self.bring_up(cl, i, &all, &cr).await?;
        if !before_start {
            crate::backups::restore_into(self, cl, i, &cr, id, None, part).await?;
        }
        let all = vec![i.clone()];
        let r = self.probe_once(cl, i, &all, &cr).await?;
        if r.health != shoal_runtime::wit::Health::Healthy {
            return Err(format!("restored, but not healthy: {}", r.detail));
        }
        Ok(r.detail)
    }
}
