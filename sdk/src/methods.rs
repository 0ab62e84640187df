//! The backup-method registry: an engine's backup methods by name, each with the function
//! that backs up and the one that restores. `Engine::backup` and `Engine::restore` dispatch
//! through it, so an unknown method gets the same clear error in every engine, and
//! [`Methods::check`] holds the registry equal to the manifest's `[[backup-methods]]` in a
//! unit test.

use crate::backup::{BackupInfo, SinkWriter, SourceReader};
use crate::manifest::AddonManifest;
use crate::{HookError, HookResult, Instance, Member, Param};

/// Backs up `instance` into the sink (`params`: the cluster's parameters).
pub type BackupFn<E> =
    fn(&mut E, &Instance, &[Param], &mut SinkWriter<'_>) -> HookResult<BackupInfo>;

/// Restores a backup (`info`) from the source into `instance`'s stopped data directory;
/// the last argument says whether a recovery to a point in time follows.
pub type RestoreFn<E> =
    fn(&mut E, &Instance, &[Member], &BackupInfo, &mut SourceReader<'_>, bool) -> HookResult<()>;

/// One backup method: its name as `addon.toml` declares it, and its two halves.
pub struct Method<E: ?Sized + 'static> {
    pub name: &'static str,
    pub backup: BackupFn<E>,
    pub restore: RestoreFn<E>,
}

/// Every backup method of engine `E`.
pub struct Methods<E: ?Sized + 'static>(pub &'static [Method<E>]);

impl<E: ?Sized> Methods<E> {
    fn find(&self, method: &str, doing: &str) -> HookResult<&Method<E>> {
        self.0.iter().find(|m| m.name == method).ok_or_else(|| {
            HookError::invalid(format!(
                "cannot {doing} with backup method {method:?}: this addon has {}",
                self.names()
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The method names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|m| m.name).collect()
    }

    /// `Engine::backup`: run `method`'s backup.
    pub fn backup(
        &self,
        engine: &mut E,
        instance: &Instance,
        method: &str,
        params: &[Param],
        into: &mut SinkWriter<'_>,
    ) -> HookResult<BackupInfo> {
        (self.find(method, "back up")?.backup)(engine, instance, params, into)
    }

    /// `Engine::restore`: run the restore of the method `info` was made with.
    pub fn restore(
        &self,
        engine: &mut E,
        instance: &Instance,
        members: &[Member],
        info: &BackupInfo,
        from: &mut SourceReader<'_>,
        recovery_follows: bool,
    ) -> HookResult<()> {
        let m = self.find(&info.method, "restore")?;
        (m.restore)(engine, instance, members, info, from, recovery_follows)
    }

    /// Whether the registry names exactly the manifest's backup methods (continuous ones
    /// aside: they go through `archive-continuous` and `restore-to-time`).
    pub fn check(&self, manifest: &AddonManifest) -> Result<(), String> {
        use crate::manifest::BackupKind;
        let mut declared: Vec<&str> = manifest
            .backup_methods
            .iter()
            .filter(|b| b.kind != BackupKind::Continuous)
            .map(|b| b.name.as_str())
            .collect();
        let mut here = self.names();
        declared.sort_unstable();
        here.sort_unstable();
        if declared == here {
            Ok(())
        } else {
            Err(format!(
                "the manifest declares {declared:?}, the registry has {here:?}"
            ))
        }
    }
}
